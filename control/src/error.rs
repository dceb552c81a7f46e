use thiserror::Error as ThisError;

/// Error returned by `telecho-control`.
///
/// Opaque (like `urdf-rs`'s): its message says what was wrong; the `is_*` methods classify it
/// without exposing the internal cause enum, so causes can grow without breaking users.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("{}", protocol_message(origin, *line, message))]
    Protocol {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("configuration: {what} = {value} is outside [{min}, {max}]")]
    Config {
        what: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("link `{link}`: {what}")]
    Model { link: String, what: String },
    #[error("scan protocol cannot run: {0}")]
    Executor(String),
    #[error("cannot read URDF: {0}")]
    Urdf(String),
    #[error("link `{0}` is not in the URDF")]
    UnknownLink(String),
    #[error("URDF has no root link (every link has a parent joint)")]
    NoRoot,
    #[error("URDF link `{0}` has more than one parent joint")]
    MultipleParents(String),
    #[error("joint `{joint}` is of type {kind}, which a serial chain cannot use")]
    UnsupportedJoint { joint: String, kind: &'static str },
    #[error("joint `{joint}`: {what}")]
    InvalidJoint { joint: String, what: String },
    #[error(
        "chain from `{base}` to `{tip}` has {dof} movable joints; at most {max} are supported"
    )]
    TooManyJoints {
        base: String,
        tip: String,
        dof: usize,
        max: usize,
    },
    #[error("expected {expected} joint values for the chain ({joints}), got {got}")]
    JointCount {
        expected: usize,
        got: usize,
        joints: String,
    },
    #[error("{what} value {index} is not finite ({value})")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    #[error("Jacobian buffer has {got} columns, chain has {expected} movable joints")]
    JacobianShape { expected: usize, got: usize },
    #[error(
        "target unreachable: best of {attempts} attempts left {position_error_m:.3e} m position \
         and {orientation_error_rad:.3e} rad orientation error"
    )]
    Unreachable {
        attempts: usize,
        position_error_m: f64,
        orientation_error_rad: f64,
    },
}

impl Error {
    /// True when an inverse-kinematics target could not be reached within tolerance.
    pub fn is_unreachable(&self) -> bool {
        matches!(self.0, ErrorKind::Unreachable { .. })
    }

    /// True when the caller passed a wrong number of joint values.
    pub fn is_joint_count(&self) -> bool {
        matches!(self.0, ErrorKind::JointCount { .. })
    }

    /// True when a configuration value was out of range (e.g. a force limit above 25 N).
    pub fn is_config(&self) -> bool {
        matches!(self.0, ErrorKind::Config { .. })
    }

    /// True when a scan protocol was refused by the executor.
    pub fn is_executor(&self) -> bool {
        matches!(self.0, ErrorKind::Executor(_))
    }

    /// True when an input value was NaN or infinite.
    pub fn is_not_finite(&self) -> bool {
        matches!(self.0, ErrorKind::NotFinite { .. })
    }
}

fn protocol_message(origin: &str, line: usize, message: &str) -> String {
    if line == 0 {
        format!("scan protocol {origin}: {message}")
    } else {
        format!("scan protocol {origin}, line {line}: {message}")
    }
}

/// Checks that a configuration value is finite and within `[min, max]`, naming it in the error.
pub(crate) fn check_config(
    what: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), Error> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ErrorKind::Config {
            what,
            value,
            min,
            max,
        }
        .into())
    }
}
