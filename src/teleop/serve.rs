//! `telecho teleop serve --sim`: the patient side of the teleoperation link on the simulator.
//!
//! Threads and tasks:
//!
//! - the **control thread** (`telecho-control`): the 1 kHz loop — simulator, [`ProbeController`]
//!   with its safety supervisor, and the [`OperatorSource`] fed by the QUIC server's accepted
//!   commands (newest wins) and session requests. Paced on absolute 1 ms deadlines; after a
//!   stall longer than 50 ms it resumes from now instead of catching up (simulated time then
//!   lags the wall clock; the run summary counts these).
//! - the **QUIC server** ([`TeleopServer`], tokio): authentication, lease, command acceptance
//!   (lease, limits, rate, newest-wins, staleness, prediction over the measured delay), the
//!   link watchdog, the audit log.
//! - a **publisher** task: robot state and haptic feedback (measured wrench + the controller's
//!   contact model) as datagrams at `--state-hz` (default 100).
//! - an **ultrasound** thread: renders the simulator's B-mode image at the probe pose at
//!   `--us-fps` (default 30), delta-zstd encodes it and sends it on its own stream.
//!
//! Link loss is handled by the control node itself: without a fresh command its supervisor
//! holds (force regulation continues) after 100 ms and retracts to a safe height after 1 s;
//! the retract is latched until the lease holder sends `Reset`. Either side can restart the
//! connection: the lease is freed when the holder's connection closes and re-acquired on the
//! new one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use nalgebra::Vector3;
use serde::Serialize;
use telecho_control::{
    run_simulated, ControlOutput, ExecutorConfig, ProbeTarget, SafetyConfig, ScanExecutor,
    ScanProtocol, TargetSource,
};
use telecho_core::Transform;
use telecho_sim::plant::operator_start_pose;
use telecho_sim::{FtFault, SimWorld, UltrasoundSim, UsParams};
use telecho_teleop::control_link::{contact_model, safety_code, OperatorSource};
use telecho_teleop::net::server::{CommandReceiver, ServerConfig, ServerEvent, TeleopServer};
use telecho_teleop::session::SessionRequest;
use telecho_teleop::us_codec;
use telecho_teleop::wire::{ContactModel, FrameEncoding, Pose, SafetyCode, UsFrameMsg};
use tokio::sync::mpsc;

use crate::cli_error::CliError;
use crate::scan::{Scenario, DT_S};
use crate::sim::Arm;
use crate::CliResult;

/// Damping of the contact model streamed to the console, N·s/m (the simulated tissue's
/// damping is not estimated; a small value keeps the rendered contact well damped).
const CONTACT_DAMPING_N_S_M: f64 = 50.0;
/// A stall longer than this makes the loop resume from now instead of catching up.
const MAX_CATCH_UP: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Run against the built-in simulator (today the only plant; required).
    #[arg(long)]
    pub(crate) sim: bool,
    /// UDP address to listen on (e.g. 0.0.0.0:4433, 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// PKI directory made by `telecho certs init` (ca.pem, server.pem, server.key).
    #[arg(long, value_name = "DIR")]
    pub(crate) pki: PathBuf,
    /// Hash-chained audit log (JSON lines; appended to, verified first when it exists).
    #[arg(long, value_name = "PATH", default_value = "telecho-audit.log")]
    pub(crate) audit: PathBuf,
    /// Simulated patient (as `telecho scan --sim-seed N`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) sim_seed: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) duration_s: Option<f64>,
    /// Which bundled arm holds the probe.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    pub(crate) arm: Arm,
    /// Robot state and haptic feedback rate, Hz (60–1000).
    #[arg(long, default_value_t = 100.0)]
    pub(crate) state_hz: f64,
    /// Ultrasound frame rate, frames/s (0 turns the stream off; at most 60).
    #[arg(long, default_value_t = 30.0)]
    pub(crate) us_fps: f64,
    /// Ultrasound imaging depth, m (0.02–0.30; e.g. the depth `telecho scan` chose for this
    /// patient, its JSON `imaging.depth_m`).
    #[arg(long, value_name = "M", default_value_t = 0.070)]
    pub(crate) us_depth_m: f64,
    /// Commands older than this at arrival are refused, ms (20–2000).
    #[arg(long, default_value_t = 200.0)]
    pub(crate) max_age_ms: f64,
    /// Print the run summary as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How an in-process caller (`telecho soak`) drives a serve run instead of signals and
/// `--duration-s`.
pub(crate) struct Hooks {
    /// Set to stop serving.
    pub(crate) stop: Arc<AtomicBool>,
    /// Receives the bound address once the server listens.
    pub(crate) addr: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
    /// An F/T sensor fault for the simulator to switch to (`Some(None)` clears it); taken by the
    /// control thread within a cycle.
    pub(crate) ft_fault: Arc<Mutex<Option<Option<FtFault>>>>,
    /// The control loop's state, updated every 5 cycles.
    pub(crate) status: Arc<Mutex<LoopStatus>>,
    /// When set, the age at the patient side (s) of every operator command applied.
    pub(crate) command_ages: Option<Arc<Mutex<Vec<f64>>>>,
}

/// What an in-process caller sees of the control loop (the evaluator's view: the true probe
/// pose comes from the simulator).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoopStatus {
    /// Safety state as sent to the console.
    pub(crate) safety: SafetyCode,
    /// True probe pose in the base frame.
    pub(crate) t_base_probe: Transform,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            stop: Arc::default(),
            addr: None,
            ft_fault: Arc::default(),
            status: Arc::new(Mutex::new(LoopStatus {
                safety: SafetyCode::Normal,
                t_base_probe: Transform::new(nalgebra::Matrix3::identity(), Vector3::zeros()),
            })),
            command_ages: None,
        }
    }
}

/// What the control thread publishes for the network side.
#[derive(Clone, Debug)]
struct Snapshot {
    time_s: f64,
    safety: SafetyCode,
    joints_rad: Vec<f64>,
    t_base_probe: Transform,
    t_ct_probe: Transform,
    force_n: Vector3<f64>,
    torque_nm: Vector3<f64>,
    contact: Option<ContactModel>,
}

/// Summary of a serve run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ServeReport {
    pub(crate) listen: String,
    pub(crate) seed: u64,
    pub(crate) duration_s: f64,
    pub(crate) sim_time_s: f64,
    pub(crate) control_cycles: u64,
    pub(crate) loop_stalls: u64,
    pub(crate) connections: u64,
    pub(crate) commands_accepted: u64,
    pub(crate) commands_applied: u64,
    pub(crate) commands_refused: u64,
    pub(crate) malformed_datagrams: u64,
    /// Accepted commands withheld because the audit log could not be written.
    pub(crate) commands_unaudited: u64,
    pub(crate) audit_failures: u64,
    pub(crate) estops: u64,
    pub(crate) resets: u64,
    pub(crate) protocols_started: u64,
    pub(crate) states_sent: u64,
    pub(crate) frames_sent: u64,
    pub(crate) frames_skipped: u64,
    pub(crate) us_fps: f64,
    pub(crate) force_max_n: f64,
    /// Control cycles with the true contact force above the limit.
    pub(crate) force_limit_violations: u64,
    pub(crate) force_limit_n: f64,
    pub(crate) safety_events: std::collections::BTreeMap<String, u64>,
    pub(crate) final_safety: String,
    pub(crate) audit: String,
    pub(crate) audit_records: u64,
}

/// The control loop's source: drains the server's channels into the [`OperatorSource`].
struct LinkSource {
    inner: OperatorSource,
    commands: CommandReceiver,
    events: mpsc::UnboundedReceiver<ServerEvent>,
    start_pose: Transform,
    safety: SafetyConfig,
    protocols_started: u64,
    ages: Option<Arc<Mutex<Vec<f64>>>>,
}

impl LinkSource {
    fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                ServerEvent::Link(l) => self.inner.link(l),
                ServerEvent::Session { by, request } => {
                    tracing::info!(%by, ?request, "session request");
                    if let SessionRequest::StartProtocol(name) = &request {
                        self.start(name);
                    } else {
                        self.inner.session(&request);
                    }
                }
                ServerEvent::Connected { conn, identity } => {
                    tracing::info!(conn, who = %identity.name, role = identity.role.as_str(), "connected");
                }
                ServerEvent::Disconnected { conn } => tracing::info!(conn, "disconnected"),
            }
        }
        if let Some(c) = self.commands.latest() {
            if let Some(ages) = &self.ages {
                ages.lock().unwrap_or_else(|e| e.into_inner()).push(c.age_s);
            }
            self.inner.push_command(c);
        }
    }

    fn start(&mut self, name: &str) {
        let protocol = match name {
            "lumbar" | "default" => ScanProtocol::default_lumbar(),
            other => {
                tracing::warn!(protocol = other, "unknown scan protocol (known: lumbar)");
                return;
            }
        };
        match ScanExecutor::new(
            &protocol,
            &self.start_pose,
            &self.safety,
            ExecutorConfig::default(),
        ) {
            Ok(exec) => {
                if self.inner.start_protocol(name, exec) {
                    self.protocols_started += 1;
                } else {
                    tracing::warn!("scan protocol refused: e-stop latched");
                }
            }
            Err(e) => tracing::warn!("scan protocol refused: {e}"),
        }
    }
}

impl TargetSource for LinkSource {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        self.drain();
        self.inner.next_target(time_s, last)
    }

    fn estop(&self) -> bool {
        self.inner.estop()
    }

    fn reset(&mut self) -> bool {
        self.inner.reset()
    }
}

fn check_args(a: &ServeArgs) -> Result<(), CliError> {
    if !a.sim {
        return Err(CliError::input(anyhow!(
            "only the simulator is supported so far: pass --sim"
        )));
    }
    check_common(a.duration_s, a.max_age_ms)?;
    if !(a.state_hz.is_finite() && (60.0..=1000.0).contains(&a.state_hz)) {
        return Err(CliError::input(anyhow!(
            "--state-hz must be within 60–1000, got {}",
            a.state_hz
        )));
    }
    if !(a.us_fps.is_finite() && (0.0..=60.0).contains(&a.us_fps)) {
        return Err(CliError::input(anyhow!(
            "--us-fps must be within 0–60, got {}",
            a.us_fps
        )));
    }
    if !(a.us_depth_m.is_finite() && (0.02..=0.30).contains(&a.us_depth_m)) {
        return Err(CliError::input(anyhow!(
            "--us-depth-m must be within 0.02–0.30 m, got {}",
            a.us_depth_m
        )));
    }
    Ok(())
}

/// Set by SIGINT/SIGTERM: stop serving, flush the audit log, print the summary.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub(crate) fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub(crate) fn run(args: &ServeArgs) -> CliResult {
    check_args(args)?;
    let sc = Scenario::new(args.arm, args.sim_seed, ScanProtocol::default_lumbar())?;
    let config = server_config(args, &sc)?;
    let report = runtime()?.block_on(serve(args, sc, config, Hooks::default()))?;
    print_report(args, &report)
}

/// The tokio runtime of a serve run (two workers: the machine has two cores and the control loop
/// has its own thread).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
        .map_err(CliError::failed)
}

impl ServeArgs {
    /// A serve run inside another command (`soak`, the demo's remote expert): the simulator on
    /// loopback at any free port, run until [`Hooks::stop`].
    pub(crate) fn in_process(
        pki: PathBuf,
        audit: PathBuf,
        arm: Arm,
        sim_seed: u64,
        us_fps: f64,
        max_age_ms: f64,
    ) -> Self {
        Self {
            sim: true,
            listen: ([127, 0, 0, 1], 0).into(),
            pki,
            audit,
            sim_seed,
            duration_s: None,
            arm,
            state_hz: 100.0,
            us_fps,
            us_depth_m: UsParams::default().depth_m,
            max_age_ms,
            json: false,
        }
    }
}

/// Starts the impairment proxy in front of `server`, the same impairment in both directions.
pub(crate) async fn impaired_link(
    server: SocketAddr,
    one_way: telecho_teleop::net::impair::Impairment,
    seed: u64,
) -> anyhow::Result<telecho_teleop::net::impair::ImpairProxy> {
    Ok(telecho_teleop::net::impair::ImpairProxy::start(
        ([127, 0, 0, 1], 0).into(),
        server,
        telecho_teleop::net::impair::ImpairConfig {
            up: one_way,
            down: one_way,
            seed,
            session_idle: telecho_teleop::net::impair::SESSION_IDLE,
        },
    )
    .await?)
}

/// Waits for the in-process patient side to report its address.
pub(crate) async fn patient_address(
    rx: tokio::sync::oneshot::Receiver<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .context("the patient side did not start")?
        .context("the patient side stopped")
}

/// The server configuration of a serve run: the PKI, the audit log and the acceptor's limits
/// from the scenario's safety configuration.
pub(crate) fn server_config(args: &ServeArgs, sc: &Scenario) -> Result<ServerConfig, CliError> {
    let safety = sc.controller.config().safety;
    site_server_config(
        &args.pki,
        args.listen,
        &args.audit,
        &safety,
        args.max_age_ms,
        &["lumbar", "default"],
    )
}

/// The patient side's server configuration (shared by `teleop serve` and `node teleop`): the
/// site PKI, the audit log, the acceptor's limits from the control node's safety configuration
/// (workspace box, force limit less the setpoint margin), the accepted command age and the scan
/// protocols the patient side can run.
pub(crate) fn site_server_config(
    pki: &std::path::Path,
    listen: SocketAddr,
    audit: &std::path::Path,
    safety: &SafetyConfig,
    max_age_ms: f64,
    protocols: &[&str],
) -> Result<ServerConfig, CliError> {
    let mut config = ServerConfig::from_pki(pki, listen)
        .map_err(|e| CliError::input(anyhow!("--pki {}: {e}", pki.display())))?;
    config.audit = Some(audit.to_path_buf());
    config.core.acceptor.workspace_min_m = Vector3::from(safety.workspace_min_m);
    config.core.acceptor.workspace_max_m = Vector3::from(safety.workspace_max_m);
    config.core.acceptor.max_force_n = safety.force_limit_n - safety.setpoint_margin_n;
    config.core.acceptor.max_age_s = max_age_ms * 1e-3;
    config.core.protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
    config.core.predictor.max_horizon_s = config.core.predictor.max_horizon_s.max(
        (max_age_ms * 1e-3).min(1.0), // predict over the whole accepted age
    );
    Ok(config)
}

/// Waits until SIGINT/SIGTERM, `duration_s` (when given) or `stop`.
pub(crate) async fn wait_for_stop(duration_s: Option<f64>, stop: &AtomicBool) {
    install_interrupt_handler();
    let until = duration_s.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    while !INTERRUPTED.load(Ordering::Relaxed)
        && !stop.load(Ordering::Relaxed)
        && until.is_none_or(|u| tokio::time::Instant::now() < u)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shuts the server down (flushing the audit log) and returns the number of records in the
/// verified log (0 when it does not verify).
pub(crate) async fn close_server(
    server: Arc<TeleopServer>,
    audit: &std::path::Path,
) -> Result<u64, CliError> {
    match Arc::try_unwrap(server) {
        Ok(s) => s.shutdown().await.map_err(CliError::failed)?,
        Err(s) => s.flush_audit().map_err(CliError::failed)?,
    }
    Ok(telecho_teleop::audit::verify(audit)
        .map(|v| v.records)
        .unwrap_or(0))
}

/// Checks `--max-age-ms` and `--duration-s`, shared by the patient sides.
pub(crate) fn check_common(duration_s: Option<f64>, max_age_ms: f64) -> Result<(), CliError> {
    if let Some(d) = duration_s {
        if !(d.is_finite() && d > 0.0 && d <= 1e6) {
            return Err(CliError::input(anyhow!(
                "--duration-s must be a positive number of seconds, got {d}"
            )));
        }
    }
    if !(max_age_ms.is_finite() && (20.0..=2000.0).contains(&max_age_ms)) {
        return Err(CliError::input(anyhow!(
            "--max-age-ms must be within 20–2000, got {max_age_ms}"
        )));
    }
    Ok(())
}

/// Serves until Ctrl-C, `--duration-s` or `hooks.stop`; returns the run summary.
pub(crate) async fn serve(
    args: &ServeArgs,
    sc: Scenario,
    config: ServerConfig,
    mut hooks: Hooks,
) -> Result<ServeReport, CliError> {
    let wall = Instant::now();
    let (server, channels) = TeleopServer::bind(config).map_err(|e| {
        CliError::input(anyhow!(
            "cannot serve on {} (audit log {}): {e}",
            args.listen,
            args.audit.display()
        ))
    })?;
    let server = Arc::new(server);
    let addr = server.local_addr().map_err(CliError::failed)?;
    eprintln!("telecho teleop serve: listening on {addr}");
    if let Some(tx) = hooks.addr.take() {
        let _ = tx.send(addr);
    }

    let Scenario {
        world,
        mut controller,
        seed,
        ..
    } = sc;
    let start_pose = operator_start_pose(&world, seed);
    let force_limit_n = controller.config().safety.force_limit_n;
    let safety = controller.config().safety;
    let snapshot = Arc::new(Mutex::new(Snapshot {
        time_s: 0.0,
        safety: SafetyCode::Normal,
        joints_rad: world.observe().q_rad.to_vec(),
        t_base_probe: world.ground_truth().t_base_probe,
        t_ct_probe: world.t_ct_probe(),
        force_n: Vector3::zeros(),
        torque_nm: Vector3::zeros(),
        contact: None,
    }));
    let stop = hooks.stop.clone();
    let phantom = world.phantom().clone();

    // The control thread.
    let control = {
        let snapshot = snapshot.clone();
        let stop = stop.clone();
        let mut source = LinkSource {
            inner: OperatorSource::new(),
            commands: channels.commands,
            events: channels.events,
            start_pose,
            safety,
            protocols_started: 0,
            ages: hooks.command_ages.clone(),
        };
        let mut world = world;
        let ft_fault = hooks.ft_fault.clone();
        let status = hooks.status.clone();
        std::thread::Builder::new()
            .name("telecho-control".into())
            .spawn(move || {
                let mut out = controller.new_output();
                let mut report = ServeReport::default();
                let mut start = Instant::now();
                let mut k = 0u64;
                let fault_pending = || {
                    ft_fault
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_some()
                };
                loop {
                run_simulated(
                    &mut world,
                    &mut controller,
                    &mut source,
                    &mut out,
                    DT_S,
                    usize::MAX,
                    |world: &SimWorld, out: &ControlOutput| {
                        k += 1;
                        let gt = world.ground_truth();
                        let force = gt.contact_force_base_n.norm();
                        report.force_max_n = report.force_max_n.max(force);
                        if force > force_limit_n {
                            report.force_limit_violations += 1;
                        }
                        for e in out.events.as_slice() {
                            *report
                                .safety_events
                                .entry(e.kind.name().to_owned())
                                .or_default() += 1;
                        }
                        if k.is_multiple_of(5) {
                            let obs = world.observe();
                            let mut s = snapshot.lock().unwrap_or_else(|e| e.into_inner());
                            s.time_s = obs.time_s;
                            s.safety = safety_code(&out.safety);
                            s.joints_rad.clear();
                            s.joints_rad.extend_from_slice(obs.q_rad);
                            s.t_base_probe = out.t_base_probe;
                            s.t_ct_probe = gt.t_ct_probe;
                            s.force_n = out.contact_force_base_n;
                            s.torque_nm = out.contact_torque_base_nm;
                            s.contact = contact_model(out, CONTACT_DAMPING_N_S_M);
                            drop(s);
                            *status.lock().unwrap_or_else(|e| e.into_inner()) = LoopStatus {
                                safety: safety_code(&out.safety),
                                t_base_probe: gt.t_base_probe,
                            };
                        }
                        // Pace on absolute deadlines.
                        let deadline = start + Duration::from_micros(k * 1000);
                        let now = Instant::now();
                        if deadline > now {
                            std::thread::sleep(deadline - now);
                        } else if now - deadline > MAX_CATCH_UP {
                            report.loop_stalls += 1;
                            start = now - Duration::from_micros(k * 1000);
                        }
                        !stop.load(Ordering::Relaxed) && !fault_pending()
                    },
                );
                let fault = ft_fault.lock().unwrap_or_else(|e| e.into_inner()).take();
                match fault {
                    Some(f) => {
                        tracing::warn!(fault = ?f, time_s = world.time_s(), "F/T sensor fault switched");
                        world.set_ft_fault(f);
                    }
                    None => break,
                }
                }
                report.control_cycles = k;
                report.sim_time_s = world.time_s();
                report.final_safety = format!("{:?}", safety_code(&out.safety)).to_lowercase();
                let st = source.inner.stats();
                report.commands_applied = st.applied;
                report.estops = st.estops;
                report.resets = st.resets;
                report.protocols_started = source.protocols_started;
                report
            })
            .context("control thread")
            .map_err(CliError::failed)?
    };

    // Robot state and haptic feedback.
    let states_sent = Arc::new(AtomicU64::new(0));
    let publisher = {
        let server = server.clone();
        let sent = states_sent.clone();
        let snapshot = snapshot.clone();
        let period = Duration::from_secs_f64(1.0 / args.state_hz);
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                iv.tick().await;
                let s = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let pose = Pose::from_transform(&s.t_base_probe);
                server.publish_state(s.safety, s.joints_rad, pose, s.force_n, s.torque_nm);
                server.publish_haptic(s.force_n, s.torque_nm, s.contact);
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Ultrasound frames.
    let frames_rendered = Arc::new(AtomicU64::new(0));
    let us = if args.us_fps > 0.0 {
        let server = server.clone();
        let snapshot = snapshot.clone();
        let stop = stop.clone();
        let rendered = frames_rendered.clone();
        let handle = tokio::runtime::Handle::current();
        let period = Duration::from_secs_f64(1.0 / args.us_fps);
        let params = UsParams {
            depth_m: args.us_depth_m,
            ..UsParams::default()
        };
        let mut us = UltrasoundSim::new(phantom, params, seed)
            .context("ultrasound simulator")
            .map_err(CliError::failed)?;
        Some(
            std::thread::Builder::new()
                .name("telecho-us".into())
                .spawn(move || {
                    let _rt = handle.enter();
                    let mut frame = us.new_frame();
                    let start = Instant::now();
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let s = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        if us.render(&s.t_ct_probe, &mut frame).is_ok() {
                            if let Ok(payload) = us_codec::encode(
                                &frame.pixels,
                                frame.width,
                                frame.height,
                                FrameEncoding::DeltaZstd,
                            ) {
                                k += 1;
                                server.publish_frame(UsFrameMsg {
                                    seq: k,
                                    acquired_s: server.now_s(),
                                    width: frame.width as u16,
                                    height: frame.height as u16,
                                    lateral_spacing_m: frame.lateral_spacing_m,
                                    axial_spacing_m: frame.axial_spacing_m,
                                    probe: Pose::from_transform(&s.t_base_probe),
                                    encoding: FrameEncoding::DeltaZstd,
                                    payload,
                                });
                                rendered.store(k, Ordering::Relaxed);
                            }
                        }
                        let deadline = start + period.mul_f64(k as f64);
                        let now = Instant::now();
                        if deadline > now {
                            std::thread::sleep(deadline - now);
                        }
                    }
                })
                .context("ultrasound thread")
                .map_err(CliError::failed)?,
        )
    } else {
        None
    };

    wait_for_stop(args.duration_s, &stop).await;
    stop.store(true, Ordering::Relaxed);
    publisher.abort();
    let control_report = tokio::task::spawn_blocking(move || control.join())
        .await
        .ok()
        .and_then(|r| r.ok());
    if let Some(us) = us {
        let _ = tokio::task::spawn_blocking(move || us.join()).await;
    }
    let duration_s = wall.elapsed().as_secs_f64();
    let stats = server.stats();
    let mut report =
        control_report.ok_or_else(|| CliError::failed(anyhow!("the control thread panicked")))?;
    report.listen = addr.to_string();
    report.seed = seed;
    report.duration_s = duration_s;
    report.connections = stats.core.connections;
    report.commands_accepted = stats.core.commands.accepted;
    report.commands_refused = stats.core.commands.dropped();
    report.malformed_datagrams = stats.core.malformed_datagrams;
    report.commands_unaudited = stats.commands_unaudited;
    report.audit_failures = stats.audit_failures;
    report.states_sent = states_sent.load(Ordering::Relaxed);
    report.frames_sent = stats.frames_sent;
    report.frames_skipped = stats.frames_skipped;
    report.us_fps = frames_rendered.load(Ordering::Relaxed) as f64 / duration_s.max(1e-9);
    report.force_limit_n = force_limit_n;
    report.audit = args.audit.display().to_string();
    report.audit_records = close_server(server, &args.audit).await?;
    Ok(report)
}

fn print_report(args: &ServeArgs, report: &ServeReport) -> CliResult {
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report)
                .context("summary")
                .map_err(CliError::failed)?
        );
    } else {
        println!(
            "served {:.1} s on {}: {} connections, {} commands accepted ({} applied, {} refused), \
             {} frames ({:.1} fps), max contact force {:.2} N (limit {:.0} N), final safety {}, \
             audit {} ({} records)",
            report.duration_s,
            report.listen,
            report.connections,
            report.commands_accepted,
            report.commands_applied,
            report.commands_refused,
            report.frames_sent,
            report.us_fps,
            report.force_max_n,
            report.force_limit_n,
            report.final_safety,
            report.audit,
            report.audit_records
        );
    }
    Ok(())
}
