//! `perception::ct_landmarks` against the simulator's phantom: on simulated CBCTs of ten
//! patients, every automatically detected CT landmark lies within 2 mm (median over the seeds)
//! of the phantom's analytic landmark of the same name, none is assigned to the wrong vertebra,
//! and the detector refuses a volume that does not show five vertebrae.

use nalgebra::Vector3;
use telecho_perception::ct_landmarks::{analyse_spine, detect_ct_landmarks, LANDMARK_SUFFIXES};
use telecho_perception::volume::Volume;
use telecho_sim::{simulate_cbct, CbctParams, Phantom};

/// Seeds 1..=10, or 1..=N with `TELECHO_CT_LANDMARK_SEEDS=N` (N ≥ 10) for a longer run.
fn seeds() -> std::ops::RangeInclusive<u64> {
    let n = std::env::var("TELECHO_CT_LANDMARK_SEEDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(10)
        .max(10);
    1..=n
}

fn ct(seed: u64, voxel_m: f64) -> (Phantom, Volume) {
    let p = Phantom::generate(seed);
    let params = CbctParams {
        voxel_m,
        ..Default::default()
    };
    let v = simulate_cbct(&p, &params, seed).unwrap();
    (p, v)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Errors (mm) per landmark name over the seeds, and the number of mislabelled landmarks (the
/// nearest true landmark of the same kind belongs to another level).
fn evaluate(voxel_m: f64) -> (Vec<(String, Vec<f64>)>, usize) {
    let mut errors: Vec<(String, Vec<f64>)> = Vec::new();
    let mut mislabelled = 0;
    for seed in seeds() {
        let (p, v) = ct(seed, voxel_m);
        let t0 = std::time::Instant::now();
        let found = detect_ct_landmarks(&v).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let truth = p.landmarks();
        assert_eq!(found.len(), truth.len());
        let mut worst = (0.0, String::new());
        for f in &found {
            let t = truth.iter().find(|t| t.name == f.name).unwrap();
            let e = (f.xyz_ct - Vector3::from(t.xyz)).norm() * 1e3;
            if e > worst.0 {
                worst = (e, f.name.clone());
            }
            match errors.iter_mut().find(|(n, _)| *n == f.name) {
                Some((_, v)) => v.push(e),
                None => errors.push((f.name.clone(), vec![e])),
            }
            let suffix = &f.name[3..];
            let nearest = truth
                .iter()
                .filter(|t| &t.name[3..] == suffix)
                .min_by(|a, b| {
                    let da = (f.xyz_ct - Vector3::from(a.xyz)).norm();
                    let db = (f.xyz_ct - Vector3::from(b.xyz)).norm();
                    da.total_cmp(&db)
                })
                .unwrap();
            if nearest.name != f.name {
                mislabelled += 1;
            }
        }
        println!(
            "seed {seed}: {:.0} ms, worst {:.2} mm ({})",
            dt * 1e3,
            worst.0,
            worst.1
        );
    }
    (errors, mislabelled)
}

#[test]
fn landmarks_within_2mm_over_ten_patients() {
    let (mut errors, mislabelled) = evaluate(CbctParams::default().voxel_m);
    let mut all = Vec::new();
    let mut bad = Vec::new();
    println!(
        "landmark               median   p90    max  (mm, {} seeds)",
        seeds().count()
    );
    for (name, e) in &mut errors {
        all.extend(e.iter().copied());
        let med = quantile(e, 0.5);
        let p90 = quantile(e, 0.9);
        let max = quantile(e, 1.0);
        println!("{name:22} {med:6.2} {p90:6.2} {max:6.2}");
        if med > 2.0 {
            bad.push(format!("{name}: median {med:.2} mm"));
        }
    }
    for suffix in LANDMARK_SUFFIXES {
        let mut e: Vec<f64> = errors
            .iter()
            .filter(|(n, _)| n.ends_with(suffix))
            .flat_map(|(_, e)| e.iter().copied())
            .collect();
        println!(
            "{suffix:18} median {:.2}  p95 {:.2}  max {:.2} mm",
            quantile(&mut e, 0.5),
            quantile(&mut e, 0.95),
            quantile(&mut e, 1.0)
        );
    }
    println!(
        "all: median {:.2} p95 {:.2} max {:.2} mm; mislabelled {mislabelled}",
        quantile(&mut all, 0.5),
        quantile(&mut all, 0.95),
        quantile(&mut all, 1.0)
    );
    assert_eq!(mislabelled, 0, "landmarks assigned to the wrong vertebra");
    assert!(bad.is_empty(), "landmarks off by more than 2 mm: {bad:?}");
    assert!(
        quantile(&mut all, 1.0) < 4.0,
        "a landmark is more than 4 mm off"
    );
}

#[test]
fn vertebra_frames_follow_the_phantom() {
    let (p, v) = ct(3, CbctParams::default().voxel_m);
    let spine = analyse_spine(&v).unwrap();
    assert_eq!(spine.vertebrae.len(), 5);
    for (level, fit) in spine.vertebrae.iter().enumerate() {
        let truth = p.t_ct_vertebra(level).unwrap();
        let dt = (fit.t_ct_vertebra.translation - truth.translation).norm() * 1e3;
        let r = fit.t_ct_vertebra.rotation.transpose() * truth.rotation;
        let angle = ((r.trace() - 1.0) / 2.0)
            .clamp(-1.0, 1.0)
            .acos()
            .to_degrees();
        println!("{}: origin {dt:.2} mm, rotation {angle:.2}°", fit.level);
        assert!(dt < 1.0, "{}: origin {dt:.2} mm off", fit.level);
        assert!(angle < 2.0, "{}: rotation {angle:.2}° off", fit.level);
        assert!(
            (fit.scale - p.scale()).abs() < 0.02,
            "scale {} vs {}",
            fit.scale,
            p.scale()
        );
    }
}

#[test]
fn refuses_a_volume_without_five_vertebrae() {
    let (_, v) = ct(5, CbctParams::default().voxel_m);
    // Keep only the upper half of the volume (about L1–L3).
    let dims = v.dims();
    let keep = dims[2] / 2;
    let (a, o) = v.affine();
    let origin = o + a * Vector3::new(0.0, 0.0, keep as f64);
    let data = v.data()[dims[0] * dims[1] * keep..].to_vec();
    let top = Volume::new([dims[0], dims[1], dims[2] - keep], data, *a, origin).unwrap();
    let err = detect_ct_landmarks(&top).unwrap_err().to_string();
    assert!(err.contains("vertebral bodies"), "{err}");
}
