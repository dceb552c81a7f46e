//! The CNN detector (`perception::cnn`) on the tract backend: the bundled model loads and runs,
//! finds bone and landmarks on held-out simulated patients with real accuracy numbers, gives the
//! same maps on ONNX Runtime (a peer, run in a child process because `ort`'s backend is global
//! to a process), and refuses bad models, bad sidecars, wrong frame sizes and a second backend.

use std::path::PathBuf;
use std::sync::Arc;

use telecho_core::peers::{missing_peer, python_output};
use telecho_perception::cnn::{
    active_backend, init_backend, Backend, CnnConfig, CnnDetector, BUNDLED_MODEL, BUNDLED_SIDECAR,
};
use telecho_perception::detect::{
    match_landmarks, tolerant_dice_counts, ClassicalDetector, Detector, FrameDetection,
    LandmarkClass, LandmarkMatches, TrueLandmark,
};
use telecho_sim::dataset::{
    ignored_landmarks, poses_for_seed, render_pose, visible_landmarks, LabelParams,
    PoseSamplerParams,
};
use telecho_sim::{Phantom, UsFrame};

/// Held-out seeds (never trained on: training uses 1000–3999) and frames per seed. One frame in
/// eight shows a fairly visible landmark, so a dozen patients give enough of them (about 50) for
/// F1 and localisation figures that mean something.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=12;
const FRAMES_PER_SEED: usize = 30;
const CHILD_OUT_VAR: &str = "TELECHO_CNN_TEST_CHILD_OUT";

struct Labelled {
    frame: UsFrame,
    truth: Vec<TrueLandmark>,
    ignore: Vec<TrueLandmark>,
}

fn held_out_frames(seeds: std::ops::RangeInclusive<u64>, per_seed: usize) -> Vec<Labelled> {
    let mut out = Vec::new();
    for seed in seeds {
        let phantom = Arc::new(Phantom::generate(seed));
        let poses =
            poses_for_seed(&phantom, seed, per_seed, &PoseSamplerParams::default()).unwrap();
        for pose in &poses {
            let frame = render_pose(&phantom, seed, pose).unwrap();
            let visible = visible_landmarks(&frame, &phantom, &LabelParams::default());
            let truth = visible
                .iter()
                .map(|l| TrueLandmark {
                    class: LandmarkClass::from_index(l.class).unwrap(),
                    row: l.row,
                    col: l.col,
                })
                .collect();
            let ignore = ignored_landmarks(&frame, &phantom, &visible, &LabelParams::default())
                .iter()
                .map(|l| TrueLandmark {
                    class: LandmarkClass::from_index(l.class).unwrap(),
                    row: l.row,
                    col: l.col,
                })
                .collect();
            out.push(Labelled {
                frame,
                truth,
                ignore,
            });
        }
    }
    out
}

fn tract() -> CnnDetector {
    CnnDetector::bundled(&Backend::Tract).expect("the bundled model loads on tract")
}

fn err_text<T: std::fmt::Debug>(r: Result<T, telecho_perception::Error>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Accuracy of `d` on `frames`: (landmark matches, pooled tolerant bone Dice).
fn score(d: &mut dyn Detector, frames: &[Labelled]) -> (LandmarkMatches, f64) {
    let mut det = FrameDetection::new();
    let mut m = LandmarkMatches::default();
    let (mut hits, mut total) = (0, 0);
    let mut mask = vec![0u8; 256 * 256];
    for l in frames {
        let f = &l.frame;
        d.detect(&f.pixels, f.width, f.height, &mut det).unwrap();
        let g = det.geometry();
        m.add(&match_landmarks(
            det.landmarks(),
            &l.truth,
            &l.ignore,
            &g,
            3e-3,
        ));
        det.write_bone_mask(0, &mut mask).unwrap();
        let (h, t) = tolerant_dice_counts(&mask, &f.bone_mask, f.width, f.height, 2);
        hits += h;
        total += t;
    }
    (m, hits as f64 / total.max(1) as f64)
}

fn median_mm(m: &LandmarkMatches) -> f64 {
    let mut e: Vec<f64> = m.errors_m.iter().map(|e| e.1 * 1e3).collect();
    e.sort_by(f64::total_cmp);
    e.get(e.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The CNN and the classical detector on the held-out frames: (CNN matches, CNN Dice, classical
/// matches, classical Dice), printed.
fn held_out_scores() -> (LandmarkMatches, f64, LandmarkMatches, f64) {
    let frames = held_out_frames(SEEDS, FRAMES_PER_SEED);
    let n_true: usize = frames.iter().map(|l| l.truth.len()).sum();
    assert!(
        n_true >= 40,
        "only {n_true} visible landmarks in the test frames"
    );
    let mut cnn = tract();
    assert_eq!(cnn.output_size(), (128, 128));
    let (m, dice) = score(&mut cnn, &frames);
    let mut classical =
        ClassicalDetector::for_geometry(&cnn.config().geometry).expect("classical detector");
    let (mc, dice_c) = score(&mut classical, &frames);
    let (p, r, f1) = m.precision_recall_f1();
    let (pc, rc, f1c) = mc.precision_recall_f1();
    println!(
        "{} frames, {n_true} landmarks: CNN P {p:.3} R {r:.3} F1 {f1:.3} median {:.2} mm, \
         bone Dice {dice:.3}; classical P {pc:.3} R {rc:.3} F1 {f1c:.3} median {:.2} mm, bone \
         Dice {dice_c:.3}",
        frames.len(),
        median_mm(&m),
        median_mm(&mc)
    );
    (m, dice, mc, dice_c)
}

#[test]
fn bundled_model_finds_bone_and_landmarks_on_held_out_patients() {
    let (m, dice, mc, dice_c) = held_out_scores();
    let (p, r, f1) = m.precision_recall_f1();
    let (_, _, f1c) = mc.precision_recall_f1();
    let med = median_mm(&m);
    // Issue 5's localisation target and the bone surface, on patients the model never saw.
    assert!(med <= 1.5, "CNN median localisation error {med:.2} mm");
    assert!(dice >= 0.95, "CNN bone Dice {dice:.3}");
    assert!(
        dice > dice_c,
        "CNN bone Dice {dice:.3} vs classical {dice_c:.3}"
    );
    // What the bundled model measures on these 41 landmarks with its per-class thresholds (F1
    // 0.951: P 0.951, R 0.951), a little under it as a floor. Issue 5's F1 ≥ 0.9 is judged on
    // the benchmark's larger set (`issue_5_landmark_f1_target`).
    assert!(f1 >= 0.92, "CNN landmark F1 {f1:.3} (P {p:.3}, R {r:.3})");
    assert!(p >= 0.9 && r >= 0.9, "CNN landmark P {p:.3}, R {r:.3}");
    // The learned detector beats the classical baseline on landmarks by a wide margin.
    assert!(f1 > f1c + 0.25, "CNN F1 {f1:.3} vs classical {f1c:.3}");
}

/// Issue 5's landmark target, on the frames of the benchmark (`telecho perception eval --seeds
/// 1..50 --frames-per-seed 20`: 1000 frames, 130 landmarks). The bundled model measures F1 0.942
/// (P 0.946, R 0.938; models/README.md).
#[test]
fn issue_5_landmark_f1_target() {
    let frames = held_out_frames(1..=50, 20);
    let (m, _) = score(&mut tract(), &frames);
    let (p, r, f1) = m.precision_recall_f1();
    println!("seeds 1–50 × 20 frames: CNN P {p:.3} R {r:.3} F1 {f1:.3}");
    assert!(f1 >= 0.9, "CNN landmark F1 {f1:.3} (P {p:.3}, R {r:.3})");
}

#[test]
fn maps_are_probabilities_and_repeat_exactly() {
    let frames = held_out_frames(1..=1, FRAMES_PER_SEED);
    let f = &frames[0].frame;
    let mut cnn = tract();
    cnn.infer(&f.pixels, f.width, f.height).unwrap();
    let (bone, heat) = (cnn.bone_map().to_vec(), cnn.landmark_maps().to_vec());
    assert_eq!(bone.len(), 128 * 128);
    assert_eq!(heat.len(), 4 * 128 * 128);
    assert!(bone.iter().chain(&heat).all(|v| (0.0..=1.0).contains(v)));
    cnn.infer(&f.pixels, f.width, f.height).unwrap();
    assert_eq!(cnn.bone_map(), &bone[..]);
    assert_eq!(cnn.landmark_maps(), &heat[..]);
    assert_eq!(active_backend(), Some(Backend::Tract));
}

#[test]
fn wrong_frame_sizes_are_errors() {
    let mut cnn = tract();
    let mut out = FrameDetection::new();
    let e = err_text(cnn.detect(&[0u8; 128 * 128], 128, 128, &mut out));
    assert!(e.contains("256 × 256") && e.contains("128 × 128"), "{e}");
    let e = err_text(cnn.detect(&[0u8; 1000], 256, 256, &mut out));
    assert!(e.contains("1000"), "{e}");
    assert!(cnn.detect(&[], 0, 0, &mut out).is_err());
    // Still usable afterwards.
    cnn.detect(&[0u8; 256 * 256], 256, 256, &mut out).unwrap();
    assert_eq!(out.width(), 256);
}

#[test]
fn corrupt_truncated_and_empty_models_are_errors() {
    let cfg = CnnConfig::from_sidecar(BUNDLED_SIDECAR).unwrap();
    let half = &BUNDLED_MODEL[..BUNDLED_MODEL.len() / 2];
    let e = err_text(CnnDetector::from_bytes(half, cfg, &Backend::Tract));
    assert!(e.contains("cannot be loaded"), "{e}");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert!(CnnDetector::from_bytes(&garbage, cfg, &Backend::Tract).is_err());
    let e = err_text(CnnDetector::from_bytes(&[], cfg, &Backend::Tract));
    assert!(e.contains("empty"), "{e}");
    let dir = telecho_testkit::scratch("cnn_test");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.onnx");
    let e = err_text(CnnDetector::from_file(&missing, &Backend::Tract));
    assert!(e.contains("missing.onnx"), "{e}");
    let truncated = dir.join("truncated.onnx");
    std::fs::write(&truncated, &BUNDLED_MODEL[..1000]).unwrap();
    let e = err_text(CnnDetector::from_file(&truncated, &Backend::Tract));
    assert!(e.contains("truncated.onnx"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Minimal protobuf writer for a hand-made ONNX model.
fn field(num: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(num) << 3 | u64::from(wire), out);
}
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn bytes(num: u32, b: &[u8], out: &mut Vec<u8>) {
    field(num, 2, out);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}
fn int(num: u32, v: u64, out: &mut Vec<u8>) {
    field(num, 0, out);
    varint(v, out);
}
fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        int(1, d, &mut dim);
        bytes(1, &dim, &mut shape);
    }
    let mut tensor = Vec::new();
    int(1, 1, &mut tensor); // FLOAT
    bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    bytes(1, &tensor, &mut ty);
    let mut vi = Vec::new();
    bytes(1, name.as_bytes(), &mut vi);
    bytes(2, &ty, &mut vi);
    vi
}

/// A valid ONNX model `image` → Identity → `bone`, both `[1, 1, n, n]`.
fn identity_model(n: u64) -> Vec<u8> {
    let mut node = Vec::new();
    bytes(1, b"image", &mut node);
    bytes(2, b"bone", &mut node);
    bytes(4, b"Identity", &mut node);
    let mut graph = Vec::new();
    bytes(1, &node, &mut graph);
    bytes(2, b"g", &mut graph);
    bytes(11, &value_info("image", &[1, 1, n, n]), &mut graph);
    bytes(12, &value_info("bone", &[1, 1, n, n]), &mut graph);
    let mut opset = Vec::new();
    bytes(1, b"", &mut opset);
    int(2, 17, &mut opset);
    let mut model = Vec::new();
    int(1, 8, &mut model);
    bytes(8, &opset, &mut model);
    bytes(7, &graph, &mut model);
    model
}

#[test]
fn a_model_with_the_wrong_interface_is_an_error() {
    let cfg = CnnConfig::from_sidecar(BUNDLED_SIDECAR).unwrap();
    // Right input, but one output of the wrong name and size.
    let e = err_text(CnnDetector::from_bytes(
        &identity_model(256),
        cfg,
        &Backend::Tract,
    ));
    assert!(e.contains("outputs") && e.contains("landmarks"), "{e}");
    // Wrong input size.
    let e = err_text(CnnDetector::from_bytes(
        &identity_model(64),
        cfg,
        &Backend::Tract,
    ));
    assert!(e.contains("inputs") && e.contains("image"), "{e}");
}

#[test]
fn bad_sidecars_are_errors() {
    assert!(CnnConfig::from_sidecar("{").is_err());
    let classes = BUNDLED_SIDECAR.replace("\"facet\"", "\"pedicle\"");
    let e = err_text(CnnConfig::from_sidecar(&classes));
    assert!(e.contains("pedicle"), "{e}");
    let stride = BUNDLED_SIDECAR.replace("\"output_stride\": 2", "\"output_stride\": 3");
    assert!(CnnConfig::from_sidecar(&stride).is_err());
    let threshold = BUNDLED_SIDECAR.replace("\"bone_threshold\": 0.5", "\"bone_threshold\": 1.5");
    assert!(CnnConfig::from_sidecar(&threshold).is_err());
}

/// The bundled sidecar with its `decode` table's members replaced by `members`.
fn sidecar_with_decode(members: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(BUNDLED_SIDECAR).unwrap();
    let decode = v["decode"].as_object_mut().unwrap();
    decode.remove("landmark_threshold");
    decode.remove("landmark_thresholds");
    for (k, x) in members.as_object().unwrap() {
        decode.insert(k.clone(), x.clone());
    }
    v.to_string()
}

#[test]
fn landmark_thresholds_come_per_class_or_one_for_all() {
    use serde_json::json;
    let per_class = sidecar_with_decode(json!({"landmark_thresholds": [0.8, 0.5, 0.6, 0.7]}));
    let c = CnnConfig::from_sidecar(&per_class).unwrap();
    assert_eq!(c.landmark_thresholds, [0.8, 0.5, 0.6, 0.7]);
    // An older sidecar's single threshold holds for every class; the per-class one wins.
    let one = sidecar_with_decode(json!({"landmark_threshold": 0.65}));
    assert_eq!(
        CnnConfig::from_sidecar(&one).unwrap().landmark_thresholds,
        [0.65; 4]
    );
    let both = sidecar_with_decode(
        json!({"landmark_threshold": 0.65, "landmark_thresholds": [0.8, 0.5, 0.6, 0.7]}),
    );
    assert_eq!(
        CnnConfig::from_sidecar(&both).unwrap().landmark_thresholds,
        [0.8, 0.5, 0.6, 0.7]
    );
    // Out of range or the wrong number of classes: errors.
    let high = sidecar_with_decode(json!({"landmark_thresholds": [0.8, 1.5, 0.6, 0.7]}));
    let e = err_text(CnnConfig::from_sidecar(&high));
    assert!(e.contains("landmark threshold") && e.contains("1.5"), "{e}");
    let short = sidecar_with_decode(json!({"landmark_thresholds": [0.8, 0.5]}));
    assert!(CnnConfig::from_sidecar(&short).is_err());
}

#[test]
fn a_class_threshold_of_one_silences_that_class_only() {
    let frames = held_out_frames(1..=4, FRAMES_PER_SEED);
    let mut cnn = tract();
    let bone = cnn.config().bone_threshold;
    let radius = cnn.config().cross_class_radius_m;
    let mut det = FrameDetection::new();
    let mut count = |cnn: &mut CnnDetector| {
        let mut per_class = [0usize; 4];
        for l in &frames {
            let f = &l.frame;
            cnn.detect(&f.pixels, f.width, f.height, &mut det).unwrap();
            for d in det.landmarks() {
                per_class[d.class.index()] += 1;
            }
        }
        per_class
    };
    cnn.set_decoding(bone, [0.3; 4], radius).unwrap();
    let all = count(&mut cnn);
    assert!(all[0] > 0 && all[2] > 0, "{all:?}");
    // Heatmaps are sigmoids, below 1: a threshold of 1 keeps nothing of its class.
    cnn.set_decoding(bone, [0.3, 0.3, 1.0, 0.3], radius)
        .unwrap();
    let no_facets = count(&mut cnn);
    assert_eq!(no_facets[2], 0, "{no_facets:?}");
    assert!(
        no_facets[0] >= all[0] && no_facets[3] >= all[3],
        "{all:?} {no_facets:?}"
    );
    assert!(cnn
        .set_decoding(bone, [0.3, f32::NAN, 0.3, 0.3], radius)
        .is_err());
}

#[test]
fn a_second_backend_is_refused() {
    let _ = tract();
    let e = err_text(init_backend(&Backend::OnnxRuntime(PathBuf::from(
        "/nonexistent/libonnxruntime.so",
    ))));
    assert!(e.contains("already runs the tract"), "{e}");
    assert!(init_backend(&Backend::Tract).is_ok());
    assert!(Backend::from_name("cuda", None).is_err());
}

/// The ONNX Runtime library of the PyPI package, if installed.
fn onnxruntime_lib() -> Option<PathBuf> {
    let dir = python_output("import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))")?;
    telecho_perception::cnn::find_onnxruntime(None)
        .ok()
        .or_else(|| {
            std::fs::read_dir(PathBuf::from(dir).join("capi"))
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
        })
}

fn write_maps(cnn: &mut CnnDetector, frames: &[Labelled]) -> Vec<f32> {
    let mut all = Vec::new();
    for l in frames.iter().step_by(9) {
        let f = &l.frame;
        cnn.infer(&f.pixels, f.width, f.height).unwrap();
        all.extend_from_slice(cnn.bone_map());
        all.extend_from_slice(cnn.landmark_maps());
    }
    all
}

/// Child half of [`onnxruntime_gives_the_same_maps`]: runs only when the parent sets the output
/// file, in its own process.
#[test]
#[ignore = "run by onnxruntime_gives_the_same_maps in a child process"]
fn child_onnxruntime_maps() {
    let Some(out) = std::env::var_os(CHILD_OUT_VAR) else {
        return;
    };
    let backend = Backend::OnnxRuntime(telecho_perception::cnn::find_onnxruntime(None).unwrap());
    let version = init_backend(&backend).unwrap();
    assert!(version.starts_with("ONNX Runtime"), "{version}");
    let mut cnn = CnnDetector::bundled(&backend).unwrap();
    let maps = write_maps(&mut cnn, &held_out_frames(1..=2, FRAMES_PER_SEED));
    let bytes: Vec<u8> = maps.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn onnxruntime_gives_the_same_maps() {
    let Some(lib) = onnxruntime_lib() else {
        missing_peer(
            "ONNX Runtime (PyPI onnxruntime)",
            "python3 -m pip install onnxruntime==1.23.2",
        );
        return;
    };
    let out = telecho_testkit::scratch("cnn_ort.f32");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_onnxruntime_maps",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_OUT_VAR, &out)
        .env(telecho_perception::cnn::ORT_LIB_ENV, &lib)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "ONNX Runtime child failed ({})",
        lib.display()
    );
    let ort: Vec<f32> = std::fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    std::fs::remove_file(&out).ok();
    let tract = write_maps(&mut tract(), &held_out_frames(1..=2, FRAMES_PER_SEED));
    assert_eq!(ort.len(), tract.len());
    let max = ort
        .iter()
        .zip(&tract)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{} map values from ONNX Runtime ({}) vs tract: max |diff| {max:.2e}",
        ort.len(),
        lib.display()
    );
    assert!(max < 1e-4, "max |diff| {max}");
}
