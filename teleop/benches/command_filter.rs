//! Cost of filtering one operator command, against a bare sequence comparison (the least any
//! newest-wins filter must do) in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use telecho_teleop::command_filter::CommandFilter;

fn filter(c: &mut Criterion) {
    let mut g = c.benchmark_group("command_filter");
    let mut f = CommandFilter::new(0.2).unwrap();
    let mut seq = 0u64;
    g.bench_function("telecho_check", |b| {
        b.iter(|| {
            seq += 1;
            f.check(black_box(seq), black_box(1.0), black_box(1.05))
        })
    });
    let mut last = 0u64;
    let mut seq2 = 0u64;
    g.bench_function("bare_seq_compare", |b| {
        b.iter(|| {
            seq2 += 1;
            let ok = black_box(seq2) > last;
            if ok {
                last = seq2;
            }
            ok
        })
    });
    g.finish();
}

criterion_group!(benches, filter);
criterion_main!(benches);
