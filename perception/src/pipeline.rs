//! The registration pipeline as `telecho perception register` and the ROS 2 perception node run
//! it: detect bone and landmarks in every steady-contact frame of a sweep (classical or CNN
//! detector, one thread each), compound them into the base frame, and register the CBCT model to
//! them with no initial guess; [`report`] is the JSON the command prints and the node publishes.

use std::time::Instant;

use serde::Serialize;

use crate::compound::{compound_sweep, CompoundParams, Compounded};
use crate::detect::{ClassicalDetector, ImageGeometry};
use crate::error::Error;
#[cfg(not(feature = "cnn"))]
use crate::error::ErrorKind;
use crate::registration::{register_sweep, CtModel, Registration, RegistrationParams};
use crate::sweep::Sweep;

/// Which per-frame detector compounds the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectorKind {
    /// Bright ridge + acoustic shadow (fast; the default).
    Classical,
    /// The bundled CNN (`models/`), through `ort` with the tract backend (`cnn` feature).
    Cnn,
}

/// Wall time of the stages, s.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timing {
    pub load_ct_s: f64,
    pub ct_preprocessing_s: f64,
    pub read_sweep_s: f64,
    pub compound_s: f64,
    pub register_s: f64,
}

/// A registration with what was measured on the way.
#[derive(Debug)]
pub struct Outcome {
    pub registration: Registration,
    pub compounded: Compounded,
    pub compound_s: f64,
    pub register_s: f64,
}

/// Compounds `sweep` with the detector and registers `model` to it. Refusals come back inside
/// the registration; errors are bad input.
pub fn register_with(
    model: &CtModel,
    sweep: &Sweep,
    detector: DetectorKind,
    threads: usize,
) -> Result<Outcome, Error> {
    let threads = threads.clamp(1, 64);
    let geometry = ImageGeometry {
        width: sweep.width(),
        height: sweep.height(),
        lateral_spacing_m: sweep.pixel_spacing_m()[0],
        axial_spacing_m: sweep.pixel_spacing_m()[1],
    };
    let params = CompoundParams::default();
    let t = Instant::now();
    let compounded = match detector {
        DetectorKind::Classical => {
            let mut dets = (0..threads)
                .map(|_| ClassicalDetector::for_geometry(&geometry))
                .collect::<Result<Vec<_>, _>>()?;
            compound_sweep(sweep, &mut dets, &params)?
        }
        #[cfg(feature = "cnn")]
        DetectorKind::Cnn => {
            let backend = crate::cnn::Backend::Tract;
            crate::cnn::init_backend(&backend)?;
            let mut dets = (0..threads)
                .map(|_| crate::cnn::CnnDetector::bundled(&backend))
                .collect::<Result<Vec<_>, _>>()?;
            compound_sweep(sweep, &mut dets, &params)?
        }
        #[cfg(not(feature = "cnn"))]
        DetectorKind::Cnn => {
            return Err(ErrorKind::Invalid(
                "the CNN detector needs the `cnn` feature of telecho-perception".into(),
            )
            .into())
        }
    };
    let compound_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let registration = register_sweep(
        model,
        &compounded,
        &RegistrationParams {
            threads,
            ..RegistrationParams::default()
        },
    )?;
    Ok(Outcome {
        registration,
        compounded,
        compound_s,
        register_s: t.elapsed().as_secs_f64(),
    })
}

/// A CT landmark in the base frame, in [`RegistrationReport::landmarks`].
#[derive(Debug, Serialize)]
pub struct LandmarkOut {
    pub name: String,
    pub xyz: [f64; 3],
    pub confidence: f64,
    pub uncertainty_mm: f64,
    pub xyz_vertebra: [f64; 3],
}

/// One vertebra's refinement, in [`RegistrationReport::levels`].
#[derive(Debug, Serialize)]
pub struct LevelOut {
    pub name: String,
    pub points: usize,
    pub rmse_mm: f64,
    pub shift_mm: f64,
    pub rotation_deg: f64,
    pub t_base_ct: [[f64; 4]; 4],
}

/// The breathing estimate, in [`RegistrationReport::breathing`].
#[derive(Debug, Serialize)]
pub struct BreathingOut {
    pub amplitude_mm: f64,
    pub frequency_hz: f64,
    pub explained: f64,
    pub frames: usize,
    pub applied: bool,
}

/// The registration as `perception register --json` prints it.
#[derive(Debug, Serialize)]
pub struct RegistrationReport {
    pub t_base_ct: [[f64; 4]; 4],
    pub rmse_mm: f64,
    pub uncertainty_mm: f64,
    pub runtime_s: f64,
    pub landmarks: Vec<LandmarkOut>,
    pub landmarks_source: &'static str,
    pub levels: Vec<LevelOut>,
    pub levels_seen: usize,
    pub level_ambiguity: f64,
    pub cost: f64,
    pub alternative_cost: Option<f64>,
    pub inlier_fraction: f64,
    pub points_used: usize,
    pub samples: usize,
    pub frames_used: usize,
    pub frames_in_sweep: usize,
    pub starts_tried: usize,
    pub breathing: Option<BreathingOut>,
    pub detector: &'static str,
    pub timing: Timing,
}

/// The printed form of a registration that was not refused (no TRE).
pub fn report(
    outcome: &Outcome,
    timing: Timing,
    landmarks_source: &'static str,
) -> RegistrationReport {
    let reg = &outcome.registration;
    RegistrationReport {
        t_base_ct: reg.t_base_ct.to_rows(),
        rmse_mm: reg.rmse_mm,
        uncertainty_mm: reg.uncertainty_mm,
        runtime_s: outcome.compound_s + outcome.register_s,
        landmarks: reg
            .landmarks
            .iter()
            .map(|l| {
                let g = reg.t_base_ct.transform_point(&l.xyz_ct);
                LandmarkOut {
                    name: l.name.clone(),
                    xyz: [g.x, g.y, g.z],
                    confidence: l.confidence,
                    uncertainty_mm: l.uncertainty_mm,
                    xyz_vertebra: [l.xyz.x, l.xyz.y, l.xyz.z],
                }
            })
            .collect(),
        landmarks_source,
        levels: reg
            .levels
            .iter()
            .map(|l| LevelOut {
                name: l.name.clone(),
                points: l.points,
                rmse_mm: l.rmse_mm,
                shift_mm: l.shift_mm,
                rotation_deg: l.rotation_deg,
                t_base_ct: l.t_base_ct.to_rows(),
            })
            .collect(),
        levels_seen: reg.levels_seen,
        level_ambiguity: reg.level_ambiguity,
        cost: reg.cost,
        alternative_cost: reg.alternative_cost,
        inlier_fraction: reg.inlier_fraction,
        points_used: reg.points_used,
        samples: reg.samples,
        frames_used: reg.frames_used,
        frames_in_sweep: outcome.compounded.frames_in_sweep,
        starts_tried: reg.starts_tried,
        breathing: reg.breathing.map(|b| BreathingOut {
            amplitude_mm: b.amplitude_mm,
            frequency_hz: b.frequency_hz,
            explained: b.explained,
            frames: b.frames,
            applied: b.applied,
        }),
        detector: outcome.compounded.detector,
        timing,
    }
}
