//! Model-mediated haptics: the rendered force, the energy tank's passivity guarantee, and a
//! simulated operator in contact.

use nalgebra::{Unit, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_teleop::haptics::{
    ArmModel, HapticConfig, HapticDevice, HapticRenderer, SimulatedOperator,
};
use telecho_teleop::wire::ContactModel;

fn plane(z: f64, k: f64, b: f64) -> ContactModel {
    ContactModel {
        point_m: Vector3::new(0.0, 0.0, z),
        normal: Unit::new_normalize(Vector3::z()),
        stiffness_n_m: k,
        damping_n_s_m: b,
    }
}

#[test]
fn force_is_spring_plus_damper_along_the_normal_clamped() {
    let mut r = HapticRenderer::new(HapticConfig {
        passivity: false,
        ..Default::default()
    })
    .unwrap();
    let v0 = Vector3::zeros();
    assert_eq!(r.model_force(&Vector3::new(0.0, 0.0, -0.01), &v0).0, v0);
    r.set_model(Some(plane(0.0, 1000.0, 10.0)));
    // Models are taken over at the next cycle.
    r.render(&Vector3::new(0.0, 0.0, 0.1), &v0, 0.001);
    // 5 mm in, moving in at 10 mm/s: 5 N + 0.1 N, pushing out along +z.
    let (f, p) = r.model_force(
        &Vector3::new(0.02, 0.0, -0.005),
        &Vector3::new(0.0, 0.0, -0.01),
    );
    assert!((p - 0.005).abs() < 1e-12);
    assert!((f - Vector3::new(0.0, 0.0, 5.1)).norm() < 1e-9, "{f}");
    // Outside: nothing. Deep: clamped to 15 N. Leaving fast: the damper never pulls.
    assert_eq!(r.model_force(&Vector3::new(0.0, 0.0, 0.001), &v0).0, v0);
    assert!((r.model_force(&Vector3::new(0.0, 0.0, -0.05), &v0).0.z - 15.0).abs() < 1e-12);
    let (f, _) = r.model_force(
        &Vector3::new(0.0, 0.0, -0.001),
        &Vector3::new(0.0, 0.0, 1.0),
    );
    assert_eq!(f, v0);
    // A tilted surface pushes along its normal.
    let mut m = plane(0.0, 1000.0, 0.0);
    m.normal = Unit::new_normalize(Vector3::new(0.0, 1.0, 1.0));
    r.set_model(Some(m));
    r.render(&Vector3::new(0.0, 0.0, 0.1), &v0, 0.001);
    let (f, _) = r.model_force(&Vector3::new(0.0, 0.0, -0.004), &v0);
    let expect = 1000.0 * 0.004 / 2f64.sqrt();
    assert!((f - m.normal.into_inner() * expect).norm() < 1e-9);
    // Broken device readings render nothing.
    let out = r.render(&Vector3::new(f64::NAN, 0.0, 0.0), &v0, 0.001);
    assert_eq!(out.force_n, v0);
}

/// Runs an operator against a renderer whose model `model_at(t, velocity)` chooses; returns
/// (delivered − absorbed energy, forces of the last second, final position, time the tank
/// acted: force scaled or surface moved).
fn run(
    passivity: bool,
    path: impl Fn(f64) -> Vector3<f64> + Send + 'static,
    mut model_at: impl FnMut(f64, &Vector3<f64>) -> Option<ContactModel>,
    seconds: f64,
) -> (f64, Vec<f64>, Vector3<f64>, f64) {
    let mut r = HapticRenderer::new(HapticConfig {
        passivity,
        ..Default::default()
    })
    .unwrap();
    let mut op = SimulatedOperator::new(ArmModel::default(), path).unwrap();
    let dt = 0.001;
    let n = (seconds / dt) as usize;
    let mut last = Vec::new();
    let mut limited = 0.0;
    for i in 0..n {
        let t = i as f64 * dt;
        let s = op.sample();
        r.set_model(model_at(t, &s.velocity_m_s));
        let out = r.render(&s.position_m, &s.velocity_m_s, dt);
        if out.limited || r.surface_shift_m() > 0.0 {
            limited += dt;
        }
        op.set_force(out.force_n);
        op.step(dt);
        if t >= seconds - 1.0 {
            last.push(out.force_n.z);
        }
    }
    let tank = r.tank();
    (
        tank.delivered_j() - tank.absorbed_j(),
        last,
        op.sample().position_m,
        limited,
    )
}

fn std(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn operator_pressing_a_static_surface_settles_at_the_spring_balance() {
    // The arm (300 N/m) aims 20 mm below a 1000 N/m surface: it settles where
    // 300 (−0.020 − z) = 1000 z, z = −4.615 mm, feeling 4.615 N; the tank never intervenes
    // on a passive surface.
    let (net, last, x, limited) = run(
        true,
        |t| Vector3::new(0.0, 0.0, -0.02 * (t / 0.5).min(1.0)),
        |_, _| Some(plane(0.0, 1000.0, 10.0)),
        4.0,
    );
    let expect = 0.3 * 0.02 / 1.3;
    assert!((x.z + expect).abs() < 1e-5, "z {}", x.z);
    let mean = last.iter().sum::<f64>() / last.len() as f64;
    assert!((mean - 1000.0 * expect).abs() < 0.01, "force {mean}");
    assert!(std(&last) < 1e-3, "force ripple {}", std(&last));
    assert!(
        net <= 0.0,
        "a spring-damper cannot give back more than it got: {net}"
    );
    assert_eq!(limited, 0.0);
}

#[test]
fn energy_tank_stops_a_model_that_pumps_energy() {
    // A model update pattern that generates energy: soft (200 N/m) while the operator pushes
    // in, stiff (3000 N/m) while the operator comes out. The operator sweeps in and out.
    let path = |t: f64| {
        Vector3::new(
            0.0,
            0.0,
            -0.01 - 0.01 * (2.0 * std::f64::consts::PI * t).sin(),
        )
    };
    let pump =
        |_: f64, v: &Vector3<f64>| Some(plane(0.0, if v.z < 0.0 { 200.0 } else { 3000.0 }, 0.0));
    let (net_off, _, _, _) = run(false, path, pump, 10.0);
    let (net_on, _, _, limited) = run(true, path, pump, 10.0);
    // Without the tank the operator is fed energy every cycle (over 2 J in 10 s) …
    assert!(net_off > 2.0, "unguarded net energy {net_off}");
    // … with it, no more than the 10 mJ initial budget ever comes out.
    assert!(net_on <= 0.010 + 1e-9, "guarded net energy {net_on}");
    assert!(limited > 1.0, "the tank had to act ({limited} s)");
}

#[test]
fn stale_noisy_model_at_30_hz_stays_stable() {
    // The patient side streams its estimate at 30 Hz and it arrives 1 s late with noise on
    // the surface point (±0.3 mm) and the stiffness (±15 %): the haptic loop is local, so the
    // contact stays steady regardless of the delay.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut history: Vec<(f64, ContactModel)> = Vec::new();
    let mut next_estimate = 0.0;
    let mut current = None;
    // The estimate exists before contact (the probe approaches from 5 mm above the skin): the
    // patient side has been streaming for a second when the operator starts moving.
    let (net, last, x, guarded) = run(
        true,
        |t| Vector3::new(0.0, 0.0, 0.005 - 0.025 * (t / 0.5).min(1.0)),
        move |t, _| {
            let t = t + 1.0;
            while next_estimate <= t {
                let m = plane(
                    0.0003 * (2.0 * rng.random::<f64>() - 1.0),
                    800.0 * (1.0 + 0.15 * (2.0 * rng.random::<f64>() - 1.0)),
                    10.0,
                );
                history.push((next_estimate, m));
                next_estimate += 1.0 / 30.0;
            }
            // Deliver what was estimated 1 s ago.
            if let Some((_, m)) = history.iter().rev().find(|(ts, _)| t - ts >= 1.0) {
                current = Some(*m);
            }
            current
        },
        6.0,
    );
    // Balance at 800 N/m: 300 (−0.02 − z) = 800 z → z = −5.45 mm, 4.36 N (±15 % stiffness).
    assert!(x.z < -0.0045 && x.z > -0.0065, "z {}", x.z);
    let mean = last.iter().sum::<f64>() / last.len() as f64;
    assert!(mean > 3.8 && mean < 5.0, "force {mean}");
    // Steps between model updates only; no growing oscillation.
    assert!(std(&last) < 0.6, "force ripple {}", std(&last));
    let first = &last[..500];
    let second = &last[500..];
    assert!(std(second) <= std(first) * 1.5 + 0.05);
    assert!(net <= 0.010 + 1e-9, "net energy {net}");
    // This noise does not pump energy: the tank never had to act.
    assert_eq!(guarded, 0.0);
}

#[test]
fn surface_appearing_inside_the_hand_does_not_kick_it_out() {
    // The hand rests 20 mm below where the skin turns out to be when the first model arrives:
    // rendered as is, 16 N (clamped to 15 N) would throw the hand out with 0.15 J the
    // operator never put in. The tank moves the surface to where its potential fits the 10 mJ
    // budget: p = sqrt(2 · 0.01 / 800) = 5 mm, 4 N.
    let mut r = HapticRenderer::new(HapticConfig::default()).unwrap();
    let x = Vector3::new(0.0, 0.0, -0.02);
    let v = Vector3::zeros();
    assert_eq!(r.render(&x, &v, 0.001).force_n, v);
    r.set_model(Some(plane(0.0, 800.0, 10.0)));
    let f = r.render(&x, &v, 0.001).force_n;
    assert!((f.z - 4.0).abs() < 1e-6, "{f}");
    assert!((r.surface_shift_m() - 0.015).abs() < 1e-9);
    // Unguarded for comparison.
    let mut u = HapticRenderer::new(HapticConfig {
        passivity: false,
        ..Default::default()
    })
    .unwrap();
    u.set_model(Some(plane(0.0, 800.0, 10.0)));
    assert!((u.render(&x, &v, 0.001).force_n.z - 15.0).abs() < 1e-9);
}
