//! Properties over random inputs: FK always yields a rigid transform; IK never leaves the joint
//! limits nor returns non-finite values, whatever the target (reachable, unreachable or absurd).

use proptest::prelude::*;
use telecho_control::{Chain, IkConfig, IkSolver};
use telecho_core::Transform;

fn panda() -> Chain {
    Chain::from_urdf_str(
        include_str!("../../urdf/panda_probe.urdf"),
        None,
        "probe_tip",
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn fk_is_rigid(q in prop::collection::vec(-3.0..3.0f64, 7)) {
        let t = panda().fk(&q).unwrap();
        let r = t.rotation;
        prop_assert!((r * r.transpose() - nalgebra::Matrix3::identity()).norm() < 1e-12);
        prop_assert!((r.determinant() - 1.0).abs() < 1e-12);
        // The probe tip stays within the arm's reach (0.855 m + 0.107 m flange + 0.2 m probe).
        prop_assert!(t.translation.norm() < 1.6);
    }

    #[test]
    fn ik_output_is_always_within_limits(
        xyz in prop::array::uniform3(-2.0..2.0f64),
        rpy in prop::array::uniform3(-3.2..3.2f64),
        seed in prop::collection::vec(-4.0..4.0f64, 7),
    ) {
        let chain = panda();
        let target = Transform::from_xyz_rpy(xyz, rpy).unwrap();
        let mut solver = IkSolver::new(&chain, IkConfig { max_attempts: 4, ..IkConfig::default() });
        let mut q = [0.0; 7];
        let result = solver.solve(&chain, &target, &seed, &mut q);
        prop_assert!(q.iter().all(|v| v.is_finite()));
        prop_assert!(chain.within_limits(&q, 0.0), "{q:?}");
        if let Ok(r) = result {
            let (dp, dr) = chain.fk(&q).unwrap().distance_to(&target);
            prop_assert!(dp < 1e-6 && dr < 1e-6 && r.position_error_m < 1e-6);
        }
    }
}
