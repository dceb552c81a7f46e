//! Newest-wins filtering of operator commands that arrive as unreliable datagrams.

use crate::error::ErrorKind;
use crate::Error;

/// How far a command's send time may lie in the future of the receiver's clock (s) before it is
/// treated as a clock error; covers residual clock-sync error.
pub const FUTURE_TOLERANCE_S: f64 = 0.005;

/// What the filter decided about one command.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Newer than everything accepted so far and fresh: pass it on.
    Accept,
    /// Same sequence number as the last accepted command (a network duplicate or a replay).
    Duplicate,
    /// Older sequence number than the last accepted one: arrived out of order.
    Reordered {
        /// Last accepted sequence number.
        last: u64,
    },
    /// Older than the maximum age.
    Stale {
        /// Age at arrival (s).
        age_s: f64,
    },
    /// Send time not finite or too far in the future: the sender's clock cannot be trusted.
    BadTimestamp,
}

/// Accepts a command only if it is newer than every accepted command and younger than a bound.
///
/// Times are seconds on the receiver's clock (the sender's send time already mapped through the
/// clock-offset estimate).
#[derive(Clone, Debug)]
pub struct CommandFilter {
    max_age_s: f64,
    last_seq: Option<u64>,
    accepted: u64,
    dropped: u64,
}

impl CommandFilter {
    /// A filter refusing commands older than `max_age_s`.
    pub fn new(max_age_s: f64) -> Result<Self, Error> {
        if !max_age_s.is_finite() || max_age_s <= 0.0 {
            return Err(ErrorKind::BadMaxAge(max_age_s).into());
        }
        Ok(Self {
            max_age_s,
            last_seq: None,
            accepted: 0,
            dropped: 0,
        })
    }

    /// Decides about a command with sequence number `seq`, sent at `sent_s`, arriving at `now_s`.
    pub fn check(&mut self, seq: u64, sent_s: f64, now_s: f64) -> Verdict {
        let verdict = self.decide(seq, sent_s, now_s);
        if verdict == Verdict::Accept {
            self.last_seq = Some(seq);
            self.accepted += 1;
        } else {
            self.dropped += 1;
        }
        verdict
    }

    fn decide(&self, seq: u64, sent_s: f64, now_s: f64) -> Verdict {
        if !sent_s.is_finite() || !now_s.is_finite() || sent_s > now_s + FUTURE_TOLERANCE_S {
            return Verdict::BadTimestamp;
        }
        match self.last_seq {
            Some(last) if seq == last => return Verdict::Duplicate,
            Some(last) if seq < last => return Verdict::Reordered { last },
            _ => {}
        }
        let age_s = now_s - sent_s;
        if age_s > self.max_age_s {
            return Verdict::Stale { age_s };
        }
        Verdict::Accept
    }

    /// Last accepted sequence number.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Commands accepted and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.accepted, self.dropped)
    }

    /// Forgets the sequence history (a new session with a new sequence space).
    pub fn reset(&mut self) {
        self.last_seq = None;
    }
}
