//! `telecho sim phantom` end to end: files, their agreement with each other, determinism.

use std::path::Path;
use std::process::Command;

use nalgebra::Vector3;
use telecho_perception::io::read_nifti;

fn phantom(seed: &str, out: &Path, voxel_mm: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["sim", "phantom", "--seed", seed, "--out"])
        .arg(out)
        .args(["--voxel-mm", voxel_mm])
        .output()
        .unwrap()
}

#[test]
fn phantom_writes_ct_and_landmarks_deterministically() {
    let base = std::env::temp_dir().join(format!("telecho-cli-sim-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    for dir in [&a, &b] {
        let out = phantom("12", dir, "1.0");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for f in ["ct.nii.gz", "landmarks.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("landmarks.json")).unwrap()).unwrap();
    let lms = v["landmarks"].as_array().unwrap();
    assert_eq!(lms.len(), 40);
    assert!(lms.iter().any(|l| l["name"] == "L4_facet_left"));
    // The CT read back from disk shows bone (≥ 150 HU) within 1 mm of every landmark.
    let ct = read_nifti(&a.join("ct.nii.gz")).unwrap();
    assert_eq!(ct.spacing().map(|s| (s * 1e6).round()), [1000.0; 3]);
    for l in lms {
        let xyz: Vec<f64> = l["xyz"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let p = Vector3::new(xyz[0], xyz[1], xyz[2]);
        let mut best = f32::MIN;
        for dx in -2..=2 {
            for dy in -2..=2 {
                for dz in -2..=2 {
                    let q = p + Vector3::new(dx as f64, dy as f64, dz as f64) * 0.0005;
                    if (q - p).norm() <= 0.001 {
                        if let Some(hu) = ct.sample_world(&q) {
                            best = best.max(hu);
                        }
                    }
                }
            }
        }
        assert!(best >= 150.0, "{}: {best} HU", l["name"]);
    }
    // Another seed is another patient.
    let c = base.join("c");
    assert!(phantom("13", &c, "1.0").status.success());
    assert_ne!(
        std::fs::read(a.join("landmarks.json")).unwrap(),
        std::fs::read(c.join("landmarks.json")).unwrap()
    );
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn phantom_refuses_bad_voxel_size_before_writing() {
    let dir = std::env::temp_dir().join(format!("telecho-cli-sim-bad-{}", std::process::id()));
    for v in ["0", "nan", "-1", "50"] {
        let out = phantom("1", &dir, v);
        assert_eq!(out.status.code(), Some(2), "--voxel-mm {v}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr)
                .trim_end()
                .lines()
                .count(),
            1
        );
    }
    assert!(!dir.exists(), "nothing written on bad input");
}
