//! Contact model: analytic force law, friction bounds, skin geometry, breathing, passivity.

use nalgebra::Vector3;
use telecho_sim::contact::{skin_point, PassiveProbe, REFERENCE_INDENTATION_M};
use telecho_sim::{Breathing, ContactModel, ContactParams, Phantom};

fn model(stiffness_n_per_mm: f64) -> ContactModel {
    ContactModel::new(ContactParams {
        stiffness_n_per_mm,
        ..ContactParams::default()
    })
    .unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn analytic_force_equals_formula_and_secant_stiffness() {
    for s in [0.5, 2.0, 5.0] {
        let m = model(s);
        let n = 1.5;
        // k from the secant definition F(δ_ref)/δ_ref = S (N/mm), computed here independently.
        let k = s * 1000.0 * 0.005 / 0.005f64.powf(n);
        assert!(rel(m.stiffness_coefficient(), k) < 1e-12);
        for d_mm in [2.0, 5.0, 10.0] {
            let d = d_mm * 1e-3;
            let f = m.analytic_force(d, 0.0).unwrap();
            let expect = k * d.powf(n);
            assert!(rel(f, expect) < 1e-9, "S={s} δ={d_mm} mm: {f} vs {expect}");
            println!("S = {s} N/mm, δ = {d_mm} mm: F = {f:.6} N");
            // With a rate: F = kδⁿ(1 + c·δ̇).
            let c = m.params().damping_s_per_m;
            let f_rate = m.analytic_force(d, 0.004).unwrap();
            assert!(rel(f_rate, expect * (1.0 + c * 0.004)) < 1e-9);
        }
        let secant =
            m.analytic_force(REFERENCE_INDENTATION_M, 0.0).unwrap() / REFERENCE_INDENTATION_M;
        assert!(
            rel(secant, s * 1000.0) < 1e-9,
            "secant {secant} N/m for S = {s}"
        );
        assert!(
            rel(
                m.secant_stiffness_n_per_m(REFERENCE_INDENTATION_M),
                s * 1000.0
            ) < 1e-9
        );
    }
    // The documented example: 2 N/mm → 10 N at 5 mm, 2.53 N at 2 mm, 28.3 N at 10 mm.
    let m = model(2.0);
    assert!((m.analytic_force(0.005, 0.0).unwrap() - 10.0).abs() < 1e-9);
    assert!((m.analytic_force(0.002, 0.0).unwrap() - 2.5298).abs() < 1e-4);
    assert!((m.analytic_force(0.010, 0.0).unwrap() - 28.2843).abs() < 1e-4);
}

#[test]
fn elastic_energy_is_the_integral_of_the_force() {
    let m = model(3.0);
    let d = 0.008;
    let n = 20_000;
    let h = d / n as f64;
    // Simpson's rule.
    let mut sum = m.normal_force(0.0, 0.0) + m.normal_force(d, 0.0);
    for i in 1..n {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * m.normal_force(i as f64 * h, 0.0);
    }
    let integral = sum * h / 3.0;
    assert!(rel(m.elastic_energy(d), integral) < 1e-8);
}

#[test]
fn no_force_without_contact() {
    let m = model(2.0);
    for d in [0.0, -1e-9, -0.001, -1.0] {
        for rate in [-1.0, 0.0, 1.0] {
            assert_eq!(m.analytic_force(d, rate).unwrap(), 0.0);
        }
    }
    let c = m.contact_force(-0.001, &-Vector3::y(), &Vector3::new(0.1, 0.2, 0.3));
    assert_eq!(c.force, Vector3::zeros());
    assert_eq!(c.normal_force_n, 0.0);
}

#[test]
fn normal_force_is_never_negative_in_fast_release() {
    let m = model(5.0);
    let c = m.params().damping_s_per_m;
    // Releasing faster than 1/c m/s would make kδⁿ(1 + cδ̇) negative: the clamp must hold.
    for d in [1e-4, 0.002, 0.01, 0.02] {
        for rate in [-100.0, -10.0, -1.0 / c, -0.5 / c, 0.0] {
            let f = m.analytic_force(d, rate).unwrap();
            assert!(f >= 0.0, "δ={d} δ̇={rate}: F = {f}");
        }
        assert_eq!(m.analytic_force(d, -10.0).unwrap(), 0.0);
    }
}

#[test]
fn friction_opposes_slip_and_is_bounded() {
    let m = model(2.0);
    let p = *m.params();
    let fn_ = 7.0;
    let mut saw_large = false;
    for i in 0..200 {
        let a = i as f64 * 0.7;
        let speed = 1e-5 * 1.1f64.powi(i);
        let slip = Vector3::new(a.cos(), 0.0, a.sin()) * speed;
        let ft = m.friction_force(fn_, &slip);
        assert!(ft.dot(&slip) < 0.0, "friction must oppose slip");
        assert!(
            ft.cross(&slip).norm() <= 1e-12 * ft.norm() * speed,
            "antiparallel"
        );
        let bound = p.friction_coefficient * fn_ + p.viscous_friction_n_s_per_m * speed;
        assert!(
            ft.norm() <= bound * (1.0 + 1e-12),
            "{} > {bound}",
            ft.norm()
        );
        if speed > 100.0 * p.slip_velocity_m_s && speed < 1.0 {
            saw_large = true;
            assert!(rel(ft.norm(), bound) < 1e-9, "sliding: Coulomb + viscous");
        }
    }
    assert!(saw_large);
    assert_eq!(m.friction_force(0.0, &Vector3::x()), Vector3::zeros());
    assert_eq!(m.friction_force(fn_, &Vector3::zeros()), Vector3::zeros());
}

#[test]
fn non_finite_inputs_never_give_nan() {
    let m = model(2.0);
    assert!(m.analytic_force(f64::NAN, 0.0).is_err());
    assert!(m.analytic_force(0.003, f64::INFINITY).is_err());
    let msg = m.analytic_force(f64::NAN, 0.0).unwrap_err().to_string();
    assert!(msg.contains("indentation"), "{msg}");
    for (d, r) in [
        (f64::NAN, 0.0),
        (0.003, f64::NAN),
        (f64::INFINITY, 0.0),
        (0.003, f64::NEG_INFINITY),
    ] {
        assert_eq!(m.normal_force(d, r), 0.0);
    }
    assert_eq!(m.friction_force(f64::NAN, &Vector3::x()), Vector3::zeros());
    assert_eq!(
        m.friction_force(1.0, &Vector3::new(f64::NAN, 0.0, 0.0)),
        Vector3::zeros()
    );
    let c = m.contact_force(0.003, &-Vector3::y(), &Vector3::new(f64::NAN, 0.0, 0.0));
    assert!(c.force.iter().all(|v| v.is_finite()));
    let ph = Phantom::generate(1);
    let sp = skin_point(&ph, &Vector3::new(f64::NAN, 0.0, 0.0));
    assert!(
        sp.depth_m.is_nan() || sp.depth_m <= 0.0,
        "a NaN point is never in contact"
    );
    for bad in [f64::NAN, 0.3, 6.0, f64::INFINITY] {
        let e = ContactModel::new(ContactParams {
            stiffness_n_per_mm: bad,
            ..ContactParams::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("stiffness_n_per_mm"), "{e}");
    }
    assert!(ContactModel::new(ContactParams {
        damping_s_per_m: -1.0,
        ..ContactParams::default()
    })
    .is_err());
}

/// Brute-force distance from `p` to the skin surface: coarse-to-fine grid search over the foot
/// point `(x, z)`.
fn brute_force_distance(ph: &Phantom, p: &Vector3<f64>) -> f64 {
    let dist = |x: f64, z: f64| (p - Vector3::new(x, ph.skin_y(x, z), z)).norm();
    let (mut cx, mut cz) = (p.x, p.z);
    let mut half = 0.025;
    let mut best = dist(cx, cz);
    for _ in 0..12 {
        let n = 20;
        let (mut bx, mut bz) = (cx, cz);
        for i in 0..=n {
            for j in 0..=n {
                let x = cx - half + 2.0 * half * i as f64 / n as f64;
                let z = cz - half + 2.0 * half * j as f64 / n as f64;
                let d = dist(x, z);
                if d < best {
                    best = d;
                    bx = x;
                    bz = z;
                }
            }
        }
        cx = bx;
        cz = bz;
        half *= 0.3;
    }
    best
}

#[test]
fn skin_depth_matches_brute_force_closest_point() {
    let mut worst: f64 = 0.0;
    for seed in 0..4 {
        let ph = Phantom::generate(seed);
        for i in 0..150 {
            let u = i as f64 * 0.618_033_988_75 % 1.0;
            let v = i as f64 * 0.754_877_666_25 % 1.0;
            let w = i as f64 * 0.569_840_290_99 % 1.0;
            let x = -0.06 + 0.12 * u;
            let z = -0.09 + 0.18 * v;
            let depth = 0.015 * w;
            // Move `depth` along the vertical into the body, then measure.
            let p = Vector3::new(x, ph.skin_y(x, z) + depth, z);
            let sp = skin_point(&ph, &p);
            let truth = brute_force_distance(&ph, &p);
            let err = (sp.depth_m - truth).abs();
            worst = worst.max(err);
            assert!(
                err < 5e-5,
                "seed {seed} ({x:.3}, {z:.3}) vertical depth {depth:.4}: {} vs {truth}",
                sp.depth_m
            );
            // The normal is unit, points posteriorly, and the foot lies on the surface.
            assert!((sp.normal_out.norm() - 1.0).abs() < 1e-12);
            assert!(sp.normal_out.y < 0.0);
            assert!((sp.foot.y - ph.skin_y(sp.foot.x, sp.foot.z)).abs() < 1e-12);
        }
        // Outside: negative depth, minus the distance.
        let p = Vector3::new(0.01, ph.skin_y(0.01, 0.0) - 0.003, 0.0);
        let sp = skin_point(&ph, &p);
        assert!(
            (sp.depth_m + brute_force_distance(&ph, &p)).abs() < 5e-5,
            "{}",
            sp.depth_m
        );
    }
    println!("worst skin-depth error vs brute force: {:.2e} m", worst);
}

#[test]
fn breathing_moves_posteriorly_within_range() {
    let mut amps = Vec::new();
    for seed in 0..50 {
        let b = Breathing::seeded(seed);
        assert!((0.002..=0.005).contains(&b.amplitude_m()));
        assert!((0.2..=0.3).contains(&b.frequency_hz()));
        amps.push(b.amplitude_m());
        let period = 1.0 / b.frequency_hz();
        assert_eq!(b.displacement_m(0.0), 0.0);
        assert!((b.displacement_m(0.5 * period) - b.amplitude_m()).abs() < 1e-15);
        for k in 0..100 {
            let t = k as f64 * 0.137;
            let d = b.displacement_m(t);
            assert!((0.0..=b.amplitude_m() + 1e-15).contains(&d));
            let h = 1e-6;
            let fd = (b.displacement_m(t + h) - b.displacement_m(t - h)) / (2.0 * h);
            assert!((fd - b.velocity_m_s(t)).abs() < 1e-8);
        }
    }
    assert_ne!(amps[0], amps[1]);
    assert_eq!(Breathing::direction_ct(), -Vector3::y());
    assert!(Breathing::new(0.03, 0.25).is_err());
    assert!(Breathing::new(0.003, f64::NAN).is_err());
    assert_eq!(Breathing::none().displacement_m(1.7), 0.0);
}

const MASS: f64 = 0.5;
const G: f64 = 9.81;

/// Drops a 0.5 kg point mass from 10 mm with 50 mm/s lateral speed; returns the energy sampled
/// every millisecond for 10 s and the largest growth between consecutive samples.
fn drop_probe(params: ContactParams) -> (Vec<f64>, f64, PassiveProbe) {
    let m = ContactModel::new(params).unwrap();
    let mut probe = PassiveProbe::new(
        m,
        MASS,
        Vector3::new(0.0, 0.0, 0.010),
        Vector3::new(0.05, 0.0, 0.0),
    )
    .unwrap();
    let mut energy = vec![probe.energy_j()];
    let mut growth: f64 = f64::NEG_INFINITY;
    for _ in 0..10_000 {
        probe.step(1e-3).unwrap();
        let e = probe.energy_j();
        growth = growth.max(e - energy[energy.len() - 1]);
        energy.push(e);
    }
    (energy, growth, probe)
}

#[test]
fn passive_contact_energy_never_grows_and_decays_with_damping() {
    let params = ContactParams::default();
    let (energy, growth, probe) = drop_probe(params);
    // Bound on the elastic midpoint-quadrature error per millisecond (module doc of
    // PassiveProbe): below 1e-7 J for this drop; allow 1e-6 J.
    assert!(
        growth <= 1e-6,
        "energy grew by {growth:e} J between samples"
    );
    // The probe comes to rest at the static indentation: kδⁿ = mg.
    let m = ContactModel::new(params).unwrap();
    let k = m.stiffness_coefficient();
    let d_static = (MASS * G / k).powf(1.0 / 1.5);
    let e_min = m.elastic_energy(d_static) - MASS * G * d_static;
    let e0 = energy[0];
    let e_end = *energy.last().unwrap();
    println!(
        "damped: E0 = {e0:.6} J, E(10 s) = {e_end:.6} J, E_min = {e_min:.6} J, max growth \
         {growth:.3e} J, δ = {:.4} mm vs static {:.4} mm",
        probe.indentation_m() * 1e3,
        d_static * 1e3
    );
    assert!(
        e_end - e_min < 1e-3 * (e0 - e_min),
        "energy must decay to the minimum"
    );
    assert!((probe.indentation_m() - d_static).abs() < 1e-6);
    assert!(
        probe.velocity().norm() < 1e-4,
        "sliding stopped by friction"
    );
}

#[test]
fn elastic_contact_conserves_energy() {
    let params = ContactParams {
        damping_s_per_m: 0.0,
        friction_coefficient: 0.0,
        viscous_friction_n_s_per_m: 0.0,
        ..ContactParams::default()
    };
    let (energy, growth, probe) = drop_probe(params);
    let e0 = energy[0];
    let drift = energy.iter().map(|e| (e - e0).abs()).fold(0.0, f64::max);
    println!("elastic: E0 = {e0:.6} J, max |E − E0| = {drift:.3e} J, max growth {growth:.3e} J");
    assert!(growth <= 1e-6);
    assert!(
        drift <= 1e-6,
        "elastic bouncing must keep its energy: drift {drift:e} J"
    );
    // Still bouncing and still sliding after 10 s.
    assert!(probe.velocity().x > 0.0499);
}

#[test]
fn probe_face_grid_spans_the_footprint() {
    use telecho_sim::contact::MAX_FACE_POINTS;
    use telecho_sim::ProbeFace;
    let face = ProbeFace {
        length_m: 0.038,
        width_m: 0.010,
        points_along: 5,
        points_across: 3,
    };
    face.validate().unwrap();
    let mut pts = [Vector3::zeros(); MAX_FACE_POINTS];
    let n = face.points(&mut pts);
    assert_eq!((n, face.len()), (15, 15));
    let centroid: Vector3<f64> = pts[..n].iter().sum::<Vector3<f64>>() / n as f64;
    assert!(centroid.norm() < 1e-15);
    let max_x = pts[..n].iter().map(|p| p.x.abs()).fold(0.0, f64::max);
    let max_y = pts[..n].iter().map(|p| p.y.abs()).fold(0.0, f64::max);
    assert!((max_x - 0.019).abs() < 1e-15 && (max_y - 0.005).abs() < 1e-15);
    assert!(pts[..n].iter().all(|p| p.z == 0.0));
    assert_eq!(ProbeFace::point().points(&mut pts), 1);
    assert_eq!(pts[0], Vector3::zeros());
    let too_many = ProbeFace {
        points_along: 6,
        ..face
    };
    assert!(too_many.validate().is_err());
    let nan = ProbeFace {
        width_m: f64::NAN,
        ..face
    };
    assert!(nan.validate().is_err());
}
