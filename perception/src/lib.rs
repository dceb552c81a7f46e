#![doc = include_str!("../README.md")]

mod error;
pub mod dicom;
pub mod io;
pub mod volume;

pub use error::Error;
