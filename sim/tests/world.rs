//! The whole scene: placement, contact force at the sensor, breathing, saturation, faults,
//! determinism and allocation-free stepping.

use nalgebra::{Matrix3, Vector3};
use telecho_control::{Chain, IkConfig, IkSolver};
use telecho_core::{rotation_log, Transform};
use telecho_sim::contact::skin_point;
use telecho_sim::ft_sensor::{FtSensor, Wrench};
use telecho_sim::{
    Breathing, FtFault, FtSensorParams, InitialPose, JointCommand, PatientPlacement, Phantom,
    SimWorld, WorldConfig,
};

// ---- allocation counter (per thread, so parallel tests do not disturb each other) ----

#[global_allocator]
static GLOBAL: telecho_core::alloc_count::CountingAllocator =
    telecho_core::alloc_count::CountingAllocator;

use telecho_core::alloc_count::allocations;

// ---- helpers ----

fn urdf_text(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../urdf/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Probe orientation with +z along `axis` (base frame), +x along the spine as far as possible.
fn probe_rotation(axis: &Vector3<f64>, spine: &Vector3<f64>) -> Matrix3<f64> {
    let z = axis.normalize();
    let x = (spine - z * spine.dot(&z)).normalize();
    Matrix3::from_columns(&[x, z.cross(&x), z])
}

/// Joint values putting the probe `depth_m` along the inward skin normal from the skin point
/// above L3 (negative: outside), probe axis along the inward normal. Uses the ground truth.
fn q_at_depth(world: &SimWorld, depth_m: f64, seed_q: &[f64]) -> Vec<f64> {
    let gt = world.ground_truth();
    let ph = world.phantom();
    let foot = Vector3::new(0.0, ph.skin_y(0.0, 0.0), 0.0);
    let n_out = skin_point(ph, &foot).normal_out;
    let p_ct = foot - n_out * depth_m;
    let r = gt.t_base_ct.rotation;
    let target = Transform::new(
        probe_rotation(&(r * -n_out), &(r * Vector3::z())),
        gt.t_base_ct.transform_point(&p_ct),
    );
    let chain = world.chain();
    let mut ik = IkSolver::new(chain, IkConfig::default());
    let mut q = vec![0.0; chain.dof()];
    ik.solve(chain, &target, seed_q, &mut q).unwrap();
    q
}

/// A UR5e world starting 20 mm outside the skin over L3 (along the normal), and the joint
/// values that put the probe `depth_m` inside.
fn ur5e_over_l3(mut config: WorldConfig, depth_m: f64) -> (SimWorld, Vec<f64>) {
    let probe = SimWorld::new(&config).unwrap();
    let seed_q = probe.arm().true_q().to_vec();
    let q_hover = q_at_depth(&probe, -0.02, &seed_q);
    let q_target = q_at_depth(&probe, depth_m, &q_hover);
    config.initial = InitialPose::Joints(q_hover);
    (SimWorld::new(&config).unwrap(), q_target)
}

/// Streams position commands from the current pose to `q_target` over `seconds` (cosine blend),
/// one per step, recording every observation through `record`.
fn approach(
    world: &mut SimWorld,
    q_target: &[f64],
    seconds: f64,
    mut record: impl FnMut(&SimWorld),
) {
    let q0 = world.arm().true_q().to_vec();
    let n = (seconds * 1000.0) as usize;
    let mut cmd = vec![0.0; q0.len()];
    for i in 1..=n {
        let s = 0.5 - 0.5 * (std::f64::consts::PI * i as f64 / n as f64).cos();
        for ((c, a), b) in cmd.iter_mut().zip(&q0).zip(q_target) {
            *c = a + s * (b - a);
        }
        world.command(JointCommand::Position(&cmd)).unwrap();
        world.step();
        record(world);
    }
}

fn sensor_rotation(world: &SimWorld) -> Matrix3<f64> {
    let chain = Chain::from_urdf_str(
        &urdf_text("ur5e_probe.urdf"),
        Some("base_link"),
        "ft_sensor",
    )
    .unwrap();
    chain.fk(world.ground_truth().q_rad).unwrap().rotation
}

fn still_patient() -> WorldConfig {
    WorldConfig {
        breathing: Some(Breathing::none()),
        sensor: FtSensorParams {
            max_force_bias_n: 0.0,
            max_torque_bias_nm: 0.0,
            ..FtSensorParams::default()
        },
        seed: 21,
        phantom_seed: 3,
        ..WorldConfig::ur5e()
    }
}

// ---- tests ----

#[test]
fn both_arms_reach_the_lumbar_back_pointing_down() {
    let mut worst_count = usize::MAX;
    for file in ["ur5e_probe.urdf", "panda_probe.urdf"] {
        let chain = Chain::from_urdf_str(&urdf_text(file), Some("base_link"), "probe_tip").unwrap();
        let mut ik = IkSolver::new(&chain, IkConfig::default());
        let mut q = vec![0.0; chain.dof()];
        let mut reached = 0;
        let mut total = 0;
        for seed in 0..12u64 {
            let ph = Phantom::generate(seed % 4);
            let placement = PatientPlacement::default();
            let t_base_ct = if seed == 0 {
                placement.nominal_t_base_ct
            } else {
                placement.sample(seed)
            };
            let lm = ph.landmarks();
            for level in ["L1", "L3", "L5"] {
                let tip = lm
                    .iter()
                    .find(|l| l.name == format!("{level}_spinous_tip"))
                    .unwrap();
                let (x, z) = (tip.xyz[0], tip.xyz[2]);
                for dx in [-0.03, 0.0, 0.03] {
                    let skin = Vector3::new(x + dx, ph.skin_y(x + dx, z), z);
                    // 5 mm into the back, probe straight down.
                    let p = t_base_ct.transform_point(&skin) - Vector3::new(0.0, 0.0, 0.005);
                    let rot = probe_rotation(&-Vector3::z(), &(t_base_ct.rotation * Vector3::z()));
                    total += 1;
                    let r = ik.solve(
                        &chain,
                        &Transform::new(rot, p),
                        &chain.mid_configuration(),
                        &mut q,
                    );
                    if r.is_ok() {
                        reached += 1;
                    } else {
                        println!("{file}: seed {seed} {level} dx {dx}: unreachable");
                    }
                }
            }
        }
        println!("{file}: {reached}/{total} lumbar targets reached, probe pointing down");
        assert_eq!(reached, total);
        worst_count = worst_count.min(reached);
    }
    assert!(worst_count > 0);
}

#[test]
fn placement_seeds_stay_within_50_mm_and_20_degrees() {
    let placement = PatientPlacement::default();
    let nominal = placement.nominal_t_base_ct;
    let (mut max_dp, mut max_yaw): (f64, f64) = (0.0, 0.0);
    let mut poses = Vec::new();
    for seed in 0..64 {
        let mut config = still_patient();
        config.seed = seed;
        let world = SimWorld::new(&config).unwrap();
        let t = world.ground_truth().t_base_ct;
        assert_eq!(world.nominal_t_base_ct(), nominal);
        let dp = t.translation - nominal.translation;
        for v in dp.iter() {
            assert!(v.abs() <= 0.05, "translation {dp:?}");
        }
        let w = rotation_log(&(t.rotation * nominal.rotation.transpose()));
        assert!(w.z.abs() <= 20f64.to_radians() + 1e-9 && w.z.abs() >= 0.0);
        assert!(w.norm() <= (20f64.powi(2) + 2.0 * 2f64.powi(2)).sqrt().to_radians() + 1e-9);
        // The back still faces up within the tilt bound.
        let up = t.rotation * -Vector3::y();
        assert!(
            up.z >= (2.0 * 2f64.to_radians()).cos() - 1e-9,
            "tilt {up:?}"
        );
        max_dp = max_dp.max(dp.amax());
        max_yaw = max_yaw.max(w.z.abs());
        poses.push(t);
    }
    println!(
        "64 seeds: max |Δp| {:.1} mm, max |yaw| {:.1}°",
        max_dp * 1e3,
        max_yaw.to_degrees()
    );
    assert!(
        max_dp > 0.04 && max_yaw > 15f64.to_radians(),
        "the draws cover the range"
    );
    for i in 0..poses.len() {
        for j in 0..i {
            assert_ne!(poses[i], poses[j], "seeds {i} and {j} gave the same pose");
        }
    }
}

#[test]
fn payload_weight_reads_at_the_sensor_out_of_contact() {
    let (mut world, _) = ur5e_over_l3(still_patient(), 0.004);
    let payload = *world.payload();
    assert!((payload.mass_kg - 0.35).abs() < 1e-12, "{payload:?}");
    assert!((payload.com_m - Vector3::new(0.0, 0.0, 0.09)).norm() < 1e-12);
    let n = 1000;
    let mut mean = Wrench::zero();
    for _ in 0..n {
        world.step();
        let f = world.observe().ft;
        mean.force_n += f.force_n / n as f64;
        mean.torque_nm += f.torque_nm / n as f64;
        assert!(!world.ground_truth().in_contact);
    }
    let expect = payload.gravity_wrench(&sensor_rotation(&world));
    println!(
        "out of contact: mean F = {:?}, expected weight {:?}",
        mean.force_n, expect.force_n
    );
    let sigma_mean = 0.05 / (n as f64).sqrt();
    assert!((mean.force_n - expect.force_n).amax() < 4.0 * sigma_mean);
    assert!((mean.torque_nm - expect.torque_nm).amax() < 4.0 * 0.002 / (n as f64).sqrt());
}

#[test]
fn steady_state_force_matches_the_contact_model() {
    let (mut world, q_target) = ur5e_over_l3(still_patient(), 0.004);
    approach(&mut world, &q_target, 1.0, |_| {});
    world.steps(1000);
    let n = 1000;
    let (mut sum, mut sum2) = (0.0, 0.0);
    let mut analytic = 0.0;
    for _ in 0..n {
        world.step();
        let gt = world.ground_truth();
        analytic = world
            .contact_model()
            .analytic_force(gt.indentation_m, gt.indentation_rate_m_s)
            .unwrap();
        assert!((gt.normal_force_n - analytic).abs() <= 1e-12 * analytic);
        assert!(
            (gt.indentation_m - 0.004).abs() < 2e-5,
            "indentation {}",
            gt.indentation_m
        );
        let gravity = world.payload().gravity_wrench(&sensor_rotation(&world));
        // Pressing reads as −Fz (see ft_sensor); remove the payload weight.
        let contact_z = world.observe().ft.force_n.z - gravity.force_n.z;
        let err = contact_z + analytic;
        sum += err;
        sum2 += err * err;
    }
    let mean = sum / n as f64;
    let sd = (sum2 / n as f64 - mean * mean).sqrt();
    let gt = world.ground_truth();
    println!(
        "4 mm target: true indentation {:.4} mm, analytic F {analytic:.4} N, mean F/T error \
         {mean:.4} N (3σ/√N = {:.4}), error σ {sd:.4} N",
        gt.indentation_m * 1e3,
        3.0 * 0.05 / (n as f64).sqrt()
    );
    assert!(mean.abs() < 3.0 * 0.05 / (n as f64).sqrt());
    assert!((sd / 0.05 - 1.0).abs() < 0.1);
    // 2 N/mm at 4 mm with n = 1.5: 2·5·(4/5)^1.5 = 7.155 N.
    assert!((analytic - 7.1554).abs() < 0.01);
}

#[test]
fn breathing_makes_the_force_oscillate_at_the_breathing_frequency() {
    let config = WorldConfig {
        breathing: None,
        ..still_patient()
    };
    let (mut world, q_target) = ur5e_over_l3(config, 0.004);
    let f_breath = world.breathing().frequency_hz();
    approach(&mut world, &q_target, 1.0, |_| {});
    // 10 ms bins of the F/T z force over 30 s.
    let mut bins = Vec::new();
    let mut acc = 0.0;
    for i in 1..=30_000 {
        world.step();
        acc += world.observe().ft.force_n.z;
        if i % 10 == 0 {
            bins.push(acc / 10.0);
            acc = 0.0;
        }
        assert!(world.ground_truth().in_contact);
    }
    let mean = bins.iter().sum::<f64>() / bins.len() as f64;
    let (lo, hi) = bins
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let mut best = (0.0, 0.0);
    let mut f = 0.05;
    while f <= 1.0 {
        let (mut re, mut im) = (0.0, 0.0);
        for (k, v) in bins.iter().enumerate() {
            let ph = 2.0 * std::f64::consts::PI * f * k as f64 * 0.01;
            re += (v - mean) * ph.cos();
            im -= (v - mean) * ph.sin();
        }
        let p = re * re + im * im;
        if p > best.1 {
            best = (f, p);
        }
        f += 0.0005;
    }
    println!(
        "breathing {f_breath:.4} Hz, {:.2} mm: dominant force frequency {:.4} Hz (period {:.3} s \
         vs {:.3} s), Fz range {lo:.2}…{hi:.2} N",
        world.breathing().amplitude_m() * 1e3,
        best.0,
        1.0 / best.0,
        1.0 / f_breath
    );
    assert!(((1.0 / best.0) / (1.0 / f_breath) - 1.0).abs() < 0.05);
    assert!(
        hi - lo > 2.0,
        "breathing of 2–5 mm changes the force by newtons"
    );
}

#[test]
fn t_ct_probe_follows_breathing() {
    let config = WorldConfig {
        breathing: Some(Breathing::new(0.004, 0.25).unwrap()),
        ..still_patient()
    };
    let mut world = SimWorld::new(&config).unwrap();
    world.steps(500); // let the servo settle on its initial hold
    let p0 = world.ground_truth().t_base_probe.translation;
    let ref_ct = world
        .ground_truth()
        .t_base_ct
        .inverse()
        .transform_point(&p0);
    for _ in 0..8 {
        world.steps(250);
        let gt = world.ground_truth();
        let b = world.breathing().displacement_m(world.time_s());
        assert_eq!(gt.breathing_displacement_m, b);
        assert!(
            (gt.t_base_probe.translation - p0).norm() < 1e-9,
            "the probe holds still"
        );
        let p = world.t_ct_probe().translation;
        // The patient moved −b along ct y, so the fixed probe moved +b in the patient's frame.
        assert!((p - ref_ct - Vector3::new(0.0, b, 0.0)).norm() < 1e-9);
        assert_eq!(gt.t_ct_probe, world.t_ct_probe());
    }
}

#[test]
fn ft_saturates_and_flags_beyond_its_range() {
    let mut config = still_patient();
    config.sensor.force_range_n = [80.0, 80.0, 10.0];
    let (mut world, q_target) = ur5e_over_l3(config, 0.008);
    world.steps(100);
    let r = world.observe().ft;
    assert!(!r.saturated, "hovering: only the 3.4 N weight");
    approach(&mut world, &q_target, 1.0, |_| {});
    world.steps(500);
    let gt = world.ground_truth();
    let r = world.observe().ft;
    println!(
        "8 mm: true load Fz {:.2} N, reading {:.2} N, saturated {}",
        gt.sensor_load.force_n.z, r.force_n.z, r.saturated
    );
    assert!(gt.sensor_load.force_n.z < -12.0);
    assert!(r.saturated);
    assert_eq!(r.force_n.z, -10.0);
}

#[test]
fn ft_sensor_saturation_noise_and_faults() {
    let params = FtSensorParams {
        max_force_bias_n: 0.0,
        max_torque_bias_nm: 0.0,
        ..FtSensorParams::default()
    };
    let mut s = FtSensor::new(params, 9).unwrap();
    let load = |fz: f64| Wrench {
        force_n: Vector3::new(1.0, -2.0, fz),
        torque_nm: Vector3::new(0.1, 0.0, -0.05),
    };
    let r = s.measure(0.001, &load(-300.0));
    assert!(r.saturated);
    assert_eq!(r.force_n.z, -240.0);
    let r = s.measure(0.002, &load(-200.0));
    assert!(!r.saturated);
    assert!((r.force_n.z + 200.0).abs() < 0.3);
    let mut t = s.measure(
        0.003,
        &Wrench {
            torque_nm: Vector3::new(0.0, 5.0, 0.0),
            ..load(0.0)
        },
    );
    assert!(t.saturated && t.torque_nm.y == 4.0);

    s.set_fault(Some(FtFault::Nan));
    let r = s.measure(0.004, &load(-5.0));
    assert!(r
        .force_n
        .iter()
        .chain(r.torque_nm.iter())
        .all(|v| v.is_nan()));
    assert_eq!(r.stamp_s, 0.004);
    s.set_fault(None);
    t = s.measure(0.005, &load(-5.0));
    s.set_fault(Some(FtFault::Stale));
    let r = s.measure(0.006, &load(-50.0));
    assert_eq!(r, t, "stale: same values and stamp");
    s.set_fault(Some(FtFault::Stuck));
    let r = s.measure(0.007, &load(-50.0));
    assert_eq!(
        (r.force_n, r.stamp_s),
        (t.force_n, 0.007),
        "stuck: same values, new stamp"
    );
    s.set_fault(Some(FtFault::Spike {
        force_n: Vector3::new(0.0, 0.0, -60.0),
        torque_nm: Vector3::zeros(),
    }));
    let r = s.measure(0.008, &load(-5.0));
    assert!((r.force_n.z + 65.0).abs() < 0.3);
    assert_eq!(s.fault(), None, "a spike lasts one sample");
    let r = s.measure(0.009, &load(-5.0));
    assert!((r.force_n.z + 5.0).abs() < 0.3);

    // Bias within its bound; noise σ as configured.
    let mut s = FtSensor::new(FtSensorParams::default(), 10).unwrap();
    let b = s.bias();
    assert!(b.force_n.amax() <= 0.5 && b.torque_nm.amax() <= 0.02 && b.force_n.amax() > 0.0);
    let n = 20_000;
    let (mut s2, mut t2) = (0.0, 0.0);
    for i in 0..n {
        let r = s.measure(i as f64 * 1e-3, &Wrench::zero());
        s2 += (r.force_n - b.force_n).norm_squared();
        t2 += (r.torque_nm - b.torque_nm).norm_squared();
    }
    let sf = (s2 / (3 * n) as f64).sqrt();
    let st = (t2 / (3 * n) as f64).sqrt();
    println!("F/T noise σ: force {sf:.4} N, torque {st:.5} N·m");
    assert!((sf / 0.05 - 1.0).abs() < 0.05 && (st / 0.002 - 1.0).abs() < 0.05);
    assert!(FtSensor::new(
        FtSensorParams {
            force_noise_n: f64::NAN,
            ..params
        },
        0
    )
    .is_err());
}

#[test]
fn same_seed_gives_bit_identical_observations() {
    let run = |seed: u64| -> Vec<u64> {
        let config = WorldConfig {
            seed,
            ..WorldConfig::ur5e()
        };
        let (mut world, q_target) = ur5e_over_l3(config, 0.004);
        let mut out = Vec::new();
        let mut rec = |w: &SimWorld| {
            let o = w.observe();
            out.push(o.time_s.to_bits());
            out.extend(o.q_rad.iter().chain(o.qd_rad_s).map(|v| v.to_bits()));
            out.extend(
                o.ft.force_n
                    .iter()
                    .chain(o.ft.torque_nm.iter())
                    .map(|v| v.to_bits()),
            );
            out.push(o.ft.stamp_s.to_bits());
            out.push(o.ft.saturated as u64);
        };
        approach(&mut world, &q_target, 1.0, &mut rec);
        for _ in 0..1000 {
            world.step();
            rec(&world);
        }
        assert!(world.ground_truth().in_contact);
        out
    };
    let a = run(5);
    let b = run(5);
    assert_eq!(a.len(), 2000 * 21);
    assert!(a == b, "same seed must replay bit for bit");
    let c = run(6);
    assert!(a != c);
}

#[test]
fn stepping_does_not_allocate() {
    let config = WorldConfig {
        breathing: None,
        ..WorldConfig::ur5e()
    };
    let (mut world, q_target) = ur5e_over_l3(config, 0.004);
    approach(&mut world, &q_target, 0.5, |_| {});
    let before = allocations();
    for _ in 0..2000 {
        world.command(JointCommand::Position(&q_target)).unwrap();
        world.step();
        let _ = world.observe();
        let _ = world.ground_truth();
        let _ = world.t_ct_probe();
    }
    let after = allocations();
    assert!(world.ground_truth().in_contact);
    assert_eq!(
        after - before,
        0,
        "{} allocations in 2000 steps",
        after - before
    );
}

#[test]
fn panda_world_builds_and_holds_above_the_patient() {
    let mut world = SimWorld::new(&WorldConfig::panda()).unwrap();
    assert_eq!(world.chain().dof(), 7);
    let start = world.ground_truth().t_base_probe;
    world.steps(1000);
    let gt = world.ground_truth();
    assert!(!gt.in_contact);
    assert!((gt.t_base_probe.translation - start.translation).norm() < 1e-9);
    // Pointing down.
    assert!((gt.t_base_probe.rotation * Vector3::z()).z < -0.999);
}

#[test]
fn contact_wrench_acts_at_the_probe_tip() {
    let (mut world, q_target) = ur5e_over_l3(still_patient(), 0.004);
    approach(&mut world, &q_target, 1.0, |_| {});
    world.steps(200);
    let gt = world.ground_truth();
    let r_bs = sensor_rotation(&world);
    let r_sb = r_bs.transpose();
    let weight = world.payload().gravity_wrench(&r_bs);
    let contact = Wrench {
        force_n: gt.sensor_load.force_n - weight.force_n,
        torque_nm: gt.sensor_load.torque_nm - weight.torque_nm,
    };
    // The force is the contact force rotated into the sensor frame …
    assert!((contact.force_n - r_sb * gt.contact_force_base_n).norm() < 1e-12);
    // … and a point contact at probe_tip (0.18 m below the sensor origin) has no torque about
    // the tip: τ_sensor = r × F.
    let r_tip = Vector3::new(0.0, 0.0, 0.18);
    let tau_tip = contact.torque_nm - r_tip.cross(&contact.force_n);
    assert!(tau_tip.norm() < 1e-12, "{tau_tip:?}");
    assert!(contact.force_n.norm() > 7.0);

    // A 5×3 grid over a 38 mm × 10 mm face at the same pose: the same order of force.
    let mut config = still_patient();
    config.face = telecho_sim::ProbeFace {
        length_m: 0.038,
        width_m: 0.010,
        points_along: 5,
        points_across: 3,
    };
    config.initial = InitialPose::Joints(gt.q_rad.to_vec());
    let mut face_world = SimWorld::new(&config).unwrap();
    face_world.steps(10);
    let fg = face_world.ground_truth();
    println!(
        "point contact {:.3} N, 5×3 face {:.3} N (deepest point {:.3} mm)",
        gt.normal_force_n,
        fg.normal_force_n,
        fg.indentation_m * 1e3
    );
    assert!(fg.in_contact && (fg.normal_force_n / gt.normal_force_n - 1.0).abs() < 0.25);
}

#[test]
fn bad_configuration_is_refused() {
    let mut c = WorldConfig::ur5e();
    c.tip_link = "no_such_link".into();
    let e = SimWorld::new(&c).unwrap_err().to_string();
    assert!(e.contains("no_such_link"), "{e}");
    let mut c = WorldConfig::ur5e();
    c.placement.max_yaw_deg = f64::NAN;
    assert!(SimWorld::new(&c)
        .unwrap_err()
        .to_string()
        .contains("max_yaw_deg"));
    let mut c = WorldConfig::ur5e();
    c.contact.stiffness_n_per_mm = 9.0;
    assert!(SimWorld::new(&c).is_err());
    let mut c = WorldConfig::ur5e();
    c.initial = InitialPose::Joints(vec![0.0; 5]);
    assert!(SimWorld::new(&c).is_err());
    let mut c = WorldConfig::ur5e();
    c.urdf = telecho_sim::UrdfSource::Xml("<robot".into());
    assert!(SimWorld::new(&c).unwrap_err().to_string().contains("URDF"));
    let mut w = SimWorld::new(&WorldConfig::ur5e()).unwrap();
    assert!(w.command(JointCommand::Velocity(&[f64::NAN; 6])).is_err());
}
