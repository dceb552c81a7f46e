//! Inverse kinematics: damped least squares with Levenberg–Marquardt damping, joint limits by
//! projection, and seeded random restarts.
//!
//! Damping follows Sugihara, "Solvability-unconcerned inverse kinematics by the Levenberg–Marquardt
//! method", IEEE T-RO 27(5), 2011: λ = E + λ₀ with E the squared task error, which behaves like
//! Gauss–Newton (quadratic convergence) close to a solution and like gradient descent far from it
//! or near singularities. A step that does not reduce the error is retried with more damping.

use nalgebra::{Matrix6xX, Vector3, Vector6};
use telecho_core::{rotation_log, Transform};

use crate::error::ErrorKind;
use crate::kinematics::Chain;
use crate::Error;

/// Settings of the IK solver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IkConfig {
    /// Iterations per attempt.
    pub max_iterations: usize,
    /// Attempts: the seed first, then random configurations within the limits.
    pub max_attempts: usize,
    /// An attempt stops iterating once both errors are below these (m, rad).
    pub converge_position_m: f64,
    /// See `converge_position_m`.
    pub converge_orientation_rad: f64,
    /// A solution is returned only when its errors are below these (m, rad).
    pub accept_position_m: f64,
    /// See `accept_position_m`.
    pub accept_orientation_rad: f64,
    /// Metres of position error worth one radian of orientation error.
    pub orientation_weight_m: f64,
    /// Seed of the restart sequence (same inputs and seed → same answer).
    pub rng_seed: u64,
}

impl Default for IkConfig {
    fn default() -> Self {
        Self {
            max_iterations: 100,
            max_attempts: 40,
            converge_position_m: 1e-10,
            converge_orientation_rad: 1e-10,
            accept_position_m: 1e-6,
            accept_orientation_rad: 1e-6,
            orientation_weight_m: 0.5,
            rng_seed: 0x07e1_ec40,
        }
    }
}

/// What an IK solve achieved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IkReport {
    /// Distance between the reached and the target tip position (m).
    pub position_error_m: f64,
    /// Angle between the reached and the target tip orientation (rad).
    pub orientation_error_rad: f64,
    /// Iterations over all attempts.
    pub iterations: usize,
    /// Attempts used (1 = converged from the seed).
    pub attempts: usize,
}

/// Reusable IK solver. Buffers are sized for one chain at construction, so a solve does not
/// allocate (it re-sizes once if handed a chain with a different number of joints).
#[derive(Clone, Debug)]
pub struct IkSolver {
    config: IkConfig,
    jac: Matrix6xX<f64>,
    jac_trial: Matrix6xX<f64>,
    q: Vec<f64>,
    q_trial: Vec<f64>,
    q_best: Vec<f64>,
    dq: Vec<f64>,
    normal: Vec<f64>,
    rhs: Vec<f64>,
    /// Joints held at a limit for the current step (active set).
    held: Vec<bool>,
}

impl IkSolver {
    /// A solver for `chain` with the given settings.
    pub fn new(chain: &Chain, config: IkConfig) -> Self {
        let n = chain.dof();
        let m = n.min(6);
        Self {
            config,
            jac: Matrix6xX::zeros(n),
            jac_trial: Matrix6xX::zeros(n),
            q: vec![0.0; n],
            q_trial: vec![0.0; n],
            q_best: vec![0.0; n],
            dq: vec![0.0; n],
            normal: vec![0.0; m * m],
            rhs: vec![0.0; m],
            held: vec![false; n],
        }
    }

    /// The solver's settings.
    pub fn config(&self) -> &IkConfig {
        &self.config
    }

    /// Finds joint values that put the chain's tip at `target` (`t_base_tip`), starting from
    /// `seed`, and writes them into `q_out`. Respects joint position limits. Returns an error when
    /// the inputs are malformed or when no attempt reached the acceptance tolerance.
    pub fn solve(
        &mut self,
        chain: &Chain,
        target: &Transform,
        seed: &[f64],
        q_out: &mut [f64],
    ) -> Result<IkReport, Error> {
        chain.check_q(seed)?;
        if q_out.len() != chain.dof() {
            return Err(ErrorKind::JointCount {
                expected: chain.dof(),
                got: q_out.len(),
                joints: chain.joint_names().join(", "),
            }
            .into());
        }
        for (index, &value) in target
            .rotation
            .iter()
            .chain(target.translation.iter())
            .enumerate()
        {
            if !value.is_finite() {
                return Err(ErrorKind::NotFinite {
                    what: "target pose",
                    index,
                    value,
                }
                .into());
            }
        }
        if self.q.len() != chain.dof() {
            *self = Self::new(chain, self.config);
        }
        let cfg = self.config;
        let mut rng = SplitMix64(cfg.rng_seed);
        let mut best = (f64::INFINITY, f64::INFINITY, f64::INFINITY); // (cost, pos, ori)
        let mut iterations = 0;
        for attempt in 0..cfg.max_attempts.max(1) {
            if attempt == 0 {
                self.q.copy_from_slice(seed);
                chain.clamp_to_limits(&mut self.q);
            } else {
                chain.sample_configuration(&mut self.q, || rng.next_f64());
            }
            let (cost, pos, ori, its) = self.descend(chain, target);
            iterations += its;
            if cost < best.0 {
                best = (cost, pos, ori);
                self.q_best.copy_from_slice(&self.q);
            }
            if pos <= cfg.accept_position_m && ori <= cfg.accept_orientation_rad {
                q_out.copy_from_slice(&self.q);
                return Ok(IkReport {
                    position_error_m: pos,
                    orientation_error_rad: ori,
                    iterations,
                    attempts: attempt + 1,
                });
            }
        }
        q_out.copy_from_slice(&self.q_best);
        Err(ErrorKind::Unreachable {
            attempts: cfg.max_attempts.max(1),
            position_error_m: best.1,
            orientation_error_rad: best.2,
        }
        .into())
    }

    /// One damped descent from `self.q`; leaves the best point in `self.q`.
    /// Returns (cost, position error, orientation error, iterations).
    fn descend(&mut self, chain: &Chain, target: &Transform) -> (f64, f64, f64, usize) {
        let cfg = self.config;
        let w = cfg.orientation_weight_m;
        let t = chain.fk_jacobian_unchecked(&self.q, &mut self.jac);
        let (mut e, mut pos, mut ori) = task_error(&t, target, w);
        let mut cost = e.norm_squared();
        let mut nu = 1.0;
        let mut slow = 0;
        let mut it = 0;
        while it < cfg.max_iterations {
            if pos < cfg.converge_position_m && ori < cfg.converge_orientation_rad {
                break;
            }
            it += 1;
            let lambda = nu * (cost + 1e-12);
            if !self.constrained_step(chain, w, &e, lambda) {
                nu *= 4.0;
                if nu > 1e12 {
                    break;
                }
                continue;
            }
            for ((qt, q), dq) in self.q_trial.iter_mut().zip(&self.q).zip(&self.dq) {
                *qt = q + dq;
            }
            chain.clamp_to_limits(&mut self.q_trial);
            // Pose and Jacobian of the trial in one pass: an accepted trial needs no second FK.
            let t_trial = chain.fk_jacobian_unchecked(&self.q_trial, &mut self.jac_trial);
            let (e_trial, pos_trial, ori_trial) = task_error(&t_trial, target, w);
            let cost_trial = e_trial.norm_squared();
            if cost_trial < cost {
                slow = if cost_trial > 0.999 * cost {
                    slow + 1
                } else {
                    0
                };
                self.q.copy_from_slice(&self.q_trial);
                (e, pos, ori, cost) = (e_trial, pos_trial, ori_trial, cost_trial);
                std::mem::swap(&mut self.jac, &mut self.jac_trial);
                nu = (nu * 0.25).max(1.0);
                if slow >= 10 {
                    break; // stuck in a local minimum (often a joint limit): restart
                }
            } else {
                nu *= 4.0;
                if nu > 1e12 {
                    break;
                }
            }
        }
        (cost, pos, ori, it)
    }

    /// A damped step that respects joint limits as an active set: joints sitting at a limit whose
    /// step would push them further out are held and the step is re-solved with the others, which
    /// keeps convergence quadratic when the solution lies on a limit (plain clamping of the step
    /// converges only linearly there).
    fn constrained_step(&mut self, chain: &Chain, w: f64, e: &Vector6<f64>, lambda: f64) -> bool {
        self.held.fill(false);
        for _ in 0..=self.q.len() {
            if !self.step(w, e, lambda) {
                return false;
            }
            let mut changed = false;
            for (i, lim) in chain.limits().iter().enumerate() {
                let (q, dq) = (self.q[i], self.dq[i]);
                let pushes_out = (q <= lim.lower && dq < 0.0) || (q >= lim.upper && dq > 0.0);
                if pushes_out && !self.held[i] {
                    self.held[i] = true;
                    changed = true;
                }
            }
            if !changed {
                return true;
            }
        }
        true
    }

    /// Solves the damped normal equations for `self.dq` with held joints' columns removed; false if
    /// they are not positive definite.
    fn step(&mut self, w: f64, e: &Vector6<f64>, lambda: f64) -> bool {
        let n = self.q.len();
        // Weighted Jacobian rows: orientation rows scaled by w to match the task error.
        let held = &self.held;
        let jw = |r: usize, c: usize, jac: &Matrix6xX<f64>| {
            if held[c] {
                0.0
            } else if r < 3 {
                jac[(r, c)]
            } else {
                w * jac[(r, c)]
            }
        };
        if n >= 6 {
            // (J Jᵀ + λI) y = e, dq = Jᵀ y — a 6×6 system whatever the number of joints.
            for r in 0..6 {
                for c in 0..=r {
                    let mut s = 0.0;
                    for k in 0..n {
                        s += jw(r, k, &self.jac) * jw(c, k, &self.jac);
                    }
                    self.normal[r * 6 + c] = s;
                    self.normal[c * 6 + r] = s;
                }
                self.normal[r * 6 + r] += lambda;
                self.rhs[r] = e[r];
            }
            if !cholesky_solve(&mut self.normal, &mut self.rhs, 6) {
                return false;
            }
            for k in 0..n {
                self.dq[k] = (0..6).map(|r| jw(r, k, &self.jac) * self.rhs[r]).sum();
            }
        } else {
            // (Jᵀ J + λI) dq = Jᵀ e — an n×n system for short chains.
            for r in 0..n {
                for c in 0..=r {
                    let s: f64 = (0..6)
                        .map(|k| jw(k, r, &self.jac) * jw(k, c, &self.jac))
                        .sum();
                    self.normal[r * n + c] = s;
                    self.normal[c * n + r] = s;
                }
                self.normal[r * n + r] += lambda;
                self.rhs[r] = (0..6).map(|k| jw(k, r, &self.jac) * e[k]).sum();
            }
            if !cholesky_solve(&mut self.normal, &mut self.rhs, n) {
                return false;
            }
            self.dq.copy_from_slice(&self.rhs[..n]);
        }
        self.dq.iter().all(|v| v.is_finite())
    }
}

/// Weighted task error [Δp; w·Δθ] and its unweighted norms (m, rad).
fn task_error(t: &Transform, target: &Transform, w: f64) -> (Vector6<f64>, f64, f64) {
    let dp: Vector3<f64> = target.translation - t.translation;
    let dr = rotation_log(&(target.rotation * t.rotation.transpose()));
    let e = Vector6::new(dp.x, dp.y, dp.z, w * dr.x, w * dr.y, w * dr.z);
    (e, dp.norm(), dr.norm())
}

/// In-place Cholesky factorisation and solve of the symmetric `m×m` system `a x = b`
/// (row-major `a`); `b` is overwritten by `x`. False when `a` is not positive definite.
///
/// Hand-written because the systems are tiny (≤ 6×6) and must be solved without allocation.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], m: usize) -> bool {
    for j in 0..m {
        let mut d = a[j * m + j];
        for k in 0..j {
            d -= a[j * m + k] * a[j * m + k];
        }
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * m + j] = d;
        for i in j + 1..m {
            let mut s = a[i * m + j];
            for k in 0..j {
                s -= a[i * m + k] * a[j * m + k];
            }
            a[i * m + j] = s / d;
        }
    }
    for i in 0..m {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * m + k] * b[k];
        }
        b[i] = s / a[i * m + i];
    }
    for i in (0..m).rev() {
        let mut s = b[i];
        for k in i + 1..m {
            s -= a[k * m + i] * b[k];
        }
        b[i] = s / a[i * m + i];
    }
    true
}

/// Tiny deterministic generator for restart configurations (SplitMix64, Steele et al. 2014);
/// kept in-crate so the solver owns no heap state and its sequence never changes under us.
#[derive(Clone, Copy, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_system() {
        // A = [[4,2],[2,3]], b = [2, 1] → x = [0.5, 0].
        let mut a = [4.0, 2.0, 2.0, 3.0];
        let mut b = [2.0, 1.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((b[0] - 0.5).abs() < 1e-15 && b[1].abs() < 1e-15, "{b:?}");
        let mut a = [1.0, 2.0, 2.0, 1.0]; // indefinite
        let mut b = [1.0, 1.0];
        assert!(!cholesky_solve(&mut a, &mut b, 2));
    }

    #[test]
    fn splitmix_matches_reference_sequence() {
        // Reference outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
        let x = r.next_f64();
        assert!((0.0..1.0).contains(&x));
    }
}
