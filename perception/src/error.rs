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
    #[error(
        "{}: a volume of {} × {} × {} voxels is larger than the {} (1024³) voxels the readers \
         accept",
        path.display(),
        dims[0],
        dims[1],
        dims[2],
        crate::volume::MAX_VOXELS
    )]
    TooLarge { path: PathBuf, dims: [usize; 3] },
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
    #[error("cannot read {}: {source}", path.display())]
    DicomIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a readable DICOM file: {reason}", path.display())]
    NotDicom { path: PathBuf, reason: String },
    #[error("DICOM file {}: required attribute {tag} is missing or empty", path.display())]
    DicomMissingTag { path: PathBuf, tag: String },
    #[error("DICOM file {}: attribute {tag} {problem}", path.display())]
    DicomBadTag {
        path: PathBuf,
        tag: String,
        problem: String,
    },
    #[error(
        "DICOM file {}: transfer syntax {uid} ({name}) is not supported; only the native \
         little-endian ones are: Implicit VR Little Endian (1.2.840.10008.1.2) and Explicit VR \
         Little Endian (1.2.840.10008.1.2.1)",
        path.display()
    )]
    DicomTransferSyntax {
        path: PathBuf,
        uid: String,
        name: &'static str,
    },
    #[error("DICOM file {}: {what} is not supported", path.display())]
    DicomUnsupported { path: PathBuf, what: String },
    #[error(
        "DICOM file {}: pixel data has {found} bytes but {rows} rows × {columns} columns × \
         {bits} bits need {expected}",
        path.display()
    )]
    DicomPixelLength {
        path: PathBuf,
        rows: u16,
        columns: u16,
        bits: u16,
        expected: usize,
        found: usize,
    },
    #[error(
        "inconsistent DICOM slice geometry: {} differs from {}: {reason}",
        path.display(),
        reference.display()
    )]
    DicomGeometry {
        path: PathBuf,
        reference: PathBuf,
        reason: String,
    },
    #[error(
        "DICOM slice spacing is not uniform: {gap_mm:.4} mm between {} and {}, but \
         {expected_mm:.4} mm between the other slices (a missing or extra slice?)",
        a.display(),
        b.display()
    )]
    DicomSpacing {
        a: PathBuf,
        b: PathBuf,
        gap_mm: f64,
        expected_mm: f64,
    },
    #[error(
        "DICOM slices {} and {} lie at the same position along the slice normal ({position_mm:.4} mm)",
        a.display(),
        b.display()
    )]
    DicomDuplicate {
        a: PathBuf,
        b: PathBuf,
        position_mm: f64,
    },
    #[error(
        "{} holds {} DICOM series (Series Instance UIDs: {}); put each series in its own directory",
        dir.display(),
        series.len(),
        series.join(", ")
    )]
    DicomMultipleSeries { dir: PathBuf, series: Vec<String> },
    #[error("no DICOM series in {}: {reason}", dir.display())]
    DicomEmpty { dir: PathBuf, reason: String },
    #[error("cannot write DICOM series to {}: {reason}", path.display())]
    DicomUnwritable { path: PathBuf, reason: String },
    #[error("volume of size {dims:?} is too small: at least 3 voxels per axis are needed")]
    EmptyVolume { dims: [usize; 3] },
    #[error("no bone surface facing the probe found at or above {threshold_hu} HU")]
    NoBone { threshold_hu: f32 },
    #[error("{what} is out of range: {value}")]
    BadParam { what: &'static str, value: f64 },
    #[error(
        "ultrasound frame of {width} × {height} pixels does not match its {len} pixel values \
         (need width ≥ 1, height ≥ 3)"
    )]
    BadFrame {
        width: usize,
        height: usize,
        len: usize,
    },
    #[error("sweep {}: {reason}", path.display())]
    Sweep { path: PathBuf, reason: String },
    #[error("registration refused: {reason}")]
    Refused { reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot load a CT volume from {}: {reason}", path.display())]
    CtInput { path: PathBuf, reason: String },
    #[error("CT landmark detection failed: {reason}")]
    CtLandmarks { reason: String },
    #[error("fusion: {reason}")]
    Fuse { reason: String },
    #[error("cannot write PNG {}: {reason}", path.display())]
    Png { path: PathBuf, reason: String },
}
