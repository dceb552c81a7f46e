//! `telecho bench`: the control node's targets (issue 4), measured.
//!
//! - `bench scan`: the scan protocol on seeds `first..first+seeds` (breathing on, tissue
//!   stiffness drawn over 0.5–5 N/mm, placement perturbed, palpated start), without writing
//!   files or rendering ultrasound: force RMS error and overshoot during the sweeps, force-limit
//!   violations, completion, and wall time against simulated time. Exit code 1 when a seed does
//!   not complete or a target is missed (the figures are deterministic).
//! - `bench loop`: the controller at 1 kHz on its own thread against the simulator
//!   ([`spawn_realtime_with`]), running the scan protocol in real time: deadline misses, stalls,
//!   wake-up jitter and compute time, and the hypervisor's steal time over the run (from
//!   `/proc/stat`). `--rt` asks for `SCHED_FIFO` priority and locked memory (`--cpu N` pins the
//!   thread); a refused request is reported and the run continues without it. Exit code 0
//!   whatever the timing (it depends on the machine); the report says whether the target was
//!   met.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde::Serialize;
use telecho_control::{spawn_realtime_with, CpuTimes, RtConfig, RtStatus};

use crate::cli_error::CliError;
use crate::scan::{arm_name, load_protocol, run_scan, ScanReport, Scenario, DT_S};
use crate::sim::Arm;
use crate::CliResult;

/// Targets of issue 4.
const TARGET_FORCE_RMS_N: f64 = 0.3;
const TARGET_OVERSHOOT_N: f64 = 2.0;
const TARGET_MISS_RATIO: f64 = 0.001;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Run the scan protocol on many seeded patients (no files, no ultrasound) and report the
    /// force-control targets per seed and in aggregate.
    Scan(BenchScanArgs),
    /// Run the controller in real time at 1 kHz on its own thread against the simulator and
    /// report deadline misses, jitter and compute time.
    Loop(BenchLoopArgs),
    /// Register the CBCT to the sweep of many seeded patients and report target registration
    /// error, success rate and runtime beside a point-to-point ICP baseline.
    Register(crate::perception::bench::BenchRegisterArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchScanArgs {
    /// Number of seeds.
    #[arg(long, default_value_t = 20)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Scan protocol TOML file (default: the built-in lumbar protocol).
    #[arg(long)]
    protocol: Option<PathBuf>,
    /// Which bundled arm.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchLoopArgs {
    /// Duration of the real-time run, s.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Simulated patient.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which bundled arm.
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// Real-time mode: SCHED_FIFO priority for the control thread and locked memory
    /// (mlockall). Needs root or CAP_SYS_NICE; a refused request is reported and the run goes on.
    #[arg(long)]
    rt: bool,
    /// SCHED_FIFO priority with --rt (1–99).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(i32).range(1..=99))]
    rt_priority: i32,
    /// Pin the control thread to this CPU.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: &BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Scan(args) => scan(args),
        BenchCommand::Loop(args) => rt_loop(args),
        BenchCommand::Register(args) => crate::perception::bench::run(args),
    }
}

/// Median of a non-empty list (0 when empty).
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

#[derive(Debug, Serialize)]
struct SeedRow {
    seed: u64,
    completed: bool,
    final_state: &'static str,
    stiffness_n_per_mm: f64,
    breathing_amplitude_m: f64,
    breathing_frequency_hz: f64,
    force_rms_error_n: f64,
    overshoot_n: f64,
    force_max_n: f64,
    force_limit_violations: u64,
    safety_events: usize,
    duration_s: f64,
    wall_s: f64,
}

impl From<&ScanReport> for SeedRow {
    fn from(r: &ScanReport) -> Self {
        Self {
            seed: r.seed,
            completed: r.completed,
            final_state: r.final_state,
            stiffness_n_per_mm: r.stiffness_n_per_mm,
            breathing_amplitude_m: r.breathing_amplitude_m,
            breathing_frequency_hz: r.breathing_frequency_hz,
            force_rms_error_n: r.force_rms_error_n,
            overshoot_n: r.overshoot_n,
            force_max_n: r.force_max_n,
            force_limit_violations: r.force_limit_violations,
            safety_events: r.safety_events.len() + r.safety_events_not_listed,
            duration_s: r.duration_s,
            wall_s: r.wall_s,
        }
    }
}

#[derive(Debug, Serialize)]
struct ScanAggregate {
    seeds: usize,
    completed: usize,
    force_rms_error_n_median: f64,
    force_rms_error_n_max: f64,
    overshoot_n_median: f64,
    overshoot_n_max: f64,
    force_max_n: f64,
    force_limit_violations: u64,
    safety_events: usize,
    simulated_s: f64,
    wall_s: f64,
    realtime_factor: f64,
}

#[derive(Debug, Serialize)]
struct ScanTargets {
    force_rms_error_n: f64,
    overshoot_n: f64,
    force_limit_violations: u64,
    met: bool,
}

#[derive(Debug, Serialize)]
struct BenchScanOut {
    protocol: String,
    arm: &'static str,
    per_seed: Vec<SeedRow>,
    aggregate: ScanAggregate,
    targets: ScanTargets,
}

fn scan(args: &BenchScanArgs) -> CliResult {
    if args.seeds == 0 {
        return Err(CliError::input(anyhow!("--seeds must be at least 1")));
    }
    let last = args
        .first_seed
        .checked_add(args.seeds - 1)
        .ok_or_else(|| CliError::input(anyhow!("--first-seed + --seeds overflows")))?;
    let protocol = load_protocol(args.protocol.as_deref())?;
    let progress = std::io::stderr().is_terminal();
    let wall = Instant::now();
    let mut rows = Vec::new();
    for seed in args.first_seed..=last {
        let mut sc = Scenario::new(args.arm, seed, protocol.clone())?;
        let r = run_scan(&mut sc, None, None, None)?;
        if progress {
            eprint!(
                "\rbench scan: seed {seed} ({}/{}) {} rms {:.3} N   ",
                seed - args.first_seed + 1,
                args.seeds,
                r.final_state,
                r.force_rms_error_n
            );
        }
        rows.push(SeedRow::from(&r));
    }
    if progress {
        eprintln!();
    }
    let wall_s = wall.elapsed().as_secs_f64();
    let rms: Vec<f64> = rows.iter().map(|r| r.force_rms_error_n).collect();
    let over: Vec<f64> = rows.iter().map(|r| r.overshoot_n).collect();
    let simulated_s: f64 = rows.iter().map(|r| r.duration_s).sum();
    let aggregate = ScanAggregate {
        seeds: rows.len(),
        completed: rows.iter().filter(|r| r.completed).count(),
        force_rms_error_n_median: median(&rms),
        force_rms_error_n_max: max(&rms),
        overshoot_n_median: median(&over),
        overshoot_n_max: max(&over),
        force_max_n: max(&rows.iter().map(|r| r.force_max_n).collect::<Vec<_>>()),
        force_limit_violations: rows.iter().map(|r| r.force_limit_violations).sum(),
        safety_events: rows.iter().map(|r| r.safety_events).sum(),
        simulated_s,
        wall_s,
        realtime_factor: simulated_s / wall_s.max(1e-9),
    };
    let met = aggregate.completed == aggregate.seeds
        && aggregate.force_rms_error_n_max <= TARGET_FORCE_RMS_N
        && aggregate.overshoot_n_max <= TARGET_OVERSHOOT_N
        && aggregate.force_limit_violations == 0;
    let out = BenchScanOut {
        protocol: protocol.name.clone(),
        arm: arm_name(args.arm),
        per_seed: rows,
        aggregate,
        targets: ScanTargets {
            force_rms_error_n: TARGET_FORCE_RMS_N,
            overshoot_n: TARGET_OVERSHOOT_N,
            force_limit_violations: 0,
            met,
        },
    };
    if args.json {
        println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
    } else {
        print_scan_table(&out);
    }
    if met {
        Ok(())
    } else {
        Err(CliError::failed(anyhow!(
            "targets missed (force RMS ≤ {TARGET_FORCE_RMS_N} N, overshoot ≤ \
             {TARGET_OVERSHOOT_N} N, 0 force-limit violations, every seed completed)"
        )))
    }
}

fn print_scan_table(out: &BenchScanOut) {
    println!(
        "bench scan: protocol `{}` on {} ({} seeds)",
        out.protocol, out.arm, out.aggregate.seeds
    );
    println!(
        "{:>5} {:>9} {:>9} {:>8} {:>10} {:>11} {:>9} {:>10} {:>7} {:>8} {:>7}",
        "seed",
        "state",
        "k N/mm",
        "br. mm",
        "RMS err N",
        "overshoot N",
        "max F N",
        "violations",
        "events",
        "sim s",
        "wall s"
    );
    for r in &out.per_seed {
        println!(
            "{:>5} {:>9} {:>9.2} {:>8.1} {:>10.3} {:>11.3} {:>9.2} {:>10} {:>7} {:>8.1} {:>7.2}",
            r.seed,
            r.final_state,
            r.stiffness_n_per_mm,
            r.breathing_amplitude_m * 1e3,
            r.force_rms_error_n,
            r.overshoot_n,
            r.force_max_n,
            r.force_limit_violations,
            r.safety_events,
            r.duration_s,
            r.wall_s
        );
    }
    let a = &out.aggregate;
    println!(
        "completed {}/{}; force RMS error median {:.3} N, max {:.3} N (target ≤ {} N); overshoot \
         median {:.3} N, max {:.3} N (target ≤ {} N); max force {:.2} N; {} force-limit \
         violations; {} safety events",
        a.completed,
        a.seeds,
        a.force_rms_error_n_median,
        a.force_rms_error_n_max,
        out.targets.force_rms_error_n,
        a.overshoot_n_median,
        a.overshoot_n_max,
        out.targets.overshoot_n,
        a.force_max_n,
        a.force_limit_violations,
        a.safety_events
    );
    println!(
        "{:.1} s simulated in {:.2} s wall ({:.0}× real time); targets {}",
        a.simulated_s,
        a.wall_s,
        a.realtime_factor,
        if out.targets.met { "met" } else { "MISSED" }
    );
}

#[derive(Debug, Serialize)]
struct TimingUs {
    median_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl From<telecho_control::TimingSummary> for TimingUs {
    fn from(t: telecho_control::TimingSummary) -> Self {
        Self {
            median_us: t.median_s * 1e6,
            p99_us: t.p99_s * 1e6,
            max_us: t.max_s * 1e6,
        }
    }
}

#[derive(Debug, Serialize)]
struct RtOut {
    requested: bool,
    fifo_priority_requested: Option<i32>,
    cpu_requested: Option<usize>,
    fifo_priority: Option<i32>,
    memory_locked: bool,
    cpu: Option<usize>,
    /// Refused requests, in words.
    refused: Vec<String>,
}

impl RtOut {
    fn new(config: &RtConfig, requested: bool, st: &RtStatus) -> Self {
        let mut refused = Vec::new();
        let os = |code: i32| std::io::Error::from_raw_os_error(code).to_string();
        if let Some(e) = st.fifo_error {
            refused.push(format!("SCHED_FIFO: {}", os(e)));
        }
        if let Some(e) = st.lock_error {
            refused.push(format!("mlockall: {}", os(e)));
        }
        if let Some(e) = st.cpu_error {
            refused.push(format!("CPU pinning: {}", os(e)));
        }
        Self {
            requested,
            fifo_priority_requested: config.fifo_priority,
            cpu_requested: config.cpu,
            fifo_priority: st.fifo_priority,
            memory_locked: st.memory_locked,
            cpu: st.cpu,
            refused,
        }
    }
}

/// Hypervisor steal over the run, from `/proc/stat` (summed over all virtual CPUs).
#[derive(Debug, Serialize)]
struct StealOut {
    /// CPU time stolen by the hypervisor, s (all vCPUs together).
    steal_s: f64,
    /// Steal as a percentage of all CPU time of the machine over the run.
    steal_percent: f64,
    /// CPU time the guest accounted over the run (all vCPUs), s.
    cpu_time_s: f64,
    /// Virtual CPUs (`cpu_time_s` should be close to `cpus` × wall time; on a guest whose tick
    /// accounting is unreliable it is not, and steal is then a lower bound).
    cpus: u32,
}

#[derive(Debug, Serialize)]
struct BenchLoopOut {
    seed: u64,
    arm: &'static str,
    period_s: f64,
    seconds: f64,
    deadlines: u64,
    cycles: u64,
    deadline_misses: u64,
    miss_percent: f64,
    overruns: u64,
    stalls: u64,
    skipped_deadlines: u64,
    longest_overrun_ms: f64,
    jitter: TimingUs,
    compute: TimingUs,
    realtime: RtOut,
    /// Null when `/proc/stat` cannot be read (not Linux).
    steal: Option<StealOut>,
    wall_s: f64,
    simulated_s: f64,
    scan_state: &'static str,
    sweep_index: usize,
    target_miss_percent: f64,
    target_met: bool,
}

fn rt_loop(args: &BenchLoopArgs) -> CliResult {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(CliError::input(anyhow!(
            "--seconds must be within (0, 3600], got {}",
            args.seconds
        )));
    }
    let sc = Scenario::new(args.arm, args.seed, load_protocol(None)?)?;
    let deadlines = (args.seconds / DT_S).round().max(1.0) as u64;
    let mut rt = if args.rt {
        RtConfig::realtime(args.rt_priority)
    } else {
        RtConfig::default()
    };
    rt.cpu = args.cpu;
    let cpu_before = CpuTimes::read();
    if let Err(e) = &cpu_before {
        tracing::warn!(error = %e, "cannot read /proc/stat: no steal time in the report");
    }
    let wall = Instant::now();
    let handle = spawn_realtime_with(
        sc.world,
        sc.controller,
        sc.executor,
        Duration::from_secs_f64(DT_S),
        deadlines,
        rt,
    )
    .map_err(CliError::failed)?;
    let run = handle
        .join()
        .map_err(|_| CliError::failed(anyhow!("the control thread panicked")))?;
    let wall_s = wall.elapsed().as_secs_f64();
    let steal = match (cpu_before, CpuTimes::read()) {
        (Ok(b), Ok(a)) => {
            let d = a.since(&b);
            let hz = CpuTimes::ticks_per_s();
            Some(StealOut {
                steal_s: d.steal_ticks as f64 / hz,
                steal_percent: 100.0 * d.steal_fraction(),
                cpu_time_s: d.total_ticks as f64 / hz,
                cpus: d.cpus,
            })
        }
        _ => None,
    };
    let s = run.stats;
    let progress = run.source.progress();
    let out = BenchLoopOut {
        seed: args.seed,
        arm: arm_name(args.arm),
        period_s: s.period_s,
        seconds: args.seconds,
        deadlines: s.deadlines,
        cycles: s.cycles,
        deadline_misses: s.deadline_misses,
        miss_percent: 100.0 * s.miss_ratio(),
        overruns: s.overruns,
        stalls: s.stalls,
        skipped_deadlines: s.skipped,
        longest_overrun_ms: s.longest_overrun_s * 1e3,
        jitter: s.jitter.into(),
        compute: s.compute.into(),
        realtime: RtOut::new(&rt, args.rt, &s.rt),
        steal,
        wall_s,
        simulated_s: run.plant.time_s(),
        scan_state: progress.state.name(),
        sweep_index: progress.sweep_index,
        target_miss_percent: 100.0 * TARGET_MISS_RATIO,
        target_met: s.miss_ratio() < TARGET_MISS_RATIO,
    };
    if args.json {
        println!("{}", serde_json::to_string(&out).map_err(CliError::failed)?);
    } else {
        print_loop_report(&out);
    }
    Ok(())
}

fn print_loop_report(out: &BenchLoopOut) {
    println!(
        "bench loop: {} deadlines of {:.0} µs in {:.1} s wall (seed {}, {}, scan protocol: {} at \
         sweep {})",
        out.deadlines,
        out.period_s * 1e6,
        out.wall_s,
        out.seed,
        out.arm,
        out.scan_state,
        out.sweep_index + 1
    );
    let r = &out.realtime;
    let sched = match r.fifo_priority {
        Some(p) => format!("SCHED_FIFO priority {p}"),
        None => "normal scheduler".to_owned(),
    };
    println!(
        "real-time mode: {}; {sched}, memory {}, {}{}",
        if r.requested { "requested" } else { "off" },
        if r.memory_locked {
            "locked"
        } else {
            "not locked"
        },
        r.cpu
            .map_or_else(|| "not pinned".to_owned(), |c| format!("pinned to CPU {c}")),
        if r.refused.is_empty() {
            String::new()
        } else {
            format!(" (refused: {})", r.refused.join("; "))
        }
    );
    println!(
        "deadline misses {} of {} ({:.4} %, target < {} %: {}): {} overruns, {} deadlines \
         skipped",
        out.deadline_misses,
        out.deadlines,
        out.miss_percent,
        out.target_miss_percent,
        if out.target_met { "met" } else { "MISSED" },
        out.overruns,
        out.skipped_deadlines
    );
    println!(
        "stalls (overrun > 1 period, loop skipped ahead): {}; longest overrun {:.3} ms",
        out.stalls, out.longest_overrun_ms
    );
    println!(
        "wake-up jitter median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        out.jitter.median_us, out.jitter.p99_us, out.jitter.max_us
    );
    println!(
        "compute (controller + simulator step) median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        out.compute.median_us, out.compute.p99_us, out.compute.max_us
    );
    match &out.steal {
        Some(st) => println!(
            "hypervisor steal over the run: {:.3} s ({:.3} % of {:.1} s CPU time accounted by the \
             guest; {} vCPU × {:.1} s wall = {:.1} s)",
            st.steal_s,
            st.steal_percent,
            st.cpu_time_s,
            st.cpus,
            out.wall_s,
            f64::from(st.cpus) * out.wall_s
        ),
        None => println!("hypervisor steal: unknown (/proc/stat not readable)"),
    }
}
