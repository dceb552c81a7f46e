//! The patient side of the protocol as a state machine without I/O.
//!
//! [`PatientCore`] is fed what the network layer received (connections, datagrams, control
//! messages) and the time, and queues [`Output`]s: messages to send, accepted commands and link
//! events for the control node, session requests (e-stop, reset, scan protocol) and audit
//! records. The tokio + quinn server drives one of these; tests drive it directly with an
//! injected clock.

use std::collections::{BTreeMap, VecDeque};

use nalgebra::Vector3;

use crate::acceptor::{AcceptorConfig, AcceptorStats, CommandAcceptor, DropReason};
use crate::audit::{AuditEvent, Who};
use crate::clock_sync::{answer, ClockEstimate, ClockSync, ClockSyncConfig};
use crate::identity::Identity;
use crate::lease::{Claimant, ConnId, LeaseConfig, LeaseManager, LeaseResult};
use crate::predict::{MotionPredictor, PredictorConfig};
use crate::watchdog::{LinkEvent, LinkWatchdog, WatchdogConfig};
use crate::wire::{
    Channel, CommandMode, ContactModel, HapticFeedback, LeaseOutcome, LinkState, Message,
    OperatorCommand, Pose, ReplyStatus, RobotState, SafetyCode, Target,
};
use crate::Error;

/// Settings of the patient side.
#[derive(Clone, Debug, PartialEq)]
pub struct PatientConfig {
    /// Control lease.
    pub lease: LeaseConfig,
    /// Clock sync with each client.
    pub clock: ClockSyncConfig,
    /// Command acceptance.
    pub acceptor: AcceptorConfig,
    /// Operator-motion prediction.
    pub predictor: PredictorConfig,
    /// Extrapolate pose targets over their age (off: pass them through).
    pub predict: bool,
    /// Link-loss watchdog.
    pub watchdog: WatchdogConfig,
    /// Refused commands of one kind from one client are audited at most this often, s.
    pub refusal_audit_interval_s: f64,
    /// Scan protocols the patient side can run; `StartProtocol` with another name is answered
    /// `Invalid` (empty: any well-formed name is passed on).
    pub protocols: Vec<String>,
}

impl Default for PatientConfig {
    fn default() -> Self {
        Self {
            lease: LeaseConfig::default(),
            clock: ClockSyncConfig::default(),
            acceptor: AcceptorConfig::default(),
            predictor: PredictorConfig::default(),
            predict: true,
            watchdog: WatchdogConfig::default(),
            refusal_audit_interval_s: 1.0,
            protocols: Vec::new(),
        }
    }
}

/// An accepted command, as the control node gets it.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlCommand {
    /// Connection of the lease holder that sent it.
    pub conn: ConnId,
    /// Its identity.
    pub operator: String,
    /// Sequence number.
    pub seq: u64,
    /// Free or contact.
    pub mode: CommandMode,
    /// Contact-force setpoint, N.
    pub force_n: f64,
    /// The target after prediction (pose targets extrapolated over `horizon_s`).
    pub target: Target,
    /// The target as sent.
    pub sent_target: Target,
    /// Estimated operator velocity, m/s (zero for twists or without prediction).
    pub velocity_m_s: Vector3<f64>,
    /// Send time on the console's clock, s (as sent).
    pub sent_s: f64,
    /// Send time on the patient clock (through the clock-offset estimate), s.
    pub sent_local_s: f64,
    /// Arrival time on the patient clock, s.
    pub received_s: f64,
    /// Age at arrival, s.
    pub age_s: f64,
    /// Extrapolation horizon used, s.
    pub horizon_s: f64,
}

/// A session-control request for the control node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionRequest {
    /// Emergency stop (any authenticated client).
    EStop,
    /// Reset latched safety states (lease holder).
    Reset,
    /// Start the named scan protocol (lease holder).
    StartProtocol(String),
    /// Stop the running scan protocol (lease holder).
    StopProtocol,
}

/// What the core asks the network layer and the control node to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send as a datagram to `to`.
    Datagram {
        /// Recipient.
        to: ConnId,
        /// Message.
        msg: Message,
    },
    /// Send on `to`'s control stream.
    Control {
        /// Recipient.
        to: ConnId,
        /// Message.
        msg: Message,
    },
    /// An accepted command for the control node.
    Command(ControlCommand),
    /// The link state changed: the control node holds, retracts or resumes.
    Link(LinkEvent),
    /// A session request for the control node.
    Session {
        /// Who asked.
        by: String,
        /// What.
        request: SessionRequest,
    },
    /// A record for the audit log.
    Audit {
        /// Who.
        who: Who,
        /// What.
        what: AuditEvent,
    },
}

/// Counters of the patient side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatientStats {
    /// Datagrams that did not decode.
    pub malformed_datagrams: u64,
    /// Well-formed messages on the wrong channel or in the wrong direction.
    pub unexpected: u64,
    /// Pongs not matching a ping of ours.
    pub rejected_pongs: u64,
    /// Command acceptance.
    pub commands: AcceptorStats,
    /// Connections seen.
    pub connections: u64,
}

#[derive(Clone, Debug)]
struct Refusals {
    /// Per reason: (count since last record, time of last record).
    pending: BTreeMap<String, (u64, f64)>,
}

#[derive(Clone, Debug)]
struct Peer {
    identity: Identity,
    clock: ClockSync,
    refusals: Refusals,
}

/// The patient side's protocol state.
#[derive(Debug)]
pub struct PatientCore {
    config: PatientConfig,
    peers: BTreeMap<ConnId, Peer>,
    lease: LeaseManager,
    acceptor: CommandAcceptor,
    predictor: MotionPredictor,
    watchdog: LinkWatchdog,
    out: VecDeque<Output>,
    stats: PatientStats,
    last_cmd: Option<(u64, f64)>,
    haptic_seq: u64,
    state_seq: u64,
}

fn mode_str(m: CommandMode) -> &'static str {
    match m {
        CommandMode::Free => "free",
        CommandMode::Contact => "contact",
    }
}

fn link_str(s: LinkState) -> &'static str {
    match s {
        LinkState::Idle => "idle",
        LinkState::Live => "live",
        LinkState::Hold => "hold",
        LinkState::Retract => "retract",
    }
}

fn target_vec(t: &Target) -> (Vec<f64>, &'static str) {
    match t {
        Target::Pose(p) => {
            let q = p.orientation.quaternion();
            (
                vec![
                    p.position_m.x,
                    p.position_m.y,
                    p.position_m.z,
                    q.w,
                    q.i,
                    q.j,
                    q.k,
                ],
                "pose",
            )
        }
        Target::Twist {
            linear_m_s,
            angular_rad_s,
        } => (
            linear_m_s
                .iter()
                .chain(angular_rad_s.iter())
                .copied()
                .collect(),
            "twist",
        ),
    }
}

impl PatientCore {
    /// A patient side with no client.
    pub fn new(config: PatientConfig) -> Result<Self, Error> {
        config.clock.validate()?;
        if !config.refusal_audit_interval_s.is_finite() || config.refusal_audit_interval_s < 0.0 {
            return Err(Error::config("refusal_audit_interval_s must be ≥ 0"));
        }
        Ok(Self {
            lease: LeaseManager::new(config.lease)?,
            acceptor: CommandAcceptor::new(config.acceptor)?,
            predictor: MotionPredictor::new(config.predictor)?,
            watchdog: LinkWatchdog::new(config.watchdog)?,
            config,
            peers: BTreeMap::new(),
            out: VecDeque::new(),
            stats: PatientStats::default(),
            last_cmd: None,
            haptic_seq: 0,
            state_seq: 0,
        })
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> PatientStats {
        let mut s = self.stats;
        s.commands = self.acceptor.stats();
        s
    }

    /// The lease holder's identity.
    pub fn lease_holder(&self) -> Option<&str> {
        self.lease.holder().map(|h| h.name.as_str())
    }

    /// The lease holder's connection.
    pub fn lease_holder_conn(&self) -> Option<ConnId> {
        self.lease.holder().map(|h| h.conn)
    }

    /// Link state.
    pub fn link_state(&self) -> LinkState {
        self.watchdog.state()
    }

    /// Clock estimate for a client (its clock minus ours).
    pub fn clock_estimate(&self, conn: ConnId) -> Option<ClockEstimate> {
        self.peers.get(&conn)?.clock.estimate()
    }

    /// Connected clients.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &Identity)> {
        self.peers.iter().map(|(c, p)| (*c, &p.identity))
    }

    fn audit(&mut self, who: Who, what: AuditEvent) {
        self.out.push_back(Output::Audit { who, what });
    }

    fn link(&mut self, ev: Option<LinkEvent>) {
        if let Some(ev) = ev {
            self.out.push_back(Output::Link(ev));
            self.audit(
                Who::server(),
                AuditEvent::Link {
                    state: link_str(ev.state).into(),
                    silence_ms: ev.silence_s * 1e3,
                },
            );
        }
    }

    /// A client with a verified certificate connected.
    pub fn connect(&mut self, conn: ConnId, identity: Identity, remote: &str, now_s: f64) {
        let clock = match ClockSync::new(self.config.clock) {
            Ok(c) => c,
            Err(_) => return, // validated in new()
        };
        self.stats.connections += 1;
        self.audit(
            identity.who(),
            AuditEvent::Connected {
                conn,
                role: identity.role.as_str().into(),
                remote: remote.into(),
            },
        );
        self.peers.insert(
            conn,
            Peer {
                identity,
                clock,
                refusals: Refusals {
                    pending: BTreeMap::new(),
                },
            },
        );
        // Start clock sync at once.
        self.send_pings(now_s, Some(conn));
    }

    /// A client went away.
    pub fn disconnect(&mut self, conn: ConnId, reason: &str, now_s: f64) {
        self.flush_refusals(now_s, true);
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        self.audit(
            peer.identity.who(),
            AuditEvent::Disconnected {
                conn,
                reason: reason.into(),
            },
        );
        let r = self.lease.disconnect(conn);
        self.apply_lease(r, now_s);
    }

    fn claimant(&self, conn: ConnId) -> Option<Claimant> {
        self.peers.get(&conn).map(|p| Claimant {
            conn,
            name: p.identity.name.clone(),
            role: p.identity.role,
        })
    }

    fn apply_lease(&mut self, r: LeaseResult, now_s: f64) {
        let mut told: Vec<ConnId> = Vec::with_capacity(2);
        for n in r.notices {
            if let Message::LeaseUpdate {
                req,
                outcome: LeaseOutcome::Denied(reason),
                ..
            } = &n.msg
            {
                if let Some(p) = self.peers.get(&n.to) {
                    let who = p.identity.who();
                    self.audit(
                        who,
                        AuditEvent::LeaseDenied {
                            conn: n.to,
                            request: format!("req {req}"),
                            reason: format!("{reason:?}"),
                        },
                    );
                }
            }
            told.push(n.to);
            self.out.push_back(Output::Control {
                to: n.to,
                msg: n.msg,
            });
        }
        let Some(change) = r.change else {
            return;
        };
        // A new holder starts a new sequence space and a new motion history.
        self.acceptor.restart();
        self.predictor.reset();
        self.last_cmd = None;
        let name = |c: &Option<Claimant>| c.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let holder = name(&change.to);
        let who = change
            .to
            .as_ref()
            .or(change.from.as_ref())
            .and_then(|c| self.peers.get(&c.conn))
            .map(|p| p.identity.who())
            .unwrap_or_else(Who::server);
        self.audit(
            who,
            AuditEvent::Lease {
                cause: change.cause.as_str().into(),
                from: name(&change.from),
                to: holder.clone(),
            },
        );
        let others: Vec<ConnId> = self
            .peers
            .keys()
            .copied()
            .filter(|c| !told.contains(c))
            .collect();
        for to in others {
            self.out.push_back(Output::Control {
                to,
                msg: Message::LeaseUpdate {
                    req: 0,
                    outcome: LeaseOutcome::Changed,
                    holder: holder.clone(),
                },
            });
        }
        if change.to.is_none() && change.cause == crate::lease::ChangeCause::Released {
            let ev = self.watchdog.disarm(now_s);
            self.link(ev);
        }
    }

    fn refuse(&mut self, conn: ConnId, reason: &str, now_s: f64) {
        let interval = self.config.refusal_audit_interval_s;
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let entry = peer
            .refusals
            .pending
            .entry(reason.to_owned())
            .or_insert((0, f64::NEG_INFINITY));
        entry.0 += 1;
        if now_s - entry.1 >= interval {
            let count = entry.0;
            *entry = (0, now_s);
            let who = peer.identity.who();
            self.audit(
                who,
                AuditEvent::CommandRefused {
                    conn,
                    reason: reason.to_owned(),
                    count,
                },
            );
        }
    }

    fn flush_refusals(&mut self, now_s: f64, all: bool) {
        let interval = self.config.refusal_audit_interval_s;
        let mut records = Vec::new();
        for (conn, peer) in self.peers.iter_mut() {
            for (reason, entry) in peer.refusals.pending.iter_mut() {
                if entry.0 > 0 && (all || now_s - entry.1 >= interval) {
                    records.push((
                        peer.identity.who(),
                        AuditEvent::CommandRefused {
                            conn: *conn,
                            reason: reason.clone(),
                            count: entry.0,
                        },
                    ));
                    *entry = (0, now_s);
                }
            }
        }
        for (who, what) in records {
            self.audit(who, what);
        }
    }

    fn send_pings(&mut self, now_s: f64, only: Option<ConnId>) {
        let mut pings = Vec::new();
        for (conn, peer) in self.peers.iter_mut() {
            if only.is_some_and(|o| o != *conn) {
                continue;
            }
            if let Some(p) = peer.clock.poll_ping(now_s) {
                pings.push((*conn, p));
            }
        }
        for (to, p) in pings {
            self.out.push_back(Output::Datagram {
                to,
                msg: Message::Ping(p),
            });
        }
    }

    /// Advances time: watchdog, take-over timeout, clock-sync pings, refusal summaries.
    pub fn tick(&mut self, now_s: f64) {
        let ev = self.watchdog.poll(now_s);
        self.link(ev);
        let r = self.lease.tick(now_s);
        self.apply_lease(r, now_s);
        self.send_pings(now_s, None);
        self.flush_refusals(now_s, false);
    }

    /// A datagram from `conn` arrived at `now_s`. A malformed one is counted, audited and
    /// dropped (the connection stays); the error says what was wrong.
    pub fn handle_datagram(&mut self, conn: ConnId, bytes: &[u8], now_s: f64) -> Result<(), Error> {
        if !self.peers.contains_key(&conn) {
            return Ok(());
        }
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed_datagrams += 1;
                self.refuse(conn, "malformed_datagram", now_s);
                return Err(e);
            }
        };
        match msg {
            Message::Command(cmd) => self.on_command(conn, &cmd, now_s),
            Message::Ping(p) => self.out.push_back(Output::Datagram {
                to: conn,
                msg: Message::Pong(answer(&p, now_s, now_s)),
            }),
            Message::Pong(p) => {
                if let Some(peer) = self.peers.get_mut(&conn) {
                    if peer.clock.on_pong(&p, now_s).is_err() {
                        self.stats.rejected_pongs += 1;
                    }
                }
            }
            _ => {
                self.stats.unexpected += 1;
                self.refuse(conn, "unexpected_datagram", now_s);
            }
        }
        Ok(())
    }

    fn on_command(&mut self, conn: ConnId, cmd: &OperatorCommand, now_s: f64) {
        if !self.lease.is_holder(conn) {
            self.acceptor.count_drop(DropReason::NotHolder);
            let role = self
                .peers
                .get(&conn)
                .map(|p| p.identity.role.as_str())
                .unwrap_or("unknown");
            self.refuse(conn, &format!("not_holder ({role})"), now_s);
            return;
        }
        let offset = self
            .peers
            .get(&conn)
            .and_then(|p| p.clock.estimate())
            .map(|e| e.offset_s);
        let accepted = match self.acceptor.check(cmd, now_s, offset) {
            Ok(a) => a,
            Err(reason) => {
                let text = match reason {
                    DropReason::OutOfLimits(field) => format!("out_of_limits ({field})"),
                    r => r.as_str().to_owned(),
                };
                self.refuse(conn, &text, now_s);
                return;
            }
        };
        let horizon_s = if self.config.predict {
            accepted
                .age_s
                .clamp(0.0, self.config.predictor.max_horizon_s)
        } else {
            0.0
        };
        let (target, velocity) = match &cmd.target {
            Target::Pose(p) => {
                self.predictor.update(cmd.sent_s, &p.position_m);
                if self.config.predict {
                    let predicted = Pose {
                        position_m: self.predictor.predict(&p.position_m, horizon_s),
                        orientation: p.orientation,
                    };
                    (Target::Pose(predicted), self.predictor.velocity())
                } else {
                    (cmd.target, Vector3::zeros())
                }
            }
            Target::Twist { .. } => (cmd.target, Vector3::zeros()),
        };
        let (who, operator) = match self.peers.get(&conn) {
            Some(p) => (p.identity.who(), p.identity.name.clone()),
            None => (Who::server(), String::new()),
        };
        self.last_cmd = Some((cmd.seq, cmd.sent_s));
        let (vec, kind) = target_vec(&cmd.target);
        self.audit(
            who,
            AuditEvent::Command {
                conn,
                seq: cmd.seq,
                mode: mode_str(cmd.mode).into(),
                force_n: cmd.force_n,
                target: vec,
                kind: kind.into(),
                age_ms: accepted.age_s * 1e3,
            },
        );
        self.out.push_back(Output::Command(ControlCommand {
            conn,
            operator,
            seq: cmd.seq,
            mode: cmd.mode,
            force_n: cmd.force_n,
            target,
            sent_target: cmd.target,
            velocity_m_s: velocity,
            sent_s: cmd.sent_s,
            sent_local_s: accepted.sent_local_s,
            received_s: now_s,
            age_s: accepted.age_s,
            horizon_s,
        }));
        let ev = self.watchdog.fresh(now_s);
        self.link(ev);
    }

    /// A control-stream message from `conn`. A message that does not belong on the control
    /// stream, or goes the wrong way, is a protocol violation: the error tells the network
    /// layer to close the connection.
    pub fn handle_control(&mut self, conn: ConnId, msg: Message, now_s: f64) -> Result<(), Error> {
        let Some(claimant) = self.claimant(conn) else {
            return Ok(());
        };
        if msg.channel() != Channel::Control {
            self.stats.unexpected += 1;
            return Err(Error::net(format!(
                "{} is not a control-stream message",
                msg.name()
            )));
        }
        match msg {
            Message::Hello { .. } => {
                let holder = self.lease_holder().unwrap_or_default().to_owned();
                self.out.push_back(Output::Control {
                    to: conn,
                    msg: Message::Welcome {
                        role: claimant.role,
                        conn_id: conn,
                        server_time_s: now_s.max(0.0),
                        identity: claimant.name.clone(),
                        holder,
                    },
                });
            }
            Message::LeaseAcquire { req } => {
                let r = self.lease.acquire(&claimant, req);
                self.apply_lease(r, now_s);
            }
            Message::LeaseRelease { req } => {
                let r = self.lease.release(conn, req);
                self.apply_lease(r, now_s);
            }
            Message::LeaseTakeOver { req } => {
                let r = self.lease.take_over(&claimant, req, now_s);
                self.apply_lease(r, now_s);
            }
            Message::TakeOverConfirm { req } => {
                let r = self.lease.confirm(conn, req);
                self.apply_lease(r, now_s);
            }
            Message::TakeOverDeny { req } => {
                let r = self.lease.refuse(conn, req);
                self.apply_lease(r, now_s);
            }
            Message::EStop { req } => {
                // Stopping is always allowed: it can only make the robot safer.
                self.session(conn, req, SessionRequest::EStop, true, now_s);
            }
            Message::Reset { req } => {
                let ok = self.lease.is_holder(conn);
                if ok {
                    let ev = self.watchdog.reset(now_s);
                    self.link(ev);
                }
                self.session(conn, req, SessionRequest::Reset, ok, now_s);
            }
            Message::StartProtocol { req, name } => {
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !valid {
                    self.out.push_back(Output::Control {
                        to: conn,
                        msg: Message::Reply {
                            req,
                            status: ReplyStatus::Invalid,
                            text: "protocol name must be 1-64 of [A-Za-z0-9_.-]".into(),
                        },
                    });
                    return Ok(());
                }
                let known = &self.config.protocols;
                if !known.is_empty() && !known.contains(&name) {
                    let text = format!(
                        "unknown scan protocol `{name}` (known: {})",
                        known.join(", ")
                    );
                    self.out.push_back(Output::Control {
                        to: conn,
                        msg: Message::Reply {
                            req,
                            status: ReplyStatus::Invalid,
                            text,
                        },
                    });
                    return Ok(());
                }
                let ok = self.lease.is_holder(conn);
                self.session(conn, req, SessionRequest::StartProtocol(name), ok, now_s);
            }
            Message::StopProtocol { req } => {
                let ok = self.lease.is_holder(conn);
                self.session(conn, req, SessionRequest::StopProtocol, ok, now_s);
            }
            other => {
                self.stats.unexpected += 1;
                return Err(Error::net(format!(
                    "{} is sent by the patient side, not to it",
                    other.name()
                )));
            }
        }
        Ok(())
    }

    fn session(&mut self, conn: ConnId, req: u32, request: SessionRequest, ok: bool, _now: f64) {
        let (who, by) = match self.peers.get(&conn) {
            Some(p) => (p.identity.who(), p.identity.name.clone()),
            None => return,
        };
        let (action, detail) = match &request {
            SessionRequest::EStop => ("estop", String::new()),
            SessionRequest::Reset => ("reset", String::new()),
            SessionRequest::StartProtocol(n) => ("start_protocol", n.clone()),
            SessionRequest::StopProtocol => ("stop_protocol", String::new()),
        };
        self.audit(
            who,
            AuditEvent::Session {
                conn,
                action: action.into(),
                detail,
                accepted: ok,
            },
        );
        let (status, text) = if ok {
            (
                ReplyStatus::Ok,
                format!("{action} handed to the control node"),
            )
        } else {
            (
                ReplyStatus::NotHolder,
                format!("{action} needs the control lease"),
            )
        };
        self.out.push_back(Output::Control {
            to: conn,
            msg: Message::Reply { req, status, text },
        });
        if ok {
            self.out.push_back(Output::Session { by, request });
        }
    }

    /// Haptic feedback to send to every client: the measured wrench and contact model, with
    /// the newest accepted command echoed.
    pub fn haptic(
        &mut self,
        measured_s: f64,
        force_n: Vector3<f64>,
        torque_nm: Vector3<f64>,
        contact: Option<ContactModel>,
    ) -> Message {
        self.haptic_seq += 1;
        let (cmd_seq, cmd_sent_s) = self.last_cmd.unwrap_or((0, 0.0));
        Message::Haptic(HapticFeedback {
            seq: self.haptic_seq,
            measured_s,
            cmd_seq,
            cmd_sent_s,
            force_n,
            torque_nm,
            contact,
        })
    }

    /// A robot-state message to send to every client (the link state filled in).
    pub fn robot_state(
        &mut self,
        measured_s: f64,
        safety: SafetyCode,
        joints_rad: Vec<f64>,
        probe: Pose,
        force_n: Vector3<f64>,
        torque_nm: Vector3<f64>,
    ) -> Message {
        self.state_seq += 1;
        Message::State(RobotState {
            seq: self.state_seq,
            measured_s,
            safety,
            link: self.watchdog.state(),
            joints_rad,
            probe,
            force_n,
            torque_nm,
        })
    }
}
