//! The per-cycle kinematics path (FK, FK + Jacobian, IK) must not touch the heap: it runs inside
//! the 1 kHz control loop. A counting global allocator proves it.

use nalgebra::Matrix6xX;
use telecho_control::{Chain, IkConfig, IkSolver};

#[global_allocator]
static GLOBAL: telecho_core::alloc_count::CountingAllocator =
    telecho_core::alloc_count::CountingAllocator;

use telecho_core::alloc_count::allocations_during;

#[test]
fn fk_jacobian_and_ik_do_not_allocate() {
    // The counter sees allocations (so a zero below means something).
    assert!(allocations_during(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
    let probe = Chain::from_urdf_str(
        include_str!("../../urdf/ur5e_probe.urdf"),
        None,
        "probe_tip",
    )
    .unwrap();
    assert!(allocations_during(|| drop(std::hint::black_box(probe.jacobian(&[0.0; 6])))) >= 1);
    for urdf in [
        include_str!("../../urdf/ur5e_probe.urdf"),
        include_str!("../../urdf/panda_probe.urdf"),
    ] {
        let chain = Chain::from_urdf_str(urdf, None, "probe_tip").unwrap();
        let n = chain.dof();
        let mut jac = Matrix6xX::zeros(n);
        let mut solver = IkSolver::new(&chain, IkConfig::default());
        let q: Vec<f64> = (0..n)
            .map(|i| chain.mid_configuration()[i] + 0.1 * i as f64)
            .collect();
        let seed = chain.mid_configuration();
        let target = chain.fk(&q).unwrap();
        let unreachable = {
            let mut t = target;
            t.translation.x += 5.0;
            t
        };
        let mut q_out = vec![0.0; n];
        let mut checksum = 0.0;
        let count = allocations_during(|| {
            for _ in 0..100 {
                checksum += chain.fk(&q).unwrap().translation.x;
                checksum += chain.fk_jacobian(&q, &mut jac).unwrap().translation.y;
            }
            let r = solver.solve(&chain, &target, &seed, &mut q_out).unwrap();
            checksum += r.position_error_m;
            // Even the failure path (all restarts, error value) stays off the heap.
            let e = solver.solve(&chain, &unreachable, &seed, &mut q_out);
            assert!(e.is_err());
        });
        assert!(checksum.is_finite());
        assert_eq!(count, 0, "{count} heap allocations on the per-cycle path");
    }
}
