use std::path::PathBuf;

use thiserror::Error as ThisError;

/// Error returned by `telecho-perception`. Opaque: the message names what was wrong.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Error(#[from] pub(crate) ErrorKind);

#[derive(Debug, ThisError)]
pub(crate) enum ErrorKind {
    #[error("volume size {dims:?} does not match {len} voxel values")]
    SizeMismatch { dims: [usize; 3], len: usize },
    #[error("voxel spacing {0:?} must be finite and positive (metres)")]
    BadSpacing([f64; 3]),
    #[error("volume affine is not invertible or not finite")]
    BadAffine,
    #[error("NIfTI file {}: {source}", path.display())]
    NiftiIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a NIfTI-1 file: {reason}", path.display())]
    NotNifti { path: PathBuf, reason: String },
    #[error(
        "NIfTI file {} is truncated: voxel data needs {expected} bytes from offset {offset}, \
         only {found} present",
        path.display()
    )]
    NiftiTruncated {
        path: PathBuf,
        offset: usize,
        expected: usize,
        found: usize,
    },
    #[error(
        "NIfTI file {}: unsupported datatype {name} (code {code}); supported: uint8, int16, \
         uint16, int32, float32, float64",
        path.display()
    )]
    NiftiDatatype {
        path: PathBuf,
        code: i16,
        name: &'static str,
    },
    #[error("NIfTI file {}: only 3D volumes are supported, dim = {dim:?}", path.display())]
    NiftiNot3d { path: PathBuf, dim: [u16; 8] },
    #[error("NIfTI file {}: pixdim {pixdim:?} must be finite and positive", path.display())]
    NiftiPixdim { path: PathBuf, pixdim: [f32; 3] },
    #[error("NIfTI file {}: {which} affine is {problem}", path.display())]
    NiftiAffine {
        path: PathBuf,
        which: &'static str,
        problem: &'static str,
    },
    #[error("cannot write NIfTI file {}: {reason}", path.display())]
    NiftiUnwritable { path: PathBuf, reason: String },
}
