//! Who is on the other end of a connection, as read from its verified certificate.

use crate::audit::Who;
use crate::wire::Role;

/// A client's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Certificate common name.
    pub name: String,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// Role encoded in the certificate.
    pub role: Role,
}

impl Identity {
    /// The audit log's view of this identity.
    pub fn who(&self) -> Who {
        Who {
            cn: self.name.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}
