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

/// Congestion window always left to the command datagrams, bytes: a 1 kHz stream of
/// 84-byte commands (≈ 130 bytes on the wire) at 1 s RTT has 130 kB in flight.
const COMMAND_WINDOW_FLOOR: u64 = 160 * 1024;

/// Cubic with a window floor: loss shrinks the window as usual for the ultrasound streams
/// (which also skip frames on their own when two are in flight), but never below
/// `COMMAND_WINDOW_FLOOR`, so that a few random losses cannot stall the command datagrams
/// behind the congestion window (the floor is a few hundred kbit/s: no threat to the path).
struct FlooredCubic {
    inner: Box<dyn quinn::congestion::Controller>,
    floor: u64,
}

impl quinn::congestion::Controller for FlooredCubic {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: std::time::Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
        Box::new(FlooredCubic {
            inner: self.inner.clone_box(),
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

#[derive(Debug)]
struct FlooredCubicFactory {
    floor: u64,
}

impl quinn::congestion::ControllerFactory for FlooredCubicFactory {
    fn build(
        self: Arc<Self>,
        now: std::time::Instant,
        current_mtu: u16,
    ) -> Box<dyn quinn::congestion::Controller> {
        let cubic = Arc::new(quinn::congestion::CubicConfig::default());
        Box::new(FlooredCubic {
            inner: cubic.build(now, current_mtu),
            floor: self.floor,
        })
    }
}

/// Transport settings shared by both sides: datagram buffers for a 1 kHz command stream,
/// a 5 s idle timeout with 1 s keep-alives, streams for ultrasound frames, and a congestion
/// window floor of 160 kB for the commands.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(Arc::new(FlooredCubicFactory {
        floor: COMMAND_WINDOW_FLOOR,
    }));
    // 5 s fits in an IdleTimeout (it is far below the 2^62 ms limit).
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(5)).ok());
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(64));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4));
    Arc::new(t)
}

/// The patient side's TLS configuration (also used by the TCP+TLS baseline of the latency
/// benchmark): presents `chain`/`key`, requires a client certificate chaining to `ca` (rustls
/// `WebPkiClientVerifier`), TLS 1.3, ALPN `telecho/1`, no early data.
pub fn server_tls(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, Error> {
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
    Ok(cfg)
}

/// The patient side's QUIC configuration: [`server_tls`] with the transport settings.
pub fn server_crypto(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, Error> {
    let cfg = server_tls(ca, chain, key)?;
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

/// The console side's TLS configuration: trusts `ca`, presents `auth`, offers `alpn`, TLS 1.3.
pub fn client_tls(
    ca: &[CertificateDer<'static>],
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, Error> {
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
    Ok(cfg)
}

/// The console side's QUIC configuration: [`client_tls`] with the transport settings.
pub fn client_crypto(
    ca: &[CertificateDer<'static>],
    auth: ClientAuth,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, Error> {
    let cfg = client_tls(ca, auth, alpn)?;
    let crypto = QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(crypto));
    cc.transport_config(transport_config());
    Ok(cc)
}
