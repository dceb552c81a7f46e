//! The bridge from the patient side's protocol core to a control node that holds set-points
//! (the ROS 2 control node: `/probe/target_pose`, `/probe/force_setpoint`), without I/O.
//!
//! In one process the teleop link feeds the control loop directly ([`crate::control_link`]) and
//! the controller's own command watchdog holds and retracts when commands stop. A control node
//! on ROS 2 cannot do that: a ROS command is a set-point, held until the next one, forever. So
//! [`SetpointLink`] owns the link-loss policy on this side of DDS:
//!
//! - **live**: each accepted command becomes one set-point (pose + force; `None` force = free
//!   space), the newest wins;
//! - **hold** (no fresh accepted command for [`WatchdogConfig::hold_after_s`], 100 ms): the last
//!   set-point is published again every [`SetpointLinkConfig::keepalive_s`] (the control node
//!   keeps regulating the force in contact);
//! - **retract** (silence for [`WatchdogConfig::retract_after_s`], 1 s): one retract set-point —
//!   the measured probe pose lifted [`SetpointLinkConfig::retract_m`] along the probe axis
//!   (away from the skin), clamped into the workspace box, free space — then nothing until the
//!   lease holder's `Reset`; commands meanwhile are counted and ignored;
//! - **e-stop** (from any client): one set-point at the measured pose lifted
//!   [`SetpointLinkConfig::estop_lift_m`], free space, then nothing until `Reset`;
//! - **faulted**: the measured pose, joints or wrench older than
//!   [`SetpointLinkConfig::input_stale_s`] (or never received): nothing is published (the control
//!   node holds what it has) and the state reported to the console is `FaultStop`; a pending
//!   retract or e-stop set-point goes out once the inputs are fresh again.
//!
//! The hold/retract timing is the same [`LinkWatchdog`] the protocol core runs (so the link
//! state in the console's robot state and this policy agree), fed with the same accepted
//! commands. No set-point with a non-finite number or outside the site limits ever leaves.
//!
//! [`ContactEstimator`] builds the console's local contact model from what a ROS 2 control node
//! publishes: the measured wrench and probe pose.

use nalgebra::{Unit, Vector3};
use telecho_core::Transform;

use crate::session::{ControlCommand, SessionRequest};
use crate::watchdog::{LinkWatchdog, WatchdogConfig};
use crate::wire::{CommandMode, ContactModel, LinkState, SafetyCode, Target};
use crate::Error;

/// A set-point for the control node: probe pose `t_base_probe` and the contact force (`None`:
/// free space, leave contact).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setpoint {
    /// Target probe pose in the base frame.
    pub t_base_probe: Transform,
    /// Contact-force setpoint, N (`None`: free space).
    pub force_n: Option<f64>,
}

impl Setpoint {
    fn is_finite(&self) -> bool {
        self.t_base_probe.is_finite() && self.force_n.is_none_or(f64::is_finite)
    }
}

/// Settings of a [`SetpointLink`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SetpointLinkConfig {
    /// Hold and retract times (the protocol core's watchdog settings).
    pub watchdog: WatchdogConfig,
    /// While holding, the last set-point is published again this often, s.
    pub keepalive_s: f64,
    /// Link-loss retract along the probe axis, m (default 0.08, the supervisor's safe retract).
    pub retract_m: f64,
    /// E-stop lift along the probe axis, m (default 0.02).
    pub estop_lift_m: f64,
    /// A measured input older than this faults the link, s (default 0.1).
    pub input_stale_s: f64,
    /// Workspace box, lower corner, base frame, m.
    pub workspace_min_m: [f64; 3],
    /// Workspace box, upper corner, base frame, m.
    pub workspace_max_m: [f64; 3],
    /// Contact-force setpoints the control node accepts, N.
    pub force_range_n: [f64; 2],
}

impl Default for SetpointLinkConfig {
    fn default() -> Self {
        Self {
            watchdog: WatchdogConfig::default(),
            keepalive_s: 0.05,
            retract_m: 0.08,
            estop_lift_m: 0.02,
            input_stale_s: 0.1,
            workspace_min_m: [-1.0; 3],
            workspace_max_m: [1.0; 3],
            force_range_n: [1.0, 20.0],
        }
    }
}

/// The measured inputs whose freshness the link watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The measured probe pose.
    Pose,
    /// The measured joint positions.
    Joints,
    /// The measured wrench.
    Wrench,
}

/// Counters of a [`SetpointLink`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetpointLinkStats {
    /// Accepted commands handed in.
    pub commands: u64,
    /// Commands that became set-points.
    pub commands_published: u64,
    /// Commands replaced by a newer one before they were published.
    pub commands_superseded: u64,
    /// Commands that could not become a set-point (non-finite, outside the limits, a twist
    /// without a measured pose).
    pub commands_invalid: u64,
    /// Commands ignored while a retract or e-stop was latched.
    pub commands_ignored_latched: u64,
    /// Set-points published in all (commands, holds, retracts, e-stops).
    pub setpoints_published: u64,
    /// Times the link went to hold.
    pub holds: u64,
    /// Set-points published again while holding.
    pub hold_setpoints: u64,
    /// Link-loss retracts (set-points published).
    pub retracts: u64,
    /// E-stops received.
    pub estops: u64,
    /// Resets received.
    pub resets: u64,
    /// Times the inputs went stale (faulted episodes).
    pub faults: u64,
    /// Set-points withheld because the inputs were stale.
    pub withheld_faulted: u64,
    /// Measured poses refused (non-finite).
    pub inputs_refused: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Latch {
    None,
    /// Retract latched; `true` once its set-point went out.
    Retract(bool),
    /// E-stop latched; `true` once its set-point went out.
    EStop(bool),
}

/// The link-loss policy between the teleop server and a set-point-holding control node.
#[derive(Clone, Debug)]
pub struct SetpointLink {
    config: SetpointLinkConfig,
    watchdog: LinkWatchdog,
    latch: Latch,
    pending: Option<Setpoint>,
    last: Option<Setpoint>,
    last_publish_s: f64,
    pose: Option<Transform>,
    seen_s: [Option<f64>; 3],
    faulted: bool,
    stats: SetpointLinkStats,
}

impl SetpointLink {
    /// A link with nothing to publish yet.
    pub fn new(config: SetpointLinkConfig) -> Result<Self, Error> {
        let ok = config.keepalive_s.is_finite()
            && config.keepalive_s > 0.0
            && (0.0..=0.3).contains(&config.retract_m)
            && (0.0..=0.3).contains(&config.estop_lift_m)
            && config.input_stale_s.is_finite()
            && config.input_stale_s > 0.0
            && (0..3).all(|i| config.workspace_min_m[i] < config.workspace_max_m[i])
            && config.force_range_n[0] > 0.0
            && config.force_range_n[0] <= config.force_range_n[1];
        if !ok {
            return Err(Error::config(format!(
                "set-point link settings out of range: {config:?}"
            )));
        }
        Ok(Self {
            watchdog: LinkWatchdog::new(config.watchdog)?,
            config,
            latch: Latch::None,
            pending: None,
            last: None,
            last_publish_s: f64::NEG_INFINITY,
            pose: None,
            seen_s: [None; 3],
            faulted: true,
            stats: SetpointLinkStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> SetpointLinkStats {
        self.stats
    }

    /// The link state of the policy's watchdog.
    pub fn link_state(&self) -> LinkState {
        self.watchdog.state()
    }

    /// The newest measured probe pose.
    pub fn measured_pose(&self) -> Option<Transform> {
        self.pose
    }

    /// A measured probe pose at `now_s`. A non-finite one is refused (counted; returns false)
    /// and does not refresh the input.
    pub fn pose(&mut self, t_base_probe: &Transform, now_s: f64) -> bool {
        if !t_base_probe.is_finite() {
            self.stats.inputs_refused += 1;
            return false;
        }
        self.pose = Some(*t_base_probe);
        self.seen(Input::Pose, now_s);
        true
    }

    /// A valid measurement of `input` arrived at `now_s` (the caller has checked it).
    pub fn seen(&mut self, input: Input, now_s: f64) {
        self.seen_s[input as usize] = Some(now_s);
    }

    /// True while an input is stale (or was never received).
    pub fn is_faulted(&self, now_s: f64) -> bool {
        self.seen_s.iter().any(|s| {
            s.is_none_or(|t| {
                let age_s = now_s - t;
                age_s.is_nan() || age_s > self.config.input_stale_s
            })
        })
    }

    /// The safety code for the console at `now_s`.
    pub fn safety(&self, now_s: f64) -> SafetyCode {
        if self.is_faulted(now_s) {
            return SafetyCode::FaultStop;
        }
        match (self.latch, self.watchdog.state()) {
            (Latch::EStop(_), _) => SafetyCode::EStop,
            (Latch::Retract(_), _) | (_, LinkState::Retract) => SafetyCode::Retract,
            (_, LinkState::Hold) => SafetyCode::Hold,
            _ => SafetyCode::Normal,
        }
    }

    /// An accepted command (lease-checked and within the site limits by the protocol core).
    pub fn command(&mut self, c: &ControlCommand) {
        self.stats.commands += 1;
        // Fresh for the watchdog as for the protocol core's (which ignores it in retract), so
        // both report the same link state.
        let _ = self.watchdog.fresh(c.received_s);
        if self.latch != Latch::None {
            self.stats.commands_ignored_latched += 1;
            return;
        }
        let t_base_probe = match &c.target {
            Target::Pose(p) => p.to_transform(),
            Target::Twist {
                linear_m_s,
                angular_rad_s,
            } => {
                // Relative to the measured pose (the commanded reference of the control node is
                // not published): one look-ahead of motion ahead of where the probe is.
                let Some(here) = self.pose else {
                    self.stats.commands_invalid += 1;
                    return;
                };
                let dt = crate::control_link::TWIST_LOOKAHEAD_S;
                let rot = nalgebra::Rotation3::new(angular_rad_s * dt)
                    * nalgebra::Rotation3::from_matrix_unchecked(here.rotation);
                Transform::new(*rot.matrix(), here.translation + linear_m_s * dt)
            }
        };
        let force_n = match c.mode {
            CommandMode::Free => None,
            CommandMode::Contact => Some(c.force_n),
        };
        let s = Setpoint {
            t_base_probe,
            force_n,
        };
        if !self.within_limits(&s) {
            self.stats.commands_invalid += 1;
            return;
        }
        if self.pending.replace(s).is_some() {
            self.stats.commands_superseded += 1;
        }
    }

    fn within_limits(&self, s: &Setpoint) -> bool {
        if !s.is_finite() {
            return false;
        }
        let p = s.t_base_probe.translation;
        let inside = (0..3).all(|i| {
            p[i] >= self.config.workspace_min_m[i] && p[i] <= self.config.workspace_max_m[i]
        });
        let force_ok = s.force_n.is_none_or(|f| {
            (self.config.force_range_n[0]..=self.config.force_range_n[1]).contains(&f)
        });
        inside && force_ok
    }

    /// The lease was released on purpose: the control node holds the last set-point by itself,
    /// nothing more is published until the next command (a latched retract stays latched).
    pub fn lease_released(&mut self, now_s: f64) {
        let _ = self.watchdog.disarm(now_s);
        self.pending = None;
    }

    /// An e-stop or reset from the session (other requests are not this policy's business).
    pub fn session(&mut self, request: &SessionRequest, now_s: f64) {
        match request {
            SessionRequest::EStop => {
                self.stats.estops += 1;
                if !matches!(self.latch, Latch::EStop(_)) {
                    self.latch = Latch::EStop(false);
                }
                self.pending = None;
            }
            SessionRequest::Reset => {
                self.stats.resets += 1;
                self.latch = Latch::None;
                let _ = self.watchdog.reset(now_s);
                self.pending = None;
            }
            SessionRequest::StartProtocol(_) | SessionRequest::StopProtocol => {}
        }
    }

    /// The measured pose lifted `lift_m` along the probe axis (away from the skin: the tip's z
    /// points into the patient), clamped into the workspace box, free space.
    fn lifted(&self, lift_m: f64) -> Option<Setpoint> {
        let here = self.pose?;
        let z = here.rotation.column(2).into_owned();
        let mut p = here.translation - z * lift_m;
        for i in 0..3 {
            p[i] = p[i].clamp(
                self.config.workspace_min_m[i],
                self.config.workspace_max_m[i],
            );
        }
        let s = Setpoint {
            t_base_probe: Transform::new(here.rotation, p),
            force_n: None,
        };
        s.is_finite().then_some(s)
    }

    /// Advances to `now_s` and returns the set-point to publish now, if any.
    pub fn poll(&mut self, now_s: f64) -> Option<Setpoint> {
        let before = self.watchdog.state();
        let _ = self.watchdog.poll(now_s);
        let state = self.watchdog.state();
        if state == LinkState::Hold && before != LinkState::Hold {
            self.stats.holds += 1;
        }
        if state == LinkState::Retract && self.latch == Latch::None {
            self.latch = Latch::Retract(false);
            self.pending = None;
        }
        let faulted = self.is_faulted(now_s);
        if faulted && !self.faulted {
            self.stats.faults += 1;
        }
        self.faulted = faulted;
        let (out, kind) = match self.latch {
            Latch::Retract(false) => (self.lifted(self.config.retract_m), Kind::Retract),
            Latch::EStop(false) => (self.lifted(self.config.estop_lift_m), Kind::EStop),
            Latch::Retract(true) | Latch::EStop(true) => return None,
            Latch::None => match (self.pending, state) {
                (Some(s), _) => (Some(s), Kind::Command),
                (None, LinkState::Hold)
                    if now_s - self.last_publish_s >= self.config.keepalive_s =>
                {
                    (self.last, Kind::Hold)
                }
                _ => return None,
            },
        };
        let out = out?;
        if faulted {
            self.stats.withheld_faulted += 1;
            if kind == Kind::Command {
                self.pending = None;
            }
            return None;
        }
        if !self.within_limits(&out) {
            // Never reached with a checked command; a lifted pose is clamped and finite.
            self.stats.commands_invalid += 1;
            self.pending = None;
            return None;
        }
        match kind {
            Kind::Command => {
                self.pending = None;
                self.stats.commands_published += 1;
            }
            Kind::Hold => self.stats.hold_setpoints += 1,
            Kind::Retract => {
                self.latch = Latch::Retract(true);
                self.stats.retracts += 1;
            }
            Kind::EStop => self.latch = Latch::EStop(true),
        }
        self.stats.setpoints_published += 1;
        self.last = Some(out);
        self.last_publish_s = now_s;
        Some(out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Command,
    Hold,
    Retract,
    EStop,
}

/// Estimates the console's local contact model from the measured wrench and probe pose (what a
/// ROS 2 control node publishes), as [`crate::control_link::contact_model`] does from the
/// controller's own estimates. What differs: the normal is the low-pass filtered direction of
/// the measured contact force (the controller also removes the friction along the tip's
/// slip and keeps the normal within a cone of the probe axis), and the stiffness is the secant
/// from the touch to the current force over the displacement along that normal, times 1.5
/// (tangent of a Hertzian contact, as the controller's ramp fit), filtered — the controller
/// fits it once over its force ramp.
#[derive(Clone, Debug)]
pub struct ContactEstimator {
    /// Force magnitude that counts as touching, N.
    pub touch_n: f64,
    /// Damping streamed with the model, N·s/m.
    pub damping_n_s_m: f64,
    normal: Option<Vector3<f64>>,
    touch: Option<(Vector3<f64>, f64)>,
    stiffness: Option<f64>,
}

impl ContactEstimator {
    /// An estimator that counts `touch_n` as contact.
    pub fn new(touch_n: f64, damping_n_s_m: f64) -> Self {
        Self {
            touch_n,
            damping_n_s_m,
            normal: None,
            touch: None,
            stiffness: None,
        }
    }

    /// The estimated tissue stiffness, N/m.
    pub fn stiffness_n_per_m(&self) -> Option<f64> {
        self.stiffness
    }

    /// One measurement: probe pose and contact force on the probe (base frame). Returns the
    /// contact model, `None` out of contact or before the stiffness is known.
    pub fn update(
        &mut self,
        t_base_probe: &Transform,
        force_base_n: &Vector3<f64>,
    ) -> Option<ContactModel> {
        let f = force_base_n.norm();
        if !f.is_finite() || !t_base_probe.is_finite() || f < self.touch_n {
            self.normal = None;
            self.touch = None;
            return None;
        }
        let raw = force_base_n / f;
        let n = match self.normal {
            Some(n) => (n + (raw - n) * 0.1).try_normalize(1e-9).unwrap_or(raw),
            None => raw,
        };
        self.normal = Some(n);
        let p = t_base_probe.translation;
        let (p0, f0) = *self.touch.get_or_insert((p, f));
        let depth = (p0 - p).dot(&n);
        let df = f - f0;
        if depth > 2e-4 && df > 0.5 {
            let k = (1.5 * df / depth).clamp(50.0, 1e6);
            self.stiffness = Some(match self.stiffness {
                Some(s) => s + (k - s) * 0.05,
                None => k,
            });
        }
        let k = self.stiffness?;
        let depth = (f / k).clamp(0.0, 0.05);
        let point = p + n * depth;
        if !point.iter().all(|v| v.is_finite()) {
            return None;
        }
        Some(ContactModel {
            point_m: point,
            normal: Unit::new_unchecked(n),
            stiffness_n_m: k.min(1e6),
            damping_n_s_m: self.damping_n_s_m.clamp(0.0, 1e5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Pose;
    use nalgebra::Matrix3;

    fn down() -> Matrix3<f64> {
        // Probe z along −z of the base (pointing down into a patient lying below).
        Matrix3::new(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    }

    fn command(seq: u64, at_s: f64, p: Vector3<f64>) -> ControlCommand {
        let pose = Pose::from_transform(&Transform::new(down(), p));
        ControlCommand {
            conn: 1,
            operator: "operator".into(),
            seq,
            mode: CommandMode::Free,
            force_n: 0.0,
            target: Target::Pose(pose),
            sent_target: Target::Pose(pose),
            velocity_m_s: Vector3::zeros(),
            sent_s: at_s,
            sent_local_s: at_s,
            received_s: at_s,
            age_s: 0.0,
            horizon_s: 0.0,
        }
    }

    fn fresh(l: &mut SetpointLink, at_s: f64, p: Vector3<f64>) {
        l.pose(&Transform::new(down(), p), at_s);
        l.seen(Input::Joints, at_s);
        l.seen(Input::Wrench, at_s);
    }

    #[test]
    fn live_hold_retract_reset() {
        let mut l = SetpointLink::new(SetpointLinkConfig::default()).unwrap();
        let here = Vector3::new(0.4, 0.0, 0.2);
        // Nothing before any input or command.
        assert_eq!(l.poll(0.0), None);
        assert_eq!(l.safety(0.0), SafetyCode::FaultStop);
        let mut t = 0.0;
        let mut published = Vec::new();
        while t < 3.0 {
            fresh(&mut l, t, here);
            if t < 0.5 {
                l.command(&command(
                    (t * 1e3) as u64 + 1,
                    t,
                    here + Vector3::new(0.0, 0.01, 0.0),
                ));
            }
            if let Some(s) = l.poll(t) {
                published.push((t, s));
            }
            t += 0.005;
        }
        let st = l.stats();
        assert_eq!(st.commands_published, 100);
        assert_eq!(st.holds, 1);
        assert_eq!(st.retracts, 1);
        // Holds re-publish the last command every 50 ms between 0.6 s and 1.5 s.
        assert!((16..=19).contains(&st.hold_setpoints), "{st:?}");
        let (tr, retract) = published.last().unwrap();
        assert!((1.49..1.51).contains(tr), "retract at {tr}");
        // 80 mm up (away from the patient, against the probe axis), free space.
        assert!((retract.t_base_probe.translation.z - 0.28).abs() < 1e-9);
        assert_eq!(retract.force_n, None);
        assert_eq!(l.safety(t), SafetyCode::Retract);
        // Latched: commands are ignored until a reset.
        l.command(&command(9_000, t, here));
        assert_eq!(l.poll(t), None);
        assert_eq!(l.stats().commands_ignored_latched, 1);
        l.session(&SessionRequest::Reset, t);
        l.command(&command(9_001, t, here));
        assert!(l.poll(t).is_some());
        assert_eq!(l.safety(t), SafetyCode::Normal);
    }

    #[test]
    fn stale_or_nan_inputs_withhold_setpoints() {
        let mut l = SetpointLink::new(SetpointLinkConfig::default()).unwrap();
        let here = Vector3::new(0.4, 0.0, 0.2);
        fresh(&mut l, 0.0, here);
        l.command(&command(1, 0.0, here));
        assert!(l.poll(0.0).is_some());
        // A NaN pose is refused and does not refresh the input.
        assert!(!l.pose(
            &Transform::new(down(), Vector3::new(f64::NAN, 0.0, 0.0)),
            0.05
        ));
        assert_eq!(l.measured_pose().unwrap().translation, here);
        l.seen(Input::Joints, 0.15);
        l.seen(Input::Wrench, 0.15);
        l.command(&command(2, 0.15, here));
        assert_eq!(l.poll(0.15), None, "the pose is 150 ms old");
        assert_eq!(l.safety(0.15), SafetyCode::FaultStop);
        let st = l.stats();
        assert_eq!(
            (st.inputs_refused, st.faults, st.withheld_faulted),
            (1, 1, 1)
        );
        // Non-finite or out-of-limit commands never become set-points.
        fresh(&mut l, 0.2, here);
        l.command(&command(3, 0.2, Vector3::new(f64::NAN, 0.0, 0.2)));
        l.command(&command(4, 0.2, Vector3::new(5.0, 0.0, 0.2)));
        let mut c = command(5, 0.2, here);
        c.mode = CommandMode::Contact;
        c.force_n = 0.3;
        l.command(&c);
        assert_eq!(l.poll(0.2), None);
        assert_eq!(l.stats().commands_invalid, 3);
    }

    #[test]
    fn estop_lifts_once_and_latches() {
        let mut l = SetpointLink::new(SetpointLinkConfig::default()).unwrap();
        let here = Vector3::new(0.4, 0.0, 0.2);
        fresh(&mut l, 0.0, here);
        l.command(&command(1, 0.0, here));
        assert!(l.poll(0.0).is_some());
        l.session(&SessionRequest::EStop, 0.01);
        fresh(&mut l, 0.01, here);
        let s = l.poll(0.01).unwrap();
        assert!((s.t_base_probe.translation.z - 0.22).abs() < 1e-9);
        assert_eq!(l.safety(0.01), SafetyCode::EStop);
        l.command(&command(2, 0.02, here));
        for k in 2..400 {
            let t = k as f64 * 0.005;
            fresh(&mut l, t, here);
            assert_eq!(l.poll(t), None, "nothing after the e-stop set-point");
        }
    }

    #[test]
    fn contact_estimate_from_wrench_and_pose() {
        let mut e = ContactEstimator::new(1.0, 50.0);
        let k_true = 3000.0;
        let mut last = None;
        for i in 0..200 {
            let depth = i as f64 * 2e-5; // pressing 4 mm down
            let p = Vector3::new(0.4, 0.0, 0.1 - depth);
            let f = Vector3::new(0.0, 0.0, 1.0 + k_true * depth);
            last = e.update(&Transform::new(down(), p), &f);
        }
        let m = last.unwrap();
        // Secant of a linear spring ×1.5.
        assert!(
            (m.stiffness_n_m / (1.5 * k_true) - 1.0).abs() < 0.05,
            "{m:?}"
        );
        assert!((m.normal.into_inner() - Vector3::z()).norm() < 1e-9);
        assert!(e
            .update(&Transform::new(down(), Vector3::zeros()), &Vector3::zeros())
            .is_none());
    }
}
