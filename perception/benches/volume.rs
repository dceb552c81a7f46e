//! Trilinear sampling of a CBCT-sized volume at random world points, against nearest-voxel lookup
//! (the cheapest possible baseline) in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::Vector3;
use telecho_perception::volume::Volume;

fn sampling(c: &mut Criterion) {
    let v = Volume::from_fn([200, 200, 160], [0.0008; 3], [0.0; 3], |i, j, k| {
        ((i ^ j ^ k) & 255) as f32
    })
    .unwrap();
    let pts: Vec<Vector3<f64>> = (0..1024)
        .map(|n| {
            let f = n as f64 / 1024.0;
            Vector3::new(
                0.15 * f,
                0.15 * (1.0 - f),
                0.12 * (0.5 + 0.4 * (7.0 * f).sin()),
            )
        })
        .collect();
    let mut g = c.benchmark_group("volume_1024_samples");
    g.bench_function("trilinear", |b| {
        b.iter(|| {
            pts.iter()
                .map(|p| v.sample_world(black_box(p)).unwrap_or(0.0))
                .sum::<f32>()
        })
    });
    g.bench_function("nearest_baseline", |b| {
        b.iter(|| {
            pts.iter()
                .map(|p| {
                    let x = v.world_to_index(black_box(p));
                    v.get(
                        x.x.round() as usize,
                        x.y.round() as usize,
                        x.z.round() as usize,
                    )
                    .unwrap_or(0.0)
                })
                .sum::<f32>()
        })
    });
    g.finish();
}

criterion_group!(benches, sampling);
criterion_main!(benches);
