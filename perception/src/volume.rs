//! A scalar voxel volume placed in the CT world frame.

use std::path::Path;

use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::Error;

pub use crate::ct_load::{detect_ct_source, load_ct, CtSource};

/// Largest volume the NIfTI and DICOM readers accept, in voxels: 1024³ (4 GiB of `f32`), far
/// above any CBCT. Headers declaring more are refused before any voxel memory is allocated, so
/// a corrupt or hostile header cannot make a reader allocate without bound.
pub const MAX_VOXELS: usize = 1 << 30;

/// How the readers' errors name an input held in memory rather than read from a path.
pub(crate) const IN_MEMORY: &str = "<in memory>";

/// `ni · nj · nk` when it is at most [`MAX_VOXELS`]; otherwise an error naming `path`.
pub(crate) fn checked_voxel_count(path: &Path, dims: [usize; 3]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_VOXELS)
        .ok_or_else(|| {
            ErrorKind::TooLarge {
                path: path.to_owned(),
                dims,
            }
            .into()
        })
}

/// A 3D grid of `f32` values (Hounsfield units for CT) with its placement in the world.
///
/// Voxel `(i, j, k)` has its centre at `t_ct_voxel · (i, j, k)` where the affine includes the
/// voxel spacing (metres per index step), as in a NIfTI `sform`. Data is stored with `i` fastest.
#[derive(Clone, Debug)]
pub struct Volume {
    dims: [usize; 3],
    data: Vec<f32>,
    /// Linear part (direction × spacing) and origin, metres.
    affine: Matrix3<f64>,
    origin: Vector3<f64>,
    inverse: Matrix3<f64>,
}

impl Volume {
    /// A volume from its voxel values (`i` fastest), size, and affine `voxel index → world (m)`.
    pub fn new(
        dims: [usize; 3],
        data: Vec<f32>,
        affine: Matrix3<f64>,
        origin: Vector3<f64>,
    ) -> Result<Self, Error> {
        if dims.iter().product::<usize>() != data.len() {
            return Err(ErrorKind::SizeMismatch {
                dims,
                len: data.len(),
            }
            .into());
        }
        if !affine.iter().chain(origin.iter()).all(|v| v.is_finite()) {
            return Err(ErrorKind::BadAffine.into());
        }
        let inverse = affine.try_inverse().ok_or(ErrorKind::BadAffine)?;
        Ok(Self {
            dims,
            data,
            affine,
            origin,
            inverse,
        })
    }

    /// Reads a NIfTI-1 image held in memory, plain or gzip-compressed: see
    /// [`read_nifti_bytes`](crate::io::read_nifti_bytes).
    pub fn from_nifti_bytes(bytes: &[u8]) -> Result<Self, Error> {
        crate::io::read_nifti_bytes(bytes)
    }

    /// Reads one DICOM image file held in memory as a volume of one slice: see
    /// [`read_dicom_bytes`](crate::dicom::read_dicom_bytes).
    pub fn from_dicom_bytes(bytes: &[u8]) -> Result<Self, Error> {
        crate::dicom::read_dicom_bytes(bytes)
    }

    /// An axis-aligned volume of the given spacing (m) and origin (m, centre of voxel 0), filled by
    /// `f(i, j, k)`.
    pub fn from_fn(
        dims: [usize; 3],
        spacing: [f64; 3],
        origin: [f64; 3],
        mut f: impl FnMut(usize, usize, usize) -> f32,
    ) -> Result<Self, Error> {
        if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(ErrorKind::BadSpacing(spacing).into());
        }
        let mut data = Vec::with_capacity(dims.iter().product());
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    data.push(f(i, j, k));
                }
            }
        }
        Self::new(
            dims,
            data,
            Matrix3::from_diagonal(&Vector3::from(spacing)),
            Vector3::from(origin),
        )
    }

    /// Number of voxels along i, j, k.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Voxel values, `i` fastest.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Spacing along i, j, k (m): the lengths of the affine's columns.
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|c| self.affine.column(c).norm())
    }

    /// The voxel-to-world affine as a rigid-plus-scale pair (linear part, origin).
    pub fn affine(&self) -> (&Matrix3<f64>, &Vector3<f64>) {
        (&self.affine, &self.origin)
    }

    /// Value at integer voxel indices, if inside.
    pub fn get(&self, i: usize, j: usize, k: usize) -> Option<f32> {
        let [ni, nj, nk] = self.dims;
        (i < ni && j < nj && k < nk).then(|| self.data[i + ni * (j + nj * k)])
    }

    /// World position (m) of a continuous voxel index.
    pub fn index_to_world(&self, ijk: &Vector3<f64>) -> Vector3<f64> {
        self.affine * ijk + self.origin
    }

    /// Continuous voxel index of a world position (m).
    pub fn world_to_index(&self, p: &Vector3<f64>) -> Vector3<f64> {
        self.inverse * (p - self.origin)
    }

    /// Trilinear interpolation at a world position; `None` outside the grid of voxel centres.
    pub fn sample_world(&self, p: &Vector3<f64>) -> Option<f32> {
        let x = self.world_to_index(p);
        self.sample_index(&x)
    }

    /// Trilinear interpolation at a position given in frame `b`, with `t_ct_b` the volume's world
    /// from that frame.
    pub fn sample_in(&self, t_ct_b: &Transform, p_b: &Vector3<f64>) -> Option<f32> {
        self.sample_world(&t_ct_b.transform_point(p_b))
    }

    /// Trilinear interpolation at a continuous voxel index.
    pub fn sample_index(&self, x: &Vector3<f64>) -> Option<f32> {
        let [ni, nj, nk] = self.dims;
        let mut base = [0usize; 3];
        let mut frac = [0.0f64; 3];
        for a in 0..3 {
            let n = self.dims[a];
            let v = x[a];
            if !(v >= 0.0 && v <= (n - 1) as f64) || n == 0 {
                return None;
            }
            let b = (v.floor() as usize).min(n.saturating_sub(2));
            base[a] = b;
            frac[a] = v - b as f64;
        }
        let at = |di: usize, dj: usize, dk: usize| -> f64 {
            let i = (base[0] + di).min(ni - 1);
            let j = (base[1] + dj).min(nj - 1);
            let k = (base[2] + dk).min(nk - 1);
            f64::from(self.data[i + ni * (j + nj * k)])
        };
        let [fx, fy, fz] = frac;
        let c00 = at(0, 0, 0) * (1.0 - fx) + at(1, 0, 0) * fx;
        let c10 = at(0, 1, 0) * (1.0 - fx) + at(1, 1, 0) * fx;
        let c01 = at(0, 0, 1) * (1.0 - fx) + at(1, 0, 1) * fx;
        let c11 = at(0, 1, 1) * (1.0 - fx) + at(1, 1, 1) * fx;
        let c0 = c00 * (1.0 - fy) + c10 * fy;
        let c1 = c01 * (1.0 - fy) + c11 * fy;
        Some((c0 * (1.0 - fz) + c1 * fz) as f32)
    }
}
