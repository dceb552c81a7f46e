//! The patient and console cores talking over a simulated network, in memory, on an injected
//! clock: deterministic, no sockets, no sleeping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use nalgebra::{UnitQuaternion, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_teleop::audit::AuditEvent;
use telecho_teleop::console::{ConsoleConfig, ConsoleCore, ConsoleEvent, ConsoleOutput};
use telecho_teleop::identity::Identity;
use telecho_teleop::session::{ControlCommand, Output, PatientConfig, PatientCore, SessionRequest};
use telecho_teleop::watchdog::LinkEvent;
use telecho_teleop::wire::{
    CommandMode, LeaseOutcome, LinkState, Message, Pose, ReplyStatus, Role, Target,
};

/// A packet in flight: delivery time (patient clock, ns), order, destination, payload.
type Flight = Reverse<(u64, u64, Dest, Payload)>;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Patient(u64),
    Console(usize),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Payload {
    Datagram(Vec<u8>),
    Control(Vec<u8>),
}

struct Client {
    conn: u64,
    offset_s: f64,
    core: ConsoleCore,
    events: Vec<ConsoleEvent>,
}

/// Two sides and the network between them.
struct World {
    now_ns: u64,
    patient: PatientCore,
    clients: Vec<Client>,
    flights: BinaryHeap<Flight>,
    order: u64,
    rng: ChaCha8Rng,
    delay_s: f64,
    jitter_s: f64,
    loss: f64,
    commands: Vec<ControlCommand>,
    links: Vec<LinkEvent>,
    sessions: Vec<(String, SessionRequest)>,
    audit: Vec<AuditEvent>,
}

fn identity(name: &str, role: Role) -> Identity {
    Identity {
        name: name.into(),
        fingerprint: format!("{:0>64}", name.len()),
        role,
    }
}

impl World {
    fn new(delay_s: f64, jitter_s: f64, loss: f64) -> Self {
        Self {
            now_ns: 100_000_000_000,
            patient: PatientCore::new(PatientConfig::default()).unwrap(),
            clients: Vec::new(),
            flights: BinaryHeap::new(),
            order: 0,
            rng: ChaCha8Rng::seed_from_u64(11),
            delay_s,
            jitter_s,
            loss,
            commands: Vec::new(),
            links: Vec::new(),
            sessions: Vec::new(),
            audit: Vec::new(),
        }
    }

    fn now(&self) -> f64 {
        self.now_ns as f64 * 1e-9
    }

    fn console_now(&self, i: usize) -> f64 {
        self.now() + self.clients[i].offset_s
    }

    fn send(&mut self, to: Dest, payload: Payload) {
        let reliable = matches!(payload, Payload::Control(_));
        if !reliable && self.rng.random::<f64>() < self.loss {
            return;
        }
        // Control streams are ordered: no jitter on them.
        let jitter = if reliable {
            0.0
        } else {
            self.jitter_s * self.rng.random::<f64>()
        };
        let at = self.now_ns + ((self.delay_s + jitter) * 1e9) as u64;
        self.order += 1;
        self.flights.push(Reverse((at, self.order, to, payload)));
    }

    fn connect(&mut self, name: &str, role: Role, offset_s: f64) -> usize {
        let conn = self.clients.len() as u64 + 1;
        self.clients.push(Client {
            conn,
            offset_s,
            core: ConsoleCore::new(ConsoleConfig::default()).unwrap(),
            events: Vec::new(),
        });
        let now = self.now();
        self.patient.connect(conn, identity(name, role), "sim", now);
        let i = self.clients.len() - 1;
        let t = self.console_now(i);
        self.clients[i].core.start("sim console", t);
        self.pump();
        i
    }

    /// Moves every queued output onto the network or into the collected lists.
    fn pump(&mut self) {
        while let Some(o) = self.patient.poll_output() {
            match o {
                Output::Datagram { to, msg } => {
                    if let Some(i) = self.clients.iter().position(|c| c.conn == to) {
                        self.send(Dest::Console(i), Payload::Datagram(msg.to_bytes()));
                    }
                }
                Output::Control { to, msg } => {
                    if let Some(i) = self.clients.iter().position(|c| c.conn == to) {
                        self.send(Dest::Console(i), Payload::Control(msg.to_bytes()));
                    }
                }
                Output::Command(c) => self.commands.push(c),
                Output::Link(l) => self.links.push(l),
                Output::Session { by, request } => self.sessions.push((by, request)),
                Output::Audit { what, .. } => self.audit.push(what),
            }
        }
        for i in 0..self.clients.len() {
            while let Some(o) = self.clients[i].core.poll_output() {
                let conn = self.clients[i].conn;
                match o {
                    ConsoleOutput::Datagram(m) => {
                        self.send(Dest::Patient(conn), Payload::Datagram(m.to_bytes()))
                    }
                    ConsoleOutput::Control(m) => {
                        self.send(Dest::Patient(conn), Payload::Control(m.to_bytes()))
                    }
                    ConsoleOutput::Event(e) => self.clients[i].events.push(e),
                }
            }
        }
    }

    /// Advances by `dt_s` in 1 ms steps, delivering and ticking; `each` runs every step.
    fn run(&mut self, dt_s: f64, mut each: impl FnMut(&mut Self)) {
        let end = self.now_ns + (dt_s * 1e9).round() as u64;
        while self.now_ns < end {
            self.now_ns += 1_000_000;
            while self
                .flights
                .peek()
                .is_some_and(|Reverse((at, ..))| *at <= self.now_ns)
            {
                let Some(Reverse((_, _, to, payload))) = self.flights.pop() else {
                    break;
                };
                let now = self.now();
                match (to, payload) {
                    (Dest::Patient(conn), Payload::Datagram(b)) => {
                        let _ = self.patient.handle_datagram(conn, &b, now);
                    }
                    (Dest::Patient(conn), Payload::Control(b)) => {
                        let m = Message::decode(&b).unwrap();
                        self.patient.handle_control(conn, m, now).unwrap();
                    }
                    (Dest::Console(i), Payload::Datagram(b)) => {
                        let t = self.console_now(i);
                        let _ = self.clients[i].core.handle_datagram(&b, t);
                    }
                    (Dest::Console(i), Payload::Control(b)) => {
                        let m = Message::decode(&b).unwrap();
                        self.clients[i].core.handle_control(m).unwrap();
                    }
                }
            }
            let now = self.now();
            self.patient.tick(now);
            for i in 0..self.clients.len() {
                let t = self.console_now(i);
                self.clients[i].core.tick(t);
            }
            each(self);
            self.pump();
        }
    }

    fn lease_outcomes(&self, i: usize) -> Vec<LeaseOutcome> {
        self.clients[i]
            .events
            .iter()
            .filter_map(|e| match e {
                ConsoleEvent::Lease { outcome, .. } => Some(*outcome),
                _ => None,
            })
            .collect()
    }
}

/// The operator's hand: moving along x at 20 mm/s from 0.40 m.
fn hand(t_console: f64, t0: f64) -> Vector3<f64> {
    Vector3::new(0.40 + 0.02 * (t_console - t0), 0.0, 0.30)
}

fn pose_target(p: Vector3<f64>) -> Target {
    Target::Pose(Pose {
        position_m: p,
        orientation: UnitQuaternion::identity(),
    })
}

#[test]
fn operator_steers_observer_watches_over_a_delayed_lossy_link() {
    // 60 ms each way + up to 10 ms jitter, 1 % loss; console clocks far from the patient's.
    let mut w = World::new(0.060, 0.010, 0.01);
    let op = w.connect("operator", Role::Operator, 1000.0);
    let obs = w.connect("observer", Role::Observer, -50.0);
    w.run(0.5, |_| {});
    // Welcomed with the roles from the certificates.
    for (i, role) in [(op, Role::Operator), (obs, Role::Observer)] {
        assert_eq!(w.clients[i].core.role(), Some(role));
    }
    w.clients[op].core.acquire();
    w.clients[obs].core.acquire();
    w.pump();
    w.run(0.3, |_| {});
    assert_eq!(w.lease_outcomes(op), [LeaseOutcome::Granted]);
    assert_eq!(
        w.lease_outcomes(obs),
        [
            LeaseOutcome::Changed,
            LeaseOutcome::Denied(telecho_teleop::wire::DenyReason::NotOperator)
        ]
    );
    assert!(w.clients[op].core.has_lease());
    assert_eq!(w.patient.lease_holder(), Some("operator"));

    // 2 s of commands at 500 Hz from both; only the operator's reach the control node.
    let t0 = w.console_now(op);
    w.run(2.0, |w| {
        if w.now_ns % 2_000_000 == 0 {
            for i in [op, obs] {
                let t = w.console_now(i);
                let target = pose_target(hand(w.console_now(op), t0));
                w.clients[i]
                    .core
                    .command(t, CommandMode::Contact, 5.0, target);
            }
        }
    });
    let n = w.commands.len();
    // 1000 sent 2 ms apart; with up to 10 ms of independent jitter per datagram many overtake
    // each other and the older of a pair is dropped (newest wins); 1 % are lost.
    let s = w.patient.stats().commands;
    assert!(n > 450, "{n} accepted");
    assert!(s.reordered > 200 && s.stale == 0, "{s:?}");
    // Not accepted nor reordered: lost (1 %) or still in flight at the end (65 ms ≈ 33).
    let missing = 1000 - n as u64 - s.reordered;
    assert!((30..=60).contains(&missing), "{missing} missing");
    assert!(w.commands.iter().all(|c| c.operator == "operator"));
    assert!(w.commands.windows(2).all(|p| p[1].seq > p[0].seq));
    assert!(s.not_holder >= 950, "{s:?}");
    assert_eq!(w.patient.stats().malformed_datagrams, 0);

    // Clock sync: the patient knows each console's clock within 5 ms (truth +1000 / −50 s).
    let e_op = w.patient.clock_estimate(1).unwrap();
    let e_obs = w.patient.clock_estimate(2).unwrap();
    assert!((e_op.offset_s - 1000.0).abs() < 0.005, "{e_op:?}");
    assert!((e_obs.offset_s + 50.0).abs() < 0.005, "{e_obs:?}");
    assert!((e_op.one_way_delay_s - 0.065).abs() < 0.004, "{e_op:?}");
    let c = w.clients[op].core.clock().unwrap();
    assert!((c.offset_s + 1000.0).abs() < 0.005, "{c:?}");

    // Ages 60–70 ms; the prediction puts the target where the hand is at arrival.
    let mut worst_sent: f64 = 0.0;
    let mut worst_pred: f64 = 0.0;
    for c in w.commands.iter().skip(50) {
        assert!(c.age_s > 0.055 && c.age_s < 0.076, "age {}", c.age_s);
        let hand_now = hand(c.received_s + 1000.0, t0);
        let (Target::Pose(sent), Target::Pose(pred)) = (c.sent_target, c.target) else {
            panic!("pose expected");
        };
        worst_sent = worst_sent.max((sent.position_m - hand_now).norm());
        worst_pred = worst_pred.max((pred.position_m - hand_now).norm());
    }
    assert!(worst_sent > 0.0011, "{worst_sent}"); // ≥ 1.2 mm behind unpredicted
    assert!(worst_pred < 0.0002, "{worst_pred}"); // within 0.2 mm predicted
    assert_eq!(w.patient.link_state(), LinkState::Live);

    // Every accepted command is audited.
    let accepted = w
        .audit
        .iter()
        .filter(|a| matches!(a, AuditEvent::Command { .. }))
        .count();
    assert_eq!(accepted, n);

    // The haptic echo gives the console its command round trip.
    let m = w
        .patient
        .haptic(w.now(), Vector3::new(0.0, 0.0, 5.0), Vector3::zeros(), None);
    if let Message::Haptic(h) = &m {
        assert_eq!(h.cmd_seq, w.commands.last().unwrap().seq);
    }
    let bytes = m.to_bytes();
    w.send(Dest::Console(op), Payload::Datagram(bytes));
    w.run(0.2, |_| {});
    let rtt = w.clients[op].core.latency().command_rtt_s.unwrap();
    assert!(rtt > 0.12 && rtt < 0.145, "{rtt}"); // 60–70 ms there, 60–70 ms back

    w.run(1.1, |_| {});
    // Observer commands were audited: the first at once, then a count once a second.
    let refusals: u64 = w
        .audit
        .iter()
        .filter_map(|a| match a {
            AuditEvent::CommandRefused { reason, count, .. }
                if reason == "not_holder (observer)" =>
            {
                Some(*count)
            }
            _ => None,
        })
        .sum();
    assert_eq!(refusals, w.patient.stats().commands.not_holder);
    assert!(refusals > 975, "{refusals}"); // 1000 sent, 1 % lost
}

#[test]
fn link_loss_holds_then_retracts_and_reset_needs_the_lease() {
    let mut w = World::new(0.02, 0.0, 0.0);
    let op = w.connect("operator", Role::Operator, 3.0);
    let obs = w.connect("observer", Role::Observer, 0.0);
    w.run(0.2, |_| {});
    w.clients[op].core.acquire();
    w.pump();
    w.run(0.1, |_| {});
    let mut sending = true;
    let mut stop_at = 0.0;
    w.run(1.0, |w| {
        if sending {
            let t = w.console_now(op);
            w.clients[op].core.command(
                t,
                CommandMode::Free,
                0.0,
                pose_target(Vector3::new(0.4, 0.0, 0.3)),
            );
            if w.now() > 100.6 {
                sending = false;
                stop_at = w.now();
            }
        }
    });
    w.run(1.5, |_| {});
    let states: Vec<LinkState> = w.links.iter().map(|l| l.state).collect();
    assert_eq!(
        states,
        [LinkState::Live, LinkState::Hold, LinkState::Retract]
    );
    // Last command arrived 20 ms after it was sent; hold 100 ms after that, retract 1 s.
    let last = w.commands.last().unwrap().received_s;
    assert!(
        (w.links[1].at_s - (last + 0.1)).abs() < 0.0015,
        "{:?}",
        w.links[1]
    );
    assert!(
        (w.links[2].at_s - (last + 1.0)).abs() < 0.0015,
        "{:?}",
        w.links[2]
    );
    assert!(last > stop_at);

    // The observer may stop the robot but not reset it; the holder may reset.
    w.clients[obs].core.estop();
    w.clients[obs].core.reset();
    w.clients[op].core.reset();
    w.pump();
    w.run(0.1, |_| {});
    w.sessions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        w.sessions,
        [
            ("observer".to_string(), SessionRequest::EStop),
            ("operator".to_string(), SessionRequest::Reset)
        ]
    );
    let replies: Vec<ReplyStatus> = w.clients[obs]
        .events
        .iter()
        .filter_map(|e| match e {
            ConsoleEvent::Reply { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [ReplyStatus::Ok, ReplyStatus::NotHolder]);
    // The reset cleared the latched retract.
    assert_eq!(w.links.last().unwrap().state, LinkState::Idle);
    assert_eq!(w.patient.link_state(), LinkState::Idle);
}

#[test]
fn take_over_between_consoles_and_disconnect_frees_the_lease() {
    let mut w = World::new(0.03, 0.0, 0.0);
    let a = w.connect("alice", Role::Operator, 0.0);
    let b = w.connect("bob", Role::Operator, 7.0);
    w.run(0.2, |_| {});
    w.clients[a].core.acquire();
    w.pump();
    w.run(0.1, |_| {});
    w.clients[b].core.take_over();
    w.pump();
    w.run(0.1, |_| {});
    assert!(w.clients[a].events.iter().any(|e| matches!(
        e,
        ConsoleEvent::TakeOverRequested { requester, .. } if requester == "bob"
    )));
    assert_eq!(w.lease_outcomes(b).last(), Some(&LeaseOutcome::Pending));
    w.clients[a].core.confirm_take_over();
    w.pump();
    w.run(0.1, |_| {});
    assert_eq!(w.patient.lease_holder(), Some("bob"));
    assert!(w.clients[b].core.has_lease() && !w.clients[a].core.has_lease());
    assert_eq!(w.lease_outcomes(a).last(), Some(&LeaseOutcome::Revoked));
    // Alice's commands no longer pass; bob's do (its own sequence space from 1).
    let before = w.commands.len();
    let ta = w.console_now(a);
    w.clients[a].core.command(
        ta,
        CommandMode::Free,
        0.0,
        pose_target(Vector3::new(0.4, 0.0, 0.3)),
    );
    let tb = w.console_now(b);
    w.clients[b].core.command(
        tb,
        CommandMode::Free,
        0.0,
        pose_target(Vector3::new(0.4, 0.0, 0.3)),
    );
    w.pump();
    w.run(0.1, |_| {});
    assert_eq!(w.commands.len(), before + 1);
    assert_eq!(w.commands.last().unwrap().operator, "bob");
    // Bob disconnects: lease free, alice is told and can acquire.
    let now = w.now();
    w.patient.disconnect(2, "closed", now);
    w.pump();
    w.run(0.1, |_| {});
    assert_eq!(w.patient.lease_holder(), None);
    assert_eq!(w.clients[a].core.holder(), "");
    w.clients[a].core.acquire();
    w.pump();
    w.run(0.1, |_| {});
    assert_eq!(w.patient.lease_holder(), Some("alice"));
    assert!(w.audit.iter().any(|e| matches!(
        e,
        AuditEvent::Lease { cause, from, to } if cause == "take_over_confirmed" && from == "alice" && to == "bob"
    )));
    assert!(w.audit.iter().any(|e| matches!(
        e,
        AuditEvent::Lease { cause, to, .. } if cause == "holder_disconnected" && to.is_empty()
    )));
}

#[test]
fn malformed_and_misdirected_input_is_refused() {
    let mut w = World::new(0.01, 0.0, 0.0);
    let op = w.connect("operator", Role::Operator, 0.0);
    w.run(0.1, |_| {});
    w.clients[op].core.acquire();
    w.pump();
    w.run(0.05, |_| {});
    let now = w.now();
    // Garbage, a NaN command, a truncated command: counted, audited, nothing reaches control.
    let good = Message::Command(telecho_teleop::wire::OperatorCommand {
        seq: 1,
        sent_s: now,
        mode: CommandMode::Free,
        force_n: 0.0,
        target: pose_target(Vector3::new(0.4, 0.0, 0.3)),
    })
    .to_bytes();
    let mut nan = good.clone();
    nan[10..18].copy_from_slice(&f64::NAN.to_le_bytes());
    for bytes in [vec![0xde, 0xad], nan, good[..40].to_vec()] {
        let e = w.patient.handle_datagram(1, &bytes, now).unwrap_err();
        assert!(e.is_decode());
    }
    w.pump();
    assert!(w.commands.is_empty());
    assert_eq!(w.patient.stats().malformed_datagrams, 3);
    assert!(w.audit.iter().any(|e| matches!(
        e,
        AuditEvent::CommandRefused { reason, .. } if reason == "malformed_datagram"
    )));
    // A replayed command (same bytes twice) passes once.
    w.patient.handle_datagram(1, &good, now + 0.001).unwrap();
    w.patient.handle_datagram(1, &good, now + 0.002).unwrap();
    w.pump();
    assert_eq!(w.commands.len(), 1);
    assert_eq!(w.patient.stats().commands.duplicate, 1);
    // Patient-to-console messages sent to the patient: on a datagram counted, on the
    // control stream a protocol violation.
    let state = w
        .patient
        .haptic(now, Vector3::zeros(), Vector3::zeros(), None);
    w.patient
        .handle_datagram(1, &state.to_bytes(), now)
        .unwrap();
    assert_eq!(w.patient.stats().unexpected, 1);
    assert!(w
        .patient
        .handle_control(
            1,
            Message::LeaseUpdate {
                req: 1,
                outcome: LeaseOutcome::Granted,
                holder: "x".into()
            },
            now
        )
        .is_err());
    assert!(w.patient.handle_control(1, state, now).is_err());
    // Invalid protocol names are refused.
    w.patient
        .handle_control(
            1,
            Message::StartProtocol {
                req: 9,
                name: "rm -rf /".into(),
            },
            now,
        )
        .unwrap();
    w.pump();
    assert!(w.sessions.is_empty());
}

#[test]
fn unknown_scan_protocols_are_answered_invalid() {
    let mut w = World::new(0.01, 0.0, 0.0);
    w.patient = PatientCore::new(PatientConfig {
        protocols: vec!["lumbar".into()],
        ..PatientConfig::default()
    })
    .unwrap();
    let op = w.connect("operator", Role::Operator, 0.0);
    w.run(0.1, |_| {});
    w.clients[op].core.acquire();
    w.pump();
    w.run(0.05, |_| {});
    let now = w.now();
    for (req, name) in [(21, "hip"), (22, "lumbar")] {
        w.patient
            .handle_control(
                1,
                Message::StartProtocol {
                    req,
                    name: name.into(),
                },
                now,
            )
            .unwrap();
    }
    let mut replies = Vec::new();
    while let Some(o) = w.patient.poll_output() {
        match o {
            Output::Control {
                msg: Message::Reply { req, status, text },
                ..
            } => replies.push((req, status, text)),
            Output::Session { request, .. } => w.sessions.push(("op".into(), request)),
            _ => {}
        }
    }
    // Only the known one reaches the control node; the unknown one is answered at once.
    assert_eq!(
        w.sessions,
        [(
            "op".to_owned(),
            SessionRequest::StartProtocol("lumbar".into())
        )]
    );
    let hip = replies
        .iter()
        .find(|r| r.0 == 21)
        .expect("a reply to `hip`");
    assert_eq!(hip.1, ReplyStatus::Invalid);
    assert!(hip.2.contains("unknown scan protocol `hip`"), "{}", hip.2);
    let lumbar = replies
        .iter()
        .find(|r| r.0 == 22)
        .expect("a reply to `lumbar`");
    assert_eq!(lumbar.1, ReplyStatus::Ok);
}
