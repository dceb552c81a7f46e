//! metres → millimetres and base → LPS, checked on values worked out by hand, and the messages
//! of a sweep frame built from them.

use nalgebra::{Matrix3, Matrix4, Vector3};
use telecho_igtl::stream::{Frame, Landmark, SweepGeometry, IMAGE_DEVICE, PROBE_DEVICE};
use telecho_igtl::{BaseToLps, Content, Coordinate, ScalarType};

fn close(a: &Matrix4<f64>, b: &Matrix4<f64>, tol: f64) {
    assert!((a - b).abs().max() < tol, "{a}\n!=\n{b}");
}

#[test]
fn prone_sends_base_axes_to_the_patients_lps_axes() {
    let c = BaseToLps::prone();
    // base +x is the patient's right: L = −x.
    assert_eq!(
        c.point(&Vector3::new(1.0, 0.0, 0.0)),
        Vector3::new(-1000.0, 0.0, 0.0)
    );
    // base +y is superior: S.
    assert_eq!(
        c.point(&Vector3::new(0.0, 1.0, 0.0)),
        Vector3::new(0.0, 0.0, 1000.0)
    );
    // base +z is posterior (up, out of the back of the prone patient): P.
    assert_eq!(
        c.point(&Vector3::new(0.0, 0.0, 1.0)),
        Vector3::new(0.0, 1000.0, 0.0)
    );
    assert_eq!(c.rotation().determinant(), 1.0);
    assert_eq!(BaseToLps::default(), c);
}

#[test]
fn a_rigid_pose_keeps_its_rotation_and_scales_its_translation() {
    // Probe pointing down (tip z = base −z), 0.45 m ahead, 31 mm above the base origin.
    let mut t = Matrix4::identity();
    t.fixed_view_mut::<3, 3>(0, 0)
        .copy_from(&Matrix3::new(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0));
    t.fixed_view_mut::<3, 1>(0, 3)
        .copy_from(&Vector3::new(0.45, 0.0, 0.031));
    let m = BaseToLps::prone().rigid(&t);
    // Rotation: columns are the probe axes in LPS: x → (−1, 0, 0), y → base −y → (0, 0, −1)
    // (inferior), z → base −z → (0, −1, 0) (anterior: the beam goes into the back).
    let want = Matrix4::new(
        -1.0, 0.0, 0.0, -450.0, //
        0.0, 0.0, -1.0, 31.0, //
        0.0, -1.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 1.0,
    );
    close(&m, &want, 1e-12);
    // Identity only scales.
    let id = BaseToLps::identity().rigid(&t);
    assert_eq!(id[(0, 3)], 450.0);
    assert_eq!(id[(2, 2)], -1.0);
}

#[test]
fn base_to_lps_parses_and_refuses_non_rotations() {
    assert_eq!(BaseToLps::parse("prone").unwrap(), BaseToLps::prone());
    assert_eq!(
        BaseToLps::parse(" identity ").unwrap(),
        BaseToLps::identity()
    );
    assert_eq!(
        BaseToLps::parse("-1,0,0, 0,0,1, 0,1,0").unwrap(),
        BaseToLps::prone()
    );
    let e = BaseToLps::parse("1,0,0,0,1,0,0,0,-1").unwrap_err();
    assert!(e.to_string().contains("not a proper rotation"), "{e}");
    let e = BaseToLps::parse("2,0,0,0,1,0,0,0,1").unwrap_err();
    assert!(e.to_string().contains("not a proper rotation"), "{e}");
    let e = BaseToLps::parse("1,0,0").unwrap_err();
    assert!(e.to_string().contains("3 numbers"), "{e}");
    let e = BaseToLps::parse("supine").unwrap_err();
    assert!(e.to_string().contains("supine"), "{e}");
}

#[test]
fn sweep_frame_messages_carry_mm_lps_geometry() {
    let (w, h) = (4usize, 3usize);
    let (sx, sz) = (0.0005, 0.00025);
    let t_probe_image = Matrix4::new(
        sx,
        0.0,
        0.0,
        -sx * 1.5, //
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
    let g = SweepGeometry {
        width: w,
        height: h,
        t_probe_image,
        base_to_lps: BaseToLps::prone(),
    };
    let mut pose = Matrix4::identity();
    pose.fixed_view_mut::<3, 3>(0, 0)
        .copy_from(&Matrix3::new(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0));
    pose.fixed_view_mut::<3, 1>(0, 3)
        .copy_from(&Vector3::new(0.4, 0.1, 0.0));
    let pixels: Vec<u8> = (0..12).collect();
    let frame = Frame {
        index: 7,
        time_s: 1.5,
        t_base_probe: &pose,
        pixels: &pixels,
    };
    let ts = telecho_igtl::Timestamp::default();

    let probe = g.probe_message(&frame, ts);
    assert_eq!(probe.device_name, PROBE_DEVICE);
    assert_eq!(probe.version, 2);
    assert_eq!(probe.metadata[0], ("frame".to_owned(), "7".to_owned()));
    assert_eq!(
        probe.metadata[1],
        ("time_s".to_owned(), "1.500000".to_owned())
    );
    let Content::Transform(t) = &probe.content else {
        panic!()
    };
    assert_eq!(t.matrix[0][3], -400.0);
    assert_eq!(t.matrix[2][3], 100.0);

    let image = g.image_message(&frame, ts).unwrap();
    assert_eq!(image.device_name, IMAGE_DEVICE);
    let Content::Image(im) = &image.content else {
        panic!()
    };
    assert_eq!(im.size, [4, 3, 1]);
    assert_eq!(im.scalar_type, ScalarType::Uint8);
    assert_eq!(im.coordinate, Coordinate::Lps);
    assert_eq!(im.data, pixels);
    // i (column) runs along probe +x = base +x = L −x: (−0.5, 0, 0) mm per pixel; j (row, depth)
    // along probe +z = base −z = anterior: (0, −0.25, 0) mm per pixel.
    assert_eq!(im.axes[0], [-0.5, 0.0, 0.0]);
    assert_eq!(im.axes[1], [0.0, -0.25, 0.0]);
    let s = im.spacing();
    assert!(
        (s[0] - 0.5).abs() < 1e-9 && (s[1] - 0.25).abs() < 1e-9,
        "{s:?}"
    );
    // Pixel (0, 0) sits 1.5 columns to the probe's −x of the tip: base (0.39925, 0.1, 0), so
    // LPS (−399.25, 0, 100) mm; the centre (1.5, 1) adds 1 row of depth: (−400, −0.25, 100).
    let ijk = im.ijk_to_world();
    assert!(
        (ijk[(0, 3)] + 399.25).abs() < 1e-4 && ijk[(1, 3)].abs() < 1e-4,
        "{ijk}"
    );
    assert!((ijk[(2, 3)] - 100.0).abs() < 1e-4, "{ijk}");
    assert_eq!(im.center, [-400.0, -0.25, 100.0]);

    // A frame with the wrong number of pixels is refused.
    let short = Frame {
        pixels: &pixels[..11],
        ..frame
    };
    assert!(g.image_message(&short, ts).unwrap_err().is_encode());

    let points = g.landmarks_message(
        &[Landmark {
            name: "L3_spinous".into(),
            xyz_base_m: [0.45, 0.01, -0.02],
        }],
        ts,
    );
    let Content::Point(p) = &points.content else {
        panic!()
    };
    assert_eq!(p[0].position, [-450.0, -20.0, 10.0]);
    assert_eq!(p[0].group, "Landmark");
}
