//! The 6-axis force/torque sensor between the flange and the probe holder.
//!
//! # Reading
//!
//! A reading is the wrench that the tool side (probe holder + probe, everything below the
//! measurement plane) exerts on the sensor, expressed in the `ft_sensor` frame, torque about the
//! `ft_sensor` origin — ATI's convention: the load applied to the tool side. In static
//! equilibrium that is the sum of the external loads on the tool: the contact force at the
//! probe face plus the tool's weight. With the probe pressed into the patient along its axis
//! (`probe_tip` +z, parallel to `ft_sensor` +z in the bundled URDFs), the tissue pushes the probe
//! back, so **pressing reads as negative Fz**.
//!
//! ```text
//! reading = saturate(load + bias + noise)        per axis
//! load    = contact wrench + payload weight       (sensor frame, at the sensor origin)
//! ```
//!
//! - **payload**: the mass and centre of mass of the links rigidly attached below the sensor
//!   link, from their URDF `<inertial>` tags ([`Payload::from_robot`]); the sensor link's own
//!   mass counts as the arm's. Gravity is `9.81 m/s²` along −z of the robot base. The inertial
//!   forces of the payload (`m·a` of an accelerating probe) are neglected: at scanning
//!   accelerations below 1 m/s² they stay under 0.04 N for the 0.35 kg payload;
//! - **bias**: a constant offset drawn once from the seed, uniform within
//!   ± [`FtSensorParams::max_force_bias_n`] / [`FtSensorParams::max_torque_bias_nm`] per axis
//!   (strain-gauge zero offset; a controller tares it);
//! - **noise**: white Gaussian, σ [`FtSensorParams::force_noise_n`] and
//!   [`FtSensorParams::torque_noise_nm`] per axis, drawn at every sample;
//! - **saturation**: each axis is clamped to its calibrated range and the reading flags
//!   `saturated`. The default ranges are those of an ATI Mini40 with calibration SI-80-4
//!   (Fx, Fy ±80 N; Fz ±240 N; Tx, Ty, Tz ±4 N·m; ATI Industrial Automation, Mini40 F/T sensor
//!   specifications).
//!
//! The world samples the sensor every millisecond ([`FT_RATE_HZ`]).
//!
//! # Faults
//!
//! [`FtSensor::set_fault`] injects a failure for the controller's safety tests: [`FtFault::Nan`]
//! (every value NaN), [`FtFault::Stale`] (the reading, timestamp included, stops updating),
//! [`FtFault::Stuck`] (values frozen, timestamp still advancing) and [`FtFault::Spike`] (one
//! sample with an added wrench, after which the fault clears itself). Noise is drawn at every
//! sample whatever the fault, so injecting a fault does not shift the noise stream of later
//! samples.

use nalgebra::Vector3;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::check_in_range;
use crate::noise::GaussianNoise;
use crate::Error;

/// Sampling rate of the sensor in the simulated world, Hz.
pub const FT_RATE_HZ: f64 = 1000.0;
/// The payload and wrench types live in `telecho-control` so that the simulated sensor and the
/// controller's gravity compensation share one implementation.
pub use telecho_control::payload::{Payload, Wrench, GRAVITY_M_S2};

/// Settings of the F/T sensor model. SI units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FtSensorParams {
    /// Force noise σ per axis, N (default 0.05; valid 0–10).
    pub force_noise_n: f64,
    /// Torque noise σ per axis, N·m (default 0.002; valid 0–1).
    pub torque_noise_nm: f64,
    /// Force bias drawn uniformly within ± this per axis, N (default 0.5; valid 0–50).
    pub max_force_bias_n: f64,
    /// Torque bias drawn uniformly within ± this per axis, N·m (default 0.02; valid 0–5).
    pub max_torque_bias_nm: f64,
    /// Calibrated force range per axis (saturation), N (default ATI Mini40 SI-80-4: 80, 80, 240).
    pub force_range_n: [f64; 3],
    /// Calibrated torque range per axis, N·m (default 4, 4, 4).
    pub torque_range_nm: [f64; 3],
}

impl Default for FtSensorParams {
    fn default() -> Self {
        Self {
            force_noise_n: 0.05,
            torque_noise_nm: 0.002,
            max_force_bias_n: 0.5,
            max_torque_bias_nm: 0.02,
            force_range_n: [80.0, 80.0, 240.0],
            torque_range_nm: [4.0, 4.0, 4.0],
        }
    }
}

impl FtSensorParams {
    /// Checks every field is finite and within its valid range.
    pub fn validate(&self) -> Result<(), Error> {
        check_in_range("F/T force_noise_n", self.force_noise_n, 0.0, 10.0)?;
        check_in_range("F/T torque_noise_nm", self.torque_noise_nm, 0.0, 1.0)?;
        check_in_range("F/T max_force_bias_n", self.max_force_bias_n, 0.0, 50.0)?;
        check_in_range("F/T max_torque_bias_nm", self.max_torque_bias_nm, 0.0, 5.0)?;
        for r in self.force_range_n {
            check_in_range("F/T force_range_n", r, 1e-3, 1e5)?;
        }
        for r in self.torque_range_nm {
            check_in_range("F/T torque_range_nm", r, 1e-4, 1e4)?;
        }
        Ok(())
    }
}

/// A fault to inject into the sensor output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FtFault {
    /// Every value reads NaN (timestamp still advancing).
    Nan,
    /// The output stops updating: same values, same timestamp as the last good sample.
    Stale,
    /// The values freeze at the last good sample while the timestamp keeps advancing.
    Stuck,
    /// The next sample has this wrench added (then the fault clears itself).
    Spike {
        /// Added force, N (sensor frame).
        force_n: Vector3<f64>,
        /// Added torque, N·m.
        torque_nm: Vector3<f64>,
    },
}

/// One sensor sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FtReading {
    /// Simulation time of the sample, s.
    pub stamp_s: f64,
    /// Force, N, `ft_sensor` frame.
    pub force_n: Vector3<f64>,
    /// Torque about the `ft_sensor` origin, N·m.
    pub torque_nm: Vector3<f64>,
    /// True when at least one axis exceeded its range (and was clamped).
    pub saturated: bool,
}

impl FtReading {
    /// The reading as a [`Wrench`].
    pub fn wrench(&self) -> Wrench {
        Wrench {
            force_n: self.force_n,
            torque_nm: self.torque_nm,
        }
    }
}

/// The simulated F/T sensor. See the module documentation.
#[derive(Clone, Debug)]
pub struct FtSensor {
    params: FtSensorParams,
    bias: Wrench,
    force_noise: GaussianNoise,
    torque_noise: GaussianNoise,
    fault: Option<FtFault>,
    last: FtReading,
}

impl FtSensor {
    /// A sensor with validated parameters; `seed` draws the bias and drives the noise.
    pub fn new(params: FtSensorParams, seed: u64) -> Result<Self, Error> {
        params.validate()?;
        let seeds = crate::world::derive_seeds::<3>(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seeds[0]);
        let mut uniform = |m: f64| {
            if m > 0.0 {
                rng.random_range(-m..m)
            } else {
                0.0
            }
        };
        let bias = Wrench {
            force_n: Vector3::from_fn(|_, _| uniform(params.max_force_bias_n)),
            torque_nm: Vector3::from_fn(|_, _| uniform(params.max_torque_bias_nm)),
        };
        Ok(Self {
            bias,
            force_noise: GaussianNoise::new(seeds[1], params.force_noise_n)?,
            torque_noise: GaussianNoise::new(seeds[2], params.torque_noise_nm)?,
            fault: None,
            last: FtReading {
                stamp_s: 0.0,
                force_n: bias.force_n,
                torque_nm: bias.torque_nm,
                saturated: false,
            },
            params,
        })
    }

    /// The settings.
    pub fn params(&self) -> &FtSensorParams {
        &self.params
    }

    /// The constant bias drawn for this sensor (ground truth).
    pub fn bias(&self) -> Wrench {
        self.bias
    }

    /// The injected fault, if any.
    pub fn fault(&self) -> Option<FtFault> {
        self.fault
    }

    /// Injects (`Some`) or clears (`None`) a fault, from the next sample on.
    pub fn set_fault(&mut self, fault: Option<FtFault>) {
        self.fault = fault;
    }

    /// The last sample.
    pub fn last(&self) -> FtReading {
        self.last
    }

    /// Samples the sensor at `stamp_s` under the true `load` (sensor frame, about its origin;
    /// contact + payload weight). Does not allocate.
    pub fn measure(&mut self, stamp_s: f64, load: &Wrench) -> FtReading {
        let mut noise = [0.0; 6];
        self.force_noise.perturb(&mut noise[..3]);
        self.torque_noise.perturb(&mut noise[3..]);
        let mut values = load.plus(&self.bias).to_array();
        for (v, n) in values.iter_mut().zip(noise) {
            *v += n;
        }
        if let Some(FtFault::Spike { force_n, torque_nm }) = self.fault {
            let s = Wrench { force_n, torque_nm }.to_array();
            for (v, d) in values.iter_mut().zip(s) {
                *v += d;
            }
            self.fault = None;
        }
        let ranges = [
            self.params.force_range_n[0],
            self.params.force_range_n[1],
            self.params.force_range_n[2],
            self.params.torque_range_nm[0],
            self.params.torque_range_nm[1],
            self.params.torque_range_nm[2],
        ];
        let mut saturated = false;
        for (v, r) in values.iter_mut().zip(ranges) {
            if v.abs() > r {
                saturated = true;
                *v = v.clamp(-r, r);
            }
        }
        let fresh = FtReading {
            stamp_s,
            force_n: Vector3::new(values[0], values[1], values[2]),
            torque_nm: Vector3::new(values[3], values[4], values[5]),
            saturated,
        };
        self.last = match self.fault {
            None | Some(FtFault::Spike { .. }) => fresh,
            Some(FtFault::Nan) => FtReading {
                stamp_s,
                force_n: Vector3::repeat(f64::NAN),
                torque_nm: Vector3::repeat(f64::NAN),
                saturated: false,
            },
            Some(FtFault::Stale) => self.last,
            Some(FtFault::Stuck) => FtReading {
                stamp_s,
                ..self.last
            },
        };
        self.last
    }
}
