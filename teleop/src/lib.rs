#![doc = include_str!("../README.md")]

pub mod command_filter;
mod error;

pub use error::Error;
