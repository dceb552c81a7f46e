//! The patient side over QUIC.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nalgebra::Vector3;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::{close_code, lock, server_crypto, Clock, MonotonicClock, DEFAULT_TICK};
use crate::audit::AuditLog;
use crate::clock_sync::ClockEstimate;
use crate::identity::Identity;
use crate::lease::ConnId;
use crate::pki::{load_certs, load_key, read_identity, PkiDir};
use crate::session::{
    ControlCommand, Output, PatientConfig, PatientCore, PatientStats, SessionRequest,
};
use crate::watchdog::LinkEvent;
use crate::wire::{
    check_frame_len, encode_frame, limits, ContactModel, Message, Pose, SafetyCode, UsFrameMsg,
    ALPN,
};
use crate::Error;

/// Settings of a [`TeleopServer`].
#[derive(Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// CA certificates client certificates must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// The server's certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The server's key.
    pub key: PrivateKeyDer<'static>,
    /// Protocol settings.
    pub core: PatientConfig,
    /// Audit log file (none: records are only traced).
    pub audit: Option<PathBuf>,
    /// Core tick period.
    pub tick: Duration,
    /// The patient side's clock.
    pub clock: Arc<dyn Clock>,
    /// Accepted commands buffered for the control node; when it falls behind the oldest are
    /// dropped (newest wins).
    pub command_capacity: usize,
    /// Receives a copy of every audit record once it is written through to the log (the JSON
    /// line as in the file), e.g. to publish it on ROS 2 `/audit` for recording. A full queue
    /// drops the copy (counted in [`ServerStats::audit_tap_dropped`]), never the record.
    pub audit_tap: Option<std::sync::mpsc::SyncSender<String>>,
}

impl ServerConfig {
    /// Settings from a PKI directory (`ca.pem`, `server.pem`, `server.key`) with defaults.
    pub fn from_pki(pki: &Path, listen: SocketAddr) -> Result<Self, Error> {
        let dir = PkiDir::new(pki);
        Ok(Self {
            listen,
            ca: load_certs(&dir.ca_cert())?,
            chain: load_certs(&dir.cert("server"))?,
            key: load_key(&dir.key("server"))?,
            core: PatientConfig::default(),
            audit: None,
            tick: DEFAULT_TICK,
            clock: MonotonicClock::shared(0.0),
            command_capacity: 64,
            audit_tap: None,
        })
    }
}

/// Events for the control node besides commands.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// The link state changed (hold, retract, live, idle).
    Link(LinkEvent),
    /// A session request (e-stop, reset, scan protocol).
    Session {
        /// Who asked.
        by: String,
        /// What.
        request: SessionRequest,
    },
    /// A client connected.
    Connected {
        /// Connection id.
        conn: ConnId,
        /// Its identity.
        identity: Identity,
    },
    /// A client went away.
    Disconnected {
        /// Connection id.
        conn: ConnId,
    },
}

struct CommandQueue {
    queue: Mutex<VecDeque<ControlCommand>>,
    capacity: usize,
    notify: Notify,
    closed: AtomicBool,
}

impl CommandQueue {
    /// Queues `c`; returns false when the oldest command had to be dropped for it.
    fn push(&self, c: ControlCommand) -> bool {
        let mut q = lock(&self.queue);
        let dropped = q.len() >= self.capacity;
        if dropped {
            q.pop_front();
        }
        q.push_back(c);
        drop(q);
        self.notify.notify_one();
        !dropped
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Accepted, validated commands for the control node, oldest first. Bounded: when the
/// control node falls behind, the oldest are dropped (newest wins).
pub struct CommandReceiver {
    queue: Arc<CommandQueue>,
}

impl std::fmt::Debug for CommandReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandReceiver")
            .field("queued", &lock(&self.queue.queue).len())
            .finish_non_exhaustive()
    }
}

impl CommandReceiver {
    /// The next command, waiting for one; `None` once the server shut down and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<ControlCommand> {
        loop {
            if let Some(c) = lock(&self.queue.queue).pop_front() {
                return Some(c);
            }
            if self.queue.closed.load(Ordering::Acquire) {
                return None;
            }
            self.queue.notify.notified().await;
        }
    }

    /// The next command if one is queued.
    pub fn try_recv(&mut self) -> Option<ControlCommand> {
        lock(&self.queue.queue).pop_front()
    }

    /// The newest queued command, discarding the older ones (what a control loop wants each
    /// cycle).
    pub fn latest(&mut self) -> Option<ControlCommand> {
        let mut q = lock(&self.queue.queue);
        let c = q.pop_back();
        q.clear();
        c
    }
}

/// What the control node receives.
#[derive(Debug)]
pub struct ServerChannels {
    /// Accepted, validated commands.
    pub commands: CommandReceiver,
    /// Link, session and connection events.
    pub events: mpsc::UnboundedReceiver<ServerEvent>,
}

/// Counters of the network layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// The protocol core's counters.
    pub core: PatientStats,
    /// Handshakes that failed (no/invalid certificate, wrong ALPN, …).
    pub handshakes_failed: u64,
    /// Connections closed because the certificate carried no valid role.
    pub bad_identity: u64,
    /// Connections closed for a protocol violation on the control stream.
    pub protocol_violations: u64,
    /// Commands dropped because the control node did not keep up.
    pub commands_overflowed: u64,
    /// Datagrams that could not be sent.
    pub datagrams_unsent: u64,
    /// Ultrasound frames sent (per client).
    pub frames_sent: u64,
    /// Ultrasound frames skipped because the previous ones were still in flight.
    pub frames_skipped: u64,
    /// Audit records written.
    pub audit_records: u64,
    /// Accepted commands withheld from the control node because the audit log could not be
    /// written (every command that moves the robot is on record first).
    pub commands_unaudited: u64,
    /// Audit-log writes that failed.
    pub audit_failures: u64,
    /// Copies of audit records the [`ServerConfig::audit_tap`] queue had no room for.
    pub audit_tap_dropped: u64,
}

#[derive(Default)]
struct Counters {
    handshakes_failed: AtomicU64,
    bad_identity: AtomicU64,
    protocol_violations: AtomicU64,
    commands_overflowed: AtomicU64,
    datagrams_unsent: AtomicU64,
    frames_sent: AtomicU64,
    frames_skipped: AtomicU64,
    commands_unaudited: AtomicU64,
    audit_failures: AtomicU64,
    audit_tap_dropped: AtomicU64,
    /// The last audit write or flush failed: commands are withheld until a flush succeeds.
    audit_down: AtomicBool,
}

struct ConnHandle {
    conn: quinn::Connection,
    control: mpsc::UnboundedSender<Message>,
    frames_in_flight: Arc<AtomicUsize>,
}

struct Shared {
    core: Mutex<PatientCore>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    audit: Mutex<Option<AuditLog>>,
    audit_tap: Option<std::sync::mpsc::SyncSender<String>>,
    commands: Arc<CommandQueue>,
    events: mpsc::UnboundedSender<ServerEvent>,
    clock: Arc<dyn Clock>,
    counters: Counters,
    next_conn: AtomicU64,
}

impl Shared {
    fn now(&self) -> f64 {
        self.clock.now_s()
    }

    /// Runs `f` on the core and dispatches what it produced.
    fn with_core<R>(&self, f: impl FnOnce(&mut PatientCore) -> R) -> R {
        let (r, outputs) = {
            let mut core = lock(&self.core);
            let r = f(&mut core);
            let mut outputs = Vec::new();
            while let Some(o) = core.poll_output() {
                outputs.push(o);
            }
            (r, outputs)
        };
        self.dispatch(outputs);
        r
    }

    /// Appends one record and writes it through to the file, so that a command is on record
    /// before it can reach the control node. On failure the log is marked down.
    fn audit(&self, who: &crate::audit::Who, what: &crate::audit::AuditEvent) {
        let mut audit = lock(&self.audit);
        let Some(log) = audit.as_mut() else {
            tracing::debug!(who = %who.cn, ?what, "audit");
            return;
        };
        match log.append(who, what).and_then(|()| log.flush()) {
            Err(e) => {
                self.counters.audit_failures.fetch_add(1, Ordering::Relaxed);
                if !self.counters.audit_down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        "audit log: {e}; operator commands withheld until it can be written"
                    );
                }
            }
            Ok(()) => {
                if let (Some(tap), Some(line)) = (&self.audit_tap, log.last_record()) {
                    if tap.try_send(line.to_owned()).is_err() {
                        self.counters
                            .audit_tap_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    fn dispatch(&self, mut outputs: Vec<Output>) {
        // Records first: a command's audit record is written before the command is passed on.
        outputs.sort_by_key(|o| !matches!(o, Output::Audit { .. }));
        for o in outputs {
            match o {
                Output::Datagram { to, msg } => {
                    let conns = lock(&self.conns);
                    if let Some(h) = conns.get(&to) {
                        if h.conn.send_datagram(Bytes::from(msg.to_bytes())).is_err() {
                            self.counters
                                .datagrams_unsent
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Output::Control { to, msg } => {
                    let conns = lock(&self.conns);
                    if let Some(h) = conns.get(&to) {
                        let _ = h.control.send(msg);
                    }
                }
                Output::Command(c) => {
                    if self.counters.audit_down.load(Ordering::Relaxed) {
                        self.counters
                            .commands_unaudited
                            .fetch_add(1, Ordering::Relaxed);
                    } else if !self.commands.push(c) {
                        self.counters
                            .commands_overflowed
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Output::Link(ev) => {
                    let _ = self.events.send(ServerEvent::Link(ev));
                }
                Output::Session { by, request } => {
                    let _ = self.events.send(ServerEvent::Session { by, request });
                }
                Output::Audit { who, what } => self.audit(&who, &what),
            }
        }
    }

    fn broadcast_datagram(&self, msg: &Message) {
        let bytes = Bytes::from(msg.to_bytes());
        let conns = lock(&self.conns);
        for h in conns.values() {
            if h.conn.send_datagram(bytes.clone()).is_err() {
                self.counters
                    .datagrams_unsent
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The patient side's QUIC server.
pub struct TeleopServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TeleopServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeleopServer")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TeleopServer {
    /// Binds and starts serving (inside a tokio runtime). Returns the server and the channels
    /// the control node reads.
    pub fn bind(config: ServerConfig) -> Result<(Self, ServerChannels), Error> {
        let core = PatientCore::new(config.core)?;
        let audit = match &config.audit {
            Some(p) => Some(AuditLog::open(p)?),
            None => None,
        };
        let qc = server_crypto(&config.ca, config.chain, config.key)?;
        let endpoint = quinn::Endpoint::server(qc, config.listen)
            .map_err(|e| Error::net(format!("bind {}: {e}", config.listen)))?;
        let queue = Arc::new(CommandQueue {
            queue: Mutex::new(VecDeque::with_capacity(config.command_capacity.max(1))),
            capacity: config.command_capacity.max(1),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let (etx, erx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            conns: Mutex::new(HashMap::new()),
            audit: Mutex::new(audit),
            audit_tap: config.audit_tap,
            commands: queue.clone(),
            events: etx,
            clock: config.clock,
            counters: Counters::default(),
            next_conn: AtomicU64::new(1),
        });
        let accept = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        let ticker = tokio::spawn(tick_loop(shared.clone(), config.tick));
        Ok((
            Self {
                endpoint,
                shared,
                tasks: vec![accept, ticker],
            },
            ServerChannels {
                commands: CommandReceiver { queue },
                events: erx,
            },
        ))
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.endpoint.local_addr().map_err(Error::net)
    }

    /// The patient clock, s.
    pub fn now_s(&self) -> f64 {
        self.shared.now()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let audit_records = lock(&self.shared.audit).as_ref().map_or(0, |a| a.len());
        ServerStats {
            core: lock(&self.shared.core).stats(),
            handshakes_failed: c.handshakes_failed.load(Ordering::Relaxed),
            bad_identity: c.bad_identity.load(Ordering::Relaxed),
            protocol_violations: c.protocol_violations.load(Ordering::Relaxed),
            commands_overflowed: c.commands_overflowed.load(Ordering::Relaxed),
            datagrams_unsent: c.datagrams_unsent.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            frames_skipped: c.frames_skipped.load(Ordering::Relaxed),
            audit_records,
            commands_unaudited: c.commands_unaudited.load(Ordering::Relaxed),
            audit_failures: c.audit_failures.load(Ordering::Relaxed),
            audit_tap_dropped: c.audit_tap_dropped.load(Ordering::Relaxed),
        }
    }

    /// The lease holder's identity.
    pub fn lease_holder(&self) -> Option<String> {
        lock(&self.shared.core).lease_holder().map(str::to_owned)
    }

    /// Connected clients with their clock estimates (their clock minus ours).
    pub fn clients(&self) -> Vec<(ConnId, Identity, Option<ClockEstimate>)> {
        let core = lock(&self.shared.core);
        core.connections()
            .map(|(c, id)| (c, id.clone(), core.clock_estimate(c)))
            .collect()
    }

    /// Sends haptic feedback (measured wrench and contact model) to every client.
    pub fn publish_haptic(
        &self,
        force_n: Vector3<f64>,
        torque_nm: Vector3<f64>,
        contact: Option<ContactModel>,
    ) {
        let now = self.shared.now();
        let msg = lock(&self.shared.core).haptic(now, force_n, torque_nm, contact);
        self.shared.broadcast_datagram(&msg);
    }

    /// Sends the robot state to every client.
    pub fn publish_state(
        &self,
        safety: SafetyCode,
        joints_rad: Vec<f64>,
        probe: Pose,
        force_n: Vector3<f64>,
        torque_nm: Vector3<f64>,
    ) {
        let now = self.shared.now();
        let msg =
            lock(&self.shared.core).robot_state(now, safety, joints_rad, probe, force_n, torque_nm);
        self.shared.broadcast_datagram(&msg);
    }

    /// Sends an ultrasound frame to every client, each on a new unidirectional stream. A
    /// client whose previous two frames are still in flight skips this one.
    pub fn publish_frame(&self, frame: UsFrameMsg) {
        let mut buf = Vec::with_capacity(frame.payload.len() + 128);
        encode_frame(&Message::UsFrame(frame), &mut buf);
        let bytes = Bytes::from(buf);
        let conns = lock(&self.shared.conns);
        for h in conns.values() {
            if h.frames_in_flight.load(Ordering::Relaxed) >= 2 {
                self.shared
                    .counters
                    .frames_skipped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            h.frames_in_flight.fetch_add(1, Ordering::Relaxed);
            let conn = h.conn.clone();
            let inflight = h.frames_in_flight.clone();
            let bytes = bytes.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let ok = async {
                    let mut s = conn.open_uni().await.ok()?;
                    s.write_all(&bytes).await.ok()?;
                    s.finish().ok()
                }
                .await;
                if ok.is_some() {
                    shared.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
                inflight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Flushes the audit log.
    pub fn flush_audit(&self) -> Result<(), Error> {
        match lock(&self.shared.audit).as_mut() {
            Some(a) => a.flush(),
            None => Ok(()),
        }
    }

    /// Closes every connection and the endpoint, flushes the audit log.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.endpoint
            .close(quinn::VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        for t in &self.tasks {
            t.abort();
        }
        // Let connection tasks record their disconnects.
        tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle())
            .await
            .ok();
        self.shared.commands.close();
        self.flush_audit()
    }
}

impl Drop for TeleopServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint
            .close(quinn::VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        self.shared.commands.close();
        let _ = self.flush_audit();
    }
}

async fn tick_loop(shared: Arc<Shared>, period: Duration) {
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        iv.tick().await;
        let now = shared.now();
        shared.with_core(|c| c.tick(now));
        n += 1;
        if n.is_multiple_of(20) {
            if let Some(a) = lock(&shared.audit).as_mut() {
                match a.flush() {
                    Err(e) => {
                        shared
                            .counters
                            .audit_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if !shared.counters.audit_down.swap(true, Ordering::Relaxed) {
                            tracing::error!("audit log: {e}; operator commands withheld");
                        }
                    }
                    Ok(()) => {
                        if shared.counters.audit_down.swap(false, Ordering::Relaxed) {
                            tracing::warn!("audit log writable again: operator commands pass");
                        }
                    }
                }
            }
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, shared.clone()));
    }
}

fn peer_identity(conn: &quinn::Connection) -> Result<Identity, Error> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| Error::net("no client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Error::net("empty certificate chain"))?;
    read_identity(leaf)
}

fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            shared
                .counters
                .handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, "handshake refused: {e}");
            return;
        }
    };
    if negotiated_alpn(&conn).as_deref() != Some(ALPN) {
        shared
            .counters
            .handshakes_failed
            .fetch_add(1, Ordering::Relaxed);
        conn.close(quinn::VarInt::from_u32(close_code::ALPN), b"alpn");
        return;
    }
    let identity = match peer_identity(&conn) {
        Ok(id) => id,
        Err(e) => {
            shared.counters.bad_identity.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, "refused: {e}");
            conn.close(
                quinn::VarInt::from_u32(close_code::BAD_IDENTITY),
                b"certificate carries no valid telecho role",
            );
            return;
        }
    };
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (ctx, crx) = mpsc::unbounded_channel();
    lock(&shared.conns).insert(
        id,
        ConnHandle {
            conn: conn.clone(),
            control: ctx,
            frames_in_flight: Arc::new(AtomicUsize::new(0)),
        },
    );
    let now = shared.now();
    let remote_s = remote.to_string();
    let ident = identity.clone();
    shared.with_core(|c| c.connect(id, ident, &remote_s, now));
    let _ = shared
        .events
        .send(ServerEvent::Connected { conn: id, identity });

    let reason = tokio::select! {
        r = datagram_loop(&conn, id, &shared) => r,
        r = control_loop(&conn, id, &shared, crx) => r,
    };
    let now = shared.now();
    lock(&shared.conns).remove(&id);
    shared.with_core(|c| c.disconnect(id, &reason, now));
    let _ = shared.events.send(ServerEvent::Disconnected { conn: id });
}

async fn datagram_loop(conn: &quinn::Connection, id: ConnId, shared: &Shared) -> String {
    loop {
        match conn.read_datagram().await {
            Ok(bytes) => {
                let now = shared.now();
                if let Err(e) = shared.with_core(|c| c.handle_datagram(id, &bytes, now)) {
                    tracing::debug!(conn = id, "malformed datagram dropped: {e}");
                }
            }
            Err(e) => return e.to_string(),
        }
    }
}

async fn control_loop(
    conn: &quinn::Connection,
    id: ConnId,
    shared: &Shared,
    mut outgoing: mpsc::UnboundedReceiver<Message>,
) -> String {
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let writer = async move {
        let mut buf = Vec::with_capacity(256);
        while let Some(msg) = outgoing.recv().await {
            buf.clear();
            encode_frame(&msg, &mut buf);
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
    };
    let reader = async {
        let mut len = [0u8; 4];
        let mut buf = vec![0u8; limits::MAX_CONTROL_FRAME];
        loop {
            if let Err(e) = recv.read_exact(&mut len).await {
                return format!("control stream: {e}");
            }
            let n = match check_frame_len(u32::from_le_bytes(len), limits::MAX_CONTROL_FRAME) {
                Ok(n) => n,
                Err(e) => return violation(conn, shared, &e),
            };
            if let Err(e) = recv.read_exact(&mut buf[..n]).await {
                return format!("control stream: {e}");
            }
            let msg = match Message::decode(&buf[..n]) {
                Ok(m) => m,
                Err(e) => return violation(conn, shared, &e),
            };
            let now = shared.now();
            if let Err(e) = shared.with_core(|c| c.handle_control(id, msg, now)) {
                return violation(conn, shared, &e);
            }
        }
    };
    tokio::select! {
        r = reader => r,
        _ = writer => conn.closed().await.to_string(),
    }
}

fn violation(conn: &quinn::Connection, shared: &Shared, e: &Error) -> String {
    shared
        .counters
        .protocol_violations
        .fetch_add(1, Ordering::Relaxed);
    let reason = format!("protocol violation: {e}");
    conn.close(
        quinn::VarInt::from_u32(close_code::PROTOCOL),
        reason.as_bytes(),
    );
    reason
}
