#![doc = include_str!("../README.md")]

pub mod dicom;
mod error;
pub mod io;
pub mod volume;

pub use error::Error;
