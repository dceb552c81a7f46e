//! One 1 ms physics step of the simulated world (UR5e, probe pressed 4 mm into the back over L3,
//! breathing on), with a point contact and with a 5×3 probe-face grid. Also prints the real-time
//! factor of 10 s of simulated time measured with a plain wall clock.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{Matrix3, Vector3};
use telecho_control::{IkConfig, IkSolver};
use telecho_core::Transform;
use telecho_sim::contact::skin_point;
use telecho_sim::{InitialPose, JointCommand, ProbeFace, SimWorld, WorldConfig};

/// A UR5e world that starts with the probe 4 mm into the skin over L3 (evaluator-side set-up:
/// it uses the ground-truth patient pose).
fn world_in_contact(face: ProbeFace) -> (SimWorld, Vec<f64>) {
    let mut config = WorldConfig {
        face,
        ..WorldConfig::ur5e()
    };
    let probe = SimWorld::new(&config).unwrap();
    let gt = probe.ground_truth();
    let ph = probe.phantom();
    let foot = Vector3::new(0.0, ph.skin_y(0.0, 0.0), 0.0);
    let n_out = skin_point(ph, &foot).normal_out;
    let r = gt.t_base_ct.rotation;
    let z = r * -n_out;
    let spine = r * Vector3::z();
    let x = (spine - z * spine.dot(&z)).normalize();
    let target = Transform::new(
        Matrix3::from_columns(&[x, z.cross(&x), z]),
        gt.t_base_ct.transform_point(&(foot - n_out * 0.004)),
    );
    let chain = probe.chain();
    let mut q = vec![0.0; chain.dof()];
    IkSolver::new(chain, IkConfig::default())
        .solve(chain, &target, probe.arm().true_q(), &mut q)
        .unwrap();
    config.initial = InitialPose::Joints(q.clone());
    let mut world = SimWorld::new(&config).unwrap();
    world.steps(10);
    assert!(world.ground_truth().in_contact);
    (world, q)
}

fn world_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("world_step_1ms");
    for (name, face) in [
        ("ur5e_point_contact", ProbeFace::point()),
        (
            "ur5e_face_5x3",
            ProbeFace {
                length_m: 0.038,
                width_m: 0.010,
                points_along: 5,
                points_across: 3,
            },
        ),
    ] {
        let (mut world, q) = world_in_contact(face);
        // Real-time factor over 10 s of simulated time, commands streamed every step.
        let start = Instant::now();
        for _ in 0..10_000 {
            world.command(JointCommand::Position(&q)).unwrap();
            world.step();
        }
        let wall = start.elapsed().as_secs_f64();
        eprintln!(
            "{name}: 10 s simulated in {:.1} ms wall, real-time factor {:.0}",
            wall * 1e3,
            10.0 / wall
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                world.command(JointCommand::Position(&q)).unwrap();
                world.step();
                black_box(world.observe().ft.force_n.z)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, world_step);
criterion_main!(benches);
