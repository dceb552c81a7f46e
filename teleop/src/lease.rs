//! The control lease: at most one operator steers at a time.
//!
//! Rules:
//! - Only clients whose certificate says `operator` may hold the lease; observers are refused
//!   every request ([`DenyReason::NotOperator`]).
//! - `acquire` succeeds when the lease is free (or already ours); when another operator holds
//!   it the answer is [`DenyReason::Held`]: ask for a take-over instead.
//! - `release` frees it (holder only).
//! - `take_over` asks the holder, who must confirm or deny; without an answer within
//!   [`LeaseConfig::take_over_timeout_s`] the [`TimeoutPolicy`] decides. One take-over may be
//!   pending at a time. When the holder disconnects while one is pending the requester gets the
//!   lease.
//! - A disconnect of the holder frees the lease; the link watchdog makes the robot hold, then
//!   retract, until an operator acquires it again.
//!
//! Pure state machine: times are passed in, answers come back as [`Notice`]s for the network
//! layer to send, and every change as a [`LeaseChange`] for the audit log.

use crate::wire::{DenyReason, LeaseOutcome, Message, Role};
use crate::Error;

/// Connection id given by the patient side.
pub type ConnId = u64;

/// What happens when the holder does not answer a take-over in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPolicy {
    /// The requester gets the lease (an absent holder cannot block the session).
    Grant,
    /// The request is refused (the holder keeps the lease).
    Deny,
}

/// Settings of the [`LeaseManager`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseConfig {
    /// Time the holder has to answer a take-over, s.
    pub take_over_timeout_s: f64,
    /// What a timeout means.
    pub on_timeout: TimeoutPolicy,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            take_over_timeout_s: 5.0,
            on_timeout: TimeoutPolicy::Grant,
        }
    }
}

/// A client as the lease manager knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// Connection.
    pub conn: ConnId,
    /// Identity (certificate common name).
    pub name: String,
    /// Role from the certificate.
    pub role: Role,
}

/// A message for one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Recipient.
    pub to: ConnId,
    /// The message (a `LeaseUpdate` or a `TakeOverRequested`).
    pub msg: Message,
}

/// Why the lease changed hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeCause {
    /// Acquired while free.
    Acquired,
    /// Released by the holder.
    Released,
    /// Take-over confirmed by the holder.
    TakeOverConfirmed,
    /// Take-over granted because the holder did not answer in time.
    TakeOverTimedOut,
    /// The holder disconnected.
    HolderDisconnected,
}

impl ChangeCause {
    /// Short name for logs and the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeCause::Acquired => "acquired",
            ChangeCause::Released => "released",
            ChangeCause::TakeOverConfirmed => "take_over_confirmed",
            ChangeCause::TakeOverTimedOut => "take_over_timed_out",
            ChangeCause::HolderDisconnected => "holder_disconnected",
        }
    }
}

/// A change of holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseChange {
    /// Previous holder.
    pub from: Option<Claimant>,
    /// New holder.
    pub to: Option<Claimant>,
    /// Why.
    pub cause: ChangeCause,
}

/// What a lease operation produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeaseResult {
    /// Messages to send.
    pub notices: Vec<Notice>,
    /// The change of holder, if any.
    pub change: Option<LeaseChange>,
}

#[derive(Clone, Debug)]
struct Pending {
    requester: Claimant,
    req: u32,
    deadline_s: f64,
}

/// The lease state machine.
#[derive(Clone, Debug)]
pub struct LeaseManager {
    config: LeaseConfig,
    holder: Option<Claimant>,
    pending: Option<Pending>,
}

impl LeaseManager {
    /// A free lease.
    pub fn new(config: LeaseConfig) -> Result<Self, Error> {
        let t = config.take_over_timeout_s;
        if !t.is_finite() || t <= 0.0 || t > crate::wire::limits::MAX_TIMEOUT_S {
            return Err(Error::config(format!(
                "take-over timeout must be in (0, 600] s, got {t}"
            )));
        }
        Ok(Self {
            config,
            holder: None,
            pending: None,
        })
    }

    /// The holder, if any.
    pub fn holder(&self) -> Option<&Claimant> {
        self.holder.as_ref()
    }

    /// True when `conn` holds the lease.
    pub fn is_holder(&self, conn: ConnId) -> bool {
        self.holder.as_ref().is_some_and(|h| h.conn == conn)
    }

    /// The requester of a pending take-over.
    pub fn pending_requester(&self) -> Option<&Claimant> {
        self.pending.as_ref().map(|p| &p.requester)
    }

    fn holder_name(&self) -> String {
        self.holder
            .as_ref()
            .map(|h| h.name.clone())
            .unwrap_or_default()
    }

    fn update(&self, to: ConnId, req: u32, outcome: LeaseOutcome) -> Notice {
        Notice {
            to,
            msg: Message::LeaseUpdate {
                req,
                outcome,
                holder: self.holder_name(),
            },
        }
    }

    fn deny(&self, to: ConnId, req: u32, reason: DenyReason) -> LeaseResult {
        LeaseResult {
            notices: vec![self.update(to, req, LeaseOutcome::Denied(reason))],
            change: None,
        }
    }

    fn grant(&mut self, who: Claimant, req: u32, cause: ChangeCause) -> LeaseResult {
        let from = self.holder.replace(who.clone());
        let mut notices = Vec::with_capacity(2);
        if let Some(f) = &from {
            if f.conn != who.conn {
                notices.push(self.update(f.conn, 0, LeaseOutcome::Revoked));
            }
        }
        notices.push(self.update(who.conn, req, LeaseOutcome::Granted));
        LeaseResult {
            notices,
            change: Some(LeaseChange {
                from,
                to: Some(who),
                cause,
            }),
        }
    }

    /// `who` asks for the lease.
    pub fn acquire(&mut self, who: &Claimant, req: u32) -> LeaseResult {
        if who.role != Role::Operator {
            return self.deny(who.conn, req, DenyReason::NotOperator);
        }
        match &self.holder {
            Some(h) if h.conn == who.conn => LeaseResult {
                notices: vec![self.update(who.conn, req, LeaseOutcome::Granted)],
                change: None,
            },
            Some(_) => self.deny(who.conn, req, DenyReason::Held),
            None => self.grant(who.clone(), req, ChangeCause::Acquired),
        }
    }

    /// `conn` gives the lease back.
    pub fn release(&mut self, conn: ConnId, req: u32) -> LeaseResult {
        if !self.is_holder(conn) {
            return self.deny(conn, req, DenyReason::NotHolder);
        }
        let from = self.holder.take();
        let mut r = LeaseResult {
            notices: vec![self.update(conn, req, LeaseOutcome::Released)],
            change: Some(LeaseChange {
                from,
                to: None,
                cause: ChangeCause::Released,
            }),
        };
        // A pending take-over loses its holder to ask: the requester may simply acquire now.
        if let Some(p) = self.pending.take() {
            r.notices.push(self.update(
                p.requester.conn,
                p.req,
                LeaseOutcome::Denied(DenyReason::HolderRefused),
            ));
        }
        r
    }

    /// `who` asks the holder to hand over the lease.
    pub fn take_over(&mut self, who: &Claimant, req: u32, now_s: f64) -> LeaseResult {
        if who.role != Role::Operator {
            return self.deny(who.conn, req, DenyReason::NotOperator);
        }
        let Some(h) = &self.holder else {
            return self.grant(who.clone(), req, ChangeCause::Acquired);
        };
        if h.conn == who.conn {
            return LeaseResult {
                notices: vec![self.update(who.conn, req, LeaseOutcome::Granted)],
                change: None,
            };
        }
        if self.pending.is_some() {
            return self.deny(who.conn, req, DenyReason::Busy);
        }
        let holder_conn = h.conn;
        self.pending = Some(Pending {
            requester: who.clone(),
            req,
            deadline_s: now_s + self.config.take_over_timeout_s,
        });
        LeaseResult {
            notices: vec![
                Notice {
                    to: holder_conn,
                    msg: Message::TakeOverRequested {
                        requester: who.name.clone(),
                        timeout_s: self.config.take_over_timeout_s,
                    },
                },
                self.update(who.conn, req, LeaseOutcome::Pending),
            ],
            change: None,
        }
    }

    /// The holder `conn` confirms the pending take-over.
    pub fn confirm(&mut self, conn: ConnId, req: u32) -> LeaseResult {
        if !self.is_holder(conn) {
            return self.deny(conn, req, DenyReason::NotHolder);
        }
        let Some(p) = self.pending.take() else {
            return self.deny(conn, req, DenyReason::NotHolder);
        };
        self.grant(p.requester, p.req, ChangeCause::TakeOverConfirmed)
    }

    /// The holder `conn` refuses the pending take-over.
    pub fn refuse(&mut self, conn: ConnId, req: u32) -> LeaseResult {
        if !self.is_holder(conn) {
            return self.deny(conn, req, DenyReason::NotHolder);
        }
        let Some(p) = self.pending.take() else {
            return self.deny(conn, req, DenyReason::NotHolder);
        };
        LeaseResult {
            notices: vec![self.update(
                p.requester.conn,
                p.req,
                LeaseOutcome::Denied(DenyReason::HolderRefused),
            )],
            change: None,
        }
    }

    /// Advances time: applies the timeout policy to an unanswered take-over.
    pub fn tick(&mut self, now_s: f64) -> LeaseResult {
        if !self.pending.as_ref().is_some_and(|p| now_s >= p.deadline_s) {
            return LeaseResult::default();
        }
        let Some(p) = self.pending.take() else {
            return LeaseResult::default();
        };
        match self.config.on_timeout {
            TimeoutPolicy::Grant => self.grant(p.requester, p.req, ChangeCause::TakeOverTimedOut),
            TimeoutPolicy::Deny => LeaseResult {
                notices: vec![self.update(
                    p.requester.conn,
                    p.req,
                    LeaseOutcome::Denied(DenyReason::HolderRefused),
                )],
                change: None,
            },
        }
    }

    /// `conn` went away.
    pub fn disconnect(&mut self, conn: ConnId) -> LeaseResult {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.requester.conn == conn)
        {
            self.pending = None;
        }
        if !self.is_holder(conn) {
            return LeaseResult::default();
        }
        let from = self.holder.take();
        if let Some(p) = self.pending.take() {
            let mut r = self.grant(p.requester, p.req, ChangeCause::HolderDisconnected);
            if let Some(c) = &mut r.change {
                c.from = from;
            }
            return r;
        }
        LeaseResult {
            notices: Vec::new(),
            change: Some(LeaseChange {
                from,
                to: None,
                cause: ChangeCause::HolderDisconnected,
            }),
        }
    }
}
