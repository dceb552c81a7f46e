use nalgebra::Vector3;
use telecho_core::rotation_log;
use telecho_sim::phantom::{Phantom, PhantomParams, Tissue, LEVEL_NAMES};

const SEEDS: [u64; 12] = [0, 1, 2, 3, 7, 42, 99, 1234, 5555, 65_535, 1 << 40, u64::MAX];

fn lm(p: &Phantom, name: &str) -> Vector3<f64> {
    let l = p.landmarks().into_iter().find(|l| l.name == name);
    Vector3::from(l.map(|l| l.xyz).unwrap_or([f64::NAN; 3]))
}

#[test]
fn same_seed_same_phantom_different_seed_differs() {
    let a = Phantom::generate(17);
    let b = Phantom::generate(17);
    let c = Phantom::generate(18);
    assert_eq!(a, b);
    assert_eq!(a.landmarks(), b.landmarks());
    assert_ne!(a.landmarks(), c.landmarks());
    assert_ne!(a.scale(), c.scale());
    let p = Vector3::new(0.01, -0.03, 0.02);
    assert_eq!(a.bone_sdf(&p), b.bone_sdf(&p));
}

#[test]
fn forty_landmarks_with_exact_names() {
    let p = Phantom::generate(5);
    let names: Vec<String> = p.landmarks().into_iter().map(|l| l.name).collect();
    assert_eq!(names.len(), 40);
    let mut expected = Vec::new();
    for lv in LEVEL_NAMES {
        for s in [
            "spinous_tip",
            "lamina_right",
            "lamina_left",
            "facet_right",
            "facet_left",
            "transverse_right",
            "transverse_left",
            "body_centre",
        ] {
            expected.push(format!("{lv}_{s}"));
        }
    }
    assert_eq!(names, expected);
}

#[test]
fn surface_landmarks_on_bone_and_body_centres_inside() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        for l in p.landmarks() {
            let d = p.bone_sdf(&Vector3::from(l.xyz));
            if l.name.ends_with("body_centre") {
                assert!(d < -5e-3, "seed {seed} {}: sdf {d}", l.name);
            } else {
                assert!(d.abs() <= 0.3e-3, "seed {seed} {}: sdf {d}", l.name);
            }
        }
    }
}

#[test]
fn left_landmarks_are_on_patient_left_and_posterior_of_the_body() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        for lv in LEVEL_NAMES {
            let c = lm(&p, &format!("{lv}_body_centre"));
            for part in ["lamina", "facet", "transverse"] {
                let l = lm(&p, &format!("{lv}_{part}_left"));
                let r = lm(&p, &format!("{lv}_{part}_right"));
                // RAS: the patient's left is −x.
                assert!(l.x < c.x && r.x > c.x, "seed {seed} {lv} {part}");
                assert!(
                    l.y < c.y - 0.02 && r.y < c.y - 0.02,
                    "seed {seed} {lv} {part}"
                );
            }
        }
    }
}

#[test]
fn facet_landmarks_sit_at_the_joint_with_the_vertebra_below() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        let gap = p.params().facet_gap;
        for (lv, name) in LEVEL_NAMES.iter().enumerate().take(4) {
            for side in ["left", "right"] {
                let q = lm(&p, &format!("{name}_facet_{side}"));
                // On this vertebra, across the joint space from the one below.
                assert!(p.vertebra_sdf(lv, &q).abs() < 1e-6);
                let d = p.vertebra_sdf(lv + 1, &q);
                assert!(
                    (gap..=gap + 2.0e-3).contains(&d),
                    "seed {seed} L{} {side}: {d} m from the vertebra below",
                    lv + 1
                );
            }
        }
    }
}

#[test]
fn dimensions_are_plausible() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        assert!((0.92..=1.08).contains(&p.scale()), "scale {}", p.scale());
        assert!((40.0..=60.0).contains(&p.lordosis_deg()));
        // L3 body width measured on the bone: first hits of rays along ±x through the centre.
        let t3 = p.t_ct_vertebra(2).unwrap();
        let mut half = [0.0; 2];
        for (i, s) in [1.0, -1.0].into_iter().enumerate() {
            let mut t = 0.0;
            while p.vertebra_sdf(2, &t3.transform_point(&Vector3::new(s * t, 0.0, 0.0))) < 0.0 {
                t += 1e-5;
            }
            half[i] = t;
        }
        let w = half[0] + half[1];
        assert!((0.038..=0.055).contains(&w), "seed {seed}: L3 width {w}");
        for (level, lv) in LEVEL_NAMES.iter().enumerate() {
            let t = p.t_ct_vertebra(level).unwrap();
            let inv = t.inverse();
            let tip = inv.transform_point(&lm(&p, &format!("{lv}_spinous_tip")));
            assert!(
                (0.055..=0.085).contains(&-tip.y),
                "seed {seed} {lv}: spinous tip {} m posterior",
                -tip.y
            );
            let tl = inv.transform_point(&lm(&p, &format!("{lv}_transverse_left")));
            let tr = inv.transform_point(&lm(&p, &format!("{lv}_transverse_right")));
            let span = tr.x - tl.x;
            assert!(
                (0.060..=0.100).contains(&span),
                "seed {seed} {lv}: TP span {span}"
            );
            if level + 1 < LEVEL_NAMES.len() {
                let below = p.t_ct_vertebra(level + 1).unwrap();
                let pitch = (t.translation - below.translation).norm();
                assert!(
                    (0.033..=0.045).contains(&pitch),
                    "seed {seed} {lv}: pitch {pitch}"
                );
            }
        }
    }
}

#[test]
fn lordosis_is_concave_posteriorly() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        let y: Vec<f64> = (0..5)
            .map(|l| p.t_ct_vertebra(l).unwrap().translation.y)
            .collect();
        // L3 (origin) is more anterior than L1 and L5; superior axes lean posteriorly going up.
        assert!(y[0] < y[2] && y[4] < y[2], "seed {seed}: {y:?}");
        let z1 = p.t_ct_vertebra(0).unwrap().rotation.column(2).into_owned();
        let z5 = p.t_ct_vertebra(4).unwrap().rotation.column(2).into_owned();
        assert!(z1.y < z5.y, "seed {seed}");
        let l4l1 = z1.angle(&z5).to_degrees();
        // L1–L5 carries the share 35/55 of the 40–60° L1–S1 lordosis, ± the random rotations.
        assert!((20.0..=45.0).contains(&l4l1), "seed {seed}: {l4l1}°");
    }
}

#[test]
fn intervertebral_rotation_within_three_degrees() {
    let lim = 3.0f64.to_radians() + 1e-12;
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        let rpy = p.intervertebral_rpy();
        let lord = p.segment_lordosis();
        for seg in 0..4 {
            assert!(
                rpy[seg].iter().all(|a| a.abs() <= lim),
                "seed {seed}: {rpy:?}"
            );
            let up = p.t_ct_vertebra(seg).unwrap();
            let lo = p.t_ct_vertebra(seg + 1).unwrap();
            let rel = lo.rotation.transpose() * up.rotation;
            let nominal = telecho_core::Transform::from_xyz_rpy([0.0; 3], [lord[seg], 0.0, 0.0])
                .unwrap()
                .rotation;
            let extra = nominal.transpose() * rel;
            let back = telecho_core::Transform::new(extra, Vector3::zeros()).rpy();
            for i in 0..3 {
                assert!(
                    (back[i] - rpy[seg][i]).abs() < 1e-9,
                    "seed {seed} seg {seg}"
                );
                assert!(back[i].abs() <= lim);
            }
            assert!(rotation_log(&extra).norm() <= 3.0f64.sqrt() * lim + 1e-9);
        }
    }
    // Not all zero: the rotations are actually drawn.
    let r = Phantom::generate(3).intervertebral_rpy();
    assert!(r.iter().flatten().any(|a| a.abs() > 0.1f64.to_radians()));
}

#[test]
fn skin_lies_posterior_of_every_spinous_tip() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        for lv in LEVEL_NAMES {
            let tip = lm(&p, &format!("{lv}_spinous_tip"));
            let depth = tip.y - p.skin_y(tip.x, tip.z);
            assert!(
                (0.015..=0.070).contains(&depth),
                "seed {seed} {lv}: depth {depth}"
            );
        }
        let (lo, hi) = p.bounds();
        for l in p.landmarks() {
            for i in 0..3 {
                assert!(
                    lo[i] <= l.xyz[i] && l.xyz[i] <= hi[i],
                    "{} outside bounds",
                    l.name
                );
            }
        }
        // Bounds contain the skin above the bone.
        assert!(lo[1] <= p.skin_y(0.0, 0.5 * (lo[2] + hi[2])));
    }
}

#[test]
fn tissue_layers_along_a_posterior_ray_and_cortex() {
    for seed in SEEDS {
        let p = Phantom::generate(seed);
        let prm = p.params();
        for lv in LEVEL_NAMES {
            let tip = lm(&p, &format!("{lv}_spinous_tip"));
            let (x, z) = (tip.x + 0.025, tip.z);
            let ys = p.skin_y(x, z);
            let at = |y: f64| p.tissue_at(&Vector3::new(x, y, z));
            assert_eq!(at(ys - 1e-3), Tissue::Air);
            assert_eq!(at(ys - 0.05), Tissue::Air);
            assert_eq!(at(ys + 0.5 * prm.skin_thickness), Tissue::Skin);
            let fat = p.fat_thickness();
            assert!((0.005..=0.020).contains(&fat));
            assert_eq!(at(ys + prm.skin_thickness + 0.5 * fat), Tissue::Fat);
            assert_eq!(at(ys + prm.skin_thickness + fat + 1e-3), Tissue::Muscle);
            // Just inside the bone at surface landmarks: cortical; deep in the body: trabecular.
            for part in ["spinous_tip", "lamina_left", "transverse_right"] {
                let q = lm(&p, &format!("{lv}_{part}"));
                let g = grad(&p, &q);
                assert_eq!(
                    p.tissue_at(&(q - g * 0.5e-3)),
                    Tissue::CorticalBone,
                    "{lv} {part}"
                );
                assert_eq!(
                    p.tissue_at(&(q + g * 0.5e-3)),
                    Tissue::Muscle,
                    "{lv} {part}"
                );
            }
            let c = lm(&p, &format!("{lv}_body_centre"));
            assert_eq!(p.tissue_at(&c), Tissue::TrabecularBone);
        }
        // Disc: midway between the L3 and L4 body centres.
        let c = 0.5 * (lm(&p, "L3_body_centre") + lm(&p, "L4_body_centre"));
        assert_eq!(p.tissue_at(&c), Tissue::Disc, "seed {seed}");
    }
}

fn grad(p: &Phantom, q: &Vector3<f64>) -> Vector3<f64> {
    let h = 1e-5;
    Vector3::from_fn(|i, _| {
        let mut e = Vector3::zeros();
        e[i] = h;
        (p.bone_sdf(&(q + e)) - p.bone_sdf(&(q - e))) / (2.0 * h)
    })
}

#[test]
fn bone_sdf_gradient_has_unit_norm_near_the_surface() {
    for seed in [1u64, 2, 42] {
        let p = Phantom::generate(seed);
        // Off every surface landmark by 0.5 mm outward and inward.
        for l in p.landmarks() {
            if l.name.ends_with("body_centre") {
                continue;
            }
            let q = Vector3::from(l.xyz);
            let n = grad(&p, &q).normalize();
            for off in [0.5e-3, -0.3e-3] {
                let g = grad(&p, &(q + n * off)).norm();
                assert!(
                    (0.9..=1.1).contains(&g),
                    "seed {seed} {} off {off}: |∇| {g}",
                    l.name
                );
            }
        }
        // A grid through the spine: of the points within 2 mm of the surface almost all are
        // away from seams and must have a unit gradient.
        let (lo, hi) = p.bounds();
        let (mut near, mut good) = (0usize, 0usize);
        let n = 36;
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    let f =
                        |a: usize, d: usize| lo[d] + (hi[d] - lo[d]) * (a as f64 + 0.5) / n as f64;
                    let q = Vector3::new(f(i, 0), f(j, 1), f(k, 2));
                    let d = p.bone_sdf(&q);
                    if d.abs() < 2e-3 {
                        near += 1;
                        let g = grad(&p, &q).norm();
                        if (0.9..=1.1).contains(&g) {
                            good += 1;
                        }
                    }
                }
            }
        }
        assert!(near > 200, "only {near} near-surface samples");
        assert!(
            good as f64 >= 0.95 * near as f64,
            "seed {seed}: {good}/{near} unit gradients"
        );
    }
}

#[test]
fn bone_sdf_matches_vertebra_sdf_union_near_bone() {
    let p = Phantom::generate(9);
    for l in p.landmarks() {
        let q = Vector3::from(l.xyz) + Vector3::new(0.001, -0.002, 0.0015);
        let u = (0..5)
            .map(|lv| p.vertebra_sdf(lv, &q))
            .fold(f64::INFINITY, f64::min);
        assert!((p.bone_sdf(&q) - u).abs() < 1e-12, "{}", l.name);
    }
    assert_eq!(p.vertebra_sdf(5, &Vector3::zeros()), f64::INFINITY);
    assert!(p.t_ct_vertebra(5).is_none());
    assert!(
        p.t_ct_vertebra(2)
            .unwrap()
            .distance_to(&telecho_core::Transform::IDENTITY)
            .0
            < 1e-15
    );
}

#[test]
fn bad_params_are_refused() {
    assert!(PhantomParams::default().validate().is_ok());
    let ok = Phantom::with_params(3, &PhantomParams::default()).unwrap();
    assert_eq!(ok, Phantom::generate(3));
    let cases: Vec<(PhantomParams, &str)> = vec![
        (
            PhantomParams {
                size_variation: f64::NAN,
                ..Default::default()
            },
            "size_variation",
        ),
        (
            PhantomParams {
                size_variation: 0.5,
                ..Default::default()
            },
            "size_variation",
        ),
        (
            PhantomParams {
                lordosis_deg: [60.0, 40.0],
                ..Default::default()
            },
            "lordosis_deg",
        ),
        (
            PhantomParams {
                lordosis_deg: [40.0, f64::INFINITY],
                ..Default::default()
            },
            "lordosis_deg",
        ),
        (
            PhantomParams {
                max_intervertebral_rotation_deg: -1.0,
                ..Default::default()
            },
            "max_intervertebral_rotation_deg",
        ),
        (
            PhantomParams {
                disc_height: 0.0,
                ..Default::default()
            },
            "disc_height",
        ),
        (
            PhantomParams {
                facet_gap: 0.01,
                ..Default::default()
            },
            "facet_gap",
        ),
        (
            PhantomParams {
                skin_depth: [0.01, 0.06],
                ..Default::default()
            },
            "skin_depth",
        ),
        (
            PhantomParams {
                skin_thickness: 0.02,
                ..Default::default()
            },
            "skin_thickness",
        ),
        (
            PhantomParams {
                cortical_thickness: f64::NAN,
                ..Default::default()
            },
            "cortical_thickness",
        ),
    ];
    for (params, what) in cases {
        let e = Phantom::with_params(1, &params).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn custom_params_are_honoured() {
    let params = PhantomParams {
        size_variation: 0.0,
        lordosis_deg: [50.0, 50.0],
        max_intervertebral_rotation_deg: 0.0,
        ..Default::default()
    };
    let p = Phantom::with_params(11, &params).unwrap();
    assert_eq!(p.scale(), 1.0);
    assert_eq!(p.lordosis_deg(), 50.0);
    assert!(p.intervertebral_rpy().iter().flatten().all(|a| *a == 0.0));
    // Without random rotations the phantom is left–right symmetric.
    let l = lm(&p, "L2_transverse_left");
    let r = lm(&p, "L2_transverse_right");
    assert!((l.x + r.x).abs() < 1e-9 && (l.y - r.y).abs() < 1e-9 && (l.z - r.z).abs() < 1e-9);
}
