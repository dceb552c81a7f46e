//! CDR encoding of the ROS 2 message types: byte sequences computed by hand from the CDR rules,
//! round trips, schema texts, and bad input.

use proptest::prelude::*;
use telecho_core::ros_msgs::*;

fn f64le(v: f64) -> [u8; 8] {
    v.to_le_bytes()
}

/// geometry_msgs/WrenchStamped, laid out by hand: alignment counts from the end of the 4-byte
/// encapsulation header; a string is a u32 length including the NUL, the bytes, then the NUL.
#[test]
fn wrench_stamped_bytes_by_hand() {
    let msg = WrenchStamped {
        header: Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "ft_sensor".into(),
        },
        wrench: Wrench {
            force: Vector3 {
                x: 1.0,
                y: 2.0,
                z: 3.0,
            },
            torque: Vector3 {
                x: 4.0,
                y: 5.0,
                z: 6.0,
            },
        },
    };
    let mut want = vec![0x00, 0x01, 0x00, 0x00]; // encapsulation: CDR_LE, no options
    want.extend([1, 0, 0, 0]); // 0: stamp.sec
    want.extend([2, 0, 0, 0]); // 4: stamp.nanosec
    want.extend([10, 0, 0, 0]); // 8: frame_id length, NUL included
    want.extend(b"ft_sensor\0"); // 12..22
    want.extend([0, 0]); // 22: pad to 24 for the f64s
    for v in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] {
        want.extend(f64le(v)); // 24..72
    }
    assert_eq!(want.len(), 76);
    let got = to_cdr(&msg).unwrap();
    assert_eq!(got, want);
    assert_eq!(from_cdr::<WrenchStamped>(&got).unwrap(), msg);
}

/// sensor_msgs/JointState: sequences are a u32 count then the elements, each aligned.
#[test]
fn joint_state_bytes_by_hand() {
    let msg = JointState {
        header: Header::default(),
        name: vec!["j1".into()],
        position: vec![0.5],
        velocity: vec![],
        effort: vec![],
    };
    let mut want = vec![0x00, 0x01, 0x00, 0x00];
    want.extend([0, 0, 0, 0]); // 0: sec
    want.extend([0, 0, 0, 0]); // 4: nanosec
    want.extend([1, 0, 0, 0]); // 8: frame_id length (just the NUL)
    want.extend([0]); // 12: NUL
    want.extend([0, 0, 0]); // 13: pad to 16
    want.extend([1, 0, 0, 0]); // 16: name count
    want.extend([3, 0, 0, 0]); // 20: "j1" length
    want.extend(b"j1\0"); // 24..27
    want.extend([0]); // 27: pad to 28
    want.extend([1, 0, 0, 0]); // 28: position count
    want.extend(f64le(0.5)); // 32: already 8-aligned
    want.extend([0, 0, 0, 0]); // 40: velocity count
    want.extend([0, 0, 0, 0]); // 44: effort count
    assert_eq!(want.len(), 52);
    let got = to_cdr(&msg).unwrap();
    assert_eq!(got, want);
    assert_eq!(from_cdr::<JointState>(&got).unwrap(), msg);
}

/// sensor_msgs/Image: a u8 field needs no alignment, the following u32 realigns to 4.
#[test]
fn image_bytes_by_hand() {
    let msg = Image {
        header: Header {
            stamp: Time { sec: 5, nanosec: 6 },
            frame_id: "us".into(),
        },
        height: 1,
        width: 2,
        encoding: "mono8".into(),
        is_bigendian: 0,
        step: 2,
        data: vec![7, 8],
    };
    let mut want = vec![0x00, 0x01, 0x00, 0x00];
    want.extend([5, 0, 0, 0, 6, 0, 0, 0]); // 0: stamp
    want.extend([3, 0, 0, 0]); // 8: frame_id length
    want.extend(b"us\0"); // 12..15
    want.extend([0]); // 15: pad
    want.extend([1, 0, 0, 0, 2, 0, 0, 0]); // 16: height, 20: width
    want.extend([6, 0, 0, 0]); // 24: encoding length
    want.extend(b"mono8\0"); // 28..34
    want.extend([0]); // 34: is_bigendian
    want.extend([0]); // 35: pad
    want.extend([2, 0, 0, 0]); // 36: step
    want.extend([2, 0, 0, 0, 7, 8]); // 40: data count, 44: data
    assert_eq!(want.len(), 50);
    let got = to_cdr(&msg).unwrap();
    assert_eq!(got, want);
    assert_eq!(from_cdr::<Image>(&got).unwrap(), msg);
}

#[test]
fn type_names_and_schema_text() {
    assert_eq!(JointState::TYPE_NAME, "sensor_msgs/msg/JointState");
    assert_eq!(TFMessage::TYPE_NAME, "tf2_msgs/msg/TFMessage");
    assert_eq!(MarkerArray::TYPE_NAME, "visualization_msgs/msg/MarkerArray");
    let sep = "=".repeat(80);
    let want = format!(
        "std_msgs/Header header\ngeometry_msgs/Wrench wrench\n\
         {sep}\nMSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n\
         {sep}\nMSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n\
         {sep}\nMSG: geometry_msgs/Wrench\ngeometry_msgs/Vector3 force\ngeometry_msgs/Vector3 torque\n\
         {sep}\nMSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n"
    );
    assert_eq!(WrenchStamped::schema_text(), want);

    // Every type used by MarkerArray is defined exactly once.
    let text = MarkerArray::schema_text();
    for dep in [
        "visualization_msgs/Marker",
        "std_msgs/Header",
        "builtin_interfaces/Time",
        "builtin_interfaces/Duration",
        "geometry_msgs/Pose",
        "geometry_msgs/Point",
        "geometry_msgs/Quaternion",
        "geometry_msgs/Vector3",
        "std_msgs/ColorRGBA",
        "sensor_msgs/CompressedImage",
        "visualization_msgs/UVCoordinate",
        "visualization_msgs/MeshFile",
    ] {
        assert_eq!(
            text.matches(&format!("\nMSG: {dep}\n")).count(),
            1,
            "{dep} in\n{text}"
        );
    }
}

#[test]
fn transform_conversion_round_trips() {
    let t = telecho_core::Transform::from_xyz_rpy([0.1, -0.2, 0.3], [0.4, -0.5, 1.2]).unwrap();
    let msg = Transform::from(&t);
    let q = msg.rotation;
    assert!((q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w - 1.0).abs() < 1e-12);
    let back = telecho_core::Transform::from(&msg);
    let (dt, dr) = back.distance_to(&t);
    assert!(dt < 1e-12 && dr < 1e-9, "{dt} {dr}");
}

#[test]
fn rejects_bad_encapsulation_and_trailing_bytes() {
    let good = to_cdr(&Float64 { data: 2.0 }).unwrap();
    assert!(from_cdr::<Float64>(&[]).unwrap_err().is_cdr());
    assert!(from_cdr::<Float64>(&good[..3]).unwrap_err().is_cdr());
    let mut big_endian = good.clone();
    big_endian[1] = 0x00;
    assert!(from_cdr::<Float64>(&big_endian).unwrap_err().is_cdr());
    // DDS pads payloads to 4 bytes: up to 3 extra bytes are accepted, more are not.
    let mut padded = good.clone();
    padded.extend([0, 0, 0]);
    assert_eq!(from_cdr::<Float64>(&padded).unwrap().data, 2.0);
    padded.push(0);
    assert!(from_cdr::<Float64>(&padded).is_err());
}

#[test]
fn every_truncation_of_a_marker_array_is_an_error() {
    let marker = Marker {
        header: Header::new(1_700_000_000_123_456_789, "ct"),
        ns: "landmarks".into(),
        id: 7,
        type_: Marker::SPHERE_LIST,
        action: Marker::ADD,
        scale: Vector3 {
            x: 0.01,
            y: 0.01,
            z: 0.01,
        },
        color: ColorRGBA {
            r: 1.0,
            g: 0.5,
            b: 0.0,
            a: 1.0,
        },
        points: vec![Point {
            x: 0.1,
            y: 0.2,
            z: 0.3,
        }],
        texture: CompressedImage {
            format: "png".into(),
            data: vec![1, 2, 3],
            ..Default::default()
        },
        uv_coordinates: vec![UVCoordinate { u: 0.5, v: 0.25 }],
        text: "L3".into(),
        mesh_file: MeshFile {
            filename: "m.stl".into(),
            data: vec![9; 5],
        },
        mesh_use_embedded_materials: true,
        ..Default::default()
    };
    let msg = MarkerArray {
        markers: vec![marker.clone(), marker],
    };
    let bytes = to_cdr(&msg).unwrap();
    assert_eq!(from_cdr::<MarkerArray>(&bytes).unwrap(), msg);
    for n in 0..bytes.len() {
        assert!(from_cdr::<MarkerArray>(&bytes[..n]).is_err(), "prefix {n}");
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_/ äé]{0,12}"
}

fn num() -> impl Strategy<Value = f64> {
    prop::num::f64::ANY
}

fn header() -> impl Strategy<Value = Header> {
    (any::<i32>(), any::<u32>(), text()).prop_map(|(sec, nanosec, frame_id)| Header {
        stamp: Time { sec, nanosec },
        frame_id,
    })
}

fn vector3() -> impl Strategy<Value = Vector3> {
    (num(), num(), num()).prop_map(|(x, y, z)| Vector3 { x, y, z })
}

fn quaternion() -> impl Strategy<Value = Quaternion> {
    (num(), num(), num(), num()).prop_map(|(x, y, z, w)| Quaternion { x, y, z, w })
}

fn pose() -> impl Strategy<Value = Pose> {
    (vector3(), quaternion()).prop_map(|(p, orientation)| Pose {
        position: Point {
            x: p.x,
            y: p.y,
            z: p.z,
        },
        orientation,
    })
}

fn color() -> impl Strategy<Value = ColorRGBA> {
    any::<[f32; 4]>().prop_map(|[r, g, b, a]| ColorRGBA { r, g, b, a })
}

fn marker() -> impl Strategy<Value = Marker> {
    (
        (header(), text(), any::<i32>(), any::<i32>(), any::<i32>()),
        (
            pose(),
            vector3(),
            color(),
            any::<(i32, u32)>(),
            any::<bool>(),
        ),
        (
            prop::collection::vec(vector3(), 0..4),
            prop::collection::vec(color(), 0..4),
            text(),
            prop::collection::vec(any::<u8>(), 0..9),
            prop::collection::vec(any::<(f32, f32)>(), 0..3),
        ),
        (
            text(),
            text(),
            prop::collection::vec(any::<u8>(), 0..9),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (header, ns, id, type_, action),
                (pose, scale, color, (sec, nanosec), frame_locked),
                (points, colors, texture_resource, tex, uv),
                (text, mesh_resource, mesh, embedded),
            )| Marker {
                header: header.clone(),
                ns,
                id,
                type_,
                action,
                pose,
                scale,
                color,
                lifetime: Duration { sec, nanosec },
                frame_locked,
                points: points
                    .into_iter()
                    .map(|v| Point {
                        x: v.x,
                        y: v.y,
                        z: v.z,
                    })
                    .collect(),
                colors,
                texture_resource,
                texture: CompressedImage {
                    header,
                    format: "png".into(),
                    data: tex,
                },
                uv_coordinates: uv.into_iter().map(|(u, v)| UVCoordinate { u, v }).collect(),
                text,
                mesh_resource,
                mesh_file: MeshFile {
                    filename: "mesh.dae".into(),
                    data: mesh,
                },
                mesh_use_embedded_materials: embedded,
            },
        )
}

/// Round trip compared on the bytes, so NaN payloads and -0.0 are checked bit for bit.
fn assert_round_trip<M: RosMessage + std::fmt::Debug>(msg: &M) -> Result<(), TestCaseError> {
    let bytes = to_cdr(msg).unwrap();
    let back: M = from_cdr(&bytes).unwrap();
    prop_assert_eq!(to_cdr(&back).unwrap(), bytes);
    Ok(())
}

proptest! {
    #[test]
    fn joint_state_round_trips(
        header in header(),
        names in prop::collection::vec(text(), 0..8),
        position in prop::collection::vec(num(), 0..8),
        velocity in prop::collection::vec(num(), 0..8),
        effort in prop::collection::vec(num(), 0..8),
    ) {
        assert_round_trip(&JointState { header, name: names, position, velocity, effort })?;
    }

    #[test]
    fn finite_joint_state_round_trips_equal(
        names in prop::collection::vec(text(), 0..8),
        position in prop::collection::vec(-10.0f64..10.0, 0..8),
    ) {
        let msg = JointState { name: names, position, ..Default::default() };
        prop_assert_eq!(from_cdr::<JointState>(&to_cdr(&msg).unwrap()).unwrap(), msg);
    }

    #[test]
    fn wrench_pose_tf_round_trip(
        header in header(),
        force in vector3(),
        torque in vector3(),
        pose in pose(),
        child in text(),
        rotation in quaternion(),
        n in 0usize..4,
        setpoint in num(),
    ) {
        assert_round_trip(&WrenchStamped { header: header.clone(), wrench: Wrench { force, torque } })?;
        assert_round_trip(&PoseStamped { header: header.clone(), pose })?;
        assert_round_trip(&Float64 { data: setpoint })?;
        let ts = TransformStamped {
            header,
            child_frame_id: child,
            transform: Transform { translation: force, rotation },
        };
        assert_round_trip(&TFMessage { transforms: vec![ts; n] })?;
    }

    #[test]
    fn image_round_trips(
        header in header(),
        height in any::<u32>(),
        width in any::<u32>(),
        encoding in text(),
        is_bigendian in any::<u8>(),
        step in any::<u32>(),
        data in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let msg = Image { header, height, width, encoding, is_bigendian, step, data };
        prop_assert_eq!(from_cdr::<Image>(&to_cdr(&msg).unwrap()).unwrap(), msg);
    }

    #[test]
    fn marker_array_round_trips(markers in prop::collection::vec(marker(), 0..3)) {
        assert_round_trip(&MarkerArray { markers })?;
    }

    /// Garbage after a valid encapsulation header: an error or a value, never a panic.
    #[test]
    fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = CDR_LE_HEADER.to_vec();
        bytes.extend(&body);
        let _ = from_cdr::<MarkerArray>(&bytes);
        let _ = from_cdr::<JointState>(&bytes);
        let _ = from_cdr::<Image>(&bytes);
        let _ = from_cdr::<TFMessage>(&bytes);
        let _ = from_cdr::<WrenchStamped>(&body);
    }

    /// Any strict prefix of a valid message is an error.
    #[test]
    fn truncated_joint_state_is_an_error(
        names in prop::collection::vec(text(), 1..4),
        position in prop::collection::vec(num(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = to_cdr(&JointState { name: names, position, ..Default::default() }).unwrap();
        let n = cut.index(bytes.len());
        prop_assert!(from_cdr::<JointState>(&bytes[..n]).is_err());
    }
}

/// diagnostic_msgs/DiagnosticArray (safety events), laid out by hand: a `byte` is one octet,
/// and every string and sequence length re-aligns to 4.
#[test]
fn diagnostic_array_bytes_by_hand() {
    let msg = DiagnosticArray {
        header: Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "a".into(),
        },
        status: vec![DiagnosticStatus {
            level: DiagnosticStatus::ERROR,
            name: "n".into(),
            message: String::new(),
            hardware_id: String::new(),
            values: vec![KeyValue {
                key: "k".into(),
                value: "v".into(),
            }],
        }],
    };
    let mut want = vec![0x00, 0x01, 0x00, 0x00];
    want.extend([1, 0, 0, 0, 2, 0, 0, 0]); // 0: stamp
    want.extend([2, 0, 0, 0, b'a', 0]); // 8: frame_id
    want.extend([0, 0, 1, 0, 0, 0]); // 14: pad, 16: one status
    want.push(2); // 20: level ERROR
    want.extend([0, 0, 0, 2, 0, 0, 0, b'n', 0]); // 21: pad, 24: name
    want.extend([0, 0, 1, 0, 0, 0, 0]); // 30: pad, 32: empty message
    want.extend([0, 0, 0, 1, 0, 0, 0, 0]); // 37: pad, 40: empty hardware_id
    want.extend([0, 0, 0, 1, 0, 0, 0]); // 45: pad, 48: one key/value
    want.extend([2, 0, 0, 0, b'k', 0]); // 52: key
    want.extend([0, 0, 2, 0, 0, 0, b'v', 0]); // 58: pad, 60: value
    assert_eq!(to_cdr(&msg).unwrap(), want);
    assert_eq!(from_cdr::<DiagnosticArray>(&want).unwrap(), msg);
    assert_eq!(
        DiagnosticArray::TYPE_NAME,
        "diagnostic_msgs/msg/DiagnosticArray"
    );
    let schema = DiagnosticArray::schema_text();
    assert!(
        schema.contains("\nMSG: diagnostic_msgs/DiagnosticStatus\nbyte OK=0\n"),
        "{schema}"
    );
    assert!(
        schema.contains("\nMSG: diagnostic_msgs/KeyValue\nstring key\n"),
        "{schema}"
    );
}
