//! Spine landmarks detected in the CBCT volume.
