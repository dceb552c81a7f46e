#![doc = include_str!("../README.md")]

mod error;
pub mod noise;
pub mod phantom;

pub use error::Error;
pub use phantom::{Landmark, Phantom, PhantomParams, Tissue};
