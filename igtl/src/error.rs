use thiserror::Error as ThisError;

/// Error returned by `telecho-igtl`.
///
/// Opaque on purpose: match with the helper methods, so that new causes can be added without
/// breaking callers. The message names what was wrong (which field, which sizes).
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("OpenIGTLink header: {0}")]
    Header(String),
    #[error("OpenIGTLink {type_name} body: CRC-64 is {computed:#018x}, the header says {expected:#018x}")]
    Crc {
        type_name: String,
        expected: u64,
        computed: u64,
    },
    #[error("OpenIGTLink message type {0:?} is not supported")]
    UnknownType(String),
    #[error("OpenIGTLink {type_name} body: {reason}")]
    Body { type_name: String, reason: String },
    #[error("cannot encode OpenIGTLink {type_name}: {reason}")]
    Encode {
        type_name: &'static str,
        reason: String,
    },
    #[error("OpenIGTLink: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OpenIGTLink conversion: {0}")]
    Convert(String),
}

impl Error {
    pub(crate) fn header(reason: impl Into<String>) -> Self {
        Self(ErrorKind::Header(reason.into()))
    }

    pub(crate) fn body(type_name: &str, reason: impl Into<String>) -> Self {
        Self(ErrorKind::Body {
            type_name: type_name.to_owned(),
            reason: reason.into(),
        })
    }

    pub(crate) fn encode(type_name: &'static str, reason: impl Into<String>) -> Self {
        Self(ErrorKind::Encode {
            type_name,
            reason: reason.into(),
        })
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self(ErrorKind::Io {
            what: what.into(),
            source,
        })
    }

    pub(crate) fn convert(reason: impl Into<String>) -> Self {
        Self(ErrorKind::Convert(reason.into()))
    }

    /// True when the 58-byte header was malformed (bad version, type or name field, body size over
    /// the limit).
    pub fn is_header(&self) -> bool {
        matches!(self.0, ErrorKind::Header(_))
    }

    /// True when the body's CRC-64 did not match the header.
    pub fn is_crc(&self) -> bool {
        matches!(self.0, ErrorKind::Crc { .. })
    }

    /// True when the header was valid but names a message type this codec does not decode. A
    /// receiver may skip such a message (its body was consumed) and carry on.
    pub fn is_unknown_type(&self) -> bool {
        matches!(self.0, ErrorKind::UnknownType(_))
    }

    /// True when a known message type had a body of the wrong size or with invalid fields.
    pub fn is_body(&self) -> bool {
        matches!(self.0, ErrorKind::Body { .. })
    }

    /// True when a message could not be encoded (a name longer than its field, an image whose
    /// pixel buffer does not match its size, ...).
    pub fn is_encode(&self) -> bool {
        matches!(self.0, ErrorKind::Encode { .. })
    }

    /// True for socket errors of the server.
    pub fn is_io(&self) -> bool {
        matches!(self.0, ErrorKind::Io { .. })
    }
}
