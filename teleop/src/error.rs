use std::path::PathBuf;

use thiserror::Error as ThisError;

/// Error returned by `telecho-teleop`. Opaque: the message names what was wrong; the helper
/// methods answer the questions callers act on.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("maximum command age must be finite and positive, got {0} s")]
    BadMaxAge(f64),

    // --- decoding (wire) ---
    #[error("{msg}: truncated at {field}: need {need} bytes, have {have}")]
    Truncated {
        msg: &'static str,
        field: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unsupported protocol version {0} (this side speaks 1)")]
    UnsupportedVersion(u8),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{msg}: {extra} trailing bytes after the message")]
    TrailingBytes { msg: &'static str, extra: usize },
    #[error("{msg}: {field} is not finite")]
    NotFinite {
        msg: &'static str,
        field: &'static str,
    },
    #[error("{msg}: {field} = {value} outside [{min}, {max}]")]
    OutOfRange {
        msg: &'static str,
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{msg}: {field} must be a unit vector/quaternion, norm {norm}")]
    NotUnit {
        msg: &'static str,
        field: &'static str,
        norm: f64,
    },
    #[error("{msg}: {field} has no value {value}")]
    BadEnum {
        msg: &'static str,
        field: &'static str,
        value: u8,
    },
    #[error("{msg}: {field}: {reason}")]
    BadString {
        msg: &'static str,
        field: &'static str,
        reason: &'static str,
    },
    #[error("us_frame: payload of {len} bytes does not fit a {width}x{height} frame")]
    BadPayloadLength { len: usize, width: u16, height: u16 },
    #[error("stream frame of {len} bytes outside [2, {max}]")]
    FrameLength { len: usize, max: usize },

    // --- ultrasound codec ---
    #[error("frame of {len} bytes is not {width}x{height} pixels")]
    FrameSize {
        len: usize,
        width: usize,
        height: usize,
    },
    #[error("frame codec: {0}")]
    Codec(String),

    // --- configuration and files ---
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pki(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("audit log line {line}: {reason}")]
    AuditTampered { line: usize, reason: String },

    // --- network ---
    #[error("tls: {0}")]
    Tls(String),
    #[error("network: {0}")]
    Net(String),

    // --- console view ---
    #[error("view: {0}")]
    View(String),
}

impl Error {
    pub(crate) fn config(what: impl Into<String>) -> Self {
        Self(ErrorKind::Config(what.into()))
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self(ErrorKind::Io {
            path: path.into(),
            source,
        })
    }

    pub(crate) fn net(what: impl std::fmt::Display) -> Self {
        Self(ErrorKind::Net(what.to_string()))
    }

    #[allow(dead_code)] // used by the `view` feature
    pub(crate) fn view(what: impl std::fmt::Display) -> Self {
        Self(ErrorKind::View(what.to_string()))
    }

    /// True when the error came from decoding a malformed message.
    pub fn is_decode(&self) -> bool {
        matches!(
            self.0,
            ErrorKind::Truncated { .. }
                | ErrorKind::UnsupportedVersion(_)
                | ErrorKind::UnknownType(_)
                | ErrorKind::TrailingBytes { .. }
                | ErrorKind::NotFinite { .. }
                | ErrorKind::OutOfRange { .. }
                | ErrorKind::NotUnit { .. }
                | ErrorKind::BadEnum { .. }
                | ErrorKind::BadString { .. }
                | ErrorKind::BadPayloadLength { .. }
                | ErrorKind::FrameLength { .. }
        )
    }

    /// The 1-based line of an audit log at which verification failed.
    pub fn audit_line(&self) -> Option<usize> {
        match self.0 {
            ErrorKind::AuditTampered { line, .. } => Some(line),
            _ => None,
        }
    }
}
