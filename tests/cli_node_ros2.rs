//! The control and perception nodes as separate processes talking ROS 2 over DDS: the scan is
//! started and stopped through `/scan/start` and `/scan/stop`, the perception node collects the
//! ultrasound stream (`/us/image`, `/us/probe_pose`, `/us/frame_info`, `/tf_static`) into a
//! tracked sweep and registers the CBCT when the scan reports `done`; the registration is
//! scored against the simulator's truth.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::telecho;
use nalgebra::{Matrix4, Vector4};
use serde_json::Value;

/// A DDS domain per process, away from 0 and from the other DDS tests (100–229).
fn domain() -> String {
    (50 + std::process::id() % 50).to_string()
}

/// Starts `telecho ARGS` with stdout piped and stderr passed through with a prefix.
fn spawn(tag: &'static str, args: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn telecho");
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
        }
    });
    child
}

/// `telecho node call SERVICE`: (success, message).
fn call(service: &str, domain: &str) -> (bool, String) {
    let out = telecho(&[
        "node",
        "call",
        service,
        "--domain-id",
        domain,
        "--timeout-s",
        "30",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{service}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let success = v["success"].as_bool().unwrap();
    assert_eq!(
        out.status.success(),
        success,
        "exit status follows the answer"
    );
    (success, v["message"].as_str().unwrap().to_owned())
}

/// Waits for `child` to exit (at most `limit`) and parses its stdout as JSON.
fn finish(mut child: Child, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the node did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn matrix(v: &Value) -> Matrix4<f64> {
    let rows: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    Matrix4::from_row_slice(&rows)
}

/// Median |T_true·x − T_est·x| over the simulator's CT landmarks, mm.
fn median_tre_mm(truth: &Matrix4<f64>, est: &Matrix4<f64>, landmarks: &Path) -> f64 {
    let lm: Value = serde_json::from_slice(&std::fs::read(landmarks).unwrap()).unwrap();
    let list = lm["landmarks"].as_array().or(lm.as_array()).unwrap();
    let mut e: Vec<f64> = list
        .iter()
        .map(|l| {
            let x: Vec<f64> = l["xyz"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let p = Vector4::new(x[0], x[1], x[2], 1.0);
            (truth * p - est * p).norm() * 1e3
        })
        .collect();
    e.sort_by(f64::total_cmp);
    e[e.len() / 2]
}

#[test]
fn scan_and_registration_run_across_node_processes_over_dds() {
    let dir = telecho_testkit::scratch_dir("node_ros2");
    let d = domain();
    // The patient of seed 2: its CBCT, and (for scoring only) the truth.
    let offline = dir.join("offline");
    let out = telecho(&[
        "scan",
        "--sim-seed",
        "2",
        "--out",
        offline.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ct = offline.join("ct.nii.gz");
    let live = dir.join("live");

    let control = spawn(
        "control",
        &[
            "node",
            "control",
            "--sim",
            "--sim-seed",
            "2",
            "--real-time-factor",
            "4",
            "--wrench-rate-hz",
            "100",
            "--domain-id",
            &d,
            "--duration-s",
            "1200",
            "--json",
        ],
    );
    let perception = spawn(
        "perception",
        &[
            "node",
            "perception",
            "--ct",
            ct.to_str().unwrap(),
            "--out",
            live.to_str().unwrap(),
            "--domain-id",
            &d,
            "--register-when-done",
            "--exit-after-register",
            "--duration-s",
            "240",
            "--json",
        ],
    );

    // Before any scan, both services refuse with their reason.
    let (ok, msg) = call("/perception/register", &d);
    assert!(!ok && msg.contains("no ultrasound frames"), "{msg}");
    let (ok, msg) = call("/scan/stop", &d);
    assert!(!ok && msg.contains("no scan is running"), "{msg}");
    // Start; a second start while it runs is refused.
    let (ok, msg) = call("/scan/start", &d);
    assert!(
        ok && msg.contains("started protocol `lumbar-l5-l1` (run 1"),
        "{msg}"
    );
    let (ok, msg) = call("/scan/start", &d);
    assert!(!ok && msg.contains("under way"), "{msg}");

    // The perception node registers when the scan is done, and exits.
    let p = finish(perception, Duration::from_secs(240));
    println!("perception: {p}");
    assert_eq!(p["registrations"], 1, "{p}");
    assert_eq!(p["run"], 1);
    let collected = p["frames_collected"].as_u64().unwrap();
    let offline_frames = {
        let s: Value =
            serde_json::from_slice(&std::fs::read(offline.join("sweep/sweep.json")).unwrap())
                .unwrap();
        s["frame_count"].as_u64().unwrap()
    };
    // The same protocol on the same patient: the live sweep has (nearly) the offline frames.
    assert!(
        collected as f64 > 0.9 * offline_frames as f64,
        "{collected} live frames vs {offline_frames} offline"
    );
    let reg = &p["registration"];
    let truth: Value =
        serde_json::from_slice(&std::fs::read(offline.join("ground_truth.json")).unwrap()).unwrap();
    let tre = median_tre_mm(
        &matrix(&truth["t_base_ct"]),
        &matrix(&reg["t_base_ct"]),
        &offline.join("landmarks.json"),
    );
    println!(
        "live registration: {collected} frames, RMSE {:.3} mm, uncertainty {:.3} mm, TRE median \
         {tre:.3} mm",
        reg["rmse_mm"], reg["uncertainty_mm"]
    );
    assert!(tre < 1.0, "TRE median {tre:.3} mm");
    assert!(reg["landmarks"].as_array().unwrap().len() > 20);
    // What it published is also on disk, and the sweep it wrote reads back.
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(live.join("registration.json")).unwrap()).unwrap();
    assert_eq!(on_disk["t_base_ct"], reg["t_base_ct"]);
    let out = telecho(&[
        "perception",
        "register",
        "--ct",
        ct.to_str().unwrap(),
        "--sweep",
        live.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run, stopped on request: the probe lifts off and the run ends aborted.
    let (ok, msg) = call("/scan/start", &d);
    assert!(ok && msg.contains("(run 2"), "{msg}");
    std::thread::sleep(Duration::from_secs(4));
    let (ok, msg) = call("/scan/stop", &d);
    assert!(ok && msg.contains("stopping"), "{msg}");
    std::thread::sleep(Duration::from_secs(6));
    let pid = control.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let c = finish(control, Duration::from_secs(30));
    println!("control: {c}");
    let r = &c["ros2"];
    assert_eq!(c["scan_state"], "aborted", "{c}");
    assert_eq!(c["scan_abort_cause"], "stopped on request");
    assert_eq!(c["safety_state"], "Normal");
    assert_eq!(r["scans_started"], 2);
    assert_eq!(r["scans_stopped"], 1);
    assert!(r["service_refusals"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["images_published"].as_u64().unwrap() >= collected, "{r}");
    assert_eq!(
        r["events_published"], 0,
        "a clean scan raises no safety event"
    );
    assert_eq!(r["last_scan_status"]["state"], "aborted");
}
