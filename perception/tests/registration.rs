//! US↔CBCT registration on synthetic sweeps with a known answer.
//!
//! The CBCT is the simulator's (a seeded lumbar phantom voxelised with CBCT noise and cupping,
//! 0.8 mm voxels). The "ultrasound" is what a probe on the back sees, made exactly: rays from the
//! skin along the beam to the first bone hit of the phantom's analytic geometry (sphere tracing
//! its signed distance), grouped into frames along sagittal and transverse sweeps, placed in the
//! robot base by a known `t_base_ct` drawn within ±50 mm / ±20° of the nominal placement, with
//! Gaussian depth noise, outliers (soft-tissue echoes) and breathing. TRE is measured at the
//! phantom's 40 landmarks.

use std::sync::OnceLock;

use nalgebra::{Matrix3, Vector3};
use telecho_core::{rotation_from_rpy, Transform};
use telecho_perception::compound::{BoneSample, Compounded, UsedFrame};
use telecho_perception::registration::{
    register, register_from, register_sweep, CtModel, RefusalKind, RegistrationParams,
};
use telecho_perception::volume::Volume;
use telecho_sim::{simulate_cbct, CbctParams, Phantom};

const SEED: u64 = 11;
/// Deepest bone the synthetic beam reaches below the skin (m): seed 11 is a thick patient whose
/// laminae lie 85 mm deep.
const MAX_DEPTH_M: f64 = 0.10;

struct Patient {
    phantom: Phantom,
    model: CtModel,
}

fn patient() -> &'static Patient {
    static P: OnceLock<Patient> = OnceLock::new();
    P.get_or_init(|| {
        let phantom = Phantom::generate(SEED);
        let ct = simulate_cbct(&phantom, &CbctParams::default(), SEED).unwrap();
        let model = CtModel::from_volume(&ct).unwrap();
        Patient { phantom, model }
    })
}

/// Deterministic xorshift generator: uniform in [0, 1) and standard normal.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn nominal() -> Transform {
    let r = Matrix3::new(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0);
    Transform::new(r, Vector3::new(0.45, 0.0, -0.15))
}

/// A placement within ±50 mm, ±20° yaw and ±2° tilt of the nominal one.
fn placement(rng: &mut Rng) -> Transform {
    let mut u = |m: f64| (2.0 * rng.uniform() - 1.0) * m;
    let dp = Vector3::new(u(0.05), u(0.05), u(0.05));
    let r = rotation_from_rpy(
        u(2f64.to_radians()),
        u(2f64.to_radians()),
        u(20f64.to_radians()),
    );
    let n = nominal();
    Transform::new(r * n.rotation, n.translation + dp)
}

/// First bone hit along +y (the beam) from the skin above (x, z), ct metres.
fn first_hit(ph: &Phantom, x: f64, z: f64) -> Option<Vector3<f64>> {
    let mut p = Vector3::new(x, ph.skin_y(x, z), z);
    for _ in 0..400 {
        let d = ph.bone_sdf(&p);
        if d < 2e-5 {
            return Some(p);
        }
        p.y += d.max(5e-5);
        if p.y - ph.skin_y(x, z) > MAX_DEPTH_M {
            return None;
        }
    }
    None
}

/// Straight sweep lines in ct (x, z) from `a` to `b`.
struct Line {
    a: [f64; 2],
    b: [f64; 2],
}

struct Synthetic {
    noise_m: f64,
    outliers: f64,
    breathing_m: f64,
    breathing_hz: f64,
    /// Rays per frame and ray spacing along the line.
    rays_per_frame: usize,
    spacing_m: f64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Self {
            noise_m: 0.2e-3,
            outliers: 0.05,
            breathing_m: 3e-3,
            breathing_hz: 0.25,
            rays_per_frame: 24,
            spacing_m: 0.6e-3,
        }
    }
}

/// The sweep protocol over the whole lumbar spine: three sagittal lines and one transverse line
/// per level.
fn full_protocol(ph: &Phantom) -> Vec<Line> {
    let mut lines = vec![
        Line {
            a: [0.0, -0.09],
            b: [0.0, 0.09],
        },
        Line {
            a: [0.018, -0.09],
            b: [0.018, 0.09],
        },
        Line {
            a: [-0.018, -0.09],
            b: [-0.018, 0.09],
        },
    ];
    for level in 0..5 {
        let z = ph.t_ct_vertebra(level).unwrap().translation.z;
        lines.push(Line {
            a: [-0.045, z],
            b: [0.045, z],
        });
    }
    lines
}

/// Compounded-sweep input made from `lines` (see the module documentation).
fn synthesise(
    ph: &Phantom,
    lines: &[Line],
    t_base_ct: &Transform,
    s: &Synthetic,
    seed: u64,
) -> Compounded {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let beam = t_base_ct.rotation * Vector3::y();
    let lateral = t_base_ct.rotation * Vector3::x();
    let mut out = Compounded {
        detector: "synthetic",
        ..Compounded::default()
    };
    let mut time = 0.0;
    for (sweep_index, line) in lines.iter().enumerate() {
        let len = ((line.b[0] - line.a[0]).hypot(line.b[1] - line.a[1])).max(1e-9);
        let n = (len / s.spacing_m) as usize;
        for chunk_start in (0..n).step_by(s.rays_per_frame) {
            let frame = out.frames.len() as u32;
            // Posterior breathing displacement of this frame.
            let b = 0.5
                * s.breathing_m
                * (1.0 - (2.0 * std::f64::consts::PI * s.breathing_hz * time).cos());
            let t_now =
                *t_base_ct * Transform::new(Matrix3::identity(), Vector3::new(0.0, -b, 0.0));
            let mut kept = 0;
            for k in chunk_start..(chunk_start + s.rays_per_frame).min(n) {
                let f = k as f64 / n as f64;
                let x = line.a[0] + f * (line.b[0] - line.a[0]);
                let z = line.a[1] + f * (line.b[1] - line.a[1]);
                let hit = if rng.uniform() < s.outliers {
                    // A soft-tissue echo: anywhere within 25 mm of the skin.
                    Some(Vector3::new(x, ph.skin_y(x, z) + 0.025 * rng.uniform(), z))
                } else {
                    first_hit(ph, x, z)
                        .map(|p| p + Vector3::new(0.0, s.noise_m * rng.normal(), 0.0))
                };
                if let Some(p) = hit {
                    out.samples.push(BoneSample {
                        xyz: t_now.transform_point(&p),
                        frame,
                        confidence: 0.8,
                    });
                    kept += 1;
                }
            }
            let origin = t_now.transform_point(&Vector3::new(
                line.a[0],
                ph.skin_y(line.a[0], line.a[1]),
                line.a[1],
            ));
            out.frames.push(UsedFrame {
                index: frame as usize,
                time_s: time,
                sweep_index,
                beam,
                lateral,
                origin,
                bone_columns: kept,
            });
            time += 0.4;
        }
    }
    out.frames_in_sweep = out.frames.len();
    out
}

/// TRE (mm) of `estimate` at the phantom's landmarks: (median, max).
fn tre(ph: &Phantom, truth: &Transform, estimate: &Transform) -> (f64, f64) {
    let mut e: Vec<f64> = ph
        .landmarks()
        .iter()
        .map(|l| {
            let x = Vector3::from(l.xyz);
            (truth.transform_point(&x) - estimate.transform_point(&x)).norm() * 1e3
        })
        .collect();
    e.sort_by(f64::total_cmp);
    (e[e.len() / 2], e[e.len() - 1])
}

#[test]
fn ct_model_has_levels_and_landmarks() {
    let p = patient();
    assert_eq!(p.model.level_names(), ["L1", "L2", "L3", "L4", "L5"]);
    assert_eq!(p.model.landmarks().len(), 40);
    assert!(p.model.len() > 5000, "{} surface points", p.model.len());
    let pitch_mm = p.model.pitch_m() * 1e3;
    assert!((30.0..42.0).contains(&pitch_mm), "pitch {pitch_mm} mm");
}

#[test]
fn registers_random_placements_without_initial_guess() {
    let p = patient();
    let lines = full_protocol(&p.phantom);
    let mut rng = Rng(7);
    let mut worst: f64 = 0.0;
    for trial in 0..3 {
        let truth = placement(&mut rng);
        let us = synthesise(&p.phantom, &lines, &truth, &Synthetic::default(), trial);
        let reg = register(&p.model, &us, &RegistrationParams::default()).unwrap();
        let (median, max) = tre(&p.phantom, &truth, &reg.t_base_ct);
        eprintln!(
            "trial {trial}: TRE median {median:.3} mm, max {max:.3} mm, RMSE {:.3} mm, \
             uncertainty {:.3} mm, ambiguity {:.3}, breathing {:?}",
            reg.rmse_mm, reg.uncertainty_mm, reg.level_ambiguity, reg.breathing
        );
        assert!(median < 0.5, "trial {trial}: TRE median {median} mm");
        assert!(max < 1.0, "trial {trial}: TRE max {max} mm");
        assert_eq!(reg.levels_seen, 5);
        assert!(reg.level_ambiguity < 0.5, "{}", reg.level_ambiguity);
        let b = reg.breathing.unwrap();
        assert!(b.applied && (b.amplitude_mm - 3.0).abs() < 0.5, "{b:?}");
        assert!((b.frequency_hz - 0.25).abs() < 0.01, "{b:?}");
        assert_eq!(reg.landmarks.len(), 40);
        // The reported uncertainty is of the order of the error, not orders off.
        assert!(reg.uncertainty_mm > 0.05 && reg.uncertainty_mm < 2.0);
        worst = worst.max(max);
    }
    eprintln!("worst TRE max {worst:.3} mm");
}

#[test]
fn without_breathing_compensation_the_pose_is_biased() {
    let p = patient();
    let lines = full_protocol(&p.phantom);
    let truth = placement(&mut Rng(99));
    let us = synthesise(
        &p.phantom,
        &lines,
        &truth,
        &Synthetic {
            breathing_m: 5e-3,
            ..Synthetic::default()
        },
        3,
    );
    let on = register(&p.model, &us, &RegistrationParams::default()).unwrap();
    // Uncompensated, the fit is poor enough that it may also be refused: judge its estimate.
    let off = register_sweep(
        &p.model,
        &us,
        &RegistrationParams {
            breathing: false,
            ..RegistrationParams::default()
        },
    )
    .unwrap();
    assert!(off.breathing.is_none());
    assert!(
        off.rmse_mm > on.rmse_mm,
        "{} vs {}",
        off.rmse_mm,
        on.rmse_mm
    );
    let (m_on, _) = tre(&p.phantom, &truth, &on.t_base_ct);
    let (m_off, _) = tre(&p.phantom, &truth, &off.t_base_ct);
    eprintln!("5 mm breathing: TRE median {m_on:.3} mm compensated, {m_off:.3} mm not");
    assert!(m_on < 0.5, "{m_on}");
    // Uncompensated, the pose sits at mean breathing: about half the amplitude posterior.
    assert!(m_off > 1.5 && m_off > 4.0 * m_on, "{m_off} vs {m_on}");
}

#[test]
fn heavy_noise_and_outliers_still_register() {
    let p = patient();
    let lines = full_protocol(&p.phantom);
    let truth = placement(&mut Rng(1234));
    let us = synthesise(
        &p.phantom,
        &lines,
        &truth,
        &Synthetic {
            noise_m: 0.5e-3,
            outliers: 0.2,
            ..Synthetic::default()
        },
        5,
    );
    let reg = register(&p.model, &us, &RegistrationParams::default()).unwrap();
    let (median, max) = tre(&p.phantom, &truth, &reg.t_base_ct);
    eprintln!("0.5 mm noise, 20 % outliers: TRE median {median:.3} mm, max {max:.3} mm");
    assert!(median < 1.0 && max < 2.0, "{median} {max}");
}

#[test]
fn too_few_points_is_refused() {
    let p = patient();
    let truth = placement(&mut Rng(5));
    let lines = [Line {
        a: [0.0, 0.0],
        b: [0.0, 0.01],
    }];
    let us = synthesise(&p.phantom, &lines, &truth, &Synthetic::default(), 1);
    let err = register_sweep(&p.model, &us, &RegistrationParams::default()).unwrap_err();
    let reason = err.refusal_reason().expect("a refusal").to_owned();
    assert!(reason.contains("too few bone points"), "{reason}");
    // And with nothing at all.
    let err = register(
        &p.model,
        &Compounded::default(),
        &RegistrationParams::default(),
    )
    .unwrap_err();
    assert!(err.refusal_reason().is_some(), "{err}");
}

#[test]
fn one_level_only_is_refused_as_ambiguous() {
    let p = patient();
    let truth = placement(&mut Rng(77));
    let z = p.phantom.t_ct_vertebra(2).unwrap().translation.z;
    // Transverse and short sagittal sweeps over L3 alone.
    let lines = [
        Line {
            a: [-0.045, z],
            b: [0.045, z],
        },
        Line {
            a: [-0.045, z + 0.006],
            b: [0.045, z + 0.006],
        },
        Line {
            a: [0.0, z - 0.012],
            b: [0.0, z + 0.012],
        },
        Line {
            a: [0.015, z - 0.012],
            b: [0.015, z + 0.012],
        },
    ];
    let us = synthesise(&p.phantom, &lines, &truth, &Synthetic::default(), 2);
    let reg = register_sweep(&p.model, &us, &RegistrationParams::default()).unwrap();
    let refusal = reg.refusal.clone().expect("one vertebra must be refused");
    eprintln!(
        "one level: {:?} (levels seen {}, ambiguity {:.2})",
        refusal, reg.levels_seen, reg.level_ambiguity
    );
    assert!(
        matches!(
            refusal.kind,
            RefusalKind::TooFewLevels | RefusalKind::AmbiguousLevel
        ),
        "{refusal:?}"
    );
    assert!(
        refusal.reason.contains("ambiguous vertebral level"),
        "{}",
        refusal.reason
    );
    let err = reg.accepted().unwrap_err();
    assert!(err.to_string().contains("registration refused"), "{err}");
}

#[test]
fn bad_parameters_are_errors_not_panics() {
    let p = patient();
    let us = Compounded::default();
    for params in [
        RegistrationParams {
            tau_m: f64::NAN,
            ..RegistrationParams::default()
        },
        RegistrationParams {
            search_yaw_deg: vec![],
            ..RegistrationParams::default()
        },
        RegistrationParams {
            ambiguity_ratio: 2.0,
            ..RegistrationParams::default()
        },
    ] {
        let err = register_sweep(&p.model, &us, &params).unwrap_err();
        assert!(err.refusal_reason().is_none(), "{err}");
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

#[test]
fn nan_samples_and_poses_are_refused_or_rejected_not_panics() {
    let p = patient();
    let truth = placement(&mut Rng(31));
    let lines = full_protocol(&p.phantom);
    let good = synthesise(&p.phantom, &lines, &truth, &Synthetic::default(), 4);
    // Every sample NaN (a tracking failure): nothing usable is left, a refusal with the reason.
    let mut bad = good.clone();
    for s in &mut bad.samples {
        s.xyz = Vector3::repeat(f64::NAN);
    }
    let err = register(&p.model, &bad, &RegistrationParams::default()).unwrap_err();
    let reason = err.refusal_reason().expect("a refusal").to_owned();
    assert!(reason.contains("too few bone points"), "{reason}");
    // NaN beam directions and a NaN sample in one frame in ten: registration still succeeds on
    // the rest, at the same accuracy.
    let mut partly = good.clone();
    for f in partly.frames.iter_mut().step_by(10) {
        f.beam = Vector3::repeat(f64::NAN);
    }
    for s in partly.samples.iter_mut().step_by(10) {
        s.xyz.x = f64::NAN;
    }
    let reg = register(&p.model, &partly, &RegistrationParams::default()).unwrap();
    let (median, max) = tre(&p.phantom, &truth, &reg.t_base_ct);
    assert!(median < 0.5 && max < 1.0, "{median} {max}");
    assert!(reg.t_base_ct.is_finite() && reg.uncertainty_mm.is_finite());
    // A NaN initial pose for re-registration is an input error.
    let nan = Transform::new(Matrix3::identity(), Vector3::repeat(f64::NAN));
    let err = register_from(&p.model, &good, &nan, &RegistrationParams::default()).unwrap_err();
    assert!(err.refusal_reason().is_none());
    assert!(err.to_string().contains("not finite"), "{err}");
}

#[test]
fn a_ct_without_bone_or_with_nan_is_an_error_not_a_panic() {
    // Water everywhere: no bone surface to register to.
    let water = Volume::from_fn([40, 40, 40], [1e-3; 3], [0.0; 3], |_, _, _| 0.0).unwrap();
    let err = CtModel::from_volume(&water).unwrap_err();
    assert!(err.refusal_reason().is_none(), "{err}");
    // NaN HU (a corrupt file that decoded): an error, never a panic.
    let nan = Volume::from_fn([40, 40, 40], [1e-3; 3], [0.0; 3], |_, _, _| f32::NAN).unwrap();
    assert!(CtModel::from_volume(&nan).is_err());
}

#[test]
fn a_poor_fit_is_refused_with_its_numbers() {
    // Bone echoes smeared over ±1.5 mm (a badly calibrated speed of sound, a mis-tracked probe):
    // the pose may be close, but the data do not support a sub-millimetre claim.
    let p = patient();
    let lines = full_protocol(&p.phantom);
    let truth = placement(&mut Rng(4321));
    let us = synthesise(
        &p.phantom,
        &lines,
        &truth,
        &Synthetic {
            noise_m: 1.5e-3,
            ..Synthetic::default()
        },
        6,
    );
    let reg = register_sweep(&p.model, &us, &RegistrationParams::default()).unwrap();
    let refusal = reg.refusal.clone().expect("a poor fit must be refused");
    eprintln!("{refusal:?}, RMSE {:.2} mm", reg.rmse_mm);
    assert_eq!(refusal.kind, RefusalKind::PoorFit, "{refusal:?}");
    assert!(
        refusal.reason.starts_with("poor fit: RMSE"),
        "{}",
        refusal.reason
    );
    assert!(reg.rmse_mm > 0.7);
    let err = reg.accepted().unwrap_err();
    assert!(err.refusal_reason().unwrap().contains("poor fit"), "{err}");
}
