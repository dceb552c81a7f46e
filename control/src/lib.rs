#![doc = include_str!("../README.md")]

mod error;
pub mod kinematics;
pub mod protocol;

pub use error::Error;
pub use kinematics::{Chain, IkConfig, IkReport, IkSolver, JointKind, JointLimits};
pub use protocol::{ProbeOrientation, ScanProtocol, Sweep};
