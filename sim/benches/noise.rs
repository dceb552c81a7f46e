//! Throughput of the seeded Gaussian noise source (one F/T sample = 6 draws) against drawing from
//! `rand`'s thread-local generator, the unseeded baseline, in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rand_distr::{Distribution, Normal};
use telecho_sim::noise::GaussianNoise;

fn noise(c: &mut Criterion) {
    let mut g = c.benchmark_group("noise_6_samples");
    let mut n = GaussianNoise::new(3, 0.05).unwrap();
    let mut buf = [0.0f64; 6];
    g.bench_function("telecho_chacha8", |b| {
        b.iter(|| {
            n.perturb(black_box(&mut buf));
        })
    });
    let normal = Normal::new(0.0, 0.05).unwrap();
    let mut rng = rand::rng();
    g.bench_function("rand_thread_rng", |b| {
        b.iter(|| {
            for v in black_box(&mut buf).iter_mut() {
                *v += normal.sample(&mut rng);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, noise);
criterion_main!(benches);
