//! A TCP OpenIGTLink server (std threads): any number of clients, each with a bounded send queue,
//! a writer thread and a reader thread.
//!
//! - [`Server::broadcast`] encodes a message once and queues it to every streaming client; a
//!   client whose queue is full (it reads too slowly) loses that message, the others do not wait.
//! - The reader answers `GET_<type>` with the latest message of that type (and device, when the
//!   request names one) or a STATUS "not found", `STT_`/`STP_` with `RTS_` after switching the
//!   client's stream on/off. Other messages a client sends are logged and ignored; an unknown
//!   type with a valid header and CRC is skipped, as the protocol asks.
//! - A client that disconnects, or sends bytes that are not OpenIGTLink (bad header, bad CRC), is
//!   dropped; the others are not affected.

use std::collections::BTreeMap;
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::codec::{
    status_code, Content, Decoder, Message, Request, RequestKind, Status, Timestamp,
    DEFAULT_MAX_BODY_SIZE,
};
use crate::error::Error;

/// How often the accept and reader threads look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Messages queued per client before new ones are dropped for it.
    pub queue_len: usize,
    /// Largest message body accepted from a client, bytes.
    pub max_body_size: u64,
    /// Clients served at once; more are refused.
    pub max_clients: usize,
    /// A write blocked this long drops the client.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            queue_len: 64,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            max_clients: 32,
            write_timeout: Duration::from_secs(2),
        }
    }
}

type Bytes = Arc<[u8]>;

struct Client {
    id: u64,
    peer: SocketAddr,
    tx: Option<SyncSender<Bytes>>,
    streaming: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    stream: TcpStream,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    fn close(mut self) {
        // Dropping the sender lets the writer drain its queue and end.
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The latest message per (type, device), encoded, for GET_ requests.
type Latest = BTreeMap<(String, String), Bytes>;

struct Shared {
    config: ServerConfig,
    clients: Mutex<Vec<Client>>,
    latest: Mutex<Latest>,
    stop: AtomicBool,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Removes and closes the clients that disconnected or were dropped.
    fn prune(&self) {
        let dead: Vec<Client> = {
            let mut clients = lock(&self.clients);
            let (dead, live) = clients
                .drain(..)
                .partition(|c| !c.alive.load(Ordering::Acquire));
            *clients = live;
            dead
        };
        for c in dead {
            info!(client = c.id, peer = %c.peer, "OpenIGTLink client gone");
            c.close();
        }
    }
}

/// A running OpenIGTLink server. Dropping it stops it (see [`Server::shutdown`]).
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("clients", &self.client_count())
            .finish()
    }
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port; OpenIGTLink's usual port is 18944).
    pub fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io("cannot listen", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("listening address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("non-blocking listener", e))?;
        let shared = Arc::new(Shared {
            config,
            clients: Mutex::new(Vec::new()),
            latest: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("igtl-accept".into())
            .spawn(move || accept_loop(&listener, &s))
            .map_err(|e| Error::io("cannot start the accept thread", e))?;
        info!(%local_addr, "OpenIGTLink server listening");
        Ok(Self {
            local_addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        lock(&self.shared.clients)
            .iter()
            .filter(|c| c.alive.load(Ordering::Acquire))
            .count()
    }

    /// Messages dropped so far because a client's queue was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` clients are connected; false on timeout.
    pub fn wait_for_clients(&self, n: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.client_count() >= n {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Encodes `message` once, remembers it for GET_ requests and queues it to every streaming
    /// client. Returns the number of clients it was queued to.
    pub fn broadcast(&self, message: &Message) -> Result<usize, Error> {
        let bytes: Bytes = message.encode()?.into();
        lock(&self.shared.latest).insert(
            (message.content.type_name(), message.device_name.clone()),
            Arc::clone(&bytes),
        );
        let mut sent = 0;
        for c in lock(&self.shared.clients).iter() {
            if !c.alive.load(Ordering::Acquire) || !c.streaming.load(Ordering::Acquire) {
                continue;
            }
            let Some(tx) = &c.tx else { continue };
            match tx.try_send(Arc::clone(&bytes)) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(_)) => {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(client = c.id, "client queue full: message dropped for it");
                }
                Err(TrySendError::Disconnected(_)) => c.alive.store(false, Ordering::Release),
            }
        }
        Ok(sent)
    }

    /// Stops accepting, lets every client's queue drain (each write bounded by
    /// [`ServerConfig::write_timeout`]) and closes the connections.
    pub fn shutdown(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        let clients: Vec<Client> = lock(&self.shared.clients).drain(..).collect();
        for c in clients {
            c.close();
        }
        info!(local_addr = %self.local_addr, "OpenIGTLink server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.close();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Acquire) {
        shared.prune();
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = add_client(shared, stream, peer) {
                    warn!(%peer, "OpenIGTLink client refused: {e}");
                }
            }
            Err(e) if e.kind() == IoErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                warn!("accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
}

fn add_client(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> Result<(), Error> {
    let count = lock(&shared.clients).len();
    if count >= shared.config.max_clients {
        let _ = stream.shutdown(Shutdown::Both);
        return Err(Error::io(
            format!("{count} clients already connected"),
            std::io::Error::from(IoErrorKind::ConnectionRefused),
        ));
    }
    let setup = |s: &TcpStream| -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL * 5))?;
        s.set_write_timeout(Some(shared.config.write_timeout))
    };
    setup(&stream).map_err(|e| Error::io("client socket", e))?;
    let clone = |s: &TcpStream| s.try_clone().map_err(|e| Error::io("client socket", e));
    let (tx, rx) = sync_channel::<Bytes>(shared.config.queue_len.max(1));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let alive = Arc::new(AtomicBool::new(true));
    let streaming = Arc::new(AtomicBool::new(true));
    let writer = {
        let stream = clone(&stream)?;
        let alive = Arc::clone(&alive);
        std::thread::Builder::new()
            .name(format!("igtl-tx-{id}"))
            .spawn(move || write_loop(id, stream, &rx, &alive))
            .map_err(|e| Error::io("cannot start a client thread", e))?
    };
    let reader = {
        let stream = clone(&stream)?;
        let ctx = ReaderCtx {
            id,
            shared: Arc::clone(shared),
            tx: tx.clone(),
            alive: Arc::clone(&alive),
            streaming: Arc::clone(&streaming),
        };
        std::thread::Builder::new()
            .name(format!("igtl-rx-{id}"))
            .spawn(move || read_loop(stream, &ctx))
            .map_err(|e| Error::io("cannot start a client thread", e))?
    };
    info!(client = id, %peer, "OpenIGTLink client connected");
    lock(&shared.clients).push(Client {
        id,
        peer,
        tx: Some(tx),
        streaming,
        alive,
        stream,
        threads: vec![reader, writer],
    });
    Ok(())
}

fn write_loop(id: u64, mut stream: TcpStream, rx: &Receiver<Bytes>, alive: &AtomicBool) {
    for bytes in rx {
        if !alive.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = stream.write_all(&bytes) {
            info!(
                client = id,
                "OpenIGTLink client write failed, dropping it: {e}"
            );
            alive.store(false, Ordering::Release);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = stream.flush();
}

struct ReaderCtx {
    id: u64,
    shared: Arc<Shared>,
    tx: SyncSender<Bytes>,
    alive: Arc<AtomicBool>,
    streaming: Arc<AtomicBool>,
}

fn read_loop(mut stream: TcpStream, ctx: &ReaderCtx) {
    let mut decoder = Decoder::new(ctx.shared.config.max_body_size);
    let mut buf = vec![0u8; 64 * 1024];
    while !ctx.shared.stop.load(Ordering::Acquire) && ctx.alive.load(Ordering::Acquire) {
        match stream.read(&mut buf) {
            Ok(0) => {
                debug!(client = ctx.id, "client closed the connection");
                ctx.alive.store(false, Ordering::Release);
                return;
            }
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {
                continue
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => {
                debug!(client = ctx.id, "read failed: {e}");
                ctx.alive.store(false, Ordering::Release);
                return;
            }
        }
        loop {
            match decoder.next_message() {
                Ok(Some(msg)) => handle(ctx, &msg),
                Ok(None) => break,
                Err(e) if e.is_unknown_type() || e.is_body() => {
                    debug!(client = ctx.id, "skipping a message: {e}");
                }
                Err(e) => {
                    warn!(client = ctx.id, "dropping OpenIGTLink client: {e}");
                    ctx.alive.store(false, Ordering::Release);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

fn send(ctx: &ReaderCtx, msg: &Message) {
    match msg.encode() {
        Ok(bytes) => {
            if ctx.tx.try_send(bytes.into()).is_err() {
                debug!(client = ctx.id, "reply dropped: queue full");
            }
        }
        Err(e) => warn!(client = ctx.id, "cannot encode a reply: {e}"),
    }
}

fn handle(ctx: &ReaderCtx, msg: &Message) {
    let Content::Request(request) = &msg.content else {
        debug!(
            client = ctx.id,
            type_name = %msg.content.type_name(),
            device = %msg.device_name,
            "ignoring a message from a client"
        );
        return;
    };
    debug!(client = ctx.id, request = %msg.content.type_name(), device = %msg.device_name, "request");
    let Request {
        kind, data_type, ..
    } = request;
    let target = request.target_type();
    match kind {
        RequestKind::Get => {
            let found: Vec<Bytes> = lock(&ctx.shared.latest)
                .iter()
                .filter(|((t, d), _)| {
                    t == target && (msg.device_name.is_empty() || *d == msg.device_name)
                })
                .map(|(_, b)| Arc::clone(b))
                .collect();
            if found.is_empty() {
                let status = Status {
                    code: status_code::NOT_FOUND,
                    subcode: 0,
                    error_name: "NotFound".into(),
                    message: format!("no {target} {:?} to send", msg.device_name),
                };
                send(
                    ctx,
                    &Message::new(
                        msg.device_name.clone(),
                        Timestamp::now(),
                        Content::Status(status),
                    ),
                );
            }
            for b in found {
                if ctx.tx.try_send(b).is_err() {
                    debug!(client = ctx.id, "reply dropped: queue full");
                }
            }
        }
        RequestKind::Start | RequestKind::Stop => {
            ctx.streaming
                .store(*kind == RequestKind::Start, Ordering::Release);
            let reply = Request {
                kind: RequestKind::Ready,
                data_type: data_type.clone(),
                body: vec![0],
            };
            send(
                ctx,
                &Message::new(
                    msg.device_name.clone(),
                    Timestamp::now(),
                    Content::Request(reply),
                ),
            );
        }
        RequestKind::Ready => {}
    }
}
