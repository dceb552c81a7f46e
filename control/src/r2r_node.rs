//! The control node's ROS 2 adapter over `r2r` (`r2r` feature), for sites with a sourced ROS 2
//! (Humble, Jazzy): the node joins the site's own RMW (whatever `RMW_IMPLEMENTATION` selects)
//! instead of the pure-Rust DDS stack of [`crate::ros2`].
//!
//! **Not compiled in this project's CI.** r2r generates its message types from the sourced ROS 2
//! at build time and cannot build without one; this module is built only with
//! `--features telecho-control/r2r` on a machine where a ROS 2 setup has been sourced.
//!
//! # Which r2r, and what was checked
//!
//! Written against **r2r 0.9.7** (pinned `=0.9.7` in `control/Cargo.toml`), by reading its
//! published source (the crate as downloaded by cargo, and the `sequenceplanner/r2r` repository
//! at its 0.9.5 tag, whose files below are identical to 0.9.7's apart from distro `cfg`s) and its
//! examples `publishers.rs` and `subscriber.rs`. Checked there, item by item:
//!
//! - `r2r::Context::create() -> r2r::Result<Context>` (`src/context.rs`; one context per
//!   process, kept in a `OnceLock`);
//! - `r2r::Node::create(ctx: Context, name: &str, namespace: &str) -> Result<Node>`
//!   (`src/nodes.rs`; it `unwrap`s `CString::new` on both names, hence [`R2rConfig`]'s own name
//!   check before the call);
//! - `Node::create_publisher::<T>(&mut self, topic: &str, qos: QosProfile) -> Result<Publisher<T>>`
//!   and `Publisher::<T>::publish(&self, msg: &T) -> Result<()>` (`src/publishers.rs`; the
//!   publisher holds a weak handle the node owns);
//! - `Node::subscribe::<T>(&mut self, topic: &str, qos: QosProfile)
//!   -> Result<impl Stream<Item = T> + Unpin>`, a bounded (10) `futures` channel that
//!   `spin_once` fills with `try_send` (a full channel drops the message), so the adapter drains
//!   it every cycle;
//! - `Node::spin_once(&mut self, timeout: std::time::Duration)` (an `rcl_wait` with that timeout;
//!   zero does not block);
//! - `r2r::QosProfile::default()` (KeepLast 10, Reliable, Volatile) and its `const` builders
//!   `keep_last(usize)`, `reliable()`, `best_effort()`, `volatile()`, `transient_local()`
//!   (`src/qos.rs`);
//! - `r2r::Error`: a `thiserror` enum (`Display`, `Debug`);
//! - the generated types and their fields, from the crate's doc-only `bindings/` (the same
//!   generator): `builtin_interfaces::msg::Time { sec: i32, nanosec: u32 }`,
//!   `std_msgs::msg::{Header { stamp, frame_id }, String { data }, Float64 { data }}`,
//!   `geometry_msgs::msg::{Point, Quaternion, Pose, PoseStamped, Vector3, Wrench, WrenchStamped,
//!   Transform, TransformStamped}`, `sensor_msgs::msg::JointState { header, name, position,
//!   velocity, effort }`, `tf2_msgs::msg::TFMessage { transforms }`, all plain structs with public
//!   fields (`Vec` for sequences, `std::string::String` for strings).
//!
//! This module and its unit tests were type-checked, clippy-checked and run here against a
//! throwaway stand-in crate with exactly those signatures and fields (not part of the project),
//! which shows the module is consistent with the API as read, not that r2r is as read.
//! Unverified until a ROS 2 site builds it: that it compiles against the real r2r, the code
//! r2r generates from that site's ROS 2, and its behaviour on a real RMW.
//!
//! # Topics
//!
//! The core of [`crate::ros2`], with the same names, types, frames and QoS:
//!
//! | topic | type | direction | QoS |
//! |---|---|---|---|
//! | `/joint_states` | `sensor_msgs/msg/JointState` | out, [`R2rConfig::state_rate_hz`] | BestEffort, Volatile, KeepLast 10 |
//! | `/probe/wrench` | `geometry_msgs/msg/WrenchStamped` (`ft_sensor`) | out, [`R2rConfig::wrench_rate_hz`] | BestEffort, Volatile, KeepLast 100 |
//! | `/probe/pose` | `geometry_msgs/msg/PoseStamped` (base frame, measured tip) | out, state rate | BestEffort, Volatile, KeepLast 10 |
//! | `/tf` | `tf2_msgs/msg/TFMessage` (movable joints) | out, state rate | BestEffort, Volatile, KeepLast 10 |
//! | `/tf_static` | `tf2_msgs/msg/TFMessage` (fixed joints) | out, once | Reliable, TransientLocal, KeepLast 1 |
//! | `/robot_description` | `std_msgs/msg/String` (URDF XML) | out, once | Reliable, TransientLocal, KeepLast 1 |
//! | `/probe/target_pose` | `geometry_msgs/msg/PoseStamped` (base frame) | in | Reliable, Volatile, KeepLast 10 |
//! | `/probe/force_setpoint` | `std_msgs/msg/Float64` (N; 0 = leave contact) | in | Reliable, Volatile, KeepLast 10 |
//!
//! With [`R2rConfig::robot_state`] off, `/joint_states`, `/tf`, `/tf_static` and
//! `/robot_description` are not published. Not offered here (the [`crate::ros2`] adapter has
//! them): the scan services, the ultrasound stream and `/safety/events` (safety events are
//! logged instead). The domain is the RMW's own: `ROS_DOMAIN_ID` as the sourced ROS 2 reads it.
//!
//! # Threads and commands
//!
//! Exactly the design of [`crate::ros2`], with its loop-side types: [`attach`] wraps the plant in
//! a [`RosPlant`] and returns a [`RosTargets`] source for [`crate::spawn_realtime_with`]; they
//! reach the adapter thread (`telecho-r2r`, which owns the r2r node and alone calls
//! `spin_once`) only through bounded channels that the control thread `try_`s. Incoming
//! commands are converted to `telecho_core::ros_msgs` by the pure functions of this module and
//! validated by the same [`CommandValidator`] (finite, `frame_id` the base link, unit quaternion,
//! inside the workspace box; force 1–20 N or 0); a rejection is logged, counted in the
//! [`Ros2Report`] and changes nothing. The adapter beats the same heartbeat, so if it stops the
//! held target stops being issued and the supervisor's watchdog holds, then retracts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, Stream, StreamExt};
use r2r::{builtin_interfaces, geometry_msgs, sensor_msgs, std_msgs, tf2_msgs, QosProfile};
use telecho_core::frames;
use telecho_core::ros_msgs as core_msgs;
use telecho_core::Transform;
use thiserror::Error as ThisError;

use crate::controller::ProbeController;
use crate::ft_compensation::FtSample;
use crate::kinematics::Chain;
use crate::ros2::{
    pose_msg, transform_stamped, vec3, Heartbeat, RateGate, Setpoint, EVENT_QUEUE, SAMPLE_QUEUE,
    SETPOINT_QUEUE,
};
pub use crate::ros2::{
    CommandValidator, Rejection, Ros2Report, RosPlant, RosTargets, StateSample, TfTree, MAX_DOF,
};
use crate::rt_loop::Plant;
use crate::safety::{SafetyEvent, SafetyState};

/// The r2r version this module was written against (see the module docs).
pub const R2R_VERSION: &str = "0.9.7";

/// Error of the r2r adapter. Opaque: the message says what failed.
#[derive(Debug, ThisError)]
#[error(transparent)]
pub struct R2rError(#[from] R2rErrorKind);

#[derive(Debug, ThisError)]
enum R2rErrorKind {
    #[error("ROS 2 (r2r): {0}")]
    Ros(String),
    #[error("robot model: {0}")]
    Model(String),
    #[error("r2r adapter configuration: {0}")]
    Config(String),
    #[error("r2r adapter thread: {0}")]
    Thread(String),
}

fn ros_error(what: &str, e: &r2r::Error) -> R2rError {
    R2rErrorKind::Ros(format!("{what}: {e}")).into()
}

/// Settings of the r2r adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct R2rConfig {
    /// Node namespace: `/` or `/a/b` (ROS 2 name rules).
    pub namespace: String,
    /// Node name (ROS 2 name rules: letters, digits, `_`; not starting with a digit).
    pub node_name: String,
    /// Rate of `/probe/wrench`, Hz (at most the loop rate; default 1000: every sample).
    pub wrench_rate_hz: f64,
    /// Rate of `/joint_states`, `/tf` and `/probe/pose`, Hz (default 100).
    pub state_rate_hz: f64,
    /// Publish `/joint_states`, `/tf`, `/tf_static` and `/robot_description` (default true); off
    /// when `joint_state_broadcaster` and `robot_state_publisher` run beside the node.
    pub robot_state: bool,
}

impl Default for R2rConfig {
    fn default() -> Self {
        Self {
            namespace: "/".into(),
            node_name: "telecho_control".into(),
            wrench_rate_hz: 1000.0,
            state_rate_hz: 100.0,
            robot_state: true,
        }
    }
}

impl R2rConfig {
    fn validate(&self) -> Result<(), R2rError> {
        let bad = |m: String| -> Result<(), R2rError> { Err(R2rErrorKind::Config(m).into()) };
        for (what, v) in [
            ("wrench_rate_hz", self.wrench_rate_hz),
            ("state_rate_hz", self.state_rate_hz),
        ] {
            if !(v.is_finite() && (0.1..=10_000.0).contains(&v)) {
                return bad(format!("{what} = {v} is outside [0.1, 10000] Hz"));
            }
        }
        if !is_ros_name_token(&self.node_name) {
            return bad(format!(
                "node name `{}` is not a ROS 2 name (letters, digits, `_`; no leading digit)",
                self.node_name
            ));
        }
        if !is_ros_namespace(&self.namespace) {
            return bad(format!(
                "namespace `{}` is not `/` or `/name[/name…]`",
                self.namespace
            ));
        }
        Ok(())
    }
}

/// One token of a ROS 2 name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_ros_name_token(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `/`, or an absolute namespace of name tokens (`/a/b`, no trailing `/`).
fn is_ros_namespace(s: &str) -> bool {
    s == "/"
        || s.strip_prefix('/')
            .is_some_and(|rest| rest.split('/').all(is_ros_name_token))
}

// ---------------------------------------------------------------------------------------------
// QoS, set explicitly (the table in the module docs)

/// Streams (`/joint_states`, `/probe/wrench`, `/probe/pose`, `/tf`): BestEffort, Volatile,
/// KeepLast `depth`.
pub const fn stream_qos(depth: usize) -> QosProfile {
    QosProfile::default()
        .keep_last(depth)
        .best_effort()
        .volatile()
}

/// Static data (`/tf_static`, `/robot_description`): Reliable, TransientLocal, KeepLast 1, so a
/// subscriber that joins later still gets it.
pub const fn latched_qos() -> QosProfile {
    QosProfile::default()
        .keep_last(1)
        .reliable()
        .transient_local()
}

/// Commands (`/probe/target_pose`, `/probe/force_setpoint`): Reliable, Volatile, KeepLast 10.
pub const fn command_qos() -> QosProfile {
    QosProfile::default().keep_last(10).reliable().volatile()
}

// ---------------------------------------------------------------------------------------------
// Conversions between telecho-core's message types and r2r's generated ones (pure)

/// `builtin_interfaces/Time`.
pub fn time_to_r2r(t: &core_msgs::Time) -> builtin_interfaces::msg::Time {
    builtin_interfaces::msg::Time {
        sec: t.sec,
        nanosec: t.nanosec,
    }
}

/// `builtin_interfaces/Time`.
pub fn time_from_r2r(t: &builtin_interfaces::msg::Time) -> core_msgs::Time {
    core_msgs::Time {
        sec: t.sec,
        nanosec: t.nanosec,
    }
}

/// `std_msgs/Header`.
pub fn header_to_r2r(h: &core_msgs::Header) -> std_msgs::msg::Header {
    std_msgs::msg::Header {
        stamp: time_to_r2r(&h.stamp),
        frame_id: h.frame_id.clone(),
    }
}

/// `std_msgs/Header`.
pub fn header_from_r2r(h: &std_msgs::msg::Header) -> core_msgs::Header {
    core_msgs::Header {
        stamp: time_from_r2r(&h.stamp),
        frame_id: h.frame_id.clone(),
    }
}

/// `geometry_msgs/Vector3`.
pub fn vector3_to_r2r(v: &core_msgs::Vector3) -> geometry_msgs::msg::Vector3 {
    geometry_msgs::msg::Vector3 {
        x: v.x,
        y: v.y,
        z: v.z,
    }
}

/// `geometry_msgs/Quaternion`.
pub fn quaternion_to_r2r(q: &core_msgs::Quaternion) -> geometry_msgs::msg::Quaternion {
    geometry_msgs::msg::Quaternion {
        x: q.x,
        y: q.y,
        z: q.z,
        w: q.w,
    }
}

/// `geometry_msgs/Quaternion`.
pub fn quaternion_from_r2r(q: &geometry_msgs::msg::Quaternion) -> core_msgs::Quaternion {
    core_msgs::Quaternion {
        x: q.x,
        y: q.y,
        z: q.z,
        w: q.w,
    }
}

/// `geometry_msgs/Pose`.
pub fn pose_to_r2r(p: &core_msgs::Pose) -> geometry_msgs::msg::Pose {
    geometry_msgs::msg::Pose {
        position: geometry_msgs::msg::Point {
            x: p.position.x,
            y: p.position.y,
            z: p.position.z,
        },
        orientation: quaternion_to_r2r(&p.orientation),
    }
}

/// `geometry_msgs/Pose`.
pub fn pose_from_r2r(p: &geometry_msgs::msg::Pose) -> core_msgs::Pose {
    core_msgs::Pose {
        position: core_msgs::Point {
            x: p.position.x,
            y: p.position.y,
            z: p.position.z,
        },
        orientation: quaternion_from_r2r(&p.orientation),
    }
}

/// `geometry_msgs/PoseStamped`.
pub fn pose_stamped_to_r2r(m: &core_msgs::PoseStamped) -> geometry_msgs::msg::PoseStamped {
    geometry_msgs::msg::PoseStamped {
        header: header_to_r2r(&m.header),
        pose: pose_to_r2r(&m.pose),
    }
}

/// `geometry_msgs/PoseStamped`, as [`CommandValidator::pose`] takes it. Values are copied as
/// they are (NaN included): validation is the validator's.
pub fn pose_stamped_from_r2r(m: &geometry_msgs::msg::PoseStamped) -> core_msgs::PoseStamped {
    core_msgs::PoseStamped {
        header: header_from_r2r(&m.header),
        pose: pose_from_r2r(&m.pose),
    }
}

/// `std_msgs/Float64`, as [`CommandValidator::force`] takes it.
pub fn float64_from_r2r(m: &std_msgs::msg::Float64) -> core_msgs::Float64 {
    core_msgs::Float64 { data: m.data }
}

/// `std_msgs/String`.
pub fn string_to_r2r(m: &core_msgs::StringMsg) -> std_msgs::msg::String {
    std_msgs::msg::String {
        data: m.data.clone(),
    }
}

/// `geometry_msgs/WrenchStamped`.
pub fn wrench_stamped_to_r2r(m: &core_msgs::WrenchStamped) -> geometry_msgs::msg::WrenchStamped {
    geometry_msgs::msg::WrenchStamped {
        header: header_to_r2r(&m.header),
        wrench: geometry_msgs::msg::Wrench {
            force: vector3_to_r2r(&m.wrench.force),
            torque: vector3_to_r2r(&m.wrench.torque),
        },
    }
}

/// `sensor_msgs/JointState`.
pub fn joint_state_to_r2r(m: &core_msgs::JointState) -> sensor_msgs::msg::JointState {
    sensor_msgs::msg::JointState {
        header: header_to_r2r(&m.header),
        name: m.name.clone(),
        position: m.position.clone(),
        velocity: m.velocity.clone(),
        effort: m.effort.clone(),
    }
}

/// `geometry_msgs/TransformStamped`.
pub fn transform_stamped_to_r2r(
    m: &core_msgs::TransformStamped,
) -> geometry_msgs::msg::TransformStamped {
    geometry_msgs::msg::TransformStamped {
        header: header_to_r2r(&m.header),
        child_frame_id: m.child_frame_id.clone(),
        transform: geometry_msgs::msg::Transform {
            translation: vector3_to_r2r(&m.transform.translation),
            rotation: quaternion_to_r2r(&m.transform.rotation),
        },
    }
}

/// `tf2_msgs/TFMessage`.
pub fn tf_message_to_r2r(m: &core_msgs::TFMessage) -> tf2_msgs::msg::TFMessage {
    tf2_msgs::msg::TFMessage {
        transforms: m.transforms.iter().map(transform_stamped_to_r2r).collect(),
    }
}

/// Stamp of a sample at plant time `time_s`: `origin_ns` (epoch time at which the adapter
/// started) plus the plant time; a non-finite or negative time stamps the origin.
fn stamp_ns(origin_ns: u64, time_s: f64) -> u64 {
    if time_s.is_finite() && time_s >= 0.0 {
        origin_ns.saturating_add((time_s * 1e9).round() as u64)
    } else {
        origin_ns
    }
}

// ---------------------------------------------------------------------------------------------
// Attaching to the control loop

/// The running r2r adapter thread. [`R2rAdapter::stop`] ends it and returns its report.
#[derive(Debug)]
pub struct R2rAdapter {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Ros2Report>,
    dropped: Arc<AtomicU64>,
    events_dropped: Arc<AtomicU64>,
    report: Arc<Mutex<Ros2Report>>,
}

impl R2rAdapter {
    /// The counts so far (the scan and ultrasound counts stay 0: this adapter has neither).
    pub fn report(&self) -> Ros2Report {
        let mut r = self
            .report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        r.events_dropped = self.events_dropped.load(Ordering::Relaxed);
        r
    }

    /// Stops the thread (it publishes what is queued first) and returns the final report.
    pub fn stop(self) -> Result<Ros2Report, R2rError> {
        self.stop.store(true, Ordering::Release);
        let mut r = self
            .handle
            .join()
            .map_err(|_| R2rError::from(R2rErrorKind::Thread("panicked".into())))?;
        r.samples_dropped = self.dropped.load(Ordering::Relaxed);
        r.events_dropped = self.events_dropped.load(Ordering::Relaxed);
        Ok(r)
    }
}

/// The robot as the adapter publishes it.
#[derive(Clone, Debug)]
struct RobotInfo {
    urdf_xml: String,
    joint_names: Vec<String>,
    tf: TfTree,
    base_frame: String,
}

/// Wraps `plant` for the r2r adapter of `controller` (built from `urdf_xml`) and starts the
/// adapter thread: returns the plant and the target source to give to
/// [`crate::spawn_realtime_with`], and the adapter handle. Fails (before anything runs) on a bad
/// configuration, a URDF whose base → tip path is unusable, or when the ROS 2 context or node
/// cannot be created (e.g. no ROS 2 sourced at run time).
pub fn attach<P: Plant>(
    plant: P,
    controller: &ProbeController,
    urdf_xml: &str,
    config: &R2rConfig,
) -> Result<(RosPlant<P>, RosTargets, R2rAdapter), R2rError> {
    config.validate()?;
    let model = |m: String| -> R2rError { R2rErrorKind::Model(m).into() };
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
    )
    .map_err(|e| model(e.to_string()))?;
    let sensor_tip = Chain::from_robot(&robot, Some(frames::FT_SENSOR), chain.tip_link())
        .map_err(|e| model(e.to_string()))?;
    let r_tip_sensor = sensor_tip.fk_unchecked(&[]).inverse().rotation;
    let info = RobotInfo {
        urdf_xml: urdf_xml.to_owned(),
        joint_names: chain.joint_names().to_vec(),
        tf,
        base_frame: chain.base_link().to_owned(),
    };

    let (sample_tx, sample_rx) = mpsc::sync_channel(SAMPLE_QUEUE);
    let (setpoint_tx, setpoint_rx) = mpsc::sync_channel(SETPOINT_QUEUE);
    let (event_tx, event_rx) = mpsc::sync_channel(EVENT_QUEUE);
    // No scan service here: the request channel's sender is dropped at once (the control
    // thread reads it as empty) and its updates go nowhere.
    let (_, scan_rx) = mpsc::sync_channel(1);
    let (update_tx, _) = mpsc::sync_channel(1);
    let heartbeat = Arc::new(Heartbeat {
        origin: Instant::now(),
        last_ns: AtomicU64::new(0),
    });
    let dropped = Arc::new(AtomicU64::new(0));
    let events_dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(Ros2Report::default()));
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), R2rError>>(1);
    let worker = Worker {
        config: config.clone(),
        info,
        validator: CommandValidator::for_controller(controller),
        samples: sample_rx,
        setpoints: setpoint_tx,
        events: event_rx,
        heartbeat: heartbeat.clone(),
        stop: stop.clone(),
        report: report.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("telecho-r2r".into())
        .spawn(move || worker.run(ready_tx))
        .map_err(|e| R2rError::from(R2rErrorKind::Thread(e.to_string())))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(e);
        }
        Err(_) => {
            let _ = handle.join();
            return Err(R2rErrorKind::Thread("ended before starting".into()).into());
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
        R2rAdapter {
            stop,
            handle,
            dropped,
            events_dropped,
            report,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// The adapter thread

/// A subscription's message stream, as `Node::subscribe` returns it (boxed to be named).
type Sub<T> = Box<dyn Stream<Item = T> + Unpin>;

/// `/joint_states`, `/tf`, `/tf_static` and `/robot_description` ([`R2rConfig::robot_state`]).
struct RobotEndpoints {
    joint_states: r2r::Publisher<sensor_msgs::msg::JointState>,
    tf: r2r::Publisher<tf2_msgs::msg::TFMessage>,
    tf_static: r2r::Publisher<tf2_msgs::msg::TFMessage>,
    description: r2r::Publisher<std_msgs::msg::String>,
}

struct Endpoints {
    robot: Option<RobotEndpoints>,
    wrench: r2r::Publisher<geometry_msgs::msg::WrenchStamped>,
    pose: r2r::Publisher<geometry_msgs::msg::PoseStamped>,
    target_pose: Sub<geometry_msgs::msg::PoseStamped>,
    force_setpoint: Sub<std_msgs::msg::Float64>,
    // Declared last, so dropped last: publishers and streams go before the node that owns them.
    node: r2r::Node,
}

impl Endpoints {
    fn open(config: &R2rConfig) -> Result<Self, R2rError> {
        let ctx = r2r::Context::create().map_err(|e| ros_error("ROS 2 context", &e))?;
        let mut node = r2r::Node::create(ctx, &config.node_name, &config.namespace)
            .map_err(|e| ros_error("node", &e))?;
        let robot = if config.robot_state {
            Some(RobotEndpoints {
                joint_states: node
                    .create_publisher("/joint_states", stream_qos(10))
                    .map_err(|e| ros_error("/joint_states", &e))?,
                tf: node
                    .create_publisher("/tf", stream_qos(10))
                    .map_err(|e| ros_error("/tf", &e))?,
                tf_static: node
                    .create_publisher("/tf_static", latched_qos())
                    .map_err(|e| ros_error("/tf_static", &e))?,
                description: node
                    .create_publisher("/robot_description", latched_qos())
                    .map_err(|e| ros_error("/robot_description", &e))?,
            })
        } else {
            None
        };
        let wrench = node
            .create_publisher("/probe/wrench", stream_qos(100))
            .map_err(|e| ros_error("/probe/wrench", &e))?;
        let pose = node
            .create_publisher("/probe/pose", stream_qos(10))
            .map_err(|e| ros_error("/probe/pose", &e))?;
        let target_pose = node
            .subscribe::<geometry_msgs::msg::PoseStamped>("/probe/target_pose", command_qos())
            .map_err(|e| ros_error("/probe/target_pose", &e))?;
        let force_setpoint = node
            .subscribe::<std_msgs::msg::Float64>("/probe/force_setpoint", command_qos())
            .map_err(|e| ros_error("/probe/force_setpoint", &e))?;
        Ok(Self {
            robot,
            wrench,
            pose,
            target_pose: Box::new(target_pose),
            force_setpoint: Box::new(force_setpoint),
            node,
        })
    }
}

/// The next message a stream holds, without waiting: `None` when it holds none now (or has
/// ended, which happens only when the node is gone).
fn next_now<T>(sub: &mut Sub<T>) -> Option<T> {
    sub.next().now_or_never().flatten()
}

struct Worker {
    config: R2rConfig,
    info: RobotInfo,
    validator: CommandValidator,
    samples: Receiver<StateSample>,
    setpoints: SyncSender<Setpoint>,
    events: Receiver<SafetyEvent>,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Ros2Report>>,
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

impl Worker {
    fn run(self, ready: SyncSender<Result<(), R2rError>>) -> Ros2Report {
        let mut ep = match Endpoints::open(&self.config) {
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
            node = %self.config.node_name,
            namespace = %self.config.namespace,
            r2r = R2R_VERSION,
            wrench_hz = self.config.wrench_rate_hz,
            state_hz = self.config.state_rate_hz,
            "ROS 2 adapter (r2r) running"
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
            // Moves what the RMW received into the subscription streams; does not block.
            ep.node.spin_once(Duration::ZERO);
            self.take_commands(&mut ep, &mut state);
            self.log_events();
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
            "ROS 2 adapter (r2r) stopped"
        );
        state.report
    }

    fn header(&self, state: &WorkerState, time_s: f64) -> core_msgs::Header {
        core_msgs::Header::new(
            stamp_ns(state.stamp_origin_ns, time_s),
            self.info.base_frame.clone(),
        )
    }

    fn publish_latched(&self, ep: &Endpoints, state: &mut WorkerState) {
        let Some(robot) = &ep.robot else {
            return;
        };
        let header = self.header(state, 0.0);
        let transforms: Vec<core_msgs::TransformStamped> = self
            .info
            .tf
            .static_transforms()
            .map(|(parent, child, t)| transform_stamped(&header, parent, child, &t))
            .collect();
        if !transforms.is_empty() {
            let msg = tf_message_to_r2r(&core_msgs::TFMessage { transforms });
            if let Err(e) = robot.tf_static.publish(&msg) {
                state.report.publish_errors += 1;
                tracing::warn!("cannot publish /tf_static: {e}");
            }
        }
        let description = string_to_r2r(&core_msgs::StringMsg {
            data: self.info.urdf_xml.clone(),
        });
        if let Err(e) = robot.description.publish(&description) {
            state.report.publish_errors += 1;
            tracing::warn!("cannot publish /robot_description: {e}");
        }
    }

    fn publish_sample(&self, ep: &Endpoints, state: &mut WorkerState, s: &StateSample) {
        state.latest = Some(s.t_base_probe);
        let mut failed = 0;
        if let Some((force, torque)) = s.wrench_sensor {
            if state.wrench_gate.due(s.time_s) {
                let mut header = self.header(state, s.time_s);
                header.frame_id = frames::FT_SENSOR.to_owned();
                let msg = wrench_stamped_to_r2r(&core_msgs::WrenchStamped {
                    header,
                    wrench: core_msgs::Wrench {
                        force: vec3(&force),
                        torque: vec3(&torque),
                    },
                });
                match ep.wrench.publish(&msg) {
                    Ok(()) => state.report.wrench_published += 1,
                    Err(e) => {
                        failed += 1;
                        tracing::debug!("cannot publish /probe/wrench: {e}");
                    }
                }
            }
        }
        if state.state_gate.due(s.time_s) {
            let header = self.header(state, s.time_s);
            if let Some(robot) = &ep.robot {
                failed += self.publish_robot_state(robot, state, &header, s);
            }
            let msg = pose_stamped_to_r2r(&core_msgs::PoseStamped {
                header,
                pose: pose_msg(&s.t_base_probe),
            });
            match ep.pose.publish(&msg) {
                Ok(()) => state.report.pose_published += 1,
                Err(e) => {
                    failed += 1;
                    tracing::debug!("cannot publish /probe/pose: {e}");
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
        header: &core_msgs::Header,
        s: &StateSample,
    ) -> u64 {
        let mut failed = 0;
        let n = s.dof.min(self.info.joint_names.len());
        let js = joint_state_to_r2r(&core_msgs::JointState {
            header: core_msgs::Header {
                stamp: header.stamp,
                frame_id: String::new(),
            },
            name: self.info.joint_names[..n].to_vec(),
            position: s.q_rad[..n].to_vec(),
            velocity: s.qd_rad_s[..n].to_vec(),
            effort: Vec::new(),
        });
        match robot.joint_states.publish(&js) {
            Ok(()) => state.report.joint_states_published += 1,
            Err(e) => {
                failed += 1;
                tracing::debug!("cannot publish /joint_states: {e}");
            }
        }
        let transforms = self
            .info
            .tf
            .moving_transforms(&s.q_rad[..n])
            .map(|(parent, child, t)| transform_stamped(header, parent, child, &t))
            .collect();
        let tf = tf_message_to_r2r(&core_msgs::TFMessage { transforms });
        match robot.tf.publish(&tf) {
            Ok(()) => state.report.tf_published += 1,
            Err(e) => {
                failed += 1;
                tracing::debug!("cannot publish /tf: {e}");
            }
        }
        failed
    }

    /// Validates what arrived on `/probe/target_pose` and `/probe/force_setpoint` with the
    /// [`crate::ros2`] adapter's [`CommandValidator`] and hands the held set-point to the
    /// control thread when it changed.
    fn take_commands(&self, ep: &mut Endpoints, state: &mut WorkerState) {
        let mut changed = false;
        while let Some(msg) = next_now(&mut ep.target_pose) {
            let msg = pose_stamped_from_r2r(&msg);
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
        while let Some(msg) = next_now(&mut ep.force_setpoint) {
            let msg = float64_from_r2r(&msg);
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

    /// Safety events are not published by this adapter; they are logged.
    fn log_events(&self) {
        while let Ok(e) = self.events.try_recv() {
            tracing::info!(time_s = e.time_s, "safety event: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use r2r::qos::{DurabilityPolicy, HistoryPolicy, ReliabilityPolicy};

    #[test]
    fn names_follow_ros_rules() {
        assert!(is_ros_name_token("telecho_control"));
        assert!(is_ros_name_token("_a1"));
        assert!(!is_ros_name_token("1a"));
        assert!(!is_ros_name_token("a-b"));
        assert!(!is_ros_name_token("a\0b"));
        assert!(!is_ros_name_token(""));
        assert!(is_ros_namespace("/"));
        assert!(is_ros_namespace("/site/arm1"));
        assert!(!is_ros_namespace("site"));
        assert!(!is_ros_namespace("/site/"));
        assert!(!is_ros_namespace("//"));
        assert!(R2rConfig::default().validate().is_ok());
        let bad = R2rConfig {
            node_name: "tele cho".into(),
            ..R2rConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn qos_is_explicit() {
        let l = latched_qos();
        assert_eq!(l.reliability, ReliabilityPolicy::Reliable);
        assert_eq!(l.durability, DurabilityPolicy::TransientLocal);
        assert_eq!((l.history, l.depth), (HistoryPolicy::KeepLast, 1));
        let s = stream_qos(100);
        assert_eq!(s.reliability, ReliabilityPolicy::BestEffort);
        assert_eq!(s.durability, DurabilityPolicy::Volatile);
        assert_eq!(s.depth, 100);
        let c = command_qos();
        assert_eq!(c.reliability, ReliabilityPolicy::Reliable);
        assert_eq!(c.durability, DurabilityPolicy::Volatile);
    }

    #[test]
    fn pose_round_trips_and_nan_reaches_the_validator() {
        let m = core_msgs::PoseStamped {
            header: core_msgs::Header::new(1_700_000_000_123_456_789, "base_link"),
            pose: pose_msg(&Transform::IDENTITY),
        };
        let r = pose_stamped_to_r2r(&m);
        assert_eq!(r.header.stamp.sec, 1_700_000_000);
        assert_eq!(r.header.stamp.nanosec, 123_456_789);
        assert_eq!(r.header.frame_id, "base_link");
        assert_eq!(pose_stamped_from_r2r(&r), m);
        let mut nan = r.clone();
        nan.pose.position.x = f64::NAN;
        let v = CommandValidator {
            base_frame: "base_link".into(),
            workspace_min_m: [-1.0; 3],
            workspace_max_m: [1.0; 3],
        };
        assert_eq!(
            v.pose(&pose_stamped_from_r2r(&nan)),
            Err(Rejection::NotFinite("position"))
        );
        let f = std_msgs::msg::Float64 { data: 25.0 };
        assert_eq!(
            v.force(&float64_from_r2r(&f)),
            Err(Rejection::ForceOutOfRange(25.0))
        );
    }

    #[test]
    fn stamps_follow_the_plant_clock() {
        assert_eq!(stamp_ns(1_000, 0.5), 500_001_000);
        assert_eq!(stamp_ns(1_000, f64::NAN), 1_000);
        assert_eq!(stamp_ns(1_000, -1.0), 1_000);
    }
}
