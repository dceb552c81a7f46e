//! `telecho kin` end to end: the JSON shapes other parts rely on, consistency between the three
//! subcommands, and one-line errors with exit code 2 on bad input.

use std::process::{Command, Output};

use serde_json::Value;

const UR5E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/urdf/ur5e_probe.urdf");
const PANDA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/urdf/panda_probe.urdf");

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .expect("runs telecho")
}

fn json_ok(args: &[&str]) -> Value {
    let out = telecho(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn fk_shape_and_values() {
    let v = json_ok(&[
        "kin",
        "fk",
        "--urdf",
        UR5E,
        "--tip",
        "flange",
        "--q",
        "0,0,0,0,0,0",
    ]);
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 2, "exactly translation and rotation: {v}");
    let t = nums(&v["translation"]);
    // UR5e zero pose from the published DH parameters: (a2+a3, −(d4+d6), d1−d5).
    for (got, want) in t.iter().zip([-0.8172, -0.2329, 0.0628]) {
        assert!((got - want).abs() < 1e-12, "{t:?}");
    }
    let r: Vec<Vec<f64>> = v["rotation"].as_array().unwrap().iter().map(nums).collect();
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|row| row.len() == 3));
    // Rotation at zero: x→x, y→z, z→−y (row-major).
    assert!(
        (r[0][0] - 1.0).abs() < 1e-12
            && (r[1][2] + 1.0).abs() < 1e-12
            && (r[2][1] - 1.0).abs() < 1e-12,
        "{r:?}"
    );
}

#[test]
fn fk_accepts_negative_values_and_a_base_link() {
    let v = json_ok(&[
        "kin",
        "fk",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--base",
        "flange",
        "--q",
        "",
    ]);
    let t = nums(&v["translation"]);
    assert!((t[2] - 0.2).abs() < 1e-12, "{t:?}");
    let v = json_ok(&[
        "kin",
        "fk",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--q",
        "-0.5,-0.3,0.2,-2.1,0.1,1.9,-0.4",
    ]);
    assert_eq!(nums(&v["translation"]).len(), 3);
}

#[test]
fn jacobian_shape_matches_chain() {
    let v = json_ok(&[
        "kin",
        "jacobian",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--q",
        "0.1,0.2,0.3,-1.5,0.4,1.6,0.7",
    ]);
    let rows = v["jacobian"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| nums(r).len() == 7));
    // Joint 1 turns about the base z axis: its angular column is (0, 0, 1).
    let col0: Vec<f64> = rows.iter().map(|r| nums(r)[0]).collect();
    assert!(
        col0[3].abs() < 1e-12 && col0[4].abs() < 1e-12 && (col0[5] - 1.0).abs() < 1e-12,
        "{col0:?}"
    );
}

#[test]
fn ik_reaches_the_pose_fk_reports() {
    let q = "0.3,-0.5,0.2,-2.0,0.1,1.8,0.5";
    let fk = json_ok(&["kin", "fk", "--urdf", PANDA, "--tip", "probe_tip", "--q", q]);
    let xyz = nums(&fk["translation"]);
    let r: Vec<Vec<f64>> = fk["rotation"]
        .as_array()
        .unwrap()
        .iter()
        .map(nums)
        .collect();
    // rpy of R = Rz·Ry·Rx.
    let pitch = (-r[2][0]).asin();
    let roll = r[2][1].atan2(r[2][2]);
    let yaw = r[1][0].atan2(r[0][0]);
    let xyz_s = format!("{},{},{}", xyz[0], xyz[1], xyz[2]);
    let rpy_s = format!("{roll},{pitch},{yaw}");
    let ik = json_ok(&[
        "kin",
        "ik",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--target-xyz",
        &xyz_s,
        "--target-rpy",
        &rpy_s,
    ]);
    assert!(ik["position_error_m"].as_f64().unwrap() < 1e-6);
    assert!(ik["orientation_error_rad"].as_f64().unwrap() < 1e-6);
    let q_ik = nums(&ik["q"]);
    assert_eq!(q_ik.len(), 7);
    let q_s: Vec<String> = q_ik.iter().map(f64::to_string).collect();
    let back = json_ok(&[
        "kin",
        "fk",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--q",
        &q_s.join(","),
    ]);
    let d: f64 = nums(&back["translation"])
        .iter()
        .zip(&xyz)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(d < 1e-6, "FK of the IK answer is {d} m off");
    // With an explicit seed (the target configuration itself) it converges in one attempt.
    let ik = json_ok(&[
        "kin",
        "ik",
        "--urdf",
        PANDA,
        "--tip",
        "probe_tip",
        "--target-xyz",
        &xyz_s,
        "--target-rpy",
        &rpy_s,
        "--seed",
        q,
    ]);
    assert_eq!(ik["attempts"].as_u64(), Some(1));
}

fn assert_bad_input(args: &[&str], expect_in_message: &str) {
    let out = telecho(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(expect_in_message),
        "{args:?}: `{stderr}` lacks `{expect_in_message}`"
    );
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let dir = telecho_testkit::scratch("cli-kin");
    std::fs::create_dir_all(&dir).unwrap();
    let malformed = dir.join("malformed.urdf");
    std::fs::write(&malformed, "<robot name='x'><link name='a'><joint").unwrap();
    let malformed = malformed.to_str().unwrap();

    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            "/no/such/file.urdf",
            "--tip",
            "flange",
            "--q",
            "0",
        ],
        "/no/such/file.urdf",
    );
    assert_bad_input(
        &["kin", "fk", "--urdf", malformed, "--tip", "a", "--q", ""],
        "cannot read URDF",
    );
    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            UR5E,
            "--tip",
            "wrist_9_link",
            "--q",
            "0",
        ],
        "wrist_9_link",
    );
    assert_bad_input(
        &[
            "kin", "fk", "--urdf", UR5E, "--tip", "flange", "--base", "moon", "--q", "0",
        ],
        "moon",
    );
    assert_bad_input(
        &[
            "kin", "fk", "--urdf", UR5E, "--tip", "flange", "--q", "0,0,0",
        ],
        "expected 6",
    );
    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--q",
            "0,NaN,0,0,0,0",
        ],
        "not finite",
    );
    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--q",
            "0,inf,0,0,0,0",
        ],
        "not finite",
    );
    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--q",
            "0,zero,0,0,0,0",
        ],
        "not a number",
    );
    assert_bad_input(
        &[
            "kin", "jacobian", "--urdf", UR5E, "--tip", "flange", "--q", "1,2",
        ],
        "expected 6",
    );
    assert_bad_input(
        &[
            "kin",
            "jacobian",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--q",
            "1,2,x,4,5,6",
        ],
        "not a number",
    );
    assert_bad_input(
        &[
            "kin",
            "ik",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--target-xyz",
            "0.1,0.2",
            "--target-rpy",
            "0,0,0",
        ],
        "--target-xyz",
    );
    assert_bad_input(
        &[
            "kin",
            "ik",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--target-xyz",
            "0.1,0.2,nan",
            "--target-rpy",
            "0,0,0",
        ],
        "not finite",
    );
    assert_bad_input(
        &[
            "kin",
            "ik",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--target-xyz",
            "0.4,0.2,0.3",
            "--target-rpy",
            "0,0,0",
            "--seed",
            "0,0",
        ],
        "expected 6",
    );
    assert_bad_input(&["kin", "fk", "--urdf", UR5E, "--tip", "flange"], "--q");
    assert_bad_input(
        &[
            "kin",
            "fk",
            "--urdf",
            UR5E,
            "--tip",
            "flange",
            "--q",
            "0,0,0,0,0,0",
            "--bogus",
        ],
        "--bogus",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unreachable_target_fails_cleanly() {
    let out = telecho(&[
        "kin",
        "ik",
        "--urdf",
        UR5E,
        "--tip",
        "probe_tip",
        "--target-xyz",
        "4,0,0",
        "--target-rpy",
        "0,0,0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1);
    assert!(out.stdout.is_empty());
}
