//! `telecho igtl serve`: an OpenIGTLink server that streams a tracked sweep recorded by
//! `telecho scan` to 3D Slicer (OpenIGTLinkIF / SlicerIGT) or any OpenIGTLink client.
//!
//! ```text
//! telecho igtl serve --listen 127.0.0.1:18944 --sweep DIR [--landmarks FILE] [--rate-hz 25]
//!                    [--loop] [--frames N] [--base-to-lps prone|identity|r11,r12,…,r33]
//! ```
//!
//! Waits for `--wait-clients` clients (default 1), then sends STATUS OK, the landmarks as POINT
//! (when given), and per frame a TRANSFORM `ProbeToReference` and an IMAGE `Image_Reference`
//! (see `telecho_igtl::stream`), at `--rate-hz` (0: as fast as possible); at the end a STATUS with
//! the count. Units and frames at this boundary: millimetres and LPS (`telecho_igtl::convert`).
//! Prints `listening ADDR` on the first line of stdout, and one JSON summary line at the end.
//!
//! `--landmarks FILE` is the JSON that `telecho perception register --json` prints: its
//! `landmarks` (name, xyz in base metres). The simulator's `ground_truth.json` is never read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use telecho_igtl::stream::{status_message, Frame, Landmark, SweepGeometry};
use telecho_igtl::{status_code, BaseToLps, Server, ServerConfig, Timestamp};
use telecho_perception::sweep::Sweep;

use crate::cli_error::CliError;
use crate::CliResult;

#[derive(Debug, Subcommand)]
pub(crate) enum IgtlCommand {
    /// Stream a tracked sweep (`telecho scan --out DIR`) over OpenIGTLink: probe pose
    /// (TRANSFORM), ultrasound frames (IMAGE), landmarks (POINT) and STATUS, in mm and LPS.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (OpenIGTLink's usual port is 18944; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18944")]
    listen: String,
    /// The scan output directory of `telecho scan --out DIR`, or its `sweep/` subdirectory.
    #[arg(long, value_name = "DIR")]
    sweep: PathBuf,
    /// Landmarks in the robot base frame: the JSON of `telecho perception register --json`.
    #[arg(long, value_name = "FILE")]
    landmarks: Option<PathBuf>,
    /// Frames per second sent (0: as fast as possible; a client that reads too slowly loses
    /// frames rather than slowing the others).
    #[arg(long, value_name = "F", default_value_t = 25.0)]
    rate_hz: f64,
    /// Start over at the first frame after the last one (until --frames or Ctrl-C).
    #[arg(long = "loop")]
    repeat: bool,
    /// Stop after sending this many frames.
    #[arg(long, value_name = "N")]
    frames: Option<usize>,
    /// Start streaming once this many clients are connected.
    #[arg(long, value_name = "N", default_value_t = 1)]
    wait_clients: usize,
    /// Give up (exit code 1) when the clients have not connected within this many seconds
    /// (0: wait for ever).
    #[arg(long, value_name = "S", default_value_t = 0.0)]
    wait_timeout_s: f64,
    /// Rotation from the robot base axes to LPS: `prone` (the simulator's nominal prone patient:
    /// base x/y/z = right/superior/posterior), `identity`, or 9 comma-separated numbers (row-major).
    #[arg(long, value_name = "R", default_value = "prone")]
    base_to_lps: String,
}

#[derive(serde::Deserialize)]
struct LandmarkEntry {
    name: String,
    xyz: [f64; 3],
}

/// Reads the landmarks of a `telecho perception register --json` output (base frame, m).
fn read_landmarks(path: &Path) -> anyhow::Result<Vec<Landmark>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if v.get("t_base_ct").is_none() {
        bail!(
            "{} has no `t_base_ct`: it is not the output of `telecho perception register --json` \
             (a `landmarks.json` of the CT is in the CT frame, not the robot base)",
            path.display()
        );
    }
    let entries: Vec<LandmarkEntry> = serde_json::from_value(
        v.get("landmarks")
            .cloned()
            .ok_or_else(|| anyhow!("{} has no `landmarks` array", path.display()))?,
    )
    .with_context(|| format!("{}: malformed `landmarks`", path.display()))?;
    entries
        .into_iter()
        .map(|e| {
            if e.xyz.iter().any(|x| !x.is_finite()) || e.name.len() > 64 {
                bail!(
                    "{}: landmark {:?} needs a finite xyz and a name of at most 64 bytes",
                    path.display(),
                    e.name
                );
            }
            Ok(Landmark {
                name: e.name,
                xyz_base_m: e.xyz,
            })
        })
        .collect()
}

pub(crate) fn run(command: &IgtlCommand) -> CliResult {
    match command {
        IgtlCommand::Serve(args) => serve(args),
    }
}

fn serve(args: &ServeArgs) -> CliResult {
    if !args.rate_hz.is_finite() || args.rate_hz < 0.0 {
        return Err(CliError::input(anyhow!(
            "--rate-hz {} must be finite and ≥ 0",
            args.rate_hz
        )));
    }
    if !args.wait_timeout_s.is_finite() || args.wait_timeout_s < 0.0 {
        return Err(CliError::input(anyhow!(
            "--wait-timeout-s must be finite and ≥ 0"
        )));
    }
    let base_to_lps = BaseToLps::parse(&args.base_to_lps)
        .context("--base-to-lps")
        .map_err(CliError::input)?;
    let sweep = Sweep::read(&args.sweep)
        .with_context(|| format!("cannot read the sweep in {}", args.sweep.display()))
        .map_err(CliError::input)?;
    if sweep.frame_count() == 0 {
        return Err(CliError::input(anyhow!(
            "the sweep in {} has no frames",
            sweep.dir().display()
        )));
    }
    let landmarks = match &args.landmarks {
        Some(p) => read_landmarks(p).map_err(CliError::input)?,
        None => Vec::new(),
    };
    let geometry = SweepGeometry {
        width: sweep.width(),
        height: sweep.height(),
        t_probe_image: *sweep.t_probe_image(),
        base_to_lps,
    };
    let total = match (args.frames, args.repeat) {
        (Some(n), true) => Some(n),
        (Some(n), false) => Some(n.min(sweep.frame_count())),
        (None, false) => Some(sweep.frame_count()),
        (None, true) => None,
    };

    let server = Server::bind(&args.listen, ServerConfig::default())
        .with_context(|| format!("cannot serve OpenIGTLink on {}", args.listen))
        .map_err(CliError::input)?;
    let addr = server.local_addr();
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, frames = sweep.frame_count(), "waiting for {} client(s)", args.wait_clients);
    let timeout = if args.wait_timeout_s > 0.0 {
        Duration::from_secs_f64(args.wait_timeout_s)
    } else {
        Duration::MAX
    };
    if !server.wait_for_clients(args.wait_clients, timeout) {
        return Err(CliError::failed(anyhow!(
            "{} OpenIGTLink client(s) did not connect to {addr} within {} s",
            args.wait_clients,
            args.wait_timeout_s
        )));
    }

    let broadcast = |m: &telecho_igtl::Message| {
        server
            .broadcast(m)
            .context("cannot encode a message")
            .map_err(CliError::failed)
    };
    let plan = match total {
        Some(n) => format!("{n} frames"),
        None => "frames in a loop".to_owned(),
    };
    broadcast(&status_message(
        status_code::OK,
        "OK",
        &format!(
            "telecho streaming {plan} of sweep seed {} ({}, {}) at {} Hz; mm, LPS",
            sweep.seed(),
            sweep.arm(),
            sweep.protocol(),
            args.rate_hz
        ),
        Timestamp::now(),
    ))?;

    let period = (args.rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate_hz));
    let start = Instant::now();
    let mut sent = 0usize;
    while total.is_none_or(|n| sent < n) {
        let i = sent % sweep.frame_count();
        if i == 0 && !landmarks.is_empty() {
            broadcast(&geometry.landmarks_message(&landmarks, Timestamp::now()))?;
        }
        if let Some(p) = period {
            let due = start + p * sent as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let record = &sweep.frames()[i];
        let pose = record.t_base_probe.to_matrix4();
        let pixels = sweep
            .frame_pixels(i)
            .ok_or_else(|| CliError::failed(anyhow!("frame {i} has no pixels")))?;
        let frame = Frame {
            index: i,
            time_s: record.time_s,
            t_base_probe: &pose,
            pixels,
        };
        let now = Timestamp::now();
        broadcast(&geometry.probe_message(&frame, now))?;
        let image = geometry
            .image_message(&frame, now)
            .context("cannot encode an IMAGE")
            .map_err(CliError::failed)?;
        broadcast(&image)?;
        sent += 1;
    }
    broadcast(&status_message(
        status_code::OK,
        "OK",
        &format!("end of stream: {sent} frames sent"),
        Timestamp::now(),
    ))?;
    let summary = serde_json::json!({
        "listen": addr.to_string(),
        "frames_sent": sent,
        "frames_in_sweep": sweep.frame_count(),
        "landmarks": landmarks.len(),
        "clients": server.client_count(),
        "dropped_messages": server.dropped_messages(),
        "elapsed_s": start.elapsed().as_secs_f64(),
    });
    server.shutdown();
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use nalgebra::{Matrix3, Vector3};
    use telecho_sim::world::PatientPlacement;

    use super::*;

    /// The default base→LPS rotation is the nominal prone placement of the simulator: composed
    /// with the nominal `t_base_ct` (CT in RAS) it gives RAS→LPS = diag(−1, −1, 1).
    #[test]
    fn prone_matches_the_simulators_nominal_placement() {
        let r_base_ct = PatientPlacement::nominal().rotation;
        let r_lps_ct = BaseToLps::prone().rotation() * r_base_ct;
        assert!(
            (r_lps_ct - Matrix3::from_diagonal(&Vector3::new(-1.0, -1.0, 1.0)))
                .abs()
                .max()
                < 1e-12
        );
    }
}
