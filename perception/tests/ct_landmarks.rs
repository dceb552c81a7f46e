//! `ct_landmarks` on synthetic volumes: what it refuses, with which message, and that it never
//! panics on degenerate input. (Accuracy against the simulator's phantoms is measured at the top
//! level, `tests/perception_ct_landmarks.rs`, which can build phantoms.)

use nalgebra::{Matrix3, Vector3};
use telecho_perception::ct_landmarks::{analyse_spine, detect_ct_landmarks, LANDMARK_SUFFIXES};
use telecho_perception::volume::Volume;

const V: f64 = 0.0016;

/// Soft tissue with `blocks` of bone (1200 HU shell, 250 HU inside): (centre m, half sizes m).
fn volume(blocks: &[([f64; 3], [f64; 3])]) -> Volume {
    let n = [50, 40, 120];
    let origin = [-0.04, -0.03, -0.1];
    Volume::from_fn(n, [V; 3], origin, |i, j, k| {
        let p = [
            origin[0] + i as f64 * V,
            origin[1] + j as f64 * V,
            origin[2] + k as f64 * V,
        ];
        for (c, h) in blocks {
            let depth = (0..3)
                .map(|a| h[a] - (p[a] - c[a]).abs())
                .fold(f64::INFINITY, f64::min);
            if depth >= 0.0 {
                return if depth < 0.0015 { 1200.0 } else { 250.0 };
            }
        }
        50.0
    })
    .unwrap()
}

fn body(z: f64) -> ([f64; 3], [f64; 3]) {
    ([0.0, 0.0, z], [0.02, 0.015, 0.012])
}

#[test]
fn refuses_without_bone() {
    let v = volume(&[]);
    let e = detect_ct_landmarks(&v).unwrap_err().to_string();
    assert!(e.contains("no voxel reaches the bone level"), "{e}");
}

#[test]
fn refuses_a_wrong_number_of_vertebral_bodies() {
    for count in [1usize, 3, 4] {
        let blocks: Vec<_> = (0..count).map(|i| body(-0.07 + 0.035 * i as f64)).collect();
        let e = detect_ct_landmarks(&volume(&blocks))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("found {count} vertebral bodies")) && e.contains("L1–L5"),
            "{count}: {e}"
        );
    }
    // Thin plates (no deep bone, like posterior elements alone) are not bodies.
    let plates: Vec<_> = (0..5)
        .map(|i| ([0.0, 0.0, -0.07 + 0.035 * i as f64], [0.02, 0.004, 0.012]))
        .collect();
    let e = detect_ct_landmarks(&volume(&plates))
        .unwrap_err()
        .to_string();
    assert!(e.contains("found 0 vertebral bodies"), "{e}");
}

#[test]
fn five_bodies_without_posterior_elements_do_not_panic() {
    // Five bodies alone: the detector finds the levels but no arches; whatever it says, it
    // must say it without panicking, and landmarks it returns must be finite and well named.
    let blocks: Vec<_> = (0..5).map(|i| body(-0.07 + 0.035 * i as f64)).collect();
    match analyse_spine(&volume(&blocks)) {
        Ok(spine) => {
            assert_eq!(spine.vertebrae.len(), 5);
            assert_eq!(spine.landmarks.len(), 5 * LANDMARK_SUFFIXES.len());
            for l in &spine.landmarks {
                assert!(l.xyz_ct.iter().all(|v| v.is_finite()), "{}", l.name);
            }
        }
        Err(e) => assert!(e.to_string().contains("landmark"), "{e}"),
    }
}

#[test]
fn degenerate_volumes_are_errors() {
    let tiny = Volume::from_fn([4, 4, 4], [V; 3], [0.0; 3], |_, _, _| 1200.0).unwrap();
    assert!(detect_ct_landmarks(&tiny).is_err());
    let nan = Volume::new(
        [20, 20, 20],
        vec![f32::NAN; 8000],
        Matrix3::from_diagonal_element(V),
        Vector3::zeros(),
    )
    .unwrap();
    assert!(detect_ct_landmarks(&nan).is_err());
    let solid = Volume::from_fn([30, 30, 30], [V; 3], [0.0; 3], |_, _, _| 1200.0).unwrap();
    assert!(detect_ct_landmarks(&solid).is_err());
}
