#![doc = include_str!("../README.md")]

pub mod alloc_count;
mod error;
pub mod frames;
pub mod peers;
pub mod recording;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod ros_msgs;
mod transform;

pub use error::Error;
pub use transform::{rotation_from_rpy, rotation_log, Transform};
