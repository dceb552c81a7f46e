//! Labelled ultrasound frames for training and evaluating bone and landmark detectors: realistic
//! probe poses over the lumbar back, and the landmarks a frame actually shows.
//!
//! # Poses
//!
//! [`sample_pose`] draws what a sonographer does over the lumbar spine: the probe face on the skin
//! of the back, its beam axis near the inward skin normal (tilted up to
//! [`PoseSamplerParams::max_tilt_deg`] in a random direction), the array either sagittal (along the
//! spine, `+x` probe toward superior) or transverse (across it, `+x` probe toward the patient's
//! right), turned about the beam by up to [`PoseSamplerParams::max_spin_deg`], the face centre
//! [`PoseSamplerParams::indentation_m`] below the skin so that coupling varies; a share
//! [`PoseSamplerParams::lifted_share`] of the poses is pressed too lightly or lifted
//! ([`PoseSamplerParams::lifted_indentation_m`]), so that part of the array or all of it is out
//! of contact (a tilted probe also lifts one end of its 38 mm face). With probability
//! [`PoseSamplerParams::near_landmark_share`] the probe looks at a landmark (class, then level
//! and side, uniformly), as a sonographer centres a structure: the landmark lies up to
//! [`PoseSamplerParams::in_plane_offset_m`] from the centre line and up to
//! [`PoseSamplerParams::out_of_plane_offset_m`] from the image plane (it may still be deeper
//! than the image or hidden); otherwise the probe lands anywhere over L1–L5 within
//! [`PoseSamplerParams::lateral_extent_m`] of the midline. The receive gain varies per frame
//! ([`PoseSamplerParams::gain_db`]).
//!
//! [`poses_for_seed`] gives the poses of one simulated patient from its seed alone, so the
//! training set writer and the held-out evaluation draw from the same distribution and replay
//! bit for bit.
//!
//! # Landmark labels
//!
//! The phantom has eight landmarks per vertebra; the detectors learn four classes
//! ([`LANDMARK_CLASSES`]): spinous tip, lamina, facet, transverse process — side and level are
//! decided later, in 3D, by fusion and registration. The vertebral body centre is never visible
//! (it lies in the shadow of the posterior elements) and has no class.
//!
//! A landmark the simulator lists for a frame counts as visible ([`visible_landmarks`]) when
//! it lies within [`LabelParams::max_distance_to_plane_m`] of the image plane, is not in an
//! acoustic shadow, its scanline is coupled (face at least [`LabelParams::min_indentation_m`]
//! into the skin) and it lies on the imaged bone surface: some scanline within
//! [`LabelParams::column_search_px`] columns hits bone within
//! [`LabelParams::surface_tolerance_m`] of the landmark's depth — and it is a *feature* of that
//! surface, something one frame can localise: an end of the imaged surface within
//! [`LabelParams::feature_window_m`] (a transverse process tip, a lamina edge at a gap) or an apex
//! (nothing more than 1 mm shallower within the window, the surface rising by
//! [`LabelParams::apex_rise_m`] or ending on both sides). A landmark in the middle of a flat
//! stretch (a lamina seen along its plate) has no position in the frame to find: it is left to
//! 3D fusion. Everything else would be a label no detector could honestly be asked for.

use nalgebra::{Matrix3, Rotation3, Unit, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_core::Transform;

use crate::error::{check_in_range as check, ErrorKind};
use crate::phantom::{Phantom, N_LEVELS};
use crate::ultrasound::UsFrame;
use crate::Error;

/// Detector landmark classes, index = class.
pub const LANDMARK_CLASSES: [&str; 4] = ["spinous_tip", "lamina", "facet", "transverse_process"];

/// Landmarks per vertebra in [`Phantom::landmarks`] order.
const PER_LEVEL: usize = 8;

/// Class of landmark `index` (as in [`Phantom::landmarks`]): 0 spinous tip, 1 lamina, 2 facet,
/// 3 transverse process; `None` for the body centre or an index past the last landmark.
pub fn landmark_class(index: usize) -> Option<usize> {
    if index >= N_LEVELS * PER_LEVEL {
        return None;
    }
    match index % PER_LEVEL {
        0 => Some(0),
        1 | 2 => Some(1),
        3 | 4 => Some(2),
        5 | 6 => Some(3),
        _ => None,
    }
}

/// Orientation of the image plane relative to the spine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanPlane {
    /// Array along the spine (craniocaudal), probe `+x` toward superior.
    Sagittal,
    /// Array across the spine, probe `+x` toward the patient's right.
    Transverse,
}

impl ScanPlane {
    /// `"sagittal"` or `"transverse"`.
    pub fn name(self) -> &'static str {
        match self {
            ScanPlane::Sagittal => "sagittal",
            ScanPlane::Transverse => "transverse",
        }
    }
}

/// Ranges of [`sample_pose`]; lengths in metres, angles in degrees.
#[derive(Clone, Debug, PartialEq)]
pub struct PoseSamplerParams {
    /// Largest angle between the beam and the inward skin normal (default 15°).
    pub max_tilt_deg: f64,
    /// Largest turn of the array about the beam away from the pure plane (default 10°).
    pub max_spin_deg: f64,
    /// Indentation of the probe face below the skin, uniform in this range (default 1–6 mm).
    pub indentation_m: [f64; 2],
    /// Share of poses pressed too lightly or lifted (default 0.1).
    pub lifted_share: f64,
    /// Indentation of those poses (default −3…+1 mm: negative = above the skin).
    pub lifted_indentation_m: [f64; 2],
    /// Share of poses centred near a landmark (default 0.8).
    pub near_landmark_share: f64,
    /// Offset of the landmark from the probe's centre line along the array (uniform ±, default
    /// 12 mm).
    pub in_plane_offset_m: f64,
    /// Offset of the landmark from the image plane (uniform ±, default 3 mm).
    pub out_of_plane_offset_m: f64,
    /// Poses not near a landmark: lateral distance from the midline, uniform ± (default 60 mm).
    pub lateral_extent_m: f64,
    /// Receive gain per frame, uniform in this range (dB; default −4…+4).
    pub gain_db: [f64; 2],
}

impl Default for PoseSamplerParams {
    fn default() -> Self {
        Self {
            max_tilt_deg: 15.0,
            max_spin_deg: 10.0,
            indentation_m: [1e-3, 6e-3],
            lifted_share: 0.1,
            lifted_indentation_m: [-3e-3, 1e-3],
            near_landmark_share: 0.8,
            in_plane_offset_m: 0.012,
            out_of_plane_offset_m: 0.003,
            lateral_extent_m: 0.06,
            gain_db: [-4.0, 4.0],
        }
    }
}

impl PoseSamplerParams {
    /// Checks every range is finite, ordered and plausible.
    pub fn validate(&self) -> Result<(), Error> {
        check("pose sampler max tilt (deg)", self.max_tilt_deg, 0.0, 60.0)?;
        check("pose sampler max spin (deg)", self.max_spin_deg, 0.0, 90.0)?;
        for (what, [lo, hi]) in [
            ("pose sampler indentation (m)", self.indentation_m),
            (
                "pose sampler lifted indentation (m)",
                self.lifted_indentation_m,
            ),
        ] {
            check(what, lo, -0.02, 0.02)?;
            check(what, hi, -0.02, 0.02)?;
            if lo > hi {
                return Err(ErrorKind::EmptyRange { what, lo, hi }.into());
            }
        }
        check("pose sampler lifted share", self.lifted_share, 0.0, 1.0)?;
        check(
            "pose sampler near-landmark share",
            self.near_landmark_share,
            0.0,
            1.0,
        )?;
        check(
            "pose sampler in-plane offset (m)",
            self.in_plane_offset_m,
            0.0,
            0.1,
        )?;
        check(
            "pose sampler out-of-plane offset (m)",
            self.out_of_plane_offset_m,
            0.0,
            0.1,
        )?;
        check(
            "pose sampler lateral extent (m)",
            self.lateral_extent_m,
            0.0,
            0.2,
        )?;
        let [lo, hi] = self.gain_db;
        check("pose sampler gain (dB)", lo, -30.0, 30.0)?;
        check("pose sampler gain (dB)", hi, -30.0, 30.0)?;
        if lo > hi {
            return Err(ErrorKind::EmptyRange {
                what: "pose sampler gain (dB)",
                lo,
                hi,
            }
            .into());
        }
        Ok(())
    }
}

/// One sampled probe pose and how it was drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledPose {
    /// Probe → `ct` (probe frame as in [`crate::ultrasound`]: `+z` beam, `+x` array).
    pub t_ct_probe: Transform,
    /// Sagittal or transverse.
    pub plane: ScanPlane,
    /// Vertebra the probe centre is nearest to (0 = L1 … 4 = L5).
    pub level: usize,
    /// Depth of the face centre below the undeformed skin, along y as the simulator measures
    /// it (m; negative = lifted).
    pub indentation_m: f64,
    /// Angle between the beam and the inward skin normal (degrees).
    pub tilt_deg: f64,
    /// Receive gain to render the frame with (dB).
    pub gain_db: f64,
}

/// Draws one probe pose over the lumbar back of `phantom`; see the module doc.
pub fn sample_pose(
    phantom: &Phantom,
    params: &PoseSamplerParams,
    rng: &mut impl Rng,
) -> SampledPose {
    let landmarks = phantom.landmarks();
    let xyz = |i: usize| Vector3::from(landmarks[i].xyz);
    let spinous: Vec<Vector3<f64>> = (0..N_LEVELS).map(|l| xyz(l * PER_LEVEL)).collect();
    let plane = if rng.random_bool(0.5) {
        ScanPlane::Sagittal
    } else {
        ScanPlane::Transverse
    };
    let along = match plane {
        ScanPlane::Sagittal => Vector3::z(),
        ScanPlane::Transverse => Vector3::x(),
    };

    let indentation = if rng.random_bool(params.lifted_share) {
        let [lo, hi] = params.lifted_indentation_m;
        uniform(rng, lo, hi)
    } else {
        let [lo, hi] = params.indentation_m;
        uniform(rng, lo, hi)
    };
    // Probe axes for a skin normal: the normal tilted by up to max_tilt in a random direction,
    // the array along the plane's direction made orthogonal to the beam, turned about it.
    let tilt = params.max_tilt_deg.to_radians() * rng.random::<f64>().sqrt();
    let azimuth = rng.random_range(0.0..std::f64::consts::TAU);
    let spin = rng.random_range(-1.0..=1.0) * params.max_spin_deg.to_radians();
    let axes = |normal: Vector3<f64>| {
        let e1 = (along - normal * along.dot(&normal)).normalize();
        let e2 = normal.cross(&e1);
        let axis = Unit::new_normalize(e1 * azimuth.cos() + e2 * azimuth.sin());
        let beam = Rotation3::from_axis_angle(&axis, tilt) * normal;
        let x0 = (along - beam * along.dot(&beam)).normalize();
        let xp = Rotation3::from_axis_angle(&Unit::new_normalize(beam), spin) * x0;
        Matrix3::from_columns(&[xp, beam.cross(&xp), beam])
    };

    let (rotation, origin) = if rng.random_bool(params.near_landmark_share) {
        // Aim at a landmark: the probe on the skin, the landmark `a` along the array and `b`
        // across the image plane from the probe's centre line.
        let class = rng.random_range(0..4usize);
        let level = rng.random_range(0..N_LEVELS);
        let slot = match class {
            0 => 0,
            c => 2 * c - 1 + rng.random_range(0..2usize),
        };
        let p = xyz(level * PER_LEVEL + slot);
        let a = rng.random_range(-1.0..=1.0) * params.in_plane_offset_m;
        let b = rng.random_range(-1.0..=1.0) * params.out_of_plane_offset_m;
        let rotation = axes(skin_normal(phantom, p.x, p.z));
        let (xp, yp, beam): (Vector3<f64>, Vector3<f64>, Vector3<f64>) = (
            rotation.column(0).into(),
            rotation.column(1).into(),
            rotation.column(2).into(),
        );
        // Slide back along the beam until the face is `indentation` below the skin.
        let q = p - xp * a - yp * b;
        let mut t = q.y - phantom.skin_y(q.x, q.z);
        for _ in 0..8 {
            let o = q - beam * t;
            let e = o.y - phantom.skin_y(o.x, o.z) - indentation;
            t += e / beam.y.max(0.2);
        }
        (rotation, q - beam * t)
    } else {
        let (z_lo, z_hi) = (spinous[N_LEVELS - 1].z - 0.02, spinous[0].z + 0.02);
        let z = rng.random_range(z_lo..=z_hi);
        let x = midline_x(&spinous, z) + rng.random_range(-1.0..=1.0) * params.lateral_extent_m;
        let skin = Vector3::new(x, phantom.skin_y(x, z), z);
        (
            axes(skin_normal(phantom, x, z)),
            skin + Vector3::y() * indentation,
        )
    };
    let level = (0..N_LEVELS)
        .min_by(|&a, &b| {
            (spinous[a].z - origin.z)
                .abs()
                .total_cmp(&(spinous[b].z - origin.z).abs())
        })
        .unwrap_or(0);
    let [g_lo, g_hi] = params.gain_db;
    SampledPose {
        t_ct_probe: Transform::new(rotation, origin),
        plane,
        level,
        indentation_m: origin.y - phantom.skin_y(origin.x, origin.z),
        tilt_deg: tilt.to_degrees(),
        gain_db: uniform(rng, g_lo, g_hi),
    }
}

/// Inward unit normal of the skin at (x, z): gradient of `y − skin_y(x, z)`.
fn skin_normal(phantom: &Phantom, x: f64, z: f64) -> Vector3<f64> {
    let h = 1e-4;
    let sx = (phantom.skin_y(x + h, z) - phantom.skin_y(x - h, z)) / (2.0 * h);
    let sz = (phantom.skin_y(x, z + h) - phantom.skin_y(x, z - h)) / (2.0 * h);
    Vector3::new(-sx, 1.0, -sz).normalize()
}

fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    }
}

/// x of the spine's midline at height `z`: the spinous tips' x, interpolated piecewise linearly
/// (held beyond L1 and L5). `spinous` is ordered L1 … L5, i.e. by decreasing z.
fn midline_x(spinous: &[Vector3<f64>], z: f64) -> f64 {
    for w in spinous.windows(2) {
        let (a, b) = (w[0], w[1]);
        if z <= a.z && z >= b.z && a.z > b.z {
            let t = (z - b.z) / (a.z - b.z);
            return b.x + t * (a.x - b.x);
        }
    }
    match (spinous.first(), spinous.last()) {
        (Some(a), _) if z > a.z => a.x,
        (_, Some(b)) => b.x,
        _ => 0.0,
    }
}

/// The random source of patient `seed`'s poses (independent of the speckle and anatomy draws).
pub fn pose_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x007E_1EC4_0DA7_A5E7_u64)
}

/// The first `n` poses of patient `seed` (its phantom `phantom`), in order: what the dataset
/// writer renders and what the held-out evaluation replays.
pub fn poses_for_seed(
    phantom: &Phantom,
    seed: u64,
    n: usize,
    params: &PoseSamplerParams,
) -> Result<Vec<SampledPose>, Error> {
    params.validate()?;
    let mut rng = pose_rng(seed);
    Ok((0..n)
        .map(|_| sample_pose(phantom, params, &mut rng))
        .collect())
}

/// Landmark listing margin of [`render_pose`] (m): landmarks up to 13 mm from the plane (1 mm
/// half slice + 12 mm) are listed, so that detections of structures off the plane (a spinous
/// process's end face is 20 mm tall; a slice 8 mm from its centre still shows a tip) can be told
/// from false ones ([`ignored_landmarks`]).
pub const RENDER_LANDMARK_MARGIN_M: f64 = 0.012;

/// Renders `pose` of patient `seed` (its phantom `phantom`; `seed` also draws the speckle, as
/// `telecho sim us` does) with the default scanner settings and the pose's gain. The frame lists
/// the landmarks within [`RENDER_LANDMARK_MARGIN_M`] + 1 mm of the plane, a wider slab than
/// [`LabelParams::max_distance_to_plane_m`], so that near misses can be told apart.
pub fn render_pose(
    phantom: &std::sync::Arc<Phantom>,
    seed: u64,
    pose: &SampledPose,
) -> Result<UsFrame, Error> {
    let params = crate::UsParams {
        gain_db: pose.gain_db,
        landmark_margin_m: RENDER_LANDMARK_MARGIN_M,
        ..Default::default()
    };
    let mut sim = crate::UltrasoundSim::new(phantom.clone(), params, seed)?;
    sim.render_new(&pose.t_ct_probe)
}

/// When a landmark of a frame counts as visible; lengths in metres.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelParams {
    /// Largest distance from the image plane (default 2 mm: the 2 mm slice plus 1 mm).
    pub max_distance_to_plane_m: f64,
    /// Largest depth difference between the landmark and the imaged bone surface near it
    /// (default 2 mm).
    pub surface_tolerance_m: f64,
    /// Columns searched either side of the landmark for that surface (default 3).
    pub column_search_px: usize,
    /// Smallest indentation of the landmark's scanline below the skin (default 0.3 mm: a
    /// scanline just touching the skin shows almost nothing).
    pub min_indentation_m: f64,
    /// Half-width of the window in which a landmark must be an apex or an end of the imaged
    /// surface to be localisable in the frame (default 3 mm, the match tolerance).
    pub feature_window_m: f64,
    /// Rise of the surface either side of an apex, within twice the window (default 1 mm).
    pub apex_rise_m: f64,
    /// Landmarks listed in the frame but not visible count as `ignore` up to this distance from
    /// the image plane (default 7 mm); spinous tips further out while the plane still cuts
    /// their process's end face too ([`ignored_landmarks`]).
    pub ignore_distance_m: f64,
}

impl Default for LabelParams {
    fn default() -> Self {
        Self {
            max_distance_to_plane_m: 2e-3,
            surface_tolerance_m: 2e-3,
            column_search_px: 3,
            min_indentation_m: 3e-4,
            feature_window_m: 3e-3,
            apex_rise_m: 1e-3,
            ignore_distance_m: 7e-3,
        }
    }
}

/// A visible landmark of a frame, in pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledLandmark {
    /// Index into [`Phantom::landmarks`] (name via `UltrasoundSim::landmark_name`).
    pub index: usize,
    /// Detector class, index into [`LANDMARK_CLASSES`].
    pub class: usize,
    /// Fractional row (depth) and column (lateral) of the landmark.
    pub row: f64,
    /// Fractional column.
    pub col: f64,
    /// Signed distance from the image plane (m).
    pub distance_to_plane_m: f64,
}

/// The landmarks of `frame` (rendered from `phantom`) a detector can be asked for; see the
/// module doc.
pub fn visible_landmarks(
    frame: &UsFrame,
    phantom: &Phantom,
    params: &LabelParams,
) -> Vec<LabelledLandmark> {
    let t = &frame.t_ct_probe;
    let ex: Vector3<f64> = t.rotation.column(0).into();
    let mut out = Vec::new();
    for l in &frame.landmarks {
        let Some(class) = landmark_class(l.index) else {
            continue;
        };
        if l.shadowed || l.distance_to_plane_m.abs() > params.max_distance_to_plane_m {
            continue;
        }
        if !(l.row.is_finite() && l.col.is_finite()) || l.col < -0.5 || l.row < 0.0 {
            continue;
        }
        let c0 = l.col.round().max(0.0) as usize;
        if c0 >= frame.width {
            continue;
        }
        // Coupling of the landmark's scanline.
        let x = frame.pixel_to_probe(0.0, l.col).x;
        let face = t.translation + ex * x;
        if face.y - phantom.skin_y(face.x, face.z) < params.min_indentation_m {
            continue;
        }
        // On the imaged bone surface.
        let depth = l.row * frame.axial_spacing_m;
        let lo = c0.saturating_sub(params.column_search_px);
        let hi = (c0 + params.column_search_px).min(frame.width - 1);
        let on_surface = frame.bone_depth_m[lo..=hi]
            .iter()
            .flatten()
            .any(|d| (d - depth).abs() <= params.surface_tolerance_m);
        if !on_surface || !is_surface_feature(frame, phantom, c0, depth, params) {
            continue;
        }
        out.push(LabelledLandmark {
            index: l.index,
            class,
            row: l.row,
            col: l.col,
            distance_to_plane_m: l.distance_to_plane_m,
        });
    }
    out
}

/// The landmarks of `frame` that are in view but not `visible` (as [`visible_landmarks`] gave
/// them): a detector is neither rewarded nor punished for finding them. Every landmark with a
/// class up to [`LabelParams::ignore_distance_m`] from the plane, at its projection; and every
/// spinous tip whose process's posterior end face ([`Phantom::spinous_face_half_axes`]) the
/// plane cuts, at the centre of the cut: a transverse slice 8 mm above or below the tip shows
/// the same flat-topped apex as one through it, so no single frame can tell them apart (3D fusion
/// does, from the sweep). Likewise every facet whose inferior articular process
/// ([`Phantom::facet_column`]) the plane cuts, where it cuts the column through the landmark: a
/// transverse slice along that process shows the same posterolateral corner. And every
/// transverse-process tip whose process ([`Phantom::transverse_process_axis`]) the plane cuts
/// across, at the top and the two flanks of the section: a paramedian sagittal slice anywhere
/// along the process shows the same round bump, its imaged surface ending on either side.
pub fn ignored_landmarks(
    frame: &UsFrame,
    phantom: &Phantom,
    visible: &[LabelledLandmark],
    params: &LabelParams,
) -> Vec<LabelledLandmark> {
    let t = &frame.t_ct_probe;
    let n: Vector3<f64> = t.rotation.column(1).into();
    let t_probe_ct = t.inverse();
    let half = 0.5 * (frame.width.max(1) - 1) as f64 * frame.lateral_spacing_m;
    let to_pixel = |p: &Vector3<f64>| {
        let q = t_probe_ct.transform_point(p);
        (
            q.z / frame.axial_spacing_m,
            (q.x + half) / frame.lateral_spacing_m,
        )
    };
    let mut out = Vec::new();
    for l in &frame.landmarks {
        let Some(class) = landmark_class(l.index) else {
            continue;
        };
        if visible.iter().any(|v| v.index == l.index) {
            continue;
        }
        let d = l.distance_to_plane_m;
        let mut at = Vec::new();
        if d.abs() <= params.ignore_distance_m {
            at.push((l.row, l.col));
        }
        // Past the slab: spinous tips and facets are ignored where the plane still cuts the
        // structure that looks the same as the landmark, at the cut.
        let lm = frame.pixel_to_ct(l.row, l.col) + n * d;
        let level = l.index / PER_LEVEL;
        let cut = match class {
            0 if at.is_empty() => spinous_face_cut(phantom, level, &lm, &n, d),
            2 if at.is_empty() => facet_column_cut(phantom, level, &lm, &n, d),
            _ => None,
        };
        at.extend(cut.as_ref().map(to_pixel));
        push_inside(&mut out, frame, l.index, class, d, at);
    }
    // Transverse processes wherever the plane cuts across one, on the outline of the section
    // (also within the slab, where the tip's projection alone would miss the flanks). From the
    // phantom, not the frame's list: a section may be in the image while the tip's projection
    // is not.
    let beam: Vector3<f64> = t.rotation.column(2).into();
    let mut all = None;
    for level in 0..N_LEVELS {
        for side in 0..2 {
            let index = level * PER_LEVEL + 5 + side;
            if visible.iter().any(|v| v.index == index) {
                continue;
            }
            let cuts = transverse_process_section(phantom, level, side, &t.translation, &n, &beam);
            if cuts.is_empty() {
                continue;
            }
            let lms = all.get_or_insert_with(|| phantom.landmarks());
            let d = t_probe_ct.transform_point(&Vector3::from(lms[index].xyz)).y;
            push_inside(
                &mut out,
                frame,
                index,
                3,
                d,
                cuts.iter().map(to_pixel).collect(),
            );
        }
    }
    out
}

/// Appends an ignored entry of landmark `index` at each (row, col) of `at` inside the frame.
fn push_inside(
    out: &mut Vec<LabelledLandmark>,
    frame: &UsFrame,
    index: usize,
    class: usize,
    distance_to_plane_m: f64,
    at: Vec<(f64, f64)>,
) {
    for (row, col) in at {
        let inside = (0.0..=(frame.height - 1) as f64).contains(&row)
            && (-0.5..=frame.width as f64 - 0.5).contains(&col);
        if inside {
            out.push(LabelledLandmark {
                index,
                class,
                row,
                col,
                distance_to_plane_m,
            });
        }
    }
}

/// The point (ct) of vertebra `level`'s spinous end face, centred on `tip`, nearest the tip on a
/// plane with unit normal `n` from which the tip lies `d` (m) along `n`; `None` when the plane
/// misses the face.
fn spinous_face_cut(
    phantom: &Phantom,
    level: usize,
    tip: &Vector3<f64>,
    n: &Vector3<f64>,
    d: f64,
) -> Option<Vector3<f64>> {
    let [a, b] = phantom.spinous_face_half_axes(level)?;
    let (na, nb) = (n.dot(&a), n.dot(&b));
    // Face point tip + u a + v b with |u|, |v| <= 1 on the plane: n·(u a + v b) = -d. Least-norm
    // (u, v) first; if it leaves the face, the larger coordinate is pinned at its edge.
    let nn = na * na + nb * nb;
    if nn < 1e-12 {
        return None;
    }
    let (mut u, mut v) = (-d * na / nn, -d * nb / nn);
    if u.abs() > 1.0 {
        u = u.signum();
        v = if nb.abs() > 1e-9 {
            (-d - u * na) / nb
        } else {
            f64::INFINITY
        };
    } else if v.abs() > 1.0 {
        v = v.signum();
        u = if na.abs() > 1e-9 {
            (-d - v * nb) / na
        } else {
            f64::INFINITY
        };
    }
    (u.abs() <= 1.0 && v.abs() <= 1.0).then(|| tip + a * u + b * v)
}

/// Where a plane with unit normal `n`, from which facet landmark `corner` (ct) lies `d` (m)
/// along `n`, cuts the articular column of vertebra `level` through that corner
/// ([`Phantom::facet_column`]); `None` when it misses it (or runs along it).
fn facet_column_cut(
    phantom: &Phantom,
    level: usize,
    corner: &Vector3<f64>,
    n: &Vector3<f64>,
    d: f64,
) -> Option<Vector3<f64>> {
    let (axis, below, above) = phantom.facet_column(level)?;
    let along = n.dot(&axis);
    if along.abs() < 1e-6 {
        return None;
    }
    // corner + s axis on the plane: n·(s axis) = -d.
    let s = -d / along;
    (-below..=above).contains(&s).then(|| corner + axis * s)
}

/// Where a plane through `p0` (ct) with unit normal `n` cuts the transverse process of vertebra
/// `level` on `side` ([`Phantom::transverse_process_axis`], a capsule): three points of the
/// section's outline as a beam along `beam` images it, its top (facing the probe) and its two
/// flanks level with the axis, where the imaged surface ends; nothing when the plane misses the
/// process (or runs along its axis).
fn transverse_process_section(
    phantom: &Phantom,
    level: usize,
    side: usize,
    p0: &Vector3<f64>,
    n: &Vector3<f64>,
    beam: &Vector3<f64>,
) -> Vec<Vector3<f64>> {
    let Some((root, end, r)) = phantom.transverse_process_axis(level, side) else {
        return Vec::new();
    };
    let axis = end - root;
    let along = n.dot(&axis);
    if along.abs() < 1e-9 {
        return Vec::new();
    }
    let s = n.dot(&(p0 - root)) / along;
    // Across the shaft, a section of radius r; past the lateral end, a section of the end cap.
    let (centre, radius) = if (0.0..=1.0).contains(&s) {
        (root + axis * s, r)
    } else if s > 1.0 {
        let h = n.dot(&(end - p0));
        if h.abs() >= r {
            return Vec::new();
        }
        (end - n * h, (r * r - h * h).sqrt())
    } else {
        return Vec::new();
    };
    let u = axis.normalize();
    let up = beam - u * beam.dot(&u);
    let norm = up.norm();
    if norm < 1e-9 {
        return Vec::new();
    }
    let up = up / norm;
    let across = u.cross(&up);
    vec![
        centre - up * radius,
        centre + across * radius,
        centre - across * radius,
    ]
}

/// How far past the image's deep edge [`is_surface_feature`] follows a scanline that met no bone
/// in the image (m): bone within it means the surface leaves the field there, it does not end.
const PAST_IMAGE_M: f64 = 10e-3;

/// Whether a landmark at column `c` and depth `depth` (m) is a feature of the imaged bone
/// surface: an end of it (a scanline within the window meets no bone) or an apex (no surface point
/// within the window more than 1 mm shallower, and the surface rising by
/// [`LabelParams::apex_rise_m`] or ending on both sides within twice the window). A scanline that
/// meets no bone in the image but does within [`PAST_IMAGE_M`] past its deep edge is no end: the
/// surface only leaves the field of view there, and counts as at least as deep as that edge.
fn is_surface_feature(
    frame: &UsFrame,
    phantom: &Phantom,
    c: usize,
    depth: f64,
    params: &LabelParams,
) -> bool {
    let w = frame.width;
    let win = (params.feature_window_m / frame.lateral_spacing_m).round() as usize;
    let bottom = (frame.height.max(1) - 1) as f64 * frame.axial_spacing_m;
    let beam: Vector3<f64> = frame.t_ct_probe.rotation.column(2).into();
    // Per column: the imaged surface depth, the image's deep edge where the surface leaves the
    // field, or `None` where it ends.
    let surface = |k: usize| -> Option<f64> {
        frame.bone_depth_m[k].or_else(|| {
            let edge = frame.pixel_to_ct((frame.height.max(1) - 1) as f64, k as f64);
            bone_along(phantom, &edge, &beam, PAST_IMAGE_M).then_some(bottom)
        })
    };
    let (lo, hi) = (c.saturating_sub(win), (c + win).min(w - 1));
    let near: Vec<Option<f64>> = (lo..=hi).map(surface).collect();
    if near.iter().any(Option::is_none) {
        return true;
    }
    if near.iter().flatten().any(|&x| x < depth - 1e-3) {
        return false;
    }
    // At the image border the surface may go on: no rise seen means no apex.
    let at = |k: usize| match k.checked_sub(lo) {
        Some(i) if k <= hi => near[i],
        _ => surface(k),
    };
    let rises = |k: usize| at(k).is_none_or(|x| x - depth >= params.apex_rise_m);
    let (lo2, hi2) = (c.saturating_sub(2 * win), (c + 2 * win).min(w - 1));
    (lo2..c).any(rises) && (c + 1..=hi2).any(rises)
}

/// Whether a ray from `from` (ct) along unit `dir` meets bone within `length` (m), by sphere
/// tracing the phantom's distance field.
fn bone_along(phantom: &Phantom, from: &Vector3<f64>, dir: &Vector3<f64>, length: f64) -> bool {
    let mut s = 0.0;
    while s <= length {
        let d = phantom.bone_sdf(&(from + dir * s));
        if d <= 0.0 {
            return true;
        }
        s += d.max(1e-4);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_the_surface_landmarks() {
        let classes: Vec<_> = (0..8).map(landmark_class).collect();
        assert_eq!(
            classes,
            [
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(3),
                Some(3),
                None
            ]
        );
        assert_eq!(landmark_class(40), None);
    }

    #[test]
    fn poses_are_on_the_back_and_replay() {
        let ph = Phantom::generate(3);
        let p = PoseSamplerParams::default();
        let a = poses_for_seed(&ph, 3, 200, &p).unwrap();
        assert_eq!(a, poses_for_seed(&ph, 3, 200, &p).unwrap());
        let sagittal = a.iter().filter(|s| s.plane == ScanPlane::Sagittal).count();
        assert!((60..140).contains(&sagittal), "{sagittal}");
        for s in &a {
            let t = &s.t_ct_probe;
            let o = t.translation;
            // Face centre within a few mm of the skin, beam pointing anterior within the tilt.
            let depth = o.y - ph.skin_y(o.x, o.z);
            assert!((-0.004..0.007).contains(&depth), "{depth}");
            assert!(s.tilt_deg <= 15.0 + 1e-9);
            assert!(t.rotation.column(2).y > (25f64).to_radians().cos());
            let r = t.rotation;
            assert!((r.transpose() * r - Matrix3::identity()).abs().max() < 1e-9);
            assert!((r.determinant() - 1.0).abs() < 1e-9);
        }
        let lifted = a.iter().filter(|s| s.indentation_m < 1e-3).count();
        assert!((5..45).contains(&lifted), "{lifted}");
    }

    #[test]
    fn visible_landmarks_are_surface_features_on_the_plane() {
        let ph = std::sync::Arc::new(Phantom::generate(4));
        let poses = poses_for_seed(&ph, 4, 150, &PoseSamplerParams::default()).unwrap();
        let (mut per_class, mut listed) = ([0usize; 4], 0usize);
        for s in &poses {
            let frame = render_pose(&ph, 4, s).unwrap();
            listed += frame.landmarks.len();
            for l in visible_landmarks(&frame, &ph, &LabelParams::default()) {
                per_class[l.class] += 1;
                assert!(l.distance_to_plane_m.abs() <= 2e-3);
                assert!((0.0..256.0).contains(&l.row) && (-0.5..256.0).contains(&l.col));
                // On the imaged surface.
                let c = l.col.round() as usize;
                let near = frame.bone_depth_m[c.saturating_sub(3)..=(c + 3).min(255)]
                    .iter()
                    .flatten()
                    .any(|d| (d - l.row * frame.axial_spacing_m).abs() <= 2e-3);
                assert!(near, "{l:?}");
            }
        }
        // Spinous tips (apexes) dominate; lamina landmarks sit on flat plates and are rarely
        // features of a frame.
        let visible: usize = per_class.iter().sum();
        assert!(per_class[0] >= 5, "{per_class:?}");
        assert!(
            visible >= 10 && visible < listed / 2,
            "{per_class:?} of {listed}"
        );
    }

    /// A transverse frame `dz` (m) above L3's spinous tip, straight down, face 2 mm into the skin.
    fn transverse_over_l3_tip(ph: &std::sync::Arc<Phantom>, dz: f64) -> UsFrame {
        transverse_over(ph, 2 * PER_LEVEL, dz)
    }

    /// A transverse frame centred over landmark `index`, `dz` (m) superior of it.
    fn transverse_over(ph: &std::sync::Arc<Phantom>, index: usize, dz: f64) -> UsFrame {
        let lm = Vector3::from(ph.landmarks()[index].xyz);
        // Beam along +y (anterior), array along +x, elevation along -z.
        let rotation = Matrix3::from_columns(&[Vector3::x(), -Vector3::z(), Vector3::y()]);
        frame_at(ph, rotation, ScanPlane::Transverse, lm.x, lm.z + dz)
    }

    /// A frame of patient 4 with its probe 2 mm into the skin over ct `(x, z)`, beam straight down.
    fn frame_at(
        ph: &std::sync::Arc<Phantom>,
        rotation: Matrix3<f64>,
        plane: ScanPlane,
        x: f64,
        z: f64,
    ) -> UsFrame {
        let pose = SampledPose {
            t_ct_probe: Transform::new(rotation, Vector3::new(x, ph.skin_y(x, z) + 2e-3, z)),
            plane,
            level: 2,
            indentation_m: 2e-3,
            tilt_deg: 0.0,
            gain_db: 0.0,
        };
        render_pose(ph, 4, &pose).unwrap()
    }

    /// Whether an imaged bone surface lies within 2 mm of `l`'s depth, 3 columns either side.
    fn on_imaged_surface(f: &UsFrame, l: &LabelledLandmark) -> bool {
        let c = l.col.round() as usize;
        f.bone_depth_m[c.saturating_sub(3)..=(c + 3).min(f.width - 1)]
            .iter()
            .flatten()
            .any(|d| (d - l.row * f.axial_spacing_m).abs() <= 2e-3)
    }

    #[test]
    fn spinous_sections_off_the_tip_are_ignored_at_the_cut() {
        let ph = std::sync::Arc::new(Phantom::generate(4));
        let params = LabelParams::default();
        let [a, b] = ph.spinous_face_half_axes(2).unwrap();
        // The end face: about 7 mm wide and 20 mm tall, give or take the patient's scale.
        assert!((a.norm() - 3.5e-3).abs() < 0.4e-3 && (b.norm() - 10e-3).abs() < 1.0e-3);
        let tip_index = 2 * PER_LEVEL;
        // Through the tip: visible, not ignored.
        let f = transverse_over_l3_tip(&ph, 0.0);
        let vis = visible_landmarks(&f, &ph, &params);
        assert!(vis.iter().any(|l| l.index == tip_index), "{vis:?}");
        assert!(!ignored_landmarks(&f, &ph, &vis, &params)
            .iter()
            .any(|l| l.index == tip_index));
        for dz in [-8.5e-3, 8.5e-3] {
            // 8.5 mm off: past the 7 mm slab, but the plane still cuts the end face, which the
            // frame shows as an apex; the ignore entry sits on it, not at the tip's projection.
            let f = transverse_over_l3_tip(&ph, dz);
            let vis = visible_landmarks(&f, &ph, &params);
            assert!(!vis.iter().any(|l| l.index == tip_index));
            let ign = ignored_landmarks(&f, &ph, &vis, &params);
            let l = ign
                .iter()
                .find(|l| l.index == tip_index)
                .unwrap_or_else(|| panic!("dz {dz}: {ign:?}"));
            assert_eq!(l.class, 0);
            assert!(l.distance_to_plane_m.abs() > params.ignore_distance_m);
            let c = l.col.round() as usize;
            let apex = f.bone_depth_m[c.saturating_sub(3)..=(c + 3).min(f.width - 1)]
                .iter()
                .flatten()
                .fold(f64::INFINITY, |m, d| m.min(*d));
            let err = (apex - l.row * f.axial_spacing_m).abs();
            assert!(err < 1e-3, "dz {dz}: cut {:.1} mm from the apex", err * 1e3);
            // Laminae and transverse processes keep the 7 mm slab.
            assert!(ign.iter().all(|l| matches!(l.class, 0 | 2)
                || l.distance_to_plane_m.abs() <= params.ignore_distance_m));
        }
        // 16 mm off: past the face, nothing to ignore.
        let f = transverse_over_l3_tip(&ph, 16e-3);
        let vis = visible_landmarks(&f, &ph, &params);
        assert!(!ignored_landmarks(&f, &ph, &vis, &params)
            .iter()
            .any(|l| l.index == tip_index));
    }
    #[test]
    fn a_surface_leaving_the_image_at_its_deep_edge_does_not_end_there() {
        let ph = std::sync::Arc::new(Phantom::generate(4));
        let params = LabelParams::default();
        let mut f = transverse_over_l3_tip(&ph, 0.0);
        let win = (params.feature_window_m / f.lateral_spacing_m).round() as usize;
        let bottom = (f.height - 1) as f64 * f.axial_spacing_m;
        let beam: Vector3<f64> = f.t_ct_probe.rotation.column(2).into();
        let past = |f: &UsFrame, k: usize| {
            let edge = f.pixel_to_ct((f.height - 1) as f64, k as f64);
            bone_along(&ph, &edge, &beam, PAST_IMAGE_M)
        };
        // Midline: the vertebral body lies within 10 mm past the 70 mm deep edge. Take away the
        // imaged surface around a column there: a landmark just above the edge is then neither an
        // end of the surface (it goes on below the image) nor an apex (no rise of 1 mm seen).
        let c = (2 * win..f.width - 2 * win)
            .find(|&c| (c - 2 * win..=c + 2 * win).all(|k| past(&f, k)))
            .expect("bone past the deep edge somewhere under the midline");
        for k in c - 2 * win..=c + 2 * win {
            f.bone_depth_m[k] = None;
        }
        assert!(!is_surface_feature(&f, &ph, c, bottom - 0.5e-3, &params));
        // 80 mm to the side nothing lies past the edge: the same empty columns end the surface.
        f.t_ct_probe.translation.x += 0.08;
        assert!((c - win..=c + win).all(|k| !past(&f, k)));
        assert!(is_surface_feature(&f, &ph, c, bottom - 0.5e-3, &params));
    }

    /// A sagittal frame at ct `x`, centred on the height of landmark `index`.
    fn sagittal_at(ph: &std::sync::Arc<Phantom>, index: usize, x: f64) -> UsFrame {
        let z = ph.landmarks()[index].xyz[2];
        // Beam along +y (anterior), array along +z, elevation along +x.
        let rotation = Matrix3::from_columns(&[Vector3::z(), Vector3::x(), Vector3::y()]);
        frame_at(ph, rotation, ScanPlane::Sagittal, x, z)
    }

    #[test]
    fn transverse_process_sections_are_ignored_at_the_bump() {
        let ph = std::sync::Arc::new(Phantom::generate(4));
        let params = LabelParams::default();
        let tp = 2 * PER_LEVEL + 5; // L3_transverse_right
        let tip = Vector3::from(ph.landmarks()[tp].xyz);
        let (root, end, r) = ph.transverse_process_axis(2, 0).unwrap();
        // The process points laterally (+x on the right), 4.5 mm in radius give or take the
        // patient's scale, and its landmark is the lateral pole of the end cap.
        assert!(end.x - root.x > 15e-3, "{root:?} {end:?}");
        assert!((r - 4.5e-3).abs() < 0.5e-3);
        assert!((tip - (end + Vector3::x() * r)).norm() < 1e-3);
        assert!(ph.transverse_process_axis(2, 2).is_none());
        for dx in [3e-3, 10e-3, 15e-3] {
            // Across the process (past the 7 mm slab or within it): ignored at the top and the
            // flanks of the section, the top on the imaged surface.
            let f = sagittal_at(&ph, tp, tip.x - dx);
            let vis = visible_landmarks(&f, &ph, &params);
            assert!(!vis.iter().any(|l| l.index == tp));
            let ign: Vec<_> = ignored_landmarks(&f, &ph, &vis, &params)
                .into_iter()
                .filter(|l| l.index == tp)
                .collect();
            // Within the slab the tip's projection is ignored as well.
            let slab = usize::from(dx <= params.ignore_distance_m);
            assert_eq!(ign.len(), 3 + slab, "dx {dx}: {ign:?}");
            let u = (end - root).normalize();
            let (mut top, mut flanks) = (0, 0);
            for l in &ign[slab..] {
                assert_eq!(l.class, 3);
                let p = f.pixel_to_ct(l.row, l.col);
                // On the process's surface: one radius from its axis segment.
                let k = ((p - root).dot(&u)).clamp(0.0, (end - root).norm());
                let radial = p - (root + u * k);
                assert!((radial.norm() - r).abs() < 0.5e-3, "dx {dx}: {radial:?}");
                let rho = radial.norm();
                if radial.y < -0.9 * rho {
                    top += 1;
                    assert!(
                        on_imaged_surface(&f, l),
                        "dx {dx}: the top is not on the imaged surface"
                    );
                } else if radial.y.abs() < 0.2 * rho {
                    flanks += 1;
                }
            }
            assert_eq!((top, flanks), (1, 2), "dx {dx}");
        }
        // Medial of the root: the plane misses the process.
        let f = sagittal_at(&ph, tp, root.x - 3e-3);
        let vis = visible_landmarks(&f, &ph, &params);
        assert!(!ignored_landmarks(&f, &ph, &vis, &params)
            .iter()
            .any(|l| l.index == tp));
    }

    #[test]
    fn facet_sections_along_the_articular_process_are_ignored_at_the_cut() {
        let ph = std::sync::Arc::new(Phantom::generate(4));
        let params = LabelParams::default();
        let (axis, below, above) = ph.facet_column(2).unwrap();
        // The column runs superiorly (ct +z) 6.5 mm below and 14.5 mm above the joint centre,
        // give or take the patient's scale.
        assert!(axis.z > 0.95, "{axis:?}");
        assert!((below - 6.5e-3).abs() < 1e-3 && (above - 14.5e-3).abs() < 1.5e-3);
        let facet = 2 * PER_LEVEL + 3; // L3_facet_right
        let lm = Vector3::from(ph.landmarks()[facet].xyz);
        for dz in [10e-3, 12e-3] {
            // Past the 7 mm slab, on the inferior articular process above the joint: ignored
            // where the plane cuts the column through the landmark, which is on the imaged
            // surface.
            let f = transverse_over(&ph, facet, dz);
            let vis = visible_landmarks(&f, &ph, &params);
            assert!(!vis.iter().any(|l| l.index == facet));
            let ign = ignored_landmarks(&f, &ph, &vis, &params);
            let l = ign
                .iter()
                .find(|l| l.index == facet)
                .unwrap_or_else(|| panic!("dz {dz}: {ign:?}"));
            assert_eq!(l.class, 2);
            assert!(l.distance_to_plane_m.abs() > params.ignore_distance_m);
            let cut = f.pixel_to_ct(l.row, l.col);
            let expected = lm + axis * (f.t_ct_probe.translation.z - lm.z) / axis.z;
            assert!(
                (cut - expected).norm() < 1e-3,
                "dz {dz}: cut {:.1} mm from the column",
                (cut - expected).norm() * 1e3
            );
            assert!(
                on_imaged_surface(&f, l),
                "dz {dz}: the cut is not on the imaged surface"
            );
        }
        // Below the process (past the slab) and far above it: nothing to ignore.
        for dz in [-9e-3, 20e-3] {
            let f = transverse_over(&ph, facet, dz);
            let vis = visible_landmarks(&f, &ph, &params);
            assert!(
                !ignored_landmarks(&f, &ph, &vis, &params)
                    .iter()
                    .any(|l| l.index == facet),
                "dz {dz}"
            );
        }
    }
}
