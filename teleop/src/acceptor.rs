//! Command acceptance at the patient side: what may reach the control node.
//!
//! A decoded [`OperatorCommand`] (the decoder has already refused non-finite and implausible
//! values) passes, in order:
//! 1. the sender must hold the control lease (observers never do);
//! 2. the site limits of [`AcceptorConfig`]: workspace box, force setpoint, twist speeds;
//! 3. the clock offset must be known, to map the send time onto the patient clock;
//! 4. a rate limit (token bucket; duplicates and refused commands cost nothing);
//! 5. the [`CommandFilter`]: newest wins, duplicates, reordered and stale commands (older than
//!    `max_age_s`) are dropped.
//!
//! Everything refused is counted by reason.

use nalgebra::Vector3;

use crate::command_filter::{CommandFilter, Verdict};
use crate::wire::{OperatorCommand, Target};
use crate::Error;

/// Site limits of the acceptor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcceptorConfig {
    /// Commands older than this at arrival are dropped, s.
    pub max_age_s: f64,
    /// Sustained command rate allowed, Hz.
    pub max_rate_hz: f64,
    /// Burst allowance of the rate limit, commands.
    pub burst: f64,
    /// Workspace box of pose targets (base frame), lower corner, m.
    pub workspace_min_m: Vector3<f64>,
    /// Upper corner, m.
    pub workspace_max_m: Vector3<f64>,
    /// Largest contact-force setpoint, N.
    pub max_force_n: f64,
    /// Largest twist linear speed, m/s.
    pub max_linear_speed_m_s: f64,
    /// Largest twist angular speed, rad/s.
    pub max_angular_speed_rad_s: f64,
}

impl Default for AcceptorConfig {
    fn default() -> Self {
        Self {
            max_age_s: 0.2,
            max_rate_hz: 1100.0,
            burst: 50.0,
            workspace_min_m: Vector3::new(-1.0, -1.0, -0.2),
            workspace_max_m: Vector3::new(1.0, 1.0, 1.5),
            max_force_n: 20.0,
            max_linear_speed_m_s: 0.25,
            max_angular_speed_rad_s: 1.0,
        }
    }
}

/// Why a command was dropped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DropReason {
    /// The sender does not hold the lease (or is an observer).
    NotHolder,
    /// Outside the site limits; names the field.
    OutOfLimits(&'static str),
    /// No clock offset estimate for the sender yet.
    NoClockSync,
    /// Above the rate limit.
    RateLimited,
    /// Same sequence number as the last accepted one.
    Duplicate,
    /// Older sequence number than the last accepted one.
    Reordered,
    /// Older than `max_age_s` at arrival.
    Stale {
        /// Age, s.
        age_s: f64,
    },
    /// Send time in the future (beyond the clock-sync tolerance).
    BadTimestamp,
}

impl DropReason {
    /// Short name for counters and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::NotHolder => "not_holder",
            DropReason::OutOfLimits(_) => "out_of_limits",
            DropReason::NoClockSync => "no_clock_sync",
            DropReason::RateLimited => "rate_limited",
            DropReason::Duplicate => "duplicate",
            DropReason::Reordered => "reordered",
            DropReason::Stale { .. } => "stale",
            DropReason::BadTimestamp => "bad_timestamp",
        }
    }
}

/// Counters of an acceptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptorStats {
    /// Accepted.
    pub accepted: u64,
    /// Dropped: not the lease holder.
    pub not_holder: u64,
    /// Dropped: outside the site limits.
    pub out_of_limits: u64,
    /// Dropped: no clock sync yet.
    pub no_clock_sync: u64,
    /// Dropped: rate limit.
    pub rate_limited: u64,
    /// Dropped: duplicate.
    pub duplicate: u64,
    /// Dropped: reordered.
    pub reordered: u64,
    /// Dropped: stale.
    pub stale: u64,
    /// Dropped: send time in the future.
    pub bad_timestamp: u64,
}

impl AcceptorStats {
    /// All dropped commands.
    pub fn dropped(&self) -> u64 {
        self.not_holder
            + self.out_of_limits
            + self.no_clock_sync
            + self.rate_limited
            + self.duplicate
            + self.reordered
            + self.stale
            + self.bad_timestamp
    }

    fn count(&mut self, r: &DropReason) {
        let c = match r {
            DropReason::NotHolder => &mut self.not_holder,
            DropReason::OutOfLimits(_) => &mut self.out_of_limits,
            DropReason::NoClockSync => &mut self.no_clock_sync,
            DropReason::RateLimited => &mut self.rate_limited,
            DropReason::Duplicate => &mut self.duplicate,
            DropReason::Reordered => &mut self.reordered,
            DropReason::Stale { .. } => &mut self.stale,
            DropReason::BadTimestamp => &mut self.bad_timestamp,
        };
        *c += 1;
    }
}

/// A command that passed, with its timing on the patient clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Accepted {
    /// The command as received.
    pub cmd: OperatorCommand,
    /// Its send time mapped onto the patient clock, s.
    pub sent_local_s: f64,
    /// Age at arrival, s.
    pub age_s: f64,
}

/// The acceptor (one per patient side; its sequence history restarts when the lease changes
/// hands).
#[derive(Clone, Debug)]
pub struct CommandAcceptor {
    config: AcceptorConfig,
    filter: CommandFilter,
    tokens: f64,
    last_refill_s: Option<f64>,
    stats: AcceptorStats,
}

impl CommandAcceptor {
    /// An acceptor with `config`.
    pub fn new(config: AcceptorConfig) -> Result<Self, Error> {
        let positive = [
            config.max_rate_hz,
            config.burst,
            config.max_force_n,
            config.max_linear_speed_m_s,
            config.max_angular_speed_rad_s,
        ];
        if positive.iter().any(|v| !v.is_finite() || *v <= 0.0) || config.burst < 1.0 {
            return Err(Error::config(format!(
                "acceptor rates and limits must be positive (burst ≥ 1): {config:?}"
            )));
        }
        let box_ok = (0..3).all(|i| {
            config.workspace_min_m[i].is_finite()
                && config.workspace_max_m[i].is_finite()
                && config.workspace_min_m[i] < config.workspace_max_m[i]
        });
        if !box_ok {
            return Err(Error::config("workspace box must be finite with min < max"));
        }
        Ok(Self {
            filter: CommandFilter::new(config.max_age_s)?,
            tokens: config.burst,
            last_refill_s: None,
            stats: AcceptorStats::default(),
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &AcceptorConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> AcceptorStats {
        self.stats
    }

    /// Forgets the sequence history (the lease changed hands: a new sequence space).
    pub fn restart(&mut self) {
        self.filter.reset();
    }

    /// Counts a command dropped before reaching [`CommandAcceptor::check`] (a sender without
    /// the lease).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.stats.count(&reason);
    }

    fn limits(&self, cmd: &OperatorCommand) -> Result<(), &'static str> {
        let c = &self.config;
        if cmd.force_n > c.max_force_n {
            return Err("force_n");
        }
        match &cmd.target {
            Target::Pose(p) => {
                let x = &p.position_m;
                if (0..3).any(|i| x[i] < c.workspace_min_m[i] || x[i] > c.workspace_max_m[i]) {
                    return Err("workspace");
                }
            }
            Target::Twist {
                linear_m_s,
                angular_rad_s,
            } => {
                if linear_m_s.norm() > c.max_linear_speed_m_s {
                    return Err("linear_m_s");
                }
                if angular_rad_s.norm() > c.max_angular_speed_rad_s {
                    return Err("angular_rad_s");
                }
            }
        }
        Ok(())
    }

    /// Decides about a command from the lease holder arriving at `now_s` (patient clock);
    /// `offset_s` is the sender's clock minus ours (`None` before clock sync).
    pub fn check(
        &mut self,
        cmd: &OperatorCommand,
        now_s: f64,
        offset_s: Option<f64>,
    ) -> Result<Accepted, DropReason> {
        let r = self.decide(cmd, now_s, offset_s);
        match &r {
            Ok(_) => self.stats.accepted += 1,
            Err(reason) => self.stats.count(reason),
        }
        r
    }

    fn decide(
        &mut self,
        cmd: &OperatorCommand,
        now_s: f64,
        offset_s: Option<f64>,
    ) -> Result<Accepted, DropReason> {
        self.limits(cmd).map_err(DropReason::OutOfLimits)?;
        let offset = offset_s.ok_or(DropReason::NoClockSync)?;
        // Refill the bucket.
        if let Some(last) = self.last_refill_s {
            let dt = (now_s - last).max(0.0);
            self.tokens = (self.tokens + dt * self.config.max_rate_hz).min(self.config.burst);
        }
        self.last_refill_s = Some(now_s);
        if self.tokens < 1.0 {
            return Err(DropReason::RateLimited);
        }
        let sent_local_s = cmd.sent_s - offset;
        match self.filter.check(cmd.seq, sent_local_s, now_s) {
            Verdict::Accept => {
                self.tokens -= 1.0;
                Ok(Accepted {
                    cmd: *cmd,
                    sent_local_s,
                    age_s: now_s - sent_local_s,
                })
            }
            Verdict::Duplicate => Err(DropReason::Duplicate),
            Verdict::Reordered { .. } => Err(DropReason::Reordered),
            Verdict::Stale { age_s } => Err(DropReason::Stale { age_s }),
            Verdict::BadTimestamp => Err(DropReason::BadTimestamp),
        }
    }
}
