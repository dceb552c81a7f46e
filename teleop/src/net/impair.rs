//! A seeded UDP impairment proxy: sits between a client and a server and delays, jitters,
//! drops and duplicates datagrams, independently in each direction.
//!
//! Every client address seen on the front socket gets its own upstream socket, so the server
//! sees one peer per client. Each packet is delayed by `delay_s + U(0, jitter_s)` (jitter
//! reorders packets), dropped with probability `loss`, and sent twice with probability
//! `duplicate`. The random draws come from a ChaCha8 generator per direction seeded from
//! `seed`, so a run draws the same sequence of impairments for the same sequence of packets.
//! [`ImpairProxy::set_outage`] takes the link down and up again (everything dropped meanwhile).
//! A client address with no traffic either way for [`SESSION_IDLE`] loses its upstream socket
//! (as a NAT forgets a mapping), so clients that come and go do not pile up sockets and tasks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;

/// A proxy session (client address → upstream socket) without a datagram in either direction
/// for this long is closed. Longer than the QUIC idle timeout, so a live connection keeps its
/// mapping.
pub const SESSION_IDLE: Duration = Duration::from_secs(30);

/// Impairment of one direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Base one-way delay, s.
    pub delay_s: f64,
    /// Extra delay drawn uniformly from `[0, jitter_s]`, s.
    pub jitter_s: f64,
    /// Probability a packet is dropped.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
}

impl Impairment {
    /// No impairment.
    pub fn none() -> Self {
        Self {
            delay_s: 0.0,
            jitter_s: 0.0,
            loss: 0.0,
            duplicate: 0.0,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let ok = self.delay_s.is_finite()
            && self.delay_s >= 0.0
            && self.delay_s <= 10.0
            && self.jitter_s.is_finite()
            && self.jitter_s >= 0.0
            && self.jitter_s <= 10.0
            && (0.0..=1.0).contains(&self.loss)
            && (0.0..=1.0).contains(&self.duplicate);
        if !ok {
            return Err(Error::config(format!("invalid impairment {self:?}")));
        }
        Ok(())
    }
}

/// Settings of the proxy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImpairConfig {
    /// Client → server.
    pub up: Impairment,
    /// Server → client.
    pub down: Impairment,
    /// Seed of the random draws.
    pub seed: u64,
    /// A client address idle this long (both directions) loses its upstream socket
    /// (normally [`SESSION_IDLE`]).
    pub session_idle: Duration,
}

/// Counters of the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairStats {
    /// Packets received from clients.
    pub up_in: u64,
    /// Packets dropped client → server.
    pub up_dropped: u64,
    /// Packets received from the server.
    pub down_in: u64,
    /// Packets dropped server → client.
    pub down_dropped: u64,
    /// Client sessions (upstream sockets) open now.
    pub sessions_open: u64,
    /// Client sessions closed after being idle.
    pub sessions_closed: u64,
    /// Extra copies sent.
    pub duplicated: u64,
}

#[derive(Default)]
struct Counters {
    up_in: AtomicU64,
    up_dropped: AtomicU64,
    down_in: AtomicU64,
    down_dropped: AtomicU64,
    duplicated: AtomicU64,
    sessions_open: AtomicU64,
    sessions_closed: AtomicU64,
    /// Link down: every packet in both directions is dropped (and counted as dropped).
    outage: AtomicBool,
}

struct Delivery {
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    bytes: Vec<u8>,
}

struct Impairer {
    imp: Impairment,
    rng: ChaCha8Rng,
}

impl Impairer {
    /// Delivery delays for one packet: none (dropped), one, or two (duplicated).
    fn draw(&mut self) -> (Option<f64>, Option<f64>) {
        if self.rng.random::<f64>() < self.imp.loss {
            return (None, None);
        }
        let d = |rng: &mut ChaCha8Rng, imp: &Impairment| {
            imp.delay_s + imp.jitter_s * rng.random::<f64>()
        };
        let first = d(&mut self.rng, &self.imp);
        let second = if self.rng.random::<f64>() < self.imp.duplicate {
            Some(d(&mut self.rng, &self.imp))
        } else {
            None
        };
        (Some(first), second)
    }
}

/// The running proxy.
pub struct ImpairProxy {
    local: SocketAddr,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ImpairProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImpairProxy")
            .field("local", &self.local)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ImpairProxy {
    /// Starts a proxy listening on `listen` and relaying to `upstream` (inside a tokio
    /// runtime).
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: ImpairConfig,
    ) -> Result<Self, Error> {
        config.up.validate()?;
        config.down.validate()?;
        let front = Arc::new(UdpSocket::bind(listen).await.map_err(Error::net)?);
        let local = front.local_addr().map_err(Error::net)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::unbounded_channel::<(Instant, Delivery)>();
        let scheduler = tokio::spawn(schedule(rx));
        let front_task = tokio::spawn(front_loop(front, upstream, config, tx, counters.clone()));
        Ok(Self {
            local,
            counters,
            tasks: vec![scheduler, front_task],
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Takes the link down (`true`: every packet in both directions is dropped) or brings it
    /// back up, at once — a cable pulled, a Wi-Fi handover, a mobile dead zone.
    pub fn set_outage(&self, down: bool) {
        self.counters.outage.store(down, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> ImpairStats {
        let c = &self.counters;
        ImpairStats {
            up_in: c.up_in.load(Ordering::Relaxed),
            up_dropped: c.up_dropped.load(Ordering::Relaxed),
            down_in: c.down_in.load(Ordering::Relaxed),
            down_dropped: c.down_dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            sessions_open: c.sessions_open.load(Ordering::Relaxed),
            sessions_closed: c.sessions_closed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ImpairProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn schedule(mut rx: mpsc::UnboundedReceiver<(Instant, Delivery)>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut pending: HashMap<u64, Delivery> = HashMap::new();
    let mut n = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((at, d)) => {
                    n += 1;
                    heap.push(Reverse((at, n)));
                    pending.insert(n, d);
                }
                None => return,
            },
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(d) = pending.remove(&id) {
                        let _ = match d.to {
                            Some(to) => d.socket.send_to(&d.bytes, to).await,
                            None => d.socket.send(&d.bytes).await,
                        };
                    }
                }
            }
        }
    }
}

fn enqueue(
    tx: &mpsc::UnboundedSender<(Instant, Delivery)>,
    imp: &mut Impairer,
    socket: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    bytes: &[u8],
    counters: &Counters,
    up: bool,
) {
    let dropped = if up {
        &counters.up_dropped
    } else {
        &counters.down_dropped
    };
    let duplicated = &counters.duplicated;
    if counters.outage.load(Ordering::Relaxed) {
        dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (first, second) = imp.draw();
    let Some(first) = first else {
        dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = Instant::now();
    for (i, d) in [Some(first), second].into_iter().flatten().enumerate() {
        if i == 1 {
            duplicated.fetch_add(1, Ordering::Relaxed);
        }
        let _ = tx.send((
            now + Duration::from_secs_f64(d),
            Delivery {
                socket: socket.clone(),
                to,
                bytes: bytes.to_vec(),
            },
        ));
    }
}

async fn front_loop(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    config: ImpairConfig,
    tx: mpsc::UnboundedSender<(Instant, Delivery)>,
    counters: Arc<Counters>,
) {
    let mut up = Impairer {
        imp: config.up,
        rng: ChaCha8Rng::seed_from_u64(config.seed),
    };
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    // Aborted with this task (a JoinSet aborts its tasks when dropped).
    let mut back_tasks = tokio::task::JoinSet::new();
    let mut n_clients = 0u64;
    let mut buf = vec![0u8; 65_536];
    let epoch = Instant::now();
    let idle = config.session_idle.max(Duration::from_millis(10));
    let mut next_sweep = epoch + idle;
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            break;
        };
        counters.up_in.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + idle / 4;
            let idle_ms = idle.as_millis() as u64;
            let now_ms = (now - epoch).as_millis() as u64;
            sessions.retain(|_, s| {
                let last = s.last_ms.load(Ordering::Relaxed);
                let keep = now_ms.saturating_sub(last) < idle_ms;
                if !keep {
                    s.task.abort();
                    counters.sessions_closed.fetch_add(1, Ordering::Relaxed);
                }
                keep
            });
            while back_tasks.try_join_next().is_some() {}
            counters
                .sessions_open
                .store(sessions.len() as u64, Ordering::Relaxed);
        }
        let now_ms = (now - epoch).as_millis() as u64;
        let back = match sessions.get(&from) {
            Some(s) => {
                s.last_ms.store(now_ms, Ordering::Relaxed);
                s.sock.clone()
            }
            None => {
                let bind: SocketAddr = if upstream.is_ipv4() {
                    ([127, 0, 0, 1], 0).into()
                } else {
                    (std::net::Ipv6Addr::LOCALHOST, 0).into()
                };
                let Ok(sock) = UdpSocket::bind(bind).await else {
                    continue;
                };
                if sock.connect(upstream).await.is_err() {
                    continue;
                }
                let sock = Arc::new(sock);
                n_clients += 1;
                let down = Impairer {
                    imp: config.down,
                    rng: ChaCha8Rng::seed_from_u64(
                        config.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n_clients),
                    ),
                };
                let last_ms = Arc::new(AtomicU64::new(now_ms));
                let task = back_tasks.spawn(back_loop(
                    BackLink {
                        back: sock.clone(),
                        front: front.clone(),
                        client: from,
                        last_ms: last_ms.clone(),
                        epoch,
                    },
                    down,
                    tx.clone(),
                    counters.clone(),
                ));
                sessions.insert(
                    from,
                    Session {
                        sock: sock.clone(),
                        last_ms,
                        task,
                    },
                );
                counters
                    .sessions_open
                    .store(sessions.len() as u64, Ordering::Relaxed);
                sock
            }
        };
        enqueue(&tx, &mut up, &back, None, &buf[..n], &counters, true);
    }
    back_tasks.abort_all();
}

/// One client address's upstream socket, when it last carried a datagram (ms since the proxy
/// started, either direction), and its downstream task.
struct Session {
    sock: Arc<UdpSocket>,
    last_ms: Arc<AtomicU64>,
    task: tokio::task::AbortHandle,
}

/// What a downstream task relays between.
struct BackLink {
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    last_ms: Arc<AtomicU64>,
    epoch: Instant,
}

async fn back_loop(
    link: BackLink,
    mut down: Impairer,
    tx: mpsc::UnboundedSender<(Instant, Delivery)>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = link.back.recv(&mut buf).await {
        counters.down_in.fetch_add(1, Ordering::Relaxed);
        link.last_ms
            .store(link.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        enqueue(
            &tx,
            &mut down,
            &link.front,
            Some(link.client),
            &buf[..n],
            &counters,
            false,
        );
    }
}
