//! One entry point for CT/CBCT volumes whatever their container: [`load_ct`].
//!
//! The container is recognised from the content, not the name:
//!
//! * a **directory** is read as one DICOM image series ([`read_dicom_series`]);
//! * a **file** starting with the gzip magic or holding a NIfTI-1 header (`sizeof_hdr` = 348 and
//!   the `n+1`/`ni1` magic at byte 344) is read as NIfTI ([`read_nifti`]);
//! * a **file** with the DICOM Part 10 preamble (`DICM` at byte 128) is taken as one slice of a
//!   series and the whole series is read from its directory;
//! * anything else is an error naming the path and what was found there.
//!
//! The result is in Hounsfield units (DICOM *Rescale Slope/Intercept*, NIfTI `scl_slope/inter`
//! applied by the readers) with orientation and spacing from the headers, in RAS metres.

use std::io::Read;
use std::path::Path;

use crate::dicom::read_dicom_series;
use crate::error::ErrorKind;
use crate::io::read_nifti;
use crate::volume::Volume;
use crate::Error;

/// What a path holds, as far as [`load_ct`] is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtSource {
    /// A NIfTI-1 file, plain or gzip-compressed.
    Nifti,
    /// A directory holding one DICOM series.
    DicomDir,
    /// One DICOM file; the series is read from its directory.
    DicomFile,
}

fn err(path: &Path, reason: impl Into<String>) -> Error {
    ErrorKind::CtInput {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
    .into()
}

/// Classifies `path` by its content (see the [module documentation](self)).
pub fn detect_ct_source(path: &Path) -> Result<CtSource, Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(path, "no such file or directory")
        } else {
            err(path, e.to_string())
        }
    })?;
    if meta.is_dir() {
        return Ok(CtSource::DicomDir);
    }
    if !meta.is_file() {
        return Err(err(path, "neither a regular file nor a directory"));
    }
    let mut head = Vec::with_capacity(352);
    std::fs::File::open(path)
        .and_then(|f| f.take(352).read_to_end(&mut head))
        .map_err(|e| err(path, e.to_string()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(CtSource::Nifti);
    }
    if head.len() >= 348 {
        let le = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let be = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let magic = head.get(344..348);
        if (le == 348 || be == 348) && matches!(magic, Some(b"n+1\0") | Some(b"ni1\0")) {
            return Ok(CtSource::Nifti);
        }
    }
    if head.get(128..132) == Some(b"DICM") {
        return Ok(CtSource::DicomFile);
    }
    let what = if head.is_empty() {
        "an empty file".to_owned()
    } else if head
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "a text file".to_owned()
    } else {
        format!("{} bytes of unknown content", meta.len())
    };
    Err(err(
        path,
        format!(
            "{what}, neither a NIfTI-1 image (.nii/.nii.gz), a DICOM file (no \"DICM\" at byte \
             128) nor a directory holding a DICOM series"
        ),
    ))
}

/// Loads a CT/CBCT volume (HU, RAS metres) from a NIfTI file, a DICOM series directory, or one
/// DICOM file of a series (the series in its directory is read).
///
/// Errors name the path and the problem: a missing path, an empty directory or one without DICOM
/// images, a file of another kind, and every error of the NIfTI and DICOM readers.
pub fn load_ct(path: &Path) -> Result<Volume, Error> {
    match detect_ct_source(path)? {
        CtSource::Nifti => read_nifti(path),
        CtSource::DicomDir => read_dicom_series(path),
        CtSource::DicomFile => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => std::path::PathBuf::from("."),
            };
            read_dicom_series(&dir)
        }
    }
}
