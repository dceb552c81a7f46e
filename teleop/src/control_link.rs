//! The bridge from the patient side's protocol core to the control node, without I/O.
//!
//! [`OperatorSource`] is the control loop's [`TargetSource`] while a remote operator steers: it
//! is fed the commands the [`crate::session::PatientCore`] accepted (already lease-checked,
//! within the site limits, newest-wins and extrapolated over their age) and the session
//! requests, and turns them into [`ProbeTarget`]s for the controller, whose safety supervisor
//! checks every one of them. What it does per control cycle:
//!
//! - a scan protocol is running (`StartProtocol`): the executor's target; operator commands are
//!   counted and ignored until the protocol stops;
//! - a new command arrived since the last cycle: its target, stamped with the controller's
//!   time (only the newest command of the cycle is used, older ones are superseded);
//! - the lease was released: the operator's last target again, freshly stamped (the robot
//!   holds where it is, with force regulation in contact); the protocol was stopped: the
//!   controller's current reference pose, held the same way;
//! - otherwise nothing: the supervisor's command watchdog holds after 100 ms and retracts to a
//!   safe height after 1 s (link loss).
//!
//! E-stop is latched here until a `Reset` (which also asks the supervisor to clear its latched
//! states). [`contact_model`] turns the controller's estimates into the local contact model
//! streamed to the console for model-mediated haptics.

use nalgebra::{Rotation3, Unit, Vector3};
use telecho_control::{
    ControlOutput, OrientationMode, ProbeTarget, SafetyState, ScanExecutor, TargetMode,
    TargetSource,
};
use telecho_core::Transform;

use crate::session::{ControlCommand, SessionRequest};
use crate::watchdog::LinkEvent;
use crate::wire::{CommandMode, ContactModel, LinkState, SafetyCode, Target};

/// How far ahead of the commanded pose a twist command places the target, s (the controller
/// gets the twist as velocity feed-forward and this much motion as position reference).
pub const TWIST_LOOKAHEAD_S: f64 = 0.05;

/// Counters of an [`OperatorSource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OperatorSourceStats {
    /// Commands handed to the controller.
    pub applied: u64,
    /// Commands replaced by a newer one before a control cycle used them.
    pub superseded: u64,
    /// Commands not newer than the pending one (dropped).
    pub reordered: u64,
    /// Commands that could not become a target (non-finite values).
    pub invalid: u64,
    /// Commands ignored because a scan protocol was running.
    pub ignored_during_protocol: u64,
    /// Cycles that repeated the last target (lease released, protocol stopped).
    pub hold_cycles: u64,
    /// E-stops received.
    pub estops: u64,
    /// Resets received.
    pub resets: u64,
}

/// The control loop's target source fed by the teleoperation link.
#[derive(Debug, Default)]
pub struct OperatorSource {
    pending: Option<ControlCommand>,
    last: Option<ProbeTarget>,
    hold: bool,
    hold_here: bool,
    estop: bool,
    reset_pending: bool,
    executor: Option<ScanExecutor>,
    protocol_name: Option<String>,
    link: Option<LinkState>,
    last_applied: Option<ControlCommand>,
    stats: OperatorSourceStats,
}

impl OperatorSource {
    /// A source with nothing to do yet (the controller idles).
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters.
    pub fn stats(&self) -> OperatorSourceStats {
        self.stats
    }

    /// True while the e-stop is latched.
    pub fn estopped(&self) -> bool {
        self.estop
    }

    /// The running scan protocol's name.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    /// The newest command the controller got.
    pub fn last_applied(&self) -> Option<&ControlCommand> {
        self.last_applied.as_ref()
    }

    /// The last link state reported by the protocol core.
    pub fn link_state(&self) -> Option<LinkState> {
        self.link
    }

    /// An accepted command. Newest wins: a command not newer than the pending one from the same
    /// connection is dropped.
    pub fn push_command(&mut self, c: ControlCommand) {
        if let Some(p) = &self.pending {
            if p.conn == c.conn && c.seq <= p.seq {
                self.stats.reordered += 1;
                return;
            }
            self.stats.superseded += 1;
        }
        self.pending = Some(c);
    }

    /// A link-state change from the protocol core's watchdog. `Idle` (lease released) makes
    /// the source hold the last target; hold and retract are left to the controller's own
    /// command watchdog, which sees the same silence.
    pub fn link(&mut self, ev: LinkEvent) {
        self.link = Some(ev.state);
        match ev.state {
            LinkState::Idle => self.hold = true,
            LinkState::Live => self.hold = false,
            LinkState::Hold | LinkState::Retract => {}
        }
    }

    /// A session request that needs no outside help (e-stop, reset, stop protocol). Starting a
    /// protocol needs its executor: see [`OperatorSource::start_protocol`].
    pub fn session(&mut self, request: &SessionRequest) {
        match request {
            SessionRequest::EStop => {
                self.stats.estops += 1;
                self.estop = true;
                self.stop_protocol();
            }
            SessionRequest::Reset => {
                self.stats.resets += 1;
                self.estop = false;
                self.reset_pending = true;
            }
            SessionRequest::StopProtocol => self.stop_protocol(),
            SessionRequest::StartProtocol(_) => {}
        }
    }

    /// Runs `executor` (a planned scan protocol) until it finishes or is stopped. Refused
    /// (returns false) while the e-stop is latched.
    pub fn start_protocol(&mut self, name: &str, executor: ScanExecutor) -> bool {
        if self.estop {
            return false;
        }
        self.executor = Some(executor);
        self.protocol_name = Some(name.to_owned());
        self.pending = None;
        true
    }

    /// Stops the running protocol; the robot holds where it is (its current reference pose,
    /// with force regulation when the protocol's last target was in contact).
    pub fn stop_protocol(&mut self) {
        if self.executor.take().is_some() {
            self.hold = true;
            self.hold_here = true;
        }
        self.protocol_name = None;
    }

    /// The running executor.
    pub fn executor(&self) -> Option<&ScanExecutor> {
        self.executor.as_ref()
    }
}

/// The controller target for an accepted command at controller time `time_s`; `None` when a
/// value is not finite.
pub fn to_target(c: &ControlCommand, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
    let (t_base_probe, velocity) = match &c.target {
        Target::Pose(p) => (p.to_transform(), c.velocity_m_s),
        Target::Twist {
            linear_m_s,
            angular_rad_s,
        } => {
            let base = &last.t_base_probe_cmd;
            let rot = Rotation3::new(angular_rad_s * TWIST_LOOKAHEAD_S)
                * Rotation3::from_matrix_unchecked(base.rotation);
            (
                Transform::new(
                    *rot.matrix(),
                    base.translation + linear_m_s * TWIST_LOOKAHEAD_S,
                ),
                *linear_m_s,
            )
        }
    };
    let finite = t_base_probe.is_finite()
        && velocity.iter().all(|v| v.is_finite())
        && c.force_n.is_finite()
        && time_s.is_finite();
    if !finite {
        return None;
    }
    let mode = match c.mode {
        CommandMode::Free => TargetMode::Free,
        CommandMode::Contact => TargetMode::Contact,
    };
    Some(ProbeTarget {
        stamp_s: time_s,
        t_base_probe,
        mode,
        force_n: if mode == TargetMode::Contact {
            c.force_n
        } else {
            0.0
        },
        orientation: OrientationMode::Commanded,
        velocity_m_s: velocity,
    })
}

impl TargetSource for OperatorSource {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        if let Some(exec) = self.executor.as_mut() {
            if self.pending.take().is_some() {
                self.stats.ignored_during_protocol += 1;
            }
            let t = exec.update(time_s, last);
            if exec.is_finished() {
                self.executor = None;
                self.protocol_name = None;
                self.hold = true;
            }
            if t.is_some() {
                self.last = t;
            }
            return t;
        }
        if let Some(c) = self.pending.take() {
            match to_target(&c, time_s, last) {
                Some(t) => {
                    self.stats.applied += 1;
                    self.last = Some(t);
                    self.last_applied = Some(c);
                    self.hold = false;
                    return Some(t);
                }
                None => self.stats.invalid += 1,
            }
        }
        if self.hold {
            if std::mem::take(&mut self.hold_here) {
                if let Some(t) = self.last.as_mut() {
                    t.t_base_probe = last.t_base_probe_cmd;
                }
            }
            if let Some(t) = self.last.as_mut() {
                t.stamp_s = time_s;
                t.velocity_m_s = Vector3::zeros();
                self.stats.hold_cycles += 1;
                return Some(*t);
            }
        }
        None
    }

    fn estop(&self) -> bool {
        self.estop
    }

    fn reset(&mut self) -> bool {
        std::mem::take(&mut self.reset_pending)
    }
}

/// The wire's safety code of a supervisor state.
pub fn safety_code(s: &SafetyState) -> SafetyCode {
    match s {
        SafetyState::Normal => SafetyCode::Normal,
        SafetyState::WatchdogHold => SafetyCode::Hold,
        SafetyState::Retract { .. } => SafetyCode::Retract,
        SafetyState::FaultStop { .. } => SafetyCode::FaultStop,
        SafetyState::EStop => SafetyCode::EStop,
    }
}

/// The local contact model for the console from the controller's own estimates (what a real
/// system knows: the measured force, the estimated skin normal and tissue stiffness), `None`
/// out of contact or before the stiffness is estimated. The skin surface point is the tip
/// moved out along the normal by the indentation `F / k`.
pub fn contact_model(out: &ControlOutput, damping_n_s_m: f64) -> Option<ContactModel> {
    let k = out.stiffness_n_per_m;
    if !out.in_contact || !k.is_finite() || k <= 0.0 || !out.force_n.is_finite() {
        return None;
    }
    let n = Unit::try_new(out.surface_normal_base, 1e-6)?;
    let depth = (out.force_n / k).clamp(0.0, 0.05);
    let point = out.t_base_probe.translation + n.into_inner() * depth;
    if !point.iter().all(|v| v.is_finite()) {
        return None;
    }
    Some(ContactModel {
        point_m: point,
        normal: n,
        stiffness_n_m: k.min(1e6),
        damping_n_s_m: damping_n_s_m.clamp(0.0, 1e5),
    })
}
