//! `telecho record` and `telecho replay` against the control node over real DDS (RustDDS on
//! loopback, a domain of their own), the recording read back with an independent MCAP reader
//! (PyPI `mcap` + `mcap-ros2-support`) when it is installed (required with
//! `TELECHO_REQUIRE_PEERS=1`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{require_peers, telecho};
use telecho_core::recording::{read_recording, Recorder};
use telecho_core::ros_msgs::{from_cdr, PoseStamped};

/// A DDS domain per test and process, away from 0 and from the other DDS tests (100–149).
fn domain(offset: u32) -> String {
    (150 + (std::process::id() % 20) * 4 + offset).to_string()
}

fn node(domain: &str, seconds: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "node",
            "control",
            "--sim",
            "--duration-s",
            seconds,
            "--domain-id",
            domain,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node")
}

fn node_summary(child: Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node failed");
    serde_json::from_slice(&out.stdout).expect("node prints JSON")
}

/// Counts per topic and the first JointState's joint names, read by the `mcap` Python package
/// with its ROS 2 decoder; `None` when it is not installed.
fn python_read(path: &Path) -> Option<serde_json::Value> {
    const READER: &str = r#"
import json, sys
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
counts, names, schemas = {}, None, {}
with open(sys.argv[1], "rb") as f:
    reader = make_reader(f, decoder_factories=[DecoderFactory()])
    for schema, channel, message, decoded in reader.iter_decoded_messages():
        counts[channel.topic] = counts.get(channel.topic, 0) + 1
        schemas[channel.topic] = schema.name
        if channel.topic == "/joint_states" and names is None:
            names = list(decoded.name)
print(json.dumps({"counts": counts, "names": names, "schemas": schemas}))
"#;
    let out = Command::new("python3")
        .args(["-c", READER, path.to_str().unwrap()])
        .output()
        .ok()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("ModuleNotFoundError") {
            return None;
        }
        panic!("python mcap reader failed: {err}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn record_captures_the_control_node_and_replay_drives_another() {
    let dir = telecho_testkit::scratch_dir("cli-bag");
    let file = dir.join("node.mcap");
    // 1. Record 4 s of a live control node.
    let d1 = domain(0);
    let n1 = node(&d1, "9");
    std::thread::sleep(Duration::from_secs(2));
    let rec = telecho(&[
        "record",
        "--out",
        file.to_str().unwrap(),
        "--domain-id",
        &d1,
        "--duration-s",
        "4",
        "--json",
    ]);
    assert!(
        rec.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&rec.stdout).unwrap();
    println!("record: {r}");
    let count = |t: &str| r["messages"][t].as_u64().unwrap_or(0);
    // 1 kHz wrench and 100 Hz states over ~4 s (DDS discovery takes part of the first second).
    assert!(count("/probe/wrench") > 2000, "{r}");
    assert!(count("/joint_states") > 200, "{r}");
    assert!(count("/probe/pose") > 200, "{r}");
    assert!(count("/tf") > 200, "{r}");
    // Latched topics reach a recorder that started after they were sent.
    assert_eq!(count("/tf_static"), 1, "{r}");
    assert_eq!(count("/robot_description"), 1, "{r}");
    let _ = node_summary(n1);

    // Our own reader agrees with the summary.
    let mut ours = std::collections::BTreeMap::<String, u64>::new();
    let mut poses = Vec::new();
    for m in read_recording(&file).unwrap() {
        let m = m.unwrap();
        if m.topic == "/probe/pose" {
            poses.push(from_cdr::<PoseStamped>(&m.data).unwrap());
        }
        *ours.entry(m.topic).or_default() += 1;
    }
    for (topic, n) in &ours {
        assert_eq!(count(topic), *n, "{topic}");
    }
    // An independent reader decodes every message.
    match python_read(&file) {
        Some(py) => {
            for (topic, n) in &ours {
                assert_eq!(py["counts"][topic].as_u64(), Some(*n), "{topic}: {py}");
            }
            assert_eq!(py["schemas"]["/joint_states"], "sensor_msgs/msg/JointState");
            assert_eq!(py["names"].as_array().map(Vec::len), Some(6), "{py}");
        }
        None => {
            assert!(
                !require_peers(),
                "PyPI mcap + mcap-ros2-support are not installed"
            );
            eprintln!("skipped the independent reader: pip install mcap mcap-ros2-support");
        }
    }

    // 2. Replay: target poses (the recorded probe poses, 20 Hz for 2 s) drive another node.
    let targets = dir.join("targets.mcap");
    let mut rec = Recorder::create(&targets).unwrap();
    let t0 = 1_000_000_000u64;
    for (i, p) in poses.iter().step_by(5).take(40).enumerate() {
        rec.write("/probe/target_pose", t0 + i as u64 * 50_000_000, p)
            .unwrap();
    }
    rec.finish().unwrap();
    let d2 = domain(1);
    let n2 = node(&d2, "8");
    std::thread::sleep(Duration::from_secs(2));
    let play = telecho(&[
        "replay",
        targets.to_str().unwrap(),
        "--domain-id",
        &d2,
        "--json",
    ]);
    assert!(
        play.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&play.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&play.stdout).unwrap();
    println!("replay: {p}");
    assert_eq!(p["messages"]["/probe/target_pose"], 40, "{p}");
    // The recorded spacing is kept: 39 × 50 ms.
    let took = p["duration_s"].as_f64().unwrap();
    assert!((1.9..3.0).contains(&took), "replay took {took} s");
    let s = node_summary(n2);
    let accepted = s["ros2"]["targets_accepted"].as_u64().unwrap();
    assert!(
        accepted >= 35,
        "the node took {accepted} of 40 replayed targets: {s}"
    );
    assert_eq!(s["ros2"]["targets_rejected"], 0, "{s}");
}

#[test]
fn bad_bag_input_is_one_clear_line() {
    let dir = telecho_testkit::scratch_dir("cli-bag-bad");
    let corrupt = dir.join("corrupt.mcap");
    std::fs::write(&corrupt, b"\x89MCAP0\r\nthis is not a recording").unwrap();
    let out_file = dir.join("x.mcap");
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["replay", "/nonexistent/run.mcap"], "run.mcap"),
        (vec!["replay", corrupt.to_str().unwrap()], "corrupt.mcap"),
        (
            vec![
                "record",
                "--out",
                out_file.to_str().unwrap(),
                "--topics",
                "/nope",
                "--domain-id",
                "149",
            ],
            "/nope",
        ),
        (
            vec![
                "record",
                "--out",
                out_file.to_str().unwrap(),
                "--duration-s",
                "0",
            ],
            "--duration-s",
        ),
    ];
    for (args, needle) in cases {
        let out = telecho(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}
