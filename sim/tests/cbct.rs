//! The simulated CBCT against the phantom it images.

use nalgebra::Vector3;
use telecho_sim::cbct::{simulate_cbct, tissue_hu, CbctParams, OUTSIDE_FOV_HU};
use telecho_sim::{Phantom, Tissue};

fn cbct(seed: u64, voxel_m: f64) -> (Phantom, telecho_perception::volume::Volume) {
    let phantom = Phantom::generate(seed);
    let params = CbctParams {
        voxel_m,
        ..CbctParams::default()
    };
    let vol = simulate_cbct(&phantom, &params, seed).unwrap();
    (phantom, vol)
}

#[test]
fn every_landmark_lies_on_bone_in_the_cbct() {
    // Issue 3: every landmark lies on bone, HU ≥ 150 within 1 mm.
    for seed in [1] {
        let (phantom, vol) = cbct(seed, 0.0008);
        let [ni, nj, nk] = vol.dims();
        for lm in phantom.landmarks() {
            let p = Vector3::from(lm.xyz);
            let c = vol.world_to_index(&p);
            let r = (0.001 / 0.0008f64).ceil() as i64;
            let mut best = f32::NEG_INFINITY;
            for dk in -r..=r {
                for dj in -r..=r {
                    for di in -r..=r {
                        let idx = [
                            c.x.round() as i64 + di,
                            c.y.round() as i64 + dj,
                            c.z.round() as i64 + dk,
                        ];
                        let w = vol.index_to_world(&Vector3::new(
                            idx[0] as f64,
                            idx[1] as f64,
                            idx[2] as f64,
                        ));
                        if (w - p).norm() > 0.001 || idx.iter().any(|&v| v < 0) {
                            continue;
                        }
                        if let Some(v) = vol.get(idx[0] as usize, idx[1] as usize, idx[2] as usize)
                        {
                            best = best.max(v);
                        }
                    }
                }
            }
            assert!(
                best >= 150.0,
                "seed {seed} {}: max HU within 1 mm is {best}",
                lm.name
            );
        }
        assert!(ni > 50 && nj > 50 && nk > 150, "{:?}", vol.dims());
    }
}

#[test]
fn tissue_values_noise_and_field_of_view() {
    let (phantom, vol) = cbct(3, 0.001);
    assert_eq!(vol.spacing(), [0.001; 3]);
    // Voxel statistics in the middle of the paraspinal muscle of L3, 25 mm off the midline.
    let mut samples = Vec::new();
    let skin = phantom.skin_y(0.025, 0.0);
    for dy in 0..5 {
        for dz in 0..5 {
            let p = Vector3::new(0.025, skin + 0.035 + 0.001 * dy as f64, 0.001 * dz as f64);
            // Voxel centres (not interpolated, which would average the noise away).
            let c = vol.world_to_index(&p).map(|v| v.round());
            let centre = vol.index_to_world(&c);
            if phantom.tissue_at(&centre) == Tissue::Muscle && phantom.bone_sdf(&centre) > 0.002 {
                samples.push(vol.get(c.x as usize, c.y as usize, c.z as usize).unwrap());
            }
        }
    }
    assert!(samples.len() >= 15, "{} muscle samples", samples.len());
    let mean = samples.iter().sum::<f32>() / samples.len() as f32;
    let sd = (samples.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (samples.len() - 1) as f32)
        .sqrt();
    // Muscle +50 HU, less a little cupping; noise σ = 20 HU.
    assert!(
        (mean - tissue_hu(Tissue::Muscle)).abs() < 25.0,
        "muscle mean {mean} HU"
    );
    assert!((10.0..35.0).contains(&sd), "noise σ {sd} HU");
    // Air in front of the skin, and the corner of the box is outside the cylindrical FOV.
    let air = vol
        .sample_world(&Vector3::new(0.0, skin - 0.005, 0.0))
        .unwrap();
    assert!(air < -900.0, "air {air} HU");
    // The cylindrical field of view (radius 100 mm) clips the corners of the box, and nothing
    // else is written with the outside-FOV value.
    let outside = vol.data().iter().filter(|&&v| v == OUTSIDE_FOV_HU).count();
    assert!(
        outside > 0 && outside < vol.data().len() / 4,
        "{outside} voxels outside the FOV"
    );
    assert_eq!(vol.get(0, 0, 0), Some(OUTSIDE_FOV_HU));
}

#[test]
fn deterministic_for_a_seed() {
    let p = Phantom::generate(4);
    let params = CbctParams {
        voxel_m: 0.002,
        ..CbctParams::default()
    };
    let a = simulate_cbct(&p, &params, 9).unwrap();
    let b = simulate_cbct(&p, &params, 9).unwrap();
    let c = simulate_cbct(&p, &params, 10).unwrap();
    assert_eq!(a.data(), b.data());
    assert_ne!(a.data(), c.data());
}

#[test]
fn bad_settings_are_refused() {
    let p = Phantom::generate(1);
    for params in [
        CbctParams {
            voxel_m: 0.0,
            ..CbctParams::default()
        },
        CbctParams {
            voxel_m: f64::NAN,
            ..CbctParams::default()
        },
        CbctParams {
            noise_hu: -1.0,
            ..CbctParams::default()
        },
        CbctParams {
            fov_radius_m: f64::INFINITY,
            ..CbctParams::default()
        },
    ] {
        let e = simulate_cbct(&p, &params, 0).unwrap_err();
        assert!(e.to_string().contains("CBCT"), "{e}");
    }
}
