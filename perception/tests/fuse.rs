//! `perception::fuse` on a synthetic CT (a flat bone surface with a partial-volume edge) and a
//! synthetic two-frame sweep whose poses are known: the reslice puts the bone surface at the
//! analytic depth in every column, errors are clear, the overlay and the PNG are what they say.

use std::path::PathBuf;

use nalgebra::{Matrix3, Vector3};
use serde_json::{json, Value};
use telecho_core::Transform;
use telecho_perception::fuse::{
    compose, frame_to_ct, fuse_frame, reslice_frame, write_png, FuseParams, Layout,
};
use telecho_perception::sweep::Sweep;
use telecho_perception::volume::Volume;

const W: usize = 16;
const H: usize = 64;
const S: f64 = 0.0005;
/// The bone surface: the plane y = Y_BONE of the CT (bone anterior of it).
const Y_BONE: f64 = 0.0;
/// CT voxel edge.
const VOXEL: f64 = 0.0005;
/// Probe tip y (m): 20 mm posterior of the bone.
const TIP_Y: f64 = -0.02;
/// Beam tilt of frame 1 about the CT z axis (rad).
const TILT: f64 = 0.2;

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("fuse-{name}"));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Soft tissue (50 HU) posterior of y = Y_BONE, cortical bone (1200 HU) anterior of it, with the
/// partial-volume ramp a CT scanner gives over one voxel (625 HU on the surface).
fn ct() -> Volume {
    let n = [41, 111, 21];
    let origin = [-0.01, -0.03, -0.005];
    Volume::from_fn(n, [VOXEL; 3], origin, |_, j, _| {
        let y = origin[1] + j as f64 * VOXEL;
        let f = ((y - Y_BONE) / VOXEL + 0.5).clamp(0.0, 1.0);
        (50.0 + 1150.0 * f) as f32
    })
    .unwrap()
}

/// The probe looking along +y (its z) with its array along x, rotated by `tilt` about z.
fn probe_pose(tilt: f64) -> Transform {
    let base = Matrix3::from_columns(&[
        Vector3::new(1.0, 0.0, 0.0),
        Vector3::new(0.0, 0.0, -1.0),
        Vector3::new(0.0, 1.0, 0.0),
    ]);
    let (s, c) = tilt.sin_cos();
    let rz = Matrix3::new(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0);
    Transform::new(rz * base, Vector3::new(0.0, TIP_Y, 0.0))
}

fn rows(t: &Transform) -> Value {
    json!(t.to_rows())
}

/// Writes a two-frame sweep (frame 0 straight, frame 1 tilted) with a ramp image.
fn sweep_dir(name: &str) -> PathBuf {
    let d = temp_dir(name);
    let frames: Vec<Value> = [0.0, TILT]
        .iter()
        .enumerate()
        .map(|(i, &tilt)| {
            json!({"index": i, "time_s": i as f64 * 0.04, "t_base_probe": rows(&probe_pose(tilt)),
                   "force_n": 8.0, "force_setpoint_n": 8.0, "sweep": "s", "sweep_index": 0,
                   "state": "sweep", "q_rad": vec![0.0; 6]})
        })
        .collect();
    let header = json!({
        "format": "telecho-sweep/1", "frames_file": "frames.u8", "pixel_type": "u8",
        "width": W, "height": H, "frame_bytes": W * H, "frame_count": 2,
        "pixel_spacing_m": [S, S],
        "t_probe_image": [[S, 0.0, 0.0, -S * (W as f64 - 1.0) / 2.0], [0.0, 0.0, -S, 0.0],
                          [0.0, S, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        "probe": {"frequency_hz": 7.5e6, "aperture_m": S * (W - 1) as f64,
                  "depth_m": S * (H - 1) as f64, "slice_thickness_m": 0.001},
        "completed": true,
        "sweeps": [{"index": 0, "name": "s", "orientation": "transverse", "force_n": 8.0,
                    "speed_m_s": 0.01, "tilt_deg": 0.0, "first_frame": 0, "frame_count": 2,
                    "completed": true}],
        "frames": frames
    });
    std::fs::write(d.join("sweep.json"), serde_json::to_vec(&header).unwrap()).unwrap();
    let px: Vec<u8> = (0..2 * W * H).map(|i| ((i / W) % H * 4) as u8).collect();
    std::fs::write(d.join("frames.u8"), px).unwrap();
    d
}

/// Depth along the beam of column `col` to the plane y = Y_BONE for a probe tilted by `tilt`.
fn true_depth(col: usize, tilt: f64) -> f64 {
    let x = S * (col as f64 - (W as f64 - 1.0) / 2.0);
    // Column offset along the array (rotated x): y shift x·sin(tilt); beam (rotated +y): cos.
    let y0 = TIP_Y + x * tilt.sin();
    (Y_BONE - y0) / tilt.cos()
}

#[test]
fn reslice_puts_the_bone_at_the_analytic_depth() {
    let d = sweep_dir("depth");
    let sweep = Sweep::read(&d).unwrap();
    let ct = ct();
    for (frame, tilt) in [(0usize, 0.0), (1, TILT)] {
        let r = reslice_frame(&ct, &sweep, frame, &Transform::IDENTITY).unwrap();
        assert_eq!((r.width(), r.height()), (W, H));
        assert!(r.coverage() > 0.99, "coverage {}", r.coverage());
        let mut worst: f64 = 0.0;
        for col in 0..W {
            let depth = r.first_crossing_depth_m(col, 625.0).unwrap();
            worst = worst.max((depth - true_depth(col, tilt)).abs());
        }
        println!(
            "frame {frame}: worst surface depth error {:.4} mm",
            worst * 1e3
        );
        assert!(worst < 0.05e-3, "frame {frame}: {:.4} mm", worst * 1e3);
    }
    // A CT moved 5 mm anterior (t_base_ct translation +5 mm in y) puts the bone 5 mm deeper.
    let moved = Transform::new(Matrix3::identity(), Vector3::new(0.0, 0.005, 0.0));
    let r = reslice_frame(&ct, &sweep, 0, &moved).unwrap();
    let depth = r.first_crossing_depth_m(W / 2, 625.0).unwrap();
    assert!(
        (depth - true_depth(W / 2, 0.0) - 0.005).abs() < 0.05e-3,
        "{depth}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_frames_and_poses_are_errors() {
    let d = sweep_dir("errors");
    let sweep = Sweep::read(&d).unwrap();
    let ct = ct();
    let e = reslice_frame(&ct, &sweep, 2, &Transform::IDENTITY)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("frame 2 is out of range") && e.contains("2 frames"),
        "{e}"
    );
    assert!(frame_to_ct(&sweep, usize::MAX, &Transform::IDENTITY).is_err());
    let far = Transform::new(Matrix3::identity(), Vector3::new(1.0, 0.0, 0.0));
    let e = reslice_frame(&ct, &sweep, 0, &far).unwrap_err().to_string();
    assert!(e.contains("does not intersect"), "{e}");
    let nan = Transform::new(Matrix3::identity(), Vector3::new(f64::NAN, 0.0, 0.0));
    let e = reslice_frame(&ct, &sweep, 0, &nan).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn overlay_colours_bone_and_draws_the_surface() {
    let d = sweep_dir("overlay");
    let sweep = Sweep::read(&d).unwrap();
    let ct = ct();
    let params = FuseParams::default();
    let (r, img) = fuse_frame(&ct, &sweep, 0, &Transform::IDENTITY, &params).unwrap();
    assert_eq!((img.width, img.height), (W, H));
    let surface_row = (true_depth(W / 2, 0.0) / S).round() as usize;
    let us = sweep.frame_pixels(0).unwrap();
    // Above the bone: the ultrasound grey, untouched.
    let row = surface_row - 10;
    let g = us[row * W + W / 2];
    assert_eq!(img.pixel(row, W / 2).unwrap(), [g; 3]);
    // The surface: the contour colour.
    assert_eq!(img.pixel(surface_row, W / 2).unwrap(), params.contour_rgb);
    // Inside the bone: tinted orange (red > green > blue).
    let [red, green, blue] = img.pixel(surface_row + 10, W / 2).unwrap();
    assert!(red > green && green > blue, "{red} {green} {blue}");
    // Side by side: twice as wide, the CT window on the left (bone bright, tissue dark).
    let side = compose(
        us,
        &r,
        &FuseParams {
            layout: Layout::SideBySide,
            ..params
        },
    )
    .unwrap();
    assert_eq!((side.width, side.height), (2 * W, H));
    let bone = side.pixel(surface_row + 10, W / 2).unwrap()[0];
    let tissue = side.pixel(surface_row - 10, W / 2).unwrap()[0];
    assert!(bone > 200 && tissue < 60, "{bone} {tissue}");
    assert_eq!(
        side.pixel(surface_row - 10, W + W / 2).unwrap(),
        img.pixel(surface_row - 10, W / 2).unwrap()
    );
    // Wrong-sized ultrasound and bad settings are errors.
    assert!(compose(&us[1..], &r, &params).is_err());
    let bad = FuseParams {
        alpha: 2.0,
        ..params
    };
    assert!(compose(us, &r, &bad).is_err());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn png_is_written_and_reads_back() {
    let d = sweep_dir("png");
    let sweep = Sweep::read(&d).unwrap();
    let (_, img) = fuse_frame(
        &ct(),
        &sweep,
        1,
        &Transform::IDENTITY,
        &FuseParams::default(),
    )
    .unwrap();
    let path = d.join("overlay.png");
    write_png(&path, &img).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width as usize, info.height as usize), (W, H));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(&buf[..info.buffer_size()], img.data.as_slice());
    let e = write_png(&d.join("no-such-dir").join("x.png"), &img)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-dir"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
