//! The CBCT bone surface as ultrasound sees it from the patient's back.
//!
//! Ultrasound from a probe on the back (prone patient, probe beam roughly along the `ct` frame's
//! `+y`, posterior → anterior) only images the *first* bone surface along each beam: cortical
//! bone reflects about 40 % of the intensity and absorbs the rest, so everything behind it lies in
//! an acoustic shadow. [`extract_posterior_bone_surface`] therefore keeps, for every column of the
//! volume parallel to the posterior → anterior axis, the first bone surface met from the
//! posterior side — the point set a US↔CT registration should be matched against (the
//! "visible surface" simplification used e.g. by Winter S. et al., "Registration of CT and
//! intraoperative 3-D ultrasound images of the spine using evolutionary and gradient-based
//! methods", IEEE Trans. Evol. Comput. 12(3):284–296, 2008, and Brendel B. et al., "Registration
//! of 3D CT and ultrasound datasets of the spine using bone structures", Comput. Aided Surg.
//! 7(3):146–155, 2002).
//!
//! # Algorithm
//!
//! 1. **Segmentation**: voxels at or above [`CtSurfaceParams::threshold_hu`] are bone; a bone
//!    voxel with fewer than [`CtSurfaceParams::min_bone_neighbours`] bone voxels among its six
//!    face neighbours is removed (isolated noise or metal speckle).
//! 2. **Posterior march**: the index axis most parallel to world `+y` is found from the affine
//!    (with its sign, so flipped or permuted volumes work); along every line of voxels on that
//!    axis (every `column_step`-th one in both other index axes) the march starts at the posterior
//!    end and stops at the first bone voxel.
//! 3. **Sub-voxel position**: between that voxel's posterior neighbour and a few voxels further
//!    in, the first crossing of [`CtSurfaceParams::surface_hu`] (the partial-volume mid-level
//!    between soft tissue and cortical bone) is located by linear interpolation of HU along the
//!    march; where HU never reaches it, the crossing of the segmentation threshold is used.
//! 4. **Normal**: the outward normal is `−∇HU` (central differences in index space, mapped to
//!    world by the inverse-transpose of the affine, trilinearly blended between the two voxels
//!    bracketing the crossing), normalised.
//! 5. **Visibility**: points whose normal makes more than [`CtSurfaceParams::max_view_angle_rad`]
//!    with `−y` (the direction back towards a probe on the skin) are dropped; the weight of a kept
//!    point is `n · (−y)`, the cosine that governs the specular bone echo.

use nalgebra::Vector3;

use crate::error::ErrorKind;
use crate::volume::Volume;
use crate::Error;

/// Settings of [`extract_posterior_bone_surface`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CtSurfaceParams {
    /// Segmentation threshold (HU; default 250, the trabecular-bone level).
    pub threshold_hu: f32,
    /// Iso-level of the sub-voxel surface (HU; default 600, about midway between soft tissue,
    /// ~50 HU, and cortical bone, ~1200 HU). Must be ≥ `threshold_hu`.
    pub surface_hu: f32,
    /// A bone voxel needs at least this many of its 6 face neighbours to be bone too, else it
    /// is removed as noise (0–6; default 2; 0 disables the cleanup).
    pub min_bone_neighbours: u8,
    /// Keep every `column_step`-th column along both index axes across the march (≥ 1;
    /// default 1 = all). 2 keeps a quarter of the points, 3 a ninth.
    pub column_step: usize,
    /// Points whose outward normal is more than this angle (rad) from `−y` are dropped
    /// (0 < angle ≤ π; default π/2: every surface facing the probe at all).
    pub max_view_angle_rad: f64,
}

impl Default for CtSurfaceParams {
    fn default() -> Self {
        Self {
            threshold_hu: 250.0,
            surface_hu: 600.0,
            min_bone_neighbours: 2,
            column_step: 1,
            max_view_angle_rad: std::f64::consts::FRAC_PI_2,
        }
    }
}

impl CtSurfaceParams {
    fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, value: f64| -> Result<(), Error> {
            Err(ErrorKind::BadParam { what, value }.into())
        };
        if !self.threshold_hu.is_finite() {
            return bad("CT surface threshold (HU)", f64::from(self.threshold_hu));
        }
        if !self.surface_hu.is_finite() || self.surface_hu < self.threshold_hu {
            return bad(
                "CT surface iso-level (HU, finite, ≥ threshold)",
                f64::from(self.surface_hu),
            );
        }
        if self.min_bone_neighbours > 6 {
            return bad(
                "CT surface minimum bone neighbours (0–6)",
                f64::from(self.min_bone_neighbours),
            );
        }
        if self.column_step == 0 {
            return bad("CT surface column step (≥ 1)", 0.0);
        }
        let a = self.max_view_angle_rad;
        if !(a.is_finite() && a > 0.0 && a <= std::f64::consts::PI) {
            return bad("CT surface view angle (rad, 0 < a ≤ π)", a);
        }
        Ok(())
    }
}

/// Bone-surface points in the volume's world (`ct`) frame.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SurfacePoints {
    /// Surface positions (m).
    pub points: Vec<Vector3<f64>>,
    /// Outward unit normals (out of the bone, towards soft tissue).
    pub normals: Vec<Vector3<f64>>,
    /// Per-point weight in (0, 1]: `n · (−y)`, how squarely the surface faces a probe on the back.
    pub weights: Vec<f64>,
}

impl SurfacePoints {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// Voxels past the first bone voxel searched for the `surface_hu` crossing.
const ISO_SEARCH: usize = 3;

/// Extracts the first bone surface met from the posterior side along every posterior→anterior
/// line of voxels of `ct` (a HU volume in RAS metres); see the module doc.
///
/// Errors: an empty volume, invalid parameters, or no bone surface facing the probe.
pub fn extract_posterior_bone_surface(
    ct: &Volume,
    params: &CtSurfaceParams,
) -> Result<SurfacePoints, Error> {
    params.validate()?;
    let dims = ct.dims();
    if dims.iter().any(|&n| n < 3) {
        return Err(ErrorKind::EmptyVolume { dims }.into());
    }
    let (affine, _) = ct.affine();
    let inv = affine
        .try_inverse()
        .ok_or_else(|| Error::from(ErrorKind::BadAffine))?;
    // Index-space direction of world +y, and the axis carrying most of it.
    let dy = inv * Vector3::y();
    let axis = (0..3)
        .max_by(|&a, &b| dy[a].abs().total_cmp(&dy[b].abs()))
        .unwrap_or(1);
    let forward = dy[axis] > 0.0; // increasing index = anterior
    let (u_axis, v_axis) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let strides = [1, dims[0], dims[0] * dims[1]];
    let data = ct.data();
    let mask = bone_mask(data, dims, params);
    // Gradient (index space) → world: ∇_world = A^{-T} ∇_index.
    let inv_t = inv.transpose();
    let cos_max = params.max_view_angle_rad.cos();
    let n = dims[axis];
    let mut out = SurfacePoints::default();
    for v in (0..dims[v_axis]).step_by(params.column_step) {
        for u in (0..dims[u_axis]).step_by(params.column_step) {
            let base = u * strides[u_axis] + v * strides[v_axis];
            let at = |t: usize| base + if forward { t } else { n - 1 - t } * strides[axis];
            // t counts steps from the posterior end.
            let Some(t0) = (0..n).find(|&t| mask[at(t)]) else {
                continue;
            };
            if t0 == 0 {
                // Bone at the volume's edge: the surface lies outside the data.
                continue;
            }
            let hu = |t: usize| data[at(t)];
            let level = if (t0..(t0 + ISO_SEARCH).min(n)).any(|t| hu(t) >= params.surface_hu) {
                params.surface_hu
            } else {
                params.threshold_hu
            };
            let Some(tc) = (t0..(t0 + ISO_SEARCH).min(n)).find(|&t| hu(t) >= level) else {
                continue;
            };
            let (a, b) = (hu(tc - 1), hu(tc));
            let f = if b > a {
                f64::from((level - a) / (b - a)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let pos_t = (tc - 1) as f64 + f;
            let idx_along = if forward {
                pos_t
            } else {
                (n - 1) as f64 - pos_t
            };
            let mut ijk = Vector3::zeros();
            ijk[axis] = idx_along;
            ijk[u_axis] = u as f64;
            ijk[v_axis] = v as f64;
            let g0 = gradient(data, dims, strides, at(tc - 1));
            let g1 = gradient(data, dims, strides, at(tc));
            let g = inv_t * (g0 * (1.0 - f) + g1 * f);
            let norm = g.norm();
            if !(norm > 0.0 && norm.is_finite()) {
                continue;
            }
            let normal = -g / norm;
            let facing = -normal.y;
            if facing <= 0.0 || facing < cos_max {
                continue;
            }
            out.points.push(ct.index_to_world(&ijk));
            out.normals.push(normal);
            out.weights.push(facing);
        }
    }
    if out.is_empty() {
        return Err(ErrorKind::NoBone {
            threshold_hu: params.threshold_hu,
        }
        .into());
    }
    Ok(out)
}

/// Thresholded bone mask with isolated voxels removed (index layout of the volume).
fn bone_mask(data: &[f32], dims: [usize; 3], params: &CtSurfaceParams) -> Vec<bool> {
    let raw: Vec<bool> = data.iter().map(|&h| h >= params.threshold_hu).collect();
    if params.min_bone_neighbours == 0 {
        return raw;
    }
    let [ni, nj, nk] = dims;
    let mut mask = raw.clone();
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let c = i + ni * (j + nj * k);
                if !raw[c] {
                    continue;
                }
                let mut count = 0u8;
                count += u8::from(i > 0 && raw[c - 1]);
                count += u8::from(i + 1 < ni && raw[c + 1]);
                count += u8::from(j > 0 && raw[c - ni]);
                count += u8::from(j + 1 < nj && raw[c + ni]);
                count += u8::from(k > 0 && raw[c - ni * nj]);
                count += u8::from(k + 1 < nk && raw[c + ni * nj]);
                if count < params.min_bone_neighbours {
                    mask[c] = false;
                }
            }
        }
    }
    mask
}

/// Central-difference HU gradient in index space at voxel `c` (one-sided at the edges).
fn gradient(data: &[f32], dims: [usize; 3], strides: [usize; 3], c: usize) -> Vector3<f64> {
    let mut g = Vector3::zeros();
    for a in 0..3 {
        let idx = (c / strides[a]) % dims[a];
        let lo = if idx > 0 { c - strides[a] } else { c };
        let hi = if idx + 1 < dims[a] { c + strides[a] } else { c };
        let span = ((hi - lo) / strides[a]) as f64;
        if span > 0.0 {
            g[a] = f64::from(data[hi] - data[lo]) / span;
        }
    }
    g
}
