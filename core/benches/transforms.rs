//! Composition of rigid transforms: telecho's matrix form against `nalgebra::Isometry3`
//! (unit quaternion) as the baseline, measured in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{Isometry3, Vector3};
use telecho_core::Transform;

fn compose(c: &mut Criterion) {
    let a = Transform::from_xyz_rpy([0.1, 0.2, 0.3], [0.4, -0.5, 0.6]).unwrap();
    let b = Transform::from_xyz_rpy([-0.3, 0.1, 0.7], [-1.0, 0.2, 2.0]).unwrap();
    let ia = Isometry3::new(Vector3::new(0.1, 0.2, 0.3), Vector3::new(0.4, -0.5, 0.6));
    let ib = Isometry3::new(Vector3::new(-0.3, 0.1, 0.7), Vector3::new(-1.0, 0.2, 2.0));
    let p = Vector3::new(0.01, 0.02, 0.03);
    let mut g = c.benchmark_group("transform");
    g.bench_function("compose_and_apply/telecho", |bch| {
        bch.iter(|| (black_box(a) * black_box(b)).transform_point(black_box(&p)))
    });
    g.bench_function("compose_and_apply/nalgebra_isometry3", |bch| {
        bch.iter(|| (black_box(ia) * black_box(ib)) * nalgebra::Point3::from(black_box(p)))
    });
    g.finish();
}

criterion_group!(benches, compose);
criterion_main!(benches);
