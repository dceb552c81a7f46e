//! Classical bone-surface detector for B-mode frames: a bright ridge with an acoustic shadow
//! below it, scanline by scanline, then lateral continuity.
//!
//! This is the baseline the learned detector (issue 5) is measured against. It follows the
//! classical observation that a bone surface is the last strong echo of a scanline: a bright,
//! thin, roughly laterally continuous reflection followed by an acoustic shadow (Jain A.K. &
//! Taylor R.H., "Understanding bone responses in B-mode ultrasound images and automatic bone
//! surface extraction using a Bayesian probabilistic framework", Proc. SPIE 5373, 2004;
//! Foroughi P., Boctor E., Swartz M.J., Taylor R.H. & Fichtinger G., "Ultrasound bone
//! segmentation using dynamic programming", IEEE Ultrasonics Symposium, 2007, whose per-pixel
//! bone probability is likewise intensity × shadow). This implementation is a simplified,
//! independent one: no dynamic programming, a box depth prior and a median-based continuity check.
//!
//! # Per column (scanline)
//!
//! With intensities `I ∈ [0, 1]` (grey level / 255) and `s` the column smoothed along depth by a
//! box of half-width [`UsBoneParams::smooth_m`], every row `r` between
//! [`UsBoneParams::min_depth_m`] and [`UsBoneParams::max_depth_m`] scores
//!
//! ```text
//! score(r) = max(0, s(r) − S(r)) · clamp(1 − S(r) / A(r), 0, 1)
//! ```
//!
//! where `S(r)` is the mean intensity over [`UsBoneParams::shadow_len_m`] starting
//! [`UsBoneParams::gap_m`] below `r` (the shadow; the gap skips the echo's own tail and
//! reverberation) and `A(r)` the mean over [`UsBoneParams::above_len_m`] ending `gap_m` above `r`
//! (the soft tissue the beam crossed). The first factor is the ridge contrast against the shadow,
//! the second says the region below is a shadow *relative to the tissue above* — a bright speckle
//! or a fascia in muscle has muscle below it and scores ≈ 0. Rows whose shadow window would be cut
//! to less than half its length by the bottom of the image are not candidates. The best row wins
//! if it scores at least [`UsBoneParams::min_score`]; its position is refined to the maximum of
//! `s` within ±`gap_m / 2` and then to sub-pixel precision by a parabola through that maximum and
//! its two neighbours.
//!
//! # Lateral continuity
//!
//! A detection is kept only when at least [`UsBoneParams::min_support`] of the columns within
//! ±[`UsBoneParams::lateral_window_m`] also detected bone and its depth is within
//! [`UsBoneParams::max_jump_m`] of their median depth. Confidence = score × support share, in
//! `0..=1`.
//!
//! # Units and geometry
//!
//! Parameters are in metres; the frame's pixel spacing comes with them
//! ([`UsBoneParams::axial_spacing_m`], [`UsBoneParams::lateral_spacing_m`]). Pixels are row-major
//! (`pixels[row * width + col]`), row 0 at the probe face, row `r` at depth `r · axial_spacing_m`.
//!
//! # Cost
//!
//! `O(width · height)` with prefix sums; [`detect_bone`] does not allocate once its
//! [`BoneDetection`] has held a frame of the same size.

use crate::error::ErrorKind;
use crate::Error;

/// Settings of [`detect_bone`]; lengths in metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsBoneParams {
    /// Distance between row centres (m; default 0.070 / 255, a 70 mm deep 256-row frame).
    pub axial_spacing_m: f64,
    /// Distance between column centres (m; default 0.038 / 255, a 38 mm wide 256-column frame).
    pub lateral_spacing_m: f64,
    /// Half-width of the depth smoothing box (m; default 0.3 mm).
    pub smooth_m: f64,
    /// Shallowest candidate depth (m; default 3 mm: skips the probe-face ring-down and skin).
    pub min_depth_m: f64,
    /// Deepest candidate depth (m; default 1 m, i.e. the whole image).
    pub max_depth_m: f64,
    /// Gap between the ridge and its shadow / tissue windows (m; default 1 mm).
    pub gap_m: f64,
    /// Length of the shadow window below the ridge (m; default 6 mm).
    pub shadow_len_m: f64,
    /// Length of the tissue window above the ridge (m; default 5 mm).
    pub above_len_m: f64,
    /// Minimum score of a detection (0–1; default 0.15).
    pub min_score: f64,
    /// Half-width of the lateral continuity window (m; default 1.5 mm).
    pub lateral_window_m: f64,
    /// Largest depth difference from the neighbours' median (m; default 2 mm).
    pub max_jump_m: f64,
    /// Share of the other columns in the lateral window that must have detected bone
    /// (0–1; default 0.5).
    pub min_support: f64,
}

impl Default for UsBoneParams {
    fn default() -> Self {
        Self {
            axial_spacing_m: 0.070 / 255.0,
            lateral_spacing_m: 0.038 / 255.0,
            smooth_m: 0.3e-3,
            min_depth_m: 3e-3,
            max_depth_m: 1.0,
            gap_m: 1e-3,
            shadow_len_m: 6e-3,
            above_len_m: 5e-3,
            min_score: 0.15,
            lateral_window_m: 1.5e-3,
            max_jump_m: 2e-3,
            min_support: 0.5,
        }
    }
}

impl UsBoneParams {
    fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("axial pixel spacing (m)", self.axial_spacing_m),
            ("lateral pixel spacing (m)", self.lateral_spacing_m),
            ("shadow window length (m)", self.shadow_len_m),
            ("tissue window length (m)", self.above_len_m),
            ("maximum depth jump (m)", self.max_jump_m),
        ];
        for (what, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(ErrorKind::BadParam { what, value }.into());
            }
        }
        let non_negative = [
            ("depth smoothing half-width (m)", self.smooth_m),
            ("minimum depth (m)", self.min_depth_m),
            ("maximum depth (m)", self.max_depth_m),
            ("ridge-to-shadow gap (m)", self.gap_m),
            ("lateral window half-width (m)", self.lateral_window_m),
        ];
        for (what, value) in non_negative {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ErrorKind::BadParam { what, value }.into());
            }
        }
        for (what, value) in [
            ("minimum score (0–1)", self.min_score),
            ("minimum lateral support (0–1)", self.min_support),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ErrorKind::BadParam { what, value }.into());
            }
        }
        Ok(())
    }

    fn rows(&self, m: f64) -> usize {
        (m / self.axial_spacing_m).round() as usize
    }
}

/// Per-column result of [`detect_bone`], with the scratch buffers it reuses between frames.
#[derive(Clone, Debug, Default)]
pub struct BoneDetection {
    width: usize,
    height: usize,
    axial_spacing_m: f64,
    rows: Vec<Option<f32>>,
    confidence: Vec<f32>,
    raw_rows: Vec<f32>,
    raw_score: Vec<f32>,
    prefix: Vec<f32>,
    window: Vec<f32>,
}

impl BoneDetection {
    /// An empty result; [`detect_bone`] sizes it on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frame width (columns) of the last detection.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Frame height (rows) of the last detection.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Bone-surface row per column (fractional; row 0 at the probe face), `None` without bone.
    pub fn rows(&self) -> &[Option<f32>] {
        &self.rows
    }

    /// Confidence per column, 0–1 (0 where no bone was detected).
    pub fn confidence(&self) -> &[f32] {
        &self.confidence
    }

    /// Depth of the bone surface below the probe face in column `col` (m).
    pub fn depth_m(&self, col: usize) -> Option<f64> {
        self.rows
            .get(col)
            .copied()
            .flatten()
            .map(|r| f64::from(r) * self.axial_spacing_m)
    }

    /// Number of columns with a detection.
    pub fn detected_columns(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }

    /// Writes a bone mask (row-major, `width × height`): 1 within `half_thickness_px` rows of
    /// each detected surface row, 0 elsewhere. `mask` must hold `width · height` bytes.
    pub fn write_mask(&self, half_thickness_px: usize, mask: &mut [u8]) -> Result<(), Error> {
        let (w, h) = (self.width, self.height);
        if mask.len() != w * h {
            return Err(ErrorKind::BadFrame {
                width: w,
                height: h,
                len: mask.len(),
            }
            .into());
        }
        mask.fill(0);
        for (c, row) in self.rows.iter().enumerate() {
            if let Some(r) = row {
                let r = (r.round().max(0.0) as usize).min(h.saturating_sub(1));
                let lo = r.saturating_sub(half_thickness_px);
                let hi = (r + half_thickness_px).min(h - 1);
                for rr in lo..=hi {
                    mask[rr * w + c] = 1;
                }
            }
        }
        Ok(())
    }

    fn fit(&mut self, width: usize, height: usize, axial_spacing_m: f64, window: usize) {
        self.width = width;
        self.height = height;
        self.axial_spacing_m = axial_spacing_m;
        self.rows.resize(width, None);
        self.confidence.resize(width, 0.0);
        self.raw_rows.resize(width, f32::NAN);
        self.raw_score.resize(width, 0.0);
        self.prefix.resize(height + 1, 0.0);
        self.window.resize(window, 0.0);
    }
}

/// Detects the bone surface in one B-mode frame (`pixels` row-major, `width × height`, row =
/// depth) and writes it to `out`; see the module doc. Errors on inconsistent dimensions or
/// invalid parameters, never panics on them.
pub fn detect_bone(
    pixels: &[u8],
    width: usize,
    height: usize,
    params: &UsBoneParams,
    out: &mut BoneDetection,
) -> Result<(), Error> {
    params.validate()?;
    if width == 0 || height < 3 || width.checked_mul(height) != Some(pixels.len()) {
        return Err(ErrorKind::BadFrame {
            width,
            height,
            len: pixels.len(),
        }
        .into());
    }
    let half_window = (params.lateral_window_m / params.lateral_spacing_m).round() as usize;
    let half_window = half_window.min(width);
    out.fit(width, height, params.axial_spacing_m, 2 * half_window + 1);

    let smooth = params.rows(params.smooth_m);
    let gap = params.rows(params.gap_m).max(1);
    let shadow_len = params.rows(params.shadow_len_m).max(1);
    let above_len = params.rows(params.above_len_m).max(1);
    let r_min = params.rows(params.min_depth_m).max(1);
    let r_max = (params.max_depth_m / params.axial_spacing_m)
        .floor()
        .min((height - 1) as f64) as usize;
    let refine = (gap / 2).max(1);

    for c in 0..width {
        // Prefix sums of the column's intensities (0–1).
        let prefix = &mut out.prefix;
        prefix[0] = 0.0;
        for r in 0..height {
            prefix[r + 1] = prefix[r] + f32::from(pixels[r * width + c]) / 255.0;
        }
        let mean = |lo: usize, hi: usize| -> f32 {
            // Mean over rows lo..hi (hi exclusive, clipped); 0 when empty.
            let hi = hi.min(height);
            if hi <= lo {
                0.0
            } else {
                (prefix[hi] - prefix[lo]) / (hi - lo) as f32
            }
        };
        let smoothed = |r: usize| mean(r.saturating_sub(smooth), r + smooth + 1);
        let mut best = (0.0f32, usize::MAX);
        for r in r_min..=r_max {
            let s_lo = r + gap;
            if s_lo + shadow_len.div_ceil(2) > height {
                break;
            }
            let shadow = mean(s_lo, s_lo + shadow_len);
            let a_hi = r.saturating_sub(gap);
            let above = mean(a_hi.saturating_sub(above_len), a_hi.max(1));
            let ridge = smoothed(r);
            let contrast = (ridge - shadow).max(0.0);
            let darker = if above > 0.0 {
                (1.0 - shadow / above).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let score = contrast * darker;
            if score > best.0 {
                best = (score, r);
            }
        }
        let (score, r0) = best;
        if r0 == usize::MAX || f64::from(score) < params.min_score {
            out.raw_rows[c] = f32::NAN;
            out.raw_score[c] = 0.0;
            continue;
        }
        // Peak of the smoothed column near the best row, then a parabola through it.
        let lo = r0.saturating_sub(refine).max(1);
        let hi = (r0 + refine).min(height - 2);
        let mut peak = r0.clamp(1, height - 2);
        let mut peak_v = smoothed(peak);
        for r in lo..=hi {
            let v = smoothed(r);
            if v > peak_v {
                (peak, peak_v) = (r, v);
            }
        }
        let (a, b, cc) = (smoothed(peak - 1), peak_v, smoothed(peak + 1));
        let denom = a - 2.0 * b + cc;
        let delta = if denom < 0.0 {
            (0.5 * (a - cc) / denom).clamp(-0.5, 0.5)
        } else {
            0.0
        };
        out.raw_rows[c] = peak as f32 + delta;
        out.raw_score[c] = score.min(1.0);
    }

    // Lateral continuity.
    let max_jump = (params.max_jump_m / params.axial_spacing_m) as f32;
    for c in 0..width {
        let d = out.raw_rows[c];
        out.rows[c] = None;
        out.confidence[c] = 0.0;
        if d.is_nan() {
            continue;
        }
        let lo = c.saturating_sub(half_window);
        let hi = (c + half_window).min(width - 1);
        let others = (hi - lo) as f64;
        let mut n = 0;
        for cc in lo..=hi {
            let v = out.raw_rows[cc];
            if cc != c && !v.is_nan() {
                out.window[n] = v;
                n += 1;
            }
        }
        let support = if others > 0.0 { n as f64 / others } else { 1.0 };
        if support < params.min_support || (others > 0.0 && n == 0) {
            continue;
        }
        if n > 0 {
            let w = &mut out.window[..n];
            w.sort_unstable_by(f32::total_cmp);
            let median = if n % 2 == 1 {
                w[n / 2]
            } else {
                0.5 * (w[n / 2 - 1] + w[n / 2])
            };
            if (d - median).abs() > max_jump {
                continue;
            }
        }
        out.rows[c] = Some(d);
        out.confidence[c] = (f64::from(out.raw_score[c]) * support).clamp(0.0, 1.0) as f32;
    }
    Ok(())
}
