#![doc = include_str!("../README.md")]

mod error;
pub mod noise;

pub use error::Error;
