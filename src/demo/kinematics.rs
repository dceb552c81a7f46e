//! The demo's first phase: the kinematics self-check of the bundled arms (FK/IK round trips and
//! Jacobian-versus-finite-difference checks on seeded random configurations).

use std::time::Instant;

use anyhow::anyhow;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use telecho_control::{Chain, IkConfig, IkSolver};

use crate::cli_error::CliError;

/// The arms bundled with telecho: (name, URDF text).
pub(crate) const BUNDLED_ARMS: [(&str, &str); 2] = [
    ("ur5e_probe", include_str!("../../urdf/ur5e_probe.urdf")),
    ("panda_probe", include_str!("../../urdf/panda_probe.urdf")),
];

/// One arm's self-check.
#[derive(Debug, Serialize)]
pub(crate) struct ArmCheck {
    pub(crate) arm: String,
    pub(crate) dof: usize,
    pub(crate) poses: usize,
    pub(crate) ik_success_rate: f64,
    pub(crate) ik_max_position_error_m: f64,
    pub(crate) ik_max_orientation_error_rad: f64,
    pub(crate) jacobian_max_fd_error: f64,
    pub(crate) ik_mean_time_us: f64,
}

impl ArmCheck {
    /// IK reaches ≥ 99.5 % of the poses and the Jacobian matches finite differences.
    pub(crate) fn passed(&self) -> bool {
        self.ik_success_rate >= 0.995 && self.jacobian_max_fd_error < 1e-6
    }
}

/// Checks both bundled arms on `poses` random configurations drawn from `seed`.
pub(crate) fn check_bundled_arms(poses: usize, seed: u64) -> Result<Vec<ArmCheck>, CliError> {
    if poses == 0 {
        return Err(CliError::input(anyhow!("--poses must be at least 1")));
    }
    let mut arms = Vec::new();
    for (name, urdf) in BUNDLED_ARMS {
        let chain = Chain::from_urdf_str(urdf, None, "probe_tip").map_err(CliError::failed)?;
        arms.push(check_arm(name, &chain, poses, seed));
    }
    Ok(arms)
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
