//! Reader of the tracked ultrasound sweep written by `telecho scan` (docs/SWEEP_FORMAT.md).
