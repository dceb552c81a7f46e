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
}
