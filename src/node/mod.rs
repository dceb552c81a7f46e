//! `telecho node`: run one telecho node as its own process, talking ROS 2 over DDS.
//!
//! `telecho node control --sim` runs the control node (controller + safety supervisor) on the
//! simulated arm and patient of `--sim-seed`, in real time at 1 kHz on its own thread, with the
//! ROS 2 adapter of `telecho_control::ros2` (topics and QoS listed there). `--ros2` is implied:
//! the binary is built with the `ros2` feature of `telecho-control` (on by default). The domain
//! is `--domain-id`, else `ROS_DOMAIN_ID`, else 0. Without `--duration-s` the node runs until
//! killed. At the end it prints a summary (one JSON object with `--json`): loop timing, what the
//! adapter published, accepted and rejected, and the final probe pose.
//!
//! With `--sim` the node also runs the autonomous scan on request — services `/scan/start` and
//! `/scan/stop` (`std_srvs/srv/Trigger`), progress on `/scan/status`, the protocol on
//! `/scan/protocol` — and streams the simulated ultrasound at the probe's pose: `/us/image`
//! (`sensor_msgs/Image` mono8, frame `us_image`), `/us/pixel_spacing`
//! (`geometry_msgs/Vector3Stamped`: x column, y row spacing, m), `/us/probe_pose` (the measured
//! tip pose at acquisition) and `/us/frame_info` (force and scan state, JSON), all four with the
//! same stamp; `probe_tip` → `us_image` is on `/tf_static`. Supervisor events go to
//! `/safety/events` (`diagnostic_msgs/DiagnosticArray`). `--real-time-factor F` runs the
//! simulator F times faster than real time (tests, demos).
//!
//! `telecho node control --gazebo` drives the arm of a running Gazebo launch (`telecho sim
//! export-gazebo`) instead, through its `ros2_control` topics (`telecho_control::gazebo`), with the
//! same adapter minus `/joint_states`, `/tf` and `/robot_description` (the launch publishes those)
//! and without ultrasound. The loop steps with Gazebo: its `compute` times include the wait for
//! Gazebo's next joint state, and its deadline misses count the cycles Gazebo was slower than 1 kHz.
//!
//! `telecho node perception` (in [`perception`]) collects that stream into a tracked sweep and
//! registers the patient's CBCT to it on `/perception/register`.
//!
//! Exit codes: 0 the run ended; 1 DDS or the control thread failed; 2 bad arguments.

mod perception;
mod teleop;

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_control::gazebo::{GazeboConfig, GazeboPlant, GazeboReport, GAZEBO_FT_STALE_S};
use telecho_control::ros2::{
    self, AttachOptions, FrameSender, ProbeDescription, ProtocolInfo, Ros2Config, Ros2Report,
    RosPlant, ScanService, ScanTag, ScanTagReader, SweepDescription, UsFrame, UsGeometry,
};
use telecho_control::rt_loop::Plant;
use telecho_control::{
    spawn_realtime_until, ControlOutput, ExecutorConfig, FtSample, ImagingDepth, LoopStats,
    ProbeController, ProbeOrientation, RtConfig, ScanExecutor, ScanProtocol, Wrench,
};
use telecho_core::Transform;
use telecho_sim::plant::operator_start_pose;
use telecho_sim::{Phantom, SimWorld, UltrasoundSim, UsParams};

use crate::cli_error::CliError;
use crate::scan::Scenario;
use crate::sim::Arm;
use crate::CliResult;

/// Control period (1 kHz).
const PERIOD: Duration = Duration::from_millis(1);

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// The control node on the simulator with its ROS 2 adapter: publishes /joint_states,
    /// /probe/wrench, /probe/pose, /tf, /tf_static, /robot_description; takes
    /// /probe/target_pose and /probe/force_setpoint through the safety supervisor.
    Control(ControlArgs),
    /// The perception node: collects /us/image, /us/probe_pose and /us/frame_info of a scan
    /// into a tracked sweep and, on /perception/register (or when the scan is done, with
    /// --register-when-done), registers the CBCT to it; publishes /perception/landmarks,
    /// /perception/registration and base → ct on /tf_static.
    Perception(perception::PerceptionArgs),
    /// The teleoperation patient side on ROS 2: serves remote operators over QUIC (mutual TLS,
    /// lease, audit log) and steers a control node through /probe/target_pose and
    /// /probe/force_setpoint with its own link-loss policy (hold after 100 ms, retract after
    /// 1 s, nothing on stale input); robot state, haptics and ultrasound from /probe/pose,
    /// /joint_states, /probe/wrench and /us/image.
    Teleop(teleop::TeleopArgs),
    /// Calls a std_srvs/srv/Trigger service of a running node (/scan/start, /scan/stop,
    /// /perception/register) and prints the answer; exits 1 when the answer is `success: false`.
    Call(CallArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// The service, e.g. /scan/start.
    service: String,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// How long to wait for the answer, s.
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Print the answer as one JSON object (`success`, `message`).
    #[arg(long)]
    json: bool,
}

/// `node call`: one Trigger request, one answer.
fn call(args: &CallArgs) -> CliResult {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        return Err(CliError::input(anyhow!(
            "--timeout-s {} must be a positive number of seconds",
            args.timeout_s
        )));
    }
    let domain_id = match args.domain_id {
        Some(d) => d,
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    let mut node = ros2::open_node(domain_id, "/", "telecho_call").map_err(CliError::failed)?;
    let client = ros2::trigger_client(
        &mut node,
        &args.service,
        Ros2Config::default().service_mapping,
    )
    .map_err(CliError::input)?;
    let answer = ros2::call_trigger(&client, Duration::from_secs_f64(args.timeout_s))
        .map_err(|e| CliError::failed(anyhow!("{}: {e}", args.service)))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"success": answer.success, "message": answer.message})
        );
    } else {
        println!(
            "{}: {}",
            if answer.success { "ok" } else { "refused" },
            answer.message
        );
    }
    if answer.success {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "{} refused: {}",
            args.service,
            answer.message
        )))
    }
}

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// Run on the built-in simulator.
    #[arg(long, conflicts_with = "gazebo")]
    sim: bool,
    /// Drive the arm of a running Gazebo launch (`telecho sim export-gazebo`) through its
    /// ros2_control topics: /joint_states and /telecho/ft_sensor in,
    /// /telecho_position_controller/commands out. The node then leaves /joint_states, /tf and
    /// /robot_description to the launch's broadcaster and robot_state_publisher. Use the
    /// export's --seed as --sim-seed (the patient the scan plans on).
    #[arg(long)]
    gazebo: bool,
    /// Expose the node over ROS 2 (implied: always on in builds with the `ros2` feature).
    #[arg(long)]
    ros2: bool,
    /// Simulated patient and arm noise seed (as `telecho scan --sim-seed`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    sim_seed: u64,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Which bundled arm holds the probe.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Rate of /probe/wrench, Hz (1000 = every control cycle).
    #[arg(long, default_value_t = 1000.0)]
    wrench_rate_hz: f64,
    /// Rate of /joint_states, /tf and /probe/pose, Hz.
    #[arg(long, default_value_t = 100.0)]
    state_rate_hz: f64,
    /// Scan protocol TOML that /scan/start runs (default: the built-in lumbar protocol).
    #[arg(long, value_name = "FILE")]
    protocol: Option<PathBuf>,
    /// Ultrasound frames per second of simulated time on /us/image (0: none; 25 = the
    /// `telecho scan` default).
    #[arg(long, default_value_t = 25.0)]
    us_rate_hz: f64,
    /// Simulator only: run this many times faster than real time (1–10).
    #[arg(long, default_value_t = 1.0)]
    real_time_factor: f64,
    /// Join the site's ROS 2 through r2r (the sourced ROS 2 and its RMW; `ROS_DOMAIN_ID` picks
    /// the domain) instead of the built-in DDS stack: joint states, wrench, pose, tf, robot
    /// description and set-points; no scan services or ultrasound stream. Only in builds with
    /// the `r2r` feature, on a machine with a sourced ROS 2 (README, ROS 2).
    #[cfg(feature = "r2r")]
    #[arg(long, conflicts_with = "gazebo")]
    r2r: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What `node control` prints at the end.
#[derive(Debug, Serialize)]
struct Summary {
    arm: &'static str,
    seed: u64,
    domain_id: u16,
    duration_s: f64,
    cycles: u64,
    deadline_misses: u64,
    compute_median_us: f64,
    jitter_p99_us: f64,
    safety_state: String,
    probe_position_m: [f64; 3],
    /// Largest difference between the adapter's and the controller's F/T bias, N.
    ft_bias_mismatch_n: f64,
    real_time_factor: f64,
    /// `sim` or `gazebo`.
    plant: &'static str,
    /// Ultrasound frames rendered (published: `ros2.images_published`).
    frames_rendered: u64,
    /// State of the last scan run at the end (`null`: none ran).
    scan_state: Option<&'static str>,
    scan_abort_cause: Option<String>,
    ros2: Ros2Report,
    /// What was exchanged with Gazebo (`--gazebo` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    gazebo: Option<GazeboReport>,
}

pub(crate) fn run(command: &NodeCommand) -> CliResult {
    match command {
        NodeCommand::Control(args) => control(args),
        NodeCommand::Perception(args) => perception::run(args),
        NodeCommand::Teleop(args) => teleop::run(args),
        NodeCommand::Call(args) => call(args),
    }
}

/// The protocol as `/scan/protocol` publishes it.
fn protocol_info(protocol: &ScanProtocol, arm: Arm, seed: u64, us: &UsParams) -> ProtocolInfo {
    ProtocolInfo {
        name: protocol.name.clone(),
        arm: crate::scan::arm_name(arm).to_owned(),
        urdf: arm.bundled().0.to_owned(),
        seed,
        probe: ProbeDescription {
            frequency_hz: us.frequency_hz,
            aperture_m: us.aperture_m,
            depth_m: us.depth_m,
            slice_thickness_m: us.slice_thickness_m,
        },
        sweeps: protocol
            .sweeps
            .iter()
            .map(|s| SweepDescription {
                name: s.name.clone(),
                orientation: match s.orientation {
                    ProbeOrientation::Sagittal => "sagittal",
                    ProbeOrientation::Transverse => "transverse",
                }
                .to_owned(),
                force_n: s.force_n,
                speed_m_s: s.speed_m_s,
                tilt_deg: s.tilt_rad.to_degrees(),
            })
            .collect(),
    }
}

/// What the control thread hands the render thread for one frame.
#[derive(Clone, Copy, Debug)]
struct FrameJob {
    time_s: f64,
    t_ct_probe: Transform,
    t_base_probe: Transform,
    force_n: f64,
    force_setpoint_n: f64,
    scan: ScanTag,
}

/// The simulator's ultrasound tap: every `period_s` of simulated time it hands the true probe
/// pose in the CT (where the simulated probe images) and what the controller measured to the
/// render thread, without blocking (a busy renderer skips frames). Rendering never runs on the
/// control thread.
struct UsTap {
    inner: RosPlant<SimWorld>,
    period_s: f64,
    next_s: f64,
    jobs: mpsc::SyncSender<FrameJob>,
    tag: ScanTagReader,
}

impl Plant for UsTap {
    fn read(&mut self, q: &mut [f64], qd: &mut [f64]) -> (f64, FtSample) {
        self.inner.read(q, qd)
    }

    fn write(&mut self, out: &ControlOutput) {
        self.inner.write(out);
        let world = self.inner.inner();
        let t = world.time_s();
        if t + 1e-9 < self.next_s {
            return;
        }
        self.next_s = if self.next_s + self.period_s > t {
            self.next_s + self.period_s
        } else {
            t + self.period_s
        };
        let _ = self.jobs.try_send(FrameJob {
            time_s: t,
            t_ct_probe: world.t_ct_probe(),
            t_base_probe: out.t_base_probe,
            force_n: out.force_n,
            force_setpoint_n: out.force_setpoint_n,
            scan: self.tag.get(),
        });
    }

    fn advance(&mut self, dt: f64) {
        self.inner.advance(dt);
    }
}

/// Renders the frames the tap asks for and hands them to the adapter; ends when the tap is
/// dropped. Returns the number of frames rendered.
fn render_frames(
    mut us: UltrasoundSim,
    jobs: mpsc::Receiver<FrameJob>,
    sender: FrameSender,
) -> anyhow::Result<u64> {
    let mut frame = us.new_frame();
    let mut n = 0;
    while let Ok(job) = jobs.recv() {
        us.render(&job.t_ct_probe, &mut frame)?;
        sender.send(UsFrame {
            time_s: job.time_s,
            pixels: frame.pixels.clone(),
            t_base_probe: job.t_base_probe,
            force_n: job.force_n,
            force_setpoint_n: job.force_setpoint_n,
            scan: job.scan,
        });
        n += 1;
    }
    Ok(n)
}

fn control(args: &ControlArgs) -> CliResult {
    if !args.sim && !args.gazebo {
        return Err(CliError::input(anyhow!(
            "node control needs --sim (the built-in simulator) or --gazebo (a running Gazebo \
             launch): there is no hardware driver yet"
        )));
    }
    let _ = args.ros2; // Implied: the adapter always runs.
    let deadlines = match args.duration_s {
        None => u64::MAX,
        Some(s) if s.is_finite() && s > 0.0 => (s / PERIOD.as_secs_f64()).round() as u64,
        Some(s) => {
            return Err(CliError::input(anyhow!(
                "--duration-s {s} must be a positive number of seconds"
            )))
        }
    };
    let domain_id = match args.domain_id {
        Some(d) => d,
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    let config = Ros2Config {
        domain_id,
        wrench_rate_hz: args.wrench_rate_hz,
        state_rate_hz: args.state_rate_hz,
        // Under Gazebo, joint_state_broadcaster and robot_state_publisher publish these.
        robot_state: !args.gazebo,
        ..Ros2Config::default()
    };
    if !(args.real_time_factor.is_finite() && (1.0..=10.0).contains(&args.real_time_factor)) {
        return Err(CliError::input(anyhow!(
            "--real-time-factor {} must be within 1–10",
            args.real_time_factor
        )));
    }
    if args.gazebo && args.real_time_factor != 1.0 {
        return Err(CliError::input(anyhow!(
            "--real-time-factor is for the built-in simulator; Gazebo keeps its own pace"
        )));
    }
    if !(args.us_rate_hz.is_finite() && (0.0..=100.0).contains(&args.us_rate_hz)) {
        return Err(CliError::input(anyhow!(
            "--us-rate-hz {} must be within 0–100",
            args.us_rate_hz
        )));
    }
    let protocol = crate::scan::load_protocol(args.protocol.as_deref())?;

    // The patient, the controller (workspace box around the nominal placement) and the checked
    // protocol, as `telecho scan` builds them; a protocol that leaves the workspace is refused
    // here, before anything runs.
    let Scenario {
        world,
        controller,
        protocol,
        ..
    } = Scenario::new(args.arm, args.sim_seed, protocol)?;
    // The scan service plans afresh for every /scan/start, from the operator's palpated start
    // pose on this patient.
    let start = operator_start_pose(&world, args.sim_seed);
    let safety = controller.config().safety;
    // The depth survey of `telecho scan` is not on the ROS 2 stream yet (the perception node
    // takes one pixel spacing per run): a fixed depth is used as given, an automatic one at its
    // shallowest bound.
    let depth_m = match protocol.imaging {
        ImagingDepth::Fixed(d) => d,
        ImagingDepth::Auto { min_depth_m, .. } => {
            tracing::warn!(
                depth_mm = min_depth_m * 1e3,
                "the protocol asks for an automatic imaging depth; node control images the \
                 /us/image stream at its shallowest bound (the depth survey runs only in \
                 `telecho scan`)"
            );
            min_depth_m
        }
    };
    let us_params = UsParams {
        depth_m,
        ..UsParams::default()
    };
    let info = protocol_info(&protocol, args.arm, args.sim_seed, &us_params);
    let plan = protocol.clone();
    let scan = ScanService {
        make: Box::new(move || {
            ScanExecutor::new(&plan, &start, &safety, ExecutorConfig::default())
                .map_err(|e| e.to_string())
        }),
        protocol: info,
    };
    // SIGINT/SIGTERM end the loop after the cycle under way; the summary is still printed.
    crate::teleop::serve::install_interrupt_handler();
    let ends = Ends {
        args,
        domain_id,
        deadlines,
    };
    #[cfg(feature = "r2r")]
    if args.r2r {
        return control_sim_r2r(&ends, world, controller);
    }
    if args.gazebo {
        control_gazebo(&ends, world, controller, &config, scan)
    } else {
        control_sim(&ends, world, controller, &config, scan, us_params)
    }
}

/// What both plants' runs share.
struct Ends<'a> {
    args: &'a ControlArgs,
    domain_id: u16,
    deadlines: u64,
}

/// `--gazebo`: the Gazebo arm through its ros2_control topics, in real time, stepping with gz.
fn control_gazebo(
    ends: &Ends<'_>,
    world: SimWorld,
    controller: ProbeController,
    config: &Ros2Config,
    scan: ScanService,
) -> CliResult {
    let args = ends.args;
    // The simulated world only planned the scan; Gazebo is the arm and the patient.
    drop(world);
    // The F/T reaches the controller over DDS: the staleness limit of a bridged sensor.
    let mut cc = *controller.config();
    cc.safety.ft_stale_s = GAZEBO_FT_STALE_S;
    let (_, xml) = args.arm.bundled();
    let controller = ProbeController::from_urdf_str(xml, cc).map_err(CliError::failed)?;
    let gz = GazeboPlant::connect(
        controller.chain(),
        xml,
        &GazeboConfig {
            domain_id: ends.domain_id,
            ..GazeboConfig::default()
        },
    )
    .map_err(CliError::failed)?;
    let options = AttachOptions {
        scan: Some(scan),
        us: None,
    };
    let (plant, targets, adapter) =
        ros2::attach_with(gz, &controller, xml, config, options).map_err(CliError::failed)?;
    let handle = spawn_realtime_until(
        plant,
        controller,
        targets,
        PERIOD,
        ends.deadlines,
        RtConfig::default(),
        Some(&crate::teleop::serve::INTERRUPTED),
    )
    .map_err(CliError::failed)?;
    let run = handle
        .join()
        .map_err(|_| CliError::failed(anyhow!("the control thread panicked")))?;
    let report = adapter.stop().map_err(CliError::failed)?;
    let bias_adapter = run.plant.ft_compensator().bias();
    let gazebo = run.plant.into_inner().stop();
    let summary = summarize(
        ends,
        &run.stats,
        &run.output,
        &run.controller,
        &bias_adapter,
        run.source.executor(),
        report,
        0,
        Some(gazebo),
    );
    print_summary(&summary, args.json)
}

/// `--sim`: the built-in simulator, its ultrasound rendered on its own thread.
fn control_sim(
    ends: &Ends<'_>,
    world: SimWorld,
    controller: ProbeController,
    config: &Ros2Config,
    scan: ScanService,
    us_params: UsParams,
) -> CliResult {
    let args = ends.args;
    let us = UltrasoundSim::new(Phantom::generate(args.sim_seed), us_params, args.sim_seed)
        .map_err(CliError::failed)?;
    let f = us.new_frame();
    let geometry = UsGeometry {
        width: u32::try_from(f.width).map_err(CliError::failed)?,
        height: u32::try_from(f.height).map_err(CliError::failed)?,
        pixel_spacing_m: [f.lateral_spacing_m, f.axial_spacing_m],
    };
    let (_, xml) = args.arm.bundled();
    let options = AttachOptions {
        scan: Some(scan),
        us: (args.us_rate_hz > 0.0).then_some(geometry),
    };
    let (plant, targets, adapter) =
        ros2::attach_with(world, &controller, xml, config, options).map_err(CliError::failed)?;
    let (job_tx, job_rx) = mpsc::sync_channel(4);
    let renderer = match adapter.frame_sender() {
        Some(sender) => Some(
            std::thread::Builder::new()
                .name("telecho-us".into())
                .spawn(move || render_frames(us, job_rx, sender))
                .map_err(CliError::failed)?,
        ),
        None => None,
    };
    let tap = UsTap {
        inner: plant,
        period_s: if args.us_rate_hz > 0.0 {
            1.0 / args.us_rate_hz
        } else {
            f64::INFINITY
        },
        next_s: if args.us_rate_hz > 0.0 {
            0.0
        } else {
            f64::INFINITY
        },
        jobs: job_tx,
        tag: targets.scan_tag(),
    };
    // A simulation falls behind the wall clock on a loaded machine rather than jumping ahead
    // without control.
    let rt = RtConfig {
        sim_dt: Some(PERIOD),
        sim_no_skip: true,
        ..RtConfig::default()
    };
    let wall_period = PERIOD.div_f64(args.real_time_factor);
    let handle = spawn_realtime_until(
        tap,
        controller,
        targets,
        wall_period,
        ends.deadlines,
        rt,
        Some(&crate::teleop::serve::INTERRUPTED),
    )
    .map_err(CliError::failed)?;
    let run = handle
        .join()
        .map_err(|_| CliError::failed(anyhow!("the control thread panicked")))?;
    let UsTap {
        inner: plant, jobs, ..
    } = run.plant;
    // Closing the tap's job queue lets the renderer finish, then the adapter stops.
    drop(jobs);
    let rendered = match renderer {
        Some(h) => h
            .join()
            .map_err(|_| CliError::failed(anyhow!("the render thread panicked")))?
            .map_err(CliError::failed)?,
        None => 0,
    };
    let report = adapter.stop().map_err(CliError::failed)?;
    let summary = summarize(
        ends,
        &run.stats,
        &run.output,
        &run.controller,
        &plant.ft_compensator().bias(),
        run.source.executor(),
        report,
        rendered,
        None,
    );
    print_summary(&summary, args.json)
}

/// `--sim --r2r`: the built-in simulator with the r2r adapter (`r2r` feature only; not
/// compiled where no ROS 2 is sourced, so not in this project's CI).
#[cfg(feature = "r2r")]
fn control_sim_r2r(ends: &Ends<'_>, world: SimWorld, controller: ProbeController) -> CliResult {
    use telecho_control::r2r_node::{self, R2rConfig};
    let args = ends.args;
    let config = R2rConfig {
        wrench_rate_hz: args.wrench_rate_hz,
        state_rate_hz: args.state_rate_hz,
        ..R2rConfig::default()
    };
    let (_, xml) = args.arm.bundled();
    let (plant, targets, adapter) =
        r2r_node::attach(world, &controller, xml, &config).map_err(CliError::failed)?;
    let rt = RtConfig {
        sim_dt: Some(PERIOD),
        sim_no_skip: true,
        ..RtConfig::default()
    };
    let handle = spawn_realtime_until(
        plant,
        controller,
        targets,
        PERIOD.div_f64(args.real_time_factor),
        ends.deadlines,
        rt,
        Some(&crate::teleop::serve::INTERRUPTED),
    )
    .map_err(CliError::failed)?;
    let run = handle
        .join()
        .map_err(|_| CliError::failed(anyhow!("the control thread panicked")))?;
    let report = adapter.stop().map_err(CliError::failed)?;
    let summary = summarize(
        ends,
        &run.stats,
        &run.output,
        &run.controller,
        &run.plant.ft_compensator().bias(),
        run.source.executor(),
        report,
        0,
        None,
    );
    print_summary(&summary, args.json)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    ends: &Ends<'_>,
    stats: &LoopStats,
    output: &ControlOutput,
    controller: &ProbeController,
    bias_adapter: &Wrench,
    executor: Option<&ScanExecutor>,
    report: Ros2Report,
    frames_rendered: u64,
    gazebo: Option<GazeboReport>,
) -> Summary {
    let args = ends.args;
    let bias_controller = controller.ft_compensator().bias();
    let p = output.t_base_probe.translation;
    Summary {
        arm: match args.arm {
            Arm::Ur5e => "ur5e",
            Arm::Panda => "panda",
        },
        seed: args.sim_seed,
        domain_id: ends.domain_id,
        // Simulated seconds under --sim (each period advances the simulator by 1 ms); wall
        // seconds under --gazebo.
        duration_s: stats.deadlines as f64 * PERIOD.as_secs_f64(),
        cycles: stats.cycles,
        deadline_misses: stats.deadline_misses,
        compute_median_us: stats.compute.median_s * 1e6,
        jitter_p99_us: stats.jitter.p99_s * 1e6,
        safety_state: format!("{:?}", output.safety),
        probe_position_m: [p.x, p.y, p.z],
        ft_bias_mismatch_n: (bias_adapter.force_n - bias_controller.force_n).amax(),
        real_time_factor: args.real_time_factor,
        plant: if gazebo.is_some() { "gazebo" } else { "sim" },
        frames_rendered,
        scan_state: executor.map(|e| e.state().name()),
        scan_abort_cause: executor.and_then(|e| e.abort_cause().as_ref().map(ToString::to_string)),
        ros2: report,
        gazebo,
    }
}

fn print_summary(summary: &Summary, json: bool) -> CliResult {
    if json {
        println!(
            "{}",
            serde_json::to_string(summary).map_err(CliError::failed)?
        );
        return Ok(());
    }
    let r = &summary.ros2;
    let p = summary.probe_position_m;
    println!(
        "control node ({}): {} cycles in {:.1} s ({} deadline misses), safety {}, probe at \
         [{:.4}, {:.4}, {:.4}] m",
        summary.plant,
        summary.cycles,
        summary.duration_s,
        summary.deadline_misses,
        summary.safety_state,
        p[0],
        p[1],
        p[2]
    );
    println!(
        "ROS 2 (domain {}): published {} wrench, {} joint_states, {} tf; targets {} \
         accepted / {} rejected, force setpoints {} / {}; {} samples dropped",
        summary.domain_id,
        r.wrench_published,
        r.joint_states_published,
        r.tf_published,
        r.targets_accepted,
        r.targets_rejected,
        r.forces_accepted,
        r.forces_rejected,
        r.samples_dropped
    );
    if let Some(g) = &summary.gazebo {
        println!(
            "Gazebo: {} joint states ({} refused), {} wrenches in; {} commands out ({} dropped); \
             {} stale reads",
            g.joint_states_received,
            g.joint_states_refused,
            g.wrenches_received,
            g.commands_published,
            g.commands_dropped,
            g.stale_reads
        );
    }
    Ok(())
}
