//! The hazard table of `docs/SAFETY.md`: one test per row, in closed loop against the simulator
//! where the hazard can be produced there, at the supervisor's API otherwise.

mod common;

use common::*;
use nalgebra::{Matrix6xX, Vector3};
use telecho_control::{
    Chain, ContactPhase, ControlMode, ControllerConfig, FtSample, ProbeTarget, SafetyConfig,
    SafetyEventKind, SafetyState, SafetySupervisor,
};
use telecho_core::Transform;
use telecho_sim::{Breathing, ContactParams, FtFault, FtSensorParams};

/// Steps with a contact target at the nominal skin point until the force has been regulated for
/// `settle_s`; returns the target pose.
fn settle_in_contact(rig: &mut Rig, force_n: f64, settle_s: f64) -> Transform {
    let skin = nominal_skin_over_l3(&rig.world);
    let pose = Transform::new(probe_down(), skin);
    for _ in 0..10_000 {
        let t = rig.time();
        let target = (t >= 0.3).then(|| ProbeTarget::contact(t, pose, force_n));
        rig.step(target);
        if rig.out.contact_phase == ContactPhase::Regulate && rig.out.regulating_s >= settle_s {
            return pose;
        }
    }
    panic!("never settled in contact");
}

fn contact_target(rig: &Rig, pose: Transform, force_n: f64) -> Option<ProbeTarget> {
    Some(ProbeTarget::contact(rig.time(), pose, force_n))
}

/// A rig hovering 80 mm above the back, for free-space motion.
fn free_rig() -> Rig {
    Rig::scene(
        &Scene {
            height_m: 0.08,
            ..Scene::default()
        },
        controller_config(),
    )
}

fn stiff_rig() -> Rig {
    Rig::scene(
        &Scene {
            stiffness_n_per_mm: 2.0,
            ..Scene::default()
        },
        controller_config(),
    )
}

/// Cycles from the fault injection until the output is in fault stop; afterwards the command
/// never moves into the patient and does not move at all during the dwell.
fn fault_reaction(fault: FtFault, expect: SafetyEventKind) -> usize {
    let mut rig = stiff_rig();
    let pose = settle_in_contact(&mut rig, 8.0, 0.3);
    rig.world.set_ft_fault(Some(fault));
    let mut detected = None;
    let mut saw_event = false;
    let mut qd_stop = f64::INFINITY;
    let mut q_prev = rig.ctl.q_des().to_vec();
    for i in 1..=400 {
        rig.step(contact_target(&rig, pose, 8.0));
        saw_event |= rig.out.events.contains(expect);
        if detected.is_none() && rig.out.mode == ControlMode::FaultStop {
            detected = Some(i);
        }
        // Joint reference speed this cycle.
        let qd = rig
            .ctl
            .q_des()
            .iter()
            .zip(&q_prev)
            .fold(0.0, |m: f64, (a, b)| m.max((a - b).abs() / DT));
        q_prev.copy_from_slice(rig.ctl.q_des());
        if let Some(d) = detected {
            let z = rig.out.t_base_probe_cmd.rotation.column(2).into_owned();
            assert!(
                rig.out.tip_velocity_cmd_m_s.dot(&z) <= 1e-9,
                "{fault:?}: moves into the patient after the stop"
            );
            // The stop decelerates all joints together, never speeds up (until the back-off,
            // which only moves away from the patient, 10 ms later) and is complete in 10 cycles.
            if i < d + 10 {
                assert!(qd <= qd_stop + 1e-9, "{fault:?}: speeds up during the stop");
                qd_stop = qd;
            }
            if i == d + 9 {
                assert!(
                    qd < 1e-12,
                    "{fault:?}: not stopped after 10 cycles ({qd} rad/s)"
                );
            }
            assert_eq!(rig.out.mode, ControlMode::FaultStop, "{fault:?}: latched");
        }
        assert!(rig.true_force_norm() < 20.0);
    }
    assert!(saw_event, "{fault:?}: no {expect} event");
    detected.expect("no fault stop")
}

#[test]
fn sensor_nan_stops_within_2_cycles() {
    let cycles = fault_reaction(FtFault::Nan, SafetyEventKind::SensorNan);
    println!("NaN: fault stop after {cycles} cycle(s)");
    assert!(cycles <= 2);
}

#[test]
fn sensor_spike_stops_within_2_cycles() {
    let spike = FtFault::Spike {
        force_n: Vector3::new(12.0, 0.0, 0.0),
        torque_nm: Vector3::zeros(),
    };
    let cycles = fault_reaction(spike, SafetyEventKind::SensorJump);
    println!("spike: fault stop after {cycles} cycle(s)");
    assert!(cycles <= 2);
}

#[test]
fn sensor_stale_stops_within_2_cycles_of_staleness() {
    // The sample freezes at injection; it is stale once older than 5 ms.
    let cycles = fault_reaction(FtFault::Stale, SafetyEventKind::SensorStale);
    println!("stale: fault stop after {cycles} cycle(s) (sample stale from cycle 6)");
    assert!(cycles <= 5 + 2 + 1, "{cycles}");
}

#[test]
fn sensor_stuck_stops_after_the_configured_samples() {
    let cycles = fault_reaction(FtFault::Stuck, SafetyEventKind::SensorStuck);
    println!("stuck: fault stop after {cycles} cycle(s)");
    let limit = SafetyConfig::default().ft_stuck_samples as usize;
    assert!(cycles <= limit + 2, "{cycles}");
}

#[test]
fn sensor_saturation_stops_within_2_cycles() {
    // A sensor whose Fz range (10 N) saturates before a 15 N setpoint is reached.
    let scene = Scene {
        stiffness_n_per_mm: 2.0,
        ..Scene::default()
    };
    let mut wc = world_config(&scene);
    wc.sensor = FtSensorParams {
        force_range_n: [80.0, 80.0, 10.0],
        ..FtSensorParams::default()
    };
    let probe = world_above_skin(&scene);
    wc.initial = telecho_sim::InitialPose::Joints(probe.arm().true_q().to_vec());
    let mut rig = Rig::new(
        telecho_sim::SimWorld::new(&wc).unwrap(),
        scene.urdf,
        controller_config(),
    );
    let pose = settle_in_contact(&mut rig, 5.0, 0.2);
    let mut first_saturated = None;
    let mut stopped = None;
    for i in 0..3000 {
        rig.step(contact_target(&rig, pose, 15.0));
        if first_saturated.is_none() && rig.world.observe().ft.saturated {
            first_saturated = Some(i);
        }
        if stopped.is_none() && rig.out.mode == ControlMode::FaultStop {
            stopped = Some(i);
            assert!(rig.out.events.contains(SafetyEventKind::SensorSaturated));
            break;
        }
    }
    let (s, d) = (first_saturated.unwrap(), stopped.unwrap());
    println!(
        "saturation: fault stop {} cycle(s) after the first saturated sample",
        d - s + 1
    );
    assert!(d - s < 2);
}

/// A stiffening of the tissue under the probe (0.5 → 5 N/mm over 100 ms, e.g. a muscle
/// contraction) drives the force through the limit: the retract starts in the cycle that sees the
/// force above the limit and the true force falls back below the limit.
#[test]
fn force_limit_triggers_immediate_retract() {
    let mut rig = Rig::scene(
        &Scene {
            stiffness_n_per_mm: 0.5,
            breathing: Breathing::none(),
            ..Scene::default()
        },
        controller_config(),
    );
    let pose = settle_in_contact(&mut rig, 8.0, 0.3);
    let mut first_over = None;
    let mut retract = None;
    let mut max_true: f64 = 0.0;
    let mut below_again = None;
    for i in 0..1500 {
        if i <= 100 {
            let k = 0.5 + 4.5 * i as f64 / 100.0;
            rig.world
                .set_contact_params(ContactParams {
                    stiffness_n_per_mm: k,
                    ..ContactParams::default()
                })
                .unwrap();
        }
        rig.step(contact_target(&rig, pose, 8.0));
        let measured = rig.out.contact_force_base_n.norm();
        if first_over.is_none() && measured > 20.0 {
            first_over = Some(i);
        }
        if retract.is_none() && rig.out.mode == ControlMode::Retract {
            retract = Some(i);
            assert!(rig.out.events.contains(SafetyEventKind::ForceLimit));
            let z = rig.out.t_base_probe_cmd.rotation.column(2).into_owned();
            assert!(rig.out.tip_velocity_cmd_m_s.dot(&z) < 0.0, "not retracting");
        }
        let f = rig.true_force_norm();
        max_true = max_true.max(f);
        if retract.is_some() && below_again.is_none() && f < 20.0 {
            below_again = Some(i);
        }
    }
    let (o, r) = (first_over.unwrap(), retract.unwrap());
    let b = below_again.unwrap();
    println!(
        "force limit: retract {} cycle(s) after the first measured sample above 20 N; true force \
         max {max_true:.2} N, below 20 N again {} cycles after the retract began",
        r - o + 1,
        b - r
    );
    assert_eq!(r, o, "retract must start in the same cycle");
    // Measured: 22.8 N peak, below the limit 61 ms after the retract began (the tissue keeps
    // stiffening for 100 ms while the probe accelerates away).
    assert!(b - r < 80);
    assert!(max_true < 25.0);
    // Latched: still retracting/holding after the force is gone, until reset.
    assert!(matches!(rig.out.safety, SafetyState::Retract { .. }));
    assert!(rig.true_force_norm() < 0.5);
}

#[test]
fn watchdog_holds_with_force_after_100_ms_and_retracts_after_1_s() {
    let mut rig = stiff_rig();
    settle_in_contact(&mut rig, 8.0, 0.3);
    let start = rig.true_tip();
    let mut hold_at = None;
    let mut retract_at = None;
    for i in 1..=4500 {
        rig.step(None);
        if hold_at.is_none() && rig.out.mode == ControlMode::Hold {
            hold_at = Some(i);
            assert!(rig.out.events.contains(SafetyEventKind::WatchdogHold));
        }
        if retract_at.is_none() && rig.out.mode == ControlMode::Retract {
            retract_at = Some(i);
            assert!(rig.out.events.contains(SafetyEventKind::WatchdogRetract));
        }
        if hold_at.is_some() && retract_at.is_none() && i > 300 {
            // Holding with force regulation.
            assert!(
                (rig.true_axial_force() - 8.0).abs() < 0.5,
                "{}",
                rig.true_axial_force()
            );
        }
    }
    let (h, r) = (hold_at.unwrap(), retract_at.unwrap());
    println!("watchdog: hold after {h} ms, retract after {r} ms");
    assert!((100..=102).contains(&h), "{h}");
    assert!((1000..=1002).contains(&r), "{r}");
    let lift = rig.true_tip().z - start.z;
    assert!(lift > 0.075, "retracted only {lift} m");
    assert!(rig.true_force_norm() < 1e-9);
    assert!(
        matches!(rig.out.safety, SafetyState::Retract { .. }),
        "latched"
    );
}

#[test]
fn workspace_box_clamps_targets_and_motion() {
    let mut config = controller_config();
    let mut rig = Rig::scene(&Scene::default(), config);
    let start = rig.true_tip();
    // A box whose top is 30 mm above the start.
    config.safety.workspace_max_m[2] = start.z + 0.03;
    rig = Rig::new(
        world_above_skin(&Scene::default()),
        "ur5e_probe.urdf",
        config,
    );
    let far = Transform::new(probe_down(), start + Vector3::new(0.0, 0.0, 0.5));
    let mut clamped = false;
    let mut max_z = f64::MIN;
    for _ in 0..4000 {
        let t = rig.time();
        rig.step((t > 0.3).then(|| ProbeTarget::free(t, far)));
        clamped |= rig.out.events.contains(SafetyEventKind::WorkspaceLimit);
        max_z = max_z.max(rig.true_tip().z);
    }
    println!(
        "workspace: highest tip {:.2} mm relative to the box top",
        (max_z - config.safety.workspace_max_m[2]) * 1e3
    );
    assert!(clamped);
    assert!(max_z <= config.safety.workspace_max_m[2] + 1e-3);
    assert!(
        max_z > config.safety.workspace_max_m[2] - 2e-3,
        "should reach the wall"
    );
}

#[test]
fn cartesian_speed_limits_in_free_space_and_in_contact() {
    // Free space: a target 0.3 m away.
    let mut rig = free_rig();
    let start = rig.true_tip();
    let far = Transform::new(probe_down(), start + Vector3::new(0.0, 0.3, 0.05));
    let mut vmax: f64 = 0.0;
    for _ in 0..5000 {
        let t = rig.time();
        rig.step((t > 0.3).then(|| ProbeTarget::free(t, far)));
        vmax = vmax.max(rig.out.tip_speed_m_s);
    }
    let limit = SafetyConfig::default().free_speed_limit_m_s;
    println!(
        "free: measured tip speed max {:.1} mm/s (limit {:.0})",
        vmax * 1e3,
        limit * 1e3
    );
    assert!(vmax <= limit * 1.05 + 2e-3);

    // Contact: the target jumps 100 mm along the skin.
    let mut rig = stiff_rig();
    let pose = settle_in_contact(&mut rig, 8.0, 0.3);
    let mut jumped = pose;
    jumped.translation.y += 0.1;
    let mut vmax: f64 = 0.0;
    let mut fmax: f64 = 0.0;
    for _ in 0..4000 {
        rig.step(contact_target(&rig, jumped, 8.0));
        vmax = vmax.max(rig.out.tip_speed_m_s);
        fmax = fmax.max(rig.true_force_norm());
    }
    let limit = SafetyConfig::default().contact_speed_limit_m_s;
    println!(
        "contact: measured tip speed max {:.1} mm/s (limit {:.0}), force max {fmax:.2} N",
        vmax * 1e3,
        limit * 1e3
    );
    assert!(vmax <= limit * 1.05 + 2e-3);
    assert!(fmax < 12.0);
}

#[test]
fn joint_limits_are_respected_in_closed_loop() {
    // Narrow the shoulder-pan range to ±0.05 rad around its start and ask for a far lateral move.
    let scene = Scene::default();
    let world = world_above_skin(&scene);
    let q0 = world.arm().true_q()[0];
    let urdf = urdf_text("ur5e_probe.urdf").replacen(
        "lower=\"-6.28318530717959\" upper=\"6.28318530717959\"",
        &format!("lower=\"{}\" upper=\"{}\"", q0 - 0.05, q0 + 0.05),
        1,
    );
    let ctl = telecho_control::ProbeController::from_urdf_str(&urdf, controller_config()).unwrap();
    let (lo, hi) = {
        let (l, h) = ctl.supervisor().joint_position_limits();
        (l[0], h[0])
    };
    let mut rig = Rig::new(world, "ur5e_probe.urdf", controller_config());
    rig.ctl = ctl;
    let start = rig.true_tip();
    let far = Transform::new(probe_down(), start + Vector3::new(0.0, 0.2, 0.0));
    for _ in 0..5000 {
        let t = rig.time();
        rig.step((t > 0.3).then(|| ProbeTarget::free(t, far)));
        let q = rig.world.ground_truth().q_rad[0];
        assert!(
            q >= lo - 1e-3 && q <= hi + 1e-3,
            "pan {q} outside [{lo}, {hi}]"
        );
    }
    println!(
        "joint limit: pan ended at {:.4} in [{lo:.4}, {hi:.4}]",
        rig.world.ground_truth().q_rad[0]
    );
}

#[test]
fn supervisor_joint_velocity_acceleration_and_position_limits() {
    let chain = Chain::from_urdf_str(&urdf_text("ur5e_probe.urdf"), None, "probe_tip").unwrap();
    let mut s = SafetySupervisor::new(SafetyConfig::default(), chain.limits()).unwrap();
    let vmax = s.joint_velocity_limits()[0];
    let q = [0.0; 6];
    // Velocity: scaled.
    s.begin_cycle(0.0);
    let mut qd = [2.0 * vmax, 0.0, 0.0, 0.0, 0.0, 0.0];
    let prev = qd;
    s.limit_joints(&q, &mut qd, &prev, 1e-3);
    assert!((qd[0] - vmax).abs() < 1e-12);
    assert!(s.events().contains(SafetyEventKind::JointVelocityLimit));
    s.end_cycle();
    // Acceleration: a jump from rest is clamped to a·dt.
    s.begin_cycle(0.001);
    let mut qd = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0];
    s.limit_joints(&q, &mut qd, &[0.0; 6], 1e-3);
    assert!((qd[0] - 10.0 * 1e-3).abs() < 1e-12, "{}", qd[0]);
    assert!(s.events().contains(SafetyEventKind::JointAccelerationLimit));
    // The event carries the acceleration asked for (0.5 rad/s in 1 ms) and the limit.
    let e = s
        .events()
        .as_slice()
        .iter()
        .find(|e| e.kind == SafetyEventKind::JointAccelerationLimit)
        .unwrap();
    assert!((e.value - 500.0).abs() < 1e-9 && e.limit == 10.0, "{e:?}");
    s.end_cycle();
    // Position: a joint at its limit cannot move further out.
    s.begin_cycle(0.002);
    let hi = s.joint_position_limits().1.to_vec();
    let mut q = [0.0; 6];
    q[2] = hi[2];
    let mut qd = [0.0, 0.0, 0.01, 0.0, 0.0, 0.0];
    let prev = qd;
    s.limit_joints(&q, &mut qd, &prev, 1e-3);
    assert_eq!(qd[2], 0.0);
    assert!(s.events().contains(SafetyEventKind::JointPositionLimit));
    // The event carries where the joint would have gone and the limit it would have crossed.
    let e = s
        .events()
        .as_slice()
        .iter()
        .find(|e| e.kind == SafetyEventKind::JointPositionLimit)
        .unwrap();
    assert!(
        (e.value - (hi[2] + 1e-5)).abs() < 1e-12 && e.limit == hi[2],
        "{e:?}"
    );
    // Final command check: NaN and out-of-range commands are rejected.
    assert!(!s.check_command(&[f64::NAN, 0.0, 0.0, 0.0, 0.0, 0.0], 0.0));
    assert!(!s.check_command(&[0.0, 0.0, 4.0, 0.0, 0.0, 0.0], 0.0));
    assert!(s.check_command(&[0.0; 6], 0.0));
}

#[test]
fn supervisor_torque_check_retracts() {
    let chain = Chain::from_urdf_str(&urdf_text("ur5e_probe.urdf"), None, "probe_tip").unwrap();
    let q = [0.1, -1.2, 1.4, -1.8, -1.5, 0.3];
    let mut jac = Matrix6xX::zeros(6);
    chain.fk_jacobian(&q, &mut jac).unwrap();
    let mut s = SafetySupervisor::new(SafetyConfig::default(), chain.limits()).unwrap();
    s.begin_cycle(0.0);
    // 15 N is below the force limit; a 3 N·m torque about the tip loads the wrist joints
    // (effort 28 N·m × 0.25 = 7 N·m) moderately — then 30 N·m beyond them.
    assert!(!s.check_wrench(
        &Vector3::new(0.0, 0.0, 15.0),
        &Vector3::new(3.0, 0.0, 0.0),
        &jac
    ));
    assert_eq!(s.state(), SafetyState::Normal);
    assert!(s.check_wrench(
        &Vector3::new(0.0, 0.0, 15.0),
        &Vector3::new(30.0, 0.0, 0.0),
        &jac
    ));
    assert_eq!(
        s.state(),
        SafetyState::Retract {
            cause: SafetyEventKind::TorqueLimit
        }
    );
    assert!(s.events().contains(SafetyEventKind::TorqueLimit));
}

#[test]
fn tracking_error_fault_stops() {
    let mut s = SafetySupervisor::new(SafetyConfig::default(), &[]).unwrap();
    s.begin_cycle(0.0);
    s.check_measured(&[0.0, 0.0], &[0.0, 0.2], 0.0, 0.1);
    assert_eq!(
        s.state(),
        SafetyState::FaultStop {
            cause: SafetyEventKind::TrackingError
        }
    );
}

/// E-stop in contact with a breathing patient on stiff tissue (5 N/mm, 5 mm breathing): frozen,
/// the probe would be pushed far past the 20 N limit by the patient's own breathing (found by
/// `telecho soak`). The supervisor yields above `estop_yield_force_n` — along the measured force,
/// never toward the patient — and otherwise commands nothing. Returns (max |F| over 10 s,
/// largest commanded speed toward the patient, whether it ever yielded).
fn estop_under_breathing(yield_force_n: f64) -> (f64, f64, bool) {
    let config = ControllerConfig {
        safety: SafetyConfig {
            estop_yield_force_n: yield_force_n,
            ..patient_box()
        },
        ..controller_config()
    };
    let mut rig = Rig::scene(
        &Scene {
            stiffness_n_per_mm: 5.0,
            ..Scene::default()
        },
        config,
    );
    let pose = settle_in_contact(&mut rig, 8.0, 1.0);
    rig.estop = true;
    let (mut f_max, mut toward, mut yielded) = (0.0f64, 0.0f64, false);
    let end = rig.time() + 10.0;
    while rig.time() < end {
        rig.step(contact_target(&rig, pose, 8.0));
        assert_eq!(rig.out.mode, ControlMode::EStop);
        f_max = f_max.max(rig.true_force_norm());
        let v = rig.out.tip_velocity_cmd_m_s;
        let f = rig.out.contact_force_base_n;
        if f.norm() > 1.0 {
            // The contact force on the probe points away from the patient.
            toward = toward.max(-v.dot(&f.normalize()));
        }
        yielded |= v.norm() > 0.0;
    }
    (f_max, toward, yielded)
}

#[test]
fn estop_in_contact_yields_to_breathing_instead_of_crushing() {
    let (f_max, toward, yielded) = estop_under_breathing(10.0);
    let (f_frozen, _, yielded_frozen) = estop_under_breathing(20.0);
    println!(
        "e-stop under breathing: |F| max {f_max:.2} N with the 10 N yield, {f_frozen:.2} N \
         yielding only at the 20 N limit; toward the patient {:.3} mm/s",
        toward * 1e3
    );
    assert!(yielded && yielded_frozen);
    // 10 N yield + 2 mm/s per N against breathing at up to ~4.7 mm/s: ~2.4 N above the yield.
    assert!(f_max < 14.0, "|F| reached {f_max} N during the e-stop");
    assert!(
        f_frozen > 20.0,
        "the scenario must load a frozen probe past the limit"
    );
    assert!(toward <= 1e-9, "commanded {toward} m/s toward the patient");
}

#[test]
fn estop_latches_until_released_and_reset() {
    let mut rig = free_rig();
    let start = rig.true_tip();
    let goal = Transform::new(probe_down(), start + Vector3::new(0.0, 0.1, 0.0));
    let free = |rig: &Rig| Some(ProbeTarget::free(rig.time(), goal));
    for _ in 0..600 {
        let t = free(&rig);
        rig.step(t);
    }
    assert_eq!(rig.out.mode, ControlMode::Free);
    rig.estop = true;
    let t = free(&rig);
    rig.step(t);
    assert_eq!(rig.out.mode, ControlMode::EStop, "same cycle");
    assert!(rig.out.events.contains(SafetyEventKind::EStop));
    // The stop ramp (joints decelerating together at the acceleration limit) ends in 50 ms.
    for _ in 0..50 {
        let t = free(&rig);
        rig.step(t);
    }
    let held = rig.out.q_cmd_rad.clone();
    rig.estop = false;
    for _ in 0..200 {
        let t = free(&rig);
        rig.step(t);
        assert_eq!(rig.out.mode, ControlMode::EStop, "latched after release");
        assert_eq!(rig.out.q_cmd_rad, held);
    }
    // Reset with the e-stop pressed does nothing.
    rig.estop = true;
    rig.reset = true;
    rig.step(None);
    assert_eq!(rig.out.mode, ControlMode::EStop);
    rig.estop = false;
    rig.step(None);
    rig.reset = false;
    assert!(rig.out.events.contains(SafetyEventKind::Reset));
    assert_eq!(rig.out.safety, SafetyState::Normal);
    assert_eq!(rig.out.mode, ControlMode::Idle, "waits for a fresh target");
    for _ in 0..3000 {
        let t = free(&rig);
        rig.step(t);
    }
    assert_eq!(rig.out.mode, ControlMode::Free);
    assert!((rig.true_tip() - goal.translation).norm() < 2e-3);
}

#[test]
fn invalid_targets_are_refused_and_motion_continues() {
    let mut rig = free_rig();
    let start = rig.true_tip();
    let goal = Transform::new(probe_down(), start + Vector3::new(0.0, 0.02, 0.0));
    for i in 0..3000 {
        let t = rig.time();
        let target = if t < 0.3 {
            None
        } else if i % 10 == 0 {
            let mut bad = ProbeTarget::contact(t, goal, f64::NAN);
            if i % 20 == 0 {
                bad = ProbeTarget::free(t, goal);
                bad.t_base_probe.rotation[(0, 0)] = 2.0;
            }
            Some(bad)
        } else {
            Some(ProbeTarget::free(t, goal))
        };
        rig.step(target);
        if i == 1000 {
            assert!(rig.out.events.contains(SafetyEventKind::InvalidTarget));
        }
    }
    assert_eq!(rig.out.mode, ControlMode::Free);
    assert!((rig.true_tip() - goal.translation).norm() < 2e-3);
}

#[test]
fn tare_in_contact_is_refused() {
    // Start 4 mm inside the patient: the tare sees the contact force and refuses.
    let mut rig = Rig::scene(
        &Scene {
            height_m: -0.004,
            breathing: Breathing::none(),
            stiffness_n_per_mm: 5.0,
            ..Scene::default()
        },
        ControllerConfig {
            safety: SafetyConfig {
                fault_backoff_m: 0.0,
                ..patient_box()
            },
            ..controller_config()
        },
    );
    let mut refused = false;
    for _ in 0..400 {
        rig.step(None);
        refused |= rig.out.events.contains(SafetyEventKind::TareRejected);
    }
    assert!(refused);
    assert_eq!(rig.out.mode, ControlMode::FaultStop);
}

#[test]
fn ft_sample_helpers() {
    let s = FtSample::zero(1.0);
    assert!(s.is_finite());
}
