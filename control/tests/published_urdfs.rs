//! URDFs the project did not write: the Franka Panda and KUKA iiwa descriptions shipped in the
//! PyPI package `pybullet` (folder `pybullet_data`). A peer test: skipped when pybullet is absent,
//! failed instead when TELECHO_REQUIRE_PEERS=1.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_control::{Chain, IkConfig, IkSolver};
use telecho_core::peers;

fn check(path: &std::path::Path, base: Option<&str>, tip: &str, dof: usize) {
    let chain = Chain::from_urdf_file(path, base, tip)
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
    assert_eq!(
        chain.dof(),
        dof,
        "{}: {:?}",
        path.display(),
        chain.joint_names()
    );
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut solver = IkSolver::new(&chain, IkConfig::default());
    let mut q = vec![0.0; dof];
    let mut q_ik = vec![0.0; dof];
    let mut ok = 0;
    let poses = 200;
    for _ in 0..poses {
        chain.sample_configuration(&mut q, || rng.random::<f64>());
        let t = chain.fk(&q).unwrap();
        assert!(t.is_finite());
        let j = chain.jacobian(&q).unwrap();
        assert!(j.iter().all(|v| v.is_finite()));
        if solver
            .solve(&chain, &t, &chain.mid_configuration(), &mut q_ik)
            .is_ok()
        {
            assert!(
                chain.within_limits(&q_ik, 0.0),
                "IK left the limits: {q_ik:?}"
            );
            let (dp, dr) = chain.fk(&q_ik).unwrap().distance_to(&t);
            assert!(dp < 1e-6 && dr < 1e-6);
            ok += 1;
        }
    }
    assert!(
        ok as f64 >= 0.99 * poses as f64,
        "{}: IK solved {ok}/{poses}",
        path.display()
    );
}

#[test]
fn pybullet_panda_and_kuka_iiwa_load_and_solve() {
    let Some(dir) = peers::pybullet_data_dir() else {
        peers::missing_peer("pybullet_data (PyPI pybullet)", "pip install pybullet");
        return;
    };
    check(&dir.join("franka_panda/panda.urdf"), None, "panda_hand", 7);
    check(
        &dir.join("kuka_iiwa/model.urdf"),
        None,
        "lbr_iiwa_link_7",
        7,
    );
    // A sub-chain of a tree with fingers: from the hand to one finger (one prismatic joint).
    let finger = Chain::from_urdf_file(
        dir.join("franka_panda/panda.urdf"),
        Some("panda_hand"),
        "panda_leftfinger",
    )
    .unwrap();
    assert_eq!(finger.dof(), 1);
    let open = finger.fk(&[0.04]).unwrap().translation;
    let closed = finger.fk(&[0.0]).unwrap().translation;
    assert!(
        ((open - closed).norm() - 0.04).abs() < 1e-12,
        "finger travel {}",
        (open - closed).norm()
    );
}
