#![doc = include_str!("../README.md")]

mod error;
pub mod volume;

pub use error::Error;
