//! The simulator as the control loop's plant, and the pieces of a seeded scan scenario that the
//! `telecho scan` command and the tests share.
//!
//! - `impl telecho_control::Plant for SimWorld`: [`SimWorld::observe`] is what the loop reads
//!   (time, measured joints, F/T sample), [`SimWorld::command`] takes the controller's joint
//!   command, and `advance` steps the physics. The loop never sees [`SimWorld::ground_truth`].
//! - [`seeded_stiffness_n_per_mm`]: the tissue stiffness of a seed, uniform over
//!   [`STIFFNESS_RANGE_N_PER_MM`].
//! - [`patient_workspace`]: the workspace box around the **nominal** patient placement that the
//!   safety supervisor enforces during a scan.
//! - [`operator_start_pose`]: where an operator puts the probe before a scan — the skin over the
//!   L5 spinous process that they palpate on the patient as placed, plus a seeded palpation
//!   error ([`PALPATION_ERROR_M`]) and alignment error ([`ALIGNMENT_ERROR_RAD`]). The controller
//!   receives only this pose, never the placement.
//!
//! ```
//! use telecho_control::Plant;
//! use telecho_sim::{SimWorld, WorldConfig};
//!
//! let mut world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
//! let (mut q, mut qd) = ([0.0; 6], [0.0; 6]);
//! let (t0, _ft) = world.read(&mut q, &mut qd);
//! world.advance(0.001);
//! assert_eq!(world.read(&mut q, &mut qd).0, t0 + 0.001);
//! ```

use nalgebra::Vector3;
use telecho_control::{palpated_start_pose, CommandInterface, ControlOutput, FtSample, Plant};
use telecho_core::Transform;

use crate::ft_sensor::FtReading;
use crate::phantom::Phantom;
use crate::robot::JointCommand;
use crate::world::{SimWorld, PHYSICS_DT_S};

/// Range of the tissue stiffness drawn per seed (secant stiffness at 5 mm), N/mm.
pub const STIFFNESS_RANGE_N_PER_MM: [f64; 2] = [0.5, 5.0];

/// Range of the operator's palpation error of the start point, m (5–10 mm).
pub const PALPATION_ERROR_M: (f64, f64) = (0.005, 0.010);

/// Largest error of the operator's by-eye alignment of the probe with the spine, about the skin
/// normal, rad (±5°).
pub const ALIGNMENT_ERROR_RAD: f64 = 5.0 * std::f64::consts::PI / 180.0;

/// The F/T reading as the controller's sample type.
pub fn ft_sample(reading: &FtReading) -> FtSample {
    FtSample {
        stamp_s: reading.stamp_s,
        force_n: reading.force_n,
        torque_nm: reading.torque_nm,
        saturated: reading.saturated,
    }
}

impl Plant for SimWorld {
    fn read(&mut self, q: &mut [f64], qd: &mut [f64]) -> (f64, FtSample) {
        let obs = self.observe();
        let n = q.len().min(obs.q_rad.len());
        q[..n].copy_from_slice(&obs.q_rad[..n]);
        let n = qd.len().min(obs.qd_rad_s.len());
        qd[..n].copy_from_slice(&obs.qd_rad_s[..n]);
        (obs.time_s, ft_sample(&obs.ft))
    }

    fn write(&mut self, out: &ControlOutput) {
        if !out.send {
            return;
        }
        let cmd = match out.interface {
            CommandInterface::Position => JointCommand::Position(&out.q_cmd_rad),
            CommandInterface::Velocity => JointCommand::Velocity(&out.qd_cmd_rad_s),
        };
        // A refused command (NaN, wrong length) leaves the servos holding, as on hardware; the
        // controller's supervisor sees the arm not following (tracking error).
        let _ = self.command(cmd);
    }

    /// Advances by whole physics steps: `round(dt / 1 ms)`, at least one.
    fn advance(&mut self, dt: f64) {
        let n = if dt.is_finite() {
            (dt / PHYSICS_DT_S).round().max(1.0) as usize
        } else {
            1
        };
        self.steps(n);
    }
}

/// The tissue stiffness of `seed`, N/mm: uniform over [`STIFFNESS_RANGE_N_PER_MM`] from the
/// top 53 bits of `seed · φ·2⁶⁴` (a Weyl sequence: consecutive seeds spread over the range).
pub fn seeded_stiffness_n_per_mm(seed: u64) -> f64 {
    let [lo, hi] = STIFFNESS_RANGE_N_PER_MM;
    let u = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
    lo + (hi - lo) * u
}

/// The workspace box `(min, max)` (base frame, m) around the nominal patient placement: from the
/// nominal `ct` origin (L3 body centre), −0.25…+0.30 m along base x, ±0.35 m along y and
/// −0.10…+0.45 m along z — the lumbar back with room for a ±50 mm / ±20° placement error and
/// the retract heights above it, nothing below the table.
pub fn patient_workspace(nominal_t_base_ct: &Transform) -> ([f64; 3], [f64; 3]) {
    let c = nominal_t_base_ct.translation;
    (
        [c.x - 0.25, c.y - 0.35, c.z - 0.10],
        [c.x + 0.30, c.y + 0.35, c.z + 0.45],
    )
}

/// The skin point over the L5 spinous process of `phantom`, `ct` frame, m (what an operator
/// palpates, and what the patient's CT shows).
pub fn l5_skin_point_ct(phantom: &Phantom) -> Vector3<f64> {
    let (x, z) = phantom
        .landmarks()
        .into_iter()
        .find(|l| l.name == "L5_spinous_tip")
        .map(|l| (l.xyz[0], l.xyz[2]))
        .unwrap_or((0.0, 0.0));
    Vector3::new(x, phantom.skin_y(x, z), z)
}

/// The operator's start pose for a scan of `world` (see the module documentation): origin on the
/// skin over L5 of the patient as placed (palpated, so the scenario may read the placement here;
/// the controller only ever gets the returned pose) plus palpation and alignment errors drawn
/// from `seed`; columns lateral, cranial and the outward skin normal (as
/// [`palpated_start_pose`]).
pub fn operator_start_pose(world: &SimWorld, seed: u64) -> Transform {
    palpated_start_pose(
        &world.ground_truth().t_base_ct,
        &l5_skin_point_ct(world.phantom()),
        seed,
        PALPATION_ERROR_M,
        ALIGNMENT_ERROR_RAD,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorldConfig;

    #[test]
    fn stiffness_spans_the_range() {
        let k: Vec<f64> = (1..=200).map(seeded_stiffness_n_per_mm).collect();
        assert!(k.iter().all(|&k| (0.5..5.0).contains(&k)));
        assert!(k.iter().any(|&k| k < 1.0) && k.iter().any(|&k| k > 4.5));
        assert_eq!(seeded_stiffness_n_per_mm(7), seeded_stiffness_n_per_mm(7));
    }

    #[test]
    fn start_pose_is_near_the_true_l5_skin_point() {
        let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
        let p = operator_start_pose(&world, 3);
        let t = world.ground_truth().t_base_ct;
        let l5 = t.transform_point(&l5_skin_point_ct(world.phantom()));
        let d = (p.translation - l5).norm();
        assert!((0.005..=0.010 + 1e-12).contains(&d), "{d}");
        // Aligned with the true spine to within the alignment error.
        let cranial_true = t.rotation * Vector3::z();
        let cranial = p.rotation * Vector3::y();
        let angle = cranial.dot(&cranial_true).clamp(-1.0, 1.0).acos();
        assert!(angle <= ALIGNMENT_ERROR_RAD + 1e-9, "{angle}");
        let (lo, hi) = patient_workspace(&world.nominal_t_base_ct());
        assert!((0..3).all(|i| p.translation[i] > lo[i] && p.translation[i] < hi[i]));
    }

    #[test]
    fn plant_reads_the_observation() {
        let mut world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
        let (mut q, mut qd) = ([0.0; 6], [0.0; 6]);
        let (t, ft) = world.read(&mut q, &mut qd);
        assert_eq!(t, 0.0);
        assert_eq!(q.as_slice(), world.observe().q_rad);
        assert_eq!(ft.force_n, world.observe().ft.force_n);
        world.advance(0.002);
        assert!((world.time_s() - 0.002).abs() < 1e-12);
    }
}
