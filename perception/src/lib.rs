#![doc = include_str!("../README.md")]

pub mod ct_surface;
pub mod dicom;
mod error;
pub mod io;
pub mod us_bone;
pub mod volume;

pub use error::Error;
