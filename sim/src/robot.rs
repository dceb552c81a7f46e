//! The simulated arm: a joint-level servo interface like the ones real arms offer.
//!
//! # What is modelled
//!
//! Industrial and collaborative arms are not torque-controlled from outside: their drives close
//! stiff joint loops and accept either a stream of joint **position** targets (Universal Robots'
//! `servoj` over RTDE, URScript manual "servoj(q, a, v, t, lookahead_time, gain)") or of joint
//! **velocities** (Franka's FCI joint-velocity interface, streamed at 1 kHz). [`ServoArm`] models
//! that interface, not the drives: each joint is an independent, linear closed loop
//!
//! - **position mode** ([`JointCommand::Position`]): critically damped second order,
//!   `q̈ = ωₙ²(q_ref − q) − 2ωₙ q̇`, i.e. `Q/Q_ref = ωₙ²/(s + ωₙ)²`;
//! - **velocity mode** ([`JointCommand::Velocity`]): first order, `q̈ = ω_c (q̇_ref − q̇)`.
//!
//! [`ServoParams::bandwidth_hz`] is the closed loop's −3 dB frequency `f_bw` in both modes, so
//! `ω_c = 2π f_bw` and `ωₙ = 2π f_bw / √(√2 − 1) ≈ 2π f_bw / 0.6436` (for `ωₙ²/(s + ωₙ)²`,
//! `|H(jω)|² = 1/2` at `ω = ωₙ √(√2 − 1)`). A position step therefore reaches 63.2 % of its size
//! after `2.146/ωₙ` (≈ 8.7 ms at the default 25 Hz) and never overshoots while no limit is hit.
//!
//! On top of the linear loop:
//!
//! - **latency**: every command is stamped with the arm's clock when it is handed over and takes
//!   effect [`ServoParams::latency_s`] later (a preallocated ring buffer; the step is split at the
//!   exact release instant, so the latency is not rounded to the step);
//! - **set-point interpolation** [`ServoParams::interpolation_s`]: a position command does not
//!   step the reference; the reference moves linearly to it over one command period (1 ms), as
//!   drives interpolate cyclic set-points (CiA 402 interpolated / cyclic synchronous position
//!   mode). A stream of commands is therefore followed as a piecewise-linear reference, not a
//!   staircase;
//! - **acceleration limit** [`ServoParams::max_acceleration_rad_s2`] (all joints): when the loop
//!   asks for more, the joint accelerates at the limit instead, until the loop's own demand is
//!   back within it;
//! - **velocity limit** from the URDF `<limit velocity>` (a value ≤ 0 or non-finite means none);
//! - **position limits** from the URDF as hard stops: the position is clamped and the velocity
//!   into the stop zeroed. Targets outside the limits are not rejected — the joint runs into the
//!   stop and stays there, as a real arm would be stopped by its limit supervision;
//! - **velocity watchdog**: in velocity mode, when no new velocity command has taken effect for
//!   [`ServoParams::velocity_timeout_s`], the target velocity drops to zero (Franka stops the arm
//!   when the 1 kHz command stream breaks off; `f64::INFINITY` disables it);
//! - **encoder noise**: [`ServoArm::measured_q`] is the true position plus white Gaussian noise
//!   of σ [`ServoParams::encoder_noise_rad`], drawn once per step; [`ServoArm::measured_qd`] the
//!   true velocity plus noise of σ [`ServoParams::velocity_noise_rad_s`] (real drivers report a
//!   filtered velocity, not a raw difference of encoder counts).
//!
//! Not modelled: the arm's rigid-body dynamics, gravity sag and joint elasticity (the servo is
//! treated as infinitely stiff against contact forces — a UR5e's or Panda's Cartesian stiffness is
//! of order 10⁵–10⁶ N/m, two to three orders above soft tissue's 0.5–5·10³ N/m), and self
//! collision.
//!
//! # Integration
//!
//! Between command releases the reference is linear in time (the interpolation ramp, then
//! constant), so each segment is integrated with the exact solution of the linear loop: for
//! position mode with `e = q − r` and the reference moving at `ṙ`, `ε = e + 2ṙ/ωₙ` obeys the
//! homogeneous loop, `ε(t) = (ε₀ + (ε̇₀ + ωₙε₀)t)·e^{−ωₙt}`, `ε̇(t) = (ε̇₀ − ωₙ(ε̇₀ +
//! ωₙε₀)t)·e^{−ωₙt}` (so a ramp is tracked with the lag `2ṙ/ωₙ`); for velocity mode `q̇(t) =
//! q̇_ref + (q̇₀ − q̇_ref)e^{−ω_c t}`. When the acceleration the loop asks for at the start of a
//! segment, or the segment's mean acceleration, exceeds the limit, the segment is integrated in
//! 40 pieces (25 µs for 1 ms) with the same rule per piece: the exact solution where the limit is
//! not reached, constant acceleration at the limit where it is. This follows the saturated loop
//! `q̈ = sat(ωₙ²(r − q) − 2ωₙq̇)` closely (`ωₙ·25 µs ≈ 0.006`). Segments are at most 1 ms long
//! and end exactly at command releases, at the end of the interpolation ramp and at the watchdog
//! deadline. [`ServoArm::step`] does not allocate.
//!
//! **Why interpolation and sub-steps matter.** Earlier versions stepped the reference (zero-order
//! hold) and applied the acceleration limit to whole 1 ms segments. A 1 kHz stream is then a
//! staircase, and above about 0.3 rad/s each 1 ms stair asks the 244 rad/s loop for more than
//! 15 rad/s² at its start: every fast joint ran saturated, with a bang-bang limit cycle of
//! ±`a_max`·1 ms (±0.015 rad/s, 2–4 ms period) in every sample, although the commanded motion
//! itself never asked for more than the controller's 8 rad/s². On the Panda, whose wrist joints
//! turn at up to 1.2 rad/s when the probe re-orients in contact in a poorly conditioned wrist
//! posture, that
//! jittered the probe tip by ±1–4 mm/s, which the skin friction (regularised over 1 mm/s) turned
//! into 1–2.5 N friction reversals every millisecond, i.e. ≈0.5 N·m torque steps at the F/T
//! sensor 0.18 m above the tip, and the safety supervisor stopped 4 of 20 scans on an
//! implausible-jump fault. With interpolation, a feasible stream never saturates the loop (test
//! `robot.rs: staircase_ramp_at_the_acceleration_limit_is_smooth`); the sub-steps keep the
//! saturated case (a step command, a stop) free of the artificial limit cycle too.
//!
//! # Commands
//!
//! A command with the wrong number of values or a NaN/infinite value is refused with an error
//! and ignored: the arm keeps its last valid command (in position mode it holds its target; in
//! velocity mode the watchdog stops it if no valid command follows).

use telecho_control::{Chain, JointLimits};

use crate::error::{check_in_range, ErrorKind};
use crate::noise::GaussianNoise;
use crate::Error;

/// Longest interval integrated in one piece; longer steps are split.
const MAX_SEGMENT_S: f64 = 1e-3;
/// Time tolerance for releasing a command at a step boundary (s).
const TIME_EPS_S: f64 = 1e-9;
/// A segment in which the acceleration limit is reached is integrated in this many pieces
/// (25 µs for a 1 ms segment).
const SATURATED_SUBSTEPS: usize = 40;
/// The queue holds at least this many commands, and enough for a 10 kHz stream over the latency.
const MIN_QUEUE: usize = 16;

/// `√(√2 − 1)`: −3 dB frequency of `ωₙ²/(s + ωₙ)²` divided by `ωₙ`.
pub const CRITICALLY_DAMPED_BANDWIDTH_RATIO: f64 = 0.643_594_252_905_582_6;

/// Settings of the joint servo (shared by all joints). SI units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServoParams {
    /// Closed-loop −3 dB bandwidth of the joint loops, Hz (default 25; valid 0.5–500).
    pub bandwidth_hz: f64,
    /// Delay from handing a command over to its taking effect, s (default 0.002; valid 0–0.5).
    /// Two milliseconds is the order of one 500 Hz RTDE cycle (UR e-Series) or two 1 kHz FCI
    /// cycles (Franka) plus transport.
    pub latency_s: f64,
    /// Standard deviation of the joint position measurement noise, rad (default 1e-5; valid
    /// 0–0.01). Of the order of the quantisation noise of an 18-bit-per-turn absolute encoder
    /// (`2π/2¹⁸/√12 ≈ 6.9e-6 rad`); at 0.85 m reach 1e-5 rad is 8.5 µm, inside the UR5e's
    /// published ±0.03 mm pose repeatability (UR5e technical specifications, ISO 9283).
    pub encoder_noise_rad: f64,
    /// Standard deviation of the joint velocity measurement noise, rad/s (default 5e-4; valid
    /// 0–1).
    pub velocity_noise_rad_s: f64,
    /// Joint acceleration limit, rad/s², all joints (default 15; must be > 0, may be infinite).
    /// Franka publishes 7.5–20 rad/s² per joint (FCI "Robot and interface specifications");
    /// Universal Robots publishes none for servoj.
    pub max_acceleration_rad_s2: f64,
    /// In velocity mode, the target drops to zero when no velocity command has taken effect for
    /// this long, s (default 0.1; at least 0.001; `f64::INFINITY` disables the watchdog).
    pub velocity_timeout_s: f64,
    /// Interpolation period of position commands, s (default 0.001, the 1 kHz command period;
    /// valid 0–0.1; 0 = zero-order hold, the reference steps). When a position command takes
    /// effect, the reference moves linearly from its current value to the new target over this
    /// period, or over the time since the previous command took effect if that is shorter —
    /// the linear set-point interpolation of a drive in CiA 402 interpolated-position or
    /// cyclic-synchronous-position mode (interpolation time period, object 0x60C2).
    pub interpolation_s: f64,
}

impl Default for ServoParams {
    fn default() -> Self {
        Self {
            bandwidth_hz: 25.0,
            latency_s: 0.002,
            encoder_noise_rad: 1e-5,
            velocity_noise_rad_s: 5e-4,
            max_acceleration_rad_s2: 15.0,
            velocity_timeout_s: 0.1,
            interpolation_s: 1e-3,
        }
    }
}

impl ServoParams {
    /// Checks every field is finite (where required) and within its valid range.
    pub fn validate(&self) -> Result<(), Error> {
        check_in_range("servo bandwidth_hz", self.bandwidth_hz, 0.5, 500.0)?;
        check_in_range("servo latency_s", self.latency_s, 0.0, 0.5)?;
        check_in_range("servo interpolation_s", self.interpolation_s, 0.0, 0.1)?;
        check_in_range("servo encoder_noise_rad", self.encoder_noise_rad, 0.0, 0.01)?;
        check_in_range(
            "servo velocity_noise_rad_s",
            self.velocity_noise_rad_s,
            0.0,
            1.0,
        )?;
        let a = self.max_acceleration_rad_s2;
        if a.is_nan() || a <= 0.0 {
            return Err(ErrorKind::OutOfRange {
                what: "servo max_acceleration_rad_s2",
                value: a,
                min: f64::MIN_POSITIVE,
                max: f64::INFINITY,
            }
            .into());
        }
        let w = self.velocity_timeout_s;
        if w.is_nan() || w < 1e-3 {
            return Err(ErrorKind::OutOfRange {
                what: "servo velocity_timeout_s",
                value: w,
                min: 1e-3,
                max: f64::INFINITY,
            }
            .into());
        }
        Ok(())
    }

    /// Natural frequency `ωₙ` of the position loop, rad/s.
    pub fn position_natural_frequency_rad_s(&self) -> f64 {
        2.0 * std::f64::consts::PI * self.bandwidth_hz / CRITICALLY_DAMPED_BANDWIDTH_RATIO
    }

    /// Corner frequency `ω_c` of the velocity loop, rad/s.
    pub fn velocity_corner_frequency_rad_s(&self) -> f64 {
        2.0 * std::f64::consts::PI * self.bandwidth_hz
    }
}

/// A joint command, one value per joint of the chain (base to tip).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum JointCommand<'a> {
    /// Joint position targets, rad (or m for prismatic joints): like UR `servoj`.
    Position(&'a [f64]),
    /// Joint velocity targets, rad/s (or m/s): like Franka's joint-velocity interface.
    Velocity(&'a [f64]),
}

impl<'a> JointCommand<'a> {
    fn values(&self) -> &'a [f64] {
        match *self {
            JointCommand::Position(v) | JointCommand::Velocity(v) => v,
        }
    }

    fn mode(&self) -> ServoMode {
        match self {
            JointCommand::Position(_) => ServoMode::Position,
            JointCommand::Velocity(_) => ServoMode::Velocity,
        }
    }
}

/// Which loop is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServoMode {
    /// Tracking joint position targets.
    Position,
    /// Tracking joint velocity targets.
    Velocity,
}

/// Commands waiting out the latency: a fixed-capacity FIFO ring over flat buffers.
#[derive(Clone, Debug)]
struct CommandQueue {
    dof: usize,
    release_s: Vec<f64>,
    modes: Vec<ServoMode>,
    values: Vec<f64>,
    head: usize,
    len: usize,
}

impl CommandQueue {
    fn new(dof: usize, capacity: usize) -> Self {
        Self {
            dof,
            release_s: vec![0.0; capacity],
            modes: vec![ServoMode::Position; capacity],
            values: vec![0.0; capacity * dof],
            head: 0,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.release_s.len()
    }

    fn push(&mut self, release_s: f64, mode: ServoMode, values: &[f64]) -> bool {
        if self.len == self.capacity() {
            return false;
        }
        let slot = (self.head + self.len) % self.capacity();
        self.release_s[slot] = release_s;
        self.modes[slot] = mode;
        self.values[slot * self.dof..(slot + 1) * self.dof].copy_from_slice(values);
        self.len += 1;
        true
    }

    fn front_release(&self) -> Option<f64> {
        (self.len > 0).then(|| self.release_s[self.head])
    }

    /// Removes the front entry, copying its values into `out`.
    fn pop_into(&mut self, out: &mut [f64]) -> Option<ServoMode> {
        if self.len == 0 {
            return None;
        }
        let slot = self.head;
        out.copy_from_slice(&self.values[slot * self.dof..(slot + 1) * self.dof]);
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
        Some(self.modes[slot])
    }
}

/// A serial arm with joint-level position/velocity servos. See the module documentation.
#[derive(Clone, Debug)]
pub struct ServoArm {
    chain: Chain,
    params: ServoParams,
    omega_n: f64,
    omega_c: f64,
    time_s: f64,
    q: Vec<f64>,
    qd: Vec<f64>,
    q_meas: Vec<f64>,
    qd_meas: Vec<f64>,
    mode: ServoMode,
    /// Position targets (position mode) or velocity targets (velocity mode).
    target: Vec<f64>,
    /// Position mode: the reference at `ramp_start_s`; it reaches `target` at `ramp_end_s`.
    ref_from: Vec<f64>,
    ramp_start_s: f64,
    ramp_end_s: f64,
    /// When the last command took effect (−∞ before the first).
    last_release_s: f64,
    last_velocity_command_s: f64,
    queue: CommandQueue,
    lower: Vec<f64>,
    upper: Vec<f64>,
    vmax: Vec<f64>,
    position_noise: GaussianNoise,
    velocity_noise: GaussianNoise,
}

impl ServoArm {
    /// An arm with the kinematics and limits of `chain`, at rest at `q0`, holding `q0` (position
    /// mode). `seed` drives the measurement noise. `q0` must be finite and within the position
    /// limits.
    pub fn new(chain: Chain, params: ServoParams, q0: &[f64], seed: u64) -> Result<Self, Error> {
        params.validate()?;
        chain.check_q(q0).map_err(ErrorKind::from)?;
        let limits: &[JointLimits] = chain.limits();
        for (i, (&v, l)) in q0.iter().zip(limits).enumerate() {
            if v < l.lower - 1e-9 || v > l.upper + 1e-9 {
                return Err(ErrorKind::OutOfRange {
                    what: joint_what(i),
                    value: v,
                    min: l.lower,
                    max: l.upper,
                }
                .into());
            }
        }
        let dof = chain.dof();
        let capacity = MIN_QUEUE + (params.latency_s * 1e4).ceil() as usize;
        let lower = limits.iter().map(|l| l.lower).collect();
        let upper = limits.iter().map(|l| l.upper).collect();
        let vmax = limits
            .iter()
            .map(|l| {
                if l.velocity.is_finite() && l.velocity > 0.0 {
                    l.velocity
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        let seeds = crate::world::derive_seeds::<2>(seed);
        let mut arm = Self {
            omega_n: params.position_natural_frequency_rad_s(),
            omega_c: params.velocity_corner_frequency_rad_s(),
            params,
            time_s: 0.0,
            q: q0.to_vec(),
            qd: vec![0.0; dof],
            q_meas: q0.to_vec(),
            qd_meas: vec![0.0; dof],
            mode: ServoMode::Position,
            target: q0.to_vec(),
            ref_from: q0.to_vec(),
            ramp_start_s: 0.0,
            ramp_end_s: 0.0,
            last_release_s: f64::NEG_INFINITY,
            last_velocity_command_s: 0.0,
            queue: CommandQueue::new(dof, capacity),
            lower,
            upper,
            vmax,
            position_noise: GaussianNoise::new(seeds[0], params.encoder_noise_rad)?,
            velocity_noise: GaussianNoise::new(seeds[1], params.velocity_noise_rad_s)?,
            chain,
        };
        arm.sample_measurement();
        Ok(arm)
    }

    /// The kinematic chain (base → tip).
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The servo settings.
    pub fn params(&self) -> &ServoParams {
        &self.params
    }

    /// Number of joints.
    pub fn dof(&self) -> usize {
        self.q.len()
    }

    /// The arm's clock, s (starts at 0, advanced by [`ServoArm::step`]).
    pub fn time_s(&self) -> f64 {
        self.time_s
    }

    /// The loop currently in effect (commands still waiting out the latency do not count).
    pub fn mode(&self) -> ServoMode {
        self.mode
    }

    /// Targets currently in effect: positions in position mode, velocities in velocity mode.
    pub fn active_target(&self) -> &[f64] {
        &self.target
    }

    /// Commands handed over but still waiting out the latency.
    pub fn pending_commands(&self) -> usize {
        self.queue.len
    }

    /// Hands a command over. It takes effect `latency_s` after the arm's current time. A command
    /// of the wrong length or with a non-finite value is refused and ignored (the arm keeps its
    /// last valid command); so is one that finds the latency queue full.
    pub fn command(&mut self, cmd: JointCommand<'_>) -> Result<(), Error> {
        let values = cmd.values();
        if values.len() != self.dof() {
            return Err(ErrorKind::CommandLength {
                expected: self.dof(),
                got: values.len(),
            }
            .into());
        }
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ErrorKind::CommandNotFinite { index, value }.into());
        }
        let release = self.time_s + self.params.latency_s;
        if !self.queue.push(release, cmd.mode(), values) {
            return Err(ErrorKind::CommandQueueFull {
                capacity: self.queue.capacity(),
            }
            .into());
        }
        Ok(())
    }

    /// Advances the arm by `dt` seconds (finite, 0 < dt ≤ 1), releasing due commands at their
    /// exact release time, then draws a new measurement. Does not allocate.
    pub fn step(&mut self, dt: f64) -> Result<(), Error> {
        check_in_range("servo step dt", dt, f64::MIN_POSITIVE, 1.0)?;
        self.advance(dt);
        Ok(())
    }

    /// [`ServoArm::step`] without the check on `dt` (the caller guarantees a valid step).
    pub(crate) fn advance(&mut self, dt: f64) {
        let t_end = self.time_s + dt;
        loop {
            self.release_due();
            let next = self
                .queue
                .front_release()
                .filter(|&r| r < t_end - TIME_EPS_S);
            let seg_end = next.unwrap_or(t_end);
            while self.time_s < seg_end {
                self.apply_watchdog();
                let mut h = (seg_end - self.time_s).min(MAX_SEGMENT_S);
                // End the piece exactly at the watchdog deadline or at the end of the position
                // reference's interpolation ramp if it falls inside.
                let deadline = match self.mode {
                    ServoMode::Velocity => {
                        self.last_velocity_command_s + self.params.velocity_timeout_s
                    }
                    ServoMode::Position => self.ramp_end_s,
                };
                if deadline > self.time_s + TIME_EPS_S && deadline < self.time_s + h {
                    h = deadline - self.time_s;
                }
                let next_t = self.time_s + h;
                if next_t <= self.time_s {
                    // Cannot happen (both ends are representable and distinct); guards the
                    // loop against running forever.
                    break;
                }
                self.integrate(h);
                self.time_s = if next_t >= seg_end { seg_end } else { next_t };
            }
            self.time_s = seg_end;
            if next.is_none() {
                break;
            }
        }
        self.time_s = t_end;
        self.release_due();
        self.sample_measurement();
    }

    fn release_due(&mut self) {
        while let Some(r) = self.queue.front_release() {
            if r > self.time_s + TIME_EPS_S {
                break;
            }
            // Where the position reference is now: the new ramp starts there.
            let now = self.time_s;
            for i in 0..self.ref_from.len() {
                self.ref_from[i] = match self.mode {
                    ServoMode::Position => self.reference_at(i, now),
                    ServoMode::Velocity => self.q[i],
                };
            }
            if let Some(mode) = self.queue.pop_into(&mut self.target) {
                self.mode = mode;
                if mode == ServoMode::Velocity {
                    self.last_velocity_command_s = r;
                }
                let period = self.params.interpolation_s.min(r - self.last_release_s);
                self.ramp_start_s = now;
                self.ramp_end_s = now + period.max(0.0);
                self.last_release_s = r;
            }
        }
    }

    /// True while the position reference is still moving toward the target at time `t`.
    #[inline]
    fn ramping(&self, t: f64) -> bool {
        self.ramp_end_s - self.ramp_start_s > TIME_EPS_S && t < self.ramp_end_s - TIME_EPS_S
    }

    /// Position reference of joint `i` at time `t` (position mode).
    #[inline]
    fn reference_at(&self, i: usize, t: f64) -> f64 {
        if !self.ramping(t) {
            return self.target[i];
        }
        let s = ((t - self.ramp_start_s) / (self.ramp_end_s - self.ramp_start_s)).clamp(0.0, 1.0);
        self.ref_from[i] + (self.target[i] - self.ref_from[i]) * s
    }

    /// Rate of the position reference of joint `i` at time `t`, rad/s (position mode).
    #[inline]
    fn reference_rate(&self, i: usize, t: f64) -> f64 {
        if !self.ramping(t) {
            return 0.0;
        }
        (self.target[i] - self.ref_from[i]) / (self.ramp_end_s - self.ramp_start_s)
    }

    fn apply_watchdog(&mut self) {
        if self.mode == ServoMode::Velocity
            && self.time_s - self.last_velocity_command_s
                >= self.params.velocity_timeout_s - TIME_EPS_S
        {
            self.target.iter_mut().for_each(|v| *v = 0.0);
        }
    }

    /// Integrates every joint over `h` seconds, within which the velocity target, or the rate of
    /// the position reference, is constant.
    fn integrate(&mut self, h: f64) {
        let w = match self.mode {
            ServoMode::Position => self.omega_n,
            ServoMode::Velocity => self.omega_c,
        };
        let piece = Piece::new(h, w);
        // The shorter pieces of a saturated segment, computed when first needed.
        let mut short: Option<Piece> = None;
        let t = self.time_s;
        for i in 0..self.q.len() {
            let (q0, v0) = (self.q[i], self.qd[i]);
            let (r0, rate) = match self.mode {
                ServoMode::Position => (self.reference_at(i, t), self.reference_rate(i, t)),
                ServoMode::Velocity => (self.target[i], 0.0),
            };
            let (mut q1, mut v1, saturated) = self.piece(i, q0, v0, r0, rate, &piece);
            if saturated {
                // The limit is reached inside the segment: integrate the saturated loop in short
                // pieces (see the module documentation).
                let p = *short.get_or_insert_with(|| Piece::new(h / SATURATED_SUBSTEPS as f64, w));
                (q1, v1) = (q0, v0);
                for k in 0..SATURATED_SUBSTEPS {
                    let r = r0 + rate * p.h * k as f64;
                    (q1, v1, _) = self.piece(i, q1, v1, r, rate, &p);
                }
            }
            let vmax = self.vmax[i];
            v1 = v1.clamp(-vmax, vmax);
            if q1 < self.lower[i] {
                q1 = self.lower[i];
                v1 = v1.max(0.0);
            } else if q1 > self.upper[i] {
                q1 = self.upper[i];
                v1 = v1.min(0.0);
            }
            self.q[i] = q1;
            self.qd[i] = v1;
        }
    }

    /// One step of joint `i` over `p.h` from `(q0, v0)`, with the reference `r0` (position, or
    /// velocity in velocity mode) at its start moving at `rate` (position mode): the exact
    /// solution of the linear loop when neither the acceleration it asks for at the start nor its
    /// mean acceleration exceeds the limit (`false`); otherwise constant acceleration — the
    /// clamped mean acceleration of the exact step, or the clamped demand at its start when the
    /// step would not change the velocity that much — and `true`.
    #[inline]
    fn piece(&self, i: usize, q0: f64, v0: f64, r0: f64, rate: f64, p: &Piece) -> (f64, f64, bool) {
        let (h, w, x) = (p.h, p.w, p.decay);
        let (a0, q1, v1) = match self.mode {
            ServoMode::Position => {
                // e = q − r with r = r0 + rate·t; ε = e + 2·rate/ωₙ obeys the homogeneous loop.
                let e0 = q0 - r0;
                let lag = 2.0 * rate / w;
                let eps0 = e0 + lag;
                let deps0 = v0 - rate;
                let c = deps0 + w * eps0;
                let eps1 = (eps0 + c * h) * x;
                let deps1 = (deps0 - w * c * h) * x;
                (
                    -w * w * e0 - 2.0 * w * v0,
                    r0 + rate * h + eps1 - lag,
                    rate + deps1,
                )
            }
            ServoMode::Velocity => {
                let vr = r0.clamp(-self.vmax[i], self.vmax[i]);
                let dv = v0 - vr;
                (w * (vr - v0), q0 + vr * h + dv * (1.0 - x) / w, vr + dv * x)
            }
        };
        let a_max = self.params.max_acceleration_rad_s2;
        let mean = (v1 - v0) / h;
        if a0.abs() <= a_max && mean.abs() <= a_max {
            return (q1, v1, false);
        }
        let a = if mean.abs() > a_max { mean } else { a0 }.clamp(-a_max, a_max);
        let v = (v0 + a * h).clamp(-self.vmax[i], self.vmax[i]);
        (q0 + 0.5 * (v0 + v) * h, v, true)
    }

    fn sample_measurement(&mut self) {
        self.q_meas.copy_from_slice(&self.q);
        self.position_noise.perturb(&mut self.q_meas);
        self.qd_meas.copy_from_slice(&self.qd);
        self.velocity_noise.perturb(&mut self.qd_meas);
    }

    /// Measured joint positions (true + encoder noise), drawn at the last step. This is what a
    /// controller sees.
    pub fn measured_q(&self) -> &[f64] {
        &self.q_meas
    }

    /// Measured joint velocities (true + noise), drawn at the last step.
    pub fn measured_qd(&self) -> &[f64] {
        &self.qd_meas
    }

    /// True joint positions (ground truth; a controller must not use them).
    pub fn true_q(&self) -> &[f64] {
        &self.q
    }

    /// True joint velocities (ground truth).
    pub fn true_qd(&self) -> &[f64] {
        &self.qd
    }
}

/// A piece of a segment: its length `h`, the loop's rate `w` (ωₙ or ω_c) and `e^{−w·h}`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    h: f64,
    w: f64,
    decay: f64,
}

impl Piece {
    fn new(h: f64, w: f64) -> Self {
        Self {
            h,
            w,
            decay: (-w * h).exp(),
        }
    }
}

fn joint_what(i: usize) -> &'static str {
    const NAMES: [&str; 8] = [
        "initial position of joint 0",
        "initial position of joint 1",
        "initial position of joint 2",
        "initial position of joint 3",
        "initial position of joint 4",
        "initial position of joint 5",
        "initial position of joint 6",
        "initial position of joint 7",
    ];
    NAMES.get(i).copied().unwrap_or("initial joint position")
}
