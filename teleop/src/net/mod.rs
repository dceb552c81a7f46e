//! The tokio + quinn layer over the protocol core.
//!
//! - [`server::TeleopServer`] (patient side) accepts mutually authenticated QUIC connections,
//!   drives a [`crate::session::PatientCore`] and hands accepted commands and link/session
//!   events to the control node through channels.
//! - [`client::TeleopClient`] (console side) drives a [`crate::console::ConsoleCore`].
//! - [`impair::ImpairProxy`] is a seeded UDP relay adding delay, jitter, loss and duplication.
//!
//! Channels on one connection: QUIC datagrams for commands, haptic feedback, robot state and
//! clock sync; one bidirectional stream, opened by the client, for session control; one
//! unidirectional stream per ultrasound frame.

pub mod client;
pub mod impair;
pub mod server;
mod tls;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use tls::{client_crypto, client_tls, server_crypto, server_tls, transport_config, ClientAuth};

/// Application error codes used when closing a connection.
/// Locks `m`, recovering from poisoning: a panic while holding one of the link's locks cannot
/// leave its structures half-updated in a way that matters more than stopping the link would;
/// keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The client certificate carries no valid role.
    pub const BAD_IDENTITY: u32 = 1;
    /// Protocol violation on the control stream.
    pub const PROTOCOL: u32 = 2;
    /// Wrong application protocol.
    pub const ALPN: u32 = 3;
}

/// A source of time in seconds. Each side counts from its own origin; clock sync maps one
/// onto the other.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, s.
    fn now_s(&self) -> f64;
}

/// A monotonic clock starting at `offset_s` when created.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    start: Instant,
    offset_s: f64,
}

impl MonotonicClock {
    /// A clock reading `offset_s` now (tests give the two sides different clocks).
    pub fn new(offset_s: f64) -> Self {
        Self {
            start: Instant::now(),
            offset_s,
        }
    }

    /// A clock reading `offset_s` at `start` (tests give two sides clocks with a known
    /// offset).
    pub fn with_start(start: Instant, offset_s: f64) -> Self {
        Self { start, offset_s }
    }

    /// A shared clock.
    pub fn shared(offset_s: f64) -> Arc<dyn Clock> {
        Arc::new(Self::new(offset_s))
    }
}

impl Clock for MonotonicClock {
    fn now_s(&self) -> f64 {
        self.offset_s + self.start.elapsed().as_secs_f64()
    }
}

/// Default time between core ticks (watchdog resolution, ping scheduling).
pub const DEFAULT_TICK: Duration = Duration::from_millis(5);
