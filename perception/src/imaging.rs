//! Imaging depth chosen per patient from a survey of the first frames in contact, as a
//! sonographer sets the depth after placing the probe.
//!
//! A fixed 70 mm image sees the laminae, facets and transverse processes of a slim patient, but
//! of a thick one only the spinous tips (skin-to-lamina distances of 75–85 mm occur in the
//! simulated population, see `docs/BENCHMARK_NOTES.md`): the registration then has too few bone
//! points or too few vertebrae to tell the level. Clinical lumbar scanning sets the depth per
//! patient so that the deepest target (the transverse processes) fits in the image.
//!
//! [`DepthSurvey`] does that without any knowledge of the patient: the probe's first frames in
//! contact over the midline are imaged at [`DepthPolicy::max_depth_m`]; the classical bone
//! detector ([`crate::us_bone`]) finds the shallowest bone echo of each (a low percentile over
//! the columns that detected bone: the spinous tips are the shallowest bone of the lumbar
//! back); the median over the survey frames plus [`DepthPolicy::below_first_bone_m`] (the
//! posterior elements lie that much deeper than the spinous tips), rounded up to
//! [`DepthPolicy::step_m`] as a scanner's depth presets are, and kept within
//! `[min_depth_m, max_depth_m]`, is the imaging depth of the whole scan. A survey that finds no
//! bone chooses the largest depth: bone beyond the image looks like no bone.
//!
//! The survey is a pure state machine (no I/O): the caller renders or acquires the frames and
//! feeds them in.

use crate::ct_landmarks::median;
use crate::error::ErrorKind;
use crate::us_bone::{detect_bone, BoneDetection, UsBoneParams};
use crate::Error;

/// How [`DepthSurvey`] chooses the imaging depth; lengths in metres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthPolicy {
    /// Shallowest depth it may choose (default 0.070, the simulated probe's default).
    pub min_depth_m: f64,
    /// Deepest depth it may choose, and the depth the survey frames are imaged at (default 0.120).
    pub max_depth_m: f64,
    /// Margin below the first bone echo (default 0.045: the transverse processes lie 25–35 mm
    /// deeper than the spinous tips in the simulated population, plus room for the shadow below
    /// them and for breathing).
    pub below_first_bone_m: f64,
    /// Depth presets are multiples of this (default 0.010).
    pub step_m: f64,
    /// Survey frames to collect (default 5).
    pub frames: usize,
    /// Smallest share of a frame's scanlines in contact for it to count (default 0.8).
    pub min_contact_fraction: f64,
    /// Smallest share of the columns that must detect bone for a frame to report one
    /// (default 0.05).
    pub min_bone_columns: f64,
}

impl Default for DepthPolicy {
    fn default() -> Self {
        Self {
            min_depth_m: 0.070,
            max_depth_m: 0.120,
            below_first_bone_m: 0.045,
            step_m: 0.010,
            frames: 5,
            min_contact_fraction: 0.8,
            min_bone_columns: 0.05,
        }
    }
}

impl DepthPolicy {
    /// Checks the settings: finite, `0.01 ≤ min ≤ max ≤ 0.3` m, a positive step, at least one
    /// frame, shares within 0–1.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &'static str, value: f64| -> Result<(), Error> {
            Err(ErrorKind::BadParam { what, value }.into())
        };
        for (what, v) in [
            ("minimum imaging depth (m)", self.min_depth_m),
            ("maximum imaging depth (m)", self.max_depth_m),
        ] {
            if !(v.is_finite() && (0.01..=0.3).contains(&v)) {
                return bad(what, v);
            }
        }
        if self.min_depth_m > self.max_depth_m {
            return bad(
                "minimum imaging depth above the maximum (m)",
                self.min_depth_m,
            );
        }
        if !(self.below_first_bone_m.is_finite() && (0.0..=0.2).contains(&self.below_first_bone_m))
        {
            return bad("margin below the first bone (m)", self.below_first_bone_m);
        }
        if !(self.step_m.is_finite() && self.step_m >= 1e-3) {
            return bad("depth step (m, ≥ 1 mm)", self.step_m);
        }
        if self.frames == 0 {
            return bad("survey frames", 0.0);
        }
        for (what, v) in [
            ("survey contact share (0–1)", self.min_contact_fraction),
            ("survey bone columns share (0–1)", self.min_bone_columns),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(what, v);
            }
        }
        Ok(())
    }

    /// The depth for a first bone echo at `first_bone_m` (`None`: no bone seen).
    pub fn depth_for(&self, first_bone_m: Option<f64>) -> f64 {
        let Some(d) = first_bone_m.filter(|d| d.is_finite()) else {
            return self.max_depth_m;
        };
        let want = d + self.below_first_bone_m;
        // Round up to the preset grid (a hair of tolerance so that 0.07 stays 0.07).
        let preset = (want / self.step_m - 1e-6).ceil() * self.step_m;
        preset.clamp(self.min_depth_m, self.max_depth_m)
    }
}

/// What the survey decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DepthChoice {
    /// The imaging depth for the rest of the scan (m).
    pub depth_m: f64,
    /// Median first bone echo over the survey frames that saw bone (m), `None` when none did.
    pub first_bone_m: Option<f64>,
    /// Survey frames used (in contact).
    pub frames_used: usize,
    /// Of those, the frames that saw bone.
    pub frames_with_bone: usize,
}

/// Chooses the imaging depth from the first frames in contact; see the module doc.
#[derive(Clone, Debug)]
pub struct DepthSurvey {
    policy: DepthPolicy,
    bone: UsBoneParams,
    scratch: BoneDetection,
    depths: Vec<f64>,
    used: usize,
    choice: Option<DepthChoice>,
}

impl DepthSurvey {
    /// A survey of frames `width` columns wide imaged at `policy.max_depth_m` over `height`
    /// rows, `lateral_spacing_m` apart.
    pub fn new(
        policy: DepthPolicy,
        width: usize,
        height: usize,
        lateral_spacing_m: f64,
    ) -> Result<Self, Error> {
        policy.validate()?;
        if width < 2 || height < 3 {
            return Err(ErrorKind::BadFrame {
                width,
                height,
                len: width.saturating_mul(height),
            }
            .into());
        }
        let bone = UsBoneParams {
            axial_spacing_m: policy.max_depth_m / (height - 1) as f64,
            lateral_spacing_m,
            ..UsBoneParams::default()
        };
        // Validates the spacing once, not on every frame.
        let mut scratch = BoneDetection::new();
        detect_bone(&[0; 3], 1, 3, &bone, &mut scratch)?;
        Ok(Self {
            policy,
            bone,
            scratch,
            depths: Vec::with_capacity(policy.frames),
            used: 0,
            choice: None,
        })
    }

    /// The policy.
    pub fn policy(&self) -> &DepthPolicy {
        &self.policy
    }

    /// The depth the survey frames must be imaged at (m).
    pub fn survey_depth_m(&self) -> f64 {
        self.policy.max_depth_m
    }

    /// The decision, once made.
    pub fn choice(&self) -> Option<DepthChoice> {
        self.choice
    }

    /// Offers one survey frame (`pixels` row-major, imaged at [`Self::survey_depth_m`]) with the
    /// share of its scanlines in contact. Frames with poor contact are skipped. Returns the
    /// decision once enough frames were seen (and keeps returning it). A malformed frame is an
    /// error and changes nothing.
    pub fn offer(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        contact_fraction: f64,
    ) -> Result<Option<DepthChoice>, Error> {
        if self.choice.is_some() {
            return Ok(self.choice);
        }
        detect_bone(pixels, width, height, &self.bone, &mut self.scratch)?;
        // NaN contact counts as no contact.
        if contact_fraction.is_nan() || contact_fraction < self.policy.min_contact_fraction {
            return Ok(None);
        }
        self.used += 1;
        let mut cols: Vec<f64> = (0..self.scratch.width())
            .filter_map(|c| self.scratch.depth_m(c))
            .collect();
        let needed = (self.policy.min_bone_columns * width as f64)
            .ceil()
            .max(1.0) as usize;
        if cols.len() >= needed {
            cols.sort_by(f64::total_cmp);
            // The 10th percentile: the shallowest bone, robust to a stray column.
            self.depths.push(cols[cols.len() / 10]);
        }
        if self.used >= self.policy.frames {
            self.conclude();
        }
        Ok(self.choice)
    }

    /// Decides now from the frames seen so far (none: the deepest depth), e.g. when the scan
    /// must go on before enough frames in contact were seen. Keeps an earlier decision.
    pub fn conclude(&mut self) -> DepthChoice {
        if let Some(c) = self.choice {
            return c;
        }
        let first_bone_m = median(&mut self.depths);
        let c = DepthChoice {
            depth_m: self.policy.depth_for(first_bone_m),
            first_bone_m,
            frames_used: self.used,
            frames_with_bone: self.depths.len(),
        };
        self.choice = Some(c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_up_and_clamp() {
        let p = DepthPolicy::default();
        assert_eq!(p.depth_for(None), 0.120);
        assert_eq!(p.depth_for(Some(f64::NAN)), 0.120);
        // 20 mm + 45 mm = 65 mm → the 70 mm floor.
        assert!((p.depth_for(Some(0.020)) - 0.070).abs() < 1e-12);
        // 25 mm + 45 mm = 70 mm stays 70 mm.
        assert!((p.depth_for(Some(0.025)) - 0.070).abs() < 1e-12);
        // 41 mm + 45 mm = 86 mm → 90 mm.
        assert!((p.depth_for(Some(0.041)) - 0.090).abs() < 1e-12);
        // 90 mm + 45 mm → the 120 mm ceiling.
        assert!((p.depth_for(Some(0.090)) - 0.120).abs() < 1e-12);
    }

    #[test]
    fn bad_policies_are_refused() {
        for p in [
            DepthPolicy {
                min_depth_m: 0.13,
                ..DepthPolicy::default()
            },
            DepthPolicy {
                max_depth_m: f64::NAN,
                ..DepthPolicy::default()
            },
            DepthPolicy {
                step_m: 0.0,
                ..DepthPolicy::default()
            },
            DepthPolicy {
                frames: 0,
                ..DepthPolicy::default()
            },
            DepthPolicy {
                min_contact_fraction: 1.5,
                ..DepthPolicy::default()
            },
        ] {
            assert!(
                DepthSurvey::new(p, 256, 256, 0.038 / 255.0).is_err(),
                "{p:?}"
            );
        }
    }

    /// A synthetic frame: speckle-free tissue (grey 60) with a bright 3-row echo at `row` and a
    /// shadow (grey 5) below it, on every column.
    fn frame(w: usize, h: usize, row: Option<usize>) -> Vec<u8> {
        let mut px = vec![60u8; w * h];
        if let Some(r0) = row {
            for r in r0..h {
                let v = if r < r0 + 3 { 250 } else { 5 };
                px[r * w..(r + 1) * w].fill(v);
            }
        }
        px
    }

    #[test]
    fn the_survey_chooses_from_the_median_first_bone() {
        let (w, h) = (64, 256);
        let mut s = DepthSurvey::new(DepthPolicy::default(), w, h, 0.038 / 63.0).unwrap();
        let dz: f64 = 0.120 / 255.0;
        // Poor contact is skipped, a malformed frame is an error and counts for nothing.
        assert_eq!(s.offer(&frame(w, h, Some(100)), w, h, 0.3).unwrap(), None);
        assert!(s.offer(&[0; 10], w, h, 1.0).is_err());
        // Four frames with the first bone at 50 mm, one with none.
        let r = (0.050 / dz).round() as usize;
        for _ in 0..4 {
            assert_eq!(s.offer(&frame(w, h, Some(r)), w, h, 1.0).unwrap(), None);
        }
        let c = s.offer(&frame(w, h, None), w, h, 1.0).unwrap().unwrap();
        assert_eq!((c.frames_used, c.frames_with_bone), (5, 4));
        let first = c.first_bone_m.unwrap();
        assert!((first - 0.050).abs() < 1.5e-3, "first bone {first}");
        // 50 + 45 = 95 mm → the 100 mm preset.
        assert!((c.depth_m - 0.100).abs() < 1e-12, "depth {}", c.depth_m);
        // The decision stands.
        assert_eq!(s.offer(&frame(w, h, Some(20)), w, h, 1.0).unwrap(), Some(c));
    }

    #[test]
    fn a_survey_without_bone_looks_deepest() {
        let (w, h) = (64, 128);
        let p = DepthPolicy {
            frames: 2,
            ..DepthPolicy::default()
        };
        let mut s = DepthSurvey::new(p, w, h, 0.038 / 63.0).unwrap();
        s.offer(&frame(w, h, None), w, h, 1.0).unwrap();
        let c = s.offer(&frame(w, h, None), w, h, f64::NAN).unwrap();
        assert_eq!(c, None, "NaN contact is no contact");
        let c = s.offer(&frame(w, h, None), w, h, 0.9).unwrap().unwrap();
        assert_eq!(c.first_bone_m, None);
        assert_eq!(c.depth_m, 0.120);
    }

    #[test]
    fn concluding_early_uses_what_was_seen() {
        let (w, h) = (64, 256);
        let mut s = DepthSurvey::new(DepthPolicy::default(), w, h, 0.038 / 63.0).unwrap();
        let r = (0.030_f64 / (0.120 / 255.0)).round() as usize;
        s.offer(&frame(w, h, Some(r)), w, h, 1.0).unwrap();
        let c = s.conclude();
        assert_eq!((c.frames_used, c.frames_with_bone), (1, 1));
        // 30 + 45 = 75 mm → 80 mm.
        assert!((c.depth_m - 0.080).abs() < 1e-12, "depth {}", c.depth_m);
        assert_eq!(s.conclude(), c);
        // Nothing seen at all: the deepest depth.
        let mut s = DepthSurvey::new(DepthPolicy::default(), w, h, 0.038 / 63.0).unwrap();
        assert_eq!(s.conclude().depth_m, 0.120);
    }
}
