//! The haptic console's view: [`model`] (what is shown, as data; always built) and [`render`]
//! (kiss3d drawing, window and off-screen; the `view` feature, on by default).

pub mod model;
#[cfg(feature = "view")]
pub mod render;

pub use model::{LandmarkMark, SceneModel, UsImage};
