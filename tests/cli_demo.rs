//! `telecho demo` end to end: the whole system on the simulator, its report and its recording.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use telecho_core::peers::{missing_peer, python_output};
use telecho_core::recording::read_recording;
use telecho_core::ros_msgs::{from_cdr, JointState, WrenchStamped};

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("cli-demo-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Share of pixels that differ from the top-left pixel: 0 for a blank image.
fn non_blank_fraction(path: &Path) -> f64 {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let data = &buf[..info.buffer_size()];
    let first = &data[..px];
    let n = data.len() / px;
    data.chunks(px).filter(|p| *p != first).count() as f64 / n as f64
}

/// True when `xvfb-run` (a virtual X display) is installed: the demo's `--viewer` window then
/// opens in it.
fn have_xvfb() -> bool {
    Command::new("xvfb-run")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn demo_runs_scan_registration_and_writes_report_and_recording() {
    let out = temp_dir("full");
    // With a virtual display the same run also opens the `--viewer` console window.
    let viewer = have_xvfb();
    if !viewer {
        missing_peer("xvfb-run (for demo --viewer)", "apt-get install xvfb xauth");
    }
    let demo = ["demo", "--json", "--sim-seed", "7", "--poses", "40"];
    let mut cmd = if viewer {
        let mut c = Command::new("xvfb-run");
        c.args([
            "-a",
            "-s",
            "-screen 0 1280x800x24",
            env!("CARGO_BIN_EXE_telecho"),
        ]);
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_telecho"))
    };
    cmd.args(demo);
    if viewer {
        cmd.arg("--viewer");
    }
    let run = cmd.arg("--out").arg(&out).output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["passed"], true, "{v}");
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "kinematics",
            "patient",
            "scan",
            "registration",
            "expert_review",
            "remote_expert",
            "report"
        ]
    );
    // Control: the protocol completed within the force targets.
    let scan = &v["scan"];
    assert_eq!(scan["completed"], true);
    assert_eq!(scan["force_limit_violations"], 0);
    assert!(scan["force_rms_error_n"].as_f64().unwrap() < 0.3, "{scan}");
    assert!(scan["force_max_n"].as_f64().unwrap() < 20.0, "{scan}");
    let frames = scan["frames"].as_u64().unwrap();
    assert!(frames > 500, "{scan}");
    // Perception: registered without an initial guess, within the accuracy.
    let reg = &v["registration"];
    assert!(reg["refused"].is_null(), "{reg}");
    assert_eq!(reg["accepted_by_expert"], true);
    assert!(reg["tre_median_mm"].as_f64().unwrap() < 1.0, "{reg}");
    assert!(reg["tre_p95_mm"].as_f64().unwrap() < 2.0, "{reg}");
    assert_eq!(reg["landmarks_reported"], 40);
    assert!(
        reg["landmark_error_median_mm"].as_f64().unwrap() < 2.0,
        "{reg}"
    );

    // Remote expert over QUIC (150 ms RTT, 1 % loss): the L4/L5 facet joint in the image plane
    // and within the 70 mm image depth, commands about one-way-delay old, no force violation.
    let rx = &v["remote_expert"];
    assert_eq!(rx["passed"], true, "{rx}");
    assert!(
        rx["facet_to_image_plane_mm"].as_f64().unwrap() < 3.0,
        "{rx}"
    );
    let depth = rx["facet_depth_mm"].as_f64().unwrap();
    assert!(depth > 0.0 && depth < 70.0, "{rx}");
    let p50 = rx["command_age_p50_ms"].as_f64().unwrap();
    assert!((70.0..150.0).contains(&p50), "{rx}");
    assert_eq!(rx["force_limit_violations"], 0);
    assert!(
        rx["force_max_n"].as_f64().unwrap() > 4.0,
        "the expert was in contact: {rx}"
    );
    assert!(rx["commands_applied"].as_u64().unwrap() > 3000, "{rx}");
    assert!(rx["audit_records"].as_u64().unwrap() > 3000, "{rx}");
    // The viewer window watched the live session as observer through the same impaired link.
    if viewer {
        let seen = &rx["viewer"];
        assert!(seen["states"].as_u64().unwrap() > 300, "{rx}");
        assert!(seen["frames"].as_u64().unwrap() > 50, "{rx}");
        assert_eq!(seen["bad_frames"], 0);
    }
    assert!(telecho_teleop::audit::verify(&out.join("teleop-audit.log")).is_ok());

    // The report and its plots.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for img in [
        "force.png",
        "overlay.png",
        "landmarks.png",
        "phases.png",
        "latency.png",
    ] {
        assert!(
            html.contains(&format!("src=\"{img}\"")),
            "{img} not in the report"
        );
        let f = non_blank_fraction(&out.join(img));
        assert!(f > 0.01, "{img} is blank ({f})");
    }
    assert!(html.contains("L3_spinous_tip"));

    // The recording: 1 kHz wrench and joint states over the whole scan, one image per frame.
    let duration_s = scan["duration_s"].as_f64().unwrap();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut first_wrench = None;
    let mut first_joints = None;
    for m in read_recording(out.join("telecho.mcap")).unwrap() {
        let m = m.unwrap();
        *counts.entry(m.topic.clone()).or_default() += 1;
        if m.topic == "/probe/wrench" && first_wrench.is_none() {
            first_wrench = Some(from_cdr::<WrenchStamped>(&m.data).unwrap());
        }
        if m.topic == "/joint_states" && first_joints.is_none() {
            first_joints = Some(from_cdr::<JointState>(&m.data).unwrap());
        }
    }
    let expected_cycles = duration_s * 1000.0;
    let wrenches = counts["/probe/wrench"] as f64;
    assert!(
        (wrenches - expected_cycles).abs() < 5.0,
        "{wrenches} wrenches for {duration_s} s"
    );
    assert_eq!(counts["/joint_states"], counts["/probe/wrench"]);
    assert_eq!(counts["/us/image"], frames);
    assert!(counts["/tf"] as f64 > expected_cycles / 10.0 - 5.0);
    assert_eq!(first_wrench.unwrap().header.frame_id, "ft_sensor");
    let joints = first_joints.unwrap();
    assert_eq!(joints.name.len(), 6);
    assert_eq!(joints.position.len(), 6);
    assert_eq!(
        v["recording_messages"].as_u64().unwrap(),
        counts.values().sum::<u64>()
    );

    // An independent reader (PyPI mcap + mcap-ros2-support) decodes the same file.
    if python_output("import mcap, mcap_ros2; print('ok')").is_none() {
        missing_peer(
            "PyPI mcap + mcap-ros2-support",
            "python3 -m pip install mcap==1.6.0 mcap-ros2-support==0.6.0",
        );
    } else {
        let code = format!(
            "from mcap.reader import make_reader\n\
             from mcap_ros2.decoder import DecoderFactory\n\
             r = make_reader(open({path:?}, 'rb'), decoder_factories=[DecoderFactory()])\n\
             n = 0\n\
             for _, ch, _, msg in r.iter_decoded_messages(topics=['/us/image']):\n\
             \x20   assert msg.encoding == 'mono8' and msg.width * msg.height == len(msg.data)\n\
             \x20   n += 1\n\
             w = next(r.iter_decoded_messages(topics=['/probe/wrench']))[3]\n\
             print(n, w.header.frame_id)\n",
            path = out.join("telecho.mcap").display().to_string()
        );
        let got = python_output(&code).expect("the Python reader failed");
        assert_eq!(got, format!("{frames} ft_sensor"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn demo_rejects_bad_arguments_before_writing() {
    let out = temp_dir("bad");
    let run = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["demo", "--poses", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(!out.join("report.html").exists());
    let file = temp_dir("file");
    std::fs::write(&file, b"x").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["demo", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_file(&file);
    // --viewer without a display, and --viewer with --ros2 (no remote-expert phase): refused
    // before anything runs or is written.
    for extra in [&["--viewer"][..], &["--viewer", "--ros2"][..]] {
        let run = Command::new(env!("CARGO_BIN_EXE_telecho"))
            .arg("demo")
            .args(extra)
            .arg("--out")
            .arg(&out)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("--viewer"), "{err}");
        assert!(!out.exists(), "nothing written");
    }
}

/// `demo --ros2`: the nodes as separate processes on DDS. The scan completes, the perception
/// node registers the CBCT from the ultrasound it received over DDS, and the recording holds
/// every node's topics (read back by the independent PyPI `mcap` reader).
#[test]
fn demo_ros2_runs_the_nodes_as_processes_over_dds() {
    let out = temp_dir("ros2");
    let domain = (30 + std::process::id() % 20).to_string();
    let run = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "demo",
            "--ros2",
            "--sim-seed",
            "2",
            "--domain-id",
            &domain,
            "--real-time-factor",
            "5",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    println!("{s}");
    assert_eq!(s["mode"], "ros2");
    assert_eq!(s["scan_state"], "done");
    assert_eq!(s["registered"], true);
    assert_eq!(s["safety_events"], 0);
    let tre = s["tre_median_mm"].as_f64().unwrap();
    assert!(tre < 1.0, "TRE median {tre} mm");
    let collected = s["frames_collected"].as_u64().unwrap();
    assert!(collected > 1000, "{collected} frames");
    assert!(s["images_published"].as_u64().unwrap() >= collected);
    for log in ["control", "perception", "record"] {
        assert!(out.join("logs").join(format!("{log}.log")).is_file());
    }
    assert!(out.join("perception/sweep/sweep.json").is_file());
    let mcap = out.join("ros2.mcap");
    if python_output("import mcap; print('ok')").is_none() {
        missing_peer("PyPI mcap", "python3 -m pip install mcap==1.6.0");
    } else {
        let code = format!(
            "from mcap.reader import make_reader\n\
             s = make_reader(open({path:?}, 'rb')).get_summary()\n\
             c = {{}}\n\
             for i, n in s.statistics.channel_message_counts.items():\n\
             \x20   t = s.channels[i].topic\n\
             \x20   c[t] = c.get(t, 0) + n\n\
             print(' '.join(f'{{k}}={{v}}' for k, v in sorted(c.items())))",
            path = mcap.to_str().unwrap()
        );
        let got = python_output(&code).expect("the Python reader failed");
        println!("{got}");
        let counts: HashMap<&str, u64> = got
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect();
        for topic in [
            "/joint_states",
            "/probe/wrench",
            "/tf",
            "/us/image",
            "/us/probe_pose",
            "/scan/status",
        ] {
            assert!(
                counts.get(topic).copied().unwrap_or(0) > 10,
                "{topic}: {got}"
            );
        }
        // Both nodes' latched data: the robot's fixed frames and base → ct.
        assert_eq!(counts.get("/tf_static"), Some(&2), "{got}");
        assert_eq!(counts.get("/perception/registration"), Some(&1), "{got}");
        assert_eq!(counts.get("/perception/landmarks"), Some(&1), "{got}");
        assert!(counts["/us/image"] as f64 >= 0.95 * collected as f64);
    }
    let _ = std::fs::remove_dir_all(&out);
}
