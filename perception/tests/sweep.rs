//! `Sweep::read` on small synthetic sweeps: a valid one reads back exactly (geometry, poses,
//! pixels), and every kind of corruption gives an error that names the file and the problem —
//! never a panic.

use std::path::{Path, PathBuf};

use nalgebra::Vector3;
use serde_json::{json, Value};
use telecho_perception::sweep::{FrameState, Orientation, Sweep};

const W: usize = 8;
const H: usize = 6;
const N: usize = 3;
const SX: f64 = 0.0005;
const SZ: f64 = 0.0004;

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("sweep-{name}"));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A probe pose: rotation about z by `a` rad, translation `t`.
fn pose(a: f64, t: [f64; 3]) -> Value {
    let (s, c) = a.sin_cos();
    json!([
        [c, -s, 0.0, t[0]],
        [s, c, 0.0, t[1]],
        [0.0, 0.0, 1.0, t[2]],
        [0.0, 0.0, 0.0, 1.0]
    ])
}

fn header() -> Value {
    let frames: Vec<Value> = (0..N)
        .map(|i| {
            json!({
                "index": i,
                "time_s": 1.0 + 0.04 * i as f64,
                "t_base_probe": pose(0.1 * i as f64, [0.4, 0.01 * i as f64, 0.1]),
                "force_n": 7.5,
                "force_setpoint_n": 8.0,
                "sweep": "midline",
                "sweep_index": 0,
                "state": if i == 0 { "contact" } else { "sweep" },
                "q_rad": [0.0, -1.0, 1.0, 0.0, 0.5, 0.0],
                "some_future_member": {"ignored": true}
            })
        })
        .collect();
    json!({
        "format": "telecho-sweep/1",
        "frames_file": "frames.u8",
        "pixel_type": "u8",
        "width": W,
        "height": H,
        "frame_bytes": W * H,
        "frame_count": N,
        "pixel_spacing_m": [SX, SZ],
        "t_probe_image": [
            [SX, 0.0, 0.0, -SX * (W as f64 - 1.0) / 2.0],
            [0.0, 0.0, -SX, 0.0],
            [0.0, SZ, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0]
        ],
        "base_frame": "base_link",
        "probe_frame": "probe_tip",
        "pose_source": "fk_measured_joints",
        "force_source": "controller_estimate",
        "probe": {"frequency_hz": 7.5e6, "aperture_m": 0.004, "depth_m": 0.002,
                  "slice_thickness_m": 0.001},
        "arm": "ur5e",
        "urdf": "ur5e",
        "seed": 42,
        "protocol": "synthetic",
        "completed": true,
        "sweeps": [{
            "index": 0, "name": "midline", "orientation": "sagittal", "force_n": 8.0,
            "speed_m_s": 0.02, "tilt_deg": 0.0, "first_frame": 0, "frame_count": N,
            "completed": true
        }],
        "frames": frames
    })
}

fn pixels() -> Vec<u8> {
    (0..N * W * H).map(|i| (i % 251) as u8).collect()
}

fn write(dir: &Path, header: &Value, pixels: &[u8]) {
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_vec_pretty(header).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("frames.u8"), pixels).unwrap();
}

/// Writes a sweep with `edit` applied to the valid header and returns the read error text.
fn error_with(name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let d = temp_dir(name);
    let mut h = header();
    edit(&mut h);
    write(&d, &h, &pixels());
    let e = Sweep::read(&d).expect_err(name).to_string();
    std::fs::remove_dir_all(&d).ok();
    e
}

#[test]
fn valid_sweep_reads_back() {
    let d = temp_dir("valid");
    write(&d, &header(), &pixels());
    // Both the sweep folder and the scan folder above it are accepted.
    let top = temp_dir("valid-top");
    let sub = top.join("sweep");
    std::fs::create_dir_all(&sub).unwrap();
    write(&sub, &header(), &pixels());
    for dir in [&d, &top] {
        let s = Sweep::read(dir).unwrap();
        assert_eq!((s.width(), s.height(), s.frame_count()), (W, H, N));
        assert_eq!(s.pixel_spacing_m(), [SX, SZ]);
        assert_eq!(s.sweeps().len(), 1);
        assert_eq!(s.sweeps()[0].orientation, Orientation::Sagittal);
        assert_eq!(s.frames()[0].state, FrameState::Contact);
        assert_eq!(s.frames()[2].state, FrameState::Sweep);
        assert_eq!(s.seed(), 42);
        assert_eq!(s.arm(), "ur5e");
        let all = pixels();
        for i in 0..N {
            assert_eq!(s.frame_pixels(i).unwrap(), &all[i * W * H..(i + 1) * W * H]);
        }
        assert!(s.frame_pixels(N).is_none());
        // Column (W−1)/2, row 0 is the probe tip; row r is r·SZ along the probe's +z.
        let mid = (W as f64 - 1.0) / 2.0;
        assert!((s.pixel_to_probe(0.0, mid)).norm() < 1e-12);
        let p = s.pixel_to_probe(5.0, mid + 2.0);
        assert!((p - Vector3::new(2.0 * SX, 0.0, 5.0 * SZ)).norm() < 1e-12);
        // Frame 1: rotation 0.1 rad about z, translation (0.4, 0.01, 0.1).
        let b = s.pixel_to_base(1, 0.0, mid + 2.0).unwrap();
        let (sn, c) = 0.1f64.sin_cos();
        let expected = Vector3::new(0.4 + c * 2.0 * SX, 0.01 + sn * 2.0 * SX, 0.1);
        assert!((b - expected).norm() < 1e-12, "{b:?}");
        assert!(s.pixel_to_base(N, 0.0, 0.0).is_none());
    }
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&top).ok();
}

#[test]
fn wrong_format_tag() {
    let e = error_with("format", |h| h["format"] = json!("telecho-sweep/2"));
    assert!(
        e.contains("telecho-sweep/2") && e.contains("sweep.json"),
        "{e}"
    );
}

#[test]
fn truncated_pixel_file() {
    let d = temp_dir("truncated");
    let px = pixels();
    write(&d, &header(), &px[..px.len() - 7]);
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(
        e.contains("frames.u8") && e.contains(&format!("{}", px.len() - 7)),
        "{e}"
    );
    // And one byte too many.
    let mut long = px.clone();
    long.push(0);
    write(&d, &header(), &long);
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(
        e.contains("frames.u8") && e.contains(&format!("{}", px.len() + 1)),
        "{e}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn frame_count_mismatch() {
    let e = error_with("count", |h| h["frame_count"] = json!(N + 1));
    assert!(
        e.contains("frame_count") && e.contains("frame records"),
        "{e}"
    );
    let e = error_with("count2", |h| {
        h["frames"].as_array_mut().unwrap().pop();
    });
    assert!(e.contains("frame_count"), "{e}");
}

#[test]
fn nan_and_infinite_poses() {
    // JSON has no NaN: a writer that emits it produces an unparsable file, named with the line.
    let d = temp_dir("nan");
    let mut h = header();
    h["frames"][1]["t_base_probe"][1][3] = json!(0.123_456_789);
    let text = serde_json::to_string_pretty(&h)
        .unwrap()
        .replacen("0.123456789", "NaN", 1);
    assert!(text.contains("NaN"));
    std::fs::write(d.join("sweep.json"), text).unwrap();
    std::fs::write(d.join("frames.u8"), pixels()).unwrap();
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(e.contains("sweep.json") && e.contains("line"), "{e}");
    // An overflowing number is refused as well.
    let text = serde_json::to_string_pretty(&h)
        .unwrap()
        .replacen("0.123456789", "1e999", 1);
    assert!(text.contains("1e999"));
    std::fs::write(d.join("sweep.json"), text).unwrap();
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(e.contains("sweep.json"), "{e}");
    // null where a pose entry should be.
    let e = error_with("null", |h| {
        h["frames"][1]["t_base_probe"][0][3] = Value::Null
    });
    assert!(e.contains("sweep.json"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn non_rigid_poses() {
    let e = error_with("scaled", |h| {
        h["frames"][2]["t_base_probe"][0][0] = json!(1.1)
    });
    assert!(
        e.contains("frames[2]") && e.contains("t_base_probe") && e.contains("orthonormal"),
        "{e}"
    );
    let e = error_with("mirror", |h| {
        h["frames"][1]["t_base_probe"] = json!([
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0]
        ])
    });
    assert!(e.contains("frames[1]") && e.contains("right-handed"), "{e}");
    let e = error_with("lastrow", |h| {
        h["frames"][0]["t_base_probe"][3][0] = json!(0.5)
    });
    assert!(e.contains("frames[0]") && e.contains("last row"), "{e}");
    let e = error_with("calib", |h| {
        h["t_probe_image"] = json!([
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0]
        ])
    });
    assert!(e.contains("t_probe_image"), "{e}");
}

#[test]
fn bad_sweep_ranges() {
    let e = error_with("range", |h| h["sweeps"][0]["frame_count"] = json!(N + 2));
    assert!(e.contains("sweeps[0]") && e.contains("do not fit"), "{e}");
    let e = error_with("range-overflow", |h| {
        h["sweeps"][0]["first_frame"] = json!(u64::MAX);
    });
    assert!(e.contains("sweeps[0]"), "{e}");
    let e = error_with("sweep-index", |h| h["frames"][1]["sweep_index"] = json!(3));
    assert!(e.contains("frames[1]") && e.contains("sweep_index"), "{e}");
    let e = error_with("orientation", |h| {
        h["sweeps"][0]["orientation"] = json!("coronal")
    });
    assert!(e.contains("coronal"), "{e}");
}

#[test]
fn bad_frame_records() {
    let e = error_with("index", |h| h["frames"][1]["index"] = json!(5));
    assert!(e.contains("frames[1]") && e.contains("index"), "{e}");
    let e = error_with("time", |h| h["frames"][2]["time_s"] = json!(0.0));
    assert!(e.contains("frames[2]") && e.contains("time_s"), "{e}");
    let e = error_with("state", |h| h["frames"][0]["state"] = json!("flying"));
    assert!(e.contains("frames[0]") && e.contains("flying"), "{e}");
}

#[test]
fn bad_geometry() {
    let e = error_with("width0", |h| {
        h["width"] = json!(0);
        h["frame_bytes"] = json!(0);
    });
    assert!(e.contains("out of range"), "{e}");
    let e = error_with("frame-bytes", |h| h["frame_bytes"] = json!(W * H + 1));
    assert!(e.contains("frame_bytes"), "{e}");
    let e = error_with("pixel-type", |h| h["pixel_type"] = json!("u16"));
    assert!(e.contains("u16"), "{e}");
    let e = error_with("spacing", |h| h["pixel_spacing_m"] = json!([0.0, SZ]));
    assert!(e.contains("pixel_spacing_m"), "{e}");
    let e = error_with("escape", |h| h["frames_file"] = json!("../frames.u8"));
    assert!(e.contains("frames_file"), "{e}");
    let e = error_with("probe", |h| h["probe"]["depth_m"] = json!(-1.0));
    assert!(e.contains("probe"), "{e}");
}

#[test]
fn missing_files() {
    let d = temp_dir("missing");
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(e.contains("no sweep.json"), "{e}");
    let e = Sweep::read(&d.join("does-not-exist"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does-not-exist"), "{e}");
    std::fs::write(d.join("sweep.json"), serde_json::to_vec(&header()).unwrap()).unwrap();
    let e = Sweep::read(&d).unwrap_err().to_string();
    assert!(e.contains("frames.u8"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn malformed_json() {
    let d = temp_dir("malformed");
    std::fs::write(d.join("frames.u8"), pixels()).unwrap();
    for text in [
        "",
        "{",
        "[]",
        "{\"format\": \"telecho-sweep/1\"}",
        "not json at all",
    ] {
        std::fs::write(d.join("sweep.json"), text).unwrap();
        let e = Sweep::read(&d).unwrap_err().to_string();
        assert!(e.contains("malformed sweep.json"), "{text:?}: {e}");
    }
    let e = error_with("missing-member", |h| {
        h.as_object_mut().unwrap().remove("t_probe_image");
    });
    assert!(e.contains("t_probe_image"), "{e}");
    let e = error_with("wrong-type", |h| h["width"] = json!("eight"));
    assert!(e.contains("malformed"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

/// Every prefix of a valid sweep.json and every single-byte corruption is an error or a
/// valid sweep, never a panic.
#[test]
fn truncations_and_byte_flips_never_panic() {
    let d = temp_dir("fuzz");
    std::fs::write(d.join("frames.u8"), pixels()).unwrap();
    let text = serde_json::to_vec(&header()).unwrap();
    for cut in (0..text.len()).step_by(7) {
        std::fs::write(d.join("sweep.json"), &text[..cut]).unwrap();
        assert!(Sweep::read(&d).is_err(), "prefix of {cut} bytes accepted");
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut t = text.clone();
        let i = (state % t.len() as u64) as usize;
        t[i] = (state >> 32) as u8;
        std::fs::write(d.join("sweep.json"), &t).unwrap();
        let _ = Sweep::read(&d);
    }
    std::fs::remove_dir_all(&d).ok();
}
