//! The fixed-rate control loop: a [`Plant`] (arm + F/T sensor, or the simulator), the
//! [`ProbeController`] and a [`TargetSource`] (the scan executor, an operator link), stepped
//! together.
//!
//! - [`spawn_realtime`]: a dedicated `std::thread` (not a tokio task) that sleeps to absolute
//!   deadlines (`deadline += period`, no drift), and records per-cycle compute time, wake-up
//!   jitter and deadline misses into preallocated histograms ([`LoopStats`]).
//! - [`run_simulated`]: the same cycle against a simulated plant as fast as possible (no
//!   sleeping) — what the tests and `telecho scan` use.
//!
//! One cycle: `plant.read` → `source.next_target` → `controller.step` → `plant.write` →
//! `plant.advance` (a no-op on hardware). Nothing in the cycle allocates.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::controller::{ControlInput, ControlOutput, ProbeController, ProbeTarget};
use crate::executor::ScanExecutor;
use crate::ft_compensation::FtSample;

/// What the loop reads from and writes to: a real arm with its F/T sensor, or a simulator.
pub trait Plant {
    /// Reads the latest joint measurements into `q` and `qd` (one value per joint) and returns
    /// the plant's time (s) and the latest F/T sample.
    fn read(&mut self, q: &mut [f64], qd: &mut [f64]) -> (f64, FtSample);
    /// Sends the controller's command (when `out.send`).
    fn write(&mut self, out: &ControlOutput);
    /// Advances a simulated plant by `dt` seconds; real hardware does nothing.
    fn advance(&mut self, _dt: f64) {}
}

/// Where targets come from.
pub trait TargetSource {
    /// The target for this cycle, given the controller's previous output.
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget>;
    /// E-stop input.
    fn estop(&self) -> bool {
        false
    }
    /// Reset request.
    fn reset(&mut self) -> bool {
        false
    }
}

impl TargetSource for ScanExecutor {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        self.update(time_s, last)
    }
}

/// A target source from a closure.
#[derive(Debug)]
pub struct FnSource<F>(pub F);

impl<F: FnMut(f64, &ControlOutput) -> Option<ProbeTarget>> TargetSource for FnSource<F> {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        (self.0)(time_s, last)
    }
}

/// Buffers of one loop (allocated once).
#[derive(Debug)]
struct Cycle {
    q: Vec<f64>,
    qd: Vec<f64>,
}

impl Cycle {
    fn new(dof: usize) -> Self {
        Self {
            q: vec![0.0; dof],
            qd: vec![0.0; dof],
        }
    }

    fn run<P: Plant, S: TargetSource>(
        &mut self,
        plant: &mut P,
        controller: &mut ProbeController,
        source: &mut S,
        out: &mut ControlOutput,
        dt: f64,
    ) {
        let (time_s, ft) = plant.read(&mut self.q, &mut self.qd);
        let target = source.next_target(time_s, out);
        let input = ControlInput {
            time_s,
            q_rad: &self.q,
            qd_rad_s: &self.qd,
            ft,
            target,
            estop: source.estop(),
            reset: source.reset(),
        };
        controller.step(&input, dt, out);
        plant.write(out);
        plant.advance(dt);
    }
}

/// Runs up to `cycles` cycles of `dt` seconds as fast as possible. After each cycle,
/// `on_cycle(plant, output)` may inspect the plant (e.g. score the simulator's truth) and
/// returns false to stop. Returns the number of cycles run.
pub fn run_simulated<P: Plant, S: TargetSource>(
    plant: &mut P,
    controller: &mut ProbeController,
    source: &mut S,
    out: &mut ControlOutput,
    dt: f64,
    cycles: usize,
    mut on_cycle: impl FnMut(&P, &ControlOutput) -> bool,
) -> usize {
    let mut cycle = Cycle::new(controller.dof());
    for i in 0..cycles {
        cycle.run(plant, controller, source, out, dt);
        if !on_cycle(plant, out) {
            return i + 1;
        }
    }
    cycles
}

/// Median, 99th percentile and maximum of a timing, s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimingSummary {
    /// Median, s.
    pub median_s: f64,
    /// 99th percentile, s.
    pub p99_s: f64,
    /// Maximum, s.
    pub max_s: f64,
}

/// Timing of a real-time run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoopStats {
    /// Cycles run.
    pub cycles: u64,
    /// Cycles whose work ended after their deadline (the start of the next cycle).
    pub deadline_misses: u64,
    /// Time from wake-up to the command being written, s.
    pub compute: TimingSummary,
    /// Wake-up lateness against the absolute deadline, s.
    pub jitter: TimingSummary,
    /// Period, s.
    pub period_s: f64,
}

impl LoopStats {
    /// Fraction of cycles that missed their deadline.
    pub fn miss_ratio(&self) -> f64 {
        if self.cycles == 0 {
            0.0
        } else {
            self.deadline_misses as f64 / self.cycles as f64
        }
    }
}

/// A histogram of durations with 1 µs bins up to 20 ms (longer ones land in the last bin; the
/// exact maximum is kept separately). Preallocated; recording does not allocate.
#[derive(Clone, Debug)]
pub struct Histogram {
    bins: Vec<u64>,
    count: u64,
    max_s: f64,
}

const BIN_S: f64 = 1e-6;
const BINS: usize = 20_001;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            bins: vec![0; BINS],
            count: 0,
            max_s: 0.0,
        }
    }

    /// Records one duration, s (negative values count as 0).
    pub fn record(&mut self, seconds: f64) {
        let s = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            f64::MAX
        };
        let i = ((s / BIN_S) as usize).min(BINS - 1);
        self.bins[i] += 1;
        self.count += 1;
        self.max_s = self.max_s.max(s);
    }

    /// Number of recorded durations.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q`-quantile (0–1), s, to the bin's upper edge.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ((i + 1) as f64 * BIN_S).min(self.max_s);
            }
        }
        self.max_s
    }

    /// Median, p99 and maximum.
    pub fn summary(&self) -> TimingSummary {
        TimingSummary {
            median_s: self.quantile(0.5),
            p99_s: self.quantile(0.99),
            max_s: self.max_s,
        }
    }
}

/// What a real-time run hands back.
#[derive(Debug)]
pub struct RtRun<P, S> {
    /// The plant.
    pub plant: P,
    /// The controller.
    pub controller: ProbeController,
    /// The target source.
    pub source: S,
    /// The last output.
    pub output: ControlOutput,
    /// Timing.
    pub stats: LoopStats,
}

/// Runs `cycles` cycles at a fixed `period` on a new thread named `telecho-control`, sleeping
/// to absolute deadlines; join the handle for the plant, controller, source and [`LoopStats`].
pub fn spawn_realtime<P, S>(
    mut plant: P,
    mut controller: ProbeController,
    mut source: S,
    period: Duration,
    cycles: u64,
) -> std::io::Result<JoinHandle<RtRun<P, S>>>
where
    P: Plant + Send + 'static,
    S: TargetSource + Send + 'static,
{
    std::thread::Builder::new()
        .name("telecho-control".into())
        .spawn(move || {
            let mut out = controller.new_output();
            let mut cycle = Cycle::new(controller.dof());
            let mut compute = Histogram::new();
            let mut jitter = Histogram::new();
            let mut misses = 0;
            let dt = period.as_secs_f64();
            let start = Instant::now();
            let mut deadline = start;
            for _ in 0..cycles {
                wait_until(deadline);
                let woke = Instant::now();
                jitter.record(woke.saturating_duration_since(deadline).as_secs_f64());
                cycle.run(&mut plant, &mut controller, &mut source, &mut out, dt);
                let done = Instant::now();
                compute.record(done.duration_since(woke).as_secs_f64());
                deadline += period;
                if done > deadline {
                    misses += 1;
                }
            }
            let stats = LoopStats {
                cycles,
                deadline_misses: misses,
                compute: compute.summary(),
                jitter: jitter.summary(),
                period_s: dt,
            };
            tracing::info!(
                cycles,
                misses,
                compute_median_us = stats.compute.median_s * 1e6,
                jitter_p99_us = stats.jitter.p99_s * 1e6,
                "control loop finished"
            );
            RtRun {
                plant,
                controller,
                source,
                output: out,
                stats,
            }
        })
}

/// How long before a deadline [`wait_until`] stops sleeping and starts spinning. Linux wakes a
/// sleeping thread 50 µs (default timer slack) to a few hundred µs late on a loaded or virtual
/// machine; spinning the last stretch makes the wake-up land on the deadline at the cost of that
/// much CPU per cycle — the usual trade of a 1 kHz control thread.
const SPIN_WINDOW: Duration = Duration::from_micros(400);

/// Sleeps until shortly before `deadline`, then spins until it has passed.
fn wait_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > SPIN_WINDOW {
        std::thread::sleep(deadline - now - SPIN_WINDOW);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for i in 1..=100 {
            h.record(i as f64 * 1e-6);
        }
        assert!((h.quantile(0.5) - 50e-6).abs() < 1.5e-6);
        assert!((h.quantile(0.99) - 99e-6).abs() < 1.5e-6);
        assert!((h.summary().max_s - 100e-6).abs() < 1e-12);
        h.record(1.0);
        assert_eq!(h.summary().max_s, 1.0);
        assert_eq!(Histogram::new().quantile(0.5), 0.0);
    }
}
