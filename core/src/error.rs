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
    #[error("CDR {type_name}: {reason}")]
    Cdr {
        type_name: &'static str,
        reason: String,
    },
    #[error("recording {path}: {reason}")]
    Recording { path: String, reason: String },
    #[error("ROS 2 / DDS {what}: {reason}")]
    Dds { what: String, reason: String },
    #[error("recording {path} ends without its footer (was the recorder killed?); the messages of its complete chunks were read")]
    TruncatedRecording { path: String },
}

impl Error {
    pub(crate) fn not_finite(what: &'static str, value: f64) -> Self {
        Self(ErrorKind::NotFinite { what, value })
    }

    pub(crate) fn cdr(type_name: &'static str, reason: impl std::fmt::Display) -> Self {
        Self(ErrorKind::Cdr {
            type_name,
            reason: reason.to_string(),
        })
    }

    pub(crate) fn recording(path: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self(ErrorKind::Recording {
            path: path.into(),
            reason: reason.to_string(),
        })
    }

    /// A DDS failure (participant, topic, endpoint, service call).
    pub fn dds(what: impl Into<String>, reason: impl std::fmt::Debug) -> Self {
        Self(ErrorKind::Dds {
            what: what.into(),
            reason: format!("{reason:?}"),
        })
    }

    /// True for a DDS failure.
    pub fn is_dds(&self) -> bool {
        matches!(self.0, ErrorKind::Dds { .. })
    }

    pub(crate) fn truncated_recording(path: impl Into<String>) -> Self {
        Self(ErrorKind::TruncatedRecording { path: path.into() })
    }

    /// True when CDR bytes could not be encoded or decoded as the requested ROS 2 message type.
    pub fn is_cdr(&self) -> bool {
        matches!(self.0, ErrorKind::Cdr { .. })
    }

    /// True when an MCAP recording ended without its footer (typically a recorder killed with
    /// `kill -9` or a power loss): every message before the error was read intact.
    pub fn is_truncated_recording(&self) -> bool {
        matches!(self.0, ErrorKind::TruncatedRecording { .. })
    }

    /// True when the error was caused by a NaN or infinite input value.
    pub fn is_not_finite(&self) -> bool {
        matches!(self.0, ErrorKind::NotFinite { .. })
    }
}
