//! Automatic ultrasound-to-CBCT registration: global search, robust refinement, breathing
//! compensation, per-vertebra refinement, uncertainty and refusal.
//!
//! The input is the compounded sweep ([`crate::compound`]: bone-surface samples in the robot's
//! base frame, each tied to its frame) and a [`CtModel`]: the CBCT's bone surface as ultrasound
//! sees it from the back ([`extract_posterior_bone_surface`]: points, outward normals), its
//! vertebra labels and landmarks ([`analyse_spine`]) and a 3-d tree over it. The output is
//! `t_base_ct` with an honest uncertainty, or a refusal with the reason.
//!
//! # Steps
//!
//! 1. **Coarse alignment, no initial guess.** Anatomical axes are found in both data sets: in
//!    the sweep, *anterior* is the mean beam direction (the probe looks into the back) and the
//!    *spine axis* is the principal direction of the bone points across it; in the CT, anterior
//!    is `+y` (RAS) and the spine axis the principal direction of the surface across `y`. Mapping
//!    one frame onto the other with the point medians on top of each other fixes the rotation up
//!    to the sign of the spine axis and the translation up to the level the sweep covers.
//! 2. **Multi-start search.** Rotation hypotheses — both signs of the spine axis × rotations
//!    about the anterior axis ([`RegistrationParams::search_yaw_deg`], ±20°) × about the lateral
//!    axis ([`RegistrationParams::search_pitch_deg`]) — are each combined with a grid of
//!    translations along the CT's spine (±60 mm: every hypothesis of a level shift by one
//!    vertebra is scored), lateral (±40 mm) and anterior (−42 … +12 mm: a thick patient shows only its spinous tips, far posterior
//!    of the whole surface's median) axes, step
//!    [`RegistrationParams::coarse_step_m`]. Each of these tens of thousands of hypotheses is
//!    scored on a subsample of the sweep by the robust point-to-surface distance read from a
//!    precomputed distance field of the CT surface (`mean min(d, cap)²`); the best translations
//!    of every rotation are refined on a finer grid, the best
//!    [`RegistrationParams::search_starts`] hypotheses run a short robust ICP (below), poses
//!    whose CT anterior axis is more than [`RegistrationParams::max_beam_angle_deg`] from the
//!    mean beam are dropped (the probe looks into the back), and the best few distinct ones
//!    are refined on more points and compete on the robust cost: the mean of `min(e², τ²)/τ²`
//!    with `e` the point-to-plane distance to the nearest CT surface point (`τ` =
//!    [`RegistrationParams::tau_m`]; a point farther than `2τ` from the surface costs 1).
//!    Half the starts go to each direction of the spine axis, and the winner's head-to-foot
//!    flip (180° about the anterior axis, shifted by 0…±3 vertebral pitches) competes too: with
//!    only the spinous tips in view the flipped spine is a deep local minimum.
//!    Point-to-plane ICP after Chen & Medioni ("Object modelling by registration of multiple
//!    range images", Image Vis. Comput. 10(3), 1992); Tukey's biweight as in Beaton & Tukey
//!    (Technometrics 16(2), 1974); trimming after Chetverikov et al. (ICPR 2002).
//! 3. **Robust point-to-plane ICP** on the compounded cloud (at most
//!    [`RegistrationParams::max_icp_points`]): Gauss-Newton on `Σ w ρ(nᵀ(A·p − q))`, `A` =
//!    `t_ct_base`, with Tukey biweights at 4.685 σ (σ from the median absolute residual, at
//!    least [`RegistrationParams::min_sigma_m`]), pairs farther than a shrinking gate rejected
//!    (trimmed), pairs whose surface-patch normals disagree by more than 60° rejected, weights ×
//!    detector confidence, and a small Levenberg damping.
//! 4. **Breathing.** Breathing moves the patient rigidly along `ct −y`; the CT is the patient at
//!    rest (end of expiration). With the pose from step 3, each frame's mean signed residual along
//!    the posterior direction estimates its displacement; a sinusoid `c + a·cos ωt + s·sin ωt` is
//!    fitted (ω on a 0.002 Hz grid over 0.1–0.7 Hz, the respiratory band, then refined by
//!    golden section: over a minute of sweeps 0.001 Hz is already 20° of phase) and, when
//!    significant, every frame's samples are moved back by its displacement above the fitted
//!    minimum (end of expiration) and step 3 is repeated. The residual displacement is then
//!    measured again and the sinusoid refitted to correction + residual, twice
//!    ([`RegistrationParams::breathing`]). Breathing correlates with nothing rigid, so a
//!    registration without it sits at mean inspiration, half the amplitude posterior.
//! 5. **Per-vertebra refinement.** Each level seen by at least
//!    [`RegistrationParams::min_level_points`] inliers is refined alone against its own CT
//!    surface, a small rigid motion regularised toward the global pose (prior standard deviations
//!    [`RegistrationParams::level_prior_mm`] and [`RegistrationParams::level_prior_deg`]).
//! 6. **Uncertainty.** The covariance of the 6 pose parameters is the cluster-robust (sandwich)
//!    estimate `H⁻¹ (Σ_b g_b g_bᵀ) H⁻¹` over the raw samples, clustered in time blocks of
//!    [`RegistrationParams::cluster_s`] (errors of one frame — pose, breathing — are shared by
//!    all its pixels and correlated over neighbouring frames, so the pixels are not independent),
//!    plus a fixed floor [`RegistrationParams::floor_mm`] for what residuals cannot reveal
//!    (calibration, CT surface bias). It is propagated to every CT landmark, and
//!    `uncertainty_mm` is the RMS over the landmarks of the 3D standard deviation: the expected
//!    RMS target registration error.
//! 7. **Level check and refusal.** The final pose moved by one vertebral pitch (measured
//!    between the CT's vertebrae) up and down is refined the same way; the better of the two is
//!    the *level-shift alternative* (when it fits better than the winner, the search missed it:
//!    it becomes the winner and is checked in turn). Refusals ([`RefusalKind`]): too few bone
//!    points; fewer than [`RegistrationParams::min_levels`] vertebrae seen (one vertebra looks
//!    like its neighbours: the level would be a guess); the alternative's cost within
//!    [`RegistrationParams::ambiguity_ratio`] of the winner's; or a poor final fit (RMSE above
//!    [`RegistrationParams::max_rmse_mm`] or fewer than
//!    [`RegistrationParams::min_inlier_fraction`] of the points on the surface).
//!
//! [`baseline_icp`] is the plain point-to-point ICP of Besl & McKay ("A method for registration
//! of 3-D shapes", IEEE TPAMI 14(2), 1992; closed-form rigid steps by SVD as in Arun, Huang &
//! Blostein, IEEE TPAMI 9(5), 1987; every point, no weights or rejection) the benchmark runs
//! beside it.

use nalgebra::{Matrix3, Matrix6, Rotation3, Vector3, Vector6};
use telecho_core::Transform;

use crate::compound::{Compounded, KdTree, SurfaceCloud};
use crate::ct_landmarks::{analyse_spine, CtLandmark};
use crate::ct_surface::{extract_posterior_bone_surface, CtSurfaceParams, SurfacePoints};
use crate::error::ErrorKind;
use crate::volume::Volume;
use crate::Error;

impl Error {
    /// The reason when this error is a registration refusal.
    pub fn refusal_reason(&self) -> Option<&str> {
        match &self.0 {
            ErrorKind::Refused { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A rigid transform from a row-major 4×4 (the layout of the JSON files), or an error naming
/// what is wrong with it.
pub fn transform_from_rows(rows: &[[f64; 4]; 4]) -> Result<Transform, Error> {
    let bad =
        |why: &str| -> Error { ErrorKind::Invalid(format!("not a rigid transform: {why}")).into() };
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err(bad("an entry is not finite"));
    }
    if rows[3] != [0.0, 0.0, 0.0, 1.0] {
        return Err(bad("the last row is not [0, 0, 0, 1]"));
    }
    let r = Matrix3::from_fn(|i, j| rows[i][j]);
    let err = (r.transpose() * r - Matrix3::identity()).abs().max();
    if err > 1e-6 || r.determinant() < 0.0 {
        return Err(bad(&format!(
            "the rotation is not orthonormal and right-handed (|RᵀR − I| = {err:.1e})"
        )));
    }
    Ok(Transform::new(
        r,
        Vector3::new(rows[0][3], rows[1][3], rows[2][3]),
    ))
}

/// Cell of the CT surface's distance field (m).
const FIELD_CELL_M: f64 = 1.5e-3;
/// Margin of the distance field around the surface (m).
const FIELD_MARGIN_M: f64 = 0.01;

/// Distance (m) to the nearest CT surface point on a regular grid, for the coarse search:
/// exact Euclidean distance transform (Felzenszwalb & Huttenlocher, "Distance transforms of
/// sampled functions", Theory of Computing 8, 2012) of the cells holding a surface point, so
/// within about one cell of the true distance.
#[derive(Clone, Debug, Default)]
struct DistanceField {
    origin: Vector3<f64>,
    cell: f64,
    dims: [usize; 3],
    dist: Vec<f32>,
}

impl DistanceField {
    fn new(points: &[Vector3<f64>], cell: f64, margin: f64) -> Self {
        let mut lo = Vector3::repeat(f64::INFINITY);
        let mut hi = Vector3::repeat(f64::NEG_INFINITY);
        for p in points {
            lo = lo.inf(p);
            hi = hi.sup(p);
        }
        if points.is_empty() || !(lo.iter().chain(hi.iter()).all(|v| v.is_finite())) {
            return Self::default();
        }
        let origin = lo - Vector3::repeat(margin);
        let dims: [usize; 3] =
            std::array::from_fn(|a| (((hi[a] - lo[a]) + 2.0 * margin) / cell).ceil() as usize + 1);
        let n = dims[0] * dims[1] * dims[2];
        const FAR: f64 = 1e12;
        let mut f = vec![FAR; n];
        for p in points {
            let i: [usize; 3] = std::array::from_fn(|a| {
                (((p[a] - origin[a]) / cell).round() as usize).min(dims[a] - 1)
            });
            f[i[0] + dims[0] * (i[1] + dims[1] * i[2])] = 0.0;
        }
        let strides = [1, dims[0], dims[0] * dims[1]];
        let mut line = Vec::new();
        let mut out = Vec::new();
        let mut v = Vec::new();
        let mut z = Vec::new();
        for axis in 0..3 {
            let (a1, a2) = match axis {
                0 => (1, 2),
                1 => (0, 2),
                _ => (0, 1),
            };
            for j in 0..dims[a2] {
                for i in 0..dims[a1] {
                    let base = i * strides[a1] + j * strides[a2];
                    line.clear();
                    line.extend((0..dims[axis]).map(|k| f[base + k * strides[axis]]));
                    edt_1d(&line, &mut out, &mut v, &mut z);
                    for (k, d) in out.iter().enumerate() {
                        f[base + k * strides[axis]] = *d;
                    }
                }
            }
        }
        Self {
            origin,
            cell,
            dims,
            dist: f.iter().map(|d| (d.sqrt() * cell) as f32).collect(),
        }
    }

    /// Weighted mean of `min(d, cap)²` over `points` placed at `base + p` (ct), normalised by
    /// `cap²`; outside the grid a point costs 1.
    fn score(&self, points: &[(Vector3<f64>, f64)], base: &Vector3<f64>, cap: f64) -> f64 {
        let (mut s, mut ws) = (0.0, 0.0);
        let inv = 1.0 / self.cell;
        let cap2 = cap * cap;
        for (p, w) in points {
            let x = (base + p - self.origin) * inv;
            let c = if x.iter().all(|v| *v >= 0.0)
                && (x.x as usize) + 1 < self.dims[0]
                && (x.y as usize) + 1 < self.dims[1]
                && (x.z as usize) + 1 < self.dims[2]
            {
                let (i, j, k) = (
                    (x.x + 0.5) as usize,
                    (x.y + 0.5) as usize,
                    (x.z + 0.5) as usize,
                );
                let d = f64::from(self.dist[i + self.dims[0] * (j + self.dims[1] * k)]);
                (d * d).min(cap2) / cap2
            } else {
                1.0
            };
            s += w * c;
            ws += w;
        }
        if ws > 0.0 {
            s / ws
        } else {
            1.0
        }
    }
}

/// 1D squared distance transform of sampled function `f` (lower envelope of parabolas).
fn edt_1d(f: &[f64], out: &mut Vec<f64>, v: &mut Vec<usize>, z: &mut Vec<f64>) {
    let n = f.len();
    out.clear();
    out.resize(n, 0.0);
    v.clear();
    v.resize(n, 0);
    z.clear();
    z.resize(n + 1, 0.0);
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let inter = |q: usize, p: usize| {
        ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64))
    };
    for q in 1..n {
        let mut s = inter(q, v[k]);
        // z[0] = −∞, so k never goes below 0.
        while s <= z[k] {
            k -= 1;
            s = inter(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let d = q as f64 - p as f64;
        *o = d * d + f[p];
    }
}

/// Vertebral pitch used when the CT's levels are unknown (m).
const DEFAULT_PITCH_M: f64 = 0.036;

/// One surface with its search tree.
#[derive(Clone, Debug, Default)]
struct SurfaceIndex {
    tree: KdTree,
    points: Vec<Vector3<f64>>,
    normals: Vec<Vector3<f64>>,
}

impl SurfaceIndex {
    fn new(points: Vec<Vector3<f64>>, normals: Vec<Vector3<f64>>) -> Self {
        Self {
            tree: KdTree::new(&points),
            points,
            normals,
        }
    }
}

/// The CBCT side of the registration, computed once per CT ("CT preprocessing").
#[derive(Clone, Debug)]
pub struct CtModel {
    surface: SurfaceIndex,
    field: DistanceField,
    /// Per surface point: 0 = unknown, `1 + level` otherwise (index into `level_names`).
    point_level: Vec<u8>,
    level_names: Vec<String>,
    levels: Vec<SurfaceIndex>,
    landmarks: Vec<CtLandmark>,
    pitch_m: f64,
    /// Anatomical axes of the surface: median point, lateral (x), anterior (y), superior (z).
    centre: Vector3<f64>,
    axes: Matrix3<f64>,
    /// Why levels and landmarks are missing, when they are.
    pub spine_note: Option<String>,
}

impl CtModel {
    /// Extracts the posterior bone surface of `ct` (HU, RAS metres) and analyses its vertebrae
    /// ([`analyse_spine`]: labels and landmarks). When the spine analysis fails the model still
    /// registers, without levels or landmarks ([`CtModel::spine_note`] says why).
    pub fn from_volume(ct: &Volume) -> Result<Self, Error> {
        let surface = extract_posterior_bone_surface(ct, &CtSurfaceParams::default())?;
        match analyse_spine(ct) {
            Ok(spine) => {
                let levels = label_points(ct, &surface, &spine.labels);
                let names = spine.vertebrae.iter().map(|v| v.level.to_owned()).collect();
                let centres: Vec<Vector3<f64>> = spine
                    .vertebrae
                    .iter()
                    .map(|v| v.t_ct_vertebra.translation)
                    .collect();
                let mut model =
                    Self::from_surface(surface, Some((levels, names)), spine.landmarks)?;
                if centres.len() >= 2 {
                    let mut gaps: Vec<f64> =
                        centres.windows(2).map(|w| (w[0] - w[1]).norm()).collect();
                    model.pitch_m = median(&mut gaps).unwrap_or(DEFAULT_PITCH_M);
                }
                Ok(model)
            }
            Err(e) => {
                let mut model = Self::from_surface(surface, None, Vec::new())?;
                model.spine_note = Some(format!("no vertebra levels or landmarks: {e}"));
                Ok(model)
            }
        }
    }

    /// A model from a surface already extracted, with optional per-point levels (`0` unknown,
    /// `1 + i` for `names[i]`) and CT landmarks (names starting with the level name, e.g.
    /// `L3_spinous_tip`).
    pub fn from_surface(
        surface: SurfacePoints,
        levels: Option<(Vec<u8>, Vec<String>)>,
        landmarks: Vec<CtLandmark>,
    ) -> Result<Self, Error> {
        let n = surface.points.len();
        if n < 10 || surface.normals.len() != n {
            return Err(ErrorKind::Invalid(format!(
                "the CT bone surface has {n} points with {} normals; at least 10 are needed",
                surface.normals.len()
            ))
            .into());
        }
        let (point_level, level_names) = match levels {
            Some((l, names)) if l.len() == n => (l, names),
            Some((l, _)) => {
                return Err(ErrorKind::Invalid(format!(
                    "{} level labels for {n} CT surface points",
                    l.len()
                ))
                .into())
            }
            None => (vec![0; n], Vec::new()),
        };
        let level_idx: Vec<SurfaceIndex> = (0..level_names.len())
            .map(|i| {
                let ids: Vec<usize> = (0..n)
                    .filter(|&k| point_level[k] as usize == i + 1)
                    .collect();
                SurfaceIndex::new(
                    ids.iter().map(|&k| surface.points[k]).collect(),
                    ids.iter().map(|&k| surface.normals[k]).collect(),
                )
            })
            .collect();
        let (centre, axes) = anatomical_axes_ct(&surface.points);
        let field = DistanceField::new(&surface.points, FIELD_CELL_M, FIELD_MARGIN_M);
        Ok(Self {
            field,
            surface: SurfaceIndex::new(surface.points, surface.normals),
            point_level,
            level_names,
            levels: level_idx,
            landmarks,
            pitch_m: DEFAULT_PITCH_M,
            centre,
            axes,
            spine_note: None,
        })
    }

    /// Number of surface points.
    pub fn len(&self) -> usize {
        self.surface.points.len()
    }

    /// True without surface points (never, once built).
    pub fn is_empty(&self) -> bool {
        self.surface.points.is_empty()
    }

    /// Surface points (ct, m).
    pub fn points(&self) -> &[Vector3<f64>] {
        &self.surface.points
    }

    /// Names of the vertebrae the surface is labelled with (`L1` …), empty when unknown.
    pub fn level_names(&self) -> &[String] {
        &self.level_names
    }

    /// The CT landmarks.
    pub fn landmarks(&self) -> &[CtLandmark] {
        &self.landmarks
    }

    /// Replaces the CT landmarks (e.g. with a planning file's).
    pub fn set_landmarks(&mut self, landmarks: Vec<CtLandmark>) {
        self.landmarks = landmarks;
    }

    /// Distance between neighbouring vertebrae (m).
    pub fn pitch_m(&self) -> f64 {
        self.pitch_m
    }

    fn level_of_name(&self, name: &str) -> Option<usize> {
        let prefix = name.split('_').next()?;
        self.level_names.iter().position(|l| l == prefix)
    }
}

/// Gives each surface point the label of the bone voxel just inside it.
fn label_points(ct: &Volume, surface: &SurfacePoints, labels: &[u8]) -> Vec<u8> {
    let dims = ct.dims();
    let step = ct.spacing().iter().copied().fold(f64::INFINITY, f64::min) * 0.5;
    surface
        .points
        .iter()
        .zip(&surface.normals)
        .map(|(p, n)| {
            for k in 0..8 {
                let q = p - n * (step * f64::from(k));
                let ijk = ct.world_to_index(&q);
                let idx: Vec<i64> = ijk.iter().map(|v| v.round() as i64).collect();
                if idx.iter().zip(dims).any(|(&i, d)| i < 0 || i >= d as i64) {
                    continue;
                }
                let (i, j, kk) = (idx[0] as usize, idx[1] as usize, idx[2] as usize);
                let l = labels
                    .get(i + dims[0] * (j + dims[1] * kk))
                    .copied()
                    .unwrap_or(0);
                if l != 0 {
                    return l;
                }
            }
            0
        })
        .collect()
}

/// Settings of [`register_sweep`].
#[derive(Clone, Debug, PartialEq)]
pub struct RegistrationParams {
    /// Points scored per coarse hypothesis on the distance field (default 100).
    pub coarse_points: usize,
    /// Step of the coarse translation grid (m; default 6 mm); the best translations of each
    /// rotation are refined on a grid of a third of it.
    pub coarse_step_m: f64,
    /// Coarse translations tried along the spine axis, ± this (m; default 60 mm: more than one
    /// and a half vertebrae, so every level-shift hypothesis is scored).
    pub search_spine_m: f64,
    /// … across it, ± this (m; default 40 mm).
    pub search_lateral_m: f64,
    /// … along the anterior axis, up to this anteriorly (m; default 12 mm) …
    pub search_anterior_m: f64,
    /// … and up to this posteriorly (m; default 42 mm): the coarse alignment puts the sweep's
    /// median on the CT surface's, but a thick patient's sweep sees only the spinous tips, which
    /// lie up to ~35 mm posterior of the median of the whole posterior surface.
    pub search_posterior_m: f64,
    /// Rotations about the anterior axis tried around the coarse alignment (deg; default −20 …
    /// 20 by 10).
    pub search_yaw_deg: Vec<f64>,
    /// Rotations about the lateral axis tried (deg; default −8, 0, 8).
    pub search_pitch_deg: Vec<f64>,
    /// Distance at which the coarse score saturates (m; default 5 mm).
    pub coarse_cap_m: f64,
    /// Best translations kept per rotation (default 2).
    pub coarse_keep_per_rotation: usize,
    /// Coarse hypotheses refined by a short ICP, half for each direction of the spine axis
    /// (default 24).
    pub search_starts: usize,
    /// Points of the subsample each short ICP runs on (default 250).
    pub search_points: usize,
    /// ICP iterations per short ICP (default 6).
    pub search_iterations: usize,
    /// Best search starts refined further (default 6).
    pub finalists: usize,
    /// Largest compounded cloud the refinement runs on (default 3000 points).
    pub max_icp_points: usize,
    /// Largest number of raw samples used for breathing and uncertainty (default 30000).
    pub max_samples: usize,
    /// ICP iterations of the refinement (default 25).
    pub icp_iterations: usize,
    /// Truncation of the robust cost (m; default 2 mm).
    pub tau_m: f64,
    /// Smallest robust scale of the residuals (m; default 0.25 mm).
    pub min_sigma_m: f64,
    /// Compensate breathing (default true).
    pub breathing: bool,
    /// Refine each vertebra (default true).
    pub per_level: bool,
    /// Prior standard deviation of a vertebra's translation from the global pose (mm; default 2).
    pub level_prior_mm: f64,
    /// Prior standard deviation of a vertebra's rotation from the global pose (deg; default 2).
    pub level_prior_deg: f64,
    /// Fewest compounded points to attempt a registration (default 200).
    pub min_points: usize,
    /// Inliers a vertebra needs to count as seen (default 60).
    pub min_level_points: usize,
    /// Vertebrae that must be seen (default 2).
    pub min_levels: usize,
    /// Refuse when best cost / level-shift alternative's cost exceeds this (default 0.6).
    pub ambiguity_ratio: f64,
    /// Refuse above this final RMSE (mm; default 0.7: good fits of the simulated scans stay
    /// below 0.35 mm, wrong ones come out near 1 mm).
    pub max_rmse_mm: f64,
    /// Refuse below this share of points within 2τ of the surface (default 0.5).
    pub min_inlier_fraction: f64,
    /// Time-block length of the cluster-robust covariance (s; default 0.5).
    pub cluster_s: f64,
    /// Uncertainty floor added in quadrature (mm; default 0.3).
    pub floor_mm: f64,
    /// Largest angle between the CT's anterior axis and the mean beam direction of a candidate
    /// pose (deg; default 35).
    pub max_beam_angle_deg: f64,
    /// Threads of the multi-start search (default 2).
    pub threads: usize,
}

impl Default for RegistrationParams {
    fn default() -> Self {
        Self {
            coarse_points: 100,
            coarse_step_m: 0.006,
            search_spine_m: 0.060,
            search_lateral_m: 0.040,
            search_anterior_m: 0.012,
            search_posterior_m: 0.042,
            search_yaw_deg: vec![-20.0, -10.0, 0.0, 10.0, 20.0],
            search_pitch_deg: vec![-8.0, 0.0, 8.0],
            coarse_cap_m: 0.005,
            coarse_keep_per_rotation: 2,
            search_starts: 24,
            search_points: 250,
            search_iterations: 6,
            finalists: 6,
            max_icp_points: 3000,
            max_samples: 30_000,
            icp_iterations: 25,
            tau_m: 2e-3,
            min_sigma_m: 0.25e-3,
            breathing: true,
            per_level: true,
            level_prior_mm: 2.0,
            level_prior_deg: 2.0,
            min_points: 200,
            min_level_points: 60,
            min_levels: 2,
            ambiguity_ratio: 0.6,
            max_rmse_mm: 0.7,
            min_inlier_fraction: 0.5,
            cluster_s: 0.5,
            floor_mm: 0.3,
            max_beam_angle_deg: 35.0,
            threads: 2,
        }
    }
}

impl RegistrationParams {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, value: f64| -> Result<(), Error> {
            Err(ErrorKind::BadParam { what, value }.into())
        };
        let positive = [
            ("coarse translation step (m)", self.coarse_step_m),
            ("coarse score cap (m)", self.coarse_cap_m),
            ("robust cost truncation (m)", self.tau_m),
            ("minimum residual scale (m)", self.min_sigma_m),
            ("vertebra prior (mm)", self.level_prior_mm),
            ("vertebra prior (deg)", self.level_prior_deg),
            ("maximum RMSE (mm)", self.max_rmse_mm),
            ("covariance time block (s)", self.cluster_s),
            ("largest beam angle (deg)", self.max_beam_angle_deg),
        ];
        for (what, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(what, v);
            }
        }
        for (what, v) in [
            ("spine search range (m)", self.search_spine_m),
            ("lateral search range (m)", self.search_lateral_m),
            ("anterior search range (m)", self.search_anterior_m),
            ("posterior search range (m)", self.search_posterior_m),
        ] {
            if !(v.is_finite() && (0.0..=0.3).contains(&v)) {
                return bad(what, v);
            }
        }
        if self.coarse_step_m < 5e-4 {
            return bad("coarse translation step (m, ≥ 0.5 mm)", self.coarse_step_m);
        }
        if !(self.floor_mm.is_finite() && self.floor_mm >= 0.0) {
            return bad("uncertainty floor (mm)", self.floor_mm);
        }
        for (what, v) in [
            ("ambiguity ratio (0–1)", self.ambiguity_ratio),
            ("minimum inlier fraction (0–1)", self.min_inlier_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(what, v);
            }
        }
        if self.search_yaw_deg.is_empty()
            || self.search_pitch_deg.is_empty()
            || self
                .search_yaw_deg
                .iter()
                .chain(&self.search_pitch_deg)
                .any(|a| !a.is_finite())
        {
            return bad("search angles (deg; at least one each, finite)", f64::NAN);
        }
        for (what, v) in [
            ("search points", self.search_points),
            ("coarse points", self.coarse_points),
            (
                "coarse translations per rotation",
                self.coarse_keep_per_rotation,
            ),
            ("search starts", self.search_starts),
            ("search iterations", self.search_iterations),
            ("finalists", self.finalists),
            ("refinement points", self.max_icp_points),
            ("refinement iterations", self.icp_iterations),
            ("samples", self.max_samples),
        ] {
            if v == 0 {
                return bad(what, 0.0);
            }
        }
        Ok(())
    }
}

/// Why a registration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// Too little bone in the sweep.
    TooFewPoints,
    /// Too few vertebrae seen to tell the level.
    TooFewLevels,
    /// A registration one vertebra up or down fits nearly as well.
    AmbiguousLevel,
    /// The best registration does not fit the data well.
    PoorFit,
}

impl RefusalKind {
    /// Snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TooFewPoints => "too_few_points",
            Self::TooFewLevels => "too_few_levels",
            Self::AmbiguousLevel => "ambiguous_level",
            Self::PoorFit => "poor_fit",
        }
    }
}

/// A refusal with its reason in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// Which check refused.
    pub kind: RefusalKind,
    /// One line for the operator.
    pub reason: String,
}

/// Result of the refinement of one vertebra.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelResult {
    /// `L1` …
    pub name: String,
    /// Inlier points of this vertebra.
    pub points: usize,
    /// Point-to-plane RMSE after refinement (mm).
    pub rmse_mm: f64,
    /// The vertebra's own `t_base_ct`.
    pub t_base_ct: Transform,
    /// Translation of the vertebra from the global pose, at its surface centroid (mm).
    pub shift_mm: f64,
    /// Rotation from the global pose (deg).
    pub rotation_deg: f64,
}

/// The fitted breathing motion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreathingEstimate {
    /// Peak-to-peak posterior displacement (mm).
    pub amplitude_mm: f64,
    /// Frequency (Hz).
    pub frequency_hz: f64,
    /// Share of the per-frame displacement variance the sinusoid explains.
    pub explained: f64,
    /// Frames the fit used.
    pub frames: usize,
    /// The correction was applied.
    pub applied: bool,
}

/// A CT landmark placed in the base frame.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredLandmark {
    /// E.g. `L3_spinous_tip`.
    pub name: String,
    /// Position in the base frame (m), with its vertebra's refined pose when there is one.
    pub xyz: Vector3<f64>,
    /// Position in the CT (m).
    pub xyz_ct: Vector3<f64>,
    /// 0–1: CT detection confidence × whether its vertebra was seen × how small its
    /// uncertainty is.
    pub confidence: f64,
    /// 3D standard deviation of its position (mm).
    pub uncertainty_mm: f64,
}

/// A registration and everything measured on the way.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The CT in the base frame (at rest: end of expiration when breathing was compensated).
    pub t_base_ct: Transform,
    /// Point-to-plane RMSE of the inliers (mm).
    pub rmse_mm: f64,
    /// Expected RMS target registration error over the CT landmarks (mm).
    pub uncertainty_mm: f64,
    /// Covariance of (rotation vector rad, translation m) of `t_ct_base`, about
    /// [`Registration::rotation_centre_ct`], in the CT frame.
    pub covariance: Matrix6<f64>,
    /// Centre of the rotation parameters (ct, m).
    pub rotation_centre_ct: Vector3<f64>,
    /// Share of the compounded points within 2τ of the CT surface.
    pub inlier_fraction: f64,
    /// Compounded points registered.
    pub points_used: usize,
    /// Raw bone samples in the sweep.
    pub samples: usize,
    /// Frames used.
    pub frames_used: usize,
    /// Search starts tried.
    pub starts_tried: usize,
    /// Robust cost of the winner.
    pub cost: f64,
    /// Robust cost of the best level-shifted alternative; `None` when no start one vertebra up
    /// or down stays there (no competing local minimum).
    pub alternative_cost: Option<f64>,
    /// `cost / alternative_cost` (1 = indistinguishable).
    pub level_ambiguity: f64,
    /// Vertebrae seen by enough inliers.
    pub levels_seen: usize,
    /// Per-vertebra refinement.
    pub levels: Vec<LevelResult>,
    /// The breathing fit, when attempted.
    pub breathing: Option<BreathingEstimate>,
    /// CT landmarks in the base frame.
    pub landmarks: Vec<RegisteredLandmark>,
    /// Set when the registration must not be used.
    pub refusal: Option<Refusal>,
}

impl Registration {
    /// The registration, or the refusal as an error.
    pub fn accepted(self) -> Result<Self, Error> {
        match &self.refusal {
            Some(r) => Err(ErrorKind::Refused {
                reason: r.reason.clone(),
            }
            .into()),
            None => Ok(self),
        }
    }

    /// 3×3 covariance (m²) of a CT point's position in the base frame.
    pub fn point_covariance(&self, x_ct: &Vector3<f64>) -> Matrix3<f64> {
        point_covariance(
            &self.covariance,
            &self.rotation_centre_ct,
            &self.t_base_ct,
            x_ct,
        )
    }
}

/// Registers and refuses: [`register_sweep`] followed by [`Registration::accepted`].
pub fn register(
    ct: &CtModel,
    us: &Compounded,
    params: &RegistrationParams,
) -> Result<Registration, Error> {
    register_sweep(ct, us, params)?.accepted()
}

fn refused(kind: RefusalKind, reason: String) -> Error {
    let _ = kind;
    ErrorKind::Refused { reason }.into()
}

/// Registers the CT to the compounded sweep (see the module documentation). Returns an error
/// on invalid parameters and when there is too little bone to try; every other refusal comes
/// back in [`Registration::refusal`] with the estimate it refused.
pub fn register_sweep(
    ct: &CtModel,
    us: &Compounded,
    params: &RegistrationParams,
) -> Result<Registration, Error> {
    params.validate()?;
    let cloud = checked_cloud(us, params)?;
    let weights = cloud.confidence.clone();
    // 1–2. Coarse alignment and multi-start search.
    let search = global_search(ct, us, &cloud, &weights, params);
    refine_and_assess(ct, us, cloud, &search.best, search.starts, params)
}

/// Like [`register_sweep`] from a known `t_base_ct` (a previous registration, a tracked
/// re-registration) instead of the global search: steps 3–7 only.
pub fn register_from(
    ct: &CtModel,
    us: &Compounded,
    t_base_ct: &Transform,
    params: &RegistrationParams,
) -> Result<Registration, Error> {
    params.validate()?;
    if !t_base_ct.is_finite() {
        return Err(ErrorKind::Invalid("the initial t_base_ct is not finite".into()).into());
    }
    let cloud = checked_cloud(us, params)?;
    refine_and_assess(ct, us, cloud, &t_base_ct.inverse(), 0, params)
}

fn checked_cloud(us: &Compounded, params: &RegistrationParams) -> Result<SurfaceCloud, Error> {
    let cloud = us.cloud(None);
    if cloud.len() < params.min_points {
        return Err(refused(
            RefusalKind::TooFewPoints,
            format!(
                "too few bone points: {} compounded surface points from {} frames, at least {} \
                 needed",
                cloud.len(),
                us.frames.len(),
                params.min_points
            ),
        ));
    }
    Ok(cloud)
}

/// Steps 3–7 from `a0` = `t_ct_base`.
fn refine_and_assess(
    ct: &CtModel,
    us: &Compounded,
    cloud: SurfaceCloud,
    a0: &Transform,
    starts: usize,
    params: &RegistrationParams,
) -> Result<Registration, Error> {
    let refine = IcpConfig::refine(params);
    // 3–4. Robust ICP and breathing.
    let mut r = refine_pose(ct, us, cloud, a0, params);
    // Level-shift alternatives: the pose moved by one pitch along the CT spine axis and refined
    // the same way. An alternative that fits better than the winner (the search missed it)
    // becomes the winner, and is checked in turn.
    let mut alternative_cost = None;
    let mut cost = 1.0;
    for _ in 0..3 {
        let sub = subsample(r.cloud.len(), params.max_icp_points);
        cost = robust_cost(&ct.surface, &r.cloud, &r.weights, &sub, &r.a, params.tau_m);
        let alt = level_shift(ct, &r.cloud, &r.weights, &sub, &r.a, &refine);
        alternative_cost = alt.map(|(c, _)| c);
        match alt {
            Some((c, a_alt)) if c < cost => {
                r = refine_pose(ct, us, us.cloud(None), &a_alt, params);
            }
            _ => break,
        }
    }
    let Refined {
        cloud,
        weights,
        a,
        fit,
        shift,
        breathing,
    } = r;
    let shift_fn = |i: usize| {
        shift
            .as_ref()
            .and_then(|s| s.get(i).copied())
            .unwrap_or_else(Vector3::zeros)
    };

    // Final statistics on the whole cloud.
    let all: Vec<usize> = (0..cloud.len()).collect();
    let stats = residual_stats(&ct.surface, &cloud, &weights, &all, &a, params.tau_m);
    let t_base_ct = a.inverse();

    // 6. Uncertainty (before the per-level step, which uses the global pose).
    let centre = a.transform_point(&weighted_mean(&cloud.points, &weights));
    let covariance = sandwich_covariance(ct, us, &shift_fn, &a, &centre, fit.sigma, params);

    // 5. Levels.
    let level_counts = level_inliers(ct, &cloud, &a, params.tau_m);
    let levels_seen = level_counts
        .iter()
        .filter(|&&c| c >= params.min_level_points)
        .count();
    let mut levels = Vec::new();
    if params.per_level {
        for (li, &count) in level_counts.iter().enumerate() {
            if count < params.min_level_points {
                continue;
            }
            if let Some(r) = refine_level(ct, li, &cloud, &weights, &a, fit.sigma, params) {
                levels.push(r);
            }
        }
    }

    // Landmarks.
    let floor = params.floor_mm * 1e-3;
    let mut landmarks = Vec::with_capacity(ct.landmarks.len());
    let mut sum_var = 0.0;
    for l in &ct.landmarks {
        let cov = point_covariance(&covariance, &centre, &t_base_ct, &l.xyz_ct);
        let var = cov.trace() + floor * floor;
        sum_var += var;
        let sd_mm = var.sqrt() * 1e3;
        let level = ct.level_of_name(&l.name);
        let refined = level.and_then(|li| levels.iter().find(|r| r.name == ct.level_names[li]));
        let pose = refined.map_or(t_base_ct, |r| r.t_base_ct);
        let seen = level.and_then(|li| level_counts.get(li)).map_or(0.5, |&c| {
            (c as f64 / params.min_level_points as f64).min(1.0)
        });
        landmarks.push(RegisteredLandmark {
            name: l.name.clone(),
            xyz: pose.transform_point(&l.xyz_ct),
            xyz_ct: l.xyz_ct,
            confidence: (l.confidence * (0.5 + 0.5 * seen) * (-0.5 * (sd_mm / 1.5).powi(2)).exp())
                .clamp(0.0, 1.0),
            uncertainty_mm: sd_mm,
        });
    }
    let uncertainty_mm = if landmarks.is_empty() {
        // No CT landmarks: the surface points the sweep saw stand in for them.
        let pts: Vec<Vector3<f64>> = all
            .iter()
            .step_by((cloud.len() / 200).max(1))
            .map(|&i| a.transform_point(&cloud.points[i]))
            .collect();
        let v: f64 = pts
            .iter()
            .map(|p| point_covariance(&covariance, &centre, &t_base_ct, p).trace() + floor * floor)
            .sum::<f64>()
            / pts.len().max(1) as f64;
        v.sqrt() * 1e3
    } else {
        (sum_var / landmarks.len() as f64).sqrt() * 1e3
    };

    // 7. Refusal.
    let level_ambiguity = match alternative_cost {
        Some(alt) if alt > 0.0 => cost / alt,
        Some(_) => 1.0,
        None => 0.0,
    };
    let refusal = if !ct.level_names.is_empty() && levels_seen < params.min_levels {
        Some(Refusal {
            kind: RefusalKind::TooFewLevels,
            reason: format!(
                "ambiguous vertebral level: only {levels_seen} vertebra(e) seen by at least {} \
                 bone points ({} needed); neighbouring vertebrae look alike, so the level \
                 cannot be told",
                params.min_level_points, params.min_levels
            ),
        })
    } else if level_ambiguity > params.ambiguity_ratio {
        Some(Refusal {
            kind: RefusalKind::AmbiguousLevel,
            reason: format!(
                "ambiguous vertebral level: a registration shifted by one vertebra fits nearly \
                 as well (cost ratio {level_ambiguity:.2} > {:.2})",
                params.ambiguity_ratio
            ),
        })
    } else if stats.rmse_mm > params.max_rmse_mm
        || stats.inlier_fraction < params.min_inlier_fraction
    {
        Some(Refusal {
            kind: RefusalKind::PoorFit,
            reason: format!(
                "poor fit: RMSE {:.2} mm (limit {:.2}), {:.0} % of the bone points on the CT \
                 surface (at least {:.0} % needed)",
                stats.rmse_mm,
                params.max_rmse_mm,
                stats.inlier_fraction * 100.0,
                params.min_inlier_fraction * 100.0
            ),
        })
    } else {
        None
    };
    Ok(Registration {
        t_base_ct,
        rmse_mm: stats.rmse_mm,
        uncertainty_mm,
        covariance,
        rotation_centre_ct: centre,
        inlier_fraction: stats.inlier_fraction,
        points_used: cloud.len(),
        samples: us.samples.len(),
        frames_used: us.frames.len(),
        starts_tried: starts,
        cost,
        alternative_cost,
        level_ambiguity,
        levels_seen,
        levels,
        breathing,
        landmarks,
        refusal,
    })
}

/// What steps 3–4 produce.
struct Refined {
    cloud: SurfaceCloud,
    weights: Vec<f64>,
    /// `t_ct_base`.
    a: Transform,
    fit: IcpFit,
    /// Per-frame breathing correction (base frame, m), when applied.
    shift: Option<Vec<Vector3<f64>>>,
    breathing: Option<BreathingEstimate>,
}

/// Robust ICP from `a0` (`t_ct_base`), then breathing: fit, correct, refine; twice more on the
/// applied correction plus what remains.
fn refine_pose(
    ct: &CtModel,
    us: &Compounded,
    mut cloud: SurfaceCloud,
    a0: &Transform,
    params: &RegistrationParams,
) -> Refined {
    let refine = IcpConfig::refine(params);
    let mut weights = cloud.confidence.clone();
    let sub = subsample(cloud.len(), params.max_icp_points);
    let mut fit = icp(&ct.surface, &cloud, &weights, &sub, a0, &refine, None);
    let mut a = fit.a;
    let mut breathing = None;
    let mut shift: Option<Vec<Vector3<f64>>> = None;
    if params.breathing {
        let t0 = us
            .frames
            .iter()
            .map(|f| f.time_s)
            .find(|t| t.is_finite())
            .unwrap_or(0.0);
        let zero = |_: usize| Vector3::zeros();
        let obs = frame_displacements(ct, us, &zero, &a, params);
        let frames = obs.len();
        let first = fit_sinusoid(&obs, t0, None);
        breathing = Some(BreathingEstimate {
            amplitude_mm: 0.0,
            frequency_hz: 0.0,
            explained: first.map_or(0.0, |f| f.1),
            frames,
            applied: false,
        });
        if let Some((mut sine, explained)) = first {
            for pass in 0..3 {
                // Move each frame anteriorly (ct +y) by its displacement above end-expiration.
                let ant_base = a.rotation.transpose() * Vector3::y();
                let s: Vec<Vector3<f64>> = us
                    .frames
                    .iter()
                    .map(|f| ant_base * sine.above_minimum(f.time_s))
                    .collect();
                let f = |i: usize| s.get(i).copied().unwrap_or_else(Vector3::zeros);
                cloud = us.cloud(Some(&f));
                weights = cloud.confidence.clone();
                let sub = subsample(cloud.len(), params.max_icp_points);
                fit = icp(&ct.surface, &cloud, &weights, &sub, &a, &refine, None);
                a = fit.a;
                // Refit the whole model to the applied correction plus what remains.
                let better = if pass < 2 {
                    let rest = frame_displacements(ct, us, &f, &a, params);
                    let total: Vec<(f64, f64, f64)> = rest
                        .iter()
                        .map(|&(t, b, w)| (t, b + sine.above_minimum(t), w))
                        .collect();
                    fit_sinusoid(&total, t0, None)
                } else {
                    None
                };
                shift = Some(s);
                match better {
                    Some((b, _)) => sine = b,
                    None => break,
                }
            }
            breathing = Some(BreathingEstimate {
                amplitude_mm: 2.0 * sine.amplitude() * 1e3,
                frequency_hz: sine.omega / (2.0 * std::f64::consts::PI),
                explained,
                frames,
                applied: true,
            });
        }
    }
    Refined {
        cloud,
        weights,
        a,
        fit,
        shift,
        breathing,
    }
}

// ---------------------------------------------------------------------------------------------
// Axes and starts

/// Median point and anatomical axes (columns: lateral right, anterior, superior) of a CT
/// surface: anterior is `+y`, the spine axis the principal direction across it, toward `+z`.
fn anatomical_axes_ct(points: &[Vector3<f64>]) -> (Vector3<f64>, Matrix3<f64>) {
    let centre = median_point(points);
    let anterior = Vector3::y();
    let mut spine = principal_direction(points, &anterior).unwrap_or_else(Vector3::z);
    if spine.z < 0.0 {
        spine = -spine;
    }
    (centre, frame_from(&anterior, &spine))
}

/// Right-handed frame with columns (anterior × spine, anterior, spine ⟂ anterior).
fn frame_from(anterior: &Vector3<f64>, spine: &Vector3<f64>) -> Matrix3<f64> {
    let a = anterior.normalize();
    let s = (spine - a * a.dot(spine))
        .try_normalize(1e-9)
        .unwrap_or_else(|| a.cross(&Vector3::x()).normalize());
    Matrix3::from_columns(&[a.cross(&s), a, s])
}

/// Principal direction of `points` within the plane perpendicular to `normal`.
fn principal_direction(points: &[Vector3<f64>], normal: &Vector3<f64>) -> Option<Vector3<f64>> {
    if points.len() < 3 {
        return None;
    }
    let n = normal.try_normalize(1e-12)?;
    let mean = points.iter().fold(Vector3::zeros(), |a, p| a + p) / points.len() as f64;
    let mut cov = Matrix3::zeros();
    for p in points {
        let d = p - mean;
        let d = d - n * n.dot(&d);
        cov += d * d.transpose();
    }
    let eig = nalgebra::SymmetricEigen::new(cov);
    let i = (0..3).max_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]))?;
    Some(eig.eigenvectors.column(i).into_owned())
}

fn median_point(points: &[Vector3<f64>]) -> Vector3<f64> {
    let mut out = Vector3::zeros();
    for a in 0..3 {
        let mut v: Vec<f64> = points.iter().map(|p| p[a]).collect();
        out[a] = median(&mut v).unwrap_or(0.0);
    }
    out
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*m)
}

fn weighted_mean(points: &[Vector3<f64>], w: &[f64]) -> Vector3<f64> {
    let (mut s, mut ws) = (Vector3::zeros(), 0.0);
    for (p, &wi) in points.iter().zip(w) {
        s += p * wi;
        ws += wi;
    }
    if ws > 0.0 {
        s / ws
    } else {
        Vector3::zeros()
    }
}

/// `n` indices spread evenly over `0..len`.
fn subsample(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    (0..n).map(|k| k * len / n).collect()
}

struct SearchResult {
    best: Transform,
    starts: usize,
}

/// Coarse alignment + multi-start search + level-shift alternatives. Returns `t_ct_base`.
fn global_search(
    ct: &CtModel,
    us: &Compounded,
    cloud: &SurfaceCloud,
    weights: &[f64],
    params: &RegistrationParams,
) -> SearchResult {
    // Sweep axes in the base frame.
    let beam_sum = us
        .frames
        .iter()
        .filter(|f| f.beam.iter().all(|v| v.is_finite()))
        .fold(Vector3::zeros(), |a, f| a + f.beam);
    let anterior = beam_sum
        .try_normalize(1e-9)
        .unwrap_or_else(|| -Vector3::z());
    let spine = principal_direction(&cloud.points, &anterior).unwrap_or_else(Vector3::y);
    let us_centre = median_point(&cloud.points);
    let search_sub = subsample(cloud.len(), params.search_points);
    let mid_sub = subsample(
        cloud.len(),
        (params.search_points * 4).min(params.max_icp_points),
    );
    let cfg = IcpConfig::search(params);
    let tau = params.tau_m;

    // Coarse scan: every rotation hypothesis × a grid of translations along the CT's lateral,
    // anterior and spine axes, scored on the distance field.
    let coarse_sub = subsample(cloud.len(), params.coarse_points);
    let rel: Vec<(Vector3<f64>, f64)> = coarse_sub
        .iter()
        .map(|&i| (cloud.points[i] - us_centre, weights[i]))
        .collect();
    let mut rotations_ct: Vec<Matrix3<f64>> = Vec::new();
    for sign in [1.0, -1.0] {
        let r_us = frame_from(&anterior, &(spine * sign));
        for &yaw in &params.search_yaw_deg {
            for &pitch in &params.search_pitch_deg {
                let about = |axis: usize, deg: f64| {
                    Rotation3::from_axis_angle(
                        &nalgebra::Unit::new_normalize(r_us.column(axis).into_owned()),
                        deg.to_radians(),
                    )
                    .into_inner()
                };
                // Perturb the sweep frame about its anterior (1) and lateral (0) axes.
                let r_base_ct = about(1, yaw) * about(0, pitch) * r_us * ct.axes.transpose();
                rotations_ct.push(r_base_ct.transpose());
            }
        }
    }
    let offsets = translation_grid(ct, params);
    let step = params.coarse_step_m;
    let local: Vec<Vector3<f64>> = {
        let f = step / 3.0;
        let mut v = Vec::new();
        for i in -1..=1 {
            for j in -1..=1 {
                for k in -1..=1 {
                    if (i, j, k) != (0, 0, 0) {
                        v.push(
                            (ct.axes.column(0) * f64::from(i)
                                + ct.axes.column(1) * f64::from(j)
                                + ct.axes.column(2) * f64::from(k))
                                * f,
                        );
                    }
                }
            }
        }
        v
    };
    let threads = params.threads.clamp(1, 64);
    let chunk = rotations_ct.len().div_ceil(threads).max(1);
    let cap = params.coarse_cap_m;
    let mut coarse: Vec<(f64, Transform)> = std::thread::scope(|scope| {
        let handles: Vec<_> = rotations_ct
            .chunks(chunk)
            .map(|part| {
                let (rel, offsets, local) = (&rel, &offsets, &local);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for r in part {
                        let rotated: Vec<(Vector3<f64>, f64)> =
                            rel.iter().map(|(p, w)| (r * p, *w)).collect();
                        let mut scored: Vec<(f64, usize)> = offsets
                            .iter()
                            .enumerate()
                            .map(|(k, o)| {
                                let base = ct.centre + o;
                                (ct.field.score(&rotated, &base, cap), k)
                            })
                            .collect();
                        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
                        // The best few translations of this rotation, well apart.
                        let mut kept: Vec<usize> = Vec::new();
                        for (score, k) in scored {
                            if kept.len() >= params.coarse_keep_per_rotation {
                                break;
                            }
                            if kept
                                .iter()
                                .all(|&j| (offsets[j] - offsets[k]).norm() > 1.5 * step)
                            {
                                kept.push(k);
                                // Local refinement on a grid of a third of the step.
                                let mut best = (score, offsets[k]);
                                for d in local.iter() {
                                    let o = offsets[k] + d;
                                    let sc = ct.field.score(&rotated, &(ct.centre + o), cap);
                                    if sc < best.0 {
                                        best = (sc, o);
                                    }
                                }
                                let t = ct.centre + best.1 - r * us_centre;
                                out.push((best.0, Transform::new(*r, t)));
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let n_coarse = rotations_ct.len() * offsets.len();
    coarse.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Half the starts for each direction of the spine axis: when only the spinous tips are in
    // view, the head-to-foot flip scores nearly as well on the coarse field and could otherwise
    // take every start.
    let ct_spine = ct.axes.column(2).into_owned();
    let (up, down): (Vec<_>, Vec<_>) = coarse
        .into_iter()
        .partition(|(_, a)| (a.rotation * spine).dot(&ct_spine) >= 0.0);
    let half = params.search_starts.div_ceil(2);
    let initial: Vec<Transform> = up
        .into_iter()
        .take(half)
        .chain(down.into_iter().take(half))
        .map(|c| c.1)
        .collect();
    let chunk = initial.len().div_ceil(threads).max(1);
    let mut starts: Vec<(Transform, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = initial
            .chunks(chunk)
            .map(|part| {
                let sub = &search_sub;
                let cfg = &cfg;
                scope.spawn(move || {
                    part.iter()
                        .map(|a| {
                            let fit = icp(&ct.surface, cloud, weights, sub, a, cfg, None);
                            (fit.a, fit.cost)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let n_starts = starts.len();
    // The probe looks into the back: a pose whose CT anterior axis is far from the mean beam is
    // not a candidate, however well a narrow ridge of bone fits it.
    let cos_max = params.max_beam_angle_deg.to_radians().cos();
    let facing = |a: &Transform| (a.rotation.transpose() * Vector3::y()).dot(&anterior) >= cos_max;
    if starts.iter().any(|(a, _)| facing(a)) {
        starts.retain(|(a, _)| facing(a));
    }
    starts.sort_by(|x, y| x.1.total_cmp(&y.1));
    // Finalists: distinct poses among the best.
    let mut finalists: Vec<Transform> = Vec::new();
    for (a, _) in &starts {
        if finalists.len() >= params.finalists {
            break;
        }
        if finalists.iter().all(|f| {
            let (dp, dr) = f.distance_to(a);
            dp > 3e-3 || dr > 2f64.to_radians()
        }) {
            finalists.push(*a);
        }
    }
    let mid_cfg = IcpConfig {
        iterations: 10,
        ..IcpConfig::refine(params)
    };
    let mut best = (
        finalists.first().copied().unwrap_or(Transform::IDENTITY),
        f64::INFINITY,
    );
    for a in finalists {
        let fit = icp(&ct.surface, cloud, weights, &mid_sub, &a, &mid_cfg, None);
        let cost = robust_cost(&ct.surface, cloud, weights, &mid_sub, &fit.a, tau);
        if cost < best.1 && facing(&fit.a) {
            best = (fit.a, cost);
        }
    }
    // Head-to-foot flip of the winner: 180° about the CT's anterior axis through the sweep's
    // centre, then shifted by 0, ±1, ±2, ±3 vertebral pitches along the spine. When only the
    // spinous tips are in view the flipped spine is a deep local minimum the coarse scan can
    // prefer; each alternative runs the search ICP and then the finalists' one, and replaces the
    // winner when it fits better.
    let mut n_flips = 0;
    if best.1.is_finite() {
        let c = best.0.transform_point(&us_centre);
        let axis = nalgebra::Unit::new_normalize(ct.axes.column(1).into_owned());
        let rot = Rotation3::from_axis_angle(&axis, std::f64::consts::PI).into_inner();
        let flip = Transform::new(rot, c - rot * c);
        let flipped = flip * best.0;
        for k in -3..=3 {
            let shift = Transform::new(Matrix3::identity(), ct_spine * (f64::from(k) * ct.pitch_m));
            let start = shift * flipped;
            let coarse_fit = icp(&ct.surface, cloud, weights, &search_sub, &start, &cfg, None);
            let fit = icp(
                &ct.surface,
                cloud,
                weights,
                &mid_sub,
                &coarse_fit.a,
                &mid_cfg,
                None,
            );
            let cost = robust_cost(&ct.surface, cloud, weights, &mid_sub, &fit.a, tau);
            n_flips += 1;
            if cost < best.1 && facing(&fit.a) {
                best = (fit.a, cost);
            }
        }
    }
    SearchResult {
        best: best.0,
        starts: n_coarse + n_starts + n_flips,
    }
}

/// Translation offsets of the coarse scan (ct, m) along the CT's lateral, anterior and spine
/// axes.
fn translation_grid(ct: &CtModel, p: &RegistrationParams) -> Vec<Vector3<f64>> {
    let steps = |range: f64| -> Vec<f64> {
        let n = (range / p.coarse_step_m).floor() as i64;
        (-n..=n).map(|k| k as f64 * p.coarse_step_m).collect()
    };
    let (lat, ant, sp) = (
        ct.axes.column(0).into_owned(),
        ct.axes.column(1).into_owned(),
        ct.axes.column(2).into_owned(),
    );
    let ant_steps: Vec<f64> = {
        let lo = (p.search_posterior_m / p.coarse_step_m).floor() as i64;
        let hi = (p.search_anterior_m / p.coarse_step_m).floor() as i64;
        (-lo..=hi).map(|k| k as f64 * p.coarse_step_m).collect()
    };
    let mut out = Vec::new();
    for &s in &steps(p.search_spine_m) {
        for &l in &steps(p.search_lateral_m) {
            for &a in &ant_steps {
                out.push(lat * l + ant * a + sp * s);
            }
        }
    }
    out
}

/// The best registration one vertebral pitch up or down from `a` (refined like the winner):
/// its cost and `t_ct_base`; `None` when neither start stays about one level away.
fn level_shift(
    ct: &CtModel,
    cloud: &SurfaceCloud,
    weights: &[f64],
    sub: &[usize],
    a: &Transform,
    cfg: &IcpConfig,
) -> Option<(f64, Transform)> {
    let spine = ct.axes.column(2).into_owned();
    let centre = a.transform_point(&weighted_mean_idx(&cloud.points, weights, sub));
    let mut best: Option<(f64, Transform)> = None;
    for sign in [1.0, -1.0] {
        let shift = Transform::new(Matrix3::identity(), spine * (sign * ct.pitch_m));
        let start = shift * *a;
        let fit = icp(&ct.surface, cloud, weights, sub, &start, cfg, None);
        let moved = (fit
            .a
            .transform_point(&(a.inverse().transform_point(&centre)))
            - centre)
            .dot(&spine)
            .abs();
        if moved > 0.5 * ct.pitch_m
            && moved < 1.5 * ct.pitch_m
            && best.is_none_or(|b| fit.cost < b.0)
        {
            best = Some((fit.cost, fit.a));
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// ICP

#[derive(Clone, Copy, Debug)]
struct IcpConfig {
    iterations: usize,
    gate0_m: f64,
    gate_min_m: f64,
    decay: f64,
    min_sigma_m: f64,
    tau_m: f64,
    damping: f64,
}

impl IcpConfig {
    fn search(p: &RegistrationParams) -> Self {
        Self {
            iterations: p.search_iterations,
            gate0_m: 0.02,
            gate_min_m: 0.004,
            decay: 0.7,
            min_sigma_m: p.min_sigma_m.max(0.5e-3),
            tau_m: p.tau_m,
            damping: 1e-6,
        }
    }

    fn refine(p: &RegistrationParams) -> Self {
        Self {
            iterations: p.icp_iterations,
            gate0_m: 0.008,
            gate_min_m: 2.0 * p.tau_m,
            decay: 0.8,
            min_sigma_m: p.min_sigma_m,
            tau_m: p.tau_m,
            damping: 1e-6,
        }
    }
}

struct IcpFit {
    /// `t_ct_base`.
    a: Transform,
    cost: f64,
    sigma: f64,
}

/// Prior of a regularised (per-vertebra) fit: information matrix about the start pose.
struct Prior {
    information: Matrix6<f64>,
}

/// Robust point-to-plane ICP of `cloud[sub]` against `target`, from `a0 = t_ct_base`.
fn icp(
    target: &SurfaceIndex,
    cloud: &SurfaceCloud,
    weights: &[f64],
    sub: &[usize],
    a0: &Transform,
    cfg: &IcpConfig,
    prior: Option<&Prior>,
) -> IcpFit {
    let mut a = *a0;
    let mut sigma = (cfg.gate0_m / 3.0).max(cfg.min_sigma_m);
    let mut gate = cfg.gate0_m;
    let mut residuals: Vec<f64> = Vec::with_capacity(sub.len());
    // Accumulated motion from the start (for the prior).
    for it in 0..cfg.iterations {
        let centre = a.transform_point(&weighted_mean_idx(&cloud.points, weights, sub));
        let mut h = Matrix6::<f64>::zeros();
        let mut g = Vector6::<f64>::zeros();
        residuals.clear();
        let c_tukey = 4.685 * sigma;
        for &i in sub {
            let x = a.transform_point(&cloud.points[i]);
            let Some((j, d2)) = target.tree.nearest(&x) else {
                continue;
            };
            if d2 > gate * gate {
                continue;
            }
            let n = target.normals[j];
            if cloud.planar[i] {
                let nu = a.rotation * cloud.normals[i];
                if nu.dot(&n) < 0.5 {
                    continue;
                }
            }
            let r = n.dot(&(x - target.points[j]));
            residuals.push(r.abs());
            let u = r / c_tukey;
            if u.abs() >= 1.0 {
                continue;
            }
            let w = weights[i] * (1.0 - u * u).powi(2);
            let jac = jacobian(&(x - centre), &n);
            h += jac * jac.transpose() * w;
            g += jac * (w * r);
        }
        if residuals.len() < 6 {
            break;
        }
        let mut hh = h;
        let scale = h.trace().max(1e-12) * cfg.damping;
        for k in 0..6 {
            hh[(k, k)] += scale;
        }
        if let Some(p) = prior {
            // Regularise toward the start pose: the motion so far is a₀ → a.
            let d = motion_between(a0, &a, &centre);
            hh += p.information;
            g += p.information * d;
        }
        let Some(delta) = hh.cholesky().map(|c| c.solve(&(-g))) else {
            break;
        };
        a = apply_motion(&delta, &centre) * a;
        let mut abs = residuals.clone();
        let mad = median(&mut abs).unwrap_or(sigma);
        sigma = (1.4826 * mad).max(cfg.min_sigma_m);
        gate = (gate * cfg.decay).max(cfg.gate_min_m);
        let small =
            delta.fixed_rows::<3>(0).norm() < 1e-5 && delta.fixed_rows::<3>(3).norm() < 1e-6;
        if small && it > 2 {
            break;
        }
    }
    let cost = robust_cost(target, cloud, weights, sub, &a, cfg.tau_m);
    IcpFit { a, cost, sigma }
}

fn weighted_mean_idx(points: &[Vector3<f64>], w: &[f64], sub: &[usize]) -> Vector3<f64> {
    let (mut s, mut ws) = (Vector3::zeros(), 0.0);
    for &i in sub {
        s += points[i] * w[i];
        ws += w[i];
    }
    if ws > 0.0 {
        s / ws
    } else {
        Vector3::zeros()
    }
}

/// d r / d(ω, v) for `x' = x + ω × (x − c) + v`: `[(x − c) × n, n]`.
fn jacobian(xc: &Vector3<f64>, n: &Vector3<f64>) -> Vector6<f64> {
    let m = xc.cross(n);
    Vector6::new(m.x, m.y, m.z, n.x, n.y, n.z)
}

/// The rigid motion `x ↦ R(ω)(x − c) + c + v`.
fn apply_motion(delta: &Vector6<f64>, centre: &Vector3<f64>) -> Transform {
    let w = Vector3::new(delta[0], delta[1], delta[2]);
    let v = Vector3::new(delta[3], delta[4], delta[5]);
    let r = Rotation3::new(w).into_inner();
    Transform::new(r, centre - r * centre + v)
}

/// The (ω, v) about `centre` that takes `from` to `to` (both `t_ct_base`): `to = M · from`.
fn motion_between(from: &Transform, to: &Transform, centre: &Vector3<f64>) -> Vector6<f64> {
    let m = to * &from.inverse();
    let w = telecho_core::rotation_log(&m.rotation);
    let v = m.transform_point(centre) - centre;
    Vector6::new(w.x, w.y, w.z, v.x, v.y, v.z)
}

/// Mean of `min(e², τ²)/τ²` over the weighted points (`e` point-to-plane; farther than 2τ from
/// every surface point costs 1).
fn robust_cost(
    target: &SurfaceIndex,
    cloud: &SurfaceCloud,
    weights: &[f64],
    sub: &[usize],
    a: &Transform,
    tau: f64,
) -> f64 {
    let (mut s, mut ws) = (0.0, 0.0);
    let gate2 = 4.0 * tau * tau;
    for &i in sub {
        let x = a.transform_point(&cloud.points[i]);
        let w = weights[i];
        ws += w;
        let c = match target.tree.nearest(&x) {
            Some((j, d2)) if d2 <= gate2 => {
                let e = target.normals[j].dot(&(x - target.points[j]));
                (e * e).min(tau * tau) / (tau * tau)
            }
            _ => 1.0,
        };
        s += w * c;
    }
    if ws > 0.0 {
        s / ws
    } else {
        1.0
    }
}

struct Stats {
    rmse_mm: f64,
    inlier_fraction: f64,
}

fn residual_stats(
    target: &SurfaceIndex,
    cloud: &SurfaceCloud,
    weights: &[f64],
    sub: &[usize],
    a: &Transform,
    tau: f64,
) -> Stats {
    let gate2 = 4.0 * tau * tau;
    let (mut s, mut ws, mut inl, mut all) = (0.0, 0.0, 0.0, 0.0);
    for &i in sub {
        let x = a.transform_point(&cloud.points[i]);
        let w = weights[i];
        all += w;
        if let Some((j, d2)) = target.tree.nearest(&x) {
            if d2 <= gate2 {
                let e = target.normals[j].dot(&(x - target.points[j]));
                inl += w;
                s += w * e * e;
                ws += w;
            }
        }
    }
    Stats {
        rmse_mm: if ws > 0.0 {
            (s / ws).sqrt() * 1e3
        } else {
            f64::INFINITY
        },
        inlier_fraction: if all > 0.0 { inl / all } else { 0.0 },
    }
}

/// Inlier points per CT level.
fn level_inliers(ct: &CtModel, cloud: &SurfaceCloud, a: &Transform, tau: f64) -> Vec<usize> {
    let mut counts = vec![0usize; ct.level_names.len()];
    let gate2 = 4.0 * tau * tau;
    for p in &cloud.points {
        let x = a.transform_point(p);
        if let Some((j, d2)) = ct.surface.tree.nearest(&x) {
            let l = ct.point_level[j] as usize;
            if d2 <= gate2 && l > 0 && l <= counts.len() {
                counts[l - 1] += 1;
            }
        }
    }
    counts
}

/// Regularised refinement of one vertebra.
fn refine_level(
    ct: &CtModel,
    li: usize,
    cloud: &SurfaceCloud,
    weights: &[f64],
    a: &Transform,
    sigma: f64,
    params: &RegistrationParams,
) -> Option<LevelResult> {
    let target = ct.levels.get(li)?;
    if target.points.is_empty() {
        return None;
    }
    let gate2 = 4.0 * params.tau_m * params.tau_m;
    let sub: Vec<usize> = (0..cloud.len())
        .filter(|&i| {
            let x = a.transform_point(&cloud.points[i]);
            ct.surface
                .tree
                .nearest(&x)
                .is_some_and(|(j, d2)| d2 <= gate2 && ct.point_level[j] as usize == li + 1)
        })
        .collect();
    if sub.len() < params.min_level_points {
        return None;
    }
    let s2 = sigma.max(params.min_sigma_m).powi(2);
    let rot = params.level_prior_deg.to_radians();
    let tr = params.level_prior_mm * 1e-3;
    let mut info = Matrix6::zeros();
    for k in 0..3 {
        info[(k, k)] = s2 / (rot * rot);
        info[(k + 3, k + 3)] = s2 / (tr * tr);
    }
    // The data term Σ w r² is the negative log-likelihood × σ²: the prior enters as σ²·Λ.
    let prior = Prior { information: info };
    let cfg = IcpConfig {
        iterations: 12,
        gate0_m: 2.0 * params.tau_m,
        gate_min_m: 2.0 * params.tau_m,
        decay: 1.0,
        min_sigma_m: params.min_sigma_m,
        tau_m: params.tau_m,
        damping: 1e-6,
    };
    let fit = icp(target, cloud, weights, &sub, a, &cfg, Some(&prior));
    let stats = residual_stats(target, cloud, weights, &sub, &fit.a, params.tau_m);
    let centre = weighted_mean(&target.points, &vec![1.0; target.points.len()]);
    let shift =
        (fit.a.inverse().transform_point(&centre) - a.inverse().transform_point(&centre)).norm();
    let (_, dr) = fit.a.distance_to(a);
    Some(LevelResult {
        name: ct.level_names[li].clone(),
        points: sub.len(),
        rmse_mm: stats.rmse_mm,
        t_base_ct: fit.a.inverse(),
        shift_mm: shift * 1e3,
        rotation_deg: dr.to_degrees(),
    })
}

// ---------------------------------------------------------------------------------------------
// Breathing and uncertainty

/// One raw sample matched to the CT surface.
#[derive(Clone, Copy, Debug)]
struct SampleResidual {
    /// Index into [`Compounded::frames`].
    frame: usize,
    /// Detector confidence.
    weight: f64,
    /// Position in the CT (m).
    x_ct: Vector3<f64>,
    /// Normal of the nearest CT surface point.
    normal: Vector3<f64>,
    /// Signed point-to-plane residual (m).
    r: f64,
}

/// Raw samples (subsampled) at pose `a` with an optional per-frame shift, matched to the CT
/// surface within `gate`.
fn sample_residuals(
    ct: &CtModel,
    us: &Compounded,
    shift: &dyn Fn(usize) -> Vector3<f64>,
    a: &Transform,
    gate: f64,
    max_samples: usize,
) -> Vec<SampleResidual> {
    let idx = subsample(us.samples.len(), max_samples);
    let mut out = Vec::with_capacity(idx.len());
    for i in idx {
        let s = &us.samples[i];
        let f = s.frame as usize;
        let x = a.transform_point(&(s.xyz + shift(f)));
        if let Some((j, d2)) = ct.surface.tree.nearest(&x) {
            if d2 <= gate * gate {
                let n = ct.surface.normals[j];
                let r = n.dot(&(x - ct.surface.points[j]));
                out.push(SampleResidual {
                    frame: f,
                    weight: f64::from(s.confidence),
                    x_ct: x,
                    normal: n,
                    r,
                });
            }
        }
    }
    out
}

/// A fitted breathing sinusoid `c + a·cos ω(t − t0) + s·sin ω(t − t0)` (m, posterior).
#[derive(Clone, Copy, Debug)]
struct Sinusoid {
    t0: f64,
    omega: f64,
    c: f64,
    a: f64,
    s: f64,
}

impl Sinusoid {
    fn amplitude(&self) -> f64 {
        self.a.hypot(self.s)
    }

    /// Displacement above the minimum (end of expiration) at `t`, m (≥ 0).
    fn above_minimum(&self, t: f64) -> f64 {
        let (s, c) = (self.omega * (t - self.t0)).sin_cos();
        self.a * c + self.s * s + self.amplitude()
    }
}

/// Per-frame posterior displacement `(time, b, weight)` of the samples at pose `a` with the
/// per-frame `shift` applied: `b_f = Σ w r (−n_y) / Σ w n_y²` (a posterior displacement `b`
/// gives a point-to-plane residual `r ≈ −b n_y`, `n` the CT normal).
fn frame_displacements(
    ct: &CtModel,
    us: &Compounded,
    shift: &dyn Fn(usize) -> Vector3<f64>,
    a: &Transform,
    params: &RegistrationParams,
) -> Vec<(f64, f64, f64)> {
    let gate = 2.0 * params.tau_m;
    let res = sample_residuals(ct, us, shift, a, gate, params.max_samples);
    let nf = us.frames.len();
    let mut num = vec![0.0; nf];
    let mut den = vec![0.0; nf];
    let mut cnt = vec![0usize; nf];
    for &SampleResidual {
        frame: f,
        weight: w,
        normal: n,
        r,
        ..
    } in &res
    {
        if r.abs() > gate {
            continue;
        }
        num[f] += w * r * (-n.y);
        den[f] += w * n.y * n.y;
        cnt[f] += 1;
    }
    (0..nf)
        .filter(|&f| cnt[f] >= 8 && den[f] > 1e-9 && us.frames[f].time_s.is_finite())
        .map(|f| (us.frames[f].time_s, num[f] / den[f], den[f].sqrt()))
        .collect()
}

/// Least-squares sinusoid through `obs` at `omega`, or at the best ω of the respiratory band
/// (0.1–0.7 Hz) when `None`. Returns the fit and the share of variance it explains, or `None`
/// when the fit is not significant.
fn fit_sinusoid(obs: &[(f64, f64, f64)], t0: f64, omega: Option<f64>) -> Option<(Sinusoid, f64)> {
    if obs.len() < 20 {
        return None;
    }
    let fit_at = |omega: f64| -> Option<(Sinusoid, f64)> {
        let mut m = Matrix3::zeros();
        let mut v = Vector3::zeros();
        for &(t, b, w) in obs {
            let (s, c) = (omega * (t - t0)).sin_cos();
            let x = Vector3::new(1.0, c, s);
            m += x * x.transpose() * w;
            v += x * (b * w);
        }
        let p = m.cholesky()?.solve(&v);
        let fit = Sinusoid {
            t0,
            omega,
            c: p[0],
            a: p[1],
            s: p[2],
        };
        let sse: f64 = obs
            .iter()
            .map(|&(t, b, w)| {
                let (s, c) = (omega * (t - t0)).sin_cos();
                w * (b - fit.c - fit.a * c - fit.s * s).powi(2)
            })
            .sum();
        Some((fit, sse))
    };
    let two_pi = 2.0 * std::f64::consts::PI;
    let (fit, sse) = match omega {
        Some(w) => fit_at(w)?,
        None => {
            let mut best: Option<(Sinusoid, f64)> = None;
            let step = 0.002;
            let mut f_hz = 0.1;
            while f_hz <= 0.7 + 1e-9 {
                if let Some((p, sse)) = fit_at(two_pi * f_hz) {
                    if best.as_ref().is_none_or(|b| sse < b.1) {
                        best = Some((p, sse));
                    }
                }
                f_hz += step;
            }
            let (mut fit, mut sse) = best?;
            // Golden-section refinement within one grid step: over a minute of sweeps a
            // frequency error of 0.001 Hz already shifts the phase by 20°.
            let g = 0.5 * (5f64.sqrt() - 1.0);
            let (mut lo, mut hi) = (fit.omega - two_pi * step, fit.omega + two_pi * step);
            for _ in 0..30 {
                let m1 = hi - g * (hi - lo);
                let m2 = lo + g * (hi - lo);
                let e1 = fit_at(m1).map_or(f64::INFINITY, |f| f.1);
                let e2 = fit_at(m2).map_or(f64::INFINITY, |f| f.1);
                if e1 < e2 {
                    hi = m2;
                } else {
                    lo = m1;
                }
            }
            if let Some((f, e)) = fit_at(0.5 * (lo + hi)) {
                if e < sse {
                    (fit, sse) = (f, e);
                }
            }
            (fit, sse)
        }
    };
    let wsum: f64 = obs.iter().map(|o| o.2).sum();
    let mean = obs.iter().map(|o| o.1 * o.2).sum::<f64>() / wsum;
    let sst: f64 = obs.iter().map(|o| o.2 * (o.1 - mean).powi(2)).sum();
    let explained = if sst > 0.0 { 1.0 - sse / sst } else { 0.0 };
    // Significance: a clear share of the variance, and more than the frame-to-frame noise would
    // give by chance.
    let noise = (sse / wsum).sqrt();
    let amp = fit.amplitude();
    let significant = amp > 3.0 * noise / (obs.len() as f64).sqrt() && amp > 5e-5;
    (significant && (omega.is_some() || explained > 0.2)).then_some((fit, explained))
}

/// Cluster-robust covariance of (ω, v) about `centre` (see the module documentation).
fn sandwich_covariance(
    ct: &CtModel,
    us: &Compounded,
    shift: &dyn Fn(usize) -> Vector3<f64>,
    a: &Transform,
    centre: &Vector3<f64>,
    sigma: f64,
    params: &RegistrationParams,
) -> Matrix6<f64> {
    let res = sample_residuals(ct, us, shift, a, 2.0 * params.tau_m, params.max_samples);
    let c_tukey = 4.685 * sigma.max(params.min_sigma_m);
    let mut h = Matrix6::<f64>::zeros();
    let t0 = us
        .frames
        .iter()
        .map(|f| f.time_s)
        .find(|t| t.is_finite())
        .unwrap_or(0.0);
    let mut blocks: std::collections::BTreeMap<i64, Vector6<f64>> = Default::default();
    for &SampleResidual {
        frame: f,
        weight: w,
        x_ct: x,
        normal: n,
        r,
    } in &res
    {
        let u = r / c_tukey;
        if u.abs() >= 1.0 {
            continue;
        }
        let w = w * (1.0 - u * u).powi(2);
        let jac = jacobian(&(x - centre), &n);
        h += jac * jac.transpose() * w;
        let key = ((us.frames[f].time_s - t0) / params.cluster_s).floor() as i64;
        *blocks.entry(key).or_insert_with(Vector6::zeros) += jac * (w * r);
    }
    let mut meat = Matrix6::<f64>::zeros();
    for g in blocks.values() {
        meat += g * g.transpose();
    }
    let scale = h.trace().max(1e-12) * 1e-9;
    let mut hh = h;
    for k in 0..6 {
        hh[(k, k)] += scale;
    }
    match hh.try_inverse() {
        Some(hi) => hi * meat * hi,
        None => Matrix6::identity() * 1e-2,
    }
}

/// Covariance (m²) of `t_base_ct · x_ct` given the covariance of (ω, v) of `t_ct_base` about
/// `centre` (ct).
fn point_covariance(
    cov: &Matrix6<f64>,
    centre: &Vector3<f64>,
    t_base_ct: &Transform,
    x_ct: &Vector3<f64>,
) -> Matrix3<f64> {
    // δx_ct = ω × (x − c) + v = −[x − c]× ω + v; base displacement = −R δx_ct.
    let d = x_ct - centre;
    let skew = Matrix3::new(0.0, -d.z, d.y, d.z, 0.0, -d.x, -d.y, d.x, 0.0);
    let mut j = nalgebra::Matrix3x6::<f64>::zeros();
    j.fixed_view_mut::<3, 3>(0, 0).copy_from(&(-skew));
    j.fixed_view_mut::<3, 3>(0, 3)
        .copy_from(&Matrix3::identity());
    let r = t_base_ct.rotation;
    let c = j * cov * j.transpose();
    r * c * r.transpose()
}

// ---------------------------------------------------------------------------------------------
// Baseline

/// Plain point-to-point ICP (every point, nearest neighbour, closed-form rigid fit by SVD, no
/// weights, no rejection) of `cloud` (base frame) to the CT surface from `init` = `t_base_ct`;
/// the classical baseline. Returns `t_base_ct`.
pub fn baseline_icp(
    ct: &CtModel,
    cloud: &SurfaceCloud,
    init: &Transform,
    iterations: usize,
) -> Transform {
    let mut a = init.inverse();
    let src = &cloud.points;
    if src.len() < 3 {
        return *init;
    }
    for _ in 0..iterations {
        let mut pairs = Vec::with_capacity(src.len());
        for p in src {
            let x = a.transform_point(p);
            if let Some((j, _)) = ct.surface.tree.nearest(&x) {
                pairs.push((x, ct.surface.points[j]));
            }
        }
        let n = pairs.len() as f64;
        if n < 3.0 {
            break;
        }
        let cx = pairs.iter().fold(Vector3::zeros(), |s, p| s + p.0) / n;
        let cq = pairs.iter().fold(Vector3::zeros(), |s, p| s + p.1) / n;
        let mut m = Matrix3::zeros();
        for (x, q) in &pairs {
            m += (q - cq) * (x - cx).transpose();
        }
        let svd = m.svd(true, true);
        let (Some(u), Some(vt)) = (svd.u, svd.v_t) else {
            break;
        };
        let mut d = Matrix3::identity();
        if (u * vt).determinant() < 0.0 {
            d[(2, 2)] = -1.0;
        }
        let r = u * d * vt;
        let step = Transform::new(r, cq - r * cx);
        a = step * a;
        if (step.translation.norm() < 1e-7) && telecho_core::rotation_log(&r).norm() < 1e-7 {
            break;
        }
    }
    a.inverse()
}
