use thiserror::Error as ThisError;

/// Error returned by `telecho-sim`. Opaque: the message names what was wrong.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("{what} must be finite and non-negative, got {value}")]
    InvalidParameter { what: &'static str, value: f64 },
    #[error("{what} must be finite and within [{min}, {max}], got {value}")]
    OutOfRange {
        what: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{what}: range lower bound {lo} must not exceed upper bound {hi}")]
    EmptyRange {
        what: &'static str,
        lo: f64,
        hi: f64,
    },
    #[error("simulated volume is invalid: {0}")]
    Volume(String),
}
