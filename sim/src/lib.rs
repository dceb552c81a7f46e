#![doc = include_str!("../README.md")]

pub mod cbct;
pub mod contact;
pub mod dataset;
mod error;
pub mod ft_sensor;
pub mod gazebo;
pub mod noise;
pub mod phantom;
pub mod plant;
pub mod robot;
pub mod ultrasound;
pub mod world;

pub use cbct::{simulate_cbct, CbctParams};
pub use contact::{Breathing, ContactModel, ContactParams, PassiveProbe, ProbeFace};
pub use error::Error;
pub use ft_sensor::{FtFault, FtReading, FtSensor, FtSensorParams, Payload, Wrench};
pub use phantom::{Landmark, Phantom, PhantomParams, Tissue};
pub use robot::{JointCommand, ServoArm, ServoMode, ServoParams};
pub use ultrasound::{LandmarkPixel, UltrasoundSim, UsFrame, UsParams};
pub use world::{
    GroundTruth, InitialPose, Observation, PatientPlacement, SimWorld, UrdfSource, WorldConfig,
};
