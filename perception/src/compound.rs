//! 3D compounding of a tracked sweep: bone-surface points and landmarks in the base frame.
