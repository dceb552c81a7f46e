//! `telecho perception fuse`: the CBCT resliced along one sweep frame's plane, overlaid on the
//! ultrasound frame, written as a PNG.
//!
//! ```text
//! telecho perception fuse --ct DIR/ct.nii.gz --sweep DIR --frame K --out overlay.png
//!                         [--t-base-ct FILE | --registration FILE] [--layout side-by-side] [--json]
//! ```
//!
//! Where the CT sits in the robot's base frame (`t_base_ct`):
//!
//! * by default it is found by registering the CBCT to the sweep, exactly as
//!   `telecho perception register` does (a refusal exits 1 with its reason);
//! * `--t-base-ct FILE` (alias `--registration FILE`) takes it from a JSON file with a
//!   `t_base_ct` member (4×4 row-major, metres): the output of `telecho perception register
//!   --json`, or an evaluator's `ground_truth.json`.
//!
//! The pixel `(row, col)` of frame `K` is sampled in the CT at
//! `t_ct_base · t_base_probe(K) · t_probe_image · [col, row, 0, 1]ᵀ` (`t_base_probe` the frame's
//! recorded pose). The overlay shows the ultrasound in grey, CT bone (≥ 150 HU) in translucent
//! orange and, in yellow, the first CT bone surface along each scanline — where the ultrasound
//! should show the bone echo. `--json` prints a summary: where `t_base_ct` came from, the
//! frame, the reslice's coverage and the per-column agreement between the CT surface and the
//! bone echo the classical detector finds in the frame.
//!
//! Exit codes: 0 written; 1 the registration refused; 2 bad input (missing or corrupt files,
//! a frame out of range, an unwritable output).

use std::path::PathBuf;

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use serde::Serialize;
use telecho_core::Transform;
use telecho_perception::fuse::{fuse_frame, write_png, FuseParams, Layout};
use telecho_perception::registration::CtModel;
use telecho_perception::sweep::Sweep;
use telecho_perception::us_bone::{detect_bone, BoneDetection, UsBoneParams};

use super::register::{read_ground_truth, register_with, DetectorChoice};
use crate::cli_error::CliError;
use crate::CliResult;

/// Image layout of the PNG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LayoutChoice {
    /// The ultrasound with the CT bone over it.
    Overlay,
    /// The CT reslice (bone window) left, the overlay right.
    SideBySide,
}

#[derive(Debug, Args)]
pub(crate) struct FuseArgs {
    /// The patient's CBCT: NIfTI (.nii, .nii.gz), a DICOM series directory or one of its files.
    #[arg(long, value_name = "FILE")]
    ct: PathBuf,
    /// The tracked sweep: the `telecho scan` output directory or its `sweep/` folder.
    #[arg(long, value_name = "DIR")]
    sweep: PathBuf,
    /// Index of the sweep frame to fuse (0-based).
    #[arg(long, value_name = "K")]
    frame: usize,
    /// The PNG to write.
    #[arg(long, value_name = "PNG")]
    out: PathBuf,
    /// Take t_base_ct from this JSON file (a `t_base_ct` member, 4×4 row-major, metres: the
    /// register command's output or ground_truth.json) instead of registering.
    #[arg(long, value_name = "FILE", visible_alias = "registration")]
    t_base_ct: Option<PathBuf>,
    /// Image layout.
    #[arg(long, value_enum, default_value_t = LayoutChoice::Overlay)]
    layout: LayoutChoice,
    /// Per-frame detector for the registration (when it runs).
    #[arg(long, value_enum, default_value_t = DetectorChoice::Classical)]
    detector: DetectorChoice,
    /// Threads for the registration (≥ 1).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct FuseOut {
    out: String,
    frame: usize,
    frames_in_sweep: usize,
    width: usize,
    height: usize,
    t_base_ct: [[f64; 4]; 4],
    t_base_ct_source: &'static str,
    /// Share of the frame's pixels inside the CT volume.
    coverage: f64,
    /// Columns where both the CT surface and the ultrasound bone echo were found.
    columns_compared: usize,
    /// Median |CT surface depth − detected echo depth| over those columns, mm.
    median_surface_offset_mm: Option<f64>,
}

pub(crate) fn run(args: &FuseArgs) -> CliResult {
    if args.threads == 0 {
        return Err(CliError::input(anyhow!("--threads must be at least 1")));
    }
    let ct = telecho_perception::ct_load::load_ct(&args.ct)
        .map_err(|e| CliError::input(anyhow!("--ct {}: {e}", args.ct.display())))?;
    let sweep = Sweep::read(&args.sweep).map_err(CliError::input)?;
    let n = sweep.frame_count();
    if args.frame >= n {
        return Err(CliError::input(anyhow!(
            "--frame {} is out of range: the sweep in {} has {n} frames (0..{})",
            args.frame,
            args.sweep.display(),
            n.saturating_sub(1)
        )));
    }
    let (t_base_ct, source): (Transform, &'static str) = match &args.t_base_ct {
        Some(path) => (read_ground_truth(path).map_err(CliError::input)?, "file"),
        None => {
            let model = CtModel::from_volume(&ct).map_err(|e| {
                CliError::input(anyhow!(
                    "--ct {}: no usable bone surface: {e}",
                    args.ct.display()
                ))
            })?;
            let outcome = register_with(&model, &sweep, args.detector, args.threads)
                .map_err(CliError::input)?;
            let reg = outcome.registration;
            if let Some(r) = &reg.refusal {
                return Err(CliError::failed(anyhow!(
                    "registration refused: {} (give --t-base-ct FILE to fuse with a known pose)",
                    r.reason
                )));
            }
            (reg.t_base_ct, "registration")
        }
    };
    let params = FuseParams {
        layout: match args.layout {
            LayoutChoice::Overlay => Layout::Overlay,
            LayoutChoice::SideBySide => Layout::SideBySide,
        },
        ..FuseParams::default()
    };
    let (reslice, image) =
        fuse_frame(&ct, &sweep, args.frame, &t_base_ct, &params).map_err(CliError::input)?;
    write_png(&args.out, &image).map_err(CliError::input)?;
    if args.json {
        let [lateral, axial] = sweep.pixel_spacing_m();
        let us_params = UsBoneParams {
            axial_spacing_m: axial,
            lateral_spacing_m: lateral,
            ..UsBoneParams::default()
        };
        let mut det = BoneDetection::new();
        let pixels = sweep.frame_pixels(args.frame).unwrap_or_default();
        let mut offsets: Vec<f64> = Vec::new();
        if detect_bone(pixels, sweep.width(), sweep.height(), &us_params, &mut det).is_ok() {
            for col in 0..sweep.width() {
                if let (Some(us), Some(ct)) = (
                    det.depth_m(col),
                    reslice.first_crossing_depth_m(col, params.surface_hu),
                ) {
                    offsets.push((ct - us).abs() * 1e3);
                }
            }
        }
        offsets.sort_by(f64::total_cmp);
        let out = FuseOut {
            out: args.out.display().to_string(),
            frame: args.frame,
            frames_in_sweep: n,
            width: image.width,
            height: image.height,
            t_base_ct: t_base_ct.to_rows(),
            t_base_ct_source: source,
            coverage: reslice.coverage(),
            columns_compared: offsets.len(),
            median_surface_offset_mm: (!offsets.is_empty()).then(|| offsets[offsets.len() / 2]),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| CliError::failed(anyhow!(e)))?
        );
    }
    Ok(())
}
