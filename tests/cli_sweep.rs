//! The sweep `telecho scan` writes, read back by `perception::sweep::Sweep`: the reader accepts
//! it, its frames match the evaluator's ground truth one for one, and the recorded probe poses
//! (forward kinematics of the *measured* joints) agree with the true poses within encoder noise.

use std::process::Command;

use nalgebra::Matrix4;
use serde_json::Value;
use telecho_perception::sweep::{FrameState, Sweep};

/// Two short sweeps on the midline at L5 (sagittal, then transverse).
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

fn matrix(v: &Value) -> Matrix4<f64> {
    Matrix4::from_fn(|r, c| v[r][c].as_f64().unwrap())
}

#[test]
fn measured_poses_agree_with_the_true_poses() {
    let dir = telecho_testkit::scratch("cli-sweep");
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    let protocol = dir.join("short.toml");
    std::fs::write(&protocol, SHORT_PROTOCOL).unwrap();
    let out = dir.join("scan");
    let run = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["scan", "--sim-seed", "11", "--json", "--voxel-mm", "2.0"])
        .arg("--out")
        .arg(&out)
        .arg("--protocol")
        .arg(&protocol)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "scan failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sweep = Sweep::read(&out).unwrap();
    let truth: Value =
        serde_json::from_slice(&std::fs::read(out.join("ground_truth.json")).unwrap()).unwrap();
    let true_frames = truth["frames"].as_array().unwrap();
    assert!(sweep.frame_count() > 50, "{} frames", sweep.frame_count());
    assert_eq!(sweep.frame_count(), true_frames.len());
    assert_eq!(sweep.sweeps().len(), 2);
    assert!(sweep.completed());
    assert_eq!(sweep.seed(), 11);
    for s in sweep.sweeps() {
        assert!(s.completed && s.frame_count > 0, "{}", s.name);
    }
    let mut dt = Vec::new();
    let mut dr = Vec::new();
    for (i, (f, t)) in sweep.frames().iter().zip(true_frames).enumerate() {
        assert_eq!(t["index"].as_u64(), Some(i as u64));
        assert!(
            (t["time_s"].as_f64().unwrap() - f.time_s).abs() < 1e-9,
            "frame {i}"
        );
        assert!(sweep.frame_pixels(i).is_some());
        let m = f.t_base_probe.to_matrix4();
        let tm = matrix(&t["t_base_probe"]);
        dt.push((m.fixed_view::<3, 1>(0, 3) - tm.fixed_view::<3, 1>(0, 3)).norm() * 1e3);
        let r = m.fixed_view::<3, 3>(0, 0).transpose() * tm.fixed_view::<3, 3>(0, 0);
        dr.push(
            ((r.trace() - 1.0) / 2.0)
                .clamp(-1.0, 1.0)
                .acos()
                .to_degrees(),
        );
    }
    assert!(sweep.frames().iter().any(|f| f.state == FrameState::Sweep));
    dt.sort_by(f64::total_cmp);
    dr.sort_by(f64::total_cmp);
    let (mt, xt) = (dt[dt.len() / 2], dt[dt.len() - 1]);
    let (mr, xr) = (dr[dr.len() / 2], dr[dr.len() - 1]);
    println!(
        "{} frames: measured vs true probe pose: translation median {mt:.4} max {xt:.4} mm, \
         rotation median {mr:.5} max {xr:.5}°",
        dt.len()
    );
    assert!(xt < 1.0, "a measured pose is {xt:.3} mm from the truth");
    assert!(xr < 0.2, "a measured pose is {xr:.3}° from the truth");
    std::fs::remove_dir_all(&dir).ok();
}
