//! `telecho perception eval`: the CNN and the classical detector side by side on held-out
//! simulated patients.
//!
//! Every seed of `--seeds` is imaged from `--frames-per-seed` poses drawn exactly as the training
//! set's (`telecho_sim::dataset::poses_for_seed`); seeds 1–100 are never used for training
//! (`models/README.md`). Per detector:
//!
//! * **bone-surface Dice**: tolerant Dice (±2 px) of the detected surface (one pixel per column)
//!   against the simulator's `bone_mask`, pooled over all frames;
//! * **bone columns**: precision / recall of "this scanline meets bone" and the median depth
//!   error of the columns both call bone (mm);
//! * **landmarks**: precision / recall / F1 — a detection matches a visible true landmark of the
//!   same class within `--tolerance-mm` (3 mm), best score first; detections near a landmark
//!   that is in the frame but not fairly visible (`ignore`) count neither way — and the
//!   localisation error of the matches (median, 95th percentile, mm), overall and per class;
//! * mean wall time per frame (informational; `cargo bench -p telecho-perception --bench cnn`
//!   measures speed properly).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;
use serde::Serialize;
use telecho_perception::cnn::{init_backend, Backend, CnnDetector};
use telecho_perception::detect::{
    match_landmarks, tolerant_dice_counts, ClassicalDetector, Detector, FrameDetection,
    ImageGeometry, LandmarkClass, LandmarkMatches, TrueLandmark,
};
use telecho_sim::dataset::{
    ignored_landmarks, poses_for_seed, render_pose, visible_landmarks, LabelParams,
    PoseSamplerParams,
};
use telecho_sim::Phantom;

use super::dataset::parse_seeds;
use crate::cli_error::CliError;
use crate::CliResult;

/// Issue 5's detection targets.
const TARGET_F1: f64 = 0.9;
const TARGET_MEDIAN_MM: f64 = 1.5;

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// Held-out patient seeds, inclusive: `A..B` (e.g. `1..50`), `A..=B` or one seed. Models
    /// are trained on seeds 1000–3999 (validation 3800–3999); 1–100 are reserved for evaluation.
    #[arg(long)]
    seeds: String,
    /// Frames per patient.
    #[arg(long, default_value_t = 20)]
    frames_per_seed: usize,
    /// Inference backend of the CNN: `tract` (pure Rust) or `onnxruntime`.
    #[arg(long, default_value = "tract")]
    backend: String,
    /// ONNX Runtime shared library (`libonnxruntime.so.*`) for `--backend onnxruntime`; default
    /// `$TELECHO_ORT_LIB`, else the one of the PyPI `onnxruntime` package.
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// ONNX model (with its `.json` sidecar); default the bundled `models/bone_net.onnx`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Landmark match tolerance (mm).
    #[arg(long, default_value_t = 3.0)]
    tolerance_mm: f64,
    /// Override the CNN's landmark thresholds with this one for every class (default: the
    /// model sidecar's, per class).
    #[arg(long)]
    landmark_threshold: Option<f32>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize)]
struct ClassStats {
    class: &'static str,
    true_landmarks: usize,
    precision: f64,
    recall: f64,
    f1: f64,
    median_error_mm: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct DetectorStats {
    detector: &'static str,
    bone_dice: f64,
    bone_column_precision: f64,
    bone_column_recall: f64,
    bone_depth_error_median_mm: Option<f64>,
    landmark_precision: f64,
    landmark_recall: f64,
    landmark_f1: f64,
    landmark_error_median_mm: Option<f64>,
    landmark_error_p95_mm: Option<f64>,
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
    ignored_detections: usize,
    per_class: Vec<ClassStats>,
    mean_ms_per_frame: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    seeds: [u64; 2],
    frames: usize,
    frames_per_seed: usize,
    true_landmarks: usize,
    tolerance_mm: f64,
    backend: String,
    runtime: String,
    /// The CNN's landmark thresholds, per class (spinous tip, lamina, facet, transverse process).
    cnn_landmark_thresholds: [f32; 4],
    cnn: DetectorStats,
    classical: DetectorStats,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Targets {
    f1: f64,
    median_error_mm: f64,
    cnn_f1_met: bool,
    cnn_median_error_met: bool,
}

/// Running totals of one detector.
#[derive(Debug, Default)]
struct Acc {
    dice: (usize, usize),
    col_tp: usize,
    col_fp: usize,
    col_fn: usize,
    depth_err_mm: Vec<f64>,
    matches: LandmarkMatches,
    per_class: [LandmarkMatches; 4],
    seconds: f64,
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(s[((s.len() - 1) as f64 * q).round() as usize])
}

impl Acc {
    fn stats(&self, name: &'static str, frames: usize) -> DetectorStats {
        let (p, r, f1) = self.matches.precision_recall_f1();
        let err_mm: Vec<f64> = self.matches.errors_m.iter().map(|e| e.1 * 1e3).collect();
        let ratio = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 1.0 };
        DetectorStats {
            detector: name,
            bone_dice: ratio(self.dice.0, self.dice.1),
            bone_column_precision: ratio(self.col_tp, self.col_tp + self.col_fp),
            bone_column_recall: ratio(self.col_tp, self.col_tp + self.col_fn),
            bone_depth_error_median_mm: quantile(&self.depth_err_mm, 0.5),
            landmark_precision: p,
            landmark_recall: r,
            landmark_f1: f1,
            landmark_error_median_mm: quantile(&err_mm, 0.5),
            landmark_error_p95_mm: quantile(&err_mm, 0.95),
            true_positives: self.matches.true_positives,
            false_positives: self.matches.false_positives,
            false_negatives: self.matches.false_negatives,
            ignored_detections: self.matches.ignored,
            per_class: LandmarkClass::ALL
                .iter()
                .map(|c| {
                    let m = &self.per_class[c.index()];
                    let (p, r, f1) = m.precision_recall_f1();
                    let e: Vec<f64> = m.errors_m.iter().map(|e| e.1 * 1e3).collect();
                    ClassStats {
                        class: c.name(),
                        true_landmarks: m.true_positives + m.false_negatives,
                        precision: p,
                        recall: r,
                        f1,
                        median_error_mm: quantile(&e, 0.5),
                    }
                })
                .collect(),
            mean_ms_per_frame: if frames > 0 {
                self.seconds * 1e3 / frames as f64
            } else {
                0.0
            },
        }
    }
}

pub(crate) fn run(args: &EvalArgs) -> CliResult {
    let seeds = parse_seeds(&args.seeds)?;
    if args.frames_per_seed == 0 {
        return Err(CliError::input(anyhow!(
            "--frames-per-seed must be at least 1"
        )));
    }
    if !(args.tolerance_mm.is_finite() && args.tolerance_mm > 0.0) {
        return Err(CliError::input(anyhow!(
            "--tolerance-mm must be positive, got {}",
            args.tolerance_mm
        )));
    }
    let backend =
        Backend::from_name(&args.backend, args.ort_lib.as_deref()).map_err(CliError::input)?;
    let runtime = init_backend(&backend).map_err(CliError::failed)?;
    let mut cnn = match &args.model {
        Some(p) => CnnDetector::from_file(p, &backend),
        None => CnnDetector::bundled(&backend),
    }
    .map_err(CliError::input)?;
    if let Some(t) = args.landmark_threshold {
        let c = *cnn.config();
        cnn.set_decoding(c.bone_threshold, [t; 4], c.cross_class_radius_m)
            .map_err(CliError::input)?;
    }
    let geometry = cnn.config().geometry;
    let mut classical = ClassicalDetector::for_geometry(&geometry).map_err(CliError::failed)?;

    let sampler = PoseSamplerParams::default();
    let labels = LabelParams::default();
    let tol_m = args.tolerance_mm * 1e-3;
    let (first, last) = (*seeds.start(), *seeds.end());
    let mut accs = [Acc::default(), Acc::default()];
    let mut det = FrameDetection::new();
    let mut mask = Vec::new();
    let mut frames = 0usize;
    let mut true_landmarks = 0usize;
    for seed in seeds {
        let phantom = Arc::new(Phantom::generate(seed));
        let poses = poses_for_seed(&phantom, seed, args.frames_per_seed, &sampler)
            .map_err(CliError::failed)?;
        for pose in &poses {
            let frame = render_pose(&phantom, seed, pose).map_err(CliError::failed)?;
            if (frame.width, frame.height) != (geometry.width, geometry.height) {
                return Err(CliError::input(anyhow!(
                    "the model takes {} × {} frames; the simulator renders {} × {}",
                    geometry.width,
                    geometry.height,
                    frame.width,
                    frame.height
                )));
            }
            let visible = visible_landmarks(&frame, &phantom, &labels);
            let truth: Vec<TrueLandmark> = visible
                .iter()
                .filter_map(|l| {
                    Some(TrueLandmark {
                        class: LandmarkClass::from_index(l.class)?,
                        row: l.row,
                        col: l.col,
                    })
                })
                .collect();
            let ignore: Vec<TrueLandmark> = ignored_landmarks(&frame, &phantom, &visible, &labels)
                .iter()
                .filter_map(|l| {
                    Some(TrueLandmark {
                        class: LandmarkClass::from_index(l.class)?,
                        row: l.row,
                        col: l.col,
                    })
                })
                .collect();
            true_landmarks += truth.len();
            frames += 1;
            let detectors: [&mut dyn Detector; 2] = [&mut cnn, &mut classical];
            for (acc, d) in accs.iter_mut().zip(detectors) {
                let t0 = Instant::now();
                d.detect(&frame.pixels, frame.width, frame.height, &mut det)
                    .map_err(CliError::failed)?;
                acc.seconds += t0.elapsed().as_secs_f64();
                score_frame(
                    acc, &det, &frame, &truth, &ignore, &geometry, tol_m, &mut mask,
                )?;
            }
        }
    }
    let report = Report {
        seeds: [first, last],
        frames,
        frames_per_seed: args.frames_per_seed,
        true_landmarks,
        tolerance_mm: args.tolerance_mm,
        backend: backend.name().to_owned(),
        runtime,
        cnn_landmark_thresholds: cnn.config().landmark_thresholds,
        cnn: accs[0].stats("cnn", frames),
        classical: accs[1].stats("classical", frames),
        targets: Targets {
            f1: TARGET_F1,
            median_error_mm: TARGET_MEDIAN_MM,
            cnn_f1_met: false,
            cnn_median_error_met: false,
        },
    };
    let report = Report {
        targets: Targets {
            cnn_f1_met: report.cnn.landmark_f1 >= TARGET_F1,
            cnn_median_error_met: report
                .cnn
                .landmark_error_median_mm
                .is_some_and(|e| e <= TARGET_MEDIAN_MM),
            ..report.targets
        },
        ..report
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn score_frame(
    acc: &mut Acc,
    det: &FrameDetection,
    frame: &telecho_sim::UsFrame,
    truth: &[TrueLandmark],
    ignore: &[TrueLandmark],
    geometry: &ImageGeometry,
    tol_m: f64,
    mask: &mut Vec<u8>,
) -> Result<(), CliError> {
    let (w, h) = (frame.width, frame.height);
    mask.resize(w * h, 0);
    det.write_bone_mask(0, mask).map_err(CliError::failed)?;
    let (hits, total) = tolerant_dice_counts(mask, &frame.bone_mask, w, h, 2);
    acc.dice.0 += hits;
    acc.dice.1 += total;
    for c in 0..w {
        match (det.bone_depth_m(c), frame.bone_depth_m[c]) {
            (Some(d), Some(t)) => {
                acc.col_tp += 1;
                acc.depth_err_mm.push((d - t).abs() * 1e3);
            }
            (Some(_), None) => acc.col_fp += 1,
            (None, Some(_)) => acc.col_fn += 1,
            (None, None) => {}
        }
    }
    let m = match_landmarks(det.landmarks(), truth, ignore, geometry, tol_m);
    acc.matches.add(&m);
    for class in LandmarkClass::ALL {
        let dets: Vec<_> = det
            .landmarks()
            .iter()
            .filter(|l| l.class == class)
            .copied()
            .collect();
        let t: Vec<_> = truth.iter().filter(|l| l.class == class).copied().collect();
        let i: Vec<_> = ignore
            .iter()
            .filter(|l| l.class == class)
            .copied()
            .collect();
        acc.per_class[class.index()].add(&match_landmarks(&dets, &t, &i, geometry, tol_m));
    }
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"))
}

fn print_table(r: &Report) {
    println!(
        "perception eval: seeds {}–{}, {} frames ({} per seed), {} visible landmarks, match \
         tolerance {} mm, CNN on {}",
        r.seeds[0],
        r.seeds[1],
        r.frames,
        r.frames_per_seed,
        r.true_landmarks,
        r.tolerance_mm,
        r.runtime
    );
    println!(
        "{:<10} {:>9} {:>8} {:>8} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9} {:>8}",
        "detector",
        "bone Dice",
        "col P",
        "col R",
        "depth mm",
        "P",
        "R",
        "F1",
        "loc med",
        "loc p95",
        "ms/frame"
    );
    for s in [&r.cnn, &r.classical] {
        println!(
            "{:<10} {:>9.3} {:>8.3} {:>8.3} {:>9} {:>6.3} {:>6.3} {:>6.3} {:>9} {:>9} {:>8.2}",
            s.detector,
            s.bone_dice,
            s.bone_column_precision,
            s.bone_column_recall,
            opt(s.bone_depth_error_median_mm),
            s.landmark_precision,
            s.landmark_recall,
            s.landmark_f1,
            opt(s.landmark_error_median_mm),
            opt(s.landmark_error_p95_mm),
            s.mean_ms_per_frame
        );
    }
    println!("per class F1 (CNN / classical), CNN threshold:");
    for ((a, b), t) in r
        .cnn
        .per_class
        .iter()
        .zip(&r.classical.per_class)
        .zip(r.cnn_landmark_thresholds)
    {
        println!(
            "  {:<19} n {:>5}  {:.3} / {:.3}   loc median {} / {} mm   threshold {t:.2}",
            a.class,
            a.true_landmarks,
            a.f1,
            b.f1,
            opt(a.median_error_mm),
            opt(b.median_error_mm)
        );
    }
    println!(
        "targets (CNN): F1 ≥ {} {}, median localisation error ≤ {} mm {}",
        r.targets.f1,
        if r.targets.cnn_f1_met {
            "met"
        } else {
            "NOT met"
        },
        r.targets.median_error_mm,
        if r.targets.cnn_median_error_met {
            "met"
        } else {
            "NOT met"
        }
    );
}
