#![doc = include_str!("../README.md")]

pub mod acceptor;
pub mod audit;
pub mod clock_sync;
pub mod command_filter;
pub mod console;
pub mod control_link;
mod error;
pub mod haptics;
pub mod identity;
pub mod lease;
pub mod net;
pub mod pki;
pub mod predict;
pub mod session;
pub mod setpoint_link;
pub mod spacemouse;
pub mod us_codec;
pub mod view;
pub mod watchdog;
pub mod wire;

pub use error::Error;
