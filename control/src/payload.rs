//! Wrenches and the payload below the force/torque sensor, from the URDF inertials.
//!
//! One implementation serves both sides: the simulator's F/T sensor adds the payload's weight to
//! the contact load ([`Payload::gravity_wrench`]), and the controller subtracts the same weight,
//! rotated by its own forward kinematics, to recover the contact wrench.
//!
//! Convention (ATI): a reading is the load that the tool side applies to the sensor, in the
//! `ft_sensor` frame, torque about the `ft_sensor` origin. Gravity is [`GRAVITY_M_S2`] along −z of
//! the robot base.

use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::Error;

/// Standard gravity, m/s² (CGPM 1901 conventional value rounded to 9.81).
pub const GRAVITY_M_S2: f64 = 9.81;

/// A force and a torque about a reference point, in one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Wrench {
    /// Force, N.
    pub force_n: Vector3<f64>,
    /// Torque about the reference point, N·m.
    pub torque_nm: Vector3<f64>,
}

impl Wrench {
    /// The zero wrench.
    pub fn zero() -> Self {
        Self::default()
    }

    /// The wrench of `force` (N) applied at `point` (m), about the origin.
    pub fn from_force_at(force: &Vector3<f64>, point: &Vector3<f64>) -> Self {
        Self {
            force_n: *force,
            torque_nm: point.cross(force),
        }
    }

    /// Re-expresses the wrench (given in frame `b`) in frame `a` via `t_a_b`: rotates both parts
    /// and moves the reference point from `b`'s origin to `a`'s.
    pub fn transformed(&self, t_a_b: &Transform) -> Self {
        let f = t_a_b.rotation * self.force_n;
        Self {
            force_n: f,
            torque_nm: t_a_b.rotation * self.torque_nm + t_a_b.translation.cross(&f),
        }
    }

    /// Sum of two wrenches (same frame, same reference point).
    pub fn plus(&self, other: &Self) -> Self {
        Self {
            force_n: self.force_n + other.force_n,
            torque_nm: self.torque_nm + other.torque_nm,
        }
    }

    /// Difference of two wrenches (same frame, same reference point).
    pub fn minus(&self, other: &Self) -> Self {
        Self {
            force_n: self.force_n - other.force_n,
            torque_nm: self.torque_nm - other.torque_nm,
        }
    }

    /// The six values `[Fx, Fy, Fz, Tx, Ty, Tz]`.
    pub fn to_array(&self) -> [f64; 6] {
        let (f, t) = (&self.force_n, &self.torque_nm);
        [f.x, f.y, f.z, t.x, t.y, t.z]
    }

    /// True when all six values are finite.
    pub fn is_finite(&self) -> bool {
        self.to_array().iter().all(|v| v.is_finite())
    }
}

/// Mass and centre of mass of the load hanging below the sensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Payload {
    /// Total mass, kg.
    pub mass_kg: f64,
    /// Centre of mass in the sensor frame, m (zero when the mass is zero).
    pub com_m: Vector3<f64>,
}

impl Payload {
    /// No payload.
    pub fn none() -> Self {
        Self {
            mass_kg: 0.0,
            com_m: Vector3::zeros(),
        }
    }

    /// Parses URDF XML and sums the links below `sensor_link` (see [`Payload::from_robot`]).
    pub fn from_urdf_str(xml: &str, sensor_link: &str) -> Result<Self, Error> {
        let robot = urdf_rs::read_from_string(xml).map_err(|e| ErrorKind::Urdf(e.to_string()))?;
        Self::from_robot(&robot, sensor_link)
    }

    /// Mass and centre of mass of every link below `sensor_link` (its descendants through the
    /// joint tree, not the sensor link itself), in the sensor frame. They must hang on fixed
    /// joints: a movable joint below the sensor is refused.
    pub fn from_robot(robot: &urdf_rs::Robot, sensor_link: &str) -> Result<Self, Error> {
        if !robot.links.iter().any(|l| l.name == sensor_link) {
            return Err(ErrorKind::UnknownLink(sensor_link.to_owned()).into());
        }
        let mut mass = 0.0;
        let mut moment = Vector3::zeros();
        // Depth-first over (link, t_sensor_link); bounded by the number of joints.
        let mut stack = vec![(sensor_link.to_owned(), Transform::IDENTITY)];
        let mut visited = 0usize;
        while let Some((name, t_s_l)) = stack.pop() {
            visited += 1;
            if visited > robot.joints.len() + 1 {
                return Err(ErrorKind::Urdf("joint graph has a cycle".into()).into());
            }
            for j in robot.joints.iter().filter(|j| j.parent.link == name) {
                if !matches!(j.joint_type, urdf_rs::JointType::Fixed) {
                    return Err(ErrorKind::Urdf(format!(
                        "joint `{}` below the F/T sensor is movable; the payload must be rigid",
                        j.name
                    ))
                    .into());
                }
                let origin = Transform::from_xyz_rpy(j.origin.xyz.0, j.origin.rpy.0)
                    .map_err(|e| ErrorKind::Urdf(format!("joint `{}`: {e}", j.name)))?;
                let t = t_s_l * origin;
                let child = &j.child.link;
                if let Some(link) = robot.links.iter().find(|l| &l.name == child) {
                    let m = link.inertial.mass.value;
                    let c = Vector3::from(link.inertial.origin.xyz.0);
                    if !m.is_finite() || m < 0.0 || c.iter().any(|v| !v.is_finite()) {
                        return Err(ErrorKind::Urdf(format!(
                            "link `{child}` has an invalid inertial (mass {m})"
                        ))
                        .into());
                    }
                    mass += m;
                    moment += t.transform_point(&c) * m;
                }
                stack.push((child.clone(), t));
            }
        }
        Ok(Self {
            mass_kg: mass,
            com_m: if mass > 0.0 {
                moment / mass
            } else {
                Vector3::zeros()
            },
        })
    }

    /// The payload's weight as a wrench about the sensor origin, in the sensor frame, given the
    /// sensor's orientation in the base frame (`R_base_sensor`); gravity is −z of the base.
    /// Does not allocate.
    pub fn gravity_wrench(&self, r_base_sensor: &Matrix3<f64>) -> Wrench {
        let g_sensor = r_base_sensor.transpose() * Vector3::new(0.0, 0.0, -GRAVITY_M_S2);
        Wrench::from_force_at(&(g_sensor * self.mass_kg), &self.com_m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_probe_payload_is_holder_plus_probe() {
        let p = Payload::from_urdf_str(include_str!("../../urdf/ur5e_probe.urdf"), "ft_sensor")
            .unwrap();
        assert!((p.mass_kg - 0.35).abs() < 1e-12, "{}", p.mass_kg);
        // Holder origin 20 mm below the sensor, its COM 70 mm further.
        assert!((p.com_m - Vector3::new(0.0, 0.0, 0.09)).norm() < 1e-12);
        let w = p.gravity_wrench(&Matrix3::identity());
        assert!((w.force_n.z + 0.35 * GRAVITY_M_S2).abs() < 1e-12);
        assert!(
            Payload::from_urdf_str(include_str!("../../urdf/ur5e_probe.urdf"), "nope").is_err()
        );
    }
}
