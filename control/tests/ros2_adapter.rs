//! The control node's ROS 2 adapter (`ros2` feature): the TF tree against the chain's forward
//! kinematics, command validation, and the whole adapter over DDS against a second, independent
//! `ros2-client` participant in this process (RustDDS ↔ RustDDS; the Cyclone DDS interop test is
//! `tests/ros2_cyclone.rs` at the top level).
#![cfg(feature = "ros2")]

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{
    Context, ContextOptions, MessageTypeName, Name, NodeName, NodeOptions, QosProfile,
};
use telecho_control::ros2::{
    attach, CommandValidator, Rejection, Ros2Config, TfTree, FORCE_SETPOINT_RANGE_N,
};
use telecho_control::{
    spawn_realtime_with, Chain, ControllerConfig, ProbeController, RtConfig, SafetyConfig,
};
use telecho_core::ros_msgs::{
    Float64, Header, JointState, Point, Pose, PoseStamped, Quaternion, StringMsg, TFMessage,
    WrenchStamped,
};
use telecho_core::Transform;
use telecho_sim::plant::patient_workspace;
use telecho_sim::{SimWorld, WorldConfig};

const UR5E: &str = include_str!("../../urdf/ur5e_probe.urdf");
const PANDA: &str = include_str!("../../urdf/panda_probe.urdf");

fn tree(xml: &str) -> (Chain, TfTree) {
    let robot = urdf_rs::read_from_string(xml).unwrap();
    let chain = Chain::from_robot(&robot, Some("base_link"), "probe_tip").unwrap();
    let tree = TfTree::from_robot(&robot, "base_link", "probe_tip", chain.joint_names()).unwrap();
    (chain, tree)
}

#[test]
fn tf_tree_composes_to_the_chain_forward_kinematics() {
    for xml in [UR5E, PANDA] {
        let (chain, tree) = tree(xml);
        assert_eq!(tree.moving_transforms(&[0.0; 7]).count(), chain.dof());
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut q = vec![0.0; chain.dof()];
        for _ in 0..50 {
            chain.sample_configuration(&mut q, || rng.random::<f64>());
            let fk = chain.fk(&q).unwrap();
            let tf = tree.compose(&q);
            let (dp, dr) = fk.distance_to(&tf);
            assert!(dp < 1e-12 && dr < 1e-12, "{dp} m, {dr} rad");
        }
    }
    // The UR5e path: six movable joints, four fixed ones from the wrist to the probe tip.
    let (_, tree) = tree(UR5E);
    let fixed: Vec<(String, String)> = tree
        .static_transforms()
        .map(|(p, c, _)| (p.to_owned(), c.to_owned()))
        .collect();
    let names = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect()
    };
    assert_eq!(
        fixed,
        names(&[
            ("wrist_3_link", "flange"),
            ("flange", "ft_sensor"),
            ("ft_sensor", "probe_holder"),
            ("probe_holder", "probe_tip"),
        ])
    );
    let first = tree.moving_transforms(&[0.0; 6]).next().unwrap();
    assert_eq!((first.0, first.1), ("base_link", "shoulder_link"));
}

#[test]
fn tf_tree_refuses_a_base_that_is_not_an_ancestor() {
    let robot = urdf_rs::read_from_string(UR5E).unwrap();
    let e = TfTree::from_robot(&robot, "probe_tip", "base_link", &[]).unwrap_err();
    assert!(e.to_string().contains("not an ancestor"), "{e}");
}

fn validator() -> CommandValidator {
    CommandValidator {
        base_frame: "base_link".into(),
        workspace_min_m: [0.2, -0.3, 0.0],
        workspace_max_m: [0.8, 0.3, 0.6],
    }
}

fn pose_msg(frame: &str, p: [f64; 3], q: [f64; 4]) -> PoseStamped {
    PoseStamped {
        header: Header::new(0, frame),
        pose: Pose {
            position: Point {
                x: p[0],
                y: p[1],
                z: p[2],
            },
            orientation: Quaternion {
                x: q[0],
                y: q[1],
                z: q[2],
                w: q[3],
            },
        },
    }
}

#[test]
fn commands_are_validated() {
    let v = validator();
    let h = std::f64::consts::FRAC_1_SQRT_2;
    // A 90° turn about z at (0.5, 0.1, 0.3).
    let t = v
        .pose(&pose_msg("base_link", [0.5, 0.1, 0.3], [0.0, 0.0, h, h]))
        .unwrap();
    assert_eq!(t.translation.as_slice(), [0.5, 0.1, 0.3]);
    let expected =
        Transform::from_xyz_rpy([0.5, 0.1, 0.3], [0.0, 0.0, std::f64::consts::FRAC_PI_2]).unwrap();
    assert!(t.distance_to(&expected).1 < 1e-12);
    // A slightly unnormalised quaternion is normalised.
    let t = v
        .pose(&pose_msg(
            "base_link",
            [0.5, 0.0, 0.3],
            [0.0, 0.0, 0.0, 1.0005],
        ))
        .unwrap();
    assert!((t.rotation.determinant() - 1.0).abs() < 1e-12);

    let reject = |m: PoseStamped| v.pose(&m).unwrap_err();
    let id = [0.0, 0.0, 0.0, 1.0];
    assert_eq!(
        reject(pose_msg("base_link", [f64::NAN, 0.0, 0.3], id)),
        Rejection::NotFinite("position")
    );
    assert_eq!(
        reject(pose_msg(
            "base_link",
            [0.5, 0.0, 0.3],
            [0.0, f64::INFINITY, 0.0, 1.0]
        )),
        Rejection::NotFinite("orientation")
    );
    assert!(matches!(
        reject(pose_msg("world", [0.5, 0.0, 0.3], id)),
        Rejection::WrongFrame { .. }
    ));
    assert!(matches!(
        reject(pose_msg("", [0.5, 0.0, 0.3], id)),
        Rejection::WrongFrame { .. }
    ));
    assert!(matches!(
        reject(pose_msg("base_link", [0.5, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0])),
        Rejection::NotUnitQuaternion(n) if n == 0.0
    ));
    for p in [
        [0.1, 0.0, 0.3],
        [0.5, 0.31, 0.3],
        [0.5, 0.0, -0.01],
        [0.5, 0.0, 5.0],
    ] {
        assert!(matches!(
            reject(pose_msg("base_link", p, id)),
            Rejection::OutsideWorkspace(..)
        ));
    }

    assert_eq!(v.force(&Float64 { data: 0.0 }), Ok(None));
    assert_eq!(v.force(&Float64 { data: 5.0 }), Ok(Some(5.0)));
    for f in FORCE_SETPOINT_RANGE_N {
        assert_eq!(v.force(&Float64 { data: f }), Ok(Some(f)));
    }
    for f in [0.5, -5.0, 20.5, 1e9] {
        assert_eq!(
            v.force(&Float64 { data: f }),
            Err(Rejection::ForceOutOfRange(f))
        );
    }
    assert_eq!(
        v.force(&Float64 { data: f64::NAN }),
        Err(Rejection::NotFinite("force setpoint"))
    );
}

#[test]
fn bad_adapter_settings_are_refused_before_anything_starts() {
    let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    let controller = ProbeController::from_urdf_str(UR5E, ControllerConfig::default()).unwrap();
    for config in [
        Ros2Config {
            domain_id: 300,
            ..Ros2Config::default()
        },
        Ros2Config {
            wrench_rate_hz: 0.0,
            ..Ros2Config::default()
        },
        Ros2Config {
            state_rate_hz: f64::NAN,
            ..Ros2Config::default()
        },
        Ros2Config {
            node_name: "bad name".into(),
            ..Ros2Config::default()
        },
    ] {
        let e = attach(world.clone(), &controller, UR5E, &config).unwrap_err();
        assert!(e.to_string().contains("configuration"), "{e}");
    }
}

fn stream_qos() -> QosProfile {
    QosProfile::subscription_default()
        .reliability_best_effort()
        .history(History::KeepLast { depth: 5000 })
}

fn latched_qos() -> QosProfile {
    QosProfile::subscription_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::TransientLocal)
        .history(History::KeepLast { depth: 1 })
}

/// The adapter end to end over DDS, against a second RustDDS participant: the published topics
/// arrive with the right contents and rate, and a target pose moves the simulated probe.
#[test]
fn adapter_publishes_and_takes_commands_over_dds() {
    let domain = 150 + (std::process::id() % 50) as u16;
    let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
    let config = ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m,
            workspace_max_m,
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    };
    let controller = ProbeController::from_urdf_str(UR5E, config).unwrap();
    let joint_names = controller.chain().joint_names().to_vec();
    let ros = Ros2Config {
        domain_id: domain,
        ..Ros2Config::default()
    };
    let (plant, targets, adapter) = attach(world, &controller, UR5E, &ros).unwrap();

    // The peer: an independent participant on the same domain.
    let context = Context::with_options(ContextOptions::new().domain_id(domain)).unwrap();
    let mut node = context
        .new_node(
            NodeName::new("/", "peer").unwrap(),
            NodeOptions::new()
                .enable_rosout(false)
                .start_parameter_services(false),
        )
        .unwrap();
    let topic = |name: &str, pkg: &str, ty: &str, qos: &QosProfile| {
        node.create_topic(
            &Name::parse(name).unwrap(),
            MessageTypeName::new(pkg, ty),
            qos,
        )
        .unwrap()
    };
    let wrench_t = topic(
        "/probe/wrench",
        "geometry_msgs",
        "WrenchStamped",
        &stream_qos(),
    );
    let joints_t = topic("/joint_states", "sensor_msgs", "JointState", &stream_qos());
    let pose_t = topic("/probe/pose", "geometry_msgs", "PoseStamped", &stream_qos());
    let tf_t = topic("/tf", "tf2_msgs", "TFMessage", &stream_qos());
    let desc_t = topic("/robot_description", "std_msgs", "String", &latched_qos());
    let cmd_qos = QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .history(History::KeepLast { depth: 10 });
    let target_t = topic(
        "/probe/target_pose",
        "geometry_msgs",
        "PoseStamped",
        &cmd_qos,
    );
    let force_t = topic("/probe/force_setpoint", "std_msgs", "Float64", &cmd_qos);
    let wrench = node
        .create_subscription::<WrenchStamped>(&wrench_t, None)
        .unwrap();
    let joints = node
        .create_subscription::<JointState>(&joints_t, None)
        .unwrap();
    let pose = node
        .create_subscription::<PoseStamped>(&pose_t, None)
        .unwrap();
    let tf = node.create_subscription::<TFMessage>(&tf_t, None).unwrap();
    let desc = node
        .create_subscription::<StringMsg>(&desc_t, None)
        .unwrap();
    let target = node
        .create_publisher::<PoseStamped>(&target_t, None)
        .unwrap();
    let force = node.create_publisher::<Float64>(&force_t, None).unwrap();

    let handle = spawn_realtime_with(
        plant,
        controller,
        targets,
        Duration::from_millis(1),
        6000,
        RtConfig::default(),
    )
    .unwrap();

    #[derive(Default)]
    struct Seen {
        wrenches: Vec<WrenchStamped>,
        joints: Option<JointState>,
        pose: Option<PoseStamped>,
        tf: Option<TFMessage>,
        description: Option<StringMsg>,
    }
    let mut seen = Seen::default();
    let drain = |seen: &mut Seen| {
        while let Ok(Some((m, _))) = wrench.take() {
            seen.wrenches.push(m);
        }
        while let Ok(Some((m, _))) = joints.take() {
            seen.joints = Some(m);
        }
        while let Ok(Some((m, _))) = pose.take() {
            seen.pose = Some(m);
        }
        while let Ok(Some((m, _))) = tf.take() {
            seen.tf = Some(m);
        }
        while let Ok(Some((m, _))) = desc.take() {
            seen.description = Some(m);
        }
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        drain(&mut seen);
        if seen.wrenches.len() > 500 && seen.description.is_some() && seen.pose.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drain(&mut seen);
    let wrenches = &seen.wrenches;
    assert!(wrenches.len() > 500, "{} wrenches", wrenches.len());
    assert!(wrenches.iter().all(|w| w.header.frame_id == "ft_sensor"));
    let f_max = wrenches
        .iter()
        .map(|w| {
            let f = w.wrench.force;
            (f.x * f.x + f.y * f.y + f.z * f.z).sqrt()
        })
        .fold(0.0, f64::max);
    assert!(
        f_max.is_finite() && f_max < 1.0,
        "free-space wrench {f_max} N"
    );
    let js = seen.joints.clone().expect("joint_states");
    assert_eq!(js.name, joint_names);
    assert_eq!(js.position.len(), 6);
    assert_eq!(seen.tf.as_ref().expect("tf").transforms.len(), 6);
    assert_eq!(
        seen.description.as_ref().expect("robot_description").data,
        UR5E
    );

    // A force setpoint beyond 20 N is rejected; 0 N (stay in free space) is accepted.
    force.publish(Float64 { data: 25.0 }).unwrap();
    force.publish(Float64 { data: 0.0 }).unwrap();
    // Command 20 mm up; the probe follows.
    let p0 = seen.pose.clone().expect("probe pose").pose;
    let mut cmd = seen.pose.clone().unwrap();
    cmd.pose.position.z += 0.02;
    target.publish(cmd.clone()).unwrap();
    let goal = cmd.pose.position;
    let t1 = Instant::now();
    let mut reached = false;
    while t1.elapsed() < Duration::from_secs(3) {
        drain(&mut seen);
        let p = seen.pose.as_ref().unwrap().pose.position;
        if ((p.x - goal.x).powi(2) + (p.y - goal.y).powi(2) + (p.z - goal.z).powi(2)).sqrt() < 1e-3
        {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let run = handle.join().unwrap();
    let report = adapter.stop().unwrap();
    assert!(
        reached,
        "probe did not reach the target: {:?} → {:?}",
        p0.position, goal
    );
    assert_eq!(report.targets_accepted, 1, "{report:?}");
    assert_eq!(report.targets_rejected, 0);
    assert_eq!((report.forces_accepted, report.forces_rejected), (1, 1));
    assert_eq!(report.last_force_setpoint_n, Some(0.0));
    assert_eq!(report.last_target_pose, Some(cmd));
    assert_eq!(report.samples_dropped, 0);
    // The adapter's F/T compensation holds the controller's bias exactly.
    assert_eq!(
        run.plant.ft_compensator().bias(),
        run.controller.ft_compensator().bias()
    );
    assert!(run.plant.ft_compensator().is_tared());
}

/// The scan services and the ultrasound stream of `attach_with`: an unusable image geometry is
/// refused before anything starts; `/scan/stop` without a scan and a second `/scan/start` are
/// refused with their reasons; a frame of the wrong size is dropped and counted, a good one
/// published with its spacing and pose; the scan's progress reaches `/scan/status`.
#[test]
fn scan_services_and_ultrasound_frames_over_dds() {
    use telecho_control::ros2::{
        attach_with, call_trigger, open_node, subscription, trigger_client, AttachOptions,
        ProbeDescription, ProtocolInfo, ScanService, ScanTag, UsFrame, UsGeometry,
        DEFAULT_SERVICE_MAPPING,
    };
    use telecho_control::{ExecutorConfig, ScanExecutor, ScanProtocol};
    use telecho_core::ros_msgs::{Image, ScanStatus, Vector3Stamped};

    let domain = 200 + (std::process::id() % 30) as u16;
    let world = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
    let config = ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m,
            workspace_max_m,
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    };
    let controller = ProbeController::from_urdf_str(UR5E, config).unwrap();
    let protocol = ScanProtocol::default_lumbar();
    let start = telecho_sim::plant::operator_start_pose(&world, 1);
    let safety = controller.config().safety;
    let service = || ScanService {
        make: Box::new({
            let protocol = protocol.clone();
            move || {
                ScanExecutor::new(&protocol, &start, &safety, ExecutorConfig::default())
                    .map_err(|e| e.to_string())
            }
        }),
        protocol: ProtocolInfo {
            name: protocol.name.clone(),
            arm: "ur5e".into(),
            urdf: "ur5e_probe".into(),
            seed: 1,
            probe: ProbeDescription {
                frequency_hz: 7.5e6,
                aperture_m: 0.038,
                depth_m: 0.07,
                slice_thickness_m: 0.001,
            },
            sweeps: Vec::new(),
        },
    };
    let geometry = UsGeometry {
        width: 8,
        height: 4,
        pixel_spacing_m: [1e-4, 2e-4],
    };
    let ros = Ros2Config {
        domain_id: domain,
        ..Ros2Config::default()
    };
    // A zero-width image geometry never starts.
    let bad = AttachOptions {
        scan: None,
        us: Some(UsGeometry {
            width: 0,
            ..geometry
        }),
    };
    assert!(attach_with(world.clone(), &controller, UR5E, &ros, bad).is_err());

    let options = AttachOptions {
        scan: Some(service()),
        us: Some(geometry),
    };
    let (plant, targets, adapter) = attach_with(world, &controller, UR5E, &ros, options).unwrap();
    let frames = adapter.frame_sender().unwrap();
    let mut peer = open_node(domain, "/", "scan_peer").unwrap();
    let images =
        subscription::<Image>(&mut peer, "/us/image", telecho_core::ros2::frame_qos(10)).unwrap();
    let spacing = subscription::<Vector3Stamped>(
        &mut peer,
        "/us/pixel_spacing",
        telecho_core::ros2::frame_qos(10),
    )
    .unwrap();
    let status =
        subscription::<StringMsg>(&mut peer, "/scan/status", telecho_core::ros2::latched_qos())
            .unwrap();
    let start_client = trigger_client(&mut peer, "/scan/start", DEFAULT_SERVICE_MAPPING).unwrap();
    let stop_client = trigger_client(&mut peer, "/scan/stop", DEFAULT_SERVICE_MAPPING).unwrap();
    let handle = spawn_realtime_with(
        plant,
        controller,
        targets,
        Duration::from_millis(1),
        6000,
        RtConfig::default(),
    )
    .unwrap();

    let answer = call_trigger(&stop_client, Duration::from_secs(10)).unwrap();
    assert!(
        !answer.success && answer.message == "no scan is running",
        "{answer:?}"
    );
    let answer = call_trigger(&start_client, Duration::from_secs(10)).unwrap();
    assert!(answer.success, "{answer:?}");
    let answer = call_trigger(&start_client, Duration::from_secs(10)).unwrap();
    assert!(
        !answer.success && answer.message.contains("under way"),
        "{answer:?}"
    );
    // A ROS set-point while the scan has the probe is rejected, never passed on.
    let target_pub = telecho_core::ros2::publisher::<PoseStamped>(
        &mut peer,
        "/probe/target_pose",
        telecho_core::ros2::command_qos(),
    )
    .unwrap();
    let q = nalgebra::UnitQuaternion::from_rotation_matrix(&nalgebra::Rotation3::from_matrix(
        &start.rotation,
    ));
    let during_scan = PoseStamped {
        header: Header {
            frame_id: "base_link".into(),
            ..Header::default()
        },
        pose: Pose {
            position: Point {
                x: start.translation.x,
                y: start.translation.y,
                z: start.translation.z + 0.05,
            },
            orientation: Quaternion {
                x: q.i,
                y: q.j,
                z: q.k,
                w: q.w,
            },
        },
    };
    for _ in 0..10 {
        target_pub.publish(during_scan.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let frame = |n: usize| UsFrame {
        time_s: 1.0,
        pixels: vec![9; n],
        t_base_probe: Transform::IDENTITY,
        force_n: 0.0,
        force_setpoint_n: 0.0,
        scan: ScanTag::default(),
    };
    assert!(frames.send(frame(31)), "queued (the adapter drops it)");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got_image = None;
    let mut got_spacing = None;
    while Instant::now() < deadline && (got_image.is_none() || got_spacing.is_none()) {
        frames.send(frame(32));
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some((m, _))) = images.take() {
            got_image = Some(m);
        }
        if let Ok(Some((m, _))) = spacing.take() {
            got_spacing = Some(m);
        }
    }
    let image = got_image.expect("an image arrived");
    assert_eq!((image.width, image.height, image.data.len()), (8, 4, 32));
    assert_eq!(image.header.frame_id, "us_image");
    let spacing = got_spacing.expect("its spacing arrived");
    assert_eq!((spacing.vector.x, spacing.vector.y), (1e-4, 2e-4));
    let answer = call_trigger(&stop_client, Duration::from_secs(10)).unwrap();
    assert!(answer.success, "{answer:?}");
    let mut states = Vec::new();
    while !handle.is_finished() {
        while let Ok(Some((m, _))) = status.take() {
            let s: ScanStatus = serde_json::from_str(&m.data).unwrap();
            states.push(s.state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = handle.join().unwrap();
    let report = adapter.stop().unwrap();
    println!("report {report:?}\nstates {states:?}");
    assert_eq!(report.images_dropped, 1, "the 31-byte frame");
    assert!(report.images_published >= 1);
    assert_eq!((report.scans_started, report.scans_stopped), (1, 1));
    assert_eq!(report.service_refusals, 2);
    assert_eq!(report.targets_accepted, 0);
    assert!(report.targets_rejected >= 1, "{report:?}");
    assert!(
        states.iter().any(|s| s == "retract" || s == "aborted"),
        "the stop reached /scan/status: {states:?}"
    );
    let exec = run.source.executor().expect("the scan ran");
    assert!(
        matches!(
            exec.abort_cause(),
            Some(telecho_control::AbortCause::Stopped)
        ),
        "{:?}",
        exec.abort_cause()
    );
}
