//! `telecho teleop bench`: command age at the patient side, QUIC datagrams against TCP+TLS,
//! under the same seeded impairment.
//!
//! Both runs send the same operator commands (the wire `Command` message) at `--rate-hz` for
//! `--duration-s` after a warm-up, from a console to a patient side in this process; both sides
//! read one shared monotonic clock, so a command's age at the patient side is exactly its
//! arrival time minus its send time (no clock-sync error).
//!
//! - **QUIC**: the real [`TeleopServer`] and [`TeleopClient`] (mutual TLS, lease, acceptance),
//!   commands as datagrams, through the seeded UDP [`ImpairProxy`] (one-way delay `rtt/2` +
//!   uniform jitter, independent loss per packet, each direction). A lost datagram is gone; the
//!   next command replaces it. The age is taken when the command leaves the acceptor.
//! - **TCP+TLS**: rustls over `std::net` TCP with `TCP_NODELAY`, the same encoded messages with
//!   a `u32` little-endian length prefix, through a TCP relay applying the same delay and
//!   jitter per segment (≤ 1448 bytes) and modelling loss the way TCP recovers from it: a lost
//!   segment arrives after a **fast retransmit** — one RTT plus the time three later segments
//!   take to leave the sender (the duplicate ACKs), at most the retransmission timeout
//!   `RTO = RTT + 200 ms` (Linux's minimum RTO margin) — and a lost retransmission waits one
//!   more RTO, doubling each time. Bytes are delivered in order, so every segment behind a lost
//!   one waits for it (head-of-line blocking). Congestion control is not modelled (the command
//!   stream is ~60 kB/s, far below any window), nor are the relay's own kernel ACKs.
//!
//! `--rtt-ms 0 --loss 0` connects directly over loopback (no proxy): the added latency of the
//! stack itself.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use nalgebra::{UnitQuaternion, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use telecho_teleop::net::client::{ClientConfig, TeleopClient};
use telecho_teleop::net::impair::{ImpairConfig, ImpairProxy, Impairment};
use telecho_teleop::net::server::{ServerConfig, TeleopServer};
use telecho_teleop::net::{client_tls, server_tls, ClientAuth, Clock, MonotonicClock};
use telecho_teleop::pki::{self, load_certs, load_key, PkiDir};
use telecho_teleop::wire::{
    check_frame_len, encode_frame, limits, CommandMode, LeaseOutcome, Message, OperatorCommand,
    Pose, Target, ALPN,
};

use crate::cli_error::CliError;
use crate::CliResult;

/// TCP maximum segment size assumed by the relay, bytes.
const MSS: usize = 1448;
/// Linux's minimum retransmission-timeout margin, s.
const RTO_MIN_S: f64 = 0.2;
/// Commands sent before measuring (clock sync, lease, connection warm-up), s.
const WARM_UP_S: f64 = 0.5;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Round-trip time added by the impairment, ms (half each way; 0–2000).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Packet (QUIC) / segment (TCP) loss each way: a fraction (0.02) or a percentage (2%).
    #[arg(long, default_value = "0")]
    loss: String,
    /// Extra one-way delay drawn uniformly from [0, J], ms (0–1000).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    /// Command rate, Hz (10–1000).
    #[arg(long, default_value_t = 500.0)]
    rate_hz: f64,
    /// Measured seconds per transport (0.5–60), after a 0.5 s warm-up.
    #[arg(long, default_value_t = 3.0)]
    duration_s: f64,
    /// Seed of the impairment draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Command-age statistics of one transport.
#[derive(Clone, Debug, Default, Serialize)]
struct AgeStats {
    p50_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    sent: u64,
    delivered: u64,
}

#[derive(Debug, Serialize)]
struct BenchReport {
    quic: AgeStats,
    tcp: AgeStats,
    rtt_ms: f64,
    loss: f64,
    jitter_ms: f64,
    rate_hz: f64,
    duration_s: f64,
    seed: u64,
    /// TCP p99 / QUIC p99.
    tcp_over_quic_p99: f64,
    /// With --rtt-ms 0 --loss 0: the QUIC p99 is the added latency of the stack.
    loopback: bool,
}

fn parse_loss(text: &str) -> Result<f64, CliError> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(v) if v.is_finite() && (0.0..=0.5).contains(&v) => Ok(v),
        _ => Err(CliError::input(anyhow!(
            "--loss `{text}`: expected a fraction within 0–0.5 (e.g. 0.02) or a percentage (2%)"
        ))),
    }
}

fn check_range(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), CliError> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(CliError::input(anyhow!(
            "{name} must be within {lo}–{hi}, got {v}"
        )))
    }
}

fn stats(mut ages_s: Vec<f64>, sent: u64) -> AgeStats {
    if ages_s.is_empty() {
        return AgeStats {
            sent,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            mean_ms: f64::NAN,
            max_ms: f64::NAN,
            delivered: 0,
        };
    }
    ages_s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let i = ((p * ages_s.len() as f64).ceil() as usize).clamp(1, ages_s.len()) - 1;
        ages_s[i] * 1e3
    };
    AgeStats {
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        mean_ms: ages_s.iter().sum::<f64>() / ages_s.len() as f64 * 1e3,
        max_ms: ages_s[ages_s.len() - 1] * 1e3,
        sent,
        delivered: ages_s.len() as u64,
    }
}

/// The benchmark's settings, validated.
#[derive(Clone, Copy, Debug)]
struct Setup {
    one_way_s: f64,
    jitter_s: f64,
    loss: f64,
    period: Duration,
    measured_s: f64,
    seed: u64,
}

impl Setup {
    fn impaired(&self) -> bool {
        self.one_way_s > 0.0 || self.jitter_s > 0.0 || self.loss > 0.0
    }

    fn rtt_s(&self) -> f64 {
        2.0 * self.one_way_s + self.jitter_s
    }
}

/// A command with a pose target moving slowly on a circle (within any site limits).
fn command_target(i: u64) -> Target {
    let a = i as f64 * 1e-3;
    Target::Pose(Pose {
        position_m: Vector3::new(0.4 + 0.01 * a.cos(), 0.01 * a.sin(), 0.3),
        orientation: UnitQuaternion::identity(),
    })
}

pub(crate) fn run(args: &BenchArgs) -> CliResult {
    check_range("--rtt-ms", args.rtt_ms, 0.0, 2000.0)?;
    check_range("--jitter-ms", args.jitter_ms, 0.0, 1000.0)?;
    check_range("--rate-hz", args.rate_hz, 10.0, 1000.0)?;
    check_range("--duration-s", args.duration_s, 0.5, 60.0)?;
    let loss = parse_loss(&args.loss)?;
    let setup = Setup {
        one_way_s: args.rtt_ms * 0.5e-3,
        jitter_s: args.jitter_ms * 1e-3,
        loss,
        period: Duration::from_secs_f64(1.0 / args.rate_hz),
        measured_s: args.duration_s,
        seed: args.seed,
    };
    let dir = std::env::temp_dir().join(format!("telecho-bench-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    pki::init(&dir, &[])
        .context("temporary PKI")
        .map_err(CliError::failed)?;
    let result = run_both(&dir, setup);
    let _ = std::fs::remove_dir_all(&dir);
    let (quic, tcp) = result.map_err(CliError::failed)?;
    let report = BenchReport {
        tcp_over_quic_p99: tcp.p99_ms / quic.p99_ms,
        quic,
        tcp,
        rtt_ms: args.rtt_ms,
        loss,
        jitter_ms: args.jitter_ms,
        rate_hz: args.rate_hz,
        duration_s: args.duration_s,
        seed: args.seed,
        loopback: !setup.impaired(),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        println!(
            "command age at the patient side, {} Hz, RTT {} ms, loss {:.1} %, jitter {} ms:",
            args.rate_hz,
            args.rtt_ms,
            loss * 100.0,
            args.jitter_ms
        );
        for (name, s) in [("QUIC datagrams", &report.quic), ("TCP+TLS", &report.tcp)] {
            println!(
                "  {name:15} p50 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms  ({} of {} delivered)",
                s.p50_ms, s.p99_ms, s.max_ms, s.delivered, s.sent
            );
        }
        println!("  TCP/QUIC p99 ratio {:.2}", report.tcp_over_quic_p99);
    }
    Ok(())
}

fn run_both(dir: &Path, setup: Setup) -> anyhow::Result<(AgeStats, AgeStats)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let quic = rt.block_on(bench_quic(dir, setup))?;
    let tcp = bench_tcp(&rt, dir, setup)?;
    Ok((quic, tcp))
}

// ---------------------------------------------------------------------------------------------
// QUIC

async fn bench_quic(dir: &Path, setup: Setup) -> anyhow::Result<AgeStats> {
    let clock: Arc<dyn Clock> = MonotonicClock::shared(0.0);
    let mut sc = ServerConfig::from_pki(dir, "127.0.0.1:0".parse()?)?;
    sc.clock = clock.clone();
    sc.core.acceptor.max_age_s = 10.0; // measure every delivered command, however old
    sc.core.predict = false;
    let (server, mut channels) = TeleopServer::bind(sc)?;
    let server_addr = server.local_addr()?;
    let proxy = if setup.impaired() {
        let imp = Impairment {
            delay_s: setup.one_way_s,
            jitter_s: setup.jitter_s,
            loss: setup.loss,
            duplicate: 0.0,
        };
        Some(
            ImpairProxy::start(
                "127.0.0.1:0".parse()?,
                server_addr,
                ImpairConfig {
                    up: imp,
                    down: imp,
                    seed: setup.seed,
                    session_idle: telecho_teleop::net::impair::SESSION_IDLE,
                },
            )
            .await?,
        )
    } else {
        None
    };
    let target = proxy.as_ref().map_or(server_addr, |p| p.local_addr());
    let mut cc = ClientConfig::from_pki(dir, "operator", target)?;
    cc.clock = clock.clone();
    cc.connect_timeout = Duration::from_secs(10);
    let mut client = TeleopClient::connect(cc).await?;
    // The lease (retried: the request or its answer may be lost on an impaired link, and the
    // control stream retransmits, so one request normally suffices).
    let outcome = client
        .lease(|c| c.acquire(), Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("no answer to the lease request"))?;
    if outcome != LeaseOutcome::Granted {
        return Err(anyhow!("lease not granted: {outcome:?}"));
    }
    // Collect ages on the patient side.
    let ages: Arc<Mutex<Vec<(u64, f64)>>> = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
    let collector = {
        let ages = ages.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            while let Some(c) = channels.commands.recv().await {
                let age = clock.now_s() - c.sent_s;
                ages.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((c.seq, age));
            }
        })
    };
    // Warm up until commands are accepted (clock sync at the patient side), then measure.
    let mut iv = tokio::time::interval(setup.period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let warm_until = Instant::now() + Duration::from_secs_f64(WARM_UP_S + 2.0 * setup.rtt_s());
    let mut i = 0u64;
    let mut first_measured = None;
    let mut measure_end = None;
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        iv.tick().await;
        i += 1;
        let sent = client.send_command(CommandMode::Free, 0.0, command_target(i));
        let now = Instant::now();
        match (first_measured, measure_end) {
            (None, _) if now >= warm_until => {
                let accepted = !ages.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
                if accepted {
                    first_measured = Some(sent.seq + 1);
                    measure_end = Some(now + Duration::from_secs_f64(setup.measured_s));
                } else if now > give_up {
                    return Err(anyhow!(
                        "no command accepted within 20 s (clock sync never completed?)"
                    ));
                }
            }
            (Some(_), Some(end)) if now >= end => break,
            _ => {}
        }
    }
    let first = first_measured.unwrap_or(1);
    let last_seq = i;
    // Let the last ones arrive.
    tokio::time::sleep(Duration::from_secs_f64(setup.rtt_s() + 0.1)).await;
    collector.abort();
    let measured: Vec<f64> = ages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(s, _)| (first..=last_seq).contains(s))
        .map(|(_, a)| *a)
        .collect();
    client.close().await;
    let _ = server.shutdown().await;
    drop(proxy);
    Ok(stats(measured, last_seq - first + 1))
}

// ---------------------------------------------------------------------------------------------
// TCP + TLS

fn bench_tcp(rt: &tokio::runtime::Runtime, dir: &Path, setup: Setup) -> anyhow::Result<AgeStats> {
    let pki = PkiDir::new(dir);
    let server_cfg = Arc::new(server_tls(
        &load_certs(&pki.ca_cert())?,
        load_certs(&pki.cert("server"))?,
        load_key(&pki.key("server"))?,
    )?);
    let client_cfg = Arc::new(client_tls(
        &load_certs(&pki.ca_cert())?,
        ClientAuth::Cert(
            load_certs(&pki.cert("operator"))?,
            load_key(&pki.key("operator"))?,
        ),
        ALPN,
    )?);
    let clock = MonotonicClock::new(0.0);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_addr = listener.local_addr()?;
    let ages: Arc<Mutex<Vec<(u64, f64)>>> = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
    let server = {
        let ages = ages.clone();
        std::thread::Builder::new()
            .name("bench-tcp-server".into())
            .spawn(move || -> anyhow::Result<()> {
                let (sock, _) = listener.accept()?;
                sock.set_nodelay(true)?;
                let conn = rustls::ServerConnection::new(server_cfg)?;
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut len = [0u8; 4];
                let mut buf = vec![0u8; limits::MAX_CONTROL_FRAME];
                loop {
                    if tls.read_exact(&mut len).is_err() {
                        return Ok(());
                    }
                    let n = check_frame_len(u32::from_le_bytes(len), limits::MAX_CONTROL_FRAME)?;
                    tls.read_exact(&mut buf[..n])?;
                    let now = clock.now_s();
                    if let Message::Command(c) = Message::decode(&buf[..n])? {
                        ages.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((c.seq, now - c.sent_s));
                    }
                }
            })?
    };
    let relay = if setup.impaired() {
        Some(rt.block_on(TcpRelay::start(server_addr, setup))?)
    } else {
        None
    };
    let target = relay.as_ref().map_or(server_addr, |r| r.local);
    let sock = TcpStream::connect(target)?;
    sock.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(client_cfg, "localhost".try_into()?)?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let start = Instant::now();
    let warm = Duration::from_secs_f64(WARM_UP_S + 2.0 * setup.rtt_s());
    let end = warm + Duration::from_secs_f64(setup.measured_s);
    let mut buf = Vec::with_capacity(128);
    let mut i = 0u64;
    let mut first = None;
    loop {
        let deadline = start + setup.period.mul_f64(i as f64);
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        let elapsed = start.elapsed();
        if elapsed >= end {
            break;
        }
        i += 1;
        if first.is_none() && elapsed >= warm {
            first = Some(i);
        }
        let msg = Message::Command(OperatorCommand {
            seq: i,
            sent_s: clock.now_s(),
            mode: CommandMode::Free,
            force_n: 0.0,
            target: command_target(i),
        });
        buf.clear();
        encode_frame(&msg, &mut buf);
        tls.write_all(&buf)?;
        tls.flush()?;
    }
    let last = i;
    std::thread::sleep(Duration::from_secs_f64(
        setup.rtt_s() * 4.0 + RTO_MIN_S * 4.0 + 0.1,
    ));
    let _ = tls.sock.shutdown(std::net::Shutdown::Both);
    drop(tls);
    drop(relay);
    let _ = server.join();
    let first = first.unwrap_or(1);
    let measured: Vec<f64> = ages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(s, _)| (first..=last).contains(s))
        .map(|(_, a)| *a)
        .collect();
    Ok(stats(measured, last - first + 1))
}

/// A TCP relay applying delay, jitter and loss-as-retransmission per segment, in order.
struct TcpRelay {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The per-direction segment scheduler of the relay.
struct SegmentModel {
    setup: Setup,
    rng: ChaCha8Rng,
    last_delivery: Option<tokio::time::Instant>,
    last_send: Option<tokio::time::Instant>,
    gap_s: f64,
    lost: u64,
}

impl SegmentModel {
    fn new(setup: Setup, stream: u64) -> Self {
        Self {
            setup,
            rng: ChaCha8Rng::seed_from_u64(setup.seed ^ (stream.wrapping_mul(0x9e37_79b9))),
            last_delivery: None,
            last_send: None,
            gap_s: 0.002,
            lost: 0,
        }
    }

    /// Delivery time of a segment leaving the sender at `now`.
    fn deliver_at(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        if let Some(prev) = self.last_send {
            let g = (now - prev).as_secs_f64();
            self.gap_s = 0.9 * self.gap_s + 0.1 * g;
        }
        self.last_send = Some(now);
        let s = self.setup;
        let rtt = s.rtt_s();
        let rto = rtt + RTO_MIN_S;
        let mut extra = 0.0;
        if self.rng.random::<f64>() < s.loss {
            self.lost += 1;
            // Fast retransmit after three duplicate ACKs, at most one RTO.
            extra += (rtt + 3.0 * self.gap_s).min(rto);
            // A lost retransmission waits for the RTO, doubling each time.
            let mut backoff = rto;
            while self.rng.random::<f64>() < s.loss && extra < 60.0 {
                extra += backoff;
                backoff *= 2.0;
            }
        }
        let delay = s.one_way_s + s.jitter_s * self.rng.random::<f64>() + extra;
        let mut at = now + Duration::from_secs_f64(delay);
        if let Some(prev) = self.last_delivery {
            at = at.max(prev); // in order: head-of-line blocking
        }
        self.last_delivery = Some(at);
        at
    }
}

impl TcpRelay {
    async fn start(upstream: SocketAddr, setup: Setup) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = tokio::spawn(pipe(cr, sw, SegmentModel::new(setup, 1)));
            let down = tokio::spawn(pipe(sr, cw, SegmentModel::new(setup, 2)));
            let _ = tokio::join!(up, down);
        });
        Ok(Self {
            local,
            stop,
            tasks: vec![accept],
        })
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut model: SegmentModel,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        let mut queue: VecDeque<(tokio::time::Instant, Vec<u8>)> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.recv().await {
                    Some(x) => queue.push_back(x),
                    None => return,
                }
            }
            while let Ok(x) = rx.try_recv() {
                queue.push_back(x);
            }
            if let Some((at, _)) = queue.front() {
                tokio::time::sleep_until(*at).await;
            }
            // Everything due by now goes out together (the segments were in order).
            let now = tokio::time::Instant::now();
            let mut out = Vec::new();
            while queue.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, b)) = queue.pop_front() {
                    out.extend_from_slice(&b);
                }
            }
            if !out.is_empty() && to.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = tokio::time::Instant::now();
        for seg in buf[..n].chunks(MSS) {
            let at = model.deliver_at(now);
            if tx.send((at, seg.to_vec())).is_err() {
                return;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
