//! `telecho demo --ros2`: the demo's scan and registration with every node as its own process,
//! talking ROS 2 over DDS — what a site running telecho under ROS 2 runs.
//!
//! ```text
//!  telecho demo --ros2 (orchestrator: calls /scan/start, watches /scan/status)
//!    ├─ telecho node control --sim      controller + supervisor on the simulator; /us/image, …
//!    ├─ telecho node perception --ct …  collects the sweep, registers when the scan is done
//!    └─ telecho record                  every topic into OUT/ros2.mcap
//! ```
//!
//! The patient's CBCT is written to `OUT/patient/` first (as `telecho sim phantom` writes it);
//! the perception node reads it, the orchestrator scores the registration against the
//! simulator's truth (it never reaches the nodes). Each node's log goes to `OUT/logs/`. The
//! simulator runs `--real-time-factor` times faster than real time (default 4).
//!
//! Exit codes: 0 the scan completed and the CBCT was registered; 1 a node failed, the scan
//! aborted or the registration was refused; 2 bad arguments.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;
use serde_json::Value;
use telecho_control::ros2::{self, Ros2Config, ScanStatus};
use telecho_control::ScanProtocol;
use telecho_core::ros_msgs::StringMsg;

use super::{finish, phase_bar, DemoArgs, Phase};
use crate::cli_error::CliError;
use crate::perception::register::{percentile, read_landmarks, tre_mm};
use crate::scan::{arm_name, Scenario};
use crate::sim::PatientCt;
use crate::CliResult;

/// A node process, its log file and its name.
struct NodeProcess {
    name: &'static str,
    child: Child,
    /// Collects the process's stdout (its summary) as it comes, so a large summary never
    /// blocks it on a full pipe.
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl NodeProcess {
    fn spawn(name: &'static str, args: &[String], logs: &Path) -> Result<Self, CliError> {
        let exe = std::env::current_exe()
            .context("cannot find the telecho executable")
            .map_err(CliError::failed)?;
        let log = logs.join(format!("{name}.log"));
        let err = File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))
            .map_err(CliError::failed)?;
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start the {name} node"))
            .map_err(CliError::failed)?;
        let stdout = child.stdout.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = std::io::Read::read_to_end(&mut pipe, &mut buf);
                buf
            })
        });
        Ok(Self {
            name,
            child,
            stdout,
        })
    }

    /// True once the process has exited.
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Asks the process to stop (SIGTERM) unless it has exited.
    fn terminate(&mut self) {
        if !self.exited() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped.
            let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    /// Waits up to `limit` for the process, kills it after that, and parses its stdout.
    fn summary(mut self, limit: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > limit {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.child.wait()?;
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(anyhow!(
                "the {} node exited with {status} (its log is in logs/{}.log)",
                self.name,
                self.name
            ));
        }
        serde_json::from_slice(&stdout)
            .with_context(|| format!("the {} node's summary is not JSON", self.name))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Ros2Summary {
    mode: &'static str,
    seed: u64,
    arm: &'static str,
    domain_id: u16,
    real_time_factor: f64,
    /// The scan's last state (`done` when it completed).
    scan_state: String,
    scan_abort_cause: Option<String>,
    /// Simulated seconds the control node ran.
    control_sim_s: f64,
    /// Ultrasound frames the control node published.
    images_published: u64,
    /// Frames the perception node collected into the sweep.
    frames_collected: u64,
    safety_events: u64,
    registered: bool,
    refusal: Option<String>,
    rmse_mm: f64,
    uncertainty_mm: f64,
    /// Over the simulator's landmarks: |t_true·x − t_est·x| (mm).
    tre_median_mm: f64,
    tre_p95_mm: f64,
    tre_max_mm: f64,
    /// The MCAP recording and its message count.
    recording: String,
    recorded_messages: u64,
    wall_s: f64,
    phases: Vec<Phase>,
}

pub(super) fn run(args: &DemoArgs) -> CliResult {
    if !(args.real_time_factor.is_finite() && (1.0..=10.0).contains(&args.real_time_factor)) {
        return Err(CliError::input(anyhow!(
            "--real-time-factor {} must be within 1–10",
            args.real_time_factor
        )));
    }
    let domain_id = match args.domain_id {
        Some(d) if d <= 232 => d,
        Some(d) => return Err(CliError::input(anyhow!("--domain-id {d} is outside 0–232"))),
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    let wall = Instant::now();
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create {}", logs.display()))
        .map_err(CliError::input)?;
    let mut phases = Vec::new();
    let mut summary = Ros2Summary {
        mode: "ros2",
        seed: args.sim_seed,
        arm: arm_name(args.arm),
        domain_id,
        real_time_factor: args.real_time_factor,
        ..Ros2Summary::default()
    };

    // 1. The patient's CBCT, for the perception node.
    let t0 = Instant::now();
    let bar = phase_bar("patient");
    bar.set_message(format!("simulated patient {} and its CBCT", args.sim_seed));
    let patient = PatientCt::simulate(args.sim_seed, 0.8)?;
    let files = patient.write(&args.out.join("patient"))?;
    drop(patient);
    finish(
        bar,
        &mut phases,
        "patient",
        t0,
        true,
        format!("{}", files.ct.display()),
    );

    // 2. The nodes.
    let t0 = Instant::now();
    let bar = phase_bar("nodes");
    bar.set_message(format!(
        "control, perception and recorder on DDS domain {domain_id}"
    ));
    let d = domain_id.to_string();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let mut control = NodeProcess::spawn(
        "control",
        &s(&[
            "node",
            "control",
            "--sim",
            "--sim-seed",
            &args.sim_seed.to_string(),
            "--arm",
            arm_name(args.arm),
            "--real-time-factor",
            &args.real_time_factor.to_string(),
            "--wrench-rate-hz",
            "250",
            "--domain-id",
            &d,
            "--json",
        ]),
        &logs,
    )?;
    let perception = NodeProcess::spawn(
        "perception",
        &s(&[
            "node",
            "perception",
            "--ct",
            &files.ct.to_string_lossy(),
            "--out",
            &args.out.join("perception").to_string_lossy(),
            "--domain-id",
            &d,
            "--register-when-done",
            "--exit-after-register",
            "--threads",
            &args.threads.to_string(),
            "--duration-s",
            "900",
            "--json",
        ]),
        &logs,
    )?;
    let recording = args.out.join("ros2.mcap");
    let mut recorder = NodeProcess::spawn(
        "record",
        &s(&[
            "record",
            "--out",
            &recording.to_string_lossy(),
            "--domain-id",
            &d,
            "--json",
        ]),
        &logs,
    )?;
    let mut node = ros2::open_node(domain_id, "/", "telecho_demo").map_err(CliError::failed)?;
    let status_sub =
        ros2::subscription::<StringMsg>(&mut node, "/scan/status", ros2::latched_qos())
            .map_err(CliError::failed)?;
    let start = ros2::trigger_client(
        &mut node,
        "/scan/start",
        Ros2Config::default().service_mapping,
    )
    .map_err(CliError::failed)?;
    finish(
        bar,
        &mut phases,
        "nodes",
        t0,
        true,
        format!("domain {domain_id}"),
    );

    // 3. The scan, started and watched over DDS.
    let t0 = Instant::now();
    let bar = phase_bar("scan");
    bar.set_message("/scan/start");
    let answer = ros2::call_trigger(&start, Duration::from_secs(60)).map_err(CliError::failed)?;
    if !answer.success {
        return Err(CliError::failed(anyhow!(
            "/scan/start refused: {}",
            answer.message
        )));
    }
    let protocol = ScanProtocol::default_lumbar();
    let sim_s: f64 = 60.0
        + protocol
            .sweeps
            .iter()
            .map(|s| 60.0 + 2.0 * s.duration_s())
            .sum::<f64>();
    let limit = Duration::from_secs_f64(sim_s / args.real_time_factor);
    let mut last: Option<ScanStatus> = None;
    while t0.elapsed() < limit {
        while let Ok(Some((msg, _))) = status_sub.take() {
            if let Ok(st) = serde_json::from_str::<ScanStatus>(&msg.data) {
                if st.run >= 1 {
                    bar.set_message(format!(
                        "sweep {}/{} {} — {}",
                        st.sweep_index + 1,
                        st.sweep_count,
                        st.sweep_name.as_deref().unwrap_or(""),
                        st.state
                    ));
                    last = Some(st);
                }
            }
        }
        if last
            .as_ref()
            .is_some_and(|s| s.state == "done" || s.state == "aborted")
        {
            break;
        }
        if control.exited() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = last.as_ref().is_some_and(|s| s.state == "done");
    summary.scan_state = last
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |s| s.state.clone());
    summary.scan_abort_cause = last.as_ref().and_then(|s| s.abort_cause.clone());
    finish(
        bar,
        &mut phases,
        "scan",
        t0,
        done,
        format!("{} over DDS", summary.scan_state),
    );

    // 4. The registration, by the perception node.
    let t0 = Instant::now();
    let bar = phase_bar("registration");
    bar.set_message("perception node: compounding and registering");
    let p = perception
        .summary(Duration::from_secs(if done { 300 } else { 1 }))
        .map_err(CliError::failed);
    let p = match p {
        Ok(p) => p,
        Err(e) if !done => {
            tracing::warn!("{e:?}");
            Value::Null
        }
        Err(e) => return Err(e),
    };
    summary.frames_collected = p["frames_collected"].as_u64().unwrap_or(0);
    summary.refusal = p["refusal"].as_str().map(str::to_owned);
    let reg = &p["registration"];
    if reg.is_object() {
        let t_est = matrix(&reg["t_base_ct"]).map_err(CliError::failed)?;
        let sc = Scenario::new(args.arm, args.sim_seed, ScanProtocol::default_lumbar())?;
        let t_true = sc.world.ground_truth().t_base_ct;
        let truth_landmarks = read_landmarks(&files.landmarks).map_err(CliError::failed)?;
        let mut tre = tre_mm(&t_true, &t_est, &truth_landmarks);
        tre.sort_by(f64::total_cmp);
        summary.registered = true;
        summary.refusal = None;
        summary.rmse_mm = reg["rmse_mm"].as_f64().unwrap_or(f64::NAN);
        summary.uncertainty_mm = reg["uncertainty_mm"].as_f64().unwrap_or(f64::NAN);
        summary.tre_median_mm = percentile(&tre, 0.5);
        summary.tre_p95_mm = percentile(&tre, 0.95);
        summary.tre_max_mm = tre.last().copied().unwrap_or(f64::NAN);
    }
    finish(
        bar,
        &mut phases,
        "registration",
        t0,
        summary.registered,
        if summary.registered {
            format!(
                "TRE median {:.2} mm over {} frames",
                summary.tre_median_mm, summary.frames_collected
            )
        } else {
            format!(
                "refused: {}",
                summary.refusal.as_deref().unwrap_or("no answer")
            )
        },
    );

    // 5. Shut the nodes down; their summaries.
    let t0 = Instant::now();
    let bar = phase_bar("shutdown");
    bar.set_message("SIGTERM to the control node and the recorder");
    control.terminate();
    let c = control
        .summary(Duration::from_secs(30))
        .map_err(CliError::failed)?;
    // The recorder gets the last messages before it stops.
    std::thread::sleep(Duration::from_millis(300));
    recorder.terminate();
    let r = recorder
        .summary(Duration::from_secs(30))
        .map_err(CliError::failed)?;
    summary.control_sim_s = c["duration_s"].as_f64().unwrap_or(0.0);
    summary.images_published = c["ros2"]["images_published"].as_u64().unwrap_or(0);
    summary.safety_events = c["ros2"]["events_published"].as_u64().unwrap_or(0);
    summary.recording = recording.display().to_string();
    summary.recorded_messages = r["total"].as_u64().unwrap_or(0);
    finish(
        bar,
        &mut phases,
        "shutdown",
        t0,
        true,
        format!("{} messages recorded", summary.recorded_messages),
    );
    summary.wall_s = wall.elapsed().as_secs_f64();
    summary.phases = phases;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).map_err(CliError::failed)?
        );
    } else {
        print_table(&summary);
    }
    if done && summary.registered {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "the ROS 2 demo did not complete: scan {}{}, registration {} (node logs in {})",
            summary.scan_state,
            summary
                .scan_abort_cause
                .as_deref()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default(),
            summary.refusal.as_deref().unwrap_or("missing"),
            logs.display()
        )))
    }
}

fn matrix(v: &Value) -> anyhow::Result<telecho_core::Transform> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone())?;
    let rows: Vec<[f64; 4]> = rows
        .into_iter()
        .map(|r| <[f64; 4]>::try_from(r).map_err(|_| anyhow!("a row of t_base_ct is not 4 long")))
        .collect::<anyhow::Result<_>>()?;
    let rows: [[f64; 4]; 4] = rows
        .try_into()
        .map_err(|_| anyhow!("t_base_ct does not have 4 rows"))?;
    Ok(telecho_perception::registration::transform_from_rows(
        &rows,
    )?)
}

fn print_table(s: &Ros2Summary) {
    println!(
        "telecho demo --ros2: seed {}, {} arm, DDS domain {}, simulator at {}× real time",
        s.seed, s.arm, s.domain_id, s.real_time_factor
    );
    println!("{:<14} {:>8}  {:<6} note", "phase", "wall s", "");
    for p in &s.phases {
        println!(
            "{:<14} {:>8.1}  {:<6} {}",
            p.name,
            p.wall_s,
            if p.passed { "ok" } else { "FAILED" },
            p.note
        );
    }
    println!(
        "scan {} ({} frames published, {} collected, {} safety events); registration RMSE \
         {:.2} mm, TRE median {:.2} mm (p95 {:.2}, max {:.2}); {} messages in {}; {:.1} s",
        s.scan_state,
        s.images_published,
        s.frames_collected,
        s.safety_events,
        s.rmse_mm,
        s.tre_median_mm,
        s.tre_p95_mm,
        s.tre_max_mm,
        s.recorded_messages,
        s.recording,
        s.wall_s
    );
}
