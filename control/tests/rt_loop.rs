//! The real-time loop on its own thread and the as-fast-as-possible simulated path. Nothing here
//! asserts on timing (the machine may be loaded); only that the loop runs its cycles, keeps
//! consistent statistics and drives the plant.

mod common;

use std::time::Duration;

use common::*;
use telecho_control::{
    run_simulated, spawn_realtime, ControlMode, FnSource, ProbeController, ProbeTarget,
};
use telecho_core::Transform;

#[test]
fn realtime_thread_runs_cycles_and_reports_timing() {
    let scene = Scene::default();
    let world = world_above_skin(&scene);
    let hold = world.ground_truth().t_base_probe;
    let ctl = ProbeController::from_urdf_str(&urdf_text(scene.urdf), controller_config()).unwrap();
    let source = FnSource(move |t: f64, _: &telecho_control::ControlOutput| {
        (t > 0.25).then(|| ProbeTarget::free(t, hold))
    });
    let handle =
        spawn_realtime(SimPlant(world), ctl, source, Duration::from_millis(1), 400).unwrap();
    let run = handle.join().unwrap();
    let s = run.stats;
    println!(
        "rt loop: {} cycles, {} misses, compute median {:.1} µs p99 {:.1} µs max {:.1} µs, \
         jitter median {:.1} µs p99 {:.1} µs max {:.1} µs",
        s.cycles,
        s.deadline_misses,
        s.compute.median_s * 1e6,
        s.compute.p99_s * 1e6,
        s.compute.max_s * 1e6,
        s.jitter.median_s * 1e6,
        s.jitter.p99_s * 1e6,
        s.jitter.max_s * 1e6
    );
    assert_eq!(s.cycles, 400);
    assert!(s.deadline_misses <= s.cycles);
    assert!(s.compute.median_s <= s.compute.p99_s && s.compute.p99_s <= s.compute.max_s);
    assert!(s.jitter.median_s <= s.jitter.p99_s && s.jitter.p99_s <= s.jitter.max_s);
    assert!((run.plant.0.time_s() - 0.4).abs() < 1e-9);
    assert_eq!(run.output.mode, ControlMode::Free);
}

#[test]
fn simulated_run_stops_when_asked() {
    let scene = Scene::default();
    let mut plant = SimPlant(world_above_skin(&scene));
    let hold: Transform = plant.0.ground_truth().t_base_probe;
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
        |p, _| p.0.time_s() < 0.5,
    );
    assert_eq!(n, 500);
    assert_eq!(out.mode, ControlMode::Free);
}
