//! The controller driving an arm through the `ros2_control` topics of the exported Gazebo world
//! (`telecho_control::gazebo`). Gazebo itself cannot be installed on these machines, so the arm,
//! patient and F/T sensor behind those topics are the built-in simulator, published as Gazebo's
//! plugins publish them: `/joint_states` in the broadcaster's own joint order, the wrench in the
//! gz sensor's child frame without a header, positions taken from
//! `/telecho_position_controller/commands`. The loop runs in real time, as it would against
//! Gazebo. (The same topics against an independent DDS implementation: `tests/ros2_cyclone.rs`.)
#![cfg(feature = "ros2")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nalgebra::Vector3;
use telecho_control::gazebo::{
    GazeboConfig, GazeboPlant, COMMAND_TOPIC, FT_TOPIC, GAZEBO_FT_STALE_S, JOINT_STATES_TOPIC,
};
use telecho_control::{
    spawn_realtime_until, ContactPhase, ControlOutput, ControllerConfig, ExecutorConfig,
    ProbeController, ProbeTarget, RtConfig, SafetyConfig, SafetyEventKind, SafetyState,
    ScanExecutor, ScanProtocol, ScanState, TargetSource,
};
use telecho_core::ros2::{command_qos, open_node, publisher, stream_qos, subscription};
use telecho_core::ros_msgs::{Float64MultiArray, Header, JointState, Vector3 as V3, Wrench};
use telecho_sim::plant::{operator_start_pose, patient_workspace};
use telecho_sim::robot::JointCommand;
use telecho_sim::{SimWorld, WorldConfig};

const UR5E: &str = include_str!("../../urdf/ur5e_probe.urdf");
/// The probe holder's origin in the `ft_sensor` frame (the URDF's `ft_sensor_probe_holder_joint`).
const P_SENSOR_CHILD: [f64; 3] = [0.0, 0.0, 0.02];

/// What the stand-in saw.
#[derive(Debug, Default)]
struct Seen {
    commands: u64,
    bad_commands: u64,
    /// True axial contact force (N, pressing positive) at each step while the controller
    /// regulates the force of a sweep.
    sweep_forces: Vec<f64>,
    /// Largest tip displacement after the joint states stopped, m.
    tip_motion_after_stop_m: f64,
    /// Largest tip speed after the joint states stopped, m/s.
    tip_speed_after_stop_m_s: f64,
    /// Axial force when they stopped, and at the end, N.
    force_at_stop_n: f64,
    force_at_end_n: f64,
}

/// Flags the control thread raises for the stand-in.
#[derive(Debug, Default)]
struct Flags {
    /// Stop the stand-in.
    stop: AtomicBool,
    /// `/joint_states` goes silent (a crashed broadcaster) while the arm keeps servoing.
    mute_joints: AtomicBool,
    /// The controller is regulating the force of a sweep.
    regulating: AtomicBool,
    /// Control cycles spent regulating a sweep.
    regulating_cycles: AtomicU64,
}

/// The simulator behind Gazebo's topics, one 1 ms step per wall-clock millisecond.
fn stand_in(
    domain: u16,
    mut world: SimWorld,
    flags: Arc<Flags>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut node = open_node(domain, "/", "gz_stand_in").unwrap();
        let joints_pub =
            publisher::<JointState>(&mut node, JOINT_STATES_TOPIC, command_qos()).unwrap();
        let ft_pub = publisher::<Wrench>(&mut node, FT_TOPIC, command_qos()).unwrap();
        let cmd_sub =
            subscription::<Float64MultiArray>(&mut node, COMMAND_TOPIC, stream_qos(10)).unwrap();
        let names = [
            "shoulder_pan_joint",
            "shoulder_lift_joint",
            "elbow_joint",
            "wrist_1_joint",
            "wrist_2_joint",
            "wrist_3_joint",
        ];
        // The broadcaster's order is its own: reversed here, so a plant that ignored names
        // would command the wrong joints.
        let order: Vec<usize> = (0..6).rev().collect();
        let t0 = Instant::now();
        let mut next = t0;
        let mut tip_at_mute: Option<Vector3<f64>> = None;
        let mut tip_prev = Vector3::zeros();
        while !flags.stop.load(Ordering::Acquire) {
            let mut newest = None;
            while let Ok(Some((m, _))) = cmd_sub.take() {
                newest = Some(m);
            }
            if let Some(m) = newest {
                let mut s = seen.lock().unwrap();
                if m.data.len() == 6 && m.data.iter().all(|v| v.is_finite()) {
                    s.commands += 1;
                    drop(s);
                    // A refused command leaves the servos holding, as in gz.
                    let _ = world.command(JointCommand::Position(&m.data));
                } else {
                    s.bad_commands += 1;
                }
            }
            world.steps(1);
            let obs = world.observe();
            let truth = world.ground_truth();
            let axis = truth.t_base_probe.rotation.column(2).into_owned();
            let axial = -truth.contact_force_base_n.dot(&axis);
            let tip = truth.t_base_probe.translation;
            if flags.regulating.load(Ordering::Acquire) {
                seen.lock().unwrap().sweep_forces.push(axial);
            }
            if flags.mute_joints.load(Ordering::Acquire) {
                let mut s = seen.lock().unwrap();
                let t0 = *tip_at_mute.get_or_insert_with(|| {
                    s.force_at_stop_n = axial;
                    tip
                });
                s.tip_motion_after_stop_m = s.tip_motion_after_stop_m.max((tip - t0).norm());
                s.tip_speed_after_stop_m_s = s
                    .tip_speed_after_stop_m_s
                    .max((tip - tip_prev).norm() / 1e-3);
                s.force_at_end_n = axial;
            } else {
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap();
                let msg = JointState {
                    header: Header::new(ns, ""),
                    name: order.iter().map(|&i| names[i].to_owned()).collect(),
                    position: order.iter().map(|&i| obs.q_rad[i]).collect(),
                    velocity: order.iter().map(|&i| obs.qd_rad_s[i]).collect(),
                    effort: Vec::new(),
                };
                joints_pub.publish(msg).unwrap();
            }
            tip_prev = tip;
            // gz reports in the child (probe holder) frame, torque about its origin.
            let f = obs.ft.force_n;
            let t = obs.ft.torque_nm - Vector3::from(P_SENSOR_CHILD).cross(&f);
            let v = |v: Vector3<f64>| V3 {
                x: v.x,
                y: v.y,
                z: v.z,
            };
            ft_pub
                .publish(Wrench {
                    force: v(f),
                    torque: v(t),
                })
                .unwrap();
            // Real time, as gz at a real-time factor of 1: a step every millisecond; a late step
            // does not catch up (the world runs slower for a moment).
            next = (next + Duration::from_millis(1)).max(Instant::now());
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
    })
}

/// The scan executor, telling the stand-in when a sweep's force is being regulated.
struct Tagged {
    exec: ScanExecutor,
    flags: Arc<Flags>,
}

impl TargetSource for Tagged {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        let regulating =
            self.exec.state() == ScanState::Sweep && last.contact_phase == ContactPhase::Regulate;
        self.flags.regulating.store(regulating, Ordering::Release);
        if regulating {
            self.flags.regulating_cycles.fetch_add(1, Ordering::AcqRel);
        }
        self.exec.next_target(time_s, last)
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The lumbar scan through the Gazebo interfaces until 3 s of its first sweep have run; then
/// the joint states stop: the supervisor faults and the arm holds.
#[test]
fn a_scan_sweeps_at_its_force_through_the_gazebo_topics_and_holds_when_they_stop() {
    let domain = 10 + (std::process::id() % 15) as u16;
    let seed = 2;
    let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    let start = operator_start_pose(&world, seed);
    let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
    let config = ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m,
            workspace_max_m,
            ft_stale_s: GAZEBO_FT_STALE_S,
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    };
    let protocol = ScanProtocol::default_lumbar();
    let setpoint_n = protocol.sweeps[0].force_n;
    let exec =
        ScanExecutor::new(&protocol, &start, &config.safety, ExecutorConfig::default()).unwrap();
    let controller = ProbeController::from_urdf_str(UR5E, config).unwrap();

    let flags = Arc::new(Flags::default());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let gz = stand_in(domain, world, Arc::clone(&flags), Arc::clone(&seen));
    let gz_config = GazeboConfig {
        domain_id: domain,
        ..GazeboConfig::default()
    };
    let plant = GazeboPlant::connect(controller.chain(), UR5E, &gz_config)
        .expect("the plant connects to the stand-in");
    let targets = Tagged {
        exec,
        flags: Arc::clone(&flags),
    };
    static END: AtomicBool = AtomicBool::new(false);
    let handle = spawn_realtime_until(
        plant,
        controller,
        targets,
        Duration::from_millis(1),
        u64::MAX,
        RtConfig::default(),
        Some(&END),
    )
    .unwrap();
    // 3 s of sweep (at most 60 s of wall time), then the broadcaster goes silent for 1 s.
    let t0 = Instant::now();
    while flags.regulating_cycles.load(Ordering::Acquire) < 3_000
        && t0.elapsed() < Duration::from_secs(60)
        && !handle.is_finished()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let swept_s = t0.elapsed().as_secs_f64();
    flags.mute_joints.store(true, Ordering::Release);
    std::thread::sleep(Duration::from_secs(1));
    END.store(true, Ordering::Release);
    let run = handle.join().unwrap();
    flags.stop.store(true, Ordering::Release);
    gz.join().unwrap();
    let report = run.plant.stop();
    let seen = seen.lock().unwrap();
    println!(
        "{swept_s:.1} s to 3 s of sweep; {} commands, {report:?}; loop {:?}",
        seen.commands, run.stats
    );

    // Commands flowed at the loop rate and were all well formed.
    assert_eq!(seen.bad_commands, 0);
    assert!(seen.commands as f64 > 500.0 * swept_s, "{}", seen.commands);
    assert_eq!(report.joint_states_refused, 0, "{report:?}");
    // The force, measured by the simulator's truth, while the sweep regulated it.
    let mut f = seen.sweep_forces.clone();
    assert!(f.len() > 2_000, "{} samples of sweep", f.len());
    let med = median(&mut f);
    println!(
        "sweep force median {med:.2} N over {} steps (setpoint {setpoint_n} N)",
        f.len()
    );
    assert!(
        (med - setpoint_n).abs() < 0.5,
        "median contact force {med:.2} N against the {setpoint_n} N setpoint"
    );
    // After the joint states stopped: fault stop on invalid input, and the supervisor's reaction
    // in contact, a slow back-off of at most `fault_backoff_m` (5 mm at 10 mm/s) that unloads the
    // patient; no jump.
    assert!(report.stale_reads > 0, "{report:?}");
    assert_eq!(
        run.output.safety,
        SafetyState::FaultStop {
            cause: SafetyEventKind::InvalidInput
        }
    );
    let backoff_m = SafetyConfig::default().fault_backoff_m;
    println!(
        "after the stop: tip moved {:.2} mm, at most {:.1} mm/s; force {:.2} N -> {:.2} N",
        seen.tip_motion_after_stop_m * 1e3,
        seen.tip_speed_after_stop_m_s * 1e3,
        seen.force_at_stop_n,
        seen.force_at_end_n
    );
    assert!(
        seen.tip_motion_after_stop_m < backoff_m + 0.002,
        "the tip moved {:.1} mm after the joint states stopped",
        seen.tip_motion_after_stop_m * 1e3
    );
    assert!(
        seen.tip_speed_after_stop_m_s < 0.04,
        "tip speed {:.3} m/s after the stop",
        seen.tip_speed_after_stop_m_s
    );
    assert!(
        seen.force_at_end_n < 0.5 * seen.force_at_stop_n,
        "force {:.2} N at the stop, {:.2} N a second later",
        seen.force_at_stop_n,
        seen.force_at_end_n
    );
}

/// No Gazebo: `connect` names what is missing instead of starting a loop on nothing.
#[test]
fn connect_without_gazebo_says_what_is_missing() {
    let controller = ProbeController::from_urdf_str(UR5E, ControllerConfig::default()).unwrap();
    let config = GazeboConfig {
        domain_id: 25 + (std::process::id() % 5) as u16,
        connect_timeout: Duration::from_millis(300),
        ..GazeboConfig::default()
    };
    let e = GazeboPlant::connect(controller.chain(), UR5E, &config).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/joint_states and /telecho/ft_sensor"),
        "{msg}"
    );
    assert!(msg.contains("telecho_gazebo.launch.py"), "{msg}");
}

/// The exported world offers exactly what the plant reads and writes: the command topic of its
/// position controller (a `JointGroupPositionController` over the chain's joints in chain
/// order), `joint_state_broadcaster`, and the F/T sensor bridged as `geometry_msgs/msg/Wrench`
/// on the plant's topic.
#[test]
fn the_exported_gazebo_world_matches_the_plant_topics() {
    let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    let dir = std::env::temp_dir().join(format!("telecho-gz-match-{}", std::process::id()));
    let spec = telecho_sim::gazebo::GazeboExport::new(
        "ur5e_probe",
        UR5E,
        world.phantom(),
        world.ground_truth().t_base_ct,
    );
    let files = telecho_sim::gazebo::export_gazebo(&dir, &spec).unwrap();
    let yaml = std::fs::read_to_string(&files.controllers).unwrap();
    let launch = std::fs::read_to_string(&files.launch).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let controller = COMMAND_TOPIC
        .strip_prefix('/')
        .and_then(|t| t.strip_suffix("/commands"))
        .unwrap();
    assert_eq!(controller, telecho_sim::gazebo::POSITION_CONTROLLER);
    assert!(yaml.contains(&format!(
        "{controller}:\n      type: position_controllers/JointGroupPositionController"
    )));
    assert!(yaml.contains("joint_state_broadcaster"));
    let chain = ProbeController::from_urdf_str(UR5E, ControllerConfig::default())
        .unwrap()
        .chain()
        .joint_names()
        .to_vec();
    let listed: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(listed, chain, "the controller's joints, in chain order");
    assert_eq!(FT_TOPIC, telecho_sim::gazebo::FT_TOPIC);
    assert!(launch.contains(&format!(
        "{FT_TOPIC}@geometry_msgs/msg/Wrench[gz.msgs.Wrench"
    )));
    assert!(launch.contains("\"joint_state_broadcaster\""));
    assert!(launch.contains("robot_state_publisher"));
}
