//! The site PKI of the teleoperation link (rcgen).
//!
//! A site CA signs one server certificate (SANs `localhost`, `127.0.0.1`, `::1` and the names
//! given) and client certificates. A client's role is written into its certificate twice, as
//! the organisational unit (`OU=operator`) and as a SAN URI `telecho:role:operator`; the server
//! reads the SAN URI after the TLS handshake has verified the chain ([`read_identity`]).
//! Keys are ECDSA P-256; PEM files, private keys readable by the owner only.
//!
//! Layout of a PKI directory: `ca.pem`, `ca.key`, `server.pem`, `server.key`, and
//! `<name>.pem`, `<name>.key` per client (`operator`, `observer` from `init`).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::audit::sha256_hex;
use crate::error::ErrorKind;
use crate::identity::Identity;
use crate::wire::Role;
use crate::Error;

/// Prefix of the SAN URI that carries the role.
pub const ROLE_URI_PREFIX: &str = "telecho:role:";

/// Validity of the CA.
const CA_DAYS: u64 = 3650;
/// Default validity of server and client certificates.
const LEAF_DAYS: u64 = 825;

fn pki_err(what: impl std::fmt::Display) -> Error {
    ErrorKind::Pki(what.to_string()).into()
}

fn cert_err(what: impl std::fmt::Display) -> Error {
    ErrorKind::Certificate(what.to_string()).into()
}

/// Validity period of a new certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (tolerates clock skew) for `days` days.
    pub fn days(days: u64) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, Error> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    OffsetDateTime::from_unix_timestamp(secs).map_err(pki_err)
}

/// The files of a PKI directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiDir {
    dir: PathBuf,
}

impl PkiDir {
    /// The PKI in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// Certificate of `name` (`server`, `operator`, …).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Key of `name`.
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), Error> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::io(path, e))
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !name.starts_with('.')
        && !["ca", "server"].contains(&name);
    if !ok {
        return Err(pki_err(format!(
            "client name {name:?} must be 1-64 of [A-Za-z0-9_.-], not starting with '.', \
             and not 'ca' or 'server'"
        )));
    }
    Ok(())
}

fn ca_params(validity: Validity) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "telecho");
    dn.push(DnType::CommonName, "telecho site CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = to_offset(validity.not_before)?;
    p.not_after = to_offset(validity.not_after)?;
    Ok(p)
}

fn server_params(names: &[String], validity: Validity) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "telecho");
    dn.push(DnType::CommonName, "telecho server");
    p.distinguished_name = dn;
    let mut sans = vec![
        SanType::DnsName("localhost".try_into().map_err(pki_err)?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    for n in names {
        let n = n.trim();
        if n.is_empty() {
            continue;
        }
        let san = match n.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let valid = n.len() <= 253
                    && n.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                    });
                if !valid {
                    return Err(pki_err(format!(
                        "server name {n:?} is neither an IP address nor a DNS name"
                    )));
                }
                SanType::DnsName(n.try_into().map_err(pki_err)?)
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = to_offset(validity.not_before)?;
    p.not_after = to_offset(validity.not_after)?;
    Ok(p)
}

fn client_params(role: Role, name: &str, validity: Validity) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "telecho");
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(
        format!("{ROLE_URI_PREFIX}{}", role.as_str())
            .try_into()
            .map_err(pki_err)?,
    )];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = to_offset(validity.not_before)?;
    p.not_after = to_offset(validity.not_after)?;
    Ok(p)
}

/// Files written by [`init`] or [`issue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Paths, in the order written.
    pub files: Vec<PathBuf>,
}

/// Creates a new site PKI in `out` (created if missing): CA, server certificate for
/// `localhost`, `127.0.0.1`, `::1` and `names` (DNS names or IP addresses), and the `operator`
/// and `observer` client certificates. Refuses to overwrite an existing PKI.
pub fn init(out: &Path, names: &[String]) -> Result<Written, Error> {
    let dir = PkiDir::new(out);
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for f in [dir.ca_cert(), dir.ca_key()] {
        if f.exists() {
            return Err(pki_err(format!(
                "{} already exists: refusing to replace a site CA",
                f.display()
            )));
        }
    }
    let ca_key = KeyPair::generate().map_err(pki_err)?;
    let ca_params = ca_params(Validity::days(CA_DAYS))?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(pki_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(pki_err)?;
    let server = server_params(names, Validity::days(LEAF_DAYS))?
        .signed_by(&server_key, &issuer)
        .map_err(pki_err)?;

    let mut files = Vec::new();
    let mut put = |path: PathBuf, text: String, private: bool| -> Result<(), Error> {
        write_new(&path, &text, private)?;
        files.push(path);
        Ok(())
    };
    put(dir.ca_cert(), ca_cert.pem(), false)?;
    put(dir.ca_key(), issuer.key().serialize_pem(), true)?;
    put(dir.cert("server"), server.pem(), false)?;
    put(dir.key("server"), server_key.serialize_pem(), true)?;
    for role in [Role::Operator, Role::Observer] {
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = client_params(role, role.as_str(), Validity::days(LEAF_DAYS))?
            .signed_by(&key, &issuer)
            .map_err(pki_err)?;
        put(dir.cert(role.as_str()), cert.pem(), false)?;
        put(dir.key(role.as_str()), key.serialize_pem(), true)?;
    }
    Ok(Written { files })
}

/// Issues a client certificate `<name>.pem` / `<name>.key` for `role`, signed by the CA in
/// `pki`, valid for the default period.
pub fn issue(pki: &Path, role: Role, name: &str) -> Result<Written, Error> {
    issue_with(pki, role, name, Validity::days(LEAF_DAYS))
}

/// [`issue`] with an explicit validity (tests use it to make expired certificates).
pub fn issue_with(
    pki: &Path,
    role: Role,
    name: &str,
    validity: Validity,
) -> Result<Written, Error> {
    check_name(name)?;
    let dir = PkiDir::new(pki);
    let (cert_path, key_path) = (dir.cert(name), dir.key(name));
    for f in [&cert_path, &key_path] {
        if f.exists() {
            return Err(pki_err(format!("{} already exists", f.display())));
        }
    }
    let ca_pem = fs::read_to_string(dir.ca_cert()).map_err(|e| Error::io(dir.ca_cert(), e))?;
    let ca_key_pem = fs::read_to_string(dir.ca_key()).map_err(|e| Error::io(dir.ca_key(), e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| pki_err(format!("{}: {e}", dir.ca_key().display())))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| pki_err(format!("{}: {e}", dir.ca_cert().display())))?;
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = client_params(role, name, validity)?
        .signed_by(&key, &issuer)
        .map_err(pki_err)?;
    write_new(&cert_path, &cert.pem(), false)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    Ok(Written {
        files: vec![cert_path, key_path],
    })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_err(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(cert_err(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| cert_err(format!("{}: {e}", path.display())))
}

/// The identity in a (verified) client certificate: common name, SHA-256 fingerprint and the
/// role from its `telecho:role:` SAN URI. Refuses a certificate without exactly one valid role.
pub fn read_identity(der: &[u8]) -> Result<Identity, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| cert_err(format!("unparsable: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned();
    if name.is_empty() {
        return Err(cert_err("no common name"));
    }
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| cert_err(format!("bad subject alternative names: {e}")))?;
    let mut roles = Vec::new();
    if let Some(sans) = sans {
        for gn in &sans.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = gn {
                if let Some(r) = uri.strip_prefix(ROLE_URI_PREFIX) {
                    roles.push(match r {
                        "operator" => Role::Operator,
                        "observer" => Role::Observer,
                        other => return Err(cert_err(format!("unknown role {other:?}"))),
                    });
                }
            }
        }
    }
    let role = match roles.as_slice() {
        [r] => *r,
        [] => return Err(cert_err(format!("{name}: no {ROLE_URI_PREFIX} role"))),
        _ => return Err(cert_err(format!("{name}: more than one role"))),
    };
    Ok(Identity {
        name,
        fingerprint: sha256_hex(der),
        role,
    })
}
