//! `telecho scan`: the autonomous scan protocol on a simulated patient.
//!
//! The control node (the [`ProbeController`] with its safety supervisor, driven by the
//! [`ScanExecutor`]) runs against the simulator as fast as possible through
//! [`run_simulated`] — the same cycle as the real-time loop. It sees only what a real system
//! sees: measured joints, the F/T sample, the nominal patient placement and the start pose an
//! operator gives by palpating L5 on the patient (with a palpation and alignment error). The evaluator scores the run from the
//! simulator's ground truth and writes it to `ground_truth.json`, which nothing in the control
//! node reads.
//!
//! Written into `--out DIR`:
//!
//! - `ct.nii.gz`, `dicom/`, `landmarks.json`: the patient's CBCT, exactly as
//!   `telecho sim phantom --seed N` writes them;
//! - `sweep/sweep.json` + `sweep/frames.u8`: the tracked ultrasound sweep
//!   (`docs/SWEEP_FORMAT.md`);
//! - `ground_truth.json`: the evaluator's truth (patient pose, breathing, per-frame true probe
//!   pose).
//!
//! Exit codes: 0 the protocol completed; 1 it did not (aborted on a safety event or timed out) —
//! the JSON summary is still printed and every file recorded so far is kept; 2 bad input (a
//! malformed protocol file, a protocol leaving the workspace, a bad argument), reported on one
//! line before anything is written.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use clap::Args;
use serde::Serialize;
use telecho_control::{
    run_simulated, AbortCause, Chain, ContactPhase, ControlOutput, ControllerConfig,
    ExecutorConfig, ImagingDepth, ProbeController, ProbeOrientation, ProbeTarget, SafetyConfig,
    SafetyEvent, SafetyEventKind, ScanExecutor, ScanProgress, ScanProtocol, ScanState, Severity,
    TargetSource,
};
use telecho_perception::imaging::{DepthPolicy, DepthSurvey};
use telecho_perception::sweep_write::{
    write_json_with_frames, FrameRecord, ImagingInfo, ProbeInfo, SweepEntry, SweepHeader,
};
use telecho_sim::plant::{operator_start_pose, patient_workspace, seeded_stiffness_n_per_mm};
use telecho_sim::{FtFault, Phantom, SimWorld, UltrasoundSim, UsFrame, UsParams};

use crate::cli_error::CliError;
use crate::record::ScanTap;
use crate::sim::{world_config, Arm, PatientCt};
use crate::CliResult;

/// Control period, s (the loop runs at 1 kHz).
pub(crate) const DT_S: f64 = 1e-3;
/// Most safety events listed in a report (the rest are counted).
const MAX_LISTED_EVENTS: usize = 1000;
/// Format tag of `sweep/sweep.json`.
pub(crate) const SWEEP_FORMAT: &str = telecho_perception::sweep::FORMAT;

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    /// Scan protocol TOML file (default: the built-in lumbar protocol,
    /// control/protocols/lumbar.toml).
    #[arg(long, value_name = "FILE")]
    protocol: Option<PathBuf>,
    /// Simulated patient: anatomy and CBCT (as `sim phantom --seed N`), placement on the table
    /// (as `sim export-gazebo --seed N`), breathing, tissue stiffness and sensor noise.
    #[arg(long, value_name = "N")]
    sim_seed: u64,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print the summary as one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Which bundled arm holds the probe.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// CBCT voxel edge in millimetres.
    #[arg(long, default_value_t = 0.8)]
    voxel_mm: f64,
    /// Ultrasound frame interval in simulated milliseconds (10–1000; 40 = 25 frames/s).
    #[arg(long, default_value_t = 40)]
    frame_interval_ms: u32,
    /// Simulation only: inject an F/T sensor fault at a simulated time, KIND@SECONDS with KIND
    /// nan, stale or stuck (e.g. `nan@20`), to watch the scan abort safely.
    #[arg(long, value_name = "KIND@SECONDS")]
    inject_ft_fault: Option<String>,
    /// Also record the run as MCAP (ROS 2 topics, CDR): 1 kHz wrench and joint states, 100 Hz
    /// tf, target pose and force setpoint, every ultrasound frame, safety events.
    #[arg(long, value_name = "FILE.mcap")]
    record: Option<PathBuf>,
}

/// The arm's name in reports.
pub(crate) fn arm_name(arm: Arm) -> &'static str {
    match arm {
        Arm::Ur5e => "ur5e",
        Arm::Panda => "panda",
    }
}

/// Loads `--protocol` (or the built-in lumbar protocol); a bad file is an input error naming the
/// line.
pub(crate) fn load_protocol(path: Option<&Path>) -> Result<ScanProtocol, CliError> {
    match path {
        None => Ok(ScanProtocol::default_lumbar()),
        Some(p) => ScanProtocol::from_file(p).map_err(CliError::input),
    }
}

/// A simulated patient, the control node and the protocol, ready to run.
#[derive(Debug)]
pub(crate) struct Scenario {
    pub(crate) arm: Arm,
    pub(crate) seed: u64,
    pub(crate) protocol: ScanProtocol,
    pub(crate) world: SimWorld,
    pub(crate) controller: ProbeController,
    pub(crate) executor: ScanExecutor,
    pub(crate) stiffness_n_per_mm: f64,
}

impl Scenario {
    /// The patient of `seed` (world of [`world_config`], breathing drawn from the seed, tissue
    /// stiffness [`seeded_stiffness_n_per_mm`]), the controller with the workspace box around
    /// the nominal placement, and the executor from the operator's palpated start pose. A
    /// protocol that leaves the workspace is an input error.
    pub(crate) fn new(arm: Arm, seed: u64, protocol: ScanProtocol) -> Result<Self, CliError> {
        let mut wc = world_config(arm, seed);
        let stiffness = seeded_stiffness_n_per_mm(seed);
        wc.contact.stiffness_n_per_mm = stiffness;
        let world = SimWorld::new(&wc).map_err(CliError::failed)?;
        let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
        let config = ControllerConfig {
            safety: SafetyConfig {
                workspace_min_m,
                workspace_max_m,
                ..SafetyConfig::default()
            },
            force_ramp_s: protocol.force_ramp_s,
            ..ControllerConfig::default()
        };
        let start = operator_start_pose(&world, seed);
        let executor =
            ScanExecutor::new(&protocol, &start, &config.safety, ExecutorConfig::default())
                .map_err(|e| CliError::input(anyhow!("protocol `{}`: {e}", protocol.name)))?;
        let (_, xml) = arm.bundled();
        let controller = ProbeController::from_urdf_str(xml, config).map_err(CliError::failed)?;
        Ok(Self {
            arm,
            seed,
            protocol,
            world,
            controller,
            executor,
            stiffness_n_per_mm: stiffness,
        })
    }

    /// Longest simulated time a run may take, s. Every executor state has a timeout, so a run
    /// ends well before; this only bounds a misbehaving one.
    fn time_cap_s(&self) -> f64 {
        let sweeps: f64 = self
            .protocol
            .sweeps
            .iter()
            .map(|s| 6.0 * ExecutorConfig::default().state_timeout_s + 2.0 * s.duration_s())
            .sum();
        60.0 + sweeps
    }
}

/// An F/T sensor fault injected into the simulator at a simulated time (`--inject-ft-fault`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct FaultInjection {
    pub(crate) fault: FtFault,
    pub(crate) time_s: f64,
}

impl FaultInjection {
    /// Parses `KIND@SECONDS`, KIND one of `nan`, `stale`, `stuck`.
    pub(crate) fn parse(text: &str) -> Result<Self, CliError> {
        let bad = || {
            CliError::input(anyhow!(
                "--inject-ft-fault `{text}`: expected KIND@SECONDS with KIND nan, stale or \
                 stuck and SECONDS ≥ 0 (e.g. nan@20)"
            ))
        };
        let (kind, at) = text.split_once('@').ok_or_else(bad)?;
        let fault = match kind.trim() {
            "nan" => FtFault::Nan,
            "stale" => FtFault::Stale,
            "stuck" => FtFault::Stuck,
            _ => return Err(bad()),
        };
        let time_s: f64 = at.trim().parse().map_err(|_| bad())?;
        if !(time_s.is_finite() && time_s >= 0.0) {
            return Err(bad());
        }
        Ok(Self { fault, time_s })
    }
}

/// A [`TargetSource`] that publishes the executor's progress after each update.
struct Observed<'a> {
    executor: &'a mut ScanExecutor,
    progress: &'a Cell<ScanProgress>,
}

impl TargetSource for Observed<'_> {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        let target = self.executor.update(time_s, last);
        self.progress.set(self.executor.progress());
        target
    }
}

/// Force statistics of one sweep (true axial contact force against the setpoint, while the
/// executor sweeps and the controller regulates).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SweepReport {
    /// Sweep name (protocol).
    pub(crate) name: String,
    /// `sagittal` or `transverse`.
    pub(crate) orientation: &'static str,
    /// Force setpoint, N.
    pub(crate) force_setpoint_n: f64,
    /// Sweep speed, m/s.
    pub(crate) speed_m_s: f64,
    /// The executor finished the sweep (Sweep → LiftOff).
    pub(crate) completed: bool,
    /// RMS of (true axial force − setpoint), N; NaN (null) without samples.
    pub(crate) force_rms_error_n: f64,
    /// Largest excess over the setpoint, N (≥ 0); NaN (null) without samples.
    pub(crate) overshoot_n: f64,
    /// Largest shortfall below the setpoint, N (≥ 0); NaN (null) without samples.
    pub(crate) undershoot_n: f64,
    /// 1 ms samples scored (Sweep state, force regulated).
    pub(crate) samples: usize,
    /// Time spent in the Sweep state, s.
    pub(crate) sweep_time_s: f64,
    /// Ultrasound frames recorded for this sweep.
    pub(crate) frames: usize,
    #[serde(skip)]
    sum_sq: f64,
}

/// One safety event in a report.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct EventReport {
    /// Controller time, s.
    pub(crate) time_s: f64,
    /// Event kind (`force_limit`, `sensor_nan`, …).
    pub(crate) kind: &'static str,
    /// `info`, `limit` or `stop`.
    pub(crate) severity: &'static str,
    /// The offending value (unit in `cause`); NaN (meaningless for the kind) is written as null.
    pub(crate) value: f64,
    /// The limit it crossed; NaN is written as null.
    pub(crate) limit: f64,
    /// One line in words.
    pub(crate) cause: String,
}

/// The summary of one scan (printed as one JSON object).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ScanReport {
    /// The protocol reached Done.
    pub(crate) completed: bool,
    /// Executor state at the end (`done`, `aborted`, or where a timed-out run stopped).
    pub(crate) final_state: &'static str,
    /// Why the scan did not complete.
    pub(crate) abort_cause: Option<String>,
    /// Patient seed.
    pub(crate) seed: u64,
    /// `ur5e` or `panda`.
    pub(crate) arm: &'static str,
    /// Protocol name.
    pub(crate) protocol: String,
    /// RMS of (true axial force − setpoint) over every sweep sample, N (null without samples).
    pub(crate) force_rms_error_n: f64,
    /// Largest excess over the setpoint while sweeping, N (null without samples).
    pub(crate) overshoot_n: f64,
    /// Largest true contact-force magnitude of the whole run, N.
    pub(crate) force_max_n: f64,
    /// The supervisor's force limit, N.
    pub(crate) force_limit_n: f64,
    /// 1 ms cycles with the true contact-force magnitude above the limit.
    pub(crate) force_limit_violations: u64,
    /// Simulated time, s.
    pub(crate) duration_s: f64,
    /// Wall time of the run (simulation, scoring, rendering), s.
    pub(crate) wall_s: f64,
    /// Ultrasound frames recorded.
    pub(crate) frames: usize,
    /// Sweeps the executor finished.
    pub(crate) sweeps_completed: usize,
    /// Tissue stiffness of the seed, N/mm.
    pub(crate) stiffness_n_per_mm: f64,
    /// Breathing peak-to-peak amplitude, m.
    pub(crate) breathing_amplitude_m: f64,
    /// Breathing frequency, Hz.
    pub(crate) breathing_frequency_hz: f64,
    /// Per-sweep statistics.
    pub(crate) sweeps: Vec<SweepReport>,
    /// Safety events in order (at most 1000 listed).
    pub(crate) safety_events: Vec<EventReport>,
    /// Events beyond the listed ones.
    pub(crate) safety_events_not_listed: usize,
    /// How the ultrasound's imaging depth was set (absent when no sweep was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) imaging: Option<ImagingInfo>,
    /// The output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) out: Option<String>,
}

/// Unit of an event's value and limit.
fn event_unit(kind: SafetyEventKind) -> &'static str {
    use SafetyEventKind::*;
    match kind {
        ForceLimit | TareRejected => "N",
        TorqueLimit => "N·m",
        SensorStale | WatchdogHold | WatchdogRetract => "s",
        WorkspaceLimit | ContactNotFound => "m",
        CartesianSpeed => "m/s",
        TrackingError | JointPositionLimit => "rad",
        JointAccelerationLimit => "rad/s²",
        _ => "",
    }
}

/// What an event means, in words.
fn event_meaning(kind: SafetyEventKind) -> &'static str {
    use SafetyEventKind::*;
    match kind {
        EStop => "e-stop pressed",
        Reset => "latched state reset",
        ForceLimit => "contact force above the limit: retract",
        TorqueLimit => "external joint torque above the limit: retract",
        SensorNan => "F/T sample not finite: fault stop",
        SensorStale => "F/T sample too old: fault stop",
        SensorSaturated => "F/T sensor saturated: fault stop",
        SensorJump => "implausible F/T jump between samples (force N or torque N·m): fault stop",
        SensorStuck => "F/T values frozen: fault stop",
        WatchdogHold => "no fresh command: hold",
        WatchdogRetract => "no fresh command: retract to a safe height",
        WorkspaceLimit => "workspace box reached",
        CartesianSpeed => "tip speed above the limit",
        JointPositionLimit => "joint position limit reached",
        JointVelocityLimit => "joint velocity limit: command scaled",
        JointAccelerationLimit => "joint acceleration limit: command clamped",
        InvalidTarget => "target refused",
        InvalidInput => "invalid joint measurements or period: fault stop",
        CommandRejected => "command rejected: last valid command repeated",
        TrackingError => "the arm does not follow its command: fault stop",
        ContactNotFound => "no skin found along the search: hold",
        TareRejected => "implausible F/T tare: fault stop",
    }
}

fn event_report(e: &SafetyEvent) -> EventReport {
    let unit = event_unit(e.kind);
    // E-stop and saturation carry flags (1 against 0), not measurements.
    let measured = !matches!(
        e.kind,
        SafetyEventKind::EStop | SafetyEventKind::Reset | SafetyEventKind::SensorSaturated
    );
    let cause = if measured && e.value.is_finite() && e.limit.is_finite() {
        let sp = if unit.is_empty() { "" } else { " " };
        format!(
            "{} ({}): {:.4}{sp}{unit} against the limit {:.4}{sp}{unit}",
            e.kind,
            event_meaning(e.kind),
            e.value,
            e.limit
        )
    } else {
        format!("{} ({})", e.kind, event_meaning(e.kind))
    };
    EventReport {
        time_s: e.time_s,
        kind: e.kind.name(),
        severity: match e.kind.severity() {
            Severity::Info => "info",
            Severity::Limit => "limit",
            Severity::Stop => "stop",
        },
        value: e.value,
        limit: e.limit,
        cause,
    }
}

fn abort_text(cause: &AbortCause) -> String {
    match cause {
        AbortCause::Safety(e) => format!(
            "safety event at {:.3} s: {}",
            e.time_s,
            event_report(e).cause
        ),
        other => other.to_string(),
    }
}

/// Runs the scenario to Done or Aborted (or the time cap), scoring it from the simulator's
/// truth, and records the ultrasound sweep into `recorder` when given.
pub(crate) fn run_scan(
    sc: &mut Scenario,
    mut recorder: Option<&mut SweepRecorder>,
    fault: Option<FaultInjection>,
    mut tap: Option<&mut ScanTap>,
) -> Result<ScanReport, CliError> {
    let wall = Instant::now();
    let force_limit_n = sc.controller.config().safety.force_limit_n;
    let mut sweeps: Vec<SweepReport> = sc
        .protocol
        .sweeps
        .iter()
        .map(|s| SweepReport {
            name: s.name.clone(),
            orientation: match s.orientation {
                ProbeOrientation::Sagittal => "sagittal",
                ProbeOrientation::Transverse => "transverse",
            },
            force_setpoint_n: s.force_n,
            speed_m_s: s.speed_m_s,
            completed: false,
            force_rms_error_n: 0.0,
            overshoot_n: 0.0,
            undershoot_n: 0.0,
            samples: 0,
            sweep_time_s: 0.0,
            frames: 0,
            sum_sq: 0.0,
        })
        .collect();
    let cap_s = sc.time_cap_s();
    let progress = Cell::new(sc.executor.progress());
    let mut source = Observed {
        executor: &mut sc.executor,
        progress: &progress,
    };
    let mut out = sc.controller.new_output();
    let mut force_max: f64 = 0.0;
    let mut violations = 0u64;
    let mut events = Vec::new();
    let mut events_not_listed = 0usize;
    let mut last_state = ScanState::Idle;
    let mut last_sweep = 0usize;
    let mut cycle = 0u64;
    let cycles = (cap_s / DT_S).ceil() as usize;
    let mut record_error = None;
    let fault_pending = Cell::new(fault);
    let mut on_cycle = |world: &SimWorld, out: &ControlOutput| {
        cycle += 1;
        let p = progress.get();
        let gt = world.ground_truth();
        let force = gt.contact_force_base_n.norm();
        force_max = force_max.max(force);
        if force > force_limit_n {
            violations += 1;
        }
        for e in out.events.as_slice() {
            if events.len() < MAX_LISTED_EVENTS {
                events.push(event_report(e));
            } else {
                events_not_listed += 1;
            }
        }
        events_not_listed += out.events.dropped();
        if last_state == ScanState::Sweep && p.state == ScanState::LiftOff {
            if let Some(s) = sweeps.get_mut(last_sweep) {
                s.completed = true;
            }
        }
        if p.state == ScanState::Sweep {
            if let Some(s) = sweeps.get_mut(p.sweep_index) {
                s.sweep_time_s += DT_S;
                if out.contact_phase == ContactPhase::Regulate {
                    let axial = -gt
                        .contact_force_base_n
                        .dot(&gt.t_base_probe.rotation.column(2).into_owned());
                    let e = axial - s.force_setpoint_n;
                    s.samples += 1;
                    s.sum_sq += e * e;
                    s.overshoot_n = s.overshoot_n.max(e);
                    s.undershoot_n = s.undershoot_n.max(-e);
                }
            }
        }
        last_state = p.state;
        last_sweep = p.sweep_index;
        if let Some(t) = tap.as_deref_mut() {
            if let Err(e) = t.cycle(world, out) {
                record_error = Some(e);
                return false;
            }
        }
        if let Some(r) = recorder.as_deref_mut() {
            let contact_phase = matches!(p.state, ScanState::Contact | ScanState::Sweep);
            if contact_phase && cycle.is_multiple_of(r.interval_cycles) {
                let name = sweeps.get(p.sweep_index).map_or("", |s| s.name.as_str());
                // `false`: a depth-survey frame, imaged but not recorded.
                let recorded = match r.record(world, out, &p, name) {
                    Ok(recorded) => recorded,
                    Err(e) => {
                        record_error = Some(e);
                        return false;
                    }
                };
                if recorded {
                    if let Some(t) = tap.as_deref_mut() {
                        let f = &r.frame;
                        if let Err(e) = t.image(world.time_s(), f.width, f.height, &f.pixels) {
                            record_error = Some(e);
                            return false;
                        }
                    }
                    if let Some(s) = sweeps.get_mut(p.sweep_index) {
                        s.frames += 1;
                    }
                }
            }
        }
        let due = fault_pending
            .get()
            .is_some_and(|f| world.time_s() >= f.time_s);
        !due && !matches!(p.state, ScanState::Done | ScanState::Aborted)
    };
    let mut remaining = cycles;
    loop {
        let ran = run_simulated(
            &mut sc.world,
            &mut sc.controller,
            &mut source,
            &mut out,
            DT_S,
            remaining,
            &mut on_cycle,
        );
        remaining -= ran;
        match fault_pending.get() {
            Some(f) if remaining > 0 && sc.world.time_s() >= f.time_s => {
                tracing::warn!(fault = ?f.fault, time_s = sc.world.time_s(), "injecting an F/T fault");
                sc.world.set_ft_fault(Some(f.fault));
                fault_pending.set(None);
            }
            _ => break,
        }
    }
    if let Some(e) = record_error {
        return Err(CliError::failed(e));
    }
    let exec = &sc.executor;
    let state = exec.state();
    let (mut n, mut sum_sq, mut over) = (0usize, 0.0, 0.0f64);
    for s in &mut sweeps {
        if s.samples == 0 {
            // Never regulated in this sweep: no statistic (null in the JSON).
            s.force_rms_error_n = f64::NAN;
            s.overshoot_n = f64::NAN;
            s.undershoot_n = f64::NAN;
            continue;
        }
        s.force_rms_error_n = (s.sum_sq / s.samples as f64).sqrt();
        n += s.samples;
        sum_sq += s.sum_sq;
        over = over.max(s.overshoot_n);
    }
    let abort_cause = match (state, exec.abort_cause()) {
        (_, Some(c)) => Some(abort_text(&c)),
        (ScanState::Done, None) => None,
        (s, None) => Some(format!(
            "the protocol did not finish within {cap_s:.0} s of simulated time (state {})",
            s.name()
        )),
    };
    let breathing = sc.world.breathing();
    Ok(ScanReport {
        completed: state == ScanState::Done,
        final_state: state.name(),
        abort_cause,
        seed: sc.seed,
        arm: arm_name(sc.arm),
        protocol: sc.protocol.name.clone(),
        force_rms_error_n: if n > 0 {
            (sum_sq / n as f64).sqrt()
        } else {
            f64::NAN
        },
        overshoot_n: if n > 0 { over } else { f64::NAN },
        force_max_n: force_max,
        force_limit_n,
        force_limit_violations: violations,
        duration_s: sc.world.time_s(),
        wall_s: wall.elapsed().as_secs_f64(),
        frames: recorder.as_ref().map_or(0, |r| r.frames.len()),
        sweeps_completed: sweeps.iter().filter(|s| s.completed).count(),
        stiffness_n_per_mm: sc.stiffness_n_per_mm,
        breathing_amplitude_m: breathing.amplitude_m(),
        breathing_frequency_hz: breathing.frequency_hz(),
        sweeps,
        safety_events: events,
        safety_events_not_listed: events_not_listed,
        imaging: recorder.as_ref().and_then(|r| r.imaging_report()),
        out: None,
    })
}

/// One frame's entry in `ground_truth.json`: what only the evaluator knows.
#[derive(Debug, Serialize)]
struct FrameTruth {
    index: usize,
    time_s: f64,
    t_base_probe: [[f64; 4]; 4],
    t_ct_probe: [[f64; 4]; 4],
    breathing_displacement_m: f64,
    contact_force_n: f64,
    image_contact_fraction: f64,
}

/// Renders and stores the tracked ultrasound sweep.
#[derive(Debug)]
pub(crate) struct SweepRecorder {
    dir: PathBuf,
    us: UltrasoundSim,
    frame: UsFrame,
    /// Until the imaging depth is chosen: the survey's scanner (imaging at the deepest depth)
    /// and its decision state. `None` once decided, or with a fixed depth.
    survey: Option<(UltrasoundSim, DepthSurvey)>,
    imaging: ImagingInfo,
    chain: Chain,
    q: Vec<f64>,
    file: BufWriter<File>,
    frames: Vec<FrameRecord>,
    truth: Vec<FrameTruth>,
    interval_cycles: u64,
}

impl SweepRecorder {
    /// A recorder writing into `dir` (created), rendering the patient of `seed` every
    /// `interval_cycles` control cycles.
    pub(crate) fn create(
        dir: &Path,
        sc: &Scenario,
        interval_cycles: u64,
    ) -> Result<Self, CliError> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .map_err(CliError::failed)?;
        let path = dir.join("frames.u8");
        let file = File::create(&path)
            .with_context(|| format!("cannot create {}", path.display()))
            .map_err(CliError::failed)?;
        let phantom = Arc::new(Phantom::generate(sc.seed));
        let params = |depth_m: f64| UsParams {
            depth_m,
            ..UsParams::default()
        };
        let (depth_m, survey, imaging) = match sc.protocol.imaging {
            ImagingDepth::Fixed(depth_m) => (
                depth_m,
                None,
                ImagingInfo {
                    mode: "fixed",
                    depth_m,
                    survey_depth_m: None,
                    first_bone_m: None,
                    survey_frames: None,
                    survey_frames_with_bone: None,
                },
            ),
            ImagingDepth::Auto {
                min_depth_m,
                max_depth_m,
                below_first_bone_m,
            } => {
                let policy = DepthPolicy {
                    min_depth_m,
                    max_depth_m,
                    below_first_bone_m,
                    ..DepthPolicy::default()
                };
                let p = params(max_depth_m);
                let sim =
                    UltrasoundSim::new(phantom.clone(), p, sc.seed).map_err(CliError::failed)?;
                let survey = DepthSurvey::new(policy, p.width, p.height, p.lateral_spacing_m())
                    .map_err(CliError::failed)?;
                let report = ImagingInfo {
                    mode: "auto",
                    depth_m: max_depth_m,
                    survey_depth_m: Some(max_depth_m),
                    first_bone_m: Some(None),
                    survey_frames: Some(0),
                    survey_frames_with_bone: Some(0),
                };
                (max_depth_m, Some((sim, survey)), report)
            }
        };
        let us = UltrasoundSim::new(phantom, params(depth_m), sc.seed).map_err(CliError::failed)?;
        let frame = us.new_frame();
        let chain = sc.world.chain().clone();
        Ok(Self {
            dir: dir.to_owned(),
            us,
            frame,
            survey,
            imaging,
            q: vec![0.0; chain.dof()],
            chain,
            file: BufWriter::with_capacity(1 << 20, file),
            frames: Vec::new(),
            truth: Vec::new(),
            interval_cycles: interval_cycles.max(1),
        })
    }

    /// Per recorded frame: time (s), the controller's force estimate along the probe axis (N),
    /// its force reference (N) and the simulator's true axial contact force (N).
    pub(crate) fn force_trace(&self) -> Vec<[f64; 4]> {
        self.frames
            .iter()
            .zip(&self.truth)
            .map(|(f, t)| [f.time_s, f.force_n, f.force_setpoint_n, t.contact_force_n])
            .collect()
    }

    /// The imaging depth, once chosen (`None` while the survey runs).
    pub(crate) fn imaging_report(&self) -> Option<ImagingInfo> {
        self.survey.is_none().then_some(self.imaging)
    }

    /// While the depth survey runs: images a survey frame at the probe pose and offers it.
    /// Returns whether the depth is chosen; it is forced once the first sweep moves, so that a
    /// scan whose survey never saw good contact still records its sweeps (at the deepest
    /// depth, as a survey without bone chooses).
    fn survey(&mut self, world: &SimWorld, p: &ScanProgress) -> anyhow::Result<bool> {
        let Some((sim, survey)) = self.survey.as_mut() else {
            return Ok(true);
        };
        let gt = world.ground_truth();
        let mut frame = sim.new_frame();
        sim.render(&gt.t_ct_probe, &mut frame)?;
        let mut choice = survey.offer(
            &frame.pixels,
            frame.width,
            frame.height,
            frame.contact_fraction,
        )?;
        if choice.is_none() && p.state == ScanState::Sweep {
            choice = Some(survey.conclude());
        }
        let Some(c) = choice else {
            return Ok(false);
        };
        let params = UsParams {
            depth_m: c.depth_m,
            ..*self.us.params()
        };
        self.us = UltrasoundSim::new(sim.phantom().clone(), params, sim.seed())?;
        self.frame = self.us.new_frame();
        self.imaging.depth_m = c.depth_m;
        self.imaging.first_bone_m = Some(c.first_bone_m);
        self.imaging.survey_frames = Some(c.frames_used);
        self.imaging.survey_frames_with_bone = Some(c.frames_with_bone);
        self.survey = None;
        tracing::info!(
            depth_mm = c.depth_m * 1e3,
            first_bone_mm = c.first_bone_m.map(|d| d * 1e3),
            frames = c.frames_used,
            "imaging depth chosen from the survey"
        );
        Ok(true)
    }

    /// Records one frame at the probe pose; `false` when it was a depth-survey frame instead.
    fn record(
        &mut self,
        world: &SimWorld,
        out: &ControlOutput,
        p: &ScanProgress,
        sweep: &str,
    ) -> anyhow::Result<bool> {
        if !self.survey(world, p)? {
            return Ok(false);
        }
        let obs = world.observe();
        self.q.copy_from_slice(obs.q_rad);
        let t_base_probe = self.chain.fk(&self.q)?;
        let gt = world.ground_truth();
        self.us.render(&gt.t_ct_probe, &mut self.frame)?;
        self.file
            .write_all(&self.frame.pixels)
            .context("cannot write sweep/frames.u8")?;
        let index = self.frames.len();
        self.frames.push(FrameRecord {
            index,
            time_s: obs.time_s,
            t_base_probe: t_base_probe.to_rows(),
            force_n: out.force_n,
            force_setpoint_n: out.force_setpoint_n,
            sweep: sweep.to_owned(),
            sweep_index: p.sweep_index,
            state: p.state.name(),
            q_rad: self.q.clone(),
        });
        self.truth.push(FrameTruth {
            index,
            time_s: gt.time_s,
            t_base_probe: gt.t_base_probe.to_rows(),
            t_ct_probe: gt.t_ct_probe.to_rows(),
            breathing_displacement_m: gt.breathing_displacement_m,
            contact_force_n: -gt
                .contact_force_base_n
                .dot(&gt.t_base_probe.rotation.column(2).into_owned()),
            image_contact_fraction: self.frame.contact_fraction,
        });
        Ok(true)
    }

    /// Flushes the frames and writes `sweep.json`.
    fn finish(&mut self, sc: &Scenario, report: &ScanReport) -> anyhow::Result<PathBuf> {
        self.file.flush().context("cannot write sweep/frames.u8")?;
        let f = &self.frame;
        let half = 0.5 * (f.width.max(1) - 1) as f64 * f.lateral_spacing_m;
        let (dx, dz) = (f.lateral_spacing_m, f.axial_spacing_m);
        let params = self.us.params();
        let mut first = 0;
        let sweeps = sc
            .protocol
            .sweeps
            .iter()
            .zip(&report.sweeps)
            .enumerate()
            .map(|(index, (s, r))| {
                let entry = SweepEntry {
                    index,
                    name: s.name.clone(),
                    orientation: r.orientation,
                    force_n: s.force_n,
                    speed_m_s: s.speed_m_s,
                    tilt_deg: s.tilt_rad.to_degrees(),
                    first_frame: first,
                    frame_count: r.frames,
                    completed: r.completed,
                };
                first += r.frames;
                entry
            })
            .collect();
        let header = SweepHeader {
            format: SWEEP_FORMAT,
            frames_file: "frames.u8",
            pixel_type: "u8",
            width: f.width,
            height: f.height,
            frame_bytes: f.width * f.height,
            frame_count: self.frames.len(),
            pixel_spacing_m: [dx, dz],
            t_probe_image: [
                [dx, 0.0, 0.0, -half],
                [0.0, 0.0, -dx, 0.0],
                [0.0, dz, 0.0, 0.0],
                [0.0, 0.0, 0.0, 1.0],
            ],
            base_frame: telecho_core::frames::BASE,
            probe_frame: telecho_core::frames::PROBE_TIP,
            pose_source: "fk_measured_joints",
            force_source: "controller_estimate",
            probe: ProbeInfo {
                frequency_hz: params.frequency_hz,
                aperture_m: params.aperture_m,
                depth_m: params.depth_m,
                slice_thickness_m: params.slice_thickness_m,
            },
            imaging: self.imaging_report(),
            arm: arm_name(sc.arm).to_owned(),
            urdf: sc.arm.bundled().0.to_owned(),
            seed: sc.seed,
            protocol: sc.protocol.name.clone(),
            completed: report.completed,
            sweeps,
        };
        let path = self.dir.join("sweep.json");
        write_json_with_frames(&path, &header, &self.frames)?;
        Ok(path)
    }
}

#[derive(Debug, Serialize)]
struct Breathing {
    amplitude_m: f64,
    frequency_hz: f64,
    model: &'static str,
}

#[derive(Debug, Serialize)]
struct GroundTruthHeader {
    note: &'static str,
    t_base_ct: [[f64; 4]; 4],
    nominal_t_base_ct: [[f64; 4]; 4],
    breathing: Breathing,
    stiffness_n_per_mm: f64,
    seed: u64,
    arm: &'static str,
}

fn write_ground_truth(path: &Path, sc: &Scenario, frames: &[FrameTruth]) -> anyhow::Result<()> {
    let gt = sc.world.ground_truth();
    let b = sc.world.breathing();
    let header = GroundTruthHeader {
        note: "evaluator-only simulator truth; the control and perception nodes never read it",
        t_base_ct: gt.t_base_ct.to_rows(),
        nominal_t_base_ct: sc.world.nominal_t_base_ct().to_rows(),
        breathing: Breathing {
            amplitude_m: b.amplitude_m(),
            frequency_hz: b.frequency_hz(),
            model: "b(t) = A/2·(1 − cos 2πft) posterior (ct −y); \
                    t_base_ct(t) = t_base_ct · Translation(0, −b(t), 0)",
        },
        stiffness_n_per_mm: sc.stiffness_n_per_mm,
        seed: sc.seed,
        arm: arm_name(sc.arm),
    };
    Ok(write_json_with_frames(path, &header, frames)?)
}

/// Runs the default protocol on the patient of `seed` exactly as `telecho scan --sim-seed N`
/// does (frames every `frame_interval_ms` of simulated time) and writes only the tracked sweep
/// into `sweep_dir` (`sweep.json`, `frames.u8`); no CT, no ground-truth file. Returns the report
/// and, for evaluators only, the true `t_base_ct` at rest and the nominal one (benchmarks).
pub(crate) fn record_sweep(
    arm: Arm,
    seed: u64,
    sweep_dir: &Path,
    frame_interval_ms: u32,
) -> Result<(ScanReport, telecho_core::Transform, telecho_core::Transform), CliError> {
    let mut sc = Scenario::new(arm, seed, ScanProtocol::default_lumbar())?;
    let mut recorder = SweepRecorder::create(sweep_dir, &sc, u64::from(frame_interval_ms))?;
    let report = run_scan(&mut sc, Some(&mut recorder), None, None)?;
    recorder.finish(&sc, &report).map_err(CliError::failed)?;
    let truth = sc.world.ground_truth().t_base_ct;
    Ok((report, truth, sc.world.nominal_t_base_ct()))
}

/// What [`scan_into`] ran and wrote.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub(crate) report: ScanReport,
    /// `ground_truth.json`.
    pub(crate) truth_path: PathBuf,
    /// `sweep/sweep.json`.
    pub(crate) sweep_path: PathBuf,
    /// Per recorded frame: time (s), force estimate, force reference and true force (N).
    pub(crate) force_trace: Vec<[f64; 4]>,
}

/// Runs the scenario, recording the tracked sweep into `out/sweep/` (a frame every
/// `frame_interval_ms` of simulated time in contact) and the evaluator's `out/ground_truth.json`,
/// and MCAP into `tap` when given. Whatever was recorded is kept when the run fails.
pub(crate) fn scan_into(
    sc: &mut Scenario,
    out: &Path,
    frame_interval_ms: u32,
    fault: Option<FaultInjection>,
    tap: Option<&mut ScanTap>,
) -> Result<Scanned, CliError> {
    let mut recorder = SweepRecorder::create(&out.join("sweep"), sc, u64::from(frame_interval_ms))?;
    let result = run_scan(sc, Some(&mut recorder), fault, tap);
    let truth_path = out.join("ground_truth.json");
    write_ground_truth(&truth_path, sc, &recorder.truth).map_err(CliError::failed)?;
    let report = result?;
    let sweep_path = recorder.finish(sc, &report).map_err(CliError::failed)?;
    Ok(Scanned {
        force_trace: recorder.force_trace(),
        report,
        truth_path,
        sweep_path,
    })
}

/// `telecho scan`.
pub(crate) fn run(args: &ScanArgs) -> CliResult {
    // Everything is checked before anything is written.
    let protocol = load_protocol(args.protocol.as_deref())?;
    let fault = args
        .inject_ft_fault
        .as_deref()
        .map(FaultInjection::parse)
        .transpose()?;
    if !(10..=1000).contains(&args.frame_interval_ms) {
        return Err(CliError::input(anyhow!(
            "--frame-interval-ms must be within 10–1000, got {}",
            args.frame_interval_ms
        )));
    }
    let mut sc = Scenario::new(args.arm, args.sim_seed, protocol)?;
    let ct = PatientCt::simulate(args.sim_seed, args.voxel_mm)?;
    if args.out.exists() && !args.out.is_dir() {
        return Err(CliError::input(anyhow!(
            "--out {} exists and is not a folder",
            args.out.display()
        )));
    }
    let files = ct.write(&args.out)?;
    tracing::info!(
        seed = args.sim_seed,
        protocol = %sc.protocol.name,
        "scanning the simulated patient"
    );
    let mut tap = match &args.record {
        Some(path) => Some(
            ScanTap::create(path, sc.world.chain().joint_names().to_vec())
                .map_err(CliError::failed)?,
        ),
        None => None,
    };
    let scanned = scan_into(
        &mut sc,
        &args.out,
        args.frame_interval_ms,
        fault,
        tap.as_mut(),
    );
    // The recording is closed whatever happened, so that it keeps everything up to the end.
    if let Some(t) = tap {
        let messages = t.finish().map_err(CliError::failed)?;
        if let Some(path) = &args.record {
            eprintln!("recorded {messages} messages into {}", path.display());
        }
    }
    let Scanned {
        mut report,
        truth_path,
        sweep_path,
        ..
    } = scanned?;
    report.out = Some(args.out.display().to_string());
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        print_table(&report);
    }
    eprintln!(
        "wrote {}, {}, {}, {} and {} ({} frames)",
        files.ct.display(),
        files.dicom_dir.display(),
        files.landmarks.display(),
        truth_path.display(),
        sweep_path.display(),
        report.frames
    );
    if report.completed {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "the scan did not complete: {}",
            report.abort_cause.as_deref().unwrap_or("unknown cause")
        )))
    }
}

/// The human summary of one scan.
pub(crate) fn print_table(r: &ScanReport) {
    println!(
        "scan `{}` of seed {} ({}, tissue {:.2} N/mm, breathing {:.1} mm at {:.2} Hz): {} after \
         {:.1} s simulated ({:.1} s wall)",
        r.protocol,
        r.seed,
        r.arm,
        r.stiffness_n_per_mm,
        r.breathing_amplitude_m * 1e3,
        r.breathing_frequency_hz,
        r.final_state,
        r.duration_s,
        r.wall_s
    );
    println!(
        "{:<20} {:>8} {:>10} {:>12} {:>8} {:>6}",
        "sweep", "force N", "RMS err N", "overshoot N", "frames", "done"
    );
    for s in &r.sweeps {
        println!(
            "{:<20} {:>8.1} {:>10.3} {:>12.3} {:>8} {:>6}",
            s.name,
            s.force_setpoint_n,
            s.force_rms_error_n,
            s.overshoot_n,
            s.frames,
            if s.completed { "yes" } else { "no" }
        );
    }
    println!(
        "{:<20} {:>8} {:>10.3} {:>12.3} {:>8}",
        "all", "", r.force_rms_error_n, r.overshoot_n, r.frames
    );
    println!(
        "max contact force {:.2} N (limit {:.0} N, {} cycles above), {} safety events",
        r.force_max_n,
        r.force_limit_n,
        r.force_limit_violations,
        r.safety_events.len() + r.safety_events_not_listed
    );
    for e in &r.safety_events {
        println!("  {:>8.3} s  {:<6} {}", e.time_s, e.severity, e.cause);
    }
    if let Some(c) = &r.abort_cause {
        println!("not completed: {c}");
    }
}
