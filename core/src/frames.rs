//! Names of the frames every telecho node agrees on (REP 103/105 conventions).
//!
//! A transform from frame `b` to frame `a` is written `t_a_b`: it maps a point expressed in `b` into
//! `a` (`p_a = t_a_b * p_b`).

/// Robot base frame: the root of the arm's kinematic chain.
pub const BASE: &str = "base_link";
/// Mounting flange of the arm (ISO 9409), where the probe holder is bolted on.
pub const FLANGE: &str = "flange";
/// Measurement frame of the 6-axis force/torque sensor between flange and probe holder.
pub const FT_SENSOR: &str = "ft_sensor";
/// Probe holder body.
pub const PROBE_HOLDER: &str = "probe_holder";
/// Centre of the ultrasound probe's footprint; +z points along the probe axis into the patient.
pub const PROBE_TIP: &str = "probe_tip";
/// World frame of the patient's cone-beam CT (the NIfTI affine's RAS world, in metres).
pub const CT: &str = "ct";
/// The ultrasound image plane: origin at pixel (0, 0), x along the columns, y along the rows
/// (depth), z out of the plane (`probe_tip` → `us_image` on `/tf_static`).
pub const US_IMAGE: &str = "us_image";
