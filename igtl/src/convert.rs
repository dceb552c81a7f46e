//! From telecho's frames (SI metres, REP 103 robot `base_link`) to what OpenIGTLink and 3D
//! Slicer expect (millimetres, patient LPS).
//!
//! Two conversions, both applied at this boundary only:
//!
//! 1. **metres → millimetres**: every length is multiplied by 1000.
//! 2. **base axes → LPS**: a fixed rotation `R_lps_base` ([`BaseToLps`]) maps a base-frame vector
//!    to the reference frame sent to Slicer; the origin stays at the base origin. The default,
//!    [`BaseToLps::prone`], is the simulator's nominal placement of the prone patient (see
//!    `sim/src/world.rs`): base +x is the patient's right, base +y superior, base +z posterior
//!    (out of the back), so L = −x, P = +z, S = +y. The true placement differs from the nominal
//!    one by a seeded yaw (±20°) and tilts (±2°) that only registration finds, so the exported
//!    axes are the patient's up to that error; [`BaseToLps::identity`] or any other proper rotation
//!    can be configured instead.
//!
//! A rigid pose `t_base_x` (metres) becomes `S·C·t_base_x·S⁻¹` with `C` the rotation above and
//! `S = 1000·I`: rotation `C·R`, translation `1000·C·t`, so the frame `x` is also in millimetres.
//! An image's pixel-to-base matrix `t_base_probe · t_probe_image` (pixel indices in, metres out)
//! becomes `S·C·t_base_probe·t_probe_image` (pixel indices in, LPS millimetres out).

use nalgebra::{Matrix3, Matrix4, Vector3};

use crate::error::Error;

/// Millimetres per metre.
pub const MM_PER_M: f64 = 1000.0;

/// Tolerance on a configured rotation being orthonormal.
const ROTATION_TOL: f64 = 1e-6;

/// The fixed rotation from the robot base axes to the LPS axes sent to Slicer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BaseToLps {
    rotation: Matrix3<f64>,
}

impl Default for BaseToLps {
    fn default() -> Self {
        Self::prone()
    }
}

impl BaseToLps {
    /// The nominal prone placement of the simulator: base (+x, +y, +z) = patient (right,
    /// superior, posterior), so LPS = (−x, +z, +y) of the base.
    pub fn prone() -> Self {
        Self {
            rotation: Matrix3::new(
                -1.0, 0.0, 0.0, //
                0.0, 0.0, 1.0, //
                0.0, 1.0, 0.0,
            ),
        }
    }

    /// No rotation: the base axes are sent as they are (base x as L, y as P, z as S).
    pub fn identity() -> Self {
        Self {
            rotation: Matrix3::identity(),
        }
    }

    /// A rotation given row-major (`rows[i]` is LPS axis `i` expressed in base coordinates);
    /// it must be orthonormal with determinant +1.
    pub fn from_rows(rows: [[f64; 3]; 3]) -> Result<Self, Error> {
        let r = Matrix3::from_fn(|i, j| rows[i][j]);
        if r.iter().any(|v| !v.is_finite()) {
            return Err(Error::convert("base→LPS rotation has a non-finite entry"));
        }
        let err = (r.transpose() * r - Matrix3::identity()).abs().max();
        if err > ROTATION_TOL || r.determinant() < 0.0 {
            return Err(Error::convert(format!(
                "base→LPS matrix {rows:?} is not a proper rotation (|RᵀR − I| = {err:.1e}, det = {:.3})",
                r.determinant()
            )));
        }
        Ok(Self { rotation: r })
    }

    /// Parses `prone`, `identity`, or nine comma-separated numbers (row-major rotation).
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "prone" => Ok(Self::prone()),
            "identity" => Ok(Self::identity()),
            other => {
                let v: Vec<f64> = other
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        Error::convert(format!(
                            "{other:?} is neither `prone`, `identity` nor 9 comma-separated numbers"
                        ))
                    })?;
                if v.len() != 9 {
                    return Err(Error::convert(format!(
                        "{} numbers given, a row-major 3×3 rotation has 9",
                        v.len()
                    )));
                }
                Self::from_rows([[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]])
            }
        }
    }

    /// The rotation `R_lps_base`.
    pub fn rotation(&self) -> &Matrix3<f64> {
        &self.rotation
    }

    /// A base-frame point (m) as an LPS point (mm).
    pub fn point(&self, p_base_m: &Vector3<f64>) -> Vector3<f64> {
        self.rotation * p_base_m * MM_PER_M
    }

    /// A rigid pose `t_base_x` (m) as `t_lps_x` with both frames in mm.
    pub fn rigid(&self, t_base_x: &Matrix4<f64>) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        let r: Matrix3<f64> = t_base_x.fixed_view::<3, 3>(0, 0).into_owned();
        let t: Vector3<f64> = t_base_x.fixed_view::<3, 1>(0, 3).into_owned();
        m.fixed_view_mut::<3, 3>(0, 0)
            .copy_from(&(self.rotation * r));
        m.fixed_view_mut::<3, 1>(0, 3)
            .copy_from(&(self.rotation * t * MM_PER_M));
        m
    }

    /// A pixel-to-base matrix (pixel indices → m) as pixel indices → LPS mm.
    pub fn pixel_to_lps(&self, t_base_pixel: &Matrix4<f64>) -> Matrix4<f64> {
        let mut c = Matrix4::identity();
        c.fixed_view_mut::<3, 3>(0, 0)
            .copy_from(&(self.rotation * MM_PER_M));
        c * t_base_pixel
    }
}
