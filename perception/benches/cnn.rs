//! Per-frame detection on a 256 × 256 simulated B-mode frame (held-out patient 2, transverse over
//! L3's spinous process, and a sagittal one over the L3–L4 laminae): the CNN (inference and
//! decoding, one thread) beside the classical detector, in the same run.
//!
//! The CNN runs on tract by default; `TELECHO_BENCH_BACKEND=onnxruntime` runs it on ONNX Runtime
//! instead (library from `TELECHO_ORT_LIB` or the PyPI package) — `ort` allows one backend per
//! process, so each backend is a separate run. Pin to one core for the per-core figure:
//! `taskset -c 0 cargo bench -p telecho-perception --bench cnn`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;
use telecho_perception::cnn::{find_onnxruntime, Backend, CnnDetector};
use telecho_perception::detect::{ClassicalDetector, Detector, FrameDetection};
use telecho_sim::{Phantom, UltrasoundSim, UsFrame, UsParams};

fn frames() -> Vec<(&'static str, UsFrame)> {
    let p = Arc::new(Phantom::generate(2));
    let mut sim = UltrasoundSim::new(p.clone(), UsParams::default(), 2).unwrap();
    let lm = |name: &str| {
        Vector3::from(
            p.landmarks()
                .into_iter()
                .find(|l| l.name == name)
                .unwrap()
                .xyz,
        )
    };
    let pose = |at: Vector3<f64>, array: Vector3<f64>| {
        let z = Vector3::y();
        let rot = Matrix3::from_columns(&[array, z.cross(&array), z]);
        Transform::new(rot, Vector3::new(at.x, p.skin_y(at.x, at.z) + 0.003, at.z))
    };
    let tip = lm("L3_spinous_tip");
    let lamina = 0.5 * (lm("L3_lamina_left") + lm("L4_lamina_left"));
    vec![
        (
            "transverse_L3",
            sim.render_new(&pose(tip, Vector3::x())).unwrap(),
        ),
        (
            "sagittal_laminae",
            sim.render_new(&pose(lamina, Vector3::z())).unwrap(),
        ),
    ]
}

fn detect(c: &mut Criterion) {
    let backend = match std::env::var("TELECHO_BENCH_BACKEND").as_deref() {
        Ok("onnxruntime") => Backend::OnnxRuntime(find_onnxruntime(None).unwrap()),
        _ => Backend::Tract,
    };
    let frames = frames();
    let mut cnn = CnnDetector::bundled(&backend).unwrap();
    let mut classical = ClassicalDetector::for_geometry(&cnn.config().geometry).unwrap();
    let mut out = FrameDetection::new();
    for (name, f) in &frames {
        cnn.detect(&f.pixels, f.width, f.height, &mut out).unwrap();
        assert!(out.detected_columns() > 50, "{name}: CNN found no bone");
    }
    let mut g = c.benchmark_group("detect_256x256");
    for (name, f) in &frames {
        g.bench_function(format!("cnn_{}_{name}", backend.name()), |b| {
            b.iter(|| {
                cnn.detect(black_box(&f.pixels), f.width, f.height, &mut out)
                    .unwrap()
            })
        });
        g.bench_function(
            format!("cnn_{}_inference_only_{name}", backend.name()),
            |b| b.iter(|| cnn.infer(black_box(&f.pixels), f.width, f.height).unwrap()),
        );
        g.bench_function(format!("classical_{name}"), |b| {
            b.iter(|| {
                classical
                    .detect(black_box(&f.pixels), f.width, f.height, &mut out)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, detect);
criterion_main!(benches);
