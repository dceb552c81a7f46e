//! NIfTI-1 reading and writing: round trips, determinism, independent readers, corrupt inputs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nalgebra::{Matrix3, Rotation3, Vector3};
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};
use telecho_core::peers::{missing_peer, python_output};
use telecho_perception::io::{read_nifti, write_nifti};
use telecho_perception::volume::Volume;

/// A fresh, unique directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = telecho_testkit::scratch(&format!("nifti-{n}-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const DIMS: [usize; 3] = [7, 5, 4];

fn value(i: usize, j: usize, k: usize) -> f32 {
    match (i, j, k) {
        (6, 4, 3) => 40_000.0,  // saturates to i16::MAX
        (0, 4, 3) => -40_000.0, // saturates to i16::MIN
        (3, 2, 1) => 12.5,      // rounds away from zero
        _ => -1000.0 + 37.3 * i as f32 + 101.6 * j as f32 - 250.25 * k as f32,
    }
}

/// 7×5×4, spacing 0.5/0.7/1.0 mm, axes rotated 30° about z, origin (-12.5, 30.25, 7) mm.
/// With `left_handed` the k axis is flipped.
fn sample_volume(left_handed: bool) -> Volume {
    let rot = Rotation3::from_axis_angle(&Vector3::z_axis(), 30f64.to_radians());
    let k_sign = if left_handed { -1.0 } else { 1.0 };
    let linear =
        rot.matrix() * Matrix3::from_diagonal(&Vector3::new(0.5e-3, 0.7e-3, k_sign * 1.0e-3));
    let origin = Vector3::new(-0.0125, 0.03025, 0.007);
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

fn expected_value(i: usize, j: usize, k: usize) -> f32 {
    f32::from(value(i, j, k).round() as i16)
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

fn assert_values(v: &Volume, f: impl Fn(usize, usize, usize) -> f32) {
    assert_eq!(v.dims(), DIMS);
    for k in 0..DIMS[2] {
        for j in 0..DIMS[1] {
            for i in 0..DIMS[0] {
                assert_eq!(v.get(i, j, k), Some(f(i, j, k)), "voxel ({i}, {j}, {k})");
            }
        }
    }
}

#[test]
fn round_trip_nii_and_nii_gz() {
    let dir = temp_dir("roundtrip");
    for (name, left) in [("ct.nii.gz", false), ("ct.nii", false), ("lh.nii.gz", true)] {
        let vol = sample_volume(left);
        let path = dir.join(name);
        write_nifti(&path, &vol).unwrap();
        let back = read_nifti(&path).unwrap();
        assert_values(&back, expected_value);
        assert_affine_close(&back, &vol, 1e-9);
        let s = back.spacing();
        for (got, want) in s.iter().zip([0.5e-3, 0.7e-3, 1.0e-3]) {
            assert!((got - want).abs() < 1e-9, "spacing {s:?}");
        }
    }
    // Spot values: 12.5 rounds to 13, ±40000 saturate.
    let back = read_nifti(&dir.join("ct.nii")).unwrap();
    assert_eq!(back.get(3, 2, 1), Some(13.0));
    assert_eq!(back.get(6, 4, 3), Some(32767.0));
    assert_eq!(back.get(0, 4, 3), Some(-32768.0));
    assert_eq!(
        back.get(1, 1, 1),
        Some((-1000.0f32 + 37.3 + 101.6 - 250.25).round())
    );
}

#[test]
fn gz_and_plain_hold_the_same_bytes() {
    let dir = temp_dir("gzplain");
    let vol = sample_volume(false);
    write_nifti(&dir.join("a.nii"), &vol).unwrap();
    write_nifti(&dir.join("a.nii.gz"), &vol).unwrap();
    let plain = std::fs::read(dir.join("a.nii")).unwrap();
    let gz = std::fs::read(dir.join("a.nii.gz")).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip mtime must be 0");
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped).unwrap();
    assert_eq!(unzipped, plain);
    // 352-byte header + extender, then 7·5·4 int16 voxels.
    assert_eq!(plain.len(), 352 + 2 * 140);
}

#[test]
fn output_is_deterministic() {
    let dir = temp_dir("determinism");
    let vol = sample_volume(false);
    for name in ["x.nii.gz", "x.nii"] {
        let p1 = dir.join(format!("1-{name}"));
        let p2 = dir.join(format!("2-{name}"));
        write_nifti(&p1, &vol).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_nifti(&p2, &vol).unwrap();
        assert_eq!(
            std::fs::read(&p1).unwrap(),
            std::fs::read(&p2).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn header_fields_as_read_by_the_nifti_crate() {
    let dir = temp_dir("header");
    let vol = sample_volume(false);
    let path = dir.join("ct.nii.gz");
    write_nifti(&path, &vol).unwrap();
    let obj = ReaderOptions::new().read_file(&path).unwrap();
    let h = obj.header();
    assert_eq!(h.sizeof_hdr, 348);
    assert_eq!(&h.magic, b"n+1\0");
    assert_eq!(h.dim, [3, 7, 5, 4, 1, 1, 1, 1]);
    assert_eq!(h.datatype, 4, "INT16");
    assert_eq!(h.bitpix, 16);
    assert_eq!(h.vox_offset, 352.0);
    assert_eq!((h.scl_slope, h.scl_inter), (1.0, 0.0));
    assert_eq!(h.xyzt_units, 2 | 8, "mm + s");
    assert_eq!((h.sform_code, h.qform_code), (1, 1));
    assert_eq!(h.pixdim[0], 1.0, "qfac of a right-handed affine");
    for (got, want) in h.pixdim[1..4].iter().zip([0.5f32, 0.7, 1.0]) {
        assert!((got - want).abs() < 1e-6, "pixdim {:?}", h.pixdim);
    }
    let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
    let want = [
        [0.5 * c, -0.7 * s, 0.0, -12.5],
        [0.5 * s, 0.7 * c, 0.0, 30.25],
        [0.0, 0.0, 1.0, 7.0],
    ];
    for (row, w) in [h.srow_x, h.srow_y, h.srow_z].iter().zip(want) {
        for (a, b) in row.iter().zip(w) {
            assert!((a - b).abs() < 1e-5, "srow {row:?} vs {w:?}");
        }
    }
    // 30° about z: quaternion (cos 15°, 0, 0, sin 15°).
    let half = 15f32.to_radians();
    assert!(h.quatern_b.abs() < 1e-7 && h.quatern_c.abs() < 1e-7);
    assert!((h.quatern_d - half.sin()).abs() < 1e-6, "{}", h.quatern_d);
    assert_eq!([h.quatern_x, h.quatern_y, h.quatern_z], [-12.5, 30.25, 7.0]);
    let descrip = String::from_utf8_lossy(&h.descrip);
    assert!(descrip.starts_with("telecho simulated CBCT"), "{descrip}");

    let arr = obj.into_volume().into_ndarray::<f32>().unwrap();
    assert_eq!(arr.shape(), &[7, 5, 4]);
    for (i, j, k) in [(0, 0, 0), (3, 2, 1), (6, 4, 3), (0, 4, 3), (5, 1, 2)] {
        assert_eq!(
            arr[[i, j, k]],
            expected_value(i, j, k),
            "voxel ({i}, {j}, {k})"
        );
    }
}

#[test]
fn nibabel_reads_the_file() {
    let dir = temp_dir("nibabel");
    let path = dir.join("ct.nii.gz");
    write_nifti(&path, &sample_volume(false)).unwrap();
    let code = format!(
        "import nibabel as nib, json\n\
         img = nib.load({:?})\n\
         d = img.get_fdata()\n\
         print(json.dumps({{'shape': list(img.shape), 'affine': img.affine.tolist(), \
         'sform': int(img.header['sform_code']), 'qform_affine': img.get_qform().tolist(), \
         'v': [d[0,0,0], d[3,2,1], d[6,4,3], d[5,1,2]]}}))",
        path.to_str().unwrap()
    );
    let Some(out) = python_output(&code) else {
        missing_peer("nibabel", "pip install nibabel");
        return;
    };
    let v: serde_json_lite::Value = serde_json_lite::parse(&out);
    assert_eq!(v.shape, vec![7, 5, 4]);
    assert_eq!(v.sform, 1);
    let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let want = [
        [0.5 * c, -0.7 * s, 0.0, -12.5],
        [0.5 * s, 0.7 * c, 0.0, 30.25],
        [0.0, 0.0, 1.0, 7.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    for m in [&v.affine, &v.qform_affine] {
        for (row, w) in m.iter().zip(want) {
            for (a, b) in row.iter().zip(w) {
                assert!((a - b).abs() < 1e-5, "nibabel affine {m:?}");
            }
        }
    }
    let want_v =
        [(0, 0, 0), (3, 2, 1), (6, 4, 3), (5, 1, 2)].map(|(i, j, k)| expected_value(i, j, k));
    for (a, b) in v.v.iter().zip(want_v) {
        assert_eq!(*a, f64::from(b));
    }
}

/// Just enough JSON for the nibabel check (keeps the crate free of a serde dev-dependency).
mod serde_json_lite {
    #[derive(Debug)]
    pub(crate) struct Value {
        pub(crate) shape: Vec<usize>,
        pub(crate) sform: i64,
        pub(crate) affine: Vec<Vec<f64>>,
        pub(crate) qform_affine: Vec<Vec<f64>>,
        pub(crate) v: Vec<f64>,
    }

    /// The numbers after `"key": `, flattened.
    fn numbers(s: &str, key: &str) -> Vec<f64> {
        let start = s.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
        let rest = &s[start..];
        let mut depth = 0i32;
        let mut end = rest.len();
        for (n, ch) in rest.char_indices() {
            match ch {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' | '}' if depth == 0 => {
                    end = n;
                    break;
                }
                _ => {}
            }
            if depth == 0 && ch == ']' {
                end = n;
                break;
            }
        }
        rest[..end]
            .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().unwrap())
            .collect()
    }

    pub(crate) fn parse(s: &str) -> Value {
        let rows = |v: Vec<f64>| v.chunks(4).map(<[f64]>::to_vec).collect();
        Value {
            shape: numbers(s, "shape").iter().map(|&x| x as usize).collect(),
            sform: numbers(s, "sform")[0] as i64,
            affine: rows(numbers(s, "affine")),
            qform_affine: rows(numbers(s, "qform_affine")),
            v: numbers(s, "v"),
        }
    }
}

// ---- header patching for the fallback and corrupt-input tests ----

fn put_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

const OFF_DIM: usize = 40;
const OFF_DATATYPE: usize = 70;
const OFF_PIXDIM: usize = 76;
const OFF_SCL_SLOPE: usize = 112;
const OFF_SCL_INTER: usize = 116;
const OFF_XYZT_UNITS: usize = 123;
const OFF_QFORM_CODE: usize = 252;
const OFF_SFORM_CODE: usize = 254;
const OFF_SROW_X: usize = 280;

/// Bytes of a valid uncompressed file of `sample_volume(left_handed)`.
fn valid_bytes(dir: &Path, left_handed: bool) -> Vec<u8> {
    let p = dir.join("valid.nii");
    write_nifti(&p, &sample_volume(left_handed)).unwrap();
    std::fs::read(&p).unwrap()
}

fn read_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<Volume, String> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    read_nifti(&p).map_err(|e| e.to_string())
}

#[test]
fn qform_alone_reproduces_the_affine() {
    let dir = temp_dir("qform");
    for left in [false, true] {
        let mut b = valid_bytes(&dir, left);
        assert_eq!(
            f32::from_le_bytes(b[OFF_PIXDIM..OFF_PIXDIM + 4].try_into().unwrap()),
            if left { -1.0 } else { 1.0 },
            "qfac"
        );
        put_i16(&mut b, OFF_SFORM_CODE, 0);
        let back = read_bytes(&dir, "q.nii", &b).unwrap();
        assert_affine_close(&back, &sample_volume(left), 1e-9);
    }
}

#[test]
fn pixdim_fallback_units_and_scaling() {
    let dir = temp_dir("fallback");
    let mut b = valid_bytes(&dir, false);
    put_i16(&mut b, OFF_SFORM_CODE, 0);
    put_i16(&mut b, OFF_QFORM_CODE, 0);
    let back = read_bytes(&dir, "p.nii", &b).unwrap();
    let (l, o) = back.affine();
    let want = Matrix3::from_diagonal(&Vector3::new(0.5e-3, 0.7e-3, 1.0e-3));
    assert!((l - want).abs().max() < 1e-9, "{l}");
    assert_eq!(*o, Vector3::zeros());

    // xyzt_units = metres: the sform is taken as metres.
    let mut b = valid_bytes(&dir, false);
    b[OFF_XYZT_UNITS] = 1 | 8;
    let back = read_bytes(&dir, "m.nii", &b).unwrap();
    assert!(
        (back.affine().1 - Vector3::new(-12.5, 30.25, 7.0))
            .abs()
            .max()
            < 1e-9
    );
    // micrometres
    b[OFF_XYZT_UNITS] = 3;
    let back = read_bytes(&dir, "um.nii", &b).unwrap();
    assert!(
        (back.affine().1 - Vector3::new(-12.5e-6, 30.25e-6, 7.0e-6))
            .abs()
            .max()
            < 1e-15
    );

    // scl_slope / scl_inter applied; slope 0 means 1.
    let mut b = valid_bytes(&dir, false);
    put_f32(&mut b, OFF_SCL_SLOPE, 2.0);
    put_f32(&mut b, OFF_SCL_INTER, -5.0);
    let back = read_bytes(&dir, "s.nii", &b).unwrap();
    assert_values(&back, |i, j, k| 2.0 * expected_value(i, j, k) - 5.0);
    put_f32(&mut b, OFF_SCL_SLOPE, 0.0);
    let back = read_bytes(&dir, "s0.nii", &b).unwrap();
    assert_values(&back, |i, j, k| expected_value(i, j, k) - 5.0);

    // A 4D file with dim[4] == 1 is a 3D volume.
    let mut b = valid_bytes(&dir, false);
    put_i16(&mut b, OFF_DIM, 4);
    let back = read_bytes(&dir, "4d1.nii", &b).unwrap();
    assert_values(&back, expected_value);
}

fn assert_err_contains(r: Result<Volume, String>, needles: &[&str]) {
    let msg = r.expect_err("expected an error");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} should mention {n:?}");
    }
}

#[test]
fn corrupt_inputs_give_clear_errors() {
    let dir = temp_dir("corrupt");
    let missing = dir.join("does-not-exist.nii.gz");
    let msg = read_nifti(&missing).unwrap_err().to_string();
    assert!(msg.contains("does-not-exist.nii.gz"), "{msg}");

    assert_err_contains(read_bytes(&dir, "empty.nii", &[]), &["not a NIfTI-1 file"]);

    // Deterministic pseudo-random bytes (xorshift).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert_err_contains(
        read_bytes(&dir, "noise.nii", &noise),
        &["not a NIfTI-1 file"],
    );

    let valid = valid_bytes(&dir, false);

    let mut b = valid.clone();
    b[0..4].copy_from_slice(&340i32.to_le_bytes());
    assert_err_contains(read_bytes(&dir, "sizeof.nii", &b), &["sizeof_hdr"]);

    assert_err_contains(
        read_bytes(&dir, "trunc.nii", &valid[..valid.len() - 7]),
        &["truncated", "280 bytes"],
    );
    assert_err_contains(
        read_bytes(&dir, "hdronly.nii", &valid[..352]),
        &["truncated"],
    );

    // Truncated gzip stream.
    let gz_path = dir.join("full.nii.gz");
    write_nifti(&gz_path, &sample_volume(false)).unwrap();
    let gz = std::fs::read(&gz_path).unwrap();
    assert_err_contains(
        read_bytes(&dir, "trunc.nii.gz", &gz[..gz.len() / 2]),
        &["gzip"],
    );

    let mut b = valid.clone();
    put_i16(&mut b, OFF_DATATYPE, 32);
    assert_err_contains(
        read_bytes(&dir, "complex.nii", &b),
        &["unsupported datatype", "complex64", "32"],
    );

    let mut b = valid.clone();
    put_i16(&mut b, OFF_DIM, 4);
    put_i16(&mut b, OFF_DIM + 8, 3);
    assert_err_contains(
        read_bytes(&dir, "4d.nii", &b),
        &["only 3D", "[4, 7, 5, 4, 3"],
    );

    let mut b = valid.clone();
    put_i16(&mut b, OFF_DIM, 2);
    assert_err_contains(read_bytes(&dir, "2d.nii", &b), &["only 3D"]);

    let mut b = valid.clone();
    put_i16(&mut b, OFF_DIM + 2, -3);
    assert_err_contains(read_bytes(&dir, "negdim.nii", &b), &["only 3D"]);

    let mut b = valid.clone();
    for n in 0..4 {
        put_f32(&mut b, OFF_SROW_X + 4 * n, 0.0);
    }
    assert_err_contains(read_bytes(&dir, "singular.nii", &b), &["sform", "singular"]);

    let mut b = valid.clone();
    put_f32(&mut b, OFF_SROW_X + 12, f32::NAN);
    assert_err_contains(read_bytes(&dir, "nan.nii", &b), &["sform", "not finite"]);

    for bad in [0.0, -0.5, f32::INFINITY] {
        let mut b = valid.clone();
        put_i16(&mut b, OFF_SFORM_CODE, 0);
        put_f32(&mut b, OFF_PIXDIM + 8, bad);
        assert_err_contains(read_bytes(&dir, "pixdim.nii", &b), &["pixdim"]);
    }

    let mut b = valid.clone();
    b[344..348].copy_from_slice(b"ni1\0");
    assert_err_contains(read_bytes(&dir, "pair.nii", &b), &[".hdr/.img"]);
}
