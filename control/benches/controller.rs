//! One control cycle — `ProbeController::step`, controller and safety supervisor — on the 6-DoF
//! UR5e in contact (force regulation at 8 N during a sweep, breathing on), replaying inputs
//! recorded from the simulator so that the controller sees a realistic, changing state.
//!
//! Run: `cargo bench -p telecho-control --bench controller`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::{Matrix3, Vector3};
use telecho_control::{
    ContactPhase, ControlInput, ControllerConfig, FtSample, IkConfig, IkSolver, ProbeController,
    ProbeTarget, SafetyConfig,
};
use telecho_core::Transform;
use telecho_sim::{
    Breathing, InitialPose, JointCommand, PatientPlacement, SimWorld, UrdfSource, WorldConfig,
};

struct Recorded {
    time_s: f64,
    q: Vec<f64>,
    qd: Vec<f64>,
    ft: FtSample,
    target: ProbeTarget,
}

fn config() -> ControllerConfig {
    ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m: [0.20, -0.35, -0.25],
            workspace_max_m: [0.75, 0.35, 0.30],
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    }
}

/// Runs the closed loop into regulated contact, then records `n` cycles of a sweep; returns the
/// controller snapshot at the start of the recording and the inputs.
fn record(n: usize) -> (ProbeController, Vec<Recorded>) {
    let urdf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../urdf/ur5e_probe.urdf"
    ))
    .unwrap();
    let mut wc = WorldConfig::with_urdf(UrdfSource::Xml(urdf.clone()));
    wc.placement = PatientPlacement::exact(PatientPlacement::nominal());
    wc.breathing = Some(Breathing::new(0.005, 0.3).unwrap());
    let probe = SimWorld::new(&wc).unwrap();
    let ph = probe.phantom();
    let skin =
        probe
            .nominal_t_base_ct()
            .transform_point(&Vector3::new(0.0, ph.skin_y(0.0, 0.0), 0.0));
    let down = Matrix3::from_columns(&[Vector3::y(), Vector3::x(), -Vector3::z()]);
    let mut ik = IkSolver::new(probe.chain(), IkConfig::default());
    let mut q0 = vec![0.0; 6];
    ik.solve(
        probe.chain(),
        &Transform::new(down, skin + Vector3::new(0.0, 0.0, 0.012)),
        probe.arm().true_q(),
        &mut q0,
    )
    .unwrap();
    wc.initial = InitialPose::Joints(q0);
    let mut world = SimWorld::new(&wc).unwrap();
    let mut ctl = ProbeController::from_urdf_str(&urdf, config()).unwrap();
    let mut out = ctl.new_output();
    let mut snapshot = None;
    let mut rec = Vec::with_capacity(n);
    let mut t_reg = None;
    while rec.len() < n && world.time_s() < 30.0 {
        let obs = world.observe();
        let t = obs.time_s;
        let mut p = skin;
        if let Some(t0) = t_reg {
            p.y += 0.02 * (t - t0);
        }
        let mut target = ProbeTarget::contact(t, Transform::new(down, p), 8.0);
        if t_reg.is_some() {
            target.velocity_m_s = Vector3::new(0.0, 0.02, 0.0);
        }
        let r = obs.ft;
        let ft = FtSample {
            stamp_s: r.stamp_s,
            force_n: r.force_n,
            torque_nm: r.torque_nm,
            saturated: r.saturated,
        };
        if t_reg.is_some() {
            if snapshot.is_none() {
                snapshot = Some(ctl.clone());
            }
            rec.push(Recorded {
                time_s: t,
                q: obs.q_rad.to_vec(),
                qd: obs.qd_rad_s.to_vec(),
                ft,
                target,
            });
        }
        let input = ControlInput {
            time_s: t,
            q_rad: obs.q_rad,
            qd_rad_s: obs.qd_rad_s,
            ft,
            target: (t > 0.3).then_some(target),
            estop: false,
            reset: false,
        };
        ctl.step(&input, 1e-3, &mut out);
        world
            .command(JointCommand::Position(&out.q_cmd_rad))
            .unwrap();
        world.step();
        if t_reg.is_none() && out.contact_phase == ContactPhase::Regulate && out.regulating_s > 0.5
        {
            t_reg = Some(t);
        }
    }
    assert_eq!(rec.len(), n, "did not reach regulated contact");
    (snapshot.unwrap(), rec)
}

fn controller(c: &mut Criterion) {
    let n = 2000;
    let (snapshot, rec) = record(n);
    let mut g = c.benchmark_group("controller_ur5e");
    g.bench_function("step_contact_sweep", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut ctl = snapshot.clone();
            let mut out = ctl.new_output();
            let mut k = 0;
            for _ in 0..iters {
                if k == n {
                    ctl = snapshot.clone();
                    k = 0;
                }
                let r = &rec[k];
                let input = ControlInput {
                    time_s: r.time_s,
                    q_rad: &r.q,
                    qd_rad_s: &r.qd,
                    ft: r.ft,
                    target: Some(r.target),
                    estop: false,
                    reset: false,
                };
                let start = Instant::now();
                ctl.step(black_box(&input), 1e-3, &mut out);
                total += start.elapsed();
                black_box(&out);
                k += 1;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, controller);
criterion_main!(benches);
