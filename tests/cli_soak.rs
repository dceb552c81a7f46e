//! `telecho soak` in short: 36 s of the whole teleoperation loop through a 100 ms RTT, 1 % loss
//! link with a fault every 2.5 s, so that every kind of fault in the rotation is injected at
//! least once. The 30-minute figures (memory growth) come from the command itself, in
//! docs/BENCHMARKS.md.

use std::process::Command;

use serde_json::Value;

const FAULTS: [&str; 8] = [
    "link_outage_300ms",
    "link_outage_1500ms",
    "malformed_datagrams",
    "invalid_commands",
    "estop_and_reset",
    "reconnect",
    "ft_sensor_nan",
    "observer_tries_to_steer",
];

#[test]
fn short_soak_recovers_from_every_fault_without_a_force_violation() {
    let out = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "soak",
            "--minutes",
            "0.6",
            "--fault-every-s",
            "2.5",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    println!("{r}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(r["passed"], true, "{:?}", r["failures"]);
    assert_eq!(r["panics"], 0);
    assert_eq!(r["force_limit_violations"], 0);
    assert!(r["force_max_n"].as_f64().unwrap() < 20.0);
    assert_eq!(r["audit_verified"], true);
    // Every fault kind was injected and the system came back to normal operation each time.
    for f in FAULTS {
        let c = &r["faults"][f];
        let injected = c["injected"].as_u64().unwrap_or(0);
        assert!(injected >= 1, "{f} not injected: {}", r["faults"]);
        assert_eq!(c["recovered"].as_u64(), Some(injected), "{f}: {c}");
        assert!(c["worst_recovery_s"].as_f64().unwrap() < 8.0, "{f}: {c}");
    }
    // The faults were seen by the patient side: malformed datagrams counted, invalid and
    // observer commands refused, the outages held and retracted, the sensor fault stopped.
    assert!(r["malformed_datagrams"].as_u64().unwrap() >= 200);
    assert!(r["commands_refused"].as_u64().unwrap() >= 4);
    let ev = &r["safety_events"];
    for kind in [
        "watchdog_hold",
        "watchdog_retract",
        "estop",
        "sensor_nan",
        "reset",
    ] {
        assert!(ev[kind].as_u64().unwrap_or(0) >= 1, "no {kind} event: {ev}");
    }
    assert!(
        r["connections"].as_u64().unwrap() >= 3,
        "operator twice + observer"
    );
    // The operator steered: most commands reached the robot.
    let sent = r["commands_sent"].as_f64().unwrap();
    let applied = r["commands_applied"].as_f64().unwrap();
    assert!(applied > 0.5 * sent, "{applied} of {sent} commands applied");
    // Memory is reported (not judged on a run this short: it measures the warm-up).
    assert_eq!(r["rss_judged"], false);
    assert!(r["rss_baseline_mib"].as_f64().unwrap() > 1.0);
}

#[test]
fn bad_soak_arguments_exit_2_with_one_line() {
    for args in [
        ["--minutes", "-1"],
        ["--loss-pct", "NaN"],
        ["--fault-every-s", "0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_telecho"))
            .arg("soak")
            .args(args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(out.stdout.is_empty());
    }
}
