//! Automatic ultrasound-to-CBCT registration: global search, robust refinement, per-vertebra
//! refinement, uncertainty and refusal.
