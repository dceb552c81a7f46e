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
//! - **acceleration limit** [`ServoParams::max_acceleration_rad_s2`] (all joints): when the loop
//!   asks for more, the joint accelerates at the limit for that step instead;
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
//! Between command releases the reference is constant, so each segment is integrated with the
//! exact solution of the linear loop (zero-order hold): for position mode with `e = q − q_ref`,
//! `e(t) = (e₀ + (q̇₀ + ωₙe₀)t)·e^{−ωₙt}`, `q̇(t) = (q̇₀ − ωₙ(q̇₀ + ωₙe₀)t)·e^{−ωₙt}`; for velocity
//! mode `q̇(t) = q̇_ref + (q̇₀ − q̇_ref)e^{−ω_c t}`. When the acceleration the loop asks for at the
//! start of a segment, or the segment's mean acceleration, exceeds the limit, the segment uses
//! constant acceleration at the limit instead. Segments are at most 1 ms long and end exactly at
//! command releases and at the watchdog deadline. [`ServoArm::step`] does not allocate.
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
        }
    }
}

impl ServoParams {
    /// Checks every field is finite (where required) and within its valid range.
    pub fn validate(&self) -> Result<(), Error> {
        check_in_range("servo bandwidth_hz", self.bandwidth_hz, 0.5, 500.0)?;
        check_in_range("servo latency_s", self.latency_s, 0.0, 0.5)?;
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
                // End the piece exactly at the watchdog deadline if it falls inside.
                let deadline = self.last_velocity_command_s + self.params.velocity_timeout_s;
                if self.mode == ServoMode::Velocity
                    && deadline > self.time_s
                    && deadline < self.time_s + h
                {
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
            if let Some(mode) = self.queue.pop_into(&mut self.target) {
                self.mode = mode;
                if mode == ServoMode::Velocity {
                    self.last_velocity_command_s = r;
                }
            }
        }
    }

    fn apply_watchdog(&mut self) {
        if self.mode == ServoMode::Velocity
            && self.time_s - self.last_velocity_command_s
                >= self.params.velocity_timeout_s - TIME_EPS_S
        {
            self.target.iter_mut().for_each(|v| *v = 0.0);
        }
    }

    /// Integrates every joint over `h` seconds with the targets held constant.
    fn integrate(&mut self, h: f64) {
        let a_max = self.params.max_acceleration_rad_s2;
        for i in 0..self.q.len() {
            let (q0, v0) = (self.q[i], self.qd[i]);
            let vmax = self.vmax[i];
            let (mut q1, mut v1) = match self.mode {
                ServoMode::Position => {
                    let w = self.omega_n;
                    let e0 = q0 - self.target[i];
                    let a0 = -w * w * e0 - 2.0 * w * v0;
                    let x = (-w * h).exp();
                    let c = v0 + w * e0;
                    let e1 = (e0 + c * h) * x;
                    let v1 = (v0 - w * c * h) * x;
                    limit_acceleration(q0, v0, self.target[i] + e1, v1, a0, a_max, h)
                }
                ServoMode::Velocity => {
                    let w = self.omega_c;
                    let vr = self.target[i].clamp(-vmax, vmax);
                    let a0 = w * (vr - v0);
                    let x = (-w * h).exp();
                    let dv = v0 - vr;
                    let (q1, v1) = (q0 + vr * h + dv * (1.0 - x) / w, vr + dv * x);
                    limit_acceleration(q0, v0, q1, v1, a0, a_max, h)
                }
            };
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

/// Keeps the exact step `(q1, v1)` when neither the acceleration asked for at its start (`a0`)
/// nor its mean acceleration exceeds `a_max`; otherwise moves at constant acceleration: the
/// clamped mean acceleration (or the clamped `a0` when the step would not change the velocity).
fn limit_acceleration(
    q0: f64,
    v0: f64,
    q1: f64,
    v1: f64,
    a0: f64,
    a_max: f64,
    h: f64,
) -> (f64, f64) {
    let mean = (v1 - v0) / h;
    if a0.abs() <= a_max && mean.abs() <= a_max {
        return (q1, v1);
    }
    let a = if mean.abs() > a_max { mean } else { a0 }.clamp(-a_max, a_max);
    let v = v0 + a * h;
    (q0 + 0.5 * (v0 + v) * h, v)
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
