//! `ProbeController::step` (controller + supervisor) and `ScanExecutor::update` must not touch
//! the heap: they run inside the 1 kHz loop. A counting global allocator proves it, over free
//! motion, contact search, force ramp and regulation, a sweep, a fault stop and a reset.

mod common;

use common::*;
use nalgebra::Vector3;
use telecho_control::{ControlInput, ExecutorConfig, ProbeTarget, ScanExecutor, ScanProtocol};
use telecho_core::Transform;
use telecho_sim::{FtFault, JointCommand};

#[global_allocator]
static GLOBAL: telecho_core::alloc_count::CountingAllocator =
    telecho_core::alloc_count::CountingAllocator;

use telecho_core::alloc_count::allocations;

#[test]
fn controller_step_and_executor_update_do_not_allocate() {
    assert!({
        let before = allocations();
        drop(std::hint::black_box(vec![1u8; 16]));
        allocations() > before
    });
    let mut rig = Rig::scene(&Scene::default(), controller_config());
    let skin = nominal_skin_over_l3(&rig.world);
    let start = Transform::new(probe_down(), skin);
    let protocol = ScanProtocol::default_lumbar();
    let mut exec = ScanExecutor::new(
        &protocol,
        &start_pose(&rig.world, 1),
        &controller_config().safety,
        ExecutorConfig::default(),
    )
    .unwrap();
    let n = rig.ctl.dof();
    let (mut q, mut qd) = (vec![0.0; n], vec![0.0; n]);
    let mut counted = 0;
    for i in 0..9000 {
        let t = rig.world.time_s();
        // Free move, then contact, then a sweep, a NaN fault at 6 s and a reset at 7 s.
        let target = match t {
            t if t < 0.3 => None,
            t if t < 1.0 => Some(ProbeTarget::free(
                t,
                Transform::new(probe_down(), skin + Vector3::new(0.0, 0.0, 0.02)),
            )),
            t if t < 4.0 => Some(ProbeTarget::contact(t, start, 8.0)),
            t => {
                let mut p = start;
                p.translation.y += 0.02 * (t - 4.0).min(2.0);
                Some(ProbeTarget::contact(t, p, 8.0))
            }
        };
        if i == 6000 {
            rig.world.set_ft_fault(Some(FtFault::Nan));
        }
        if i == 7000 {
            rig.world.set_ft_fault(None);
        }
        let obs = rig.world.observe();
        q.copy_from_slice(obs.q_rad);
        qd.copy_from_slice(obs.qd_rad_s);
        let input = ControlInput {
            time_s: obs.time_s,
            q_rad: &q,
            qd_rad_s: &qd,
            ft: ft_sample(&rig.world),
            target,
            estop: false,
            reset: i == 7100,
        };
        let before = allocations();
        rig.ctl.step(&input, DT, &mut rig.out);
        let _ = std::hint::black_box(exec.update(obs.time_s, &rig.out));
        counted += allocations() - before;
        rig.world
            .command(JointCommand::Position(&rig.out.q_cmd_rad))
            .unwrap();
        rig.world.step();
    }
    assert_eq!(counted, 0, "{counted} heap allocations in step/update");
}
