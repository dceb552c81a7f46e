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
//! With [`Ros2Config::robot_state`] off (a Gazebo launch publishes them), `/joint_states`, `/tf`,
//! the arm's fixed joints on `/tf_static` and `/robot_description` are not published.
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
use ros2_client::NodeName;
use telecho_core::ros_msgs::{
    DiagnosticArray, Float64, Header, Image, JointState, Point, Pose, PoseStamped, StringMsg,
    TFMessage, TransformStamped, TriggerResponse, Vector3 as MsgVector3, Vector3Stamped,
    Wrench as MsgWrench, WrenchStamped,
};
use telecho_core::{frames, Transform};
use thiserror::Error as ThisError;

pub use telecho_core::ros2::{
    call_trigger, command_qos, frame_qos, latched_qos, open_node, publisher, service_qos,
    stream_qos, subscription, transform_stamped, trigger_client, trigger_server, Node, Publisher,
    ServiceMapping, Subscription, TriggerClient, TriggerServer, Wire, DEFAULT_SERVICE_MAPPING,
};
pub use telecho_core::ros_msgs::{
    FrameInfo, ProbeDescription, ProtocolInfo, ScanStatus, SweepDescription,
};

use crate::controller::{ControlOutput, ProbeController, ProbeTarget};
use crate::executor::{AbortCause, ScanExecutor, ScanProgress, ScanState};
use crate::ft_compensation::{FtCompensator, FtSample};
use crate::kinematics::Chain;
use crate::rt_loop::{Plant, TargetSource};
use crate::safety::{SafetyEvent, SafetyState};

/// Most joints a [`StateSample`] carries.
pub const MAX_DOF: usize = 16;
/// Samples buffered between the control thread and the adapter (2 s at 1 kHz).
pub(crate) const SAMPLE_QUEUE: usize = 2048;
/// Set-points buffered from the adapter to the control thread.
pub(crate) const SETPOINT_QUEUE: usize = 64;

/// Safety events queued for publication (a burst beyond this is counted and dropped).
pub(crate) const EVENT_QUEUE: usize = 256;

/// Ultrasound frames queued for publication.
const FRAME_QUEUE: usize = 8;
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

impl From<telecho_core::Error> for Ros2Error {
    fn from(e: telecho_core::Error) -> Self {
        Ros2ErrorKind::Dds(e.to_string()).into()
    }
}

impl Ros2Error {
    pub(crate) fn bag(what: impl Into<String>) -> Self {
        Ros2ErrorKind::Bag(what.into()).into()
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        Ros2ErrorKind::Config(what.into()).into()
    }

    pub(crate) fn thread(what: impl Into<String>) -> Self {
        Ros2ErrorKind::Thread(what.into()).into()
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
    /// How services map onto DDS topics: [`ServiceMapping::Cyclone`] (the default) is what
    /// `rmw_cyclonedds` uses; ROS 2 on Fast DDS or Connext uses `Enhanced`.
    pub service_mapping: ServiceMapping,
    /// Publish the arm's state as `joint_state_broadcaster` and `robot_state_publisher` would:
    /// `/joint_states`, `/tf`, the arm's fixed joints on `/tf_static` and `/robot_description`
    /// (default true). Off when those run beside the node, as in the Gazebo launch
    /// ([`crate::gazebo`]); `/probe/pose`, `/probe/wrench` and the rest are published either way.
    pub robot_state: bool,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Self {
            domain_id: 0,
            namespace: "/".into(),
            node_name: "telecho_control".into(),
            wrench_rate_hz: 1000.0,
            state_rate_hz: 100.0,
            service_mapping: DEFAULT_SERVICE_MAPPING,
            robot_state: true,
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
    /// An autonomous scan has the probe (`/scan/stop` it first).
    #[error("an autonomous scan is running; call /scan/stop first")]
    ScanRunning,
}

/// Frame of the ultrasound images (`probe_tip` → `us_image` on `/tf_static`).
pub const US_IMAGE_FRAME: &str = frames::US_IMAGE;

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
// The autonomous scan and the ultrasound stream

/// The autonomous scan behind the `/scan/start` and `/scan/stop` services.
pub struct ScanService {
    /// Builds a fresh executor for each `/scan/start` (called on the adapter thread, so the
    /// control thread only swaps it in).
    pub make: Box<dyn FnMut() -> Result<ScanExecutor, String> + Send>,
    /// The protocol, as published (latched, JSON) on `/scan/protocol`.
    pub protocol: ProtocolInfo,
}

impl std::fmt::Debug for ScanService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanService")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Geometry of the ultrasound images the node publishes on `/us/image`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UsGeometry {
    /// Columns (scanlines).
    pub width: u32,
    /// Rows (depth samples).
    pub height: u32,
    /// `[column spacing, row spacing]`, m.
    pub pixel_spacing_m: [f64; 2],
}

impl UsGeometry {
    /// The rigid part of the image-to-probe calibration (`docs/SWEEP_FORMAT.md`), published on
    /// `/tf_static` as `probe_tip` → `us_image`: the `us_image` origin is pixel (0, 0), its x
    /// runs along the columns (the probe's +x), its y along the rows (the beam, the probe's +z)
    /// and its z out of the plane (the probe's −y). A pixel `(row, col)` is at
    /// `(col·sx, row·sz, 0)` in `us_image`, with the spacings of `/us/pixel_spacing`.
    pub fn t_probe_image(&self) -> Transform {
        let half = 0.5 * f64::from(self.width.max(1) - 1) * self.pixel_spacing_m[0];
        Transform::new(
            Matrix3::new(1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 1.0, 0.0),
            Vector3::new(-half, 0.0, 0.0),
        )
    }

    fn validate(&self) -> Result<(), Ros2Error> {
        let [sx, sz] = self.pixel_spacing_m;
        if self.width == 0
            || self.height == 0
            || self.width > 8192
            || self.height > 8192
            || !(sx.is_finite() && sx > 0.0 && sz.is_finite() && sz > 0.0)
        {
            return Err(Ros2ErrorKind::Config(format!("ultrasound geometry {self:?}")).into());
        }
        Ok(())
    }
}

/// Where the autonomous scan is, as the control thread tells the image tap. `state` is `None`
/// when no scan has started since the node started (or a ROS set-point took over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanTag {
    /// Scan runs started so far (the current one's number, from 1).
    pub run: u32,
    /// Executor state.
    pub state: Option<ScanState>,
    /// Current sweep.
    pub sweep_index: usize,
}

const SCAN_STATES: [ScanState; 9] = [
    ScanState::Idle,
    ScanState::Transfer,
    ScanState::Approach,
    ScanState::Contact,
    ScanState::Sweep,
    ScanState::LiftOff,
    ScanState::Retract,
    ScanState::Done,
    ScanState::Aborted,
];

impl ScanTag {
    fn pack(&self) -> u64 {
        let state = self
            .state
            .and_then(|s| SCAN_STATES.iter().position(|x| *x == s))
            .map_or(0, |i| i as u64 + 1);
        state | ((self.sweep_index as u64 & 0xff_ffff) << 8) | (u64::from(self.run) << 32)
    }

    fn unpack(v: u64) -> Self {
        let code = (v & 0xff) as usize;
        Self {
            run: (v >> 32) as u32,
            state: code
                .checked_sub(1)
                .and_then(|i| SCAN_STATES.get(i).copied()),
            sweep_index: ((v >> 8) & 0xff_ffff) as usize,
        }
    }
}

/// Reads the control thread's [`ScanTag`] (lock-free).
#[derive(Clone, Debug)]
pub struct ScanTagReader(Arc<AtomicU64>);

impl ScanTagReader {
    /// The tag as of the last control cycle.
    pub fn get(&self) -> ScanTag {
        ScanTag::unpack(self.0.load(Ordering::Acquire))
    }
}

/// One ultrasound frame for the adapter to publish (`/us/image`, `/us/pixel_spacing`,
/// `/us/probe_pose`, `/us/frame_info`, all with the same stamp).
#[derive(Clone, Debug)]
pub struct UsFrame {
    /// Acquisition time on the plant's clock, s.
    pub time_s: f64,
    /// Row-major 8-bit pixels, `width × height` of the adapter's [`UsGeometry`].
    pub pixels: Vec<u8>,
    /// Measured probe pose at acquisition (FK of the measured joints).
    pub t_base_probe: Transform,
    /// The controller's force estimate along the probe axis, N.
    pub force_n: f64,
    /// The force reference, N.
    pub force_setpoint_n: f64,
    /// Where the scan was.
    pub scan: ScanTag,
}

/// A `/scan/start` or `/scan/stop` for the control thread.
pub(crate) enum ScanRequest {
    Start(Box<ScanExecutor>),
    Stop,
}

/// An executor change, from the control thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScanUpdate {
    run: u32,
    time_s: f64,
    progress: ScanProgress,
    abort: Option<AbortCause>,
}

/// Options of [`attach_with`] beyond the control node's own topics.
#[derive(Debug, Default)]
pub struct AttachOptions {
    /// Offer `/scan/start` and `/scan/stop` for this protocol, and publish `/scan/status` and
    /// `/scan/protocol`.
    pub scan: Option<ScanService>,
    /// Publish ultrasound frames of this geometry (sent through [`Ros2Adapter::frame_sender`]).
    pub us: Option<UsGeometry>,
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
pub(crate) struct Setpoint {
    pub(crate) t_base_probe: Transform,
    /// Contact force, N; `None` = free space.
    pub(crate) force_n: Option<f64>,
}

/// The loop's plant, wrapped: reads and writes pass through unchanged; each cycle's measurements
/// and compensated wrench go to the adapter (without blocking or allocating).
#[derive(Debug)]
pub struct RosPlant<P> {
    pub(crate) inner: P,
    pub(crate) comp: FtCompensator,
    pub(crate) max_tare_offset_n: f64,
    pub(crate) r_tip_sensor: Matrix3<f64>,
    pub(crate) sample: StateSample,
    pub(crate) ft: FtSample,
    pub(crate) tx: SyncSender<StateSample>,
    pub(crate) events: SyncSender<SafetyEvent>,
    pub(crate) dropped: Arc<AtomicU64>,
    pub(crate) events_dropped: Arc<AtomicU64>,
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
        for e in out.events.as_slice() {
            if self.events.try_send(*e).is_err() {
                self.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn advance(&mut self, dt: f64) {
        self.inner.advance(dt);
    }
}

/// Heartbeat of the adapter thread: nanoseconds since `origin` of its last loop.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    pub(crate) origin: Instant,
    pub(crate) last_ns: AtomicU64,
}

impl Heartbeat {
    pub(crate) fn beat(&self) {
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
///
/// With a [`ScanService`], `/scan/start` hands it a fresh [`ScanExecutor`] and the executor
/// drives the probe until it has finished (ROS set-points are refused meanwhile); the finished
/// executor keeps holding where it ended until a ROS set-point arrives. An autonomous scan goes
/// on if the adapter thread dies (it needs no network); `/scan/stop` ends it early through
/// [`ScanExecutor::stop`].
pub struct RosTargets {
    pub(crate) rx: Receiver<Setpoint>,
    pub(crate) current: Option<Setpoint>,
    pub(crate) heartbeat: Arc<Heartbeat>,
    pub(crate) scan_rx: Receiver<ScanRequest>,
    pub(crate) executor: Option<Box<ScanExecutor>>,
    pub(crate) run: u32,
    pub(crate) last_scan: Option<(ScanState, usize)>,
    pub(crate) updates: SyncSender<ScanUpdate>,
    pub(crate) tag: Arc<AtomicU64>,
}

impl std::fmt::Debug for RosTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosTargets")
            .field("current", &self.current)
            .field("run", &self.run)
            .field("scan", &self.last_scan)
            .finish_non_exhaustive()
    }
}

impl RosTargets {
    /// True once a set-point has arrived.
    pub fn has_target(&self) -> bool {
        self.current.is_some()
    }

    /// The scan tag the image tap reads.
    pub fn scan_tag(&self) -> ScanTagReader {
        ScanTagReader(self.tag.clone())
    }

    /// The executor of the last scan run, if any.
    pub fn executor(&self) -> Option<&ScanExecutor> {
        self.executor.as_deref()
    }

    fn scanning(&self) -> bool {
        self.executor.as_ref().is_some_and(|e| !e.is_finished())
    }

    fn take_scan_requests(&mut self, time_s: f64, last: &ControlOutput) {
        loop {
            match self.scan_rx.try_recv() {
                Ok(ScanRequest::Start(e)) => {
                    if self.scanning() {
                        continue; // The adapter refuses these; never replace a running scan.
                    }
                    self.run = self.run.wrapping_add(1);
                    self.executor = Some(e);
                    self.current = None;
                    self.last_scan = None;
                }
                Ok(ScanRequest::Stop) => {
                    if let Some(e) = self.executor.as_mut() {
                        e.stop(time_s, last);
                    }
                }
                Err(_) => break,
            }
        }
    }
}

impl TargetSource for RosTargets {
    fn next_target(&mut self, time_s: f64, last: &ControlOutput) -> Option<ProbeTarget> {
        self.take_scan_requests(time_s, last);
        loop {
            match self.rx.try_recv() {
                Ok(s) => {
                    if self.scanning() {
                        continue; // A running scan has the probe.
                    }
                    self.executor = None;
                    self.current = Some(s);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // The adapter is gone: issue nothing, the supervisor's watchdog acts.
                    self.current = None;
                    break;
                }
            }
        }
        if let Some(e) = self.executor.as_mut() {
            let target = e.update(time_s, last);
            let p = e.progress();
            if self.last_scan != Some((p.state, p.sweep_index)) {
                self.last_scan = Some((p.state, p.sweep_index));
                let _ = self.updates.try_send(ScanUpdate {
                    run: self.run,
                    time_s,
                    progress: p,
                    abort: e.abort_cause(),
                });
            }
            let tag = ScanTag {
                run: self.run,
                state: Some(p.state),
                sweep_index: p.sweep_index,
            };
            self.tag.store(tag.pack(), Ordering::Release);
            return target;
        }
        let tag = ScanTag {
            run: self.run,
            state: None,
            sweep_index: 0,
        };
        self.tag.store(tag.pack(), Ordering::Release);
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
    /// `/safety/events` messages published.
    pub events_published: u64,
    /// Safety events the adapter fell behind on (dropped in the control thread).
    pub events_dropped: u64,
    /// Ultrasound frames published (`/us/image` with its companions).
    pub images_published: u64,
    /// Ultrasound frames refused (wrong size) or dropped because the queue was full.
    pub images_dropped: u64,
    /// `/scan/start` requests that started a scan.
    pub scans_started: u64,
    /// `/scan/stop` requests passed to a running scan.
    pub scans_stopped: u64,
    /// Service requests refused (with the reason in the response).
    pub service_refusals: u64,
    /// `/scan/status` messages published.
    pub scan_status_published: u64,
    /// The last `/scan/status` published.
    pub last_scan_status: Option<ScanStatus>,
}

/// The running adapter thread. [`Ros2Adapter::stop`] ends it and returns its report.
#[derive(Debug)]
pub struct Ros2Adapter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Ros2Report>,
    dropped: Arc<AtomicU64>,
    events_dropped: Arc<AtomicU64>,
    frames_dropped: Arc<AtomicU64>,
    report: Arc<Mutex<Ros2Report>>,
    frames: Option<SyncSender<UsFrame>>,
}

impl Ros2Adapter {
    /// Where ultrasound frames go for publication (`None` without [`AttachOptions::us`]). Use
    /// [`FrameSender::send`] (a clone per thread): a full queue drops the frame.
    pub fn frame_sender(&self) -> Option<FrameSender> {
        self.frames.clone().map(|tx| FrameSender {
            tx,
            dropped: self.frames_dropped.clone(),
        })
    }

    /// The counts so far.
    pub fn report(&self) -> Ros2Report {
        let mut r = self
            .report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        r.events_dropped = self.events_dropped.load(Ordering::Relaxed);
        r.images_dropped += self.frames_dropped.load(Ordering::Relaxed);
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
        r.events_dropped = self.events_dropped.load(Ordering::Relaxed);
        r.images_dropped += self.frames_dropped.load(Ordering::Relaxed);
        Ok(r)
    }
}

/// Hands ultrasound frames to the adapter without blocking (a full queue drops the frame and
/// counts it in [`Ros2Report::images_dropped`]).
#[derive(Clone, Debug)]
pub struct FrameSender {
    tx: SyncSender<UsFrame>,
    dropped: Arc<AtomicU64>,
}

impl FrameSender {
    /// Queues `frame`; false when it was dropped (queue full or the adapter gone).
    pub fn send(&self, frame: UsFrame) -> bool {
        let ok = self.tx.try_send(frame).is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
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
    attach_with(
        plant,
        controller,
        urdf_xml,
        config,
        AttachOptions::default(),
    )
}

/// [`attach`] with the scan services and the ultrasound stream of `options`.
pub fn attach_with<P: Plant>(
    plant: P,
    controller: &ProbeController,
    urdf_xml: &str,
    config: &Ros2Config,
    options: AttachOptions,
) -> Result<(RosPlant<P>, RosTargets, Ros2Adapter), Ros2Error> {
    config.validate()?;
    if let Some(us) = &options.us {
        us.validate()?;
    }
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
    let (event_tx, event_rx) = mpsc::sync_channel(EVENT_QUEUE);
    let (scan_tx, scan_rx) = mpsc::sync_channel(SETPOINT_QUEUE);
    let (update_tx, update_rx) = mpsc::sync_channel(SETPOINT_QUEUE);
    let (frame_tx, frame_rx) = mpsc::sync_channel(FRAME_QUEUE);
    let events_dropped = Arc::new(AtomicU64::new(0));
    let frames_dropped = Arc::new(AtomicU64::new(0));
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
        events: event_rx,
        scan_requests: scan_tx,
        scan_updates: update_rx,
        frames: frame_rx,
        scan: options.scan,
        us: options.us,
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
        events: event_tx,
        dropped: dropped.clone(),
        events_dropped: events_dropped.clone(),
    };
    let targets = RosTargets {
        rx: setpoint_rx,
        current: None,
        heartbeat,
        scan_rx,
        executor: None,
        run: 0,
        last_scan: None,
        updates: update_tx,
        tag: Arc::new(AtomicU64::new(0)),
    };
    Ok((
        plant,
        targets,
        Ros2Adapter {
            stop,
            handle,
            dropped,
            events_dropped,
            frames_dropped,
            report,
            frames: options.us.map(|_| frame_tx),
        },
    ))
}

struct Endpoints {
    /// `/joint_states`, `/tf` and `/robot_description` ([`Ros2Config::robot_state`]).
    robot: Option<RobotEndpoints>,
    wrench: Publisher<WrenchStamped>,
    pose: Publisher<PoseStamped>,
    tf_static: Publisher<TFMessage>,
    target_pose: Subscription<PoseStamped>,
    force_setpoint: Subscription<Float64>,
    safety_events: Publisher<DiagnosticArray>,
    scan: Option<ScanEndpoints>,
    us: Option<UsEndpoints>,
    // Declared last, so dropped last: the endpoints leave the DDS participant before it closes.
    _node: Node,
}

struct RobotEndpoints {
    joint_states: Publisher<JointState>,
    tf: Publisher<TFMessage>,
    description: Publisher<StringMsg>,
}

struct ScanEndpoints {
    status: Publisher<StringMsg>,
    protocol: Publisher<StringMsg>,
    start: TriggerServer,
    stop: TriggerServer,
}

struct UsEndpoints {
    image: Publisher<Image>,
    spacing: Publisher<Vector3Stamped>,
    pose: Publisher<PoseStamped>,
    info: Publisher<StringMsg>,
}

impl Endpoints {
    fn open(config: &Ros2Config, scan: bool, us: bool) -> Result<Self, Ros2Error> {
        let mut node = open_node(config.domain_id, &config.namespace, &config.node_name)?;
        Ok(Self {
            robot: if config.robot_state {
                Some(RobotEndpoints {
                    joint_states: publisher(&mut node, "/joint_states", stream_qos(10))?,
                    tf: publisher(&mut node, "/tf", stream_qos(10))?,
                    description: publisher(&mut node, "/robot_description", latched_qos())?,
                })
            } else {
                None
            },
            wrench: publisher(&mut node, "/probe/wrench", stream_qos(100))?,
            pose: publisher(&mut node, "/probe/pose", stream_qos(10))?,
            tf_static: publisher(&mut node, "/tf_static", latched_qos())?,
            target_pose: subscription(&mut node, "/probe/target_pose", command_qos())?,
            force_setpoint: subscription(&mut node, "/probe/force_setpoint", command_qos())?,
            safety_events: publisher(&mut node, "/safety/events", frame_qos(100))?,
            scan: if scan {
                Some(ScanEndpoints {
                    status: publisher(&mut node, "/scan/status", latched_qos())?,
                    protocol: publisher(&mut node, "/scan/protocol", latched_qos())?,
                    start: trigger_server(&mut node, "/scan/start", config.service_mapping)?,
                    stop: trigger_server(&mut node, "/scan/stop", config.service_mapping)?,
                })
            } else {
                None
            },
            us: if us {
                Some(UsEndpoints {
                    image: publisher(&mut node, "/us/image", frame_qos(30))?,
                    spacing: publisher(&mut node, "/us/pixel_spacing", frame_qos(30))?,
                    pose: publisher(&mut node, "/us/probe_pose", frame_qos(30))?,
                    info: publisher(&mut node, "/us/frame_info", frame_qos(30))?,
                })
            } else {
                None
            },
            _node: node,
        })
    }
}

/// Decimates a stream to a rate on the plant's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateGate {
    period_s: f64,
    next_s: f64,
}

impl RateGate {
    pub(crate) fn new(rate_hz: f64) -> Self {
        Self {
            period_s: 1.0 / rate_hz,
            next_s: f64::NEG_INFINITY,
        }
    }

    /// True when a sample at `t` is due (a small tolerance keeps 1 kHz at 1 kHz).
    pub(crate) fn due(&mut self, t: f64) -> bool {
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
    events: Receiver<SafetyEvent>,
    scan_requests: SyncSender<ScanRequest>,
    scan_updates: Receiver<ScanUpdate>,
    frames: Receiver<UsFrame>,
    scan: Option<ScanService>,
    us: Option<UsGeometry>,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Ros2Report>>,
}

impl Worker {
    fn run(mut self, ready: SyncSender<Result<(), Ros2Error>>) -> Ros2Report {
        let ep = match Endpoints::open(&self.config, self.scan.is_some(), self.us.is_some()) {
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
            latest_safety: SafetyState::Normal,
            latest_time_s: 0.0,
            force_n: None,
            pose: None,
            scan_status: None,
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
            self.publish_events(&ep, &mut state);
            self.take_scan(&ep, &mut state);
            self.publish_frames(&ep, &mut state);
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
        let mut transforms: Vec<TransformStamped> = Vec::new();
        if ep.robot.is_some() {
            transforms.extend(
                self.info
                    .tf
                    .static_transforms()
                    .map(|(parent, child, t)| transform_stamped(&header, parent, child, &t)),
            );
        }
        if let Some(us) = &self.us {
            transforms.push(transform_stamped(
                &header,
                frames::PROBE_TIP,
                US_IMAGE_FRAME,
                &us.t_probe_image(),
            ));
        }
        if !transforms.is_empty() {
            if let Err(e) = ep.tf_static.publish(TFMessage { transforms }) {
                state.report.publish_errors += 1;
                tracing::warn!("cannot publish /tf_static: {e:?}");
            }
        }
        if let Some(robot) = &ep.robot {
            let description = StringMsg {
                data: self.info.urdf_xml.clone(),
            };
            if let Err(e) = robot.description.publish(description) {
                state.report.publish_errors += 1;
                tracing::warn!("cannot publish /robot_description: {e:?}");
            }
        }
        if let (Some(sep), Some(scan)) = (&ep.scan, &self.scan) {
            let msg = StringMsg {
                data: serde_json::to_string(&scan.protocol).unwrap_or_default(),
            };
            if let Err(e) = sep.protocol.publish(msg) {
                state.report.publish_errors += 1;
                tracing::warn!("cannot publish /scan/protocol: {e:?}");
            }
            let status = ScanStatus {
                run: 0,
                state: "none".into(),
                protocol: scan.protocol.name.clone(),
                sweep_index: 0,
                sweep_name: None,
                sweep_count: scan.protocol.sweeps.len(),
                abort_cause: None,
                time_s: 0.0,
            };
            self.publish_status(sep, state, status);
        }
    }

    fn publish_status(&self, sep: &ScanEndpoints, state: &mut WorkerState, status: ScanStatus) {
        let data = match serde_json::to_string(&status) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("cannot encode /scan/status: {e}");
                return;
            }
        };
        match sep.status.publish(StringMsg { data }) {
            Ok(()) => state.report.scan_status_published += 1,
            Err(e) => {
                state.report.publish_errors += 1;
                tracing::warn!("cannot publish /scan/status: {e:?}");
            }
        }
        state.report.last_scan_status = Some(status.clone());
        state.scan_status = Some(status);
    }

    fn publish_events(&self, ep: &Endpoints, state: &mut WorkerState) {
        while let Ok(e) = self.events.try_recv() {
            let header = self.stamp(state, e.time_s);
            match ep.safety_events.publish(e.to_diagnostic(header)) {
                Ok(()) => state.report.events_published += 1,
                Err(err) => {
                    state.report.publish_errors += 1;
                    tracing::warn!("cannot publish /safety/events: {err:?}");
                }
            }
        }
    }

    /// Answers `/scan/start` and `/scan/stop` and publishes the executor's changes.
    fn take_scan(&mut self, ep: &Endpoints, state: &mut WorkerState) {
        let Some(sep) = &ep.scan else {
            return;
        };
        while let Ok(u) = self.scan_updates.try_recv() {
            let Some(scan) = &self.scan else { break };
            let status = ScanStatus {
                run: u.run,
                state: u.progress.state.name().to_owned(),
                protocol: scan.protocol.name.clone(),
                sweep_index: u.progress.sweep_index,
                sweep_name: scan
                    .protocol
                    .sweeps
                    .get(u.progress.sweep_index)
                    .map(|s| s.name.clone()),
                sweep_count: u.progress.sweep_count,
                abort_cause: u.abort.as_ref().map(ToString::to_string),
                time_s: u.time_s,
            };
            tracing::info!(run = u.run, state = %status.state, sweep = u.progress.sweep_index, "scan");
            self.publish_status(sep, state, status);
        }
        loop {
            let (id, _) = match sep.start.receive_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("unreadable /scan/start request: {e:?}");
                    break;
                }
            };
            let response = self.start_scan(state);
            if !response.success {
                state.report.service_refusals += 1;
            }
            tracing::info!(success = response.success, message = %response.message, "/scan/start");
            if let Err(e) = sep.start.send_response(id, Wire(response)) {
                tracing::warn!("cannot answer /scan/start: {e:?}");
            }
        }
        loop {
            let (id, _) = match sep.stop.receive_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("unreadable /scan/stop request: {e:?}");
                    break;
                }
            };
            let running = state
                .scan_status
                .as_ref()
                .is_some_and(ScanStatus::is_running);
            let response = if !running {
                state.report.service_refusals += 1;
                TriggerResponse {
                    success: false,
                    message: "no scan is running".into(),
                }
            } else if self.scan_requests.try_send(ScanRequest::Stop).is_err() {
                state.report.service_refusals += 1;
                TriggerResponse {
                    success: false,
                    message: "the control thread is not taking requests".into(),
                }
            } else {
                state.report.scans_stopped += 1;
                TriggerResponse {
                    success: true,
                    message: "stopping: the probe lifts off to the retract height".into(),
                }
            };
            tracing::info!(success = response.success, message = %response.message, "/scan/stop");
            if let Err(e) = sep.stop.send_response(id, Wire(response)) {
                tracing::warn!("cannot answer /scan/stop: {e:?}");
            }
        }
    }

    fn start_scan(&mut self, state: &mut WorkerState) -> TriggerResponse {
        let refuse = |message: String| TriggerResponse {
            success: false,
            message,
        };
        let Some(scan) = self.scan.as_mut() else {
            return refuse("this node has no scan protocol".into());
        };
        if let Some(s) = state.scan_status.as_ref().filter(|s| s.is_running()) {
            return refuse(format!(
                "scan run {} is under way (state {}); stop it first",
                s.run, s.state
            ));
        }
        if state.latest.is_none() {
            return refuse("the control loop has not reported yet".into());
        }
        if state.latest_safety != SafetyState::Normal {
            return refuse(format!(
                "the safety supervisor is in {:?}; clear it first",
                state.latest_safety
            ));
        }
        let executor = match (scan.make)() {
            Ok(e) => e,
            Err(e) => {
                return refuse(format!(
                    "cannot plan protocol `{}`: {e}",
                    scan.protocol.name
                ))
            }
        };
        if self
            .scan_requests
            .try_send(ScanRequest::Start(Box::new(executor)))
            .is_err()
        {
            return refuse("the control thread is not taking requests".into());
        }
        state.report.scans_started += 1;
        let run = state.scan_status.as_ref().map_or(0, |s| s.run) + 1;
        // Until the control thread reports, the run counts as started (a second start is refused).
        let pending = ScanStatus {
            run,
            state: "idle".into(),
            protocol: scan.protocol.name.clone(),
            sweep_index: 0,
            sweep_name: scan.protocol.sweeps.first().map(|s| s.name.clone()),
            sweep_count: scan.protocol.sweeps.len(),
            abort_cause: None,
            time_s: state.latest_time_s,
        };
        let message = format!(
            "started protocol `{}` (run {run}, {} sweeps)",
            scan.protocol.name,
            scan.protocol.sweeps.len()
        );
        state.scan_status = Some(pending);
        TriggerResponse {
            success: true,
            message,
        }
    }

    fn publish_frames(&self, ep: &Endpoints, state: &mut WorkerState) {
        let (Some(uep), Some(geo)) = (&ep.us, &self.us) else {
            return;
        };
        while let Ok(f) = self.frames.try_recv() {
            let (w, h) = (geo.width as usize, geo.height as usize);
            if f.pixels.len() != w * h || !f.t_base_probe.is_finite() {
                state.report.images_dropped += 1;
                tracing::warn!(
                    len = f.pixels.len(),
                    "ultrasound frame of the wrong size or with a non-finite pose; dropped"
                );
                continue;
            }
            let mut header = self.stamp(state, f.time_s);
            let stamp_ns = header.stamp.as_nanos();
            header.frame_id = US_IMAGE_FRAME.to_owned();
            let info = FrameInfo {
                stamp_ns,
                time_s: f.time_s,
                force_n: f.force_n,
                force_setpoint_n: f.force_setpoint_n,
                run: f.scan.run,
                state: f.scan.state.map(|s| s.name().to_owned()),
                sweep_index: f.scan.sweep_index,
            };
            let base_header = Header {
                stamp: header.stamp,
                frame_id: self.info.base_frame.clone(),
            };
            let mut failed = 0;
            let spacing = Vector3Stamped {
                header: header.clone(),
                vector: MsgVector3 {
                    x: geo.pixel_spacing_m[0],
                    y: geo.pixel_spacing_m[1],
                    z: 0.0,
                },
            };
            // Companions first, so a subscriber holding the image has its pose and context.
            failed += u64::from(uep.spacing.publish(spacing).is_err());
            failed += u64::from(
                uep.pose
                    .publish(PoseStamped {
                        header: base_header,
                        pose: pose_msg(&f.t_base_probe),
                    })
                    .is_err(),
            );
            if let Ok(data) = serde_json::to_string(&info) {
                failed += u64::from(uep.info.publish(StringMsg { data }).is_err());
            }
            let image = Image {
                header,
                height: geo.height,
                width: geo.width,
                encoding: "mono8".into(),
                is_bigendian: 0,
                step: geo.width,
                data: f.pixels,
            };
            match uep.image.publish(image) {
                Ok(()) => state.report.images_published += 1,
                Err(e) => {
                    failed += 1;
                    tracing::debug!("cannot publish /us/image: {e:?}");
                }
            }
            state.report.publish_errors += failed;
        }
    }

    fn publish_sample(&self, ep: &Endpoints, state: &mut WorkerState, s: &StateSample) {
        state.latest = Some(s.t_base_probe);
        state.latest_safety = s.safety;
        state.latest_time_s = s.time_s;
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
            if let Some(robot) = &ep.robot {
                failed += self.publish_robot_state(robot, state, &header, s);
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

    /// `/joint_states` and `/tf` of one sample; returns the number of failed publications.
    fn publish_robot_state(
        &self,
        robot: &RobotEndpoints,
        state: &mut WorkerState,
        header: &Header,
        s: &StateSample,
    ) -> u64 {
        let mut failed = 0;
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
        match robot.joint_states.publish(js) {
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
            .map(|(parent, child, t)| transform_stamped(header, parent, child, &t))
            .collect();
        match robot.tf.publish(TFMessage { transforms }) {
            Ok(()) => state.report.tf_published += 1,
            Err(e) => {
                failed += 1;
                tracing::debug!("cannot publish /tf: {e:?}");
            }
        }
        failed
    }

    fn take_commands(&self, ep: &Endpoints, state: &mut WorkerState) {
        let mut changed = false;
        loop {
            match ep.target_pose.take() {
                Ok(Some((msg, _))) => {
                    let mut result = self.validator.pose(&msg);
                    if result.is_ok()
                        && state
                            .scan_status
                            .as_ref()
                            .is_some_and(ScanStatus::is_running)
                    {
                        result = Err(Rejection::ScanRunning);
                    }
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
    /// The supervisor's state in the newest sample.
    latest_safety: SafetyState,
    /// Plant time of the newest sample, s.
    latest_time_s: f64,
    /// The last scan status published (or the pending start).
    scan_status: Option<ScanStatus>,
    /// The held force setpoint (None: free space).
    force_n: Option<f64>,
    /// The held target pose.
    pose: Option<Transform>,
}

pub(crate) fn vec3(v: &Vector3<f64>) -> MsgVector3 {
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
