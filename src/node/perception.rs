//! `telecho node perception`: the perception node as its own process, on ROS 2 — the adapter of
//! [`telecho_perception::ros2`] (topics, services and behaviour documented there) with the CBCT
//! loaded from `--ct`.
//!
//! Exit codes: 0 the run ended; 1 DDS failed; 2 bad arguments or an unreadable CT.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;
use telecho_control::ros2::Ros2Config;
use telecho_perception::registration::CtModel;
use telecho_perception::ros2::{self, NodeConfig};

use crate::cli_error::CliError;
use crate::perception::register::DetectorChoice;
use crate::teleop::serve::{install_interrupt_handler, INTERRUPTED};
use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct PerceptionArgs {
    /// The patient's CBCT: NIfTI (.nii, .nii.gz) or a DICOM series directory.
    #[arg(long, value_name = "FILE")]
    ct: PathBuf,
    /// Where the collected sweep (`sweep/`) and `registration.json` go.
    #[arg(long, value_name = "DIR", default_value = "telecho-perception")]
    out: PathBuf,
    /// Expose the node over ROS 2 (implied: always on).
    #[arg(long)]
    ros2: bool,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Register as soon as a scan run reports `done`.
    #[arg(long)]
    register_when_done: bool,
    /// Exit after the first successful registration.
    #[arg(long)]
    exit_after_register: bool,
    /// Per-frame bone detector.
    #[arg(long, value_enum, default_value_t = DetectorChoice::Classical)]
    detector: DetectorChoice,
    /// Threads for detection and the registration search (≥ 1).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &PerceptionArgs) -> CliResult {
    let _ = args.ros2; // Implied.
    if args.threads == 0 {
        return Err(CliError::input(anyhow!("--threads must be at least 1")));
    }
    let duration = match args.duration_s {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(CliError::input(anyhow!(
                "--duration-s {s} must be a positive number of seconds"
            )))
        }
    };
    let domain_id = match args.domain_id {
        Some(d) if d <= 232 => d,
        Some(d) => return Err(CliError::input(anyhow!("--domain-id {d} is outside 0–232"))),
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    let t = Instant::now();
    let ct = telecho_perception::ct_load::load_ct(&args.ct)
        .map_err(|e| CliError::input(anyhow!("--ct {}: {e}", args.ct.display())))?;
    let load_ct_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let model = CtModel::from_volume(&ct).map_err(|e| {
        CliError::input(anyhow!(
            "--ct {}: no usable bone surface: {e}",
            args.ct.display()
        ))
    })?;
    drop(ct);
    let ct_preprocessing_s = t.elapsed().as_secs_f64();
    tracing::info!(
        load_ct_s,
        ct_preprocessing_s,
        landmarks = model.landmarks().len(),
        "CBCT ready"
    );
    let config = NodeConfig {
        domain_id,
        out: args.out.clone(),
        detector: args.detector.into(),
        threads: args.threads,
        register_when_done: args.register_when_done,
        exit_after_register: args.exit_after_register,
        duration,
        landmarks_source: "detected",
        load_ct_s,
        ct_preprocessing_s,
    };
    install_interrupt_handler();
    let s = ros2::run(model, &config, &INTERRUPTED).map_err(CliError::failed)?;
    if args.json {
        println!("{}", serde_json::to_string(&s).map_err(CliError::failed)?);
    } else {
        println!(
            "perception node: {} frames received, {} collected (run {}), {} registrations, {} \
             refusals, {} service requests",
            s.frames_received,
            s.frames_collected,
            s.run,
            s.registrations,
            s.refusals,
            s.service_requests
        );
        if let Some(r) = &s.refusal {
            println!("last refusal: {r}");
        }
    }
    Ok(())
}
