//! 3D compounding of a tracked sweep: bone-surface points and landmarks in the base frame.
//!
//! # Pipeline
//!
//! 1. **Frame selection.** Only steady-contact frames are used: state `sweep` (the force ramp of
//!    `contact` frames may show partial coupling) with the controller's force at least
//!    [`CompoundParams::min_force_fraction`] of the sweep's setpoint; every
//!    [`CompoundParams::frame_step`]-th of them.
//! 2. **Detection.** Any [`Detector`] (the classical [`ClassicalDetector`] by default, the CNN
//!    through the same trait) gives per column the bone-surface row and a confidence, and
//!    landmark candidates. Frames are split over [`compound_sweep`]'s detectors, one thread each.
//! 3. **Mapping.** A surface pixel `(row, col)` of frame `i` goes to the base frame through the
//!    calibration and the measured probe pose: `t_base_probe(i) · t_probe_image · [col, row, 0,
//!    1]ᵀ` ([`Sweep::pixel_to_base`]). Every [`CompoundParams::column_step`]-th column with
//!    confidence ≥ [`CompoundParams::min_confidence`] becomes a [`BoneSample`] that remembers its
//!    frame (time, beam direction), so that later stages (breathing compensation in
//!    [`crate::registration`]) can move each frame's points before compounding.
//! 4. **Temporal compounding** ([`Compounded::cloud`]). Samples are binned into a voxel grid of
//!    [`CompoundParams::voxel_m`]; each occupied voxel becomes one point: the confidence-weighted
//!    mean position, the summed confidence (capped at 1 per voxel after normalisation by
//!    [`CompoundParams::saturation_hits`] observations), the number of observations and the mean
//!    beam direction. An optional per-frame displacement is applied to every sample first.
//! 5. **Normals.** Principal-component analysis of the compounded points within
//!    [`CompoundParams::normal_radius_m`]: where the neighbourhood is a surface patch (two
//!    clearly non-zero principal spreads) the normal is the direction of least spread; where it is
//!    a curve — a sweep whose image plane slides within itself images one profile of the bone —
//!    the normal is the direction perpendicular to the curve closest to the reversed beam. Normals
//!    always face the probe (`n · beam < 0`); [`SurfaceCloud::planar`] says which case applied.
//! 6. **Landmarks** ([`Compounded::fuse_landmarks`]). Per-frame candidates mapped to the base
//!    frame are clustered per class (greedy, best score first, within
//!    [`CompoundParams::landmark_cluster_radius_m`] of the running centroid); a cluster seen in at
//!    least [`CompoundParams::min_landmark_frames`] frames becomes a [`FusedLandmark`]: the
//!    score-weighted centroid, its spread, and a confidence that grows with the number of frames
//!    and the mean score and falls with the spread.
//!
//! # Nearest neighbours
//!
//! [`KdTree`] is a small static 3-d tree written here rather than taken from a crate: `kiddo`
//! (the maintained candidate) needs rustc 1.89 from version 6 on, above this workspace's MSRV
//! (1.85), and its 5.x line pulls in `generator` (stackful coroutines in platform assembly) and
//! `tracing-subscriber` for a job that is ~150 lines: nearest neighbour and radius queries over
//! at most a few hundred thousand static points.

use std::collections::HashMap;

use nalgebra::{Matrix3, SymmetricEigen, Vector3};

use crate::detect::{Detector, FrameDetection, LandmarkClass};
use crate::error::ErrorKind;
use crate::sweep::{FrameState, Sweep};
use crate::Error;

#[allow(unused_imports)] // referenced by the module documentation
use crate::detect::ClassicalDetector;

/// Settings of [`compound_sweep`] and of the compounding steps of [`Compounded`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompoundParams {
    /// Use every `frame_step`-th eligible frame (≥ 1; default 1).
    pub frame_step: usize,
    /// Use every `column_step`-th image column (≥ 1; default 2).
    pub column_step: usize,
    /// Smallest per-column bone confidence kept (0–1; default 0.2).
    pub min_confidence: f32,
    /// A frame is used only when the controller's force is at least this share of the sweep's
    /// setpoint (0–1; default 0.5).
    pub min_force_fraction: f64,
    /// Also use frames of the `contact` state (default false).
    pub include_contact_frames: bool,
    /// Edge of the compounding voxel grid (m; default 1 mm).
    pub voxel_m: f64,
    /// Observations after which a voxel's confidence saturates (≥ 1; default 4).
    pub saturation_hits: f64,
    /// Neighbourhood radius of the normal estimate (m; default 2.5 mm).
    pub normal_radius_m: f64,
    /// Landmark candidates with a score below this are ignored (0–1; default 0.3).
    pub min_landmark_score: f32,
    /// Radius of a landmark cluster (m; default 4 mm).
    pub landmark_cluster_radius_m: f64,
    /// Frames a landmark cluster needs (≥ 1; default 3).
    pub min_landmark_frames: usize,
}

impl Default for CompoundParams {
    fn default() -> Self {
        Self {
            frame_step: 1,
            column_step: 2,
            min_confidence: 0.2,
            min_force_fraction: 0.5,
            include_contact_frames: false,
            voxel_m: 1e-3,
            saturation_hits: 4.0,
            normal_radius_m: 2.5e-3,
            min_landmark_score: 0.3,
            landmark_cluster_radius_m: 4e-3,
            min_landmark_frames: 3,
        }
    }
}

impl CompoundParams {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, value: f64| -> Result<(), Error> {
            Err(ErrorKind::BadParam { what, value }.into())
        };
        if self.frame_step == 0 {
            return bad("compounding frame step (≥ 1)", 0.0);
        }
        if self.column_step == 0 {
            return bad("compounding column step (≥ 1)", 0.0);
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad(
                "compounding minimum confidence (0–1)",
                f64::from(self.min_confidence),
            );
        }
        if !(0.0..=1.0).contains(&self.min_force_fraction) {
            return bad(
                "compounding minimum force fraction (0–1)",
                self.min_force_fraction,
            );
        }
        for (what, v) in [
            ("compounding voxel edge (m, 0.1–20 mm)", self.voxel_m),
            ("normal radius (m, 0.1–20 mm)", self.normal_radius_m),
            (
                "landmark cluster radius (m, 0.1–20 mm)",
                self.landmark_cluster_radius_m,
            ),
        ] {
            if !(v.is_finite() && (1e-4..=0.02).contains(&v)) {
                return bad(what, v);
            }
        }
        if !(self.saturation_hits.is_finite() && self.saturation_hits >= 1.0) {
            return bad(
                "confidence saturation (observations, ≥ 1)",
                self.saturation_hits,
            );
        }
        if !(0.0..=1.0).contains(&self.min_landmark_score) {
            return bad(
                "minimum landmark score (0–1)",
                f64::from(self.min_landmark_score),
            );
        }
        if self.min_landmark_frames == 0 {
            return bad("landmark frames (≥ 1)", 0.0);
        }
        Ok(())
    }
}

/// One bone-surface pixel of one frame, in the base frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoneSample {
    /// Position in the base frame (m).
    pub xyz: Vector3<f64>,
    /// Index into [`Compounded::frames`].
    pub frame: u32,
    /// The detector's confidence, 0–1.
    pub confidence: f32,
}

/// A frame that was used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsedFrame {
    /// Index of the frame in the sweep.
    pub index: usize,
    /// Acquisition time (s).
    pub time_s: f64,
    /// Protocol sweep the frame belongs to.
    pub sweep_index: usize,
    /// Beam direction (probe +z) in the base frame.
    pub beam: Vector3<f64>,
    /// Transducer array direction (probe +x) in the base frame.
    pub lateral: Vector3<f64>,
    /// Probe face centre in the base frame (m).
    pub origin: Vector3<f64>,
    /// Columns with bone kept from this frame.
    pub bone_columns: usize,
}

/// A landmark candidate of one frame, in the base frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LandmarkObservation {
    /// Landmark class.
    pub class: LandmarkClass,
    /// Position in the base frame (m).
    pub xyz: Vector3<f64>,
    /// Index into [`Compounded::frames`].
    pub frame: u32,
    /// The detector's score, 0–1.
    pub score: f32,
}

/// A landmark fused over frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedLandmark {
    /// Landmark class (side and level are decided by registration).
    pub class: LandmarkClass,
    /// Score-weighted centroid in the base frame (m).
    pub xyz: Vector3<f64>,
    /// 0–1, see the module documentation.
    pub confidence: f64,
    /// Distinct frames that saw it.
    pub frames: usize,
    /// RMS distance of the observations from the centroid (m).
    pub spread_m: f64,
}

/// Everything [`compound_sweep`] extracted from a sweep.
#[derive(Clone, Debug, Default)]
pub struct Compounded {
    /// Bone-surface samples of every used frame.
    pub samples: Vec<BoneSample>,
    /// The frames used, in acquisition order.
    pub frames: Vec<UsedFrame>,
    /// Landmark candidates of every used frame.
    pub landmarks: Vec<LandmarkObservation>,
    /// Frames in the sweep.
    pub frames_in_sweep: usize,
    /// Name of the detector.
    pub detector: &'static str,
    /// Parameters the sweep was compounded with.
    pub params: CompoundParams,
}

/// A deduplicated bone-surface point set with per-point confidence and normals (base frame).
#[derive(Clone, Debug, Default)]
pub struct SurfaceCloud {
    /// Voxel-mean positions (m).
    pub points: Vec<Vector3<f64>>,
    /// Unit normals facing the probe.
    pub normals: Vec<Vector3<f64>>,
    /// Confidence 0–1.
    pub confidence: Vec<f64>,
    /// Observations merged into each point.
    pub observations: Vec<u32>,
    /// Mean acquisition time of the merged observations (s).
    pub time_s: Vec<f64>,
    /// True where the normal came from a surface patch, false where from a curve (see the
    /// module documentation).
    pub planar: Vec<bool>,
}

impl SurfaceCloud {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True without points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Runs `detectors` (one thread each; at least one) over the steady-contact frames of `sweep`
/// and maps the bone surface and landmark candidates into the base frame; see the module
/// documentation. Errors on invalid parameters, an empty detector list and detector errors.
pub fn compound_sweep<D: Detector + Send>(
    sweep: &Sweep,
    detectors: &mut [D],
    params: &CompoundParams,
) -> Result<Compounded, Error> {
    params.validate()?;
    if detectors.is_empty() {
        return Err(ErrorKind::Invalid("compounding needs at least one detector".into()).into());
    }
    let detector = detectors[0].name();
    let sweeps = sweep.sweeps();
    let eligible: Vec<usize> = sweep
        .frames()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            let state_ok = f.state == FrameState::Sweep
                || (params.include_contact_frames && f.state == FrameState::Contact);
            let setpoint = sweeps.get(f.sweep_index).map_or(0.0, |s| s.force_n);
            state_ok && f.force_n >= params.min_force_fraction * setpoint
        })
        .map(|(i, _)| i)
        .step_by(params.frame_step)
        .collect();
    let n_threads = detectors.len().min(eligible.len()).max(1);
    let chunk = eligible.len().div_ceil(n_threads).max(1);
    let results: Vec<Result<Part, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = detectors
            .iter_mut()
            .zip(eligible.chunks(chunk))
            .map(|(det, frames)| scope.spawn(move || detect_frames(sweep, det, frames, params)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ErrorKind::Invalid("a detector thread panicked".into()).into())
                })
            })
            .collect()
    });
    let mut out = Compounded {
        frames_in_sweep: sweep.frame_count(),
        detector,
        params: *params,
        ..Compounded::default()
    };
    for part in results {
        let (samples, frames, landmarks) = part?;
        let offset = out.frames.len() as u32;
        out.samples.extend(samples.into_iter().map(|mut s| {
            s.frame += offset;
            s
        }));
        out.landmarks.extend(landmarks.into_iter().map(|mut l| {
            l.frame += offset;
            l
        }));
        out.frames.extend(frames);
    }
    Ok(out)
}

/// What one detector thread extracts from its frames.
type Part = (Vec<BoneSample>, Vec<UsedFrame>, Vec<LandmarkObservation>);

fn detect_frames<D: Detector>(
    sweep: &Sweep,
    det: &mut D,
    frames: &[usize],
    params: &CompoundParams,
) -> Result<Part, Error> {
    let (w, h) = (sweep.width(), sweep.height());
    let mut detection = FrameDetection::new();
    let mut samples = Vec::new();
    let mut used = Vec::with_capacity(frames.len());
    let mut landmarks = Vec::new();
    for &i in frames {
        let (Some(pixels), Some(rec)) = (sweep.frame_pixels(i), sweep.frames().get(i)) else {
            continue;
        };
        det.detect(pixels, w, h, &mut detection)?;
        let slot = used.len() as u32;
        let mut kept = 0;
        for (col, (row, &conf)) in detection
            .bone_rows()
            .iter()
            .zip(detection.bone_confidence())
            .enumerate()
            .step_by(params.column_step)
        {
            let Some(row) = row else { continue };
            if conf < params.min_confidence || !row.is_finite() {
                continue;
            }
            if let Some(xyz) = sweep.pixel_to_base(i, f64::from(*row), col as f64) {
                samples.push(BoneSample {
                    xyz,
                    frame: slot,
                    confidence: conf,
                });
                kept += 1;
            }
        }
        for l in detection.landmarks() {
            if l.score < params.min_landmark_score || !(l.row.is_finite() && l.col.is_finite()) {
                continue;
            }
            if let Some(xyz) = sweep.pixel_to_base(i, f64::from(l.row), f64::from(l.col)) {
                landmarks.push(LandmarkObservation {
                    class: l.class,
                    xyz,
                    frame: slot,
                    score: l.score,
                });
            }
        }
        let r = &rec.t_base_probe.rotation;
        used.push(UsedFrame {
            index: i,
            time_s: rec.time_s,
            sweep_index: rec.sweep_index,
            beam: r.column(2).into_owned(),
            lateral: r.column(0).into_owned(),
            origin: rec.t_base_probe.translation,
            bone_columns: kept,
        });
    }
    Ok((samples, used, landmarks))
}

#[derive(Clone, Copy, Default)]
struct VoxelAcc {
    sum: Vector3<f64>,
    weight: f64,
    beam: Vector3<f64>,
    time: f64,
    hits: u32,
}

impl Compounded {
    /// The settings the sweep was compounded with.
    pub fn params(&self) -> &CompoundParams {
        &self.params
    }

    /// Compounds the samples into a deduplicated point set with normals (see the module
    /// documentation). `shift(frame)` (an index into [`Compounded::frames`]) is added to every
    /// sample of that frame first — e.g. a breathing correction; `None` for none.
    pub fn cloud(&self, shift: Option<&dyn Fn(usize) -> Vector3<f64>>) -> SurfaceCloud {
        let voxel = self.params.voxel_m;
        let mut grid: HashMap<[i32; 3], VoxelAcc> = HashMap::with_capacity(self.samples.len() / 4);
        let mut order: Vec<[i32; 3]> = Vec::new();
        for s in &self.samples {
            let f = s.frame as usize;
            // A frame without a finite pose (a tracking dropout) contributes nothing.
            let Some(frame) = self
                .frames
                .get(f)
                .filter(|fr| fr.beam.iter().all(|v| v.is_finite()) && fr.time_s.is_finite())
            else {
                continue;
            };
            let p = match shift {
                Some(g) => s.xyz + g(f),
                None => s.xyz,
            };
            if !p.iter().all(|v| v.is_finite()) {
                continue;
            }
            let key = [0, 1, 2].map(|a| (p[a] / voxel).floor() as i32);
            let w = f64::from(s.confidence).max(1e-3);
            let acc = grid.entry(key).or_insert_with(|| {
                order.push(key);
                VoxelAcc::default()
            });
            acc.sum += p * w;
            acc.weight += w;
            acc.beam += frame.beam;
            acc.time += frame.time_s;
            acc.hits += 1;
        }
        let mut cloud = SurfaceCloud::default();
        let mut beams = Vec::with_capacity(order.len());
        for key in &order {
            let acc = grid[key];
            let n = f64::from(acc.hits);
            cloud.points.push(acc.sum / acc.weight);
            cloud
                .confidence
                .push((acc.weight / self.params.saturation_hits).min(1.0));
            cloud.observations.push(acc.hits);
            cloud.time_s.push(acc.time / n);
            beams.push(acc.beam.try_normalize(1e-12).unwrap_or(-Vector3::z()));
        }
        let (normals, planar) =
            estimate_normals(&cloud.points, &beams, self.params.normal_radius_m);
        cloud.normals = normals;
        cloud.planar = planar;
        cloud
    }

    /// Fuses the per-frame landmark candidates into 3D landmarks (see the module documentation),
    /// best confidence first. `shift` as in [`Compounded::cloud`].
    pub fn fuse_landmarks(
        &self,
        shift: Option<&dyn Fn(usize) -> Vector3<f64>>,
    ) -> Vec<FusedLandmark> {
        let p = &self.params;
        let mut out = Vec::new();
        for class in LandmarkClass::ALL {
            let mut obs: Vec<(Vector3<f64>, f64, u32)> = self
                .landmarks
                .iter()
                .filter(|l| l.class == class)
                .map(|l| {
                    let d = shift.map_or_else(Vector3::zeros, |g| g(l.frame as usize));
                    (l.xyz + d, f64::from(l.score), l.frame)
                })
                .collect();
            obs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut taken = vec![false; obs.len()];
            for i in 0..obs.len() {
                if taken[i] {
                    continue;
                }
                let mut centre = obs[i].0;
                let mut members = vec![i];
                taken[i] = true;
                // Two passes: gather around the seed, then around the centroid.
                for _ in 0..2 {
                    for (j, o) in obs.iter().enumerate() {
                        if !taken[j] && (o.0 - centre).norm() <= p.landmark_cluster_radius_m {
                            taken[j] = true;
                            members.push(j);
                        }
                    }
                    let wsum: f64 = members.iter().map(|&m| obs[m].1).sum();
                    centre = members
                        .iter()
                        .fold(Vector3::zeros(), |a, &m| a + obs[m].0 * obs[m].1)
                        / wsum.max(1e-12);
                }
                let mut frames: Vec<u32> = members.iter().map(|&m| obs[m].2).collect();
                frames.sort_unstable();
                frames.dedup();
                if frames.len() < p.min_landmark_frames {
                    continue;
                }
                let n = members.len() as f64;
                let spread = (members
                    .iter()
                    .map(|&m| (obs[m].0 - centre).norm_squared())
                    .sum::<f64>()
                    / n)
                    .sqrt();
                let mean_score = members.iter().map(|&m| obs[m].1).sum::<f64>() / n;
                let support = 1.0 - (-(frames.len() as f64) / 5.0).exp();
                let tightness = 1.0 / (1.0 + (spread / 2e-3).powi(2));
                out.push(FusedLandmark {
                    class,
                    xyz: centre,
                    confidence: (support * mean_score * tightness).clamp(0.0, 1.0),
                    frames: frames.len(),
                    spread_m: spread,
                });
            }
        }
        out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        out
    }
}

/// Normals by local PCA (see the module documentation); `beams` are the unit beam directions of
/// each point. Returns the normals and whether each came from a surface patch.
pub fn estimate_normals(
    points: &[Vector3<f64>],
    beams: &[Vector3<f64>],
    radius_m: f64,
) -> (Vec<Vector3<f64>>, Vec<bool>) {
    let tree = KdTree::new(points);
    let mut neighbours = Vec::new();
    let mut normals = Vec::with_capacity(points.len());
    let mut planar = Vec::with_capacity(points.len());
    for (p, beam) in points.iter().zip(beams) {
        let facing = -beam;
        tree.within(p, radius_m, &mut neighbours);
        if neighbours.len() < 3 {
            normals.push(facing);
            planar.push(false);
            continue;
        }
        let n = neighbours.len() as f64;
        let mean = neighbours
            .iter()
            .fold(Vector3::zeros(), |a, &i| a + points[i as usize])
            / n;
        let mut cov = Matrix3::zeros();
        for &i in &neighbours {
            let d = points[i as usize] - mean;
            cov += d * d.transpose();
        }
        cov /= n;
        let eig = SymmetricEigen::new(cov);
        let mut idx = [0usize, 1, 2];
        idx.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let (l1, l2) = (
            eig.eigenvalues[idx[0]].max(0.0),
            eig.eigenvalues[idx[1]].max(0.0),
        );
        let e1: Vector3<f64> = eig.eigenvectors.column(idx[0]).into_owned();
        let e3: Vector3<f64> = eig.eigenvectors.column(idx[2]).into_owned();
        // A surface patch spreads in two directions; a single image's profile only in one.
        let spread2 = l2.sqrt();
        let is_planar = spread2 > 0.25 * radius_m && l2 > 0.05 * l1;
        let mut normal = if is_planar {
            e3
        } else {
            let v = facing - e1 * e1.dot(&facing);
            v.try_normalize(1e-9).unwrap_or(e3)
        };
        if normal.dot(&facing) < 0.0 {
            normal = -normal;
        }
        normals.push(normal);
        planar.push(is_planar);
    }
    (normals, planar)
}

/// A static 3-d tree over points for nearest-neighbour and radius queries (see the module
/// documentation for why it is written here).
#[derive(Clone, Debug, Default)]
pub struct KdTree {
    /// Points in tree order.
    pts: Vec<[f64; 3]>,
    /// Original index of each point in tree order.
    idx: Vec<u32>,
    nodes: Vec<KdNode>,
}

#[derive(Clone, Copy, Debug)]
struct KdNode {
    start: u32,
    end: u32,
    /// Split axis, or 3 for a leaf.
    axis: u8,
    split: f64,
    left: u32,
    right: u32,
}

const LEAF_SIZE: usize = 8;

impl KdTree {
    /// Builds the tree; non-finite points are left out of it.
    pub fn new(points: &[Vector3<f64>]) -> Self {
        let mut items: Vec<([f64; 3], u32)> = points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.iter().all(|v| v.is_finite()))
            .map(|(i, p)| ([p.x, p.y, p.z], i as u32))
            .collect();
        let mut nodes = Vec::with_capacity(2 * items.len() / LEAF_SIZE + 1);
        if !items.is_empty() {
            let n = items.len();
            build(&mut items, 0, n, &mut nodes);
        }
        Self {
            pts: items.iter().map(|i| i.0).collect(),
            idx: items.iter().map(|i| i.1).collect(),
            nodes,
        }
    }

    /// Number of points in the tree.
    pub fn len(&self) -> usize {
        self.pts.len()
    }

    /// True without points.
    pub fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    /// The nearest point to `q`: its original index and squared distance (m²).
    pub fn nearest(&self, q: &Vector3<f64>) -> Option<(usize, f64)> {
        if self.nodes.is_empty() || !q.iter().all(|v| v.is_finite()) {
            return None;
        }
        let q = [q.x, q.y, q.z];
        let mut best = (u32::MAX, f64::INFINITY);
        self.nearest_in(0, &q, &mut best);
        (best.0 != u32::MAX).then(|| (self.idx[best.0 as usize] as usize, best.1))
    }

    fn nearest_in(&self, node: usize, q: &[f64; 3], best: &mut (u32, f64)) {
        let n = self.nodes[node];
        if n.axis == 3 {
            for k in n.start..n.end {
                let p = &self.pts[k as usize];
                let d = (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2);
                if d < best.1 {
                    *best = (k, d);
                }
            }
            return;
        }
        let diff = q[n.axis as usize] - n.split;
        let (near, far) = if diff < 0.0 {
            (n.left, n.right)
        } else {
            (n.right, n.left)
        };
        self.nearest_in(near as usize, q, best);
        if diff * diff < best.1 {
            self.nearest_in(far as usize, q, best);
        }
    }

    /// Original indices of the points within `radius` of `q` (into `out`, cleared first).
    pub fn within(&self, q: &Vector3<f64>, radius: f64, out: &mut Vec<u32>) {
        out.clear();
        if self.nodes.is_empty() || radius.is_nan() || radius < 0.0 {
            return;
        }
        let q = [q.x, q.y, q.z];
        self.within_in(0, &q, radius * radius, radius, out);
    }

    fn within_in(&self, node: usize, q: &[f64; 3], r2: f64, r: f64, out: &mut Vec<u32>) {
        let n = self.nodes[node];
        if n.axis == 3 {
            for k in n.start..n.end {
                let p = &self.pts[k as usize];
                let d = (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2);
                if d <= r2 {
                    out.push(self.idx[k as usize]);
                }
            }
            return;
        }
        let diff = q[n.axis as usize] - n.split;
        if diff <= r {
            self.within_in(n.left as usize, q, r2, r, out);
        }
        if diff >= -r {
            self.within_in(n.right as usize, q, r2, r, out);
        }
    }
}

fn build(items: &mut [([f64; 3], u32)], start: usize, end: usize, nodes: &mut Vec<KdNode>) -> u32 {
    let id = nodes.len() as u32;
    let slice = &mut items[start..end];
    if slice.len() <= LEAF_SIZE {
        nodes.push(KdNode {
            start: start as u32,
            end: end as u32,
            axis: 3,
            split: 0.0,
            left: 0,
            right: 0,
        });
        return id;
    }
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for (p, _) in slice.iter() {
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let axis = (0..3)
        .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])))
        .unwrap_or(0);
    let mid = slice.len() / 2;
    slice.select_nth_unstable_by(mid, |a, b| a.0[axis].total_cmp(&b.0[axis]));
    let split = slice[mid].0[axis];
    nodes.push(KdNode {
        start: start as u32,
        end: end as u32,
        axis: axis as u8,
        split,
        left: 0,
        right: 0,
    });
    let left = build(items, start, start + mid, nodes);
    let right = build(items, start + mid, end, nodes);
    let node = &mut nodes[id as usize];
    node.left = left;
    node.right = right;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdtree_matches_brute_force() {
        let mut s = 12345u64;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 10_000) as f64 / 10_000.0
        };
        let pts: Vec<Vector3<f64>> = (0..2000)
            .map(|_| Vector3::new(rnd(), rnd(), rnd()))
            .collect();
        let tree = KdTree::new(&pts);
        let mut out = Vec::new();
        for _ in 0..200 {
            let q = Vector3::new(rnd(), rnd(), rnd()) * 1.2 - Vector3::repeat(0.1);
            let (i, d) = tree.nearest(&q).unwrap();
            let best = pts
                .iter()
                .map(|p| (p - q).norm_squared())
                .fold(f64::INFINITY, f64::min);
            assert!((d - best).abs() < 1e-15 && ((pts[i] - q).norm_squared() - d).abs() < 1e-15);
            tree.within(&q, 0.1, &mut out);
            let brute = pts.iter().filter(|p| (*p - q).norm() <= 0.1).count();
            assert_eq!(out.len(), brute);
        }
        assert!(KdTree::new(&[]).nearest(&Vector3::zeros()).is_none());
        // A NaN query has no nearest point (and does not panic).
        assert!(tree.nearest(&Vector3::repeat(f64::NAN)).is_none());
        tree.within(&Vector3::repeat(f64::NAN), 0.1, &mut out);
        assert!(out.is_empty());
    }
}
