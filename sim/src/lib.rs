#![doc = include_str!("../README.md")]

pub mod cbct;
pub mod contact;
mod error;
pub mod ft_sensor;
pub mod gazebo;
pub mod noise;
pub mod phantom;
pub mod robot;
pub mod ultrasound;
pub mod world;

pub use cbct::{simulate_cbct, CbctParams};
pub use error::Error;
pub use phantom::{Landmark, Phantom, PhantomParams, Tissue};
