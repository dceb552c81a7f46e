//! `telecho sim phantom` end to end: files, their agreement with each other, determinism.

use std::path::{Path, PathBuf};
use std::process::Command;

use nalgebra::Vector3;
use telecho_perception::dicom::read_dicom_series;
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
    // The DICOM series: the same files, byte for byte.
    let (da, db) = (dicom_files(&a), dicom_files(&b));
    assert!(!da.is_empty());
    assert_eq!(
        da.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        db.iter().map(|p| p.file_name()).collect::<Vec<_>>()
    );
    for (x, y) in da.iter().zip(&db) {
        assert!(
            std::fs::read(x).unwrap() == std::fs::read(y).unwrap(),
            "{} differs",
            x.display()
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
    // Another seed is another patient, in another DICOM series.
    let c = base.join("c");
    assert!(phantom("13", &c, "1.0").status.success());
    assert_ne!(
        std::fs::read(a.join("landmarks.json")).unwrap(),
        std::fs::read(c.join("landmarks.json")).unwrap()
    );
    assert_ne!(
        std::fs::read(&da[0]).unwrap(),
        std::fs::read(&dicom_files(&c)[0]).unwrap()
    );
    std::fs::remove_dir_all(&base).ok();
}

/// The files of DIR/dicom, sorted by name.
fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("dicom"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn phantom_dicom_series_equals_the_nifti() {
    let dir = std::env::temp_dir().join(format!("telecho-cli-sim-dicom-{}", std::process::id()));
    let out = phantom("5", &dir, "1.2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nifti = read_nifti(&dir.join("ct.nii.gz")).unwrap();
    let dicom = read_dicom_series(&dir.join("dicom")).unwrap();
    assert_eq!(dicom.dims(), nifti.dims());
    assert_eq!(
        dicom_files(&dir).len(),
        nifti.dims()[2],
        "one file per slice"
    );
    let (ld, od) = dicom.affine();
    let (ln, on) = nifti.affine();
    assert!(
        (ld - ln).abs().max() < 1e-6 && (od - on).abs().max() < 1e-6,
        "DICOM affine {ld}{od} vs NIfTI {ln}{on}"
    );
    let spacing = dicom.spacing();
    assert!(
        spacing.iter().all(|s| (s - 0.0012).abs() < 1e-9),
        "{spacing:?}"
    );
    let mismatches = dicom
        .data()
        .iter()
        .zip(nifti.data())
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(mismatches, 0, "voxels differing between DICOM and NIfTI");
    // Bone and soft tissue are both there (not a blank volume).
    assert!(dicom.data().iter().any(|&v| v >= 300.0));
    assert!(dicom.data().iter().any(|&v| (-100.0..100.0).contains(&v)));
    // The series is labelled with the phantom's seed.
    let first = std::fs::read(&dicom_files(&dir)[0]).unwrap();
    let id = b"telecho-phantom-5";
    assert!(first.windows(id.len()).any(|w| w == id), "patient ID");
    std::fs::remove_dir_all(&dir).ok();
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

#[test]
fn export_gazebo_writes_the_scene_of_a_seed() {
    let dir = std::env::temp_dir().join(format!("telecho-cli-gazebo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "sim",
            "export-gazebo",
            "--arm",
            "panda",
            "--seed",
            "3",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let urdf = std::fs::read_to_string(dir.join("urdf/panda_probe.urdf")).unwrap();
    assert!(urdf.contains("<ros2_control") && urdf.contains("gz_ros2_control-system"));
    // Seven joints, each starting at the hover pose the simulator starts from (not all zero).
    assert_eq!(urdf.matches("name=\"initial_value\"").count(), 7);
    assert!(!urdf.contains("\"initial_value\">0.000000<"));
    let world = std::fs::read_to_string(dir.join("worlds/telecho_spine.sdf")).unwrap();
    assert!(world.contains("<model name=\"patient\">"));
    assert!(dir.join("meshes/patient_skin.stl").is_file());
    assert!(dir.join("launch/telecho_gazebo.launch.py").is_file());
    // An unknown arm is bad input: exit 2, nothing written.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "sim",
            "export-gazebo",
            "--arm",
            "kuka",
            "--out",
            "/tmp/telecho-never",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(!std::path::Path::new("/tmp/telecho-never").exists());
}
