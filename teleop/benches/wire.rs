//! Cost of the wire codec: encoding and decoding (with validation) one operator command, and
//! delta-zstd encoding and decoding of a 256×256 simulated-speckle-like frame.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{UnitQuaternion, Vector3};
use telecho_teleop::us_codec;
use telecho_teleop::wire::{CommandMode, FrameEncoding, Message, OperatorCommand, Pose, Target};

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    let msg = Message::Command(OperatorCommand {
        seq: 1,
        sent_s: 10.0,
        mode: CommandMode::Contact,
        force_n: 5.0,
        target: Target::Pose(Pose {
            position_m: Vector3::new(0.4, 0.1, 0.3),
            orientation: UnitQuaternion::from_euler_angles(3.1, 0.1, 0.2),
        }),
    });
    let bytes = msg.to_bytes();
    let mut buf = Vec::with_capacity(128);
    g.bench_function("command_encode", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf);
        })
    });
    g.bench_function("command_decode", |b| {
        b.iter(|| Message::decode(black_box(&bytes)).unwrap())
    });
    // Pseudo-speckle: a hash per pixel with a smooth depth ramp and a dark shadow band.
    let px: Vec<u8> = (0..256 * 256u32)
        .map(|i| {
            let (r, c) = (i / 256, i % 256);
            if (100..140).contains(&c) && r > 120 {
                return 0;
            }
            let h = i.wrapping_mul(2_654_435_761) >> 24;
            ((h as f64 * (1.0 - r as f64 / 400.0)) as u8) / 2 + 40
        })
        .collect();
    let packed = us_codec::encode(&px, 256, 256, FrameEncoding::DeltaZstd).unwrap();
    g.bench_function("frame_256x256_encode", |b| {
        b.iter(|| us_codec::encode(black_box(&px), 256, 256, FrameEncoding::DeltaZstd).unwrap())
    });
    g.bench_function("frame_256x256_decode", |b| {
        b.iter(|| us_codec::decode(black_box(&packed), 256, 256, FrameEncoding::DeltaZstd).unwrap())
    });
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
