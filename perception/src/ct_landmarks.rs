//! Spine landmarks detected automatically in the CBCT volume: [`detect_ct_landmarks`].
//!
//! # Pipeline
//!
//! 1. **Bone segmentation.** Voxels at or above [`BONE_HU`] are bone (cancellous bone is about
//!    +250 HU, cortical +1200 HU, soft tissue and discs below +100 HU).
//! 2. **Vertebral bodies.** On a ~1.6 mm copy of the mask, the exact Euclidean distance to the
//!    nearest non-bone voxel is computed (Felzenszwalb–Huttenlocher); voxels deeper than
//!    [`CORE_DEPTH_M`] inside bone exist only in the vertebral bodies (every posterior element —
//!    pedicle, lamina, spinous, articular and transverse process — is thinner than twice that),
//!    and the discs separate one body from the next. The 26-connected groups of such voxels are
//!    the bodies; their number must be five (L1–L5) or detection is refused.
//! 3. **Vertebra labelling.** The cortical shells (≥ 400 HU) are split into 6-connected pieces
//!    (a facet joint's 1.5 mm space never holds two shell voxels face to face). Pieces reaching
//!    within 10 mm of a body core are grown geodesically from there; pieces reaching no core —
//!    a posterior arch whose pedicles do not touch the body wall — go to the nearest core. Where
//!    two vertebrae's bone really touches (laminae shingling under lordosis), the growth is run
//!    a second time with an extra seed inside every spinous process, placed from the first
//!    labelling's transverse tips and body centre, so the split falls between the two arches.
//!    Cancellous bone is then filled from the labelled shells. Levels follow the anatomy: the
//!    bodies ordered inferior → superior (world `+z`, RAS) are L5, L4, L3, L2, L1.
//! 4. **Image features per vertebra** (all surfaces located with sub-voxel accuracy as the
//!    crossing of the soft-tissue/cortical mid-level [`SURFACE_HU`] by a ray through the
//!    trilinearly interpolated HU, counting only bone of the vertebra's own label):
//!    * the two **transverse-process tips**: the vertebra's most lateral points (sphere-capped
//!      processes, so the extreme along the lateral axis is the tip);
//!    * the **spinous tip**: the centre of the spinous process's posterior end face, found from
//!      the surface normals of the most posterior bone;
//!    * the **body centre**: from the deep-bone centroid, refined as the midpoint between the
//!      body's walls along its three axes (left/right walls, anterior/posterior walls at the
//!      midline, superior/inferior endplates).
//! 5. **Vertebra frame and size.** The vertebra's axes follow from the transverse-tip axis
//!    (left → right) and the body-centre → spinous-tip vector; its size scale from five measured
//!    lengths (transverse span, spinous distance, body width, depth and height) against the atlas
//!    below (median over all vertebrae: one patient, one scale).
//! 6. **Atlas-guided landmarks.** The laminae and the facet joints have no single extreme point
//!    to find; their landmarks are defined as in the anatomy atlas — the lamina's posterior
//!    surface at its mid-width and mid-height, the facet joint's posterolateral edge on the
//!    inferior articular process at the joint's centre height — placed with the measured frame
//!    and scale and then cast onto the actual CT bone surface along the defining ray.
//!
//! The atlas is the published mean lumbar morphometry (Panjabi M.M. et al., Spine 17(3), 1992;
//! facet orientation after Panjabi et al., Spine 18(10), 1993 and Masharawi et al., Spine
//! 29(16), 2004) — the same tables the project's phantom is built from, scaled isotropically.
//!
//! Landmark names follow `landmarks.json` of `telecho scan`: `L1_spinous_tip`,
//! `L1_lamina_right`, `L1_lamina_left`, `L1_facet_right`, `L1_facet_left`,
//! `L1_transverse_right`, `L1_transverse_left`, `L1_body_centre`, …, `L5_…`; right = the
//! patient's right = `+x` in RAS.

use std::collections::VecDeque;

use nalgebra::{Matrix3, Rotation3, Vector3};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::volume::Volume;
use crate::Error;

/// Bone segmentation threshold, HU.
pub const BONE_HU: f32 = 200.0;
/// Iso-level of the bone surface, HU: midway between soft tissue (~50) and cortical bone (~1200).
pub const SURFACE_HU: f32 = 625.0;
/// Depth inside bone (m) that only vertebral bodies reach.
pub const CORE_DEPTH_M: f64 = 0.008;
/// Number of lumbar vertebrae expected.
pub const N_VERTEBRAE: usize = 5;
/// Level names, superior → inferior.
pub const LEVEL_NAMES: [&str; N_VERTEBRAE] = ["L1", "L2", "L3", "L4", "L5"];
/// Per-vertebra landmark suffixes, in output order.
pub const LANDMARK_SUFFIXES: [&str; 8] = [
    "spinous_tip",
    "lamina_right",
    "lamina_left",
    "facet_right",
    "facet_left",
    "transverse_right",
    "transverse_left",
    "body_centre",
];

/// Cortical-shell level, HU: two shell voxels never face each other across a facet joint.
const SHELL_HU: f32 = 400.0;
/// Shell voxels this close to a body core (m) belong to that vertebra's body.
const SEED_RADIUS_M: f64 = 0.010;
/// Shell voxels this close to a predicted spinous-process point (m) seed that vertebra's arch.
const ARCH_SEED_RADIUS_M: f64 = 0.004;
/// Smallest body core accepted as a vertebral body, m³ (1.65 cm³ for the smallest L1 of a
/// patient 8 % below the mean size; stray deep-bone blobs are well below this).
const MIN_CORE_VOLUME_M3: f64 = 0.4e-6;
/// Voxel edge of the coarse copy used for the distance transform, m.
const COARSE_M: f64 = 0.0016;

// Atlas: mean morphometry (mm), index = level L1..L5.
const BODY_WIDTH: [f64; 5] = [42.0, 44.0, 46.0, 48.5, 50.0];
const BODY_DEPTH: [f64; 5] = [31.0, 32.5, 33.5, 34.0, 34.0];
const BODY_HEIGHT: [f64; 5] = [25.5, 26.5, 27.0, 27.0, 26.5];
const CANAL_WIDTH: [f64; 5] = [22.0, 22.5, 23.5, 24.5, 26.5];
const CANAL_DEPTH: [f64; 5] = [17.5, 17.0, 16.5, 16.5, 17.0];
const SPINOUS_TIP: [f64; 5] = [67.0, 69.0, 70.0, 70.0, 66.0];
const TRANSVERSE_TIP: [f64; 5] = [36.0, 40.0, 44.0, 42.0, 40.0];
/// Facet joint below each vertebra: transverse angle to the sagittal plane, degrees.
const FACET_ANGLE_DEG: [f64; 5] = [26.0, 32.0, 38.0, 45.0, 50.0];
/// Disc heights relative to the nominal 10 mm, segments L1–2 … L5–S1.
const DISC_FACTOR: [f64; 5] = [0.9, 0.95, 1.0, 1.05, 1.1];
const DISC_HEIGHT_MM: f64 = 10.0;
/// Share of the L1–S1 lordosis per segment L1–2 … L5–S1.
const LORDOSIS_SHARE: [f64; 5] = [4.0, 7.0, 10.0, 14.0, 20.0];
const LAMINA_THICKNESS_MM: f64 = 6.0;
const SPINOUS_INCLINATION_DEG: f64 = 12.0;
const FACET_WIDTH_MM: f64 = 14.0;
const FACET_GAP_MM: f64 = 1.5;

/// One landmark found in the CT.
#[derive(Clone, Debug, PartialEq)]
pub struct CtLandmark {
    /// `L3_spinous_tip`, … (as in `landmarks.json`).
    pub name: String,
    /// Position in the volume's world (`ct`) frame, metres.
    pub xyz_ct: Vector3<f64>,
    /// 0–1: how well the image supported the landmark (1 = found where the atlas expects it).
    pub confidence: f64,
}

/// One vertebra as found in the CT.
#[derive(Clone, Debug)]
pub struct VertebraFit {
    /// `"L1"` … `"L5"`.
    pub level: &'static str,
    /// The vertebra's frame in `ct`: origin at the body centre, `x` to the patient's right,
    /// `y` anterior, `z` superior along the body's axis.
    pub t_ct_vertebra: Transform,
    /// Size relative to the atlas (1 = mean morphometry); one value shared by all levels.
    pub scale: f64,
    /// Number of bone voxels labelled with this vertebra.
    pub voxels: usize,
}

/// The spine found in a CT: vertebra frames, landmarks and the vertebra label of every voxel.
#[derive(Clone, Debug)]
pub struct CtSpine {
    /// L1 … L5.
    pub vertebrae: Vec<VertebraFit>,
    /// 8 landmarks per vertebra, L1 first, in the order of [`LANDMARK_SUFFIXES`].
    pub landmarks: Vec<CtLandmark>,
    /// Per voxel of the volume (its index layout, `i` fastest): 0 = not bone, `1 + level`
    /// (1 = L1 … 5 = L5) for bone of that vertebra.
    pub labels: Vec<u8>,
}

fn fail(reason: impl Into<String>) -> Error {
    ErrorKind::CtLandmarks {
        reason: reason.into(),
    }
    .into()
}

/// Detects the 40 landmarks (35 posterior + 5 body centres) of L1–L5 in a CT volume in HU; see
/// the [module documentation](self).
///
/// Errors: a volume too small, no bone, or a number of vertebral bodies other than five.
pub fn detect_ct_landmarks(ct: &Volume) -> Result<Vec<CtLandmark>, Error> {
    Ok(analyse_spine(ct)?.landmarks)
}

/// Like [`detect_ct_landmarks`], also returning the vertebra frames and the voxel labels.
pub fn analyse_spine(ct: &Volume) -> Result<CtSpine, Error> {
    let grid = Grid::new(ct)?;
    let bone: Vec<bool> = ct.data().iter().map(|&h| h >= BONE_HU).collect();
    let n_bone = bone.iter().filter(|&&b| b).count();
    if n_bone == 0 {
        return Err(fail(format!(
            "no voxel reaches the bone level of {BONE_HU} HU"
        )));
    }
    let (coarse, mut bodies) = find_bodies(&grid, &bone)?;
    order_bodies(ct, &mut bodies);
    // Label from the bodies, then again with a seed in every spinous process as well, placed
    // from the first labelling's transverse tips, so that touching arches split between them.
    let labels = label_vertebrae(ct, &grid, &bone, &coarse, &bodies, &[]);
    let surf = surfaces(ct, &grid, &labels)?;
    let seeds: Vec<(Vector3<f64>, u8)> = bodies
        .iter()
        .enumerate()
        .map(|(level, body)| {
            let centre = ct.index_to_world(&body.centroid);
            let label = level as u8 + 1;
            let tips = transverse_tips(ct, &labels, label, &surf[level].pts, &centre);
            (arch_seed(level, &centre, &tips), label)
        })
        .collect();
    let labels = label_vertebrae(ct, &grid, &bone, &coarse, &bodies, &seeds);
    let surf = surfaces(ct, &grid, &labels)?;
    let mut fits = Vec::with_capacity(N_VERTEBRAE);
    for (level, body) in bodies.iter().enumerate() {
        fits.push(measure_vertebra(ct, &labels, level, body, &surf[level])?);
    }
    // One patient, one scale: the median of every length measured on every vertebra.
    let mut scales: Vec<f64> = fits.iter().flat_map(|f| f.scales.iter().copied()).collect();
    let scale = median(&mut scales).ok_or_else(|| fail("no vertebra size could be measured"))?;
    if !(0.5..=1.6).contains(&scale) {
        return Err(fail(format!(
            "implausible vertebra size: {scale:.2} × the atlas mean"
        )));
    }
    let s1 = virtual_s1(&fits, scale);
    let mut landmarks = Vec::with_capacity(N_VERTEBRAE * LANDMARK_SUFFIXES.len());
    for level in 0..N_VERTEBRAE {
        let lower = if level + 1 < N_VERTEBRAE {
            fits[level + 1].frame
        } else {
            s1
        };
        landmarks.extend(atlas_landmarks(
            ct,
            &labels,
            level,
            &fits[level],
            &lower,
            scale,
        ));
    }
    let vertebrae = fits
        .iter()
        .enumerate()
        .map(|(level, f)| VertebraFit {
            level: LEVEL_NAMES[level],
            t_ct_vertebra: f.frame,
            scale,
            voxels: f.voxels,
        })
        .collect();
    Ok(CtSpine {
        vertebrae,
        landmarks,
        labels,
    })
}

// ---------------------------------------------------------------------------------------------
// Grid helpers

/// Index-space geometry of the volume.
#[derive(Clone, Copy, Debug)]
struct Grid {
    dims: [usize; 3],
    spacing: [f64; 3],
    strides: [usize; 3],
}

impl Grid {
    fn new(ct: &Volume) -> Result<Self, Error> {
        let dims = ct.dims();
        if dims.iter().any(|&n| n < 8) {
            return Err(ErrorKind::EmptyVolume { dims }.into());
        }
        Ok(Self {
            dims,
            spacing: ct.spacing(),
            strides: [1, dims[0], dims[0] * dims[1]],
        })
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn ijk(&self, c: usize) -> [usize; 3] {
        [
            c % self.dims[0],
            (c / self.dims[0]) % self.dims[1],
            c / self.strides[2],
        ]
    }

    /// The 6 face neighbours of `c` inside the grid.
    fn neighbours6(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        let p = self.ijk(c);
        (0..3).flat_map(move |a| {
            let lo = (p[a] > 0).then(|| c - self.strides[a]);
            let hi = (p[a] + 1 < self.dims[a]).then(|| c + self.strides[a]);
            lo.into_iter().chain(hi)
        })
    }
}

/// Median of `v` (sorted in place; the mean of the middle two for an even count), `None` when
/// empty.
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

// ---------------------------------------------------------------------------------------------
// Vertebral bodies

/// The coarse copy of the grid used to find the vertebral bodies.
#[derive(Clone, Copy, Debug)]
struct Coarse {
    /// Fine voxels per coarse voxel along each axis.
    f: [usize; 3],
    dims: [usize; 3],
    spacing: [f64; 3],
}

impl Coarse {
    fn of_fine(&self, ijk: [usize; 3]) -> usize {
        ijk[0] / self.f[0]
            + self.dims[0] * (ijk[1] / self.f[1] + self.dims[1] * (ijk[2] / self.f[2]))
    }

    fn ijk(&self, c: usize) -> [usize; 3] {
        [
            c % self.dims[0],
            (c / self.dims[0]) % self.dims[1],
            c / (self.dims[0] * self.dims[1]),
        ]
    }

    /// Position (m) of a coarse voxel's centre relative to fine voxel (0, 0, 0), index axes.
    fn pos(&self, c: usize) -> Vector3<f64> {
        let ijk = self.ijk(c);
        Vector3::from_fn(|a, _| {
            ((ijk[a] as f64 + 0.5) * self.f[a] as f64 - 0.5) * self.spacing[a] / self.f[a] as f64
        })
    }
}

/// A vertebral body's deep core on the coarse grid.
#[derive(Clone, Debug)]
struct Body {
    /// Core voxels (coarse indices).
    cells: Vec<usize>,
    /// Core voxels with a non-core face neighbour.
    boundary: Vec<usize>,
    /// Centroid, continuous fine voxel index.
    centroid: Vector3<f64>,
}

fn find_bodies(grid: &Grid, bone: &[bool]) -> Result<(Coarse, Vec<Body>), Error> {
    // Coarse copy: ~COARSE_M voxels, bone where at least half the fine voxels are.
    let f: [usize; 3] =
        std::array::from_fn(|a| ((COARSE_M / grid.spacing[a]).round() as usize).clamp(1, 8));
    let cd: [usize; 3] = std::array::from_fn(|a| grid.dims[a].div_ceil(f[a]));
    let coarse = Coarse {
        f,
        dims: cd,
        spacing: std::array::from_fn(|a| grid.spacing[a] * f[a] as f64),
    };
    let cn = cd[0] * cd[1] * cd[2];
    let mut count = vec![0u16; cn];
    let mut total = vec![0u16; cn];
    for k in 0..grid.dims[2] {
        for j in 0..grid.dims[1] {
            let row = grid.strides[2] * k + grid.strides[1] * j;
            let crow = cd[0] * (j / f[1] + cd[1] * (k / f[2]));
            for i in 0..grid.dims[0] {
                let cc = crow + i / f[0];
                total[cc] += 1;
                count[cc] += u16::from(bone[row + i]);
            }
        }
    }
    let mask: Vec<bool> = count
        .iter()
        .zip(&total)
        .map(|(&c, &t)| 2 * c >= t && c > 0)
        .collect();
    let d2 = edt_squared(&mask, cd, coarse.spacing);
    let core_d2 = CORE_DEPTH_M * CORE_DEPTH_M;
    let core: Vec<bool> = d2.iter().map(|&d| d >= core_d2).collect();
    let cgrid = Grid {
        dims: cd,
        spacing: coarse.spacing,
        strides: [1, cd[0], cd[0] * cd[1]],
    };
    let groups = components(&cgrid, &core, true);
    let cvox = coarse.spacing.iter().product::<f64>();
    let big: Vec<Vec<usize>> = groups
        .into_iter()
        .filter(|g| g.len() as f64 * cvox >= MIN_CORE_VOLUME_M3)
        .collect();
    if big.len() != N_VERTEBRAE {
        let mut sizes: Vec<String> = big
            .iter()
            .map(|g| format!("{:.1}", g.len() as f64 * cvox * 1e6))
            .collect();
        if sizes.is_empty() {
            sizes.push("none".into());
        }
        return Err(fail(format!(
            "found {} vertebral bodies (deep-bone cores of {} cm³) where the lumbar spine has \
             {N_VERTEBRAE} (L1–L5); the volume must show exactly L1–L5",
            big.len(),
            sizes.join(", ")
        )));
    }
    let bodies = big
        .into_iter()
        .map(|cells| {
            let boundary = cells
                .iter()
                .copied()
                .filter(|&c| {
                    cgrid.neighbours6(c).count() < 6 || cgrid.neighbours6(c).any(|n| !core[n])
                })
                .collect();
            let mut centroid = Vector3::zeros();
            for &c in &cells {
                let ijk = coarse.ijk(c);
                centroid += Vector3::from_fn(|a, _| (ijk[a] as f64 + 0.5) * f[a] as f64 - 0.5);
            }
            centroid /= cells.len() as f64;
            Body {
                cells,
                boundary,
                centroid,
            }
        })
        .collect();
    Ok((coarse, bodies))
}

/// Connected components of `mask` (26-connected when `full`, else 6-connected).
fn components(grid: &Grid, mask: &[bool], full: bool) -> Vec<Vec<usize>> {
    let dims = grid.dims;
    let mut seen = vec![false; mask.len()];
    let mut groups = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let mut members = Vec::new();
        seen[start] = true;
        queue.push_back(start);
        while let Some(c) = queue.pop_front() {
            members.push(c);
            if full {
                let [i, j, k] = grid.ijk(c);
                for dk in -1i64..=1 {
                    for dj in -1i64..=1 {
                        for di in -1i64..=1 {
                            let (x, y, z) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                            if x < 0
                                || y < 0
                                || z < 0
                                || x >= dims[0] as i64
                                || y >= dims[1] as i64
                                || z >= dims[2] as i64
                            {
                                continue;
                            }
                            let n = x as usize + dims[0] * (y as usize + dims[1] * z as usize);
                            if mask[n] && !seen[n] {
                                seen[n] = true;
                                queue.push_back(n);
                            }
                        }
                    }
                }
            } else {
                for n in grid.neighbours6(c) {
                    if mask[n] && !seen[n] {
                        seen[n] = true;
                        queue.push_back(n);
                    }
                }
            }
        }
        groups.push(members);
    }
    groups
}

/// Squared Euclidean distance (m²) from every voxel to the nearest `false` voxel.
fn edt_squared(mask: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let big = 1e6;
    let mut d: Vec<f64> = mask.iter().map(|&m| if m { big } else { 0.0 }).collect();
    let strides = [1, dims[0], dims[0] * dims[1]];
    let mut f = Vec::new();
    let mut out = Vec::new();
    let mut v = Vec::new();
    let mut z = Vec::new();
    for axis in 0..3 {
        let n = dims[axis];
        let (a1, a2) = match axis {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        let w = spacing[axis];
        for q in 0..dims[a2] {
            for p in 0..dims[a1] {
                let base = p * strides[a1] + q * strides[a2];
                f.clear();
                f.extend((0..n).map(|t| d[base + t * strides[axis]]));
                if f.iter().all(|&x| x == 0.0) {
                    continue;
                }
                distance_1d(&f, w, &mut out, &mut v, &mut z);
                for (t, &o) in out.iter().enumerate() {
                    d[base + t * strides[axis]] = o;
                }
            }
        }
    }
    d
}

/// 1D squared-distance transform of sampled function `f` with sample spacing `w`
/// (Felzenszwalb & Huttenlocher 2012).
fn distance_1d(f: &[f64], w: f64, out: &mut Vec<f64>, v: &mut Vec<usize>, z: &mut Vec<f64>) {
    let n = f.len();
    out.clear();
    out.resize(n, 0.0);
    v.clear();
    v.resize(n, 0);
    z.clear();
    z.resize(n + 1, 0.0);
    let pos = |q: usize| q as f64 * w;
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in 1..n {
        loop {
            let p = v[k];
            let s =
                ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)));
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                // k == 0 and the new parabola dominates everywhere.
                v[0] = q;
                z[0] = f64::NEG_INFINITY;
                z[1] = f64::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f64::INFINITY;
            break;
        }
    }
    let mut k = 0usize;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        let p = v[k];
        *o = (pos(q) - pos(p)).powi(2) + f[p];
    }
}

/// Order bodies inferior → superior by world z and return them L1 first.
fn order_bodies(ct: &Volume, bodies: &mut [Body]) {
    bodies.sort_by(|a, b| {
        let za = ct.index_to_world(&a.centroid).z;
        let zb = ct.index_to_world(&b.centroid).z;
        zb.total_cmp(&za)
    });
}

/// Gives every bone voxel the label (1 = L1 … 5 = L5) of the vertebra it belongs to.
///
/// The cortical shells (≥ [`SHELL_HU`]) are split into 6-connected pieces: a facet joint's
/// 1.5 mm space never holds two shell voxels face to face, so distinct vertebrae only share a
/// piece where their bone really touches. A piece reaching within [`SEED_RADIUS_M`] of a body
/// core is grown geodesically from there (several cores: split where the growths meet); a piece
/// that reaches no core (a posterior arch whose pedicles do not touch the body wall) goes to the
/// nearest core. Cancellous bone inside the shells is then filled from the labelled shells.
fn label_vertebrae(
    ct: &Volume,
    grid: &Grid,
    bone: &[bool],
    coarse: &Coarse,
    bodies: &[Body],
    arch_seeds: &[(Vector3<f64>, u8)],
) -> Vec<u8> {
    const AMBIGUOUS: u8 = u8::MAX;
    let hu = ct.data();
    let cn = coarse.dims.iter().product::<usize>();
    // Coarse cells within the seed radius of one core (its label) or of several (AMBIGUOUS).
    let mut near = vec![0u8; cn];
    let r = SEED_RADIUS_M;
    let reach: [i64; 3] = std::array::from_fn(|a| (r / coarse.spacing[a]).ceil() as i64);
    let mut ball = Vec::new();
    for dk in -reach[2]..=reach[2] {
        for dj in -reach[1]..=reach[1] {
            for di in -reach[0]..=reach[0] {
                let d2 = (di as f64 * coarse.spacing[0]).powi(2)
                    + (dj as f64 * coarse.spacing[1]).powi(2)
                    + (dk as f64 * coarse.spacing[2]).powi(2);
                if d2 <= r * r {
                    ball.push([di, dj, dk]);
                }
            }
        }
    }
    for (level, body) in bodies.iter().enumerate() {
        let label = level as u8 + 1;
        let mut mark = |c: usize| {
            near[c] = match near[c] {
                0 => label,
                l if l == label => label,
                _ => AMBIGUOUS,
            };
        };
        let mut mine = vec![false; 0];
        mine.resize(cn, false);
        for &c in &body.cells {
            mine[c] = true;
        }
        for &b in &body.boundary {
            let [i, j, k] = coarse.ijk(b);
            for [di, dj, dk] in &ball {
                let (x, y, z) = (i as i64 + di, j as i64 + dj, k as i64 + dk);
                if x < 0
                    || y < 0
                    || z < 0
                    || x >= coarse.dims[0] as i64
                    || y >= coarse.dims[1] as i64
                    || z >= coarse.dims[2] as i64
                {
                    continue;
                }
                let n = x as usize + coarse.dims[0] * (y as usize + coarse.dims[1] * z as usize);
                if !mine[n] {
                    mine[n] = true;
                }
            }
        }
        for (c, &m) in mine.iter().enumerate() {
            if m {
                mark(c);
            }
        }
    }
    let coarse_of = |c: usize| coarse.of_fine(grid.ijk(c));
    let shell: Vec<bool> = hu
        .iter()
        .zip(bone)
        .map(|(&h, &b)| b && h >= SHELL_HU)
        .collect();
    let mut labels = vec![0u8; grid.len()];
    // Arch seeds: the shell voxels within ARCH_SEED_RADIUS_M of each seed point.
    let mut arch = vec![0u8; 0];
    if !arch_seeds.is_empty() {
        arch.resize(grid.len(), 0);
        let reach: [i64; 3] =
            std::array::from_fn(|a| (ARCH_SEED_RADIUS_M / grid.spacing[a]).ceil() as i64);
        for (p, label) in arch_seeds {
            let x = ct.world_to_index(p);
            for dk in -reach[2]..=reach[2] {
                for dj in -reach[1]..=reach[1] {
                    for di in -reach[0]..=reach[0] {
                        let q = [
                            x[0].round() as i64 + di,
                            x[1].round() as i64 + dj,
                            x[2].round() as i64 + dk,
                        ];
                        if (0..3).any(|a| q[a] < 0 || q[a] >= grid.dims[a] as i64) {
                            continue;
                        }
                        let d2: f64 = (0..3)
                            .map(|a| ((q[a] as f64 - x[a]) * grid.spacing[a]).powi(2))
                            .sum();
                        if d2 > ARCH_SEED_RADIUS_M * ARCH_SEED_RADIUS_M {
                            continue;
                        }
                        let c = q[0] as usize
                            + grid.strides[1] * q[1] as usize
                            + grid.strides[2] * q[2] as usize;
                        if shell[c] {
                            arch[c] = *label;
                        }
                    }
                }
            }
        }
    }
    let mut queue = VecDeque::new();
    for piece in components(grid, &shell, false) {
        let mut seeded = false;
        for &c in &piece {
            let mut l = near[coarse_of(c)];
            if !arch.is_empty() && arch[c] != 0 {
                l = arch[c];
            }
            if l != 0 && l != AMBIGUOUS {
                labels[c] = l;
                queue.push_back(c);
                seeded = true;
            }
        }
        if seeded {
            while let Some(c) = queue.pop_front() {
                let l = labels[c];
                for n in grid.neighbours6(c) {
                    if shell[n] && labels[n] == 0 {
                        labels[n] = l;
                        queue.push_back(n);
                    }
                }
            }
            continue;
        }
        if piece.len() < 8 {
            continue;
        }
        // No core within reach: the nearest one.
        let mut cells: Vec<usize> = piece.iter().map(|&c| coarse_of(c)).collect();
        cells.sort_unstable();
        cells.dedup();
        let mut best = (f64::INFINITY, 0u8);
        for (level, body) in bodies.iter().enumerate() {
            for &a in &cells {
                let pa = coarse.pos(a);
                for &b in &body.boundary {
                    let d = (pa - coarse.pos(b)).norm_squared();
                    if d < best.0 {
                        best = (d, level as u8 + 1);
                    }
                }
            }
        }
        for &c in &piece {
            labels[c] = best.1;
        }
    }
    // Fill the cancellous bone (and partial-volume rims) from the labelled shells.
    for (c, &l) in labels.iter().enumerate() {
        if l != 0 {
            queue.push_back(c);
        }
    }
    while let Some(c) = queue.pop_front() {
        let l = labels[c];
        for n in grid.neighbours6(c) {
            if bone[n] && labels[n] == 0 {
                labels[n] = l;
                queue.push_back(n);
            }
        }
    }
    labels
}

// ---------------------------------------------------------------------------------------------
// Ray casting against the labelled surface

/// Where a ray first enters bone of vertebra `label` (1-based), crossing [`SURFACE_HU`]
/// upwards; bone of other labels is passed through. Searches `[0, max_t]` metres.
fn cast_into(
    ct: &Volume,
    labels: &[u8],
    label: u8,
    origin: &Vector3<f64>,
    dir: &Vector3<f64>,
    max_t: f64,
) -> Option<Vector3<f64>> {
    let h = 0.25 * ct.spacing().iter().copied().fold(f64::INFINITY, f64::min);
    let n = (max_t / h).ceil() as usize;
    let mut prev: Option<f32> = None;
    for s in 0..=n {
        let t = s as f64 * h;
        let p = origin + dir * t;
        let v = ct.sample_world(&p);
        if let (Some(a), Some(b)) = (prev, v) {
            if a < SURFACE_HU && b >= SURFACE_HU {
                let f = f64::from((SURFACE_HU - a) / (b - a));
                let hit = origin + dir * (t - h + f * h);
                if label_near(ct, labels, &(hit + dir * (0.6 * h * 4.0))) == Some(label)
                    || label_near(ct, labels, &(hit + dir * (1.2 * h * 4.0))) == Some(label)
                {
                    return Some(hit);
                }
            }
        }
        prev = v;
    }
    None
}

/// Where a ray starting inside bone leaves it: the last downward crossing of [`SURFACE_HU`]
/// before the HU stays below [`BONE_HU`] for 1.5 mm.
fn cast_exit(ct: &Volume, origin: &Vector3<f64>, dir: &Vector3<f64>, max_t: f64) -> Option<f64> {
    let h = 0.25 * ct.spacing().iter().copied().fold(f64::INFINITY, f64::min);
    let n = (max_t / h).ceil() as usize;
    let mut prev: Option<f32> = None;
    let mut last_exit: Option<f64> = None;
    let mut soft_run = 0.0;
    for s in 0..=n {
        let t = s as f64 * h;
        let v = ct.sample_world(&(origin + dir * t))?;
        if let Some(a) = prev {
            if a >= SURFACE_HU && v < SURFACE_HU {
                last_exit = Some(t - h + f64::from((a - SURFACE_HU) / (a - v)) * h);
            }
        }
        if v < BONE_HU {
            soft_run += h;
            if soft_run >= 0.0015 {
                return last_exit;
            }
        } else {
            soft_run = 0.0;
        }
        prev = Some(v);
    }
    None
}

fn label_near(ct: &Volume, labels: &[u8], p: &Vector3<f64>) -> Option<u8> {
    let x = ct.world_to_index(p);
    let dims = ct.dims();
    let idx: [usize; 3] = std::array::from_fn(|a| x[a].round().max(0.0) as usize);
    if (0..3).any(|a| idx[a] >= dims[a] || x[a] < -0.5) {
        return None;
    }
    let l = labels[idx[0] + dims[0] * (idx[1] + dims[1] * idx[2])];
    (l != 0).then_some(l)
}

// ---------------------------------------------------------------------------------------------
// Per-vertebra measurements

/// What is measured on one vertebra before the shared scale is known.
#[derive(Clone, Debug)]
struct Measured {
    frame: Transform,
    spinous: (Vector3<f64>, f64),
    transverse: [(Vector3<f64>, f64); 2],
    body_centre: Vector3<f64>,
    scales: Vec<f64>,
    voxels: usize,
}

/// Boundary voxels of one vertebra: world positions (voxel centres) and outward unit normals.
#[derive(Clone, Debug, Default)]
struct Surface {
    pts: Vec<Vector3<f64>>,
    normals: Vec<Vector3<f64>>,
    voxels: usize,
}

/// The boundary voxels of every label (index `label − 1`), in one pass over the volume.
fn surfaces(ct: &Volume, grid: &Grid, labels: &[u8]) -> Result<Vec<Surface>, Error> {
    let data = ct.data();
    let (affine, _) = ct.affine();
    let inv_t = affine
        .try_inverse()
        .ok_or_else(|| Error::from(ErrorKind::BadAffine))?
        .transpose();
    let mut out = vec![Surface::default(); N_VERTEBRAE];
    for (c, &l) in labels.iter().enumerate() {
        if l == 0 || usize::from(l) > N_VERTEBRAE {
            continue;
        }
        let surf = &mut out[usize::from(l) - 1];
        surf.voxels += 1;
        if grid.neighbours6(c).count() == 6 && grid.neighbours6(c).all(|n| labels[n] != 0) {
            continue;
        }
        let ijk = grid.ijk(c);
        let p = ct.index_to_world(&Vector3::new(ijk[0] as f64, ijk[1] as f64, ijk[2] as f64));
        let mut g = Vector3::zeros();
        for a in 0..3 {
            let lo = if ijk[a] > 0 { c - grid.strides[a] } else { c };
            let hi = if ijk[a] + 1 < grid.dims[a] {
                c + grid.strides[a]
            } else {
                c
            };
            g[a] = f64::from(data[hi] - data[lo]);
        }
        let g = inv_t * g;
        let norm = g.norm();
        if norm > 0.0 && norm.is_finite() {
            surf.pts.push(p);
            surf.normals.push(-g / norm);
        }
    }
    Ok(out)
}

/// Transverse-process tips of vertebra `label`: its most lateral points, right (+x) then left
/// (−x), each the centroid of the surface within 1.5 mm of the extreme cast onto the surface.
fn transverse_tips(
    ct: &Volume,
    labels: &[u8],
    label: u8,
    pts: &[Vector3<f64>],
    centre: &Vector3<f64>,
) -> [(Vector3<f64>, f64); 2] {
    let mut transverse = [(Vector3::zeros(), 0.0); 2];
    for (slot, side) in transverse.iter_mut().zip([1.0, -1.0]) {
        let dir = Vector3::x() * side;
        let m = pts
            .iter()
            .map(|p| (p - centre).dot(&dir))
            .fold(f64::NEG_INFINITY, f64::max);
        let cap: Vec<&Vector3<f64>> = pts
            .iter()
            .filter(|p| (*p - centre).dot(&dir) >= m - 0.0015)
            .collect();
        let c = cap.iter().fold(Vector3::zeros(), |s, p| s + *p) / cap.len().max(1) as f64;
        let start = c + dir * 0.015;
        *slot = match cast_into(ct, labels, label, &start, &-dir, 0.03) {
            Some(hit) => (hit, 1.0),
            None => (c, 0.5),
        };
    }
    transverse
}

/// A point inside the spinous process of `level` predicted from the body centre and the
/// transverse tips (atlas): a seed that keeps a vertebra's arch its own where it touches the
/// neighbour's.
fn arch_seed(
    level: usize,
    centre: &Vector3<f64>,
    transverse: &[(Vector3<f64>, f64); 2],
) -> Vector3<f64> {
    let span = (transverse[0].0 - transverse[1].0).norm();
    let s = span / (2.0 * TRANSVERSE_TIP[level] * 1e-3);
    let k = s * 1e-3;
    let b = BODY_DEPTH[level] * 0.5 * k;
    let hh = BODY_HEIGHT[level] * 0.5 * k;
    let cd = CANAL_DEPTH[level] * k;
    let tp_mid_local = Vector3::new(0.0, -b - 0.6 * cd - 6.0 * k, 0.25 * hh);
    let tp_mid = (transverse[0].0 + transverse[1].0) * 0.5;
    let frame = frame_from(
        transverse[0].0 - transverse[1].0,
        tp_mid - centre,
        tp_mid_local,
        *centre,
    );
    // Two thirds of the way from the lamina junction to the tip.
    let tip = spinous_tip_local(level, s);
    let yc = -b - cd;
    let base = Vector3::new(0.0, yc - 2.0 * k, -0.3 * hh);
    frame.transform_point(&(base + (tip - base) * 0.6))
}

fn measure_vertebra(
    ct: &Volume,
    labels: &[u8],
    level: usize,
    body: &Body,
    surface: &Surface,
) -> Result<Measured, Error> {
    let label = level as u8 + 1;
    let name = LEVEL_NAMES[level];
    let (pts, normals) = (&surface.pts, &surface.normals);
    let voxels = surface.voxels;
    if pts.len() < 100 {
        return Err(fail(format!(
            "{name}: too little bone surface ({} points)",
            pts.len()
        )));
    }
    let centre0 = ct.index_to_world(&body.centroid);
    let transverse = transverse_tips(ct, labels, label, pts, &centre0);

    let x_axis = (transverse[0].0 - transverse[1].0).normalize();
    let spinous = spinous_tip(ct, labels, label, pts, normals, &x_axis)
        .ok_or_else(|| fail(format!("{name}: no spinous process found")))?;

    // Frame from the transverse axis and the spinous vector.
    let tip_local = spinous_tip_local(level, 1.0);
    let mut frame = frame_from(x_axis, spinous.0 - centre0, tip_local, centre0);
    // Body centre: midpoints between opposite walls along the body's axes, twice.
    let mut body_centre = centre0;
    let mut widths = [None; 3];
    for _ in 0..2 {
        let r = frame.rotation;
        let mut delta = Vector3::zeros();
        for (a, width) in widths.iter_mut().enumerate() {
            let axis: Vector3<f64> = r.column(a).into_owned();
            let plus = cast_exit(ct, &body_centre, &axis, 0.04);
            let minus = cast_exit(ct, &body_centre, &-axis, 0.04);
            if let (Some(p), Some(m)) = (plus, minus) {
                delta += axis * (0.5 * (p - m));
                *width = Some(p + m);
            }
        }
        body_centre += delta;
        frame = frame_from(x_axis, spinous.0 - body_centre, tip_local, body_centre);
    }
    let mut scales = Vec::new();
    let span = (transverse[0].0 - transverse[1].0).norm();
    scales.push(span / (2.0 * TRANSVERSE_TIP[level] * 1e-3));
    scales.push((spinous.0 - body_centre).norm() / tip_local.norm());
    let atlas = [BODY_WIDTH[level], BODY_DEPTH[level], BODY_HEIGHT[level]];
    for (w, nominal) in widths.iter().zip(atlas) {
        if let Some(w) = w {
            scales.push(w / (nominal * 1e-3));
        }
    }
    Ok(Measured {
        frame,
        spinous,
        transverse,
        body_centre,
        scales,
        voxels,
    })
}

/// The spinous tip from the vertebra's surface points and normals.
///
/// The tip is the centre of the spinous process's posterior end face, a flat face whose normal
/// lies in the vertebra's sagittal plane (normal to `x_axis`). For face normals tilted from
/// −50° to +50° about `x_axis` from the posterior direction, the surface points (sub-voxel) lying
/// within 0.4 mm of the supporting plane are counted; the face is the plane that holds the most
/// (the mean of the near-best tilts), and the tip the centroid of its points, cast onto the
/// surface along the face normal.
fn spinous_tip(
    ct: &Volume,
    labels: &[u8],
    label: u8,
    pts: &[Vector3<f64>],
    normals: &[Vector3<f64>],
    x_axis: &Vector3<f64>,
) -> Option<(Vector3<f64>, f64)> {
    let back = -Vector3::y();
    let u = (back - x_axis * x_axis.dot(&back)).try_normalize(1e-9)?;
    let w = x_axis.cross(&u);
    let m = pts
        .iter()
        .map(|p| p.dot(&u))
        .fold(f64::NEG_INFINITY, f64::max);
    let cand: Vec<Vector3<f64>> = pts
        .iter()
        .zip(normals)
        .filter(|(p, n)| p.dot(&u) >= m - 0.02 && n.dot(&u) > 0.0)
        .map(|(p, n)| subvoxel_surface(ct, p, n).unwrap_or(*p))
        .collect();
    if cand.len() < 6 {
        return None;
    }
    const BAND: f64 = 0.0004;
    let support = |n: &Vector3<f64>| -> (usize, f64) {
        let m = cand
            .iter()
            .map(|p| p.dot(n))
            .fold(f64::NEG_INFINITY, f64::max);
        (cand.iter().filter(|p| p.dot(n) >= m - BAND).count(), m)
    };
    let dir = |deg: f64| {
        let t = deg.to_radians();
        u * t.cos() + w * t.sin()
    };
    let counts: Vec<(f64, usize)> = (-50..=50)
        .map(|d| (f64::from(d), support(&dir(f64::from(d))).0))
        .collect();
    let best = counts.iter().map(|c| c.1).max()?;
    let near: Vec<f64> = counts
        .iter()
        .filter(|c| c.1 as f64 >= 0.9 * best as f64)
        .map(|c| c.0)
        .collect();
    let n = dir(near.iter().sum::<f64>() / near.len() as f64);
    let (_, m) = support(&n);
    let face: Vec<&Vector3<f64>> = cand.iter().filter(|p| p.dot(&n) >= m - BAND).collect();
    let c = face.iter().fold(Vector3::zeros(), |s, p| s + *p) / face.len() as f64;
    Some(
        match cast_into(ct, labels, label, &(c + n * 0.01), &-n, 0.02) {
            Some(hit) => (hit, 1.0),
            None => (c, 0.5),
        },
    )
}

/// The [`SURFACE_HU`] crossing nearest to `p` along the outward normal `n` (±1.5 mm).
fn subvoxel_surface(ct: &Volume, p: &Vector3<f64>, n: &Vector3<f64>) -> Option<Vector3<f64>> {
    const STEP: f64 = 0.0001;
    let mut prev = ct.sample_world(&(p - n * 0.0015))?;
    let mut best: Option<(f64, f64)> = None;
    for s in 1..=30 {
        let t = -0.0015 + s as f64 * STEP;
        let v = ct.sample_world(&(p + n * t))?;
        if prev >= SURFACE_HU && v < SURFACE_HU {
            let tc = t - STEP + f64::from((prev - SURFACE_HU) / (prev - v)) * STEP;
            if best.is_none_or(|b| tc.abs() < b.0) {
                best = Some((tc.abs(), tc));
            }
        }
        prev = v;
    }
    best.map(|(_, t)| p + n * t)
}

/// Spinous tip in the vertebra frame for scale `s` (atlas construction: a process from the
/// lamina junction, inclined 12° inferiorly, reaching `SPINOUS_TIP` posterior of the centre).
fn spinous_tip_local(level: usize, s: f64) -> Vector3<f64> {
    let k = s * 1e-3;
    let b = BODY_DEPTH[level] * 0.5 * k;
    let hh = BODY_HEIGHT[level] * 0.5 * k;
    let yc = -b - CANAL_DEPTH[level] * k;
    let th = SPINOUS_INCLINATION_DEG.to_radians();
    let base = Vector3::new(0.0, yc - 2.0 * k, -0.3 * hh);
    let sp = SPINOUS_TIP[level] * k;
    let len = (sp + base.y) / th.cos();
    base + Vector3::new(0.0, -th.cos(), -th.sin()) * len
}

/// Rotation taking local x to `x_ct` and the local direction `v_local` (orthogonal to x) to the
/// direction of `v_ct`, origin `o`.
fn frame_from(
    x_ct: Vector3<f64>,
    v_ct: Vector3<f64>,
    v_local: Vector3<f64>,
    o: Vector3<f64>,
) -> Transform {
    let e1 = Vector3::x();
    let e2 = (v_local - e1 * v_local.dot(&e1)).normalize();
    let e3 = e1.cross(&e2);
    let f1 = x_ct.normalize();
    let f2 = (v_ct - f1 * v_ct.dot(&f1)).normalize();
    let f3 = f1.cross(&f2);
    let e = Matrix3::from_columns(&[e1, e2, e3]);
    let f = Matrix3::from_columns(&[f1, f2, f3]);
    let r = Rotation3::from_matrix(&(f * e.transpose())).into_inner();
    Transform::new(r, o)
}

/// The virtual S1 frame under L5 (no sacrum is imaged): the atlas L5–S1 joint with the lordosis
/// share of the L5–S1 segment, the total lordosis estimated from the four measured segments.
fn virtual_s1(fits: &[Measured], scale: f64) -> Transform {
    // Least squares lordosis L from the measured segment rotations about x: m_i ≈ w_i L.
    let total: f64 = LORDOSIS_SHARE.iter().sum();
    let (mut num, mut den) = (0.0, 0.0);
    for l in 0..N_VERTEBRAE - 1 {
        let upper = &fits[l].frame;
        let lower = &fits[l + 1].frame;
        let rel = lower.rotation.transpose() * upper.rotation;
        let angle = rel[(2, 1)].atan2(rel[(1, 1)]);
        let w = LORDOSIS_SHARE[l] / total;
        num += w * angle;
        den += w * w;
    }
    let lordosis = if den > 0.0 { num / den } else { 0.0 };
    let seg_angle = lordosis * LORDOSIS_SHARE[4] / total;
    let k = scale * 1e-3;
    let hh = BODY_HEIGHT[4] * 0.5 * k;
    let disc = DISC_FACTOR[4] * DISC_HEIGHT_MM * k;
    // t_l5_s1 = seg⁻¹ with seg = Tz(hh + d/2) · Rx(a) · Tz(d/2 + hh) (t_s1_l5).
    let tz = |z: f64| Transform::new(Matrix3::identity(), Vector3::new(0.0, 0.0, z));
    let rx = Transform::new(
        Rotation3::from_axis_angle(&Vector3::x_axis(), seg_angle).into_inner(),
        Vector3::zeros(),
    );
    let seg = tz(hh + 0.5 * disc) * rx * tz(0.5 * disc + hh);
    fits[N_VERTEBRAE - 1].frame * seg.inverse()
}

/// The eight landmarks of `level`.
fn atlas_landmarks(
    ct: &Volume,
    labels: &[u8],
    level: usize,
    m: &Measured,
    lower: &Transform,
    scale: f64,
) -> Vec<CtLandmark> {
    let label = level as u8 + 1;
    let k = scale * 1e-3;
    let name = LEVEL_NAMES[level];
    let frame = &m.frame;
    let b = BODY_DEPTH[level] * 0.5 * k;
    let hh = BODY_HEIGHT[level] * 0.5 * k;
    let ch = CANAL_WIDTH[level] * 0.5 * k;
    let yc = -b - CANAL_DEPTH[level] * k;
    let y_axis: Vector3<f64> = frame.rotation.column(1).into_owned();
    let mut out = Vec::with_capacity(8);
    let mut push = |suffix: &str, p: Vector3<f64>, confidence: f64| {
        out.push(CtLandmark {
            name: format!("{name}_{suffix}"),
            xyz_ct: p,
            confidence,
        });
    };
    push("spinous_tip", m.spinous.0, m.spinous.1);
    // Laminae: posterior surface at mid-width, mid-height.
    let lam_lo = -hh - 8.0 * k;
    let lam_hi = 0.55 * hh;
    let mut laminae = [(Vector3::zeros(), 0.0); 2];
    for (slot, side) in laminae.iter_mut().zip([1.0, -1.0]) {
        let local = Vector3::new(
            side * 0.5 * (ch + 2.0 * k),
            yc - LAMINA_THICKNESS_MM * k,
            0.5 * (lam_lo + lam_hi),
        );
        let expected = frame.transform_point(&local);
        let start = expected - y_axis * (40.0 * k);
        *slot = refine(
            cast_into(ct, labels, label, &start, &y_axis, 60.0 * k),
            expected,
        );
    }
    push("lamina_right", laminae[0].0, laminae[0].1);
    push("lamina_left", laminae[1].0, laminae[1].1);
    // Facets: inferior articular process at the joint with the vertebra below.
    let lower_level = (level + 1).min(N_VERTEBRAE - 1);
    let lb = BODY_DEPTH[lower_level] * 0.5 * k;
    let lhh = BODY_HEIGHT[lower_level] * 0.5 * k;
    let lch = CANAL_WIDTH[lower_level] * 0.5 * k;
    let lyc = -lb - CANAL_DEPTH[lower_level] * k;
    let disc = DISC_FACTOR[level] * DISC_HEIGHT_MM * k;
    let phi = FACET_ANGLE_DEG[level].to_radians();
    let (sp, cp) = phi.sin_cos();
    let half_w = 0.5 * FACET_WIDTH_MM * k;
    let gap = FACET_GAP_MM * 1e-3;
    let mut facets = [(Vector3::zeros(), 0.0); 2];
    for (slot, side) in facets.iter_mut().zip([1.0, -1.0]) {
        let centre = Vector3::new(side * (lch + 4.5 * k), lyc + 3.0 * k, lhh + 0.5 * disc);
        let n = Vector3::new(-side * cp, -sp, 0.0);
        let u = Vector3::new(side * sp, -cp, 0.0);
        let inside = centre + n * (0.5 * gap + 1.0 * k);
        let outside = inside + u * (half_w + 20.0 * k);
        let expected = lower.transform_point(&(inside + u * half_w));
        let start = lower.transform_point(&outside);
        let dir = lower.rotation * -u;
        *slot = refine(
            cast_into(ct, labels, label, &start, &dir, half_w + 40.0 * k),
            expected,
        );
    }
    push("facet_right", facets[0].0, facets[0].1);
    push("facet_left", facets[1].0, facets[1].1);
    push("transverse_right", m.transverse[0].0, m.transverse[0].1);
    push("transverse_left", m.transverse[1].0, m.transverse[1].1);
    push("body_centre", m.body_centre, 1.0);
    out
}

/// The ray hit when there is one, with a confidence falling off with its distance from where
/// the atlas expects it; the atlas position at low confidence otherwise.
fn refine(hit: Option<Vector3<f64>>, expected: Vector3<f64>) -> (Vector3<f64>, f64) {
    match hit {
        Some(h) => {
            let d = (h - expected).norm() / 0.004;
            (h, (-d * d).exp().max(0.05))
        }
        None => (expected, 0.05),
    }
}
