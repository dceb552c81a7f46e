//! Scan-protocol executor: turns a [`ScanProtocol`] (back-frame coordinates) into a stream of
//! [`ProbeTarget`]s, one per control cycle, and follows the controller's output.
//!
//! ```text
//! Idle → Transfer → Approach → Contact → Sweep → LiftOff ─┬─→ Transfer (next sweep) …
//!                                                          └─→ Retract → Done
//! any safety event / timeout ──→ Retract → Aborted
//! ```
//!
//! - **Back frame.** `t_base_start` is the start pose an operator gives: origin on the skin over
//!   L5, columns = lateral (patient's right), cranial (toward the head) and the outward skin
//!   normal (`lateral × cranial`), in the base frame. A protocol point `[lateral, cranial]` maps to
//!   `origin + lateral·x̂ + cranial·ŷ`; the height above the skin is along ẑ.
//! - **Transfer** (free): to `approach_height_m` above the sweep's first point (the first sweep
//!   starts from `retract_height_m`, since the skin height is not known yet).
//! - **Approach** (contact target): the controller searches along the probe axis until it touches
//!   and ramps the force ([`ContactPhase::Search`], [`ContactPhase::Ramp`]).
//! - **Contact**: waits until the force has been regulated for [`ExecutorConfig::settle_s`];
//!   records where the skin actually is (the height correction for the later approaches).
//! - **Sweep**: the target moves along the skin at the sweep's speed, with velocity
//!   feed-forward, anchored at the measured contact point; it waits when the probe lags.
//! - **LiftOff** (free target above): the controller ramps the force down and lifts off.
//! - **Retract**: to `retract_height_m` above the last point; then **Done**.
//!
//! Any event of severity [`Severity::Limit`] or above, a latched supervisor state, or a state
//! timeout aborts: Retract (a free target straight up along the normal — the supervisor's own
//! reaction takes precedence while it is latched) → Aborted. Every waypoint is checked against
//! the workspace box before anything moves ([`ScanExecutor::new`]).

use nalgebra::{Matrix3, Vector3};
use telecho_core::Transform;

use crate::controller::{
    ContactPhase, ControlMode, ControlOutput, OrientationMode, ProbeTarget, TargetMode,
};
use crate::error::ErrorKind;
use crate::protocol::{ProbeOrientation, ScanProtocol};
use crate::safety::{SafetyConfig, SafetyEvent, SafetyState, Severity};
use crate::Error;

/// Settings of the executor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExecutorConfig {
    /// Force regulated this long before a sweep starts, s (default 0.3).
    pub settle_s: f64,
    /// A free move has arrived within this distance, m (default 0.002).
    pub arrive_m: f64,
    /// The sweep target waits when the probe lags it by more than this, m (default 0.005).
    pub max_lag_m: f64,
    /// Longest time in any one state (a sweep gets its duration on top), s (default 30).
    pub state_timeout_s: f64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            settle_s: 0.3,
            arrive_m: 0.002,
            max_lag_m: 0.005,
            state_timeout_s: 30.0,
        }
    }
}

/// Executor state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanState {
    /// Waiting for the controller to finish its start-up tare.
    Idle,
    /// Free move to above the next sweep.
    Transfer,
    /// Searching for the skin along the probe axis.
    Approach,
    /// Force ramp and settling.
    Contact,
    /// Sweeping along the skin.
    Sweep,
    /// Force ramp down and lift-off.
    LiftOff,
    /// Moving to the safe height (at the end, or aborting).
    Retract,
    /// Protocol completed.
    Done,
    /// Protocol aborted (see [`ScanExecutor::abort_cause`]).
    Aborted,
}

impl ScanState {
    /// Snake-case name (`lift_off`), as reports, `/scan/status` and `sweep.json` write it.
    pub fn name(self) -> &'static str {
        match self {
            ScanState::Idle => "idle",
            ScanState::Transfer => "transfer",
            ScanState::Approach => "approach",
            ScanState::Contact => "contact",
            ScanState::Sweep => "sweep",
            ScanState::LiftOff => "lift_off",
            ScanState::Retract => "retract",
            ScanState::Done => "done",
            ScanState::Aborted => "aborted",
        }
    }
}

/// Why a scan was aborted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AbortCause {
    /// A safety event.
    Safety(SafetyEvent),
    /// The supervisor left its normal state (hold, retract, stop) without an event this cycle.
    Supervisor(SafetyState),
    /// A state took longer than its timeout.
    Timeout(ScanState),
    /// Stopped on request (`/scan/stop`, the console's stop).
    Stopped,
}

impl std::fmt::Display for AbortCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbortCause::Safety(e) => write!(
                f,
                "safety event {} at {:.3} s (value {}, limit {})",
                e.kind.name(),
                e.time_s,
                e.value,
                e.limit
            ),
            AbortCause::Supervisor(s) => write!(f, "the supervisor left its normal state: {s:?}"),
            AbortCause::Timeout(s) => write!(f, "timeout in state {}", s.name()),
            AbortCause::Stopped => f.write_str("stopped on request"),
        }
    }
}

/// Where the scan is (for recorders tagging frames).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScanProgress {
    /// State.
    pub state: ScanState,
    /// Index of the current (or last) sweep.
    pub sweep_index: usize,
    /// Number of sweeps in the protocol.
    pub sweep_count: usize,
    /// Fraction of the current sweep done, 0–1 (only meaningful in [`ScanState::Sweep`]).
    pub sweep_fraction: f64,
}

#[derive(Clone, Copy, Debug)]
struct SweepPlan {
    from: Vector3<f64>,
    to: Vector3<f64>,
    rotation: Matrix3<f64>,
    tilt_rad: f64,
    force_n: f64,
    speed_m_s: f64,
    length_m: f64,
}

/// The scan-protocol executor. See the module documentation.
#[derive(Clone, Debug)]
pub struct ScanExecutor {
    config: ExecutorConfig,
    name: String,
    sweep_names: Vec<String>,
    plans: Vec<SweepPlan>,
    normal: Vector3<f64>,
    approach_height_m: f64,
    retract_height_m: f64,
    state: ScanState,
    sweep: usize,
    state_since_s: f64,
    /// Skin correction along the normal learnt at each contact, m.
    height_offset_m: f64,
    contact_point: Vector3<f64>,
    path_s: f64,
    goal: Transform,
    abort: Option<AbortCause>,
    last_time_s: f64,
    path_end_s: f64,
}

impl ScanExecutor {
    /// Plans `protocol` from the start pose `t_base_start` (see the module documentation) and
    /// checks every waypoint (with its approach and retract heights) against the workspace box
    /// of `safety`. Refuses — before anything moves — a non-finite or non-orthonormal start pose
    /// and any waypoint outside the box.
    pub fn new(
        protocol: &ScanProtocol,
        t_base_start: &Transform,
        safety: &SafetyConfig,
        config: ExecutorConfig,
    ) -> Result<Self, Error> {
        let r = &t_base_start.rotation;
        if !t_base_start.is_finite()
            || (r.transpose() * r - Matrix3::identity()).amax() > 1e-6
            || r.determinant() <= 0.0
        {
            return Err(ErrorKind::Executor(
                "the start pose must be finite with an orthonormal, right-handed rotation".into(),
            )
            .into());
        }
        if protocol.sweeps.is_empty() {
            return Err(ErrorKind::Executor("the protocol has no sweep".into()).into());
        }
        let lateral = r.column(0).into_owned();
        let cranial = r.column(1).into_owned();
        let normal = r.column(2).into_owned();
        let origin = t_base_start.translation;
        let point = |p: [f64; 2]| origin + lateral * p[0] + cranial * p[1];
        let mut plans = Vec::with_capacity(protocol.sweeps.len());
        for s in &protocol.sweeps {
            let x = match s.orientation {
                ProbeOrientation::Sagittal => cranial,
                ProbeOrientation::Transverse => lateral,
            };
            let z = -normal;
            let rotation = Matrix3::from_columns(&[x, z.cross(&x), z]);
            // Beam tilted toward the midline: for a sagittal sweep on the right (+lateral) the
            // rotation about the array is positive (see the controller's FollowNormal).
            let side = match s.orientation {
                ProbeOrientation::Sagittal if s.from[0] < 0.0 => -1.0,
                _ => 1.0,
            };
            let plan = SweepPlan {
                from: point(s.from),
                to: point(s.to),
                rotation,
                tilt_rad: s.tilt_rad * side,
                force_n: s.force_n,
                speed_m_s: s.speed_m_s,
                length_m: s.length_m(),
            };
            for (what, p) in [
                ("start", plan.from),
                ("end", plan.to),
                (
                    "approach point",
                    plan.from + normal * protocol.retract_height_m,
                ),
                (
                    "retract point",
                    plan.to + normal * protocol.retract_height_m,
                ),
            ] {
                if !safety.in_workspace(&p, 0.0) {
                    return Err(ErrorKind::Executor(format!(
                        "sweep `{}`: its {what} ({:.3}, {:.3}, {:.3}) m lies outside the \
                         workspace box",
                        s.name, p.x, p.y, p.z
                    ))
                    .into());
                }
            }
            plans.push(plan);
        }
        Ok(Self {
            config,
            name: protocol.name.clone(),
            sweep_names: protocol.sweeps.iter().map(|s| s.name.clone()).collect(),
            plans,
            normal,
            approach_height_m: protocol.approach_height_m,
            retract_height_m: protocol.retract_height_m,
            state: ScanState::Idle,
            sweep: 0,
            state_since_s: 0.0,
            height_offset_m: 0.0,
            contact_point: origin,
            path_s: 0.0,
            goal: *t_base_start,
            abort: None,
            last_time_s: 0.0,
            path_end_s: 0.0,
        })
    }

    /// The protocol's name.
    pub fn protocol_name(&self) -> &str {
        &self.name
    }

    /// Name of sweep `index`.
    pub fn sweep_name(&self, index: usize) -> Option<&str> {
        self.sweep_names.get(index).map(String::as_str)
    }

    /// Where the scan is.
    pub fn progress(&self) -> ScanProgress {
        let fraction = self
            .plans
            .get(self.sweep)
            .map(|p| (self.path_s / p.length_m).clamp(0.0, 1.0))
            .unwrap_or(0.0);
        ScanProgress {
            state: self.state,
            sweep_index: self.sweep,
            sweep_count: self.plans.len(),
            sweep_fraction: fraction,
        }
    }

    /// The current state.
    pub fn state(&self) -> ScanState {
        self.state
    }

    /// Why the scan aborted, if it did.
    pub fn abort_cause(&self) -> Option<AbortCause> {
        self.abort
    }

    /// True in [`ScanState::Done`] or [`ScanState::Aborted`].
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ScanState::Done | ScanState::Aborted)
    }

    /// Stops the scan on request: from wherever it is, the probe lifts straight off along the
    /// skin normal to the retract height (the force ramps down through the supervisor as the
    /// target leaves contact) and the executor ends in [`ScanState::Aborted`] with
    /// [`AbortCause::Stopped`]. Nothing happens once the scan has finished or is already
    /// aborting. `out` is the controller's last output. Does not allocate.
    pub fn stop(&mut self, time_s: f64, out: &ControlOutput) {
        if self.is_finished() {
            return;
        }
        if self.state == ScanState::Idle {
            // Nothing moved yet: end at once.
            self.abort = Some(AbortCause::Stopped);
            self.enter(ScanState::Aborted, time_s);
            return;
        }
        self.abort_now(AbortCause::Stopped, time_s, out);
    }

    fn enter(&mut self, state: ScanState, time_s: f64) {
        tracing::debug!(from = ?self.state, to = ?state, sweep = self.sweep, "scan state");
        self.state = state;
        self.state_since_s = time_s;
    }

    fn abort_now(&mut self, cause: AbortCause, time_s: f64, out: &ControlOutput) {
        if self.abort.is_some() {
            return;
        }
        tracing::warn!(?cause, sweep = self.sweep, "scan aborted");
        self.abort = Some(cause);
        self.goal = Transform::new(
            out.t_base_probe_cmd.rotation,
            out.t_base_probe_cmd.translation + self.normal * self.retract_height_m,
        );
        self.enter(ScanState::Retract, time_s);
    }

    fn above(&self, p: &Vector3<f64>, height: f64, rotation: &Matrix3<f64>) -> Transform {
        Transform::new(*rotation, p + self.normal * (height + self.height_offset_m))
    }

    /// A planned skin point corrected by the skin height learnt at the last contact.
    fn skin_at(&self, p: &Vector3<f64>) -> Vector3<f64> {
        p + self.normal * self.height_offset_m
    }

    fn arrived(&self, out: &ControlOutput) -> bool {
        let (dp, dr) = out.t_base_probe.distance_to(&self.goal);
        let (dc, _) = out.t_base_probe_cmd.distance_to(&self.goal);
        dp < self.config.arrive_m && dc < 1e-3 && dr < 0.02 && out.tip_speed_m_s < 0.005
    }

    /// One cycle: reads the controller's last output and returns the target for this cycle
    /// (always `Some` once started, so the command watchdog stays fed). Does not allocate.
    pub fn update(&mut self, time_s: f64, out: &ControlOutput) -> Option<ProbeTarget> {
        let dt = (time_s - self.last_time_s).clamp(0.0, 0.1);
        self.last_time_s = time_s;
        if self.state == ScanState::Idle {
            if matches!(out.mode, ControlMode::Initializing) {
                return None;
            }
            if out.safety != SafetyState::Normal {
                self.abort_now(AbortCause::Supervisor(out.safety), time_s, out);
            } else {
                let p = &self.plans[0];
                self.goal =
                    Transform::new(p.rotation, p.from + self.normal * self.retract_height_m);
                self.enter(ScanState::Transfer, time_s);
            }
        }
        // Abort on any safety event or supervisor takeover.
        if self.abort.is_none() && !self.is_finished() {
            if let Some(e) = out
                .events
                .as_slice()
                .iter()
                .find(|e| e.kind.severity() >= Severity::Limit)
            {
                self.abort_now(AbortCause::Safety(*e), time_s, out);
            } else if out.safety != SafetyState::Normal {
                self.abort_now(AbortCause::Supervisor(out.safety), time_s, out);
            }
        }
        let elapsed = time_s - self.state_since_s;
        let sweep_time = self
            .plans
            .get(self.sweep)
            .map(|p| 2.0 * p.length_m / p.speed_m_s)
            .unwrap_or(0.0);
        let timeout = self.config.state_timeout_s
            + if self.state == ScanState::Sweep {
                sweep_time
            } else {
                0.0
            };
        if !self.is_finished() && self.abort.is_none() && elapsed > timeout {
            self.abort_now(AbortCause::Timeout(self.state), time_s, out);
        }

        let elapsed = time_s - self.state_since_s;
        let plan = self.plans[self.sweep.min(self.plans.len() - 1)];
        let follow = OrientationMode::FollowNormal {
            tilt_rad: plan.tilt_rad,
        };
        match self.state {
            ScanState::Idle => None,
            ScanState::Transfer => {
                if out.in_contact {
                    // Touched the skin on the way down: contact starts here.
                    self.enter(ScanState::Approach, time_s);
                } else if self.arrived(out) {
                    self.enter(ScanState::Approach, time_s);
                }
                Some(ProbeTarget::free(time_s, self.goal))
            }
            ScanState::Approach => {
                if matches!(
                    out.contact_phase,
                    ContactPhase::Ramp | ContactPhase::Regulate
                ) {
                    self.enter(ScanState::Contact, time_s);
                }
                Some(self.contact_target(time_s, &plan, self.skin_at(&plan.from), follow))
            }
            ScanState::Contact => {
                if out.contact_phase == ContactPhase::Regulate
                    && out.regulating_s >= self.config.settle_s
                {
                    self.contact_point = out.t_base_probe.translation;
                    self.height_offset_m = (self.contact_point - plan.from).dot(&self.normal);
                    self.path_s = 0.0;
                    self.enter(ScanState::Sweep, time_s);
                }
                Some(self.contact_target(time_s, &plan, self.skin_at(&plan.from), follow))
            }
            ScanState::Sweep => {
                let dir = (plan.to - plan.from) / plan.length_m;
                let anchor = |s: f64| self.contact_point + dir * s;
                let lag = {
                    let d = anchor(self.path_s) - out.t_base_probe.translation;
                    let z = out.t_base_probe.rotation.column(2).into_owned();
                    (d - z * d.dot(&z)).norm()
                };
                let moving = self.path_s < plan.length_m;
                if moving
                    && lag < self.config.max_lag_m
                    && out.contact_phase == ContactPhase::Regulate
                {
                    self.path_s = (self.path_s + plan.speed_m_s * dt).min(plan.length_m);
                }
                let mut t = self.contact_target(time_s, &plan, anchor(self.path_s), follow);
                if self.path_s < plan.length_m {
                    t.velocity_m_s = dir * plan.speed_m_s;
                    self.path_end_s = time_s;
                } else if lag < self.config.max_lag_m * 0.6 || time_s - self.path_end_s > 1.0 {
                    // Breathing moves a tilted probe tangentially by a millimetre or two, so
                    // the end is reached within 3 mm, or a second after the target got there.
                    let p = out.t_base_probe.translation;
                    self.goal = Transform::new(
                        out.t_base_probe.rotation,
                        p + self.normal * self.approach_height_m,
                    );
                    self.enter(ScanState::LiftOff, time_s);
                }
                Some(t)
            }
            ScanState::LiftOff => {
                if out.contact_phase == ContactPhase::None && self.arrived(out) {
                    if self.sweep + 1 < self.plans.len() {
                        self.sweep += 1;
                        let next = &self.plans[self.sweep];
                        self.goal = self.above(&next.from, self.approach_height_m, &next.rotation);
                        self.enter(ScanState::Transfer, time_s);
                    } else {
                        self.goal = Transform::new(
                            self.goal.rotation,
                            self.goal.translation
                                + self.normal * (self.retract_height_m - self.approach_height_m),
                        );
                        self.enter(ScanState::Retract, time_s);
                    }
                }
                Some(ProbeTarget::free(time_s, self.goal))
            }
            ScanState::Retract => {
                let latched = out.safety.is_latched();
                let still = out.tip_speed_m_s < 1e-3 && elapsed > 0.5;
                if self.arrived(out) || (latched && still) || elapsed > self.config.state_timeout_s
                {
                    let next = if self.abort.is_some() {
                        ScanState::Aborted
                    } else {
                        ScanState::Done
                    };
                    self.enter(next, time_s);
                }
                Some(ProbeTarget::free(time_s, self.goal))
            }
            ScanState::Done | ScanState::Aborted => {
                // Keep holding where the retract ended (feeds the watchdog).
                let hold = Transform::new(self.goal.rotation, out.t_base_probe_cmd.translation);
                if out.safety == SafetyState::Normal && out.mode != ControlMode::Contact {
                    self.goal = hold;
                }
                Some(ProbeTarget::free(time_s, self.goal))
            }
        }
    }

    /// A contact target at `p` (base frame, already at the skin height).
    fn contact_target(
        &self,
        time_s: f64,
        plan: &SweepPlan,
        p: Vector3<f64>,
        orientation: OrientationMode,
    ) -> ProbeTarget {
        ProbeTarget {
            stamp_s: time_s,
            t_base_probe: Transform::new(plan.rotation, p),
            mode: TargetMode::Contact,
            force_n: plan.force_n,
            orientation,
            velocity_m_s: Vector3::zeros(),
        }
    }
}

/// The start pose an operator gives by palpating L5 on the patient: the skin point over L5
/// (`l5_skin_ct`, `ct` frame) and the back's axes (`ct` +x lateral, +z cranial, −y out of the
/// back) mapped into the base frame by `palpated_t_base_ct` — the placement the operator's hands
/// feel, i.e. the true one in the simulator (the controller itself never learns it) — plus a
/// seeded palpation error of `error_range_m.0`–`error_range_m.1` in a random direction on the
/// skin plane and an alignment error of up to ±`yaw_error_rad` about the skin normal (how well
/// the operator lines the probe up with the spine by eye).
pub fn palpated_start_pose(
    palpated_t_base_ct: &Transform,
    l5_skin_ct: &Vector3<f64>,
    seed: u64,
    error_range_m: (f64, f64),
    yaw_error_rad: f64,
) -> Transform {
    let r = &palpated_t_base_ct.rotation;
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    };
    let radius = error_range_m.0 + (error_range_m.1 - error_range_m.0) * next();
    let angle = 2.0 * std::f64::consts::PI * next();
    let yaw = yaw_error_rad * (2.0 * next() - 1.0);
    let lateral_true = r * Vector3::x();
    let cranial_true = r * Vector3::z();
    let p = palpated_t_base_ct.transform_point(l5_skin_ct)
        + (lateral_true * angle.cos() + cranial_true * angle.sin()) * radius;
    let (s, c) = yaw.sin_cos();
    let lateral = lateral_true * c + cranial_true * s;
    let cranial = cranial_true * c - lateral_true * s;
    let normal = lateral.cross(&cranial);
    Transform::new(Matrix3::from_columns(&[lateral, cranial, normal]), p)
}
