//! `telecho perception fuse` end to end on a `telecho scan` output.
//!
//! With the true `t_base_ct` (ground_truth.json) the CT bone in the reslice lines up with the
//! bone in the ultrasound: per scanline, the depth of the first CT bone surface is compared with
//! the simulator's true depth of the first bone surface (ray-marched in the phantom along the
//! beam at the frame's true pose) and with the bone echo the classical detector finds in the
//! frame. Frames are picked at end of expiration (breathing displacement < 0.3 mm, since
//! `t_base_ct` is the patient at rest) with the probe fully coupled. The PNG is written and not
//! blank; a frame out of range and bad files are errors; the default path (registering first)
//! works too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use nalgebra::{Matrix4, Vector3, Vector4};
use serde_json::Value;
use telecho_core::Transform;
use telecho_perception::fuse::reslice_frame;
use telecho_perception::sweep::{Orientation, Sweep};
use telecho_perception::volume::load_ct;
use telecho_sim::Phantom;

const SEED: u64 = 4;

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

/// One full default-protocol scan (0.8 mm CBCT) shared by the tests of this file.
fn scan_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = telecho_testkit::scratch("cli-fuse");
        std::fs::remove_dir_all(&d).ok();
        let out = telecho(&[
            "scan",
            "--sim-seed",
            &SEED.to_string(),
            "--out",
            d.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "scan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
}

fn ground_truth() -> Value {
    serde_json::from_slice(&std::fs::read(scan_dir().join("ground_truth.json")).unwrap()).unwrap()
}

fn transform(v: &Value) -> Transform {
    let m = Matrix4::from_fn(|r, c| v[r][c].as_f64().unwrap());
    Transform::new(
        m.fixed_view::<3, 3>(0, 0).into_owned(),
        m.fixed_view::<3, 1>(0, 3).into_owned(),
    )
}

/// End-of-expiration, fully coupled sweep frames, one sagittal and one transverse: among them,
/// the ones whose CT reslice (true pose) shows bone in the most columns.
fn frames(sweep: &Sweep, truth: &Value) -> Vec<usize> {
    static FRAMES: OnceLock<Vec<usize>> = OnceLock::new();
    FRAMES
        .get_or_init(|| {
            let ct = load_ct(&scan_dir().join("ct.nii.gz")).unwrap();
            let t_base_ct = transform(&truth["t_base_ct"]);
            let mut out = Vec::new();
            for want in [Orientation::Sagittal, Orientation::Transverse] {
                let best = truth["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| {
                        let i = f["index"].as_u64().unwrap() as usize;
                        let rec = &sweep.frames()[i];
                        sweep.sweeps()[rec.sweep_index].orientation == want
                            && f["image_contact_fraction"].as_f64().unwrap() >= 0.99
                            && f["breathing_displacement_m"].as_f64().unwrap() < 0.0003
                    })
                    .map(|f| f["index"].as_u64().unwrap() as usize)
                    .step_by(3)
                    .max_by_key(|&i| {
                        reslice_frame(&ct, sweep, i, &t_base_ct).map_or(0, |r| {
                            (0..r.width())
                                .filter(|&c| r.first_crossing_row(c, 625.0).is_some())
                                .count()
                        })
                    });
                out.push(best.expect("a quiet, coupled frame"));
            }
            out
        })
        .clone()
}

/// Depth (m) of the first phantom bone surface along column `col`'s beam at pose `t_ct_probe`.
fn true_bone_depth(
    phantom: &Phantom,
    sweep: &Sweep,
    t_ct_probe: &Transform,
    col: usize,
) -> Option<f64> {
    let m = t_ct_probe.to_matrix4() * sweep.t_probe_image();
    let at = |row: f64| (m * Vector4::new(col as f64, row, 0.0, 1.0)).xyz();
    let origin: Vector3<f64> = at(0.0);
    let far = at((sweep.height() - 1) as f64);
    let len = (far - origin).norm();
    let dir = (far - origin) / len;
    let mut t = 0.0;
    while t < len {
        let d = phantom.bone_sdf(&(origin + dir * t));
        if d < 1e-6 {
            return Some(t);
        }
        t += d.max(1e-5);
    }
    None
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn reslice_with_the_true_pose_matches_the_true_bone_depth() {
    let dir = scan_dir();
    let ct = load_ct(&dir.join("ct.nii.gz")).unwrap();
    let sweep = Sweep::read(dir).unwrap();
    let truth = ground_truth();
    let t_base_ct = transform(&truth["t_base_ct"]);
    let phantom = Phantom::generate(SEED);
    for k in frames(&sweep, &truth) {
        let r = reslice_frame(&ct, &sweep, k, &t_base_ct).unwrap();
        let t_ct_probe = transform(&truth["frames"][k]["t_ct_probe"]);
        let mut diffs = Vec::new();
        for col in 0..sweep.width() {
            if let (Some(ct_depth), Some(true_depth)) = (
                r.first_crossing_depth_m(col, 625.0),
                true_bone_depth(&phantom, &sweep, &t_ct_probe, col),
            ) {
                diffs.push((ct_depth - true_depth).abs() * 1e3);
            }
        }
        assert!(
            diffs.len() >= 20,
            "frame {k}: {} columns with bone",
            diffs.len()
        );
        let m = median(&mut diffs);
        let p90 = diffs[diffs.len() * 9 / 10];
        println!(
            "frame {k}: {} columns, |CT surface − true bone depth| median {m:.3} mm, p90 {p90:.3} mm",
            diffs.len()
        );
        assert!(m <= 1.0, "frame {k}: median {m:.3} mm");
    }
}

#[test]
fn cli_writes_a_png_that_lines_up_with_the_bone_echo() {
    let dir = scan_dir();
    let sweep = Sweep::read(dir).unwrap();
    let truth = ground_truth();
    let gt = dir.join("ground_truth.json");
    for (k, layout) in frames(&sweep, &truth)
        .into_iter()
        .zip(["overlay", "side-by-side"])
    {
        let png_path = dir.join(format!("fuse-{k}.png"));
        let out = telecho(&[
            "perception",
            "fuse",
            "--ct",
            dir.join("ct.nii.gz").to_str().unwrap(),
            "--sweep",
            dir.to_str().unwrap(),
            "--frame",
            &k.to_string(),
            "--out",
            png_path.to_str().unwrap(),
            "--t-base-ct",
            gt.to_str().unwrap(),
            "--layout",
            layout,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "fuse failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["t_base_ct_source"], "file");
        assert_eq!(summary["frame"].as_u64(), Some(k as u64));
        let compared = summary["columns_compared"].as_u64().unwrap();
        let offset = summary["median_surface_offset_mm"].as_f64().unwrap();
        println!("frame {k} ({layout}): CT surface vs detected echo: median {offset:.3} mm over {compared} columns");
        assert!(compared >= 20, "{compared} columns");
        assert!(offset <= 1.0, "CT surface {offset:.3} mm from the echo");
        // The PNG: right size, not blank, with the bone layer and contour in it.
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&png_path).unwrap(),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let factor = if layout == "overlay" { 1 } else { 2 };
        assert_eq!(info.width as usize, factor * sweep.width());
        assert_eq!(info.height as usize, sweep.height());
        let px = &buf[..info.buffer_size()];
        let mean = px.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len() as f64;
        let var = px
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / px.len() as f64;
        assert!(var.sqrt() > 10.0, "blank image (sd {:.1})", var.sqrt());
        let coloured = px
            .chunks(3)
            .filter(|p| i32::from(p[0]) - i32::from(p[2]) > 60)
            .count();
        assert!(coloured > 50, "{coloured} bone-coloured pixels");
    }
}

#[test]
fn bad_input_is_an_error() {
    let dir = scan_dir();
    let ct = dir.join("ct.nii.gz");
    let gt = dir.join("ground_truth.json");
    let png = dir.join("bad.png");
    let run = |frame: &str, ct: &Path, pose: &Path| {
        telecho(&[
            "perception",
            "fuse",
            "--ct",
            ct.to_str().unwrap(),
            "--sweep",
            dir.to_str().unwrap(),
            "--frame",
            frame,
            "--out",
            png.to_str().unwrap(),
            "--t-base-ct",
            pose.to_str().unwrap(),
        ])
    };
    let out = run("99999", &ct, &gt);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--frame 99999 is out of range"), "{err}");
    let out = run("0", &dir.join("missing.nii.gz"), &gt);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.nii.gz"), "{err}");
    let out = run("0", &ct, &dir.join("landmarks.json"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("t_base_ct"), "{err}");
    let out = run("-1", &ct, &gt);
    assert_eq!(out.status.code(), Some(2));
    assert!(!png.exists());
}

#[test]
fn without_a_pose_it_registers_first() {
    let dir = scan_dir();
    let sweep = Sweep::read(dir).unwrap();
    let k = frames(&sweep, &ground_truth())[0];
    let png_path = dir.join("fuse-registered.png");
    let out = telecho(&[
        "perception",
        "fuse",
        "--ct",
        dir.join("ct.nii.gz").to_str().unwrap(),
        "--sweep",
        dir.to_str().unwrap(),
        "--frame",
        &k.to_string(),
        "--out",
        png_path.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "fuse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["t_base_ct_source"], "registration");
    let offset = summary["median_surface_offset_mm"].as_f64().unwrap();
    println!("frame {k} (registered): CT surface vs detected echo: median {offset:.3} mm");
    assert!(offset <= 1.5, "{offset:.3} mm");
    assert!(png_path.is_file());
}
