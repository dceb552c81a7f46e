#![doc = include_str!("../README.md")]

#[cfg(feature = "cnn")]
pub mod cnn;
pub mod compound;
pub mod ct_landmarks;
pub mod ct_load;
pub mod ct_surface;
pub mod detect;
pub mod dicom;
mod error;
pub mod fuse;
pub mod imaging;
pub mod io;
pub mod pipeline;
pub mod registration;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod sweep;
pub mod sweep_write;
pub mod us_bone;
pub mod volume;

pub use error::Error;
