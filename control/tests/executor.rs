//! The scan-protocol executor in closed loop against the simulator.

mod common;

use common::*;
use telecho_control::{
    run_simulated, AbortCause, ContactPhase, ControllerConfig, ExecutorConfig, ProbeController,
    SafetyEventKind, ScanExecutor, ScanProtocol, ScanState,
};
use telecho_sim::{ContactParams, FtFault, SimWorld, WorldConfig};

struct ScanResult {
    state: ScanState,
    abort: Option<AbortCause>,
    duration_s: f64,
    sweep_rms_n: f64,
    sweep_over_n: f64,
    max_force_n: f64,
    sweeps_done: usize,
    events: Vec<SafetyEventKind>,
}

fn world_for_seed(seed: u64) -> (SimWorld, f64) {
    let mut c = WorldConfig::ur5e();
    c.seed = seed;
    c.phantom_seed = seed;
    // Stiffness drawn over the range from the seed (as `telecho scan` draws it).
    let k = telecho_sim::plant::seeded_stiffness_n_per_mm(seed);
    c.contact = ContactParams {
        stiffness_n_per_mm: k,
        ..ContactParams::default()
    };
    (SimWorld::new(&c).unwrap(), k)
}

fn run_scan(
    seed: u64,
    protocol: &ScanProtocol,
    mut inject: impl FnMut(&mut SimWorld, &ScanExecutor),
) -> ScanResult {
    let (world, _k) = world_for_seed(seed);
    let config = controller_config();
    let start = start_pose(&world, seed);
    let mut exec =
        ScanExecutor::new(protocol, &start, &config.safety, ExecutorConfig::default()).unwrap();
    let mut ctl = ProbeController::from_urdf_str(&urdf_text("ur5e_probe.urdf"), config).unwrap();
    let mut out = ctl.new_output();
    let mut plant = world;
    let mut stats = ForceStats::default();
    let mut max_force: f64 = 0.0;
    let mut events = Vec::new();
    let mut sweeps_done = 0;
    let mut last_state = ScanState::Idle;
    // Step in chunks so the fault injector can look at the executor between cycles.
    let mut t = 0.0;
    while t < 600.0 && !exec.is_finished() {
        run_simulated(
            &mut plant,
            &mut ctl,
            &mut exec,
            &mut out,
            DT,
            1,
            |p, out| {
                let gt = p.ground_truth();
                let f = gt.contact_force_base_n.norm();
                max_force = max_force.max(f);
                events.extend(out.events.as_slice().iter().map(|e| e.kind));
                let axial = -gt
                    .contact_force_base_n
                    .dot(&gt.t_base_probe.rotation.column(2).into_owned());
                if out.contact_phase == ContactPhase::Regulate && last_state == ScanState::Sweep {
                    stats.add(axial, 8.0);
                }
                true
            },
        );
        if last_state == ScanState::Sweep && exec.state() != ScanState::Sweep {
            sweeps_done += 1;
        }
        last_state = exec.state();
        inject(&mut plant, &exec);
        t = plant.time_s();
    }
    ScanResult {
        state: exec.state(),
        abort: exec.abort_cause(),
        duration_s: t,
        sweep_rms_n: stats.rms(),
        sweep_over_n: stats.max_over,
        max_force_n: max_force,
        sweeps_done,
        events,
    }
}

/// The built-in lumbar protocol (3 sagittal sweeps L5–L1, 5 transverse sweeps) completes on
/// seeded patients (placement ±50 mm / ±20°, breathing 2–5 mm at 0.2–0.3 Hz, stiffness drawn in
/// 0.5–5 N/mm, start pose from the nominal placement with a 5–10 mm palpation error).
#[test]
fn default_lumbar_protocol_completes_on_seeds() {
    let protocol = ScanProtocol::default_lumbar();
    for seed in [1, 2, 3] {
        let r = run_scan(seed, &protocol, |_, _| {});
        println!(
            "seed {seed} (k {:.2} N/mm): {:?} after {:.1} s, {} sweeps, sweep force RMS {:.3} N, \
             overshoot {:.3} N, max {:.2} N, events {:?}",
            world_for_seed(seed).1,
            r.state,
            r.duration_s,
            r.sweeps_done,
            r.sweep_rms_n,
            r.sweep_over_n,
            r.max_force_n,
            r.events
        );
        assert_eq!(r.state, ScanState::Done, "seed {seed}: {:?}", r.abort);
        assert_eq!(r.sweeps_done, protocol.sweeps.len());
        assert!(r.events.is_empty());
        assert!(r.sweep_rms_n < 0.3, "seed {seed}");
        assert!(r.sweep_over_n < 2.0, "seed {seed}");
        assert!(r.max_force_n < 20.0);
    }
}

#[test]
fn malformed_protocol_is_refused_before_anything_moves() {
    // Syntax and range errors name the line.
    let bad = "name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.1]\nforce_n = 40.0\n";
    let e = ScanProtocol::from_toml_str(bad, "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 7") && e.contains("force_n"), "{e}");
    // A valid protocol whose sweeps leave the workspace box is refused by the executor.
    let far = ScanProtocol::from_toml_str(
        "name = \"far\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.29]\n",
        "far.toml",
    )
    .unwrap();
    let (world, _) = world_for_seed(1);
    let mut config = controller_config();
    config.safety.workspace_max_m[1] = 0.1;
    let start = start_pose(&world, 1);
    let e = ScanExecutor::new(&far, &start, &config.safety, ExecutorConfig::default()).unwrap_err();
    assert!(
        e.is_executor() && e.to_string().contains("workspace"),
        "{e}"
    );
    // A NaN start pose too.
    let mut nan = start;
    nan.translation.x = f64::NAN;
    assert!(ScanExecutor::new(
        &far,
        &nan,
        &ControllerConfig::default().safety,
        ExecutorConfig::default()
    )
    .is_err());
    // Nothing was stepped: the arm is where it started.
    assert_eq!(world.time_s(), 0.0);
}

/// An F/T NaN fault in the middle of the second sweep: fault stop, then Retract → Aborted.
#[test]
fn safety_event_mid_sweep_aborts_to_retract_then_aborted() {
    let protocol = ScanProtocol::default_lumbar();
    let mut injected = false;
    let mut states = Vec::new();
    let r = run_scan(2, &protocol, |w, exec| {
        let p = exec.progress();
        if states.last() != Some(&p.state) {
            states.push(p.state);
        }
        if !injected && p.state == ScanState::Sweep && p.sweep_index == 1 && p.sweep_fraction > 0.5
        {
            w.set_ft_fault(Some(FtFault::Nan));
            injected = true;
        }
    });
    println!(
        "abort: {:?}, states {:?}, events {:?}, max force {:.2} N",
        r.abort, states, r.events, r.max_force_n
    );
    assert!(injected);
    assert_eq!(r.state, ScanState::Aborted);
    assert!(matches!(
        r.abort,
        Some(AbortCause::Safety(e)) if e.kind == SafetyEventKind::SensorNan
    ));
    let n = states.len();
    assert_eq!(
        &states[n - 3..],
        &[ScanState::Sweep, ScanState::Retract, ScanState::Aborted]
    );
    assert!(r.max_force_n < 20.0);
}

/// `/scan/stop` mid-sweep: the executor lifts the probe straight off (no safety event, the force
/// ramps down through the controller) and ends in Aborted with the cause `Stopped`.
#[test]
fn stop_request_mid_sweep_lifts_off_and_ends_aborted() {
    let protocol = ScanProtocol::default_lumbar();
    let (mut plant, _) = world_for_seed(2);
    let config = controller_config();
    let start = start_pose(&plant, 2);
    let mut exec =
        ScanExecutor::new(&protocol, &start, &config.safety, ExecutorConfig::default()).unwrap();
    let mut ctl = ProbeController::from_urdf_str(&urdf_text("ur5e_probe.urdf"), config).unwrap();
    let mut out = ctl.new_output();
    let mut stopped_at = None;
    let mut events = Vec::new();
    let mut max_force: f64 = 0.0;
    let mut force_at_stop = 0.0;
    let mut t = 0.0;
    while t < 300.0 && !exec.is_finished() {
        run_simulated(
            &mut plant,
            &mut ctl,
            &mut exec,
            &mut out,
            DT,
            1,
            |p, out| {
                max_force = max_force.max(p.ground_truth().contact_force_base_n.norm());
                events.extend(out.events.as_slice().iter().map(|e| e.kind));
                true
            },
        );
        t = plant.time_s();
        let p = exec.progress();
        if stopped_at.is_none() && p.state == ScanState::Sweep && p.sweep_fraction > 0.3 {
            force_at_stop = plant.ground_truth().contact_force_base_n.norm();
            exec.stop(t, &out);
            stopped_at = Some(t);
            assert_eq!(exec.state(), ScanState::Retract);
        }
    }
    let stopped_at = stopped_at.expect("the scan reached its first sweep");
    let gt = plant.ground_truth();
    println!(
        "stopped at {stopped_at:.2} s with {force_at_stop:.2} N; ended {:?} at {t:.2} s, force \
         now {:.3} N, max {max_force:.2} N, events {events:?}",
        exec.state(),
        gt.contact_force_base_n.norm()
    );
    assert!(force_at_stop > 5.0, "it was pressing when stopped");
    assert_eq!(exec.state(), ScanState::Aborted);
    assert_eq!(exec.abort_cause(), Some(AbortCause::Stopped));
    assert!(
        t - stopped_at < 15.0,
        "retract took {:.1} s",
        t - stopped_at
    );
    assert_eq!(gt.contact_force_base_n.norm(), 0.0, "off the skin");
    assert!(events.is_empty(), "{events:?}");
    assert!(max_force < 20.0);
    // A second stop changes nothing.
    exec.stop(t, &out);
    assert_eq!(exec.abort_cause(), Some(AbortCause::Stopped));
}
