//! `telecho soak`: the whole teleoperation loop for a long time, with network impairment and
//! injected faults, watching memory, the supervisor and panics.
//!
//! In one process, as in the field but on loopback:
//!
//! - the **patient side** exactly as `telecho teleop serve --sim` runs it (1 kHz control loop on
//!   the simulator, QUIC server with mutual TLS, state/haptic/ultrasound streams, audit log);
//! - the seeded **impairment proxy** between the two (`--rtt-ms`, `--jitter-ms`, `--loss-pct`),
//!   which can also take the link down;
//! - a **remote operator** (the console's QUIC client with the operator certificate) holding the
//!   lease and steering the probe in contact at 250 Hz along a slow figure over the lower back;
//! - a **fault injector** that every `--fault-every-s` seconds takes the next fault of a fixed
//!   rotation — a 0.3 s link outage (hold), a 1.5 s outage (retract, then reset), a burst of
//!   malformed datagrams, invalid commands (NaN, over-force, far outside the workspace), an
//!   e-stop and reset, a reconnect with lease re-acquisition, an F/T sensor fault (fault stop,
//!   then reset) and an observer trying to steer — and checks that the system is back to normal
//!   operation within [`RECOVERY_S`].
//!
//! Measured: resident memory every second (growth from the level after warm-up to the end),
//! true contact force against the supervisor's limit every control cycle, panics anywhere in the
//! process (a panic hook counts them), and the audit log verified at the end. Exit code 1 when a
//! criterion fails: RSS growth ≤ 5 %, no force-limit violation, no panic, every fault recovered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use nalgebra::{UnitQuaternion, Vector3};
use serde::Serialize;
use telecho_control::ScanProtocol;
use telecho_core::Transform;
use telecho_sim::plant::operator_start_pose;
use telecho_sim::FtFault;
use telecho_teleop::net::client::{ClientConfig, TeleopClient};
use telecho_teleop::net::impair::Impairment;
use telecho_teleop::wire::{CommandMode, LeaseOutcome, Pose, SafetyCode, Target};

use crate::cli_error::CliError;
use crate::scan::Scenario;
use crate::sim::Arm;
use crate::teleop::serve::{self, Hooks, LoopStatus, ServeArgs};
use crate::CliResult;

/// After a fault has ended, the system must be back to normal operation within this time, s.
pub(crate) const RECOVERY_S: f64 = 8.0;
/// Largest RSS growth that passes, %.
const MAX_RSS_GROWTH_PCT: f64 = 5.0;
/// Runs shorter than this (minutes) report RSS but are not judged on it.
const MIN_RSS_JUDGED_MIN: f64 = 5.0;
/// Operator command period.
const COMMAND_PERIOD: Duration = Duration::from_millis(4);

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// How long to run, minutes (the release criterion is measured over 30).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Simulated patient (as `telecho scan --sim-seed N`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    sim_seed: u64,
    /// Round-trip time the impairment proxy adds, ms (half each way).
    #[arg(long, default_value_t = 100.0)]
    rtt_ms: f64,
    /// Extra one-way delay drawn uniformly from [0, jitter], ms (reorders datagrams).
    #[arg(long, default_value_t = 5.0)]
    jitter_ms: f64,
    /// Datagram loss in each direction, percent.
    #[arg(long, default_value_t = 1.0)]
    loss_pct: f64,
    /// Seconds between injected faults (each fault kind in turn).
    #[arg(long, default_value_t = 20.0)]
    fault_every_s: f64,
    /// Ultrasound frame rate of the patient side, frames/s.
    #[arg(long, default_value_t = 15.0)]
    us_fps: f64,
    /// Working directory for the PKI and the audit log (default: a fresh temporary directory,
    /// removed afterwards).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// The faults injected, in rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    OutageHold,
    OutageRetract,
    MalformedDatagrams,
    InvalidCommands,
    EStop,
    Reconnect,
    SensorNan,
    Observer,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::OutageHold,
        Fault::MalformedDatagrams,
        Fault::EStop,
        Fault::InvalidCommands,
        Fault::OutageRetract,
        Fault::Observer,
        Fault::SensorNan,
        Fault::Reconnect,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::OutageHold => "link_outage_300ms",
            Fault::OutageRetract => "link_outage_1500ms",
            Fault::MalformedDatagrams => "malformed_datagrams",
            Fault::InvalidCommands => "invalid_commands",
            Fault::EStop => "estop_and_reset",
            Fault::Reconnect => "reconnect",
            Fault::SensorNan => "ft_sensor_nan",
            Fault::Observer => "observer_tries_to_steer",
        }
    }

    /// Whether the fault leaves a latched state that the operator clears with `Reset`.
    fn needs_reset(self) -> bool {
        matches!(
            self,
            Fault::OutageRetract | Fault::EStop | Fault::SensorNan | Fault::Reconnect
        )
    }
}

#[derive(Debug, Default, Serialize)]
struct FaultCount {
    injected: u64,
    recovered: u64,
    /// Slowest return to normal operation after the fault ended, s.
    worst_recovery_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct SoakReport {
    minutes: f64,
    wall_s: f64,
    sim_time_s: f64,
    seed: u64,
    rtt_ms: f64,
    jitter_ms: f64,
    loss_pct: f64,
    rss_samples: usize,
    rss_baseline_mib: f64,
    rss_final_mib: f64,
    rss_max_mib: f64,
    rss_growth_pct: f64,
    /// RSS at every tenth of the run, MiB (the shape of any growth).
    rss_series_mib: Vec<f64>,
    /// Whether the RSS criterion applies: runs shorter than [`MIN_RSS_JUDGED_MIN`] measure the
    /// warm-up (connection buffers, codec and audit state growing to their working size).
    rss_judged: bool,
    panics: u64,
    force_max_n: f64,
    force_limit_n: f64,
    force_limit_violations: u64,
    safety_events: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, FaultCount>,
    commands_sent: u64,
    commands_accepted: u64,
    commands_applied: u64,
    commands_refused: u64,
    malformed_datagrams: u64,
    commands_unaudited: u64,
    audit_failures: u64,
    connections: u64,
    control_cycles: u64,
    loop_stalls: u64,
    frames_sent: u64,
    proxy_dropped: u64,
    audit_records: u64,
    audit_verified: bool,
    passed: bool,
    failures: Vec<String>,
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts every panic in the process (then runs the default hook, which prints it).
fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        previous(info);
    }));
}

/// Resident set size of this process, bytes (Linux `/proc/self/statm`; 0 elsewhere).
fn rss_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    text.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

fn check_args(a: &SoakArgs) -> Result<(), CliError> {
    let bad = |what: &str, v: f64, lo: f64, hi: f64| {
        (!(v.is_finite() && v >= lo && v <= hi))
            .then(|| CliError::input(anyhow!("--{what} must be within {lo}–{hi}, got {v}")))
    };
    let first_bad = [
        bad("minutes", a.minutes, 0.05, 24.0 * 60.0),
        bad("rtt-ms", a.rtt_ms, 0.0, 1000.0),
        bad("jitter-ms", a.jitter_ms, 0.0, 200.0),
        bad("loss-pct", a.loss_pct, 0.0, 20.0),
        bad("fault-every-s", a.fault_every_s, 1.0, 3600.0),
        bad("us-fps", a.us_fps, 0.0, 60.0),
    ]
    .into_iter()
    .flatten()
    .next();
    match first_bad {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(crate) fn run(args: &SoakArgs) -> CliResult {
    check_args(args)?;
    count_panics();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("telecho-soak-{}", std::process::id())),
            true,
        ),
    };
    let pki = dir.join("pki");
    if !pki.join("ca.pem").is_file() {
        telecho_teleop::pki::init(&pki, &[])
            .map_err(|e| CliError::input(anyhow!("PKI in {}: {e}", pki.display())))?;
    }
    let audit = dir.join("audit.log");
    let _ = std::fs::remove_file(&audit);
    // The acceptor's age bound: the one-way delay plus jitter plus a margin.
    let max_age_ms = (args.rtt_ms / 2.0 + args.jitter_ms + 100.0).clamp(20.0, 2000.0);
    let sargs = ServeArgs::in_process(
        pki.clone(),
        audit.clone(),
        Arm::Ur5e,
        args.sim_seed,
        args.us_fps,
        max_age_ms,
    );
    let sc = Scenario::new(sargs.arm, sargs.sim_seed, ScanProtocol::default_lumbar())?;
    let start_pose = operator_start_pose(&sc.world, sc.seed);
    let config = serve::server_config(&sargs, &sc)?;
    let rt = serve::runtime()?;
    let wall = Instant::now();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let hooks = Hooks {
        addr: Some(addr_tx),
        ..Hooks::default()
    };
    let stop = hooks.stop.clone();
    let ft_fault = hooks.ft_fault.clone();
    let status = hooks.status.clone();
    let (served, driven) = rt.block_on(async {
        let driver = async {
            let r = drive(args, &pki, start_pose, addr_rx, ft_fault, status).await;
            stop.store(true, Ordering::Relaxed);
            r
        };
        tokio::join!(serve::serve(&sargs, sc, config, hooks), driver)
    });
    let served = served?;
    let driven = driven.map_err(CliError::failed)?;
    let mut r = SoakReport {
        minutes: args.minutes,
        wall_s: wall.elapsed().as_secs_f64(),
        sim_time_s: served.sim_time_s,
        seed: args.sim_seed,
        rtt_ms: args.rtt_ms,
        jitter_ms: args.jitter_ms,
        loss_pct: args.loss_pct,
        panics: PANICS.load(Ordering::Relaxed),
        force_max_n: served.force_max_n,
        force_limit_n: served.force_limit_n,
        force_limit_violations: served.force_limit_violations,
        safety_events: served.safety_events,
        faults: driven.faults,
        commands_sent: driven.commands_sent,
        commands_accepted: served.commands_accepted,
        commands_applied: served.commands_applied,
        commands_refused: served.commands_refused,
        malformed_datagrams: served.malformed_datagrams,
        commands_unaudited: served.commands_unaudited,
        audit_failures: served.audit_failures,
        connections: served.connections,
        control_cycles: served.control_cycles,
        loop_stalls: served.loop_stalls,
        frames_sent: served.frames_sent,
        proxy_dropped: driven.proxy_dropped,
        audit_records: served.audit_records,
        ..SoakReport::default()
    };
    r.audit_verified = telecho_teleop::audit::verify(&audit).is_ok();
    rss_summary(&driven.rss, args.minutes * 60.0, &mut r);
    r.rss_judged = args.minutes >= MIN_RSS_JUDGED_MIN;
    judge(&mut r);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    print(args, &r)?;
    if r.passed {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "soak failed: {}",
            r.failures.join("; ")
        )))
    }
}

/// Baseline: the level once warmed up (the median of the samples between 10 % and 20 % of the
/// run, at least one minute in when the run is long enough); final: the median of the last
/// 10 % of the samples. Medians, so that a transient allocation at one sample does not decide.
fn rss_summary(samples: &[(f64, u64)], duration_s: f64, r: &mut SoakReport) {
    r.rss_samples = samples.len();
    if samples.len() < 4 {
        return;
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let warm_from = (0.1 * duration_s).max(60.0_f64.min(0.3 * duration_s));
    let warm_to = warm_from + 0.1 * duration_s;
    let median = |mut v: Vec<u64>| -> u64 {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let mut warm: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warm_from && *t <= warm_to)
        .map(|s| s.1)
        .collect();
    if warm.is_empty() {
        warm.push(samples[samples.len() / 4].1);
    }
    let tail_n = (samples.len() / 10).max(1);
    let tail: Vec<u64> = samples[samples.len() - tail_n..]
        .iter()
        .map(|s| s.1)
        .collect();
    let base = median(warm);
    let fin = median(tail);
    r.rss_baseline_mib = mib(base);
    r.rss_final_mib = mib(fin);
    r.rss_max_mib = mib(samples.iter().map(|s| s.1).max().unwrap_or(0));
    r.rss_series_mib = (0..=10)
        .map(|k| mib(samples[(k * (samples.len() - 1)) / 10].1))
        .collect();
    r.rss_growth_pct = if base > 0 {
        100.0 * (fin as f64 - base as f64) / base as f64
    } else {
        0.0
    };
}

fn judge(r: &mut SoakReport) {
    let mut f = Vec::new();
    if r.rss_judged && r.rss_growth_pct > MAX_RSS_GROWTH_PCT {
        f.push(format!(
            "RSS grew {:.1} % (limit {MAX_RSS_GROWTH_PCT} %)",
            r.rss_growth_pct
        ));
    }
    if r.force_limit_violations > 0 {
        f.push(format!(
            "{} control cycles above the {:.0} N force limit",
            r.force_limit_violations, r.force_limit_n
        ));
    }
    if r.panics > 0 {
        f.push(format!("{} panics", r.panics));
    }
    for (name, c) in &r.faults {
        if c.recovered < c.injected {
            f.push(format!(
                "{name}: {} of {} not recovered within {RECOVERY_S} s",
                c.injected - c.recovered,
                c.injected
            ));
        }
    }
    if r.audit_failures > 0 {
        f.push(format!(
            "{} audit-log write failures ({} commands withheld)",
            r.audit_failures, r.commands_unaudited
        ));
    }
    if !r.audit_verified {
        f.push("the audit log does not verify".into());
    }
    if r.commands_applied == 0 {
        f.push("no operator command reached the robot".into());
    }
    r.passed = f.is_empty();
    r.failures = f;
}

fn print(args: &SoakArgs, r: &SoakReport) -> CliResult {
    if args.json {
        println!(
            "{}",
            serde_json::to_string(r)
                .context("summary")
                .map_err(CliError::failed)?
        );
        return Ok(());
    }
    println!(
        "soak {:.1} min ({:.0} s simulated, {} control cycles, {} stalls > 50 ms), RTT {} ms ± {} ms, \
         {} % loss",
        r.wall_s / 60.0,
        r.sim_time_s,
        r.control_cycles,
        r.loop_stalls,
        r.rtt_ms,
        r.jitter_ms,
        r.loss_pct
    );
    println!(
        "  RSS {:.1} MiB after warm-up → {:.1} MiB at the end ({:+.2} %, max {:.1} MiB); {} panics",
        r.rss_baseline_mib, r.rss_final_mib, r.rss_growth_pct, r.rss_max_mib, r.panics
    );
    println!(
        "  contact force max {:.2} N (limit {:.0} N, {} violations); commands {} sent, {} accepted, \
         {} applied, {} refused; {} malformed datagrams; {} connections; audit {} records ({})",
        r.force_max_n,
        r.force_limit_n,
        r.force_limit_violations,
        r.commands_sent,
        r.commands_accepted,
        r.commands_applied,
        r.commands_refused,
        r.malformed_datagrams,
        r.connections,
        r.audit_records,
        if r.audit_verified { "verified" } else { "NOT verified" }
    );
    for (name, c) in &r.faults {
        println!(
            "  {name:24} injected {:3}, recovered {:3}, slowest {:.2} s",
            c.injected, c.recovered, c.worst_recovery_s
        );
    }
    println!(
        "  {}",
        if r.passed {
            "PASS".to_owned()
        } else {
            format!("FAIL: {}", r.failures.join("; "))
        }
    );
    Ok(())
}

/// What the operator/fault-injector side measured.
#[derive(Default)]
struct Driven {
    faults: BTreeMap<&'static str, FaultCount>,
    rss: Vec<(f64, u64)>,
    commands_sent: u64,
    proxy_dropped: u64,
}

/// The operator's figure over the back: ±15 mm lateral (20 s period) and ±30 mm cranial (40 s
/// period) around the start point, at most ~8 mm/s; the probe sagittal (array cranial) and
/// pointing into the back (the start pose's columns are lateral, cranial, outward normal).
fn path_target(start: &Transform, t: f64) -> Target {
    let tau = std::f64::consts::TAU;
    let lateral = start.rotation.column(0).into_owned();
    let cranial = start.rotation.column(1).into_owned();
    let inward = -start.rotation.column(2).into_owned();
    let p = start.translation
        + lateral * (0.015 * (tau * t / 20.0).sin())
        + cranial * (0.030 * (tau * t / 40.0).sin());
    let r = nalgebra::Matrix3::from_columns(&[cranial, inward.cross(&cranial), inward]);
    Target::Pose(Pose {
        position_m: p,
        orientation: UnitQuaternion::from_matrix(&r),
    })
}

/// A console-side client (the console's QUIC client with a certificate from the PKI).
pub(crate) struct Operator {
    pub(crate) client: TeleopClient,
}

impl Operator {
    pub(crate) async fn connect(pki: &Path, name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let mut cfg = ClientConfig::from_pki(pki, name, addr)?;
        cfg.connect_timeout = Duration::from_secs(10);
        let client = TeleopClient::connect(cfg).await?;
        Ok(Self { client })
    }

    /// Acquires the lease (retrying while a previous connection of ours still holds it).
    pub(crate) async fn acquire(&mut self) -> anyhow::Result<()> {
        for _ in 0..20 {
            match self
                .client
                .lease(|c| c.acquire(), Duration::from_secs(3))
                .await
            {
                Some(LeaseOutcome::Granted) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        Err(anyhow!("the operator could not acquire the lease"))
    }

    pub(crate) fn reset(&self) {
        self.client.request(|c| c.reset());
    }

    /// Drops queued events (state, haptics, frames) so the client's queue never fills.
    pub(crate) async fn drain(&mut self) {
        while self.client.next_event(Duration::ZERO).await.is_some() {}
    }
}

async fn drive(
    args: &SoakArgs,
    pki: &Path,
    start: Transform,
    addr_rx: tokio::sync::oneshot::Receiver<SocketAddr>,
    ft_fault: Arc<Mutex<Option<Option<FtFault>>>>,
    status: Arc<Mutex<LoopStatus>>,
) -> anyhow::Result<Driven> {
    let server = serve::patient_address(addr_rx).await?;
    let one_way = Impairment {
        delay_s: args.rtt_ms * 0.5e-3,
        jitter_s: args.jitter_ms * 1e-3,
        loss: args.loss_pct / 100.0,
        duplicate: 0.0,
    };
    let proxy = serve::impaired_link(server, one_way, args.sim_seed).await?;
    let addr = proxy.local_addr();
    let mut op = Operator::connect(pki, "operator", addr).await?;
    op.acquire().await?;
    op.reset();

    let mut d = Driven::default();
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let safety = || status.lock().unwrap_or_else(|e| e.into_inner()).safety;
    let mut iv = tokio::time::interval(COMMAND_PERIOD);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_rss = Duration::ZERO;
    let mut next_fault = Duration::from_secs_f64(args.fault_every_s);
    let mut k = 0usize;
    let mut observers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
    // No fault so close to the end that its recovery could not be seen.
    let last_fault = total.saturating_sub(Duration::from_secs_f64(RECOVERY_S + 2.0));
    // The fault in progress: (kind, when it ended, reset sent).
    let mut recovering: Option<(Fault, Instant, bool)> = None;
    while t0.elapsed() < total {
        iv.tick().await;
        let now = t0.elapsed();
        if now >= next_rss {
            d.rss.push((now.as_secs_f64(), rss_bytes()));
            next_rss += Duration::from_secs(1);
        }
        let t = now.as_secs_f64();
        op.client
            .send_command(CommandMode::Contact, 8.0, path_target(&start, t));
        d.commands_sent += 1;
        op.drain().await;

        if let Some((fault, ended, reset_sent)) = recovering {
            let since = ended.elapsed().as_secs_f64();
            let state = safety();
            if fault.needs_reset() && !reset_sent && since > 0.3 {
                op.reset();
                recovering = Some((fault, ended, true));
            } else if state == SafetyCode::Normal && since > 0.3 {
                let c = d.faults.entry(fault.name()).or_default();
                c.recovered += 1;
                c.worst_recovery_s = c.worst_recovery_s.max(since);
                recovering = None;
            } else if since > RECOVERY_S {
                tracing::warn!(fault = fault.name(), ?state, "not recovered");
                recovering = None;
            } else if since > 2.0 && state != SafetyCode::Normal {
                // A reset can be lost with the link; repeat it.
                op.reset();
            }
            continue;
        }
        if now < next_fault || now > last_fault {
            continue;
        }
        next_fault += Duration::from_secs_f64(args.fault_every_s);
        let fault = Fault::ALL[k % Fault::ALL.len()];
        k += 1;
        d.faults.entry(fault.name()).or_default().injected += 1;
        tracing::info!(fault = fault.name(), t_s = t, "injecting");
        match fault {
            Fault::OutageHold | Fault::OutageRetract => {
                let down = if fault == Fault::OutageHold { 0.3 } else { 1.5 };
                proxy.set_outage(true);
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                proxy.set_outage(false);
            }
            Fault::MalformedDatagrams => {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k as u64;
                for i in 0..200usize {
                    let len = 1 + i % 97;
                    let bytes: Vec<u8> = (0..len)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    let _ = op.client.send_raw_datagram(bytes);
                }
            }
            Fault::InvalidCommands => {
                let nan = Target::Pose(Pose {
                    position_m: Vector3::new(f64::NAN, 0.0, 0.0),
                    orientation: UnitQuaternion::identity(),
                });
                op.client.send_command(CommandMode::Contact, 8.0, nan);
                op.client
                    .send_command(CommandMode::Contact, 60.0, path_target(&start, t));
                op.client
                    .send_command(CommandMode::Contact, f64::INFINITY, path_target(&start, t));
                let Target::Pose(mut far) = path_target(&start, t) else {
                    unreachable!("path_target gives poses")
                };
                far.position_m += Vector3::new(0.0, 0.0, -1.0);
                let far = Target::Pose(far);
                op.client.send_command(CommandMode::Contact, 8.0, far);
            }
            Fault::EStop => {
                op.client.request(|c| c.estop());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Fault::Reconnect => {
                let old =
                    std::mem::replace(&mut op, Operator::connect(pki, "operator", addr).await?);
                old.client.close().await;
                op.acquire().await?;
            }
            Fault::SensorNan => {
                *ft_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(Some(FtFault::Nan));
                tokio::time::sleep(Duration::from_millis(20)).await;
                *ft_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(None);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Fault::Observer => {
                // Its own task: the operator keeps steering meanwhile.
                let pki = pki.to_path_buf();
                observers.push(tokio::spawn(async move {
                    let mut obs = Operator::connect(&pki, "observer", addr).await?;
                    let answer = obs
                        .client
                        .lease(|c| c.acquire(), Duration::from_secs(3))
                        .await;
                    for i in 0..50 {
                        obs.client.send_command(
                            CommandMode::Contact,
                            8.0,
                            path_target(&start, t + i as f64 * 0.01),
                        );
                    }
                    obs.client.close().await;
                    if answer == Some(LeaseOutcome::Granted) {
                        return Err(anyhow!("an observer was granted the control lease"));
                    }
                    Ok(())
                }));
            }
        }
        recovering = Some((fault, Instant::now(), false));
    }
    for o in observers {
        o.await.context("observer task")??;
    }
    d.proxy_dropped = {
        let s = proxy.stats();
        s.up_dropped + s.down_dropped
    };
    op.client.close().await;
    Ok(d)
}
