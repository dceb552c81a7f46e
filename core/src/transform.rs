//! Rigid transforms.
//!
//! A plain rotation-matrix + translation pair rather than `nalgebra::Isometry3` (a unit quaternion):
//! the kinematics hot path composes dozens of these per control cycle, and with a matrix the
//! rotation of a vector is 9 multiplications and a rotation about a principal axis only mixes two
//! columns, which the URDF chain code exploits.

use std::ops::Mul;

use nalgebra::{Matrix3, Matrix4, Vector3};

use crate::Error;

/// A rigid transform `t_a_b`: maps points expressed in frame `b` into frame `a`
/// (`p_a = rotation * p_b + translation`). Translation in metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Orthonormal rotation matrix, columns = axes of `b` expressed in `a`.
    pub rotation: Matrix3<f64>,
    /// Origin of `b` expressed in `a`, metres.
    pub translation: Vector3<f64>,
}

impl Default for Transform {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl Transform {
    /// The identity transform.
    pub const IDENTITY: Self = Self {
        rotation: Matrix3::new(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        translation: Vector3::new(0.0, 0.0, 0.0),
    };

    /// Builds a transform from its parts. `rotation` must be orthonormal (not checked).
    pub fn new(rotation: Matrix3<f64>, translation: Vector3<f64>) -> Self {
        Self {
            rotation,
            translation,
        }
    }

    /// Builds a transform from a translation (m) and URDF roll/pitch/yaw angles (rad):
    /// `R = Rz(yaw)·Ry(pitch)·Rx(roll)`. Refuses NaN and infinite values.
    pub fn from_xyz_rpy(xyz: [f64; 3], rpy: [f64; 3]) -> Result<Self, Error> {
        for (what, v) in [
            ("x", xyz[0]),
            ("y", xyz[1]),
            ("z", xyz[2]),
            ("roll", rpy[0]),
            ("pitch", rpy[1]),
            ("yaw", rpy[2]),
        ] {
            if !v.is_finite() {
                return Err(Error::not_finite(what, v));
            }
        }
        Ok(Self {
            rotation: rotation_from_rpy(rpy[0], rpy[1], rpy[2]),
            translation: Vector3::new(xyz[0], xyz[1], xyz[2]),
        })
    }

    /// Roll, pitch, yaw (rad) of the rotation, URDF convention; pitch in [-π/2, π/2].
    pub fn rpy(&self) -> [f64; 3] {
        let r = &self.rotation;
        let pitch = (-r[(2, 0)]).clamp(-1.0, 1.0).asin();
        if r[(2, 0)].abs() < 1.0 - 1e-12 {
            let roll = r[(2, 1)].atan2(r[(2, 2)]);
            let yaw = r[(1, 0)].atan2(r[(0, 0)]);
            [roll, pitch, yaw]
        } else {
            // Gimbal lock: only roll ± yaw is defined; put it all in yaw.
            let yaw = (-r[(0, 1)]).atan2(r[(1, 1)]);
            [0.0, pitch, yaw]
        }
    }

    /// The inverse transform `t_b_a`.
    pub fn inverse(&self) -> Self {
        let rt = self.rotation.transpose();
        Self {
            rotation: rt,
            translation: -(rt * self.translation),
        }
    }

    /// Maps a point of frame `b` into frame `a`.
    pub fn transform_point(&self, p: &Vector3<f64>) -> Vector3<f64> {
        self.rotation * p + self.translation
    }

    /// Rotates a free vector of frame `b` into frame `a`.
    pub fn transform_vector(&self, v: &Vector3<f64>) -> Vector3<f64> {
        self.rotation * v
    }

    /// The homogeneous 4×4 matrix.
    pub fn to_matrix4(&self) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        m.fixed_view_mut::<3, 3>(0, 0).copy_from(&self.rotation);
        m.fixed_view_mut::<3, 1>(0, 3).copy_from(&self.translation);
        m
    }

    /// Row-major 4×4 nested array, the layout used in telecho's JSON files.
    pub fn to_rows(&self) -> [[f64; 4]; 4] {
        let m = self.to_matrix4();
        std::array::from_fn(|i| std::array::from_fn(|j| m[(i, j)]))
    }

    /// Rotation as row-major nested array.
    pub fn rotation_rows(&self) -> [[f64; 3]; 3] {
        std::array::from_fn(|i| std::array::from_fn(|j| self.rotation[(i, j)]))
    }

    /// Translation and rotation distance to `other`: (metres, radians).
    pub fn distance_to(&self, other: &Self) -> (f64, f64) {
        let dp = (self.translation - other.translation).norm();
        let dr = rotation_log(&(other.rotation * self.rotation.transpose())).norm();
        (dp, dr)
    }

    /// True when every element is finite.
    pub fn is_finite(&self) -> bool {
        self.rotation.iter().all(|v| v.is_finite())
            && self.translation.iter().all(|v| v.is_finite())
    }
}

impl Mul for Transform {
    type Output = Transform;

    /// Composition: `t_a_b * t_b_c = t_a_c`.
    fn mul(self, rhs: Transform) -> Transform {
        Transform {
            rotation: self.rotation * rhs.rotation,
            translation: self.rotation * rhs.translation + self.translation,
        }
    }
}

impl Mul for &Transform {
    type Output = Transform;

    fn mul(self, rhs: &Transform) -> Transform {
        *self * *rhs
    }
}

/// Rotation matrix of URDF roll/pitch/yaw (rad): `Rz(yaw)·Ry(pitch)·Rx(roll)`.
pub fn rotation_from_rpy(roll: f64, pitch: f64, yaw: f64) -> Matrix3<f64> {
    let (sr, cr) = roll.sin_cos();
    let (sp, cp) = pitch.sin_cos();
    let (sy, cy) = yaw.sin_cos();
    Matrix3::new(
        cy * cp,
        cy * sp * sr - sy * cr,
        cy * sp * cr + sy * sr,
        sy * cp,
        sy * sp * sr + cy * cr,
        sy * sp * cr - cy * sr,
        -sp,
        cp * sr,
        cp * cr,
    )
}

/// Logarithm of a rotation matrix: the rotation vector (axis × angle, angle in [0, π]).
///
/// Stable over the whole range, including angles near 0 (first-order series) and near π (axis
/// taken from the symmetric part, where the skew part vanishes).
pub fn rotation_log(r: &Matrix3<f64>) -> Vector3<f64> {
    let cos = ((r.trace() - 1.0) * 0.5).clamp(-1.0, 1.0);
    // v = sin(θ)·axis
    let v = Vector3::new(
        r[(2, 1)] - r[(1, 2)],
        r[(0, 2)] - r[(2, 0)],
        r[(1, 0)] - r[(0, 1)],
    ) * 0.5;
    let sin = v.norm();
    let angle = sin.atan2(cos);
    if cos > -0.9 {
        if sin < 1e-12 {
            return v;
        }
        return v * (angle / sin);
    }
    // Near π: (R + Rᵀ)/2 − cos·I = (1 − cos)·a·aᵀ.
    let b = (r + r.transpose()) * 0.5 - Matrix3::identity() * cos;
    let mut k = 0;
    for i in 1..3 {
        if b[(i, i)] > b[(k, k)] {
            k = i;
        }
    }
    let mut axis = b.column(k).into_owned();
    let n = axis.norm();
    if n == 0.0 {
        return Vector3::zeros();
    }
    axis /= n;
    if axis.dot(&v) < 0.0 {
        axis = -axis;
    }
    axis * angle
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::{FRAC_PI_2, PI};

    #[test]
    fn rpy_round_trip_and_convention() {
        let t = Transform::from_xyz_rpy([0.0; 3], [0.0, 0.0, FRAC_PI_2]).unwrap();
        // yaw 90°: x axis maps onto y.
        let x = t.transform_vector(&Vector3::x());
        assert!((x - Vector3::y()).norm() < 1e-15);
        let rpy = [0.3, -0.4, 2.5];
        let t = Transform::from_xyz_rpy([1.0, 2.0, 3.0], rpy).unwrap();
        let back = t.rpy();
        for i in 0..3 {
            assert!((back[i] - rpy[i]).abs() < 1e-12, "{back:?} vs {rpy:?}");
        }
    }

    #[test]
    fn refuses_nan() {
        let e = Transform::from_xyz_rpy([f64::NAN, 0.0, 0.0], [0.0; 3]).unwrap_err();
        assert!(e.is_not_finite());
        assert!(e.to_string().contains('x'));
    }

    #[test]
    fn log_near_pi_keeps_axis() {
        for angle in [PI, PI - 1e-9, PI - 1e-3, 3.0] {
            let axis = Vector3::new(1.0, -2.0, 0.5).normalize();
            let r =
                nalgebra::Rotation3::from_axis_angle(&nalgebra::Unit::new_normalize(axis), angle);
            let w = rotation_log(r.matrix());
            assert!(
                (w.norm() - angle).abs() < 1e-7,
                "angle {angle}: {}",
                w.norm()
            );
            assert!(w.normalize().dot(&axis).abs() > 1.0 - 1e-6);
        }
    }
}
