//! Per-frame detections shared by the classical detector and the CNN: bone-surface profile and
//! landmark candidates in image coordinates.
//!
//! A [`Detector`] turns one B-mode frame (row-major `u8`, row 0 at the probe face) into a
//! [`FrameDetection`]: per column the bone-surface row and a confidence (the same profile the
//! classical [`crate::us_bone::BoneDetection`] gives), and landmark candidates of the four
//! [`LandmarkClass`]es with a score. Side and vertebral level are not decided per frame: they come
//! from 3D fusion and registration. Two detectors implement the trait:
//!
//! * [`ClassicalDetector`]: the bright-ridge + shadow detector of [`crate::us_bone`] and landmarks
//!   read off the geometry of its bone profile ([`classical_landmarks`]) — the baseline;
//! * [`crate::cnn::CnnDetector`]: the learned network of `models/`.
//!
//! Pixel geometry ([`ImageGeometry`]) follows the simulator's and `us_bone`'s convention: column
//! `c` is the scanline at lateral `x = (c − (width − 1)/2) · lateral_spacing_m` in the probe frame,
//! row `r` the depth `z = r · axial_spacing_m`.
//!
//! # Classical landmarks
//!
//! [`classical_landmarks`] looks for *apexes* of the bone profile: columns where the surface is
//! shallowest within ±[`ClassicalLandmarkParams::apex_half_width_m`] and rises by at least
//! [`ClassicalLandmarkParams::min_prominence_m`] (or ends) on both sides within that window —
//! the tips and domes that spinous processes, laminae, facets and transverse processes show in
//! both sagittal and transverse views. A frame carries no knowledge of its plane, its level or
//! the patient's fat thickness, so each apex is classed by its depth alone, nearest of the class
//! depths [`ClassicalLandmarkParams::class_depth_m`] (the median depth of each class on the
//! training seeds, see the defaults), except that the shallowest apex of a frame counts as a
//! spinous tip when it is at least [`ClassicalLandmarkParams::tip_prominence_m`] prominent — the
//! only rule that uses the shape. This is deliberately simple: it is the baseline the CNN is
//! measured against.

use nalgebra::Vector3;

use crate::error::ErrorKind;
use crate::us_bone::{detect_bone, BoneDetection, UsBoneParams};
use crate::Error;

/// Landmark classes a per-frame detector reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LandmarkClass {
    /// Tip of a spinous process.
    SpinousTip,
    /// Lamina (posterior surface).
    Lamina,
    /// Facet joint (posterolateral surface of the articular processes).
    Facet,
    /// Transverse process (its lateral tip).
    TransverseProcess,
}

impl LandmarkClass {
    /// All classes, in index order.
    pub const ALL: [LandmarkClass; 4] = [
        LandmarkClass::SpinousTip,
        LandmarkClass::Lamina,
        LandmarkClass::Facet,
        LandmarkClass::TransverseProcess,
    ];

    /// Index 0–3 (the CNN's heatmap channel and the dataset's `class`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of index `i`, `None` past 3.
    pub fn from_index(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// `spinous_tip`, `lamina`, `facet` or `transverse_process` (the suffix of the landmark names
    /// without side, e.g. `L3_facet_left` is a `facet`).
    pub fn name(self) -> &'static str {
        match self {
            LandmarkClass::SpinousTip => "spinous_tip",
            LandmarkClass::Lamina => "lamina",
            LandmarkClass::Facet => "facet",
            LandmarkClass::TransverseProcess => "transverse_process",
        }
    }
}

/// A landmark candidate in image coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LandmarkCandidate {
    /// Class.
    pub class: LandmarkClass,
    /// Fractional row (depth).
    pub row: f32,
    /// Fractional column (lateral).
    pub col: f32,
    /// Detector score, 0–1 (higher is surer; not calibrated across detectors).
    pub score: f32,
}

/// Size and pixel spacing of the frames a detector reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageGeometry {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Distance between column centres (m).
    pub lateral_spacing_m: f64,
    /// Distance between row centres (m).
    pub axial_spacing_m: f64,
}

impl Default for ImageGeometry {
    /// 256 × 256 pixels over 38 mm × 70 mm, the simulator's default (and the CNN's).
    fn default() -> Self {
        Self {
            width: 256,
            height: 256,
            lateral_spacing_m: 0.038 / 255.0,
            axial_spacing_m: 0.070 / 255.0,
        }
    }
}

impl ImageGeometry {
    /// Probe-frame point (m) of a fractional pixel position: `x` lateral (centred), `y = 0`,
    /// `z` depth.
    pub fn pixel_to_probe(&self, row: f64, col: f64) -> Vector3<f64> {
        let half = 0.5 * (self.width.max(1) - 1) as f64;
        Vector3::new(
            (col - half) * self.lateral_spacing_m,
            0.0,
            row * self.axial_spacing_m,
        )
    }

    /// Distance (m) between two pixel positions.
    pub fn distance_m(&self, a: (f64, f64), b: (f64, f64)) -> f64 {
        let dr = (a.0 - b.0) * self.axial_spacing_m;
        let dc = (a.1 - b.1) * self.lateral_spacing_m;
        dr.hypot(dc)
    }

    fn check_frame(&self, pixels: &[u8], width: usize, height: usize) -> Result<(), Error> {
        if width == 0 || height < 3 || width.checked_mul(height) != Some(pixels.len()) {
            return Err(ErrorKind::BadFrame {
                width,
                height,
                len: pixels.len(),
            }
            .into());
        }
        Ok(())
    }
}

/// What a [`Detector`] found in one frame. Reused between frames without allocating once it has
/// held a frame of the same size.
#[derive(Clone, Debug, Default)]
pub struct FrameDetection {
    geometry: Option<ImageGeometry>,
    bone_rows: Vec<Option<f32>>,
    bone_confidence: Vec<f32>,
    landmarks: Vec<LandmarkCandidate>,
}

impl FrameDetection {
    /// An empty detection; a detector sizes it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Geometry of the last frame (the default 256 × 256 geometry before any).
    pub fn geometry(&self) -> ImageGeometry {
        self.geometry.unwrap_or_default()
    }

    /// Frame width (columns).
    pub fn width(&self) -> usize {
        self.bone_rows.len()
    }

    /// Bone-surface row per column (fractional), `None` without bone.
    pub fn bone_rows(&self) -> &[Option<f32>] {
        &self.bone_rows
    }

    /// Confidence per column, 0–1 (0 where no bone was detected).
    pub fn bone_confidence(&self) -> &[f32] {
        &self.bone_confidence
    }

    /// Depth of the bone surface in column `col` (m).
    pub fn bone_depth_m(&self, col: usize) -> Option<f64> {
        let dz = self.geometry().axial_spacing_m;
        self.bone_rows
            .get(col)
            .copied()
            .flatten()
            .map(|r| f64::from(r) * dz)
    }

    /// Number of columns with bone.
    pub fn detected_columns(&self) -> usize {
        self.bone_rows.iter().filter(|r| r.is_some()).count()
    }

    /// Landmark candidates, best score first.
    pub fn landmarks(&self) -> &[LandmarkCandidate] {
        &self.landmarks
    }

    /// Bone-surface points in the probe frame (m) of the columns with confidence ≥
    /// `min_confidence`, with their confidence.
    pub fn bone_points_probe(
        &self,
        min_confidence: f32,
    ) -> impl Iterator<Item = (Vector3<f64>, f32)> + '_ {
        let g = self.geometry();
        self.bone_rows
            .iter()
            .zip(&self.bone_confidence)
            .enumerate()
            .filter_map(move |(c, (r, &conf))| {
                let r = (*r)?;
                (conf >= min_confidence).then(|| (g.pixel_to_probe(f64::from(r), c as f64), conf))
            })
    }

    /// A landmark candidate's position in the probe frame (m).
    pub fn landmark_probe(&self, l: &LandmarkCandidate) -> Vector3<f64> {
        self.geometry()
            .pixel_to_probe(f64::from(l.row), f64::from(l.col))
    }

    /// Writes a bone mask (row-major, `width × height`): 1 within `half_thickness_px` rows of
    /// each detected surface row, 0 elsewhere. `mask` must hold `width · height` bytes.
    pub fn write_bone_mask(&self, half_thickness_px: usize, mask: &mut [u8]) -> Result<(), Error> {
        let g = self.geometry();
        let (w, h) = (self.bone_rows.len(), g.height);
        if mask.len() != w * h || h == 0 {
            return Err(ErrorKind::BadFrame {
                width: w,
                height: h,
                len: mask.len(),
            }
            .into());
        }
        mask.fill(0);
        for (c, row) in self.bone_rows.iter().enumerate() {
            if let Some(r) = row {
                let r = (r.round().max(0.0) as usize).min(h - 1);
                let lo = r.saturating_sub(half_thickness_px);
                let hi = (r + half_thickness_px).min(h - 1);
                for rr in lo..=hi {
                    mask[rr * w + c] = 1;
                }
            }
        }
        Ok(())
    }

    /// Empties the detection and sizes it for a frame of `geometry`.
    pub fn reset(&mut self, geometry: ImageGeometry) {
        self.geometry = Some(geometry);
        self.bone_rows.clear();
        self.bone_rows.resize(geometry.width, None);
        self.bone_confidence.clear();
        self.bone_confidence.resize(geometry.width, 0.0);
        self.landmarks.clear();
    }

    /// Sets column `col`'s bone row and confidence (ignored past the width).
    pub fn set_bone(&mut self, col: usize, row: Option<f32>, confidence: f32) {
        if let (Some(r), Some(c)) = (
            self.bone_rows.get_mut(col),
            self.bone_confidence.get_mut(col),
        ) {
            *r = row;
            *c = if row.is_some() { confidence } else { 0.0 };
        }
    }

    /// Adds a landmark candidate (call [`FrameDetection::sort_landmarks`] when done).
    pub fn push_landmark(&mut self, l: LandmarkCandidate) {
        self.landmarks.push(l);
    }

    /// Sorts the landmark candidates by decreasing score.
    pub fn sort_landmarks(&mut self) {
        self.landmarks.sort_by(|a, b| b.score.total_cmp(&a.score));
    }

    /// Copies the bone profile of a classical [`BoneDetection`] (landmarks emptied).
    pub fn set_from_bone_detection(&mut self, det: &BoneDetection, geometry: ImageGeometry) {
        self.reset(ImageGeometry {
            width: det.width(),
            height: det.height(),
            ..geometry
        });
        for (c, (r, conf)) in det.rows().iter().zip(det.confidence()).enumerate() {
            self.set_bone(c, *r, *conf);
        }
    }
}

/// A per-frame bone and landmark detector.
pub trait Detector {
    /// Short name for reports (`"cnn"`, `"classical"`).
    fn name(&self) -> &'static str;

    /// Detects bone and landmarks in one frame (`pixels` row-major, `width × height`, row 0 at
    /// the probe face) into `out`. Errors (never panics) on a frame of the wrong size.
    fn detect(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        out: &mut FrameDetection,
    ) -> Result<(), Error>;
}

/// Settings of [`classical_landmarks`]; lengths in metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassicalLandmarkParams {
    /// Half-width of the window an apex must be the shallowest point of (default 3 mm).
    pub apex_half_width_m: f64,
    /// Rise of the surface on each side of an apex within the window (default 0.8 mm; a side
    /// where the bone ends counts as rising).
    pub min_prominence_m: f64,
    /// Prominence that makes the shallowest apex a spinous tip (default 4 mm).
    pub tip_prominence_m: f64,
    /// Typical depth below the probe face of each class (index = class; defaults: the median
    /// depth of the visible landmarks of each class in `telecho perception dataset --seeds
    /// 1000..1199 --frames-per-seed 35`: 36.0, 69.4, 62.5, 59.9 mm).
    pub class_depth_m: [f64; 4],
    /// Smallest per-column bone confidence an apex needs (default 0.2).
    pub min_confidence: f32,
}

impl Default for ClassicalLandmarkParams {
    fn default() -> Self {
        Self {
            apex_half_width_m: 3e-3,
            min_prominence_m: 0.8e-3,
            tip_prominence_m: 4e-3,
            class_depth_m: [0.0360, 0.0694, 0.0625, 0.0599],
            min_confidence: 0.2,
        }
    }
}

/// Landmark candidates read off a bone profile (`rows` per column, fractional, with their
/// `confidence`); see the module doc. Appends to `out` (unsorted).
pub fn classical_landmarks(
    rows: &[Option<f32>],
    confidence: &[f32],
    geometry: &ImageGeometry,
    params: &ClassicalLandmarkParams,
    out: &mut Vec<LandmarkCandidate>,
) {
    let w = rows.len().min(confidence.len());
    if w == 0 {
        return;
    }
    let half = ((params.apex_half_width_m / geometry.lateral_spacing_m).round() as usize).max(1);
    let dz = geometry.axial_spacing_m;
    let depth = |c: usize| rows[c].map(|r| f64::from(r) * dz);
    // (col, depth, prominence, confidence)
    let mut apexes: Vec<(usize, f64, f64, f32)> = Vec::new();
    let mut c = 0;
    while c < w {
        let (Some(d0), conf) = (depth(c), confidence[c]) else {
            c += 1;
            continue;
        };
        if conf < params.min_confidence {
            c += 1;
            continue;
        }
        let lo = c.saturating_sub(half);
        let hi = (c + half).min(w - 1);
        // Shallowest in the window (ties: the first column of a plateau wins below).
        let shallowest = (lo..=hi).all(|k| depth(k).is_none_or(|d| d >= d0));
        if !shallowest {
            c += 1;
            continue;
        }
        // Rise on each side: the deepest surface point within the window, or the bone's end.
        let side_rise = |range: &mut dyn Iterator<Item = usize>| -> f64 {
            let mut rise: f64 = 0.0;
            for k in range {
                match depth(k) {
                    Some(d) => rise = rise.max(d - d0),
                    None => return f64::INFINITY,
                }
            }
            rise
        };
        let left = if c == 0 {
            0.0
        } else {
            side_rise(&mut (lo..c).rev())
        };
        let right = if c + 1 >= w {
            0.0
        } else {
            side_rise(&mut (c + 1..=hi))
        };
        let prominence = left.min(right);
        if prominence >= params.min_prominence_m {
            // Centre of a flat top: the middle of the columns within 0.1 mm of the apex depth.
            let mut end = c;
            while end < hi && depth(end + 1).is_some_and(|d| d - d0 < 1e-4) {
                end += 1;
            }
            let centre = (c + end) / 2;
            apexes.push((centre, d0, prominence.min(0.02), conf));
            c = end + half;
            continue;
        }
        c += 1;
    }
    if apexes.is_empty() {
        return;
    }
    let shallowest = apexes
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
        .map(|(i, _)| i);
    for (i, &(col, d, prominence, conf)) in apexes.iter().enumerate() {
        let class = if Some(i) == shallowest && prominence >= params.tip_prominence_m {
            LandmarkClass::SpinousTip
        } else {
            let nearest = (0..4)
                .min_by(|&a, &b| {
                    (params.class_depth_m[a] - d)
                        .abs()
                        .total_cmp(&(params.class_depth_m[b] - d).abs())
                })
                .unwrap_or(0);
            LandmarkClass::from_index(nearest).unwrap_or(LandmarkClass::Lamina)
        };
        let prom = (prominence / (params.tip_prominence_m.max(1e-6))).min(1.0) as f32;
        out.push(LandmarkCandidate {
            class,
            row: (d / dz) as f32,
            col: col as f32,
            score: (0.5 * prom + 0.5 * conf).clamp(0.0, 1.0),
        });
    }
}

/// The classical baseline as a [`Detector`]: [`detect_bone`] and [`classical_landmarks`].
#[derive(Debug, Clone)]
pub struct ClassicalDetector {
    bone: UsBoneParams,
    landmarks: ClassicalLandmarkParams,
    scratch: BoneDetection,
}

impl ClassicalDetector {
    /// A detector with these settings; refuses invalid bone-detector parameters.
    pub fn new(bone: UsBoneParams, landmarks: ClassicalLandmarkParams) -> Result<Self, Error> {
        // Validate now rather than on the first frame.
        let mut scratch = BoneDetection::new();
        detect_bone(&[0; 3], 1, 3, &bone, &mut scratch)?;
        Ok(Self {
            bone,
            landmarks,
            scratch,
        })
    }

    /// Default settings for frames of `geometry`'s spacing.
    pub fn for_geometry(geometry: &ImageGeometry) -> Result<Self, Error> {
        Self::new(
            UsBoneParams {
                axial_spacing_m: geometry.axial_spacing_m,
                lateral_spacing_m: geometry.lateral_spacing_m,
                ..Default::default()
            },
            ClassicalLandmarkParams::default(),
        )
    }

    /// The bone-detector settings.
    pub fn bone_params(&self) -> &UsBoneParams {
        &self.bone
    }
}

impl Detector for ClassicalDetector {
    fn name(&self) -> &'static str {
        "classical"
    }

    fn detect(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        out: &mut FrameDetection,
    ) -> Result<(), Error> {
        let geometry = ImageGeometry {
            width,
            height,
            lateral_spacing_m: self.bone.lateral_spacing_m,
            axial_spacing_m: self.bone.axial_spacing_m,
        };
        geometry.check_frame(pixels, width, height)?;
        detect_bone(pixels, width, height, &self.bone, &mut self.scratch)?;
        out.set_from_bone_detection(&self.scratch, geometry);
        classical_landmarks(
            self.scratch.rows(),
            self.scratch.confidence(),
            &geometry,
            &self.landmarks,
            &mut out.landmarks,
        );
        out.sort_landmarks();
        Ok(())
    }
}

/// A true landmark for [`match_landmarks`]: class and fractional pixel position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrueLandmark {
    /// Class.
    pub class: LandmarkClass,
    /// Fractional row.
    pub row: f64,
    /// Fractional column.
    pub col: f64,
}

/// Outcome of [`match_landmarks`] on one frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LandmarkMatches {
    /// Detections matched to a true landmark.
    pub true_positives: usize,
    /// Detections matching neither a true nor an ignored landmark.
    pub false_positives: usize,
    /// True landmarks left unmatched.
    pub false_negatives: usize,
    /// Detections near an ignored landmark (neither rewarded nor punished).
    pub ignored: usize,
    /// Localisation error of each match (m), with its class.
    pub errors_m: Vec<(LandmarkClass, f64)>,
}

impl LandmarkMatches {
    /// Adds another frame's counts.
    pub fn add(&mut self, other: &LandmarkMatches) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
        self.ignored += other.ignored;
        self.errors_m.extend_from_slice(&other.errors_m);
    }

    /// Precision, recall and F1 (each 1 when there is nothing to find and nothing found).
    pub fn precision_recall_f1(&self) -> (f64, f64, f64) {
        let (tp, fp, fn_) = (
            self.true_positives as f64,
            self.false_positives as f64,
            self.false_negatives as f64,
        );
        let p = if tp + fp > 0.0 { tp / (tp + fp) } else { 1.0 };
        let r = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 1.0 };
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        (p, r, f1)
    }
}

/// Matches detected landmarks to the true ones of a frame: in order of decreasing score, each
/// detection takes the nearest unmatched true landmark of its class within `tolerance_m`; a
/// detection that finds none but lies within `tolerance_m` of an `ignore`d landmark of its class
/// (in the frame, but not a fair target: off the plane, shadowed, uncoupled) is not counted;
/// every other detection is a false positive, every unmatched true landmark a false negative.
pub fn match_landmarks(
    detections: &[LandmarkCandidate],
    truth: &[TrueLandmark],
    ignore: &[TrueLandmark],
    geometry: &ImageGeometry,
    tolerance_m: f64,
) -> LandmarkMatches {
    let mut order: Vec<&LandmarkCandidate> = detections.iter().collect();
    order.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut used = vec![false; truth.len()];
    let mut m = LandmarkMatches::default();
    for d in order {
        let pos = (f64::from(d.row), f64::from(d.col));
        let mut best: Option<(usize, f64)> = None;
        for (k, t) in truth.iter().enumerate() {
            if used[k] || t.class != d.class {
                continue;
            }
            let e = geometry.distance_m(pos, (t.row, t.col));
            if e <= tolerance_m && best.is_none_or(|(_, b)| e < b) {
                best = Some((k, e));
            }
        }
        if let Some((k, e)) = best {
            used[k] = true;
            m.true_positives += 1;
            m.errors_m.push((d.class, e));
        } else if ignore
            .iter()
            .any(|t| t.class == d.class && geometry.distance_m(pos, (t.row, t.col)) <= tolerance_m)
        {
            m.ignored += 1;
        } else {
            m.false_positives += 1;
        }
    }
    m.false_negatives = used.iter().filter(|u| !**u).count();
    m
}

/// Tolerant overlap of two bone masks (row-major `width × height`, nonzero = bone): a pixel of
/// either mask counts as matched when the other has a pixel within ±`tol` rows and columns.
/// Returns (matched pixels of both masks, pixels of both masks); their ratio is the tolerant
/// Dice `(|A ∩ dil(B)| + |B ∩ dil(A)|) / (|A| + |B|)`, pooled over frames by summing.
pub fn tolerant_dice_counts(
    a: &[u8],
    b: &[u8],
    width: usize,
    height: usize,
    tol: usize,
) -> (usize, usize) {
    if a.len() != width * height || b.len() != width * height {
        return (0, 0);
    }
    let near = |m: &[u8], r: usize, c: usize| {
        (r.saturating_sub(tol)..=(r + tol).min(height - 1)).any(|rr| {
            (c.saturating_sub(tol)..=(c + tol).min(width - 1)).any(|cc| m[rr * width + cc] != 0)
        })
    };
    let (mut hits, mut total) = (0, 0);
    for (m, other) in [(a, b), (b, a)] {
        for r in 0..height {
            for c in 0..width {
                if m[r * width + c] != 0 {
                    total += 1;
                    hits += usize::from(near(other, r, c));
                }
            }
        }
    }
    (hits, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ImageGeometry {
        ImageGeometry::default()
    }

    #[test]
    fn class_indices_round_trip() {
        for c in LandmarkClass::ALL {
            assert_eq!(LandmarkClass::from_index(c.index()), Some(c));
        }
        assert_eq!(LandmarkClass::from_index(4), None);
        assert_eq!(
            LandmarkClass::TransverseProcess.name(),
            "transverse_process"
        );
    }

    #[test]
    fn a_pointed_shallow_apex_is_a_spinous_tip() {
        let g = geometry();
        let dz = g.axial_spacing_m;
        // A tent: apex 15 mm deep at column 128, falling 1 mm per mm either side.
        let rows: Vec<Option<f32>> = (0..256)
            .map(|c| {
                let x = (c as f64 - 128.0).abs() * g.lateral_spacing_m;
                Some(((0.015 + x) / dz) as f32)
            })
            .collect();
        let conf = vec![0.8; 256];
        let mut out = Vec::new();
        classical_landmarks(
            &rows,
            &conf,
            &g,
            &ClassicalLandmarkParams::default(),
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].class, LandmarkClass::SpinousTip);
        assert!((out[0].col - 128.0).abs() <= 1.0);
        assert!((f64::from(out[0].row) * dz - 0.015).abs() < 1e-4);
    }

    #[test]
    fn flat_or_empty_profiles_give_nothing() {
        let g = geometry();
        let mut out = Vec::new();
        let flat = vec![Some(100.0f32); 256];
        classical_landmarks(&flat, &[0.9; 256], &g, &Default::default(), &mut out);
        // A flat surface rises nowhere: no apex.
        assert!(out.is_empty(), "{out:?}");
        classical_landmarks(&[None; 256], &[0.0; 256], &g, &Default::default(), &mut out);
        assert!(out.is_empty());
        classical_landmarks(&[], &[], &g, &Default::default(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn classical_detector_refuses_bad_frames() {
        let mut d = ClassicalDetector::for_geometry(&geometry()).unwrap();
        let mut out = FrameDetection::new();
        assert!(d.detect(&[0; 10], 4, 4, &mut out).is_err());
        assert!(d.detect(&[0; 0], 0, 0, &mut out).is_err());
        d.detect(&[0; 64 * 64], 64, 64, &mut out).unwrap();
        assert_eq!(out.detected_columns(), 0);
        assert!(out.landmarks().is_empty());
    }

    #[test]
    fn matching_counts_and_ignores() {
        let g = geometry();
        let t = |class, row, col| TrueLandmark { class, row, col };
        let d = |class, row: f32, col: f32, score| LandmarkCandidate {
            class,
            row,
            col,
            score,
        };
        let truth = [
            t(LandmarkClass::SpinousTip, 100.0, 100.0),
            t(LandmarkClass::Lamina, 150.0, 60.0),
        ];
        let ignore = [t(LandmarkClass::Facet, 50.0, 200.0)];
        let dets = [
            // 5 rows off = 1.37 mm: a match.
            d(LandmarkClass::SpinousTip, 105.0, 100.0, 0.9),
            // Right place, wrong class: a false positive.
            d(LandmarkClass::Facet, 150.0, 60.0, 0.8),
            // Near the ignored facet: not counted.
            d(LandmarkClass::Facet, 52.0, 200.0, 0.7),
            // A second spinous detection at the same tip: the tip is taken, so a false positive.
            d(LandmarkClass::SpinousTip, 101.0, 100.0, 0.5),
        ];
        let m = match_landmarks(&dets, &truth, &ignore, &g, 3e-3);
        assert_eq!(
            (
                m.true_positives,
                m.false_positives,
                m.false_negatives,
                m.ignored
            ),
            (1, 2, 1, 1)
        );
        assert!((m.errors_m[0].1 - 5.0 * g.axial_spacing_m).abs() < 1e-12);
        let (p, r, f1) = m.precision_recall_f1();
        assert!((p - 1.0 / 3.0).abs() < 1e-12 && (r - 0.5).abs() < 1e-12);
        assert!((f1 - 0.4).abs() < 1e-12);
        assert_eq!(
            LandmarkMatches::default().precision_recall_f1(),
            (1.0, 1.0, 1.0)
        );
    }

    #[test]
    fn tolerant_dice_of_shifted_lines() {
        let (w, h) = (8, 8);
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        for c in 0..w {
            a[3 * w + c] = 1;
            b[5 * w + c] = 1;
        }
        assert_eq!(tolerant_dice_counts(&a, &b, w, h, 2), (16, 16));
        assert_eq!(tolerant_dice_counts(&a, &b, w, h, 1), (0, 16));
        assert_eq!(tolerant_dice_counts(&a, &b[..3], w, h, 1), (0, 0));
    }

    #[test]
    fn mask_and_points() {
        let mut f = FrameDetection::new();
        f.reset(ImageGeometry {
            width: 4,
            height: 5,
            ..geometry()
        });
        f.set_bone(1, Some(2.2), 0.9);
        f.set_bone(9, Some(1.0), 0.9);
        let mut mask = vec![0; 20];
        f.write_bone_mask(1, &mut mask).unwrap();
        assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 3);
        assert_eq!(mask[2 * 4 + 1], 1);
        assert!(f.write_bone_mask(0, &mut [0; 3]).is_err());
        assert_eq!(f.bone_points_probe(0.5).count(), 1);
        assert_eq!(f.bone_points_probe(0.95).count(), 0);
    }
}
