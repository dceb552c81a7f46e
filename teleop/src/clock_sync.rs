//! NTP-like clock offset and delay estimation over ping/pong exchanges.
//!
//! One exchange gives four times: `t0` (ping sent, local clock), `t1` (ping received, peer
//! clock), `t2` (pong sent, peer clock), `t3` (pong received, local clock). With symmetric paths
//! the peer clock is ahead of the local one by `θ = ((t1 − t0) + (t2 − t3)) / 2`, and the
//! round-trip network delay is `δ = (t3 − t0) − (t2 − t1)`. A sample's offset error is at most
//! `δ / 2` (all of the delay on one side), so like NTP's clock filter the estimator keeps a
//! window of recent samples and trusts the one with the smallest round trip: queueing and jitter
//! only ever add delay. The one-way delay reported is the window's mean `δ / 2`.
//!
//! Both ends run one: the patient side maps operator send times onto its own clock with it and
//! knows how old each command is; the console displays the latency.

use std::collections::VecDeque;

use crate::wire::{Ping, Pong};
use crate::Error;

/// Settings of a [`ClockSync`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockSyncConfig {
    /// Samples kept (the filter window).
    pub window: usize,
    /// Time between pings, s.
    pub ping_interval_s: f64,
    /// Round trips longer than this are discarded, s.
    pub max_rtt_s: f64,
}

impl Default for ClockSyncConfig {
    fn default() -> Self {
        Self {
            window: 16,
            ping_interval_s: 0.1,
            max_rtt_s: 5.0,
        }
    }
}

impl ClockSyncConfig {
    /// Refuses a zero window or non-positive intervals.
    pub fn validate(&self) -> Result<(), Error> {
        if self.window == 0 || self.window > 1024 {
            return Err(Error::config(format!(
                "clock sync window must be 1..=1024, got {}",
                self.window
            )));
        }
        for (what, v) in [
            ("ping_interval_s", self.ping_interval_s),
            ("max_rtt_s", self.max_rtt_s),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(Error::config(format!(
                    "clock sync {what} must be positive, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// One ping/pong exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockSample {
    /// Peer clock minus local clock, s.
    pub offset_s: f64,
    /// Round-trip network delay (without the peer's turnaround), s.
    pub rtt_s: f64,
    /// Local time the pong arrived, s.
    pub at_s: f64,
}

/// The estimate after filtering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockEstimate {
    /// Peer clock minus local clock, s: `peer_time ≈ local_time + offset_s`.
    pub offset_s: f64,
    /// Bound on the offset error (half the smallest round trip in the window), s.
    pub uncertainty_s: f64,
    /// Smallest round trip in the window, s.
    pub rtt_min_s: f64,
    /// Mean one-way delay over the window (half the mean round trip), s.
    pub one_way_delay_s: f64,
    /// Samples in the window.
    pub samples: usize,
}

/// Why a pong was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PongRejection {
    /// Not an answer to a recent ping of ours (unknown id or a different `t0`): a replay or a
    /// forgery.
    Unsolicited,
    /// Times inconsistent (negative round trip, turnaround longer than the round trip).
    Inconsistent,
    /// Round trip above the configured maximum.
    TooSlow,
}

/// How many pings we remember to match pongs against.
const OUTSTANDING: usize = 32;

/// Clock offset and delay estimator. Pure: times are passed in.
#[derive(Clone, Debug)]
pub struct ClockSync {
    config: ClockSyncConfig,
    samples: VecDeque<ClockSample>,
    outstanding: VecDeque<Ping>,
    next_id: u32,
    last_ping_s: Option<f64>,
}

impl ClockSync {
    /// An estimator with `config`.
    pub fn new(config: ClockSyncConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            config,
            samples: VecDeque::with_capacity(config.window),
            outstanding: VecDeque::with_capacity(OUTSTANDING),
            next_id: 1,
            last_ping_s: None,
        })
    }

    /// The ping to send now, if one is due (the first immediately, then every
    /// `ping_interval_s`).
    pub fn poll_ping(&mut self, now_s: f64) -> Option<Ping> {
        if let Some(last) = self.last_ping_s {
            if now_s - last < self.config.ping_interval_s {
                return None;
            }
        }
        Some(self.ping(now_s))
    }

    /// A ping sent now, regardless of the interval.
    pub fn ping(&mut self, now_s: f64) -> Ping {
        let ping = Ping {
            id: self.next_id,
            t0_s: now_s,
        };
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.last_ping_s = Some(now_s);
        if self.outstanding.len() == OUTSTANDING {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(ping);
        ping
    }

    /// Uses a pong that arrived at `now_s` (local clock).
    pub fn on_pong(&mut self, pong: &Pong, now_s: f64) -> Result<ClockSample, PongRejection> {
        let Some(i) = self
            .outstanding
            .iter()
            .position(|p| p.id == pong.id && p.t0_s == pong.t0_s)
        else {
            return Err(PongRejection::Unsolicited);
        };
        self.outstanding.remove(i);
        let turnaround = pong.t2_s - pong.t1_s;
        let rtt = (now_s - pong.t0_s) - turnaround;
        if !(rtt.is_finite() && turnaround >= 0.0 && rtt >= 0.0) {
            return Err(PongRejection::Inconsistent);
        }
        if rtt > self.config.max_rtt_s {
            return Err(PongRejection::TooSlow);
        }
        let sample = ClockSample {
            offset_s: ((pong.t1_s - pong.t0_s) + (pong.t2_s - now_s)) / 2.0,
            rtt_s: rtt,
            at_s: now_s,
        };
        if self.samples.len() == self.config.window {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        Ok(sample)
    }

    /// The current estimate; `None` before the first sample.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        let best = self
            .samples
            .iter()
            .min_by(|a, b| a.rtt_s.total_cmp(&b.rtt_s))?;
        let mean_rtt =
            self.samples.iter().map(|s| s.rtt_s).sum::<f64>() / self.samples.len() as f64;
        Some(ClockEstimate {
            offset_s: best.offset_s,
            uncertainty_s: best.rtt_s / 2.0,
            rtt_min_s: best.rtt_s,
            one_way_delay_s: mean_rtt / 2.0,
            samples: self.samples.len(),
        })
    }

    /// Maps a time on the peer's clock to the local clock.
    pub fn peer_to_local(&self, peer_s: f64) -> Option<f64> {
        self.estimate().map(|e| peer_s - e.offset_s)
    }

    /// Maps a local time to the peer's clock.
    pub fn local_to_peer(&self, local_s: f64) -> Option<f64> {
        self.estimate().map(|e| local_s + e.offset_s)
    }

    /// Forgets all samples (a new connection).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.outstanding.clear();
        self.last_ping_s = None;
    }
}

/// The answer to `ping`, received at `t1_s` and answered at `t2_s` (answerer's clock).
pub fn answer(ping: &Ping, t1_s: f64, t2_s: f64) -> Pong {
    Pong {
        id: ping.id,
        t0_s: ping.t0_s,
        t1_s,
        t2_s,
    }
}
