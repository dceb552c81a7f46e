//! The safety supervisor: every command the controller produces passes through it before it
//! reaches the arm.
//!
//! The supervisor owns the **safety state** ([`SafetyState`]) and the checks; the controller owns
//! the reactions' motion (hold, retract, stop), which it computes with the same limited motion
//! pipeline as every other command. Per cycle, in order:
//!
//! 1. inputs ([`SafetySupervisor::check_inputs`]): e-stop latch and explicit reset, joint
//!    measurements (length, finite), control period, and the F/T sample — NaN, stale (older than
//!    [`SafetyConfig::ft_stale_s`]), saturated, implausible jump between samples, or frozen values
//!    — each a latched **fault stop** decided in the cycle the sample arrives;
//! 2. contact wrench ([`SafetySupervisor::check_wrench`]): contact-force magnitude above
//!    [`SafetyConfig::force_limit_n`] or an external joint torque `Jᵀ·w` above
//!    [`SafetyConfig::effort_fraction`] of the URDF effort limit → latched **retract** along the
//!    probe axis;
//! 3. targets ([`SafetySupervisor::check_target`]): NaN, non-rotation or out-of-range force
//!    setpoints are refused; positions outside the workspace box are clamped into it; only a
//!    valid target with a newer stamp is *fresh*;
//! 4. command watchdog ([`SafetySupervisor::check_watchdog`]): no fresh target for
//!    [`SafetyConfig::watchdog_hold_s`] → hold (with force regulation in contact), for
//!    [`SafetyConfig::watchdog_retract_s`] → latched retract to a safe height;
//! 5. motion ([`SafetySupervisor::limit_twist`], [`SafetySupervisor::limit_joints`]): Cartesian
//!    speed limit (in contact and in free space), workspace box as virtual walls, joint position,
//!    velocity and acceleration limits;
//! 6. the final command ([`SafetySupervisor::check_command`]): finite and within the joint
//!    limits, or the last valid command is repeated;
//! 7. measurements ([`SafetySupervisor::check_measured`]): joint tracking error (the arm does not
//!    follow: collision, servo fault) and measured tip speed → fault stop.
//!
//! Latched states (retract, fault stop, e-stop) stay until an explicit reset with the e-stop
//! released and the F/T sensor healthy. Every event is recorded in a preallocated list that the
//! controller's output carries, and logged with `tracing` when it is raised.

use nalgebra::{Matrix6xX, Vector3};
use telecho_core::ros_msgs::{DiagnosticArray, DiagnosticStatus, Header, KeyValue};

use crate::error::check_config as check;
use crate::ft_compensation::FtSample;
use crate::kinematics::JointLimits;
use crate::payload::Wrench;
use crate::Error;

/// Highest contact-force limit a configuration may set, N.
pub const MAX_FORCE_LIMIT_N: f64 = 25.0;
/// Most events one control cycle records (further ones are counted in
/// [`SafetyEvents::dropped`]).
pub const MAX_EVENTS_PER_CYCLE: usize = 8;

/// Settings of the safety supervisor. SI units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SafetyConfig {
    /// Hard limit on the contact-force magnitude, N (default 20; at most [`MAX_FORCE_LIMIT_N`]).
    pub force_limit_n: f64,
    /// Force setpoints are capped this far below the limit, N (default 2).
    pub setpoint_margin_n: f64,
    /// Tip speed limit while touching the patient or in contact mode, m/s (default 0.05).
    pub contact_speed_limit_m_s: f64,
    /// Tip speed limit in free space, m/s (default 0.1; at most 0.25).
    pub free_speed_limit_m_s: f64,
    /// Probe angular speed limit, rad/s (default 1.0).
    pub angular_speed_limit_rad_s: f64,
    /// Workspace box, lower corner in the base frame, m.
    pub workspace_min_m: [f64; 3],
    /// Workspace box, upper corner in the base frame, m.
    pub workspace_max_m: [f64; 3],
    /// Deceleration used to stop at the workspace walls, m/s² (default 0.5).
    pub wall_deceleration_m_s2: f64,
    /// Joints stay this far inside their URDF position limits, rad (default 0.02).
    pub joint_margin_rad: f64,
    /// Joint speed limit as a fraction of the URDF `<limit velocity>` (default 0.5).
    pub joint_velocity_fraction: f64,
    /// Joint acceleration limit, rad/s² (default 10).
    pub joint_acceleration_rad_s2: f64,
    /// External joint torque `|Jᵀ·w|` limit as a fraction of the URDF effort limit (default 0.25).
    pub effort_fraction: f64,
    /// No fresh target for this long → hold, s (default 0.1).
    pub watchdog_hold_s: f64,
    /// No fresh target for this long → retract to a safe height, s (default 1.0).
    pub watchdog_retract_s: f64,
    /// Distance of the watchdog retract along the probe axis, m (default 0.08).
    pub safe_retract_m: f64,
    /// Distance of the force-limit retract along the probe axis, m (default 0.02).
    pub force_retract_m: f64,
    /// Speed of both retracts, m/s (default 0.03; at most the contact speed limit).
    pub retract_speed_m_s: f64,
    /// An F/T sample older than this is stale, s (default 0.005).
    pub ft_stale_s: f64,
    /// Largest plausible force change between two samples, N (default 5).
    pub ft_jump_n: f64,
    /// Largest plausible torque change between two samples, N·m (default 0.5).
    pub ft_jump_nm: f64,
    /// This many consecutive new samples with bit-identical values mean a stuck sensor
    /// (default 50; 0 disables the check).
    pub ft_stuck_samples: u32,
    /// After a fault stop in contact, back off this far along the probe axis, m (default 0.005;
    /// 0 = pure hold). Breathing moves the back up to 5 mm toward a stopped probe.
    pub fault_backoff_m: f64,
    /// Speed of that back-off, m/s (default 0.01).
    pub fault_backoff_speed_m_s: f64,
    /// Largest difference between commanded and measured joint positions, rad (default 0.1).
    pub max_tracking_error_rad: f64,
    /// During an e-stop the arm yields to the patient once the measured contact force exceeds
    /// this, N (default 10). An e-stop commands no motion, but a frozen probe in contact with a
    /// breathing patient is pushed harder with every breath (found by `telecho soak`: 20.1 N);
    /// above this force the supervisor backs off along the measured force — away from the
    /// patient, never toward — until the force drops back.
    pub estop_yield_force_n: f64,
    /// Admittance of that yield: back-off speed per newton above the yield force, m/s per N
    /// (default 0.002: 2 mm/s per N).
    pub estop_yield_m_s_per_n: f64,
    /// Fastest yield, m/s (default 0.01).
    pub estop_yield_speed_m_s: f64,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            force_limit_n: 20.0,
            setpoint_margin_n: 2.0,
            contact_speed_limit_m_s: 0.05,
            free_speed_limit_m_s: 0.1,
            angular_speed_limit_rad_s: 1.0,
            workspace_min_m: [-1.0, -1.0, -0.5],
            workspace_max_m: [1.0, 1.0, 1.0],
            wall_deceleration_m_s2: 0.5,
            joint_margin_rad: 0.02,
            joint_velocity_fraction: 0.5,
            joint_acceleration_rad_s2: 10.0,
            effort_fraction: 0.25,
            watchdog_hold_s: 0.1,
            watchdog_retract_s: 1.0,
            safe_retract_m: 0.08,
            force_retract_m: 0.02,
            retract_speed_m_s: 0.03,
            ft_stale_s: 0.005,
            ft_jump_n: 5.0,
            ft_jump_nm: 0.5,
            ft_stuck_samples: 50,
            fault_backoff_m: 0.005,
            fault_backoff_speed_m_s: 0.01,
            max_tracking_error_rad: 0.1,
            estop_yield_force_n: 10.0,
            estop_yield_m_s_per_n: 0.002,
            estop_yield_speed_m_s: 0.01,
        }
    }
}

impl SafetyConfig {
    /// Checks every field; refuses a force limit above [`MAX_FORCE_LIMIT_N`].
    pub fn validate(&self) -> Result<(), Error> {
        check("force_limit_n", self.force_limit_n, 1.0, MAX_FORCE_LIMIT_N)?;
        check(
            "setpoint_margin_n",
            self.setpoint_margin_n,
            0.0,
            self.force_limit_n - 1.0,
        )?;
        check(
            "contact_speed_limit_m_s",
            self.contact_speed_limit_m_s,
            1e-3,
            0.05,
        )?;
        check(
            "free_speed_limit_m_s",
            self.free_speed_limit_m_s,
            1e-3,
            0.25,
        )?;
        check(
            "angular_speed_limit_rad_s",
            self.angular_speed_limit_rad_s,
            1e-3,
            3.0,
        )?;
        for i in 0..3 {
            check(
                "workspace_min_m",
                self.workspace_min_m[i],
                -10.0,
                self.workspace_max_m[i] - 0.01,
            )?;
            check("workspace_max_m", self.workspace_max_m[i], -10.0, 10.0)?;
        }
        check(
            "wall_deceleration_m_s2",
            self.wall_deceleration_m_s2,
            0.01,
            10.0,
        )?;
        check("joint_margin_rad", self.joint_margin_rad, 0.0, 0.5)?;
        check(
            "joint_velocity_fraction",
            self.joint_velocity_fraction,
            0.01,
            1.0,
        )?;
        check(
            "joint_acceleration_rad_s2",
            self.joint_acceleration_rad_s2,
            0.1,
            100.0,
        )?;
        check("effort_fraction", self.effort_fraction, 0.01, 1.0)?;
        check("watchdog_hold_s", self.watchdog_hold_s, 0.002, 1.0)?;
        check(
            "watchdog_retract_s",
            self.watchdog_retract_s,
            self.watchdog_hold_s,
            10.0,
        )?;
        check("safe_retract_m", self.safe_retract_m, 0.0, 0.3)?;
        check("force_retract_m", self.force_retract_m, 0.0, 0.3)?;
        check(
            "retract_speed_m_s",
            self.retract_speed_m_s,
            1e-3,
            self.contact_speed_limit_m_s,
        )?;
        check("ft_stale_s", self.ft_stale_s, 1e-4, 0.1)?;
        check("ft_jump_n", self.ft_jump_n, 0.1, 1000.0)?;
        check("ft_jump_nm", self.ft_jump_nm, 0.01, 100.0)?;
        check(
            "ft_stuck_samples",
            f64::from(self.ft_stuck_samples),
            0.0,
            1e6,
        )?;
        check("fault_backoff_m", self.fault_backoff_m, 0.0, 0.05)?;
        check(
            "fault_backoff_speed_m_s",
            self.fault_backoff_speed_m_s,
            1e-3,
            self.contact_speed_limit_m_s,
        )?;
        check(
            "max_tracking_error_rad",
            self.max_tracking_error_rad,
            1e-3,
            1.0,
        )?;
        check(
            "estop_yield_force_n",
            self.estop_yield_force_n,
            1.0,
            self.force_limit_n,
        )?;
        check(
            "estop_yield_m_s_per_n",
            self.estop_yield_m_s_per_n,
            1e-4,
            0.05,
        )?;
        check(
            "estop_yield_speed_m_s",
            self.estop_yield_speed_m_s,
            1e-3,
            self.contact_speed_limit_m_s,
        )?;
        Ok(())
    }

    /// True when `p` (base frame, m) lies inside the workspace box enlarged by `tol_m`.
    pub fn in_workspace(&self, p: &Vector3<f64>, tol_m: f64) -> bool {
        (0..3).all(|i| {
            p[i] >= self.workspace_min_m[i] - tol_m && p[i] <= self.workspace_max_m[i] + tol_m
        })
    }

    /// The largest force setpoint the controller uses, N.
    pub fn max_setpoint_n(&self) -> f64 {
        self.force_limit_n - self.setpoint_margin_n
    }
}

/// How serious an event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Information (a reset).
    Info,
    /// A limit clamped a command or refused a target; motion continues within the limits.
    Limit,
    /// The supervisor took over: hold, retract or stop.
    Stop,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetyEventKind {
    /// The e-stop input is active: stop, latched until released and reset.
    EStop,
    /// An explicit reset cleared a latched state.
    Reset,
    /// Contact-force magnitude above the limit: retract along the probe axis.
    ForceLimit,
    /// External joint torque `Jᵀ·w` above the effort fraction: retract.
    TorqueLimit,
    /// F/T sample with NaN or infinite values: fault stop.
    SensorNan,
    /// F/T sample older than the staleness limit (or stamped in the future): fault stop.
    SensorStale,
    /// F/T sensor saturated: fault stop.
    SensorSaturated,
    /// Implausible jump between F/T samples: fault stop.
    SensorJump,
    /// F/T values frozen while the stamp advances: fault stop.
    SensorStuck,
    /// No fresh target for the hold time: hold.
    WatchdogHold,
    /// No fresh target for the retract time: retract to a safe height.
    WatchdogRetract,
    /// Workspace box: a target was clamped into it or motion stopped at a wall.
    WorkspaceLimit,
    /// Tip speed above the limit (command clamped, or measured: fault stop).
    CartesianSpeed,
    /// A joint command reached the position limit (clamped).
    JointPositionLimit,
    /// A joint command exceeded the velocity limit (scaled).
    JointVelocityLimit,
    /// A joint command exceeded the acceleration limit (clamped).
    JointAccelerationLimit,
    /// A target was refused (NaN, not a rotation, force setpoint out of range).
    InvalidTarget,
    /// Joint measurements or the control period were invalid: fault stop.
    InvalidInput,
    /// The final command was not finite or outside the limits: last valid command repeated.
    CommandRejected,
    /// The arm does not follow its command (collision, servo fault): fault stop.
    TrackingError,
    /// Contact search travelled its whole distance without touching: hold.
    ContactNotFound,
    /// The start-up tare found an implausible offset (touching something?): fault stop.
    TareRejected,
}

const N_KINDS: usize = 22;

impl SafetyEventKind {
    fn index(self) -> usize {
        self as usize
    }

    /// How serious the event is.
    pub fn severity(self) -> Severity {
        use SafetyEventKind::*;
        match self {
            Reset => Severity::Info,
            WorkspaceLimit
            | JointPositionLimit
            | JointVelocityLimit
            | JointAccelerationLimit
            | InvalidTarget
            | CommandRejected
            | ContactNotFound => Severity::Limit,
            _ => Severity::Stop,
        }
    }

    /// A short snake_case name (for logs and JSON).
    pub fn name(self) -> &'static str {
        use SafetyEventKind::*;
        match self {
            EStop => "estop",
            Reset => "reset",
            ForceLimit => "force_limit",
            TorqueLimit => "torque_limit",
            SensorNan => "sensor_nan",
            SensorStale => "sensor_stale",
            SensorSaturated => "sensor_saturated",
            SensorJump => "sensor_jump",
            SensorStuck => "sensor_stuck",
            WatchdogHold => "watchdog_hold",
            WatchdogRetract => "watchdog_retract",
            WorkspaceLimit => "workspace_limit",
            CartesianSpeed => "cartesian_speed",
            JointPositionLimit => "joint_position_limit",
            JointVelocityLimit => "joint_velocity_limit",
            JointAccelerationLimit => "joint_acceleration_limit",
            InvalidTarget => "invalid_target",
            InvalidInput => "invalid_input",
            CommandRejected => "command_rejected",
            TrackingError => "tracking_error",
            ContactNotFound => "contact_not_found",
            TareRejected => "tare_rejected",
        }
    }
}

impl std::fmt::Display for SafetyEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One safety event with its cause: the measured value and the limit it crossed (units depend on
/// the kind: N, N·m, s, m, m/s, rad, rad/s, rad/s²; NaN where meaningless).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SafetyEvent {
    /// Controller time, s.
    pub time_s: f64,
    /// What happened.
    pub kind: SafetyEventKind,
    /// The offending value.
    pub value: f64,
    /// The limit it crossed.
    pub limit: f64,
}

impl SafetyEvent {
    const EMPTY: Self = Self {
        time_s: 0.0,
        kind: SafetyEventKind::Reset,
        value: 0.0,
        limit: 0.0,
    };

    /// The event as ROS 2 publishes and records it on `/safety/events`: one
    /// `diagnostic_msgs/DiagnosticStatus` named `telecho/safety` (level OK for information, WARN
    /// for a limit, ERROR for a stop; `message` the kind's name; `value` and `limit` as key/value
    /// pairs) in a `DiagnosticArray` with `header`.
    pub fn to_diagnostic(&self, header: Header) -> DiagnosticArray {
        let level = match self.kind.severity() {
            Severity::Info => DiagnosticStatus::OK,
            Severity::Limit => DiagnosticStatus::WARN,
            Severity::Stop => DiagnosticStatus::ERROR,
        };
        DiagnosticArray {
            header,
            status: vec![DiagnosticStatus {
                level,
                name: "telecho/safety".to_owned(),
                message: self.kind.name().to_owned(),
                hardware_id: "control".to_owned(),
                values: vec![
                    KeyValue {
                        key: "value".to_owned(),
                        value: format!("{}", self.value),
                    },
                    KeyValue {
                        key: "limit".to_owned(),
                        value: format!("{}", self.limit),
                    },
                ],
            }],
        }
    }
}

/// The events of one cycle: a fixed-capacity list (no allocation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SafetyEvents {
    items: [SafetyEvent; MAX_EVENTS_PER_CYCLE],
    len: usize,
    dropped: usize,
}

impl Default for SafetyEvents {
    fn default() -> Self {
        Self {
            items: [SafetyEvent::EMPTY; MAX_EVENTS_PER_CYCLE],
            len: 0,
            dropped: 0,
        }
    }
}

impl SafetyEvents {
    /// Removes all events.
    pub fn clear(&mut self) {
        self.len = 0;
        self.dropped = 0;
    }

    /// Appends an event (counted in `dropped` when full).
    pub fn push(&mut self, e: SafetyEvent) {
        if self.len < MAX_EVENTS_PER_CYCLE {
            self.items[self.len] = e;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// The recorded events.
    pub fn as_slice(&self) -> &[SafetyEvent] {
        &self.items[..self.len]
    }

    /// Number of recorded events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing happened.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Events that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// True when an event of `kind` was recorded.
    pub fn contains(&self, kind: SafetyEventKind) -> bool {
        self.as_slice().iter().any(|e| e.kind == kind)
    }
}

/// The supervisor's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetyState {
    /// Commands pass (within the limits).
    Normal,
    /// No fresh target for the hold time: hold the position (force regulation continues in
    /// contact). Clears by itself when a fresh target arrives.
    WatchdogHold,
    /// Retracting along the probe axis, then holding. Latched until reset.
    Retract {
        /// Why.
        cause: SafetyEventKind,
    },
    /// Stopped (after an optional short back-off in contact). Latched until reset.
    FaultStop {
        /// Why.
        cause: SafetyEventKind,
    },
    /// E-stop: stopped. Latched until the input is released and a reset is requested.
    EStop,
}

impl SafetyState {
    /// True for the states that need an explicit reset.
    pub fn is_latched(&self) -> bool {
        matches!(
            self,
            SafetyState::Retract { .. } | SafetyState::FaultStop { .. } | SafetyState::EStop
        )
    }
}

/// A target after the supervisor's checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetCheck {
    /// Valid and newer than the last one (possibly clamped into the box).
    Fresh,
    /// Valid but not newer than the last fresh one: ignored, does not feed the watchdog.
    NotFresh,
    /// Refused.
    Refused,
}

/// The safety supervisor. See the module documentation.
#[derive(Clone, Debug)]
pub struct SafetySupervisor {
    config: SafetyConfig,
    state: SafetyState,
    events: SafetyEvents,
    time_s: f64,
    active: [bool; N_KINDS],
    seen: [bool; N_KINDS],
    lower: Vec<f64>,
    upper: Vec<f64>,
    vmax: Vec<f64>,
    effort: Vec<f64>,
    last_ft: Option<FtSample>,
    stuck_count: u32,
    last_target_stamp_s: f64,
    has_target: bool,
}

impl SafetySupervisor {
    /// A supervisor for a chain with `limits` (one per joint). Validates `config`.
    pub fn new(config: SafetyConfig, limits: &[JointLimits]) -> Result<Self, Error> {
        config.validate()?;
        let finite_or = |v: f64, d: f64| if v.is_finite() && v > 0.0 { v } else { d };
        Ok(Self {
            config,
            state: SafetyState::Normal,
            events: SafetyEvents::default(),
            time_s: 0.0,
            active: [false; N_KINDS],
            seen: [false; N_KINDS],
            lower: limits
                .iter()
                .map(|l| l.lower + config.joint_margin_rad)
                .collect(),
            upper: limits
                .iter()
                .map(|l| l.upper - config.joint_margin_rad)
                .collect(),
            vmax: limits
                .iter()
                .map(|l| finite_or(l.velocity, 1.0) * config.joint_velocity_fraction)
                .collect(),
            effort: limits.iter().map(|l| finite_or(l.effort, 1e9)).collect(),
            last_ft: None,
            stuck_count: 0,
            last_target_stamp_s: f64::NEG_INFINITY,
            has_target: false,
        })
    }

    /// The settings.
    pub fn config(&self) -> &SafetyConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> SafetyState {
        self.state
    }

    /// The events raised so far in this cycle.
    pub fn events(&self) -> &SafetyEvents {
        &self.events
    }

    /// Joint position limits with the margin applied: (lower, upper).
    pub fn joint_position_limits(&self) -> (&[f64], &[f64]) {
        (&self.lower, &self.upper)
    }

    /// Joint speed limits, rad/s.
    pub fn joint_velocity_limits(&self) -> &[f64] {
        &self.vmax
    }

    /// True once a fresh target has been accepted since start-up or the last reset.
    pub fn has_target(&self) -> bool {
        self.has_target
    }

    /// Starts a cycle at controller time `time_s`: clears the cycle's events.
    pub fn begin_cycle(&mut self, time_s: f64) {
        self.time_s = time_s;
        self.events.clear();
        self.seen = [false; N_KINDS];
    }

    /// Ends a cycle: a condition not seen this cycle may raise its event again later.
    pub fn end_cycle(&mut self) {
        self.active = self.seen;
    }

    /// Records an event (once per episode: a condition present on consecutive cycles raises one
    /// event) and logs it.
    pub fn raise(&mut self, kind: SafetyEventKind, value: f64, limit: f64) {
        let i = kind.index();
        self.seen[i] = true;
        if self.active[i] {
            return;
        }
        self.active[i] = true;
        let e = SafetyEvent {
            time_s: self.time_s,
            kind,
            value,
            limit,
        };
        self.events.push(e);
        match kind.severity() {
            Severity::Stop => tracing::error!(
                kind = kind.name(),
                value,
                limit,
                time_s = self.time_s,
                "safety stop"
            ),
            Severity::Limit => tracing::warn!(
                kind = kind.name(),
                value,
                limit,
                time_s = self.time_s,
                "safety limit"
            ),
            Severity::Info => tracing::info!(kind = kind.name(), time_s = self.time_s, "safety"),
        }
    }

    fn fault_stop(&mut self, cause: SafetyEventKind, value: f64, limit: f64) {
        self.raise(cause, value, limit);
        if !matches!(
            self.state,
            SafetyState::EStop | SafetyState::FaultStop { .. }
        ) {
            self.state = SafetyState::FaultStop { cause };
        }
    }

    fn retract(&mut self, cause: SafetyEventKind, value: f64, limit: f64) {
        self.raise(cause, value, limit);
        if matches!(self.state, SafetyState::Normal | SafetyState::WatchdogHold) {
            self.state = SafetyState::Retract { cause };
        }
    }

    /// Input checks: e-stop and reset, joint measurements, the control period and the F/T sample.
    /// Returns true when the F/T sample is healthy (usable this cycle).
    #[allow(clippy::too_many_arguments)]
    pub fn check_inputs(
        &mut self,
        estop: bool,
        reset: bool,
        q: &[f64],
        qd: &[f64],
        dof: usize,
        dt: f64,
        ft: &FtSample,
    ) -> bool {
        if estop {
            self.raise(SafetyEventKind::EStop, 1.0, 0.0);
            self.state = SafetyState::EStop;
        }
        let joints_ok = q.len() == dof
            && qd.len() == dof
            && q.iter().chain(qd).all(|v| v.is_finite())
            && dt.is_finite()
            && dt > 0.0
            && dt <= 0.1
            && self.time_s.is_finite();
        if !joints_ok {
            self.fault_stop(SafetyEventKind::InvalidInput, f64::NAN, f64::NAN);
        }
        let ft_ok = self.check_ft(ft);
        if reset && !estop && joints_ok && ft_ok && self.state != SafetyState::Normal {
            self.state = SafetyState::Normal;
            self.has_target = false;
            self.raise(SafetyEventKind::Reset, 0.0, 0.0);
        }
        ft_ok
    }

    fn check_ft(&mut self, ft: &FtSample) -> bool {
        let c = self.config;
        if !ft.is_finite() {
            self.fault_stop(SafetyEventKind::SensorNan, f64::NAN, f64::NAN);
            return false;
        }
        let age = self.time_s - ft.stamp_s;
        if age > c.ft_stale_s || age < -c.ft_stale_s {
            self.fault_stop(SafetyEventKind::SensorStale, age, c.ft_stale_s);
            return false;
        }
        if ft.saturated {
            self.fault_stop(SafetyEventKind::SensorSaturated, 1.0, 0.0);
            return false;
        }
        let mut ok = true;
        if let Some(last) = self.last_ft {
            if ft.stamp_s > last.stamp_s {
                let df = (ft.force_n - last.force_n).norm();
                let dt = (ft.torque_nm - last.torque_nm).norm();
                if df > c.ft_jump_n {
                    self.fault_stop(SafetyEventKind::SensorJump, df, c.ft_jump_n);
                    ok = false;
                } else if dt > c.ft_jump_nm {
                    self.fault_stop(SafetyEventKind::SensorJump, dt, c.ft_jump_nm);
                    ok = false;
                }
                if ft.force_n == last.force_n && ft.torque_nm == last.torque_nm {
                    self.stuck_count = self.stuck_count.saturating_add(1);
                } else {
                    self.stuck_count = 0;
                }
                if c.ft_stuck_samples > 0 && self.stuck_count >= c.ft_stuck_samples {
                    self.fault_stop(
                        SafetyEventKind::SensorStuck,
                        f64::from(self.stuck_count),
                        f64::from(c.ft_stuck_samples),
                    );
                    ok = false;
                }
            }
        }
        if ft.stamp_s > self.last_ft.map_or(f64::NEG_INFINITY, |l| l.stamp_s) {
            self.last_ft = Some(*ft);
        }
        ok && !self.stuck()
    }

    fn stuck(&self) -> bool {
        self.config.ft_stuck_samples > 0 && self.stuck_count >= self.config.ft_stuck_samples
    }

    /// Contact wrench checks: `force_base` is the contact force on the probe (base frame, N) and
    /// `torque_at_tip_base` its torque about the tip (base frame, N·m); `jac` the Jacobian at the
    /// tip. Force magnitude above the limit or `|Jᵀ·w|` above the effort fraction → latched
    /// retract. Returns true when a limit was crossed.
    pub fn check_wrench(
        &mut self,
        force_base: &Vector3<f64>,
        torque_at_tip_base: &Vector3<f64>,
        jac: &Matrix6xX<f64>,
    ) -> bool {
        let f = force_base.norm();
        if f > self.config.force_limit_n {
            self.retract(SafetyEventKind::ForceLimit, f, self.config.force_limit_n);
            return true;
        }
        let w = Wrench {
            force_n: *force_base,
            torque_nm: *torque_at_tip_base,
        }
        .to_array();
        for (k, effort) in self.effort.iter().enumerate().take(jac.ncols()) {
            let tau: f64 = (0..6).map(|r| jac[(r, k)] * w[r]).sum();
            let limit = effort * self.config.effort_fraction;
            if tau.abs() > limit {
                self.retract(SafetyEventKind::TorqueLimit, tau.abs(), limit);
                return true;
            }
        }
        false
    }

    /// Checks a target: `position` is clamped into the workspace box (event when it moved by more
    /// than 1 mm); NaN or infinite values, a rotation that is not orthonormal and right-handed,
    /// or (for contact targets, `force_n` given) a force setpoint outside `force_range_n` are
    /// refused. `rotation_ok` is the caller's orthonormality verdict.
    pub fn check_target(
        &mut self,
        stamp_s: f64,
        position: &mut Vector3<f64>,
        rotation_ok: bool,
        force_n: Option<f64>,
        force_range_n: (f64, f64),
    ) -> TargetCheck {
        let finite = stamp_s.is_finite() && position.iter().all(|v| v.is_finite());
        let force_ok = force_n
            .map(|f| f.is_finite() && f >= force_range_n.0 && f <= force_range_n.1)
            .unwrap_or(true);
        if !finite || !rotation_ok || !force_ok {
            let value = force_n.unwrap_or(f64::NAN);
            self.raise(SafetyEventKind::InvalidTarget, value, force_range_n.1);
            return TargetCheck::Refused;
        }
        let c = self.config;
        let mut moved: f64 = 0.0;
        for i in 0..3 {
            let v = position[i].clamp(c.workspace_min_m[i], c.workspace_max_m[i]);
            moved = moved.max((v - position[i]).abs());
            position[i] = v;
        }
        if moved > 1e-3 {
            self.raise(SafetyEventKind::WorkspaceLimit, moved, 0.0);
        }
        if stamp_s <= self.last_target_stamp_s {
            return TargetCheck::NotFresh;
        }
        if self.time_s - stamp_s > c.watchdog_hold_s {
            // Valid but already too old to count as fresh.
            return TargetCheck::NotFresh;
        }
        self.last_target_stamp_s = stamp_s;
        self.has_target = true;
        if self.state == SafetyState::WatchdogHold {
            self.state = SafetyState::Normal;
        }
        TargetCheck::Fresh
    }

    /// Command watchdog: age of the last fresh target against the hold and retract times.
    pub fn check_watchdog(&mut self) {
        if !self.has_target {
            return;
        }
        let age = self.time_s - self.last_target_stamp_s;
        let c = self.config;
        if age > c.watchdog_retract_s {
            if matches!(self.state, SafetyState::Normal | SafetyState::WatchdogHold) {
                self.raise(SafetyEventKind::WatchdogRetract, age, c.watchdog_retract_s);
                self.state = SafetyState::Retract {
                    cause: SafetyEventKind::WatchdogRetract,
                };
            }
        } else if age > c.watchdog_hold_s && self.state == SafetyState::Normal {
            self.raise(SafetyEventKind::WatchdogHold, age, c.watchdog_hold_s);
            self.state = SafetyState::WatchdogHold;
        }
    }

    /// Limits a commanded tip twist (base frame; `v` m/s, `w` rad/s) at the desired tip position
    /// `p`: speed limit (`contact` selects the in-contact one) and the workspace walls (each axis
    /// decelerates at [`SafetyConfig::wall_deceleration_m_s2`] to stop at the wall, and never
    /// moves outward beyond it). Returns true when a wall stopped an outward motion.
    pub fn limit_twist(
        &mut self,
        v: &mut Vector3<f64>,
        w: &mut Vector3<f64>,
        p: &Vector3<f64>,
        contact: bool,
    ) -> bool {
        let c = self.config;
        let vmax = if contact {
            c.contact_speed_limit_m_s
        } else {
            c.free_speed_limit_m_s
        };
        let n = v.norm();
        if !n.is_finite() {
            *v = Vector3::zeros();
        } else if n > vmax {
            *v *= vmax / n;
        }
        let wn = w.norm();
        if !wn.is_finite() {
            *w = Vector3::zeros();
        } else if wn > c.angular_speed_limit_rad_s {
            *w *= c.angular_speed_limit_rad_s / wn;
        }
        let mut walled = false;
        let a = c.wall_deceleration_m_s2;
        for i in 0..3 {
            let up = c.workspace_max_m[i] - p[i];
            let down = p[i] - c.workspace_min_m[i];
            if v[i] > 0.0 {
                let cap = (2.0 * a * up.max(0.0)).sqrt();
                if v[i] > cap {
                    walled |= up < 1e-3 && v[i] > 1e-3;
                    v[i] = cap;
                }
            } else if v[i] < 0.0 {
                let cap = (2.0 * a * down.max(0.0)).sqrt();
                if -v[i] > cap {
                    walled |= down < 1e-3 && -v[i] > 1e-3;
                    v[i] = -cap;
                }
            }
        }
        if walled {
            self.raise(SafetyEventKind::WorkspaceLimit, 0.0, 0.0);
        }
        walled
    }

    /// Hard joint limits on a joint-velocity command `qd` about to be integrated from `q` over
    /// `dt`, given the previous command `qd_prev`: position (a joint that would cross its limit
    /// stops), velocity (uniform scaling) and acceleration (each joint's speed-up is clamped;
    /// slowing down is always allowed). Raises an event for each limit that acted.
    pub fn limit_joints(&mut self, q: &[f64], qd: &mut [f64], qd_prev: &[f64], dt: f64) {
        let mut scale: f64 = 1.0;
        for (v, vmax) in qd.iter().zip(&self.vmax) {
            if v.abs() > *vmax {
                scale = scale.min(vmax / v.abs());
            }
        }
        if scale < 1.0 - 1e-9 {
            self.raise(SafetyEventKind::JointVelocityLimit, 1.0 / scale, 1.0);
            qd.iter_mut().for_each(|v| *v *= scale);
        }
        let dv_max = self.config.joint_acceleration_rad_s2 * dt;
        // The largest acceleration asked for by a clamped joint (rad/s²).
        let mut acc: Option<f64> = None;
        for (v, p) in qd.iter_mut().zip(qd_prev) {
            let dv = *v - p;
            let speeding_up = v.abs() > p.abs() || v.signum() != p.signum();
            if speeding_up && dv.abs() > dv_max * (1.0 + 1e-9) {
                // Keep the part that slows down toward zero, clamp the rest.
                *v = p + dv.clamp(-dv_max, dv_max);
                let asked = if dt > 0.0 {
                    dv.abs() / dt
                } else {
                    f64::INFINITY
                };
                acc = Some(acc.map_or(asked, |a| a.max(asked)));
            }
        }
        if let Some(asked) = acc {
            self.raise(
                SafetyEventKind::JointAccelerationLimit,
                asked,
                self.config.joint_acceleration_rad_s2,
            );
        }
        // The first joint stopped at its limit: where it would have gone and the limit (rad).
        let mut pos: Option<(f64, f64)> = None;
        for (i, v) in qd.iter_mut().enumerate() {
            let next = q[i] + *v * dt;
            let crossing = if next > self.upper[i] && *v > 0.0 {
                Some(self.upper[i])
            } else if next < self.lower[i] && *v < 0.0 {
                Some(self.lower[i])
            } else {
                None
            };
            if let Some(limit) = crossing {
                *v = 0.0;
                pos.get_or_insert((next, limit));
            }
        }
        if let Some((next, limit)) = pos {
            self.raise(SafetyEventKind::JointPositionLimit, next, limit);
        }
    }

    /// Final check of a position command: every value finite and within the joint limits
    /// (`tol_rad` beyond the margin allowed for the lag compensation). False → the caller must
    /// repeat its last valid command.
    pub fn check_command(&mut self, q_cmd: &[f64], tol_rad: f64) -> bool {
        let ok = q_cmd.len() == self.lower.len()
            && q_cmd.iter().enumerate().all(|(i, v)| {
                v.is_finite() && *v >= self.lower[i] - tol_rad && *v <= self.upper[i] + tol_rad
            });
        if !ok {
            self.raise(SafetyEventKind::CommandRejected, f64::NAN, f64::NAN);
        }
        ok
    }

    /// Measured-state monitoring: joint tracking error `max|q_des − q_meas|` and the measured
    /// tip speed against `speed_limit_m_s` (the limit in force, see the controller) with a margin
    /// for the servo's transients (×1.5 + 20 mm/s); either → fault stop.
    pub fn check_measured(
        &mut self,
        q_des: &[f64],
        q_meas: &[f64],
        tip_speed_m_s: f64,
        speed_limit_m_s: f64,
    ) {
        let c = self.config;
        let err = q_des
            .iter()
            .zip(q_meas)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if err > c.max_tracking_error_rad {
            self.fault_stop(
                SafetyEventKind::TrackingError,
                err,
                c.max_tracking_error_rad,
            );
        }
        let allowed = 1.5 * speed_limit_m_s + 0.02;
        if tip_speed_m_s > allowed {
            self.fault_stop(SafetyEventKind::CartesianSpeed, tip_speed_m_s, allowed);
        }
    }

    /// Refuses a tare whose force offset `offset_n` exceeds `limit_n`: fault stop.
    pub fn tare_rejected(&mut self, offset_n: f64, limit_n: f64) {
        self.fault_stop(SafetyEventKind::TareRejected, offset_n, limit_n);
    }

    /// Raises [`SafetyEventKind::ContactNotFound`] (the controller holds).
    pub fn contact_not_found(&mut self, travelled_m: f64, limit_m: f64) {
        self.raise(SafetyEventKind::ContactNotFound, travelled_m, limit_m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_refuses_force_limit_above_25_n() {
        let mut c = SafetyConfig {
            force_limit_n: 25.0,
            ..SafetyConfig::default()
        };
        assert!(c.validate().is_ok());
        c.force_limit_n = 25.5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("force_limit_n"), "{e}");
        c.force_limit_n = f64::NAN;
        assert!(c.validate().is_err());
    }

    #[test]
    fn events_are_raised_once_per_episode() {
        let mut s = SafetySupervisor::new(SafetyConfig::default(), &[]).unwrap();
        for cycle in 0..3 {
            s.begin_cycle(cycle as f64 * 1e-3);
            s.raise(SafetyEventKind::WorkspaceLimit, 1.0, 0.0);
            assert_eq!(s.events().len(), usize::from(cycle == 0));
            s.end_cycle();
        }
        s.begin_cycle(0.01);
        s.end_cycle();
        s.begin_cycle(0.011);
        s.raise(SafetyEventKind::WorkspaceLimit, 1.0, 0.0);
        assert_eq!(s.events().len(), 1);
    }
}
