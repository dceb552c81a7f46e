//! Model-mediated haptics at the console.
//!
//! The force the operator feels is not the delayed measured force: it is rendered locally, at
//! the haptic rate, from the contact model the patient side estimates and streams (a plane with
//! a point, an outward normal, stiffness and damping). The haptic loop therefore never contains
//! the network delay and stays stable at any latency; the delay only makes the model a little
//! old.
//!
//! [`HapticRenderer`] computes `F = n · clamp(k·p − b·(v·n), 0, F_max)` for a penetration
//! `p = (point − x)·n > 0`. Between model updates this field is passive: a saturated spring
//! (potential `U(p)`) whose force the damper only ever lowers when the hand leaves and raises
//! when it presses in. Energy can only be generated when the model changes under the hand (the
//! surface jumping towards it, the stiffness rising while pressed in). An [`EnergyTank`] guards
//! that: it books the energy the operator puts in and gets back (the tank level is the initial
//! budget plus absorbed minus delivered energy), a new model is accepted only if its potential
//! at the hand fits in the tank, otherwise its surface is moved towards the hand until it does
//! (the force stays continuous instead of jumping), and as a last line of defence the force of
//! one cycle is scaled down when it would draw more than the tank holds. The energy delivered
//! to the operator over any interval is then at most the energy absorbed plus the initial
//! budget, the discrete passivity condition, and the force never chatters.
//!
//! [`HapticDevice`] abstracts the hand controller; [`SimulatedOperator`] is a human arm as a
//! mass–spring–damper following a reference path, for tests.

use std::fmt;

use nalgebra::Vector3;

use crate::wire::ContactModel;
use crate::Error;

/// Renderer settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HapticConfig {
    /// Largest rendered force, N.
    pub max_force_n: f64,
    /// Energy budget at start, J.
    pub tank_initial_j: f64,
    /// Most free energy the tank keeps beyond the contact's potential, J (what the operator
    /// puts in beyond that is dissipated).
    pub tank_max_j: f64,
    /// Guard with the energy tank (off only to demonstrate what it prevents).
    pub passivity: bool,
}

impl Default for HapticConfig {
    fn default() -> Self {
        Self {
            max_force_n: 15.0,
            tank_initial_j: 0.01,
            tank_max_j: 0.1,
            passivity: true,
        }
    }
}

/// The energy tank / passivity observer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnergyTank {
    level_j: f64,
    max_j: f64,
    absorbed_j: f64,
    delivered_j: f64,
}

impl EnergyTank {
    /// A tank holding `initial_j`, keeping at most `max_j` of free energy.
    pub fn new(initial_j: f64, max_j: f64) -> Self {
        Self {
            level_j: initial_j.clamp(0.0, max_j),
            max_j,
            absorbed_j: 0.0,
            delivered_j: 0.0,
        }
    }

    /// Current level, J.
    pub fn level_j(&self) -> f64 {
        self.level_j
    }

    /// Total energy the operator put into the environment, J.
    pub fn absorbed_j(&self) -> f64 {
        self.absorbed_j
    }

    /// Total energy the environment gave to the operator, J.
    pub fn delivered_j(&self) -> f64 {
        self.delivered_j
    }

    /// Books the work of `force_n` held during a step of `dt_s` at velocity `velocity_m_s`.
    pub fn book(&mut self, force_n: &Vector3<f64>, velocity_m_s: &Vector3<f64>, dt_s: f64) {
        let w = force_n.dot(velocity_m_s) * dt_s; // > 0: delivered to the operator
        if w > 0.0 {
            self.delivered_j += w;
        } else {
            self.absorbed_j -= w;
        }
        self.level_j -= w;
    }

    /// Keeps at most `max_j` above `reserved_j` (the potential the contact holds).
    fn cap(&mut self, reserved_j: f64) {
        self.level_j = self.level_j.min(reserved_j + self.max_j);
    }

    /// Scales `force_n` so that holding it for `dt_s` at `velocity_m_s` does not take more
    /// energy than the tank holds. Returns the force and whether it was limited.
    pub fn limit(
        &self,
        force_n: &Vector3<f64>,
        velocity_m_s: &Vector3<f64>,
        dt_s: f64,
    ) -> (Vector3<f64>, bool) {
        let w = force_n.dot(velocity_m_s) * dt_s;
        if w <= 0.0 || w <= self.level_j {
            return (*force_n, false);
        }
        (force_n * (self.level_j.max(0.0) / w), true)
    }
}

/// One rendered sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderedForce {
    /// The force to apply, N.
    pub force_n: Vector3<f64>,
    /// The model's force before the passivity guard (after the clamp), N.
    pub model_force_n: Vector3<f64>,
    /// Penetration into the surface, m (≤ 0: outside).
    pub penetration_m: f64,
    /// True when the tank scaled the force down.
    pub limited: bool,
}

/// Renders the contact force locally from the newest contact model.
#[derive(Clone, Debug)]
pub struct HapticRenderer {
    config: HapticConfig,
    model: Option<ContactModel>,
    pending: Option<Option<ContactModel>>,
    tank: EnergyTank,
    last_force: Vector3<f64>,
    shifted_m: f64,
}

impl HapticRenderer {
    /// A renderer with no model (renders zero).
    pub fn new(config: HapticConfig) -> Result<Self, Error> {
        let ok = config.max_force_n.is_finite()
            && config.max_force_n > 0.0
            && config.tank_initial_j.is_finite()
            && config.tank_initial_j >= 0.0
            && config.tank_max_j.is_finite()
            && config.tank_max_j >= config.tank_initial_j;
        if !ok {
            return Err(Error::config(format!("invalid haptic settings {config:?}")));
        }
        Ok(Self {
            tank: EnergyTank::new(config.tank_initial_j, config.tank_max_j),
            config,
            model: None,
            pending: None,
            last_force: Vector3::zeros(),
            shifted_m: 0.0,
        })
    }

    /// A new contact model (from the newest haptic feedback; `None`: no contact), taken over
    /// at the next [`HapticRenderer::render`] if the tank can pay for it.
    pub fn set_model(&mut self, model: Option<ContactModel>) {
        self.pending = Some(model);
    }

    /// The model being rendered (possibly with its surface moved towards the hand).
    pub fn model(&self) -> Option<&ContactModel> {
        self.model.as_ref()
    }

    /// How far the rendered surface was last moved towards the hand to keep the tank
    /// positive, m.
    pub fn surface_shift_m(&self) -> f64 {
        self.shifted_m
    }

    /// Potential energy of `model` at penetration `p` (saturated spring), J.
    fn potential(&self, k: f64, p: f64) -> f64 {
        if p <= 0.0 || k <= 0.0 {
            return 0.0;
        }
        let f_max = self.config.max_force_n;
        let p_sat = f_max / k;
        if p <= p_sat {
            0.5 * k * p * p
        } else {
            0.5 * f_max * p_sat + f_max * (p - p_sat)
        }
    }

    /// The penetration at which the potential is `u`.
    fn penetration_for(&self, k: f64, u: f64) -> f64 {
        if u <= 0.0 || k <= 0.0 {
            return 0.0;
        }
        let f_max = self.config.max_force_n;
        let p_sat = f_max / k;
        let u_sat = 0.5 * f_max * p_sat;
        if u <= u_sat {
            (2.0 * u / k).sqrt()
        } else {
            p_sat + (u - u_sat) / f_max
        }
    }

    fn penetration(m: &ContactModel, x: &Vector3<f64>) -> f64 {
        (m.point_m - x).dot(&m.normal)
    }

    /// Takes over a pending model, moving its surface towards the hand when its potential
    /// at the hand exceeds the tank.
    fn switch_model(&mut self, x: &Vector3<f64>) {
        let Some(new) = self.pending.take() else {
            return;
        };
        let Some(mut m) = new else {
            self.model = None;
            self.shifted_m = 0.0;
            return;
        };
        let u_old = self.model.as_ref().map_or(0.0, |o| {
            self.potential(o.stiffness_n_m, Self::penetration(o, x))
        });
        let p_new = Self::penetration(&m, x);
        let u_new = self.potential(m.stiffness_n_m, p_new);
        self.shifted_m = 0.0;
        // The level holds what the operator put in, so it covers the old potential; a new
        // model may store no more at the hand than the level (nor less than before, when
        // an earlier overdraft left the level short).
        if self.config.passivity && u_new > u_old && u_new > self.tank.level_j() {
            let p = self.penetration_for(m.stiffness_n_m, self.tank.level_j().max(u_old));
            let shift = (p_new - p).max(0.0);
            m.point_m -= m.normal.into_inner() * shift;
            self.shifted_m = shift;
        }
        self.model = Some(m);
    }

    /// The tank.
    pub fn tank(&self) -> &EnergyTank {
        &self.tank
    }

    /// The model's force at `position_m` moving at `velocity_m_s` (clamped, unguarded), and
    /// the penetration.
    pub fn model_force(
        &self,
        position_m: &Vector3<f64>,
        velocity_m_s: &Vector3<f64>,
    ) -> (Vector3<f64>, f64) {
        let Some(m) = &self.model else {
            return (Vector3::zeros(), f64::NEG_INFINITY);
        };
        let n = m.normal.into_inner();
        let p = (m.point_m - position_m).dot(&n);
        if p <= 0.0 {
            return (Vector3::zeros(), p);
        }
        let f = (m.stiffness_n_m * p - m.damping_n_s_m * velocity_m_s.dot(&n))
            .clamp(0.0, self.config.max_force_n);
        (n * f, p)
    }

    /// One haptic cycle: books the work of the force held since the last call over `dt_s`
    /// at the measured velocity, then renders the new force.
    pub fn render(
        &mut self,
        position_m: &Vector3<f64>,
        velocity_m_s: &Vector3<f64>,
        dt_s: f64,
    ) -> RenderedForce {
        let dt = if dt_s.is_finite() && dt_s > 0.0 {
            dt_s
        } else {
            0.0
        };
        let finite = position_m
            .iter()
            .chain(velocity_m_s.iter())
            .all(|v| v.is_finite());
        if !finite {
            // A broken device reading: render nothing.
            self.last_force = Vector3::zeros();
            return RenderedForce {
                force_n: Vector3::zeros(),
                model_force_n: Vector3::zeros(),
                penetration_m: f64::NEG_INFINITY,
                limited: false,
            };
        }
        self.tank.book(&self.last_force, velocity_m_s, dt);
        self.switch_model(position_m);
        let (model_force_n, penetration_m) = self.model_force(position_m, velocity_m_s);
        let (force_n, limited) = if self.config.passivity {
            self.tank.limit(&model_force_n, velocity_m_s, dt)
        } else {
            (model_force_n, false)
        };
        self.last_force = force_n;
        let reserved = self.model.as_ref().map_or(0.0, |m| {
            self.potential(m.stiffness_n_m, Self::penetration(m, position_m))
        });
        self.tank.cap(reserved);
        RenderedForce {
            force_n,
            model_force_n,
            penetration_m,
            limited,
        }
    }
}

/// What a haptic device measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSample {
    /// Handle position (mapped into the robot base frame), m.
    pub position_m: Vector3<f64>,
    /// Handle velocity, m/s.
    pub velocity_m_s: Vector3<f64>,
}

/// A haptic hand controller: read its handle, command a force.
pub trait HapticDevice {
    /// The newest handle state.
    fn sample(&mut self) -> DeviceSample;
    /// Applies `force_n` until the next call.
    fn set_force(&mut self, force_n: Vector3<f64>);
}

/// The operator's arm: mass, and the stiffness and damping with which the arm follows the
/// intended path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArmModel {
    /// Effective mass of hand + handle, kg.
    pub mass_kg: f64,
    /// Stiffness of the arm about the intended position, N/m.
    pub stiffness_n_m: f64,
    /// Damping, N·s/m.
    pub damping_n_s_m: f64,
}

impl Default for ArmModel {
    /// A relaxed grasp: 1 kg, 300 N/m, ζ ≈ 0.7.
    fn default() -> Self {
        Self {
            mass_kg: 1.0,
            stiffness_n_m: 300.0,
            damping_n_s_m: 24.0,
        }
    }
}

/// A simulated operator: a mass–spring–damper arm pulled along `path(t)` and pushed by the
/// device force. Semi-implicit Euler.
pub struct SimulatedOperator {
    arm: ArmModel,
    path: Box<dyn Fn(f64) -> Vector3<f64> + Send>,
    t_s: f64,
    position_m: Vector3<f64>,
    velocity_m_s: Vector3<f64>,
    force_n: Vector3<f64>,
}

impl fmt::Debug for SimulatedOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedOperator")
            .field("arm", &self.arm)
            .field("t_s", &self.t_s)
            .field("position_m", &self.position_m)
            .field("velocity_m_s", &self.velocity_m_s)
            .finish_non_exhaustive()
    }
}

impl SimulatedOperator {
    /// An operator at rest on the start of `path`.
    pub fn new(
        arm: ArmModel,
        path: impl Fn(f64) -> Vector3<f64> + Send + 'static,
    ) -> Result<Self, Error> {
        let ok = [arm.mass_kg, arm.stiffness_n_m, arm.damping_n_s_m]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0);
        if !ok {
            return Err(Error::config(format!("invalid arm model {arm:?}")));
        }
        let start = path(0.0);
        Ok(Self {
            arm,
            path: Box::new(path),
            t_s: 0.0,
            position_m: start,
            velocity_m_s: Vector3::zeros(),
            force_n: Vector3::zeros(),
        })
    }

    /// Simulation time, s.
    pub fn time_s(&self) -> f64 {
        self.t_s
    }

    /// Where the operator means to be now.
    pub fn intended_m(&self) -> Vector3<f64> {
        (self.path)(self.t_s)
    }

    /// Advances by `dt_s`.
    pub fn step(&mut self, dt_s: f64) {
        let h = 1e-4;
        let x_ref = (self.path)(self.t_s);
        let v_ref = ((self.path)(self.t_s + h) - x_ref) / h;
        let a = (self.arm.stiffness_n_m * (x_ref - self.position_m)
            + self.arm.damping_n_s_m * (v_ref - self.velocity_m_s)
            + self.force_n)
            / self.arm.mass_kg;
        self.velocity_m_s += a * dt_s;
        self.position_m += self.velocity_m_s * dt_s;
        self.t_s += dt_s;
    }
}

impl HapticDevice for SimulatedOperator {
    fn sample(&mut self) -> DeviceSample {
        DeviceSample {
            position_m: self.position_m,
            velocity_m_s: self.velocity_m_s,
        }
    }

    fn set_force(&mut self, force_n: Vector3<f64>) {
        self.force_n = if force_n.iter().all(|v| v.is_finite()) {
            force_n
        } else {
            Vector3::zeros()
        };
    }
}
