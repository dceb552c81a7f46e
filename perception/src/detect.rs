//! Per-frame detections shared by the classical detector and the CNN: bone-surface profile and
//! landmark candidates in image coordinates.
