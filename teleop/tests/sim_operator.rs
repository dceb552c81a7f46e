//! A simulated operator (mass–spring–damper arm, model-mediated haptics) steering the simulated
//! robot in contact through the I/O-free protocol cores, with a simulated network between them:
//! seeded delay, jitter and loss on datagrams, the same delay on the reliable control stream.
//! Deterministic and faster than real time (one 1 ms step of everything per loop).
//!
//! The real-network version of the link (QUIC through the impairment proxy) is measured by
//! `telecho teleop bench`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use nalgebra::{Matrix3, UnitQuaternion, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_control::{
    run_simulated, ControlOutput, ControllerConfig, ProbeController, SafetyConfig, Severity,
};
use telecho_sim::plant::{operator_start_pose, patient_workspace, seeded_stiffness_n_per_mm};
use telecho_sim::{SimWorld, UrdfSource, WorldConfig};
use telecho_teleop::console::{ConsoleConfig, ConsoleCore, ConsoleOutput};
use telecho_teleop::control_link::{contact_model, OperatorSource};
use telecho_teleop::haptics::{ArmModel, HapticDevice, SimulatedOperator};
use telecho_teleop::identity::Identity;
use telecho_teleop::session::{Output, PatientConfig, PatientCore};
use telecho_teleop::wire::{CommandMode, Message, Pose, Role, Target};

const URDF: &str = include_str!("../../urdf/ur5e_probe.urdf");
const DT: f64 = 1e-3;
/// The console's clock runs this far ahead of the patient's (clock sync must find it).
const CONSOLE_OFFSET_S: f64 = 5.0;

#[derive(Debug)]
enum Packet {
    Datagram(Vec<u8>),
    Control(Message),
}

/// One direction of the simulated network.
#[derive(Debug)]
struct Link {
    one_way_s: f64,
    jitter_s: f64,
    loss: f64,
    rng: ChaCha8Rng,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    items: std::collections::HashMap<u64, Packet>,
    n: u64,
}

impl Link {
    fn new(one_way_s: f64, jitter_s: f64, loss: f64, seed: u64) -> Self {
        Self {
            one_way_s,
            jitter_s,
            loss,
            rng: ChaCha8Rng::seed_from_u64(seed),
            heap: BinaryHeap::new(),
            items: std::collections::HashMap::new(),
            n: 0,
        }
    }

    fn send(&mut self, now_s: f64, p: Packet) {
        let delay = match &p {
            // Datagrams: jitter (reordering) and loss.
            Packet::Datagram(_) => {
                if self.rng.random::<f64>() < self.loss {
                    return;
                }
                self.one_way_s + self.jitter_s * self.rng.random::<f64>()
            }
            // The reliable stream: in order, constant delay.
            Packet::Control(_) => self.one_way_s,
        };
        let at_us = ((now_s + delay) * 1e6).round() as u64;
        self.n += 1;
        self.heap.push(Reverse((at_us, self.n)));
        self.items.insert(self.n, p);
    }

    fn due(&mut self, now_s: f64) -> Vec<Packet> {
        let now_us = (now_s * 1e6).round() as u64;
        let mut out = Vec::new();
        while let Some(Reverse((at, n))) = self.heap.peek().copied() {
            if at > now_us {
                break;
            }
            self.heap.pop();
            if let Some(p) = self.items.remove(&n) {
                out.push(p);
            }
        }
        out
    }
}

#[derive(Debug)]
struct Outcome {
    tracking_rms_mm: f64,
    tracking_max_mm: f64,
    force_mean_n: f64,
    force_std_n: f64,
    force_p2p_n: f64,
    force_max_n: f64,
    stop_events: Vec<String>,
    commands_applied: u64,
    energy_delivered_j: f64,
    energy_absorbed_j: f64,
    tank_initial_j: f64,
    samples: usize,
}

fn smooth(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    u * u * (3.0 - 2.0 * u)
}

/// Runs the scenario at `rtt_s` round trip: approach in free space, contact at 5 N, then a
/// 40 mm sweep along the spine at 10 mm/s, the hand pressing 5 mm into the rendered skin.
fn run(rtt_s: f64, seed: u64) -> Outcome {
    // The patient of seed 1 and the control node, as `telecho scan` builds them.
    let wc = WorldConfig {
        seed,
        phantom_seed: seed,
        breathing: None,
        ..WorldConfig::with_urdf(UrdfSource::Xml(URDF.to_owned()))
    };
    let mut wc = wc;
    wc.contact.stiffness_n_per_mm = seeded_stiffness_n_per_mm(seed);
    let mut world = SimWorld::new(&wc).unwrap();
    let (workspace_min_m, workspace_max_m) = patient_workspace(&world.nominal_t_base_ct());
    let cc = ControllerConfig {
        safety: SafetyConfig {
            workspace_min_m,
            workspace_max_m,
            ..SafetyConfig::default()
        },
        ..ControllerConfig::default()
    };
    let mut controller = ProbeController::from_urdf_str(URDF, cc).unwrap();
    let mut out: ControlOutput = controller.new_output();
    let mut source = OperatorSource::new();

    // The protocol cores.
    let mut pc = PatientConfig::default();
    pc.acceptor.max_age_s = (rtt_s * 0.5 + 0.3).max(0.2);
    pc.acceptor.workspace_min_m = Vector3::from(workspace_min_m);
    pc.acceptor.workspace_max_m = Vector3::from(workspace_max_m);
    let mut patient = PatientCore::new(pc).unwrap();
    let mut console = ConsoleCore::new(ConsoleConfig::default()).unwrap();
    let tank_initial_j = ConsoleConfig::default().haptic.tank_initial_j;
    let mut up = Link::new(rtt_s / 2.0, 0.005, 0.01, seed ^ 0xA);
    let mut down = Link::new(rtt_s / 2.0, 0.005, 0.01, seed ^ 0xB);
    patient.connect(
        1,
        Identity {
            name: "operator".into(),
            fingerprint: "00".repeat(32),
            role: Role::Operator,
        },
        "sim",
        0.0,
    );
    console.start("sim-operator", CONSOLE_OFFSET_S);
    console.acquire();

    // The operator's plan (base frame): transverse probe (array lateral), beam into the back.
    let start = operator_start_pose(&world, seed);
    let r = start.rotation;
    let (lateral, cranial, normal) = (
        r.column(0).into_owned(),
        r.column(1).into_owned(),
        r.column(2).into_owned(),
    );
    let z = -normal;
    let rot = Matrix3::from_columns(&[lateral, z.cross(&lateral), z]);
    let q = UnitQuaternion::from_matrix(&rot);
    let p_init = world.ground_truth().t_base_probe.translation;
    let above = start.translation + normal * 0.015;
    let pressed = start.translation - normal * 0.005;
    // The operator waits until the robot answers (lease, first commands) before moving.
    let wait_s = rtt_s + 1.0;
    let approach_s = wait_s + ((above - p_init).norm() / 0.04).max(2.0);
    let settle_s = approach_s + 3.0;
    let sweep_s = 4.0;
    let end_s = settle_s + sweep_s + 1.0;
    let path = move |t: f64| -> Vector3<f64> {
        if t < approach_s {
            p_init + (above - p_init) * smooth((t - wait_s) / (approach_s - wait_s))
        } else if t < settle_s {
            above + (pressed - above) * smooth((t - approach_s) / 1.0)
        } else {
            // 40 mm along the spine, eased in and out (10 mm/s cruise).
            let u = (t - settle_s) / sweep_s;
            let u = u.clamp(0.0, 1.0);
            let tau = 2.0 * std::f64::consts::PI;
            pressed + cranial * 0.04 * (u - (tau * u).sin() / tau)
        }
    };
    let mut op = SimulatedOperator::new(ArmModel::default(), path).unwrap();

    let mut sq = 0.0;
    let mut n = 0usize;
    let mut err_max: f64 = 0.0;
    let mut forces = Vec::new();
    let mut force_max: f64 = 0.0;
    let mut stop_events = Vec::new();
    let steps = (end_s / DT) as usize;
    for k in 0..steps {
        let t = k as f64 * DT;
        let tc = t + CONSOLE_OFFSET_S;
        // Network → patient.
        for p in up.due(t) {
            match p {
                Packet::Datagram(b) => {
                    let _ = patient.handle_datagram(1, &b, t);
                }
                Packet::Control(m) => patient.handle_control(1, m, t).unwrap(),
            }
        }
        if k.is_multiple_of(5) {
            patient.tick(t);
        }
        while let Some(o) = patient.poll_output() {
            match o {
                Output::Datagram { msg, .. } => down.send(t, Packet::Datagram(msg.to_bytes())),
                Output::Control { msg, .. } => down.send(t, Packet::Control(msg)),
                Output::Command(c) => source.push_command(c),
                Output::Link(ev) => source.link(ev),
                Output::Session { request, .. } => source.session(&request),
                Output::Audit { .. } => {}
            }
        }
        // The control node: one 1 ms cycle of controller + supervisor + simulator.
        run_simulated(
            &mut world,
            &mut controller,
            &mut source,
            &mut out,
            DT,
            1,
            |_, _| true,
        );
        for e in out.events.as_slice() {
            if e.kind.severity() == Severity::Stop {
                stop_events.push(format!("{} at {:.3} s", e.kind.name(), t));
            }
        }
        let gt = world.ground_truth();
        force_max = force_max.max(gt.contact_force_base_n.norm());
        if k.is_multiple_of(10) {
            let msg = patient.haptic(
                t,
                out.contact_force_base_n,
                Vector3::zeros(),
                contact_model(&out, 50.0),
            );
            down.send(t, Packet::Datagram(msg.to_bytes()));
        }
        // Network → console.
        for p in down.due(t) {
            match p {
                Packet::Datagram(b) => {
                    let _ = console.handle_datagram(&b, tc);
                }
                Packet::Control(m) => console.handle_control(m).unwrap(),
            }
        }
        if k.is_multiple_of(5) {
            console.tick(tc);
        }
        // The operator's hand and the haptic loop (1 kHz).
        op.step(DT);
        let s = op.sample();
        let f = console
            .renderer()
            .render(&s.position_m, &s.velocity_m_s, DT);
        op.set_force(f.force_n);
        // Commands at 500 Hz once the lease is ours.
        if k.is_multiple_of(2) && console.has_lease() {
            let contact = t >= approach_s;
            console.command(
                tc,
                if contact {
                    CommandMode::Contact
                } else {
                    CommandMode::Free
                },
                if contact { 5.0 } else { 0.0 },
                Target::Pose(Pose {
                    position_m: s.position_m,
                    orientation: q,
                }),
            );
        }
        while let Some(o) = console.poll_output() {
            match o {
                ConsoleOutput::Datagram(m) => up.send(t, Packet::Datagram(m.to_bytes())),
                ConsoleOutput::Control(m) => up.send(t, Packet::Control(m)),
                ConsoleOutput::Event(_) => {}
            }
        }
        // Score the sweep: tangential distance probe ↔ hand, true axial force.
        if t >= settle_s + 0.5 && t < settle_s + sweep_s + 0.5 {
            let d = gt.t_base_probe.translation - s.position_m;
            let tangential = d - normal * d.dot(&normal);
            let e = tangential.norm();
            sq += e * e;
            err_max = err_max.max(e);
            n += 1;
            let axis = gt.t_base_probe.rotation.column(2).into_owned();
            forces.push(-gt.contact_force_base_n.dot(&axis));
        }
    }
    let mean = forces.iter().sum::<f64>() / forces.len().max(1) as f64;
    let var = forces.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / forces.len().max(1) as f64;
    let (lo, hi) = forces
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), f| {
            (a.min(*f), b.max(*f))
        });
    let tank = *console.renderer().tank();
    Outcome {
        tracking_rms_mm: (sq / n.max(1) as f64).sqrt() * 1e3,
        tracking_max_mm: err_max * 1e3,
        force_mean_n: mean,
        force_std_n: var.sqrt(),
        force_p2p_n: hi - lo,
        force_max_n: force_max,
        stop_events,
        commands_applied: source.stats().applied,
        energy_delivered_j: tank.delivered_j(),
        energy_absorbed_j: tank.absorbed_j(),
        tank_initial_j,
        samples: n,
    }
}

#[test]
fn operator_tracks_the_scan_path_at_300_ms_rtt() {
    let o = run(0.3, 1);
    eprintln!("300 ms RTT: {o:#?}");
    assert!(o.samples > 3000);
    assert!(o.commands_applied > 2000);
    assert!(
        o.tracking_rms_mm <= 2.0,
        "tracking RMS {:.2} mm (max {:.2} mm)",
        o.tracking_rms_mm,
        o.tracking_max_mm
    );
    // In contact at the setpoint, without oscillation.
    assert!(
        (o.force_mean_n - 5.0).abs() < 1.0,
        "mean force {:.2} N",
        o.force_mean_n
    );
    assert!(o.force_std_n < 0.5, "force std {:.2} N", o.force_std_n);
    assert!(
        o.force_p2p_n < 2.5,
        "force peak-to-peak {:.2} N",
        o.force_p2p_n
    );
    assert!(o.force_max_n < 20.0);
    assert!(o.stop_events.is_empty(), "{:?}", o.stop_events);
    // The haptic loop stayed passive.
    assert!(o.energy_delivered_j <= o.energy_absorbed_j + o.tank_initial_j + 1e-9);
}

#[test]
fn operator_stays_stable_at_1_s_rtt() {
    let o = run(1.0, 1);
    eprintln!("1 s RTT: {o:#?}");
    assert!(o.samples > 3000);
    assert!(o.commands_applied > 2000);
    assert!(
        o.tracking_rms_mm <= 10.0,
        "tracking RMS {:.2} mm",
        o.tracking_rms_mm
    );
    assert!(
        (o.force_mean_n - 5.0).abs() < 1.5,
        "mean force {:.2} N",
        o.force_mean_n
    );
    assert!(o.force_std_n < 1.0, "force std {:.2} N", o.force_std_n);
    assert!(o.force_max_n < 20.0);
    assert!(o.stop_events.is_empty(), "{:?}", o.stop_events);
    assert!(o.energy_delivered_j <= o.energy_absorbed_j + o.tank_initial_j + 1e-9);
}
