//! Compounding of a tracked sweep: a synthetic `telecho-sweep/1` directory whose frames show a
//! flat bone surface at a known depth, imaged by a probe pointing down and sliding along base
//! +y. The compounded points must lie on that surface in the base frame, deduplicated, with
//! normals facing the probe; ramp-up and weak-contact frames must be left out.

use std::path::{Path, PathBuf};

use nalgebra::Vector3;
use telecho_perception::compound::{
    compound_sweep, CompoundParams, Compounded, LandmarkObservation, UsedFrame,
};
use telecho_perception::detect::{
    ClassicalDetector, Detector, FrameDetection, ImageGeometry, LandmarkClass,
};
use telecho_perception::sweep::Sweep;
use telecho_perception::Error;

const W: usize = 96;
const H: usize = 160;
const SX: f64 = 0.0002; // lateral spacing, m
const SZ: f64 = 0.00025; // axial spacing, m
const BONE_ROW: usize = 100; // 25 mm deep
const PROBE_Z: f64 = 0.10; // probe face height in base, m

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("compound-{name}"));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A B-mode-like frame: speckled tissue, a bright 3-row ridge at `BONE_ROW`, shadow below.
fn frame(seed: u64) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut px = vec![0u8; W * H];
    for r in 0..H {
        for c in 0..W {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let speckle = (s % 40) as u8;
            px[r * W + c] = if r + 1 >= BONE_ROW && r <= BONE_ROW + 1 {
                230
            } else if r > BONE_ROW + 1 {
                3 + speckle / 8
            } else {
                60 + speckle
            };
        }
    }
    px
}

/// Writes a sweep of `n` frames: probe down (probe z = base −z), array along base +y, moving
/// 0.5 mm per frame along base +x (across the image plane, so that the frames cover a patch). The first `contact` frames are in the contact state; frame
/// `weak` (if any) has a force of 1 N against 8 N.
fn write_sweep(dir: &Path, n: usize, contact: usize, weak: Option<usize>) {
    let mut frames = Vec::new();
    let mut pixels = Vec::new();
    for i in 0..n {
        pixels.extend(frame(i as u64));
        let x = 0.4 + 0.0005 * i as f64;
        // Columns: probe x → base +y, probe y → base +x, probe z → base −z (right-handed).
        let pose = [
            [0.0, 1.0, 0.0, x],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, -1.0, PROBE_Z],
            [0.0, 0.0, 0.0, 1.0],
        ];
        frames.push(serde_json::json!({
            "index": i, "time_s": 0.04 * i as f64, "t_base_probe": pose,
            "force_n": if Some(i) == weak { 1.0 } else { 8.0 }, "force_setpoint_n": 8.0,
            "sweep": "s", "sweep_index": 0,
            "state": if i < contact { "contact" } else { "sweep" },
            "q_rad": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        }));
    }
    let half = SX * (W - 1) as f64 / 2.0;
    let header = serde_json::json!({
        "format": "telecho-sweep/1", "frames_file": "frames.u8", "pixel_type": "u8",
        "width": W, "height": H, "frame_bytes": W * H, "frame_count": n,
        "pixel_spacing_m": [SX, SZ],
        "t_probe_image": [[SX, 0.0, 0.0, -half], [0.0, 0.0, -SX, 0.0], [0.0, SZ, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 1.0]],
        "base_frame": "base_link", "probe_frame": "probe_tip",
        "pose_source": "fk_measured_joints", "force_source": "controller_estimate",
        "probe": {"frequency_hz": 7.5e6, "aperture_m": SX * (W - 1) as f64, "depth_m": SZ * (H - 1) as f64,
                  "slice_thickness_m": 0.002},
        "arm": "ur5e", "urdf": "ur5e_probe", "seed": 0, "protocol": "test", "completed": true,
        "sweeps": [{"index": 0, "name": "s", "orientation": "sagittal", "force_n": 8.0,
                    "speed_m_s": 0.0125, "tilt_deg": 0.0, "first_frame": 0, "frame_count": n,
                    "completed": true}],
        "frames": frames,
    });
    std::fs::write(dir.join("sweep.json"), serde_json::to_vec(&header).unwrap()).unwrap();
    std::fs::write(dir.join("frames.u8"), pixels).unwrap();
}

fn geometry() -> ImageGeometry {
    ImageGeometry {
        width: W,
        height: H,
        lateral_spacing_m: SX,
        axial_spacing_m: SZ,
    }
}

#[test]
fn classical_compounding_puts_the_surface_where_it_is() {
    let dir = temp_dir("classical");
    write_sweep(&dir, 40, 5, Some(20));
    let sweep = Sweep::read(&dir).unwrap();
    let mut dets = vec![
        ClassicalDetector::for_geometry(&geometry()).unwrap(),
        ClassicalDetector::for_geometry(&geometry()).unwrap(),
    ];
    let c = compound_sweep(&sweep, &mut dets, &CompoundParams::default()).unwrap();
    // 40 frames − 5 contact − 1 weak.
    assert_eq!(c.frames.len(), 34);
    assert!(c.frames.iter().all(|f| f.index >= 5 && f.index != 20));
    assert_eq!(c.detector, "classical");
    let expected_z = PROBE_Z - BONE_ROW as f64 * SZ;
    // Every other column of every frame (the detector drops a few at the edges).
    assert!(
        c.samples.len() > 34 * W / 2 * 8 / 10,
        "{} samples",
        c.samples.len()
    );
    let worst = c
        .samples
        .iter()
        .map(|s| (s.xyz.z - expected_z).abs())
        .fold(0.0, f64::max);
    assert!(worst < 0.3e-3, "worst depth error {worst} m");
    let cloud = c.cloud(None);
    // 1 mm voxels over a 19 mm (array) × 17 mm (sweep) patch: a few hundred points, far fewer
    // than samples.
    assert!(
        cloud.len() > 200 && cloud.len() < c.samples.len() / 3,
        "{}",
        cloud.len()
    );
    for (p, n) in cloud.points.iter().zip(&cloud.normals) {
        assert!((p.z - expected_z).abs() < 0.3e-3);
        // The surface faces the probe above it.
        assert!(n.z > 0.95, "normal {n:?}");
    }
    assert!(cloud.planar.iter().filter(|p| **p).count() > cloud.len() / 2);
    assert!(cloud.confidence.iter().all(|c| (0.0..=1.0).contains(c)));
}

#[test]
fn a_per_frame_shift_moves_the_compounded_points() {
    let dir = temp_dir("shift");
    write_sweep(&dir, 12, 0, None);
    let sweep = Sweep::read(&dir).unwrap();
    let mut dets = vec![ClassicalDetector::for_geometry(&geometry()).unwrap()];
    let c = compound_sweep(&sweep, &mut dets, &CompoundParams::default()).unwrap();
    let up = Vector3::new(0.0, 0.0, 0.002);
    let shifted = c.cloud(Some(&|_| up));
    let plain = c.cloud(None);
    let mean = |v: &[Vector3<f64>]| v.iter().map(|p| p.z).sum::<f64>() / v.len() as f64;
    assert!((mean(&shifted.points) - mean(&plain.points) - 0.002).abs() < 1e-4);
}

/// A detector that sees bone at a fixed row in every column: compounding is generic over the
/// trait, whatever the detector.
struct FixedRow(f32);

impl Detector for FixedRow {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn detect(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        out: &mut FrameDetection,
    ) -> Result<(), Error> {
        assert_eq!(pixels.len(), width * height);
        out.reset(ImageGeometry {
            width,
            height,
            ..geometry()
        });
        for c in 0..width {
            out.set_bone(c, Some(self.0), 0.9);
        }
        Ok(())
    }
}

#[test]
fn compounding_is_generic_over_the_detector() {
    let dir = temp_dir("generic");
    write_sweep(&dir, 10, 0, None);
    let sweep = Sweep::read(&dir).unwrap();
    let params = CompoundParams {
        column_step: 1,
        ..CompoundParams::default()
    };
    let c = compound_sweep(&sweep, &mut [FixedRow(40.0)], &params).unwrap();
    assert_eq!(c.detector, "fixed");
    assert_eq!(c.samples.len(), 10 * W);
    let z = PROBE_Z - 40.0 * SZ;
    assert!(c.samples.iter().all(|s| (s.xyz.z - z).abs() < 1e-9));
    // Column 0 is at probe x = −aperture/2, i.e. base y = −aperture/2 (the frames lie at y = 0).
    let first = c.samples.iter().find(|s| s.frame == 0).unwrap();
    assert!((first.xyz.y + SX * (W - 1) as f64 / 2.0).abs() < 1e-9);
    // Detector errors propagate (never panic).
    assert!(compound_sweep::<FixedRow>(&sweep, &mut [], &params).is_err());
    let bad = CompoundParams {
        voxel_m: 0.0,
        ..CompoundParams::default()
    };
    assert!(compound_sweep(&sweep, &mut [FixedRow(40.0)], &bad).is_err());
}

#[test]
fn landmarks_fuse_across_frames_and_lone_ones_drop() {
    let mut c = Compounded::default();
    for i in 0..6 {
        c.frames.push(UsedFrame {
            index: i,
            time_s: i as f64 * 0.04,
            sweep_index: 0,
            beam: -Vector3::z(),
            lateral: Vector3::y(),
            origin: Vector3::zeros(),
            bone_columns: 0,
        });
    }
    let tip = Vector3::new(0.4, 0.02, 0.05);
    for i in 0..5u32 {
        let d = f64::from(i) * 0.2e-3;
        c.landmarks.push(LandmarkObservation {
            class: LandmarkClass::SpinousTip,
            xyz: tip + Vector3::new(d, -d, 0.0),
            frame: i,
            score: 0.9,
        });
    }
    // A lone lamina candidate in one frame, far away.
    c.landmarks.push(LandmarkObservation {
        class: LandmarkClass::Lamina,
        xyz: tip + Vector3::new(0.03, 0.0, 0.0),
        frame: 5,
        score: 0.95,
    });
    let fused = c.fuse_landmarks(None);
    assert_eq!(fused.len(), 1, "{fused:?}");
    let f = &fused[0];
    assert_eq!(f.class, LandmarkClass::SpinousTip);
    assert_eq!(f.frames, 5);
    assert!((f.xyz - (tip + Vector3::new(0.4e-3, -0.4e-3, 0.0))).norm() < 1e-9);
    assert!(f.spread_m < 0.5e-3 && f.confidence > 0.5 && f.confidence <= 1.0);
}
