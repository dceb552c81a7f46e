//! A serial kinematic chain extracted from a URDF tree.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use nalgebra::{Matrix3, Matrix6xX, Vector3};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::Error;

/// Most movable joints a chain may have (a sanity bound; real arms have 6 or 7).
pub const MAX_DOF: usize = 64;

/// Kind of a movable joint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JointKind {
    /// Rotation about the axis, bounded by `lower..=upper` (rad).
    Revolute,
    /// Rotation about the axis without position limits.
    Continuous,
    /// Translation along the axis (m).
    Prismatic,
}

/// Limits of one movable joint, SI units, as declared in the URDF `<limit>` tag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointLimits {
    /// Lowest position (rad or m); `-inf` for continuous joints.
    pub lower: f64,
    /// Highest position (rad or m); `+inf` for continuous joints.
    pub upper: f64,
    /// Speed limit (rad/s or m/s).
    pub velocity: f64,
    /// Torque or force limit (N·m or N).
    pub effort: f64,
}

impl JointLimits {
    /// True when both position bounds are finite.
    pub fn is_bounded(&self) -> bool {
        self.lower.is_finite() && self.upper.is_finite()
    }
}

/// Rotation axis specialised for the common principal-axis case, where rotating a frame only mixes
/// two of its columns (12 flops instead of a full 3×3 product).
#[derive(Clone, Copy, Debug)]
enum Axis {
    X,
    Y,
    Z,
    General,
}

#[derive(Clone, Debug)]
struct Segment {
    kind: JointKind,
    axis: Axis,
    /// +1 when the chain runs parent→child through this joint, −1 when it runs child→parent; for
    /// `Axis::General` the sign is folded into `unit_axis` and this is +1.
    sign: f64,
    /// Joint axis in the joint frame, unit length, with the traversal sign applied.
    unit_axis: Vector3<f64>,
    /// Unsigned axis used to build a general rotation (Rodrigues).
    rot_axis: Vector3<f64>,
    /// Fixed transform from this joint's moving frame to the next joint's frame (or the tip).
    post: Transform,
    post_is_identity: bool,
}

/// A serial chain: the path through a URDF tree from a base link to a tip link.
///
/// Fixed joints along the path are folded into constant transforms at construction, so the
/// per-cycle work is one rotation (or translation) per movable joint plus one constant product.
/// Forward kinematics and the Jacobian do not allocate.
#[derive(Clone, Debug)]
pub struct Chain {
    base: String,
    tip: String,
    root: Transform,
    segments: Vec<Segment>,
    names: Vec<String>,
    kinds: Vec<JointKind>,
    limits: Vec<JointLimits>,
}

enum Op {
    Fixed(Transform),
    Motion {
        name: String,
        kind: JointKind,
        axis: Vector3<f64>,
        sign: f64,
        limits: JointLimits,
    },
}

impl Chain {
    /// Reads a URDF file and extracts the chain from `base` (default: the URDF's root link) to `tip`.
    pub fn from_urdf_file(
        path: impl AsRef<Path>,
        base: Option<&str>,
        tip: &str,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ErrorKind::Urdf(format!("{}: {e}", path.display())))?;
        Self::from_urdf_str(&text, base, tip).map_err(|e| match e.0 {
            ErrorKind::Urdf(msg) => ErrorKind::Urdf(format!("{}: {msg}", path.display())).into(),
            other => Error(other),
        })
    }

    /// Parses URDF XML and extracts the chain from `base` (default: root link) to `tip`.
    pub fn from_urdf_str(xml: &str, base: Option<&str>, tip: &str) -> Result<Self, Error> {
        let robot = urdf_rs::read_from_string(xml).map_err(|e| ErrorKind::Urdf(one_line(&e)))?;
        Self::from_robot(&robot, base, tip)
    }

    /// Extracts the chain from an already parsed URDF.
    pub fn from_robot(
        robot: &urdf_rs::Robot,
        base: Option<&str>,
        tip: &str,
    ) -> Result<Self, Error> {
        let mut links: HashSet<&str> = robot.links.iter().map(|l| l.name.as_str()).collect();
        let mut parent_joint: HashMap<&str, usize> = HashMap::new();
        for (i, j) in robot.joints.iter().enumerate() {
            links.insert(j.parent.link.as_str());
            links.insert(j.child.link.as_str());
            if parent_joint.insert(j.child.link.as_str(), i).is_some() {
                return Err(ErrorKind::MultipleParents(j.child.link.clone()).into());
            }
        }
        // The root is the first declared link without a parent joint (a URDF has exactly one);
        // links only named by joints are considered after the declared ones.
        let root = robot
            .links
            .iter()
            .map(|l| l.name.as_str())
            .chain(robot.joints.iter().map(|j| j.parent.link.as_str()))
            .find(|l| !parent_joint.contains_key(l))
            .ok_or(ErrorKind::NoRoot)?;
        let base = base.unwrap_or(root);
        for l in [base, tip] {
            if !links.contains(l) {
                return Err(ErrorKind::UnknownLink(l.to_owned()).into());
            }
        }
        let ancestors = |start: &str| -> Result<Vec<(String, Option<usize>)>, Error> {
            let mut out = Vec::new();
            let mut cur = start.to_owned();
            loop {
                let pj = parent_joint.get(cur.as_str()).copied();
                out.push((cur.clone(), pj));
                match pj {
                    Some(j) => cur = robot.joints[j].parent.link.clone(),
                    None => return Ok(out),
                }
                if out.len() > robot.joints.len() + 1 {
                    return Err(ErrorKind::Urdf(format!(
                        "joint graph has a cycle through `{start}`"
                    ))
                    .into());
                }
            }
        };
        let up = ancestors(base)?;
        let down = ancestors(tip)?;
        let lca_down = down
            .iter()
            .position(|(l, _)| up.iter().any(|(u, _)| u == l))
            .ok_or_else(|| {
                ErrorKind::Urdf(format!("links `{base}` and `{tip}` are not connected"))
            })?;
        let lca = &down[lca_down].0;
        let lca_up = up.iter().position(|(l, _)| l == lca).unwrap_or(0);

        let mut ops = Vec::new();
        // Every link below the common ancestor has a parent joint, so the filters drop nothing.
        for j in up[..lca_up].iter().filter_map(|(_, j)| *j) {
            let joint = &robot.joints[j];
            let (origin, motion) = joint_parts(joint)?;
            if let Some(Op::Motion {
                name,
                kind,
                axis,
                limits,
                ..
            }) = motion
            {
                ops.push(Op::Motion {
                    name,
                    kind,
                    axis,
                    sign: -1.0,
                    limits,
                });
            }
            ops.push(Op::Fixed(origin.inverse()));
        }
        for j in down[..lca_down].iter().rev().filter_map(|(_, j)| *j) {
            let joint = &robot.joints[j];
            let (origin, motion) = joint_parts(joint)?;
            ops.push(Op::Fixed(origin));
            if let Some(m) = motion {
                ops.push(m);
            }
        }

        let mut root_t = Transform::IDENTITY;
        let mut segments: Vec<Segment> = Vec::new();
        let (mut names, mut kinds, mut limits) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Fixed(t) => match segments.last_mut() {
                    Some(s) => s.post = s.post * t,
                    None => root_t = root_t * t,
                },
                Op::Motion {
                    name,
                    kind,
                    axis,
                    sign,
                    limits: lim,
                } => {
                    let (ax, sgn) = classify_axis(&axis);
                    let (axis_kind, seg_sign) = match ax {
                        Axis::General => (Axis::General, 1.0),
                        a => (a, sgn * sign),
                    };
                    segments.push(Segment {
                        kind,
                        axis: axis_kind,
                        sign: seg_sign,
                        unit_axis: axis * sign,
                        rot_axis: match ax {
                            Axis::General => axis * sign,
                            _ => axis * sgn,
                        },
                        post: Transform::IDENTITY,
                        post_is_identity: true,
                    });
                    names.push(name);
                    kinds.push(kind);
                    limits.push(lim);
                }
            }
        }
        for s in &mut segments {
            s.post_is_identity = s.post == Transform::IDENTITY;
        }
        if segments.len() > MAX_DOF {
            return Err(ErrorKind::TooManyJoints {
                base: base.to_owned(),
                tip: tip.to_owned(),
                dof: segments.len(),
                max: MAX_DOF,
            }
            .into());
        }
        Ok(Self {
            base: base.to_owned(),
            tip: tip.to_owned(),
            root: root_t,
            segments,
            names,
            kinds,
            limits,
        })
    }

    /// Number of movable joints.
    pub fn dof(&self) -> usize {
        self.segments.len()
    }

    /// Base link name.
    pub fn base_link(&self) -> &str {
        &self.base
    }

    /// Tip link name.
    pub fn tip_link(&self) -> &str {
        &self.tip
    }

    /// Names of the movable joints, base to tip (the order of `q`).
    pub fn joint_names(&self) -> &[String] {
        &self.names
    }

    /// Kinds of the movable joints, base to tip.
    pub fn joint_kinds(&self) -> &[JointKind] {
        &self.kinds
    }

    /// Limits of the movable joints, base to tip.
    pub fn limits(&self) -> &[JointLimits] {
        &self.limits
    }

    /// Checks that `q` has one finite value per movable joint.
    pub fn check_q(&self, q: &[f64]) -> Result<(), Error> {
        if q.len() != self.dof() {
            return Err(ErrorKind::JointCount {
                expected: self.dof(),
                got: q.len(),
                joints: self.names.join(", "),
            }
            .into());
        }
        if let Some((index, &value)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ErrorKind::NotFinite {
                what: "joint",
                index,
                value,
            }
            .into());
        }
        Ok(())
    }

    /// True when every joint value lies within its position limits (± `tol`).
    pub fn within_limits(&self, q: &[f64], tol: f64) -> bool {
        q.len() == self.dof()
            && q.iter()
                .zip(&self.limits)
                .all(|(v, l)| *v >= l.lower - tol && *v <= l.upper + tol)
    }

    /// Clamps each joint value into its position limits.
    pub fn clamp_to_limits(&self, q: &mut [f64]) {
        for (v, l) in q.iter_mut().zip(&self.limits) {
            if l.lower <= l.upper {
                *v = v.clamp(l.lower, l.upper);
            }
        }
    }

    /// The middle of each joint's range (0 for unbounded joints).
    pub fn mid_configuration(&self) -> Vec<f64> {
        self.limits
            .iter()
            .map(|l| {
                if l.is_bounded() {
                    0.5 * (l.lower + l.upper)
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Writes a configuration drawn uniformly within the limits into `q`, using `uniform01` as the
    /// source of numbers in [0, 1). Unbounded revolute joints draw from [−π, π], unbounded prismatic
    /// joints from [−1, 1] m.
    pub fn sample_configuration(&self, q: &mut [f64], mut uniform01: impl FnMut() -> f64) {
        for ((v, l), k) in q.iter_mut().zip(&self.limits).zip(&self.kinds) {
            let (lo, hi) = if l.is_bounded() {
                (l.lower, l.upper)
            } else if *k == JointKind::Prismatic {
                (-1.0, 1.0)
            } else {
                (-std::f64::consts::PI, std::f64::consts::PI)
            };
            *v = lo + (hi - lo) * uniform01();
        }
    }

    /// Forward kinematics: `t_base_tip` for joint values `q` (checked).
    pub fn fk(&self, q: &[f64]) -> Result<Transform, Error> {
        self.check_q(q)?;
        Ok(self.fk_unchecked(q))
    }

    /// Forward kinematics without input checks (the caller guarantees `q.len() == dof()` and finite
    /// values). Does not allocate.
    pub fn fk_unchecked(&self, q: &[f64]) -> Transform {
        let mut t = self.root;
        for (seg, &qi) in self.segments.iter().zip(q) {
            apply_motion(&mut t, seg, qi);
            if !seg.post_is_identity {
                t = t * seg.post;
            }
        }
        t
    }

    /// The origin of every joint and of the tip (`dof() + 1` points, base frame) for joint values
    /// `q` (checked): the arm as a polyline, for views. Clears `out` first.
    pub fn joint_origins(&self, q: &[f64], out: &mut Vec<Vector3<f64>>) -> Result<(), Error> {
        self.check_q(q)?;
        out.clear();
        let mut t = self.root;
        for (seg, &qi) in self.segments.iter().zip(q) {
            out.push(t.translation);
            apply_motion(&mut t, seg, qi);
            if !seg.post_is_identity {
                t = t * seg.post;
            }
        }
        out.push(t.translation);
        Ok(())
    }

    /// Forward kinematics and the geometric Jacobian in one pass.
    ///
    /// `jac` must have `dof()` columns. Rows 0–2 are the linear velocity of the tip origin, rows
    /// 3–5 the angular velocity, both expressed in the base frame. Does not allocate.
    pub fn fk_jacobian(&self, q: &[f64], jac: &mut Matrix6xX<f64>) -> Result<Transform, Error> {
        self.check_q(q)?;
        if jac.ncols() != self.dof() {
            return Err(ErrorKind::JacobianShape {
                expected: self.dof(),
                got: jac.ncols(),
            }
            .into());
        }
        Ok(self.fk_jacobian_unchecked(q, jac))
    }

    /// [`Chain::fk_jacobian`] without input checks.
    pub fn fk_jacobian_unchecked(&self, q: &[f64], jac: &mut Matrix6xX<f64>) -> Transform {
        let mut t = self.root;
        // First pass: store each joint's origin and axis (base frame) in its column.
        for (i, (seg, &qi)) in self.segments.iter().zip(q).enumerate() {
            let z = t.rotation * seg.unit_axis;
            let p = t.translation;
            let mut col = jac.column_mut(i);
            col[0] = p.x;
            col[1] = p.y;
            col[2] = p.z;
            col[3] = z.x;
            col[4] = z.y;
            col[5] = z.z;
            apply_motion(&mut t, seg, qi);
            if !seg.post_is_identity {
                t = t * seg.post;
            }
        }
        let tip = t.translation;
        for (i, seg) in self.segments.iter().enumerate() {
            let mut col = jac.column_mut(i);
            let p = Vector3::new(col[0], col[1], col[2]);
            let z = Vector3::new(col[3], col[4], col[5]);
            let (lin, ang) = match seg.kind {
                JointKind::Prismatic => (z, Vector3::zeros()),
                _ => (z.cross(&(tip - p)), z),
            };
            col[0] = lin.x;
            col[1] = lin.y;
            col[2] = lin.z;
            col[3] = ang.x;
            col[4] = ang.y;
            col[5] = ang.z;
        }
        t
    }

    /// Largest absolute difference between the analytic Jacobian at `q` and central finite
    /// differences of FK (step `h`): the self-check used by the tests and `telecho demo`.
    /// Allocates; not for the control loop.
    pub fn jacobian_fd_error(&self, q: &[f64], h: f64) -> Result<f64, Error> {
        let j = self.jacobian(q)?;
        let mut qp = q.to_vec();
        let mut worst = 0.0f64;
        for i in 0..q.len() {
            qp[i] = q[i] + h;
            let a = self.fk_unchecked(&qp);
            qp[i] = q[i] - h;
            let b = self.fk_unchecked(&qp);
            qp[i] = q[i];
            let lin = (a.translation - b.translation) / (2.0 * h);
            let ang =
                telecho_core::rotation_log(&(a.rotation * b.rotation.transpose())) / (2.0 * h);
            for r in 0..3 {
                worst = worst
                    .max((j[(r, i)] - lin[r]).abs())
                    .max((j[(r + 3, i)] - ang[r]).abs());
            }
        }
        Ok(worst)
    }

    /// Allocating convenience: the Jacobian at `q` as a new 6×N matrix.
    pub fn jacobian(&self, q: &[f64]) -> Result<Matrix6xX<f64>, Error> {
        let mut jac = Matrix6xX::zeros(self.dof());
        self.fk_jacobian(q, &mut jac)?;
        Ok(jac)
    }
}

#[inline(always)]
fn apply_motion(t: &mut Transform, seg: &Segment, q: f64) {
    if seg.kind == JointKind::Prismatic {
        t.translation += t.rotation * (seg.unit_axis * q);
        return;
    }
    let (s, c) = (seg.sign * q).sin_cos();
    let r = &mut t.rotation;
    match seg.axis {
        Axis::Z => {
            let c0 = r.column(0).into_owned();
            let c1 = r.column(1).into_owned();
            r.set_column(0, &(c0 * c + c1 * s));
            r.set_column(1, &(c1 * c - c0 * s));
        }
        Axis::X => {
            let c1 = r.column(1).into_owned();
            let c2 = r.column(2).into_owned();
            r.set_column(1, &(c1 * c + c2 * s));
            r.set_column(2, &(c2 * c - c1 * s));
        }
        Axis::Y => {
            let c0 = r.column(0).into_owned();
            let c2 = r.column(2).into_owned();
            r.set_column(0, &(c0 * c - c2 * s));
            r.set_column(2, &(c0 * s + c2 * c));
        }
        Axis::General => {
            *r *= rodrigues(&seg.rot_axis, s, c);
        }
    }
}

/// Rotation by angle θ (given as sin θ, cos θ) about unit axis `a`.
fn rodrigues(a: &Vector3<f64>, s: f64, c: f64) -> Matrix3<f64> {
    let k = a.cross_matrix();
    Matrix3::identity() + k * s + k * k * (1.0 - c)
}

/// Principal axis and its sign, or `General`.
fn classify_axis(a: &Vector3<f64>) -> (Axis, f64) {
    const EPS: f64 = 1e-12;
    let near = |v: f64, t: f64| (v - t).abs() < EPS;
    for (i, ax) in [Axis::X, Axis::Y, Axis::Z].into_iter().enumerate() {
        let others_zero = (0..3).filter(|&j| j != i).all(|j| near(a[j], 0.0));
        if others_zero && near(a[i].abs(), 1.0) {
            return (ax, a[i].signum());
        }
    }
    (Axis::General, 1.0)
}

fn joint_parts(joint: &urdf_rs::Joint) -> Result<(Transform, Option<Op>), Error> {
    let invalid = |what: String| -> Error {
        ErrorKind::InvalidJoint {
            joint: joint.name.clone(),
            what,
        }
        .into()
    };
    let origin = Transform::from_xyz_rpy(joint.origin.xyz.0, joint.origin.rpy.0)
        .map_err(|e| invalid(format!("origin: {e}")))?;
    let kind = match joint.joint_type {
        urdf_rs::JointType::Fixed => return Ok((origin, None)),
        urdf_rs::JointType::Revolute => JointKind::Revolute,
        urdf_rs::JointType::Continuous => JointKind::Continuous,
        urdf_rs::JointType::Prismatic => JointKind::Prismatic,
        urdf_rs::JointType::Floating => return Err(unsupported(joint, "floating")),
        urdf_rs::JointType::Planar => return Err(unsupported(joint, "planar")),
        urdf_rs::JointType::Spherical => return Err(unsupported(joint, "spherical")),
    };
    if joint.mimic.is_some() {
        return Err(invalid(
            "mimic joints inside a serial chain are not supported".into(),
        ));
    }
    let axis = Vector3::from(joint.axis.xyz.0);
    let n = axis.norm();
    if !n.is_finite() || n < 1e-9 {
        return Err(invalid(format!(
            "axis {:?} is not a usable direction",
            joint.axis.xyz.0
        )));
    }
    let l = &joint.limit;
    let limits = if kind == JointKind::Continuous {
        JointLimits {
            lower: f64::NEG_INFINITY,
            upper: f64::INFINITY,
            velocity: l.velocity,
            effort: l.effort,
        }
    } else {
        if l.lower.is_nan() || l.upper.is_nan() || l.lower > l.upper {
            return Err(invalid(format!(
                "limits lower={} upper={} are invalid",
                l.lower, l.upper
            )));
        }
        JointLimits {
            lower: l.lower,
            upper: l.upper,
            velocity: l.velocity,
            effort: l.effort,
        }
    };
    Ok((
        origin,
        Some(Op::Motion {
            name: joint.name.clone(),
            kind,
            axis: axis / n,
            sign: 1.0,
            limits,
        }),
    ))
}

fn unsupported(joint: &urdf_rs::Joint, kind: &'static str) -> Error {
    ErrorKind::UnsupportedJoint {
        joint: joint.name.clone(),
        kind,
    }
    .into()
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
