//! Ultrasound frame rendering, 256×256 default settings, one thread, frame reused: over the L3
//! spinous process (bone: sphere tracing, echo and shadow) and lateral to the spine (no bone).
//! Target: ≥ 200 frames/s, i.e. a median ≤ 5 ms.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;
use telecho_sim::phantom::Phantom;
use telecho_sim::ultrasound::{UltrasoundSim, UsParams};

/// Probe looking anterior (+y ct), array along `array`, face 3 mm below the skin at (x, z).
fn pose(p: &Phantom, x: f64, z: f64, array: Vector3<f64>) -> Transform {
    let zp = Vector3::y();
    let rot = Matrix3::from_columns(&[array, zp.cross(&array), zp]);
    Transform::new(rot, Vector3::new(x, p.skin_y(x, z) + 0.003, z))
}

fn ultrasound(c: &mut Criterion) {
    // Phantom 2: spinous tips ~21 mm deep, so laminae and transverse processes are in view too.
    let ph = Phantom::generate(2);
    let tip = ph
        .landmarks()
        .into_iter()
        .find(|l| l.name == "L3_spinous_tip")
        .map(|l| l.xyz)
        .unwrap();
    let mut sim = UltrasoundSim::new(ph.clone(), UsParams::default(), 1).unwrap();
    let mut frame = sim.new_frame();
    let mut g = c.benchmark_group("ultrasound_256x256");
    for (name, t) in [
        ("spine_transverse", pose(&ph, tip[0], tip[2], Vector3::x())),
        ("spine_sagittal", pose(&ph, tip[0], tip[2], Vector3::z())),
        (
            "lamina_sagittal",
            pose(&ph, tip[0] + 0.008, tip[2], Vector3::z()),
        ),
        ("lateral_no_bone", pose(&ph, 0.08, tip[2], Vector3::z())),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| sim.render(black_box(&t), &mut frame).unwrap())
        });
    }
    g.bench_function("construct", |b| {
        b.iter(|| UltrasoundSim::new(black_box(ph.clone()), UsParams::default(), 1).unwrap())
    });
    g.finish();
}

criterion_group!(benches, ultrasound);
criterion_main!(benches);
