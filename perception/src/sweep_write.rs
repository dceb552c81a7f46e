//! Writer of the tracked ultrasound sweep (`telecho-sweep/1`, `docs/SWEEP_FORMAT.md`): the
//! members of `sweep.json` as `telecho scan` and the ROS 2 perception node write them, and the
//! one-record-per-line JSON layout. [`crate::sweep::Sweep`] reads what this writes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, ErrorKind};

/// One frame's entry in `sweep.json`: what the control node knows.
#[derive(Debug, Serialize)]
pub struct FrameRecord {
    pub index: usize,
    pub time_s: f64,
    /// FK of the measured joint angles, row-major 4×4.
    pub t_base_probe: [[f64; 4]; 4],
    /// The controller's compensated contact force along the probe axis, N.
    pub force_n: f64,
    pub force_setpoint_n: f64,
    pub sweep: String,
    pub sweep_index: usize,
    pub state: &'static str,
    /// Measured joint angles, rad (left out when the writer did not have them: sweeps that
    /// `telecho node perception` collects from ROS 2 topics).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub q_rad: Vec<f64>,
}

/// `probe` of `sweep.json`.
#[derive(Debug, Serialize)]
pub struct ProbeInfo {
    pub frequency_hz: f64,
    pub aperture_m: f64,
    pub depth_m: f64,
    pub slice_thickness_m: f64,
}

/// One entry of `sweeps` in `sweep.json`.
#[derive(Debug, Serialize)]
pub struct SweepEntry {
    pub index: usize,
    pub name: String,
    pub orientation: &'static str,
    pub force_n: f64,
    pub speed_m_s: f64,
    pub tilt_deg: f64,
    pub first_frame: usize,
    pub frame_count: usize,
    pub completed: bool,
}

/// How a sweep's imaging depth was set (`sweep.json` `imaging`, `telecho scan --json`
/// `imaging`; see [`crate::imaging`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ImagingInfo {
    /// `auto` (chosen from a survey of the first frames in contact) or `fixed`.
    pub mode: &'static str,
    /// Imaging depth of every frame, m.
    pub depth_m: f64,
    /// `auto`: the depth the survey frames were imaged at, m.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey_depth_m: Option<f64>,
    /// `auto`: median first bone echo of the survey frames, m (null: no bone seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bone_m: Option<Option<f64>>,
    /// `auto`: survey frames in contact (imaged, not recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey_frames: Option<usize>,
    /// `auto`: of those, the frames that saw bone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survey_frames_with_bone: Option<usize>,
}

/// `sweep.json` without its `frames` (written by [`write_json_with_frames`]).
#[derive(Debug, Serialize)]
pub struct SweepHeader {
    /// [`crate::sweep::FORMAT`].
    pub format: &'static str,
    pub frames_file: &'static str,
    pub pixel_type: &'static str,
    pub width: usize,
    pub height: usize,
    pub frame_bytes: usize,
    pub frame_count: usize,
    pub pixel_spacing_m: [f64; 2],
    pub t_probe_image: [[f64; 4]; 4],
    pub base_frame: &'static str,
    pub probe_frame: &'static str,
    pub pose_source: &'static str,
    pub force_source: &'static str,
    pub probe: ProbeInfo,
    /// How the imaging depth was set (absent: not recorded by the writer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imaging: Option<ImagingInfo>,
    pub arm: String,
    pub urdf: String,
    pub seed: u64,
    pub protocol: String,
    pub completed: bool,
    pub sweeps: Vec<SweepEntry>,
}

/// Writes `header` as a JSON object with an extra last member `"frames"`: an array holding one
/// compact object per line (deterministic, greppable, and parsed as ordinary JSON).
pub fn write_json_with_frames<H: Serialize, F: Serialize>(
    path: &Path,
    header: &H,
    frames: &[F],
) -> Result<(), Error> {
    let fail = |reason: String| -> Error {
        ErrorKind::Sweep {
            path: path.to_owned(),
            reason,
        }
        .into()
    };
    let head = serde_json::to_string(header).map_err(|e| fail(e.to_string()))?;
    let head = head
        .strip_suffix('}')
        .ok_or_else(|| fail("the header is not a JSON object".into()))?;
    let file = File::create(path).map_err(|e| fail(format!("cannot create: {e}")))?;
    let mut w = BufWriter::new(file);
    let sep = if head.len() > 1 { "," } else { "" };
    let mut write = || -> std::io::Result<()> {
        write!(w, "{head}{sep}\"frames\":[")?;
        for (i, f) in frames.iter().enumerate() {
            w.write_all(if i == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer(&mut w, f)?;
        }
        w.write_all(b"\n]}\n")?;
        w.flush()
    };
    write().map_err(|e| fail(format!("cannot write: {e}")))
}
