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
    #[error("probe pose must be finite (got NaN or infinity)")]
    NonFinitePose,
    #[error("probe pose rotation must be orthonormal and right-handed (deviation {deviation:e})")]
    NotARotation { deviation: f64 },
    #[error("robot model: {0}")]
    Kinematics(#[from] telecho_control::Error),
    #[error("URDF: {0}")]
    Urdf(String),
    #[error("joint command has {got} values, the arm has {expected} joints; command ignored")]
    CommandLength { expected: usize, got: usize },
    #[error("joint command value {index} is {value}; commands must be finite; command ignored")]
    CommandNotFinite { index: usize, value: f64 },
    #[error("{capacity} joint commands are already waiting out the latency; command ignored")]
    CommandQueueFull { capacity: usize },
    #[error("{what} must be finite, got {value}")]
    NotFinite { what: &'static str, value: f64 },
    #[error("Gazebo export: {0}")]
    Export(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Checks that `value` is finite and within `[min, max]`, naming it in the error.
pub(crate) fn check_in_range(
    what: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), Error> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ErrorKind::OutOfRange {
            what,
            value,
            min,
            max,
        }
        .into())
    }
}
