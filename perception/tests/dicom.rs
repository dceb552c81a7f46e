//! DICOM series writing and reading: round trips against the input and against NIfTI, slice
//! order, determinism, corrupt inputs, and pydicom as the independent reader and as the source of
//! real scanner files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use nalgebra::{Matrix3, Rotation3, Unit, Vector3};
use telecho_core::peers::{missing_peer, python_output};
use telecho_perception::dicom::{
    read_dicom_file, read_dicom_series, write_dicom_series, SeriesInfo,
};
use telecho_perception::io::{read_nifti, write_nifti};
use telecho_perception::volume::Volume;

/// A scratch directory, removed when dropped unless the test is failing (kept for a look).
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

/// A fresh, unique directory under the system temp dir (not created).
fn temp_path(name: &str) -> Scratch {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = telecho_testkit::scratch(&format!("dicom-{n}-{name}"));
    std::fs::remove_dir_all(&dir).ok();
    Scratch(dir)
}

/// A fresh, unique, existing directory.
fn temp_dir(name: &str) -> Scratch {
    let dir = temp_path(name);
    std::fs::create_dir_all(&*dir).unwrap();
    dir
}

const DIMS: [usize; 3] = [9, 7, 6];
const SPACING_M: [f64; 3] = [0.8e-3, 0.7e-3, 1.2e-3];

fn value(i: usize, j: usize, k: usize) -> f32 {
    match (i, j, k) {
        (8, 6, 5) => 40_000.0,  // saturates to i16::MAX
        (0, 6, 5) => -40_000.0, // saturates to i16::MIN
        (3, 2, 1) => 12.5,      // rounds away from zero
        (4, 2, 1) => -12.5,
        (5, 5, 2) => f32::NAN, // quantises to 0
        _ => -1000.0 + 37.3 * i as f32 + 101.6 * j as f32 - 250.25 * k as f32,
    }
}

/// What every reader must give back for `value`: the int16 quantisation of `write_nifti`.
fn expected(i: usize, j: usize, k: usize) -> f32 {
    f32::from(value(i, j, k).round() as i16)
}

/// The oblique rotation of the sample volume: 35° about (1, 2, 3).
fn rotation() -> Matrix3<f64> {
    let axis = Unit::new_normalize(Vector3::new(1.0, 2.0, 3.0));
    *Rotation3::from_axis_angle(&axis, 35f64.to_radians()).matrix()
}

/// 9×7×6 voxels of 0.8/0.7/1.2 mm, rotated obliquely, origin (-12.3, 45.6, 78.9) mm; with
/// `left_handed` the k axis is flipped.
fn sample_volume(left_handed: bool) -> Volume {
    let k_sign = if left_handed { -1.0 } else { 1.0 };
    let linear = rotation()
        * Matrix3::from_diagonal(&Vector3::new(
            SPACING_M[0],
            SPACING_M[1],
            k_sign * SPACING_M[2],
        ));
    let origin = Vector3::new(-0.0123, 0.0456, 0.0789);
    let mut data = Vec::new();
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                data.push(value(i, j, k));
            }
        }
    }
    Volume::new(DIMS, data, linear, origin).unwrap()
}

fn info(seed: u64) -> SeriesInfo {
    SeriesInfo {
        patient_name: "PHANTOM^TEST".to_owned(),
        patient_id: format!("test-{seed}"),
        series_description: "dicom test".to_owned(),
        uid_seed: seed,
        ..SeriesInfo::default()
    }
}

fn assert_affine_close(a: &Volume, b: &Volume, tol: f64) {
    let (la, oa) = a.affine();
    let (lb, ob) = b.affine();
    let dl = (la - lb).abs().max();
    let d_o = (oa - ob).abs().max();
    assert!(
        dl <= tol && d_o <= tol,
        "affine differs: linear by {dl:e} m, origin by {d_o:e} m\n{la}{oa}\nvs\n{lb}{ob}"
    );
}

fn assert_same_voxels(a: &Volume, b: &Volume) {
    assert_eq!(a.dims(), b.dims());
    for (n, (x, y)) in a.data().iter().zip(b.data()).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "voxel #{n}: {x} vs {y}");
    }
}

fn assert_expected_values(v: &Volume) {
    assert_eq!(v.dims(), DIMS);
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                assert_eq!(
                    v.get(i, j, k),
                    Some(expected(i, j, k)),
                    "voxel ({i}, {j}, {k})"
                );
            }
        }
    }
}

/// The error message of a failed read, checked to contain every `needle`.
fn assert_error(result: Result<Volume, telecho_perception::Error>, needles: &[&str]) -> String {
    let msg = match result {
        Ok(v) => panic!("expected an error, read a volume of {:?}", v.dims()),
        Err(e) => e.to_string(),
    };
    eprintln!("expected error: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "{needle:?} not in error: {msg}");
    }
    msg
}

/// Writes the sample series into a fresh directory.
fn written_series(name: &str) -> (Scratch, Vec<PathBuf>) {
    let dir = temp_path(name);
    let files = write_dicom_series(&dir, &sample_volume(false), &info(7)).unwrap();
    (dir, files)
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn round_trip_matches_input_and_nifti() {
    let (dir, files) = written_series("roundtrip");
    let names: Vec<String> = files.iter().map(|p| file_name(p)).collect();
    assert_eq!(
        names,
        (0..6)
            .map(|k| format!("slice_{k:04}.dcm"))
            .collect::<Vec<_>>()
    );
    let vol = sample_volume(false);
    let back = read_dicom_series(&dir).unwrap();
    assert_expected_values(&back);
    assert_eq!(back.get(3, 2, 1), Some(13.0));
    assert_eq!(back.get(4, 2, 1), Some(-13.0));
    assert_eq!(back.get(8, 6, 5), Some(32767.0));
    assert_eq!(back.get(0, 6, 5), Some(-32768.0));
    assert_eq!(back.get(5, 5, 2), Some(0.0));
    assert_affine_close(&back, &vol, 1e-9);
    for (got, want) in back.spacing().iter().zip(SPACING_M) {
        assert!((got - want).abs() < 1e-12, "spacing {:?}", back.spacing());
    }

    // The same volume through NIfTI reads back identical voxel for voxel.
    let nii = dir.join("ct.nii.gz");
    write_nifti(&nii, &vol).unwrap();
    let from_nifti = read_nifti(&nii).unwrap();
    assert_same_voxels(&back, &from_nifti);
    assert_affine_close(&back, &from_nifti, 1e-6);
    // The non-DICOM file in the directory is skipped.
    assert_same_voxels(&read_dicom_series(&dir).unwrap(), &back);

    // One file is a one-slice volume at that slice, its third axis along the slice normal.
    let one = read_dicom_file(&files[3]).unwrap();
    assert_eq!(one.dims(), [DIMS[0], DIMS[1], 1]);
    for j in 0..DIMS[1] {
        for i in 0..DIMS[0] {
            assert_eq!(one.get(i, j, 0), Some(expected(i, j, 3)));
        }
    }
    let (lv, ov) = vol.affine();
    let (l1, o1) = one.affine();
    assert!((l1 - lv).abs().max() < 1e-9, "{l1} vs {lv}");
    let want_origin = ov + lv.column(2) * 3.0;
    assert!(
        (o1 - want_origin).abs().max() < 1e-9,
        "{o1} vs {want_origin}"
    );
}

#[test]
fn left_handed_volume_round_trips() {
    let dir = temp_path("lefthanded");
    let vol = sample_volume(true);
    write_dicom_series(&dir, &vol, &info(8)).unwrap();
    let back = read_dicom_series(&dir).unwrap();
    assert_expected_values(&back);
    assert_affine_close(&back, &vol, 1e-9);
    assert!(back.affine().0.determinant() < 0.0);
}

#[test]
fn slice_order_comes_from_positions_not_file_names() {
    let (dir, files) = written_series("order");
    let reference = read_dicom_series(&dir).unwrap();
    // Reverse the names: slice 0 becomes the last file in directory order, and mix in other
    // names, including one without an extension.
    let renamed = temp_dir("order-renamed");
    let n = files.len();
    for (k, f) in files.iter().enumerate() {
        let name = match k % 3 {
            0 => format!("IM{:04}", n - k),
            1 => format!("z_{}.dcm", n - k),
            _ => format!("a{}", n - k),
        };
        std::fs::copy(f, renamed.join(name)).unwrap();
    }
    let back = read_dicom_series(&renamed).unwrap();
    assert_same_voxels(&back, &reference);
    assert_affine_close(&back, &reference, 0.0);

    // Without instance numbers the slices still sort by position, in increasing projection on
    // the normal: for this right-handed volume, the same order.
    for f in std::fs::read_dir(&renamed).unwrap() {
        let p = f.unwrap().path();
        let mut obj = dicom_object::open_file(&p).unwrap();
        obj.remove_element(tags::INSTANCE_NUMBER);
        obj.write_to_file(&p).unwrap();
    }
    let back = read_dicom_series(&renamed).unwrap();
    assert_same_voxels(&back, &reference);
    assert_affine_close(&back, &reference, 1e-12);
}

#[test]
fn writing_is_deterministic_and_replaces_an_older_series() {
    let vol = sample_volume(false);
    let a = temp_path("det-a");
    let b = temp_path("det-b");
    let fa = write_dicom_series(&a, &vol, &info(7)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let fb = write_dicom_series(&b, &vol, &info(7)).unwrap();
    assert_eq!(fa.len(), fb.len());
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }
    // Another seed: other UIDs, same pixels.
    let c = temp_path("det-c");
    let fc = write_dicom_series(&c, &vol, &info(8)).unwrap();
    assert_ne!(
        std::fs::read(&fa[0]).unwrap(),
        std::fs::read(&fc[0]).unwrap()
    );
    let uid = |p: &Path, tag| {
        dicom_object::open_file(p)
            .unwrap()
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .into_owned()
    };
    assert_ne!(
        uid(&fa[0], tags::SERIES_INSTANCE_UID),
        uid(&fc[0], tags::SERIES_INSTANCE_UID)
    );
    // Within a series: one study, series and frame of reference; one SOP instance per slice.
    for tag in [
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::FRAME_OF_REFERENCE_UID,
    ] {
        assert_eq!(uid(&fa[0], tag), uid(&fa[5], tag));
    }
    let sops: std::collections::BTreeSet<String> =
        fa.iter().map(|p| uid(p, tags::SOP_INSTANCE_UID)).collect();
    assert_eq!(sops.len(), fa.len());

    // A smaller volume written over the series replaces it completely.
    let small = Volume::from_fn([4, 3, 2], [0.001; 3], [0.0; 3], |i, j, k| {
        (i + 10 * j + 100 * k) as f32
    })
    .unwrap();
    write_dicom_series(&a, &small, &info(7)).unwrap();
    let other = a.join("notes.txt");
    std::fs::write(&other, "kept").unwrap();
    write_dicom_series(&a, &small, &info(7)).unwrap();
    assert!(other.exists(), "unrelated files are left alone");
    let back = read_dicom_series(&a).unwrap();
    assert_eq!(back.dims(), [4, 3, 2]);
    assert_eq!(back.get(3, 2, 1), Some(123.0));
}

#[test]
fn sheared_volume_and_bad_info_are_refused_before_writing() {
    let vol = sample_volume(false);
    let (l, o) = vol.affine();
    let mut sheared = *l;
    sheared[(0, 1)] += 0.2e-3;
    let sheared = Volume::new(vol.dims(), vol.data().to_vec(), sheared, *o).unwrap();
    let dir = temp_path("sheared");
    let err = write_dicom_series(&dir, &sheared, &info(1)).unwrap_err();
    assert!(err.to_string().contains("not orthogonal"), "{err}");
    let bad = SeriesInfo {
        patient_name: "BACK\\SLASH".to_owned(),
        ..info(1)
    };
    let err = write_dicom_series(&dir, &vol, &bad).unwrap_err();
    assert!(err.to_string().contains("patient name"), "{err}");
    let bad = SeriesInfo {
        study_date: "2026-01-01".to_owned(),
        ..info(1)
    };
    assert!(write_dicom_series(&dir, &vol, &bad).is_err());
    assert!(!dir.exists(), "nothing written on bad input");
}

/// Rewrites one file with `edit` applied to its data set.
fn edit_file(path: &Path, edit: impl FnOnce(&mut dicom_object::DefaultDicomObject)) {
    let mut obj = dicom_object::open_file(path).unwrap();
    edit(&mut obj);
    obj.write_to_file(path).unwrap();
}

#[test]
fn corrupt_inputs_give_clear_errors() {
    // Empty directory, directory without DICOM files, missing directory.
    let empty = temp_dir("empty");
    assert_error(read_dicom_series(&empty), &["holds no files"]);
    std::fs::write(empty.join("readme.txt"), "not an image").unwrap();
    std::fs::write(empty.join("garbage.dcm"), vec![0xAB; 4096]).unwrap();
    assert_error(
        read_dicom_series(&empty),
        &["no DICOM series", "none of its 2 files"],
    );
    assert_error(
        read_dicom_file(&empty.join("garbage.dcm")),
        &["garbage.dcm", "not a readable DICOM file"],
    );
    assert_error(read_dicom_series(&empty.join("missing")), &["missing"]);

    // A truncated slice.
    let (dir, files) = written_series("truncated");
    let bytes = std::fs::read(&files[2]).unwrap();
    std::fs::write(&files[2], &bytes[..bytes.len() / 2]).unwrap();
    assert_error(
        read_dicom_series(&dir),
        &["slice_0002.dcm", "truncated or corrupt"],
    );
    // Truncated inside the file meta group (its SOP Instance UID).
    std::fs::write(&files[2], &bytes[..200]).unwrap();
    assert_error(
        read_dicom_series(&dir),
        &["slice_0002.dcm", "(0002,0003)", "truncated or corrupt"],
    );
    // Truncated in the pixel data.
    std::fs::write(&files[2], &bytes[..bytes.len() - 10]).unwrap();
    assert_error(
        read_dicom_series(&dir),
        &[
            "slice_0002.dcm",
            "(7FE0,0010) claims 126 bytes but only 116 remain",
        ],
    );

    // A slice with different Rows (and pixel data to match).
    let (dir, files) = written_series("rows");
    edit_file(&files[4], |obj| {
        let (ni, nj) = (DIMS[0], DIMS[1] - 1);
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(nj as u16),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![0u8; 2 * ni * nj]),
        ));
    });
    assert_error(
        read_dicom_series(&dir),
        &["slice_0004.dcm", "Rows × Columns 6 × 9 instead of 7 × 9"],
    );

    // More rows than the pixel data holds.
    let (dir, files) = written_series("pixel-length");
    edit_file(&files[1], |obj| {
        obj.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(8u16),
        ));
    });
    assert_error(
        read_dicom_series(&dir),
        &["slice_0001.dcm", "pixel data has 126 bytes", "need 144"],
    );

    // A missing slice.
    let (dir, files) = written_series("gap");
    std::fs::remove_file(&files[3]).unwrap();
    assert_error(
        read_dicom_series(&dir),
        &[
            "not uniform",
            "2.4000 mm between",
            "slice_0002.dcm",
            "slice_0004.dcm",
            "1.2000 mm",
        ],
    );

    // The same slice twice.
    let (dir, files) = written_series("duplicate");
    std::fs::copy(&files[2], dir.join("copy.dcm")).unwrap();
    assert_error(read_dicom_series(&dir), &["same position", "copy.dcm"]);

    // Two series in one directory.
    let (dir, _) = written_series("two-series");
    let other = temp_path("two-series-other");
    let other_files = write_dicom_series(&other, &sample_volume(false), &info(99)).unwrap();
    for f in &other_files {
        std::fs::copy(f, dir.join(format!("other_{}", file_name(f)))).unwrap();
    }
    let uid = |p: &Path| {
        dicom_object::open_file(p)
            .unwrap()
            .element(tags::SERIES_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_owned()
    };
    let (u1, u2) = (uid(&dir.join("slice_0000.dcm")), uid(&other_files[0]));
    assert_error(
        read_dicom_series(&dir),
        &["2 DICOM series", &u1, &u2, "6 files"],
    );

    // A compressed transfer syntax in the file meta group: Explicit VR Little Endian
    // "1.2.840.10008.1.2.1" becomes RLE Lossless "1.2.840.10008.1.2.5" (same length).
    let (dir, files) = written_series("compressed");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let needle = b"1.2.840.10008.1.2.1\0";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at..at + needle.len()].copy_from_slice(b"1.2.840.10008.1.2.5\0");
    std::fs::write(&files[0], &bytes).unwrap();
    assert_error(
        read_dicom_series(&dir),
        &[
            "slice_0000.dcm",
            "1.2.840.10008.1.2.5",
            "RLE Lossless",
            "not supported",
        ],
    );

    // Missing Image Position (Patient).
    let (dir, files) = written_series("no-position");
    edit_file(&files[5], |obj| {
        obj.remove_element(tags::IMAGE_POSITION_PATIENT);
    });
    assert_error(
        read_dicom_series(&dir),
        &[
            "slice_0005.dcm",
            "ImagePositionPatient (0020,0032)",
            "missing",
        ],
    );
    assert_error(read_dicom_file(&files[5]), &["ImagePositionPatient"]);

    // A slice moved sideways: off the line of the others.
    let (dir, files) = written_series("off-line");
    edit_file(&files[2], |obj| {
        let p = obj
            .element(tags::IMAGE_POSITION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        // Shift along the row direction by 1 mm: the projection on the normal is unchanged.
        let r = obj
            .element(tags::IMAGE_ORIENTATION_PATIENT)
            .unwrap()
            .to_multi_float64()
            .unwrap();
        let moved: Vec<String> = (0..3).map(|a| format!("{:.6}", p[a] + r[a])).collect();
        obj.put(DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(moved.into_iter().collect()),
        ));
    });
    assert_error(read_dicom_series(&dir), &["slice_0002.dcm", "off the line"]);
}

#[test]
fn damaged_bytes_never_panic() {
    let dir = temp_dir("fuzz");
    let vol = Volume::from_fn([5, 4, 1], [0.001; 3], [0.0; 3], |i, j, _| (i * j) as f32).unwrap();
    let files = write_dicom_series(&dir.join("src"), &vol, &info(3)).unwrap();
    let good = std::fs::read(&files[0]).unwrap();
    let path = dir.join("damaged.dcm");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for round in 0..600 {
        let mut bytes = good.clone();
        match round % 3 {
            0 => {
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            1 => {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
                let at2 = (next() as usize) % bytes.len();
                bytes[at2] = 0xFF;
            }
            _ => bytes.truncate((next() as usize) % bytes.len()),
        }
        std::fs::write(&path, &bytes).unwrap();
        // A corrupt value length must be refused up front, not allocated (that took seconds
        // and gigabytes per file before the check).
        let t0 = std::time::Instant::now();
        let result = read_dicom_file(&path);
        assert!(
            t0.elapsed().as_secs_f64() < 0.2,
            "round {round}: {:?}",
            t0.elapsed()
        );
        if result.is_err() {
            errors += 1;
        }
    }
    assert!(
        errors > 100,
        "only {errors} of 600 damaged files were refused"
    );
}

// ---------------------------------------------------------------------------------------------
// pydicom: the independent reader, and its real scanner files.

/// pydicom's view of one file: `key values…` lines.
#[derive(Debug, Default)]
struct PyFile {
    name: String,
    ipp: Vec<f64>,
    iop: Vec<f64>,
    spacing: Vec<f64>,
    rows: usize,
    columns: usize,
    values: Vec<f64>,
    meta: Vec<String>,
}

/// Python that prints, for each path in `paths`, pydicom's geometry and rescaled pixels.
fn pydicom_dump(paths: &[PathBuf]) -> Option<Vec<PyFile>> {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect();
    let code = format!(
        "import pydicom, numpy\n\
         for p in [{}]:\n\
         \x20   ds = pydicom.dcmread(p)\n\
         \x20   a = ds.pixel_array.astype(numpy.float64) * float(ds.get('RescaleSlope', 1)) + float(ds.get('RescaleIntercept', 0))\n\
         \x20   print('FILE', p)\n\
         \x20   print('IPP', *[repr(float(x)) for x in ds.ImagePositionPatient])\n\
         \x20   print('IOP', *[repr(float(x)) for x in ds.ImageOrientationPatient])\n\
         \x20   print('PS', *[repr(float(x)) for x in ds.PixelSpacing])\n\
         \x20   print('RC', ds.Rows, ds.Columns)\n\
         \x20   print('META', ds.file_meta.TransferSyntaxUID, ds.SOPClassUID, ds.Modality, ds.get('PatientPosition', '-') or '-', ds.get('InstanceNumber', '-'))\n\
         \x20   print('VAL', *[repr(float(x)) for x in a.ravel()])\n",
        list.join(", ")
    );
    let out = python_output(&code)?;
    let mut files: Vec<PyFile> = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let nums = || -> Vec<f64> { rest.iter().map(|w| w.parse().unwrap()).collect() };
        if key == "FILE" {
            files.push(PyFile {
                name: rest.join(" "),
                ..PyFile::default()
            });
            continue;
        }
        let f = files.last_mut().expect("FILE line first");
        match key {
            "IPP" => f.ipp = nums(),
            "IOP" => f.iop = nums(),
            "PS" => f.spacing = nums(),
            "RC" => {
                f.rows = rest[0].parse().unwrap();
                f.columns = rest[1].parse().unwrap();
            }
            "META" => f.meta = rest.iter().map(|s| s.to_string()).collect(),
            "VAL" => f.values = nums(),
            _ => panic!("unexpected line from pydicom: {line}"),
        }
    }
    assert_eq!(files.len(), paths.len());
    Some(files)
}

/// pydicom's bundled test files, or `None` (after reporting the missing peer).
fn pydicom_test_files() -> Option<PathBuf> {
    let dir = python_output(
        "import os\nfrom pydicom.data import get_testdata_file\n\
         print(os.path.dirname(get_testdata_file('CT_small.dcm')))",
    );
    match dir
        .map(PathBuf::from)
        .filter(|d| d.join("CT_small.dcm").is_file())
    {
        Some(d) => Some(d),
        None => {
            missing_peer("pydicom", "python3 -m pip install pydicom==3.0.1 numpy");
            None
        }
    }
}

/// LPS millimetres → RAS metres.
fn ras_m(lps_mm: &[f64]) -> Vector3<f64> {
    Vector3::new(-lps_mm[0], -lps_mm[1], lps_mm[2]) / 1000.0
}

/// Checks our reading of one pydicom-described file against pydicom: slice `k` of `vol`.
fn assert_matches_pydicom(vol: &Volume, k: usize, py: &PyFile) {
    let [ni, nj, _] = vol.dims();
    assert_eq!((nj, ni), (py.rows, py.columns), "{}", py.name);
    assert_eq!(py.values.len(), ni * nj, "{}", py.name);
    for j in 0..nj {
        for i in 0..ni {
            let ours = f64::from(vol.get(i, j, k).unwrap());
            let theirs = py.values[j * ni + i];
            assert_eq!(ours, theirs, "{} pixel (row {j}, column {i})", py.name);
        }
    }
    let (l, o) = vol.affine();
    let origin = o + l.column(2) * k as f64;
    let want_origin = ras_m(&py.ipp);
    assert!(
        (origin - want_origin).norm() < 1e-9,
        "{}: position {origin} vs {want_origin}",
        py.name
    );
    let col_i = ras_m(&py.iop[0..3]) * py.spacing[1];
    let col_j = ras_m(&py.iop[3..6]) * py.spacing[0];
    assert!((l.column(0) - col_i).norm() < 1e-9, "{}: i axis", py.name);
    assert!((l.column(1) - col_j).norm() < 1e-9, "{}: j axis", py.name);
}

#[test]
fn pydicom_reads_our_series() {
    let (dir, files) = written_series("pydicom");
    let Some(py) = pydicom_dump(&files) else {
        missing_peer("pydicom", "python3 -m pip install pydicom==3.0.1 numpy");
        return;
    };
    let vol = read_dicom_series(&dir).unwrap();
    let input = sample_volume(false);
    let (l, o) = input.affine();
    for (k, f) in py.iter().enumerate() {
        assert_eq!(
            f.meta,
            [
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.5.1.4.1.1.2",
                "CT",
                "HFP",
                &(k + 1).to_string()
            ]
        );
        // pydicom's pixels are the quantised input itself, not just what we read back.
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                assert_eq!(f.values[j * DIMS[0] + i], f64::from(expected(i, j, k)));
            }
        }
        assert_matches_pydicom(&vol, k, f);
        // …and its geometry is the input volume's.
        let want = o + l.column(2) * k as f64;
        assert!((ras_m(&f.ipp) - want).norm() < 1e-9, "slice {k} position");
        let spacing_mm = [SPACING_M[1] * 1e3, SPACING_M[0] * 1e3];
        for (got, want) in f.spacing.iter().zip(spacing_mm) {
            assert!((got - want).abs() < 1e-12, "PixelSpacing {:?}", f.spacing);
        }
    }
}

#[test]
fn we_read_pydicom_scanner_files() {
    let Some(data) = pydicom_test_files() else {
        return;
    };
    // Single images: a CT (explicit VR), an MR (explicit, implicit VR, and with padded pixel
    // data), an unsigned 16-bit MR with overlays, a 32-bit unsigned RT dose plane (implicit VR).
    let singles: Vec<PathBuf> = [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_padded.dcm",
        "examples_overlay.dcm",
        "rtdose_1frame.dcm",
    ]
    .iter()
    .map(|n| data.join(n))
    .collect();
    let Some(py) = pydicom_dump(&singles) else {
        missing_peer("pydicom", "python3 -m pip install pydicom==3.0.1 numpy");
        return;
    };
    for (path, f) in singles.iter().zip(&py) {
        let vol = read_dicom_file(path).unwrap();
        assert_eq!(vol.dims()[2], 1);
        assert_matches_pydicom(&vol, 0, f);
    }
    // CT_small: 128×128, signed, rescale −1024 (air near −900 HU, bone above 1000 HU), 5 mm
    // slices.
    let ct = read_dicom_file(&singles[0]).unwrap();
    assert_eq!(ct.dims(), [128, 128, 1]);
    assert!((ct.spacing()[2] - 0.005).abs() < 1e-12);
    let (lo, hi) = ct
        .data()
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    assert_eq!((lo, hi), (-896.0, 1167.0));

    // A real five-slice CT series whose instance numbers run against z.
    let series = data.join("dicomdirtests/98892001/CT5N");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&series)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let py = pydicom_dump(&paths).unwrap();
    let vol = read_dicom_series(&series).unwrap();
    assert_eq!(vol.dims(), [16, 16, 5]);
    for f in &py {
        // The slice index of this file from its position in our geometry.
        let x = vol.world_to_index(&ras_m(&f.ipp));
        let k = x.z.round();
        assert!(
            (x.z - k).abs() < 1e-6 && x.x.abs() < 1e-6 && x.y.abs() < 1e-6,
            "{x}"
        );
        assert_matches_pydicom(&vol, k as usize, f);
        // k follows the instance numbers 6..10.
        assert_eq!(f.meta[4], (k as usize + 6).to_string(), "{}", f.name);
    }
    assert!((vol.spacing()[2] - 0.0025).abs() < 1e-9);

    // The same series with a DICOMDIR and a README beside it: both skipped.
    let copy = temp_dir("ct5n");
    for p in &paths {
        std::fs::copy(p, copy.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(data.join("dicomdirtests/DICOMDIR"), copy.join("DICOMDIR")).unwrap();
    std::fs::copy(
        data.join("dicomdirtests/README.txt"),
        copy.join("README.txt"),
    )
    .unwrap();
    let again = read_dicom_series(&copy).unwrap();
    assert_same_voxels(&again, &vol);
    assert_affine_close(&again, &vol, 0.0);
}

#[test]
fn real_broken_series_and_compressed_files_are_refused() {
    let Some(data) = pydicom_test_files() else {
        return;
    };
    let d = data.join("dicomdirtests");
    // A CT series with a 202.5 mm gap between its first two slices.
    assert_error(
        read_dicom_series(&d.join("77654033/CT2")),
        &["not uniform", "17106", "17136", "1.2500 mm"],
    );
    // Two localisers of different orientation sharing a series.
    assert_error(
        read_dicom_series(&d.join("98892001/CT2N")),
        &["inconsistent DICOM slice geometry", "Image Orientation"],
    );
    // Radial MR slices.
    assert_error(
        read_dicom_series(&d.join("98892003/MR700")),
        &["Image Orientation"],
    );
    // Three series in one folder.
    assert_error(
        read_dicom_series(&d.join("98892003/MR2")),
        &[
            "3 DICOM series",
            "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136 (3 files)",
        ],
    );
    // Compressed, deflated and big-endian files: the transfer syntax is named.
    for (name, uid, what) in [
        ("693_J2KI.dcm", "1.2.840.10008.1.2.4.91", "JPEG 2000"),
        (
            "MR_small_jp2klossless.dcm",
            "1.2.840.10008.1.2.4.90",
            "JPEG 2000",
        ),
        (
            "MR_small_jpeg_ls_lossless.dcm",
            "1.2.840.10008.1.2.4.80",
            "JPEG-LS",
        ),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "RLE Lossless"),
        ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", "JPEG Extended"),
        (
            "SC_rgb_jpeg_gdcm.dcm",
            "1.2.840.10008.1.2.4.70",
            "JPEG Lossless",
        ),
        (
            "MR_small_bigendian.dcm",
            "1.2.840.10008.1.2.2",
            "Big Endian",
        ),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", "Deflated"),
    ] {
        assert_error(
            read_dicom_file(&data.join(name)),
            &[name, uid, what, "not supported"],
        );
    }
    // A file cut short inside its pixel data, colour and multi-frame images, no image at all.
    assert_error(
        read_dicom_file(&data.join("MR_truncated.dcm")),
        &["MR_truncated.dcm"],
    );
    assert_error(
        read_dicom_file(&data.join("SC_rgb_small_odd.dcm")),
        &["not supported"],
    );
    assert_error(
        read_dicom_file(&data.join("rtdose.dcm")),
        &["multi-frame", "15 frames"],
    );
    assert_error(
        read_dicom_file(&data.join("rtplan.dcm")),
        &["missing", "Rows (0028,0010)"],
    );
    assert_error(
        read_dicom_file(&d.join("DICOMDIR")),
        &["DICOMDIR", "not supported"],
    );
}

#[test]
fn every_pydicom_test_file_reads_or_fails_cleanly() {
    let Some(data) = pydicom_test_files() else {
        return;
    };
    let mut files = Vec::new();
    let mut dirs = vec![data.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() > 100, "{} files", files.len());
    let (mut ok, mut refused) = (0, 0);
    for f in &files {
        match read_dicom_file(f) {
            Ok(v) => {
                ok += 1;
                assert!(v.data().iter().all(|x| x.is_finite()), "{f:?}");
            }
            Err(e) => {
                refused += 1;
                // The length pre-check never refuses a file that dicom-rs itself parses.
                let msg = e.to_string();
                if msg.contains("claims") {
                    assert!(
                        dicom_object::OpenFileOptions::new().open_file(f).is_err(),
                        "{msg}"
                    );
                }
            }
        }
    }
    assert!(ok >= 25 && refused >= 50, "{ok} read, {refused} refused");
}
