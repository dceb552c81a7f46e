#![doc = include_str!("../README.md")]

mod error;
pub mod kinematics;

pub use error::Error;
pub use kinematics::{Chain, IkConfig, IkReport, IkSolver, JointKind, JointLimits};
