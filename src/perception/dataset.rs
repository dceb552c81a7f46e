//! `telecho perception dataset`: a labelled training set of simulated B-mode frames.
//!
//! For every seed of `--seeds`, the simulated patient of that seed (anatomy and speckle as
//! `telecho sim us --seed N`) is imaged from `--frames-per-seed` probe poses drawn by
//! `telecho_sim::dataset::poses_for_seed` (on the skin of the lumbar back, sagittal or transverse,
//! tilted up to 15°, pressed 1–6 mm in, one pose in ten lifted or pressed too lightly). Same
//! arguments, byte-identical files.
//!
//! # Files (all little-endian, frames in order seed-major)
//!
//! * `images.u8` — `count × height × width` bytes, the B-mode frames, row-major, row 0 at the
//!   probe face (depth grows with the row).
//! * `masks.u8` — `count × height × width` bytes: 1 on the row of the first bone surface of
//!   each coupled scanline that meets bone, 0 elsewhere (the simulator's `bone_mask`).
//! * `bone_rows.f32` — `count × width` `f32`: that surface's fractional row per column, NaN
//!   where the scanline meets no bone (or is not coupled).
//! * `labels.json` — geometry, class names and per frame: seed, pose, gain, contact and the
//!   visible landmarks (`class`, `name`, fractional `row`/`col`, `distance_to_plane_m`), visible
//!   as `telecho_sim::dataset::visible_landmarks` decides (within 2 mm of the plane, not
//!   shadowed, coupled, an apex or an end of the imaged bone surface), and the `ignore` list
//!   (`telecho_sim::dataset::ignored_landmarks`): landmarks of a class within 7 mm of the plane
//!   that are not visible, and spinous tips whose process's 20 mm tall end face the plane cuts,
//!   at the cut (a detector may or may not report them; the training loss and the evaluation
//!   neither reward nor punish a detection there).
//!
//! Read with numpy: `np.fromfile(d/"images.u8", np.uint8).reshape(count, height, width)`.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Args;
use serde::Serialize;
use telecho_sim::dataset::{
    ignored_landmarks, poses_for_seed, render_pose, visible_landmarks, LabelParams,
    LabelledLandmark, PoseSamplerParams, LANDMARK_CLASSES,
};
use telecho_sim::Phantom;

use crate::cli_error::CliError;
use crate::CliResult;

/// Identifies the layout of the files; bump when it changes.
pub(crate) const FORMAT: &str = "telecho-us-dataset/1";

#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// Patient seeds, inclusive: `A..B` (e.g. `1000..1199`), `A..=B` or a single seed.
    #[arg(long)]
    seeds: String,
    /// Frames per patient.
    #[arg(long, default_value_t = 30)]
    frames_per_seed: usize,
    /// Output folder (created if missing; existing dataset files are overwritten).
    #[arg(long)]
    out: PathBuf,
}

/// Parses an inclusive seed range `A..B`, `A..=B` or `A`.
pub(crate) fn parse_seeds(s: &str) -> Result<std::ops::RangeInclusive<u64>, CliError> {
    let bad = || {
        CliError::input(anyhow!(
            "--seeds {s:?}: expected an inclusive range A..B (or A..=B, or one seed A) of \
             non-negative integers with A ≤ B"
        ))
    };
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    let (a, b) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
        None => {
            let a = num(s)?;
            (a, a)
        }
    };
    if a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[derive(Debug, Serialize)]
struct LandmarkLabel {
    class: usize,
    name: String,
    row: f64,
    col: f64,
    distance_to_plane_m: f64,
}

#[derive(Debug, Serialize)]
struct FrameLabel {
    seed: u64,
    index: usize,
    plane: &'static str,
    level: usize,
    indentation_m: f64,
    tilt_deg: f64,
    gain_db: f64,
    contact: bool,
    contact_fraction: f64,
    /// Probe → ct, 4×4 row-major, metres.
    t_ct_probe: [[f64; 4]; 4],
    landmarks: Vec<LandmarkLabel>,
    /// Landmarks of a class within 7 mm of the plane that are not visible (off the plane,
    /// shadowed, uncoupled, off the imaged surface or not a feature of it): neither to be found
    /// nor to be punished.
    ignore: Vec<LandmarkLabel>,
}

#[derive(Debug, Serialize)]
struct Labels<'a> {
    format: &'static str,
    command: String,
    files: [&'static str; 3],
    count: usize,
    width: usize,
    height: usize,
    lateral_spacing_m: f64,
    axial_spacing_m: f64,
    classes: [&'static str; 4],
    seeds: [u64; 2],
    frames_per_seed: usize,
    generator: &'a str,
    frames: Vec<FrameLabel>,
}

pub(crate) fn run(args: &DatasetArgs) -> CliResult {
    let seeds = parse_seeds(&args.seeds)?;
    if args.frames_per_seed == 0 {
        return Err(CliError::input(anyhow!(
            "--frames-per-seed must be at least 1"
        )));
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))
        .map_err(CliError::input)?;
    write_dataset(&args.out, seeds, args.frames_per_seed).map_err(CliError::failed)
}

fn create(dir: &Path, name: &str) -> anyhow::Result<BufWriter<File>> {
    let path = dir.join(name);
    let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::new(f))
}

fn write_dataset(
    out: &Path,
    seeds: std::ops::RangeInclusive<u64>,
    frames_per_seed: usize,
) -> anyhow::Result<()> {
    let mut images = create(out, "images.u8")?;
    let mut masks = create(out, "masks.u8")?;
    let mut rows = create(out, "bone_rows.f32")?;
    let sampler = PoseSamplerParams::default();
    let label_params = LabelParams::default();
    let (first, last) = (*seeds.start(), *seeds.end());
    let n_seeds = last - first + 1;
    let progress = std::io::stderr().is_terminal();
    let mut frames = Vec::new();
    let mut geometry = None;
    let mut n_landmarks = 0usize;
    for (i, seed) in seeds.enumerate() {
        let phantom = Arc::new(Phantom::generate(seed));
        let names = phantom.landmarks();
        let poses = poses_for_seed(&phantom, seed, frames_per_seed, &sampler)?;
        for (index, pose) in poses.iter().enumerate() {
            let frame = render_pose(&phantom, seed, pose)?;
            geometry.get_or_insert((
                frame.width,
                frame.height,
                frame.lateral_spacing_m,
                frame.axial_spacing_m,
            ));
            images.write_all(&frame.pixels)?;
            masks.write_all(&frame.bone_mask)?;
            for d in &frame.bone_depth_m {
                let r = d.map_or(f32::NAN, |d| (d / frame.axial_spacing_m) as f32);
                rows.write_all(&r.to_le_bytes())?;
            }
            let visible = visible_landmarks(&frame, &phantom, &label_params);
            let label = |l: &LabelledLandmark| LandmarkLabel {
                class: l.class,
                name: names
                    .get(l.index)
                    .map_or_else(|| "?".to_owned(), |n| n.name.clone()),
                row: l.row,
                col: l.col,
                distance_to_plane_m: l.distance_to_plane_m,
            };
            let landmarks: Vec<LandmarkLabel> = visible.iter().map(label).collect();
            let ignore: Vec<LandmarkLabel> =
                ignored_landmarks(&frame, &phantom, &visible, &label_params)
                    .iter()
                    .map(label)
                    .collect();
            n_landmarks += landmarks.len();
            frames.push(FrameLabel {
                seed,
                index,
                plane: pose.plane.name(),
                level: pose.level,
                indentation_m: pose.indentation_m,
                tilt_deg: pose.tilt_deg,
                gain_db: pose.gain_db,
                contact: frame.contact,
                contact_fraction: frame.contact_fraction,
                t_ct_probe: pose.t_ct_probe.to_rows(),
                landmarks,
                ignore,
            });
        }
        if progress {
            eprint!("\rdataset: seed {seed} ({}/{n_seeds})", i + 1);
        }
    }
    if progress {
        eprintln!();
    }
    for w in [&mut images, &mut masks, &mut rows] {
        w.flush()?;
    }
    let (width, height, lateral_spacing_m, axial_spacing_m) =
        geometry.ok_or_else(|| anyhow!("no frames were rendered"))?;
    let labels = Labels {
        format: FORMAT,
        command: format!(
            "telecho perception dataset --seeds {first}..{last} --frames-per-seed {frames_per_seed}"
        ),
        files: ["images.u8", "masks.u8", "bone_rows.f32"],
        count: frames.len(),
        width,
        height,
        lateral_spacing_m,
        axial_spacing_m,
        classes: LANDMARK_CLASSES,
        seeds: [first, last],
        frames_per_seed,
        generator: concat!("telecho ", env!("CARGO_PKG_VERSION")),
        frames,
    };
    let mut w = create(out, "labels.json")?;
    serde_json::to_writer(&mut w, &labels)?;
    w.flush()?;
    eprintln!(
        "wrote {} frames ({} × {} px) with {n_landmarks} visible landmarks to {}",
        labels.count,
        width,
        height,
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seeds("1..50").unwrap(), 1..=50);
        assert_eq!(parse_seeds("1000..=1199").unwrap(), 1000..=1199);
        assert_eq!(parse_seeds("7").unwrap(), 7..=7);
        assert!(parse_seeds("5..1").is_err());
        assert!(parse_seeds("a..b").is_err());
        assert!(parse_seeds("-1..3").is_err());
    }
}
