//! Link-loss watchdog at the patient side.
//!
//! Armed by the first accepted command. No fresh command for [`WatchdogConfig::hold_after_s`]
//! (100 ms) → [`LinkState::Hold`]: the control node holds the probe with force regulation. No
//! fresh command for [`WatchdogConfig::retract_after_s`] (1 s) → [`LinkState::Retract`]: the
//! control node retracts through its safety supervisor. Hold clears by itself when commands
//! return; Retract is latched until [`LinkWatchdog::reset`] (a `Reset` from the lease holder),
//! like the supervisor's own latch. The watchdog only reports; the control node acts.

use crate::wire::LinkState;
use crate::Error;

/// Watchdog times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WatchdogConfig {
    /// Silence before holding, s.
    pub hold_after_s: f64,
    /// Silence before retracting, s.
    pub retract_after_s: f64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            hold_after_s: 0.1,
            retract_after_s: 1.0,
        }
    }
}

/// A change of link state, for the control node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkEvent {
    /// The new state.
    pub state: LinkState,
    /// When (patient clock), s.
    pub at_s: f64,
    /// Time since the last fresh command, s (0 for `Live` and `Idle`).
    pub silence_s: f64,
}

/// The watchdog.
#[derive(Clone, Debug)]
pub struct LinkWatchdog {
    config: WatchdogConfig,
    state: LinkState,
    last_fresh_s: f64,
}

impl LinkWatchdog {
    /// An idle (unarmed) watchdog.
    pub fn new(config: WatchdogConfig) -> Result<Self, Error> {
        let ok = config.hold_after_s.is_finite()
            && config.retract_after_s.is_finite()
            && config.hold_after_s > 0.0
            && config.retract_after_s > config.hold_after_s;
        if !ok {
            return Err(Error::config(format!(
                "watchdog needs 0 < hold_after_s < retract_after_s, got {} and {}",
                config.hold_after_s, config.retract_after_s
            )));
        }
        Ok(Self {
            config,
            state: LinkState::Idle,
            last_fresh_s: 0.0,
        })
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
    }

    fn set(&mut self, state: LinkState, now_s: f64) -> Option<LinkEvent> {
        if state == self.state {
            return None;
        }
        self.state = state;
        let silence_s = match state {
            LinkState::Hold | LinkState::Retract => now_s - self.last_fresh_s,
            _ => 0.0,
        };
        Some(LinkEvent {
            state,
            at_s: now_s,
            silence_s,
        })
    }

    /// A fresh command was accepted at `now_s`.
    pub fn fresh(&mut self, now_s: f64) -> Option<LinkEvent> {
        if self.state == LinkState::Retract {
            return None;
        }
        self.last_fresh_s = now_s;
        self.set(LinkState::Live, now_s)
    }

    /// Advances time.
    pub fn poll(&mut self, now_s: f64) -> Option<LinkEvent> {
        let silence = now_s - self.last_fresh_s;
        match self.state {
            LinkState::Live | LinkState::Hold if silence >= self.config.retract_after_s => {
                self.set(LinkState::Retract, now_s)
            }
            LinkState::Live if silence >= self.config.hold_after_s => {
                self.set(LinkState::Hold, now_s)
            }
            _ => None,
        }
    }

    /// The lease was released on purpose: disarm (the control node holds). A latched retract
    /// stays latched.
    pub fn disarm(&mut self, now_s: f64) -> Option<LinkEvent> {
        if self.state == LinkState::Retract {
            return None;
        }
        self.set(LinkState::Idle, now_s)
    }

    /// Clears a latched retract (after the control node's reset); the next fresh command arms
    /// the watchdog again.
    pub fn reset(&mut self, now_s: f64) -> Option<LinkEvent> {
        if self.state != LinkState::Retract {
            return None;
        }
        self.set(LinkState::Idle, now_s)
    }
}
