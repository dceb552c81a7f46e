//! The fixed-rate control loop: a [`Plant`] (arm + F/T sensor, or the simulator), the
//! [`ProbeController`] and a [`TargetSource`] (the scan executor, an operator link), stepped
//! together.
//!
//! - [`spawn_realtime`] / [`spawn_realtime_with`]: a dedicated `std::thread` (not a tokio task)
//!   that waits for absolute deadlines (`k·period` from the start, no drift), and records
//!   per-cycle compute time, wake-up jitter, deadline misses and stalls into preallocated
//!   histograms ([`LoopStats`]). [`RtConfig`] opts into real-time scheduling: `SCHED_FIFO`
//!   priority, locked memory (`mlockall`) and CPU pinning; a refused request (no privilege, not
//!   Linux) is logged as a warning and the loop runs without it ([`RtStatus`] says what was
//!   applied).
//! - [`run_simulated`]: the same cycle against a simulated plant as fast as possible (no
//!   sleeping) — what the tests and `telecho scan` use.
//! - [`CpuTimes`]: the machine's CPU time counters from `/proc/stat`, to tell hypervisor steal
//!   (the virtual CPU not running at all) apart from scheduling delays inside the machine.
//!
//! One cycle: `plant.read` → `source.next_target` → `controller.step` → `plant.write` →
//! `plant.advance` (a no-op on hardware). Nothing in the cycle allocates.
//!
//! # Overruns and stalls
//!
//! Cycle `k` starts at its deadline `k·T` and must finish by `(k+1)·T`. A cycle that finishes
//! later is a **deadline miss**. If it finishes less than one period late, the next cycle starts
//! at once (late, still able to meet its own deadline). If it finishes more than one period late
//! — a **stall**: the thread was not running, e.g. preempted, or its virtual CPU descheduled by
//! the hypervisor — the loop does **not** run the missed cycles back to back: a controller that
//! integrates a motion reference would otherwise command several periods of motion within
//! microseconds, and every catch-up cycle would itself be late. It resumes at the next deadline
//! still in the future; every deadline skipped is counted as a miss too, the plant is advanced
//! over the skipped time (the world did not stop), and the controller keeps its nominal `dt`
//! (so its reference never jumps; its watchdogs see the true time from the plant). The number
//! of stall events and the longest overrun are reported separately from the misses.
//!
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::controller::{ControlInput, ControlOutput, ProbeController, ProbeTarget};
use crate::error::check_config as check;
use crate::executor::ScanExecutor;
use crate::ft_compensation::FtSample;
use crate::Error;

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

/// Timing of a real-time run. See the module documentation for misses, overruns and stalls.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoopStats {
    /// Deadlines (periods) the run lasted: `cycles + skipped`.
    pub deadlines: u64,
    /// Cycles run.
    pub cycles: u64,
    /// Deadlines missed: cycles that overran plus deadlines skipped after stalls.
    pub deadline_misses: u64,
    /// Cycles whose work ended after their deadline.
    pub overruns: u64,
    /// Overruns of more than one period (after each, the loop skipped to the next future
    /// deadline).
    pub stalls: u64,
    /// Deadlines skipped after stalls (no cycle ran for them).
    pub skipped: u64,
    /// Longest overrun: how long after its deadline a cycle finished, s (0 without overruns).
    pub longest_overrun_s: f64,
    /// Time from wake-up to the end of the cycle's work, s.
    pub compute: TimingSummary,
    /// Wake-up lateness against the cycle's deadline, s.
    pub jitter: TimingSummary,
    /// Period, s.
    pub period_s: f64,
    /// The real-time settings in effect.
    pub rt: RtStatus,
}

impl LoopStats {
    /// Fraction of deadlines missed (overruns and skipped deadlines over all deadlines).
    pub fn miss_ratio(&self) -> f64 {
        if self.deadlines == 0 {
            0.0
        } else {
            self.deadline_misses as f64 / self.deadlines as f64
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

/// Deadline bookkeeping of the loop: which deadline the next cycle serves, and the miss, overrun
/// and stall counts. Pure arithmetic on times since the loop's start (tested without a clock).
#[derive(Clone, Copy, Debug)]
struct Schedule {
    period: Duration,
    /// Index of the deadline the next cycle serves (it starts at `slot·period`).
    slot: u64,
    /// The run ends when `slot` reaches this.
    end: u64,
    cycles: u64,
    misses: u64,
    overruns: u64,
    stalls: u64,
    skipped: u64,
    longest_overrun: Duration,
}

impl Schedule {
    fn new(period: Duration, deadlines: u64) -> Self {
        Self {
            period,
            slot: 0,
            end: deadlines,
            cycles: 0,
            misses: 0,
            overruns: 0,
            stalls: 0,
            skipped: 0,
            longest_overrun: Duration::ZERO,
        }
    }

    fn done(&self) -> bool {
        self.slot >= self.end
    }

    /// Start time of the next cycle, since the loop's start.
    fn start(&self) -> Duration {
        let nanos = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos.saturating_mul(self.slot))
    }

    /// Books the cycle of the current slot, which finished at `finished` (since the start), and
    /// moves to the deadline of the next cycle. Returns the number of deadlines skipped (0
    /// unless this was a stall).
    fn finish_cycle(&mut self, finished: Duration) -> u64 {
        self.cycles += 1;
        let deadline = self.start() + self.period;
        self.slot += 1;
        if finished <= deadline {
            return 0;
        }
        let late = finished - deadline;
        self.misses += 1;
        self.overruns += 1;
        self.longest_overrun = self.longest_overrun.max(late);
        if late <= self.period {
            // Run the next cycle at once.
            return 0;
        }
        // Stall: resume at the first deadline not yet passed.
        self.stalls += 1;
        let p = self.period.as_nanos().max(1);
        let next = u64::try_from(finished.as_nanos().div_ceil(p)).unwrap_or(u64::MAX);
        let skipped = next.saturating_sub(self.slot).min(self.end - self.slot);
        self.slot += skipped;
        self.skipped += skipped;
        self.misses += skipped;
        skipped
    }
}

/// Real-time settings of the control thread ([`spawn_realtime_with`]). The default is the
/// normal scheduler, no locking, no pinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtConfig {
    /// `SCHED_FIFO` priority of the control thread, 1–99 (`None`: the normal scheduler). Needs
    /// `CAP_SYS_NICE` (root) or an `RLIMIT_RTPRIO`.
    pub fifo_priority: Option<i32>,
    /// Lock the process's memory (`mlockall(MCL_CURRENT | MCL_FUTURE)`), so no page fault can
    /// stall the loop. Process-wide, and it stays in effect after the loop ends.
    pub lock_memory: bool,
    /// Pin the control thread to this CPU (`sched_setaffinity`).
    pub cpu: Option<usize>,
    /// How long before each deadline the thread stops sleeping and spins (default 400 µs).
    /// Linux wakes a sleeping thread of the normal scheduler 50 µs (its timer slack) to a few
    /// hundred µs late on a loaded or virtual machine; spinning the last stretch makes the
    /// wake-up land on the deadline at the cost of that much CPU per cycle — the usual trade of a
    /// 1 kHz control thread.
    pub spin_window: Duration,
    /// Time the controller and the plant advance per period (`None`: one period, real time).
    /// Only a simulated plant may be given more than the period: it then runs faster than real
    /// time by the ratio (`telecho node control --sim --real-time-factor`), the controller
    /// keeping its nominal step. Hardware must leave this `None`.
    pub sim_dt: Option<Duration>,
    /// Simulated plants only: after a stall, do not advance the plant over the skipped periods.
    /// Real hardware moves on while the loop is stalled, so by default the plant is advanced
    /// (the world did not stop); a simulator has no such world, and jumping it ahead without
    /// control only injects an artificial disturbance — with this set it falls behind the wall
    /// clock instead (a loaded machine runs the simulation slower than `sim_dt / period`).
    pub sim_no_skip: bool,
}

impl Default for RtConfig {
    fn default() -> Self {
        Self {
            fifo_priority: None,
            lock_memory: false,
            cpu: None,
            spin_window: Duration::from_micros(400),
            sim_dt: None,
            sim_no_skip: false,
        }
    }
}

impl RtConfig {
    /// Real-time mode: `SCHED_FIFO` at `priority` (1–99) and locked memory, no pinning.
    pub fn realtime(priority: i32) -> Self {
        Self {
            fifo_priority: Some(priority),
            lock_memory: true,
            ..Self::default()
        }
    }

    /// Checks the priority is within 1–99 and the spin window below 1 s.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(p) = self.fifo_priority {
            check("rt fifo_priority", f64::from(p), 1.0, 99.0)?;
        }
        check("rt spin_window_s", self.spin_window.as_secs_f64(), 0.0, 1.0)?;
        if let Some(dt) = self.sim_dt {
            check("rt sim_dt_s", dt.as_secs_f64(), 1e-6, 0.1)?;
        }
        Ok(())
    }
}

/// What the real-time settings achieved: the requests granted, and the OS error code of each
/// request that was refused (`None`: granted or not asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtStatus {
    /// `SCHED_FIFO` priority in effect (`None`: the normal scheduler).
    pub fifo_priority: Option<i32>,
    /// Memory locked.
    pub memory_locked: bool,
    /// CPU the thread is pinned to.
    pub cpu: Option<usize>,
    /// OS error of a refused `SCHED_FIFO` request.
    pub fifo_error: Option<i32>,
    /// OS error of a refused `mlockall`.
    pub lock_error: Option<i32>,
    /// OS error of a refused pinning.
    pub cpu_error: Option<i32>,
}

impl RtStatus {
    /// Applies `config` to the calling thread (and, for memory locking, the process); a refused
    /// request is logged as a warning and recorded, never fatal.
    pub fn apply(config: &RtConfig) -> Self {
        let mut st = Self::default();
        if let Some(cpu) = config.cpu {
            match os::pin_to_cpu(cpu) {
                Ok(()) => st.cpu = Some(cpu),
                Err(e) => {
                    tracing::warn!(cpu, error = %e, "cannot pin the control thread; running unpinned");
                    st.cpu_error = Some(e.raw_os_error().unwrap_or(-1));
                }
            }
        }
        if config.lock_memory {
            match os::lock_memory() {
                Ok(()) => st.memory_locked = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lock memory (mlockall); page faults may stall the loop");
                    st.lock_error = Some(e.raw_os_error().unwrap_or(-1));
                }
            }
        }
        if let Some(priority) = config.fifo_priority {
            match os::set_fifo(priority) {
                Ok(()) => st.fifo_priority = Some(priority),
                Err(e) => {
                    tracing::warn!(
                        priority,
                        error = %e,
                        "SCHED_FIFO refused; the control thread runs under the normal scheduler"
                    );
                    st.fifo_error = Some(e.raw_os_error().unwrap_or(-1));
                }
            }
        }
        st
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

/// [`spawn_realtime_with`] under the normal scheduler ([`RtConfig::default`]).
pub fn spawn_realtime<P, S>(
    plant: P,
    controller: ProbeController,
    source: S,
    period: Duration,
    deadlines: u64,
) -> std::io::Result<JoinHandle<RtRun<P, S>>>
where
    P: Plant + Send + 'static,
    S: TargetSource + Send + 'static,
{
    spawn_realtime_with(
        plant,
        controller,
        source,
        period,
        deadlines,
        RtConfig::default(),
    )
}

/// Runs the loop for `deadlines` periods of `period` on a new thread named `telecho-control`
/// with the real-time settings `rt`, waiting for absolute deadlines and skipping ahead after
/// stalls (see the module documentation); join the handle for the plant, controller, source and
/// [`LoopStats`]. An invalid `rt` or a zero period is an `InvalidInput` error.
pub fn spawn_realtime_with<P, S>(
    plant: P,
    controller: ProbeController,
    source: S,
    period: Duration,
    deadlines: u64,
    rt: RtConfig,
) -> std::io::Result<JoinHandle<RtRun<P, S>>>
where
    P: Plant + Send + 'static,
    S: TargetSource + Send + 'static,
{
    spawn_realtime_until(plant, controller, source, period, deadlines, rt, None)
}

/// [`spawn_realtime_with`] that also ends, after the cycle under way, once `stop` is set (a
/// node's SIGTERM handler, a test). The flag is read once per cycle (one relaxed load).
pub fn spawn_realtime_until<P, S>(
    mut plant: P,
    mut controller: ProbeController,
    mut source: S,
    period: Duration,
    deadlines: u64,
    rt: RtConfig,
    stop: Option<&'static AtomicBool>,
) -> std::io::Result<JoinHandle<RtRun<P, S>>>
where
    P: Plant + Send + 'static,
    S: TargetSource + Send + 'static,
{
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    rt.validate().map_err(|e| invalid(e.to_string()))?;
    if period.is_zero() {
        return Err(invalid("the loop period must be positive".into()));
    }
    std::thread::Builder::new()
        .name("telecho-control".into())
        .spawn(move || {
            let status = RtStatus::apply(&rt);
            let mut out = controller.new_output();
            let mut cycle = Cycle::new(controller.dof());
            let mut compute = Histogram::new();
            let mut jitter = Histogram::new();
            let mut schedule = Schedule::new(period, deadlines);
            let dt = rt.sim_dt.unwrap_or(period).as_secs_f64();
            let start = Instant::now();
            while !schedule.done() && !stop.is_some_and(|f| f.load(Ordering::Relaxed)) {
                let deadline = start + schedule.start();
                wait_until(deadline, rt.spin_window);
                let woke = Instant::now();
                jitter.record(woke.saturating_duration_since(deadline).as_secs_f64());
                cycle.run(&mut plant, &mut controller, &mut source, &mut out, dt);
                let done = Instant::now();
                compute.record(done.duration_since(woke).as_secs_f64());
                let skipped = schedule.finish_cycle(done.duration_since(start));
                if skipped > 0 && !rt.sim_no_skip {
                    // The world went on while the loop was stalled.
                    plant.advance(skipped as f64 * dt);
                    tracing::debug!(
                        skipped,
                        "control loop stalled; skipped to the next deadline"
                    );
                }
            }
            let stats = LoopStats {
                deadlines: schedule.slot,
                cycles: schedule.cycles,
                deadline_misses: schedule.misses,
                overruns: schedule.overruns,
                stalls: schedule.stalls,
                skipped: schedule.skipped,
                longest_overrun_s: schedule.longest_overrun.as_secs_f64(),
                compute: compute.summary(),
                jitter: jitter.summary(),
                period_s: dt,
                rt: status,
            };
            tracing::info!(
                cycles = stats.cycles,
                misses = stats.deadline_misses,
                stalls = stats.stalls,
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

/// Sleeps until `spin` before `deadline`, then spins until it has passed.
fn wait_until(deadline: Instant, spin: Duration) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > spin {
        std::thread::sleep(deadline - now - spin);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// The machine's CPU time counters, summed over all CPUs (the `cpu` line of `/proc/stat`), in
/// clock ticks ([`CpuTimes::ticks_per_s`]). The difference of two readings shows how much time
/// the hypervisor **stole** from the virtual CPUs (they were runnable but not running): a loop
/// stall with steal is the host's doing, without steal the guest's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// All time (user, nice, system, idle, iowait, irq, softirq, steal), ticks.
    pub total_ticks: u64,
    /// Steal time, ticks.
    pub steal_ticks: u64,
    /// Number of CPUs listed (`cpuN` lines).
    pub cpus: u32,
}

impl CpuTimes {
    /// Parses the aggregate `cpu` line of a `/proc/stat` text; `None` if there is none or it is
    /// malformed. A kernel too old to report steal (fewer than eight fields) reads steal 0.
    pub fn parse(proc_stat: &str) -> Option<Self> {
        let line = proc_stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let mut fields = [0u64; 8];
        let mut n = 0;
        for (slot, word) in fields.iter_mut().zip(line.split_whitespace().skip(1)) {
            *slot = word.parse().ok()?;
            n += 1;
        }
        if n < 4 {
            return None;
        }
        let cpus = proc_stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count();
        Some(Self {
            total_ticks: fields.iter().sum(),
            steal_ticks: fields[7],
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        })
    }

    /// Reads `/proc/stat` (Linux only; elsewhere an `Unsupported` error).
    pub fn read() -> std::io::Result<Self> {
        if !cfg!(target_os = "linux") {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        let text = std::fs::read_to_string("/proc/stat")?;
        Self::parse(&text).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/stat has no readable `cpu` line",
            )
        })
    }

    /// Clock ticks per second of these counters (`sysconf(_SC_CLK_TCK)`, usually 100).
    pub fn ticks_per_s() -> f64 {
        os::clock_ticks_per_s()
    }

    /// The counters elapsed from `earlier` to `self` (saturating at 0; `cpus` from `self`).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            total_ticks: self.total_ticks.saturating_sub(earlier.total_ticks),
            steal_ticks: self.steal_ticks.saturating_sub(earlier.steal_ticks),
            cpus: self.cpus,
        }
    }

    /// Steal as a fraction of all CPU time (0 when no time elapsed).
    pub fn steal_fraction(&self) -> f64 {
        if self.total_ticks == 0 {
            0.0
        } else {
            self.steal_ticks as f64 / self.total_ticks as f64
        }
    }
}

/// The operating-system calls behind [`RtConfig`] and [`CpuTimes`].
mod os {
    use std::io;

    #[cfg(target_os = "linux")]
    pub(super) fn set_fifo(priority: i32) -> io::Result<()> {
        // SAFETY: an all-zero `sched_param` is a valid value (plain integers); the priority is
        // set below.
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        param.sched_priority = priority;
        // SAFETY: `pthread_self()` is the calling, live thread; `param` outlives the call.
        let rc =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }

    #[cfg(target_os = "linux")]
    pub(super) fn lock_memory() -> io::Result<()> {
        // SAFETY: mlockall takes flags only.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(target_os = "linux")]
    pub(super) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
        // SAFETY: an all-zero `cpu_set_t` is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the CPU set"),
            ));
        }
        // SAFETY: `cpu` is within the set (checked above); `set` is a valid, owned set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is the calling thread; `set` outlives the call and its size is passed.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(target_os = "linux")]
    pub(super) fn clock_ticks_per_s() -> f64 {
        // SAFETY: sysconf takes a constant name only.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as f64
        } else {
            100.0
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_fifo(_priority: i32) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn lock_memory() -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn pin_to_cpu(_cpu: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn clock_ticks_per_s() -> f64 {
        100.0
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

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x * 1e-3)
    }

    #[test]
    fn on_time_cycles_miss_nothing() {
        let mut s = Schedule::new(ms(1.0), 5);
        for k in 0..5 {
            assert_eq!(s.start(), ms(k as f64));
            assert_eq!(s.finish_cycle(ms(k as f64 + 0.3)), 0);
        }
        assert!(s.done());
        assert_eq!(
            (s.cycles, s.misses, s.overruns, s.stalls, s.skipped),
            (5, 0, 0, 0, 0)
        );
        // Finishing exactly at the deadline is on time.
        let mut s = Schedule::new(ms(1.0), 2);
        assert_eq!(s.finish_cycle(ms(1.0)), 0);
        assert_eq!(s.misses, 0);
    }

    #[test]
    fn an_overrun_within_one_period_runs_the_next_cycle_at_once() {
        let mut s = Schedule::new(ms(1.0), 10);
        // Cycle 0 ends 0.6 ms after its deadline (1 ms).
        assert_eq!(s.finish_cycle(ms(1.6)), 0);
        // The next cycle serves deadline 1 (it starts late, at once).
        assert_eq!(s.slot, 1);
        assert_eq!(s.start(), ms(1.0));
        assert_eq!((s.misses, s.overruns, s.stalls, s.skipped), (1, 1, 0, 0));
        assert!((s.longest_overrun.as_secs_f64() - 0.6e-3).abs() < 1e-9);
        // It meets its own deadline (2 ms).
        assert_eq!(s.finish_cycle(ms(1.7)), 0);
        assert_eq!(s.misses, 1);
    }

    #[test]
    fn a_stall_skips_to_the_next_future_deadline_and_counts_every_skipped_deadline() {
        let mut s = Schedule::new(ms(1.0), 1000);
        for k in 0..10 {
            s.finish_cycle(ms(k as f64 + 0.1));
        }
        // Cycle 10 (deadline 11 ms) ends at 150.4 ms: a 139.4 ms stall.
        assert_eq!(s.slot, 10);
        let skipped = s.finish_cycle(ms(150.4));
        // Deadlines 11..=150 have passed: skipped; the next cycle starts at 151 ms.
        assert_eq!(skipped, 140);
        assert_eq!(s.start(), ms(151.0));
        assert_eq!((s.overruns, s.stalls, s.skipped), (1, 1, 140));
        assert_eq!(s.misses, 1 + 140);
        assert!((s.longest_overrun.as_secs_f64() - 139.4e-3).abs() < 1e-9);
        assert_eq!(s.cycles, 11);
        // Cycles + skipped deadlines = deadlines elapsed.
        assert_eq!(s.cycles + s.skipped, s.slot);
        // A stall past the end of the run stops at the end.
        let mut s = Schedule::new(ms(1.0), 20);
        assert_eq!(s.finish_cycle(ms(500.0)), 19);
        assert!(s.done());
        assert_eq!(s.cycles + s.skipped, 20);
    }

    #[test]
    fn cpu_times_parse_proc_stat() {
        let text = "cpu  4705 356 584 3699 23 23 0 17 0 0\n\
                    cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0\n\
                    intr 1462898 0 0\n";
        let t = CpuTimes::parse(text).unwrap();
        assert_eq!(t.steal_ticks, 17);
        assert_eq!(t.cpus, 1);
        assert_eq!(t.total_ticks, 4705 + 356 + 584 + 3699 + 23 + 23 + 17);
        let later = CpuTimes {
            total_ticks: t.total_ticks + 200,
            steal_ticks: t.steal_ticks + 10,
            cpus: 2,
        };
        let d = later.since(&t);
        assert_eq!((d.total_ticks, d.steal_ticks, d.cpus), (200, 10, 2));
        assert!((d.steal_fraction() - 0.05).abs() < 1e-12);
        // Old kernels without steal; malformed or missing lines.
        assert_eq!(CpuTimes::parse("cpu 1 2 3 4\n").unwrap().steal_ticks, 0);
        assert!(CpuTimes::parse("cpu 1 x 3 4 5\n").is_none());
        assert!(CpuTimes::parse("cpu 1 2\n").is_none());
        assert!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8\n").is_none());
        assert!(CpuTimes::parse("").is_none());
        assert_eq!(CpuTimes::default().steal_fraction(), 0.0);
    }

    #[test]
    fn rt_config_is_validated() {
        assert!(RtConfig::default().validate().is_ok());
        assert!(RtConfig::realtime(80).validate().is_ok());
        for p in [0, 100, -5] {
            let e = RtConfig::realtime(p).validate().unwrap_err();
            assert!(
                e.is_config() && e.to_string().contains("fifo_priority"),
                "{e}"
            );
        }
        let c = RtConfig {
            spin_window: Duration::from_secs(2),
            ..RtConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
