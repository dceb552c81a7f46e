//! The console side of the protocol as a state machine without I/O.
//!
//! [`ConsoleCore`] numbers and stamps operator commands, builds session-control requests,
//! answers and sends clock-sync pings, keeps the lease state, the newest robot state and haptic
//! feedback, feeds the contact model to the local [`HapticRenderer`] and measures the latency.

use std::collections::VecDeque;

use crate::clock_sync::{answer, ClockEstimate, ClockSync, ClockSyncConfig};
use crate::haptics::{HapticConfig, HapticRenderer};
use crate::wire::{
    Channel, CommandMode, HapticFeedback, LeaseOutcome, Message, OperatorCommand, ReplyStatus,
    RobotState, Role, Target, UsFrameMsg,
};
use crate::Error;

/// Console settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConsoleConfig {
    /// Clock sync with the patient side.
    pub clock: ClockSyncConfig,
    /// Local haptic rendering.
    pub haptic: HapticConfig,
}

/// Something the console's user (or its UI) should know.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsoleEvent {
    /// The server greeted us.
    Welcome {
        /// Our role (from our certificate).
        role: Role,
        /// Our connection id.
        conn_id: u64,
        /// Our identity.
        identity: String,
        /// The lease holder (empty: free).
        holder: String,
    },
    /// A lease answer or change.
    Lease {
        /// The request (0: unsolicited).
        req: u32,
        /// Outcome.
        outcome: LeaseOutcome,
        /// Holder after the change.
        holder: String,
    },
    /// Another operator asks for the lease we hold.
    TakeOverRequested {
        /// Who.
        requester: String,
        /// Seconds to answer.
        timeout_s: f64,
    },
    /// Answer to a session request.
    Reply {
        /// The request.
        req: u32,
        /// Status.
        status: ReplyStatus,
        /// Detail.
        text: String,
    },
    /// Robot state.
    State(RobotState),
    /// Haptic feedback.
    Haptic(HapticFeedback),
    /// An ultrasound frame.
    UsFrame(UsFrameMsg),
}

/// What the core asks the network layer to do.
#[derive(Clone, Debug, PartialEq)]
pub enum ConsoleOutput {
    /// Send as a datagram.
    Datagram(Message),
    /// Send on the control stream.
    Control(Message),
    /// Tell the user.
    Event(ConsoleEvent),
}

/// Latency as measured at the console.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Command → feedback round trip (send time echoed in the haptic feedback), s.
    pub command_rtt_s: Option<f64>,
    /// Age of the newest robot state at arrival (needs clock sync), s.
    pub state_age_s: Option<f64>,
    /// Age of the newest ultrasound frame at arrival (needs clock sync), s.
    pub frame_age_s: Option<f64>,
}

/// Counters of the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Datagrams that did not decode.
    pub malformed_datagrams: u64,
    /// Messages on the wrong channel or in the wrong direction.
    pub unexpected: u64,
    /// Robot states and haptic feedback older than the newest one received (dropped).
    pub reordered: u64,
}

/// The console's protocol state.
#[derive(Debug)]
pub struct ConsoleCore {
    clock: ClockSync,
    renderer: HapticRenderer,
    next_seq: u64,
    next_req: u32,
    role: Option<Role>,
    identity: String,
    holder: String,
    have_lease: bool,
    state: Option<RobotState>,
    haptic: Option<HapticFeedback>,
    latency: Latency,
    stats: ConsoleStats,
    out: VecDeque<ConsoleOutput>,
}

impl ConsoleCore {
    /// A console that has not heard from the server yet.
    pub fn new(config: ConsoleConfig) -> Result<Self, Error> {
        Ok(Self {
            clock: ClockSync::new(config.clock)?,
            renderer: HapticRenderer::new(config.haptic)?,
            next_seq: 1,
            next_req: 1,
            role: None,
            identity: String::new(),
            holder: String::new(),
            have_lease: false,
            state: None,
            haptic: None,
            latency: Latency::default(),
            stats: ConsoleStats::default(),
            out: VecDeque::new(),
        })
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<ConsoleOutput> {
        self.out.pop_front()
    }

    /// Our role, once welcomed.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// Our identity as the server read it.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The lease holder as last reported (empty: free).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// True while we hold the lease.
    pub fn has_lease(&self) -> bool {
        self.have_lease
    }

    /// Clock estimate (server clock minus ours).
    pub fn clock(&self) -> Option<ClockEstimate> {
        self.clock.estimate()
    }

    /// Newest robot state.
    pub fn robot_state(&self) -> Option<&RobotState> {
        self.state.as_ref()
    }

    /// Newest haptic feedback.
    pub fn haptic_feedback(&self) -> Option<&HapticFeedback> {
        self.haptic.as_ref()
    }

    /// The local haptic renderer (fed with the newest contact model).
    pub fn renderer(&mut self) -> &mut HapticRenderer {
        &mut self.renderer
    }

    /// Measured latency.
    pub fn latency(&self) -> Latency {
        self.latency
    }

    /// Counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// Starts the session: queues `Hello` and the first clock-sync ping.
    pub fn start(&mut self, client: &str, now_s: f64) {
        self.out.push_back(ConsoleOutput::Control(Message::Hello {
            client: client.to_owned(),
        }));
        let p = self.clock.ping(now_s);
        self.out
            .push_back(ConsoleOutput::Datagram(Message::Ping(p)));
    }

    /// A new operator command sent now (queued as a datagram and returned).
    pub fn command(
        &mut self,
        now_s: f64,
        mode: CommandMode,
        force_n: f64,
        target: Target,
    ) -> OperatorCommand {
        let cmd = OperatorCommand {
            seq: self.next_seq,
            sent_s: now_s,
            mode,
            force_n,
            target,
        };
        self.next_seq += 1;
        self.out
            .push_back(ConsoleOutput::Datagram(Message::Command(cmd)));
        cmd
    }

    fn request(&mut self, make: impl FnOnce(u32) -> Message) -> u32 {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        self.out.push_back(ConsoleOutput::Control(make(req)));
        req
    }

    /// Asks for the lease; returns the request id.
    pub fn acquire(&mut self) -> u32 {
        self.request(|req| Message::LeaseAcquire { req })
    }

    /// Releases the lease.
    pub fn release(&mut self) -> u32 {
        self.request(|req| Message::LeaseRelease { req })
    }

    /// Asks the holder for a take-over.
    pub fn take_over(&mut self) -> u32 {
        self.request(|req| Message::LeaseTakeOver { req })
    }

    /// Confirms a take-over asked of us.
    pub fn confirm_take_over(&mut self) -> u32 {
        self.request(|req| Message::TakeOverConfirm { req })
    }

    /// Refuses a take-over asked of us.
    pub fn deny_take_over(&mut self) -> u32 {
        self.request(|req| Message::TakeOverDeny { req })
    }

    /// Emergency stop.
    pub fn estop(&mut self) -> u32 {
        self.request(|req| Message::EStop { req })
    }

    /// Reset latched safety states.
    pub fn reset(&mut self) -> u32 {
        self.request(|req| Message::Reset { req })
    }

    /// Start a scan protocol.
    pub fn start_protocol(&mut self, name: &str) -> u32 {
        let name = name.to_owned();
        self.request(move |req| Message::StartProtocol { req, name })
    }

    /// Stop the scan protocol.
    pub fn stop_protocol(&mut self) -> u32 {
        self.request(|req| Message::StopProtocol { req })
    }

    /// Advances time: clock-sync pings.
    pub fn tick(&mut self, now_s: f64) {
        if let Some(p) = self.clock.poll_ping(now_s) {
            self.out
                .push_back(ConsoleOutput::Datagram(Message::Ping(p)));
        }
    }

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, bytes: &[u8], now_s: f64) -> Result<(), Error> {
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed_datagrams += 1;
                return Err(e);
            }
        };
        match msg {
            Message::Ping(p) => self
                .out
                .push_back(ConsoleOutput::Datagram(Message::Pong(answer(
                    &p, now_s, now_s,
                )))),
            Message::Pong(p) => {
                let _ = self.clock.on_pong(&p, now_s);
            }
            Message::State(s) => {
                if self.state.as_ref().is_some_and(|old| s.seq <= old.seq) {
                    self.stats.reordered += 1;
                    return Ok(());
                }
                self.latency.state_age_s =
                    self.clock.peer_to_local(s.measured_s).map(|t| now_s - t);
                self.state = Some(s.clone());
                self.out
                    .push_back(ConsoleOutput::Event(ConsoleEvent::State(s)));
            }
            Message::Haptic(h) => {
                if self.haptic.as_ref().is_some_and(|old| h.seq <= old.seq) {
                    self.stats.reordered += 1;
                    return Ok(());
                }
                if h.cmd_seq != 0 {
                    self.latency.command_rtt_s = Some(now_s - h.cmd_sent_s);
                }
                self.renderer.set_model(h.contact);
                self.haptic = Some(h);
                self.out
                    .push_back(ConsoleOutput::Event(ConsoleEvent::Haptic(h)));
            }
            _ => self.stats.unexpected += 1,
        }
        Ok(())
    }

    /// An ultrasound frame arrived on its stream.
    pub fn handle_frame(&mut self, frame: UsFrameMsg, now_s: f64) {
        self.latency.frame_age_s = self
            .clock
            .peer_to_local(frame.acquired_s)
            .map(|t| now_s - t);
        self.out
            .push_back(ConsoleOutput::Event(ConsoleEvent::UsFrame(frame)));
    }

    /// A control-stream message arrived. Anything the patient side does not send is a
    /// protocol violation.
    pub fn handle_control(&mut self, msg: Message) -> Result<(), Error> {
        if msg.channel() != Channel::Control {
            self.stats.unexpected += 1;
            return Err(Error::net(format!(
                "{} is not a control-stream message",
                msg.name()
            )));
        }
        let ev = match msg {
            Message::Welcome {
                role,
                conn_id,
                identity,
                holder,
                ..
            } => {
                self.role = Some(role);
                self.identity = identity.clone();
                self.have_lease = !holder.is_empty() && holder == identity;
                self.holder = holder.clone();
                ConsoleEvent::Welcome {
                    role,
                    conn_id,
                    identity,
                    holder,
                }
            }
            Message::LeaseUpdate {
                req,
                outcome,
                holder,
            } => {
                match outcome {
                    LeaseOutcome::Granted => self.have_lease = true,
                    LeaseOutcome::Released | LeaseOutcome::Revoked => self.have_lease = false,
                    _ => {}
                }
                self.holder = holder.clone();
                ConsoleEvent::Lease {
                    req,
                    outcome,
                    holder,
                }
            }
            Message::TakeOverRequested {
                requester,
                timeout_s,
            } => ConsoleEvent::TakeOverRequested {
                requester,
                timeout_s,
            },
            Message::Reply { req, status, text } => ConsoleEvent::Reply { req, status, text },
            other => {
                self.stats.unexpected += 1;
                return Err(Error::net(format!(
                    "{} is sent by the console, not to it",
                    other.name()
                )));
            }
        };
        self.out.push_back(ConsoleOutput::Event(ev));
        Ok(())
    }
}
