//! The real-time loop on its own thread and the as-fast-as-possible simulated path, with the
//! simulator's own `Plant` implementation (`telecho_sim::plant`). Nothing here asserts on timing
//! (the machine may be loaded); only that the loop runs its deadlines, keeps consistent
//! statistics, drives the plant over the whole run (skipped deadlines included) and reports the
//! real-time settings it got.

mod common;

use std::time::Duration;

use common::*;
use telecho_control::{
    run_simulated, spawn_realtime, spawn_realtime_with, ControlMode, CpuTimes, FnSource, LoopStats,
    ProbeController, ProbeTarget, RtConfig,
};
use telecho_core::Transform;

fn print_stats(label: &str, s: &LoopStats) {
    println!(
        "{label}: {} deadlines, {} cycles, {} misses ({} overruns, {} stalls, {} skipped, longest \
         overrun {:.1} µs), compute median {:.1} µs p99 {:.1} µs max {:.1} µs, jitter median \
         {:.1} µs p99 {:.1} µs max {:.1} µs, rt {:?}",
        s.deadlines,
        s.cycles,
        s.deadline_misses,
        s.overruns,
        s.stalls,
        s.skipped,
        s.longest_overrun_s * 1e6,
        s.compute.median_s * 1e6,
        s.compute.p99_s * 1e6,
        s.compute.max_s * 1e6,
        s.jitter.median_s * 1e6,
        s.jitter.p99_s * 1e6,
        s.jitter.max_s * 1e6,
        s.rt
    );
}

fn check_consistent(s: &LoopStats, deadlines: u64) {
    assert_eq!(s.deadlines, deadlines);
    assert_eq!(s.cycles + s.skipped, s.deadlines);
    assert_eq!(s.deadline_misses, s.overruns + s.skipped);
    assert!(s.stalls <= s.overruns);
    assert!(
        s.skipped >= s.stalls,
        "every stall skips at least one deadline"
    );
    assert!(s.miss_ratio() >= 0.0 && s.miss_ratio() <= 1.0);
    assert!(s.compute.median_s <= s.compute.p99_s && s.compute.p99_s <= s.compute.max_s);
    assert!(s.jitter.median_s <= s.jitter.p99_s && s.jitter.p99_s <= s.jitter.max_s);
    assert!((s.period_s - 1e-3).abs() < 1e-15);
}

#[test]
fn realtime_thread_runs_cycles_and_reports_timing() {
    let scene = Scene::default();
    let world = world_above_skin(&scene);
    let hold = world.ground_truth().t_base_probe;
    let ctl = ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
    let source = FnSource(move |t: f64, _: &telecho_control::ControlOutput| {
        (t > 0.25).then(|| ProbeTarget::free(t, hold))
    });
    let handle = spawn_realtime(world, ctl, source, Duration::from_millis(1), 400).unwrap();
    let run = handle.join().unwrap();
    let s = run.stats;
    print_stats("rt loop", &s);
    check_consistent(&s, 400);
    // The normal scheduler was asked for: nothing applied, nothing refused.
    assert_eq!(s.rt, Default::default());
    // The world advanced over every deadline, skipped ones included.
    assert!((run.plant.time_s() - 0.4).abs() < 1e-9);
    assert_eq!(run.output.mode, ControlMode::Free);
}

#[test]
fn realtime_mode_applies_or_reports_its_settings() {
    let scene = Scene::default();
    let world = world_above_skin(&scene);
    let hold = world.ground_truth().t_base_probe;
    let ctl = ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
    let source = FnSource(move |t: f64, _: &telecho_control::ControlOutput| {
        (t > 0.25).then(|| ProbeTarget::free(t, hold))
    });
    // Priority 1 (the lowest real-time one) and CPU 0, without locking memory: the test process
    // must not pin all its pages. Whether the machine grants them depends on privileges.
    let rt = RtConfig {
        fifo_priority: Some(1),
        cpu: Some(0),
        ..RtConfig::default()
    };
    let before = CpuTimes::read().ok();
    let run = spawn_realtime_with(world, ctl, source, Duration::from_millis(1), 300, rt)
        .unwrap()
        .join()
        .unwrap();
    let s = run.stats;
    print_stats("rt loop (SCHED_FIFO 1, CPU 0)", &s);
    check_consistent(&s, 300);
    // Each request is either granted or refused with an OS error, never both, never silent.
    assert!(s.rt.fifo_priority.is_some() != s.rt.fifo_error.is_some());
    assert!(s.rt.cpu.is_some() != s.rt.cpu_error.is_some());
    assert_eq!(s.rt.fifo_priority.unwrap_or(1), 1);
    assert_eq!(s.rt.cpu.unwrap_or(0), 0);
    assert!(
        !s.rt.memory_locked && s.rt.lock_error.is_none(),
        "not asked for"
    );
    assert!((run.plant.time_s() - 0.3).abs() < 1e-9);
    if let (Some(b), Ok(a)) = (before, CpuTimes::read()) {
        let d = a.since(&b);
        println!(
            "CPU time during the run: {} ticks, steal {} ticks ({:.2} %)",
            d.total_ticks,
            d.steal_ticks,
            100.0 * d.steal_fraction()
        );
        assert!(d.steal_ticks <= d.total_ticks);
    }
}

#[test]
fn invalid_realtime_settings_are_refused_before_a_thread_starts() {
    let scene = Scene::default();
    for (rt, period) in [
        (RtConfig::realtime(0), Duration::from_millis(1)),
        (RtConfig::realtime(100), Duration::from_millis(1)),
        (RtConfig::default(), Duration::ZERO),
    ] {
        let world = world_above_skin(&scene);
        let ctl =
            ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
        let source = FnSource(|_: f64, _: &telecho_control::ControlOutput| None);
        let e = spawn_realtime_with(world, ctl, source, period, 10, rt).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    }
}

#[test]
fn simulated_run_stops_when_asked() {
    let scene = Scene::default();
    let mut plant = world_above_skin(&scene);
    let hold: Transform = plant.ground_truth().t_base_probe;
    let mut ctl =
        ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
    let mut out = ctl.new_output();
    let mut source = FnSource(move |t: f64, _: &telecho_control::ControlOutput| {
        (t > 0.25).then(|| ProbeTarget::free(t, hold))
    });
    let n = run_simulated(
        &mut plant,
        &mut ctl,
        &mut source,
        &mut out,
        DT,
        10_000,
        |p, _| p.time_s() < 0.5,
    );
    assert_eq!(n, 500);
    assert_eq!(out.mode, ControlMode::Free);
}

/// A source that stalls the loop once (30 ms, 30 periods) at t = 0.1 s.
fn stalling_source(hold: Transform) -> impl telecho_control::TargetSource + Send + 'static {
    let mut stalled = false;
    FnSource(move |t: f64, _: &telecho_control::ControlOutput| {
        if t > 0.1 && !stalled {
            stalled = true;
            std::thread::sleep(Duration::from_millis(30));
        }
        Some(ProbeTarget::free(t, hold))
    })
}

/// After a stall the simulated world is advanced over the skipped deadlines (as the real world
/// moves on) by default, and not with `sim_no_skip`: then the simulation falls behind the wall
/// clock instead, and every simulated millisecond had its control cycle.
#[test]
fn sim_no_skip_keeps_every_simulated_cycle_under_control() {
    let scene = Scene::default();
    for no_skip in [false, true] {
        let world = world_above_skin(&scene);
        let hold = world.ground_truth().t_base_probe;
        let ctl =
            ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
        let rt = RtConfig {
            sim_no_skip: no_skip,
            ..RtConfig::default()
        };
        let run = spawn_realtime_with(
            world,
            ctl,
            stalling_source(hold),
            Duration::from_millis(1),
            300,
            rt,
        )
        .unwrap()
        .join()
        .unwrap();
        let s = run.stats;
        print_stats(&format!("sim_no_skip {no_skip}"), &s);
        check_consistent(&s, 300);
        assert!(s.skipped >= 20, "the 30 ms stall skipped deadlines");
        let sim_s = run.plant.time_s();
        let cycles_s = s.cycles as f64 * 1e-3;
        if no_skip {
            assert!(
                (sim_s - cycles_s).abs() < 1e-9,
                "{sim_s} s simulated, {cycles_s} s of cycles"
            );
            assert!(sim_s < 0.29);
        } else {
            assert!((sim_s - 0.3).abs() < 1e-9, "{sim_s}");
        }
    }
}
