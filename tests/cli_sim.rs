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
    let base = telecho_testkit::scratch("cli-sim");
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
    let dir = telecho_testkit::scratch("cli-sim-dicom");
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
    let dir = telecho_testkit::scratch("cli-sim-bad");
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
    let dir = telecho_testkit::scratch("cli-gazebo");
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

fn us_frame(
    seed: &str,
    xyz: &str,
    rpy: &str,
    out: &std::path::Path,
) -> (Vec<u8>, serde_json::Value) {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "sim",
            "us",
            "--seed",
            seed,
            "--probe-xyz",
            xyz,
            "--probe-rpy",
            rpy,
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (256, 256));
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    buf.truncate(info.buffer_size());
    (buf, json)
}

/// `sim us`: a transverse frame over L3's spinous process, 2.5 mm into the skin of seed 7.
#[test]
fn us_frame_over_the_spinous_process() {
    let dir = telecho_testkit::scratch("cli-us");
    std::fs::create_dir_all(&dir).unwrap();
    // Beam along +y (anterior): roll −π/2 maps the probe's +z to ct +y.
    let (xyz, rpy) = ("0,-0.1,-0.0108", "-1.5707963267948966,0,0");
    let (a, json) = us_frame("7", xyz, rpy, &dir.join("a.png"));
    let (b, _) = us_frame("7", xyz, rpy, &dir.join("b.png"));
    assert_eq!(
        std::fs::read(dir.join("a.png")).unwrap(),
        std::fs::read(dir.join("b.png")).unwrap(),
        "same seed and pose, byte-identical PNG"
    );
    assert_eq!(a, b);
    assert_eq!(json["contact"], true);
    assert!(json["bone_pixels"].as_u64().unwrap() > 50);
    // The spinous tip is in the image plane; its row is its depth below the probe face.
    let tip = json["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "L3_spinous_tip")
        .expect("L3_spinous_tip in view")
        .clone();
    // The same patient through the library: the landmark's depth below the probe face.
    let y = telecho_sim::Phantom::generate(7)
        .landmarks()
        .into_iter()
        .find(|l| l.name == "L3_spinous_tip")
        .unwrap()
        .xyz[1];
    let depth = y - (-0.1);
    let dz = json["axial_spacing_m"].as_f64().unwrap();
    let row = tip["row"].as_f64().unwrap();
    assert!(
        (row - (depth / dz - 0.5)).abs() < 1.0,
        "row {row} vs depth {depth} m"
    );
    // Bright echo at the tip, dark shadow below it in the centre column.
    let col = |r: usize| a[r * 256 + 128] as f64;
    let r0 = row.round() as usize;
    let echo = (r0.saturating_sub(3)..r0 + 4).map(col).fold(0.0, f64::max);
    let shadow = (r0 + 15..r0 + 40).map(col).sum::<f64>() / 25.0;
    assert!(
        echo > 150.0 && shadow < 40.0,
        "echo {echo}, shadow {shadow}"
    );

    // In the air 20 mm behind the skin: no contact, (nearly) black image.
    let (air, json) = us_frame("7", "0,-0.12,-0.0108", rpy, &dir.join("air.png"));
    assert_eq!(json["contact"], false);
    let mean = air.iter().map(|&v| v as f64).sum::<f64>() / air.len() as f64;
    assert!(mean < 10.0, "mean {mean}");
}

#[test]
fn us_bad_input_exits_2() {
    for (xyz, rpy) in [("0,0", "0,0,0"), ("0,0,nan", "0,0,0"), ("0,0,0", "0,x,0")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_telecho"))
            .args([
                "sim",
                "us",
                "--seed",
                "1",
                "--probe-xyz",
                xyz,
                "--probe-rpy",
                rpy,
            ])
            .args(["--out", "/tmp/telecho-never.png"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{xyz} {rpy}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
}
