//! Closed-loop force control against the simulator.

mod common;

use common::*;
use nalgebra::Vector3;
use telecho_control::{CommandInterface, ContactPhase, ControllerConfig, ProbeTarget};
use telecho_core::Transform;

struct Report {
    hold: ForceStats,
    sweep: ForceStats,
    lateral_max_m: f64,
    ramp_over: f64,
    stiffness_est: f64,
}

fn contact_run(scene: &Scene, sweep_speed: f64, dir: Vector3<f64>, offset: f64) -> Report {
    contact_run_with(scene, sweep_speed, dir, offset, controller_config())
}

fn contact_run_with(
    scene: &Scene,
    sweep_speed: f64,
    dir: Vector3<f64>,
    offset: f64,
    config: ControllerConfig,
) -> Report {
    let mut rig = Rig::scene(scene, config);
    let mut skin = nominal_skin_over_l3(&rig.world) - dir * offset;
    let rot = probe_down();
    let f_set = 8.0;
    let mut hold = ForceStats::default();
    let mut sweep = ForceStats::default();
    let mut lateral_max: f64 = 0.0;
    let mut ramp_over: f64 = 0.0;
    let mut t_reg: Option<f64> = None;
    let y = dir;
    let length = 0.06;
    while rig.time() < 25.0 {
        let t = rig.time();
        let target = if t < 0.3 {
            None
        } else {
            let (p, v) = match t_reg {
                Some(t0) if t > t0 + 2.5 => {
                    let s = ((t - t0 - 2.5) * sweep_speed).min(length);
                    let v = if s < length {
                        y * sweep_speed
                    } else {
                        Vector3::zeros()
                    };
                    (skin + y * s, v)
                }
                _ => (skin, Vector3::zeros()),
            };
            let mut tg = ProbeTarget::contact(t, Transform::new(rot, p), f_set);
            tg.velocity_m_s = v;
            Some(tg)
        };
        rig.step(target);
        let out = &rig.out;
        if t_reg.is_none() && out.contact_phase == ContactPhase::Regulate {
            t_reg = Some(t);
            // Anchor the sweep at the measured contact point (what an operator or the executor
            // does), not at the nominal skin height.
            skin = out.t_base_probe.translation;
        }
        let f = rig.true_axial_force();
        if matches!(out.contact_phase, ContactPhase::Ramp) || t_reg.is_some_and(|t0| t < t0 + 0.5) {
            ramp_over = ramp_over.max(f - f_set);
        }
        if let Some(t0) = t_reg {
            if t > t0 + 0.5 && t < t0 + 2.5 {
                hold.add(f, f_set);
            }
            let ts = t0 + 2.5;
            if t > ts && t < ts + length / sweep_speed + 0.5 {
                sweep.add(f, f_set);
                let tip = rig.true_tip();
                let d = tip - skin;
                let lat = (d - y * d.dot(&y)).xy().norm();
                lateral_max = lateral_max.max(lat);
            }
            if t > ts + length / sweep_speed + 0.6 {
                break;
            }
        }
    }
    assert!(t_reg.is_some(), "never reached regulation");
    Report {
        hold,
        sweep,
        lateral_max_m: lateral_max,
        ramp_over,
        stiffness_est: rig.out.stiffness_n_per_m,
    }
}

fn print(name: &str, k: f64, r: &Report) {
    println!(
        "{name:22} k {k} N/mm: hold rms {:.3} over {:.3} | sweep rms {:.3} over {:.3} under {:.3} \
         max {:.2} N | lateral {:.2} mm | ramp over {:.3} | K_est {:.0} N/m",
        r.hold.rms(),
        r.hold.max_over,
        r.sweep.rms(),
        r.sweep.max_over,
        r.sweep.max_under,
        r.sweep.max_force,
        r.lateral_max_m * 1e3,
        r.ramp_over,
        r.stiffness_est
    );
}

/// Issue 4 targets at 8 N during 20 mm/s sweeps: RMS ≤ 0.3 N, overshoot ≤ 2 N. Asserted with a
/// 2× (RMS) and 3× (overshoot) margin against the simulator's true contact force.
fn assert_targets(name: &str, r: &Report) {
    assert!(r.hold.rms() < 0.15, "{name}: hold RMS {}", r.hold.rms());
    assert!(r.sweep.rms() < 0.15, "{name}: sweep RMS {}", r.sweep.rms());
    assert!(
        r.sweep.max_over < 0.7,
        "{name}: sweep overshoot {}",
        r.sweep.max_over
    );
    assert!(r.ramp_over < 1.0, "{name}: ramp overshoot {}", r.ramp_over);
    assert!(
        r.sweep.max_force < 10.0,
        "{name}: max force {}",
        r.sweep.max_force
    );
    assert!(
        r.lateral_max_m < 1.5e-3,
        "{name}: lateral error {}",
        r.lateral_max_m
    );
}

/// UR5e, breathing 5 mm p-p at 0.3 Hz (the worst of the range), stiffness 0.5, 2 and
/// 5 N/mm: hold 2 s at 8 N, then a 60 mm cranial sweep at 20 mm/s.
#[test]
fn contact_8n_ur5e_over_stiffness_with_breathing() {
    for k in [0.5, 2.0, 5.0] {
        let scene = Scene {
            stiffness_n_per_mm: k,
            ..Scene::default()
        };
        let r = contact_run(&scene, 0.02, Vector3::y(), 0.0);
        print("ur5e cranial", k, &r);
        assert_targets("ur5e cranial", &r);
    }
}

/// A transverse 60 mm sweep across the midline groove (the largest skin curvature), on a patient
/// placed with the seeded ±50 mm / ±20° / ±2° error (the probe starts 70 mm above the nominal
/// skin and searches for contact).
#[test]
fn transverse_sweep_across_groove_on_perturbed_patient() {
    for (k, seed) in [(0.5, 3), (2.0, 4), (5.0, 5)] {
        let scene = Scene {
            stiffness_n_per_mm: k,
            exact_placement: false,
            height_m: 0.07,
            seed,
            phantom_seed: seed,
            ..Scene::default()
        };
        let r = contact_run(&scene, 0.02, Vector3::x(), 0.03);
        print("ur5e transverse", k, &r);
        assert_targets("ur5e transverse", &r);
    }
}

/// The 7-DoF Panda (redundant: null-space drift to mid-range) under the same conditions.
#[test]
fn contact_8n_panda_with_breathing() {
    for k in [0.5, 5.0] {
        let scene = Scene {
            urdf: "panda_probe.urdf",
            stiffness_n_per_mm: k,
            ..Scene::default()
        };
        let r = contact_run(&scene, 0.02, Vector3::y(), 0.0);
        print("panda cranial", k, &r);
        assert_targets("panda cranial", &r);
    }
}

/// Position commands with and without servo-lag compensation, velocity commands, and a higher
/// crossover, at 5 N/mm: all meet the targets; see the README for the discussion.
#[test]
fn command_interface_comparison() {
    let scene = Scene {
        stiffness_n_per_mm: 5.0,
        ..Scene::default()
    };
    for (name, cfg) in [
        ("position+lead", controller_config()),
        (
            "position",
            ControllerConfig {
                lag_compensation: false,
                ..controller_config()
            },
        ),
        (
            "velocity",
            ControllerConfig {
                interface: CommandInterface::Velocity,
                ..controller_config()
            },
        ),
        (
            "position+lead wc90",
            ControllerConfig {
                force_bandwidth_rad_s: 90.0,
                ..controller_config()
            },
        ),
        (
            "position wc90",
            ControllerConfig {
                force_bandwidth_rad_s: 90.0,
                lag_compensation: false,
                ..controller_config()
            },
        ),
    ] {
        let r = contact_run_with(&scene, 0.02, Vector3::y(), 0.0, cfg);
        println!(
            "{name:20} hold rms {:.3} over {:.3} | sweep rms {:.3} over {:.3} under {:.3}",
            r.hold.rms(),
            r.hold.max_over,
            r.sweep.rms(),
            r.sweep.max_over,
            r.sweep.max_under
        );
    }
}
