//! `detect_bone` on a 256 × 256 frame: a synthetic B-mode-like image (speckle-ish texture, a
//! curved bright bone echo with a shadow below) — the classical baseline's per-frame cost.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use telecho_perception::us_bone::{detect_bone, BoneDetection, UsBoneParams};

fn frame(w: usize, h: usize) -> Vec<u8> {
    let mut px = vec![0u8; w * h];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for c in 0..w {
        let x = c as f64 / w as f64 - 0.5;
        let bone = (0.4 + 0.3 * x * x) * h as f64;
        for r in 0..h {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let speckle = (state >> 56) as f64 / 255.0;
            let v = if (r as f64) < bone - 2.0 {
                60.0 + 80.0 * speckle
            } else if (r as f64) < bone + 2.0 {
                230.0
            } else {
                10.0 * speckle
            };
            px[r * w + c] = v as u8;
        }
    }
    px
}

fn detect(c: &mut Criterion) {
    let (w, h) = (256, 256);
    let px = frame(w, h);
    let params = UsBoneParams::default();
    let mut out = BoneDetection::new();
    detect_bone(&px, w, h, &params, &mut out).unwrap();
    assert!(out.detected_columns() > 200);
    c.bench_function("detect_bone_256x256", |b| {
        b.iter(|| detect_bone(black_box(&px), w, h, &params, &mut out).unwrap())
    });
}

criterion_group!(benches, detect);
criterion_main!(benches);
