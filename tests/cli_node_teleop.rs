//! `telecho node teleop` against `telecho node control --sim`, two processes on one DDS domain,
//! with the console library as the operator and the observer over QUIC: steering reaches the
//! control node through `/probe/target_pose`; the teleop node's own link-loss policy holds after
//! 100 ms and retracts after 1 s (the control node alone would hold a ROS set-point forever);
//! e-stop lifts once and latches; an observer publishes nothing; NaN DDS input is refused and
//! counted; stale DDS input (the control node gone) stops the set-points and reports a fault.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs;
use common::{connect, next_state};
use nalgebra::Vector3;
use telecho_control::ros2::{self, command_qos, publisher, stream_qos, subscription};
use telecho_core::ros_msgs::{
    DiagnosticArray, DiagnosticStatus, Header, Point, Pose as MsgPose, PoseStamped, Quaternion,
    Vector3 as MsgVector3, Wrench, WrenchStamped,
};
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::net::client::TeleopClient;
use telecho_teleop::wire::{
    CommandMode, DenyReason, LeaseOutcome, Pose, ReplyStatus, RobotState, SafetyCode, Target,
};

/// A DDS domain per process. Every id in 1–232 is some other DDS test's too; these are the
/// Cyclone DDS Gazebo test's, which runs only with its outside peer.
fn domain() -> u16 {
    1 + (std::process::id() % 9) as u16
}

/// Starts `telecho ARGS`, stdout piped, stderr passed through with a prefix; returns the child
/// and the first stderr line starting with `wait_for` (its remainder).
fn spawn(tag: &'static str, args: &[&str], wait_for: Option<&'static str>) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn telecho");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = wait_for.and_then(|w| line.strip_prefix(w)) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
            eprintln!("[{tag}] {line}");
        }
    });
    let found = match wait_for {
        Some(_) => rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the node prints its address"),
        None => String::new(),
    };
    (child, found)
}

fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

fn summary(child: Child) -> serde_json::Value {
    common::child_summary(child, Duration::from_secs(20))
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

/// Sends free-space pose commands along `path(t)` at 200 Hz for `secs`; the newest state.
async fn steer(
    c: &mut TeleopClient,
    secs: f64,
    orientation: Pose,
    path: impl Fn(f64) -> Vector3<f64>,
) -> RobotState {
    let start = Instant::now();
    let mut iv = tokio::time::interval(Duration::from_millis(5));
    let mut last = None;
    while start.elapsed().as_secs_f64() < secs {
        iv.tick().await;
        let pose = Pose {
            position_m: path(start.elapsed().as_secs_f64()),
            orientation: orientation.orientation,
        };
        c.send_command(CommandMode::Free, 0.0, Target::Pose(pose));
        while let Some(ev) = c.next_event(Duration::ZERO).await {
            if let ConsoleEvent::State(s) = ev {
                last = Some(s);
            }
        }
    }
    match last {
        Some(s) => s,
        None => next_state(c).await,
    }
}

async fn reply_to(c: &mut TeleopClient, req: u32) -> Option<ReplyStatus> {
    c.wait_for(Duration::from_secs(2), |e| match e {
        ConsoleEvent::Reply { req: r, status, .. } if *r == req => Some(*status),
        _ => None,
    })
    .await
}

/// What the teleop node published on `/probe/target_pose`, as seen by a third participant.
type Seen = Arc<Mutex<Vec<(Instant, Vector3<f64>)>>>;

fn position(msg: &PoseStamped) -> Vector3<f64> {
    let p = &msg.pose.position;
    Vector3::new(p.x, p.y, p.z)
}

/// The probe axis (tip z) of a pose, base frame.
fn axis(p: &Pose) -> Vector3<f64> {
    p.orientation * Vector3::z()
}

#[test]
fn teleop_node_steers_the_control_node_over_dds_with_its_own_link_loss_policy() {
    let dir = telecho_testkit::scratch("cli-node-teleop");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pki = dir.join("pki");
    certs(&pki);
    let audit = dir.join("audit.log");
    let d = domain();
    let ds = d.to_string();

    // A third participant watches the set-points and injects bad measurements.
    let mut node = ros2::open_node(d, "/", "telecho_test_peer").unwrap();
    let targets =
        subscription::<PoseStamped>(&mut node, "/probe/target_pose", command_qos()).unwrap();
    let audit_topic = subscription::<DiagnosticArray>(&mut node, "/audit", command_qos()).unwrap();
    let audit_seen: Arc<Mutex<Vec<DiagnosticStatus>>> = Arc::default();
    let bad_pose = publisher::<PoseStamped>(&mut node, "/probe/pose", stream_qos(10)).unwrap();
    let bad_wrench =
        publisher::<WrenchStamped>(&mut node, "/probe/wrench", stream_qos(100)).unwrap();
    let seen: Seen = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let seen = seen.clone();
        let done = done.clone();
        let audit_seen = audit_seen.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                while let Ok(Some((msg, _))) = targets.take() {
                    let p = position(&msg);
                    assert!(p.iter().all(|v| v.is_finite()), "non-finite target {msg:?}");
                    seen.lock().unwrap().push((Instant::now(), p));
                }
                while let Ok(Some((msg, _))) = audit_topic.take() {
                    audit_seen.lock().unwrap().extend(msg.status);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let count = || seen.lock().unwrap().len();

    let (control, _) = spawn(
        "control",
        &[
            "node",
            "control",
            "--sim",
            "--sim-seed",
            "1",
            "--domain-id",
            &ds,
            "--us-rate-hz",
            "10",
            "--duration-s",
            "120",
            "--json",
        ],
        None,
    );
    let (teleop, addr) = spawn(
        "teleop",
        &[
            "node",
            "teleop",
            "--listen",
            "127.0.0.1:0",
            "--pki",
            pki.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
            "--domain-id",
            &ds,
            "--duration-s",
            "120",
            "--json",
        ],
        Some("telecho node teleop: listening on "),
    );
    let addr: SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let control = rt.block_on(async {
        let mut op = connect(&pki, "operator", addr).await;
        // The control node's measurements reach the console once it runs (and has tared).
        wait_state(&mut op, Duration::from_secs(30), |s| {
            s.safety == SafetyCode::Normal
        })
        .await
        .expect("a normal robot state from the control node within 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s0 = next_state(&mut op).await;
        let p0 = s0.probe.position_m;
        eprintln!("initial probe {p0:?}, {} joints", s0.joints_rad.len());
        assert_eq!(s0.joints_rad.len(), 6);
        let mut frames = 0;
        let t = Instant::now();
        while frames == 0 && t.elapsed() < Duration::from_secs(3) {
            if let Some(ConsoleEvent::UsFrame(_)) = op.next_event(Duration::from_millis(100)).await {
                frames += 1;
            }
        }
        assert!(frames > 0, "an ultrasound frame from /us/image within 3 s");

        // The observer cannot take the lease; its commands publish nothing, move nothing.
        let mut observer = connect(&pki, "observer", addr).await;
        let o = observer.lease(|c| c.acquire(), Duration::from_secs(3)).await;
        assert_eq!(o, Some(LeaseOutcome::Denied(DenyReason::NotOperator)));
        let decoy = Pose {
            position_m: p0 + Vector3::new(0.0, -0.03, 0.0),
            orientation: s0.probe.orientation,
        };
        for _ in 0..40 {
            observer.send_command(CommandMode::Free, 0.0, Target::Pose(decoy));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(), 0, "an observer's commands reached DDS");
        let s = next_state(&mut op).await;
        assert!((s.probe.position_m - p0).norm() < 1e-3);

        // The operator steers 8 mm sideways and 4 mm up over 1 s, then keeps the goal.
        let o = op.lease(|c| c.acquire(), Duration::from_secs(3)).await;
        assert_eq!(o, Some(LeaseOutcome::Granted));
        let goal = p0 + Vector3::new(0.0, 0.008, 0.004);
        let s = steer(&mut op, 2.5, s0.probe, |t| p0 + (goal - p0) * (t / 1.0).min(1.0)).await;
        let err_mm = (s.probe.position_m - goal).norm() * 1e3;
        eprintln!("steered: error {err_mm:.2} mm after 2.5 s, {} set-points seen", count());
        assert!(err_mm < 1.5, "probe {err_mm:.2} mm from the operator's goal");
        assert_eq!(s.safety, SafetyCode::Normal);
        assert!(count() > 100, "{} set-points", count());

        // Contact: press with 5 N at the goal; the control node searches down to the skin and
        // regulates the force; the console gets the measured force and the contact model.
        let pressing = Instant::now();
        let mut iv = tokio::time::interval(Duration::from_millis(5));
        let mut steady_since: Option<Instant> = None;
        let mut model = None;
        let mut force_n = 0.0;
        while pressing.elapsed() < Duration::from_secs(15) {
            iv.tick().await;
            op.send_command(CommandMode::Contact, 5.0, Target::Pose(Pose { position_m: goal, orientation: s0.probe.orientation }));
            while let Some(ev) = op.next_event(Duration::ZERO).await {
                match ev {
                    ConsoleEvent::State(s) => {
                        force_n = s.force_n.norm();
                        if (force_n - 5.0).abs() < 1.0 {
                            steady_since.get_or_insert_with(Instant::now);
                        } else {
                            steady_since = None;
                        }
                    }
                    ConsoleEvent::Haptic(h) if h.contact.is_some() => model = h.contact,
                    _ => {}
                }
            }
            if steady_since.is_some_and(|t| t.elapsed() > Duration::from_millis(700)) {
                break;
            }
        }
        eprintln!(
            "pressing: {force_n:.2} N after {:.1} s, contact model {model:?}",
            pressing.elapsed().as_secs_f64()
        );
        assert!((force_n - 5.0).abs() < 1.0, "contact force {force_n:.2} N");
        let model = model.expect("a contact model from the measured wrench and pose");
        assert!(model.stiffness_n_m > 100.0 && model.stiffness_n_m < 1e5, "{model:?}");
        let pressed = next_state(&mut op).await;
        let skin = pressed.probe.position_m;

        // Link loss: hold after 100 ms (the last target again), retract after 1 s (once).
        let silent = Instant::now();
        let n_silent = count();
        let hold = wait_state(&mut op, Duration::from_millis(600), |s| {
            s.safety == SafetyCode::Hold
        })
        .await
        .expect("hold after 100 ms without commands");
        let t_hold = silent.elapsed().as_secs_f64();
        let hold_pos = hold.probe.position_m;
        let retract = wait_state(&mut op, Duration::from_millis(1500), |s| {
            s.safety == SafetyCode::Retract
        })
        .await
        .expect("retract after 1 s without commands");
        let t_retract = silent.elapsed().as_secs_f64();
        let holds = {
            let seen = seen.lock().unwrap();
            let last_command = seen[n_silent - 1].1;
            seen[n_silent..]
                .iter()
                .filter(|(_, p)| (p - last_command).norm() < 1e-9)
                .count()
        };
        eprintln!(
            "hold after {:.0} ms ({holds} hold set-points, probe {:.2} mm from where it pressed, \
             {:.2} N), retract after {:.0} ms",
            t_hold * 1e3,
            (hold_pos - skin).norm() * 1e3,
            hold.force_n.norm(),
            t_retract * 1e3
        );
        assert!((0.08..0.4).contains(&t_hold), "hold after {t_hold:.3} s");
        assert!((0.95..1.4).contains(&t_retract), "retract after {t_retract:.3} s");
        assert!(holds >= 10, "{holds} hold set-points in ~0.9 s");
        // The hold keeps the probe on the skin: it moves only with the breathing patient under
        // force regulation (2–5 mm peak to peak at 0.2–0.3 Hz: up to ~4 mm/s, and the hold is
        // read 0.1–0.3 s after the press; 1.75 mm was seen in one CI run), not tens of mm as
        // the retract below does.
        assert!(
            (hold_pos - skin).norm() < 3e-3,
            "the hold moved the probe {:.2} mm",
            (hold_pos - skin).norm() * 1e3
        );
        assert!(
            (hold.force_n.norm() - 5.0).abs() < 1.0,
            "force regulation goes on while holding: {:.2} N",
            hold.force_n.norm()
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let moved = next_state(&mut op).await;
        let lift_mm = (hold_pos - moved.probe.position_m).dot(&axis(&retract.probe)) * 1e3;
        let retract_target = seen.lock().unwrap().last().unwrap().1;
        let target_lift_mm = (hold_pos - retract_target).dot(&axis(&retract.probe)) * 1e3;
        eprintln!(
            "retract target {target_lift_mm:.1} mm up the probe axis; moved {lift_mm:.1} mm in 1.2 s"
        );
        assert!((75.0..85.0).contains(&target_lift_mm), "{target_lift_mm:.1} mm");
        assert!(lift_mm > 10.0, "retract moved only {lift_mm:.1} mm");
        assert!(moved.force_n.norm() < 0.5, "off the skin: {:.2} N", moved.force_n.norm());
        assert_eq!(moved.safety, SafetyCode::Retract);
        // Latched: commands publish nothing until the lease holder resets.
        let n = count();
        let s = steer(&mut op, 0.3, moved.probe, |_| goal).await;
        assert_eq!(count(), n, "set-points published while the retract is latched");
        assert_eq!(s.safety, SafetyCode::Retract);
        let req = op.request(|c| c.reset());
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));
        let here = next_state(&mut op).await.probe;
        let s = steer(&mut op, 0.5, here, |_| here.position_m).await;
        assert_eq!(s.safety, SafetyCode::Normal, "normal after reset");
        assert!(count() > n);

        // Scans run on the control node (`/scan/start`), not from here.
        let req = op.request(|c| c.start_protocol("lumbar"));
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Invalid));

        // E-stop: one set-point 20 mm up the probe axis, then nothing until reset.
        let before = next_state(&mut op).await.probe;
        let req = op.request(|c| c.estop());
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));
        wait_state(&mut op, Duration::from_millis(500), |s| {
            s.safety == SafetyCode::EStop
        })
        .await
        .expect("e-stop state");
        let n = count();
        let s = steer(&mut op, 0.3, here, |_| here.position_m).await;
        assert_eq!(s.safety, SafetyCode::EStop, "commands do not clear an e-stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(), n, "set-points after the e-stop's own");
        let estop_target = seen.lock().unwrap().last().unwrap().1;
        let estop_lift_mm = (before.position_m - estop_target).dot(&axis(&before)) * 1e3;
        eprintln!("e-stop target {estop_lift_mm:.1} mm up the probe axis");
        assert!((18.0..22.0).contains(&estop_lift_mm), "{estop_lift_mm:.1} mm");
        let req = op.request(|c| c.reset());
        assert_eq!(reply_to(&mut op, req).await, Some(ReplyStatus::Ok));

        // Bad DDS input: NaN poses and wrenches are refused (and counted), nothing faults.
        for _ in 0..20 {
            let header = Header::new(0, "base_link");
            let _ = bad_pose.publish(PoseStamped {
                header: header.clone(),
                pose: MsgPose {
                    position: Point {
                        x: f64::NAN,
                        y: 0.0,
                        z: 0.3,
                    },
                    orientation: Quaternion::default(),
                },
            });
            let nan = MsgVector3 {
                x: f64::NAN,
                y: 0.0,
                z: 0.0,
            };
            let _ = bad_wrench.publish(WrenchStamped {
                header: Header::new(0, "ft_sensor"),
                wrench: Wrench {
                    force: nan,
                    torque: nan,
                },
            });
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let s = steer(&mut op, 0.3, here, |_| here.position_m).await;
        assert_eq!(s.safety, SafetyCode::Normal);

        // Stale input: the control node is gone; set-points stop, the console sees a fault.
        sigterm(&control);
        let gone = Instant::now();
        let mut faulted = None;
        let mut iv = tokio::time::interval(Duration::from_millis(5));
        while gone.elapsed() < Duration::from_secs(3) && faulted.is_none() {
            iv.tick().await;
            op.send_command(CommandMode::Free, 0.0, Target::Pose(here));
            while let Some(ev) = op.next_event(Duration::ZERO).await {
                if let ConsoleEvent::State(s) = ev {
                    if s.safety == SafetyCode::FaultStop {
                        faulted = Some(Instant::now());
                    }
                }
            }
        }
        let faulted = faulted.expect("fault reported within 3 s of the control node leaving");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = count();
        steer(&mut op, 0.5, here, |_| here.position_m).await;
        assert_eq!(count(), n, "set-points published on stale input");
        let last_target = seen.lock().unwrap().last().unwrap().0;
        eprintln!(
            "fault reported {:.0} ms after the control node was told to stop; last set-point \
             {:.0} ms before the fault",
            (faulted - gone).as_secs_f64() * 1e3,
            faulted.saturating_duration_since(last_target).as_secs_f64() * 1e3
        );
        op.close().await;
        observer.close().await;
        control
    });
    let c = summary(control);
    sigterm(&teleop);
    let t = summary(teleop);
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    println!("control: {c}\nteleop: {t}");
    let r = &c["ros2"];
    assert_eq!(r["targets_rejected"], 0, "{r}");
    assert_eq!(r["forces_rejected"], 0, "{r}");
    assert!(r["targets_accepted"].as_u64().unwrap() > 100, "{r}");
    let l = &t["link"];
    assert_eq!(l["retracts"], 1, "{l}");
    assert!(l["holds"].as_u64().unwrap() >= 1, "{l}");
    assert_eq!(l["estops"], 1, "{l}");
    assert!(l["commands_ignored_latched"].as_u64().unwrap() > 50, "{l}");
    assert!(l["withheld_faulted"].as_u64().unwrap() > 0, "{l}");
    assert!(l["faults"].as_u64().unwrap() >= 1, "{l}");
    let dds = &t["dds"];
    assert!(dds["poses_refused"].as_u64().unwrap() >= 5, "{dds}");
    assert!(dds["wrenches_refused"].as_u64().unwrap() >= 5, "{dds}");
    assert!(dds["poses_received"].as_u64().unwrap() > 500, "{dds}");
    assert_eq!(dds["setpoints_refused"], 0, "{dds}");
    let published = dds["targets_published"].as_u64().unwrap();
    let n_seen = seen.lock().unwrap().len() as u64;
    assert!(
        n_seen <= published && n_seen * 100 >= published * 95,
        "{n_seen} of {published} published set-points seen"
    );
    assert!(t["frames_sent"].as_u64().unwrap() > 0);
    assert!(t["audit_records"].as_u64().unwrap() > 100);

    // Every audit record written while the DDS thread ran went out on /audit, in order, each
    // the file's line exactly (so a recording holds a verifiable copy of the log).
    let on_dds = audit_seen.lock().unwrap();
    let published = dds["audit_published"].as_u64().unwrap();
    assert!(published > 100, "{dds}");
    assert!(
        on_dds.len() as u64 * 100 >= published * 95,
        "{} of {published} /audit records seen",
        on_dds.len()
    );
    let file = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    let mut last_seq = None;
    for st in on_dds.iter() {
        let value = |k: &str| st.values.iter().find(|v| v.key == k).unwrap().value.clone();
        let seq: usize = value("seq").parse().unwrap();
        assert!(last_seq.is_none_or(|l| seq > l), "out of order at {seq}");
        last_seq = Some(seq);
        assert_eq!(
            value("record"),
            lines[seq],
            "record {seq} differs from the log"
        );
    }
    let operators = on_dds
        .iter()
        .filter(|st| {
            st.values
                .iter()
                .any(|v| v.key == "who" && v.value == "operator")
        })
        .count();
    assert!(operators > 100, "{operators} operator records on /audit");
}
