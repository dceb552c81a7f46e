//! The probe controller: a pure, allocation-free, time-stepped state machine.
//!
//! [`ProbeController::step`] takes one [`ControlInput`] (time, measured joints, the latest F/T
//! sample, optionally a fresh [`ProbeTarget`], e-stop and reset) and writes one [`ControlOutput`]
//! (joint command, mode, compensated contact force, tip pose, safety events). It does no I/O and
//! no allocation, so the same code runs against the simulator faster than real time, in tests,
//! and in the 1 kHz loop on hardware (see [`crate::rt_loop`]).
//!
//! # Pipeline of one cycle
//!
//! 1. **Safety inputs** ([`SafetySupervisor::check_inputs`]): e-stop, reset, joint measurements,
//!    F/T health.
//! 2. **Kinematics**: FK + Jacobian at the measured joints (tip pose, tip speed, sensor
//!    orientation) and at the internal reference `q_des` (what the motion is planned from).
//! 3. **F/T compensation** ([`FtCompensator`]): bias (tared in free space at start-up) and payload
//!    weight from the URDF rotated by the FK → contact force in the base frame, its component
//!    along the probe axis (positive pressing), low-pass filtered.
//! 4. **Safety on the wrench** (force limit, `Jᵀ·w` torque check), the **target** (validated,
//!    clamped into the workspace) and the **watchdog**.
//! 5. **Behaviour** → a tip twist `(v, ω)` in the base frame: free pose tracking, hybrid
//!    force/position contact, hold, retract or stop.
//! 6. **Motion**: speed limits and workspace walls on the twist; damped least squares on the
//!    Jacobian at `q_des` (joint position limits as an active set, null-space drift to mid-range
//!    on redundant arms); joint velocity/acceleration limits (planner at 90 %/80 % of the hard
//!    limits, then the supervisor's hard limits); integration of `q_des`.
//! 7. **Command**: `q_cmd = q_des + τ·q̇_des` (servo-lag and latency compensation, below), checked
//!    by the supervisor; the measured state is monitored (tracking error, measured tip speed).
//!
//! # Why position commands (and no lag compensation by default)
//!
//! The arm's joint servos (UR `servoj`, modelled in `telecho-sim`) follow a position reference
//! through a critically damped second-order loop `ωₙ²/(s + ωₙ)²` (25 Hz bandwidth, `ωₙ ≈ 244
//! rad/s`) after a latency `L` (2 ms). The force loop's crossover is at most 60 rad/s (at the
//! stiffest tissue), where that loop adds little phase, so the breathing rejection is set by the
//! admittance gains, not by the interface: measured at 5 N/mm, position commands with and without
//! lag compensation (`q_cmd = q_des + (2/ωₙ + L)·q̇_des`, which cancels the servo's velocity lag
//! to first order) and velocity commands track equally well (test
//! `closed_loop::command_interface_comparison`). Position commands are the default because the
//! arm simply holds when commands stop and no drift correction is needed. The lag compensation
//! ([`ControllerConfig::lag_compensation`]) is off by default: it amplifies steps in the commanded
//! acceleration, which with the servos' acceleration limit produced tip-speed transients above the
//! limit in the property test. The servo model ([`ControllerConfig::servo_bandwidth_hz`],
//! [`ControllerConfig::servo_latency_s`]) is identified from a step response of the real arm;
//! [`CommandInterface::Velocity`] remains available (with a position correction against drift).
//!
//! # Contact: hybrid force/position
//!
//! In the probe frame (z along the probe axis into the patient): the axial velocity regulates
//! the force (below); the tangential velocity tracks the target position projected onto the
//! plane normal to the probe axis (`v_t = k_t·P_t(p_target − p) + P_t·v_ff`); the orientation
//! tracks either the commanded one or — by default — keeps the probe axis along the estimated
//! inward skin normal (with the array direction taken from the target and an optional tilt
//! about the array). Rotations are about the tip point, so they do not disturb the force.
//!
//! **Skin normal.** The contact force on a point contact is the normal force plus friction
//! opposing the slip. Friction lies along the slip direction — the tip's motion along the skin:
//! its velocity normal to the probe axis plus its axial velocity averaged over a breathing cycle
//! (the force loop following the slope along a sweep) — so removing the force's component along
//! that direction leaves the normal;
//! the estimate is low-pass filtered and bounded to a cone around the target's probe axis. The
//! surface traced by the tip is followed implicitly: tangential motion is always commanded in the
//! plane normal to the (normal-aligned) probe axis.
//!
//! **Force loop.** A proportional–integral admittance on the force error `e = F_ref − F`:
//! `v_z = K_f·(e + ω_z∫e)` — a type-2 loop (the arm integrates `v_z` once more), which rejects
//! the breathing ramp of the surface with an error proportional to its *acceleration* only.
//! `K_f = ω_c / K_design` puts the crossover at `ω_c` for the stiffest tissue at the force limit
//! (Hunt–Crossley tangent stiffness `n·F/δ`: 7 kN/m at 20 N on 5 N/mm tissue) and lower on
//! softer tissue, where the same `K_f·ω_z` gives the same error per unit surface acceleration.
//! With a fixed `K_f` the error per unit of surface acceleration is the same on all tissues, so
//! the gain is not scheduled; the local stiffness is estimated from the force and the axial
//! displacement over the contact ramp and only reported ([`ControlOutput::stiffness_n_per_m`]) —
//! breathing during the ramp biases that estimate by up to 2× on stiff tissue, too much to
//! schedule a gain on safely. Phases: search (approach
//! along the axis at [`ControllerConfig::search_speed_m_s`] until the force crosses
//! [`ControllerConfig::touch_threshold_n`]), ramp (raised-cosine from the touch force to the
//! setpoint over [`ControllerConfig::force_ramp_s`]), regulate (setpoint changes rate-limited),
//! release (ramp down, then lift off). Contact loss during regulation returns to the search
//! speed rather than accelerating into the patient.

use nalgebra::{Matrix3, Matrix6, Matrix6xX, Vector3, Vector6};
use telecho_core::{rotation_log, Transform};

use crate::error::{check_config as check, ErrorKind};
use crate::ft_compensation::{FtCompensator, FtSample};
use crate::kinematics::Chain;
use crate::payload::Payload;
use crate::protocol::FORCE_RANGE_N;
use crate::safety::{
    SafetyConfig, SafetyEventKind, SafetyEvents, SafetyState, SafetySupervisor, TargetCheck,
};
use crate::Error;

/// Which joint command the plant should execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandInterface {
    /// Joint position targets ([`ControlOutput::q_cmd_rad`]), like UR `servoj`. The default.
    Position,
    /// Joint velocities ([`ControlOutput::qd_cmd_rad_s`]), like Franka's joint-velocity interface.
    Velocity,
}

/// Settings of the controller. SI units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Safety supervisor settings.
    pub safety: SafetyConfig,
    /// Command interface (default position).
    pub interface: CommandInterface,
    /// Identified closed-loop bandwidth of the joint position servo, Hz (default 25).
    pub servo_bandwidth_hz: f64,
    /// Identified command latency, s (default 0.002).
    pub servo_latency_s: f64,
    /// Compensate servo lag and latency in position commands (default false; see the module
    /// documentation for why).
    pub lag_compensation: bool,
    /// Position-error gain of the velocity interface, 1/s (default 20).
    pub velocity_position_gain_per_s: f64,
    /// Free-space tare duration at start-up, s (default 0.2).
    pub tare_duration_s: f64,
    /// A tare whose force offset (reading minus payload weight) exceeds this is refused, N
    /// (default 5; strain-gauge zero offsets are a few newtons at most).
    pub max_tare_offset_n: f64,
    /// Control period the tare duration is counted in, s (default 0.001).
    pub nominal_dt_s: f64,
    /// Free-space position gain, 1/s (default 3).
    pub free_gain_per_s: f64,
    /// Free-space acceleration limit, m/s² (default 0.5).
    pub free_acceleration_m_s2: f64,
    /// Orientation gain, 1/s (default 3).
    pub angular_gain_per_s: f64,
    /// Angular acceleration limit, rad/s² (default 2).
    pub angular_acceleration_rad_s2: f64,
    /// In free mode, motion into a contact force above this is blocked, N (default 3).
    pub free_contact_guard_n: f64,
    /// Contact force setpoint used when a target gives none, N (default 8).
    pub default_force_n: f64,
    /// Contact is detected above this filtered force, N (default 0.5).
    pub touch_threshold_n: f64,
    /// Contact is lost below this force, N (default 0.25) …
    pub contact_loss_n: f64,
    /// … held for this long, s (default 0.03).
    pub contact_loss_s: f64,
    /// Approach speed along the probe axis while searching for contact, m/s (default 0.01).
    pub search_speed_m_s: f64,
    /// Longest search travel before giving up, m (default 0.15).
    pub search_distance_m: f64,
    /// Force ramp duration on contact and release, s (default 0.8).
    pub force_ramp_s: f64,
    /// Setpoint changes during regulation are rate-limited to this, N/s (default 10).
    pub force_rate_n_s: f64,
    /// Force-loop crossover at the design stiffness, rad/s (default 60).
    pub force_bandwidth_rad_s: f64,
    /// Integral corner of the force loop, rad/s (default 12).
    pub force_integral_rad_s: f64,
    /// Stiffest tissue the loop is designed for (tangent stiffness), N/m (default 7000).
    pub design_stiffness_n_per_m: f64,
    /// Low-pass corner of the force measurement, Hz (default 80).
    pub force_filter_hz: f64,
    /// Tangential position gain in contact, 1/s (default 6).
    pub tangential_gain_per_s: f64,
    /// Time constant of the skin-normal estimate, s (default 0.3).
    pub normal_filter_s: f64,
    /// Time constant over which the tip's axial velocity is averaged to find the surface slope
    /// along the sweep (long enough to average breathing out), s (default 1).
    pub normal_slope_filter_s: f64,
    /// The normal is estimated only above this contact force, N (default 1.5).
    pub normal_min_force_n: f64,
    /// Largest angle between the estimated normal and the target's probe axis, rad (default 0.6).
    pub normal_max_tilt_rad: f64,
    /// Damping of the least-squares inverse, (m/s) (default 0.005).
    pub dls_damping: f64,
    /// Metres of tip motion worth one radian of rotation in the least squares (default 0.2).
    pub angular_weight_m: f64,
    /// Null-space gain toward mid-range on redundant arms, 1/s (default 1).
    pub null_space_gain_per_s: f64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            safety: SafetyConfig::default(),
            interface: CommandInterface::Position,
            servo_bandwidth_hz: 25.0,
            servo_latency_s: 0.002,
            lag_compensation: false,
            velocity_position_gain_per_s: 20.0,
            tare_duration_s: 0.2,
            max_tare_offset_n: 5.0,
            nominal_dt_s: 0.001,
            free_gain_per_s: 3.0,
            free_acceleration_m_s2: 0.5,
            angular_gain_per_s: 3.0,
            angular_acceleration_rad_s2: 2.0,
            free_contact_guard_n: 3.0,
            default_force_n: 8.0,
            touch_threshold_n: 0.5,
            contact_loss_n: 0.25,
            contact_loss_s: 0.03,
            search_speed_m_s: 0.01,
            search_distance_m: 0.15,
            force_ramp_s: 0.8,
            force_rate_n_s: 10.0,
            force_bandwidth_rad_s: 60.0,
            force_integral_rad_s: 12.0,
            design_stiffness_n_per_m: 7000.0,
            force_filter_hz: 80.0,
            tangential_gain_per_s: 6.0,
            normal_filter_s: 0.3,
            normal_slope_filter_s: 1.0,
            normal_min_force_n: 1.5,
            normal_max_tilt_rad: 0.6,
            dls_damping: 0.005,
            angular_weight_m: 0.2,
            null_space_gain_per_s: 1.0,
        }
    }
}

impl ControllerConfig {
    /// Checks every field (and the safety settings).
    pub fn validate(&self) -> Result<(), Error> {
        self.safety.validate()?;
        check("servo_bandwidth_hz", self.servo_bandwidth_hz, 0.5, 500.0)?;
        check("servo_latency_s", self.servo_latency_s, 0.0, 0.1)?;
        check(
            "velocity_position_gain_per_s",
            self.velocity_position_gain_per_s,
            0.0,
            200.0,
        )?;
        check("tare_duration_s", self.tare_duration_s, 0.0, 10.0)?;
        check("max_tare_offset_n", self.max_tare_offset_n, 0.1, 100.0)?;
        check("nominal_dt_s", self.nominal_dt_s, 1e-5, 0.1)?;
        check("free_gain_per_s", self.free_gain_per_s, 0.01, 100.0)?;
        check(
            "free_acceleration_m_s2",
            self.free_acceleration_m_s2,
            0.01,
            10.0,
        )?;
        check("angular_gain_per_s", self.angular_gain_per_s, 0.01, 100.0)?;
        check(
            "angular_acceleration_rad_s2",
            self.angular_acceleration_rad_s2,
            0.01,
            100.0,
        )?;
        check(
            "free_contact_guard_n",
            self.free_contact_guard_n,
            0.1,
            self.safety.force_limit_n,
        )?;
        check(
            "default_force_n",
            self.default_force_n,
            FORCE_RANGE_N.0,
            FORCE_RANGE_N.1,
        )?;
        check("touch_threshold_n", self.touch_threshold_n, 0.05, 5.0)?;
        check(
            "contact_loss_n",
            self.contact_loss_n,
            0.0,
            self.touch_threshold_n,
        )?;
        check("contact_loss_s", self.contact_loss_s, 0.0, 1.0)?;
        check(
            "search_speed_m_s",
            self.search_speed_m_s,
            1e-4,
            self.safety.contact_speed_limit_m_s,
        )?;
        check("search_distance_m", self.search_distance_m, 1e-3, 0.5)?;
        check("force_ramp_s", self.force_ramp_s, 0.0, 10.0)?;
        check("force_rate_n_s", self.force_rate_n_s, 0.1, 1000.0)?;
        check(
            "force_bandwidth_rad_s",
            self.force_bandwidth_rad_s,
            0.1,
            500.0,
        )?;
        check(
            "force_integral_rad_s",
            self.force_integral_rad_s,
            0.0,
            self.force_bandwidth_rad_s,
        )?;
        check(
            "design_stiffness_n_per_m",
            self.design_stiffness_n_per_m,
            10.0,
            1e6,
        )?;
        check("force_filter_hz", self.force_filter_hz, 1.0, 1000.0)?;
        check(
            "tangential_gain_per_s",
            self.tangential_gain_per_s,
            0.0,
            100.0,
        )?;
        check("normal_filter_s", self.normal_filter_s, 1e-3, 10.0)?;
        check(
            "normal_slope_filter_s",
            self.normal_slope_filter_s,
            1e-3,
            10.0,
        )?;
        check("normal_min_force_n", self.normal_min_force_n, 0.1, 20.0)?;
        check("normal_max_tilt_rad", self.normal_max_tilt_rad, 0.0, 1.4)?;
        check("dls_damping", self.dls_damping, 1e-6, 1.0)?;
        check("angular_weight_m", self.angular_weight_m, 1e-3, 10.0)?;
        check(
            "null_space_gain_per_s",
            self.null_space_gain_per_s,
            0.0,
            100.0,
        )?;
        Ok(())
    }

    /// The lead time of the lag compensation, s: `2/ωₙ + L`.
    pub fn lead_time_s(&self) -> f64 {
        if !self.lag_compensation {
            return 0.0;
        }
        // ωₙ of a critically damped loop with −3 dB bandwidth f: 2πf/√(√2 − 1).
        let omega_n =
            2.0 * std::f64::consts::PI * self.servo_bandwidth_hz / 0.643_594_252_905_582_6;
        2.0 / omega_n + self.servo_latency_s
    }
}

/// Free-space or contact target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetMode {
    /// Track the full pose in free space.
    Free,
    /// Hybrid force/position: regulate the force along the probe axis.
    Contact,
}

/// Time constant of the force direction used for retracts, s.
const RETREAT_FILTER_S: f64 = 0.02;
/// Below this contact force, N, retracts go back along the probe axis.
const RETREAT_MIN_FORCE_N: f64 = 1.0;

/// Orientation handling of a contact target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OrientationMode {
    /// Track the target's orientation.
    Commanded,
    /// Keep the probe axis along the estimated skin normal; the array (probe x) as close as
    /// possible to the target's x axis, then tilted by `tilt_rad` about the array axis.
    FollowNormal {
        /// Tilt about the probe's x axis (array), rad.
        tilt_rad: f64,
    },
}

/// What the operator or the protocol asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeTarget {
    /// Time the target was issued, s, on the controller's clock (the watchdog uses it).
    pub stamp_s: f64,
    /// Desired probe pose `t_base_probe`. In contact, its component along the probe axis is
    /// ignored (the force decides).
    pub t_base_probe: Transform,
    /// Free or contact.
    pub mode: TargetMode,
    /// Contact-force setpoint, N (1–20; capped at the force limit minus a margin).
    pub force_n: f64,
    /// Orientation handling in contact (free targets always track the orientation).
    pub orientation: OrientationMode,
    /// Velocity feed-forward of the target position, base frame, m/s (zero if unknown).
    pub velocity_m_s: Vector3<f64>,
}

impl ProbeTarget {
    /// A free-space target.
    pub fn free(stamp_s: f64, t_base_probe: Transform) -> Self {
        Self {
            stamp_s,
            t_base_probe,
            mode: TargetMode::Free,
            force_n: 0.0,
            orientation: OrientationMode::Commanded,
            velocity_m_s: Vector3::zeros(),
        }
    }

    /// A contact target following the skin normal.
    pub fn contact(stamp_s: f64, t_base_probe: Transform, force_n: f64) -> Self {
        Self {
            stamp_s,
            t_base_probe,
            mode: TargetMode::Contact,
            force_n,
            orientation: OrientationMode::FollowNormal { tilt_rad: 0.0 },
            velocity_m_s: Vector3::zeros(),
        }
    }
}

/// One cycle's input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ControlInput<'a> {
    /// Controller time, s.
    pub time_s: f64,
    /// Measured joint positions, rad.
    pub q_rad: &'a [f64],
    /// Measured joint velocities, rad/s.
    pub qd_rad_s: &'a [f64],
    /// The latest F/T sample.
    pub ft: FtSample,
    /// A target, if one arrived this cycle.
    pub target: Option<ProbeTarget>,
    /// E-stop input (active = true).
    pub estop: bool,
    /// Explicit reset request for latched safety states.
    pub reset: bool,
}

/// What the controller is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlMode {
    /// Holding still while the F/T bias is tared.
    Initializing,
    /// Holding, waiting for a target.
    Idle,
    /// Free-space pose tracking.
    Free,
    /// Contact (see [`ContactPhase`]).
    Contact,
    /// Watchdog hold (force regulation continues in contact).
    Hold,
    /// Safety retract along the probe axis (then holding).
    Retract,
    /// Fault stop.
    FaultStop,
    /// E-stop.
    EStop,
}

/// Phase of the contact force control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactPhase {
    /// Not in contact control.
    None,
    /// Approaching along the probe axis until the force crosses the touch threshold.
    Search,
    /// Force ramping up to the setpoint.
    Ramp,
    /// Regulating the force.
    Regulate,
    /// Force ramping down, then lifting off.
    Release,
}

/// One cycle's output. Preallocate with [`ControlOutput::new`]; [`ProbeController::step`]
/// overwrites it.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlOutput {
    /// True when the command below is valid and should be sent.
    pub send: bool,
    /// Which command the plant should execute.
    pub interface: CommandInterface,
    /// Joint position command, rad.
    pub q_cmd_rad: Vec<f64>,
    /// Joint velocity command, rad/s.
    pub qd_cmd_rad_s: Vec<f64>,
    /// Mode.
    pub mode: ControlMode,
    /// Contact phase.
    pub contact_phase: ContactPhase,
    /// Supervisor state.
    pub safety: SafetyState,
    /// Compensated contact force along the probe axis (filtered), N, positive pressing.
    pub force_n: f64,
    /// The force reference this cycle (ramped setpoint), N.
    pub force_setpoint_n: f64,
    /// Compensated contact force on the probe, base frame, N (unfiltered).
    pub contact_force_base_n: Vector3<f64>,
    /// Compensated contact torque about the probe tip, base frame, N·m (unfiltered).
    pub contact_torque_base_nm: Vector3<f64>,
    /// True when the filtered force is above the touch threshold.
    pub in_contact: bool,
    /// Seconds spent in [`ContactPhase::Regulate`] so far (0 otherwise).
    pub regulating_s: f64,
    /// Measured tip pose (FK of the measured joints).
    pub t_base_probe: Transform,
    /// The controller's reference tip pose (FK of `q_des`).
    pub t_base_probe_cmd: Transform,
    /// Commanded tip velocity, base frame, m/s.
    pub tip_velocity_cmd_m_s: Vector3<f64>,
    /// Measured tip speed, m/s.
    pub tip_speed_m_s: f64,
    /// Estimated outward skin normal, base frame (unit).
    pub surface_normal_base: Vector3<f64>,
    /// Estimated tissue tangent stiffness along the probe axis, N/m (NaN until estimated).
    pub stiffness_n_per_m: f64,
    /// Events raised this cycle.
    pub events: SafetyEvents,
}

impl ControlOutput {
    /// An output for a chain with `dof` joints.
    pub fn new(dof: usize) -> Self {
        Self {
            send: false,
            interface: CommandInterface::Position,
            q_cmd_rad: vec![0.0; dof],
            qd_cmd_rad_s: vec![0.0; dof],
            mode: ControlMode::Initializing,
            contact_phase: ContactPhase::None,
            safety: SafetyState::Normal,
            force_n: 0.0,
            force_setpoint_n: 0.0,
            contact_force_base_n: Vector3::zeros(),
            contact_torque_base_nm: Vector3::zeros(),
            in_contact: false,
            regulating_s: 0.0,
            t_base_probe: Transform::IDENTITY,
            t_base_probe_cmd: Transform::IDENTITY,
            tip_velocity_cmd_m_s: Vector3::zeros(),
            tip_speed_m_s: 0.0,
            surface_normal_base: Vector3::z(),
            stiffness_n_per_m: f64::NAN,
            events: SafetyEvents::default(),
        }
    }
}

/// A straight-line safety motion along a fixed direction.
#[derive(Clone, Copy, Debug)]
struct Reaction {
    start: Vector3<f64>,
    dir: Vector3<f64>,
    distance_m: f64,
    speed_m_s: f64,
    accel_m_s2: f64,
    /// Motion starts at this time (a fault stop dwells first).
    start_time_s: f64,
}

/// Stiffness estimation over the contact ramp: axial position and force at touch.
#[derive(Clone, Copy, Debug, Default)]
struct RampFit {
    z0: f64,
    f0: f64,
    active: bool,
}

/// The probe controller with its safety supervisor. See the module documentation.
#[derive(Clone, Debug)]
pub struct ProbeController {
    config: ControllerConfig,
    chain: Chain,
    r_tip_sensor: Matrix3<f64>,
    p_sensor_in_tip: Vector3<f64>,
    comp: FtCompensator,
    sup: SafetySupervisor,
    dof: usize,
    q_des: Vec<f64>,
    qd_des: Vec<f64>,
    qd_prev: Vec<f64>,
    joint_weight: Vec<f64>,
    q_mid: Vec<f64>,
    last_cmd: Vec<f64>,
    jac_des: Matrix6xX<f64>,
    jac_meas: Matrix6xX<f64>,
    initialized: bool,
    time_s: f64,
    target: Option<ProbeTarget>,
    hold_position: Option<Vector3<f64>>,
    v_prev: Vector3<f64>,
    /// Tip velocity along the probe axis averaged over `normal_slope_filter_s`, m/s.
    vz_slow: f64,
    w_prev: Vector3<f64>,
    phase: ContactPhase,
    f_filt: f64,
    f_ref: f64,
    f_ref_start: f64,
    ramp_t0: f64,
    ramp_duration: f64,
    integ: f64,
    loss_timer: f64,
    search_start: Vector3<f64>,
    regulating_s: f64,
    n_est: Vector3<f64>,
    last_force_base: Vector3<f64>,
    last_torque_base: Vector3<f64>,
    /// Contact force on the probe (base frame) low-passed over ~20 ms, valid samples only: the
    /// direction a retract must take to get away from the patient.
    force_base_filt: Vector3<f64>,
    touching: bool,
    stiffness: f64,
    ramp_fit: RampFit,
    reaction: Option<Reaction>,
    last_safety: SafetyState,
    recent_speed_limit: f64,
}

impl ProbeController {
    /// Builds the controller from URDF XML: the chain `base_link` → `probe_tip`, the rigid
    /// `ft_sensor` → `probe_tip` transform and the payload below `ft_sensor`.
    pub fn from_urdf_str(xml: &str, config: ControllerConfig) -> Result<Self, Error> {
        let robot = urdf_rs::read_from_string(xml).map_err(|e| ErrorKind::Urdf(e.to_string()))?;
        Self::from_robot(
            &robot,
            telecho_core::frames::BASE,
            telecho_core::frames::FT_SENSOR,
            telecho_core::frames::PROBE_TIP,
            config,
        )
    }

    /// Builds the controller from a parsed URDF with explicit link names.
    pub fn from_robot(
        robot: &urdf_rs::Robot,
        base_link: &str,
        sensor_link: &str,
        tip_link: &str,
        config: ControllerConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let chain = Chain::from_robot(robot, Some(base_link), tip_link)?;
        let sensor_tip = Chain::from_robot(robot, Some(sensor_link), tip_link)?;
        if sensor_tip.dof() != 0 {
            return Err(ErrorKind::Model {
                link: sensor_link.to_owned(),
                what: format!(
                    "the chain to `{tip_link}` must be rigid, it has {} movable joints",
                    sensor_tip.dof()
                ),
            }
            .into());
        }
        let t_sensor_tip = sensor_tip.fk_unchecked(&[]);
        let t_tip_sensor = t_sensor_tip.inverse();
        let payload = Payload::from_robot(robot, sensor_link)?;
        Self::new(chain, t_tip_sensor, payload, config)
    }

    /// Builds the controller from its parts: the chain to the probe tip, `t_tip_sensor` (the F/T
    /// sensor frame in the tip frame) and the payload below the sensor.
    pub fn new(
        chain: Chain,
        t_tip_sensor: Transform,
        payload: Payload,
        config: ControllerConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let dof = chain.dof();
        if dof == 0 {
            return Err(ErrorKind::Model {
                link: chain.tip_link().to_owned(),
                what: "the arm has no movable joint".into(),
            }
            .into());
        }
        let sup = SafetySupervisor::new(config.safety, chain.limits())?;
        let tare = (config.tare_duration_s / config.nominal_dt_s).round() as usize;
        Ok(Self {
            r_tip_sensor: t_tip_sensor.rotation,
            p_sensor_in_tip: t_tip_sensor.translation,
            comp: FtCompensator::new(payload, tare.max(1)),
            sup,
            dof,
            q_des: vec![0.0; dof],
            qd_des: vec![0.0; dof],
            qd_prev: vec![0.0; dof],
            joint_weight: vec![1.0; dof],
            q_mid: chain.mid_configuration(),
            last_cmd: vec![0.0; dof],
            jac_des: Matrix6xX::zeros(dof),
            jac_meas: Matrix6xX::zeros(dof),
            initialized: false,
            time_s: 0.0,
            target: None,
            hold_position: None,
            v_prev: Vector3::zeros(),
            vz_slow: 0.0,
            w_prev: Vector3::zeros(),
            phase: ContactPhase::None,
            f_filt: 0.0,
            f_ref: 0.0,
            f_ref_start: 0.0,
            ramp_t0: 0.0,
            ramp_duration: 0.0,
            integ: 0.0,
            loss_timer: 0.0,
            search_start: Vector3::zeros(),
            regulating_s: 0.0,
            n_est: Vector3::z(),
            last_force_base: Vector3::zeros(),
            last_torque_base: Vector3::zeros(),
            force_base_filt: Vector3::zeros(),
            touching: false,
            stiffness: f64::NAN,
            ramp_fit: RampFit::default(),
            reaction: None,
            last_safety: SafetyState::Normal,
            recent_speed_limit: config.safety.free_speed_limit_m_s,
            chain,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The kinematic chain to the probe tip.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Number of joints.
    pub fn dof(&self) -> usize {
        self.dof
    }

    /// The supervisor (state, limits).
    pub fn supervisor(&self) -> &SafetySupervisor {
        &self.sup
    }

    /// The F/T compensation (bias estimate, payload).
    pub fn ft_compensator(&self) -> &FtCompensator {
        &self.comp
    }

    /// The current (accepted) target.
    pub fn target(&self) -> Option<&ProbeTarget> {
        self.target.as_ref()
    }

    /// The controller's joint reference `q_des`, rad.
    pub fn q_des(&self) -> &[f64] {
        &self.q_des
    }

    /// A fresh output buffer for this controller.
    pub fn new_output(&self) -> ControlOutput {
        ControlOutput::new(self.dof)
    }

    /// One control cycle of `dt` seconds. Pure: no I/O, no allocation, no panic on any input.
    pub fn step(&mut self, input: &ControlInput<'_>, dt: f64, out: &mut ControlOutput) {
        let time = input.time_s;
        self.time_s = time;
        self.sup.begin_cycle(time);
        let ft_ok = self.sup.check_inputs(
            input.estop,
            input.reset,
            input.q_rad,
            input.qd_rad_s,
            self.dof,
            dt,
            &input.ft,
        );
        let joints_ok = input.q_rad.len() == self.dof
            && input.qd_rad_s.len() == self.dof
            && input
                .q_rad
                .iter()
                .chain(input.qd_rad_s)
                .all(|v| v.is_finite());
        let dt_ok = dt.is_finite() && dt > 0.0 && dt <= 0.1;
        if !self.initialized {
            if !joints_ok {
                out.send = false;
                self.finish(out);
                return;
            }
            self.q_des.copy_from_slice(input.q_rad);
            self.last_cmd.copy_from_slice(input.q_rad);
            self.initialized = true;
        }
        let dt = if dt_ok { dt } else { 0.0 };

        // Kinematics at the measured joints (or at the reference if they are invalid).
        let t_meas = if joints_ok {
            self.chain
                .fk_jacobian_unchecked(input.q_rad, &mut self.jac_meas)
        } else {
            self.chain
                .fk_jacobian_unchecked(&self.q_des, &mut self.jac_meas)
        };
        let mut tip_speed = 0.0;
        if joints_ok {
            let mut v = Vector3::zeros();
            for (i, qd) in input.qd_rad_s.iter().enumerate() {
                let c = self.jac_meas.column(i);
                v += Vector3::new(c[0], c[1], c[2]) * *qd;
            }
            tip_speed = v.norm();
        }
        let r_base_sensor = t_meas.rotation * self.r_tip_sensor;
        let z_meas = t_meas.rotation.column(2).into_owned();

        // F/T compensation.
        if ft_ok && !self.comp.is_tared() && self.comp.add_tare_sample(&input.ft, &r_base_sensor) {
            let offset = self.comp.bias().force_n.norm();
            if offset > self.config.max_tare_offset_n {
                // Touching something while taring, or a broken sensor: refuse, start over.
                self.sup
                    .tare_rejected(offset, self.config.max_tare_offset_n);
                self.comp.restart_tare();
            }
        }
        let tared = self.comp.is_tared();
        if ft_ok && tared {
            let w = self.comp.compensate(&input.ft, &r_base_sensor);
            let f_base = r_base_sensor * w.force_n;
            let p_sensor = t_meas.transform_point(&self.p_sensor_in_tip);
            let torque_tip =
                r_base_sensor * w.torque_nm + (p_sensor - t_meas.translation).cross(&f_base);
            self.last_force_base = f_base;
            self.last_torque_base = torque_tip;
            if dt > 0.0 && f_base.iter().all(|x| x.is_finite()) {
                self.force_base_filt +=
                    (f_base - self.force_base_filt) * (dt / (RETREAT_FILTER_S + dt));
            }
            let f_axial = -f_base.dot(&z_meas);
            let alpha = if dt > 0.0 {
                let tau = 1.0 / (2.0 * std::f64::consts::PI * self.config.force_filter_hz);
                dt / (tau + dt)
            } else {
                0.0
            };
            self.f_filt += alpha * (f_axial - self.f_filt);
            // Touch: filtered axial force, or the raw magnitude (faster; 10σ above the noise
            // of a typical F/T sensor at the default threshold).
            self.touching = self.f_filt > self.config.touch_threshold_n
                || f_base.norm() > 2.0 * self.config.touch_threshold_n;
            self.sup.check_wrench(&f_base, &torque_tip, &self.jac_meas);
        }

        // Reference kinematics.
        let t_des = self
            .chain
            .fk_jacobian_unchecked(&self.q_des, &mut self.jac_des);

        // Target intake and watchdog.
        if let Some(target) = input.target {
            self.intake_target(target);
        }
        self.sup.check_watchdog();

        // Behaviour → twist.
        let state = self.sup.state();
        if state != self.last_safety {
            self.on_safety_transition(state, &t_des);
        }
        self.last_safety = state;
        let contact_like = self.touching || self.phase != ContactPhase::None;
        let (mut v, mut w, stop, mode) = if !tared {
            self.v_prev = Vector3::zeros();
            self.vz_slow = 0.0;
            self.w_prev = Vector3::zeros();
            let mode = match state {
                SafetyState::EStop => ControlMode::EStop,
                SafetyState::FaultStop { .. } => ControlMode::FaultStop,
                _ => ControlMode::Initializing,
            };
            (Vector3::zeros(), Vector3::zeros(), true, mode)
        } else {
            self.behaviour(state, &t_des, dt, ft_ok)
        };

        if !stop && dt > 0.0 {
            self.sup
                .limit_twist(&mut v, &mut w, &t_des.translation, contact_like);
            self.v_prev = v;
            self.w_prev = w;
            self.resolve(&v, &w, dt);
            self.sup
                .limit_joints(&self.q_des, &mut self.qd_des, &self.qd_prev, dt);
            // Final Cartesian check of what the joints will actually do.
            self.check_resulting_motion(&t_des.translation, contact_like, dt);
            for (q, qd) in self.q_des.iter_mut().zip(&self.qd_des) {
                *q += qd * dt;
            }
        } else {
            // Stop: all joints decelerate together at the joint acceleration limit, so the tip
            // keeps its path (a step to zero would saturate the servos' acceleration limits
            // unevenly and swing the tip). At scanning speeds this takes 10–50 ms.
            let a = self.config.safety.joint_acceleration_rad_s2;
            let vmax = self.qd_des.iter().fold(0.0, |m: f64, v| m.max(v.abs()));
            let s = if vmax > 0.0 && dt > 0.0 {
                (1.0 - a * dt / vmax).max(0.0)
            } else {
                0.0
            };
            for (q, qd) in self.q_des.iter_mut().zip(self.qd_des.iter_mut()) {
                *qd *= s;
                *q += *qd * dt;
            }
            self.v_prev = Vector3::zeros();
            self.vz_slow = 0.0;
            self.w_prev = Vector3::zeros();
        }
        self.qd_prev.copy_from_slice(&self.qd_des);

        // Command.
        let lead = self.config.lead_time_s();
        for i in 0..self.dof {
            out.q_cmd_rad[i] = self.q_des[i] + lead * self.qd_des[i];
            out.qd_cmd_rad_s[i] = self.qd_des[i]
                + self.config.velocity_position_gain_per_s
                    * (self.q_des[i]
                        - if joints_ok {
                            input.q_rad[i]
                        } else {
                            self.q_des[i]
                        });
        }
        let tol = lead
            * self
                .sup
                .joint_velocity_limits()
                .iter()
                .fold(0.0, |a: f64, b| a.max(*b))
            + 1e-9;
        if self.sup.check_command(&out.q_cmd_rad, tol) {
            self.last_cmd.copy_from_slice(&out.q_cmd_rad);
        } else {
            out.q_cmd_rad.copy_from_slice(&self.last_cmd);
            out.qd_cmd_rad_s.iter_mut().for_each(|v| *v = 0.0);
        }
        // The measured speed is judged against the limit that applied over the last 200 ms
        // (the arm needs that long to slow from the free-space to the in-contact limit).
        let c = self.config.safety;
        let limit_now = if contact_like {
            c.contact_speed_limit_m_s
        } else {
            c.free_speed_limit_m_s
        };
        let decay = (c.free_speed_limit_m_s - c.contact_speed_limit_m_s).max(0.0) * dt / 0.2;
        self.recent_speed_limit = limit_now.max(self.recent_speed_limit - decay);
        if joints_ok && tared {
            self.sup
                .check_measured(&self.q_des, input.q_rad, tip_speed, self.recent_speed_limit);
        }
        out.send = true;
        out.interface = self.config.interface;
        out.mode = mode;
        out.t_base_probe = t_meas;
        out.t_base_probe_cmd = t_des;
        out.tip_speed_m_s = tip_speed;
        out.tip_velocity_cmd_m_s = self.v_prev;
        self.finish(out);
    }

    fn finish(&mut self, out: &mut ControlOutput) {
        out.contact_phase = self.phase;
        out.safety = self.sup.state();
        out.force_n = self.f_filt;
        out.force_setpoint_n = if self.phase == ContactPhase::None {
            0.0
        } else {
            self.f_ref
        };
        out.contact_force_base_n = self.last_force_base;
        out.contact_torque_base_nm = self.last_torque_base;
        out.in_contact = self.touching;
        out.regulating_s = self.regulating_s;
        out.surface_normal_base = self.n_est;
        out.stiffness_n_per_m = self.stiffness;
        out.events = *self.sup.events();
        self.sup.end_cycle();
    }

    fn intake_target(&mut self, target: ProbeTarget) {
        let r = &target.t_base_probe.rotation;
        let rotation_ok = r.iter().all(|v| v.is_finite())
            && (r.transpose() * r - Matrix3::identity()).amax() < 1e-6
            && r.determinant() > 0.0;
        let mut p = target.t_base_probe.translation;
        let force = (target.mode == TargetMode::Contact).then_some(target.force_n);
        let tilt_ok = match target.orientation {
            OrientationMode::Commanded => true,
            OrientationMode::FollowNormal { tilt_rad } => {
                tilt_rad.is_finite() && tilt_rad.abs() < 1.0
            }
        };
        let v_ok = target.velocity_m_s.iter().all(|v| v.is_finite());
        let verdict = self.sup.check_target(
            target.stamp_s,
            &mut p,
            rotation_ok && tilt_ok && v_ok,
            force,
            FORCE_RANGE_N,
        );
        if verdict == TargetCheck::Fresh {
            let mut t = target;
            t.t_base_probe.translation = p;
            t.force_n = if t.mode == TargetMode::Contact {
                t.force_n.min(self.config.safety.max_setpoint_n())
            } else {
                0.0
            };
            let vmax = self.config.safety.contact_speed_limit_m_s;
            let n = t.velocity_m_s.norm();
            if n > vmax {
                t.velocity_m_s *= vmax / n;
            }
            self.target = Some(t);
        }
    }

    /// The direction away from the patient: along the contact force on the probe (the skin
    /// pushes the probe out, whatever the probe's orientation) when it is clearly above the
    /// noise, else back along the probe axis. Retracting along the axis alone pushed a probe that
    /// had been turned sideways or upside down *into* the patient.
    fn away_from_patient(&self, t_des: &Transform) -> Vector3<f64> {
        let axis_out = -t_des.rotation.column(2).into_owned();
        let f = self.force_base_filt;
        if f.norm() > RETREAT_MIN_FORCE_N {
            f.normalize()
        } else {
            axis_out
        }
    }

    fn on_safety_transition(&mut self, state: SafetyState, t_des: &Transform) {
        let c = self.config.safety;
        let axis_out = self.away_from_patient(t_des);
        match state {
            SafetyState::Retract { cause } => {
                // Force and torque limits retract at the in-contact speed limit with a hard
                // start; the watchdog retract is a calm move to a safe height.
                let (distance, speed, accel) = if cause == SafetyEventKind::WatchdogRetract {
                    (c.safe_retract_m, c.retract_speed_m_s, 2.0)
                } else {
                    (c.force_retract_m, c.contact_speed_limit_m_s * 0.95, 10.0)
                };
                self.reaction = Some(Reaction {
                    start: t_des.translation,
                    dir: axis_out,
                    distance_m: distance,
                    speed_m_s: speed,
                    accel_m_s2: accel,
                    start_time_s: self.time_s,
                });
                self.phase = ContactPhase::None;
            }
            SafetyState::FaultStop { .. } => {
                let was_contact = self.touching || self.phase != ContactPhase::None;
                self.reaction = (was_contact && c.fault_backoff_m > 0.0).then_some(Reaction {
                    start: t_des.translation,
                    dir: axis_out,
                    distance_m: c.fault_backoff_m,
                    speed_m_s: c.fault_backoff_speed_m_s,
                    accel_m_s2: 1.0,
                    start_time_s: self.time_s + 0.01,
                });
                self.phase = ContactPhase::None;
            }
            SafetyState::EStop => {
                self.reaction = None;
                self.phase = ContactPhase::None;
            }
            SafetyState::WatchdogHold => {
                self.hold_position = Some(t_des.translation);
            }
            SafetyState::Normal => {
                self.reaction = None;
                self.hold_position = None;
                if self.last_safety.is_latched() {
                    // After a reset: wait for a fresh target.
                    self.target = None;
                    self.phase = ContactPhase::None;
                }
            }
        }
    }

    /// The twist for the current state: (v, ω, stop, mode).
    fn behaviour(
        &mut self,
        state: SafetyState,
        t_des: &Transform,
        dt: f64,
        ft_ok: bool,
    ) -> (Vector3<f64>, Vector3<f64>, bool, ControlMode) {
        let zero = Vector3::zeros();
        match state {
            SafetyState::EStop => match self.estop_yield(ft_ok) {
                Some(v) => (v, zero, false, ControlMode::EStop),
                None => (zero, zero, true, ControlMode::EStop),
            },
            SafetyState::FaultStop { .. } => match self.reaction_twist(t_des, dt) {
                Some(v) => (v, zero, false, ControlMode::FaultStop),
                None => (zero, zero, true, ControlMode::FaultStop),
            },
            SafetyState::Retract { .. } => match self.reaction_twist(t_des, dt) {
                Some(v) => (v, zero, false, ControlMode::Retract),
                None => (zero, zero, true, ControlMode::Retract),
            },
            SafetyState::WatchdogHold => {
                if self.phase != ContactPhase::None && ft_ok {
                    let hold = self.hold_position.unwrap_or(t_des.translation);
                    let (v, w) = self.contact_twist(t_des, dt, Some(hold), false);
                    (v, w, false, ControlMode::Hold)
                } else {
                    let (v, w) = self.decelerate(dt);
                    (v, w, false, ControlMode::Hold)
                }
            }
            SafetyState::Normal => {
                let Some(target) = self.target else {
                    let (v, w) = self.decelerate(dt);
                    return (v, w, false, ControlMode::Idle);
                };
                match target.mode {
                    TargetMode::Contact => {
                        if self.phase == ContactPhase::None || self.phase == ContactPhase::Release {
                            self.enter_search(t_des, &target);
                        }
                        let (v, w) = self.contact_twist(t_des, dt, None, true);
                        (v, w, false, ControlMode::Contact)
                    }
                    TargetMode::Free => {
                        if matches!(self.phase, ContactPhase::Ramp | ContactPhase::Regulate) {
                            self.phase = ContactPhase::Release;
                            self.f_ref_start = self.f_ref;
                            self.ramp_t0 = self.time_s;
                            self.ramp_duration = self.config.force_ramp_s
                                * (self.f_ref / self.config.default_force_n).clamp(0.2, 1.5);
                            self.hold_position = Some(t_des.translation);
                        } else if self.phase == ContactPhase::Search {
                            self.phase = ContactPhase::None;
                        }
                        if self.phase == ContactPhase::Release {
                            let hold = self.hold_position.unwrap_or(t_des.translation);
                            let (v, w) = self.contact_twist(t_des, dt, Some(hold), false);
                            if self.phase == ContactPhase::Release {
                                return (v, w, false, ControlMode::Contact);
                            }
                        }
                        let (v, w) = self.free_twist(t_des, &target, dt);
                        (v, w, false, ControlMode::Free)
                    }
                }
            }
        }
    }

    fn enter_search(&mut self, t_des: &Transform, target: &ProbeTarget) {
        if self.phase == ContactPhase::None {
            self.n_est = -target.t_base_probe.rotation.column(2).into_owned();
        }
        self.phase = ContactPhase::Search;
        self.search_start = t_des.translation;
        self.integ = 0.0;
        self.loss_timer = 0.0;
        self.regulating_s = 0.0;
        self.hold_position = None;
        self.ramp_fit.active = false;
    }

    fn decelerate(&self, dt: f64) -> (Vector3<f64>, Vector3<f64>) {
        let c = &self.config;
        (
            toward_zero(&self.v_prev, c.free_acceleration_m_s2 * 2.0 * dt),
            toward_zero(&self.w_prev, c.angular_acceleration_rad_s2 * 2.0 * dt),
        )
    }

    /// Straight-line reaction motion; `None` when there is none (stop) or it is finished.
    /// During an e-stop: the back-off velocity that yields to the patient's push once the
    /// measured contact force exceeds `estop_yield_force_n` (along the force, i.e. away from the
    /// patient; speed proportional to the excess, capped), or `None` to stay stopped. Without a
    /// healthy force reading the arm stays stopped.
    fn estop_yield(&self, ft_ok: bool) -> Option<Vector3<f64>> {
        let c = self.config.safety;
        let f = self.force_base_filt;
        let excess = f.norm() - c.estop_yield_force_n;
        if !ft_ok || excess.is_nan() || excess <= 0.0 {
            return None;
        }
        let speed = (excess * c.estop_yield_m_s_per_n).min(c.estop_yield_speed_m_s);
        Some(f.normalize() * speed)
    }

    fn reaction_twist(&mut self, t_des: &Transform, dt: f64) -> Option<Vector3<f64>> {
        let r = self.reaction?;
        if self.time_s < r.start_time_s {
            return None;
        }
        let done = (t_des.translation - r.start).dot(&r.dir);
        let remaining = r.distance_m - done;
        if remaining <= 1e-4 {
            self.reaction = None;
            return None;
        }
        let accel = r.accel_m_s2;
        let speed = r.speed_m_s.min((2.0 * accel * remaining).sqrt());
        let current = self.v_prev.dot(&r.dir).max(0.0);
        let speed = speed.min(current + accel * dt);
        Some(r.dir * speed)
    }

    fn free_twist(
        &mut self,
        t_des: &Transform,
        target: &ProbeTarget,
        dt: f64,
    ) -> (Vector3<f64>, Vector3<f64>) {
        let c = self.config;
        let e = target.t_base_probe.translation - t_des.translation;
        // Planned at 90 % of the limit: servo transients stay under the hard limit.
        let vmax = c.safety.free_speed_limit_m_s * 0.9;
        let mut v = shaped(
            &e,
            c.free_gain_per_s,
            vmax,
            c.free_acceleration_m_s2,
            &target.velocity_m_s,
        );
        v = rate_limit(&self.v_prev, &v, c.free_acceleration_m_s2 * dt);
        let er = rotation_log(&(target.t_base_probe.rotation * t_des.rotation.transpose()));
        let mut w = shaped(
            &er,
            c.angular_gain_per_s,
            c.safety.angular_speed_limit_rad_s * 0.6,
            c.angular_acceleration_rad_s2,
            &Vector3::zeros(),
        );
        w = rate_limit(&self.w_prev, &w, c.angular_acceleration_rad_s2 * dt);
        // Guarded move: never push further into an unexpected contact.
        let f = self.last_force_base;
        if f.norm() > c.free_contact_guard_n {
            let out = f / f.norm();
            let into = v.dot(&out);
            if into < 0.0 {
                v -= out * into;
            }
        }
        (v, w)
    }

    /// Hybrid force/position twist. `hold`: tangential position to hold instead of the target's;
    /// `track`: follow the target's velocity feed-forward.
    fn contact_twist(
        &mut self,
        t_des: &Transform,
        dt: f64,
        hold: Option<Vector3<f64>>,
        track: bool,
    ) -> (Vector3<f64>, Vector3<f64>) {
        let c = self.config;
        let Some(target) = self.target else {
            return self.decelerate(dt);
        };
        let z = t_des.rotation.column(2).into_owned();
        let p = t_des.translation;

        // Skin normal from the contact force, friction removed along the slip direction. The
        // slip direction is the tip's motion along the skin: its tangential part plus the axial
        // part averaged over a breathing cycle (what the force loop does to follow the slope
        // along the sweep). Removing the force along the tangential part alone would make the
        // tilt along the sweep unobservable: any estimate would be its own fixed point.
        let f = self.last_force_base;
        let fn_ = f.norm();
        if dt > 0.0 {
            let a = dt / (c.normal_slope_filter_s + dt);
            self.vz_slow += (self.v_prev.dot(&z) - self.vz_slow) * a;
        }
        if fn_ > c.normal_min_force_n && dt > 0.0 {
            let mut n_raw = f / fn_;
            let vt = self.v_prev - z * self.v_prev.dot(&z);
            if vt.norm() > 1e-3 {
                let slip = vt + z * self.vz_slow;
                let s = slip / slip.norm();
                n_raw -= s * n_raw.dot(&s);
            }
            if let Some(n_raw) = n_raw.try_normalize(1e-6) {
                let a = dt / (c.normal_filter_s + dt);
                let n = self.n_est + (n_raw - self.n_est) * a;
                self.n_est = n.try_normalize(1e-9).unwrap_or(self.n_est);
            }
        }
        let axis_target = -target.t_base_probe.rotation.column(2).into_owned();
        self.n_est = limit_cone(&self.n_est, &axis_target, c.normal_max_tilt_rad);

        // Orientation goal.
        let r_goal = match target.orientation {
            OrientationMode::Commanded => target.t_base_probe.rotation,
            OrientationMode::FollowNormal { tilt_rad } => {
                let zd = -self.n_est;
                let xt = target.t_base_probe.rotation.column(0).into_owned();
                let x = (xt - zd * xt.dot(&zd))
                    .try_normalize(1e-6)
                    .unwrap_or_else(|| t_des.rotation.column(0).into_owned());
                let y = zd.cross(&x);
                let r = Matrix3::from_columns(&[x, y, zd]);
                r * telecho_core::rotation_from_rpy(tilt_rad, 0.0, 0.0)
            }
        };
        let er = rotation_log(&(r_goal * t_des.rotation.transpose()));
        let mut w = er * c.angular_gain_per_s;
        let wmax = c.safety.angular_speed_limit_rad_s * 0.5;
        if w.norm() > wmax {
            w *= wmax / w.norm();
        }
        w = rate_limit(&self.w_prev, &w, c.angular_acceleration_rad_s2 * dt);

        // Tangential tracking.
        let goal = hold.unwrap_or(target.t_base_probe.translation);
        let e = goal - p;
        let e_t = e - z * e.dot(&z);
        let ff = if track && hold.is_none() {
            target.velocity_m_s - z * target.velocity_m_s.dot(&z)
        } else {
            Vector3::zeros()
        };
        let mut v_t = e_t * c.tangential_gain_per_s + ff;
        let vt_max = c.safety.contact_speed_limit_m_s * 0.9;
        if v_t.norm() > vt_max {
            v_t *= vt_max / v_t.norm();
        }
        let v_t_prev = self.v_prev - z * self.v_prev.dot(&z);
        v_t = rate_limit(&v_t_prev, &v_t, c.free_acceleration_m_s2 * dt);

        // Axial force loop.
        let v_z = self.axial_velocity(&target, &p, &z, dt);
        (v_t + z * v_z, w)
    }

    /// The force loop: axial velocity (positive into the patient).
    fn axial_velocity(
        &mut self,
        target: &ProbeTarget,
        p: &Vector3<f64>,
        z: &Vector3<f64>,
        dt: f64,
    ) -> f64 {
        let c = self.config;
        let setpoint = target.force_n;
        let vlim = c.safety.contact_speed_limit_m_s * 0.9;
        let v_prev_z = self.v_prev.dot(z);
        let kf = c.force_bandwidth_rad_s / c.design_stiffness_n_per_m;
        match self.phase {
            ContactPhase::None => 0.0,
            ContactPhase::Search => {
                if self.touching {
                    self.phase = ContactPhase::Ramp;
                    self.f_ref_start = self.f_filt;
                    self.f_ref = self.f_filt;
                    self.ramp_t0 = self.time_s;
                    self.ramp_duration = c.force_ramp_s
                        * ((setpoint - self.f_filt).abs() / c.default_force_n).clamp(0.25, 2.0);
                    self.integ = 0.0;
                    self.ramp_fit = RampFit {
                        z0: p.dot(z),
                        f0: self.f_filt,
                        active: true,
                    };
                    return self.axial_velocity(target, p, z, dt);
                }
                let travelled = (p - self.search_start).dot(z);
                if travelled > c.search_distance_m {
                    self.sup.contact_not_found(travelled, c.search_distance_m);
                    return toward_zero_scalar(v_prev_z, c.free_acceleration_m_s2 * dt);
                }
                let v = c.search_speed_m_s;
                v.min(v_prev_z + c.free_acceleration_m_s2 * dt)
            }
            ContactPhase::Ramp | ContactPhase::Regulate | ContactPhase::Release => {
                // Reference.
                match self.phase {
                    ContactPhase::Ramp => {
                        let s = if self.ramp_duration > 0.0 {
                            ((self.time_s - self.ramp_t0) / self.ramp_duration).clamp(0.0, 1.0)
                        } else {
                            1.0
                        };
                        let blend = 0.5 - 0.5 * (std::f64::consts::PI * s).cos();
                        self.f_ref = self.f_ref_start + (setpoint - self.f_ref_start) * blend;
                        if s >= 1.0 {
                            self.finish_ramp_fit(p, z);
                            self.phase = ContactPhase::Regulate;
                            self.regulating_s = 0.0;
                        }
                    }
                    ContactPhase::Regulate => {
                        let step = c.force_rate_n_s * dt;
                        self.f_ref += (setpoint - self.f_ref).clamp(-step, step);
                        self.regulating_s += dt;
                    }
                    _ => {
                        let s = if self.ramp_duration > 0.0 {
                            ((self.time_s - self.ramp_t0) / self.ramp_duration).clamp(0.0, 1.0)
                        } else {
                            1.0
                        };
                        let blend = 0.5 + 0.5 * (std::f64::consts::PI * s).cos();
                        self.f_ref = self.f_ref_start * blend;
                        if s >= 1.0 {
                            // Lift off along the axis until the force is gone.
                            if self.f_filt < 0.5 * c.touch_threshold_n {
                                self.phase = ContactPhase::None;
                                self.hold_position = None;
                                return 0.0;
                            }
                            return -c.search_speed_m_s;
                        }
                    }
                }
                // Contact loss: back to searching at the search speed.
                if self.phase != ContactPhase::Release {
                    if self.f_filt < c.contact_loss_n {
                        self.loss_timer += dt;
                    } else {
                        self.loss_timer = 0.0;
                    }
                    if self.loss_timer > c.contact_loss_s {
                        self.phase = ContactPhase::Search;
                        self.search_start = *p;
                        self.integ = 0.0;
                        self.loss_timer = 0.0;
                        return c
                            .search_speed_m_s
                            .min(v_prev_z.max(0.0) + c.free_acceleration_m_s2 * dt);
                    }
                }
                let e = self.f_ref - self.f_filt;
                let mut v = kf * (e + c.force_integral_rad_s * self.integ);
                let saturated_up = v > vlim && e > 0.0;
                let saturated_down = v < -vlim && e < 0.0;
                if !(saturated_up || saturated_down) {
                    self.integ += e * dt;
                    v = kf * (e + c.force_integral_rad_s * self.integ);
                }
                if !self.touching {
                    v = v.min(c.search_speed_m_s);
                }
                v.clamp(-vlim, vlim)
            }
        }
    }

    fn finish_ramp_fit(&mut self, p: &Vector3<f64>, z: &Vector3<f64>) {
        if !self.ramp_fit.active {
            return;
        }
        self.ramp_fit.active = false;
        let dz = p.dot(z) - self.ramp_fit.z0;
        let df = self.f_filt - self.ramp_fit.f0;
        if dz > 2e-4 && df > 0.5 {
            // Secant over the ramp → tangent at the setpoint for a Hertzian contact (n = 1.5).
            self.stiffness = 1.5 * df / dz;
        }
    }

    /// Damped least squares from the twist to `qd_des`, with joint limits and planner limits.
    fn resolve(&mut self, v: &Vector3<f64>, w: &Vector3<f64>, dt: f64) {
        let c = self.config;
        let wa = c.angular_weight_m;
        let t = Vector6::new(v.x, v.y, v.z, wa * w.x, wa * w.y, wa * w.z);
        let n = self.dof;
        let (lower, upper) = self.sup.joint_position_limits();
        self.joint_weight.iter_mut().for_each(|x| *x = 1.0);
        let jac = &self.jac_des;
        let row = |r: usize, k: usize| if r < 3 { jac[(r, k)] } else { wa * jac[(r, k)] };
        let lambda2 = c.dls_damping * c.dls_damping;
        let a_plan = c.safety.joint_acceleration_rad_s2 * 0.8;
        for _ in 0..3 {
            let mut a = Matrix6::<f64>::zeros();
            for k in 0..n {
                let wk = self.joint_weight[k];
                if wk == 0.0 {
                    continue;
                }
                for r in 0..6 {
                    let jr = row(r, k) * wk;
                    for cc in 0..=r {
                        a[(r, cc)] += jr * row(cc, k);
                    }
                }
            }
            for r in 0..6 {
                for cc in 0..r {
                    a[(cc, r)] = a[(r, cc)];
                }
                a[(r, r)] += lambda2;
            }
            let Some(chol) = a.cholesky() else {
                self.qd_des.iter_mut().for_each(|x| *x = 0.0);
                return;
            };
            let y = chol.solve(&t);
            for k in 0..n {
                let wk = self.joint_weight[k];
                self.qd_des[k] = wk * (0..6).map(|r| row(r, k) * y[r]).sum::<f64>();
            }
            if n > 6 && c.null_space_gain_per_s > 0.0 {
                // qd += (I − W Jᵀ A⁻¹ J) z, z toward mid-range.
                let mut jz = Vector6::zeros();
                for k in 0..n {
                    let zk = self.joint_weight[k]
                        * c.null_space_gain_per_s
                        * (self.q_mid[k] - self.q_des[k]).clamp(-0.5, 0.5);
                    for r in 0..6 {
                        jz[r] += row(r, k) * zk;
                    }
                }
                let yz = chol.solve(&jz);
                for k in 0..n {
                    let wk = self.joint_weight[k];
                    let zk = wk
                        * c.null_space_gain_per_s
                        * (self.q_mid[k] - self.q_des[k]).clamp(-0.5, 0.5);
                    self.qd_des[k] += zk - wk * (0..6).map(|r| row(r, k) * yz[r]).sum::<f64>();
                }
            }
            // Joints at a limit and pushing out are removed and the step re-solved; joints
            // approaching a limit are slowed so that they can stop at it.
            let mut changed = false;
            for k in 0..n {
                let q = self.q_des[k];
                let qd = self.qd_des[k];
                let up = upper[k] - q;
                let down = q - lower[k];
                if self.joint_weight[k] > 0.0
                    && ((qd > 0.0 && up <= 1e-4) || (qd < 0.0 && down <= 1e-4))
                {
                    self.joint_weight[k] = 0.0;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for k in 0..n {
            let q = self.q_des[k];
            let up = (upper[k] - q).max(0.0);
            let down = (q - lower[k]).max(0.0);
            let qd = &mut self.qd_des[k];
            if *qd > 0.0 {
                *qd = qd.min((2.0 * a_plan * up).sqrt()).min(up / dt.max(1e-9));
            } else if *qd < 0.0 {
                *qd = qd
                    .max(-(2.0 * a_plan * down).sqrt())
                    .max(-down / dt.max(1e-9));
            }
        }
        // Planner velocity and acceleration limits (below the supervisor's hard ones).
        let vmax = self.sup.joint_velocity_limits();
        let mut s: f64 = 1.0;
        for (qd, vm) in self.qd_des.iter().zip(vmax) {
            let lim = 0.9 * vm;
            if qd.abs() > lim {
                s = s.min(lim / qd.abs());
            }
        }
        if !s.is_finite() {
            s = 0.0;
        }
        let dv_max = a_plan * dt;
        let mut sa: f64 = 1.0;
        for (qd, p) in self.qd_des.iter().zip(&self.qd_prev) {
            let dv = (qd * s - p).abs();
            if dv > dv_max {
                sa = sa.min(dv_max / dv);
            }
        }
        for (qd, p) in self.qd_des.iter_mut().zip(&self.qd_prev) {
            let target = *qd * s;
            *qd = p + (target - p) * sa;
            if !qd.is_finite() {
                *qd = 0.0;
            }
        }
    }

    /// The Cartesian motion the joint command will produce, checked once more against the speed
    /// limit and the workspace box (a violation stops the motion).
    fn check_resulting_motion(&mut self, p: &Vector3<f64>, contact: bool, dt: f64) {
        let mut v = Vector3::zeros();
        for (i, qd) in self.qd_des.iter().enumerate() {
            let c = self.jac_des.column(i);
            v += Vector3::new(c[0], c[1], c[2]) * *qd;
        }
        let c = self.config.safety;
        let limit = if contact {
            c.contact_speed_limit_m_s
        } else {
            c.free_speed_limit_m_s
        };
        let speed = v.norm();
        if speed > limit * 1.02 + 1e-4 {
            self.sup
                .raise(SafetyEventKind::CartesianSpeed, speed, limit);
            let s = limit / speed;
            self.qd_des.iter_mut().for_each(|x| *x *= s);
            v *= s;
        }
        let next = p + v * dt;
        let inside_now = c.in_workspace(p, 1e-3);
        if !c.in_workspace(&next, 1e-3) && (inside_now || !self.moves_inward(p, &v)) {
            self.sup.raise(SafetyEventKind::WorkspaceLimit, 0.0, 0.0);
            self.qd_des.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    fn moves_inward(&self, p: &Vector3<f64>, v: &Vector3<f64>) -> bool {
        let c = &self.config.safety;
        (0..3).all(|i| {
            (p[i] <= c.workspace_max_m[i] || v[i] <= 0.0)
                && (p[i] >= c.workspace_min_m[i] || v[i] >= 0.0)
        })
    }
}

/// P-control toward `e` with speed `vmax`, stopping distance under deceleration `a`, plus a
/// feed-forward.
fn shaped(e: &Vector3<f64>, k: f64, vmax: f64, a: f64, ff: &Vector3<f64>) -> Vector3<f64> {
    let d = e.norm();
    if d < 1e-12 {
        return *ff;
    }
    let speed = (k * d).min(vmax).min((2.0 * a * d).sqrt());
    e * (speed / d) + ff
}

fn rate_limit(prev: &Vector3<f64>, next: &Vector3<f64>, max_step: f64) -> Vector3<f64> {
    let d = next - prev;
    let n = d.norm();
    if n > max_step && n > 0.0 {
        prev + d * (max_step / n)
    } else {
        *next
    }
}

fn toward_zero(v: &Vector3<f64>, step: f64) -> Vector3<f64> {
    let n = v.norm();
    if n <= step {
        Vector3::zeros()
    } else {
        v * ((n - step) / n)
    }
}

fn toward_zero_scalar(v: f64, step: f64) -> f64 {
    if v.abs() <= step {
        0.0
    } else {
        v - step * v.signum()
    }
}

/// Limits unit vector `n` to the cone of half-angle `max` around unit `axis`.
fn limit_cone(n: &Vector3<f64>, axis: &Vector3<f64>, max: f64) -> Vector3<f64> {
    let cos = n.dot(axis).clamp(-1.0, 1.0);
    let angle = cos.acos();
    if angle <= max {
        return *n;
    }
    let perp = n - axis * cos;
    match perp.try_normalize(1e-9) {
        Some(u) => axis * max.cos() + u * max.sin(),
        None => *axis,
    }
}
