#![doc = include_str!("../README.md")]

pub mod cbct;
mod error;
pub mod noise;
pub mod phantom;

pub use cbct::{simulate_cbct, CbctParams};
pub use error::Error;
pub use phantom::{Landmark, Phantom, PhantomParams, Tissue};
