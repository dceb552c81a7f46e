//! Interoperability of the control node's ROS 2 adapter with eProsima Fast DDS, the default DDS
//! of ROS 2 (Debian `libfastrtps-dev`; `tests/fastdds_peer.cpp`, compiled here with `g++`).
//!
//! `telecho node control --sim` runs in its own process; the Fast DDS peer reads
//! `/probe/wrench` (`frame_id` `ft_sensor`) and `/probe/pose`, then commands `/probe/target_pose`
//! 10 mm along base x, which the simulated probe must reach. The peer's message types are
//! serialized by hand with Fast CDR (no code generated from ours), so a layout or type-name
//! mismatch shows. Skips without the Fast DDS headers or `g++`, fails then under
//! `TELECHO_REQUIRE_PEERS=1`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use telecho_core::peers::missing_peer;

#[test]
fn control_node_interoperates_with_fast_dds() {
    let header = Path::new("/usr/include/fastdds/dds/domain/DomainParticipantFactory.hpp");
    let gxx = Command::new("g++").arg("--version").output();
    if !header.exists() || gxx.is_err() {
        missing_peer(
            "Fast DDS (C++ headers and libraries) and g++",
            "apt-get install libfastrtps-dev g++",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("telecho-fastdds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let peer_bin = dir.join("fastdds_peer");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fastdds_peer.cpp");
    let built = Command::new("g++")
        .args(["-std=c++17", "-O1", src, "-lfastrtps", "-lfastcdr", "-o"])
        .arg(&peer_bin)
        .output()
        .expect("run g++");
    assert!(
        built.status.success(),
        "the Fast DDS peer does not compile: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    // A domain of its own (230–232), away from the other DDS tests.
    let domain = (230 + std::process::id() % 3).to_string();
    let node = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "node",
            "control",
            "--sim",
            "--sim-seed",
            "3",
            "--us-rate-hz",
            "0",
        ])
        .args(["--duration-s", "12", "--json", "--domain-id", &domain])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start telecho node control");
    let peer = Command::new(&peer_bin)
        .arg(&domain)
        .output()
        .expect("run the Fast DDS peer");
    let node = node.wait_with_output().expect("wait for the node");
    let _ = std::fs::remove_dir_all(&dir);
    let node_err = String::from_utf8_lossy(&node.stderr);
    assert!(node.status.success(), "node failed: {node_err}");
    assert!(
        peer.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let summary: Value = serde_json::from_slice(&node.stdout).expect("node summary JSON");
    let got: Value = serde_json::from_slice(&peer.stdout).expect("peer JSON");
    println!("peer: {got}");
    assert_eq!(got["ready"], true, "the peer did not see the node: {got}");
    assert!(got["wrenches"].as_u64().unwrap() >= 200, "{got}");
    assert_eq!(got["wrench_bad_frame"], 0, "{got}");
    assert_eq!(got["pose_frame_id"], "base_link");
    // The target 10 mm away, sent from Fast DDS, reached within 0.5 mm.
    let err_m = got["err_m"].as_f64().unwrap();
    assert!(
        got["move_s"].as_f64().unwrap() > 0.0 && err_m < 5e-4,
        "{:.2} mm from the target: {got}",
        err_m * 1e3
    );
    assert_eq!(summary["ros2"]["targets_accepted"], 1, "{summary}");
    assert_eq!(summary["ros2"]["targets_rejected"], 0, "{summary}");
    assert_eq!(summary["safety_state"], "Normal");
}
