//! `volume::load_ct`: one entry point for NIfTI files, DICOM series directories and single DICOM
//! files; the same scan in either container loads to the same volume; anything else is a clear
//! error naming the path.

use std::path::PathBuf;

use nalgebra::{Matrix3, Rotation3, Vector3};
use telecho_perception::dicom::{write_dicom_series, SeriesInfo};
use telecho_perception::io::write_nifti;
use telecho_perception::volume::{detect_ct_source, load_ct, CtSource, Volume};

fn temp_dir(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("ctload-{name}"));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An oblique, anisotropic volume with HU-like integer values.
fn scan() -> Volume {
    let dims = [12, 9, 7];
    let data: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| ((i * 37) % 2400) as f32 - 1000.0)
        .collect();
    let r = Rotation3::from_euler_angles(0.1, -0.05, 0.3).into_inner();
    let affine = r * Matrix3::from_diagonal(&Vector3::new(0.0007, 0.0008, 0.0012));
    Volume::new(dims, data, affine, Vector3::new(-0.02, 0.01, 0.03)).unwrap()
}

fn same(a: &Volume, b: &Volume) {
    assert_eq!(a.dims(), b.dims());
    assert_eq!(a.data(), b.data());
    let (aa, ao) = a.affine();
    let (ba, bo) = b.affine();
    assert!((aa - ba).abs().max() < 1e-7, "{aa} vs {ba}");
    assert!((ao - bo).abs().max() < 1e-7, "{ao} vs {bo}");
}

#[test]
fn nifti_and_dicom_of_the_same_scan_load_the_same() {
    let d = temp_dir("same");
    let v = scan();
    let nii = d.join("ct.nii.gz");
    let plain = d.join("ct.nii");
    let dicom = d.join("dicom");
    write_nifti(&nii, &v).unwrap();
    write_nifti(&plain, &v).unwrap();
    let files = write_dicom_series(&dicom, &v, &SeriesInfo::default()).unwrap();
    assert_eq!(detect_ct_source(&nii).unwrap(), CtSource::Nifti);
    assert_eq!(detect_ct_source(&plain).unwrap(), CtSource::Nifti);
    assert_eq!(detect_ct_source(&dicom).unwrap(), CtSource::DicomDir);
    assert_eq!(detect_ct_source(&files[3]).unwrap(), CtSource::DicomFile);
    let from_nii = load_ct(&nii).unwrap();
    same(&from_nii, &v);
    same(&load_ct(&plain).unwrap(), &v);
    same(&load_ct(&dicom).unwrap(), &from_nii);
    // One file of the series stands for the whole series.
    same(&load_ct(&files[3]).unwrap(), &from_nii);
    // The name does not matter, the content does.
    let renamed = d.join("scan.dat");
    std::fs::copy(&nii, &renamed).unwrap();
    same(&load_ct(&renamed).unwrap(), &v);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn non_volumes_are_clear_errors() {
    let d = temp_dir("errors");
    let missing = d.join("nope.nii.gz");
    let e = load_ct(&missing).unwrap_err().to_string();
    assert!(
        e.contains("nope.nii.gz") && e.contains("no such file"),
        "{e}"
    );

    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_ct(&empty).unwrap_err().to_string();
    assert!(e.contains("empty") && e.contains("no files"), "{e}");

    let text = d.join("notes.txt");
    std::fs::write(&text, "this is not a CT\n").unwrap();
    let e = load_ct(&text).unwrap_err().to_string();
    assert!(e.contains("notes.txt") && e.contains("text file"), "{e}");

    let zero = d.join("zero.nii");
    std::fs::write(&zero, b"").unwrap();
    let e = load_ct(&zero).unwrap_err().to_string();
    assert!(e.contains("zero.nii") && e.contains("empty file"), "{e}");

    let binary = d.join("random.bin");
    std::fs::write(
        &binary,
        (0..1000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let e = load_ct(&binary).unwrap_err().to_string();
    assert!(
        e.contains("random.bin") && e.contains("unknown content"),
        "{e}"
    );

    // A directory of text files holds no DICOM series.
    let junk = d.join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("a.txt"), "hello").unwrap();
    let e = load_ct(&junk).unwrap_err().to_string();
    assert!(e.contains("junk") && e.contains("DICOM"), "{e}");

    // A gzip file that is not NIfTI inside goes to the NIfTI reader's error.
    let gz = d.join("fake.nii.gz");
    std::fs::write(&gz, [0x1f, 0x8b, 0x08, 0x00, 1, 2, 3]).unwrap();
    let e = load_ct(&gz).unwrap_err().to_string();
    assert!(e.contains("fake.nii.gz"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}
