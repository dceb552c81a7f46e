//! The messages telecho streams to Slicer for a tracked ultrasound sweep, built from telecho's
//! data (metres, robot base frame) with the conversions of [`crate::convert`].
//!
//! Per frame: a TRANSFORM [`PROBE_DEVICE`] (the probe pose `t_base_probe` as probe→reference, mm,
//! LPS) and an IMAGE [`IMAGE_DEVICE`] (uint8 pixels, i = column along the array, j = row in depth,
//! its index-to-LPS matrix `1000·C·t_base_probe·t_probe_image`, so spacing and orientation place
//! it in the reference frame without further transforms). Both use header version 2 with the
//! metadata `frame` (index in the sweep) and `time_s` (acquisition time on the control node's
//! clock). The landmarks travel as one POINT [`POINT_DEVICE`] and the node's state as STATUS
//! [`STATUS_DEVICE`].

use nalgebra::{Matrix4, Vector3};

use crate::codec::{
    Content, Coordinate, Image, Message, PointElement, ScalarType, Status, Timestamp, TransformData,
};
use crate::convert::BaseToLps;
use crate::error::Error;

/// Device name of the probe pose TRANSFORM.
pub const PROBE_DEVICE: &str = "ProbeToReference";
/// Device name of the ultrasound IMAGE.
pub const IMAGE_DEVICE: &str = "Image_Reference";
/// Device name of the landmarks POINT.
pub const POINT_DEVICE: &str = "Landmarks";
/// Device name of the STATUS messages.
pub const STATUS_DEVICE: &str = "telecho";
/// POINT group of the landmarks.
pub const LANDMARK_GROUP: &str = "Landmark";

/// A landmark in the robot base frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Landmark {
    /// Name, at most 64 bytes (e.g. `L3_spinous`).
    pub name: String,
    /// Position in `base_link`, m.
    pub xyz_base_m: [f64; 3],
}

/// Geometry shared by the frames of a sweep.
#[derive(Clone, Debug)]
pub struct SweepGeometry {
    /// Columns (along the array) per frame.
    pub width: usize,
    /// Rows (depth samples) per frame.
    pub height: usize,
    /// Image-to-probe calibration: pixel `[col, row, 0, 1]` to probe-frame metres.
    pub t_probe_image: Matrix4<f64>,
    /// Base-to-LPS rotation.
    pub base_to_lps: BaseToLps,
}

/// One frame of the sweep.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Index in the sweep.
    pub index: usize,
    /// Acquisition time on the control node's clock, s.
    pub time_s: f64,
    /// Probe pose in the base frame, m.
    pub t_base_probe: &'a Matrix4<f64>,
    /// Pixels, row-major, row = depth (`height × width` bytes).
    pub pixels: &'a [u8],
}

fn frame_metadata(frame: &Frame<'_>) -> Vec<(String, String)> {
    vec![
        ("frame".into(), frame.index.to_string()),
        ("time_s".into(), format!("{:.6}", frame.time_s)),
    ]
}

impl SweepGeometry {
    /// The probe pose TRANSFORM of a frame (probe→reference, mm, LPS).
    pub fn probe_message(&self, frame: &Frame<'_>, timestamp: Timestamp) -> Message {
        let m = self.base_to_lps.rigid(frame.t_base_probe);
        Message::new(
            PROBE_DEVICE,
            timestamp,
            Content::Transform(TransformData::from_matrix4(&m)),
        )
        .with_metadata(frame.index as u32, frame_metadata(frame))
    }

    /// The index-to-LPS matrix of a frame's image (pixel indices in, mm out).
    pub fn ijk_to_lps(&self, t_base_probe: &Matrix4<f64>) -> Matrix4<f64> {
        self.base_to_lps
            .pixel_to_lps(&(t_base_probe * self.t_probe_image))
    }

    /// The IMAGE of a frame.
    pub fn image_message(&self, frame: &Frame<'_>, timestamp: Timestamp) -> Result<Message, Error> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w > usize::from(u16::MAX) || h > usize::from(u16::MAX) {
            return Err(Error::encode(
                "IMAGE",
                format!("frame size {w} × {h} does not fit OpenIGTLink's 16-bit sizes"),
            ));
        }
        if frame.pixels.len() != w * h {
            return Err(Error::encode(
                "IMAGE",
                format!(
                    "frame {} has {} bytes, {w} × {h} expected",
                    frame.index,
                    frame.pixels.len()
                ),
            ));
        }
        let image = Image::from_ijk_to_world(
            [w as u16, h as u16, 1],
            ScalarType::Uint8,
            Coordinate::Lps,
            &self.ijk_to_lps(frame.t_base_probe),
            frame.pixels.to_vec(),
        )?;
        Ok(Message::new(IMAGE_DEVICE, timestamp, Content::Image(image))
            .with_metadata(frame.index as u32, frame_metadata(frame)))
    }

    /// The landmarks as one POINT (mm, LPS), yellow, 3 mm diameter, owned by the image.
    pub fn landmarks_message(&self, landmarks: &[Landmark], timestamp: Timestamp) -> Message {
        let points = landmarks
            .iter()
            .map(|l| {
                let p = self.base_to_lps.point(&Vector3::from(l.xyz_base_m));
                PointElement {
                    name: l.name.clone(),
                    group: LANDMARK_GROUP.into(),
                    rgba: [255, 220, 0, 255],
                    position: [p.x as f32, p.y as f32, p.z as f32],
                    diameter: 3.0,
                    owner: IMAGE_DEVICE.into(),
                }
            })
            .collect();
        Message::new(POINT_DEVICE, timestamp, Content::Point(points))
    }
}

/// A STATUS message of telecho's node.
pub fn status_message(code: u16, error_name: &str, message: &str, timestamp: Timestamp) -> Message {
    Message::new(
        STATUS_DEVICE,
        timestamp,
        Content::Status(Status {
            code,
            subcode: 0,
            error_name: error_name.into(),
            message: message.into(),
        }),
    )
}
