//! `telecho perception dataset` and `telecho perception eval` end to end: the dataset files and
//! their layout, determinism, the held-out evaluation of the CNN beside the classical detector
//! (real accuracy numbers), the same figures on ONNX Runtime (a peer), and bad arguments.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use telecho_core::peers::{missing_peer, python_output};

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn dataset(seeds: &str, n: &str, dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "perception",
            "dataset",
            "--seeds",
            seeds,
            "--frames-per-seed",
            n,
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn dataset_files_have_the_documented_layout_and_replay() {
    let base = telecho_testkit::scratch("cli-dataset");
    let (a, b) = (base.join("a"), base.join("b"));
    for d in [&a, &b] {
        ok(&dataset("1000..1002", "12", d));
    }
    for f in ["images.u8", "masks.u8", "bone_rows.f32", "labels.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
    let labels: Value =
        serde_json::from_slice(&std::fs::read(a.join("labels.json")).unwrap()).unwrap();
    let (n, w, h) = (
        labels["count"].as_u64().unwrap() as usize,
        labels["width"].as_u64().unwrap() as usize,
        labels["height"].as_u64().unwrap() as usize,
    );
    assert_eq!((n, w, h), (36, 256, 256));
    assert_eq!(labels["format"], "telecho-us-dataset/1");
    assert_eq!(labels["seeds"], serde_json::json!([1000, 1002]));
    assert_eq!(
        labels["classes"],
        serde_json::json!(["spinous_tip", "lamina", "facet", "transverse_process"])
    );
    let images = std::fs::read(a.join("images.u8")).unwrap();
    let masks = std::fs::read(a.join("masks.u8")).unwrap();
    let rows = std::fs::read(a.join("bone_rows.f32")).unwrap();
    assert_eq!(images.len(), n * w * h);
    assert_eq!(masks.len(), n * w * h);
    assert_eq!(rows.len(), n * w * 4);
    // The mask has a 1 exactly on the rounded row of every column with bone.
    let frames = labels["frames"].as_array().unwrap();
    let mut landmarks = 0;
    for (i, f) in frames.iter().enumerate() {
        for c in 0..w {
            let o = (i * w + c) * 4;
            let r = f32::from_le_bytes([rows[o], rows[o + 1], rows[o + 2], rows[o + 3]]);
            let col: Vec<u8> = (0..h).map(|rr| masks[i * w * h + rr * w + c]).collect();
            if r.is_nan() {
                assert!(col.iter().all(|&m| m == 0), "frame {i} column {c}");
            } else if (r.round() as usize) < h {
                assert_eq!(col[r.round() as usize], 1, "frame {i} column {c}");
                assert_eq!(col.iter().filter(|&&m| m != 0).count(), 1);
            }
        }
        for l in f["landmarks"].as_array().unwrap() {
            landmarks += 1;
            let class = l["class"].as_u64().unwrap();
            assert!(class < 4);
            assert!(l["distance_to_plane_m"].as_f64().unwrap().abs() <= 0.002);
            let (r, c) = (l["row"].as_f64().unwrap(), l["col"].as_f64().unwrap());
            assert!((0.0..h as f64).contains(&r) && (-0.5..w as f64).contains(&c));
        }
    }
    assert!(landmarks >= 5, "{landmarks} visible landmarks in 36 frames");
    std::fs::remove_dir_all(&base).ok();
}

fn eval(extra: &[&str]) -> Value {
    let mut args = vec![
        "perception",
        "eval",
        "--seeds",
        "13..24",
        "--frames-per-seed",
        "30",
        "--json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&telecho(&args))).unwrap()
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number: {x}"))
}

#[test]
fn eval_reports_cnn_beside_classical_on_held_out_seeds() {
    let r = eval(&[]);
    assert_eq!(r["frames"], 360);
    assert_eq!(r["backend"], "tract");
    let n = f(&r, &["true_landmarks"]);
    let (f1, med) = (
        f(&r, &["cnn", "landmark_f1"]),
        f(&r, &["cnn", "landmark_error_median_mm"]),
    );
    let (f1c, dice, dice_c) = (
        f(&r, &["classical", "landmark_f1"]),
        f(&r, &["cnn", "bone_dice"]),
        f(&r, &["classical", "bone_dice"]),
    );
    println!(
        "seeds 13–24, 360 frames, {n} landmarks: CNN F1 {f1:.3}, median {med:.2} mm, Dice {dice:.3}; \
         classical F1 {f1c:.3}, Dice {dice_c:.3}"
    );
    // One frame in eight shows a fairly visible landmark: a dozen patients give about 50.
    assert!(n >= 40.0, "{n}");
    // Issue 5's targets hold here too (the bundled model with its per-class thresholds measures
    // F1 0.933 on these 53 landmarks), and the report says so.
    assert!(med <= 1.5, "CNN median localisation error {med} mm");
    assert_eq!(r["targets"]["cnn_median_error_met"], true);
    assert_eq!(r["targets"]["cnn_f1_met"], f1 >= 0.9);
    assert!(f1 >= 0.9, "CNN F1 {f1}");
    assert!(dice >= 0.95, "CNN bone Dice {dice}");
    assert!(dice_c >= 0.5, "classical bone Dice {dice_c}");
    assert!(dice > dice_c, "bone Dice: CNN {dice}, classical {dice_c}");
    assert!(f1 > f1c + 0.25, "F1: CNN {f1}, classical {f1c}");
    assert_eq!(r["cnn"]["per_class"].as_array().unwrap().len(), 4);
    // The sidecar's per-class thresholds are in force and reported; `--landmark-threshold` sets
    // one for all four.
    let th: Vec<f64> = r["cnn_landmark_thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(th.len(), 4);
    assert!(th.iter().any(|t| (t - th[0]).abs() > 1e-6), "{th:?}");
    let one = eval(&["--landmark-threshold", "0.5"]);
    assert_eq!(
        one["cnn_landmark_thresholds"],
        serde_json::json!([0.5, 0.5, 0.5, 0.5])
    );
}

#[test]
fn eval_on_onnxruntime_gives_the_same_figures() {
    if python_output("import onnxruntime; print(onnxruntime.__version__)").is_none()
        && std::env::var_os("TELECHO_ORT_LIB").is_none()
    {
        missing_peer(
            "ONNX Runtime (PyPI onnxruntime)",
            "python3 -m pip install onnxruntime==1.23.2",
        );
        return;
    }
    let (t, o) = (eval(&[]), eval(&["--backend", "onnxruntime"]));
    assert_eq!(o["backend"], "onnxruntime");
    assert!(o["runtime"].as_str().unwrap().starts_with("ONNX Runtime"));
    for k in ["true_positives", "false_positives", "false_negatives"] {
        let (a, b) = (f(&t, &["cnn", k]), f(&o, &["cnn", k]));
        assert!((a - b).abs() <= 1.0, "{k}: tract {a}, onnxruntime {b}");
    }
    let (a, b) = (f(&t, &["cnn", "bone_dice"]), f(&o, &["cnn", "bone_dice"]));
    assert!(
        (a - b).abs() < 1e-3,
        "bone Dice: tract {a}, onnxruntime {b}"
    );
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for (args, needle) in [
        (vec!["perception", "eval", "--seeds", "9..3"], "--seeds"),
        (
            vec!["perception", "eval", "--seeds", "1..2", "--backend", "cuda"],
            "backend",
        ),
        (
            vec![
                "perception",
                "eval",
                "--seeds",
                "1",
                "--model",
                "/nonexistent/m.onnx",
            ],
            "m.onnx",
        ),
        (
            vec![
                "perception",
                "dataset",
                "--seeds",
                "1",
                "--frames-per-seed",
                "0",
                "--out",
                "/tmp/x",
            ],
            "frames-per-seed",
        ),
    ] {
        let out = telecho(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
