//! The control node's ROS 2 adapter over DDS (`ros2` feature): `ros2-client` (pure Rust,
//! RustDDS), message types from `telecho_core::ros_msgs`.
//!
//! | topic | type | direction | QoS |
//! |---|---|---|---|
//! | `/joint_states` | `sensor_msgs/msg/JointState` | out, [`Ros2Config::state_rate_hz`] | BestEffort, Volatile, KeepLast 10 |
//! | `/probe/wrench` | `geometry_msgs/msg/WrenchStamped` (`ft_sensor`) | out, [`Ros2Config::wrench_rate_hz`] | BestEffort, Volatile, KeepLast 100 |
//! | `/probe/pose` | `geometry_msgs/msg/PoseStamped` (base frame, measured tip) | out, state rate | BestEffort, Volatile, KeepLast 10 |
//! | `/tf` | `tf2_msgs/msg/TFMessage` (movable joints) | out, state rate | BestEffort, Volatile, KeepLast 10 |
//! | `/tf_static` | `tf2_msgs/msg/TFMessage` (fixed joints) | out, once | Reliable, TransientLocal, KeepLast 1 |
//! | `/robot_description` | `std_msgs/msg/String` (URDF XML) | out, once | Reliable, TransientLocal, KeepLast 1 |
//! | `/probe/target_pose` | `geometry_msgs/msg/PoseStamped` (base frame) | in | Reliable, Volatile, KeepLast 10 |
//! | `/probe/force_setpoint` | `std_msgs/msg/Float64` (N; 0 = leave contact) | in | Reliable, Volatile, KeepLast 10 |
//!
//! DDS topic names carry the `rt/` prefix and DDS type names the `pkg::msg::dds_::Name_` form, as
//! ROS 2's rmw layers do, so ROS 2 nodes on any DDS (Cyclone, Fast DDS) see these topics.
//!
//! # Threads
//!
//! The 1 kHz loop ([`crate::spawn_realtime_with`]) never touches DDS. [`attach`] wraps its
//! [`Plant`] in a [`RosPlant`] and gives it a [`RosTargets`] source; both talk to the adapter
//! thread ([`Ros2Adapter`]) through bounded, preallocated channels that the loop only `try_`s,
//! so a slow or absent network never blocks a control cycle (samples that do not fit are
//! dropped and counted):
//!
//! ```text
//!  control thread (1 kHz)                        adapter thread (DDS)
//!  RosPlant::read/write ──StateSample──────────> publish wrench / joint_states / tf / pose
//!  RosTargets::next_target <──Setpoint────────── validate /probe/target_pose, /probe/force_setpoint
//! ```
//!
//! # Commands
//!
//! A ROS command is a set-point, not a stream: the newest valid pose (and force) is held and
//! handed to the controller every cycle, which takes it through its [`crate::SafetySupervisor`]
//! like any other target (speed, workspace, joint and force limits, retracts). Before it gets
//! there the adapter validates it ([`CommandValidator`]): finite numbers, `frame_id` the chain's
//! base link, a unit quaternion, a position inside the supervisor's workspace box, a force
//! setpoint within 1–20 N (or exactly 0: leave contact, free-space target). A rejected command is
//! logged (`warn`), counted ([`Ros2Report`]) and changes nothing. If the adapter thread stops
//! (its heartbeat is older than [`HEARTBEAT_TIMEOUT_S`]), [`RosTargets`] stops issuing the held
//! target and the supervisor's watchdog holds, then retracts.
//!
//! # The published wrench
//!
//! `/probe/wrench` is the compensated F/T reading in the `ft_sensor` frame (bias and payload
//! gravity removed; what remains is the contact load). [`RosPlant`] compensates each sample with
//! a copy of the controller's [`FtCompensator`], tared exactly as the controller tares (the same
//! first valid samples at the same measured pose, the same offset check), so both hold the same
//! bias; nothing is published before the tare completes. Stamps are wall-clock: the epoch time
//! at which the adapter started plus the plant's time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nalgebra::{Matrix3, Rotation3, Unit, UnitQuaternion, Vector3};
use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::{
    Context, ContextOptions, MessageTypeName, Name, Node, NodeName, NodeOptions, Publisher,
    QosProfile, Subscription,
};
use telecho_core::ros_msgs::{
    Float64, Header, JointState, Point, Pose, PoseStamped, RosMessage, StringMsg, TFMessage,
    TransformStamped, Vector3 as MsgVector3, Wrench as MsgWrench, WrenchStamped,
};
use telecho_core::{frames, Transform};
use thiserror::Error as ThisError;

use crate::controller::{ControlOutput, ProbeController, ProbeTarget};
use crate::ft_compensation::{FtCompensator, FtSample};
use crate::kinematics::Chain;
use crate::rt_loop::{Plant, TargetSource};
use crate::safety::SafetyState;

/// Most joints a [`StateSample`] carries.
pub const MAX_DOF: usize = 16;
/// Samples buffered between the control thread and the adapter (2 s at 1 kHz).
const SAMPLE_QUEUE: usize = 2048;
/// Set-points buffered from the adapter to the control thread.
const SETPOINT_QUEUE: usize = 64;
/// The held ROS target is no longer issued when the adapter thread has not beaten for this
/// long, s.
pub const HEARTBEAT_TIMEOUT_S: f64 = 0.05;
/// Force setpoints accepted from `/probe/force_setpoint`, N (0 is also accepted: leave contact).
pub const FORCE_SETPOINT_RANGE_N: [f64; 2] = [1.0, 20.0];
/// Largest accepted deviation of a target quaternion's norm from 1.
const QUATERNION_NORM_TOL: f64 = 1e-3;

/// Error of the ROS 2 adapter. Opaque: the message says what failed.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct Ros2Error(#[from] Ros2ErrorKind);

#[derive(Debug, ThisError)]
enum Ros2ErrorKind {
    #[error("ROS 2 / DDS: {0}")]
    Dds(String),
    #[error("robot model: {0}")]
    Model(String),
    #[error("ROS 2 adapter configuration: {0}")]
    Config(String),
    #[error("ROS 2 adapter thread: {0}")]
    Thread(String),
    #[error("recording: {0}")]
    Bag(String),
}

impl Ros2Error {
    pub(crate) fn dds(what: &str, e: impl std::fmt::Debug) -> Self {
        Ros2ErrorKind::Dds(format!("{what}: {e:?}")).into()
    }

    pub(crate) fn bag(what: impl Into<String>) -> Self {
        Ros2ErrorKind::Bag(what.into()).into()
    }
}

/// Settings of the adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct Ros2Config {
    /// DDS domain (`ROS_DOMAIN_ID`), 0–232.
    pub domain_id: u16,
    /// Node namespace, e.g. `/`.
    pub namespace: String,
    /// Node name.
    pub node_name: String,
    /// Rate of `/probe/wrench`, Hz (at most the loop rate; default 1000: every sample).
    pub wrench_rate_hz: f64,
    /// Rate of `/joint_states`, `/tf` and `/probe/pose`, Hz (default 100).
    pub state_rate_hz: f64,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Self {
            domain_id: 0,
            namespace: "/".into(),
            node_name: "telecho_control".into(),
            wrench_rate_hz: 1000.0,
            state_rate_hz: 100.0,
        }
    }
}

impl Ros2Config {
    /// The domain from `ROS_DOMAIN_ID` (0 when unset); an unparsable or out-of-range value is an
    /// error.
    pub fn domain_from_env() -> Result<u16, Ros2Error> {
        match std::env::var("ROS_DOMAIN_ID") {
            Err(_) => Ok(0),
            Ok(s) if s.trim().is_empty() => Ok(0),
            Ok(s) => match s.trim().parse::<u16>() {
                Ok(d) if d <= 232 => Ok(d),
                _ => Err(Ros2ErrorKind::Config(format!(
                    "ROS_DOMAIN_ID `{s}` is not a domain id in 0–232"
                ))
                .into()),
            },
        }
    }

    fn validate(&self) -> Result<(), Ros2Error> {
        let bad = |m: String| Err(Ros2ErrorKind::Config(m).into());
        if self.domain_id > 232 {
            return bad(format!(
                "domain_id {} is outside 0–232 (the DDS port mapping)",
                self.domain_id
            ));
        }
        for (what, v) in [
            ("wrench_rate_hz", self.wrench_rate_hz),
            ("state_rate_hz", self.state_rate_hz),
        ] {
            if !(v.is_finite() && (0.1..=10_000.0).contains(&v)) {
                return bad(format!("{what} = {v} is outside [0.1, 10000] Hz"));
            }
        }
        NodeName::new(&self.namespace, &self.node_name)
            .map_err(|e| Ros2ErrorKind::Config(format!("node name: {e:?}")))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The robot's TF tree

/// How one joint on the base → tip path moves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Motion {
    Fixed,
    /// Rotation about the unit axis by joint `index` of the chain.
    Revolute {
        axis: Unit<Vector3<f64>>,
        index: usize,
    },
    /// Translation along the unit axis by joint `index` of the chain.
    Prismatic {
        axis: Unit<Vector3<f64>>,
        index: usize,
    },
}

/// One parent → child transform of the path.
#[derive(Clone, Debug, PartialEq)]
struct TfJoint {
    parent: String,
    child: String,
    origin: Transform,
    motion: Motion,
}

/// The TF tree of the arm's base → tip path, as `robot_state_publisher` would publish it: fixed
/// joints on `/tf_static`, movable ones on `/tf` at the measured joint values.
#[derive(Clone, Debug, PartialEq)]
pub struct TfTree {
    joints: Vec<TfJoint>,
}

impl TfTree {
    /// The path from `base` to `tip` in `robot` (the base must be an ancestor of the tip), with
    /// movable joints numbered as in `joint_names` (the chain's order).
    pub fn from_robot(
        robot: &urdf_rs::Robot,
        base: &str,
        tip: &str,
        joint_names: &[String],
    ) -> Result<Self, Ros2Error> {
        let model = |m: String| -> Ros2Error { Ros2ErrorKind::Model(m).into() };
        let by_child: HashMap<&str, &urdf_rs::Joint> = robot
            .joints
            .iter()
            .map(|j| (j.child.link.as_str(), j))
            .collect();
        let mut path = Vec::new();
        let mut link = tip;
        while link != base {
            let joint = by_child
                .get(link)
                .ok_or_else(|| model(format!("link `{base}` is not an ancestor of `{tip}`")))?;
            path.push(*joint);
            link = joint.parent.link.as_str();
            if path.len() > robot.joints.len() {
                return Err(model("the URDF's joints form a cycle".into()));
            }
        }
        path.reverse();
        let mut joints = Vec::with_capacity(path.len());
        for j in path {
            let origin = Transform::from_xyz_rpy(j.origin.xyz.0, j.origin.rpy.0)
                .map_err(|e| model(format!("joint `{}` origin: {e}", j.name)))?;
            let axis = || {
                Unit::try_new(Vector3::from(j.axis.xyz.0), 1e-9)
                    .ok_or_else(|| model(format!("joint `{}` has no usable axis", j.name)))
            };
            let index = || {
                joint_names
                    .iter()
                    .position(|n| *n == j.name)
                    .ok_or_else(|| model(format!("joint `{}` is not in the chain", j.name)))
            };
            let motion = match j.joint_type {
                urdf_rs::JointType::Fixed => Motion::Fixed,
                urdf_rs::JointType::Revolute | urdf_rs::JointType::Continuous => Motion::Revolute {
                    axis: axis()?,
                    index: index()?,
                },
                urdf_rs::JointType::Prismatic => Motion::Prismatic {
                    axis: axis()?,
                    index: index()?,
                },
                _ => {
                    return Err(model(format!(
                        "joint `{}`: only fixed, revolute, continuous and prismatic joints \
                         are supported",
                        j.name
                    )))
                }
            };
            joints.push(TfJoint {
                parent: j.parent.link.clone(),
                child: j.child.link.clone(),
                origin,
                motion,
            });
        }
        let movable = joints.iter().filter(|j| j.motion != Motion::Fixed).count();
        if movable != joint_names.len() {
            return Err(model(format!(
                "{movable} movable joints between `{base}` and `{tip}`, the chain has {}",
                joint_names.len()
            )));
        }
        Ok(Self { joints })
    }

    /// `(parent, child, t_parent_child)` of every fixed joint of the path.
    pub fn static_transforms(&self) -> impl Iterator<Item = (&str, &str, Transform)> + '_ {
        self.joints
            .iter()
            .filter(|j| j.motion == Motion::Fixed)
            .map(|j| (j.parent.as_str(), j.child.as_str(), j.origin))
    }

    /// `(parent, child, t_parent_child)` of every movable joint at the joint values `q` (chain
    /// order; missing values read as 0).
    pub fn moving_transforms<'a>(
        &'a self,
        q: &'a [f64],
    ) -> impl Iterator<Item = (&'a str, &'a str, Transform)> + 'a {
        self.joints.iter().filter_map(move |j| {
            let value = |i: usize| q.get(i).copied().unwrap_or(0.0);
            let motion = match j.motion {
                Motion::Fixed => return None,
                Motion::Revolute { axis, index } => Transform::new(
                    Rotation3::from_axis_angle(&axis, value(index)).into_inner(),
                    Vector3::zeros(),
                ),
                Motion::Prismatic { axis, index } => {
                    Transform::new(Matrix3::identity(), axis.into_inner() * value(index))
                }
            };
            Some((j.parent.as_str(), j.child.as_str(), j.origin * motion))
        })
    }

    /// `t_base_tip` at `q`: the product of every transform of the path (what a TF listener
    /// composes from `/tf` and `/tf_static`).
    pub fn compose(&self, q: &[f64]) -> Transform {
        let mut moving = self.moving_transforms(q);
        self.joints.iter().fold(Transform::IDENTITY, |acc, j| {
            let t = if j.motion == Motion::Fixed {
                j.origin
            } else {
                moving
                    .next()
                    .map(|(_, _, t)| t)
                    .unwrap_or(Transform::IDENTITY)
            };
            acc * t
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Command validation

/// Why a ROS command was rejected.
#[derive(Clone, Debug, PartialEq, ThisError)]
pub enum Rejection {
    /// A value is NaN or infinite.
    #[error("{0} is not finite")]
    NotFinite(&'static str),
    /// The pose is not in the base frame.
    #[error("frame_id `{got}` is not the base frame `{expected}`")]
    WrongFrame {
        /// The message's frame.
        got: String,
        /// The base link.
        expected: String,
    },
    /// The orientation is not a unit quaternion.
    #[error("orientation quaternion has norm {0}, not 1")]
    NotUnitQuaternion(f64),
    /// The position is outside the supervisor's workspace box.
    #[error("position {0:?} m is outside the workspace {1:?}–{2:?} m")]
    OutsideWorkspace([f64; 3], [f64; 3], [f64; 3]),
    /// The force setpoint is outside 1–20 N (and not 0).
    #[error("force setpoint {0} N is outside {lo}–{hi} N (0 leaves contact)", lo = FORCE_SETPOINT_RANGE_N[0], hi = FORCE_SETPOINT_RANGE_N[1])]
    ForceOutOfRange(f64),
}

/// Checks ROS commands before they become targets.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandValidator {
    /// Frame the poses must be in (the chain's base link).
    pub base_frame: String,
    /// Workspace box, lower corner, base frame, m.
    pub workspace_min_m: [f64; 3],
    /// Workspace box, upper corner, base frame, m.
    pub workspace_max_m: [f64; 3],
}

impl CommandValidator {
    /// The validator of `controller`: its base link and its supervisor's workspace box.
    pub fn for_controller(controller: &ProbeController) -> Self {
        let s = &controller.config().safety;
        Self {
            base_frame: controller.chain().base_link().to_owned(),
            workspace_min_m: s.workspace_min_m,
            workspace_max_m: s.workspace_max_m,
        }
    }

    /// A `/probe/target_pose` message as `t_base_probe` (quaternion normalised).
    pub fn pose(&self, msg: &PoseStamped) -> Result<Transform, Rejection> {
        let p = &msg.pose.position;
        let o = &msg.pose.orientation;
        if ![p.x, p.y, p.z].iter().all(|v| v.is_finite()) {
            return Err(Rejection::NotFinite("position"));
        }
        if ![o.x, o.y, o.z, o.w].iter().all(|v| v.is_finite()) {
            return Err(Rejection::NotFinite("orientation"));
        }
        if msg.header.frame_id != self.base_frame {
            return Err(Rejection::WrongFrame {
                got: msg.header.frame_id.clone(),
                expected: self.base_frame.clone(),
            });
        }
        let q = nalgebra::Quaternion::new(o.w, o.x, o.y, o.z);
        let norm = q.norm();
        if (norm - 1.0).abs() > QUATERNION_NORM_TOL {
            return Err(Rejection::NotUnitQuaternion(norm));
        }
        let xyz = [p.x, p.y, p.z];
        let inside =
            (0..3).all(|i| xyz[i] >= self.workspace_min_m[i] && xyz[i] <= self.workspace_max_m[i]);
        if !inside {
            return Err(Rejection::OutsideWorkspace(
                xyz,
                self.workspace_min_m,
                self.workspace_max_m,
            ));
        }
        let r = UnitQuaternion::from_quaternion(q).to_rotation_matrix();
        Ok(Transform::new(r.into_inner(), Vector3::from(xyz)))
    }

    /// A `/probe/force_setpoint` message: `Some(N)` for contact, `None` for 0 (leave contact).
    pub fn force(&self, msg: &Float64) -> Result<Option<f64>, Rejection> {
        let f = msg.data;
        if !f.is_finite() {
            return Err(Rejection::NotFinite("force setpoint"));
        }
        if f == 0.0 {
            return Ok(None);
        }
        if (FORCE_SETPOINT_RANGE_N[0]..=FORCE_SETPOINT_RANGE_N[1]).contains(&f) {
            Ok(Some(f))
        } else {
            Err(Rejection::ForceOutOfRange(f))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The control thread's side

/// One control cycle as the adapter sees it. `Copy`, fixed size: sending it allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct StateSample {
    /// Plant time, s.
    pub time_s: f64,
    /// Number of joints in `q_rad`/`qd_rad_s`.
    pub dof: usize,
    /// Measured joint positions, rad.
    pub q_rad: [f64; MAX_DOF],
    /// Measured joint velocities, rad/s.
    pub qd_rad_s: [f64; MAX_DOF],
    /// Compensated contact wrench in the `ft_sensor` frame (N, N·m); `None` before the tare
    /// completes or when the reading is not finite.
    pub wrench_sensor: Option<(Vector3<f64>, Vector3<f64>)>,
    /// Measured tip pose.
    pub t_base_probe: Transform,
    /// Supervisor state after this cycle.
    pub safety: SafetyState,
}

/// A validated target for the control thread.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Setpoint {
    t_base_probe: Transform,
    /// Contact force, N; `None` = free space.
    force_n: Option<f64>,
}

/// The loop's plant, wrapped: reads and writes pass through unchanged; each cycle's measurements
/// and compensated wrench go to the adapter (without blocking or allocating).
#[derive(Debug)]
pub struct RosPlant<P> {
    inner: P,
    comp: FtCompensator,
    max_tare_offset_n: f64,
    r_tip_sensor: Matrix3<f64>,
    sample: StateSample,
    ft: FtSample,
    tx: SyncSender<StateSample>,
    dropped: Arc<AtomicU64>,
}

impl<P> RosPlant<P> {
    /// The wrapped plant.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Unwraps the plant.
    pub fn into_inner(self) -> P {
        self.inner
    }

    /// The compensator (its bias once tared).
    pub fn ft_compensator(&self) -> &FtCompensator {
        &self.comp
    }
}

impl<P: Plant> Plant for RosPlant<P> {
    fn read(&mut self, q: &mut [f64], qd: &mut [f64]) -> (f64, FtSample) {
        let (time_s, ft) = self.inner.read(q, qd);
        let n = q.len().min(MAX_DOF);
        self.sample.time_s = time_s;
        self.sample.dof = n;
        self.sample.q_rad[..n].copy_from_slice(&q[..n]);
        let m = qd.len().min(n);
        self.sample.qd_rad_s[..m].copy_from_slice(&qd[..m]);
        self.ft = ft;
        (time_s, ft)
    }

    fn write(&mut self, out: &ControlOutput) {
        self.inner.write(out);
        // The controller's own rule: tare on valid samples at the measured pose, refuse a tare
        // whose offset is implausible.
        let r_base_sensor = out.t_base_probe.rotation * self.r_tip_sensor;
        let valid = self.ft.is_finite() && !self.ft.saturated;
        if valid
            && !self.comp.is_tared()
            && self.comp.add_tare_sample(&self.ft, &r_base_sensor)
            && self.comp.bias().force_n.norm() > self.max_tare_offset_n
        {
            self.comp.restart_tare();
        }
        self.sample.wrench_sensor = (valid && self.comp.is_tared()).then(|| {
            let w = self.comp.compensate(&self.ft, &r_base_sensor);
            (w.force_n, w.torque_nm)
        });
        self.sample.t_base_probe = out.t_base_probe;
        self.sample.safety = out.safety;
        if self.tx.try_send(self.sample).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn advance(&mut self, dt: f64) {
        self.inner.advance(dt);
    }
}

/// Heartbeat of the adapter thread: nanoseconds since `origin` of its last loop.
#[derive(Debug)]
struct Heartbeat {
    origin: Instant,
    last_ns: AtomicU64,
}

impl Heartbeat {
    fn beat(&self) {
        let ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Release);
    }

    fn age_s(&self) -> f64 {
        let now = self.origin.elapsed().as_secs_f64();
        now - self.last_ns.load(Ordering::Acquire) as f64 * 1e-9
    }
}

/// The loop's target source: the newest validated ROS set-point, held and issued every cycle
/// while the adapter is alive; `None` (the controller holds its position) before the first one.
#[derive(Debug)]
pub struct RosTargets {
    rx: Receiver<Setpoint>,
    current: Option<Setpoint>,
    heartbeat: Arc<Heartbeat>,
}

impl RosTargets {
    /// True once a set-point has arrived.
    pub fn has_target(&self) -> bool {
        self.current.is_some()
    }
}

impl TargetSource for RosTargets {
    fn next_target(&mut self, time_s: f64, _last: &ControlOutput) -> Option<ProbeTarget> {
        loop {
            match self.rx.try_recv() {
                Ok(s) => self.current = Some(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The adapter is gone: issue nothing, the supervisor's watchdog acts.
                    self.current = None;
                    break;
                }
            }
        }
        if self.heartbeat.age_s() > HEARTBEAT_TIMEOUT_S {
            return None;
        }
        self.current.map(|s| match s.force_n {
            Some(f) => ProbeTarget::contact(time_s, s.t_base_probe, f),
            None => ProbeTarget::free(time_s, s.t_base_probe),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The adapter thread

/// What the adapter did, counted.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Ros2Report {
    /// `/probe/wrench` messages published.
    pub wrench_published: u64,
    /// `/joint_states` messages published.
    pub joint_states_published: u64,
    /// `/tf` messages published.
    pub tf_published: u64,
    /// `/probe/pose` messages published.
    pub pose_published: u64,
    /// Publications that failed (logged).
    pub publish_errors: u64,
    /// Valid `/probe/target_pose` messages, passed on.
    pub targets_accepted: u64,
    /// Rejected `/probe/target_pose` messages.
    pub targets_rejected: u64,
    /// Valid `/probe/force_setpoint` messages, passed on.
    pub forces_accepted: u64,
    /// Rejected `/probe/force_setpoint` messages.
    pub forces_rejected: u64,
    /// State samples the adapter fell behind on (dropped in the control thread).
    pub samples_dropped: u64,
    /// The last `/probe/target_pose` received (valid or not), exactly as it arrived.
    pub last_target_pose: Option<PoseStamped>,
    /// The last `/probe/force_setpoint` received, N.
    pub last_force_setpoint_n: Option<f64>,
}

/// The running adapter thread. [`Ros2Adapter::stop`] ends it and returns its report.
#[derive(Debug)]
pub struct Ros2Adapter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Ros2Report>,
    dropped: Arc<AtomicU64>,
    report: Arc<Mutex<Ros2Report>>,
}

impl Ros2Adapter {
    /// The counts so far.
    pub fn report(&self) -> Ros2Report {
        let mut r = self
            .report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        r
    }

    /// Stops the thread (it publishes what is queued first) and returns the final report.
    pub fn stop(self) -> Result<Ros2Report, Ros2Error> {
        self.stop.store(true, Ordering::Release);
        let mut r = self
            .handle
            .join()
            .map_err(|_| Ros2Error::from(Ros2ErrorKind::Thread("panicked".into())))?;
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        Ok(r)
    }
}

/// The robot as the adapter publishes it.
#[derive(Clone, Debug)]
struct RobotInfo {
    urdf_xml: String,
    joint_names: Vec<String>,
    tf: TfTree,
    sensor_frame: String,
    base_frame: String,
}

/// Wraps `plant` for the ROS 2 adapter of `controller` (built from `urdf_xml`) and starts the
/// adapter thread: returns the plant and the target source to give to
/// [`crate::spawn_realtime_with`], and the adapter handle. Fails (before anything runs) on a bad
/// configuration, a URDF whose base → `probe_tip` path is unusable, or when DDS cannot start.
pub fn attach<P: Plant>(
    plant: P,
    controller: &ProbeController,
    urdf_xml: &str,
    config: &Ros2Config,
) -> Result<(RosPlant<P>, RosTargets, Ros2Adapter), Ros2Error> {
    config.validate()?;
    let model = |m: String| -> Ros2Error { Ros2ErrorKind::Model(m).into() };
    let chain = controller.chain();
    if chain.dof() > MAX_DOF {
        return Err(model(format!(
            "{} joints; the adapter carries at most {MAX_DOF}",
            chain.dof()
        )));
    }
    let robot = urdf_rs::read_from_string(urdf_xml).map_err(|e| model(e.to_string()))?;
    let tf = TfTree::from_robot(
        &robot,
        chain.base_link(),
        chain.tip_link(),
        chain.joint_names(),
    )?;
    let sensor_tip = Chain::from_robot(&robot, Some(frames::FT_SENSOR), chain.tip_link())
        .map_err(|e| model(e.to_string()))?;
    let r_tip_sensor = sensor_tip.fk_unchecked(&[]).inverse().rotation;
    let info = RobotInfo {
        urdf_xml: urdf_xml.to_owned(),
        joint_names: chain.joint_names().to_vec(),
        tf,
        sensor_frame: frames::FT_SENSOR.to_owned(),
        base_frame: chain.base_link().to_owned(),
    };
    let validator = CommandValidator::for_controller(controller);

    let (sample_tx, sample_rx) = mpsc::sync_channel(SAMPLE_QUEUE);
    let (setpoint_tx, setpoint_rx) = mpsc::sync_channel(SETPOINT_QUEUE);
    let heartbeat = Arc::new(Heartbeat {
        origin: Instant::now(),
        last_ns: AtomicU64::new(0),
    });
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(Ros2Report::default()));
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Ros2Error>>(1);
    let worker = Worker {
        config: config.clone(),
        info,
        validator,
        samples: sample_rx,
        setpoints: setpoint_tx,
        heartbeat: heartbeat.clone(),
        stop: stop.clone(),
        report: report.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("telecho-ros2".into())
        .spawn(move || worker.run(ready_tx))
        .map_err(|e| Ros2Error::from(Ros2ErrorKind::Thread(e.to_string())))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(e);
        }
        Err(_) => {
            let _ = handle.join();
            return Err(Ros2ErrorKind::Thread("ended before starting".into()).into());
        }
    }
    let plant = RosPlant {
        inner: plant,
        comp: controller.ft_compensator().clone(),
        max_tare_offset_n: controller.config().max_tare_offset_n,
        r_tip_sensor,
        sample: StateSample {
            time_s: 0.0,
            dof: 0,
            q_rad: [0.0; MAX_DOF],
            qd_rad_s: [0.0; MAX_DOF],
            wrench_sensor: None,
            t_base_probe: Transform::IDENTITY,
            safety: SafetyState::Normal,
        },
        ft: FtSample::zero(0.0),
        tx: sample_tx,
        dropped: dropped.clone(),
    };
    let targets = RosTargets {
        rx: setpoint_rx,
        current: None,
        heartbeat,
    };
    Ok((
        plant,
        targets,
        Ros2Adapter {
            stop,
            handle,
            dropped,
            report,
        },
    ))
}

/// QoS of streams: best effort, volatile, the last `depth` samples.
pub(crate) fn stream_qos(depth: usize) -> QosProfile {
    QosProfile::subscription_default()
        .reliability_best_effort()
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth })
}

/// QoS of latched data: reliable, transient-local, the last sample.
pub(crate) fn latched_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::TransientLocal)
        .history(History::KeepLast { depth: 1 })
}

/// QoS of commands: reliable, volatile, the last 10.
pub(crate) fn command_qos() -> QosProfile {
    QosProfile::subscription_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth: 10 })
}

/// `pkg/msg/Name` → the ros2-client type name.
fn type_name<M: RosMessage>() -> MessageTypeName {
    let pkg = M::TYPE_NAME.split('/').next().unwrap_or_default();
    let name = M::TYPE_NAME.rsplit('/').next().unwrap_or_default();
    MessageTypeName::new(pkg, name)
}

fn topic_name(full: &str) -> Result<Name, Ros2Error> {
    Name::parse(full).map_err(|e| Ros2Error::dds(full, e))
}

pub(crate) fn publisher<M: RosMessage>(
    node: &mut Node,
    topic: &str,
    qos: QosProfile,
) -> Result<Publisher<M>, Ros2Error> {
    let t = node
        .create_topic(&topic_name(topic)?, type_name::<M>(), &qos)
        .map_err(|e| Ros2Error::dds(topic, e))?;
    node.create_publisher::<M>(&t, Some(qos))
        .map_err(|e| Ros2Error::dds(topic, e))
}

pub(crate) fn subscription<M: RosMessage + 'static>(
    node: &mut Node,
    topic: &str,
    qos: QosProfile,
) -> Result<Subscription<M>, Ros2Error> {
    let t = node
        .create_topic(&topic_name(topic)?, type_name::<M>(), &qos)
        .map_err(|e| Ros2Error::dds(topic, e))?;
    node.create_subscription::<M>(&t, Some(qos))
        .map_err(|e| Ros2Error::dds(topic, e))
}

struct Endpoints {
    joint_states: Publisher<JointState>,
    wrench: Publisher<WrenchStamped>,
    pose: Publisher<PoseStamped>,
    tf: Publisher<TFMessage>,
    tf_static: Publisher<TFMessage>,
    description: Publisher<StringMsg>,
    target_pose: Subscription<PoseStamped>,
    force_setpoint: Subscription<Float64>,
    // Declared last, so dropped last: the endpoints leave the DDS participant before it closes.
    _node: Node,
}

impl Endpoints {
    fn open(config: &Ros2Config) -> Result<Self, Ros2Error> {
        let context = Context::with_options(ContextOptions::new().domain_id(config.domain_id))
            .map_err(|e| Ros2Error::dds("DDS participant", e))?;
        let name = NodeName::new(&config.namespace, &config.node_name)
            .map_err(|e| Ros2Error::dds("node name", e))?;
        // No spinner runs (the adapter polls), so no parameter services and no rosout.
        let mut node = context
            .new_node(
                name,
                NodeOptions::new()
                    .enable_rosout(false)
                    .start_parameter_services(false),
            )
            .map_err(|e| Ros2Error::dds("node", e))?;
        Ok(Self {
            joint_states: publisher(&mut node, "/joint_states", stream_qos(10))?,
            wrench: publisher(&mut node, "/probe/wrench", stream_qos(100))?,
            pose: publisher(&mut node, "/probe/pose", stream_qos(10))?,
            tf: publisher(&mut node, "/tf", stream_qos(10))?,
            tf_static: publisher(&mut node, "/tf_static", latched_qos())?,
            description: publisher(&mut node, "/robot_description", latched_qos())?,
            target_pose: subscription(&mut node, "/probe/target_pose", command_qos())?,
            force_setpoint: subscription(&mut node, "/probe/force_setpoint", command_qos())?,
            _node: node,
        })
    }
}

/// Decimates a stream to a rate on the plant's clock.
#[derive(Clone, Copy, Debug)]
struct RateGate {
    period_s: f64,
    next_s: f64,
}

impl RateGate {
    fn new(rate_hz: f64) -> Self {
        Self {
            period_s: 1.0 / rate_hz,
            next_s: f64::NEG_INFINITY,
        }
    }

    /// True when a sample at `t` is due (a small tolerance keeps 1 kHz at 1 kHz).
    fn due(&mut self, t: f64) -> bool {
        if t + 1e-6 < self.next_s {
            return false;
        }
        self.next_s = if self.next_s + self.period_s > t {
            self.next_s + self.period_s
        } else {
            t + self.period_s
        };
        true
    }
}

struct Worker {
    config: Ros2Config,
    info: RobotInfo,
    validator: CommandValidator,
    samples: Receiver<StateSample>,
    setpoints: SyncSender<Setpoint>,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Ros2Report>>,
}

impl Worker {
    fn run(self, ready: SyncSender<Result<(), Ros2Error>>) -> Ros2Report {
        let ep = match Endpoints::open(&self.config) {
            Ok(ep) => ep,
            Err(e) => {
                let _ = ready.send(Err(e));
                return Ros2Report::default();
            }
        };
        self.heartbeat.beat();
        let _ = ready.send(Ok(()));
        let stamp_origin_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut state = WorkerState {
            report: Ros2Report::default(),
            wrench_gate: RateGate::new(self.config.wrench_rate_hz),
            state_gate: RateGate::new(self.config.state_rate_hz),
            stamp_origin_ns,
            latest: None,
            force_n: None,
            pose: None,
        };
        self.publish_latched(&ep, &mut state);
        tracing::info!(
            domain = self.config.domain_id,
            node = %self.config.node_name,
            wrench_hz = self.config.wrench_rate_hz,
            state_hz = self.config.state_rate_hz,
            "ROS 2 adapter running"
        );
        let mut last_report = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            self.heartbeat.beat();
            // Wait up to 1 ms for the next sample, then take everything queued.
            match self.samples.recv_timeout(Duration::from_millis(1)) {
                Ok(s) => {
                    self.publish_sample(&ep, &mut state, &s);
                    while let Ok(s) = self.samples.try_recv() {
                        self.publish_sample(&ep, &mut state, &s);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            self.take_commands(&ep, &mut state);
            if stopping || last_report.elapsed() > Duration::from_millis(100) {
                last_report = Instant::now();
                if let Ok(mut r) = self.report.lock() {
                    *r = state.report.clone();
                }
            }
            if stopping {
                break;
            }
        }
        tracing::info!(
            wrench = state.report.wrench_published,
            joint_states = state.report.joint_states_published,
            targets = state.report.targets_accepted,
            rejected = state.report.targets_rejected + state.report.forces_rejected,
            "ROS 2 adapter stopped"
        );
        state.report
    }

    fn stamp(&self, state: &WorkerState, time_s: f64) -> Header {
        let ns = if time_s.is_finite() && time_s >= 0.0 {
            state
                .stamp_origin_ns
                .saturating_add((time_s * 1e9).round() as u64)
        } else {
            state.stamp_origin_ns
        };
        Header::new(ns, self.info.base_frame.clone())
    }

    fn publish_latched(&self, ep: &Endpoints, state: &mut WorkerState) {
        let header = self.stamp(state, 0.0);
        let transforms = self
            .info
            .tf
            .static_transforms()
            .map(|(parent, child, t)| transform_stamped(&header, parent, child, &t))
            .collect();
        if let Err(e) = ep.tf_static.publish(TFMessage { transforms }) {
            state.report.publish_errors += 1;
            tracing::warn!("cannot publish /tf_static: {e:?}");
        }
        let description = StringMsg {
            data: self.info.urdf_xml.clone(),
        };
        if let Err(e) = ep.description.publish(description) {
            state.report.publish_errors += 1;
            tracing::warn!("cannot publish /robot_description: {e:?}");
        }
    }

    fn publish_sample(&self, ep: &Endpoints, state: &mut WorkerState, s: &StateSample) {
        state.latest = Some(s.t_base_probe);
        let mut failed = 0;
        if let Some((force, torque)) = s.wrench_sensor {
            if state.wrench_gate.due(s.time_s) {
                let mut header = self.stamp(state, s.time_s);
                header.frame_id.clone_from(&self.info.sensor_frame);
                let msg = WrenchStamped {
                    header,
                    wrench: MsgWrench {
                        force: vec3(&force),
                        torque: vec3(&torque),
                    },
                };
                match ep.wrench.publish(msg) {
                    Ok(()) => state.report.wrench_published += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::debug!("cannot publish /probe/wrench: {e:?}");
                    }
                }
            }
        }
        if state.state_gate.due(s.time_s) {
            let header = self.stamp(state, s.time_s);
            let n = s.dof.min(self.info.joint_names.len());
            let js = JointState {
                header: Header {
                    stamp: header.stamp,
                    frame_id: String::new(),
                },
                name: self.info.joint_names[..n].to_vec(),
                position: s.q_rad[..n].to_vec(),
                velocity: s.qd_rad_s[..n].to_vec(),
                effort: Vec::new(),
            };
            match ep.joint_states.publish(js) {
                Ok(()) => state.report.joint_states_published += 1,
                Err(e) => {
                    failed += 1;
                    tracing::debug!("cannot publish /joint_states: {e:?}");
                }
            }
            let transforms = self
                .info
                .tf
                .moving_transforms(&s.q_rad[..n])
                .map(|(parent, child, t)| transform_stamped(&header, parent, child, &t))
                .collect();
            match ep.tf.publish(TFMessage { transforms }) {
                Ok(()) => state.report.tf_published += 1,
                Err(e) => {
                    failed += 1;
                    tracing::debug!("cannot publish /tf: {e:?}");
                }
            }
            let pose = PoseStamped {
                header,
                pose: pose_msg(&s.t_base_probe),
            };
            match ep.pose.publish(pose) {
                Ok(()) => state.report.pose_published += 1,
                Err(e) => {
                    failed += 1;
                    tracing::debug!("cannot publish /probe/pose: {e:?}");
                }
            }
        }
        state.report.publish_errors += failed;
    }

    fn take_commands(&self, ep: &Endpoints, state: &mut WorkerState) {
        let mut changed = false;
        loop {
            match ep.target_pose.take() {
                Ok(Some((msg, _))) => {
                    let result = self.validator.pose(&msg);
                    state.report.last_target_pose = Some(msg);
                    match result {
                        Ok(t) => {
                            state.report.targets_accepted += 1;
                            state.pose = Some(t);
                            changed = true;
                        }
                        Err(e) => {
                            state.report.targets_rejected += 1;
                            tracing::warn!("rejected /probe/target_pose: {e}");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    state.report.targets_rejected += 1;
                    tracing::warn!("unreadable /probe/target_pose: {e:?}");
                }
            }
        }
        loop {
            match ep.force_setpoint.take() {
                Ok(Some((msg, _))) => {
                    state.report.last_force_setpoint_n = Some(msg.data);
                    match self.validator.force(&msg) {
                        Ok(f) => {
                            state.report.forces_accepted += 1;
                            state.force_n = f;
                            changed = true;
                        }
                        Err(e) => {
                            state.report.forces_rejected += 1;
                            tracing::warn!("rejected /probe/force_setpoint: {e}");
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    state.report.forces_rejected += 1;
                    tracing::warn!("unreadable /probe/force_setpoint: {e:?}");
                }
            }
        }
        if !changed {
            return;
        }
        // A force setpoint before any pose presses where the probe is.
        let Some(pose) = state.pose.or(state.latest) else {
            return;
        };
        let setpoint = Setpoint {
            t_base_probe: pose,
            force_n: state.force_n,
        };
        if self.setpoints.try_send(setpoint).is_err() {
            tracing::warn!("control thread is not taking set-points; dropped one");
        }
    }
}

struct WorkerState {
    report: Ros2Report,
    wrench_gate: RateGate,
    state_gate: RateGate,
    stamp_origin_ns: u64,
    /// The newest measured tip pose.
    latest: Option<Transform>,
    /// The held force setpoint (None: free space).
    force_n: Option<f64>,
    /// The held target pose.
    pose: Option<Transform>,
}

fn vec3(v: &Vector3<f64>) -> MsgVector3 {
    MsgVector3 {
        x: v.x,
        y: v.y,
        z: v.z,
    }
}

/// A transform as a `geometry_msgs/Pose`.
pub fn pose_msg(t: &Transform) -> Pose {
    let m = telecho_core::ros_msgs::Transform::from(t);
    Pose {
        position: Point {
            x: m.translation.x,
            y: m.translation.y,
            z: m.translation.z,
        },
        orientation: m.rotation,
    }
}

fn transform_stamped(
    header: &Header,
    parent: &str,
    child: &str,
    t: &Transform,
) -> TransformStamped {
    TransformStamped {
        header: Header {
            stamp: header.stamp,
            frame_id: parent.to_owned(),
        },
        child_frame_id: child.to_owned(),
        transform: t.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_gate_keeps_the_rate() {
        let mut g = RateGate::new(1000.0);
        let n = (0..1000).filter(|k| g.due(*k as f64 * 1e-3)).count();
        assert_eq!(n, 1000);
        let mut g = RateGate::new(100.0);
        let n = (0..1000).filter(|k| g.due(*k as f64 * 1e-3)).count();
        assert_eq!(n, 100);
        // After a gap it does not burst.
        let mut g = RateGate::new(100.0);
        assert!(g.due(0.0));
        assert!(g.due(5.0));
        assert!(!g.due(5.001));
        assert!(g.due(5.01));
    }
}
