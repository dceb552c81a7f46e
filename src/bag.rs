//! `telecho record` and `telecho replay`: telecho's ROS 2 topics to and from MCAP over DDS, as
//! `ros2 bag record` / `ros2 bag play` do (`telecho_control::ros2_bag`). Recordings open in
//! Foxglove, rosbag2 and any MCAP reader (`ros2msg` schemas, CDR).
//!
//! Exit codes: 0 done; 1 DDS or file failure; 2 bad arguments or an unreadable recording.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use telecho_control::ros2::Ros2Config;
use telecho_control::ros2_bag::{self, BagConfig, BagReport};
use telecho_core::recording::{read_recording, Recorder};

use crate::cli_error::CliError;
use crate::teleop::serve::{install_interrupt_handler, INTERRUPTED};
use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct RecordArgs {
    /// MCAP file to write (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Only these topics, comma-separated (default: every telecho topic).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The MCAP recording (`telecho record`, `telecho scan --record`, the demo's telecho.mcap).
    file: PathBuf,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Only these topics, comma-separated (default: every telecho topic in the file).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Speed: 1 = as recorded, 2 = twice as fast.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds to let subscribers match before the first message.
    #[arg(long, default_value_t = 1.0)]
    warm_up_s: f64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

fn domain(id: Option<u16>) -> Result<u16, CliError> {
    match id {
        Some(d) => Ok(d),
        None => Ros2Config::domain_from_env().map_err(CliError::input),
    }
}

fn duration(s: Option<f64>, what: &str) -> Result<Option<Duration>, CliError> {
    match s {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 1e6 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(CliError::input(anyhow!("{what} must be positive, got {s}"))),
    }
}

fn print(report: &BagReport, json: bool, verb: &str) -> CliResult {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| CliError::failed(anyhow!(e)))?
        );
    } else {
        println!(
            "telecho {verb}: {} messages in {:.1} s{}",
            report.total,
            report.duration_s,
            if report.skipped > 0 {
                format!(" ({} skipped)", report.skipped)
            } else {
                String::new()
            }
        );
        for (topic, n) in &report.messages {
            println!("  {topic:<24} {n}");
        }
    }
    Ok(())
}

pub(crate) fn record(args: &RecordArgs) -> CliResult {
    let config = BagConfig {
        domain_id: domain(args.domain_id)?,
        topics: args.topics.clone(),
        duration: duration(args.duration_s, "--duration-s")?,
        rate: 1.0,
    };
    config.validate().map_err(CliError::input)?;
    let mut rec = Recorder::create(&args.out)
        .map_err(|e| CliError::input(anyhow!("{}: {e}", args.out.display())))?;
    install_interrupt_handler();
    let report = ros2_bag::record(&config, &mut rec, &INTERRUPTED).map_err(CliError::failed);
    let finished = rec
        .finish()
        .map_err(|e| CliError::failed(anyhow!("{}: {e}", args.out.display())));
    let report = report?;
    finished?;
    print(&report, args.json, "record")
}

pub(crate) fn replay(args: &ReplayArgs) -> CliResult {
    if !(args.warm_up_s.is_finite() && (0.0..=60.0).contains(&args.warm_up_s)) {
        return Err(CliError::input(anyhow!("--warm-up-s must be 0–60 s")));
    }
    let config = BagConfig {
        domain_id: domain(args.domain_id)?,
        topics: args.topics.clone(),
        duration: None,
        rate: args.rate,
    };
    config.validate().map_err(CliError::input)?;
    // Read it all first: a corrupt or truncated file is refused before anything is published.
    let mut messages = Vec::new();
    for m in read_recording(&args.file)
        .map_err(|e| CliError::input(anyhow!("{}: {e}", args.file.display())))?
    {
        messages.push(m.map_err(|e| CliError::input(anyhow!("{e}")))?);
    }
    messages.sort_by_key(|m| m.log_time_ns);
    install_interrupt_handler();
    let report = ros2_bag::replay(
        messages,
        &config,
        Duration::from_secs_f64(args.warm_up_s),
        &INTERRUPTED,
    )
    .map_err(CliError::failed)?;
    print(&report, args.json, "replay")
}
