//! Seeded noise sources for simulated sensors.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::ErrorKind;
use crate::Error;

/// Zero-mean Gaussian noise with a fixed standard deviation, reproducible from its seed.
///
/// ChaCha8 is used because its stream is specified (portable across platforms and `rand`
/// versions of the same major), which deterministic replay needs.
#[derive(Clone, Debug)]
pub struct GaussianNoise {
    rng: ChaCha8Rng,
    normal: Normal<f64>,
    sigma: f64,
}

impl GaussianNoise {
    /// Noise of standard deviation `sigma` (in the unit of the quantity it perturbs).
    pub fn new(seed: u64, sigma: f64) -> Result<Self, Error> {
        if !sigma.is_finite() || sigma < 0.0 {
            return Err(ErrorKind::InvalidParameter {
                what: "noise standard deviation",
                value: sigma,
            }
            .into());
        }
        let normal = Normal::new(0.0, sigma).map_err(|_| ErrorKind::InvalidParameter {
            what: "noise standard deviation",
            value: sigma,
        })?;
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            normal,
            sigma,
        })
    }

    /// Standard deviation.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// One sample.
    pub fn sample(&mut self) -> f64 {
        self.normal.sample(&mut self.rng)
    }

    /// Adds one independent sample to each element of `values`.
    pub fn perturb(&mut self, values: &mut [f64]) {
        for v in values {
            *v += self.normal.sample(&mut self.rng);
        }
    }
}
