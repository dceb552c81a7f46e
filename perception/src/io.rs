//! Reading and writing volumes as NIfTI-1 files (`.nii`, `.nii.gz`).
//!
//! # Conventions
//!
//! * **World frame.** The NIfTI scanner world is RAS+ (+x patient Right, +y Anterior,
//!   +z Superior), which is exactly the `ct` frame of [`Volume`]: no axis flips on read or write.
//! * **Units.** Files store millimetres (`xyzt_units` = mm + s); [`Volume`] holds metres. On write
//!   the affine is multiplied by 1000; on read it is divided by the factor named in `xyzt_units`
//!   (metres, millimetres — also assumed when the units are unknown — or micrometres).
//! * **Affine.** [`write_nifti`] stores the voxel → world affine exactly (to `f32` precision) as the
//!   sform (`sform_code` = 1, scanner) and also as a quaternion qform (`qform_code` = 1), which is
//!   exact for rotation × spacing affines; a left-handed affine gets `qfac = pixdim[0] = -1`.
//!   [`read_nifti`] uses the sform when `sform_code > 0`, else the qform when `qform_code > 0`,
//!   else the diagonal `pixdim` (NIfTI "method 1").
//! * **Voxels.** Written as `INT16`: `round(value)` saturated to the `i16` range (NaN → 0), with
//!   `scl_slope = 1`, `scl_inter = 0`. Read from uint8, int16, uint16, int32, float32 or float64 with
//!   `value · scl_slope + scl_inter` (a zero or non-finite slope means 1, a non-finite intercept 0).
//!   Voxel order is `i` fastest, as in [`Volume`].
//! * **Determinism.** The same volume always gives byte-identical files: the gzip member has mtime
//!   0, no file name and a fixed OS byte.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};
use nalgebra::{Matrix3, Rotation3, UnitQuaternion, Vector3};
use nifti::{Endianness, NiftiHeader};

use crate::error::ErrorKind;
use crate::volume::Volume;
use crate::Error;

/// Size of a NIfTI-1 header in bytes.
const HEADER_SIZE: usize = 348;
/// Offset of the voxel data in the single files written here (header + 4-byte extender).
const VOX_OFFSET: usize = 352;
/// Description written into `descrip`.
const DESCRIPTION: &str = "telecho simulated CBCT";
/// `NIFTI_TYPE_INT16`.
const DT_INT16: i16 = 4;
/// `NIFTI_UNITS_MM | NIFTI_UNITS_SEC`.
const UNITS_MM_SEC: u8 = 2 | 8;
/// `NIFTI_XFORM_SCANNER_ANAT`.
const XFORM_SCANNER: i16 = 1;

/// Writes `volume` as a single-file NIfTI-1 image; gzip-compressed when `path` ends with `.gz`.
///
/// See the [module documentation](self) for the conventions (INT16 voxels, millimetres, sform and
/// qform both set).
pub fn write_nifti(path: &Path, volume: &Volume) -> Result<(), Error> {
    let bytes = encode(path, volume)?;
    let gz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let io_err = |source| ErrorKind::NiftiIo {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut out = std::io::BufWriter::new(file);
    if gz {
        let mut enc = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(&mut out, Compression::default());
        enc.write_all(&bytes).map_err(io_err)?;
        enc.finish().map_err(io_err)?;
    } else {
        out.write_all(&bytes).map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    Ok(())
}

/// Reads a NIfTI-1 single-file image (`.nii`, or gzip-compressed `.nii.gz`) as a [`Volume`].
///
/// Gzip is detected from the content, not the name. Only 3D images are accepted (trailing
/// dimensions of size 1 are fine). See the [module documentation](self) for the conventions.
pub fn read_nifti(path: &Path) -> Result<Volume, Error> {
    let raw = std::fs::read(path).map_err(|source| ErrorKind::NiftiIo {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &raw)
}

/// Reads a NIfTI-1 single-file image held in memory, plain or gzip-compressed (recognised from
/// the content), exactly as [`read_nifti`] reads a file; errors name the source `<in memory>`.
///
/// Whatever the bytes, the result is a volume or an error, never a panic, and memory stays
/// bounded by the input and the volume its header declares (at most
/// [`MAX_VOXELS`](crate::volume::MAX_VOXELS)): a gzip stream is inflated only as far as that
/// volume needs.
pub fn read_nifti_bytes(bytes: &[u8]) -> Result<Volume, Error> {
    decode(Path::new(crate::volume::IN_MEMORY), bytes)
}

/// Decompressed bytes tolerated after the voxel data of a gzip-compressed file. Reading the
/// stream to its end verifies its CRC; the bound keeps a stream that inflates far beyond what its
/// header declares (a decompression bomb) from filling memory.
const GZIP_TRAILING_MAX: usize = 1 << 20;

/// Where the voxels are and how to decode them, from a validated header.
struct Layout {
    header: NiftiHeader,
    dims: [usize; 3],
    size: usize,
    decode: Decode,
    offset: usize,
    /// Bytes of voxel data.
    expected: usize,
}

/// Parses and checks the header at the start of `bytes` (the decompressed file).
fn layout(path: &Path, bytes: &[u8]) -> Result<Layout, Error> {
    let not_nifti = |reason: String| -> Error {
        ErrorKind::NotNifti {
            path: path.to_owned(),
            reason,
        }
        .into()
    };
    if bytes.len() < HEADER_SIZE {
        return Err(not_nifti(format!(
            "{} bytes is shorter than the {HEADER_SIZE}-byte header",
            bytes.len()
        )));
    }
    let h = NiftiHeader::from_reader(&bytes[..HEADER_SIZE])
        .map_err(|e| not_nifti(format!("bad header ({e}); magic must be \"n+1\"")))?;
    if h.sizeof_hdr != HEADER_SIZE as i32 {
        return Err(not_nifti(format!(
            "sizeof_hdr is {} instead of {HEADER_SIZE}",
            h.sizeof_hdr
        )));
    }
    if &h.magic != b"n+1\0" {
        return Err(not_nifti(
            "magic \"ni1\" denotes a separate .hdr/.img pair, which is not supported".to_owned(),
        ));
    }

    let dims = dims_3d(path, &h.dim)?;
    let (size, decode) = element(path, h.datatype)?;
    // Refused before anything is allocated or inflated for the voxels.
    let count = crate::volume::checked_voxel_count(path, dims)?;
    let expected = count
        .checked_mul(size)
        .ok_or_else(|| not_nifti(format!("dimensions {dims:?} are too large")))?;
    let offset = h.vox_offset;
    if !(offset.is_finite() && offset >= HEADER_SIZE as f32) {
        return Err(not_nifti(format!(
            "vox_offset {offset} is before the end of the header"
        )));
    }
    // Extensions fill the space before the voxels; a gigabyte of them is no image but a way to
    // make the reader inflate without bound.
    if offset > MAX_VOX_OFFSET as f32 {
        return Err(not_nifti(format!(
            "vox_offset {offset} is beyond {MAX_VOX_OFFSET} bytes"
        )));
    }
    Ok(Layout {
        header: h,
        dims,
        size,
        decode,
        offset: offset as usize,
        expected,
    })
}

/// Largest `vox_offset` accepted (1 GiB of header extensions).
const MAX_VOX_OFFSET: usize = 1 << 30;

/// Reads a whole file's bytes (plain or gzip); `path` only labels errors.
fn decode(path: &Path, raw: &[u8]) -> Result<Volume, Error> {
    let inflated;
    let (bytes, l) = if raw.starts_with(&[0x1f, 0x8b]) {
        let gzip_err = |e: std::io::Error| -> Error {
            ErrorKind::NotNifti {
                path: path.to_owned(),
                reason: format!("gzip data is corrupt or truncated ({e})"),
            }
            .into()
        };
        // Header first, then only as much as it declares: the output never outgrows the volume.
        let mut gz = MultiGzDecoder::new(raw);
        let mut out = Vec::new();
        (&mut gz)
            .take(HEADER_SIZE as u64)
            .read_to_end(&mut out)
            .map_err(gzip_err)?;
        let l = layout(path, &out)?;
        let limit = l
            .offset
            .saturating_add(l.expected)
            .saturating_add(GZIP_TRAILING_MAX);
        (&mut gz)
            .take((limit - out.len()) as u64 + 1)
            .read_to_end(&mut out)
            .map_err(gzip_err)?;
        if out.len() > limit {
            return Err(ErrorKind::NotNifti {
                path: path.to_owned(),
                reason: format!(
                    "the gzip stream inflates to more than {GZIP_TRAILING_MAX} bytes beyond \
                     the {} bytes of header and voxel data",
                    l.offset + l.expected
                ),
            }
            .into());
        }
        inflated = out;
        (inflated.as_slice(), l)
    } else {
        (raw, layout(path, raw)?)
    };

    let Layout {
        header: h,
        dims,
        size,
        decode,
        offset,
        expected,
    } = l;
    let found = bytes.len().saturating_sub(offset);
    if found < expected {
        return Err(ErrorKind::NiftiTruncated {
            path: path.to_owned(),
            offset,
            expected,
            found,
        }
        .into());
    }

    let little = h.endianness == Endianness::Little;
    let slope = if h.scl_slope == 0.0 || !h.scl_slope.is_finite() {
        1.0
    } else {
        f64::from(h.scl_slope)
    };
    let inter = if h.scl_inter.is_finite() {
        f64::from(h.scl_inter)
    } else {
        0.0
    };
    let data: Vec<f32> = bytes[offset..offset + expected]
        .chunks_exact(size)
        .map(|c| (decode(c, little) * slope + inter) as f32)
        .collect();

    let (linear, origin) = affine_mm(path, &h)?;
    let scale = match h.xyzt_units & 0x07 {
        1 => 1.0,   // metres
        3 => 1.0e6, // micrometres
        _ => 1.0e3, // millimetres, or unknown (NIfTI default)
    };
    Volume::new(dims, data, linear / scale, origin / scale)
}

/// Validated `(ni, nj, nk)` from the NIfTI `dim` field.
fn dims_3d(path: &Path, dim: &[u16; 8]) -> Result<[usize; 3], Error> {
    let not_3d = || ErrorKind::NiftiNot3d {
        path: path.to_owned(),
        dim: *dim,
    };
    let rank = usize::from(dim[0]);
    if !(3..=7).contains(&rank) {
        return Err(not_3d().into());
    }
    // Stored as i16: values >= 2^15 are negative.
    let valid = |d: u16| (1..=i16::MAX as u16).contains(&d);
    if !dim[1..=3].iter().all(|&d| valid(d)) || dim[4..=rank].iter().any(|&d| d != 1) {
        return Err(not_3d().into());
    }
    Ok([dim[1], dim[2], dim[3]].map(usize::from))
}

/// Element size and decoder for a NIfTI datatype code.
type Decode = fn(&[u8], bool) -> f64;

fn element(path: &Path, code: i16) -> Result<(usize, Decode), Error> {
    macro_rules! dec {
        ($t:ty, $n:literal) => {
            (
                $n,
                (|c: &[u8], little: bool| {
                    let mut b = [0u8; $n];
                    b.copy_from_slice(c);
                    f64::from(if little {
                        <$t>::from_le_bytes(b)
                    } else {
                        <$t>::from_be_bytes(b)
                    })
                }) as Decode,
            )
        };
    }
    Ok(match code {
        2 => dec!(u8, 1),
        4 => dec!(i16, 2),
        512 => dec!(u16, 2),
        8 => dec!(i32, 4),
        16 => dec!(f32, 4),
        64 => dec!(f64, 8),
        _ => {
            let name = match code {
                0 => "unknown",
                1 => "binary",
                32 => "complex64",
                128 => "rgb24",
                256 => "int8",
                768 => "uint32",
                1024 => "int64",
                1280 => "uint64",
                1536 => "float128",
                1792 => "complex128",
                2048 => "complex256",
                2304 => "rgba32",
                _ => "not a NIfTI datatype",
            };
            return Err(ErrorKind::NiftiDatatype {
                path: path.to_owned(),
                code,
                name,
            }
            .into());
        }
    })
}

/// The voxel → world affine in the file's spatial units: sform, else qform, else pixdim.
fn affine_mm(path: &Path, h: &NiftiHeader) -> Result<(Matrix3<f64>, Vector3<f64>), Error> {
    let bad = |which, problem| ErrorKind::NiftiAffine {
        path: path.to_owned(),
        which,
        problem,
    };
    let (which, linear, origin) = if h.sform_code > 0 {
        let rows = [h.srow_x, h.srow_y, h.srow_z].map(|r| r.map(f64::from));
        let linear = Matrix3::from_fn(|r, c| rows[r][c]);
        let origin = Vector3::from_fn(|r, _| rows[r][3]);
        ("sform", linear, origin)
    } else {
        let pixdim = [h.pixdim[1], h.pixdim[2], h.pixdim[3]];
        if !pixdim.iter().all(|d| d.is_finite() && *d > 0.0) {
            return Err(ErrorKind::NiftiPixdim {
                path: path.to_owned(),
                pixdim,
            }
            .into());
        }
        let spacing = Vector3::from(pixdim.map(f64::from));
        if h.qform_code > 0 {
            let [b, c, d] = [h.quatern_b, h.quatern_c, h.quatern_d].map(f64::from);
            if ![b, c, d].iter().all(|v| v.is_finite()) {
                return Err(bad("qform", "not finite").into());
            }
            let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
            let q = UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(a, b, c, d));
            let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let scale = Vector3::new(spacing.x, spacing.y, qfac * spacing.z);
            let linear = q.to_rotation_matrix().into_inner() * Matrix3::from_diagonal(&scale);
            let origin = Vector3::new(h.quatern_x, h.quatern_y, h.quatern_z).map(f64::from);
            ("qform", linear, origin)
        } else {
            ("pixdim", Matrix3::from_diagonal(&spacing), Vector3::zeros())
        }
    };
    if !linear.iter().chain(origin.iter()).all(|v| v.is_finite()) {
        return Err(bad(which, "not finite").into());
    }
    let norms: f64 = linear.column_iter().map(|c| c.norm()).product();
    if !(norms > 0.0 && linear.determinant().abs() > 1e-9 * norms) {
        return Err(bad(which, "singular").into());
    }
    Ok((linear, origin))
}

/// The complete uncompressed file: header, empty extender, INT16 voxels (little-endian).
fn encode(path: &Path, volume: &Volume) -> Result<Vec<u8>, Error> {
    let unwritable = |reason: String| ErrorKind::NiftiUnwritable {
        path: PathBuf::from(path),
        reason,
    };
    let dims = volume.dims();
    let dim16 = dims.map(|d| i16::try_from(d).ok().filter(|&d| d > 0));
    let [Some(ni), Some(nj), Some(nk)] = dim16 else {
        return Err(unwritable(format!(
            "dimensions {dims:?} must each be between 1 and {}",
            i16::MAX
        ))
        .into());
    };
    let (linear, origin) = volume.affine();
    let linear_mm = linear * 1000.0;
    let origin_mm = origin * 1000.0;
    let spacing_mm = Vector3::from(volume.spacing()) * 1000.0;
    let (quat, qfac) = qform_of(&linear_mm, &spacing_mm);

    let mut h = Vec::with_capacity(VOX_OFFSET + 2 * volume.data().len());
    let i16s = |h: &mut Vec<u8>, v: &[i16]| v.iter().for_each(|x| h.extend(x.to_le_bytes()));
    let f32s = |h: &mut Vec<u8>, v: &[f64]| {
        v.iter().for_each(|&x| h.extend((x as f32).to_le_bytes()));
    };
    h.extend((HEADER_SIZE as i32).to_le_bytes()); // 0 sizeof_hdr
    h.extend([0u8; 10 + 18]); // 4 data_type, 14 db_name
    h.extend(0i32.to_le_bytes()); // 32 extents
    h.extend(0i16.to_le_bytes()); // 36 session_error
    h.push(b'r'); // 38 regular
    h.push(0); // 39 dim_info
    i16s(&mut h, &[3, ni, nj, nk, 1, 1, 1, 1]); // 40 dim
    f32s(&mut h, &[0.0; 3]); // 56 intent_p1..3
    i16s(&mut h, &[0, DT_INT16, 16, 0]); // 68 intent_code, datatype, bitpix, slice_start
    f32s(
        &mut h,
        &[
            qfac,
            spacing_mm.x,
            spacing_mm.y,
            spacing_mm.z,
            1.0,
            1.0,
            1.0,
            1.0,
        ],
    ); // 76 pixdim
    f32s(&mut h, &[VOX_OFFSET as f64, 1.0, 0.0]); // 108 vox_offset, scl_slope, scl_inter
    i16s(&mut h, &[0]); // 120 slice_end
    h.push(0); // 122 slice_code
    h.push(UNITS_MM_SEC); // 123 xyzt_units
    f32s(&mut h, &[0.0; 4]); // 124 cal_max, cal_min, slice_duration, toffset
    h.extend([0u8; 8]); // 140 glmax, glmin
    let mut descrip = [0u8; 80];
    descrip[..DESCRIPTION.len()].copy_from_slice(DESCRIPTION.as_bytes());
    h.extend(descrip); // 148 descrip
    h.extend([0u8; 24]); // 228 aux_file
    i16s(&mut h, &[XFORM_SCANNER, XFORM_SCANNER]); // 252 qform_code, sform_code
    f32s(&mut h, &[quat.i, quat.j, quat.k]); // 256 quatern_b, c, d
    f32s(&mut h, origin_mm.as_slice()); // 268 qoffset_x, y, z
    for r in 0..3 {
        let row = linear_mm.row(r);
        f32s(&mut h, &[row[0], row[1], row[2], origin_mm[r]]); // 280 srow_x, y, z
    }
    h.extend([0u8; 16]); // 328 intent_name
    h.extend(*b"n+1\0"); // 344 magic
    debug_assert_eq!(h.len(), HEADER_SIZE);
    h.extend([0u8; 4]); // 348 extender: no extensions
    for &v in volume.data() {
        // `as` saturates to the i16 range and maps NaN to 0.
        h.extend((v.round() as i16).to_le_bytes());
    }
    Ok(h)
}

/// Quaternion (with non-negative real part) and `qfac` of the rotation in `linear = R · diag(s)`,
/// flipping the third axis when the affine is left-handed. Affines with shear get the nearest
/// rotation.
fn qform_of(linear: &Matrix3<f64>, spacing: &Vector3<f64>) -> (nalgebra::Quaternion<f64>, f64) {
    let mut r = linear * Matrix3::from_diagonal(&spacing.map(|s| 1.0 / s));
    let qfac = if r.determinant() < 0.0 { -1.0 } else { 1.0 };
    r.column_mut(2).scale_mut(qfac);
    let q = UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix(&r)).into_inner();
    (if q.w < 0.0 { -q } else { q }, qfac)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 × 3 × 2 volume of distinct values, as the bytes of a plain `.nii` file.
    fn sample_file() -> (Volume, Vec<u8>) {
        let v = Volume::from_fn([4, 3, 2], [0.5e-3, 0.7e-3, 1e-3], [0.0; 3], |i, j, k| {
            (100 * k + 10 * j + i) as f32
        })
        .unwrap();
        let bytes = encode(Path::new("sample.nii"), &v).unwrap();
        (v, bytes)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzBuilder::new().write(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn put_i16(b: &mut [u8], at: usize, v: i16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_f32(b: &mut [u8], at: usize, v: f32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Byte offsets in the NIfTI-1 header.
    const OFF_DIM: usize = 40;
    const OFF_DATATYPE: usize = 70;
    const OFF_VOX_OFFSET: usize = 108;

    fn err(r: Result<Volume, Error>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn bytes_read_like_files_plain_and_gzip() {
        let (v, plain) = sample_file();
        for bytes in [plain.clone(), gzip(&plain)] {
            let back = read_nifti_bytes(&bytes).unwrap();
            assert_eq!(back.dims(), v.dims());
            assert_eq!(back.data(), v.data());
            assert!((back.affine().0 - v.affine().0).abs().max() < 1e-9);
        }
        // Errors name the in-memory source.
        assert!(err(read_nifti_bytes(&plain[..100])).contains("<in memory>"));
        // A few bytes of padding after the voxels, in either form, are fine.
        let mut padded = plain.clone();
        padded.extend([0u8; 100]);
        assert!(read_nifti_bytes(&gzip(&padded)).is_ok());
    }

    #[test]
    fn oversized_dims_are_refused_before_allocating() {
        // 1024 × 1024 × 1025 voxels: each dimension valid, the product above MAX_VOXELS.
        let (_, mut b) = sample_file();
        for (n, d) in [1024, 1024, 1025].into_iter().enumerate() {
            put_i16(&mut b, OFF_DIM + 2 + 2 * n, d);
        }
        for bytes in [b.clone(), gzip(&b)] {
            let msg = err(read_nifti_bytes(&bytes));
            assert!(
                msg.contains("1024 × 1024 × 1025") && msg.contains("1024³"),
                "{msg}"
            );
        }
        // The largest dimensions the format allows (32767³) are refused the same way.
        for n in 0..3 {
            put_i16(&mut b, OFF_DIM + 2 + 2 * n, i16::MAX);
        }
        assert!(err(read_nifti_bytes(&b)).contains("1024³"));
    }

    #[test]
    fn gzip_header_declaring_gigabytes_with_little_data_is_truncated() {
        // 1000³ float64 voxels (8 GB) declared, a few bytes present: an error, and nothing sized
        // by the header is allocated up front.
        let (_, mut b) = sample_file();
        for n in 0..3 {
            put_i16(&mut b, OFF_DIM + 2 + 2 * n, 1000);
        }
        put_i16(&mut b, OFF_DATATYPE, 64);
        let msg = err(read_nifti_bytes(&gzip(&b)));
        assert!(
            msg.contains("truncated") && msg.contains("8000000000"),
            "{msg}"
        );
    }

    #[test]
    fn gzip_stream_inflating_beyond_its_header_is_refused() {
        // A valid file followed by 4 MiB of zeros (a few kB compressed): the reader stops after
        // the voxels plus GZIP_TRAILING_MAX instead of inflating all of it.
        let (_, mut b) = sample_file();
        b.resize(b.len() + (4 << 20), 0);
        let msg = err(read_nifti_bytes(&gzip(&b)));
        assert!(msg.contains("inflates to more than"), "{msg}");
    }

    #[test]
    fn huge_vox_offset_is_refused() {
        let (_, mut b) = sample_file();
        for off in [1e12f32, f32::MAX] {
            put_f32(&mut b, OFF_VOX_OFFSET, off);
            for bytes in [b.clone(), gzip(&b)] {
                let msg = err(read_nifti_bytes(&bytes));
                assert!(msg.contains("vox_offset"), "{msg}");
            }
        }
    }
}
