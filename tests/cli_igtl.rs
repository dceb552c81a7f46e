//! `telecho igtl serve` end to end: a `telecho scan` sweep streamed over OpenIGTLink to the
//! independent PyPI `pyigtl` client (igtl/tests/pyigtl_peer.py), which checks the probe poses,
//! the frames' pixels, spacing and orientation, the landmarks (mm, LPS) and the STATUS messages
//! against values it computes from the sweep files itself. Skipped without pyigtl unless
//! `TELECHO_REQUIRE_PEERS=1`. Bad inputs are refused with exit code 2.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use telecho_core::peers::{missing_peer, python_output};
use telecho_perception::sweep::Sweep;

const SEED: u64 = 5;
const FRAMES: usize = 8;

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

fn scan_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = telecho_testkit::scratch("cli-igtl");
        std::fs::remove_dir_all(&d).ok();
        let out = telecho(&[
            "scan",
            "--sim-seed",
            &SEED.to_string(),
            "--out",
            d.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "scan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
}

/// An empty scratch directory of this test process.
fn work_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("cli-igtl-{name}"));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(m: &nalgebra::Matrix4<f64>) -> Vec<Vec<f64>> {
    (0..4)
        .map(|r| (0..4).map(|c| m[(r, c)]).collect())
        .collect()
}

#[test]
fn pyigtl_receives_a_scan_sweep_in_mm_and_lps() {
    if python_output("import pyigtl, numpy; print(pyigtl.__version__)").is_none() {
        missing_peer("pyigtl (PyPI)", "python3 -m pip install pyigtl==0.3.4");
        return;
    }
    let dir = scan_dir();
    let work = work_dir("peer");
    // Landmarks as `telecho perception register --json` prints them (base frame, m).
    let landmarks = json!({
        "t_base_ct": [[1.0, 0.0, 0.0, 0.45], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, -0.05], [0.0, 0.0, 0.0, 1.0]],
        "landmarks": [
            {"name": "L3_spinous", "xyz": [0.452, 0.001, -0.021], "confidence": 0.9},
            {"name": "L4_lamina_left", "xyz": [0.431, -0.036, -0.044], "confidence": 0.8},
        ],
    });
    let landmarks_path = work.join("register.json");
    std::fs::write(&landmarks_path, landmarks.to_string()).unwrap();

    // What the peer must see, from the sweep files (read with the perception reader).
    let sweep = Sweep::read(dir).unwrap();
    let spec = json!({
        // Documented default `prone`: L = −x, P = +z, S = +y of the base.
        "r_lps_base": [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
        "t_probe_image": rows(sweep.t_probe_image()),
        "width": sweep.width(),
        "height": sweep.height(),
        "pixel_spacing_m": sweep.pixel_spacing_m(),
        "frames": (0..FRAMES).map(|i| json!({
            "t_base_probe": rows(&sweep.frames()[i].t_base_probe.to_matrix4()),
            "pixels": sweep.frame_pixels(i).unwrap(),
        })).collect::<Vec<_>>(),
        "landmarks": landmarks["landmarks"],
        "statuses": [
            {"code": 1, "subcode": 0, "error_name": "OK", "message_prefix": format!("telecho streaming {FRAMES} frames")},
            {"code": 1, "subcode": 0, "error_name": "OK", "message": format!("end of stream: {FRAMES} frames sent")},
        ],
    });
    let spec_path = work.join("input.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args([
            "igtl",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sweep",
            dir.join("sweep").to_str().unwrap(),
            "--landmarks",
            landmarks_path.to_str().unwrap(),
            "--frames",
            &FRAMES.to_string(),
            "--rate-hz",
            "50",
            "--wait-clients",
            "2",
            "--wait-timeout-s",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let port = addr.rsplit(':').next().unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("igtl/tests/pyigtl_peer.py");
    let peer = Command::new("python3")
        .arg(&script)
        .arg(port)
        .arg(&spec_path)
        .output()
        .unwrap();
    assert!(
        peer.status.success(),
        "pyigtl peer failed:\n{}\n{}",
        String::from_utf8_lossy(&peer.stdout),
        String::from_utf8_lossy(&peer.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(peer.stdout.trim_ascii()).unwrap();
    assert_eq!(summary["raw_frames"], FRAMES);
    assert_eq!(summary["raw_crc_checked"], 3 + 2 * FRAMES);

    let start = Instant::now();
    while server.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "serve failed: {rest}");
    let done: serde_json::Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(done["frames_sent"], FRAMES);
    assert_eq!(done["landmarks"], 2);
    assert_eq!(done["dropped_messages"], 0);
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn bad_inputs_are_refused_with_exit_code_2() {
    let work = work_dir("bad");
    let out = telecho(&[
        "igtl",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--sweep",
        work.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sweep.json"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = scan_dir();
    // The scan's landmarks.json is in the CT frame: refused.
    let out = telecho(&[
        "igtl",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--sweep",
        dir.to_str().unwrap(),
        "--landmarks",
        dir.join("landmarks.json").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("t_base_ct"), "{err}");

    let out = telecho(&[
        "igtl",
        "serve",
        "--sweep",
        dir.to_str().unwrap(),
        "--base-to-lps",
        "1,0,0,0,1,0,0,0,-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a proper rotation"), "{err}");
    std::fs::remove_dir_all(&work).ok();
}
