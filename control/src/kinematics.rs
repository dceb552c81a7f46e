//! Kinematics of any serial chain in any URDF: forward kinematics, the geometric Jacobian and
//! damped-least-squares inverse kinematics, none of which allocate per call.
//!
//! Conventions: `q` lists the chain's movable joints from base to tip; poses are `t_base_tip`;
//! the Jacobian is 6×N with the linear rows first, expressed in the base frame, with the tip origin
//! as reference point.

mod chain;
mod ik;

pub use chain::{Chain, JointKind, JointLimits, MAX_DOF};
pub use ik::{IkConfig, IkReport, IkSolver};
