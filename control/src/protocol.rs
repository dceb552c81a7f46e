//! Autonomous scan protocols: TOML files describing contact sweeps relative to a start point on
//! the patient's back.
//!
//! # The back frame
//!
//! A protocol never knows where the patient is. Its coordinates are metres in the *back frame* of
//! the start point, where the operator puts the probe before the scan: `lateral` toward the
//! patient's right, `cranial` toward the head, both measured along the skin; the third direction
//! is the skin normal, which the controller follows. See `protocols/lumbar.toml` (the built-in
//! default, [`ScanProtocol::default_lumbar`]) for a commented example.
//!
//! # Format
//!
//! ```toml
//! name = "..."
//! [defaults]              # all optional
//! force_n = 8.0           # 1–20 N
//! speed_m_s = 0.02        # (0, 0.05] m/s
//! approach_height_m = 0.03
//! retract_height_m = 0.08
//! force_ramp_s = 0.8
//! [[sweep]]               # one or more
//! name = "midline"
//! orientation = "sagittal" | "transverse"
//! from = [lateral, cranial]
//! to = [lateral, cranial]
//! force_n = 8.0           # optional, overrides the default
//! speed_m_s = 0.02        # optional
//! tilt_deg = 0.0          # optional, beam tilt toward the midline, |tilt| ≤ 30°
//! [imaging]               # optional; the ultrasound's imaging depth
//! depth = "auto"          # "auto" (default): chosen per patient from the first frames in
//!                         # contact; or a fixed depth in metres, 0.02–0.30
//! min_depth_m = 0.070     # "auto" only: bounds of the choice, 0.02–0.30
//! max_depth_m = 0.120
//! below_first_bone_m = 0.045  # "auto" only: depth kept below the first bone echo, 0–0.2
//! ```
//!
//! Any error — TOML syntax, unknown key, wrong type, out-of-range value — names the line.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::error::ErrorKind;
use crate::Error;

/// Contact-force setpoint range the controller accepts, N.
pub const FORCE_RANGE_N: (f64, f64) = (1.0, 20.0);
/// Largest sweep speed a protocol may ask for, m/s (the supervisor's in-contact limit is 50 mm/s).
pub const MAX_SPEED_M_S: f64 = 0.05;
/// Largest sweep offset from the start point, m.
pub const MAX_OFFSET_M: f64 = 0.30;
/// Largest beam tilt, degrees.
pub const MAX_TILT_DEG: f64 = 30.0;

const LUMBAR_TOML: &str = include_str!("../protocols/lumbar.toml");

/// How the transducer array lies on the back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOrientation {
    /// Array along the spine (cranial axis): a sagittal image.
    Sagittal,
    /// Array across the spine (lateral axis): a transverse image.
    Transverse,
}

/// One contact sweep, with the protocol defaults already applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// Unique name within the protocol.
    pub name: String,
    /// Array orientation.
    pub orientation: ProbeOrientation,
    /// First point, `[lateral, cranial]` m in the back frame.
    pub from: [f64; 2],
    /// Last point, `[lateral, cranial]` m in the back frame.
    pub to: [f64; 2],
    /// Contact-force setpoint, N.
    pub force_n: f64,
    /// Speed along the skin, m/s.
    pub speed_m_s: f64,
    /// Beam tilt toward the midline, rad (positive tilts the beam toward the spine's axis).
    pub tilt_rad: f64,
}

impl Sweep {
    /// Path length along the skin, m.
    pub fn length_m(&self) -> f64 {
        (self.to[0] - self.from[0]).hypot(self.to[1] - self.from[1])
    }

    /// Time the sweep takes at its speed, s.
    pub fn duration_s(&self) -> f64 {
        self.length_m() / self.speed_m_s
    }
}

/// How a scan sets the ultrasound imaging depth (the `[imaging]` table). The control node does
/// not image; whoever acquires the frames applies this (see `telecho_perception::imaging`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ImagingDepth {
    /// One depth for every patient, m.
    Fixed(f64),
    /// Chosen per patient from a survey of the first frames in contact: the first bone echo
    /// plus `below_first_bone_m`, rounded up to 10 mm presets, within
    /// `[min_depth_m, max_depth_m]`.
    Auto {
        /// Shallowest depth, m.
        min_depth_m: f64,
        /// Deepest depth (and the survey's), m.
        max_depth_m: f64,
        /// Depth kept below the first bone echo, m.
        below_first_bone_m: f64,
    },
}

const AUTO_MIN_DEPTH_M: f64 = 0.070;
const AUTO_MAX_DEPTH_M: f64 = 0.120;
const AUTO_BELOW_FIRST_BONE_M: f64 = 0.045;

impl Default for ImagingDepth {
    /// Automatic, 70–120 mm, 45 mm below the first bone echo.
    fn default() -> Self {
        Self::Auto {
            min_depth_m: AUTO_MIN_DEPTH_M,
            max_depth_m: AUTO_MAX_DEPTH_M,
            below_first_bone_m: AUTO_BELOW_FIRST_BONE_M,
        }
    }
}

/// Range of imaging depths a protocol may ask for, m.
pub const DEPTH_RANGE_M: (f64, f64) = (0.02, 0.30);

/// A validated scan protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanProtocol {
    /// Protocol name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Height above the first point of each sweep, along the skin normal, where the approach
    /// starts, m.
    pub approach_height_m: f64,
    /// Safe height after the last sweep and on abort, m.
    pub retract_height_m: f64,
    /// Duration of the force ramp on contact and release, s.
    pub force_ramp_s: f64,
    /// The sweeps, in order.
    pub sweeps: Vec<Sweep>,
    /// How the ultrasound's imaging depth is set.
    pub imaging: ImagingDepth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtocol {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    sweep: Vec<Spanned<RawSweep>>,
    #[serde(default)]
    imaging: Option<Spanned<RawImaging>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawImaging {
    depth: Option<Spanned<toml::Value>>,
    min_depth_m: Option<Spanned<f64>>,
    max_depth_m: Option<Spanned<f64>>,
    below_first_bone_m: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    force_n: Option<Spanned<f64>>,
    speed_m_s: Option<Spanned<f64>>,
    approach_height_m: Option<Spanned<f64>>,
    retract_height_m: Option<Spanned<f64>>,
    force_ramp_s: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: Spanned<String>,
    orientation: ProbeOrientation,
    from: Spanned<[f64; 2]>,
    to: Spanned<[f64; 2]>,
    force_n: Option<Spanned<f64>>,
    speed_m_s: Option<Spanned<f64>>,
    tilt_deg: Option<Spanned<f64>>,
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    text: &'a str,
    source: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, message: String) -> Error {
        ErrorKind::Protocol {
            origin: self.source.to_owned(),
            line: line_of(self.text, span.start),
            message,
        }
        .into()
    }

    /// The value of an optional field within `[min, max]`, or `default`.
    fn value(
        &self,
        field: &Option<Spanned<f64>>,
        what: &str,
        (min, max): (f64, f64),
        default: f64,
    ) -> Result<f64, Error> {
        let Some(v) = field else { return Ok(default) };
        let x = *v.get_ref();
        if x.is_finite() && (min..=max).contains(&x) {
            Ok(x)
        } else {
            Err(self.err(v.span(), format!("{what} = {x} is outside [{min}, {max}]")))
        }
    }
}

impl Checker<'_> {
    fn imaging(&self, raw: &Spanned<RawImaging>) -> Result<ImagingDepth, Error> {
        let r = raw.get_ref();
        let auto_only = [
            (&r.min_depth_m, "min_depth_m"),
            (&r.max_depth_m, "max_depth_m"),
            (&r.below_first_bone_m, "below_first_bone_m"),
        ];
        let fixed = match &r.depth {
            None => None,
            Some(v) => match v.get_ref() {
                toml::Value::String(s) if s == "auto" => None,
                toml::Value::Float(_) | toml::Value::Integer(_) => {
                    let x = match v.get_ref() {
                        toml::Value::Float(f) => *f,
                        toml::Value::Integer(i) => *i as f64,
                        _ => f64::NAN,
                    };
                    let field = Some(Spanned::new(v.span(), x));
                    Some(self.value(&field, "depth", DEPTH_RANGE_M, x)?)
                }
                other => {
                    return Err(self.err(
                        v.span(),
                        format!("depth must be \"auto\" or a depth in metres, got {other}"),
                    ))
                }
            },
        };
        if let Some(depth) = fixed {
            if let Some((f, name)) = auto_only
                .iter()
                .find_map(|(f, n)| f.as_ref().map(|f| (f, n)))
            {
                return Err(self.err(
                    f.span(),
                    format!("{name} applies to depth = \"auto\" only, not to a fixed depth"),
                ));
            }
            return Ok(ImagingDepth::Fixed(depth));
        }
        let min = self.value(
            &r.min_depth_m,
            "min_depth_m",
            DEPTH_RANGE_M,
            AUTO_MIN_DEPTH_M,
        )?;
        let max = self.value(
            &r.max_depth_m,
            "max_depth_m",
            DEPTH_RANGE_M,
            AUTO_MAX_DEPTH_M,
        )?;
        if max < min {
            let span = r
                .max_depth_m
                .as_ref()
                .or(r.min_depth_m.as_ref())
                .map_or(raw.span(), |v| v.span());
            return Err(self.err(
                span,
                format!("max_depth_m = {max} must not be below min_depth_m = {min}"),
            ));
        }
        let below = self.value(
            &r.below_first_bone_m,
            "below_first_bone_m",
            (0.0, 0.2),
            AUTO_BELOW_FIRST_BONE_M,
        )?;
        Ok(ImagingDepth::Auto {
            min_depth_m: min,
            max_depth_m: max,
            below_first_bone_m: below,
        })
    }
}

impl ScanProtocol {
    /// The built-in lumbar protocol (`protocols/lumbar.toml`).
    pub fn default_lumbar() -> Self {
        // The bundled file is parsed by a unit test, so this cannot fail at run time.
        Self::from_toml_str(LUMBAR_TOML, "built-in lumbar protocol")
            .expect("the bundled lumbar protocol is valid")
    }

    /// The text of the built-in lumbar protocol.
    pub fn default_lumbar_toml() -> &'static str {
        LUMBAR_TOML
    }

    /// Reads and validates a protocol file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| ErrorKind::Protocol {
            origin: path.display().to_string(),
            line: 0,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates protocol text; `source` names it in errors (e.g. the file path).
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self, Error> {
        let c = Checker { text, source };
        let raw: RawProtocol = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            c.err(span, e.message().trim().to_owned())
        })?;
        let d = raw.defaults.as_ref().map(|d| d.get_ref());
        let none = RawDefaults::default();
        let d = d.unwrap_or(&none);
        let force = c.value(&d.force_n, "force_n", FORCE_RANGE_N, 8.0)?;
        let speed = c.value(&d.speed_m_s, "speed_m_s", (1e-3, MAX_SPEED_M_S), 0.02)?;
        let approach = c.value(
            &d.approach_height_m,
            "approach_height_m",
            (0.005, 0.2),
            0.03,
        )?;
        let retract = c.value(&d.retract_height_m, "retract_height_m", (0.02, 0.3), 0.08)?;
        let ramp = c.value(&d.force_ramp_s, "force_ramp_s", (0.05, 5.0), 0.8)?;
        if retract < approach {
            let span = d.retract_height_m.as_ref().map_or(0..0, |v| v.span());
            return Err(c.err(
                span,
                format!(
                    "retract_height_m = {retract} must not be below approach_height_m = {approach}"
                ),
            ));
        }
        if raw.sweep.is_empty() {
            let end = text.len();
            return Err(c.err(end..end, "the protocol has no [[sweep]]".into()));
        }
        let mut sweeps: Vec<Sweep> = Vec::with_capacity(raw.sweep.len());
        for s in &raw.sweep {
            let r = s.get_ref();
            let name = r.name.get_ref().trim().to_owned();
            if name.is_empty() {
                return Err(c.err(r.name.span(), "sweep name is empty".into()));
            }
            if sweeps.iter().any(|o| o.name == name) {
                return Err(c.err(r.name.span(), format!("sweep name `{name}` is used twice")));
            }
            for p in [&r.from, &r.to] {
                let [a, b] = *p.get_ref();
                if !(a.is_finite() && b.is_finite())
                    || a.abs() > MAX_OFFSET_M
                    || b.abs() > MAX_OFFSET_M
                {
                    return Err(c.err(
                        p.span(),
                        format!(
                            "sweep `{name}`: point [{a}, {b}] must be finite and within \
                             ±{MAX_OFFSET_M} m of the start point"
                        ),
                    ));
                }
            }
            let tilt = c.value(&r.tilt_deg, "tilt_deg", (-MAX_TILT_DEG, MAX_TILT_DEG), 0.0)?;
            let sweep = Sweep {
                name,
                orientation: r.orientation,
                from: *r.from.get_ref(),
                to: *r.to.get_ref(),
                force_n: c.value(&r.force_n, "force_n", FORCE_RANGE_N, force)?,
                speed_m_s: c.value(&r.speed_m_s, "speed_m_s", (1e-3, MAX_SPEED_M_S), speed)?,
                tilt_rad: tilt.to_radians(),
            };
            if sweep.length_m() < 1e-3 {
                return Err(c.err(
                    r.to.span(),
                    format!(
                        "sweep `{}`: `to` must be at least 1 mm from `from`",
                        sweep.name
                    ),
                ));
            }
            sweeps.push(sweep);
        }
        let imaging = match &raw.imaging {
            Some(i) => c.imaging(i)?,
            None => ImagingDepth::default(),
        };
        Ok(Self {
            name: raw.name,
            description: raw.description,
            approach_height_m: approach,
            retract_height_m: retract,
            force_ramp_s: ramp,
            sweeps,
            imaging,
        })
    }

    /// Total sweep length, m.
    pub fn sweep_length_m(&self) -> f64 {
        self.sweeps.iter().map(Sweep::length_m).sum()
    }

    /// Time in contact sweeping, s (without approaches, ramps and transfers).
    pub fn sweep_duration_s(&self) -> f64 {
        self.sweeps.iter().map(Sweep::duration_s).sum()
    }
}
