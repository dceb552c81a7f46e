//! `telecho bench register`: US↔CBCT registration over many simulated patients.
//!
//! For each seed `first..first+patients`: the scan of `telecho scan --sim-seed N` runs in
//! process (placement ±50 mm / ±20° / ±2° tilt, breathing 2–5 mm, encoder noise; the sweep is
//! written to a temporary folder and read back as the perception node would), the patient's
//! CBCT is simulated as `telecho scan` does (0.8 mm voxels), and the CBCT is registered to the
//! sweep with no initial guess. Scored against the simulator's truth over the 40 CT landmarks
//! (`Phantom::landmarks`, exact), and over the 35 posterior ones:
//!
//! * TRE (mm) pooled over the landmarks of every accepted registration: median, p95, max;
//! * success: registered (not refused) with TRE max < 3 mm; a refusal whose estimate would have
//!   succeeded is a *wrong refusal*, an accepted registration with TRE max ≥ 3 mm a *false
//!   accept* (the dangerous case);
//! * runtime: compounding + registration after loading and CT preprocessing (wall, on
//!   `--threads` threads), and the CT preprocessing itself.
//!
//! Beside it, in the same run and on the same compounded points, the baseline: plain
//! point-to-point ICP from the nominal placement ([`baseline_icp`]).
//!
//! Exit code 1 when a target is missed (TRE median ≤ 1 mm, p95 ≤ 2 mm, success ≥ 98 %, median
//! runtime ≤ 1 s).

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;
use serde::Serialize;
use telecho_perception::ct_landmarks::CtLandmark;
use telecho_perception::registration::{baseline_icp, CtModel};
use telecho_perception::sweep::Sweep;
use telecho_sim::cbct::{simulate_cbct, CbctParams};
use telecho_sim::Phantom;

use super::register::{is_posterior, percentile, register_with, tre_mm, DetectorChoice, TreStats};
use crate::cli_error::CliError;
use crate::scan::{arm_name, record_sweep};
use crate::sim::Arm;
use crate::CliResult;

const TARGET_TRE_MEDIAN_MM: f64 = 1.0;
const TARGET_TRE_P95_MM: f64 = 2.0;
const TARGET_SUCCESS: f64 = 0.98;
const TARGET_RUNTIME_S: f64 = 1.0;
/// A registration succeeds when every landmark is within this (mm).
const SUCCESS_TRE_MM: f64 = 3.0;
/// Iterations of the baseline ICP.
const BASELINE_ITERATIONS: usize = 50;

#[derive(Debug, Args)]
pub(crate) struct BenchRegisterArgs {
    /// Number of simulated patients.
    #[arg(long, default_value_t = 50)]
    patients: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Which bundled arm holds the probe.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// Threads for detection and the search.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    seed: u64,
    scan_completed: bool,
    frames: usize,
    /// Imaging depth of the sweep (chosen per patient by the protocol's survey), m.
    imaging_depth_m: f64,
    refused: Option<String>,
    refusal_kind: Option<&'static str>,
    /// TRE of the estimate (also for a refused one, to judge the refusal), 40 landmarks.
    tre_median_mm: f64,
    tre_p95_mm: f64,
    tre_max_mm: f64,
    tre_posterior_max_mm: f64,
    success: bool,
    rmse_mm: f64,
    uncertainty_mm: f64,
    /// RMS TRE over the landmarks, to compare with `uncertainty_mm`.
    tre_rms_mm: f64,
    levels_seen: usize,
    level_ambiguity: f64,
    breathing_mm: f64,
    points: usize,
    runtime_s: f64,
    ct_preprocessing_s: f64,
    baseline_tre_median_mm: f64,
    baseline_tre_max_mm: f64,
    baseline_success: bool,
    baseline_runtime_s: f64,
    #[serde(skip)]
    tre: Vec<f64>,
    #[serde(skip)]
    tre_posterior: Vec<f64>,
    #[serde(skip)]
    baseline_tre: Vec<f64>,
    #[serde(skip)]
    baseline_tre_posterior: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct MethodSummary {
    tre_mm: TreStats,
    tre_posterior_mm: TreStats,
    success: usize,
    success_rate: f64,
    runtime_s_median: f64,
    runtime_s_p95: f64,
    runtime_s_max: f64,
}

#[derive(Debug, Serialize)]
struct Aggregate {
    patients: usize,
    registered: usize,
    refused: usize,
    /// Refused for too few bone points (e.g. a thick patient whose posterior elements lie beyond
    /// the imaging depth: only spinous tips, or nothing, in view).
    refused_too_few_points: usize,
    /// Success among the patients with enough bone in view (not refused for too few points).
    success_rate_with_bone_in_view: f64,
    wrong_refusals: usize,
    false_accepts: usize,
    uncertainty_over_tre_rms_median: f64,
    ct_preprocessing_s_median: f64,
    registration: MethodSummary,
    baseline: MethodSummary,
}

#[derive(Debug, Serialize)]
struct Targets {
    tre_median_mm: f64,
    tre_p95_mm: f64,
    success_rate: f64,
    success_tre_mm: f64,
    runtime_s: f64,
    met: bool,
}

#[derive(Debug, Serialize)]
struct Out {
    arm: &'static str,
    first_seed: u64,
    threads: usize,
    per_patient: Vec<Row>,
    aggregate: Aggregate,
    targets: Targets,
    wall_s: f64,
}

pub(crate) fn run(args: &BenchRegisterArgs) -> CliResult {
    if args.patients == 0 {
        return Err(CliError::input(anyhow!("--patients must be at least 1")));
    }
    if args.threads == 0 {
        return Err(CliError::input(anyhow!("--threads must be at least 1")));
    }
    let last = args
        .first_seed
        .checked_add(args.patients - 1)
        .ok_or_else(|| CliError::input(anyhow!("--first-seed + --patients overflows")))?;
    let tmp = std::env::temp_dir().join(format!("telecho-bench-register-{}", std::process::id()));
    let progress = std::io::stderr().is_terminal();
    let wall = Instant::now();
    let mut rows = Vec::new();
    for seed in args.first_seed..=last {
        let row = run_seed(args, seed, &tmp);
        let _ = std::fs::remove_dir_all(&tmp);
        let row = row?;
        if progress {
            eprint!(
                "\rbench register: seed {seed} ({}/{}) TRE max {:.2} mm{}   ",
                seed - args.first_seed + 1,
                args.patients,
                row.tre_max_mm,
                if row.refused.is_some() {
                    " (refused)"
                } else {
                    ""
                }
            );
        }
        rows.push(row);
    }
    if progress {
        eprintln!();
    }
    let out = summarise(args, rows, wall.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
    } else {
        print_table(&out);
    }
    if out.targets.met {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "targets missed (TRE median ≤ {TARGET_TRE_MEDIAN_MM} mm, p95 ≤ {TARGET_TRE_P95_MM} \
             mm, success (TRE max < {SUCCESS_TRE_MM} mm, not refused) ≥ {:.0} %, median \
             runtime ≤ {TARGET_RUNTIME_S} s)",
            TARGET_SUCCESS * 100.0
        )))
    }
}

fn run_seed(args: &BenchRegisterArgs, seed: u64, tmp: &std::path::Path) -> Result<Row, CliError> {
    let dir = tmp.join(format!("seed-{seed}"));
    let (report, truth, nominal) = record_sweep(args.arm, seed, &dir, 40)?;
    let sweep = Sweep::read(&dir).map_err(CliError::failed)?;
    let phantom = Phantom::generate(seed);
    let ct = simulate_cbct(&phantom, &CbctParams::default(), seed).map_err(CliError::failed)?;
    let t = Instant::now();
    let model = CtModel::from_volume(&ct).map_err(CliError::failed)?;
    let ct_preprocessing_s = t.elapsed().as_secs_f64();
    let landmarks: Vec<CtLandmark> = phantom
        .landmarks()
        .into_iter()
        .map(|l| CtLandmark {
            name: l.name,
            xyz_ct: l.xyz.into(),
            confidence: 1.0,
        })
        .collect();
    let posterior: Vec<CtLandmark> = landmarks
        .iter()
        .filter(|l| is_posterior(&l.name))
        .cloned()
        .collect();
    let outcome = register_with(&model, &sweep, DetectorChoice::Classical, args.threads);
    let mut row = Row {
        seed,
        scan_completed: report.completed,
        frames: sweep.frame_count(),
        imaging_depth_m: report.imaging.map_or(f64::NAN, |i| i.depth_m),
        refused: None,
        refusal_kind: None,
        tre_median_mm: f64::NAN,
        tre_p95_mm: f64::NAN,
        tre_max_mm: f64::NAN,
        tre_posterior_max_mm: f64::NAN,
        success: false,
        rmse_mm: f64::NAN,
        uncertainty_mm: f64::NAN,
        tre_rms_mm: f64::NAN,
        levels_seen: 0,
        level_ambiguity: f64::NAN,
        breathing_mm: f64::NAN,
        points: 0,
        runtime_s: f64::NAN,
        ct_preprocessing_s,
        baseline_tre_median_mm: f64::NAN,
        baseline_tre_max_mm: f64::NAN,
        baseline_success: false,
        baseline_runtime_s: f64::NAN,
        tre: Vec::new(),
        tre_posterior: Vec::new(),
        baseline_tre: Vec::new(),
        baseline_tre_posterior: Vec::new(),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let refusal = e
                .downcast_ref::<telecho_perception::Error>()
                .and_then(|e| e.refusal_reason())
                .map(str::to_owned);
            match refusal {
                Some(r) => {
                    row.refused = Some(r);
                    row.refusal_kind = Some("too_few_points");
                    return Ok(row);
                }
                None => return Err(CliError::failed(e.context(format!("seed {seed}")))),
            }
        }
    };
    let reg = &outcome.registration;
    row.tre = tre_mm(&truth, &reg.t_base_ct, &landmarks);
    row.tre_posterior = tre_mm(&truth, &reg.t_base_ct, &posterior);
    let stats = TreStats::of(&row.tre);
    row.tre_median_mm = stats.median;
    row.tre_p95_mm = stats.p95;
    row.tre_max_mm = stats.max;
    row.tre_rms_mm = stats.rms;
    row.tre_posterior_max_mm = TreStats::of(&row.tre_posterior).max;
    row.refused = reg.refusal.as_ref().map(|r| r.reason.clone());
    row.refusal_kind = reg.refusal.as_ref().map(|r| r.kind.name());
    row.success = row.refused.is_none() && stats.max < SUCCESS_TRE_MM;
    row.rmse_mm = reg.rmse_mm;
    row.uncertainty_mm = reg.uncertainty_mm;
    row.levels_seen = reg.levels_seen;
    row.level_ambiguity = reg.level_ambiguity;
    row.breathing_mm = reg
        .breathing
        .filter(|b| b.applied)
        .map_or(0.0, |b| b.amplitude_mm);
    row.points = reg.points_used;
    row.runtime_s = outcome.compound_s + outcome.register_s;

    // Baseline: point-to-point ICP from the nominal placement on the same points.
    let t = Instant::now();
    let cloud = outcome.compounded.cloud(None);
    let base = baseline_icp(&model, &cloud, &nominal, BASELINE_ITERATIONS);
    row.baseline_runtime_s = outcome.compound_s + t.elapsed().as_secs_f64();
    row.baseline_tre = tre_mm(&truth, &base, &landmarks);
    row.baseline_tre_posterior = tre_mm(&truth, &base, &posterior);
    let b = TreStats::of(&row.baseline_tre);
    row.baseline_tre_median_mm = b.median;
    row.baseline_tre_max_mm = b.max;
    row.baseline_success = b.max < SUCCESS_TRE_MM;
    Ok(row)
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn summarise(args: &BenchRegisterArgs, rows: Vec<Row>, wall_s: f64) -> Out {
    let n = rows.len();
    let accepted: Vec<&Row> = rows.iter().filter(|r| r.refused.is_none()).collect();
    let pooled: Vec<f64> = accepted
        .iter()
        .flat_map(|r| r.tre.iter().copied())
        .collect();
    let pooled_post: Vec<f64> = accepted
        .iter()
        .flat_map(|r| r.tre_posterior.iter().copied())
        .collect();
    let runtimes = sorted(rows.iter().map(|r| r.runtime_s));
    let success = rows.iter().filter(|r| r.success).count();
    let registration = MethodSummary {
        tre_mm: TreStats::of(&pooled),
        tre_posterior_mm: TreStats::of(&pooled_post),
        success,
        success_rate: success as f64 / n.max(1) as f64,
        runtime_s_median: percentile(&runtimes, 0.5),
        runtime_s_p95: percentile(&runtimes, 0.95),
        runtime_s_max: runtimes.last().copied().unwrap_or(f64::NAN),
    };
    let base_pooled: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.baseline_tre.iter().copied())
        .collect();
    let base_post: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.baseline_tre_posterior.iter().copied())
        .collect();
    let base_runtimes = sorted(rows.iter().map(|r| r.baseline_runtime_s));
    let base_success = rows.iter().filter(|r| r.baseline_success).count();
    let baseline = MethodSummary {
        tre_mm: TreStats::of(&base_pooled),
        tre_posterior_mm: TreStats::of(&base_post),
        success: base_success,
        success_rate: base_success as f64 / n.max(1) as f64,
        runtime_s_median: percentile(&base_runtimes, 0.5),
        runtime_s_p95: percentile(&base_runtimes, 0.95),
        runtime_s_max: base_runtimes.last().copied().unwrap_or(f64::NAN),
    };
    let ratio = sorted(
        accepted
            .iter()
            .map(|r| r.uncertainty_mm / r.tre_rms_mm.max(1e-9)),
    );
    let too_few = rows
        .iter()
        .filter(|r| r.refusal_kind == Some("too_few_points"))
        .count();
    let aggregate = Aggregate {
        patients: n,
        registered: accepted.len(),
        refused: n - accepted.len(),
        refused_too_few_points: too_few,
        success_rate_with_bone_in_view: success as f64 / (n - too_few).max(1) as f64,
        wrong_refusals: rows
            .iter()
            .filter(|r| r.refused.is_some() && r.tre_max_mm < SUCCESS_TRE_MM)
            .count(),
        false_accepts: accepted
            .iter()
            .filter(|r| r.tre_max_mm.is_nan() || r.tre_max_mm >= SUCCESS_TRE_MM)
            .count(),
        uncertainty_over_tre_rms_median: percentile(&ratio, 0.5),
        ct_preprocessing_s_median: percentile(
            &sorted(rows.iter().map(|r| r.ct_preprocessing_s)),
            0.5,
        ),
        registration,
        baseline,
    };
    let r = &aggregate.registration;
    let met = r.tre_mm.median <= TARGET_TRE_MEDIAN_MM
        && r.tre_mm.p95 <= TARGET_TRE_P95_MM
        && r.success_rate >= TARGET_SUCCESS
        && r.runtime_s_median <= TARGET_RUNTIME_S;
    Out {
        arm: arm_name(args.arm),
        first_seed: args.first_seed,
        threads: args.threads,
        per_patient: rows,
        aggregate,
        targets: Targets {
            tre_median_mm: TARGET_TRE_MEDIAN_MM,
            tre_p95_mm: TARGET_TRE_P95_MM,
            success_rate: TARGET_SUCCESS,
            success_tre_mm: SUCCESS_TRE_MM,
            runtime_s: TARGET_RUNTIME_S,
            met,
        },
        wall_s,
    }
}

fn print_table(o: &Out) {
    println!(
        "bench register: {} patients (seeds {}..={}), {}, {} threads",
        o.aggregate.patients,
        o.first_seed,
        o.first_seed + o.aggregate.patients as u64 - 1,
        o.arm,
        o.threads
    );
    println!(
        "{:>5} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>6} {:>8} {:>10} {:>10}  refusal",
        "seed",
        "TRE med",
        "TRE p95",
        "TRE max",
        "RMSE",
        "unc",
        "levels",
        "ambig",
        "time s",
        "base med",
        "base max"
    );
    for r in &o.per_patient {
        println!(
            "{:>5} {:>9.3} {:>9.3} {:>9.3} {:>7.3} {:>7.3} {:>6} {:>6.2} {:>8.3} {:>10.2} {:>10.2}  {}",
            r.seed,
            r.tre_median_mm,
            r.tre_p95_mm,
            r.tre_max_mm,
            r.rmse_mm,
            r.uncertainty_mm,
            r.levels_seen,
            r.level_ambiguity,
            r.runtime_s,
            r.baseline_tre_median_mm,
            r.baseline_tre_max_mm,
            r.refusal_kind.unwrap_or("")
        );
    }
    let a = &o.aggregate;
    for (name, m) in [("registration", &a.registration), ("baseline", &a.baseline)] {
        println!(
            "{name:<13} TRE median {:.3} mm, p95 {:.3} mm, max {:.3} mm (posterior: {:.3} / \
             {:.3} / {:.3}); success {}/{} ({:.1} %); runtime median {:.3} s, p95 {:.3} s, \
             max {:.3} s",
            m.tre_mm.median,
            m.tre_mm.p95,
            m.tre_mm.max,
            m.tre_posterior_mm.median,
            m.tre_posterior_mm.p95,
            m.tre_posterior_mm.max,
            m.success,
            a.patients,
            m.success_rate * 100.0,
            m.runtime_s_median,
            m.runtime_s_p95,
            m.runtime_s_max
        );
    }
    println!(
        "refused {} ({} for too few bone points, {} wrongly), false accepts {}, success with \
         bone in view {:.1} %, uncertainty / RMS TRE median {:.2}, CT preprocessing median \
         {:.2} s; targets {}",
        a.refused,
        a.refused_too_few_points,
        a.wrong_refusals,
        a.false_accepts,
        a.success_rate_with_bone_in_view * 100.0,
        a.uncertainty_over_tre_rms_median,
        a.ct_preprocessing_s_median,
        if o.targets.met { "met" } else { "MISSED" }
    );
}
