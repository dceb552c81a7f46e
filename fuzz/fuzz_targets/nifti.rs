//! NIfTI-1 loading from memory: any bytes give a volume or an error, never a panic, and memory
//! stays bounded (a header declaring a huge volume is refused, a gzip stream is inflated only as
//! far as its header needs). Each input is also read gzip-compressed, so the inflating path sees
//! every mutation of the content; both forms of the same bytes must read the same.
#![no_main]

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use libfuzzer_sys::fuzz_target;
use telecho_perception::volume::{Volume, MAX_VOXELS};

fn check(v: &Volume) {
    let [ni, nj, nk] = v.dims();
    assert!(ni >= 1 && nj >= 1 && nk >= 1);
    assert_eq!(ni * nj * nk, v.data().len());
    assert!(v.data().len() <= MAX_VOXELS);
    let (linear, origin) = v.affine();
    assert!(linear.iter().chain(origin.iter()).all(|x| x.is_finite()));
    assert!(v.get(ni - 1, nj - 1, nk - 1).is_some());
}

fuzz_target!(|data: &[u8]| {
    let plain = Volume::from_nifti_bytes(data);
    if let Ok(v) = &plain {
        check(v);
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        return;
    }
    // Stored (uncompressed) deflate blocks: cheap to write and read, the same reader path.
    let mut gz = GzEncoder::new(Vec::with_capacity(data.len() + 64), Compression::none());
    gz.write_all(data).unwrap();
    let gz = gz.finish().unwrap();
    match (plain, Volume::from_nifti_bytes(&gz)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.dims(), b.dims());
            assert_eq!(a.affine(), b.affine());
            let bits = |v: &Volume| v.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b));
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "plain and gzip forms disagree: {:?} vs {:?}",
            a.map(|v| v.dims()),
            b.map(|v| v.dims())
        ),
    }
});
