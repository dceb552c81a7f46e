//! End-to-end tests of `telecho teleop serve --sim`, `telecho audit verify` and
//! `telecho teleop bench`: the real binary, real QUIC on loopback, the console library as the
//! operator and the observer.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{certs, telecho};
use common::{connect, next_state};
use nalgebra::Vector3;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::net::client::TeleopClient;
use telecho_teleop::wire::{
    CommandMode, DenyReason, LeaseOutcome, LinkState, Message, OperatorCommand, Pose, ReplyStatus,
    RobotState, SafetyCode, Target,
};

fn tmp(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("cli-teleop-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn serve(pki: &Path, audit: &Path, duration_s: f64) -> (Child, SocketAddr) {
    common::serve_sim(pki, audit, duration_s)
}

fn summary(child: Child) -> serde_json::Value {
    common::child_summary(child, Duration::from_secs(60))
}

/// Sends pose commands along `path(t)` (t from 0) at 200 Hz for `secs`, returning the newest
/// robot state and the largest force magnitude seen.
async fn steer(
    c: &mut TeleopClient,
    secs: f64,
    orientation: Pose,
    path: impl Fn(f64) -> Vector3<f64>,
) -> (RobotState, f64) {
    let start = Instant::now();
    let mut iv = tokio::time::interval(Duration::from_millis(5));
    let mut force_max: f64 = 0.0;
    let mut last = None;
    while start.elapsed().as_secs_f64() < secs {
        iv.tick().await;
        let t = start.elapsed().as_secs_f64();
        let pose = Pose {
            position_m: path(t),
            orientation: orientation.orientation,
        };
        c.send_command(CommandMode::Free, 0.0, Target::Pose(pose));
        while let Some(ev) = c.next_event(Duration::ZERO).await {
            if let ConsoleEvent::State(s) = ev {
                force_max = force_max.max(s.force_n.norm());
                last = Some(s);
            }
        }
    }
    let s = match last {
        Some(s) => s,
        None => next_state(c).await,
    };
    (s, force_max)
}

/// The answer to session request `req`.
async fn reply_to(c: &mut TeleopClient, req: u32) -> Option<ReplyStatus> {
    c.wait_for(Duration::from_secs(2), |e| match e {
        ConsoleEvent::Reply { req: r, status, .. } if *r == req => Some(*status),
        _ => None,
    })
    .await
}

/// Waits up to `timeout` for a robot state `pick` accepts.
async fn wait_state(
    c: &mut TeleopClient,
    timeout: Duration,
    pick: impl Fn(&RobotState) -> bool,
) -> Option<RobotState> {
    c.wait_for(timeout, |e| match e {
        ConsoleEvent::State(s) if pick(s) => Some(s.clone()),
        _ => None,
    })
    .await
}

#[test]
fn serve_end_to_end_operator_observer_link_loss_reconnect() {
    let dir = tmp("e2e");
    let pki = dir.join("pki");
    certs(&pki);
    let audit = dir.join("audit.log");
    let (child, addr) = serve(&pki, &audit, 40.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // An observer watches but can never take the lease.
        let mut observer = connect(&pki, "observer", addr).await;
        let o = observer
            .lease(|c| c.acquire(), Duration::from_secs(3))
            .await;
        assert_eq!(o, Some(LeaseOutcome::Denied(DenyReason::NotOperator)));

        let mut op = connect(&pki, "operator", addr).await;
        let o = op.lease(|c| c.acquire(), Duration::from_secs(3)).await;
        assert_eq!(o, Some(LeaseOutcome::Granted));
        // Let the controller tare its F/T sensor and clock sync settle.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let s0 = next_state(&mut op).await;
        let p0 = s0.probe.position_m;
        eprintln!("initial probe {p0:?}, safety {:?}", s0.safety);

        // The observer's commands are refused: it points 5 cm away, the probe must not go.
        let decoy = Pose {
            position_m: p0 + Vector3::new(0.0, -0.05, 0.0),
            orientation: s0.probe.orientation,
        };
        for _ in 0..20 {
            observer.send_command(CommandMode::Free, 0.0, Target::Pose(decoy));
        }
        // The operator steers 25 mm sideways and 10 mm up over 1.5 s, then holds.
        let goal = p0 + Vector3::new(0.0, 0.025, 0.010);
        let (s, force_max) = steer(&mut op, 3.0, s0.probe, |t| {
            let a = (t / 1.5).min(1.0);
            p0 + (goal - p0) * a
        })
        .await;
        let err_mm = (s.probe.position_m - goal).norm() * 1e3;
        eprintln!(
            "after steering: probe {:?}, error {err_mm:.2} mm, max force {force_max:.2} N",
            s.probe.position_m
        );
        assert!(
            err_mm < 3.0,
            "probe {err_mm:.2} mm from the operator's goal"
        );
        assert_eq!(s.safety, SafetyCode::Normal);
        assert_eq!(s.link, LinkState::Live);
        assert!(
            force_max <= 20.0,
            "contact force {force_max:.2} N above the limit"
        );

        // Bad input from the lease holder: a truncated datagram, a command with a NaN
        // coordinate, a stale command (sent 1 s ago), and an out-of-limits one (10 m away).
        // Each is refused; the robot does not move.
        op.send_raw_datagram(vec![1, 1, 0, 0]).unwrap();
        let mut bad = OperatorCommand {
            seq: 1_000_000,
            sent_s: op.now_s(),
            mode: CommandMode::Contact,
            force_n: 5.0,
            target: Target::Pose(Pose {
                position_m: Vector3::new(f64::NAN, 0.0, 0.0),
                orientation: s.probe.orientation,
            }),
        };
        op.send_raw_datagram(Message::Command(bad).to_bytes())
            .unwrap();
        bad.target = Target::Pose(Pose {
            position_m: s.probe.position_m + Vector3::new(0.0, 0.05, 0.0),
            orientation: s.probe.orientation,
        });
        // (the console's clock started at 0 when it connected, a few seconds ago)
        bad.sent_s = (op.now_s() - 1.0).max(0.0);
        op.send_raw_datagram(Message::Command(bad).to_bytes())
            .unwrap();
        bad.sent_s = op.now_s();
        bad.seq += 1;
        bad.target = Target::Pose(Pose {
            position_m: Vector3::new(9.0, 9.0, 9.0),
            orientation: s.probe.orientation,
        });
        op.send_raw_datagram(Message::Command(bad).to_bytes())
            .unwrap();

        // Link loss: no commands. Hold after 100 ms, retract after 1 s (of controller time: the
        // simulated loop may run a few tens of ms behind the wall clock on a loaded machine and
        // catch up, so the wall-clock windows below are wider).
        let silent = Instant::now();
        let hold = wait_state(&mut op, Duration::from_millis(600), |s| {
            s.safety == SafetyCode::Hold && s.link == LinkState::Hold
        })
        .await
        .expect("hold after 100 ms without commands");
        let t_hold = silent.elapsed().as_secs_f64();
        assert!(
            (0.04..0.6).contains(&t_hold),
            "hold after {t_hold:.3} s of silence"
        );
        assert_eq!(hold.link, LinkState::Hold);
        let hold_pos = hold.probe.position_m;
        let drift_mm = (hold_pos - goal).norm() * 1e3;
        assert!(
            drift_mm < 3.0,
            "bad commands moved the probe {drift_mm:.2} mm"
        );
        let retract = wait_state(&mut op, Duration::from_millis(1500), |s| {
            s.safety == SafetyCode::Retract && s.link == LinkState::Retract
        })
        .await
        .expect("retract after 1 s without commands");
        let t_retract = silent.elapsed().as_secs_f64();
        assert!(
            (0.9..1.7).contains(&t_retract),
            "retract after {t_retract:.3} s of silence"
        );
        assert_eq!(retract.link, LinkState::Retract);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let moved = next_state(&mut op).await;
        let away_mm = (moved.probe.position_m - hold_pos).norm() * 1e3;
        eprintln!("retracted {away_mm:.1} mm in 0.7 s");
        assert!(away_mm > 5.0, "retract moved only {away_mm:.1} mm");
        assert_eq!(moved.safety, SafetyCode::Retract, "retract is latched");

        // Reconnect without restarting either side: lease again, reset, steer again.
        op.close().await;
        let mut op = connect(&pki, "operator", addr).await;
        let o = op.lease(|c| c.acquire(), Duration::from_secs(3)).await;
        assert_eq!(o, Some(LeaseOutcome::Granted), "lease re-acquired");
        let req = op.request(|c| c.reset());
        let reply = op
            .wait_for(Duration::from_secs(2), |e| match e {
                ConsoleEvent::Reply { req: r, status, .. } if *r == req => Some(*status),
                _ => None,
            })
            .await;
        assert_eq!(reply, Some(ReplyStatus::Ok));
        // The observer cannot reset or start a protocol.
        let req = observer.request(|c| c.reset());
        let reply = observer
            .wait_for(Duration::from_secs(2), |e| match e {
                ConsoleEvent::Reply { req: r, status, .. } if *r == req => Some(*status),
                _ => None,
            })
            .await;
        assert_eq!(reply, Some(ReplyStatus::NotHolder));
        let here = next_state(&mut op).await;
        let (s, _) = steer(&mut op, 1.0, here.probe, |_| here.probe.position_m).await;
        assert_eq!(s.safety, SafetyCode::Normal, "normal again after reset");
        assert_eq!(s.link, LinkState::Live);

        // E-stop from the console: stopped at once, latched until a reset.
        let req = op.request(|c| c.estop());
        let reply = reply_to(&mut op, req).await;
        assert_eq!(reply, Some(ReplyStatus::Ok));
        let stopped = wait_state(&mut op, Duration::from_millis(500), |s| {
            s.safety == SafetyCode::EStop
        })
        .await
        .expect("e-stop state");
        let here = stopped.probe;
        let (s, _) = steer(&mut op, 0.3, here, |_| {
            here.position_m + Vector3::new(0.0, 0.02, 0.0)
        })
        .await;
        assert_eq!(
            s.safety,
            SafetyCode::EStop,
            "commands do not clear an e-stop"
        );
        assert!((s.probe.position_m - here.position_m).norm() < 1e-3);
        let req = op.request(|c| c.reset());
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));
        let (s, _) = steer(&mut op, 0.5, here, |_| here.position_m).await;
        assert_eq!(s.safety, SafetyCode::Normal, "normal after reset");

        // The scan protocol from the console: the executor takes over (the probe leaves for
        // the L5 start pose), then stops on request and the robot holds.
        let req = op.request(|c| c.start_protocol("lumbar"));
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let s = next_state(&mut op).await;
        let moved_mm = (s.probe.position_m - here.position_m).norm() * 1e3;
        eprintln!("protocol moved the probe {moved_mm:.1} mm in 0.8 s");
        assert!(moved_mm > 5.0, "the protocol did not move the probe");
        assert_eq!(s.safety, SafetyCode::Normal);
        let req = op.request(|c| c.stop_protocol());
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));
        // (the reference decelerates within the acceleration limit, then the arm settles)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a = next_state(&mut op).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = next_state(&mut op).await;
        let drift_mm = (b.probe.position_m - a.probe.position_m).norm() * 1e3;
        assert!(drift_mm < 1.0, "holds after stop: moved {drift_mm:.2} mm");
        assert_eq!(b.safety, SafetyCode::Normal, "held, not a watchdog hold");
        op.close().await;
        observer.close().await;
    });
    // SIGTERM ends the run early and cleanly: audit flushed, summary printed, exit 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let report = summary(child);
    assert!(
        report["duration_s"].as_f64().unwrap() < 39.0,
        "stopped by SIGTERM"
    );
    eprintln!("{report}");
    let n = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {report}"))
    };
    assert!(n("connections") >= 3.0);
    assert!(n("commands_accepted") > 500.0);
    assert!(n("commands_applied") > 300.0);
    assert!(n("commands_refused") >= 20.0, "the observer's commands");
    assert!(n("force_max_n") <= n("force_limit_n"));
    assert!(
        n("frames_sent") > 0.0,
        "ultrasound frames reached the clients"
    );
    assert!(n("states_sent") > 60.0 * 10.0);
    assert!(
        report["safety_events"]["watchdog_hold"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert!(
        report["safety_events"]["watchdog_retract"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
    assert!(n("audit_records") > 100.0);
    assert_eq!(n("estops"), 1.0);
    assert_eq!(n("resets"), 2.0);
    assert_eq!(n("protocols_started"), 1.0);
    assert!(
        n("malformed_datagrams") >= 2.0,
        "truncated and NaN datagrams"
    );

    // The audit log verifies, holds the operator's commands and none of the observer's.
    let out = telecho(&["audit", "verify", audit.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"].as_f64(), Some(n("audit_records")));
    let text = std::fs::read_to_string(&audit).unwrap();
    let commands: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["what"]["event"] == "command")
        .collect();
    assert!(commands.len() as f64 == n("commands_accepted"));
    assert!(commands.iter().all(|r| r["who"]["cn"] == "operator"));
    assert!(text.contains("not_holder (observer)"));
    assert!(
        text.contains("\"reason\":\"stale\""),
        "stale command audited"
    );
    assert!(
        text.contains("out_of_limits"),
        "out-of-limits command audited"
    );
    assert!(text.contains("malformed_datagram"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_bad_arguments() {
    let dir = tmp("bad");
    let out = telecho(&[
        "teleop",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pki",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sim"));
    let out = telecho(&[
        "teleop",
        "serve",
        "--sim",
        "--listen",
        "127.0.0.1:0",
        "--pki",
        dir.join("missing").to_str().unwrap(),
        "--duration-s",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pki"));
    let out = telecho(&[
        "teleop",
        "serve",
        "--sim",
        "--listen",
        "127.0.0.1:0",
        "--pki",
        "x",
        "--duration-s",
        "NaN",
    ]);
    assert_eq!(out.status.code(), Some(2));
    for depth in ["0.5", "NaN", "0.01"] {
        let out = telecho(&[
            "teleop",
            "serve",
            "--sim",
            "--listen",
            "127.0.0.1:0",
            "--pki",
            "x",
            "--us-depth-m",
            depth,
        ]);
        assert_eq!(out.status.code(), Some(2), "--us-depth-m {depth}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("--us-depth-m"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audit_verify_detects_tampering() {
    use telecho_teleop::audit::{AuditEvent, AuditLog, Who};
    let dir = tmp("audit");
    let path = dir.join("audit.log");
    {
        let mut log = AuditLog::open(&path).unwrap();
        let who = Who {
            cn: "operator".into(),
            fingerprint: "ab".repeat(32),
        };
        for seq in 1..=3u64 {
            log.append_at(
                1_763_681_234.0 + seq as f64,
                &who,
                &AuditEvent::Command {
                    conn: 1,
                    seq,
                    mode: "contact".into(),
                    force_n: 5.0,
                    target: vec![0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0],
                    kind: "pose".into(),
                    age_ms: 51.5,
                },
            )
            .unwrap();
        }
    }
    let p = path.to_str().unwrap();
    let out = telecho(&["audit", "verify", p, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 3);
    assert_eq!(v["last_hash"].as_str().map(str::len), Some(64));

    // Raise the force of the second command: its hash no longer matches.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let tampered = lines[1].replace("\"force_n\":5.0", "\"force_n\":15.0");
    assert_ne!(tampered, lines[1]);
    std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], tampered, lines[2])).unwrap();
    let out = telecho(&["audit", "verify", p, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["broken_line"], 2);

    // Deleting a line breaks the chain at the next one.
    std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    let out = telecho(&["audit", "verify", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    // A missing file is bad input.
    let out = telecho(&["audit", "verify", dir.join("none.log").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["teleop", "bench", "--json", "--duration-s", "0.5"];
    all.extend_from_slice(args);
    let out = telecho(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_json_shape() {
    for v in [
        bench(&["--rtt-ms", "0", "--loss", "0"]),
        bench(&["--rtt-ms", "40", "--loss", "2%"]),
    ] {
        eprintln!("{v}");
        for t in ["quic", "tcp"] {
            for k in ["p50_ms", "p99_ms"] {
                let x = v[t][k].as_f64().unwrap_or_else(|| panic!("{t}.{k} in {v}"));
                assert!(x.is_finite() && x >= 0.0, "{t}.{k} = {x}");
            }
            assert!(v[t]["p99_ms"].as_f64() >= v[t]["p50_ms"].as_f64());
            assert!(v[t]["delivered"].as_u64().unwrap() > 0);
        }
        let rtt = v["rtt_ms"].as_f64().unwrap();
        // Nothing arrives before the one-way delay (tokio timers: 1 ms granularity).
        for t in ["quic", "tcp"] {
            assert!(v[t]["p50_ms"].as_f64().unwrap() >= rtt / 2.0 - 1.0);
        }
    }
    let out = telecho(&["teleop", "bench", "--loss", "2", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss"));
}
