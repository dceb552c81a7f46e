//! Interoperability of the control node's ROS 2 adapter with Eclipse Cyclone DDS.
//!
//! `telecho node control --sim` runs in its own process on a DDS domain of its own; an
//! independent peer — Python with the PyPI `cyclonedds` package (the Cyclone C library it
//! bundles), using IDL data classes with the ROS 2 DDS type names and `rt/` topic names as ROS 2's
//! rmw layers do — subscribes to the node's topics, checks what arrives, and commands a target
//! pose (first an invalid one, which must be rejected, then a valid one ~13 mm away, which the
//! simulated probe must reach), then a pose above the skin and a 5 N force setpoint, which the
//! published wrench must show. It also reads the ultrasound stream (`/us/image` mono8 with its
//! `/us/pixel_spacing`) and calls `/scan/stop` the way `rmw_cyclonedds` calls services (request
//! header in the payload, echoed in the reply). Skips without `cyclonedds`, fails then under
//! `TELECHO_REQUIRE_PEERS=1`.

use std::process::{Command, Stdio};

use serde_json::Value;
use telecho_control::ros2::TfTree;
use telecho_control::Chain;
use telecho_core::peers::{missing_peer, python_output};

/// The message types of the peer (prepended to [`PEER`]).
const ROS2_TYPES: &str = include_str!("peers/ros2_types.py");

/// The Cyclone DDS peer. Argument: the domain id. Prints one JSON object.
const PEER: &str = r#"
domain = int(sys.argv[1])
dp = DomainParticipant(domain)
stream = Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5000))
latched = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)),
              Policy.Durability.TransientLocal, Policy.History.KeepLast(1))
command = Qos(Policy.Reliability.Reliable(duration(milliseconds=100)),
              Policy.Durability.Volatile, Policy.History.KeepLast(10),
              Policy.DataRepresentation(use_cdrv0_representation=True))
readers = {
    "joint_states": DataReader(dp, Topic(dp, "rt/joint_states", JointState), qos=stream),
    "wrench": DataReader(dp, Topic(dp, "rt/probe/wrench", WrenchStamped), qos=stream),
    "pose": DataReader(dp, Topic(dp, "rt/probe/pose", PoseStamped), qos=stream),
    "tf": DataReader(dp, Topic(dp, "rt/tf", TFMessage), qos=stream),
    "tf_static": DataReader(dp, Topic(dp, "rt/tf_static", TFMessage), qos=latched),
    "description": DataReader(dp, Topic(dp, "rt/robot_description", String_), qos=latched),
    "image": DataReader(dp, Topic(dp, "rt/us/image", Image), qos=stream),
    "spacing": DataReader(dp, Topic(dp, "rt/us/pixel_spacing", Vector3Stamped), qos=stream),
}
stop_requests = DataWriter(dp, Topic(dp, "rq/scan/stopRequest", TriggerRequest), qos=command)
stop_replies = DataReader(dp, Topic(dp, "rr/scan/stopReply", TriggerResponse), qos=command)
writer = DataWriter(dp, Topic(dp, "rt/probe/target_pose", PoseStamped), qos=command)
force_writer = DataWriter(dp, Topic(dp, "rt/probe/force_setpoint", Float64), qos=command)
got = {k: [] for k in readers}

def drain():
    for k, r in readers.items():
        for s in r.take(N=10000):
            if s is not None and not type(s).__name__.startswith("Invalid"):
                got[k].append((time.monotonic(), s))

def ready():
    return (len(got["joint_states"]) >= 5 and len(got["wrench"]) >= 500 and len(got["pose"]) >= 5
            and len(got["tf"]) >= 5 and got["tf_static"] and got["description"]
            and len(got["image"]) >= 3 and len(got["spacing"]) >= 3
            and len(writer.get_matched_subscriptions()) >= 1
            and len(force_writer.get_matched_subscriptions()) >= 1
            and len(stop_requests.get_matched_subscriptions()) >= 1)

t0 = time.monotonic()
while time.monotonic() - t0 < 8.0 and not ready():
    drain()
    time.sleep(0.01)
drain()
out = {"ready": bool(ready()), "waited_s": time.monotonic() - t0,
       "counts": {k: len(v) for k, v in got.items()}}
if out["ready"]:
    js = got["joint_states"][-1][1]
    out["joint_names"] = list(js.name)
    out["joint_positions_finite"] = all(math.isfinite(v) for _, m in got["joint_states"] for v in m.position)
    w = [m for _, m in got["wrench"]]
    out["wrench_frame_ids"] = sorted({m.header.frame_id for m in w})
    f = [math.sqrt(m.wrench.force.x**2 + m.wrench.force.y**2 + m.wrench.force.z**2) for m in w]
    tq = [math.sqrt(m.wrench.torque.x**2 + m.wrench.torque.y**2 + m.wrench.torque.z**2) for m in w]
    out["wrench_all_finite"] = all(math.isfinite(x) for x in f + tq)
    out["wrench_force_mean_n"] = sum(f) / len(f)
    out["wrench_force_max_n"] = max(f)
    out["wrench_torque_max_nm"] = max(tq)
    out["wrench_distinct_fx"] = len({m.wrench.force.x for m in w})
    stamps = sorted(m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in w)
    span = stamps[-1] - stamps[0]
    out["wrench_stamp_span_s"] = span
    out["wrench_rate_hz"] = (len(stamps) - 1) / span if span > 0 else 0.0
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    out["wrench_median_interval_s"] = gaps[len(gaps) // 2]
    out["pose_frame_id"] = got["pose"][-1][1].header.frame_id
    out["tf_children"] = sorted({t.child_frame_id for _, m in got["tf"] for t in m.transforms})
    out["tf_static"] = [
        {"parent": t.header.frame_id, "child": t.child_frame_id,
         "bits": [bits(v) for v in (t.transform.translation.x, t.transform.translation.y,
                                      t.transform.translation.z, t.transform.rotation.x,
                                      t.transform.rotation.y, t.transform.rotation.z,
                                      t.transform.rotation.w)]}
        for t in got["tf_static"][-1][1].transforms]
    out["description"] = got["description"][-1][1].data
    img = got["image"][-1][1]
    out["image"] = {"encoding": img.encoding, "width": img.width, "height": img.height,
                    "step": img.step, "is_bigendian": img.is_bigendian, "bytes": len(img.data),
                    "frame_id": img.header.frame_id}
    sp = got["spacing"][-1][1]
    out["pixel_spacing"] = [sp.vector.x, sp.vector.y, sp.header.frame_id]
    spacing_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in got["spacing"]}
    image_stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in got["image"]]
    out["image_stamps_matched"] = sum(1 for s in image_stamps if s in spacing_stamps)
    out["images"] = len(image_stamps)

    # A service call the rmw_cyclonedds way: /scan/stop with no scan running must answer
    # success = false with the reason, echoing our request header.
    guid, seq = 0x1122334455667788, 7
    stop_requests.write(TriggerRequest(client_guid=guid, seq=seq, structure_needs_at_least_one_member=0))
    t_call = time.monotonic()
    reply = None
    while time.monotonic() - t_call < 5.0 and reply is None:
        for r in stop_replies.take(N=10):
            if r is not None and not type(r).__name__.startswith("Invalid") and r.client_guid == guid and r.seq == seq:
                reply = r
        time.sleep(0.01)
    out["stop_reply"] = None if reply is None else {"success": bool(reply.success), "message": reply.message}

    p0 = got["pose"][-1][1].pose
    out["p0"] = [p0.position.x, p0.position.y, p0.position.z]
    now = time.time()
    stamp = Time(sec=int(now), nanosec=int((now % 1.0) * 1e9))
    # Invalid: 5 m above the workspace. Must be rejected and not move the probe.
    writer.write(PoseStamped(header=Header(stamp=stamp, frame_id="base_link"),
                             pose=Pose(position=Point(x=p0.position.x, y=p0.position.y, z=p0.position.z + 5.0),
                                       orientation=p0.orientation)))
    time.sleep(0.2)
    target = [p0.position.x + 0.03 / 3.0, p0.position.y - 0.02 / 7.0, p0.position.z + 0.02 / 3.0]
    q = p0.orientation
    msg = PoseStamped(header=Header(stamp=stamp, frame_id="base_link"),
                      pose=Pose(position=Point(x=target[0], y=target[1], z=target[2]),
                                orientation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w)))
    writer.write(msg)
    out["sent"] = {"sec": stamp.sec, "nanosec": stamp.nanosec, "frame_id": "base_link",
                   "bits": [bits(v) for v in target + [q.x, q.y, q.z, q.w]]}
    out["target"] = target
    t1 = time.monotonic()
    settled = None
    while time.monotonic() - t1 < 5.0:
        drain()
        p = got["pose"][-1][1].pose.position
        d = math.dist([p.x, p.y, p.z], target)
        if d < 0.00025 and settled is None:
            settled = time.monotonic()
        if settled is not None and time.monotonic() - settled > 0.2:
            break
        time.sleep(0.01)
    drain()
    last = [m.pose.position for _, m in got["pose"][-10:]]
    out["p1"] = [sum(p.x for p in last) / len(last), sum(p.y for p in last) / len(last),
                 sum(p.z for p in last) / len(last)]
    out["move_s"] = time.monotonic() - t1

    # Contact: down 75 mm in free space (to ~25 mm above this patient's skin), then a 5 N
    # force setpoint: the controller searches along the probe axis, touches and regulates.
    down = [target[0], target[1], target[2] - 0.075]
    stamp = Time(sec=int(time.time()), nanosec=123456789)
    writer.write(PoseStamped(header=Header(stamp=stamp, frame_id="base_link"),
                             pose=Pose(position=Point(x=down[0], y=down[1], z=down[2]),
                                       orientation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w))))
    out["sent"] = {"sec": stamp.sec, "nanosec": stamp.nanosec, "frame_id": "base_link",
                   "bits": [bits(v) for v in down + [q.x, q.y, q.z, q.w]]}
    t2 = time.monotonic()
    while time.monotonic() - t2 < 4.0:
        drain()
        p = got["pose"][-1][1].pose.position
        if math.dist([p.x, p.y, p.z], down) < 0.001:
            break
        time.sleep(0.01)
    force_writer.write(Float64(data=5.0))
    t3 = time.monotonic()
    pressed = None
    while time.monotonic() - t3 < 8.0:
        drain()
        now = time.monotonic()
        recent = [m for t, m in got["wrench"] if now - t < 0.3]
        if len(recent) > 50:
            mean = sum(math.sqrt(m.wrench.force.x**2 + m.wrench.force.y**2 + m.wrench.force.z**2)
                       for m in recent) / len(recent)
            if 4.5 < mean < 5.5 and pressed is None:
                pressed = now
            if pressed is not None and now - pressed > 0.5:
                out["contact_force_mean_n"] = mean
                out["contact_fz_mean_n"] = sum(m.wrench.force.z for m in recent) / len(recent)
                break
        time.sleep(0.02)
    out["contact_s"] = time.monotonic() - t3
print(json.dumps(out))
"#;

fn bits(v: f64) -> u64 {
    v.to_bits()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn control_node_interoperates_with_cyclone_dds() {
    if python_output("import cyclonedds.domain, cyclonedds.idl; print('ok')").is_none() {
        missing_peer(
            "cyclonedds (Python, with the Cyclone DDS C library)",
            "python3 -m pip install cyclonedds==11.0.1",
        );
        return;
    }
    // A domain of its own, away from the default 0 and from the adapter's RustDDS test in
    // control/tests (150–199).
    let domain = (100 + std::process::id() % 50).to_string();
    let node = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["node", "control", "--sim", "--ros2", "--sim-seed", "3"])
        .args(["--duration-s", "14", "--json", "--domain-id", &domain])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start telecho node control");
    let peer = Command::new("python3")
        .args(["-c", &format!("{ROS2_TYPES}{PEER}"), &domain])
        .output()
        .expect("run the Cyclone DDS peer");
    let node = node.wait_with_output().expect("wait for the node");
    let node_err = String::from_utf8_lossy(&node.stderr);
    assert!(node.status.success(), "node failed: {node_err}");
    assert!(
        peer.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&peer.stderr)
    );
    let summary: Value = serde_json::from_slice(&node.stdout).expect("node summary JSON");
    let got: Value = serde_json::from_slice(&peer.stdout).expect("peer JSON");
    assert_eq!(
        got["ready"], true,
        "the peer did not receive every topic: {got}\nnode: {summary}\n{node_err}"
    );

    // What the node published, as Cyclone read it.
    let xml_path = concat!(env!("CARGO_MANIFEST_DIR"), "/urdf/ur5e_probe.urdf");
    let xml = std::fs::read_to_string(xml_path).unwrap();
    let chain = Chain::from_urdf_str(&xml, Some("base_link"), "probe_tip").unwrap();
    let names: Vec<&str> = got["joint_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, chain.joint_names());
    assert_eq!(got["joint_positions_finite"], true);
    assert_eq!(got["wrench_frame_ids"], serde_json::json!(["ft_sensor"]));
    assert_eq!(got["pose_frame_id"], "base_link");
    assert_eq!(
        got["description"].as_str().unwrap(),
        xml,
        "robot_description"
    );
    let children: Vec<&str> = got["tf_children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        children,
        [
            "forearm_link",
            "shoulder_link",
            "upper_arm_link",
            "wrist_1_link",
            "wrist_2_link",
            "wrist_3_link"
        ]
    );
    // /tf_static: every fixed joint of the path, bit-identical to the URDF's transforms.
    let robot = urdf_rs::read_from_string(&xml).unwrap();
    let tree = TfTree::from_robot(&robot, "base_link", "probe_tip", chain.joint_names()).unwrap();
    // …and the image plane of the ultrasound stream on the probe (`probe_tip` → `us_image`).
    let us = telecho_sim::UsParams::default();
    let geometry = telecho_control::ros2::UsGeometry {
        width: us.width as u32,
        height: us.height as u32,
        pixel_spacing_m: [us.lateral_spacing_m(), us.axial_spacing_m()],
    };
    let expected: Vec<(String, String, Vec<u64>)> = tree
        .static_transforms()
        .chain(std::iter::once((
            "probe_tip",
            "us_image",
            geometry.t_probe_image(),
        )))
        .map(|(p, c, t)| {
            let m = telecho_core::ros_msgs::Transform::from(&t);
            let v = [
                m.translation.x,
                m.translation.y,
                m.translation.z,
                m.rotation.x,
                m.rotation.y,
                m.rotation.z,
                m.rotation.w,
            ];
            (
                p.to_owned(),
                c.to_owned(),
                v.iter().map(|x| bits(*x)).collect(),
            )
        })
        .collect();
    let received: Vec<(String, String, Vec<u64>)> = got["tf_static"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["parent"].as_str().unwrap().to_owned(),
                t["child"].as_str().unwrap().to_owned(),
                t["bits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(received.len(), 5, "{received:?}");
    assert_eq!(received, expected);

    // The ultrasound stream: mono8 frames of the simulated probe, each with its spacing (same
    // stamp) — what a ROS 2 image viewer needs.
    let img = &got["image"];
    assert_eq!(img["encoding"], "mono8");
    assert_eq!(
        (img["width"].as_u64(), img["height"].as_u64()),
        (Some(us.width as u64), Some(us.height as u64))
    );
    assert_eq!(img["step"], img["width"]);
    assert_eq!(img["is_bigendian"], 0);
    assert_eq!(img["bytes"].as_u64(), Some((us.width * us.height) as u64));
    assert_eq!(img["frame_id"], "us_image");
    assert_eq!(
        got["pixel_spacing"][0].as_f64(),
        Some(us.lateral_spacing_m())
    );
    assert_eq!(got["pixel_spacing"][1].as_f64(), Some(us.axial_spacing_m()));
    let images = got["images"].as_u64().unwrap();
    assert!(
        got["image_stamps_matched"].as_u64().unwrap() + 2 >= images,
        "image stamps without a spacing message: {got}"
    );
    // The service, called the way rmw_cyclonedds calls it.
    assert_eq!(
        got["stop_reply"],
        serde_json::json!({"success": false, "message": "no scan is running"}),
        "{got}"
    );

    // The wrench: finite, compensated (free space: bias and the probe's weight removed, only
    // sensor noise left; the raw reading carries the ~3.4 N payload weight), live (noise makes
    // every sample differ), at the 1 kHz control rate.
    assert_eq!(got["wrench_all_finite"], true);
    let f_mean = got["wrench_force_mean_n"].as_f64().unwrap();
    let f_max = got["wrench_force_max_n"].as_f64().unwrap();
    assert!(
        f_mean < 0.3 && f_max < 1.0,
        "free-space wrench {f_mean} / {f_max} N"
    );
    assert!(got["wrench_torque_max_nm"].as_f64().unwrap() < 0.1);
    assert!(got["wrench_distinct_fx"].as_u64().unwrap() > 100);
    // Every control cycle's sample is published: consecutive stamps 1 ms apart (cycles the
    // loop skipped when the machine stalled it leave gaps, so the median, not the mean).
    let interval = got["wrench_median_interval_s"].as_f64().unwrap();
    assert!(
        (interval - 1e-3).abs() < 1e-5,
        "wrench interval {interval} s"
    );
    let rate = got["wrench_rate_hz"].as_f64().unwrap();
    assert!(rate > 500.0, "wrench rate {rate} Hz");

    // Commands: the invalid one rejected, the valid one received bit-identical and acted on.
    let r = &summary["ros2"];
    assert_eq!(r["targets_rejected"], 1, "{summary}");
    assert_eq!(r["targets_accepted"], 2, "{summary}");
    assert_eq!(r["forces_accepted"], 1, "{summary}");
    assert_eq!(r["last_force_setpoint_n"], 5.0);
    let last = &r["last_target_pose"];
    let sent = &got["sent"];
    assert_eq!(last["header"]["frame_id"], sent["frame_id"]);
    assert_eq!(last["header"]["stamp"]["sec"], sent["sec"]);
    assert_eq!(last["header"]["stamp"]["nanosec"], sent["nanosec"]);
    let p = &last["pose"]["position"];
    let o = &last["pose"]["orientation"];
    let received_bits: Vec<u64> = [
        &p["x"], &p["y"], &p["z"], &o["x"], &o["y"], &o["z"], &o["w"],
    ]
    .iter()
    .map(|v| bits(v.as_f64().unwrap()))
    .collect();
    let sent_bits: Vec<u64> = sent["bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(received_bits, sent_bits, "target pose changed in transit");

    let p0 = f64s(&got["p0"]);
    let p1 = f64s(&got["p1"]);
    let target = f64s(&got["target"]);
    let commanded: Vec<f64> = (0..3).map(|i| target[i] - p0[i]).collect();
    let moved: Vec<f64> = (0..3).map(|i| p1[i] - p0[i]).collect();
    for i in 0..3 {
        assert!(
            (moved[i] - commanded[i]).abs() < 0.5e-3,
            "axis {i}: moved {moved:?} m for {commanded:?} m commanded"
        );
    }
    // In contact the wrench carries the 5 N setpoint, pressing along the probe axis (the load
    // on the sensor reads as negative Fz).
    let contact = got["contact_force_mean_n"]
        .as_f64()
        .expect("no 5 N contact within 8 s");
    assert!((contact - 5.0).abs() < 0.5, "contact force {contact} N");
    let fz = got["contact_fz_mean_n"].as_f64().unwrap();
    assert!(fz < -4.0, "contact Fz {fz} N");
    assert_eq!(summary["safety_state"], "Normal", "{summary}");
    assert!(summary["ft_bias_mismatch_n"].as_f64().unwrap() < 1e-12);
    assert_eq!(r["samples_dropped"], 0, "{summary}");
}
