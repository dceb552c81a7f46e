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
//! Exit codes: 0 the run ended; 1 DDS or the control thread failed; 2 bad arguments.

use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_control::ros2::{self, Ros2Config, Ros2Report};
use telecho_control::{
    spawn_realtime_with, ControllerConfig, ProbeController, RtConfig, SafetyConfig,
};
use telecho_sim::plant::{patient_workspace, seeded_stiffness_n_per_mm};
use telecho_sim::SimWorld;

use crate::cli_error::CliError;
use crate::sim::{world_config, Arm};
use crate::CliResult;

/// Control period (1 kHz).
const PERIOD: Duration = Duration::from_millis(1);

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// The control node on the simulator with its ROS 2 adapter: publishes /joint_states,
    /// /probe/wrench, /probe/pose, /tf, /tf_static, /robot_description; takes
    /// /probe/target_pose and /probe/force_setpoint through the safety supervisor.
    Control(ControlArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// Run on the built-in simulator (required today: no hardware driver yet).
    #[arg(long)]
    sim: bool,
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
    ros2: Ros2Report,
}

pub(crate) fn run(command: &NodeCommand) -> CliResult {
    match command {
        NodeCommand::Control(args) => control(args),
    }
}

fn control(args: &ControlArgs) -> CliResult {
    if !args.sim {
        return Err(CliError::input(anyhow!(
            "node control needs --sim: there is no hardware driver yet"
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
        ..Ros2Config::default()
    };

    let mut wc = world_config(args.arm, args.sim_seed);
    wc.contact.stiffness_n_per_mm = seeded_stiffness_n_per_mm(args.sim_seed);
    let world = SimWorld::new(&wc).map_err(CliError::failed)?;
    let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
    let controller_config = ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m,
            workspace_max_m,
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    };
    let (_, xml) = args.arm.bundled();
    let controller =
        ProbeController::from_urdf_str(xml, controller_config).map_err(CliError::failed)?;
    let (plant, targets, adapter) =
        ros2::attach(world, &controller, xml, &config).map_err(CliError::failed)?;
    let handle = spawn_realtime_with(
        plant,
        controller,
        targets,
        PERIOD,
        deadlines,
        RtConfig::default(),
    )
    .map_err(CliError::failed)?;
    let run = handle
        .join()
        .map_err(|_| CliError::failed(anyhow!("the control thread panicked")))?;
    let report = adapter.stop().map_err(CliError::failed)?;

    let bias_adapter = run.plant.ft_compensator().bias();
    let bias_controller = run.controller.ft_compensator().bias();
    let p = run.output.t_base_probe.translation;
    let summary = Summary {
        arm: match args.arm {
            Arm::Ur5e => "ur5e",
            Arm::Panda => "panda",
        },
        seed: args.sim_seed,
        domain_id,
        duration_s: run.stats.deadlines as f64 * PERIOD.as_secs_f64(),
        cycles: run.stats.cycles,
        deadline_misses: run.stats.deadline_misses,
        compute_median_us: run.stats.compute.median_s * 1e6,
        jitter_p99_us: run.stats.jitter.p99_s * 1e6,
        safety_state: format!("{:?}", run.output.safety),
        probe_position_m: [p.x, p.y, p.z],
        ft_bias_mismatch_n: (bias_adapter.force_n - bias_controller.force_n).amax(),
        ros2: report,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(CliError::failed)?
        );
    } else {
        let r = &summary.ros2;
        println!(
            "control node: {} cycles in {:.1} s ({} deadline misses), safety {}, probe at \
             [{:.4}, {:.4}, {:.4}] m",
            summary.cycles,
            summary.duration_s,
            summary.deadline_misses,
            summary.safety_state,
            p.x,
            p.y,
            p.z
        );
        println!(
            "ROS 2 (domain {}): published {} wrench, {} joint_states, {} tf; targets {} \
             accepted / {} rejected, force setpoints {} / {}; {} samples dropped",
            domain_id,
            r.wrench_published,
            r.joint_states_published,
            r.tf_published,
            r.targets_accepted,
            r.targets_rejected,
            r.forces_accepted,
            r.forces_rejected,
            r.samples_dropped
        );
    }
    Ok(())
}
