//! What the console shows, as plain data: built from the console's events (robot state, haptic
//! feedback, ultrasound frames, the commands it sent) and the patient's plan (registered CBCT
//! bone surface and landmarks). No graphics here, so every figure the view draws is testable
//! without a GPU; [`super::render`] turns a [`SceneModel`] into pixels.

use nalgebra::Vector3;
use telecho_control::Chain;
use telecho_core::Transform;

use crate::console::{ConsoleEvent, Latency};
use crate::us_codec;
use crate::wire::{ContactModel, Role, SafetyCode, Target, UsFrameMsg};

/// A decoded ultrasound frame and where it was acquired.
#[derive(Clone, Debug, PartialEq)]
pub struct UsImage {
    /// Sequence number of the frame.
    pub seq: u64,
    /// Width (lateral), pixels.
    pub width: usize,
    /// Height (depth), pixels.
    pub height: usize,
    /// 8-bit grey pixels, row-major (`width × height`).
    pub pixels: Vec<u8>,
    /// Lateral pixel spacing, m.
    pub lateral_spacing_m: f64,
    /// Axial pixel spacing, m.
    pub axial_spacing_m: f64,
    /// Probe pose at acquisition, `t_base_probe`.
    pub t_base_probe: Transform,
}

impl UsImage {
    /// Decodes a frame message; `None` (and nothing shown) for a payload that does not decode.
    pub fn decode(frame: &UsFrameMsg) -> Option<Self> {
        let (w, h) = (usize::from(frame.width), usize::from(frame.height));
        let pixels = us_codec::decode(&frame.payload, w, h, frame.encoding).ok()?;
        let spacing_ok = |s: f64| s.is_finite() && s > 0.0 && s < 0.01;
        if !spacing_ok(frame.lateral_spacing_m) || !spacing_ok(frame.axial_spacing_m) {
            return None;
        }
        Some(Self {
            seq: frame.seq,
            width: w,
            height: h,
            pixels,
            lateral_spacing_m: frame.lateral_spacing_m,
            axial_spacing_m: frame.axial_spacing_m,
            t_base_probe: frame.probe.to_transform(),
        })
    }

    /// The image plane's corners in the base frame: top-left, top-right, bottom-right,
    /// bottom-left (top = the probe face, left = column 0). The image is the probe's x–z plane,
    /// centred laterally on the probe axis, depth along +z (`docs/SWEEP_FORMAT.md`).
    pub fn corners_base(&self) -> [Vector3<f64>; 4] {
        let half = 0.5 * self.lateral_spacing_m * (self.width.saturating_sub(1)) as f64;
        let depth = self.axial_spacing_m * (self.height.saturating_sub(1)) as f64;
        let t = &self.t_base_probe;
        [
            t.transform_point(&Vector3::new(-half, 0.0, 0.0)),
            t.transform_point(&Vector3::new(half, 0.0, 0.0)),
            t.transform_point(&Vector3::new(half, 0.0, depth)),
            t.transform_point(&Vector3::new(-half, 0.0, depth)),
        ]
    }
}

/// A planned landmark in the base frame.
#[derive(Clone, Debug, PartialEq)]
pub struct LandmarkMark {
    /// Name (e.g. `L4_facet_right`).
    pub name: String,
    /// Position, m (base frame).
    pub xyz: Vector3<f64>,
    /// Confidence, 0–1 (1 for CT landmarks mapped through the registration).
    pub confidence: f64,
}

/// Everything the console draws.
#[derive(Clone, Debug, Default)]
pub struct SceneModel {
    /// Joint origins and the tip, base frame (a polyline; empty without joint data or arm).
    pub arm: Vec<Vector3<f64>>,
    /// Measured probe pose.
    pub probe: Option<Transform>,
    /// The probe where the operator's newest command puts it (the "ghost": ahead of the delayed
    /// measurement by the link latency).
    pub ghost: Option<Transform>,
    /// Measured contact force on the probe, N (base frame).
    pub force_n: Vector3<f64>,
    /// The force setpoint of the newest command, N (0: none).
    pub force_setpoint_n: f64,
    /// The patient side's contact-force limit, N.
    pub force_limit_n: f64,
    /// The local contact model (skin point, normal, stiffness).
    pub contact: Option<ContactModel>,
    /// The newest ultrasound frame.
    pub us: Option<UsImage>,
    /// Registered CBCT bone surface, base frame.
    pub bone_points: Vec<Vector3<f64>>,
    /// Planned landmarks, base frame.
    pub landmarks: Vec<LandmarkMark>,
    /// Control node safety state.
    pub safety: Option<SafetyCode>,
    /// Our role and identity.
    pub role: Option<Role>,
    /// Our identity (certificate name).
    pub identity: String,
    /// The lease holder (empty: free).
    pub holder: String,
    /// Link latency figures.
    pub latency: Latency,
    /// Robot states, haptic packets and frames received.
    pub states: u64,
    /// Haptic feedback packets received.
    pub haptics: u64,
    /// Ultrasound frames received (decoded).
    pub frames: u64,
    /// Frames that did not decode.
    pub bad_frames: u64,
    /// A take-over asked of us while we hold the lease: who asks, how long we have to answer
    /// (s) and when it arrived; cleared by [`SceneModel::take_over_answered`], any lease change
    /// or [`SceneModel::expire_take_over`] once the time to answer is over (the patient side
    /// then refuses it).
    pub take_over: Option<(String, f64, std::time::Instant)>,
}

impl SceneModel {
    /// An empty model for a patient side whose force limit is `force_limit_n`.
    pub fn new(force_limit_n: f64) -> Self {
        Self {
            force_limit_n,
            ..Self::default()
        }
    }

    /// Takes in one console event. `chain` (the arm's kinematic chain from its URDF) turns the
    /// measured joints into the arm's polyline; joint vectors that do not fit it are ignored.
    pub fn apply(&mut self, ev: &ConsoleEvent, chain: Option<&Chain>) {
        match ev {
            ConsoleEvent::Welcome {
                role,
                identity,
                holder,
                ..
            } => {
                self.role = Some(*role);
                self.identity.clone_from(identity);
                self.holder.clone_from(holder);
            }
            ConsoleEvent::Lease { holder, .. } => {
                self.holder.clone_from(holder);
                self.take_over = None;
            }
            ConsoleEvent::TakeOverRequested {
                requester,
                timeout_s,
            } => self.take_over = Some((requester.clone(), *timeout_s, std::time::Instant::now())),
            ConsoleEvent::State(s) => {
                self.states += 1;
                self.safety = Some(s.safety);
                self.probe = Some(s.probe.to_transform());
                if s.force_n.iter().all(|v| v.is_finite()) {
                    self.force_n = s.force_n;
                }
                if let Some(chain) = chain {
                    if chain.joint_origins(&s.joints_rad, &mut self.arm).is_err() {
                        self.arm.clear();
                    }
                }
            }
            ConsoleEvent::Haptic(h) => {
                self.haptics += 1;
                if h.force_n.iter().all(|v| v.is_finite()) {
                    self.force_n = h.force_n;
                }
                self.contact = h.contact;
            }
            ConsoleEvent::UsFrame(f) => match UsImage::decode(f) {
                Some(img) => {
                    self.frames += 1;
                    self.us = Some(img);
                }
                None => self.bad_frames += 1,
            },
            _ => {}
        }
    }

    /// The take-over asked of us was answered (Y or N): the prompt goes.
    pub fn take_over_answered(&mut self) -> Option<String> {
        self.take_over.take().map(|(who, ..)| who)
    }

    /// Drops an unanswered take-over prompt whose time to answer is over at `now`.
    pub fn expire_take_over(&mut self, now: std::time::Instant) {
        if let Some((_, timeout_s, at)) = &self.take_over {
            if now.saturating_duration_since(*at).as_secs_f64() > *timeout_s {
                self.take_over = None;
            }
        }
    }

    /// Records a command the console sent: its pose becomes the ghost probe, its force the
    /// setpoint shown on the gauge.
    pub fn commanded(&mut self, target: &Target, force_n: f64) {
        if let Target::Pose(p) = target {
            self.ghost = Some(p.to_transform());
        }
        if force_n.is_finite() {
            self.force_setpoint_n = force_n;
        }
    }

    /// The force gauge: the measured force along the probe axis (pressing positive), N, and its
    /// share of the limit (0–1, clamped).
    pub fn gauge(&self) -> (f64, f64) {
        let axial = match &self.probe {
            // The force on the probe points out of the patient, against the probe's +z.
            Some(p) => -self.force_n.dot(&p.rotation.column(2).into_owned()),
            None => self.force_n.norm(),
        };
        let share = if self.force_limit_n > 0.0 {
            (axial / self.force_limit_n).clamp(0.0, 1.0)
        } else {
            0.0
        };
        (axial, share)
    }

    /// What there is to look at: the centre and radius (m, base frame) of the box around the
    /// arm, the probe, the ultrasound plane and the registered landmarks (the bone surface when
    /// there is nothing else). `None` before anything arrived.
    pub fn bounds(&self) -> Option<(Vector3<f64>, f64)> {
        let mut pts: Vec<Vector3<f64>> = self.arm.clone();
        pts.extend(self.probe.iter().map(|p| p.translation));
        if let Some(us) = &self.us {
            pts.extend(us.corners_base());
        }
        // The registered spine is what the sonographer steers to: its landmarks are always in
        // view (the bone surface too when nothing else is known yet).
        pts.extend(self.landmarks.iter().map(|l| l.xyz));
        if pts.is_empty() {
            pts.extend(self.bone_points.iter().step_by(50));
        }
        let first = *pts.first()?;
        let (lo, hi) = pts
            .iter()
            .fold((first, first), |(lo, hi), p| (lo.inf(p), hi.sup(p)));
        let centre = (lo + hi) / 2.0;
        Some((centre, ((hi - lo) / 2.0).norm().max(0.05)))
    }

    /// Status lines for the overlay.
    pub fn status_lines(&self) -> Vec<String> {
        let (axial, _) = self.gauge();
        let ms = |s: Option<f64>| match s {
            Some(v) if v.is_finite() => format!("{:.0} ms", v * 1e3),
            _ => "—".to_owned(),
        };
        let role = match self.role {
            Some(Role::Operator) => "operator",
            Some(Role::Observer) => "observer",
            None => "not connected",
        };
        let holder = if self.holder.is_empty() {
            "free".to_owned()
        } else {
            self.holder.clone()
        };
        let mut lines = vec![
            format!("{} ({role}) — lease: {holder}", self.identity),
            format!(
                "safety: {}",
                self.safety.map_or("—".to_owned(), |s| format!("{s:?}"))
            ),
            format!(
                "force {axial:.1} N (setpoint {:.1} N, limit {:.0} N)",
                self.force_setpoint_n, self.force_limit_n
            ),
            format!(
                "latency: command round trip {}, state age {}, frame age {}",
                ms(self.latency.command_rtt_s),
                ms(self.latency.state_age_s),
                ms(self.latency.frame_age_s)
            ),
            format!(
                "received: {} states, {} haptic, {} frames",
                self.states, self.haptics, self.frames
            ),
        ];
        if let Some((who, timeout_s, _)) = &self.take_over {
            lines.insert(
                1,
                format!(
                    "{who} asks for the lease: Y hands it over, N refuses (within {timeout_s:.0} s, \
                     or it is refused)"
                ),
            );
        }
        lines
    }
}
