//! `telecho perception register`: registers the patient's CBCT to a tracked ultrasound sweep.
//!
//! ```text
//! telecho perception register --ct DIR/ct.nii.gz --sweep DIR --json [--ground-truth DIR/ground_truth.json]
//! ```
//!
//! Prints one JSON object (with `--json`; a summary otherwise):
//!
//! * `t_base_ct` — 4×4 row-major, metres: the CT in the robot's base frame, at rest (end of
//!   expiration when breathing was compensated);
//! * `rmse_mm`, `uncertainty_mm` (expected RMS target registration error over the CT
//!   landmarks), `runtime_s` (compounding + registration, after loading and CT preprocessing;
//!   `timing` splits the whole run);
//! * `landmarks` — the CT landmarks in the base frame: `name`, `xyz` (m, with `t_base_ct`),
//!   `confidence`, `uncertainty_mm`, and `xyz_vertebra` (with the vertebra's own refined pose
//!   when its level was refined);
//! * diagnostics: `levels` (per-vertebra refinement), `levels_seen`, `level_ambiguity`,
//!   `breathing`, `inlier_fraction`, `points_used`, `starts_tried`, …;
//! * with `--ground-truth FILE` (the evaluator's `ground_truth.json`, never read otherwise):
//!   `tre_mm` — `median`, `p95`, `max`, `rms` and `per_landmark` of `|t_true·x − t_est·x|` over the
//!   CT landmarks (`landmarks.json` beside the ground truth when it is there — the simulator's
//!   exact ones —, else the detected ones), and `posterior` the same over the 35 posterior
//!   landmarks (no body centres).
//!
//! The CT landmarks come from [`telecho_perception::ct_landmarks`] (detected in the CBCT), or
//! from `--landmarks FILE` (a planning file in the `landmarks.json` format). Registration itself
//! never uses landmarks: it matches bone surfaces.
//!
//! Exit codes: 0 registered; 1 refused (too few bone points, too few vertebrae seen, an
//! ambiguous vertebral level, a poor fit), with the reason on one line and nothing on stdout;
//! 2 bad input (missing or corrupt CT or sweep, bad arguments).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use telecho_core::Transform;
use telecho_perception::ct_landmarks::CtLandmark;
use telecho_perception::pipeline::{self, DetectorKind, RegistrationReport};
pub(crate) use telecho_perception::pipeline::{Outcome, Timing};
use telecho_perception::registration::{transform_from_rows, CtModel};
use telecho_perception::sweep::Sweep;

use crate::cli_error::CliError;
use crate::CliResult;

/// Which per-frame detector compounds the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DetectorChoice {
    /// Bright ridge + acoustic shadow (fast; the default).
    Classical,
    /// The bundled CNN (`models/`), through `ort` with the tract backend.
    Cnn,
}

impl From<DetectorChoice> for DetectorKind {
    fn from(d: DetectorChoice) -> Self {
        match d {
            DetectorChoice::Classical => DetectorKind::Classical,
            DetectorChoice::Cnn => DetectorKind::Cnn,
        }
    }
}

/// [`telecho_perception::pipeline::register_with`] with the command line's detector choice.
pub(crate) fn register_with(
    model: &CtModel,
    sweep: &Sweep,
    detector: DetectorChoice,
    threads: usize,
) -> anyhow::Result<Outcome> {
    Ok(pipeline::register_with(
        model,
        sweep,
        detector.into(),
        threads,
    )?)
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The patient's CBCT: NIfTI (.nii, .nii.gz) or a DICOM series directory.
    #[arg(long, value_name = "FILE")]
    ct: PathBuf,
    /// The tracked sweep: the `telecho scan` output directory or its `sweep/` folder.
    #[arg(long, value_name = "DIR")]
    sweep: PathBuf,
    /// Print one JSON object on stdout instead of a summary.
    #[arg(long)]
    json: bool,
    /// Evaluator only: `ground_truth.json` of the scan, to report the target registration error.
    #[arg(long, value_name = "FILE")]
    ground_truth: Option<PathBuf>,
    /// CT landmarks to report (a `landmarks.json`-format planning file) instead of the ones
    /// detected in the CBCT.
    #[arg(long, value_name = "FILE")]
    landmarks: Option<PathBuf>,
    /// Per-frame bone detector.
    #[arg(long, value_enum, default_value_t = DetectorChoice::Classical)]
    detector: DetectorChoice,
    /// Threads for detection and the search (≥ 1).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Target registration error statistics, mm.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TreStats {
    pub(crate) median: f64,
    pub(crate) p95: f64,
    pub(crate) max: f64,
    pub(crate) rms: f64,
    pub(crate) count: usize,
}

impl TreStats {
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                p95: f64::NAN,
                max: f64::NAN,
                rms: f64::NAN,
                count: 0,
            };
        }
        Self {
            median: percentile(&v, 0.5),
            p95: percentile(&v, 0.95),
            max: v[n - 1],
            rms: (v.iter().map(|x| x * x).sum::<f64>() / n as f64).sqrt(),
            count: n,
        }
    }
}

/// Linear-interpolated percentile of sorted values.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let x = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = x.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (x - lo as f64)
}

/// TRE of `estimate` against `truth` at the CT landmarks, mm, in order.
pub(crate) fn tre_mm(
    truth: &Transform,
    estimate: &Transform,
    landmarks: &[CtLandmark],
) -> Vec<f64> {
    landmarks
        .iter()
        .map(|l| {
            (truth.transform_point(&l.xyz_ct) - estimate.transform_point(&l.xyz_ct)).norm() * 1e3
        })
        .collect()
}

/// Body centres are not on the posterior surface.
pub(crate) fn is_posterior(name: &str) -> bool {
    !name.ends_with("body_centre")
}

#[derive(Debug, Serialize)]
struct TreLandmark {
    name: String,
    tre_mm: f64,
}

#[derive(Debug, Serialize)]
struct TreOut {
    median: f64,
    p95: f64,
    max: f64,
    rms: f64,
    count: usize,
    per_landmark: Vec<TreLandmark>,
    posterior: TreStats,
    landmarks_source: &'static str,
}

/// What `perception register --json` prints: the registration, and the TRE with
/// `--ground-truth`.
#[derive(Debug, Serialize)]
struct RegisterOut {
    #[serde(flatten)]
    report: RegistrationReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    tre_mm: Option<TreOut>,
}

#[derive(serde::Deserialize)]
struct LandmarkFileEntry {
    name: String,
    xyz: [f64; 3],
    #[serde(default)]
    confidence: Option<f64>,
}

#[derive(serde::Deserialize)]
struct LandmarkFile {
    landmarks: Vec<LandmarkFileEntry>,
}

/// Reads a `landmarks.json`-format file.
pub(crate) fn read_landmarks(path: &Path) -> anyhow::Result<Vec<CtLandmark>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: LandmarkFile = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a landmarks file", path.display()))?;
    let out: Vec<CtLandmark> = file
        .landmarks
        .into_iter()
        .map(|l| CtLandmark {
            name: l.name,
            xyz_ct: l.xyz.into(),
            confidence: l.confidence.unwrap_or(1.0),
        })
        .collect();
    if out.iter().any(|l| !l.xyz_ct.iter().all(|v| v.is_finite())) {
        return Err(anyhow!("{}: a landmark is not finite", path.display()));
    }
    Ok(out)
}

/// `t_base_ct` of a `ground_truth.json`.
pub(crate) fn read_ground_truth(path: &Path) -> anyhow::Result<Transform> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let rows = v
        .get("t_base_ct")
        .ok_or_else(|| anyhow!("{} has no t_base_ct", path.display()))?;
    let m: [[f64; 4]; 4] = serde_json::from_value(rows.clone())
        .with_context(|| format!("{}: t_base_ct is not a 4×4 array", path.display()))?;
    transform_from_rows(&m).with_context(|| format!("{}: t_base_ct", path.display()))
}

pub(crate) fn run(args: &RegisterArgs) -> CliResult {
    if args.threads == 0 {
        return Err(CliError::input(anyhow!("--threads must be at least 1")));
    }
    let mut timing = Timing::default();
    let t = Instant::now();
    let ct = telecho_perception::ct_load::load_ct(&args.ct)
        .map_err(|e| CliError::input(anyhow!("--ct {}: {e}", args.ct.display())))?;
    timing.load_ct_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let sweep = Sweep::read(&args.sweep).map_err(CliError::input)?;
    timing.read_sweep_s = t.elapsed().as_secs_f64();
    let truth = args
        .ground_truth
        .as_deref()
        .map(read_ground_truth)
        .transpose()
        .map_err(CliError::input)?;
    let planned = args
        .landmarks
        .as_deref()
        .map(read_landmarks)
        .transpose()
        .map_err(CliError::input)?;
    let t = Instant::now();
    let mut model = CtModel::from_volume(&ct).map_err(|e| {
        CliError::input(anyhow!(
            "--ct {}: no usable bone surface: {e}",
            args.ct.display()
        ))
    })?;
    if let Some(note) = &model.spine_note {
        tracing::warn!("{note}");
    }
    let landmarks_source = if let Some(l) = planned {
        model.set_landmarks(l);
        "file"
    } else {
        "detected"
    };
    timing.ct_preprocessing_s = t.elapsed().as_secs_f64();
    let outcome = register_with(&model, &sweep, args.detector, args.threads).map_err(|e| {
        if e.downcast_ref::<telecho_perception::Error>()
            .and_then(|e| e.refusal_reason())
            .is_some()
        {
            CliError::failed(e)
        } else {
            CliError::input(e)
        }
    })?;
    timing.compound_s = outcome.compound_s;
    timing.register_s = outcome.register_s;
    let reg = &outcome.registration;
    if let Some(r) = &reg.refusal {
        return Err(CliError::failed(anyhow!(
            "registration refused: {}",
            r.reason
        )));
    }
    let tre = truth.map(|truth| {
        // The evaluator's exact landmarks when they sit beside the ground truth.
        let beside = args
            .ground_truth
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("landmarks.json"))
            .filter(|p| p.is_file())
            .and_then(|p| read_landmarks(&p).ok());
        let (lms, source) = match beside {
            Some(l) => (l, "landmarks.json"),
            None => (model.landmarks().to_vec(), "detected"),
        };
        let errors = tre_mm(&truth, &reg.t_base_ct, &lms);
        let all = TreStats::of(&errors);
        let posterior: Vec<f64> = lms
            .iter()
            .zip(&errors)
            .filter(|(l, _)| is_posterior(&l.name))
            .map(|(_, e)| *e)
            .collect();
        TreOut {
            median: all.median,
            p95: all.p95,
            max: all.max,
            rms: all.rms,
            count: all.count,
            per_landmark: lms
                .iter()
                .zip(&errors)
                .map(|(l, e)| TreLandmark {
                    name: l.name.clone(),
                    tre_mm: *e,
                })
                .collect(),
            posterior: TreStats::of(&posterior),
            landmarks_source: source,
        }
    });
    let out = RegisterOut {
        report: pipeline::report(&outcome, timing, landmarks_source),
        tre_mm: tre,
    };
    if args.json {
        println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
    } else {
        print_summary(&out);
    }
    Ok(())
}

fn print_summary(out: &RegisterOut) {
    let o = &out.report;
    println!(
        "registered: RMSE {:.2} mm, uncertainty {:.2} mm, {} vertebrae seen, level ambiguity \
         {:.2}, {} points from {} frames, {:.3} s",
        o.rmse_mm,
        o.uncertainty_mm,
        o.levels_seen,
        o.level_ambiguity,
        o.points_used,
        o.frames_used,
        o.runtime_s
    );
    println!("t_base_ct:");
    for row in &o.t_base_ct {
        println!(
            "  [{:>9.5} {:>9.5} {:>9.5} {:>9.5}]",
            row[0], row[1], row[2], row[3]
        );
    }
    if let Some(b) = &o.breathing {
        println!(
            "breathing: {:.1} mm at {:.3} Hz ({}compensated)",
            b.amplitude_mm,
            b.frequency_hz,
            if b.applied { "" } else { "not " }
        );
    }
    for l in &o.levels {
        println!(
            "  {}: {} points, RMSE {:.2} mm, moved {:.2} mm / {:.2}°",
            l.name, l.points, l.rmse_mm, l.shift_mm, l.rotation_deg
        );
    }
    if let Some(t) = &out.tre_mm {
        println!(
            "TRE over {} landmarks: median {:.2} mm, p95 {:.2} mm, max {:.2} mm",
            t.count, t.median, t.p95, t.max
        );
    }
}
