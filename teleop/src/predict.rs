//! Operator-motion prediction at the patient side.
//!
//! A command arrives `d` seconds after it was sent; the operator's hand has moved on since.
//! [`MotionPredictor`] tracks the commanded probe position with an alpha–beta filter (position
//! and velocity, per axis), stepping on the console's send times (jitter-free: they are the
//! times the samples were taken) and extrapolates the newest command over its measured age at
//! arrival. The lead is bounded ([`PredictorConfig::max_horizon_s`],
//! [`PredictorConfig::max_lead_m`]) so a glitch cannot throw the target far; orientation is not
//! extrapolated.

use nalgebra::Vector3;

use crate::Error;

/// Predictor settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictorConfig {
    /// Position gain α (0, 1].
    pub alpha: f64,
    /// Velocity gain β (0, 2); `α² / (2 − α)` is critically damped.
    pub beta: f64,
    /// Longest extrapolation, s.
    pub max_horizon_s: f64,
    /// Largest extrapolated displacement, m.
    pub max_lead_m: f64,
    /// A gap in the command stream longer than this restarts the filter, s.
    pub restart_gap_s: f64,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        let alpha = 0.5;
        Self {
            alpha,
            beta: alpha * alpha / (2.0 - alpha),
            max_horizon_s: 0.5,
            max_lead_m: 0.02,
            restart_gap_s: 0.2,
        }
    }
}

impl PredictorConfig {
    /// Refuses gains outside the stable region and non-positive bounds.
    pub fn validate(&self) -> Result<(), Error> {
        let ok = self.alpha > 0.0
            && self.alpha <= 1.0
            && self.beta > 0.0
            && self.beta < 2.0
            && self.beta < 4.0 - 2.0 * self.alpha
            && self.max_horizon_s.is_finite()
            && self.max_horizon_s >= 0.0
            && self.max_lead_m.is_finite()
            && self.max_lead_m >= 0.0
            && self.restart_gap_s.is_finite()
            && self.restart_gap_s > 0.0;
        if !ok {
            return Err(Error::config(format!(
                "invalid predictor settings {self:?}"
            )));
        }
        Ok(())
    }
}

/// The alpha–beta predictor.
#[derive(Clone, Debug)]
pub struct MotionPredictor {
    config: PredictorConfig,
    position: Vector3<f64>,
    velocity: Vector3<f64>,
    last_t: Option<f64>,
}

impl MotionPredictor {
    /// A predictor with no history.
    pub fn new(config: PredictorConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            config,
            position: Vector3::zeros(),
            velocity: Vector3::zeros(),
            last_t: None,
        })
    }

    /// Feeds the commanded position `z` sampled at `t_s` (sender's clock).
    pub fn update(&mut self, t_s: f64, z: &Vector3<f64>) {
        let dt = match self.last_t {
            Some(last) if t_s > last && t_s - last <= self.config.restart_gap_s => t_s - last,
            Some(last) if t_s <= last => return, // out of order or repeated: ignore
            _ => {
                self.position = *z;
                self.velocity = Vector3::zeros();
                self.last_t = Some(t_s);
                return;
            }
        };
        let predicted = self.position + self.velocity * dt;
        let residual = z - predicted;
        self.position = predicted + residual * self.config.alpha;
        self.velocity += residual * (self.config.beta / dt);
        self.last_t = Some(t_s);
    }

    /// Estimated velocity, m/s.
    pub fn velocity(&self) -> Vector3<f64> {
        self.velocity
    }

    /// The newest command's position `z` extrapolated over `horizon_s` with the estimated
    /// velocity, both bounded.
    pub fn predict(&self, z: &Vector3<f64>, horizon_s: f64) -> Vector3<f64> {
        if self.last_t.is_none() || !horizon_s.is_finite() || horizon_s <= 0.0 {
            return *z;
        }
        let h = horizon_s.min(self.config.max_horizon_s);
        let mut lead = self.velocity * h;
        let n = lead.norm();
        if n > self.config.max_lead_m {
            lead *= self.config.max_lead_m / n;
        }
        z + lead
    }

    /// Forgets the history (new operator or a long gap).
    pub fn reset(&mut self) {
        self.last_t = None;
        self.velocity = Vector3::zeros();
    }
}
