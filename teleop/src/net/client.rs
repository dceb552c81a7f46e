//! The console side over QUIC.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{client_crypto, lock, ClientAuth, Clock, MonotonicClock, DEFAULT_TICK};
use crate::clock_sync::ClockEstimate;
use crate::console::{
    ConsoleConfig, ConsoleCore, ConsoleEvent, ConsoleOutput, ConsoleStats, Latency,
};
use crate::error::ErrorKind;
use crate::pki::{load_certs, load_key, PkiDir};
use crate::wire::{
    check_frame_len, encode_frame, limits, CommandMode, LeaseOutcome, Message, OperatorCommand,
    Role, Target, ALPN,
};
use crate::Error;

/// Settings of a [`TeleopClient`].
#[derive(Debug)]
pub struct ClientConfig {
    /// The patient side's address.
    pub server: SocketAddr,
    /// Name the server certificate must carry (an IP address or a DNS name); [`Self::from_pki`]
    /// sets the address dialled, as a browser checks the host it connects to.
    pub server_name: String,
    /// CA certificates the server certificate must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// Our certificate.
    pub auth: ClientAuth,
    /// ALPN offered (tests change it).
    pub alpn: Vec<u8>,
    /// Protocol settings.
    pub console: ConsoleConfig,
    /// Our clock.
    pub clock: Arc<dyn Clock>,
    /// Core tick period.
    pub tick: Duration,
    /// Client software name sent in `Hello`.
    pub client_name: String,
    /// How long to wait for the handshake and the server's `Welcome`.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// Settings from a PKI directory: trusts `ca.pem`, presents `<name>.pem`/`<name>.key`, and
    /// expects the server certificate to name `server`'s IP address (`telecho certs init`
    /// always names `127.0.0.1` and `::1`; `--names` adds the site's addresses and DNS names;
    /// set [`Self::server_name`] to check a DNS name instead).
    pub fn from_pki(pki: &Path, name: &str, server: SocketAddr) -> Result<Self, Error> {
        let dir = PkiDir::new(pki);
        Ok(Self {
            server,
            server_name: server.ip().to_string(),
            ca: load_certs(&dir.ca_cert())?,
            auth: ClientAuth::Cert(load_certs(&dir.cert(name))?, load_key(&dir.key(name))?),
            alpn: ALPN.to_vec(),
            console: ConsoleConfig::default(),
            clock: MonotonicClock::shared(0.0),
            tick: DEFAULT_TICK,
            client_name: format!("telecho-teleop {}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(5),
        })
    }
}

struct Shared {
    core: Mutex<ConsoleCore>,
    conn: quinn::Connection,
    control: mpsc::UnboundedSender<Message>,
    events: mpsc::Sender<ConsoleEvent>,
    clock: Arc<dyn Clock>,
    events_dropped: AtomicU64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.clock.now_s()
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut ConsoleCore) -> R) -> R {
        let (r, outputs) = {
            let mut core = lock(&self.core);
            let r = f(&mut core);
            let mut outputs = Vec::new();
            while let Some(o) = core.poll_output() {
                outputs.push(o);
            }
            (r, outputs)
        };
        for o in outputs {
            match o {
                ConsoleOutput::Datagram(m) => {
                    let _ = self.conn.send_datagram(Bytes::from(m.to_bytes()));
                }
                ConsoleOutput::Control(m) => {
                    let _ = self.control.send(m);
                }
                ConsoleOutput::Event(e) => {
                    if self.events.try_send(e).is_err() {
                        self.events_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        r
    }
}

/// What the server told us when we connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Our role (from our certificate).
    pub role: Role,
    /// Our connection id.
    pub conn_id: u64,
    /// Our identity.
    pub identity: String,
    /// The lease holder (empty: free).
    pub holder: String,
}

/// The console side's QUIC client.
pub struct TeleopClient {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    events: mpsc::Receiver<ConsoleEvent>,
    welcome: Welcome,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TeleopClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeleopClient")
            .field("remote", &self.shared.conn.remote_address())
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

impl TeleopClient {
    /// Connects, authenticates and waits for the server's `Welcome`. Fails when the handshake
    /// is refused or the server closes the connection (e.g. a certificate without a role).
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        let core = ConsoleCore::new(config.console)?;
        let qc = client_crypto(&config.ca, config.auth, &config.alpn)?;
        let bind: SocketAddr = match (config.server.is_ipv4(), config.server.ip().is_loopback()) {
            (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
            (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(Error::net)?;
        endpoint.set_default_client_config(qc);
        let timeout = config.connect_timeout;
        let fail = |endpoint: &quinn::Endpoint, e: Error| {
            endpoint.close(quinn::VarInt::from_u32(0), b"");
            e
        };
        let connecting = endpoint
            .connect(config.server, &config.server_name)
            .map_err(|e| fail(&endpoint, Error::net(format!("connect: {e}"))))?;
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(fail(&endpoint, tls_refused(e))),
            Err(_) => return Err(fail(&endpoint, Error::net("handshake timed out"))),
        };
        let (send, recv) = match tokio::time::timeout(timeout, conn.open_bi()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(&endpoint, tls_refused(e))),
            Err(_) => return Err(fail(&endpoint, Error::net("control stream timed out"))),
        };
        let (ctx, crx) = mpsc::unbounded_channel();
        let (etx, mut erx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            conn: conn.clone(),
            control: ctx,
            events: etx,
            clock: config.clock,
            events_dropped: AtomicU64::new(0),
        });
        let tasks = vec![
            tokio::spawn(control_writer(send, crx)),
            tokio::spawn(control_reader(recv, shared.clone())),
            tokio::spawn(datagram_loop(shared.clone())),
            tokio::spawn(frame_loop(shared.clone())),
            tokio::spawn(tick_loop(shared.clone(), config.tick)),
        ];
        let now = shared.now();
        let name = config.client_name.clone();
        shared.with_core(|c| c.start(&name, now));
        // The first event is the Welcome; the connection closing first means we were refused.
        let first_welcome = async {
            while let Some(ev) = erx.recv().await {
                if let ConsoleEvent::Welcome {
                    role,
                    conn_id,
                    identity,
                    holder,
                } = ev
                {
                    return Some(Welcome {
                        role,
                        conn_id,
                        identity,
                        holder,
                    });
                }
            }
            None
        };
        let welcome = tokio::select! {
            w = tokio::time::timeout(timeout, first_welcome) => w.ok().flatten(),
            e = conn.closed() => {
                for t in &tasks { t.abort(); }
                return Err(fail(&endpoint, tls_refused(e)));
            }
        };
        let Some(welcome) = welcome else {
            for t in &tasks {
                t.abort();
            }
            conn.close(quinn::VarInt::from_u32(0), b"no welcome");
            return Err(fail(&endpoint, Error::net("no welcome from the server")));
        };
        Ok(Self {
            endpoint,
            shared,
            events: erx,
            welcome,
            tasks,
        })
    }

    /// What the server said when we connected.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Our clock, s.
    pub fn now_s(&self) -> f64 {
        self.shared.now()
    }

    /// Sends an operator command (numbered and stamped now) as a datagram.
    pub fn send_command(&self, mode: CommandMode, force_n: f64, target: Target) -> OperatorCommand {
        let now = self.shared.now();
        self.shared
            .with_core(|c| c.command(now, mode, force_n, target))
    }

    /// Sends raw bytes as a datagram (tests: malformed and replayed datagrams).
    pub fn send_raw_datagram(&self, bytes: Vec<u8>) -> Result<(), Error> {
        self.shared
            .conn
            .send_datagram(Bytes::from(bytes))
            .map_err(Error::net)
    }

    /// Runs `f` on the console core (to queue lease and session requests); returns its result
    /// (usually the request id).
    pub fn request<R>(&self, f: impl FnOnce(&mut ConsoleCore) -> R) -> R {
        self.shared.with_core(f)
    }

    /// Next event within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<ConsoleEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits up to `timeout` for an event `pick` accepts, discarding others.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ConsoleEvent) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()
                .flatten()?;
            if let Some(t) = pick(&ev) {
                return Some(t);
            }
        }
    }

    /// Sends a lease request made by `make` and waits for its answer.
    pub async fn lease(
        &mut self,
        make: impl FnOnce(&mut ConsoleCore) -> u32,
        timeout: Duration,
    ) -> Option<LeaseOutcome> {
        let req = self.request(make);
        self.wait_for(timeout, |e| match e {
            ConsoleEvent::Lease {
                req: r, outcome, ..
            } if *r == req => Some(*outcome),
            _ => None,
        })
        .await
    }

    /// Clock estimate (server clock minus ours).
    pub fn clock(&self) -> Option<ClockEstimate> {
        lock(&self.shared.core).clock()
    }

    /// Measured latency.
    pub fn latency(&self) -> Latency {
        lock(&self.shared.core).latency()
    }

    /// Counters.
    pub fn stats(&self) -> ConsoleStats {
        lock(&self.shared.core).stats()
    }

    /// True while we hold the lease.
    pub fn has_lease(&self) -> bool {
        lock(&self.shared.core).has_lease()
    }

    /// Closes the connection (the server sees a disconnect at once).
    pub async fn close(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.shared.conn.close(quinn::VarInt::from_u32(0), b"bye");
        tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle())
            .await
            .ok();
        // The endpoint is ours alone (one per client): close it, so that its driver and its
        // receive buffers go now rather than whenever the last handle happens to be dropped.
        self.endpoint.close(quinn::VarInt::from_u32(0), b"bye");
    }
}

impl Drop for TeleopClient {
    /// A client dropped without [`TeleopClient::close`] stops its tasks and closes its
    /// connection, so that nothing keeps the connection and its endpoint alive.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared
            .conn
            .close(quinn::VarInt::from_u32(0), b"dropped");
    }
}

fn tls_refused(e: quinn::ConnectionError) -> Error {
    ErrorKind::Tls(format!("connection refused: {e}")).into()
}

async fn control_writer(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut buf = Vec::with_capacity(256);
    while let Some(msg) = rx.recv().await {
        buf.clear();
        encode_frame(&msg, &mut buf);
        if send.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn control_reader(mut recv: quinn::RecvStream, shared: Arc<Shared>) {
    let mut len = [0u8; 4];
    let mut buf = vec![0u8; limits::MAX_CONTROL_FRAME];
    loop {
        if recv.read_exact(&mut len).await.is_err() {
            return;
        }
        let Ok(n) = check_frame_len(u32::from_le_bytes(len), limits::MAX_CONTROL_FRAME) else {
            shared.conn.close(quinn::VarInt::from_u32(2), b"bad frame");
            return;
        };
        if recv.read_exact(&mut buf[..n]).await.is_err() {
            return;
        }
        let ok = match Message::decode(&buf[..n]) {
            Ok(m) => shared.with_core(|c| c.handle_control(m)).is_ok(),
            Err(_) => false,
        };
        if !ok {
            shared
                .conn
                .close(quinn::VarInt::from_u32(2), b"protocol violation");
            return;
        }
    }
}

async fn datagram_loop(shared: Arc<Shared>) {
    while let Ok(bytes) = shared.conn.read_datagram().await {
        let now = shared.now();
        let _ = shared.with_core(|c| c.handle_datagram(&bytes, now));
    }
}

async fn frame_loop(shared: Arc<Shared>) {
    // The per-frame readers live in a set owned by this task: aborting the loop (close, drop)
    // aborts them too, so none outlives the client holding its connection and endpoint.
    let mut readers = tokio::task::JoinSet::new();
    while let Ok(mut recv) = shared.conn.accept_uni().await {
        while readers.try_join_next().is_some() {}
        let shared = shared.clone();
        readers.spawn(async move {
            let Ok(data) = recv.read_to_end(limits::MAX_US_FRAME + 4).await else {
                return;
            };
            if data.len() < 4 {
                return;
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&data[..4]);
            let Ok(n) = check_frame_len(u32::from_le_bytes(len), limits::MAX_US_FRAME) else {
                return;
            };
            if n != data.len() - 4 {
                return;
            }
            if let Ok(Message::UsFrame(f)) = Message::decode(&data[4..]) {
                let now = shared.now();
                shared.with_core(|c| c.handle_frame(f, now));
            }
        });
    }
}

async fn tick_loop(shared: Arc<Shared>, period: Duration) {
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        iv.tick().await;
        let now = shared.now();
        shared.with_core(|c| c.tick(now));
    }
}
