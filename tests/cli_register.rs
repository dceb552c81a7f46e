//! `telecho perception register` end to end: `telecho scan` of a simulated patient (random
//! placement, breathing, encoder noise), then registration of its CBCT to the sweep with no
//! initial guess, scored against the scan's ground truth; and the failure modes: a corrupt
//! sweep or CT (exit 2, one clear line), a sweep without bone (refused, exit 1).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The scan of `seed` (once per test binary and seed).
fn scanned(seed: u64) -> PathBuf {
    scanned_with(seed, None)
}

/// The scan of `seed` with `protocol` (`None`: the built-in one), once per test binary.
fn scanned_with(seed: u64, protocol: Option<&Path>) -> PathBuf {
    type Scans = Vec<(u64, Option<PathBuf>, PathBuf)>;
    static DIRS: OnceLock<std::sync::Mutex<Scans>> = OnceLock::new();
    let dirs = DIRS.get_or_init(Default::default);
    let mut dirs = dirs.lock().unwrap();
    let protocol = protocol.map(Path::to_path_buf);
    if let Some((_, _, d)) = dirs.iter().find(|(s, p, _)| *s == seed && *p == protocol) {
        return d.clone();
    }
    let dir = telecho_testkit::scratch(&format!("cli-register-seed{seed}-{}", dirs.len()));
    std::fs::remove_dir_all(&dir).ok();
    let seed_arg = seed.to_string();
    let mut args = vec![
        "scan",
        "--sim-seed",
        &seed_arg,
        "--out",
        dir.to_str().unwrap(),
        "--json",
    ];
    if let Some(p) = &protocol {
        args.extend(["--protocol", p.to_str().unwrap()]);
    }
    let o = telecho(&args);
    assert!(o.status.success(), "scan failed: {}", stderr(&o));
    dirs.push((seed, protocol, dir.clone()));
    dir
}

/// The imaging depth `telecho scan` wrote into the sweep, m.
fn sweep_depth_m(dir: &Path) -> f64 {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join("sweep/sweep.json")).unwrap()).unwrap();
    let depth = v["probe"]["depth_m"].as_f64().unwrap();
    assert_eq!(
        v["imaging"]["depth_m"].as_f64(),
        Some(depth),
        "{}",
        v["imaging"]
    );
    depth
}

fn register(dir: &Path, sweep: &Path, extra: &[&str]) -> Output {
    let ct = dir.join("ct.nii.gz");
    let mut args = vec![
        "perception",
        "register",
        "--ct",
        ct.to_str().unwrap(),
        "--sweep",
        sweep.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    telecho(&args)
}

fn check_registration(seed: u64) {
    check_registration_of(seed, &scanned(seed));
}

fn check_registration_of(seed: u64, dir: &Path) {
    let dir = dir.to_path_buf();
    let gt = dir.join("ground_truth.json");
    let o = register(&dir, &dir, &["--ground-truth", gt.to_str().unwrap()]);
    assert!(o.status.success(), "seed {seed}: {}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    // The contract.
    let t = v["t_base_ct"].as_array().unwrap();
    assert_eq!(t.len(), 4);
    assert!(t.iter().all(|r| r.as_array().unwrap().len() == 4));
    assert_eq!(t[3], serde_json::json!([0.0, 0.0, 0.0, 1.0]));
    for key in ["rmse_mm", "uncertainty_mm", "runtime_s"] {
        let x = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x >= 0.0, "{key} = {}", v[key]);
    }
    let lms = v["landmarks"].as_array().unwrap();
    assert_eq!(lms.len(), 40);
    let l3 = lms
        .iter()
        .find(|l| l["name"] == "L3_spinous_tip")
        .expect("L3_spinous_tip");
    assert_eq!(l3["xyz"].as_array().unwrap().len(), 3);
    let c = l3["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&c));
    // The accuracy.
    let tre = &v["tre_mm"];
    let (median, p95, max) = (
        tre["median"].as_f64().unwrap(),
        tre["p95"].as_f64().unwrap(),
        tre["max"].as_f64().unwrap(),
    );
    eprintln!(
        "seed {seed}: TRE median {median:.3} mm, p95 {p95:.3} mm, max {max:.3} mm, RMSE {:.3} mm, \
         uncertainty {:.3} mm, {} levels, runtime {:.3} s",
        v["rmse_mm"], v["uncertainty_mm"], v["levels_seen"], v["runtime_s"]
    );
    assert_eq!(tre["count"], 40);
    assert_eq!(tre["per_landmark"].as_array().unwrap().len(), 40);
    assert!(median <= 1.0, "seed {seed}: TRE median {median} mm");
    assert!(p95 <= 2.0, "seed {seed}: TRE p95 {p95} mm");
    // The landmarks it prints are the CT's through t_base_ct: the spinous tip lands near the
    // true one.
    let truth: Value = serde_json::from_slice(&std::fs::read(&gt).unwrap()).unwrap();
    let lm_file: Value =
        serde_json::from_slice(&std::fs::read(dir.join("landmarks.json")).unwrap()).unwrap();
    let x = lm_file["landmarks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "L3_spinous_tip")
        .unwrap()["xyz"]
        .clone();
    let m = &truth["t_base_ct"];
    let p: Vec<f64> = (0..3)
        .map(|r| {
            (0..3)
                .map(|k| m[r][k].as_f64().unwrap() * x[k].as_f64().unwrap())
                .sum::<f64>()
                + m[r][3].as_f64().unwrap()
        })
        .collect();
    let q: Vec<f64> = l3["xyz"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let d = ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt();
    // Detected CT landmark (within a few mm of the simulator's) plus registration error.
    assert!(d < 5e-3, "L3 spinous tip {:.2} mm from the truth", d * 1e3);
}

/// Seed 16 is a thick patient: its laminae lie about 84 mm under the skin. Imaged at a fixed
/// 70 mm, only the spinous tips are in view and the registration is refused (too few bone
/// points); the protocol's automatic depth images it at 120 mm and it registers.
#[test]
fn a_thick_patient_registers_once_the_depth_fits() {
    let auto = scanned(16);
    assert!(
        (sweep_depth_m(&auto) - 0.120).abs() < 1e-9,
        "chosen depth {} m",
        sweep_depth_m(&auto)
    );
    check_registration_of(16, &auto);

    let protocol = telecho_testkit::scratch("cli-register-fixed70.toml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/control/protocols/lumbar.toml"
    ))
    .unwrap();
    let (head, rest) = text
        .split_once("[imaging]")
        .expect("the bundled [imaging] table");
    let (_, sweeps) = rest.split_once("[[sweep]]").unwrap();
    std::fs::write(
        &protocol,
        format!("{head}[imaging]\ndepth = 0.070\n\n[[sweep]]{sweeps}"),
    )
    .unwrap();
    let fixed = scanned_with(16, Some(&protocol));
    assert!((sweep_depth_m(&fixed) - 0.070).abs() < 1e-12);
    let o = register(&fixed, &fixed, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("too few bone points"), "{}", stderr(&o));
}

#[test]
fn registers_seed_1() {
    check_registration(1);
}

#[test]
fn registers_seed_2() {
    check_registration(2);
}

#[test]
fn corrupt_sweep_is_a_clear_input_error() {
    let dir = scanned(1);
    let bad = telecho_testkit::scratch("cli-register-corrupt");
    std::fs::remove_dir_all(&bad).ok();
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(dir.join("sweep/sweep.json"), bad.join("sweep.json")).unwrap();
    let frames = std::fs::read(dir.join("sweep/frames.u8")).unwrap();
    std::fs::write(bad.join("frames.u8"), &frames[..frames.len() / 2]).unwrap();
    let o = register(&dir, &bad, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("frames.u8") && e.contains("bytes"), "{e}");

    // Malformed JSON.
    std::fs::write(
        bad.join("sweep.json"),
        b"{\"format\": \"telecho-sweep/1\", ",
    )
    .unwrap();
    let o = register(&dir, &bad, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sweep.json"), "{}", stderr(&o));

    // No sweep at all, and a CT that is not one.
    let o = register(&dir, &bad.join("missing"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let not_ct = bad.join("ct.nii.gz");
    std::fs::write(&not_ct, b"not a volume").unwrap();
    let o = telecho(&[
        "perception",
        "register",
        "--ct",
        not_ct.to_str().unwrap(),
        "--sweep",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--ct"), "{}", stderr(&o));
}

#[test]
fn a_sweep_without_bone_is_refused() {
    let dir = scanned(1);
    let dark = telecho_testkit::scratch("cli-register-dark");
    std::fs::remove_dir_all(&dark).ok();
    std::fs::create_dir_all(&dark).unwrap();
    std::fs::copy(dir.join("sweep/sweep.json"), dark.join("sweep.json")).unwrap();
    let len = std::fs::metadata(dir.join("sweep/frames.u8"))
        .unwrap()
        .len();
    // Uncoupled probe: electronic noise only.
    std::fs::write(dark.join("frames.u8"), vec![4u8; len as usize]).unwrap();
    let o = register(&dir, &dark, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("registration refused") && e.contains("too few bone points"),
        "{e}"
    );
}

#[test]
fn a_scan_aborted_after_three_seconds_of_sweep_is_refused() {
    // An F/T fault stops seed 11's scan 3 s into its first sweep (~60 mm over L5–L4): the few
    // bone points seen cannot fix six degrees of freedom and the vertebral level. Registration
    // must say so rather than guess.
    let dir = telecho_testkit::scratch("cli-register-aborted");
    std::fs::remove_dir_all(&dir).ok();
    let o = telecho(&[
        "scan",
        "--sim-seed",
        "11",
        "--out",
        dir.to_str().unwrap(),
        "--inject-ft-fault",
        "nan@13.0",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let gt = dir.join("ground_truth.json");
    let o = register(
        &dir,
        &dir.join("sweep"),
        &["--ground-truth", gt.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("registration refused") && e.contains("too few bone points"),
        "{e}"
    );
    // Some bone was seen: the refusal is the threshold at work, not an empty sweep.
    let seen: u32 = e
        .split("too few bone points: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!((20..200).contains(&seen), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
