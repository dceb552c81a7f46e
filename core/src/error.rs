use thiserror::Error as ThisError;

/// Error returned by `telecho-core`.
///
/// Opaque on purpose (like `urdf-rs`): match on the message or use the helper methods, so that new
/// causes can be added without breaking callers.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("{what} must be finite, got {value}")]
    NotFinite { what: &'static str, value: f64 },
}

impl Error {
    pub(crate) fn not_finite(what: &'static str, value: f64) -> Self {
        Self(ErrorKind::NotFinite { what, value })
    }

    /// True when the error was caused by a NaN or infinite input value.
    pub fn is_not_finite(&self) -> bool {
        matches!(self.0, ErrorKind::NotFinite { .. })
    }
}
