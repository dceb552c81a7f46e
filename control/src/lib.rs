#![doc = include_str!("../README.md")]

pub mod controller;
mod error;
pub mod executor;
pub mod ft_compensation;
#[cfg(feature = "ros2")]
pub mod gazebo;
pub mod kinematics;
pub mod payload;
pub mod protocol;
#[cfg(feature = "r2r")]
pub mod r2r_node;
#[cfg(feature = "ros2")]
pub mod ros2;
#[cfg(feature = "ros2")]
pub mod ros2_bag;
pub mod rt_loop;
pub mod safety;

pub use controller::{
    CommandInterface, ContactPhase, ControlInput, ControlMode, ControlOutput, ControllerConfig,
    OrientationMode, ProbeController, ProbeTarget, TargetMode,
};
pub use error::Error;
pub use executor::{
    palpated_start_pose, AbortCause, ExecutorConfig, ScanExecutor, ScanProgress, ScanState,
};
pub use ft_compensation::{FtCompensator, FtSample};
pub use kinematics::{Chain, IkConfig, IkReport, IkSolver, JointKind, JointLimits};
pub use payload::{Payload, Wrench};
pub use protocol::{ImagingDepth, ProbeOrientation, ScanProtocol, Sweep};
pub use rt_loop::{
    run_simulated, spawn_realtime, spawn_realtime_until, spawn_realtime_with, CpuTimes, FnSource,
    LoopStats, Plant, RtConfig, RtRun, RtStatus, TargetSource, TimingSummary,
};
pub use safety::{
    SafetyConfig, SafetyEvent, SafetyEventKind, SafetyEvents, SafetyState, SafetySupervisor,
    Severity,
};
