//! Fixtures of the network tests: a site PKI, a foreign one, extra certificates.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use telecho_teleop::net::client::ClientConfig;
use telecho_teleop::net::server::ServerConfig;
use telecho_teleop::pki::{init, issue, issue_with, Validity};
use telecho_teleop::wire::Role;

pub struct Pkis {
    /// The site PKI (operator, observer, operator-2, expired).
    pub site: PathBuf,
    /// Another site's PKI.
    pub foreign: PathBuf,
}

/// Created once per test binary.
pub fn pkis() -> &'static Pkis {
    static P: OnceLock<Pkis> = OnceLock::new();
    P.get_or_init(|| {
        let base = telecho_testkit::scratch("teleop-net");
        let _ = std::fs::remove_dir_all(&base);
        let site = base.join("site");
        let foreign = base.join("foreign");
        init(&site, &[]).unwrap();
        init(&foreign, &[]).unwrap();
        issue(&site, Role::Operator, "operator-2").unwrap();
        let now = SystemTime::now();
        issue_with(
            &site,
            Role::Operator,
            "expired",
            Validity {
                not_before: now - Duration::from_secs(30 * 86_400),
                not_after: now - Duration::from_secs(86_400),
            },
        )
        .unwrap();
        Pkis { site, foreign }
    })
}

pub fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Server settings on an ephemeral loopback port with an audit log in `audit_dir`.
pub fn server_config(audit_dir: &Path) -> ServerConfig {
    let mut c = ServerConfig::from_pki(&pkis().site, localhost()).unwrap();
    std::fs::create_dir_all(audit_dir).unwrap();
    let audit = audit_dir.join("audit.jsonl");
    let _ = std::fs::remove_file(&audit);
    c.audit = Some(audit);
    c
}

pub fn client_config(name: &str, server: SocketAddr) -> ClientConfig {
    ClientConfig::from_pki(&pkis().site, name, server).unwrap()
}

pub fn tmp(name: &str) -> PathBuf {
    telecho_testkit::scratch(&format!("teleop-{name}"))
}
