//! Property test: random command streams (valid, NaN, huge, out-of-box, inside the patient,
//! random gaps) and injected faults (F/T NaN/stale/stuck/spike, sudden stiffness change, contact
//! loss) never produce, in the simulator's truth, motion outside the workspace box, tip speed
//! above the limits, or a contact force above the limit.
//!
//! Tolerances (documented in docs/SAFETY.md): box +1 mm (servo transients), speed +5 % + 3 mm/s
//! (servo transients; "in contact" = true contact force above 1 N, and the in-contact limit
//! applies 100 ms after the first touch: touch detection at
//! 0.5 N takes up to ~20 ms on 0.5 N/mm tissue at 100 mm/s, then the deceleration), force +2 N (reaction time of the force-limit retract under a
//! stiffening that itself drives the force up).

mod common;

use common::*;
use nalgebra::Vector3;
use proptest::prelude::*;
use telecho_control::{OrientationMode, ProbeTarget, SafetyConfig};
use telecho_core::Transform;
use telecho_sim::{Breathing, ContactParams, FtFault};

#[derive(Clone, Debug)]
enum Cmd {
    Contact {
        offset: [f64; 3],
        force_n: f64,
        tilt: f64,
        commanded: bool,
    },
    Free {
        offset: [f64; 3],
        tilt: f64,
    },
    Huge,
    Nan,
    Gap,
}

#[derive(Clone, Debug)]
enum Fault {
    None,
    Nan,
    Stale,
    Stuck,
    Spike(f64),
    Stiffness(f64),
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let offset = (-0.04f64..0.04, -0.04f64..0.04, -0.03f64..0.03).prop_map(|(a, b, c)| [a, b, c]);
    let free_offset =
        (-0.06f64..0.06, -0.06f64..0.06, -0.02f64..0.10).prop_map(|(a, b, c)| [a, b, c]);
    let force = prop_oneof![
        8 => 1.0f64..20.0,
        1 => Just(f64::NAN),
        1 => Just(50.0),
        1 => Just(-3.0),
    ];
    prop_oneof![
        5 => (offset, force, -0.3f64..0.3, any::<bool>()).prop_map(|(offset, force_n, tilt, commanded)| {
            Cmd::Contact { offset, force_n, tilt, commanded }
        }),
        2 => (free_offset, -0.3f64..0.3).prop_map(|(offset, tilt)| Cmd::Free { offset, tilt }),
        1 => Just(Cmd::Huge),
        1 => Just(Cmd::Nan),
        1 => Just(Cmd::Gap),
    ]
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => Just(Fault::None),
        1 => Just(Fault::Nan),
        1 => Just(Fault::Stale),
        1 => Just(Fault::Stuck),
        1 => (-30.0f64..30.0).prop_map(Fault::Spike),
        2 => (0.5f64..2.0).prop_map(Fault::Stiffness),
    ]
}

fn target(cmd: &Cmd, t: f64, skin: &Vector3<f64>) -> Option<ProbeTarget> {
    let rot = |tilt: f64| probe_down() * telecho_core::rotation_from_rpy(tilt, 0.5 * tilt, 0.0);
    match cmd {
        Cmd::Contact {
            offset,
            force_n,
            tilt,
            commanded,
        } => {
            let mut tg = ProbeTarget::contact(
                t,
                Transform::new(rot(*tilt), skin + Vector3::from(*offset)),
                *force_n,
            );
            if *commanded {
                tg.orientation = OrientationMode::Commanded;
            }
            Some(tg)
        }
        Cmd::Free { offset, tilt } => Some(ProbeTarget::free(
            t,
            Transform::new(rot(*tilt), skin + Vector3::from(*offset)),
        )),
        Cmd::Huge => Some(ProbeTarget::free(
            t,
            Transform::new(probe_down(), Vector3::new(5.0, -5.0, 5.0)),
        )),
        Cmd::Nan => Some(ProbeTarget::free(
            t,
            Transform::new(probe_down(), Vector3::new(f64::NAN, 0.0, 0.0)),
        )),
        Cmd::Gap => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_and_faults_stay_safe(
        stiffness in 0.5f64..5.0,
        amplitude in 0.002f64..0.005,
        frequency in 0.2f64..0.3,
        seed in 0u64..1000,
        segments in proptest::collection::vec((cmd(), 50u32..600), 3..8),
        fault in fault(),
        fault_at_ms in 500u32..2500,
    ) {
        let scene = Scene {
            stiffness_n_per_mm: stiffness,
            breathing: Breathing::new(amplitude, frequency).unwrap(),
            seed,
            ..Scene::default()
        };
        let config = controller_config();
        let limits: SafetyConfig = config.safety;
        let mut rig = Rig::scene(&scene, config);
        let skin = nominal_skin_over_l3(&rig.world);
        let mut seg = 0;
        let mut seg_end = 0.3 + segments[0].1 as f64 * 1e-3;
        let mut prev_tip = rig.true_tip();
        let mut contact_since: Option<f64> = None;
        let mut worst_force: f64 = 0.0;
        while rig.time() < 3.0 {
            let t = rig.time();
            if t > seg_end && seg + 1 < segments.len() {
                seg += 1;
                seg_end = t + segments[seg].1 as f64 * 1e-3;
            }
            let ms = (t * 1000.0).round() as u32;
            if ms == fault_at_ms {
                match fault {
                    Fault::None | Fault::Stiffness(_) => {}
                    Fault::Nan => rig.world.set_ft_fault(Some(FtFault::Nan)),
                    Fault::Stale => rig.world.set_ft_fault(Some(FtFault::Stale)),
                    Fault::Stuck => rig.world.set_ft_fault(Some(FtFault::Stuck)),
                    Fault::Spike(f) => rig.world.set_ft_fault(Some(FtFault::Spike {
                        force_n: Vector3::new(0.0, 0.0, f),
                        torque_nm: Vector3::zeros(),
                    })),
                }
            }
            if let Fault::Stiffness(factor) = fault {
                // A change over 200 ms (tissue does not stiffen instantly).
                if ms >= fault_at_ms && ms <= fault_at_ms + 200 {
                    let s = (ms - fault_at_ms) as f64 / 200.0;
                    let k = (stiffness * (1.0 + (factor - 1.0) * s)).clamp(0.5, 5.0);
                    rig.world.set_contact_params(ContactParams {
                        stiffness_n_per_mm: k,
                        ..ContactParams::default()
                    }).unwrap();
                }
            }
            let tg = if t < 0.3 { None } else { target(&segments[seg].0, t, &skin) };
            rig.step(tg);
            prop_assert!(rig.out.q_cmd_rad.iter().all(|v| v.is_finite()));
            let gt = rig.world.ground_truth();
            let tip = gt.t_base_probe.translation;
            prop_assert!(limits.in_workspace(&tip, 1e-3), "tip {:?} outside the box", tip);
            let speed = (tip - prev_tip).norm() / DT;
            prev_tip = tip;
            prop_assert!(speed <= limits.free_speed_limit_m_s * 1.05 + 3e-3, "speed {}", speed);
            // In contact = a true contact force above 1 N (the controller detects touch at
            // 0.5 N filtered axial or 1 N raw; lifting off soft skin below that is free motion).
            if gt.contact_force_base_n.norm() > 1.0 {
                let since = *contact_since.get_or_insert(t);
                if t - since > 0.1 {
                    prop_assert!(
                        speed <= limits.contact_speed_limit_m_s * 1.05 + 3e-3,
                        "contact speed {} at {}", speed, t
                    );
                }
            } else {
                contact_since = None;
            }
            let f = gt.contact_force_base_n.norm();
            worst_force = worst_force.max(f);
            prop_assert!(f <= limits.force_limit_n + 2.0, "force {} at {} (mode {:?})", f, t, rig.out.mode);
        }
    }
}
