//! Properties of rigid transforms over random inputs.

use nalgebra::Vector3;
use proptest::prelude::*;
use telecho_core::{rotation_log, Transform};

fn transform() -> impl Strategy<Value = Transform> {
    (
        prop::array::uniform3(-2.0..2.0f64),
        prop::array::uniform3(-3.2..3.2f64),
    )
        .prop_map(|(xyz, rpy)| Transform::from_xyz_rpy(xyz, rpy).unwrap())
}

proptest! {
    #[test]
    fn inverse_composes_to_identity(t in transform()) {
        let i = t * t.inverse();
        let (dp, dr) = i.distance_to(&Transform::IDENTITY);
        prop_assert!(dp < 1e-12, "translation residual {dp} m");
        prop_assert!(dr < 1e-12, "rotation residual {dr} rad");
    }

    #[test]
    fn composition_is_associative_on_points(a in transform(), b in transform(),
                                            p in prop::array::uniform3(-1.0..1.0f64)) {
        let p = Vector3::from(p);
        let lhs = (a * b).transform_point(&p);
        let rhs = a.transform_point(&b.transform_point(&p));
        prop_assert!((lhs - rhs).norm() < 1e-12);
    }

    #[test]
    fn rotation_stays_orthonormal(t in transform()) {
        let r = t.rotation;
        prop_assert!((r * r.transpose() - nalgebra::Matrix3::identity()).norm() < 1e-12);
        prop_assert!((r.determinant() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn log_is_inverse_of_exp(axis in prop::array::uniform3(-1.0..1.0f64), angle in 0.0..std::f64::consts::PI) {
        let axis = Vector3::from(axis);
        prop_assume!(axis.norm() > 1e-3);
        let axis = axis.normalize();
        let r = nalgebra::Rotation3::from_axis_angle(&nalgebra::Unit::new_unchecked(axis), angle);
        let w = rotation_log(r.matrix());
        prop_assert!((w - axis * angle).norm() < 1e-6, "{w:?} vs {:?}", axis * angle);
    }
}

#[test]
fn to_rows_is_row_major() {
    let t =
        Transform::from_xyz_rpy([1.0, 2.0, 3.0], [0.0, 0.0, std::f64::consts::FRAC_PI_2]).unwrap();
    let rows = t.to_rows();
    assert_eq!(rows[0][3], 1.0);
    assert_eq!(rows[1][3], 2.0);
    assert_eq!(rows[2][3], 3.0);
    assert_eq!(rows[3], [0.0, 0.0, 0.0, 1.0]);
    // Rz(90°): first row is (0, -1, 0).
    assert!((rows[0][1] + 1.0).abs() < 1e-15);
}
