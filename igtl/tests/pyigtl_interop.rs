//! Interoperability with an independent OpenIGTLink implementation: the PyPI `pyigtl` client
//! (`tests/pyigtl_peer.py`) receives what the server streams — TRANSFORM, IMAGE, POINT, STATUS —
//! and checks it against values it computes itself from telecho's metre/base-frame inputs.
//! Skipped when Python or pyigtl is missing, unless `TELECHO_REQUIRE_PEERS=1`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nalgebra::{Matrix3, Matrix4, Rotation3, Vector3};
use serde_json::json;
use telecho_core::peers::{missing_peer, python_output};
use telecho_igtl::status_code;
use telecho_igtl::stream::{status_message, Frame, Landmark, SweepGeometry};
use telecho_igtl::{BaseToLps, Server, ServerConfig, Timestamp};

const INSTALL: &str = "python3 -m pip install pyigtl==0.3.4";

fn pyigtl_present() -> bool {
    python_output("import pyigtl, numpy; print(pyigtl.__version__)").is_some()
}

fn rows(m: &Matrix4<f64>) -> Vec<Vec<f64>> {
    (0..4)
        .map(|r| (0..4).map(|c| m[(r, c)]).collect())
        .collect()
}

#[test]
fn pyigtl_client_receives_transform_image_point_and_status() {
    if !pyigtl_present() {
        missing_peer("pyigtl (PyPI)", INSTALL);
        return;
    }
    let (width, height) = (16usize, 12usize);
    let (sx, sz) = (0.0003, 0.0002);
    // The calibration of docs/SWEEP_FORMAT.md.
    let t_probe_image = Matrix4::new(
        sx,
        0.0,
        0.0,
        -sx * (width as f64 - 1.0) / 2.0, //
        0.0,
        0.0,
        -sx,
        0.0, //
        0.0,
        sz,
        0.0,
        0.0, //
        0.0,
        0.0,
        0.0,
        1.0,
    );
    let n = 6;
    let poses: Vec<Matrix4<f64>> = (0..n)
        .map(|i| {
            // Probe pointing down (tip z = base −z), yawed a little more each frame.
            let down = Matrix3::new(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0);
            let yaw = Rotation3::from_axis_angle(&Vector3::z_axis(), 0.1 * i as f64);
            let r = yaw.matrix() * down;
            let mut m = Matrix4::identity();
            m.fixed_view_mut::<3, 3>(0, 0).copy_from(&r);
            m.fixed_view_mut::<3, 1>(0, 3).copy_from(&Vector3::new(
                0.45 + 0.002 * i as f64,
                -0.01 * i as f64,
                0.031,
            ));
            m
        })
        .collect();
    let pixels: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            (0..width * height)
                .map(|k| ((k * 7 + 37 * i) % 256) as u8)
                .collect()
        })
        .collect();
    let landmarks = vec![
        Landmark {
            name: "L3_spinous".into(),
            xyz_base_m: [0.45, 0.0, -0.02],
        },
        Landmark {
            name: "L4_lamina_left".into(),
            xyz_base_m: [0.43, -0.035, -0.045],
        },
    ];
    let base_to_lps = BaseToLps::prone();
    let geometry = SweepGeometry {
        width,
        height,
        t_probe_image,
        base_to_lps,
    };
    let statuses = [
        (status_code::OK, "OK", "streaming 6 frames"),
        (status_code::OK, "OK", "end of sweep: 6 frames sent"),
    ];

    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("input.json");
    let r = base_to_lps.rotation();
    let spec = json!({
        "r_lps_base": (0..3).map(|i| (0..3).map(|j| r[(i, j)]).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "t_probe_image": rows(&t_probe_image),
        "width": width,
        "height": height,
        "pixel_spacing_m": [sx, sz],
        "frames": (0..n).map(|i| json!({
            "t_base_probe": rows(&poses[i]),
            "pixels": pixels[i],
        })).collect::<Vec<_>>(),
        "landmarks": landmarks.iter().map(|l| json!({"name": l.name, "xyz": l.xyz_base_m})).collect::<Vec<_>>(),
        "statuses": statuses.iter().map(|(c, name, msg)| json!({
            "code": c, "subcode": 0, "error_name": name, "message": msg,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();

    let server = Server::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let port = server.local_addr().port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pyigtl_peer.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(&spec_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script opens two connections: pyigtl's client and its raw CRC-checking reader. Python
    // with numpy takes seconds to start on a loaded 2-core machine; the bound is only a hang guard.
    assert!(
        server.wait_for_clients(2, Duration::from_secs(90)),
        "the Python peer did not connect"
    );

    let now = Timestamp::now;
    let (code, name, text) = statuses[0];
    server
        .broadcast(&status_message(code, name, text, now()))
        .unwrap();
    server
        .broadcast(&geometry.landmarks_message(&landmarks, now()))
        .unwrap();
    for i in 0..n {
        let frame = Frame {
            index: i,
            time_s: 0.04 * i as f64,
            t_base_probe: &poses[i],
            pixels: &pixels[i],
        };
        server
            .broadcast(&geometry.probe_message(&frame, now()))
            .unwrap();
        server
            .broadcast(&geometry.image_message(&frame, now()).unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let (code, name, text) = statuses[1];
    server
        .broadcast(&status_message(code, name, text, now()))
        .unwrap();
    assert_eq!(server.dropped_messages(), 0);

    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(40) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    server.shutdown();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pyigtl peer failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["raw_frames"], n);
    // 2 STATUS + 1 POINT + n × (TRANSFORM + IMAGE), every CRC checked by pyigtl's CRC64.
    assert_eq!(summary["raw_crc_checked"], 3 + 2 * n);
    assert!(summary["client_images"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(
        summary["client_statuses"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        1
    );
}
