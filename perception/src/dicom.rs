//! Reading and writing volumes as DICOM CT image series: one file per slice.
//!
//! # Conventions
//!
//! * **World frame.** DICOM patient coordinates are LPS+ (+x patient Left, +y Posterior,
//!   +z Superior) in millimetres; a [`Volume`] lives in RAS+ metres. Converting flips the sign of
//!   x and y and scales by 1000; z keeps its sign.
//! * **Slices.** A volume's `k` index runs over the slices: slice `k` holds the voxels
//!   `(i, j, k)` with `i` the column index (along a row) and `j` the row index, so
//!   *Rows* = `nj`, *Columns* = `ni`, *Image Orientation (Patient)* = the LPS direction of
//!   increasing `i` followed by that of increasing `j`, *Pixel Spacing* = `[spacing_j, spacing_i]`
//!   (row spacing first) and *Image Position (Patient)* = the LPS position of voxel `(0, 0, k)`.
//! * **Voxels.** [`write_dicom_series`] stores signed 16-bit integers quantised exactly as
//!   [`write_nifti`](crate::io::write_nifti) does (`round(value)` saturated to the `i16` range,
//!   NaN → 0) with *Rescale Slope* 1 and *Rescale Intercept* 0 (Hounsfield units), so a DICOM series
//!   and a NIfTI file written from the same volume read back identical voxel for voxel.
//!   The readers apply *Rescale Slope*/*Intercept* (1 and 0 when absent) and accept 8-, 16- and
//!   32-bit, signed or unsigned, single-sample (monochrome) pixels; bits above *Bits Stored* are
//!   masked and signed values sign-extended. Pixel data longer than needed (padding) is accepted;
//!   shorter is an error.
//! * **Transfer syntaxes.** Files are written as Explicit VR Little Endian. The readers accept
//!   Explicit and Implicit VR Little Endian; compressed, deflated or big-endian files are refused
//!   with an error naming their transfer syntax.
//! * **Slice order.** [`read_dicom_series`] sorts the slices by the projection of their *Image
//!   Position (Patient)* on the slice normal (row cosines × column cosines), whatever the file
//!   names or directory order. The volume's `k` axis runs along increasing projection, or along
//!   decreasing projection when the *Instance Numbers* all decrease along it (so that `k` follows
//!   the instance numbering, and a volume whose `k` axis points against the normal reads back
//!   as it was written). Its third affine column is the mean step between consecutive slice
//!   positions, so a tilted-gantry series keeps its shear.
//! * **Checks.** All slices of a series must share Rows, Columns, Pixel Spacing and Image
//!   Orientation (Patient), lie on one line, at distinct positions, with uniform spacing (each gap
//!   within max(0.01 mm, 1 %) of the median gap). Every violation is an error naming the files.
//!   Rescale Slope/Intercept may differ between slices: each slice is rescaled with its own.
//! * **Robustness.** No input makes the readers panic. Before a file is handed to the DICOM
//!   parser, every value length in it is checked against the file size, so a corrupt length is
//!   an error rather than an allocation of up to 4 GiB.
//! * **Determinism.** The same volume and [`SeriesInfo`] always give byte-identical files: no
//!   clock and no randomness go into them; the UIDs are derived from [`SeriesInfo::uid_seed`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids, StandardDataDictionary};
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTable, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use nalgebra::{Matrix3, Vector3};

use crate::error::ErrorKind;
use crate::volume::Volume;
use crate::Error;

/// Implementation Version Name (0002,0013) written into every file (at most 16 characters).
const IMPLEMENTATION_VERSION: &str = concat!("TELECHO_", env!("CARGO_PKG_VERSION"));
/// Largest cosine difference between slices that still counts as the same orientation.
const ORIENTATION_TOL: f64 = 1e-4;
/// Tolerance on the length and orthogonality of the direction cosines in a file.
const COSINE_TOL: f64 = 1e-3;
/// Largest deviation from orthogonality (cosine of the angle) accepted when writing.
const WRITE_ORTHOGONALITY_TOL: f64 = 1e-4;
/// Absolute floor of the slice-position tolerance, millimetres.
const POSITION_TOL_MM: f64 = 0.01;
/// Relative slice-spacing tolerance.
const SPACING_TOL_REL: f64 = 0.01;

/// Descriptive attributes of a written series. Everything that is not geometry or pixels.
///
/// Text fields must be printable ASCII without backslashes and fit their DICOM value
/// representation (64 characters for names, IDs and descriptions).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    /// Patient's Name (0010,0010), in DICOM person-name form (`Family^Given`).
    pub patient_name: String,
    /// Patient ID (0010,0020).
    pub patient_id: String,
    /// Study Description (0008,1030).
    pub study_description: String,
    /// Series Description (0008,103E).
    pub series_description: String,
    /// Series Number (0020,0011), at most 2³¹ − 1.
    pub series_number: u32,
    /// Seed every UID (study, series, frame of reference, SOP instances) is derived from: the same
    /// seed and series number give the same UIDs, different seeds practically never collide.
    pub uid_seed: u64,
    /// Study Date (0008,0020) as `YYYYMMDD`, or empty for unknown (the default: no dates are
    /// invented).
    pub study_date: String,
    /// Patient Position (0018,5100); `HFP` (head first, prone) for a patient lying face down.
    pub patient_position: String,
    /// Window Center (0028,1050) in HU.
    pub window_center_hu: f64,
    /// Window Width (0028,1051) in HU, at least 1.
    pub window_width_hu: f64,
}

impl Default for SeriesInfo {
    /// An anonymous patient, series 1, UID seed 0, prone (`HFP`), bone window 400/1500 HU.
    fn default() -> Self {
        Self {
            patient_name: "ANONYMOUS".to_owned(),
            patient_id: "TELECHO".to_owned(),
            study_description: "telecho".to_owned(),
            series_description: "telecho CT".to_owned(),
            series_number: 1,
            uid_seed: 0,
            study_date: String::new(),
            patient_position: "HFP".to_owned(),
            window_center_hu: 400.0,
            window_width_hu: 1500.0,
        }
    }
}

impl SeriesInfo {
    /// Why these attributes cannot be written, if they cannot.
    fn problem(&self) -> Option<String> {
        let text = |name: &str, value: &str, max: usize| -> Option<String> {
            if value.chars().count() > max {
                return Some(format!("{name} {value:?} is longer than {max} characters"));
            }
            if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) || value.contains('\\') {
                return Some(format!(
                    "{name} {value:?} must be printable ASCII without backslashes"
                ));
            }
            None
        };
        let code = |name: &str, value: &str| -> Option<String> {
            let ok = value.len() <= 16
                && value
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ' || c == '_');
            (!ok).then(|| {
                format!("{name} {value:?} must be at most 16 of A-Z, 0-9, space and underscore")
            })
        };
        text("patient name", &self.patient_name, 64)
            .or_else(|| text("patient ID", &self.patient_id, 64))
            .or_else(|| text("study description", &self.study_description, 64))
            .or_else(|| text("series description", &self.series_description, 64))
            .or_else(|| code("patient position", &self.patient_position))
            .or_else(|| {
                let d = &self.study_date;
                (!(d.is_empty() || (d.len() == 8 && d.chars().all(|c| c.is_ascii_digit()))))
                    .then(|| format!("study date {d:?} must be empty or YYYYMMDD"))
            })
            .or_else(|| {
                (self.series_number > i32::MAX as u32)
                    .then(|| format!("series number {} exceeds 2^31 - 1", self.series_number))
            })
            .or_else(|| {
                let (c, w) = (self.window_center_hu, self.window_width_hu);
                (!(c.is_finite() && w.is_finite() && w >= 1.0)).then(|| {
                    format!("window center/width {c}/{w} HU must be finite with width >= 1")
                })
            })
    }
}

/// Writes `volume` into `dir` (created if missing) as a CT image series, one Explicit VR Little
/// Endian file per `k` slice named `slice_0000.dcm`, `slice_0001.dcm`, … (zero-padded to at least
/// four digits), and returns their paths in slice order.
///
/// Files in `dir` named like slices of an earlier series (`slice_<digits>.dcm`) that this call did
/// not write are removed, so the directory holds exactly one series. Voxels are quantised to
/// `int16` as by [`write_nifti`](crate::io::write_nifti). The volume's `i` and `j` axes must be
/// orthogonal to each other and to `k` (DICOM cannot describe a sheared grid); otherwise, or when
/// `info` does not fit DICOM, an error is returned before anything is written. See the
/// [module documentation](self) for the conventions.
pub fn write_dicom_series(
    dir: &Path,
    volume: &Volume,
    info: &SeriesInfo,
) -> Result<Vec<PathBuf>, Error> {
    let unwritable = |reason: String| -> Error {
        ErrorKind::DicomUnwritable {
            path: dir.to_owned(),
            reason,
        }
        .into()
    };
    if let Some(reason) = info.problem() {
        return Err(unwritable(reason));
    }
    let geometry = WriteGeometry::of(volume).map_err(unwritable)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ErrorKind::DicomIo { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let nk = volume.dims()[2];
    let width = nk.saturating_sub(1).to_string().len().max(4);
    let mut written = Vec::with_capacity(nk);
    for k in 0..nk {
        let path = dir.join(format!("slice_{k:0width$}.dcm"));
        let bytes = encode_slice(volume, &geometry, info, k).map_err(|reason| {
            Error::from(ErrorKind::DicomUnwritable {
                path: path.clone(),
                reason,
            })
        })?;
        std::fs::write(&path, bytes).map_err(io(&path))?;
        written.push(path);
    }
    remove_stale_slices(dir, &written)?;
    Ok(written)
}

/// Reads the DICOM image series in `dir` as a [`Volume`] (HU after rescaling, RAS metres).
///
/// Every regular file in `dir` (not its subdirectories) with the DICOM Part 10 preamble (`DICM`
/// at byte 128) is read; other files and DICOMDIR media directories are skipped. It is an error
/// when none remains, when the files belong to more than one series (the error lists their
/// Series Instance UIDs), when a file cannot be read or lacks a required attribute, and when the
/// slices do not form one regular grid. See the [module documentation](self) for the conventions.
pub fn read_dicom_series(dir: &Path) -> Result<Volume, Error> {
    let io = |source| ErrorKind::DicomIo {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(ErrorKind::DicomEmpty {
            dir: dir.to_owned(),
            reason: "the directory holds no files".to_owned(),
        }
        .into());
    }
    let mut slices = Vec::new();
    for path in &paths {
        if let Some(slice) = load(path, true)? {
            slices.push(slice);
        }
    }
    series(dir, slices, paths.len())
}

/// Reads a DICOM image series from files held in memory, given as `(name, bytes)` pairs, exactly
/// as [`read_dicom_series`] reads the files of a directory: files without the Part 10 preamble
/// and DICOMDIRs are skipped, the rest must form one series on a regular grid. The names only
/// label the files in errors (and do not decide the slice order); the set is named
/// `<in memory>`.
///
/// Whatever the bytes, the result is a volume or an error, never a panic; no value length in a
/// file is trusted beyond the file's size, and volumes above
/// [`MAX_VOXELS`](crate::volume::MAX_VOXELS) are refused.
pub fn read_dicom_series_bytes<N, B>(
    files: impl IntoIterator<Item = (N, B)>,
) -> Result<Volume, Error>
where
    N: AsRef<Path>,
    B: AsRef<[u8]>,
{
    let mut slices = Vec::new();
    let mut count = 0;
    for (name, bytes) in files {
        count += 1;
        if let Some(slice) = load_bytes(name.as_ref(), bytes.as_ref(), true)? {
            slices.push(slice);
        }
    }
    let dir = Path::new(crate::volume::IN_MEMORY);
    if count == 0 {
        return Err(ErrorKind::DicomEmpty {
            dir: dir.to_owned(),
            reason: "no files were given".to_owned(),
        }
        .into());
    }
    series(dir, slices, count)
}

/// The checks shared by the series readers once every file is decoded: at least one image, one
/// Series Instance UID; then the grid is assembled. `files` is how many files were looked at.
fn series(dir: &Path, slices: Vec<Slice>, files: usize) -> Result<Volume, Error> {
    if slices.is_empty() {
        return Err(ErrorKind::DicomEmpty {
            dir: dir.to_owned(),
            reason: format!(
                "none of its {files} files is a DICOM image (no \"DICM\" magic at byte 128, or a \
                 DICOMDIR)"
            ),
        }
        .into());
    }
    let mut series: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &slices {
        *series.entry(&s.series_uid).or_default() += 1;
    }
    if series.len() > 1 {
        return Err(ErrorKind::DicomMultipleSeries {
            dir: dir.to_owned(),
            series: series
                .iter()
                .map(|(uid, n)| {
                    let uid = if uid.is_empty() { "(none)" } else { uid };
                    format!("{uid} ({n} file{})", if *n == 1 { "" } else { "s" })
                })
                .collect(),
        }
        .into());
    }
    assemble(slices)
}

/// Reads one DICOM image file held in memory as a volume of one slice, exactly as
/// [`read_dicom_file`] reads a file; errors name it `<in memory>`. Never panics, whatever the
/// bytes.
pub fn read_dicom_bytes(bytes: &[u8]) -> Result<Volume, Error> {
    single(
        Path::new(crate::volume::IN_MEMORY),
        load_bytes(Path::new(crate::volume::IN_MEMORY), bytes, false)?,
    )
}

/// Reads one DICOM image file as a volume of one slice.
///
/// The slice thickness of the volume (its third affine column, along the slice normal) is
/// *Spacing Between Slices*, else *Slice Thickness*, else 1 mm. See the
/// [module documentation](self) for the conventions.
pub fn read_dicom_file(path: &Path) -> Result<Volume, Error> {
    single(path, load(path, false)?)
}

fn single(path: &Path, slice: Option<Slice>) -> Result<Volume, Error> {
    match slice {
        Some(slice) => assemble(vec![slice]),
        // `load` only skips files when reading a series.
        None => Err(ErrorKind::NotDicom {
            path: path.to_owned(),
            reason: "not a DICOM image".to_owned(),
        }
        .into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The LPS-millimetre geometry shared by all slices of a written series.
#[derive(Debug)]
struct WriteGeometry {
    rows: u16,
    columns: u16,
    /// Unit LPS direction of increasing `i`, then of increasing `j`.
    row_cos: Vector3<f64>,
    col_cos: Vector3<f64>,
    normal: Vector3<f64>,
    /// LPS mm of voxel (0, 0, 0) and the step from one slice to the next.
    origin: Vector3<f64>,
    step: Vector3<f64>,
    /// Spacing along i, j, k in mm.
    spacing: [f64; 3],
}

/// RAS ↔ LPS (the same flip both ways).
fn flip_xy(v: &Vector3<f64>) -> Vector3<f64> {
    Vector3::new(-v.x, -v.y, v.z)
}

impl WriteGeometry {
    fn of(volume: &Volume) -> Result<Self, String> {
        let [ni, nj, nk] = volume.dims();
        let (Some(columns), Some(rows)) = (
            u16::try_from(ni).ok().filter(|&n| n > 0),
            u16::try_from(nj).ok().filter(|&n| n > 0),
        ) else {
            return Err(format!(
                "dimensions {:?}: the in-slice sizes must be between 1 and {}",
                volume.dims(),
                u16::MAX
            ));
        };
        if nk == 0 {
            return Err(format!("dimensions {:?}: no slices", volume.dims()));
        }
        let (linear, origin) = volume.affine();
        let spacing = volume.spacing();
        let unit: [Vector3<f64>; 3] =
            std::array::from_fn(|c| linear.column(c).into_owned() / spacing[c]);
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let cos = unit[a].dot(&unit[b]);
            if cos.abs() > WRITE_ORTHOGONALITY_TOL {
                return Err(format!(
                    "the volume's index axes {} and {} are not orthogonal (angle {:.4}°): DICOM \
                     slices need orthogonal row, column and slice directions",
                    ["i", "j", "k"][a],
                    ["i", "j", "k"][b],
                    cos.clamp(-1.0, 1.0).acos().to_degrees()
                ));
            }
        }
        let row_cos = flip_xy(&unit[0]);
        let col_cos = flip_xy(&unit[1]);
        Ok(Self {
            rows,
            columns,
            row_cos,
            col_cos,
            normal: row_cos.cross(&col_cos),
            origin: flip_xy(origin) * 1000.0,
            step: flip_xy(&linear.column(2).into_owned()) * 1000.0,
            spacing: spacing.map(|s| s * 1000.0),
        })
    }
}

/// A decimal string (DS) of at most 16 characters as close to `v` as that allows.
fn ds(v: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    let plain = format!("{v}");
    if plain.len() <= 16 {
        return plain;
    }
    let err = |s: &str| s.parse::<f64>().map_or(f64::INFINITY, |x| (x - v).abs());
    let int_len = format!("{:.0}", v.abs().trunc()).len() + usize::from(v < 0.0);
    let fixed = (int_len <= 14).then(|| {
        let decimals = 15 - int_len;
        let s = format!("{v:.decimals$}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".to_owned()
        } else {
            s.to_owned()
        }
    });
    let exp = (0..=15)
        .rev()
        .map(|p| format!("{v:.p$e}"))
        .find(|s| s.len() <= 16)
        .unwrap_or_else(|| "0".to_owned());
    match fixed {
        Some(f) if err(&f) <= err(&exp) => f,
        _ => exp,
    }
}

/// splitmix64: a fixed, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a derived UID identifies.
#[derive(Clone, Copy, Debug)]
enum UidRole {
    Study = 1,
    Series = 2,
    FrameOfReference = 3,
    Instance = 4,
    Implementation = 5,
}

/// A `2.25.<decimal>` UID (ISO/IEC 9834-8) from a name-based 128-bit value shaped like a UUID of
/// version 8 (custom), derived from `seed`, `role` and `index`: deterministic, at most 44
/// characters.
fn derived_uid(seed: u64, role: UidRole, index: u64) -> String {
    let a = mix(seed ^ mix((role as u64) ^ mix(index)));
    let b = mix(a ^ 0x7E1E_C40D_1C0A_u64);
    let mut v = (u128::from(a) << 64) | u128::from(b);
    v = (v & !(0xF_u128 << 76)) | (0x8_u128 << 76); // version 8
    v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62); // RFC 4122 variant
    format!("2.25.{v}")
}

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    let value = if value.is_empty() {
        PrimitiveValue::Empty
    } else {
        PrimitiveValue::from(value)
    };
    DataElement::new(tag, vr, value)
}

fn decimals(tag: Tag, values: &[f64]) -> InMemElement {
    DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(values.iter().map(|&v| ds(v)).collect()),
    )
}

fn ushort(tag: Tag, value: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// The complete Part 10 file of slice `k`.
fn encode_slice(
    volume: &Volume,
    g: &WriteGeometry,
    info: &SeriesInfo,
    k: usize,
) -> Result<Vec<u8>, String> {
    let seed = info.uid_seed;
    let series = u64::from(info.series_number);
    let sop_instance = derived_uid(seed, UidRole::Instance, (series << 32) | k as u64);
    let position = g.origin + g.step * k as f64;
    let plane = usize::from(g.rows) * usize::from(g.columns);
    let voxels = volume
        .data()
        .get(k * plane..(k + 1) * plane)
        .ok_or_else(|| {
            format!("slice {k} lies outside the volume data") // unreachable for a valid Volume
        })?;
    let mut pixels = Vec::with_capacity(2 * plane);
    for &v in voxels {
        // Exactly as `write_nifti`: `as` saturates to the i16 range and maps NaN to 0.
        pixels.extend((v.round() as i16).to_le_bytes());
    }
    let instance_number = i32::try_from(k + 1)
        .map_err(|_| format!("{} slices are more than DICOM can number", k + 1))?;
    let elements = vec![
        text(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\AXIAL"),
        text(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_instance),
        text(tags::STUDY_DATE, VR::DA, &info.study_date),
        text(tags::SERIES_DATE, VR::DA, &info.study_date),
        text(tags::STUDY_TIME, VR::TM, ""),
        text(tags::ACCESSION_NUMBER, VR::SH, ""),
        text(tags::MODALITY, VR::CS, "CT"),
        text(tags::MANUFACTURER, VR::LO, "telecho"),
        text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""),
        text(tags::STUDY_DESCRIPTION, VR::LO, &info.study_description),
        text(tags::SERIES_DESCRIPTION, VR::LO, &info.series_description),
        text(
            tags::MANUFACTURER_MODEL_NAME,
            VR::LO,
            "telecho simulated CBCT",
        ),
        text(tags::PATIENT_NAME, VR::PN, &info.patient_name),
        text(tags::PATIENT_ID, VR::LO, &info.patient_id),
        text(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
        text(tags::PATIENT_SEX, VR::CS, ""),
        decimals(tags::SLICE_THICKNESS, &[g.spacing[2]]),
        text(tags::KVP, VR::DS, ""),
        decimals(tags::SPACING_BETWEEN_SLICES, &[g.spacing[2]]),
        text(tags::PATIENT_POSITION, VR::CS, &info.patient_position),
        text(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &derived_uid(seed, UidRole::Study, 0),
        ),
        text(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &derived_uid(seed, UidRole::Series, series),
        ),
        text(tags::STUDY_ID, VR::SH, ""),
        text(tags::SERIES_NUMBER, VR::IS, &info.series_number.to_string()),
        text(tags::INSTANCE_NUMBER, VR::IS, &instance_number.to_string()),
        decimals(tags::IMAGE_POSITION_PATIENT, position.as_slice()),
        decimals(
            tags::IMAGE_ORIENTATION_PATIENT,
            &[
                g.row_cos.x,
                g.row_cos.y,
                g.row_cos.z,
                g.col_cos.x,
                g.col_cos.y,
                g.col_cos.z,
            ],
        ),
        text(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &derived_uid(seed, UidRole::FrameOfReference, 0),
        ),
        text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        decimals(tags::SLICE_LOCATION, &[g.normal.dot(&position)]),
        ushort(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        ushort(tags::ROWS, g.rows),
        ushort(tags::COLUMNS, g.columns),
        decimals(tags::PIXEL_SPACING, &[g.spacing[1], g.spacing[0]]),
        ushort(tags::BITS_ALLOCATED, 16),
        ushort(tags::BITS_STORED, 16),
        ushort(tags::HIGH_BIT, 15),
        ushort(tags::PIXEL_REPRESENTATION, 1),
        decimals(tags::WINDOW_CENTER, &[info.window_center_hu]),
        decimals(tags::WINDOW_WIDTH, &[info.window_width_hu]),
        decimals(tags::RESCALE_INTERCEPT, &[0.0]),
        decimals(tags::RESCALE_SLOPE, &[1.0]),
        text(tags::RESCALE_TYPE, VR::LO, "HU"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)),
    ];
    let object = InMemDicomObject::from_element_iter(elements);
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(derived_uid(0, UidRole::Implementation, 0))
                .implementation_version_name(IMPLEMENTATION_VERSION),
        )
        .map_err(|e| format!("file meta group: {}", error_chain(&e)))?;
    let mut bytes = Vec::with_capacity(2 * plane + 2048);
    file.write_all(&mut bytes)
        .map_err(|e| format!("encoding slice {k}: {}", error_chain(&e)))?;
    Ok(bytes)
}

/// Removes `slice_<digits>.dcm` files in `dir` that are not among `written`.
fn remove_stale_slices(dir: &Path, written: &[PathBuf]) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ErrorKind::DicomIo { path, source }
    };
    let keep: BTreeSet<&Path> = written.iter().map(PathBuf::as_path).collect();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_slice = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("slice_"))
            .and_then(|n| n.strip_suffix(".dcm"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if is_slice && path.is_file() && !keep.contains(path.as_path()) {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// `error: cause: cause …` on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Reading

/// One decoded image file.
#[derive(Debug)]
struct Slice {
    path: PathBuf,
    series_uid: String,
    rows: u16,
    columns: u16,
    /// Unit LPS cosines of increasing column index and of increasing row index.
    row_cos: Vector3<f64>,
    col_cos: Vector3<f64>,
    /// Pixel Spacing: [between rows, between columns] in mm.
    pixel_spacing: [f64; 2],
    /// Image Position (Patient), LPS mm.
    position: Vector3<f64>,
    /// Spacing Between Slices, else Slice Thickness (mm), when present and positive.
    thickness: Option<f64>,
    instance: Option<i64>,
    /// Rescaled values, row by row.
    pixels: Vec<f32>,
}

/// Human-readable name of a tag: `Rows (0028,0010)`.
fn label(tag: Tag) -> String {
    match StandardDataDictionary.by_tag(tag) {
        Some(entry) => format!("{} {tag}", entry.alias()),
        None => tag.to_string(),
    }
}

/// Name of a transfer syntax UID, for error messages.
fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless, First-Order Prediction",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.4.92" => "JPEG 2000 Part 2 Multi-component (Lossless Only)",
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 (Lossless Only)",
        "1.2.840.10008.1.2.4.202" => "High-Throughput JPEG 2000 with RPCL Options (Lossless Only)",
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        u if u.starts_with("1.2.840.10008.1.2.4.10") => "MPEG video",
        _ => "unknown",
    }
}

/// Reads and decodes one file. `Ok(None)` when reading a series and the file is to be skipped
/// (no Part 10 preamble, or a DICOMDIR).
fn load(path: &Path, in_series: bool) -> Result<Option<Slice>, Error> {
    let bytes = std::fs::read(path).map_err(|source| ErrorKind::DicomIo {
        path: path.to_owned(),
        source,
    })?;
    load_bytes(path, &bytes, in_series)
}

/// Decodes one file's bytes; `path` names it in errors.
fn load_bytes(path: &Path, bytes: &[u8], in_series: bool) -> Result<Option<Slice>, Error> {
    let not_dicom = |reason: String| -> Error {
        ErrorKind::NotDicom {
            path: path.to_owned(),
            reason,
        }
        .into()
    };
    let Some(after_preamble) = bytes.get(128..).filter(|b| b.starts_with(b"DICM")) else {
        return if in_series {
            Ok(None)
        } else {
            Err(not_dicom(
                "no \"DICM\" magic at byte 128 (not a DICOM Part 10 file)".to_owned(),
            ))
        };
    };
    // The parser allocates each value's declared length before reading it: bound every length
    // by the file size first, so that a corrupt length is an error and not gigabytes of memory.
    let dataset_start = check_meta_lengths(bytes).map_err(&not_dicom)?;
    let meta = FileMetaTable::from_reader(after_preamble)
        .map_err(|e| not_dicom(format!("bad file meta group: {}", error_chain(&e))))?;
    if meta.media_storage_sop_class_uid() == uids::MEDIA_STORAGE_DIRECTORY_STORAGE {
        return if in_series {
            Ok(None)
        } else {
            Err(ErrorKind::DicomUnsupported {
                path: path.to_owned(),
                what: "a DICOMDIR (media directory, not an image)".to_owned(),
            }
            .into())
        };
    }
    let ts = meta.transfer_syntax();
    if ts != uids::EXPLICIT_VR_LITTLE_ENDIAN && ts != uids::IMPLICIT_VR_LITTLE_ENDIAN {
        return Err(ErrorKind::DicomTransferSyntax {
            path: path.to_owned(),
            uid: ts.to_owned(),
            name: transfer_syntax_name(ts),
        }
        .into());
    }
    if let Some(start) = dataset_start {
        let explicit = ts == uids::EXPLICIT_VR_LITTLE_ENDIAN;
        check_dataset_lengths(bytes, start, explicit).map_err(&not_dicom)?;
    }
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| not_dicom(format!("truncated or corrupt ({})", error_chain(&e))))?;
    Attributes {
        path,
        object: &object,
    }
    .slice()
    .map(Some)
}

/// An element header as the DICOM parser reads it.
#[derive(Clone, Copy, Debug)]
struct Header {
    tag: Tag,
    /// Explicit VR bytes; `None` for implicit VR and for item/delimiter tags.
    vr: Option<[u8; 2]>,
    len: u32,
    /// Header size in bytes.
    size: usize,
}

/// Undefined length.
const UNDEFINED: u32 = 0xFFFF_FFFF;

fn u16_at(d: &[u8], p: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(p..p + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], p: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(p..p + 4)?.try_into().ok()?))
}

/// The little-endian element header at `p`, `None` when the data ends first.
fn header_at(d: &[u8], p: usize, explicit: bool) -> Option<Header> {
    let tag = Tag(u16_at(d, p)?, u16_at(d, p + 2)?);
    if !explicit || tag.0 == 0xFFFE {
        return Some(Header {
            tag,
            vr: None,
            len: u32_at(d, p + 4)?,
            size: 8,
        });
    }
    let vr = [*d.get(p + 4)?, *d.get(p + 5)?];
    // PS3.5 7.1.2: these VRs have a 16-bit length; all others (and unknown ones) a reserved
    // field and a 32-bit length.
    const SHORT: [&[u8; 2]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    Some(if SHORT.contains(&&vr) {
        Header {
            tag,
            vr: Some(vr),
            len: u32::from(u16_at(d, p + 6)?),
            size: 8,
        }
    } else {
        Header {
            tag,
            vr: Some(vr),
            len: u32_at(d, p + 8)?,
            size: 12,
        }
    })
}

/// An error when a value of `len` bytes at `p` runs past the end of `d`.
fn check_fits(d: &[u8], p: usize, len: u32, tag: Tag) -> Result<(), String> {
    let remaining = d.len().saturating_sub(p);
    if len as usize > remaining {
        return Err(format!(
            "element {tag} claims {len} bytes but only {remaining} remain (truncated or corrupt)"
        ));
    }
    Ok(())
}

/// Checks the value lengths of the file meta group (explicit VR little endian, after the
/// preamble and magic) and returns where the data set starts, as the meta-group parser finds it;
/// `None` when the group is malformed in a way the parser will report itself.
fn check_meta_lengths(d: &[u8]) -> Result<Option<usize>, String> {
    let mut p = 132;
    let Some(first) = header_at(d, p, true) else {
        return Ok(None);
    };
    if first.tag != Tag(0x0002, 0x0000) || first.len != 4 {
        return Ok(None);
    }
    let Some(group_length) = u32_at(d, p + first.size) else {
        return Ok(None);
    };
    p += first.size + 4;
    let mut read = 0usize;
    while read < group_length as usize {
        let Some(h) = header_at(d, p, true) else {
            return Ok(None);
        };
        if h.len == UNDEFINED {
            return Ok(None);
        }
        check_fits(d, p + h.size, h.len, h.tag)?;
        p += h.size + h.len as usize;
        read += h.size + h.len as usize;
    }
    Ok(Some(p))
}

/// Walks the data set from `start` through its sequences, items and pixel fragments as the
/// parser does, and fails at the first value longer than the rest of the file. Structure the
/// parser would reject (or that ends early) stops the walk without an error.
fn check_dataset_lengths(d: &[u8], start: usize, explicit: bool) -> Result<(), String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Open {
        Sequence,
        Item,
        Fragments,
    }
    // Open containers and where they end (`None`: at their delimiter).
    let mut stack: Vec<(Open, Option<usize>)> = Vec::new();
    let mut p = start;
    loop {
        while let Some(&(_, Some(end))) = stack.last() {
            if p < end {
                break;
            }
            stack.pop();
        }
        let top = stack.last().map(|&(open, _)| open);
        let in_sequence = matches!(top, Some(Open::Sequence | Open::Fragments));
        let Some(h) = header_at(d, p, explicit && !in_sequence) else {
            return Ok(());
        };
        if in_sequence {
            // An item header (tag and 32-bit length) or a delimiter is expected.
            p += 8;
            match (h.tag.0, h.tag.1, top) {
                (0xFFFE, 0xE000, Some(Open::Fragments)) => {
                    check_fits(d, p, h.len, h.tag)?;
                    p += h.len as usize;
                }
                (0xFFFE, 0xE000, _) if h.len == UNDEFINED => stack.push((Open::Item, None)),
                (0xFFFE, 0xE000, _) => {
                    check_fits(d, p, h.len, h.tag)?;
                    stack.push((Open::Item, Some(p + h.len as usize)));
                }
                (0xFFFE, 0xE0DD | 0xE00D, _) => {
                    stack.pop();
                }
                _ => return Ok(()),
            }
            continue;
        }
        p += h.size;
        if h.tag == Tag(0xFFFE, 0xE00D) {
            if top == Some(Open::Item) {
                stack.pop();
            }
            continue;
        }
        let is_sequence = match h.vr {
            Some(vr) => &vr == b"SQ",
            None => {
                h.tag.0 != 0xFFFE
                    && h.tag != tags::PIXEL_DATA
                    && StandardDataDictionary
                        .by_tag(h.tag)
                        .is_some_and(|e| e.vr().relaxed() == VR::SQ)
            }
        };
        if is_sequence && h.len != UNDEFINED {
            check_fits(d, p, h.len, h.tag)?;
            stack.push((Open::Sequence, Some(p + h.len as usize)));
        } else if h.len == UNDEFINED {
            let open = if h.tag == tags::PIXEL_DATA && !is_sequence {
                Open::Fragments
            } else {
                Open::Sequence
            };
            stack.push((open, None));
        } else {
            check_fits(d, p, h.len, h.tag)?;
            let vr = parser_vr(&h, explicit);
            let size = value_size(vr);
            if !(h.len as usize).is_multiple_of(size) {
                // The parser would read whole values only and then take the next header from
                // inside this value: lengths from there on are not what this walk checked.
                return Err(format!(
                    "element {} of VR {vr} has {} bytes, not a multiple of {size}",
                    h.tag, h.len
                ));
            }
            p += h.len as usize;
        }
    }
}

/// The VR the parser gives an element outside a sequence: the VR field in explicit VR (UN when
/// unknown, and for item and delimiter tags, which have none); in implicit VR, OW for pixel and
/// overlay data, else the dictionary's VR (ambiguous ones as the parser resolves them), else UN.
fn parser_vr(h: &Header, explicit: bool) -> VR {
    if explicit {
        return h.vr.and_then(VR::from_binary).unwrap_or(VR::UN);
    }
    if h.tag == tags::PIXEL_DATA || (h.tag.0 >> 8 == 0x60 && h.tag.1 == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(h.tag)
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// Bytes per value of the VRs the parser decodes as fixed-size binary numbers; 1 for the rest
/// (text and byte strings, read whole).
fn value_size(vr: VR) -> usize {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::AT | VR::UL | VR::SL | VR::FL | VR::OL | VR::OF => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

/// Typed access to the attributes of one file, with errors naming the file and the tag.
struct Attributes<'a> {
    path: &'a Path,
    object: &'a InMemDicomObject,
}

impl Attributes<'_> {
    fn bad(&self, tag: Tag, problem: String) -> Error {
        ErrorKind::DicomBadTag {
            path: self.path.to_owned(),
            tag: label(tag),
            problem,
        }
        .into()
    }

    fn missing(&self, tag: Tag) -> Error {
        ErrorKind::DicomMissingTag {
            path: self.path.to_owned(),
            tag: label(tag),
        }
        .into()
    }

    fn unsupported(&self, what: String) -> Error {
        ErrorKind::DicomUnsupported {
            path: self.path.to_owned(),
            what,
        }
        .into()
    }

    /// The element, unless absent or empty.
    fn element(&self, tag: Tag) -> Option<&InMemElement> {
        self.object
            .get(tag)
            .filter(|e| !matches!(e.value(), Value::Primitive(PrimitiveValue::Empty)))
    }

    fn string(&self, tag: Tag) -> Option<String> {
        let s = self.element(tag)?.to_str().ok()?;
        let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// Exactly `n` finite decimal values, `None` when absent.
    fn floats(&self, tag: Tag, n: usize) -> Result<Option<Vec<f64>>, Error> {
        let Some(e) = self.element(tag) else {
            return Ok(None);
        };
        let values = e
            .to_multi_float64()
            .map_err(|err| self.bad(tag, format!("is not numeric ({err})")))?;
        if values.len() != n {
            return Err(self.bad(
                tag,
                format!("has {} values where {n} are required", values.len()),
            ));
        }
        if !values.iter().all(|v| v.is_finite()) {
            return Err(self.bad(tag, format!("is not finite: {values:?}")));
        }
        Ok(Some(values))
    }

    fn required_floats(&self, tag: Tag, n: usize) -> Result<Vec<f64>, Error> {
        self.floats(tag, n)?.ok_or_else(|| self.missing(tag))
    }

    /// A positive single value, `None` when absent, zero or negative.
    fn positive(&self, tag: Tag) -> Result<Option<f64>, Error> {
        Ok(self.floats(tag, 1)?.map(|v| v[0]).filter(|&v| v > 0.0))
    }

    fn integer(&self, tag: Tag) -> Result<Option<i64>, Error> {
        let Some(e) = self.element(tag) else {
            return Ok(None);
        };
        e.to_int::<i64>()
            .map(Some)
            .map_err(|err| self.bad(tag, format!("is not an integer ({err})")))
    }

    fn required_integer(&self, tag: Tag) -> Result<i64, Error> {
        self.integer(tag)?.ok_or_else(|| self.missing(tag))
    }

    fn slice(&self) -> Result<Slice, Error> {
        let dim = |tag| -> Result<u16, Error> {
            let v = self.required_integer(tag)?;
            u16::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| self.bad(tag, format!("is {v}, not between 1 and 65535")))
        };
        let rows = dim(tags::ROWS)?;
        let columns = dim(tags::COLUMNS)?;
        // Pixels first: an unsupported image kind says so rather than naming a missing tag.
        let pixels = self.pixels(rows, columns)?;
        let position = self.required_floats(tags::IMAGE_POSITION_PATIENT, 3)?;
        let iop = self.required_floats(tags::IMAGE_ORIENTATION_PATIENT, 6)?;
        let row_cos = Vector3::new(iop[0], iop[1], iop[2]);
        let col_cos = Vector3::new(iop[3], iop[4], iop[5]);
        if (row_cos.norm() - 1.0).abs() > COSINE_TOL
            || (col_cos.norm() - 1.0).abs() > COSINE_TOL
            || row_cos.dot(&col_cos).abs() > COSINE_TOL
        {
            return Err(self.bad(
                tags::IMAGE_ORIENTATION_PATIENT,
                format!("{iop:?} is not a pair of orthogonal unit vectors"),
            ));
        }
        let spacing = self.required_floats(tags::PIXEL_SPACING, 2)?;
        if !spacing.iter().all(|&s| s > 0.0) {
            return Err(self.bad(tags::PIXEL_SPACING, format!("{spacing:?} is not positive")));
        }
        let thickness = match self.positive(tags::SPACING_BETWEEN_SLICES)? {
            Some(s) => Some(s),
            None => self.positive(tags::SLICE_THICKNESS)?,
        };
        Ok(Slice {
            path: self.path.to_owned(),
            series_uid: self.string(tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            rows,
            columns,
            row_cos: row_cos.normalize(),
            col_cos: col_cos.normalize(),
            pixel_spacing: [spacing[0], spacing[1]],
            position: Vector3::new(position[0], position[1], position[2]),
            thickness,
            // Only used to orient the slice axis: an unreadable one is ignored.
            instance: self.integer(tags::INSTANCE_NUMBER).ok().flatten(),
            pixels,
        })
    }

    /// The pixel values after Bits Stored masking, sign extension and rescaling, row by row.
    fn pixels(&self, rows: u16, columns: u16) -> Result<Vec<f32>, Error> {
        let samples = self.integer(tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
        if samples != 1 {
            return Err(self.unsupported(format!("{samples} samples per pixel (colour)")));
        }
        if let Some(p) = self.string(tags::PHOTOMETRIC_INTERPRETATION) {
            if !p.starts_with("MONOCHROME") {
                return Err(self.unsupported(format!("Photometric Interpretation {p}")));
            }
        }
        if let Some(frames) = self.integer(tags::NUMBER_OF_FRAMES)? {
            if frames > 1 {
                return Err(self.unsupported(format!("a multi-frame image ({frames} frames)")));
            }
        }
        let allocated = self.required_integer(tags::BITS_ALLOCATED)?;
        let bits = match allocated {
            8 => 8u16,
            16 => 16,
            32 => 32,
            _ => {
                return Err(self.unsupported(format!(
                    "Bits Allocated {allocated} (only 8, 16 and 32 are)"
                )))
            }
        };
        let stored = self.integer(tags::BITS_STORED)?.unwrap_or(allocated);
        if !(1..=allocated).contains(&stored) {
            return Err(self.bad(
                tags::BITS_STORED,
                format!("is {stored}, not between 1 and Bits Allocated ({allocated})"),
            ));
        }
        let signed = match self.required_integer(tags::PIXEL_REPRESENTATION)? {
            0 => false,
            1 => true,
            other => {
                return Err(self.bad(
                    tags::PIXEL_REPRESENTATION,
                    format!("is {other}, not 0 (unsigned) or 1 (signed)"),
                ))
            }
        };
        let slope = self.floats(tags::RESCALE_SLOPE, 1)?.map_or(1.0, |v| v[0]);
        if slope == 0.0 {
            return Err(self.bad(tags::RESCALE_SLOPE, "is zero".to_owned()));
        }
        let intercept = self
            .floats(tags::RESCALE_INTERCEPT, 1)?
            .map_or(0.0, |v| v[0]);

        let element = self
            .element(tags::PIXEL_DATA)
            .ok_or_else(|| self.missing(tags::PIXEL_DATA))?;
        let raw: Vec<u8> = match element.value() {
            Value::Primitive(PrimitiveValue::U8(b)) => b.to_vec(),
            Value::Primitive(PrimitiveValue::U16(w)) => {
                w.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            Value::Primitive(PrimitiveValue::I16(w)) => {
                w.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            Value::PixelSequence(_) => {
                return Err(self.unsupported("encapsulated (compressed) pixel data".to_owned()))
            }
            _ => {
                return Err(self.bad(
                    tags::PIXEL_DATA,
                    "does not hold native pixel bytes".to_owned(),
                ))
            }
        };
        let count = crate::volume::checked_voxel_count(
            self.path,
            [usize::from(columns), usize::from(rows), 1],
        )?;
        let size = usize::from(bits / 8);
        let expected = count * size;
        if raw.len() < expected {
            return Err(ErrorKind::DicomPixelLength {
                path: self.path.to_owned(),
                rows,
                columns,
                bits,
                expected,
                found: raw.len(),
            }
            .into());
        }
        // 1 ≤ stored ≤ 32 was checked above.
        let stored = stored as u32;
        let mask: u64 = (1u64 << stored) - 1;
        let sign_bit: u64 = 1u64 << (stored - 1);
        let decode = |c: &[u8]| -> f64 {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            let v = u64::from_le_bytes(word) & mask;
            let v = if signed && v & sign_bit != 0 {
                v as i64 - (1i64 << stored)
            } else {
                v as i64
            };
            v as f64 * slope + intercept
        };
        Ok(raw[..expected]
            .chunks_exact(size)
            .map(|c| decode(c) as f32)
            .collect())
    }
}

/// `(x, y, z)` with six decimals.
fn fmt_vec(v: &Vector3<f64>) -> String {
    format!("({:.6}, {:.6}, {:.6})", v.x, v.y, v.z)
}

/// Checks that the slices form one regular grid and stacks them into a volume.
fn assemble(mut slices: Vec<Slice>) -> Result<Volume, Error> {
    let Some(first) = slices.first() else {
        // Callers never pass an empty list.
        return Err(ErrorKind::DicomEmpty {
            dir: PathBuf::new(),
            reason: "no slices".to_owned(),
        }
        .into());
    };
    let geometry = |s: &Slice, reason: String| -> Error {
        ErrorKind::DicomGeometry {
            path: s.path.clone(),
            reference: first.path.clone(),
            reason,
        }
        .into()
    };
    for s in &slices[1..] {
        if (s.rows, s.columns) != (first.rows, first.columns) {
            return Err(geometry(
                s,
                format!(
                    "Rows × Columns {} × {} instead of {} × {}",
                    s.rows, s.columns, first.rows, first.columns
                ),
            ));
        }
        let dev = (s.row_cos - first.row_cos)
            .abs()
            .max()
            .max((s.col_cos - first.col_cos).abs().max());
        if dev > ORIENTATION_TOL {
            return Err(geometry(
                s,
                format!(
                    "Image Orientation (Patient) {} {} instead of {} {}",
                    fmt_vec(&s.row_cos),
                    fmt_vec(&s.col_cos),
                    fmt_vec(&first.row_cos),
                    fmt_vec(&first.col_cos)
                ),
            ));
        }
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1.0);
        if !(same(s.pixel_spacing[0], first.pixel_spacing[0])
            && same(s.pixel_spacing[1], first.pixel_spacing[1]))
        {
            return Err(geometry(
                s,
                format!(
                    "Pixel Spacing {:?} mm instead of {:?} mm",
                    s.pixel_spacing, first.pixel_spacing
                ),
            ));
        }
    }
    let normal = first.row_cos.cross(&first.col_cos);
    let thickness = first.thickness;
    let along = |s: &Slice| normal.dot(&s.position);
    slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
    let n = slices.len();
    let step = if n > 1 {
        let gaps: Vec<f64> = slices
            .windows(2)
            .map(|w| along(&w[1]) - along(&w[0]))
            .collect();
        for (w, &gap) in slices.windows(2).zip(&gaps) {
            if gap < POSITION_TOL_MM {
                return Err(ErrorKind::DicomDuplicate {
                    a: w[0].path.clone(),
                    b: w[1].path.clone(),
                    position_mm: along(&w[0]),
                }
                .into());
            }
        }
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let tol = POSITION_TOL_MM.max(SPACING_TOL_REL * median);
        for (w, &gap) in slices.windows(2).zip(&gaps) {
            if (gap - median).abs() > tol {
                return Err(ErrorKind::DicomSpacing {
                    a: w[0].path.clone(),
                    b: w[1].path.clone(),
                    gap_mm: gap,
                    expected_mm: median,
                }
                .into());
            }
        }
        // k follows the instance numbers when they all run against the sorted positions.
        let instances: Option<Vec<i64>> = slices.iter().map(|s| s.instance).collect();
        if instances.is_some_and(|v| v.windows(2).all(|w| w[1] < w[0])) {
            slices.reverse();
        }
        let (p0, pn) = (&slices[0].position, &slices[n - 1].position);
        let step = (pn - p0) / (n - 1) as f64;
        for (m, s) in slices.iter().enumerate() {
            let off = (s.position - (p0 + step * m as f64)).norm();
            if off > tol {
                return Err(ErrorKind::DicomGeometry {
                    path: s.path.clone(),
                    reference: slices[0].path.clone(),
                    reason: format!(
                        "its Image Position (Patient) is {off:.4} mm off the line through the \
                         first and last slices"
                    ),
                }
                .into());
            }
        }
        step
    } else {
        normal * thickness.unwrap_or(1.0)
    };
    let first = &slices[0];
    let [row_spacing, col_spacing] = first.pixel_spacing;
    let linear = Matrix3::from_columns(&[
        flip_xy(&first.row_cos) * (col_spacing / 1000.0),
        flip_xy(&first.col_cos) * (row_spacing / 1000.0),
        flip_xy(&step) / 1000.0,
    ]);
    let origin = flip_xy(&first.position) / 1000.0;
    let dims = [usize::from(first.columns), usize::from(first.rows), n];
    let mut data = Vec::with_capacity(crate::volume::checked_voxel_count(&first.path, dims)?);
    for s in &slices {
        data.extend_from_slice(&s.pixels);
    }
    Volume::new(dims, data, linear, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of a 4 × 3 × `nk` series, in slice order.
    fn series_files(nk: usize) -> (Volume, Vec<Vec<u8>>) {
        let v = Volume::from_fn([4, 3, nk], [0.8e-3, 0.8e-3, 1e-3], [0.0; 3], |i, j, k| {
            (100 * k + 10 * j + i) as f32 - 1000.0
        })
        .unwrap();
        let g = WriteGeometry::of(&v).unwrap();
        let info = SeriesInfo::default();
        let files = (0..nk)
            .map(|k| encode_slice(&v, &g, &info, k).unwrap())
            .collect();
        (v, files)
    }

    /// Position of the value of the explicit-VR `US` element `tag` (its first occurrence).
    fn us_value_at(file: &[u8], tag: Tag) -> usize {
        let mut header = Vec::new();
        header.extend(tag.0.to_le_bytes());
        header.extend(tag.1.to_le_bytes());
        header.extend(b"US\x02\x00");
        let at = file
            .windows(header.len())
            .position(|w| w == header)
            .expect("element present");
        at + header.len()
    }

    #[test]
    fn bytes_read_like_files() {
        let (v, files) = series_files(3);
        // Out of order, with a file that is not DICOM: sorted by position, the stray skipped.
        let named = [
            ("b.dcm", files[2].as_slice()),
            ("notes.txt", b"not an image".as_slice()),
            ("a.dcm", files[0].as_slice()),
            ("c.dcm", files[1].as_slice()),
        ];
        let back = read_dicom_series_bytes(named).unwrap();
        assert_eq!(back.dims(), v.dims());
        assert_eq!(back.data(), v.data());
        assert!((back.affine().0 - v.affine().0).abs().max() < 1e-9);

        let one = read_dicom_bytes(&files[1]).unwrap();
        assert_eq!(one.dims(), [4, 3, 1]);
        assert_eq!(one.get(3, 2, 0), v.get(3, 2, 1));

        let msg = read_dicom_series_bytes(Vec::<(&str, &[u8])>::new())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("<in memory>") && msg.contains("no files"),
            "{msg}"
        );
        let msg = read_dicom_series_bytes([("x", b"nothing")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("none of its 1 files"), "{msg}");
        let msg = read_dicom_bytes(b"nothing").unwrap_err().to_string();
        assert!(msg.contains("<in memory>") && msg.contains("DICM"), "{msg}");
        // A file name in an error is the name it was given.
        let mut cut = files[0].clone();
        cut.truncate(cut.len() - 10);
        let msg = read_dicom_series_bytes([("cut.dcm", cut)])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cut.dcm"), "{msg}");
    }

    #[test]
    fn oversized_slice_is_refused() {
        // 65535 × 65535 pixels declared (above MAX_VOXELS) with 12 present.
        let (_, files) = series_files(1);
        let mut f = files[0].clone();
        for tag in [tags::ROWS, tags::COLUMNS] {
            let at = us_value_at(&f, tag);
            f[at..at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
        }
        let msg = read_dicom_bytes(&f).unwrap_err().to_string();
        assert!(
            msg.contains("65535 × 65535 × 1") && msg.contains("1024³"),
            "{msg}"
        );
    }

    /// A Part 10 file: preamble, magic, a file meta group naming `transfer_syntax`, `dataset`.
    fn part10(transfer_syntax: &str, dataset: &[u8]) -> Vec<u8> {
        let mut ts = transfer_syntax.as_bytes().to_vec();
        if ts.len() % 2 == 1 {
            ts.push(0);
        }
        let mut meta = Vec::new();
        meta.extend([0x02, 0x00, 0x10, 0x00]);
        meta.extend(b"UI");
        meta.extend((ts.len() as u16).to_le_bytes());
        meta.extend(&ts);
        let mut f = vec![0u8; 128];
        f.extend(b"DICM");
        f.extend([0x02, 0x00, 0x00, 0x00]);
        f.extend(b"UL");
        f.extend(4u16.to_le_bytes());
        f.extend((meta.len() as u32).to_le_bytes());
        f.extend(meta);
        f.extend(dataset);
        f
    }

    /// Found by the `dicom` fuzz target: the parser reads a binary value (UL, US, …) as whole
    /// numbers only, so a length that is not a multiple of the value size leaves it reading the
    /// next header from inside that value, where a length of 4 GiB was waiting; the length
    /// check walked the elements as declared and never saw it. Now such a length is an error
    /// before the parser runs.
    #[test]
    fn binary_value_length_not_a_multiple_is_refused() {
        // Implicit VR: Group Length (0008,0000) is UL; 6 bytes. Read as one UL, the parser would
        // take (0009,0010), a private creator (LO), with 0xFFFFFF00 bytes from the rest.
        let mut ds = Vec::new();
        ds.extend([0x08, 0x00, 0x00, 0x00, 6, 0, 0, 0]);
        ds.extend([0, 0, 0, 0, 0x09, 0x00]);
        ds.extend([0x10, 0x00, 0x00, 0xFF, 0xFF, 0xFF]);
        let msg = read_dicom_bytes(&part10(uids::IMPLICIT_VR_LITTLE_ENDIAN, &ds))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("(0008,0000) of VR UL has 6 bytes, not a multiple of 4"),
            "{msg}"
        );

        // Explicit VR: Rows (US) with 3 bytes.
        let mut ds = Vec::new();
        ds.extend([0x28, 0x00, 0x10, 0x00]);
        ds.extend(b"US");
        ds.extend(3u16.to_le_bytes());
        ds.extend([1, 0, 0x30]);
        ds.extend([0xFF; 12]);
        let msg = read_dicom_bytes(&part10(uids::EXPLICIT_VR_LITTLE_ENDIAN, &ds))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("(0028,0010) of VR US has 3 bytes"), "{msg}");
    }

    #[test]
    fn ds_fits_sixteen_characters_and_is_close() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.7,
            0.7000000000000001,
            -123.45678901234567,
            1.0 / 3.0,
            -2.0 / 3.0,
            1e-17,
            -3.2e-9,
            6.02e23,
            -1.5e300,
            99_999_999_999_999.9,
        ] {
            let s = ds(v);
            assert!(s.len() <= 16, "{v} → {s:?}");
            let back: f64 = s.parse().unwrap();
            let tol = 1e-13 * v.abs().max(1.0);
            assert!((back - v).abs() <= tol, "{v} → {s:?}");
            assert_ne!(s, "-0");
        }
        assert_eq!(ds(0.7000000000000001), "0.7");
        assert_eq!(ds(-0.0), "0");
    }

    #[test]
    fn derived_uids_are_valid_and_distinct() {
        let mut seen = BTreeSet::new();
        for seed in [0, 1, u64::MAX] {
            for role in [UidRole::Study, UidRole::Series, UidRole::Instance] {
                for index in 0..50 {
                    let uid = derived_uid(seed, role, index);
                    assert!(uid.len() <= 64 && uid.starts_with("2.25."), "{uid}");
                    let digits = &uid[5..];
                    assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                    assert!(!digits.starts_with('0'));
                    assert!(seen.insert(uid));
                }
            }
        }
        assert_eq!(
            derived_uid(7, UidRole::Series, 1),
            derived_uid(7, UidRole::Series, 1)
        );
    }
}
