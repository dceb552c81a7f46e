use nalgebra::{Matrix3, Vector3};
use proptest::prelude::*;
use telecho_perception::volume::Volume;

fn linear(i: usize, j: usize, k: usize) -> f32 {
    (2 * i + 3 * j) as f32 - k as f32
}

proptest! {
    /// Trilinear interpolation reproduces a linear field exactly anywhere inside the grid.
    #[test]
    fn linear_field_is_exact(x in 0.0..9.0f64, y in 0.0..7.0f64, z in 0.0..5.0f64) {
        let v = Volume::from_fn([10, 8, 6], [0.0005, 0.0007, 0.001], [0.01, -0.02, 0.03], linear).unwrap();
        let p = v.index_to_world(&Vector3::new(x, y, z));
        let s = v.sample_world(&p).unwrap();
        let expect = 2.0 * x + 3.0 * y - z;
        prop_assert!((f64::from(s) - expect).abs() < 1e-4, "{s} vs {expect}");
    }
}

#[test]
fn outside_is_none_and_world_round_trips() {
    let v = Volume::from_fn([4, 4, 4], [0.001; 3], [0.0; 3], linear).unwrap();
    assert!(v.sample_world(&Vector3::new(-0.0001, 0.0, 0.0)).is_none());
    assert!(v.sample_world(&Vector3::new(0.0031, 0.0, 0.0)).is_none());
    assert_eq!(
        v.sample_world(&Vector3::new(0.003, 0.003, 0.003)),
        Some(linear(3, 3, 3))
    );
    let p = Vector3::new(0.0012, 0.0025, 0.0007);
    assert!((v.index_to_world(&v.world_to_index(&p)) - p).norm() < 1e-15);
    assert_eq!(v.spacing(), [0.001; 3]);
}

#[test]
fn malformed_volumes_are_refused() {
    let e = Volume::new(
        [2, 2, 2],
        vec![0.0; 7],
        Matrix3::identity(),
        Vector3::zeros(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not match 7"), "{e}");
    let e = Volume::new([1, 1, 1], vec![0.0], Matrix3::zeros(), Vector3::zeros()).unwrap_err();
    assert!(e.to_string().contains("not invertible"), "{e}");
    let e =
        Volume::from_fn([1, 1, 1], [0.001, f64::NAN, 0.001], [0.0; 3], |_, _, _| 0.0).unwrap_err();
    assert!(e.to_string().contains("spacing"), "{e}");
}
