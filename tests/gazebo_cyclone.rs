//! `telecho node control --gazebo` against the `ros2_control` topics of the exported Gazebo world,
//! served by an independent DDS implementation: a Python peer on Eclipse Cyclone DDS (PyPI
//! `cyclonedds`) plays `joint_state_broadcaster` (`/joint_states`, its own joint order), the
//! bridged gz F/T sensor (`/telecho/ft_sensor`, `geometry_msgs/Wrench`) and the
//! `JointGroupPositionController` (`/telecho_position_controller/commands`,
//! `std_msgs/Float64MultiArray`), with a first-order servo. It commands a target pose 10 mm away
//! on `/probe/target_pose`; the node must move the peer's arm there. While the arm holds, the
//! node's commands must be the peer's joint positions bit for bit, in the controller's joint
//! order. Gazebo itself is not installable here (DESIGN.md). Skips without `cyclonedds`, fails
//! then under `TELECHO_REQUIRE_PEERS=1`.

use std::process::{Command, Stdio};

use serde_json::Value;
use telecho_core::peers::{missing_peer, python_output};
use telecho_sim::{SimWorld, UrdfSource, WorldConfig};

/// The message types of the peer (prepended to [`PEER`]).
const ROS2_TYPES: &str = include_str!("peers/ros2_types.py");

/// The peer. Arguments: domain id, then the six initial joint positions (URDF order). Prints
/// one JSON object.
const PEER: &str = r#"
random.seed(7)
domain = int(sys.argv[1])
q = [float(v) for v in sys.argv[2:8]]
URDF_ORDER = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint",
              "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]
# joint_state_broadcaster's order is its own; alphabetical here, unlike the URDF's.
ORDER = sorted(range(6), key=lambda i: URDF_ORDER[i])
dp = DomainParticipant(domain)
# rclcpp's SystemDefaultsQoS / the broadcaster's and bridge's defaults: reliable, volatile.
reliable = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)),
               Policy.Durability.Volatile, Policy.History.KeepLast(10),
               Policy.DataRepresentation(use_cdrv0_representation=True))
stream = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(1000))
joints_w = DataWriter(dp, Topic(dp, "rt/joint_states", JointState), qos=reliable)
joints_r = DataReader(dp, Topic(dp, "rt/joint_states", JointState), qos=stream)
ft_w = DataWriter(dp, Topic(dp, "rt/telecho/ft_sensor", Wrench), qos=reliable)
cmd_r = DataReader(dp, Topic(dp, "rt/telecho_position_controller/commands", Float64MultiArray),
                   qos=reliable)
pose_r = DataReader(dp, Topic(dp, "rt/probe/pose", PoseStamped), qos=stream)
target_w = DataWriter(dp, Topic(dp, "rt/probe/target_pose", PoseStamped), qos=reliable)

out = {"commands": 0, "first_commands": [], "node_joint_states": 0, "bad_commands": 0}
cmd = list(q)
poses = []
TAU = 0.02  # servo time constant, s
t0 = time.monotonic()
last = t0
target = None
moved = None
last_cmd = t0
while time.monotonic() - t0 < 25.0:
    now = time.monotonic()
    dt = now - last
    last = now
    for m in cmd_r.take(N=1000):
        if m is None or type(m).__name__.startswith("Invalid"):
            continue
        if len(m.data) != 6 or not all(math.isfinite(v) for v in m.data):
            out["bad_commands"] += 1
            continue
        out["commands"] += 1
        last_cmd = time.monotonic()
        if len(out["first_commands"]) < 20:
            out["first_commands"].append([bits(v) for v in m.data])
        cmd = list(m.data)
    # Hold still until the node has sent 20 commands (the exact round trip), then servo.
    qd = [0.0] * 6
    if out["commands"] >= 20:
        a = min(1.0, dt / TAU)
        for i in range(6):
            step = (cmd[i] - q[i]) * a
            qd[i] = step / dt if dt > 0 else 0.0
            q[i] += step
    wall = time.time()
    stamp = Time(sec=int(wall), nanosec=int((wall % 1.0) * 1e9))
    joints_w.write(JointState(header=Header(stamp=stamp, frame_id=""),
                              name=[URDF_ORDER[i] for i in ORDER],
                              position=[q[i] for i in ORDER],
                              velocity=[qd[i] for i in ORDER], effort=[]))
    # The probe holder's weight (0.35 kg) as gz reports it in the child frame with the probe
    # pointing down: +z, the holder pressing on the sensor. The node tares it away. With the
    # exported sensor's Gaussian noise (0.05 N, 0.002 N m).
    g = random.gauss
    ft_w.write(Wrench(force=Vector3(x=g(0, 0.05), y=g(0, 0.05), z=0.35 * 9.80665 + g(0, 0.05)),
                      torque=Vector3(x=g(0, 0.002), y=g(0, 0.002), z=g(0, 0.002))))
    for m in joints_r.take(N=1000):
        if m is not None and not type(m).__name__.startswith("Invalid") and list(m.name) == URDF_ORDER:
            out["node_joint_states"] += 1
    for m in pose_r.take(N=1000):
        if m is not None and not type(m).__name__.startswith("Invalid"):
            poses.append(m)
    if target is None and out["commands"] >= 500 and poses:
        p = poses[-1].pose
        target = [p.position.x + 0.01, p.position.y, p.position.z]
        out["p0"] = [p.position.x, p.position.y, p.position.z]
        out["target"] = target
        target_w.write(PoseStamped(header=Header(stamp=stamp, frame_id="base_link"),
                                   pose=Pose(position=Point(x=target[0], y=target[1], z=target[2]),
                                             orientation=p.orientation)))
        t_target = now
    if target is not None and poses and moved is None:
        p = poses[-1].pose.position
        if math.dist([p.x, p.y, p.z], target) < 0.0005:
            moved = now - t_target
            out["move_s"] = moved
    # Serve until the node has ended (no command for 1 s after some).
    if out["commands"] and now - last_cmd > 1.0:
        break
    time.sleep(0.002)
if poses:
    p = poses[-1].pose.position
    out["p1"] = [p.x, p.y, p.z]
    out["pose_frame_id"] = poses[-1].header.frame_id
out["q"] = q
print(json.dumps(out))
"#;

#[test]
fn control_node_drives_the_gazebo_ros2_control_topics_over_cyclone_dds() {
    if python_output("import cyclonedds.domain, cyclonedds.idl; print('ok')").is_none() {
        missing_peer(
            "cyclonedds (Python, with the Cyclone DDS C library)",
            "python3 -m pip install cyclonedds==11.0.1",
        );
        return;
    }
    // A domain of its own (1–9), away from the default 0 and the other DDS tests.
    let domain = (1 + std::process::id() % 9).to_string();
    // The arm where the exported world spawns it (`sim export-gazebo`'s initial_q).
    let xml = include_str!("../urdf/ur5e_probe.urdf");
    let world = SimWorld::new(&WorldConfig {
        seed: 3,
        phantom_seed: 3,
        ..WorldConfig::with_urdf(UrdfSource::Xml(xml.to_owned()))
    })
    .unwrap();
    let q0: Vec<f64> = world.arm().true_q().to_vec();
    let q0_args: Vec<String> = q0.iter().map(|v| format!("{v:?}")).collect();
    let peer = Command::new("python3")
        .args(["-c", &format!("{ROS2_TYPES}{PEER}"), &domain])
        .args(&q0_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Cyclone DDS peer");
    let node = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["node", "control", "--gazebo", "--sim-seed", "3"])
        .args(["--duration-s", "12", "--json", "--domain-id", &domain])
        .output()
        .expect("run telecho node control --gazebo");
    let peer = peer.wait_with_output().expect("wait for the peer");
    let node_err = String::from_utf8_lossy(&node.stderr);
    assert!(node.status.success(), "node failed: {node_err}");
    assert!(
        peer.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let summary: Value = serde_json::from_slice(&node.stdout).expect("node summary JSON");
    let got: Value = serde_json::from_slice(&peer.stdout).expect("peer JSON");
    println!("node: {summary}\npeer: {got}");

    // The node ran on the Gazebo plant and left the robot state to the launch's publishers.
    assert_eq!(summary["plant"], "gazebo");
    assert_eq!(summary["ros2"]["joint_states_published"], 0);
    assert_eq!(
        got["node_joint_states"], 0,
        "the node published /joint_states"
    );
    let gz = &summary["gazebo"];
    assert!(gz["joint_states_received"].as_u64().unwrap() > 1000, "{gz}");
    assert_eq!(gz["joint_states_refused"], 0, "{gz}");
    assert!(gz["wrenches_received"].as_u64().unwrap() > 1000, "{gz}");
    assert_eq!(got["bad_commands"], 0);
    assert!(got["commands"].as_u64().unwrap() > 1000, "{got}");

    // Holding at start, the commands are the peer's joint positions, bit for bit, in URDF order
    // (the peer sent them in alphabetical order).
    let want: Vec<u64> = q0.iter().map(|v| v.to_bits()).collect();
    let first = got["first_commands"].as_array().unwrap();
    assert_eq!(first.len(), 20);
    for c in first {
        let c: Vec<u64> = c
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .collect();
        assert_eq!(
            c, want,
            "a holding command differs from the measured joints"
        );
    }

    // The target 10 mm away was reached through the peer's servo (within 0.5 mm).
    assert_eq!(got["pose_frame_id"], "base_link");
    let target: Vec<f64> = serde_json::from_value(got["target"].clone()).unwrap();
    let p1: Vec<f64> = serde_json::from_value(got["p1"].clone()).unwrap();
    let err_m = target
        .iter()
        .zip(&p1)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        got["move_s"].as_f64().is_some() && err_m < 5e-4,
        "the probe is {:.2} mm from the target: {got}",
        err_m * 1e3
    );
    assert_eq!(summary["ros2"]["targets_accepted"], 1);
    assert!(
        summary["safety_state"]
            .as_str()
            .unwrap()
            .starts_with("Normal"),
        "{summary}"
    );
}
