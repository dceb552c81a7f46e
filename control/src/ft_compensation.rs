//! Bias and gravity compensation of the force/torque reading.
//!
//! ```text
//! contact wrench (sensor frame) = reading − bias − payload weight(R_base_sensor)
//! ```
//!
//! The payload weight comes from the URDF inertials below the sensor ([`Payload`]), rotated by the
//! controller's own forward kinematics of the measured joints. The bias is estimated at start-up
//! in free space: the mean of `reading − payload weight` over [`FtCompensator::tare_samples`]
//! samples while the arm holds still. Inertial loads of the payload (`m·a`) are neglected; at
//! scanning accelerations below 1 m/s² they stay under 0.04 N for the 0.35 kg probe.

use nalgebra::{Matrix3, Vector3};

use crate::payload::{Payload, Wrench};

/// One force/torque sample as the controller receives it (ATI convention: the load that the tool
/// side applies to the sensor, `ft_sensor` frame, torque about its origin; pressing the probe into
/// the patient reads as negative Fz).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FtSample {
    /// Time the sample was taken, s, on the controller's clock.
    pub stamp_s: f64,
    /// Force, N.
    pub force_n: Vector3<f64>,
    /// Torque, N·m.
    pub torque_nm: Vector3<f64>,
    /// True when the sensor reports that an axis exceeded its calibrated range.
    pub saturated: bool,
}

impl FtSample {
    /// A zero sample at `stamp_s`.
    pub fn zero(stamp_s: f64) -> Self {
        Self {
            stamp_s,
            force_n: Vector3::zeros(),
            torque_nm: Vector3::zeros(),
            saturated: false,
        }
    }

    /// The sample as a wrench.
    pub fn wrench(&self) -> Wrench {
        Wrench {
            force_n: self.force_n,
            torque_nm: self.torque_nm,
        }
    }

    /// True when the stamp and all six values are finite.
    pub fn is_finite(&self) -> bool {
        self.stamp_s.is_finite() && self.wrench().is_finite()
    }
}

/// Removes the sensor bias and the payload's weight from readings. Does not allocate.
#[derive(Clone, Debug)]
pub struct FtCompensator {
    payload: Payload,
    bias: Wrench,
    sum: Wrench,
    count: usize,
    tare_samples: usize,
}

impl FtCompensator {
    /// A compensator for `payload` that tares over `tare_samples` samples (at least 1).
    pub fn new(payload: Payload, tare_samples: usize) -> Self {
        Self {
            payload,
            bias: Wrench::zero(),
            sum: Wrench::zero(),
            count: 0,
            tare_samples: tare_samples.max(1),
        }
    }

    /// The payload below the sensor.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The estimated bias (zero until tared).
    pub fn bias(&self) -> Wrench {
        self.bias
    }

    /// Samples averaged per tare.
    pub fn tare_samples(&self) -> usize {
        self.tare_samples
    }

    /// True once a tare has completed.
    pub fn is_tared(&self) -> bool {
        self.count >= self.tare_samples
    }

    /// Forgets the bias estimate and starts a new tare.
    pub fn restart_tare(&mut self) {
        self.sum = Wrench::zero();
        self.count = 0;
    }

    /// Adds one free-space sample to the tare (ignored once complete); returns true when the tare
    /// is complete. The arm must hold still and touch nothing.
    pub fn add_tare_sample(&mut self, sample: &FtSample, r_base_sensor: &Matrix3<f64>) -> bool {
        if self.is_tared() {
            return true;
        }
        let g = self.payload.gravity_wrench(r_base_sensor);
        self.sum = self.sum.plus(&sample.wrench().minus(&g));
        self.count += 1;
        if self.is_tared() {
            let k = 1.0 / self.count as f64;
            self.bias = Wrench {
                force_n: self.sum.force_n * k,
                torque_nm: self.sum.torque_nm * k,
            };
        }
        self.is_tared()
    }

    /// The contact wrench in the sensor frame (about the sensor origin): the load from everything
    /// but the payload's weight and the bias.
    pub fn compensate(&self, sample: &FtSample, r_base_sensor: &Matrix3<f64>) -> Wrench {
        let g = self.payload.gravity_wrench(r_base_sensor);
        sample.wrench().minus(&self.bias).minus(&g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tare_then_compensate_recovers_contact_load() {
        let payload = Payload {
            mass_kg: 0.35,
            com_m: Vector3::new(0.0, 0.0, 0.09),
        };
        let bias = Wrench {
            force_n: Vector3::new(0.3, -0.2, 0.4),
            torque_nm: Vector3::new(0.01, 0.0, -0.02),
        };
        let mut c = FtCompensator::new(payload, 10);
        let r0 = Matrix3::identity();
        let reading = |r: &Matrix3<f64>, contact: &Wrench| {
            let w = payload.gravity_wrench(r).plus(&bias).plus(contact);
            FtSample {
                stamp_s: 0.0,
                force_n: w.force_n,
                torque_nm: w.torque_nm,
                saturated: false,
            }
        };
        for i in 0..10 {
            assert_eq!(
                c.add_tare_sample(&reading(&r0, &Wrench::zero()), &r0),
                i == 9
            );
        }
        let r1 = telecho_core::rotation_from_rpy(0.3, -0.5, 1.0);
        let contact = Wrench {
            force_n: Vector3::new(0.5, 1.0, -8.0),
            torque_nm: Vector3::new(0.1, -0.05, 0.0),
        };
        let w = c.compensate(&reading(&r1, &contact), &r1);
        assert!((w.force_n - contact.force_n).norm() < 1e-12);
        assert!((w.torque_nm - contact.torque_nm).norm() < 1e-12);
    }
}
