use thiserror::Error as ThisError;

/// Error returned by `telecho-teleop`. Opaque: the message names what was wrong.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("maximum command age must be finite and positive, got {0} s")]
    BadMaxAge(f64),
}
