//! Procedural, seeded lumbar-spine phantom (L1–L5 with soft-tissue layers) as analytic geometry.
//!
//! A later step voxelises it into a cone-beam CT; here everything is closed-form: each vertebra is
//! a union of simple solids with exact signed-distance functions, the back is a smooth height field.
//!
//! # Frame `ct`
//!
//! Metres, RAS as in a NIfTI affine: `x` runs patient left → right (+x toward the patient's
//! **Right**), `y` posterior → anterior (+y toward **Anterior**), `z` inferior → superior (+z toward
//! **Superior**). The patient
//! lies prone, so the back (the skin the probe touches) faces −y. The origin is the centre of the
//! L3 vertebral body and the L3 local axes coincide with the `ct` axes.
//!
//! # Vertebra frames
//!
//! Vertebra `level` (0 = L1 … 4 = L5) has a local frame with the same axis meanings, origin at the
//! centre of its body (midway between the endplates on the body's axis); [`Phantom::t_ct_vertebra`]
//! maps it into `ct`. Successive vertebrae are joined at the centre of the disc between them by a
//! rotation `Rx(segmental lordosis) · R(roll, pitch, yaw)` where the lordosis part tilts the upper
//! vertebra's superior axis posteriorly (concave-posterior lumbar curve) and roll/pitch/yaw are the
//! seeded intervertebral rotations ([`Phantom::intervertebral_rpy`]).
//!
//! # Morphometry
//!
//! Nominal sizes (mm, before the per-seed scale) are rounded means from
//! Panjabi M.M. et al., "Human lumbar vertebrae: quantitative three-dimensional anatomy",
//! Spine 17(3):299–306, 1992 (endplate width/depth, body height, canal width/depth, transverse
//! process span, spinous process length) and Zhou S.H. et al., "Geometrical dimensions of the
//! lower lumbar vertebrae – analysis of data from digitised CT images", Eur Spine J 9:242–248,
//! 2000 (pedicle width/height); facet orientation (transverse angle to the sagittal plane) after
//! Panjabi M.M. et al., "Articular facets of the human spine", Spine 18(10):1298–1310, 1993 and
//! Masharawi Y. et al., Spine 29(16):1755–1763, 2004; segmental lordosis shares after the usual
//! finding that L4–S1 carries about two thirds of the L1–S1 lordosis. The values actually used:
//!
//! | level | body W×D×H | canal W×D | pedicle W×H | spinous tip post. | TP tip lat. | facet angle |
//! |-------|-----------|-----------|-------------|-------------------|-------------|-------------|
//! | L1    | 42×31×25.5 | 22×17.5  | 7×15        | 67                | 36          | 26° (L1–2)  |
//! | L2    | 44×32.5×26.5 | 22.5×17 | 8×15       | 69                | 40          | 32° (L2–3)  |
//! | L3    | 46×33.5×27 | 23.5×16.5 | 9.5×14.5   | 70                | 44          | 38° (L3–4)  |
//! | L4    | 48.5×34×27 | 24.5×16.5 | 11.5×14    | 70                | 42          | 45° (L4–5)  |
//! | L5    | 50×34×26.5 | 26.5×17  | 15×14       | 66                | 40          | 50° (L5–S1) |
//!
//! Discs 9–11 mm (L1–2 … L4–5), segmental lordosis shares L1–2 … L5–S1 = 4:7:10:14:20.
//!
//! # Soft tissue
//!
//! Everything anterior of the skin surface `y = skin_y(x, z)` is body: a skin layer, then
//! subcutaneous fat, then muscle (paraspinal muscle behind the bone, and — as a stand-in — every
//! other non-bone, non-disc tissue). Only the L1–2 … L4–5 discs are modelled (no T12, no sacrum).

use std::f64::consts::FRAC_PI_2;

use nalgebra::{Matrix3, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_core::{rotation_from_rpy, Transform};

use crate::error::{check_in_range as check, ErrorKind};
use crate::Error;

/// Number of modelled vertebrae (L1–L5).
pub const N_LEVELS: usize = 5;
/// Names of the modelled vertebrae, index = `level`.
pub const LEVEL_NAMES: [&str; N_LEVELS] = ["L1", "L2", "L3", "L4", "L5"];

const MM: f64 = 1e-3;

// Nominal morphometry, millimetres, index = level (see the module doc for sources).
const BODY_WIDTH: [f64; N_LEVELS] = [42.0, 44.0, 46.0, 48.5, 50.0];
const BODY_DEPTH: [f64; N_LEVELS] = [31.0, 32.5, 33.5, 34.0, 34.0];
const BODY_HEIGHT: [f64; N_LEVELS] = [25.5, 26.5, 27.0, 27.0, 26.5];
const CANAL_WIDTH: [f64; N_LEVELS] = [22.0, 22.5, 23.5, 24.5, 26.5];
const CANAL_DEPTH: [f64; N_LEVELS] = [17.5, 17.0, 16.5, 16.5, 17.0];
const PEDICLE_WIDTH: [f64; N_LEVELS] = [7.0, 8.0, 9.5, 11.5, 15.0];
const PEDICLE_HEIGHT: [f64; N_LEVELS] = [15.0, 15.0, 14.5, 14.0, 14.0];
const SPINOUS_TIP: [f64; N_LEVELS] = [67.0, 69.0, 70.0, 70.0, 66.0];
const TRANSVERSE_TIP: [f64; N_LEVELS] = [36.0, 40.0, 44.0, 42.0, 40.0];
/// Facet joint below each vertebra: transverse angle to the sagittal plane, degrees.
const FACET_ANGLE_DEG: [f64; N_LEVELS] = [26.0, 32.0, 38.0, 45.0, 50.0];
/// Disc heights relative to `PhantomParams::disc_height`, segments L1–2 … L5–S1.
const DISC_FACTOR: [f64; N_LEVELS] = [0.9, 0.95, 1.0, 1.05, 1.1];
/// Share of the L1–S1 lordosis per segment L1–2 … L5–S1.
const LORDOSIS_SHARE: [f64; N_LEVELS] = [4.0, 7.0, 10.0, 14.0, 20.0];

const LAMINA_THICKNESS: f64 = 6.0;
const SPINOUS_HALF_WIDTH: f64 = 3.5;
const SPINOUS_HALF_HEIGHT: f64 = 10.0;
const SPINOUS_INCLINATION_DEG: f64 = 12.0;
const TRANSVERSE_RADIUS: f64 = 4.5;
const FACET_HEIGHT: f64 = 13.0;
const FACET_WIDTH: f64 = 14.0;
const FACET_THICKNESS: f64 = 7.0;
/// Beyond this bound (m) from every vertebra's bounding sphere, `bone_sdf` returns the bound.
const FAR: f64 = 5e-3;

/// Tunable ranges of the phantom generator. All lengths in metres, angles in degrees.
#[derive(Clone, Debug, PartialEq)]
pub struct PhantomParams {
    /// Overall size scale is drawn uniformly in `1 ± size_variation` (default 0.08).
    pub size_variation: f64,
    /// Total L1–S1 lordosis range, degrees (default 40–60).
    pub lordosis_deg: [f64; 2],
    /// Each intervertebral roll/pitch/yaw is drawn uniformly in ± this, degrees (default 3).
    pub max_intervertebral_rotation_deg: f64,
    /// Nominal (L3–4) disc height before scaling, metres (default 0.010).
    pub disc_height: f64,
    /// Facet joint space between articular processes, metres (default 0.0015).
    pub facet_gap: f64,
    /// Range of the skin-to-spinous-tip depth (along −y), metres (default 0.020–0.060).
    pub skin_depth: [f64; 2],
    /// Range of the subcutaneous fat thickness, metres (default 0.005–0.020).
    pub fat_thickness: [f64; 2],
    /// Skin (epidermis + dermis) thickness, metres (default 0.002).
    pub skin_thickness: f64,
    /// Cortical shell thickness, metres (default 0.0015).
    pub cortical_thickness: f64,
}

impl Default for PhantomParams {
    fn default() -> Self {
        Self {
            size_variation: 0.08,
            lordosis_deg: [40.0, 60.0],
            max_intervertebral_rotation_deg: 3.0,
            disc_height: 0.010,
            facet_gap: 0.0015,
            skin_depth: [0.020, 0.060],
            fat_thickness: [0.005, 0.020],
            skin_thickness: 0.002,
            cortical_thickness: 0.0015,
        }
    }
}

fn check_range(what: &'static str, r: [f64; 2], min: f64, max: f64) -> Result<(), Error> {
    check(what, r[0], min, max)?;
    check(what, r[1], min, max)?;
    if r[0] > r[1] {
        return Err(ErrorKind::EmptyRange {
            what,
            lo: r[0],
            hi: r[1],
        }
        .into());
    }
    Ok(())
}

impl PhantomParams {
    /// Checks every field is finite and within its plausible range.
    pub fn validate(&self) -> Result<(), Error> {
        check("size_variation", self.size_variation, 0.0, 0.3)?;
        check_range("lordosis_deg", self.lordosis_deg, 0.0, 90.0)?;
        check(
            "max_intervertebral_rotation_deg",
            self.max_intervertebral_rotation_deg,
            0.0,
            10.0,
        )?;
        check("disc_height", self.disc_height, 0.003, 0.020)?;
        check("facet_gap", self.facet_gap, 0.0005, 0.004)?;
        check_range("skin_depth", self.skin_depth, 0.015, 0.100)?;
        check_range("fat_thickness", self.fat_thickness, 0.0, 0.060)?;
        check("skin_thickness", self.skin_thickness, 0.0005, 0.005)?;
        check("cortical_thickness", self.cortical_thickness, 0.0002, 0.004)?;
        Ok(())
    }
}

/// Tissue class of a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tissue {
    /// Outside the body (posterior of the skin surface).
    Air,
    /// Epidermis + dermis.
    Skin,
    /// Subcutaneous fat.
    Fat,
    /// Paraspinal muscle (and every other soft tissue).
    Muscle,
    /// Intervertebral disc.
    Disc,
    /// Cancellous bone inside the cortical shell.
    TrabecularBone,
    /// Bone within `cortical_thickness` of the bone surface.
    CorticalBone,
}

/// A named anatomical point in the `ct` frame (metres).
#[derive(Clone, Debug, PartialEq)]
pub struct Landmark {
    /// E.g. `L3_spinous_tip`.
    pub name: String,
    /// Position in `ct`, metres.
    pub xyz: [f64; 3],
}

/// A primitive solid, in vertebra-local coordinates (metres).
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    /// Elliptic cylinder along z centred at `centre`.
    EllipticCylinder { a: f64, b: f64, half_height: f64 },
    /// Box with rounded edges; `axes` columns are the box axes, `half` includes the rounding.
    RoundBox {
        axes: Matrix3<f64>,
        half: Vector3<f64>,
        radius: f64,
    },
    /// Segment `centre ± half_axis`, radius.
    Capsule {
        half_axis: Vector3<f64>,
        radius: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
struct Solid {
    centre: Vector3<f64>,
    shape: Shape,
    /// Bounding-sphere radius about `centre`.
    bound: f64,
}

impl Solid {
    fn elliptic_cylinder(centre: Vector3<f64>, a: f64, b: f64, half_height: f64) -> Self {
        Self {
            centre,
            bound: (a.max(b).powi(2) + half_height.powi(2)).sqrt(),
            shape: Shape::EllipticCylinder { a, b, half_height },
        }
    }

    fn round_box(centre: Vector3<f64>, axes: Matrix3<f64>, half: Vector3<f64>, r: f64) -> Self {
        let radius = r.min(half.min() * 0.999);
        Self {
            centre,
            bound: half.norm(),
            shape: Shape::RoundBox { axes, half, radius },
        }
    }

    /// Axis-aligned box from its min/max corners.
    fn aa_box(lo: Vector3<f64>, hi: Vector3<f64>, r: f64) -> Self {
        Self::round_box(
            (lo + hi) * 0.5,
            Matrix3::identity(),
            (hi - lo).abs() * 0.5,
            r,
        )
    }

    fn capsule(a: Vector3<f64>, b: Vector3<f64>, radius: f64) -> Self {
        let half_axis = (b - a) * 0.5;
        Self {
            centre: (a + b) * 0.5,
            bound: half_axis.norm() + radius,
            shape: Shape::Capsule { half_axis, radius },
        }
    }

    fn sdf(&self, p: &Vector3<f64>) -> f64 {
        let q = p - self.centre;
        match &self.shape {
            Shape::EllipticCylinder { a, b, half_height } => {
                let d2 = sd_ellipse(q.x, q.y, *a, *b);
                let dz = q.z.abs() - half_height;
                let outside = (d2.max(0.0).powi(2) + dz.max(0.0).powi(2)).sqrt();
                outside + d2.max(dz).min(0.0)
            }
            Shape::RoundBox { axes, half, radius } => {
                let l = axes.tr_mul(&q);
                let d = l.abs() - half + Vector3::repeat(*radius);
                let outside = d.map(|v| v.max(0.0)).norm();
                outside + d.max().min(0.0) - radius
            }
            Shape::Capsule { half_axis, radius } => {
                let ba = half_axis * 2.0;
                let pa = q + half_axis;
                let h = (pa.dot(&ba) / ba.norm_squared()).clamp(0.0, 1.0);
                (pa - ba * h).norm() - radius
            }
        }
    }
}

/// Signed distance to the ellipse `(x/a)² + (y/b)² = 1` (Newton iteration on the foot-point
/// angle, after I. Quilez's formulation).
fn sd_ellipse(px: f64, py: f64, a: f64, b: f64) -> f64 {
    let (px, py) = (px.abs(), py.abs());
    let mut w = if a * (px - a) < b * (py - b) {
        FRAC_PI_2
    } else {
        0.0
    };
    for _ in 0..6 {
        let (s, c) = w.sin_cos();
        let (ux, uy) = (a * c, b * s);
        let (vx, vy) = (-a * s, b * c);
        let (dx, dy) = (px - ux, py - uy);
        let num = dx * vx + dy * vy;
        let den = dx * ux + dy * uy + vx * vx + vy * vy;
        if den.abs() > 1e-300 {
            w = (w + num / den).clamp(0.0, FRAC_PI_2);
        }
    }
    let (s, c) = w.sin_cos();
    let d = ((px - a * c).powi(2) + (py - b * s).powi(2)).sqrt();
    if (px / a).powi(2) + (py / b).powi(2) > 1.0 {
        d
    } else {
        -d
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Vertebra {
    t_ct_v: Transform,
    t_v_ct: Transform,
    solids: Vec<Solid>,
    /// Bounding sphere of all solids, vertebra-local centre and radius.
    bound_centre: Vector3<f64>,
    bound_radius: f64,
    /// Landmarks in vertebra-local coordinates, in the order of `LANDMARK_SUFFIXES`.
    landmarks: [Vector3<f64>; 8],
    /// Body semi-axes (x, y) and half height.
    body: [f64; 3],
}

impl Vertebra {
    fn sdf_local(&self, p: &Vector3<f64>) -> f64 {
        let mut best = f64::INFINITY;
        for s in &self.solids {
            if (p - s.centre).norm() - s.bound >= best {
                continue;
            }
            best = best.min(s.sdf(p));
        }
        best
    }

    /// Lower bound of the distance from a `ct` point to this vertebra.
    fn bound_ct(&self, p: &Vector3<f64>) -> f64 {
        (p - self.t_ct_v.transform_point(&self.bound_centre)).norm() - self.bound_radius
    }
}

/// Names of the per-vertebra landmarks, in the order they are computed: the `+x` point of each
/// pair comes first, and +x is the patient's right in RAS.
const LANDMARK_SUFFIXES: [&str; 8] = [
    "spinous_tip",
    "lamina_right",
    "lamina_left",
    "facet_right",
    "facet_left",
    "transverse_right",
    "transverse_left",
    "body_centre",
];

/// Per-level nominal dimensions scaled to metres.
#[derive(Clone, Copy, Debug)]
struct Dims {
    a: f64,
    b: f64,
    hh: f64,
    ch: f64,
    cd: f64,
    pw: f64,
    ph: f64,
    sp_tip: f64,
    tp_tip: f64,
}

impl Dims {
    fn new(level: usize, s: f64) -> Self {
        let k = s * MM;
        Self {
            a: BODY_WIDTH[level] * 0.5 * k,
            b: BODY_DEPTH[level] * 0.5 * k,
            hh: BODY_HEIGHT[level] * 0.5 * k,
            ch: CANAL_WIDTH[level] * 0.5 * k,
            cd: CANAL_DEPTH[level] * k,
            pw: PEDICLE_WIDTH[level] * k,
            ph: PEDICLE_HEIGHT[level] * k,
            sp_tip: SPINOUS_TIP[level] * k,
            tp_tip: TRANSVERSE_TIP[level] * k,
        }
    }

    /// y of the posterior canal wall (anterior face of the laminae).
    fn yc(&self) -> f64 {
        -self.b - self.cd
    }

    fn z_pedicle(&self) -> f64 {
        0.25 * self.hh
    }
}

/// A facet joint, in the frame of the lower vertebra.
#[derive(Clone, Copy, Debug)]
struct Joint {
    centre: Vector3<f64>,
    /// Unit normal from the superior articular process (lower) toward the inferior one (upper).
    n: Vector3<f64>,
    /// In-plane horizontal direction pointing posterolaterally.
    u: Vector3<f64>,
}

fn joint(lower: &Dims, disc: f64, side: f64, angle_deg: f64, s: f64) -> Joint {
    let phi = angle_deg.to_radians();
    let (sp, cp) = phi.sin_cos();
    Joint {
        centre: Vector3::new(
            side * (lower.ch + 4.5 * s * MM),
            lower.yc() + 3.0 * s * MM,
            lower.hh + 0.5 * disc,
        ),
        n: Vector3::new(-side * cp, -sp, 0.0),
        u: Vector3::new(side * sp, -cp, 0.0),
    }
}

fn facet_axes(j: &Joint) -> Matrix3<f64> {
    Matrix3::from_columns(&[j.n, j.u, Vector3::z()])
}

/// The seeded lumbar phantom. See the module documentation for frames and sources.
#[derive(Clone, Debug, PartialEq)]
pub struct Phantom {
    seed: u64,
    params: PhantomParams,
    scale: f64,
    lordosis_deg: f64,
    segment_lordosis: [f64; N_LEVELS],
    rpy: [[f64; 3]; N_LEVELS - 1],
    discs: [f64; N_LEVELS],
    vertebrae: Vec<Vertebra>,
    /// Skin back line `y = c0 + c1 z + c2 z²` at the midline before the groove.
    skin_poly: [f64; 3],
    groove_depth: f64,
    groove_width: f64,
    lateral_curvature: f64,
    fat: f64,
}

impl Phantom {
    /// The phantom of `seed` with default parameters.
    pub fn generate(seed: u64) -> Self {
        // The defaults are valid (checked by a test), so no validation is needed here.
        Self::build(seed, &PhantomParams::default())
    }

    /// The phantom of `seed` with the given parameter ranges; refuses non-finite or out-of-range
    /// values.
    pub fn with_params(seed: u64, params: &PhantomParams) -> Result<Self, Error> {
        params.validate()?;
        Ok(Self::build(seed, params))
    }

    fn build(seed: u64, params: &PhantomParams) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |lo: f64, hi: f64| -> f64 {
            if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            }
        };
        let scale = uniform(1.0 - params.size_variation, 1.0 + params.size_variation);
        let lordosis_deg = uniform(params.lordosis_deg[0], params.lordosis_deg[1]);
        let share_sum: f64 = LORDOSIS_SHARE.iter().sum();
        let segment_lordosis = LORDOSIS_SHARE.map(|w| (lordosis_deg * w / share_sum).to_radians());
        let m = params.max_intervertebral_rotation_deg.to_radians();
        let mut rpy = [[0.0; 3]; N_LEVELS - 1];
        for r in &mut rpy {
            for v in r.iter_mut() {
                *v = uniform(-m, m);
            }
        }
        let depth = uniform(params.skin_depth[0], params.skin_depth[1]);
        let depth_slope = uniform(-0.05, 0.05);
        let depth_curv = uniform(-0.5, 0.5);
        let groove_depth = uniform(0.001, 0.004);
        let groove_width = uniform(0.010, 0.020);
        let lateral_curvature = uniform(0.3, 1.2);
        let fat = uniform(params.fat_thickness[0], params.fat_thickness[1]);

        let dims: [Dims; N_LEVELS] = std::array::from_fn(|l| Dims::new(l, scale));
        let discs = DISC_FACTOR.map(|f| f * params.disc_height * scale);

        // t_lower_upper for segment l (between level l and l+1); the last one (L5–S1) has no
        // random rotation and uses L5's dimensions for the virtual S1.
        let seg = |l: usize| -> Transform {
            let lower = if l + 1 < N_LEVELS { l + 1 } else { l };
            let r = if l < N_LEVELS - 1 { rpy[l] } else { [0.0; 3] };
            let up_lower = Transform::new(
                Matrix3::identity(),
                Vector3::new(0.0, 0.0, dims[lower].hh + 0.5 * discs[l]),
            );
            let rot = Transform::new(rotation_x(segment_lordosis[l]), Vector3::zeros())
                * Transform::new(rotation_from_rpy(r[0], r[1], r[2]), Vector3::zeros());
            let up_upper = Transform::new(
                Matrix3::identity(),
                Vector3::new(0.0, 0.0, 0.5 * discs[l] + dims[l].hh),
            );
            up_lower * rot * up_upper
        };
        let mut t_ct = [Transform::IDENTITY; N_LEVELS];
        for l in (0..2).rev() {
            t_ct[l] = t_ct[l + 1] * seg(l);
        }
        for l in 3..N_LEVELS {
            t_ct[l] = t_ct[l - 1] * seg(l - 1).inverse();
        }

        let mut vertebrae = Vec::with_capacity(N_LEVELS);
        let mut rays = Vec::with_capacity(N_LEVELS);
        for l in 0..N_LEVELS {
            let d = &dims[l];
            // Joints: superior ones with the vertebra above (in this frame), inferior ones with
            // the vertebra below (in the lower frame, mapped here).
            // L1's superior facets (toward the unmodelled T12) copy the L1–2 disc and angle.
            let above = l.saturating_sub(1);
            let sup =
                [1.0, -1.0].map(|side| joint(d, discs[above], side, FACET_ANGLE_DEG[above], scale));
            let lower_dims = if l + 1 < N_LEVELS { dims[l + 1] } else { *d };
            let t_upper_lower = seg(l).inverse();
            let inf = [1.0, -1.0]
                .map(|side| joint(&lower_dims, discs[l], side, FACET_ANGLE_DEG[l], scale));
            let (solids, (landmarks, lm_rays)) =
                vertebra_solids(d, scale, params.facet_gap, &sup, &inf, &t_upper_lower);
            rays.push(lm_rays);
            let mut bound_centre = Vector3::zeros();
            for s in &solids {
                bound_centre += s.centre;
            }
            bound_centre /= solids.len().max(1) as f64;
            let bound_radius = solids
                .iter()
                .map(|s| (s.centre - bound_centre).norm() + s.bound)
                .fold(0.0, f64::max);
            vertebrae.push(Vertebra {
                t_ct_v: t_ct[l],
                t_v_ct: t_ct[l].inverse(),
                solids,
                bound_centre,
                bound_radius,
                landmarks,
                body: [d.a, d.b, d.hh],
            });
        }

        let mut ph = Self {
            seed,
            params: params.clone(),
            scale,
            lordosis_deg,
            segment_lordosis,
            rpy,
            discs,
            vertebrae,
            skin_poly: [0.0; 3],
            groove_depth,
            groove_width,
            lateral_curvature,
            fat,
        };
        ph.refine_landmarks(&rays);

        // Skin: quadratic least-squares fit through the spinous tips, moved posteriorly by the
        // seeded depth with a gentle per-level trend, then shifted so every tip lies within
        // [skin_depth] of the skin.
        let tips: Vec<Vector3<f64>> = ph
            .vertebrae
            .iter()
            .map(|v| v.t_ct_v.transform_point(&v.landmarks[0]))
            .collect();
        let fit = quadratic_fit(&tips);
        let z0 = tips.iter().map(|t| t.z).sum::<f64>() / tips.len() as f64;
        let mut poly = [
            fit[0] - depth - depth_slope * z0 + depth_curv * z0 * z0,
            fit[1] + depth_slope - 2.0 * depth_curv * z0,
            fit[2] - depth_curv,
        ];
        ph.skin_poly = poly;
        let depths: Vec<f64> = tips.iter().map(|t| t.y - ph.skin_y(t.x, t.z)).collect();
        let dmin = depths.iter().copied().fold(f64::INFINITY, f64::min);
        let dmax = depths.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = (params.skin_depth[0], params.skin_depth[1]);
        let mut shift = 0.0;
        if dmin < lo {
            shift = lo - dmin;
        } else if dmax > hi {
            shift = (hi - dmax).max(lo - dmin);
        }
        poly[0] -= shift;
        ph.skin_poly = poly;
        ph
    }

    /// Moves the surface landmarks exactly onto their vertebra's surface by ray casting.
    fn refine_landmarks(&mut self, rays: &[[Ray; 8]]) {
        for (v, rays) in self.vertebrae.iter_mut().zip(rays) {
            let mut out = v.landmarks;
            for (slot, ray) in out.iter_mut().zip(rays) {
                if let Some((origin, dir)) = ray {
                    let n = dir.norm();
                    if n > 0.0 {
                        if let Some(hit) = ray_cast(|p| v.sdf_local(p), origin, &(dir / n), 0.3) {
                            *slot = hit;
                        }
                    }
                }
            }
            v.landmarks = out;
        }
    }

    /// The seed this phantom was generated from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The parameters it was generated with.
    pub fn params(&self) -> &PhantomParams {
        &self.params
    }

    /// Overall size scale drawn for this seed (1 = nominal morphometry).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Total L1–S1 lordosis drawn for this seed, degrees.
    pub fn lordosis_deg(&self) -> f64 {
        self.lordosis_deg
    }

    /// Nominal lordosis of each segment L1–2 … L5–S1, radians (rotation about +x of the upper
    /// vertebra relative to the lower one).
    pub fn segment_lordosis(&self) -> [f64; N_LEVELS] {
        self.segment_lordosis
    }

    /// Seeded roll/pitch/yaw (radians, URDF convention) of segments L1–2 … L4–5, applied after
    /// the lordosis: `R_lower_upper = Rx(lordosis) · R(roll, pitch, yaw)`.
    pub fn intervertebral_rpy(&self) -> [[f64; 3]; N_LEVELS - 1] {
        self.rpy
    }

    /// Disc heights L1–2 … L5–S1 (the last is virtual), metres.
    pub fn disc_heights(&self) -> [f64; N_LEVELS] {
        self.discs
    }

    /// Subcutaneous fat thickness, metres.
    pub fn fat_thickness(&self) -> f64 {
        self.fat
    }

    /// Vertebral body semi-width (x), semi-depth (y) and half height (z) of `level`, metres.
    pub fn body_half_extents(&self, level: usize) -> Option<[f64; 3]> {
        self.vertebrae.get(level).map(|v| v.body)
    }

    /// Pose of vertebra `level` (0 = L1 … 4 = L5) in `ct`: `t_ct_vertebra`. `None` for a level
    /// past L5.
    pub fn t_ct_vertebra(&self, level: usize) -> Option<Transform> {
        self.vertebrae.get(level).map(|v| v.t_ct_v)
    }

    /// Half-axes (ct, metres) of the posterior end face of vertebra `level`'s spinous process,
    /// whose centre is the `spinous_tip` landmark: the first across the patient (half the
    /// process's width), the second along the face's height (perpendicular to the process's
    /// inferiorly inclined axis), both including the rounded edges. A plane cutting the face
    /// anywhere shows the same tip-like apex, which is why the dataset ignores detections there
    /// ([`crate::dataset::ignored_landmarks`]). `None` for a level past L5.
    pub fn spinous_face_half_axes(&self, level: usize) -> Option<[Vector3<f64>; 2]> {
        let v = self.vertebrae.get(level)?;
        let k = self.scale * MM;
        let th = SPINOUS_INCLINATION_DEG.to_radians();
        let dir = Vector3::new(0.0, -th.cos(), -th.sin());
        let height = Vector3::x().cross(&dir);
        Some([
            v.t_ct_v.rotation * Vector3::x() * (SPINOUS_HALF_WIDTH * k),
            v.t_ct_v.rotation * height * (SPINOUS_HALF_HEIGHT * k),
        ])
    }

    /// The stretch (ct, metres) of vertebra `level`'s inferior articular processes along which
    /// each facet landmark's posterolateral corner runs unchanged: the unit axis (the vertebra's
    /// superior direction) and the extent below and above the landmark. The process reaches
    /// half the facet height below the joint centre and that plus 8 mm above it (see
    /// [`Self::landmarks`]'s construction), so a transverse slice anywhere along it shows the
    /// same corner, and the dataset ignores detections there
    /// ([`crate::dataset::ignored_landmarks`]). `None` for a level past L5.
    pub fn facet_column(&self, level: usize) -> Option<(Vector3<f64>, f64, f64)> {
        let v = self.vertebrae.get(level)?;
        let k = self.scale * MM;
        let half_h = 0.5 * FACET_HEIGHT * k;
        Some((v.t_ct_v.rotation * Vector3::z(), half_h, half_h + 8.0 * k))
    }

    /// Vertebra `level`'s transverse process on `side` (0 right, 1 left, the landmark order):
    /// the ends of its axis (ct, metres; from the root at the pedicle to the centre of the lateral
    /// end cap, whose lateral pole is the `transverse_*` landmark) and its radius. A plane across
    /// the process anywhere along it (a paramedian sagittal slice) shows the same round bump,
    /// which is why the dataset ignores detections there ([`crate::dataset::ignored_landmarks`]).
    /// `None` for a level past L5 or a side other than 0 or 1.
    pub fn transverse_process_axis(
        &self,
        level: usize,
        side: usize,
    ) -> Option<(Vector3<f64>, Vector3<f64>, f64)> {
        let v = self.vertebrae.get(level)?;
        let sign = match side {
            0 => 1.0,
            1 => -1.0,
            _ => return None,
        };
        let (a, e, r) = transverse_capsule(&Dims::new(level, self.scale), self.scale, sign);
        Some((
            v.t_ct_v.transform_point(&a),
            v.t_ct_v.transform_point(&e),
            r,
        ))
    }

    /// y of the skin surface above `(x, z)` (ct, metres): a quadratic back line along z, a
    /// shallow Gaussian midline groove and a gentle anterior fall-off laterally.
    pub fn skin_y(&self, x: f64, z: f64) -> f64 {
        let [c0, c1, c2] = self.skin_poly;
        let g = x / self.groove_width;
        c0 + c1 * z
            + c2 * z * z
            + self.groove_depth * (-0.5 * g * g).exp()
            + self.lateral_curvature * x * x
    }

    /// Signed distance (m) from `p` (ct) to vertebra `level`, negative inside. `+∞` for a level
    /// past L5.
    pub fn vertebra_sdf(&self, level: usize, p: &Vector3<f64>) -> f64 {
        match self.vertebrae.get(level) {
            Some(v) => v.sdf_local(&v.t_v_ct.transform_point(p)),
            None => f64::INFINITY,
        }
    }

    /// Signed distance (m) from `p` (ct) to the union of all vertebrae, negative inside.
    ///
    /// Exact outside the bone and near its surface (inside, at the seams between overlapping
    /// solids it may under-estimate the depth); more than 5 mm from every vertebra's bounding
    /// sphere it returns that (smaller) bound instead.
    pub fn bone_sdf(&self, p: &Vector3<f64>) -> f64 {
        let mut bounds = [0.0; N_LEVELS];
        let mut nearest = f64::INFINITY;
        for (b, v) in bounds.iter_mut().zip(&self.vertebrae) {
            *b = v.bound_ct(p);
            nearest = nearest.min(*b);
        }
        if nearest > FAR {
            return nearest;
        }
        let mut best = f64::INFINITY;
        for (b, v) in bounds.iter().zip(&self.vertebrae) {
            if *b >= best {
                continue;
            }
            best = best.min(v.sdf_local(&v.t_v_ct.transform_point(p)));
        }
        best
    }

    /// Tissue class at `p` (ct, metres). Bone wins over the skin and fat layers (a thin patient's
    /// spinous tips may reach into the fat); the layers are measured along y from the skin.
    pub fn tissue_at(&self, p: &Vector3<f64>) -> Tissue {
        self.tissue_and_bone_sdf(p).0
    }

    /// [`Phantom::tissue_at`] together with [`Phantom::bone_sdf`] (`+inf` posterior of the skin),
    /// evaluating the bone distance once — what voxelisation needs.
    pub fn tissue_and_bone_sdf(&self, p: &Vector3<f64>) -> (Tissue, f64) {
        let ys = self.skin_y(p.x, p.z);
        let depth = p.y - ys;
        if depth < 0.0 || !depth.is_finite() {
            return (Tissue::Air, f64::INFINITY);
        }
        let d = self.bone_sdf(p);
        if d < 0.0 {
            let t = if d > -self.params.cortical_thickness {
                Tissue::CorticalBone
            } else {
                Tissue::TrabecularBone
            };
            return (t, d);
        }
        let t = if depth < self.params.skin_thickness {
            Tissue::Skin
        } else if depth < self.params.skin_thickness + self.fat {
            Tissue::Fat
        } else if self.in_disc(p) {
            Tissue::Disc
        } else {
            Tissue::Muscle
        };
        (t, d)
    }

    /// Inside a disc: between the endplates of two neighbours and inside the mean ellipse.
    fn in_disc(&self, p: &Vector3<f64>) -> bool {
        for pair in self.vertebrae.windows(2) {
            let (up, lo) = (&pair[0], &pair[1]);
            let ql = lo.t_v_ct.transform_point(p);
            if ql.z < lo.body[2] {
                continue;
            }
            let qu = up.t_v_ct.transform_point(p);
            if qu.z > -up.body[2] {
                continue;
            }
            let a = 0.5 * (up.body[0] + lo.body[0]);
            let b = 0.5 * (up.body[1] + lo.body[1]);
            if (ql.x / a).powi(2) + (ql.y / b).powi(2) <= 1.0 {
                return true;
            }
        }
        false
    }

    /// The 40 landmarks, `L1_…` to `L5_…`, each level in the order spinous tip, lamina
    /// right/left, facet right/left, transverse right/left, body centre ("left" = patient's left = −x).
    pub fn landmarks(&self) -> Vec<Landmark> {
        let mut out = Vec::with_capacity(N_LEVELS * LANDMARK_SUFFIXES.len());
        for (name, v) in LEVEL_NAMES.iter().zip(&self.vertebrae) {
            for (suffix, p) in LANDMARK_SUFFIXES.iter().zip(&v.landmarks) {
                let q = v.t_ct_v.transform_point(p);
                out.push(Landmark {
                    name: format!("{name}_{suffix}"),
                    xyz: [q.x, q.y, q.z],
                });
            }
        }
        out
    }

    /// Axis-aligned box (min, max corners, ct metres) containing all bone and the skin over it.
    pub fn bounds(&self) -> ([f64; 3], [f64; 3]) {
        let mut lo = Vector3::repeat(f64::INFINITY);
        let mut hi = Vector3::repeat(f64::NEG_INFINITY);
        for v in &self.vertebrae {
            for s in &v.solids {
                let c = v.t_ct_v.transform_point(&s.centre);
                lo = lo.inf(&(c - Vector3::repeat(s.bound)));
                hi = hi.sup(&(c + Vector3::repeat(s.bound)));
            }
        }
        let mut ymin = lo.y;
        let n = 40;
        for i in 0..=n {
            for j in 0..=n {
                let x = lo.x + (hi.x - lo.x) * i as f64 / n as f64;
                let z = lo.z + (hi.z - lo.z) * j as f64 / n as f64;
                ymin = ymin.min(self.skin_y(x, z));
            }
        }
        lo.y = ymin - 1e-3;
        ([lo.x, lo.y, lo.z], [hi.x, hi.y, hi.z])
    }
}

fn rotation_x(a: f64) -> Matrix3<f64> {
    let (s, c) = a.sin_cos();
    Matrix3::new(1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)
}

/// Least-squares `y = c0 + c1 z + c2 z²` through the points; a line or constant when degenerate.
fn quadratic_fit(pts: &[Vector3<f64>]) -> [f64; 3] {
    let mut ata = Matrix3::zeros();
    let mut aty = Vector3::zeros();
    for p in pts {
        let row = Vector3::new(1.0, p.z, p.z * p.z);
        ata += row * row.transpose();
        aty += row * p.y;
    }
    match ata.try_inverse() {
        Some(inv) => {
            let c = inv * aty;
            [c.x, c.y, c.z]
        }
        None => {
            let mean = pts.iter().map(|p| p.y).sum::<f64>() / pts.len().max(1) as f64;
            [mean, 0.0, 0.0]
        }
    }
}

/// Sphere tracing from `origin` along unit `dir` up to `max_t`; the surface point if hit.
fn ray_cast(
    f: impl Fn(&Vector3<f64>) -> f64,
    origin: &Vector3<f64>,
    dir: &Vector3<f64>,
    max_t: f64,
) -> Option<Vector3<f64>> {
    let mut t = 0.0;
    for _ in 0..10_000 {
        let p = origin + dir * t;
        let d = f(&p);
        if d < 1e-9 {
            return if d > -1e-6 { Some(p) } else { None };
        }
        t += d;
        if t > max_t {
            return None;
        }
    }
    None
}

/// Nominal landmark positions plus, for surface landmarks, a ray (origin, direction) in
/// vertebra-local coordinates whose first hit on the vertebra is the landmark.
type LandmarkRays = ([Vector3<f64>; 8], [Ray; 8]);

/// A ray (origin, direction), vertebra-local; `None` for a landmark that is not on the surface.
type Ray = Option<(Vector3<f64>, Vector3<f64>)>;

/// Vertebra-local axis ends (root at the pedicle, centre of the lateral end cap) and radius of
/// the transverse process on `side` (+1 right, −1 left): a capsule pointing laterally and
/// slightly posteriorly.
fn transverse_capsule(d: &Dims, s: f64, side: f64) -> (Vector3<f64>, Vector3<f64>, f64) {
    let k = s * MM;
    let r = TRANSVERSE_RADIUS * k;
    let ty = -d.b - 0.6 * d.cd;
    let zp = d.z_pedicle();
    let a = Vector3::new(side * (d.ch + 0.5 * d.pw), ty, zp);
    let e = Vector3::new(side * (d.tp_tip - r), ty - 6.0 * k, zp);
    (a, e, r)
}

/// Builds the solids and nominal landmarks (vertebra-local) of one vertebra.
fn vertebra_solids(
    d: &Dims,
    s: f64,
    gap: f64,
    sup: &[Joint; 2],
    inf: &[Joint; 2],
    t_upper_lower: &Transform,
) -> (Vec<Solid>, LandmarkRays) {
    let k = s * MM;
    let yc = d.yc();
    let zp = d.z_pedicle();
    let mut solids = Vec::with_capacity(14);
    // Body.
    solids.push(Solid::elliptic_cylinder(Vector3::zeros(), d.a, d.b, d.hh));
    // Spinous process: rounded box from the lamina junction, pointing posteriorly and inclined
    // inferiorly; its posterior end-face centre is the tip.
    let th = SPINOUS_INCLINATION_DEG.to_radians();
    let dir = Vector3::new(0.0, -th.cos(), -th.sin());
    let base = Vector3::new(0.0, yc - 2.0 * k, -0.3 * d.hh);
    let len = (d.sp_tip + base.y) / th.cos();
    let tip = base + dir * len;
    let start = base - dir * (2.0 * k);
    let axes = Matrix3::from_columns(&[Vector3::x(), dir, Vector3::x().cross(&dir)]);
    solids.push(Solid::round_box(
        (start + tip) * 0.5,
        axes,
        Vector3::new(
            SPINOUS_HALF_WIDTH * k,
            0.5 * (tip - start).norm(),
            SPINOUS_HALF_HEIGHT * k,
        ),
        3.0 * k,
    ));
    let mut lm = [Vector3::zeros(); 8];
    let mut rays = [None; 8];
    lm[0] = tip;
    rays[0] = Some((tip + dir * (30.0 * k), -dir));
    let lam_lo_z = -d.hh - 8.0 * k;
    let lam_hi_z = 0.55 * d.hh;
    for (i, side) in [1.0, -1.0].into_iter().enumerate() {
        // Pedicle: stadium-section rod along y from inside the body to the posterior arch.
        let px = side * (d.ch + 0.5 * d.pw);
        let y0 = -d.b + 4.0 * k;
        let y1 = yc - 2.0 * k;
        solids.push(Solid::aa_box(
            Vector3::new(px - 0.5 * d.pw, y1, zp - 0.5 * d.ph),
            Vector3::new(px + 0.5 * d.pw, y0, zp + 0.5 * d.ph),
            0.5 * d.pw.min(d.ph),
        ));
        // Lamina: slab roofing the canal from the midline to just past the canal edge.
        let xl = side * (d.ch + 3.0 * k);
        let xm = -side * 1.0 * k;
        let (xa, xb) = if side > 0.0 { (xm, xl) } else { (xl, xm) };
        solids.push(Solid::aa_box(
            Vector3::new(xa, yc - LAMINA_THICKNESS * k, lam_lo_z),
            Vector3::new(xb, yc, lam_hi_z),
            1.5 * k,
        ));
        lm[1 + i] = Vector3::new(
            0.5 * (xa + xb),
            yc - LAMINA_THICKNESS * k,
            0.5 * (lam_lo_z + lam_hi_z),
        );
        rays[1 + i] = Some((lm[1 + i] - Vector3::y() * (100.0 * k), Vector3::y()));
        // Pars interarticularis: joins the lamina to the pedicle / superior articular process.
        let (pa, pb) = (d.ch - 1.0 * k, d.ch + d.pw);
        let (xa, xb) = if side > 0.0 { (pa, pb) } else { (-pb, -pa) };
        solids.push(Solid::aa_box(
            Vector3::new(xa, yc - 5.0 * k, zp - 6.0 * k),
            Vector3::new(xb, yc + 1.0 * k, zp + 6.0 * k),
            1.5 * k,
        ));
        // Transverse process: capsule pointing laterally and slightly posteriorly.
        let (a, e, r) = transverse_capsule(d, s, side);
        solids.push(Solid::capsule(a, e, r));
        lm[5 + i] = e + Vector3::new(side * r, 0.0, 0.0);
        rays[5 + i] = Some((
            lm[5 + i] + Vector3::x() * (side * 50.0 * k),
            -Vector3::x() * side,
        ));
    }
    let half_t = 0.5 * FACET_THICKNESS * k;
    let half_w = 0.5 * FACET_WIDTH * k;
    let half_h = 0.5 * FACET_HEIGHT * k;
    // Superior articular processes: from the pedicle up to the top of the facet, their
    // posteromedial face on the joint plane (minus half the gap).
    for j in sup {
        let ztop = j.centre.z + half_h;
        let zbot = zp;
        let mut c = j.centre - j.n * (0.5 * gap + half_t);
        c.z = 0.5 * (ztop + zbot);
        solids.push(Solid::round_box(
            c,
            facet_axes(j),
            Vector3::new(half_t, half_w, 0.5 * (ztop - zbot)),
            1.5 * k,
        ));
    }
    // Inferior articular processes: built in the lower vertebra's frame against its superior
    // articular process, then carried into this frame.
    for (i, j) in inf.iter().enumerate() {
        let zbot = j.centre.z - half_h;
        let ztop = j.centre.z + half_h + 8.0 * k;
        let mut c = j.centre + j.n * (0.5 * gap + half_t);
        c.z = 0.5 * (ztop + zbot);
        let axes = t_upper_lower.rotation * facet_axes(j);
        solids.push(Solid::round_box(
            t_upper_lower.transform_point(&c),
            axes,
            Vector3::new(half_t, half_w, 0.5 * (ztop - zbot)),
            1.5 * k,
        ));
        // Facet landmark: ray from posterolaterally outside, 1 mm into the inferior articular
        // process from the joint plane, aimed along the joint line at its centre height.
        let inside = j.centre + j.n * (0.5 * gap + 1.0 * k);
        let outside = inside + j.u * (half_w + 20.0 * k);
        lm[3 + i] = t_upper_lower.transform_point(&inside);
        rays[3 + i] = Some((
            t_upper_lower.transform_point(&outside),
            t_upper_lower.rotation * -j.u,
        ));
    }
    lm[7] = Vector3::zeros();
    (solids, (lm, rays))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ellipse_distance_matches_brute_force() {
        let (a, b) = (0.023, 0.0165);
        let n = 20_000;
        for &(x, y) in &[
            (0.03, 0.0),
            (0.0, 0.02),
            (0.02, 0.01),
            (0.001, 0.001),
            (0.022, 0.002),
            (0.05, 0.04),
            (0.01, 0.016),
        ] {
            let mut best = f64::INFINITY;
            for i in 0..n {
                let t = i as f64 / n as f64 * std::f64::consts::TAU;
                best = best.min(((x - a * t.cos()).powi(2) + (y - b * t.sin()).powi(2)).sqrt());
            }
            let d = sd_ellipse(x, y, a, b);
            assert!((d.abs() - best).abs() < 2e-6, "({x},{y}): {d} vs {best}");
        }
    }
}
