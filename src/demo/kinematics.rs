//! `telecho demo`: the whole system on the built-in simulator, headless.
//!
//! Until the simulator, control and perception nodes land, the demo is the kinematics self-check
//! of the bundled arms: FK/IK round trips and Jacobian-versus-finite-difference checks on seeded
//! random configurations. The command line stays the same when the full demo replaces it.

use std::time::Instant;

use anyhow::anyhow;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use telecho_control::{Chain, IkConfig, IkSolver};

use crate::cli_error::CliError;
use crate::CliResult;

/// The arms bundled with telecho: (name, URDF text).
pub(crate) const BUNDLED_ARMS: [(&str, &str); 2] = [
    ("ur5e_probe", include_str!("../urdf/ur5e_probe.urdf")),
    ("panda_probe", include_str!("../urdf/panda_probe.urdf")),
];

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Random poses per arm.
    #[arg(long, default_value_t = 200)]
    poses: usize,
    /// Seed of the random configurations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct ArmCheck {
    arm: String,
    dof: usize,
    poses: usize,
    ik_success_rate: f64,
    ik_max_position_error_m: f64,
    ik_max_orientation_error_rad: f64,
    jacobian_max_fd_error: f64,
    ik_mean_time_us: f64,
}

#[derive(Debug, Serialize)]
struct DemoOut {
    phase: &'static str,
    arms: Vec<ArmCheck>,
    passed: bool,
}

pub(crate) fn run(args: &DemoArgs) -> CliResult {
    if args.poses == 0 {
        return Err(CliError::input(anyhow!("--poses must be at least 1")));
    }
    let mut arms = Vec::new();
    for (name, urdf) in BUNDLED_ARMS {
        let chain = Chain::from_urdf_str(urdf, None, "probe_tip").map_err(CliError::failed)?;
        arms.push(check_arm(name, &chain, args.poses, args.seed));
    }
    let passed = arms
        .iter()
        .all(|a| a.ik_success_rate >= 0.995 && a.jacobian_max_fd_error < 1e-6);
    let out = DemoOut {
        phase: "kinematics self-check",
        arms,
        passed,
    };
    if args.json {
        println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
    } else {
        println!(
            "telecho demo — {} (full system demo lands with the simulator)",
            out.phase
        );
        println!(
            "{:<12} {:>3} {:>6} {:>10} {:>14} {:>16} {:>12} {:>10}",
            "arm", "dof", "poses", "IK ok", "IK pos err m", "IK rot err rad", "J vs FD", "IK µs"
        );
        for a in &out.arms {
            println!(
                "{:<12} {:>3} {:>6} {:>9.1}% {:>14.2e} {:>16.2e} {:>12.2e} {:>10.1}",
                a.arm,
                a.dof,
                a.poses,
                100.0 * a.ik_success_rate,
                a.ik_max_position_error_m,
                a.ik_max_orientation_error_rad,
                a.jacobian_max_fd_error,
                a.ik_mean_time_us
            );
        }
        println!(
            "{}",
            if out.passed {
                "self-check passed"
            } else {
                "self-check FAILED"
            }
        );
    }
    if out.passed {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!("kinematics self-check failed")))
    }
}

fn check_arm(name: &str, chain: &Chain, poses: usize, seed: u64) -> ArmCheck {
    let n = chain.dof();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut solver = IkSolver::new(chain, IkConfig::default());
    let (mut q, mut q_ik) = (vec![0.0; n], vec![0.0; n]);
    let seed_q = chain.mid_configuration();
    let (mut ok, mut max_p, mut max_r, mut max_fd) = (0usize, 0.0f64, 0.0f64, 0.0f64);
    let mut ik_time = 0.0;
    for _ in 0..poses {
        chain.sample_configuration(&mut q, || rng.random::<f64>());
        let target = chain.fk_unchecked(&q);
        let t0 = Instant::now();
        let res = solver.solve(chain, &target, &seed_q, &mut q_ik);
        ik_time += t0.elapsed().as_secs_f64();
        if let Ok(r) = res {
            if chain.within_limits(&q_ik, 1e-12) {
                ok += 1;
                max_p = max_p.max(r.position_error_m);
                max_r = max_r.max(r.orientation_error_rad);
            }
        }
        max_fd = max_fd.max(chain.jacobian_fd_error(&q, 1e-6).unwrap_or(f64::INFINITY));
    }
    ArmCheck {
        arm: name.to_owned(),
        dof: n,
        poses,
        ik_success_rate: ok as f64 / poses as f64,
        ik_max_position_error_m: max_p,
        ik_max_orientation_error_rad: max_r,
        jacobian_max_fd_error: max_fd,
        ik_mean_time_us: 1e6 * ik_time / poses as f64,
    }
}
