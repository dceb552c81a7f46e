//! MCAP recording: written by `Recorder`, read back by `read_recording`, by the `mcap` crate's own
//! reader, and by the independent PyPI `mcap` + `mcap-ros2-support` readers; crash truncation.

use std::path::Path;
use std::time::Duration;

use telecho_core::peers::{missing_peer, python_output};
use telecho_core::recording::{read_recording, RecordedMessage, Recorder, RecorderOptions};
use telecho_core::ros_msgs::*;

const T0: u64 = 1_700_000_000_000_000_000;

fn joint_state(i: u64) -> JointState {
    JointState {
        header: Header::new(T0 + i, "base_link"),
        name: vec!["joint_1".into(), "joint_2".into()],
        position: vec![0.1 * i as f64, -1.25],
        velocity: vec![0.0, 1e-300],
        effort: vec![-3.5, 12.0],
    }
}

fn wrench(i: u64) -> WrenchStamped {
    WrenchStamped {
        header: Header::new(T0 + i, "ft_sensor"),
        wrench: Wrench {
            force: Vector3 {
                x: 0.1,
                y: -0.2,
                z: 5.0 + i as f64 / 3.0,
            },
            torque: Vector3 {
                x: 1e-3,
                y: 0.0,
                z: -0.0,
            },
        },
    }
}

fn tf(i: u64) -> TFMessage {
    TFMessage {
        transforms: vec![TransformStamped {
            header: Header::new(T0 + i, "base_link"),
            child_frame_id: "probe_tip".into(),
            transform: Transform {
                translation: Vector3 {
                    x: 0.4,
                    y: 0.0,
                    z: 0.3 + i as f64 * 1e-4,
                },
                rotation: Quaternion {
                    x: 0.0,
                    y: 1.0,
                    z: 0.0,
                    w: 0.0,
                },
            },
        }],
    }
}

fn image(i: u64) -> Image {
    Image {
        header: Header::new(T0 + i, "us_image"),
        height: 3,
        width: 4,
        encoding: "mono8".into(),
        is_bigendian: 0,
        step: 4,
        data: (0..12).map(|k| (k * 20 + i) as u8).collect(),
    }
}

fn landmarks(i: u64) -> MarkerArray {
    MarkerArray {
        markers: vec![Marker {
            header: Header::new(T0 + i, "ct"),
            ns: "spine".into(),
            id: 3,
            type_: Marker::SPHERE,
            action: Marker::ADD,
            pose: Pose {
                position: Point {
                    x: 0.01,
                    y: 0.02,
                    z: 0.03,
                },
                orientation: Quaternion::default(),
            },
            scale: Vector3 {
                x: 0.005,
                y: 0.005,
                z: 0.005,
            },
            color: ColorRGBA {
                r: 1.0,
                g: 0.5,
                b: 0.25,
                a: 1.0,
            },
            text: "L4".into(),
            ..Default::default()
        }],
    }
}

/// Writes 5 rounds of the five topics, one round per millisecond of log time.
fn write_rounds<W: std::io::Write + std::io::Seek>(
    rec: &mut Recorder<W>,
    rounds: std::ops::Range<u64>,
) {
    for i in rounds {
        let t = T0 + i * 1_000_000;
        rec.write("/joint_states", t, &joint_state(i)).unwrap();
        rec.write("/probe/wrench", t, &wrench(i)).unwrap();
        rec.write("/tf", t, &tf(i)).unwrap();
        rec.write("/us/image", t, &image(i)).unwrap();
        rec.write("/perception/landmarks", t, &landmarks(i))
            .unwrap();
    }
}

/// Checks that `msgs` are exactly rounds `0..n` as written by `write_rounds`.
fn check_rounds(msgs: &[RecordedMessage], n: u64) {
    assert_eq!(msgs.len() as u64, 5 * n);
    for (k, m) in msgs.iter().enumerate() {
        let i = k as u64 / 5;
        assert_eq!(m.log_time_ns, T0 + i * 1_000_000);
        assert_eq!(m.publish_time_ns, m.log_time_ns);
        assert_eq!(m.encoding, "cdr");
        match m.topic.as_str() {
            "/joint_states" => {
                assert_eq!(m.type_name, JointState::TYPE_NAME);
                assert_eq!(from_cdr::<JointState>(&m.data).unwrap(), joint_state(i));
            }
            "/probe/wrench" => {
                assert_eq!(m.type_name, WrenchStamped::TYPE_NAME);
                assert_eq!(from_cdr::<WrenchStamped>(&m.data).unwrap(), wrench(i));
            }
            "/tf" => {
                assert_eq!(m.type_name, TFMessage::TYPE_NAME);
                assert_eq!(from_cdr::<TFMessage>(&m.data).unwrap(), tf(i));
            }
            "/us/image" => {
                assert_eq!(m.type_name, Image::TYPE_NAME);
                assert_eq!(from_cdr::<Image>(&m.data).unwrap(), image(i));
            }
            "/perception/landmarks" => {
                assert_eq!(m.type_name, MarkerArray::TYPE_NAME);
                assert_eq!(from_cdr::<MarkerArray>(&m.data).unwrap(), landmarks(i));
            }
            other => panic!("unexpected topic {other}"),
        }
    }
}

fn read_all(path: &Path) -> Vec<RecordedMessage> {
    read_recording(path)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn round_trip_through_read_recording_and_the_mcap_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.mcap");
    let mut rec = Recorder::create(&path).unwrap();
    write_rounds(&mut rec, 0..5);
    rec.finish().unwrap();

    check_rounds(&read_all(&path), 5);

    // The mcap crate's indexed view: one channel per topic, cdr + ros2msg, summary present.
    let bytes = std::fs::read(&path).unwrap();
    let summary = mcap::Summary::read(&bytes).unwrap().expect("summary");
    assert_eq!(summary.channels.len(), 5);
    for ch in summary.channels.values() {
        assert_eq!(ch.message_encoding, "cdr");
        let schema = ch.schema.as_ref().unwrap();
        assert_eq!(schema.encoding, "ros2msg");
    }
    let wrench_schema = summary
        .schemas
        .values()
        .find(|s| s.name == WrenchStamped::TYPE_NAME)
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&wrench_schema.data).unwrap(),
        WrenchStamped::schema_text()
    );
    assert_eq!(summary.stats.unwrap().message_count, 25);
    let n = mcap::MessageStream::new(&bytes).unwrap().count();
    assert_eq!(n, 25);
}

#[test]
fn topic_keeps_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = Recorder::create(dir.path().join("x.mcap")).unwrap();
    rec.write("/a", T0, &Float64 { data: 1.0 }).unwrap();
    assert!(rec.write("/a", T0, &wrench(0)).is_err());
    rec.finish().unwrap();
}

/// Garbage after the MCAP magic — an unknown record, a chunk record, a message record — with
/// length fields of up to 2⁶⁴: an error naming the file, never a crash (one such file once made
/// the reader try to allocate 7.9 EB and abort).
#[test]
fn corrupt_record_lengths_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let magic = b"\x89MCAP0\r\n";
    for (i, (opcode, len)) in [
        (0x74u8, 0x6e20_7369_2073_6968u64),
        (0x06, u64::MAX),
        (0x05, 1 << 40),
        (0x01, 1 << 33),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("bad{i}.mcap"));
        let mut bytes = magic.to_vec();
        bytes.push(opcode);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&[0xAB; 64]);
        std::fs::write(&path, &bytes).unwrap();
        let results: Vec<_> = read_recording(&path).unwrap().collect();
        assert_eq!(
            results.len(),
            1,
            "opcode {opcode:#x}: one error, then the end"
        );
        let e = results[0].as_ref().unwrap_err().to_string();
        assert!(e.contains(&format!("bad{i}.mcap")), "{e}");
    }
}

/// A recorder killed with -9 leaves the file as it is on disk while the process runs: copying it
/// at that moment is exactly what a crash leaves behind.
#[test]
fn crash_keeps_the_flushed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.mcap");
    let options = RecorderOptions {
        chunk_size: 1 << 20,
        flush_interval: Duration::from_secs(3600),
    };
    let mut rec = Recorder::create_with_options(&path, options).unwrap();
    write_rounds(&mut rec, 0..3);
    rec.flush().unwrap();
    write_rounds(&mut rec, 3..5); // still in the open chunk
    let crashed = dir.path().join("crashed.mcap");
    std::fs::copy(&path, &crashed).unwrap();
    rec.finish().unwrap();

    let mut msgs = Vec::new();
    let mut end = None;
    for m in read_recording(&crashed).unwrap() {
        match m {
            Ok(m) => msgs.push(m),
            Err(e) => end = Some(e),
        }
    }
    check_rounds(&msgs, 3);
    assert!(end.expect("an error at the end").is_truncated_recording());

    // The mcap crate's linear reader recovers the same messages.
    let bytes = std::fs::read(&crashed).unwrap();
    let recovered = mcap::MessageStream::new(&bytes)
        .unwrap()
        .take_while(|m| m.is_ok())
        .count();
    assert_eq!(recovered, 15);

    // The complete file has everything.
    check_rounds(&read_all(&path), 5);
}

/// With a zero flush interval every message is on disk as soon as `write` returns.
#[test]
fn flush_interval_bounds_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timed.mcap");
    let options = RecorderOptions {
        flush_interval: Duration::ZERO,
        ..Default::default()
    };
    let mut rec = Recorder::create_with_options(&path, options).unwrap();
    write_rounds(&mut rec, 0..4);
    let msgs: Vec<_> = read_recording(&path)
        .unwrap()
        .take_while(|m| m.is_ok())
        .map(|m| m.unwrap())
        .collect();
    check_rounds(&msgs, 4);
    rec.finish().unwrap();
}

/// Cutting a finished file anywhere yields a prefix of its messages and then one error; never a
/// panic, never a wrong message.
#[test]
fn any_truncation_yields_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.mcap");
    let options = RecorderOptions {
        chunk_size: 512,
        ..Default::default()
    };
    let mut rec = Recorder::create_with_options(&path, options).unwrap();
    write_rounds(&mut rec, 0..4);
    rec.finish().unwrap();
    let full = read_all(&path);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.mcap");
    for n in (0..bytes.len()).step_by(7) {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let Ok(reader) = read_recording(&cut) else {
            continue;
        };
        let mut ok = 0;
        let mut errors = 0;
        for m in reader {
            match m {
                Ok(m) => {
                    assert_eq!(errors, 0);
                    assert_eq!(m, full[ok], "cut at {n}");
                    ok += 1;
                }
                Err(_) => errors += 1,
            }
        }
        assert_eq!(errors, 1, "cut at {n}");
    }
}

/// The independent PyPI readers (`mcap` + `mcap-ros2-support`) decode every message of the file
/// with our `ros2msg` schemas, and the values are exactly the ones written.
#[test]
fn independent_python_reader_decodes_everything() {
    if python_output("import mcap, mcap_ros2; print('ok')").is_none() {
        missing_peer(
            "PyPI mcap + mcap-ros2-support",
            "pip install mcap mcap-ros2-support",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.mcap");
    let mut rec = Recorder::create(&path).unwrap();
    write_rounds(&mut rec, 0..3);
    rec.finish().unwrap();

    let code = format!(
        r#"
import json
from mcap_ros2.reader import read_ros2_messages
def conv(o):
    if hasattr(o, "__slots__"):
        return {{k: conv(getattr(o, k)) for k in o.__slots__}}
    if isinstance(o, (bytes, bytearray, memoryview)):
        return list(bytes(o))
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (list, tuple)):
        return [conv(x) for x in o]
    return o
out = []
for m in read_ros2_messages({path:?}):
    out.append({{"topic": m.channel.topic, "log_time": m.log_time_ns,
                "publish_time": m.publish_time_ns, "type": m.schema.name,
                "encoding": m.channel.message_encoding, "msg": conv(m.ros_msg)}})
print(json.dumps(out))
"#,
        path = path.display().to_string()
    );
    let out = python_output(&code).expect("python mcap reader failed");
    let got: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(got.len(), 15);
    for (k, g) in got.iter().enumerate() {
        let i = k as u64 / 5;
        let t = T0 + i * 1_000_000;
        assert_eq!(g["log_time"], t);
        assert_eq!(g["publish_time"], t);
        assert_eq!(g["encoding"], "cdr");
        let (type_name, want) = match g["topic"].as_str().unwrap() {
            "/joint_states" => (JointState::TYPE_NAME, to_json(&joint_state(i))),
            "/probe/wrench" => (WrenchStamped::TYPE_NAME, to_json(&wrench(i))),
            "/tf" => (TFMessage::TYPE_NAME, to_json(&tf(i))),
            "/us/image" => (Image::TYPE_NAME, to_json(&image(i))),
            "/perception/landmarks" => (MarkerArray::TYPE_NAME, to_json(&landmarks(i))),
            other => panic!("unexpected topic {other}"),
        };
        assert_eq!(g["type"], type_name);
        assert_eq!(g["msg"], want, "message {k} on {}", g["topic"]);
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    // Through text, so numbers compare the way the Python side's JSON parses.
    serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
}
