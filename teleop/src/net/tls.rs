//! rustls (ring) configurations: TLS 1.3 only, mutual authentication, ALPN `telecho/1`.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ErrorKind;
use crate::wire::ALPN;
use crate::Error;

fn tls_err(what: impl std::fmt::Display) -> Error {
    ErrorKind::Tls(what.to_string()).into()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| tls_err(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Transport settings shared by both sides: datagram buffers for a 1 kHz command stream,
/// a 5 s idle timeout with 1 s keep-alives, streams for ultrasound frames.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // 5 s fits in an IdleTimeout (it is far below the 2^62 ms limit).
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(5)).ok());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    Arc::new(t)
}

/// The patient side's QUIC configuration: presents `chain`/`key`, requires a client
/// certificate chaining to `ca` (rustls `WebPkiClientVerifier`), TLS 1.3, ALPN `telecho/1`,
/// no 0-RTT (commands must not be replayable).
pub fn server_crypto(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, Error> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, p.clone())
        .build()
        .map_err(tls_err)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(cfg).map_err(tls_err)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(transport_config());
    Ok(sc)
}

/// The certificate a client presents.
#[derive(Debug)]
pub enum ClientAuth {
    /// A certificate chain and its key (normal operation).
    Cert(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    /// No certificate (tests: the server must refuse).
    None,
}

/// The console side's QUIC configuration: trusts `ca`, presents `auth`, offers `alpn`.
pub fn client_crypto(
    ca: &[CertificateDer<'static>],
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match auth {
        ClientAuth::Cert(chain, key) => {
            builder.with_client_auth_cert(chain, key).map_err(tls_err)?
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport_config());
    Ok(cc)
}
