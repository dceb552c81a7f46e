//! Fusion: the CBCT resliced along an ultrasound frame's image plane and overlaid on the frame.
//!
//! A sweep frame's pixel `(row, col)` lies at
//! `p_ct = t_ct_base · t_base_probe · t_probe_image · [col, row, 0, 1]ᵀ` in the CT (see
//! `docs/SWEEP_FORMAT.md`); [`reslice_frame`] samples the CT (trilinear, HU) at every pixel's
//! position, giving a CT image on the same pixel grid as the ultrasound frame. [`compose`] then
//! draws the ultrasound in grey with the CT bone (HU ≥ [`FuseParams::bone_hu`]) as a coloured
//! semi-transparent layer and the first bone surface met along each scanline — the surface the
//! ultrasound itself can show — as a bright contour; [`Layout::SideBySide`] puts the windowed CT
//! reslice next to that overlay. [`write_png`] writes the RGB result.

use std::path::Path;

use nalgebra::{Matrix4, Vector4};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::sweep::Sweep;
use crate::volume::Volume;
use crate::Error;

fn fuse_err(reason: impl Into<String>) -> Error {
    ErrorKind::Fuse {
        reason: reason.into(),
    }
    .into()
}

/// The CT sampled on an ultrasound frame's pixel grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Reslice {
    width: usize,
    height: usize,
    /// Row spacing (m), to turn rows into depths.
    row_spacing_m: f64,
    /// HU per pixel, row-major (`row × width + col`); NaN outside the CT.
    hu: Vec<f32>,
}

impl Reslice {
    /// Columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// HU per pixel, row-major; NaN where the pixel lies outside the CT volume.
    pub fn hu(&self) -> &[f32] {
        &self.hu
    }

    /// HU at `(row, col)`; `None` outside the image, NaN outside the CT.
    pub fn get(&self, row: usize, col: usize) -> Option<f32> {
        (row < self.height && col < self.width).then(|| self.hu[row * self.width + col])
    }

    /// Share of pixels that fall inside the CT volume.
    pub fn coverage(&self) -> f64 {
        if self.hu.is_empty() {
            return 0.0;
        }
        self.hu.iter().filter(|v| !v.is_nan()).count() as f64 / self.hu.len() as f64
    }

    /// The first crossing of `level_hu` going down column `col` (sub-pixel row, linear
    /// interpolation between the two rows bracketing it); `None` when the column never reaches
    /// it or `col` is out of range.
    pub fn first_crossing_row(&self, col: usize, level_hu: f32) -> Option<f64> {
        if col >= self.width {
            return None;
        }
        let mut prev: Option<f32> = None;
        for row in 0..self.height {
            let v = self.hu[row * self.width + col];
            if v.is_nan() {
                prev = None;
                continue;
            }
            if v >= level_hu {
                return Some(match prev {
                    Some(a) if v > a => row as f64 - 1.0 + f64::from((level_hu - a) / (v - a)),
                    _ => row as f64,
                });
            }
            prev = Some(v);
        }
        None
    }

    /// [`Reslice::first_crossing_row`] as a depth below the probe face (m).
    pub fn first_crossing_depth_m(&self, col: usize, level_hu: f32) -> Option<f64> {
        self.first_crossing_row(col, level_hu)
            .map(|r| r * self.row_spacing_m)
    }
}

/// Reslices `ct` on a `width × height` pixel grid placed by `t_ct_image` (pixel
/// `[col, row, 0, 1]ᵀ` → CT metres). `row_spacing_m` only labels depths.
pub fn reslice(
    ct: &Volume,
    t_ct_image: &Matrix4<f64>,
    width: usize,
    height: usize,
    row_spacing_m: f64,
) -> Result<Reslice, Error> {
    if width == 0 || height == 0 {
        return Err(fuse_err(format!("empty image grid {width} × {height}")));
    }
    if t_ct_image.iter().any(|v| !v.is_finite()) {
        return Err(fuse_err("image-to-CT transform is not finite"));
    }
    let mut hu = Vec::with_capacity(width * height);
    let origin = t_ct_image * Vector4::new(0.0, 0.0, 0.0, 1.0);
    let dc = t_ct_image * Vector4::new(1.0, 0.0, 0.0, 0.0);
    let dr = t_ct_image * Vector4::new(0.0, 1.0, 0.0, 0.0);
    for row in 0..height {
        for col in 0..width {
            let p = origin + dc * col as f64 + dr * row as f64;
            hu.push(ct.sample_world(&p.xyz()).unwrap_or(f32::NAN));
        }
    }
    Ok(Reslice {
        width,
        height,
        row_spacing_m,
        hu,
    })
}

/// `t_ct_image` of sweep frame `frame` with the CT placed at `t_base_ct` in the robot's base.
pub fn frame_to_ct(
    sweep: &Sweep,
    frame: usize,
    t_base_ct: &Transform,
) -> Result<Matrix4<f64>, Error> {
    let n = sweep.frame_count();
    let record = sweep.frames().get(frame).ok_or_else(|| {
        fuse_err(format!(
            "frame {frame} is out of range: the sweep has {n} frames (0..{})",
            n.saturating_sub(1)
        ))
    })?;
    if !t_base_ct.is_finite() {
        return Err(fuse_err("t_base_ct is not finite"));
    }
    let t_ct_probe = t_base_ct.inverse() * record.t_base_probe;
    Ok(t_ct_probe.to_matrix4() * sweep.t_probe_image())
}

/// The CT resliced along sweep frame `frame`'s image plane, the CT at `t_base_ct`.
///
/// Errors: `frame` out of range, a non-finite transform, or a plane that misses the CT entirely.
pub fn reslice_frame(
    ct: &Volume,
    sweep: &Sweep,
    frame: usize,
    t_base_ct: &Transform,
) -> Result<Reslice, Error> {
    let t_ct_image = frame_to_ct(sweep, frame, t_base_ct)?;
    let r = reslice(
        ct,
        &t_ct_image,
        sweep.width(),
        sweep.height(),
        sweep.pixel_spacing_m()[1],
    )?;
    if r.coverage() == 0.0 {
        return Err(fuse_err(format!(
            "frame {frame}'s image plane does not intersect the CT volume (is t_base_ct right?)"
        )));
    }
    Ok(r)
}

/// How [`compose`] lays the images out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The ultrasound with the CT bone over it.
    Overlay,
    /// The CT reslice (bone window) on the left, the overlay on the right.
    SideBySide,
}

/// Settings of [`compose`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FuseParams {
    /// CT bone threshold for the coloured layer (HU; default 150: cancellous bone, ~250 HU, and
    /// cortex, not muscle or disc, ≤ 100 HU).
    pub bone_hu: f32,
    /// Iso-level of the bone surface drawn as a contour (HU; default 625, midway between soft
    /// tissue and cortical bone).
    pub surface_hu: f32,
    /// Opacity of the bone layer, 0–1 (default 0.35).
    pub alpha: f32,
    /// Colour of the bone layer (default orange).
    pub bone_rgb: [u8; 3],
    /// Colour of the first-surface contour (default yellow).
    pub contour_rgb: [u8; 3],
    /// CT display window for the side-by-side reslice, HU (default −200 … 1300).
    pub window_hu: [f32; 2],
    /// Layout (default overlay).
    pub layout: Layout,
}

impl Default for FuseParams {
    fn default() -> Self {
        Self {
            bone_hu: 150.0,
            surface_hu: 625.0,
            alpha: 0.35,
            bone_rgb: [255, 120, 0],
            contour_rgb: [255, 255, 0],
            window_hu: [-200.0, 1300.0],
            layout: Layout::Overlay,
        }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `3 × width × height` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// The pixel at `(row, col)`.
    pub fn pixel(&self, row: usize, col: usize) -> Option<[u8; 3]> {
        if row >= self.height || col >= self.width {
            return None;
        }
        let i = 3 * (row * self.width + col);
        Some([self.data[i], self.data[i + 1], self.data[i + 2]])
    }
}

/// Draws the ultrasound frame `us` (row-major grey, the reslice's size) with the CT bone of
/// `ct` over it; see the [module documentation](self).
pub fn compose(us: &[u8], ct: &Reslice, params: &FuseParams) -> Result<RgbImage, Error> {
    let (w, h) = (ct.width, ct.height);
    if us.len() != w * h {
        return Err(fuse_err(format!(
            "ultrasound frame has {} pixels but the reslice is {w} × {h}",
            us.len()
        )));
    }
    if !(0.0..=1.0).contains(&params.alpha)
        || !params.bone_hu.is_finite()
        || !params.surface_hu.is_finite()
        || !params.window_hu.iter().all(|v| v.is_finite())
        || params.window_hu[1] <= params.window_hu[0]
    {
        return Err(fuse_err(format!("invalid overlay settings {params:?}")));
    }
    // The first bone surface along every scanline (the one ultrasound can show).
    let contour: Vec<Option<usize>> = (0..w)
        .map(|col| {
            ct.first_crossing_row(col, params.surface_hu)
                .map(|r| (r.round() as usize).min(h - 1))
        })
        .collect();
    let mut overlay = vec![0u8; 3 * w * h];
    let a = params.alpha;
    for row in 0..h {
        for col in 0..w {
            let i = row * w + col;
            let g = f32::from(us[i]);
            let hu = ct.hu[i];
            let rgb = if hu >= params.bone_hu {
                params
                    .bone_rgb
                    .map(|c| ((1.0 - a) * g + a * f32::from(c)).round().clamp(0.0, 255.0) as u8)
            } else {
                [us[i]; 3]
            };
            overlay[3 * i..3 * i + 3].copy_from_slice(&rgb);
        }
    }
    for (col, r) in contour.iter().enumerate() {
        if let Some(r) = *r {
            for rr in r.saturating_sub(1)..=(r + 1).min(h - 1) {
                let i = rr * w + col;
                overlay[3 * i..3 * i + 3].copy_from_slice(&params.contour_rgb);
            }
        }
    }
    match params.layout {
        Layout::Overlay => Ok(RgbImage {
            width: w,
            height: h,
            data: overlay,
        }),
        Layout::SideBySide => {
            let [lo, hi] = params.window_hu;
            let mut data = vec![0u8; 3 * 2 * w * h];
            for row in 0..h {
                for col in 0..w {
                    let hu = ct.hu[row * w + col];
                    let g = if hu.is_nan() {
                        0
                    } else {
                        ((hu - lo) / (hi - lo) * 255.0).round().clamp(0.0, 255.0) as u8
                    };
                    let left = 3 * (row * 2 * w + col);
                    let rgb = if hu.is_nan() { [0, 0, 96] } else { [g; 3] };
                    data[left..left + 3].copy_from_slice(&rgb);
                    let right = 3 * (row * 2 * w + w + col);
                    let src = 3 * (row * w + col);
                    data[right..right + 3].copy_from_slice(&overlay[src..src + 3]);
                }
            }
            Ok(RgbImage {
                width: 2 * w,
                height: h,
                data,
            })
        }
    }
}

/// Writes `image` as an 8-bit RGB PNG.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<(), Error> {
    let err = |reason: String| -> Error {
        ErrorKind::Png {
            path: path.to_path_buf(),
            reason,
        }
        .into()
    };
    if image.width == 0 || image.height == 0 || image.data.len() != 3 * image.width * image.height {
        return Err(err(format!(
            "image of {} × {} does not match its {} bytes",
            image.width,
            image.height,
            image.data.len()
        )));
    }
    let (w, h) = (
        u32::try_from(image.width).map_err(|e| err(e.to_string()))?,
        u32::try_from(image.height).map_err(|e| err(e.to_string()))?,
    );
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| err(e.to_string()))?;
    writer
        .write_image_data(&image.data)
        .map_err(|e| err(e.to_string()))?;
    writer.finish().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Reslices the CT along sweep frame `frame` (CT at `t_base_ct`) and composes the overlay.
pub fn fuse_frame(
    ct: &Volume,
    sweep: &Sweep,
    frame: usize,
    t_base_ct: &Transform,
    params: &FuseParams,
) -> Result<(Reslice, RgbImage), Error> {
    let r = reslice_frame(ct, sweep, frame, t_base_ct)?;
    let us = sweep
        .frame_pixels(frame)
        .ok_or_else(|| fuse_err(format!("frame {frame} has no pixels")))?;
    let image = compose(us, &r, params)?;
    Ok((r, image))
}
