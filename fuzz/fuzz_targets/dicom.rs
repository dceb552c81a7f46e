//! DICOM CT loading from memory: any bytes give a volume or an error, never a panic, and no
//! value length or image size in a file makes the reader allocate beyond the input and the
//! volume bound. An input is one file, read as a single image, or several files joined by
//! `SEPARATOR`, read as a series (sorting, grid checks, series grouping).
#![no_main]

use libfuzzer_sys::fuzz_target;
use telecho_perception::dicom::{read_dicom_bytes, read_dicom_series_bytes};
use telecho_perception::volume::{Volume, MAX_VOXELS};

/// Joins the files of a series in one input (seeds in corpus/dicom use it too).
const SEPARATOR: &[u8] = b"\0NEXTFILE\0";
/// More files than any seed; keeps one input from becoming thousands of empty files.
const MAX_FILES: usize = 32;

fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    while files.len() + 1 < MAX_FILES {
        match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                files.push(&data[..at]);
                data = &data[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    files.push(data);
    files
}

fn check(v: &Volume) {
    let [ni, nj, nk] = v.dims();
    assert!(ni >= 1 && nj >= 1 && nk >= 1);
    assert_eq!(ni * nj * nk, v.data().len());
    assert!(v.data().len() <= MAX_VOXELS);
    let (linear, origin) = v.affine();
    assert!(linear.iter().chain(origin.iter()).all(|x| x.is_finite()));
}

fuzz_target!(|data: &[u8]| {
    let files = split(data);
    let result = if let [one] = files[..] {
        read_dicom_bytes(one)
    } else {
        read_dicom_series_bytes(
            files
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("slice_{i}.dcm"), f)),
        )
    };
    if let Ok(v) = result {
        check(&v);
    }
});
