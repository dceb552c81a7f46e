//! B-mode ultrasound image simulation of the phantom, seen by a linear probe at a given pose.
//!
//! # Geometry
//!
//! The probe frame is `probe_tip` (see `telecho_core::frames::PROBE_TIP`): origin at the centre
//! of the probe face, `+z` along the beam into the patient, `+x` along the transducer array (the
//! lateral image axis), `+y` elevation. The image is the probe's x–z plane: column `c` is the
//! scanline at lateral `x = −aperture/2 + c·aperture/(width−1)` and row `r` the depth
//! `z = r·depth/(height−1)` (pixel centres span the aperture and the depth exactly). The pose is
//! `t_ct_probe` (probe → phantom `ct`, RAS metres, patient prone, back facing −y).
//!
//! Every scanline is a straight ray from its face point along `+z`: the simulator assumes the
//! constant speed of sound that scanners assume, 1540 m/s (the conventional soft-tissue average,
//! e.g. ICRU Report 61, 1998), so image depth equals geometric depth and there is no refraction.
//!
//! # Contact and coupling
//!
//! A scanline is coupled when its face point is at or below the undeformed skin
//! (`y − skin_y(x, z) ≥ −0.02 mm` in `ct`); an uncoupled scanline carries no echo at all (air
//! reflects essentially everything: Z ≈ 0.0004 MRayl). The face point's depth below the skin is
//! the scanline's *indentation* δ; coupling quality grows as a smoothstep from 0 (just touching,
//! 5 % amplitude) to full at [`UsParams::full_coupling_indentation_m`] (1.5 mm by default), and
//! under partial coupling a seeded, skin-anchored share of scanlines (up to half at δ = 0) drops
//! out to 15 % amplitude — the dark vertical streaks of a probe pressed too lightly. Without any
//! coupled scanline the frame has `contact == false` and holds only electronic noise.
//!
//! The image shows the undeformed phantom along each ray, with one exception: the indentation is
//! taken up by the subcutaneous fat (by far the softest layer), so the skin keeps its thickness
//! under the probe and the fat is thinner by δ. In terms of `u = y − skin_y(x, z)` (depth below
//! the undeformed skin, along y, as in [`Phantom::tissue_and_bone_sdf`]): skin for
//! `u < δ + skin_thickness`, fat for `u < skin_thickness + fat_thickness`, muscle below; the bone
//! and muscle do not move. (Discs are imaged as muscle; they lie in the bone's shadow anyway.)
//!
//! # Echo model
//!
//! The displayed envelope amplitude of a pixel at depth z is
//! `g · TGC(z) · A(z) · q · (backscatter + specular echoes) + noise`, log-compressed to `u8`:
//!
//! * **Specular echoes** at the probe face (lens/skin ring-down), the skin/fat and fat/muscle
//!   boundaries and the first bone surface, with amplitude reflection coefficient
//!   `r = (Z2 − Z1)/(Z2 + Z1)` (intensity `R = r²`), from the textbook acoustic impedances
//!   (MRayl; e.g. Hoskins, Martin & Thrush, *Diagnostic Ultrasound: Physics and Equipment*,
//!   3rd ed., 2019, and Duck F.A., *Physical Properties of Tissue*, 1990): fat 1.38, muscle
//!   1.70, cortical bone 7.8, dermis 1.7–2.0 (1.8 used). Bone: r = 0.64 (R ≈ 0.41); skin/fat
//!   r = 0.13, fat/muscle r = 0.10, taken at half strength because real tissue interfaces are
//!   rough and undulating rather than ideal planes. Each echo is scaled by `|cos θ|^p`, θ the
//!   angle between the beam and the surface normal (bone: p = 4 on top of a 10 % diffuse floor,
//!   normal from the gradient of the vertebra's signed distance; layers: p = 2, normal of the
//!   skin height field), and drawn as an axial Gaussian of the pulse envelope, FWHM 2
//!   wavelengths (0.41 mm at 7.5 MHz), widened by the pixel footprint. The bone echo is centred
//!   on the geometric first-hit depth and has a short exponential tail (0.5 mm, 30 %: cortical
//!   reverberation).
//! * **Acoustic shadow**: below the first bone hit nothing is transmitted (bone reflects ~41 %
//!   of the intensity and attenuates the rest an order of magnitude faster than soft tissue), so
//!   only noise remains.
//! * **Backscatter** of diffuse scatterers: fully developed speckle, Rayleigh-distributed
//!   envelope (Burckhardt C.B., "Speckle in ultrasound B-mode scans", IEEE Trans. Sonics
//!   Ultrason. 25(1):1–6, 1978; Wagner R.F. et al., "Statistics of speckle in ultrasound
//!   B-scans", IEEE Trans. Sonics Ultrason. 30(3):156–163, 1983). Each 0.25 mm cell of the `ct`
//!   frame gets a Rayleigh amplitude from an integer hash of (seed, cell), so speckle is anchored
//!   to the tissue: a pose always gives the same frame and nearby poses give correlated speckle.
//!   Mean levels relative to a perfect reflector: dermis −28 dB (hyperechoic), fat −44 dB
//!   (hypoechoic, with sparse bright fibrous septa parallel to the skin: 6 % of 3 × 0.3 × 3 mm
//!   cells, ×4), muscle −36 dB with a striated texture (amplitude ×0.55–1.45 per cell of
//!   0.8 × 0.5 × 6 mm, elongated along the craniocaudal fibres of the paraspinal muscles).
//! * **Attenuation**: two-way decay of `2·α·f·z` dB, α the soft-tissue coefficient in
//!   dB/(cm·MHz) (default 0.5, the textbook soft-tissue average, e.g. Hoskins et al. 2019;
//!   Kremkau F.W., *Sonography Principles and Instruments*), one coefficient for all soft
//!   tissue; **TGC** adds back [`UsParams::tgc_db_per_cm`] (default 6.5 of the 7.5 dB/cm lost at
//!   7.5 MHz), so deep tissue is darker but visible; `g` is the overall gain. Transmission
//!   losses at the soft-tissue interfaces (< 2 %) are neglected.
//! * **Lateral PSF**: a Gaussian along the array with FWHM `λ·F#`, F# = 3 (0.62 mm at 7.5 MHz),
//!   applied to the envelope before compression. The elevation beam is not modelled.
//! * **Noise**: electronic noise, Rayleigh envelope, referred to the display (after gain and
//!   TGC) with its mean at the bottom of the dynamic range; keyed by (seed, pose), so a pose
//!   always gives the same frame while a moving probe sees it change.
//! * **Log compression**: `255 · (20·log10(a) + DR)/DR`, clamped, through a lookup table.
//!
//! # Ground truth
//!
//! Each [`UsFrame`] carries `bone_mask` (1 at the row of the first bone surface along each
//! coupled scanline — the echo a clinician sees, dim or bright; 0 elsewhere), the first-hit
//! depth per column, and the pixel positions of the phantom's landmarks lying within the
//! elevation slab `|y| ≤ slice_thickness/2 + landmark_margin` (3 mm by default) and inside the
//! image, flagged when they lie in an acoustic shadow.
//!
//! # Cost
//!
//! No allocation per frame once the frame has its size; no transcendental function per pixel
//! (per-row gain table, Rayleigh and log-compression lookup tables, integer hashing). The first
//! bone surface is found by sphere tracing the vertebrae's exact signed distances
//! ([`Phantom::vertebra_sdf`], [`Phantom::bone_sdf`] far from the spine), re-evaluating only the
//! vertebrae whose Lipschitz bound could be the nearest, and stepping for free through the
//! bone-free balls of the previous (parallel) scanline, so that a scanline mostly pays for its
//! last millimetres: about 1.5 ms for a 256 × 256 frame over the spine on one core.

use std::fmt;
use std::sync::Arc;

use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;

use crate::error::{check_in_range as check, ErrorKind};
use crate::phantom::{Phantom, N_LEVELS};
use crate::Error;

/// Acoustic impedances (MRayl), see the module doc for sources.
const Z_SKIN: f64 = 1.8;
const Z_FAT: f64 = 1.38;
const Z_MUSCLE: f64 = 1.70;
const Z_BONE: f64 = 7.8;
/// Speed of sound assumed by the scanner and the simulator (m/s).
const SPEED_OF_SOUND: f64 = 1540.0;

/// Mean backscatter amplitudes relative to a perfect reflector (dB).
const SKIN_DB: f64 = -28.0;
const FAT_DB: f64 = -44.0;
const MUSCLE_DB: f64 = -36.0;
/// Amplitude of the probe-face ring-down echo.
const FACE_ECHO: f64 = 0.08;
/// Specularity exponents and the diffuse share of the bone echo.
const BONE_COS_POWER: i32 = 4;
const BONE_DIFFUSE: f64 = 0.1;
const LAYER_COS_POWER: i32 = 2;
/// Soft-tissue interfaces are rough and undulating, not ideal planes: their echo is taken at this
/// share of the plane-wave reflection coefficient.
const LAYER_EFFICIENCY: f64 = 0.5;
/// Bone echo tail (cortical reverberation): relative level and decay length (m).
const BONE_TAIL: f64 = 0.3;
const BONE_TAIL_M: f64 = 0.5e-3;
/// Axial envelope FWHM in wavelengths, and the lateral F-number.
const AXIAL_FWHM_WAVELENGTHS: f64 = 2.0;
const LATERAL_F_NUMBER: f64 = 3.0;
/// Electronic noise: mean envelope this many dB above the bottom of the displayed range.
const NOISE_ABOVE_FLOOR_DB: f64 = 0.0;

/// A scanline whose face point is less than this far above the skin still couples (m).
const CONTACT_TOLERANCE: f64 = 2e-5;
/// Coupling amplitude at zero indentation, and of a dropped-out scanline.
const COUPLING_FLOOR: f64 = 0.05;
const DROPOUT_LEVEL: f64 = 0.15;
/// Lateral size of the skin-anchored dropout cells (m).
const DROPOUT_CELL: f64 = 1e-3;

/// Speckle cell edge in `ct` (m), and the striation / septum cells.
const SPECKLE_CELL: f64 = 0.25e-3;
const STRIA_CELL: [f64; 3] = [0.8e-3, 0.5e-3, 6e-3];
const SEPTUM_CELL: [f64; 3] = [3e-3, 0.3e-3, 3e-3];
/// Share of fat cells holding a bright septum, and its brightness factor.
const SEPTUM_SHARE: u64 = 6;
const SEPTUM_GAIN: f32 = 4.0;

/// Sphere tracing: surface tolerance (a hit needs the distance below it: 0.1 µm, so that a
/// grazing ray is not stopped short), bracket width ending the refinement, minimum step, step
/// budget (m, m, m, count).
const HIT_EPS: f64 = 1e-7;
const REFINE_TOL: f64 = 1e-6;
const MIN_STEP: f64 = 1e-4;
/// Above this union distance (m) the phantom's cheap far-field bound drives the steps.
const FAR_PHASE: f64 = 0.008;
const MAX_STEPS: usize = 400;
/// Finite-difference step of the bone normal (m).
const NORMAL_H: f64 = 5e-5;
/// A landmark counts as shadowed when the beam through it meets bone this much earlier (m).
const SHADOW_MARGIN: f64 = 1e-3;
/// Rows between exact skin-depth evaluations along a scanline.
const KNOT_ROWS: usize = 8;

const RAYLEIGH_BITS: u32 = 10;
const LOG_LUT_SHIFT: u32 = 15;

/// Acquisition settings of the simulated linear probe and scanner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsParams {
    /// Image columns = scanlines (16–2048; default 256).
    pub width: usize,
    /// Image rows (16–2048; default 256).
    pub height: usize,
    /// Array length (m) spanned by the scanlines (default 0.038).
    pub aperture_m: f64,
    /// Imaged depth below the probe face (m; default 0.070).
    pub depth_m: f64,
    /// Centre frequency (Hz; default 7.5 MHz): sets attenuation and the PSF.
    pub frequency_hz: f64,
    /// Soft-tissue attenuation, dB/(cm·MHz), one way (default 0.5, textbook soft-tissue average).
    pub attenuation_db_cm_mhz: f64,
    /// Elevation thickness of the imaged slice (m; default 0.002). The elevation beam profile is
    /// not modelled; the slice bounds which landmarks a frame lists.
    pub slice_thickness_m: f64,
    /// Landmarks are listed up to `slice_thickness_m / 2 + landmark_margin_m` from the image
    /// plane (m; default 0.002).
    pub landmark_margin_m: f64,
    /// Overall receive gain (dB; default 0).
    pub gain_db: f64,
    /// Time-gain compensation slope (dB per cm of depth; default 6.5; 0 = off).
    pub tgc_db_per_cm: f64,
    /// Displayed dynamic range of the log compression (dB; default 60).
    pub dynamic_range_db: f64,
    /// Indentation (m) from which coupling is full (default 0.0015).
    pub full_coupling_indentation_m: f64,
}

impl Default for UsParams {
    fn default() -> Self {
        Self {
            width: 256,
            height: 256,
            aperture_m: 0.038,
            depth_m: 0.070,
            frequency_hz: 7.5e6,
            attenuation_db_cm_mhz: 0.5,
            slice_thickness_m: 0.002,
            landmark_margin_m: 0.002,
            gain_db: 0.0,
            tgc_db_per_cm: 6.5,
            dynamic_range_db: 60.0,
            full_coupling_indentation_m: 0.0015,
        }
    }
}

impl UsParams {
    /// Checks every field is finite and within its plausible range.
    pub fn validate(&self) -> Result<(), Error> {
        check(
            "ultrasound image width (px)",
            self.width as f64,
            16.0,
            2048.0,
        )?;
        check(
            "ultrasound image height (px)",
            self.height as f64,
            16.0,
            2048.0,
        )?;
        check("ultrasound aperture (m)", self.aperture_m, 0.005, 0.2)?;
        check("ultrasound depth (m)", self.depth_m, 0.01, 0.3)?;
        check("ultrasound frequency (Hz)", self.frequency_hz, 1e6, 20e6)?;
        check(
            "ultrasound attenuation (dB/cm/MHz)",
            self.attenuation_db_cm_mhz,
            0.0,
            3.0,
        )?;
        check(
            "ultrasound slice thickness (m)",
            self.slice_thickness_m,
            2e-4,
            0.02,
        )?;
        check(
            "ultrasound landmark margin (m)",
            self.landmark_margin_m,
            0.0,
            0.05,
        )?;
        check("ultrasound gain (dB)", self.gain_db, -60.0, 60.0)?;
        check("ultrasound TGC (dB/cm)", self.tgc_db_per_cm, 0.0, 30.0)?;
        check(
            "ultrasound dynamic range (dB)",
            self.dynamic_range_db,
            20.0,
            120.0,
        )?;
        check(
            "ultrasound full-coupling indentation (m)",
            self.full_coupling_indentation_m,
            1e-4,
            0.02,
        )?;
        Ok(())
    }

    /// Lateral pixel spacing (m): aperture / (width − 1).
    pub fn lateral_spacing_m(&self) -> f64 {
        self.aperture_m / (self.width.max(2) - 1) as f64
    }

    /// Axial pixel spacing (m): depth / (height − 1).
    pub fn axial_spacing_m(&self) -> f64 {
        self.depth_m / (self.height.max(2) - 1) as f64
    }
}

/// A phantom landmark as it appears in a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LandmarkPixel {
    /// Index into [`Phantom::landmarks`] (name: [`UltrasoundSim::landmark_name`]).
    pub index: usize,
    /// Row (depth) of the landmark's projection onto the image plane, fractional pixels.
    pub row: f64,
    /// Column (lateral) of the projection, fractional pixels.
    pub col: f64,
    /// Signed distance from the image plane along the probe's +y (elevation), metres.
    pub distance_to_plane_m: f64,
    /// True when the beam line through the projection meets bone more than 1 mm before it (the
    /// landmark lies in an acoustic shadow); the landmark's own surface does not shadow it.
    pub shadowed: bool,
}

/// One simulated B-mode frame with its ground truth. Reused between renders.
#[derive(Clone, Debug, PartialEq)]
pub struct UsFrame {
    /// Columns (scanlines).
    pub width: usize,
    /// Rows (depth samples).
    pub height: usize,
    /// Distance between column centres (m).
    pub lateral_spacing_m: f64,
    /// Distance between row centres (m).
    pub axial_spacing_m: f64,
    /// Grey levels, row-major (`pixels[row * width + col]`, row = depth).
    pub pixels: Vec<u8>,
    /// 1 at the row of the first bone surface of each coupled scanline, 0 elsewhere; same layout.
    pub bone_mask: Vec<u8>,
    /// Depth (m) of the first bone surface per column; `None` where the scanline is uncoupled
    /// or meets no bone within the image.
    pub bone_depth_m: Vec<Option<f64>>,
    /// Landmarks within the elevation slab and inside the image.
    pub landmarks: Vec<LandmarkPixel>,
    /// True when at least one scanline is coupled to the skin.
    pub contact: bool,
    /// Share of coupled scanlines, 0–1.
    pub contact_fraction: f64,
    /// Mean indentation of the coupled scanlines' face points below the undeformed skin (m);
    /// 0 without contact.
    pub mean_indentation_m: f64,
    /// The probe pose the frame was rendered at (`t_ct_probe`).
    pub t_ct_probe: Transform,
}

impl UsFrame {
    /// An empty (black, no contact) frame of the size `params` describe.
    pub fn new(params: &UsParams) -> Self {
        let (w, h) = (params.width, params.height);
        Self {
            width: w,
            height: h,
            lateral_spacing_m: params.lateral_spacing_m(),
            axial_spacing_m: params.axial_spacing_m(),
            pixels: vec![0; w * h],
            bone_mask: vec![0; w * h],
            bone_depth_m: vec![None; w],
            landmarks: Vec::with_capacity(64),
            contact: false,
            contact_fraction: 0.0,
            mean_indentation_m: 0.0,
            t_ct_probe: Transform::IDENTITY,
        }
    }

    /// Grey level at (row, col), `None` outside the image.
    pub fn pixel(&self, row: usize, col: usize) -> Option<u8> {
        (row < self.height && col < self.width).then(|| self.pixels[row * self.width + col])
    }

    /// Probe-frame point (m) of a (fractional) pixel position.
    pub fn pixel_to_probe(&self, row: f64, col: f64) -> Vector3<f64> {
        let half = 0.5 * (self.width.max(1) - 1) as f64 * self.lateral_spacing_m;
        Vector3::new(
            col * self.lateral_spacing_m - half,
            0.0,
            row * self.axial_spacing_m,
        )
    }

    /// `ct` point (m) of a (fractional) pixel position, through the frame's pose.
    pub fn pixel_to_ct(&self, row: f64, col: f64) -> Vector3<f64> {
        self.t_ct_probe
            .transform_point(&self.pixel_to_probe(row, col))
    }

    fn fit(&mut self, p: &UsParams) {
        let (w, h) = (p.width, p.height);
        if self.pixels.len() != w * h {
            self.pixels.resize(w * h, 0);
        }
        if self.bone_mask.len() != w * h {
            self.bone_mask.resize(w * h, 0);
        }
        if self.bone_depth_m.len() != w {
            self.bone_depth_m.resize(w, None);
        }
        self.width = w;
        self.height = h;
        self.lateral_spacing_m = p.lateral_spacing_m();
        self.axial_spacing_m = p.axial_spacing_m();
    }
}

/// The ultrasound simulator: a phantom, the scanner settings, a seed and precomputed tables.
pub struct UltrasoundSim {
    phantom: Arc<Phantom>,
    params: UsParams,
    seed: u64,
    skin_thickness: f64,
    fat_thickness: f64,
    landmarks_ct: Vec<Vector3<f64>>,
    landmark_names: Vec<String>,
    /// Per row: gain · two-way attenuation · TGC (linear amplitude).
    row_gain: Vec<f32>,
    /// Rayleigh quantiles, mean 1.
    rayleigh: Vec<f32>,
    /// Log compression, indexed by `f32` bits >> 15 minus `log_lo`.
    log_lut: Vec<u8>,
    log_lo: u32,
    /// Lateral PSF taps (odd count, sum 1).
    kernel: Vec<f32>,
    /// Axial envelope σ (m), widened by the pixel footprint.
    sigma_axial: f64,
    noise_mean: f32,
    /// Envelope before and after the lateral PSF, column-major (`[col * height + row]`).
    amp: Vec<f32>,
    blurred: Vec<f32>,
    /// Exact skin depth at the knots of the current scanline.
    knots: Vec<f64>,
    /// Tracing state carried from one scanline to the next within a frame.
    prev_col: Option<usize>,
    chords: Chords,
    level_d: [f64; N_LEVELS],
    level_at: [f64; N_LEVELS],
    /// Scratch of the landmark shadow rays.
    lm_chords: Chords,
}

impl fmt::Debug for UltrasoundSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UltrasoundSim")
            .field("phantom_seed", &self.phantom.seed())
            .field("params", &self.params)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// What one scanline found, for the echo splats.
#[derive(Clone, Copy, Debug)]
struct Echo {
    z: f64,
    amp: f64,
}

impl UltrasoundSim {
    /// A simulator of `phantom` (an `Arc<Phantom>` or a `Phantom`) with `params`; `seed` draws
    /// the speckle and noise. Refuses invalid parameters. Cheap (tables only, well under 1 ms).
    pub fn new(
        phantom: impl Into<Arc<Phantom>>,
        params: UsParams,
        seed: u64,
    ) -> Result<Self, Error> {
        params.validate()?;
        let phantom = phantom.into();
        let (w, h) = (params.width, params.height);
        let dz = params.axial_spacing_m();
        let dx = params.lateral_spacing_m();
        let f_mhz = params.frequency_hz * 1e-6;

        // Per-row gain: overall gain, two-way attenuation, TGC (dB are amplitude dB).
        let row_gain = (0..h)
            .map(|r| {
                let z_cm = r as f64 * dz * 100.0;
                let db = params.gain_db - 2.0 * params.attenuation_db_cm_mhz * f_mhz * z_cm
                    + params.tgc_db_per_cm * z_cm;
                10f64.powf(db / 20.0) as f32
            })
            .collect();

        // Rayleigh quantiles at bin centres, normalised to mean 1 (mean = σ·sqrt(π/2)).
        let n = 1usize << RAYLEIGH_BITS;
        let norm = (std::f64::consts::PI / 2.0).sqrt();
        let rayleigh = (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                ((-2.0 * (1.0 - u).ln()).sqrt() / norm) as f32
            })
            .collect();

        // Log compression over [10^(−DR/20), 1] in bins of 1/256 octave.
        let dr = params.dynamic_range_db;
        let a_lo = 10f64.powf(-dr / 20.0) as f32;
        let log_lo = a_lo.to_bits() >> LOG_LUT_SHIFT;
        let log_hi = 1f32.to_bits() >> LOG_LUT_SHIFT;
        let log_lut = (log_lo..=log_hi)
            .map(|b| {
                let a = f32::from_bits((b << LOG_LUT_SHIFT) | (1 << (LOG_LUT_SHIFT - 1))) as f64;
                let g = 255.0 * (20.0 * a.log10() + dr) / dr;
                g.round().clamp(0.0, 255.0) as u8
            })
            .collect();

        // PSF: axial envelope and lateral beam, σ = FWHM / 2.355.
        let wavelength = SPEED_OF_SOUND / params.frequency_hz;
        let fwhm = 2.0 * (2.0 * std::f64::consts::LN_2).sqrt();
        let sa = AXIAL_FWHM_WAVELENGTHS * wavelength / fwhm;
        let sigma_axial = (sa * sa + dz * dz / 12.0).sqrt();
        let sl = LATERAL_F_NUMBER * wavelength / fwhm / dx;
        let radius = ((2.5 * sl).ceil() as usize).clamp(0, 8);
        let mut kernel: Vec<f32> = (0..=2 * radius)
            .map(|i| {
                let k = i as f64 - radius as f64;
                (-0.5 * k * k / (sl * sl).max(1e-12)).exp() as f32
            })
            .collect();
        let sum: f32 = kernel.iter().sum();
        kernel.iter_mut().for_each(|k| *k /= sum);

        let names = phantom.landmarks();
        let landmarks_ct = names.iter().map(|l| Vector3::from(l.xyz)).collect();
        let landmark_names = names.into_iter().map(|l| l.name).collect();
        let n_knots = (h - 1) / KNOT_ROWS + 2;
        Ok(Self {
            skin_thickness: phantom.params().skin_thickness,
            fat_thickness: phantom.fat_thickness(),
            phantom,
            params,
            seed,
            landmarks_ct,
            landmark_names,
            row_gain,
            rayleigh,
            log_lut,
            log_lo,
            kernel,
            sigma_axial,
            noise_mean: 10f64.powf((NOISE_ABOVE_FLOOR_DB - dr) / 20.0) as f32,
            amp: vec![0.0; w * h],
            blurred: vec![0.0; w * h],
            knots: vec![0.0; n_knots],
            prev_col: None,
            chords: Chords::with_capacity(2 * MAX_STEPS),
            level_d: [f64::NEG_INFINITY; N_LEVELS],
            level_at: [0.0; N_LEVELS],
            lm_chords: Chords::with_capacity(MAX_STEPS),
        })
    }

    /// The imaged phantom.
    pub fn phantom(&self) -> &Arc<Phantom> {
        &self.phantom
    }

    /// The scanner settings.
    pub fn params(&self) -> &UsParams {
        &self.params
    }

    /// The speckle/noise seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Name of landmark `index` (as in [`Phantom::landmarks`]), e.g. `L3_spinous_tip`.
    pub fn landmark_name(&self, index: usize) -> Option<&str> {
        self.landmark_names.get(index).map(String::as_str)
    }

    /// A frame of the right size for [`UltrasoundSim::render`].
    pub fn new_frame(&self) -> UsFrame {
        UsFrame::new(&self.params)
    }

    /// Renders the frame seen at `t_ct_probe` into a new frame.
    pub fn render_new(&mut self, t_ct_probe: &Transform) -> Result<UsFrame, Error> {
        let mut f = self.new_frame();
        self.render(t_ct_probe, &mut f)?;
        Ok(f)
    }

    /// Renders the frame seen at `t_ct_probe` (probe → ct) into `frame`, reusing its buffers (no
    /// allocation once it has the right size). The result depends only on the phantom, the
    /// parameters, the seed and the pose. Refuses a non-finite or non-rigid pose; `frame` is
    /// then left untouched.
    pub fn render(&mut self, t_ct_probe: &Transform, frame: &mut UsFrame) -> Result<(), Error> {
        check_pose(t_ct_probe)?;
        frame.fit(&self.params);
        frame.t_ct_probe = *t_ct_probe;
        frame.bone_mask.fill(0);
        frame.bone_depth_m.fill(None);
        frame.landmarks.clear();

        let p = self.params;
        let (w, h) = (p.width, p.height);
        let dx = p.lateral_spacing_m();
        let dz = p.axial_spacing_m();
        let rot = t_ct_probe.rotation;
        let ex: Vector3<f64> = rot.column(0).into();
        let dir: Vector3<f64> = rot.column(2).into();
        let key = pose_key(self.seed, t_ct_probe);

        let mut coupled = 0usize;
        let mut indentation_sum = 0.0;
        self.prev_col = None;
        for c in 0..w {
            let x = c as f64 * dx - 0.5 * p.aperture_m;
            let o = t_ct_probe.translation + ex * x;
            match self.scanline(c, &o, &dir) {
                Some((delta, hit)) => {
                    coupled += 1;
                    indentation_sum += delta;
                    if let Some(zh) = hit {
                        frame.bone_depth_m[c] = Some(zh);
                        let r = (zh / dz).round() as usize;
                        if r < h {
                            frame.bone_mask[r * w + c] = 1;
                        }
                    }
                }
                None => self.amp[c * h..(c + 1) * h].fill(0.0),
            }
        }
        frame.contact = coupled > 0;
        frame.contact_fraction = coupled as f64 / w as f64;
        frame.mean_indentation_m = if coupled > 0 {
            indentation_sum / coupled as f64
        } else {
            0.0
        };

        self.lateral_psf();
        self.compress(key, &mut frame.pixels);
        self.project_landmarks(t_ct_probe, frame);
        Ok(())
    }

    /// Fills column `c` of `amp` for the scanline from `o` along `dir`. `None` when uncoupled,
    /// else the indentation and the first bone hit depth (if any within the image).
    fn scanline(
        &mut self,
        c: usize,
        o: &Vector3<f64>,
        dir: &Vector3<f64>,
    ) -> Option<(f64, Option<f64>)> {
        let ph = &*self.phantom;
        let p = &self.params;
        let h = p.height;
        let dz = p.axial_spacing_m();
        let delta = o.y - ph.skin_y(o.x, o.z);
        if delta.is_nan() || delta < -CONTACT_TOLERANCE {
            return None;
        }
        let delta = delta.max(0.0);
        let depth = p.depth_m;

        // Coupling quality and skin-anchored dropout under partial coupling.
        let s = smoothstep(delta / p.full_coupling_indentation_m);
        let mut q = COUPLING_FLOOR + (1.0 - COUPLING_FLOOR) * s;
        if s < 1.0 {
            let cell = hash3(
                cell_index(o.x, 1.0 / DROPOUT_CELL),
                0,
                cell_index(o.z, 1.0 / DROPOUT_CELL),
                self.seed ^ 0xD809_0F7A_11C3_5E21,
            );
            if unit(cell) < 0.5 * (1.0 - s) {
                q *= DROPOUT_LEVEL;
            }
        }

        // First bone surface along the ray. Coherence with the previous traced scanline: its per-level bounds (less the lateral
        // offset) and its bone-free balls.
        let x = c as f64 * p.lateral_spacing_m();
        if let Some(pc) = self.prev_col {
            let offset = (c - pc) as f64 * p.lateral_spacing_m();
            self.level_d.iter_mut().for_each(|d| *d -= offset);
        } else {
            self.chords.prev.clear();
            self.level_d = [f64::NEG_INFINITY; N_LEVELS];
        }
        let mut ray_sdf = RaySdf::new(ph, o, dir, self.level_d, self.level_at);
        let hit = trace_bone(&mut ray_sdf, &mut self.chords, x, depth);
        std::mem::swap(&mut self.chords.prev, &mut self.chords.cur);
        self.prev_col = Some(c);
        // Knots at every KNOT_ROWS rows, one past the last row.
        let n_knots = (h - 1) / KNOT_ROWS + 2;
        let knot_dz = KNOT_ROWS as f64 * dz;
        let skin_u = |z: f64| {
            let q = o + dir * z;
            q.y - ph.skin_y(q.x, q.z)
        };
        for (k, u) in self.knots[..n_knots].iter_mut().enumerate() {
            *u = skin_u(k as f64 * knot_dz);
        }
        let knots = &self.knots[..n_knots];
        // Air along the ray (a grazing probe) blocks everything beyond it.
        let z_block = first_crossing(knots, knot_dz, -2.0 * CONTACT_TOLERANCE, &skin_u)
            .unwrap_or(f64::INFINITY);
        let z_end = hit.unwrap_or(f64::INFINITY).min(z_block);

        let tau1 = delta + self.skin_thickness;
        let tau2 = self.skin_thickness + self.fat_thickness;

        // Diffuse backscatter, row by row, up to the bone or the air.
        let col = &mut self.amp[c * h..(c + 1) * h];
        let inv_cell = 1.0 / SPECKLE_CELL;
        let key = self.seed;
        let key_stria = self.seed ^ 0x5DEE_CE66_D1CE_4E5B;
        let skin_level = db_amp(SKIN_DB) as f32;
        let fat_level = db_amp(FAT_DB) as f32;
        let muscle_level = db_amp(MUSCLE_DB) as f32;
        let qf = q as f32;
        let ray = &self.rayleigh;
        let n_fill = if z_end.is_finite() {
            ((z_end / dz).ceil().max(0.0) as usize).min(h)
        } else {
            h
        };
        let (inv_sx, inv_su, inv_sz) = (
            1.0 / SEPTUM_CELL[0],
            1.0 / SEPTUM_CELL[1],
            1.0 / SEPTUM_CELL[2],
        );
        let inv_stria = [
            1.0 / STRIA_CELL[0],
            1.0 / STRIA_CELL[1],
            1.0 / STRIA_CELL[2],
        ];
        // Texture cells are much larger than a row: hash a cell only when it changes.
        let mut cell_prev = [i64::MIN; 3];
        let mut tex = 1.0f32;
        let mut u = knots[0];
        let mut du = 0.0;
        for (r, v) in col.iter_mut().enumerate().take(n_fill) {
            let z = r as f64 * dz;
            if r % KNOT_ROWS == 0 {
                let k = r / KNOT_ROWS;
                u = knots[k];
                du = (knots[k + 1] - knots[k]) / KNOT_ROWS as f64;
            } else {
                u += du;
            }
            let px = o.x + dir.x * z;
            let py = o.y + dir.y * z;
            let pz = o.z + dir.z * z;
            let hs = hash3(
                cell_index(px, inv_cell),
                cell_index(py, inv_cell),
                cell_index(pz, inv_cell),
                key,
            );
            let speckle = ray[(hs >> (64 - RAYLEIGH_BITS)) as usize];
            let level = if u < tau1 {
                skin_level
            } else if u < tau2 {
                // Septa: cells thin in depth below the skin, wide along the skin.
                let cell = [
                    cell_index(px, inv_sx),
                    cell_index(u, inv_su),
                    cell_index(pz, inv_sz) ^ (1 << 40),
                ];
                if cell[0] != cell_prev[0] || cell[1] != cell_prev[1] || cell[2] != cell_prev[2] {
                    cell_prev = cell;
                    let hc = hash3(cell[0], cell[1], cell[2], key_stria);
                    tex = if hc % 100 < SEPTUM_SHARE {
                        SEPTUM_GAIN
                    } else {
                        1.0
                    };
                }
                fat_level * tex
            } else {
                // Striation: cells elongated along the muscle fibres (craniocaudal, z).
                let cell = [
                    cell_index(px, inv_stria[0]),
                    cell_index(py, inv_stria[1]),
                    cell_index(pz, inv_stria[2]),
                ];
                if cell[0] != cell_prev[0] || cell[1] != cell_prev[1] || cell[2] != cell_prev[2] {
                    cell_prev = cell;
                    let hc = hash3(cell[0], cell[1], cell[2], key_stria);
                    tex = 0.55 + 0.9 * unit(hc) as f32;
                }
                muscle_level * tex
            };
            *v = level * speckle * self.row_gain[r] * qf;
        }
        col[n_fill..].fill(0.0);

        // Specular echoes.
        let mut echoes = [Echo { z: 0.0, amp: 0.0 }; 8];
        let mut n_echo = 0;
        echoes[n_echo] = Echo {
            z: 0.0,
            amp: FACE_ECHO,
        };
        n_echo += 1;
        let cos_layer = {
            let e = 1e-4;
            let gx = (ph.skin_y(o.x + e, o.z) - ph.skin_y(o.x - e, o.z)) / (2.0 * e);
            let gz = (ph.skin_y(o.x, o.z + e) - ph.skin_y(o.x, o.z - e)) / (2.0 * e);
            let n = Vector3::new(-gx, 1.0, -gz).normalize();
            n.dot(dir).abs().powi(LAYER_COS_POWER)
        };
        let interfaces: [(f64, f64); 2] = if tau2 > tau1 {
            [
                (tau1, reflection(Z_SKIN, Z_FAT)),
                (tau2, reflection(Z_FAT, Z_MUSCLE)),
            ]
        } else {
            [(tau1, reflection(Z_SKIN, Z_MUSCLE)), (f64::NAN, 0.0)]
        };
        for (tau, r) in interfaces {
            if !tau.is_finite() {
                continue;
            }
            let mut from = 0;
            while let Some((z, next)) = crossing_from(knots, knot_dz, tau, &skin_u, from) {
                if z >= z_end || n_echo >= echoes.len() - 1 {
                    break;
                }
                echoes[n_echo] = Echo {
                    z,
                    amp: r * cos_layer * LAYER_EFFICIENCY,
                };
                n_echo += 1;
                from = next;
            }
        }
        let mut tail = false;
        if let Some(zh) = hit.filter(|&zh| zh <= z_block) {
            let ph_pt = o + dir * zh;
            let n = ray_sdf.normal(zh);
            let cos = n.dot(dir).abs();
            let hs = hash3(
                cell_index(ph_pt.x, inv_cell),
                cell_index(ph_pt.y, inv_cell),
                cell_index(ph_pt.z, inv_cell),
                key,
            );
            let texture = 0.8 + 0.2 * ray[(hs >> (64 - RAYLEIGH_BITS)) as usize] as f64;
            echoes[n_echo] = Echo {
                z: zh,
                amp: reflection(Z_MUSCLE, Z_BONE)
                    * (BONE_DIFFUSE + (1.0 - BONE_DIFFUSE) * cos.powi(BONE_COS_POWER))
                    * texture,
            };
            n_echo += 1;
            tail = true;
        }
        let sigma = self.sigma_axial;
        for (i, e) in echoes[..n_echo].iter().enumerate() {
            let with_tail = tail && i == n_echo - 1;
            let reach = if with_tail {
                4.0 * sigma + 4.0 * BONE_TAIL_M
            } else {
                4.0 * sigma
            };
            let r0 = ((e.z - 4.0 * sigma) / dz).ceil().max(0.0) as usize;
            let r1 = (((e.z + reach) / dz).floor().max(0.0) as usize).min(h - 1);
            if r0 > r1 {
                continue;
            }
            let rows = col[r0..=r1].iter_mut().zip(&self.row_gain[r0..=r1]);
            for (r, (v, &gain)) in (r0..).zip(rows) {
                let t = r as f64 * dz - e.z;
                let mut g = (-0.5 * t * t / (sigma * sigma)).exp();
                if with_tail && t > 0.0 {
                    g = g.max(BONE_TAIL * (-t / BONE_TAIL_M).exp());
                }
                *v += (e.amp * g * q) as f32 * gain;
            }
        }
        self.level_d = ray_sdf.d;
        self.level_at = ray_sdf.at;
        let hit = hit.filter(|&zh| zh <= depth && zh <= z_block);
        Some((delta, hit))
    }

    /// Lateral PSF: `blurred = amp ⊛ kernel` along the columns (edges replicated).
    fn lateral_psf(&mut self) {
        let (w, h) = (self.params.width, self.params.height);
        let rad = self.kernel.len() / 2;
        for c in 0..w {
            let dst = &mut self.blurred[c * h..(c + 1) * h];
            dst.fill(0.0);
            for (i, &k) in self.kernel.iter().enumerate() {
                let cc = (c + i).saturating_sub(rad).min(w - 1);
                let src = &self.amp[cc * h..(cc + 1) * h];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += k * s;
                }
            }
        }
    }

    /// Adds the noise and log-compresses `blurred` into the row-major `pixels` (in strips of
    /// columns, so that both buffers are walked sequentially).
    fn compress(&self, key: u64, pixels: &mut [u8]) {
        const STRIP: usize = 16;
        let (w, h) = (self.params.width, self.params.height);
        let last = self.log_lut.len() - 1;
        for c0 in (0..w).step_by(STRIP) {
            let c1 = (c0 + STRIP).min(w);
            for r in 0..h {
                let row = &mut pixels[r * w + c0..r * w + c1];
                for (i, px) in row.iter_mut().enumerate() {
                    let c = c0 + i;
                    let hn = mix64(key ^ ((r * w + c) as u64));
                    let a = self.blurred[c * h + r]
                        + self.noise_mean * self.rayleigh[(hn >> (64 - RAYLEIGH_BITS)) as usize];
                    let i = ((a.to_bits() >> LOG_LUT_SHIFT).saturating_sub(self.log_lo) as usize)
                        .min(last);
                    *px = self.log_lut[i];
                }
            }
        }
    }

    /// Lists the landmarks within the elevation slab and inside the image.
    fn project_landmarks(&mut self, t: &Transform, frame: &mut UsFrame) {
        let p = &self.params;
        let slab = 0.5 * p.slice_thickness_m + p.landmark_margin_m;
        let t_probe_ct = t.inverse();
        let dx = p.lateral_spacing_m();
        let dz = p.axial_spacing_m();
        let half = 0.5 * p.aperture_m;
        for (index, l) in self.landmarks_ct.iter().enumerate() {
            let q = t_probe_ct.transform_point(l);
            if q.y.abs() > slab || !(0.0..=p.depth_m).contains(&q.z) || q.x.abs() > half {
                continue;
            }
            let o = t.transform_point(&Vector3::new(q.x, 0.0, 0.0));
            let dir: Vector3<f64> = t.rotation.column(2).into();
            let unknown = [f64::NEG_INFINITY; N_LEVELS];
            let mut ray = RaySdf::new(&self.phantom, &o, &dir, unknown, [0.0; N_LEVELS]);
            self.lm_chords.prev.clear();
            let shadowed =
                trace_bone(&mut ray, &mut self.lm_chords, q.x, q.z - SHADOW_MARGIN).is_some();
            frame.landmarks.push(LandmarkPixel {
                index,
                row: q.z / dz,
                col: (q.x + half) / dx,
                distance_to_plane_m: q.y,
                shadowed,
            });
        }
    }
}

/// Refuses a non-finite pose or a rotation that is not orthonormal and right-handed.
fn check_pose(t: &Transform) -> Result<(), Error> {
    if !t.is_finite() {
        return Err(ErrorKind::NonFinitePose.into());
    }
    let dev = (t.rotation.transpose() * t.rotation - Matrix3::identity())
        .abs()
        .max();
    let det = t.rotation.determinant();
    if dev > 1e-6 || (det - 1.0).abs() > 1e-6 {
        return Err(ErrorKind::NotARotation {
            deviation: dev.max((det - 1.0).abs()),
        }
        .into());
    }
    Ok(())
}

/// The union of the vertebrae's signed distances along one ray, evaluated lazily: each level's
/// last exact distance minus the distance moved since is a lower bound on it (1-Lipschitz), so a
/// level is re-evaluated only when that bound could be the minimum. Near the bone this costs one
/// vertebra evaluation per step instead of five.
struct RaySdf<'a> {
    ph: &'a Phantom,
    o: Vector3<f64>,
    dir: Vector3<f64>,
    /// Per level: last exact distance and the ray parameter it was taken at.
    d: [f64; N_LEVELS],
    at: [f64; N_LEVELS],
    /// Level that gave the last minimum.
    nearest: usize,
}

impl<'a> RaySdf<'a> {
    /// A ray with per-level bounds `d` (taken at ray parameters `at`; −∞ when unknown).
    fn new(
        ph: &'a Phantom,
        o: &Vector3<f64>,
        dir: &Vector3<f64>,
        d: [f64; N_LEVELS],
        at: [f64; N_LEVELS],
    ) -> Self {
        Self {
            ph,
            o: *o,
            dir: *dir,
            d,
            at,
            nearest: 0,
        }
    }

    /// Raises every level's bound to `d`, a lower bound of the union distance at `t`, where that
    /// is better than what the level already has.
    fn seed_bound(&mut self, t: f64, d: f64) {
        for l in 0..N_LEVELS {
            if self.d[l] - (t - self.at[l]).abs() < d {
                self.d[l] = d;
                self.at[l] = t;
            }
        }
    }

    /// Lower bound of the union distance at `t` from the levels' last evaluations (−∞ when a
    /// level has none).
    fn lower_bound(&self, t: f64) -> f64 {
        (0..N_LEVELS)
            .map(|l| self.d[l] - (t - self.at[l]).abs())
            .fold(f64::INFINITY, f64::min)
    }

    /// Exact union distance at `t` (where the phantom's is exact).
    fn dist(&mut self, t: f64) -> f64 {
        let p = self.o + self.dir * t;
        let mut lb: [f64; N_LEVELS] = std::array::from_fn(|l| self.d[l] - (t - self.at[l]).abs());
        let mut best = f64::INFINITY;
        loop {
            let mut l = usize::MAX;
            let mut m = best;
            for (i, &b) in lb.iter().enumerate() {
                if b < m {
                    m = b;
                    l = i;
                }
            }
            if l == usize::MAX {
                return best;
            }
            let d = self.ph.vertebra_sdf(l, &p);
            self.d[l] = d;
            self.at[l] = t;
            lb[l] = f64::INFINITY;
            if d < best {
                best = d;
                self.nearest = l;
            }
        }
    }

    /// Outward unit normal at ray parameter `t` near the last evaluated point: gradient of the
    /// nearest vertebra's SDF there.
    fn normal(&mut self, t: f64) -> Vector3<f64> {
        let (ph, l) = (self.ph, self.nearest);
        let p = self.o + self.dir * t;
        let d0 = ph.vertebra_sdf(l, &p);
        let g = Vector3::new(
            ph.vertebra_sdf(l, &(p + Vector3::x() * NORMAL_H)) - d0,
            ph.vertebra_sdf(l, &(p + Vector3::y() * NORMAL_H)) - d0,
            ph.vertebra_sdf(l, &(p + Vector3::z() * NORMAL_H)) - d0,
        );
        let n = g.norm();
        if n > 0.0 {
            g / n
        } else {
            Vector3::zeros()
        }
    }
}

/// A bone-free ball met while tracing: centred on the scanline at lateral position `x` (probe
/// frame, m), ray parameter `t`, radius `r`.
#[derive(Clone, Copy, Debug)]
struct Ball {
    x: f64,
    t: f64,
    r: f64,
}

/// Bone-free balls of the previous scanlines, reused by the next one (scanlines are parallel and
/// start on the same face line, so a ball at lateral offset `o` cuts the next scanline in a
/// bone-free chord of half-length `sqrt(r² − o²)` around the same `t`).
#[derive(Debug, Default)]
struct Chords {
    /// Balls available to the scanline being traced, in the order they were met.
    prev: Vec<Ball>,
    /// Balls met by it: its own evaluations and the balls it used.
    cur: Vec<Ball>,
}

impl Chords {
    fn with_capacity(n: usize) -> Self {
        Self {
            prev: Vec::with_capacity(n),
            cur: Vec::with_capacity(n),
        }
    }

    fn keep(&mut self, b: Ball) {
        // Bounded, so that tracing never allocates; a dropped ball only costs speed.
        if self.cur.len() < self.cur.capacity() {
            self.cur.push(b);
        }
    }
}

/// First bone surface along the ray (scanline at lateral position `x`), `0 ≤ t ≤ max_t`.
///
/// Sphere tracing with a minimum step and a refinement when a step lands at or inside the
/// surface. Steps come for free where the ray runs through a bone-free ball of the previous
/// scanlines (see [`Chords`]), so that neighbouring scanlines mostly pay for their last
/// millimetres. Away from the spine (no vertebra known to be within 8 mm) the phantom's own union
/// distance drives the steps — a cheap bound there; near it, the lazy per-level union.
fn trace_bone(ray: &mut RaySdf<'_>, chords: &mut Chords, x: f64, max_t: f64) -> Option<f64> {
    chords.cur.clear();
    if max_t.is_nan() || max_t < 0.0 {
        return None;
    }
    let mut t = 0.0;
    let mut j = 0;
    let mut near: Option<bool> = None;
    // The last point outside, when the step from it was longer than its distance (a forced
    // minimum step), so that the surface may lie between it and the next point.
    let mut bracket: Option<(f64, f64)> = None;
    for _ in 0..MAX_STEPS {
        // Free steps through the balls of the previous scanlines.
        while let Some(&b) = chords.prev.get(j) {
            let off = x - b.x;
            let h2 = b.r * b.r - off * off;
            if h2 <= 0.0 || b.t + h2.sqrt() <= t {
                j += 1;
            } else if b.t - h2.sqrt() <= t {
                t = b.t + h2.sqrt();
                bracket = None;
                chords.keep(b);
                j += 1;
            } else {
                break;
            }
        }
        if t > max_t + MIN_STEP {
            return None;
        }
        let near_now = *near.get_or_insert_with(|| {
            let lb = ray.lower_bound(t);
            lb.is_finite() && lb < FAR_PHASE
        });
        let d = if near_now {
            ray.dist(t)
        } else {
            let b = ray.ph.bone_sdf(&(ray.o + ray.dir * t));
            if b < FAR_PHASE {
                near = Some(true);
                ray.seed_bound(t, b);
                ray.dist(t)
            } else {
                b
            }
        };
        if d < HIT_EPS {
            let hit = match bracket {
                Some((a, fa)) => refine_crossing(ray, a, fa, t, d),
                None => t,
            };
            return (hit <= max_t).then_some(hit);
        }
        chords.keep(Ball { x, t, r: d });
        bracket = (d < MIN_STEP).then_some((t, d));
        t += d.max(MIN_STEP);
    }
    None
}

/// The first contact with the bone in `[a, b]`, where `a` is outside (`fa ≥ HIT_EPS`) and `b` at
/// or inside the surface: Illinois regula falsi across a clean crossing, bisection where the
/// distance is zero over a stretch (a ray running along a flat face); to within 1 µm.
fn refine_crossing(ray: &mut RaySdf<'_>, mut a: f64, mut fa: f64, mut b: f64, mut fb: f64) -> f64 {
    let mut side = 0;
    for _ in 0..32 {
        let w = b - a;
        if w < REFINE_TOL {
            break;
        }
        let m = if fb < -HIT_EPS {
            a + w * fa / (fa - fb)
        } else {
            a + 0.5 * w
        };
        let fm = ray.dist(m);
        if fm < HIT_EPS {
            if fm < 0.0 && fm > -HIT_EPS {
                return m;
            }
            (b, fb) = (m, fm);
            if side == -1 {
                fa *= 0.5;
            }
            side = -1;
        } else {
            (a, fa) = (m, fm);
            if side == 1 {
                fb *= 0.5;
            }
            side = 1;
        }
    }
    b
}

/// First depth where the skin depth crosses `tau` (either way), refined on the exact function.
fn first_crossing(knots: &[f64], step: f64, tau: f64, f: &impl Fn(f64) -> f64) -> Option<f64> {
    if knots.first().is_some_and(|&u| u < tau) {
        return Some(0.0);
    }
    crossing_from(knots, step, tau, f, 0).map(|(z, _)| z)
}

/// The first crossing of `tau` in knot segments `from..`, and the segment to continue from.
fn crossing_from(
    knots: &[f64],
    step: f64,
    tau: f64,
    f: &impl Fn(f64) -> f64,
    from: usize,
) -> Option<(f64, usize)> {
    for k in from..knots.len().saturating_sub(1) {
        let (u0, u1) = (knots[k] - tau, knots[k + 1] - tau);
        if (u0 < 0.0) == (u1 < 0.0) {
            continue;
        }
        // Secant (regula falsi) on the exact skin depth inside the segment.
        let (mut a, mut fa) = (k as f64 * step, u0);
        let (mut b, mut fb) = ((k + 1) as f64 * step, u1);
        let mut z = a + (b - a) * fa / (fa - fb);
        for _ in 0..3 {
            let fz = f(z) - tau;
            if (fz < 0.0) == (fa < 0.0) {
                (a, fa) = (z, fz);
            } else {
                (b, fb) = (z, fz);
            }
            if fa == fb {
                break;
            }
            z = a + (b - a) * fa / (fa - fb);
        }
        return Some((z, k + 1));
    }
    None
}

/// Amplitude reflection coefficient magnitude |(Z2 − Z1)/(Z2 + Z1)|.
fn reflection(z1: f64, z2: f64) -> f64 {
    ((z2 - z1) / (z2 + z1)).abs()
}

fn db_amp(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Index (mod 2³²) of the cell of edge `1/inv` holding coordinate `v`; cells are centred on the
/// integers (round to nearest). Adding 1.5·2⁵² leaves the rounded integer in the low mantissa
/// bits, which avoids the saturating float → int conversion (valid for |v·inv| < 2⁵¹).
#[inline(always)]
fn cell_index(v: f64, inv: f64) -> i64 {
    const ROUND: f64 = 6_755_399_441_055_744.0;
    ((v * inv + ROUND).to_bits() & 0xFFFF_FFFF) as i64
}

/// The 64-bit finaliser of MurmurHash3 (A. Appleby, public domain): a bijective avalanche mix.
#[inline(always)]
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[inline(always)]
fn hash3(ix: i64, iy: i64, iz: i64, key: u64) -> u64 {
    let h = key
        ^ (ix as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (iy as u64)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(21)
        ^ (iz as u64)
            .wrapping_mul(0x1656_67B1_9E37_79F9)
            .rotate_left(42);
    mix64(h)
}

/// Uniform in [0, 1) from the top 24 bits.
#[inline(always)]
fn unit(h: u64) -> f64 {
    (h >> 40) as f64 / (1u64 << 24) as f64
}

/// Noise key: the seed mixed with the exact bits of the pose.
fn pose_key(seed: u64, t: &Transform) -> u64 {
    let mut h = mix64(seed ^ 0xA076_1D64_78BD_642F);
    for v in t.rotation.iter().chain(t.translation.iter()) {
        h = mix64(h ^ v.to_bits());
    }
    h
}
