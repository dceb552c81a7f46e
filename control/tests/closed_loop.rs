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

/// A 150 mm sagittal sweep along the lumbar lordosis (the skin normal turns through ~40° from L5
/// to L1) with breathing: the probe axis follows the skin normal and the contact force stays at
/// the setpoint. Before the slip direction included the slope along the sweep, the tilt along
/// the sweep was unobservable and the force grew to 15–20 N near L1.
#[test]
fn sagittal_sweep_follows_the_lordosis() {
    use telecho_sim::contact::skin_point;
    let scene = Scene {
        stiffness_n_per_mm: 2.0,
        height_m: 0.03,
        ..Scene::default()
    };
    let mut rig = Rig::scene(&scene, controller_config());
    let t_ct_base = rig.world.ground_truth().t_base_ct.inverse();
    let cranial = Vector3::y();
    let start = nominal_skin_over_l3(&rig.world) - cranial * 0.07;
    let (speed, length, f_set) = (0.02, 0.15, 8.0);
    let mut anchor = start;
    let mut t_reg: Option<f64> = None;
    let (mut worst_deg, mut normal_turn_deg, mut max_force): (f64, f64, f64) = (0.0, 0.0, 0.0);
    let mut first_normal: Option<Vector3<f64>> = None;
    let mut sweep = ForceStats::default();
    while rig.time() < 30.0 {
        let t = rig.time();
        let (p, v) = match t_reg {
            Some(t0) if t > t0 + 1.0 => {
                let s = ((t - t0 - 1.0) * speed).min(length);
                let v = if s < length {
                    cranial * speed
                } else {
                    Vector3::zeros()
                };
                (anchor + cranial * s, v)
            }
            _ => (anchor, Vector3::zeros()),
        };
        let mut tg = ProbeTarget::contact(t, Transform::new(probe_down(), p), f_set);
        tg.velocity_m_s = v;
        rig.step(Some(tg));
        if t_reg.is_none() && rig.out.contact_phase == ContactPhase::Regulate {
            t_reg = Some(t);
            anchor = rig.out.t_base_probe.translation;
        }
        let Some(t0) = t_reg else { continue };
        if t > t0 + 1.0 + length / speed + 0.5 {
            break;
        }
        if t < t0 + 1.5 {
            continue;
        }
        // The true skin normal under the tip, in the base frame (no breathing: tilt only).
        let gt = rig.world.ground_truth();
        let tip_ct = t_ct_base.transform_point(&gt.t_base_probe.translation);
        let sp = skin_point(rig.world.phantom(), &tip_ct);
        let n_base = -(t_ct_base.rotation.transpose() * sp.normal_out);
        let axis = gt.t_base_probe.rotation.column(2).into_owned();
        let deg = axis.dot(&n_base).clamp(-1.0, 1.0).acos().to_degrees();
        worst_deg = worst_deg.max(deg);
        let n0 = *first_normal.get_or_insert(n_base);
        normal_turn_deg = normal_turn_deg.max(n0.dot(&n_base).clamp(-1.0, 1.0).acos().to_degrees());
        max_force = max_force.max(rig.true_force_norm());
        sweep.add(rig.true_axial_force(), f_set);
    }
    println!(
        "lordosis sweep: skin normal turned {normal_turn_deg:.1}°, probe axis within \
         {worst_deg:.1}° of it, |F| max {max_force:.2} N, axial rms {:.3} N",
        sweep.rms()
    );
    assert!(t_reg.is_some(), "never reached regulation");
    assert!(
        normal_turn_deg > 25.0,
        "the sweep must cross the lordosis: {normal_turn_deg}"
    );
    // Breathing (5 mm peak to peak at 0.3 Hz, the worst of the range) moves the skin along the
    // probe axis at up to a quarter of the sweep speed; what is left of it after the slope filter
    // rocks the probe by up to ~13°.
    assert!(
        worst_deg < 15.0,
        "probe axis {worst_deg}° off the skin normal"
    );
    assert!(max_force < 10.0, "contact force {max_force} N");
    assert!(sweep.rms() < 0.3, "axial force rms {}", sweep.rms());
}

/// A contact target whose probe axis points *out* of the patient (an operator's orientation
/// error, found by `telecho soak`: the skin frame's outward normal taken as the probe axis). The
/// probe turns sideways on its way and trips the force limit; the retract must go away from the
/// patient — along the measured contact force — not "back along the probe axis", which for such
/// a probe points along or into the skin.
#[test]
fn force_limit_retract_moves_away_from_the_patient_whatever_the_probe_orientation() {
    let scene = Scene {
        height_m: 0.1,
        ..Scene::default()
    };
    let mut rig = Rig::scene(&scene, controller_config());
    let skin = nominal_skin_over_l3(&rig.world) - Vector3::y() * 0.065;
    // Columns: array cranial, then the axis pointing up (out of the back).
    let up = Vector3::z();
    let x = Vector3::y();
    let wrong = nalgebra::Matrix3::from_columns(&[x, up.cross(&x), up]);
    let mut limit_at = None;
    let mut f_max: f64 = 0.0;
    while rig.time() < 12.0 {
        let t = rig.time();
        let tg = ProbeTarget::contact(t, Transform::new(wrong, skin), 8.0);
        rig.step(Some(tg));
        let f = rig.true_force_norm();
        f_max = f_max.max(f);
        if limit_at.is_none()
            && rig
                .out
                .events
                .as_slice()
                .iter()
                .any(|e| e.kind == telecho_control::SafetyEventKind::ForceLimit)
        {
            limit_at = Some(t);
        }
        if let Some(t0) = limit_at {
            if t > t0 + 1.0 {
                break;
            }
        }
    }
    let final_force = rig.true_force_norm();
    println!(
        "inverted probe: force limit at {limit_at:?} s, |F| max {f_max:.2} N, {final_force:.2} N \
         1 s after the retract began"
    );
    // The probe, turned sideways, pushes the skin at ~26 mm/s when the limit trips; the retract
    // needs ~45 ms to reverse that (servo lag, acceleration limit), so the force overshoots the
    // limit by a few newtons — then the skin is unloaded. Retracting along the probe axis left
    // it pressed at 18.5 N (and in the soak run, with the axis pointing up, drove it to 60 N).
    assert!(limit_at.is_some(), "the scenario must trip the force limit");
    assert!(f_max < 26.0, "contact force reached {f_max} N");
    assert!(
        final_force < 1.0,
        "still pressing {final_force} N after the retract"
    );
}
