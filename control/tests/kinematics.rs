//! Kinematics against hand-computed poses, finite differences, published DH parameters, and IK
//! round trips on the bundled arms.

use std::f64::consts::{FRAC_PI_2, PI};

use nalgebra::{Matrix3, Matrix4, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_control::{Chain, IkConfig, IkSolver, JointKind};
use telecho_core::Transform;

const TREE: &str = include_str!("data/tree.urdf");
const UR5E: &str = include_str!("../../urdf/ur5e_probe.urdf");
const PANDA: &str = include_str!("../../urdf/panda_probe.urdf");

fn assert_vec(got: Vector3<f64>, want: [f64; 3], tol: f64) {
    let d = (got - Vector3::from(want)).norm();
    assert!(d < tol, "got {got:?}, want {want:?} (|d| = {d:e} m)");
}

#[test]
fn hand_computed_poses_on_a_tree() {
    let left = Chain::from_urdf_str(TREE, None, "tip_l").unwrap();
    assert_eq!(left.base_link(), "base");
    assert_eq!(left.joint_names(), ["j_a", "j_b", "j_fl"]);
    assert_eq!(
        left.joint_kinds(),
        [
            JointKind::Revolute,
            JointKind::Prismatic,
            JointKind::Revolute
        ]
    );
    assert_vec(
        left.fk(&[0.0, 0.0, 0.0]).unwrap().translation,
        [0.45, 0.0, 1.3],
        1e-12,
    );
    let t = left.fk(&[FRAC_PI_2, 0.1, 0.0]).unwrap();
    assert_vec(t.translation, [0.1, 0.45, 1.3], 1e-12);
    // Two 90° yaws: x axis of the tip points along −x of the base.
    assert_vec(t.rotation.column(0).into_owned(), [-1.0, 0.0, 0.0], 1e-12);
    // General axis (1,1,0)/√2: tip offset (0,0,0.2) turns into (0.2/√2)(1,−1,0) in frame c.
    let s = 0.2 / 2f64.sqrt();
    assert_vec(
        left.fk(&[0.0, 0.0, FRAC_PI_2]).unwrap().translation,
        [0.45 + s, s, 1.1],
        1e-12,
    );

    let right = Chain::from_urdf_str(TREE, None, "tip_r").unwrap();
    assert_eq!(right.joint_kinds()[2], JointKind::Continuous);
    assert!(!right.limits()[2].is_bounded());
    // Continuous joint about −y.
    assert_vec(
        right.fk(&[0.0, 0.0, FRAC_PI_2]).unwrap().translation,
        [0.55, -0.2, 1.1],
        1e-12,
    );
}

#[test]
fn chains_not_starting_at_the_root() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let left = Chain::from_urdf_str(TREE, None, "tip_l").unwrap();
    let right = Chain::from_urdf_str(TREE, None, "tip_r").unwrap();
    // From one finger tip to the other: up through j_fl, down through j_fr.
    let across = Chain::from_urdf_str(TREE, Some("tip_l"), "tip_r").unwrap();
    assert_eq!(across.joint_names(), ["j_fl", "j_fr"]);
    // From a sibling of the arm.
    let side = Chain::from_urdf_str(TREE, Some("side"), "tip_l").unwrap();
    assert_eq!(side.dof(), 3);
    for _ in 0..50 {
        let qa: f64 = rng.random_range(-3.0..3.0);
        let qb: f64 = rng.random_range(-0.2..0.4);
        let ql: f64 = rng.random_range(-1.0..1.0);
        let qr: f64 = rng.random_range(-6.0..6.0);
        let t_base_l = left.fk(&[qa, qb, ql]).unwrap();
        let t_base_r = right.fk(&[qa, qb, qr]).unwrap();
        let expect = t_base_l.inverse() * t_base_r;
        let got = across.fk(&[ql, qr]).unwrap();
        let (dp, dr) = got.distance_to(&expect);
        assert!(dp < 1e-12 && dr < 1e-12, "across: {dp:e} m {dr:e} rad");
        let t_side = Transform::from_xyz_rpy([0.0, 1.0, 0.0], [0.0; 3]).unwrap();
        let (dp, dr) = side
            .fk(&[qa, qb, ql])
            .unwrap()
            .distance_to(&(t_side.inverse() * t_base_l));
        assert!(dp < 1e-12 && dr < 1e-12, "side: {dp:e} m {dr:e} rad");
        // Jacobians of these chains also match finite differences.
        assert!(across.jacobian_fd_error(&[ql, qr], 1e-6).unwrap() < 1e-7);
    }
}

fn random_q(chain: &Chain, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut q = vec![0.0; chain.dof()];
    chain.sample_configuration(&mut q, || rng.random::<f64>());
    q
}

#[test]
fn jacobian_matches_finite_differences_on_both_arms() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for urdf in [UR5E, PANDA] {
        let chain = Chain::from_urdf_str(urdf, None, "probe_tip").unwrap();
        let mut worst = 0.0f64;
        for _ in 0..300 {
            let q = random_q(&chain, &mut rng);
            worst = worst.max(chain.jacobian_fd_error(&q, 1e-6).unwrap());
        }
        // Central differences with h = 1e-6 are accurate to ~1e-9 here.
        assert!(
            worst < 1e-7,
            "Jacobian differs from finite differences by {worst:e}"
        );
    }
}

/// Standard DH: Rz(θ)·Tz(d)·Tx(a)·Rx(α).
fn dh(theta: f64, d: f64, a: f64, alpha: f64) -> Matrix4<f64> {
    let (st, ct) = theta.sin_cos();
    let (sa, ca) = alpha.sin_cos();
    Matrix4::new(
        ct,
        -st * ca,
        st * sa,
        a * ct, //
        st,
        ct * ca,
        -ct * sa,
        a * st, //
        0.0,
        sa,
        ca,
        d, //
        0.0,
        0.0,
        0.0,
        1.0,
    )
}

/// Modified (Craig) DH: Rx(α)·Tx(a)·Rz(θ)·Tz(d).
fn mdh(theta: f64, d: f64, a: f64, alpha: f64) -> Matrix4<f64> {
    let (st, ct) = theta.sin_cos();
    let (sa, ca) = alpha.sin_cos();
    Matrix4::new(
        ct,
        -st,
        0.0,
        a, //
        st * ca,
        ct * ca,
        -sa,
        -d * sa, //
        st * sa,
        ct * sa,
        ca,
        d * ca, //
        0.0,
        0.0,
        0.0,
        1.0,
    )
}

fn close4(got: &Transform, want: &Matrix4<f64>, tol: f64) -> bool {
    (got.to_matrix4() - want).abs().max() < tol
}

#[test]
fn ur5e_fk_equals_published_dh() {
    // Universal Robots' published UR5e DH parameters.
    let d = [0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996];
    let a = [0.0, -0.425, -0.3922, 0.0, 0.0, 0.0];
    let alpha = [FRAC_PI_2, 0.0, 0.0, FRAC_PI_2, -FRAC_PI_2, 0.0];
    let chain = Chain::from_urdf_str(UR5E, None, "flange").unwrap();
    assert_eq!(chain.dof(), 6);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for _ in 0..1000 {
        let q = random_q(&chain, &mut rng);
        let want = (0..6).fold(Matrix4::<f64>::identity(), |m, i| {
            m * dh(q[i], d[i], a[i], alpha[i])
        });
        let got = chain.fk(&q).unwrap();
        assert!(close4(&got, &want, 1e-12), "q={q:?}\n{got:?}\n{want}");
    }
    // Zero pose, by hand: x = a2 + a3, y = −(d4 + d6), z = d1 − d5.
    let t0 = chain.fk(&[0.0; 6]).unwrap();
    assert_vec(t0.translation, [-0.8172, -0.2329, 0.0628], 1e-12);
}

#[test]
fn panda_fk_equals_published_modified_dh() {
    let a = [0.0, 0.0, 0.0, 0.0825, -0.0825, 0.0, 0.088];
    let d = [0.333, 0.0, 0.316, 0.0, 0.384, 0.0, 0.0];
    let alpha = [
        0.0, -FRAC_PI_2, FRAC_PI_2, FRAC_PI_2, -FRAC_PI_2, FRAC_PI_2, FRAC_PI_2,
    ];
    // The specification's kinematics run from link 0, which stands on a riser in the base.
    let riser = Chain::from_urdf_str(PANDA, None, "link0").unwrap();
    assert_eq!(riser.dof(), 0);
    let t_riser = riser.fk(&[]).unwrap();
    assert_vec(t_riser.translation, [-0.1, 0.0, 0.2], 1e-12);
    assert!((t_riser.rotation - Matrix3::identity()).norm() < 1e-12);
    let full = Chain::from_urdf_str(PANDA, None, "flange").unwrap();
    let chain = Chain::from_urdf_str(PANDA, Some("link0"), "flange").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for _ in 0..1000 {
        let q = random_q(&chain, &mut rng);
        let want = (0..7).fold(Matrix4::<f64>::identity(), |m, i| {
            m * mdh(q[i], d[i], a[i], alpha[i])
        }) * mdh(0.0, 0.107, 0.0, 0.0);
        assert!(close4(&chain.fk(&q).unwrap(), &want, 1e-12));
        let t_full = full.fk(&q).unwrap();
        let t_link0 = chain.fk(&q).unwrap();
        assert_vec(
            t_full.translation - t_link0.translation,
            [-0.1, 0.0, 0.2],
            1e-12,
        );
    }
}

#[test]
fn probe_tip_frames_follow_the_flange() {
    // The Panda's probe holder is clamped turned by −0.85 rad about the flange axis, which
    // centres joint 7 over the protocol's sagittal and transverse sweeps.
    for (urdf, tip_offset, spin) in [(UR5E, 0.2, 0.0), (PANDA, 0.2, -0.85)] {
        let flange = Chain::from_urdf_str(urdf, Some("flange"), "probe_tip").unwrap();
        assert_eq!(flange.dof(), 0);
        let t = flange.fk(&[]).unwrap();
        // probe_tip: +z along the probe axis, 0.2 m beyond the flange; F/T sensor in between.
        assert_vec(t.translation, [0.0, 0.0, tip_offset], 1e-12);
        let want = telecho_core::rotation_from_rpy(0.0, 0.0, spin);
        assert!((t.rotation - want).norm() < 1e-12, "{}", t.rotation);
        let ft = Chain::from_urdf_str(urdf, Some("flange"), "ft_sensor").unwrap();
        let z_ft = ft.fk(&[]).unwrap().translation.z;
        assert!(z_ft > 0.0 && z_ft < tip_offset, "ft_sensor at {z_ft} m");
    }
}

#[test]
fn bundled_arms_declare_physical_limits_and_inertias() {
    for urdf in [UR5E, PANDA] {
        let robot = inertials::parse(urdf);
        let chain = Chain::from_urdf_str(urdf, None, "probe_tip").unwrap();
        for l in chain.limits() {
            assert!(l.is_bounded() && l.lower < l.upper, "{l:?}");
            assert!(l.velocity > 0.0 && l.effort > 0.0, "{l:?}");
        }
        for (name, mass, inertia) in robot {
            assert!(mass > 0.0, "{name}: mass {mass}");
            let e = inertia.symmetric_eigenvalues();
            assert!(
                e.iter().all(|v| *v > 0.0),
                "{name}: inertia not positive definite {e:?}"
            );
            // Triangle inequality of principal moments (physically realisable body).
            let (a, b, c) = (e[0], e[1], e[2]);
            assert!(a + b >= c && a + c >= b && b + c >= a, "{name}: {e:?}");
        }
    }
}

/// Masses and inertia tensors of the links, read with urdf-rs.
mod inertials {
    use nalgebra::Matrix3;

    pub(crate) fn parse(xml: &str) -> Vec<(String, f64, Matrix3<f64>)> {
        let robot = urdf_rs::read_from_string(xml).unwrap();
        robot
            .links
            .iter()
            .filter(|l| l.inertial.mass.value > 0.0)
            .map(|l| {
                let i = &l.inertial.inertia;
                let m = Matrix3::new(
                    i.ixx, i.ixy, i.ixz, i.ixy, i.iyy, i.iyz, i.ixz, i.iyz, i.izz,
                );
                (l.name.clone(), l.inertial.mass.value, m)
            })
            .collect()
    }
}

/// IK success rate and accuracy over random reachable poses, from the middle-of-range seed.
fn ik_round_trip(urdf: &str, poses: usize, seed: u64) -> (f64, f64, f64) {
    let chain = Chain::from_urdf_str(urdf, None, "probe_tip").unwrap();
    let mut solver = IkSolver::new(&chain, IkConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let start = chain.mid_configuration();
    let mut q_ik = vec![0.0; chain.dof()];
    let (mut ok, mut worst_p, mut worst_r) = (0, 0.0f64, 0.0f64);
    for _ in 0..poses {
        let q = random_q(&chain, &mut rng);
        let target = chain.fk(&q).unwrap();
        if let Ok(report) = solver.solve(&chain, &target, &start, &mut q_ik) {
            // Check independently of the solver's own report.
            let (dp, dr) = chain.fk(&q_ik).unwrap().distance_to(&target);
            assert!((dp - report.position_error_m).abs() < 1e-12);
            if chain.within_limits(&q_ik, 0.0) && dp < 1e-6 && dr < 1e-6 {
                ok += 1;
                worst_p = worst_p.max(dp);
                worst_r = worst_r.max(dr);
            }
        }
    }
    (ok as f64 / poses as f64, worst_p, worst_r)
}

#[test]
fn ik_round_trip_ur5e() {
    let (rate, p, r) = ik_round_trip(UR5E, 1000, 21);
    assert!(rate >= 0.995, "UR5e IK success {rate}");
    assert!(p < 1e-6 && r < 1e-6, "worst errors {p:e} m {r:e} rad");
}

#[test]
fn ik_round_trip_panda() {
    let (rate, p, r) = ik_round_trip(PANDA, 1000, 22);
    assert!(rate >= 0.995, "Panda IK success {rate}");
    assert!(p < 1e-6 && r < 1e-6, "worst errors {p:e} m {r:e} rad");
}

#[test]
fn ik_refuses_unreachable_targets_and_stays_within_limits() {
    let chain = Chain::from_urdf_str(UR5E, None, "probe_tip").unwrap();
    let mut solver = IkSolver::new(
        &chain,
        IkConfig {
            max_attempts: 5,
            ..IkConfig::default()
        },
    );
    let far = Transform::from_xyz_rpy([3.0, 0.0, 0.5], [PI, 0.0, 0.0]).unwrap();
    let mut q = vec![0.0; 6];
    let e = solver
        .solve(&chain, &far, &chain.mid_configuration(), &mut q)
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    // The best attempt is still a valid configuration, about 2 m short of the target.
    assert!(chain.within_limits(&q, 0.0));
    let reached = chain.fk(&q).unwrap();
    assert!((reached.translation - far.translation).norm() > 1.5);
}

#[test]
fn ik_respects_limits_when_the_solution_lies_on_one() {
    // Panda joint 4 cannot reach 0: a target generated with joint 4 at its upper limit must be
    // solved with joint 4 exactly there, never beyond.
    let chain = Chain::from_urdf_str(PANDA, None, "probe_tip").unwrap();
    let upper = chain.limits()[3].upper;
    let q = [0.2, 0.3, -0.1, upper, 0.4, 1.2, -0.3];
    let target = chain.fk(&q).unwrap();
    let mut solver = IkSolver::new(&chain, IkConfig::default());
    let mut q_ik = [0.0; 7];
    let r = solver
        .solve(&chain, &target, &chain.mid_configuration(), &mut q_ik)
        .unwrap();
    assert!(chain.within_limits(&q_ik, 0.0), "{q_ik:?}");
    assert!(
        r.position_error_m < 1e-6 && r.orientation_error_rad < 1e-6,
        "{r:?}"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let chain = Chain::from_urdf_str(UR5E, None, "probe_tip").unwrap();
    let e = chain.fk(&[0.0; 5]).unwrap_err();
    assert!(e.is_joint_count());
    assert!(
        e.to_string().contains("expected 6") && e.to_string().contains("shoulder_pan_joint"),
        "{e}"
    );
    let e = chain.fk(&[0.0, f64::NAN, 0.0, 0.0, 0.0, 0.0]).unwrap_err();
    assert!(e.is_not_finite(), "{e}");
    let e = Chain::from_urdf_str(UR5E, None, "no_such_link").unwrap_err();
    assert!(e.to_string().contains("no_such_link"), "{e}");
    let e = Chain::from_urdf_str(UR5E, Some("nope"), "probe_tip").unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = Chain::from_urdf_str("<robot name='x'><link name='a'", None, "a").unwrap_err();
    assert!(e.to_string().starts_with("cannot read URDF"), "{e}");
    let e = Chain::from_urdf_str("not xml at all", None, "a").unwrap_err();
    assert!(e.to_string().starts_with("cannot read URDF"), "{e}");
    let e = Chain::from_urdf_file("/nonexistent/robot.urdf", None, "a").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/robot.urdf"), "{e}");
    let floating = r#"<robot name="f"><link name="a"/><link name="b"/>
        <joint name="free" type="floating"><parent link="a"/><child link="b"/></joint></robot>"#;
    let e = Chain::from_urdf_str(floating, None, "b").unwrap_err();
    assert!(
        e.to_string().contains("free") && e.to_string().contains("floating"),
        "{e}"
    );
    let zero_axis = r#"<robot name="z"><link name="a"/><link name="b"/>
        <joint name="j" type="revolute"><parent link="a"/><child link="b"/><axis xyz="0 0 0"/>
        <limit lower="-1" upper="1" effort="1" velocity="1"/></joint></robot>"#;
    let e = Chain::from_urdf_str(zero_axis, None, "b").unwrap_err();
    assert!(e.to_string().contains("axis"), "{e}");
    let bad_limits = r#"<robot name="z"><link name="a"/><link name="b"/>
        <joint name="j" type="revolute"><parent link="a"/><child link="b"/><axis xyz="0 0 1"/>
        <limit lower="1" upper="-1" effort="1" velocity="1"/></joint></robot>"#;
    let e = Chain::from_urdf_str(bad_limits, None, "b").unwrap_err();
    assert!(e.to_string().contains("limits"), "{e}");

    let two_parents = r#"<robot name="t"><link name="a"/><link name="b"/><link name="c"/>
        <joint name="j1" type="fixed"><parent link="a"/><child link="c"/></joint>
        <joint name="j2" type="fixed"><parent link="b"/><child link="c"/></joint></robot>"#;
    let e = Chain::from_urdf_str(two_parents, None, "c").unwrap_err();
    assert!(e.to_string().contains("more than one parent"), "{e}");
    let cycle = r#"<robot name="t"><link name="r"/><link name="a"/><link name="b"/>
        <joint name="j1" type="fixed"><parent link="a"/><child link="b"/></joint>
        <joint name="j2" type="fixed"><parent link="b"/><child link="a"/></joint></robot>"#;
    let e = Chain::from_urdf_str(cycle, Some("r"), "b").unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    let apart = r#"<robot name="t"><link name="r"/><link name="s"/></robot>"#;
    let e = Chain::from_urdf_str(apart, Some("r"), "s").unwrap_err();
    assert!(e.to_string().contains("not connected"), "{e}");

    let mut solver = IkSolver::new(&chain, IkConfig::default());
    let mut nan_target = chain.fk(&[0.0; 6]).unwrap();
    nan_target.translation.x = f64::NAN;
    let mut q = [0.0; 6];
    let e = solver
        .solve(&chain, &nan_target, &[0.0; 6], &mut q)
        .unwrap_err();
    assert!(e.is_not_finite() && !e.is_unreachable(), "{e}");
    assert_eq!(q, [0.0; 6], "nothing written on bad input");
}

#[test]
fn joint_origins_trace_the_arm_from_the_base_to_the_tip() {
    let left = Chain::from_urdf_str(TREE, None, "tip_l").unwrap();
    let mut pts = Vec::new();
    let q = [FRAC_PI_2, 0.1, 0.3];
    left.joint_origins(&q, &mut pts).unwrap();
    assert_eq!(pts.len(), 4);
    // The last point is the tip, exactly as FK gives it.
    assert_vec(pts[3], left.fk(&q).unwrap().translation.into(), 1e-12);
    // The prismatic joint moves everything after it by 0.1 m along its axis and nothing before.
    let mut moved = Vec::new();
    left.joint_origins(&[FRAC_PI_2, 0.2, 0.3], &mut moved)
        .unwrap();
    assert_vec(moved[0], pts[0].into(), 1e-12);
    assert_vec(moved[1], pts[1].into(), 1e-12);
    assert!(((moved[2] - pts[2]).norm() - 0.1).abs() < 1e-12);
    // Bad joint vectors are refused, like FK.
    assert!(left.joint_origins(&[0.0], &mut pts).is_err());
    assert!(left.joint_origins(&[f64::NAN, 0.0, 0.0], &mut pts).is_err());
    let ur = Chain::from_urdf_str(UR5E, None, "probe_tip").unwrap();
    ur.joint_origins(&vec![0.0; ur.dof()], &mut pts).unwrap();
    assert_eq!(pts.len(), ur.dof() + 1);
}
