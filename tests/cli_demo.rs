//! `telecho demo` (today the kinematics self-check of the bundled arms) end to end.

use std::process::Command;

#[test]
fn demo_self_check_passes_with_json_summary() {
    let out = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["demo", "--json", "--poses", "100"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    let arms = v["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    for a in arms {
        assert!(a["ik_success_rate"].as_f64().unwrap() >= 0.995, "{a}");
        assert!(a["ik_max_position_error_m"].as_f64().unwrap() < 1e-6, "{a}");
        assert!(a["jacobian_max_fd_error"].as_f64().unwrap() < 1e-6, "{a}");
    }
    assert_eq!(arms[0]["dof"], 6);
    assert_eq!(arms[1]["dof"], 7);
}

#[test]
fn demo_rejects_zero_poses() {
    let out = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["demo", "--poses", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
