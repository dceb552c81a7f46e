//! `telecho scan` end to end: the JSON contract, the files it writes (CBCT as `sim phantom`,
//! ground truth, the tracked ultrasound sweep in the `telecho-sweep/1` format), determinism, bad
//! input, the Panda arm and a safe abort.
//!
//! The default protocol (about 110 s of simulated time, under 2 s of wall time in release) runs
//! once; the other tests use a short two-sweep protocol. CBCTs are written with 2 mm voxels to
//! keep the runs short.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nalgebra::{Matrix3, Matrix4};
use serde_json::Value;
use telecho_control::Chain;
use telecho_sim::{SimWorld, WorldConfig};

/// Two short sweeps (30 mm sagittal, 20 mm transverse) on the midline at L5.
const SHORT_PROTOCOL: &str = r#"name = "short"
[defaults]
force_n = 8.0
speed_m_s = 0.02

[[sweep]]
name = "midline_short"
orientation = "sagittal"
from = [0.0, 0.0]
to = [0.0, 0.03]

[[sweep]]
name = "transverse_short"
orientation = "transverse"
from = [-0.01, 0.03]
to = [0.01, 0.03]
"#;

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("cli-scan-{name}"));
    std::fs::remove_dir_all(&d).ok();
    d
}

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

fn scan(seed: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "scan",
        "--sim-seed",
        seed,
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--voxel-mm",
        "2.0",
    ];
    args.extend_from_slice(extra);
    telecho(&args)
}

fn short_protocol_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("short.toml");
    std::fs::write(&p, SHORT_PROTOCOL).unwrap();
    p
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Matrix4<f64> {
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    let mut m = Matrix4::zeros();
    for (i, r) in rows.iter().enumerate() {
        let r = r.as_array().unwrap();
        assert_eq!(r.len(), 4);
        for (j, x) in r.iter().enumerate() {
            m[(i, j)] = x.as_f64().unwrap();
        }
    }
    m
}

fn assert_rigid(m: &Matrix4<f64>) {
    let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into_owned();
    assert!(
        (r.transpose() * r - Matrix3::identity()).amax() < 1e-9,
        "{m}"
    );
    assert!((r.determinant() - 1.0).abs() < 1e-9);
    assert_eq!(
        m.row(3).iter().copied().collect::<Vec<_>>(),
        [0.0, 0.0, 0.0, 1.0]
    );
}

/// Translation (m) and rotation (rad) between two rigid transforms.
fn pose_distance(a: &Matrix4<f64>, b: &Matrix4<f64>) -> (f64, f64) {
    let dp = (a.fixed_view::<3, 1>(0, 3) - b.fixed_view::<3, 1>(0, 3)).norm();
    let ra: Matrix3<f64> = a.fixed_view::<3, 3>(0, 0).into_owned();
    let rb: Matrix3<f64> = b.fixed_view::<3, 3>(0, 0).into_owned();
    let c = (((ra.transpose() * rb).trace() - 1.0) / 2.0).clamp(-1.0, 1.0);
    (dp, c.acos())
}

fn urdf(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("urdf")
            .join(name),
    )
    .unwrap()
}

/// Checks the sweep folder against its format and the ground truth; returns sweep.json.
fn check_sweep(dir: &Path, urdf_name: &str, report: &Value) -> Value {
    let sweep = read_json(&dir.join("sweep/sweep.json"));
    assert_eq!(sweep["format"], "telecho-sweep/1");
    let (w, h) = (
        sweep["width"].as_u64().unwrap() as usize,
        sweep["height"].as_u64().unwrap() as usize,
    );
    assert_eq!(sweep["frame_bytes"].as_u64().unwrap() as usize, w * h);
    let frames = sweep["frames"].as_array().unwrap();
    assert!(!frames.is_empty());
    assert_eq!(frames.len() as u64, sweep["frame_count"].as_u64().unwrap());
    assert_eq!(frames.len() as u64, report["frames"].as_u64().unwrap());
    let pixels = std::fs::read(
        dir.join("sweep")
            .join(sweep["frames_file"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(
        pixels.len(),
        frames.len() * w * h,
        "frames.u8 holds every frame"
    );
    // Sweeps partition the frame list in order.
    let mut next = 0;
    for s in sweep["sweeps"].as_array().unwrap() {
        assert_eq!(s["first_frame"].as_u64().unwrap(), next);
        let n = s["frame_count"].as_u64().unwrap();
        for f in &frames[next as usize..(next + n) as usize] {
            assert_eq!(f["sweep"], s["name"]);
        }
        next += n;
    }
    assert_eq!(next as usize, frames.len());
    // The image-to-probe calibration: pixel centres span the aperture, rows the depth.
    let t_pi = matrix(&sweep["t_probe_image"]);
    let aperture = sweep["probe"]["aperture_m"].as_f64().unwrap();
    let depth = sweep["probe"]["depth_m"].as_f64().unwrap();
    let first = t_pi * nalgebra::Vector4::new(0.0, 0.0, 0.0, 1.0);
    let last = t_pi * nalgebra::Vector4::new((w - 1) as f64, (h - 1) as f64, 0.0, 1.0);
    assert!((first.x + aperture / 2.0).abs() < 1e-9 && first.z.abs() < 1e-12);
    assert!((last.x - aperture / 2.0).abs() < 1e-9 && (last.z - depth).abs() < 1e-9);
    assert!(t_pi.fixed_view::<3, 3>(0, 0).determinant() > 0.0);

    // Each frame: increasing time, contact states, pose = FK of the recorded measured joints,
    // and within encoder noise of the simulator's true probe pose.
    let chain = Chain::from_urdf_str(&urdf(urdf_name), None, "probe_tip").unwrap();
    let truth = read_json(&dir.join("ground_truth.json"));
    let truth_frames = truth["frames"].as_array().unwrap();
    assert_eq!(truth_frames.len(), frames.len());
    let mut last_t = -1.0;
    let (mut worst_fk, mut worst_p, mut worst_r) = (0.0f64, 0.0f64, 0.0f64);
    for (i, (f, t)) in frames.iter().zip(truth_frames).enumerate() {
        assert_eq!(f["index"].as_u64().unwrap() as usize, i);
        let time = f["time_s"].as_f64().unwrap();
        assert!(time > last_t);
        last_t = time;
        assert_eq!(t["time_s"].as_f64().unwrap(), time);
        assert!(
            matches!(f["state"].as_str().unwrap(), "contact" | "sweep"),
            "{f}"
        );
        assert!(f["force_n"].as_f64().unwrap().is_finite());
        let q: Vec<f64> = f["q_rad"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(q.len(), chain.dof());
        let pose = matrix(&f["t_base_probe"]);
        assert_rigid(&pose);
        let fk = chain.fk(&q).unwrap().to_matrix4();
        worst_fk = worst_fk.max((fk - pose).amax());
        let (dp, dr) = pose_distance(&pose, &matrix(&t["t_base_probe"]));
        worst_p = worst_p.max(dp);
        worst_r = worst_r.max(dr);
    }
    println!(
        "{} frames: |pose − FK(q)| ≤ {worst_fk:.1e}; vs true pose ≤ {:.1} µm, {:.1} µrad",
        frames.len(),
        worst_p * 1e6,
        worst_r * 1e6
    );
    assert!(worst_fk < 1e-12);
    // Encoder noise σ = 1e-5 rad per joint: tens of micrometres at the tip.
    assert!(
        worst_p < 2e-4 && worst_r < 1e-3,
        "{worst_p} m, {worst_r} rad"
    );
    // Mid-sweep frames show tissue.
    let mid = frames
        .iter()
        .position(|f| f["state"] == "sweep")
        .expect("a sweep frame");
    let img = &pixels[mid * w * h..(mid + 1) * w * h];
    let mean = img.iter().map(|&p| p as f64).sum::<f64>() / img.len() as f64;
    assert!(mean > 5.0, "frame {mid} looks empty (mean {mean})");
    sweep
}

#[test]
fn default_protocol_scan_meets_the_contract() {
    let dir = temp_dir("default");
    let seed = 3u64;
    let out = scan(&seed.to_string(), &dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = stdout_json(&out);
    println!(
        "seed {seed}: rms {} N, overshoot {} N, max {} N, {} s simulated in {} s, {} frames",
        r["force_rms_error_n"],
        r["overshoot_n"],
        r["force_max_n"],
        r["duration_s"],
        r["wall_s"],
        r["frames"]
    );
    for key in [
        "force_rms_error_n",
        "force_max_n",
        "duration_s",
        "frames",
        "safety_events",
        "completed",
        "final_state",
        "seed",
        "arm",
        "stiffness_n_per_mm",
        "breathing_amplitude_m",
        "breathing_frequency_hz",
        "sweeps",
        "overshoot_n",
        "force_limit_violations",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    assert_eq!(r["completed"], true);
    assert_eq!(r["final_state"], "done");
    assert_eq!(r["seed"], seed);
    // The imaging depth was chosen from five survey frames at 120 mm: seed 3's spinous tips lie
    // about 47 mm under the skin, so 47 + 45 mm rounds up to the 100 mm preset (its laminae,
    // ~77 mm deep, are beyond the old fixed 70 mm).
    let im = &r["imaging"];
    assert_eq!(im["mode"], "auto", "{im}");
    assert_eq!(im["survey_depth_m"], 0.12, "{im}");
    assert_eq!(im["survey_frames"], 5, "{im}");
    let first = im["first_bone_m"].as_f64().unwrap();
    assert!((0.040..0.055).contains(&first), "first bone {first} m");
    assert!(
        (im["depth_m"].as_f64().unwrap() - 0.100).abs() < 1e-9,
        "{im}"
    );
    assert_eq!(r["arm"], "ur5e");
    assert!(r["force_rms_error_n"].as_f64().unwrap() <= 0.3);
    assert!(r["overshoot_n"].as_f64().unwrap() <= 2.0);
    assert!(r["force_max_n"].as_f64().unwrap() <= 20.0);
    assert_eq!(r["force_limit_violations"], 0);
    assert!(r["frames"].as_u64().unwrap() > 0);
    assert!(r["duration_s"].as_f64().unwrap() > 30.0);
    assert!(r["safety_events"].as_array().unwrap().is_empty(), "{r}");
    let k = r["stiffness_n_per_mm"].as_f64().unwrap();
    assert!((0.5..=5.0).contains(&k));
    let a = r["breathing_amplitude_m"].as_f64().unwrap();
    assert!((0.002..=0.005).contains(&a), "breathing is on: {a}");
    let sweeps = r["sweeps"].as_array().unwrap();
    assert_eq!(sweeps.len(), 8);
    assert!(sweeps.iter().all(|s| s["completed"] == true));

    // Files: the CBCT exactly as `sim phantom` writes it.
    for f in [
        "ct.nii.gz",
        "landmarks.json",
        "ground_truth.json",
        "sweep/sweep.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let reference = dir.join("phantom");
    let p = telecho(&[
        "sim",
        "phantom",
        "--seed",
        &seed.to_string(),
        "--out",
        reference.to_str().unwrap(),
        "--voxel-mm",
        "2.0",
    ]);
    assert!(p.status.success());
    for f in ["ct.nii.gz", "landmarks.json"] {
        assert!(
            std::fs::read(dir.join(f)).unwrap() == std::fs::read(reference.join(f)).unwrap(),
            "{f} differs from `sim phantom`"
        );
    }
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d.join("dicom"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&dir), names(&reference));
    assert!(!names(&dir).is_empty());

    // ground_truth.json: the at-rest t_base_ct, a rigid transform equal to the simulator's.
    let truth = read_json(&dir.join("ground_truth.json"));
    let t = matrix(&truth["t_base_ct"]);
    assert_rigid(&t);
    let world = SimWorld::new(&WorldConfig {
        seed,
        phantom_seed: seed,
        ..WorldConfig::ur5e()
    })
    .unwrap();
    let expected = world.ground_truth().t_base_ct.to_matrix4();
    assert!((t - expected).amax() < 1e-12, "{t} vs {expected}");

    let sweep = check_sweep(&dir, "ur5e_probe.urdf", &r);
    assert_eq!(sweep["completed"], true);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn short_protocol_sweep_is_byte_identical_across_runs() {
    let base = temp_dir("determinism");
    let protocol = short_protocol_file(&base);
    let p = protocol.to_str().unwrap();
    let (a, b) = (base.join("a"), base.join("b"));
    let mut reports = Vec::new();
    for d in [&a, &b] {
        let out = scan("5", d, &["--protocol", p]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        reports.push(stdout_json(&out));
    }
    let r = &reports[0];
    println!(
        "short protocol, seed 5: rms {} N, {} s simulated in {} s wall, {} frames",
        r["force_rms_error_n"], r["duration_s"], r["wall_s"], r["frames"]
    );
    assert_eq!(r["completed"], true);
    assert!(r["force_rms_error_n"].as_f64().unwrap() <= 0.3);
    for f in ["sweep/sweep.json", "sweep/frames.u8", "ground_truth.json"] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs of the same seed"
        );
    }
    check_sweep(&a, "ur5e_probe.urdf", r);
    // Another seed is another patient and another sweep.
    let c = base.join("c");
    let out = scan("6", &c, &["--protocol", p]);
    assert!(out.status.success());
    assert_ne!(
        std::fs::read(a.join("sweep/sweep.json")).unwrap(),
        std::fs::read(c.join("sweep/sweep.json")).unwrap()
    );
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn bad_input_exits_2_on_one_line_and_writes_nothing() {
    let base = temp_dir("bad");
    std::fs::create_dir_all(&base).unwrap();
    let bad = base.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\n\
         to = [0.0, 0.1]\nforce_n = 40.0\n",
    )
    .unwrap();
    let out_dir = base.join("out");
    let check = |args: &[&str], needle: &str| {
        let out = telecho(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
        assert!(out.stdout.is_empty());
        assert!(!out_dir.exists(), "{args:?} wrote {}", out_dir.display());
    };
    let o = out_dir.to_str().unwrap();
    let b = bad.to_str().unwrap();
    check(
        &[
            "scan",
            "--protocol",
            b,
            "--sim-seed",
            "1",
            "--out",
            o,
            "--json",
        ],
        "line 7",
    );
    check(
        &["scan", "--protocol", b, "--sim-seed", "1", "--out", o],
        "force_n",
    );
    check(
        &[
            "scan",
            "--protocol",
            "/nonexistent/p.toml",
            "--sim-seed",
            "1",
            "--out",
            o,
        ],
        "/nonexistent/p.toml",
    );
    check(
        &["scan", "--sim-seed", "1", "--out", o, "--arm", "kuka"],
        "kuka",
    );
    check(&["scan", "--sim-seed", "-3", "--out", o], "-3");
    check(&["scan", "--sim-seed", "x", "--out", o], "sim-seed");
    check(&["scan", "--out", o, "--json"], "sim-seed");
    check(
        &["scan", "--sim-seed", "1", "--out", o, "--voxel-mm", "NaN"],
        "voxel",
    );
    check(
        &["scan", "--sim-seed", "1", "--out", o, "--voxel-mm", "50"],
        "voxel",
    );
    check(
        &[
            "scan",
            "--sim-seed",
            "1",
            "--out",
            o,
            "--inject-ft-fault",
            "fire@3",
        ],
        "inject-ft-fault",
    );
    check(
        &[
            "scan",
            "--sim-seed",
            "1",
            "--out",
            o,
            "--frame-interval-ms",
            "5",
        ],
        "frame-interval-ms",
    );
    // A valid protocol whose sweep leaves the workspace box around the patient (290 mm caudal
    // of L5: beyond the box's −0.35 m edge in base y).
    let far = base.join("far.toml");
    std::fs::write(
        &far,
        "name = \"far\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\n\
         from = [0.0, -0.29]\nto = [0.0, -0.2]\n",
    )
    .unwrap();
    check(
        &[
            "scan",
            "--protocol",
            far.to_str().unwrap(),
            "--sim-seed",
            "1",
            "--out",
            o,
        ],
        "workspace",
    );
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn panda_scans_the_short_protocol() {
    let base = temp_dir("panda");
    let protocol = short_protocol_file(&base);
    let dir = base.join("out");
    let out = scan(
        "4",
        &dir,
        &["--protocol", protocol.to_str().unwrap(), "--arm", "panda"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = stdout_json(&out);
    println!(
        "panda, seed 4: rms {} N, overshoot {} N, max {} N, {} frames",
        r["force_rms_error_n"], r["overshoot_n"], r["force_max_n"], r["frames"]
    );
    assert_eq!(r["arm"], "panda");
    assert_eq!(r["completed"], true);
    assert!(r["force_rms_error_n"].as_f64().unwrap() <= 0.3);
    assert!(r["force_max_n"].as_f64().unwrap() <= 20.0);
    let sweep = check_sweep(&dir, "panda_probe.urdf", &r);
    assert_eq!(sweep["arm"], "panda");
    assert_eq!(sweep["frames"][0]["q_rad"].as_array().unwrap().len(), 7);
    std::fs::remove_dir_all(&base).ok();
}

#[test]
fn sensor_fault_aborts_with_exit_1_and_keeps_the_recording() {
    let base = temp_dir("abort");
    let protocol = short_protocol_file(&base);
    let dir = base.join("out");
    // Inject a NaN F/T fault after the first sweep has begun (seed 2's first frame is at 9.44 s).
    let out = scan(
        "2",
        &dir,
        &[
            "--protocol",
            protocol.to_str().unwrap(),
            "--inject-ft-fault",
            "nan@10.5",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sensor_nan"), "{err}");
    let r = stdout_json(&out);
    assert_eq!(r["completed"], false);
    assert_eq!(r["final_state"], "aborted");
    let events = r["safety_events"].as_array().unwrap();
    let e = &events[0];
    assert_eq!(e["kind"], "sensor_nan");
    assert_eq!(e["severity"], "stop");
    assert!(e["time_s"].as_f64().unwrap() >= 10.5 && e["time_s"].as_f64().unwrap() < 10.51);
    assert!(r["force_max_n"].as_f64().unwrap() <= 20.0);
    // Everything recorded up to the abort is kept, in the same format.
    assert!(dir.join("ct.nii.gz").is_file() && dir.join("ground_truth.json").is_file());
    let sweep = check_sweep(&dir, "ur5e_probe.urdf", &r);
    assert_eq!(sweep["completed"], false);
    let frames = sweep["frames"].as_array().unwrap();
    assert!(frames.last().unwrap()["time_s"].as_f64().unwrap() <= 10.6);
    std::fs::remove_dir_all(&base).ok();
}

/// The Panda seeds that used to abort on an F/T `sensor_jump` fault (the simulated servo's
/// staircase limit cycle flipping the skin friction every millisecond) complete the default
/// protocol without a safety event.
#[test]
fn bench_scan_panda_completes_the_seeds_that_used_to_abort() {
    for seed in ["2", "9", "13", "19"] {
        let out = telecho(&[
            "bench",
            "scan",
            "--seeds",
            "1",
            "--first-seed",
            seed,
            "--arm",
            "panda",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "seed {seed}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = stdout_json(&out);
        let row = &r["per_seed"][0];
        println!(
            "panda, seed {seed}: {} rms {} N, overshoot {} N, {} events",
            row["final_state"], row["force_rms_error_n"], row["overshoot_n"], row["safety_events"]
        );
        assert_eq!(row["completed"], true, "seed {seed}");
        assert_eq!(row["safety_events"], 0, "seed {seed}");
        assert!(row["force_rms_error_n"].as_f64().unwrap() <= 0.3);
        assert!(row["overshoot_n"].as_f64().unwrap() <= 2.0);
        assert_eq!(r["targets"]["met"], true);
    }
}

/// `bench loop` reports misses, stalls and skipped deadlines consistently, what real-time mode
/// got (granted or refused, never silently), and the hypervisor's steal time. No timing is
/// asserted (machines are noisy).
#[test]
fn bench_loop_reports_stalls_steal_and_realtime_mode() {
    let out = telecho(&[
        "bench",
        "loop",
        "--seconds",
        "0.3",
        "--rt",
        "--rt-priority",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = stdout_json(&out);
    println!("{r}");
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {}", r[k]));
    assert_eq!(n("deadlines"), 300);
    assert_eq!(n("cycles") + n("skipped_deadlines"), 300);
    assert_eq!(n("deadline_misses"), n("overruns") + n("skipped_deadlines"));
    assert!(n("stalls") <= n("overruns"));
    assert!(r["longest_overrun_ms"].as_f64().unwrap() >= 0.0);
    assert!((r["simulated_s"].as_f64().unwrap() - 0.3).abs() < 1e-9);
    let rt = &r["realtime"];
    assert_eq!(rt["requested"], true);
    assert_eq!(rt["fifo_priority_requested"], 1);
    let refused: Vec<&str> = rt["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // SCHED_FIFO and mlockall: each granted or listed as refused.
    assert!(rt["fifo_priority"] == 1 || refused.iter().any(|e| e.starts_with("SCHED_FIFO")));
    assert!(rt["memory_locked"] == true || refused.iter().any(|e| e.starts_with("mlockall")));
    if cfg!(target_os = "linux") {
        let steal = &r["steal"];
        let s = steal["steal_s"].as_f64().unwrap();
        assert!(s >= 0.0 && s <= steal["cpu_time_s"].as_f64().unwrap());
        assert!((0.0..=100.0).contains(&steal["steal_percent"].as_f64().unwrap()));
    }
    // A priority outside 1–99 is bad input.
    let bad = telecho(&[
        "bench",
        "loop",
        "--seconds",
        "0.1",
        "--rt",
        "--rt-priority",
        "0",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rt-priority"));
}
