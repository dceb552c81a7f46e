//! Reader of the tracked ultrasound sweep written by `telecho scan` (format `telecho-sweep/1`,
//! documented in `docs/SWEEP_FORMAT.md`).
//!
//! Everything is validated on load — format tag, sizes, the pixel file's length, every pose's
//! finiteness and orthonormality, sweep ranges — so later stages can index without checks.
//! Members the reader does not know are ignored, as the format's versioning rule asks.

use std::path::{Path, PathBuf};

use nalgebra::{Matrix3, Matrix4, Vector3, Vector4};
use serde::Deserialize;
use telecho_core::Transform;

use crate::error::{Error, ErrorKind};

/// The only format tag this reader accepts.
pub const FORMAT: &str = "telecho-sweep/1";

/// Largest frame edge accepted, pixels (a guard against absurd headers).
const MAX_EDGE: usize = 8192;

/// Tolerance on a pose's rotation being orthonormal.
const ORTHONORMAL_TOL: f64 = 1e-6;

/// Executor state a frame was taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameState {
    /// Force ramp and settling at the sweep's first point.
    Contact,
    /// Moving along the skin at the sweep's force.
    Sweep,
}

/// Image plane orientation of a protocol sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// Transducer array along the spine.
    Sagittal,
    /// Transducer array across the spine.
    Transverse,
}

/// One protocol sweep's entry.
#[derive(Clone, Debug)]
pub struct SweepInfo {
    /// Position in the protocol.
    pub index: usize,
    /// The protocol's name for the sweep.
    pub name: String,
    /// Sagittal or transverse.
    pub orientation: Orientation,
    /// Force setpoint, N.
    pub force_n: f64,
    /// Sweep speed, m/s.
    pub speed_m_s: f64,
    /// Beam tilt toward the midline, degrees.
    pub tilt_deg: f64,
    /// First frame of the sweep.
    pub first_frame: usize,
    /// Number of frames of the sweep.
    pub frame_count: usize,
    /// The executor finished the sweep.
    pub completed: bool,
}

/// One frame's record: what the control node knew when the frame was taken.
#[derive(Clone, Debug)]
pub struct FrameRecord {
    /// Acquisition time on the control node's clock, s.
    pub time_s: f64,
    /// Probe pose (`probe_tip` in `base_link`), FK of the measured joints.
    pub t_base_probe: Transform,
    /// The controller's compensated contact force along the probe axis, N.
    pub force_n: f64,
    /// The force reference that cycle, N.
    pub force_setpoint_n: f64,
    /// Index into [`Sweep::sweeps`].
    pub sweep_index: usize,
    /// Executor state.
    pub state: FrameState,
}

/// Probe description from the header.
#[derive(Clone, Copy, Debug)]
pub struct ProbeInfo {
    /// Centre frequency, Hz.
    pub frequency_hz: f64,
    /// Aperture (array length), m.
    pub aperture_m: f64,
    /// Imaging depth, m.
    pub depth_m: f64,
    /// Elevational slice thickness, m.
    pub slice_thickness_m: f64,
}

/// A tracked sweep loaded into memory.
#[derive(Clone, Debug)]
pub struct Sweep {
    dir: PathBuf,
    width: usize,
    height: usize,
    pixel_spacing_m: [f64; 2],
    t_probe_image: Matrix4<f64>,
    probe: ProbeInfo,
    arm: String,
    seed: u64,
    protocol: String,
    completed: bool,
    sweeps: Vec<SweepInfo>,
    frames: Vec<FrameRecord>,
    pixels: Vec<u8>,
}

#[derive(Deserialize)]
struct RawProbe {
    frequency_hz: f64,
    aperture_m: f64,
    depth_m: f64,
    slice_thickness_m: f64,
}

#[derive(Deserialize)]
struct RawSweep {
    index: usize,
    name: String,
    orientation: String,
    force_n: f64,
    speed_m_s: f64,
    tilt_deg: f64,
    first_frame: usize,
    frame_count: usize,
    completed: bool,
}

#[derive(Deserialize)]
struct RawFrame {
    index: usize,
    time_s: f64,
    t_base_probe: [[f64; 4]; 4],
    force_n: f64,
    force_setpoint_n: f64,
    sweep_index: usize,
    state: String,
}

#[derive(Deserialize)]
struct RawHeader {
    format: String,
    frames_file: String,
    pixel_type: String,
    width: usize,
    height: usize,
    frame_bytes: usize,
    frame_count: usize,
    pixel_spacing_m: [f64; 2],
    t_probe_image: [[f64; 4]; 4],
    probe: RawProbe,
    #[serde(default)]
    arm: String,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    protocol: String,
    completed: bool,
    sweeps: Vec<RawSweep>,
    frames: Vec<RawFrame>,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    ErrorKind::Sweep {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
    .into()
}

fn matrix(rows: &[[f64; 4]; 4]) -> Matrix4<f64> {
    Matrix4::from_fn(|r, c| rows[r][c])
}

/// A rigid transform from a row-major 4×4, or why it is not one.
fn rigid(rows: &[[f64; 4]; 4]) -> Result<Transform, String> {
    let m = matrix(rows);
    if m.iter().any(|v| !v.is_finite()) {
        return Err("has a non-finite entry".into());
    }
    if m.row(3)
        .iter()
        .zip([0.0, 0.0, 0.0, 1.0])
        .any(|(a, b)| *a != b)
    {
        return Err("last row is not [0, 0, 0, 1]".into());
    }
    let r: Matrix3<f64> = m.fixed_view::<3, 3>(0, 0).into_owned();
    let err = (r.transpose() * r - Matrix3::identity()).abs().max();
    if err > ORTHONORMAL_TOL || r.determinant() < 0.0 {
        return Err(format!(
            "rotation is not orthonormal and right-handed (|RᵀR − I| = {err:.2e})"
        ));
    }
    Ok(Transform::new(r, m.fixed_view::<3, 1>(0, 3).into_owned()))
}

impl Sweep {
    /// Reads a sweep from `dir`: the directory holding `sweep.json`, or the scan output
    /// directory holding `sweep/sweep.json`.
    pub fn read(dir: &Path) -> Result<Self, Error> {
        let dir = if dir.join("sweep.json").is_file() {
            dir.to_path_buf()
        } else if dir.join("sweep").join("sweep.json").is_file() {
            dir.join("sweep")
        } else {
            return Err(bad(
                dir,
                "no sweep.json here nor in its sweep/ subdirectory",
            ));
        };
        let json_path = dir.join("sweep.json");
        let text = std::fs::read(&json_path).map_err(|e| bad(&json_path, e.to_string()))?;
        let raw: RawHeader = serde_json::from_slice(&text)
            .map_err(|e| bad(&json_path, format!("malformed sweep.json: {e}")))?;
        let json = json_path.as_path();
        if raw.format != FORMAT {
            return Err(bad(
                json,
                format!("format is {:?}; this reader reads {FORMAT:?}", raw.format),
            ));
        }
        if raw.pixel_type != "u8" {
            return Err(bad(
                json,
                format!(
                    "pixel_type {:?} is not supported (only \"u8\")",
                    raw.pixel_type
                ),
            ));
        }
        if raw.width == 0 || raw.height == 0 || raw.width > MAX_EDGE || raw.height > MAX_EDGE {
            return Err(bad(
                json,
                format!(
                    "frame size {} × {} is out of range (1 … {MAX_EDGE})",
                    raw.width, raw.height
                ),
            ));
        }
        if raw.frame_bytes != raw.width * raw.height {
            return Err(bad(
                json,
                format!(
                    "frame_bytes {} ≠ width × height = {}",
                    raw.frame_bytes,
                    raw.width * raw.height
                ),
            ));
        }
        if raw.frame_count != raw.frames.len() {
            return Err(bad(
                json,
                format!(
                    "frame_count {} but {} frame records",
                    raw.frame_count,
                    raw.frames.len()
                ),
            ));
        }
        if raw
            .pixel_spacing_m
            .iter()
            .any(|s| !s.is_finite() || *s <= 0.0 || *s > 0.01)
        {
            return Err(bad(
                json,
                format!(
                    "pixel_spacing_m {:?} must be positive and at most 10 mm",
                    raw.pixel_spacing_m
                ),
            ));
        }
        let t_probe_image = matrix(&raw.t_probe_image);
        if t_probe_image.iter().any(|v| !v.is_finite()) || t_probe_image.try_inverse().is_none() {
            return Err(bad(json, "t_probe_image is not finite and invertible"));
        }
        let p = &raw.probe;
        if [p.frequency_hz, p.aperture_m, p.depth_m, p.slice_thickness_m]
            .iter()
            .any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(bad(json, "probe parameters must be finite and positive"));
        }
        let mut sweeps = Vec::with_capacity(raw.sweeps.len());
        for (i, s) in raw.sweeps.into_iter().enumerate() {
            let orientation = match s.orientation.as_str() {
                "sagittal" => Orientation::Sagittal,
                "transverse" => Orientation::Transverse,
                other => {
                    return Err(bad(
                        json,
                        format!(
                            "sweeps[{i}]: orientation {other:?} is neither sagittal nor transverse"
                        ),
                    ))
                }
            };
            let end = s.first_frame.checked_add(s.frame_count);
            if s.index != i || end.is_none_or(|e| e > raw.frame_count) {
                return Err(bad(
                    json,
                    format!(
                        "sweeps[{i}]: index {} / frames {}+{} do not fit {} frames",
                        s.index, s.first_frame, s.frame_count, raw.frame_count
                    ),
                ));
            }
            sweeps.push(SweepInfo {
                index: s.index,
                name: s.name,
                orientation,
                force_n: s.force_n,
                speed_m_s: s.speed_m_s,
                tilt_deg: s.tilt_deg,
                first_frame: s.first_frame,
                frame_count: s.frame_count,
                completed: s.completed,
            });
        }
        let mut frames = Vec::with_capacity(raw.frames.len());
        let mut last_time = f64::NEG_INFINITY;
        for (i, f) in raw.frames.into_iter().enumerate() {
            let frame_err = |reason: String| bad(json, format!("frames[{i}]: {reason}"));
            if f.index != i {
                return Err(frame_err(format!("index is {}, expected {i}", f.index)));
            }
            if !f.time_s.is_finite() || f.time_s < last_time {
                return Err(frame_err(format!(
                    "time_s {} is not finite or goes backwards",
                    f.time_s
                )));
            }
            last_time = f.time_s;
            if !f.force_n.is_finite() || !f.force_setpoint_n.is_finite() {
                return Err(frame_err("force is not finite".into()));
            }
            if f.sweep_index >= sweeps.len() {
                return Err(frame_err(format!(
                    "sweep_index {} but {} sweeps",
                    f.sweep_index,
                    sweeps.len()
                )));
            }
            let state = match f.state.as_str() {
                "contact" => FrameState::Contact,
                "sweep" => FrameState::Sweep,
                other => return Err(frame_err(format!("unknown state {other:?}"))),
            };
            let t_base_probe =
                rigid(&f.t_base_probe).map_err(|e| frame_err(format!("t_base_probe {e}")))?;
            frames.push(FrameRecord {
                time_s: f.time_s,
                t_base_probe,
                force_n: f.force_n,
                force_setpoint_n: f.force_setpoint_n,
                sweep_index: f.sweep_index,
                state,
            });
        }
        let frames_file = Path::new(&raw.frames_file);
        if frames_file.is_absolute()
            || frames_file
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(
                json,
                format!(
                    "frames_file {:?} must be a plain relative name",
                    raw.frames_file
                ),
            ));
        }
        let pixel_path = dir.join(frames_file);
        let pixels = std::fs::read(&pixel_path).map_err(|e| bad(&pixel_path, e.to_string()))?;
        let expected = raw.frame_count * raw.frame_bytes;
        if pixels.len() != expected {
            return Err(bad(
                &pixel_path,
                format!(
                    "holds {} bytes but {} frames of {} bytes need {expected}",
                    pixels.len(),
                    raw.frame_count,
                    raw.frame_bytes
                ),
            ));
        }
        Ok(Self {
            dir,
            width: raw.width,
            height: raw.height,
            pixel_spacing_m: raw.pixel_spacing_m,
            t_probe_image,
            probe: ProbeInfo {
                frequency_hz: p.frequency_hz,
                aperture_m: p.aperture_m,
                depth_m: p.depth_m,
                slice_thickness_m: p.slice_thickness_m,
            },
            arm: raw.arm,
            seed: raw.seed,
            protocol: raw.protocol,
            completed: raw.completed,
            sweeps,
            frames,
            pixels,
        })
    }

    /// The directory `sweep.json` was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Columns (scanlines) per frame.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows (depth samples) per frame.
    pub fn height(&self) -> usize {
        self.height
    }

    /// `[column spacing, row spacing]`, m.
    pub fn pixel_spacing_m(&self) -> [f64; 2] {
        self.pixel_spacing_m
    }

    /// Image-to-probe calibration: `p_probe = t_probe_image · [col, row, 0, 1]ᵀ`.
    pub fn t_probe_image(&self) -> &Matrix4<f64> {
        &self.t_probe_image
    }

    /// The probe's description.
    pub fn probe(&self) -> &ProbeInfo {
        &self.probe
    }

    /// Arm name from the header (`"ur5e"`, `"panda"`).
    pub fn arm(&self) -> &str {
        &self.arm
    }

    /// Patient seed from the header (simulated scans).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Scan-protocol name.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Whether the scan completed (frames of an aborted scan are still valid).
    pub fn completed(&self) -> bool {
        self.completed
    }

    /// The protocol's sweeps.
    pub fn sweeps(&self) -> &[SweepInfo] {
        &self.sweeps
    }

    /// Per-frame records, in acquisition order.
    pub fn frames(&self) -> &[FrameRecord] {
        &self.frames
    }

    /// Number of frames.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Frame `i`'s pixels, row-major, row = depth.
    pub fn frame_pixels(&self, i: usize) -> Option<&[u8]> {
        let n = self.width * self.height;
        self.pixels.get(i * n..(i + 1) * n)
    }

    /// A pixel's position in the probe frame, m.
    pub fn pixel_to_probe(&self, row: f64, col: f64) -> Vector3<f64> {
        let p = self.t_probe_image * Vector4::new(col, row, 0.0, 1.0);
        Vector3::new(p.x, p.y, p.z)
    }

    /// A pixel of frame `i` in the base frame, m (`None` when `i` is out of range).
    pub fn pixel_to_base(&self, i: usize, row: f64, col: f64) -> Option<Vector3<f64>> {
        let f = self.frames.get(i)?;
        Some(
            f.t_base_probe
                .transform_point(&self.pixel_to_probe(row, col)),
        )
    }
}
