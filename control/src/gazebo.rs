//! The arm in Gazebo as the control loop's plant (`ros2` feature): [`GazeboPlant`] reads and
//! writes the `ros2_control` interfaces of the world that `telecho sim export-gazebo` writes.
//!
//! | topic | type | direction | from / to |
//! |---|---|---|---|
//! | `/joint_states` | `sensor_msgs/msg/JointState` | in | `joint_state_broadcaster` |
//! | [`FT_TOPIC`] `/telecho/ft_sensor` | `geometry_msgs/msg/Wrench` | in | the gz `force_torque` sensor, through `ros_gz_bridge` |
//! | [`COMMAND_TOPIC`] `/telecho_position_controller/commands` | `std_msgs/msg/Float64MultiArray` | out | `position_controllers/JointGroupPositionController` |
//!
//! Joint positions arrive by name and are put into the chain's (URDF) order, which is also the
//! order of the controller's `joints` list in the exported `controllers.yaml`; commands go out in
//! that order. Velocities come from the message, or by finite differences of its stamps when
//! the message has none.
//!
//! **The wrench.** The exported sensor sits on the fixed joint whose parent is `ft_sensor`
//! (`<frame>child</frame>`, `<measure_direction>child_to_parent</measure_direction>`): gz reports
//! the load the tool side applies to the sensor, in the child link's frame, torque about the
//! child's origin. [`GazeboPlant`] turns that into the controller's convention (the `ft_sensor`
//! frame, torque about its origin) with the joint's origin from the URDF:
//! `f_s = R·f_c`, `τ_s = R·τ_c + p × f_s`.
//!
//! **Time and staleness.** The plant's clock is the monotonic time since [`GazeboPlant::connect`];
//! an F/T sample is stamped when it arrives, so the supervisor's staleness check sees a sensor
//! that stops ([`crate::SafetyConfig::ft_stale_s`]; over DDS it wants more than the 5 ms default,
//! see [`GAZEBO_FT_STALE_S`]). Joint states older than [`GazeboConfig::joint_stale_s`] read as NaN,
//! which the supervisor takes as invalid input: fault stop, hold. A malformed `/joint_states`
//! (a joint missing, lengths that disagree, a non-finite position) is refused, counted and
//! leaves the last good one, which then goes stale. Non-finite commands are never published.
//!
//! **Stepping with the simulator.** Each control cycle waits for a joint state newer than the one
//! it used, until that one goes stale, so the loop runs at the simulator's pace, as `ros2_control`
//! controllers run inside gz's update. On the wall clock alone, while gz lags the controller's
//! reference runs ahead of the paused world and, when gz resumes, the arm is commanded a step
//! (30 ms at 0.1 m/s is 3 mm; measured as a speed fault in `gazebo_plant`). A silent simulator
//! reads stale at once and the loop runs on the wall clock, in fault stop.
//!
//! **Threads.** As in [`crate::ros2`], the 1 kHz thread never touches DDS: it takes the newest
//! measurements from a mutex the DDS thread fills (and signals), and hands commands over a
//! bounded channel with `try_send`; the DDS thread publishes the newest command and takes the
//! measurements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nalgebra::{Matrix3, Vector3};
use serde::Serialize;
use telecho_core::ros2::{command_qos, open_node, publisher, stream_qos, subscription};
use telecho_core::ros_msgs::{Float64MultiArray, JointState, MultiArrayLayout, Wrench};
use telecho_core::{frames, Transform};

use crate::controller::ControlOutput;
use crate::ft_compensation::FtSample;
use crate::kinematics::Chain;
use crate::ros2::{Ros2Error, MAX_DOF};
use crate::rt_loop::Plant;

/// `/joint_states`, as `joint_state_broadcaster` publishes it.
pub const JOINT_STATES_TOPIC: &str = "/joint_states";
/// The forward position controller's command topic in the exported `controllers.yaml`.
pub const COMMAND_TOPIC: &str = "/telecho_position_controller/commands";
/// The F/T sensor, bridged from gz by the exported launch file.
pub const FT_TOPIC: &str = "/telecho/ft_sensor";
/// F/T staleness limit for the simulated sensor reaching the controller over DDS, s: 50 ms, ten
/// times the wired default and within the supervisor's 0.1 s bound. A simulated world pauses
/// while the simulator is late, so a late sample there is not a world that moved unseen; on a
/// loaded two-core machine DDS delivery stalls of 20–30 ms were measured (test
/// `gazebo_plant`), which the 5 ms default would turn into fault stops.
pub const GAZEBO_FT_STALE_S: f64 = 0.05;

/// Commands buffered from the control thread to the DDS thread.
const COMMAND_QUEUE: usize = 16;

/// Settings of [`GazeboPlant`].
#[derive(Clone, Debug, PartialEq)]
pub struct GazeboConfig {
    /// DDS domain of the Gazebo launch (`ROS_DOMAIN_ID`).
    pub domain_id: u16,
    /// Joint states older than this read as NaN (fault stop), s (default 0.05).
    pub joint_stale_s: f64,
    /// How long [`GazeboPlant::connect`] waits for the first joint state and wrench.
    pub connect_timeout: Duration,
}

impl Default for GazeboConfig {
    fn default() -> Self {
        Self {
            domain_id: 0,
            joint_stale_s: 0.05,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What the plant exchanged with Gazebo.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GazeboReport {
    /// `/joint_states` messages taken.
    pub joint_states_received: u64,
    /// `/joint_states` messages refused (missing joint, length mismatch, non-finite).
    pub joint_states_refused: u64,
    /// Why the last one was refused.
    pub last_refusal: Option<String>,
    /// F/T messages taken.
    pub wrenches_received: u64,
    /// Commands published on [`COMMAND_TOPIC`].
    pub commands_published: u64,
    /// Commands not published: non-finite, or the queue to the DDS thread was full.
    pub commands_dropped: u64,
    /// Control cycles that read joint states older than [`GazeboConfig::joint_stale_s`].
    pub stale_reads: u64,
}

/// The newest measurements, shared between the DDS thread and the control thread.
#[derive(Clone, Copy, Debug)]
struct Measured {
    dof: usize,
    q_rad: [f64; MAX_DOF],
    qd_rad_s: [f64; MAX_DOF],
    /// Arrival of the joint state on the plant's clock, s (−∞: none yet).
    joints_at_s: f64,
    /// Joint states accepted so far.
    seq: u64,
    force_n: Vector3<f64>,
    torque_nm: Vector3<f64>,
    /// Arrival of the wrench, s (−∞: none yet).
    ft_at_s: f64,
}

impl Measured {
    fn new(dof: usize) -> Self {
        Self {
            dof,
            q_rad: [0.0; MAX_DOF],
            qd_rad_s: [0.0; MAX_DOF],
            joints_at_s: f64::NEG_INFINITY,
            seq: 0,
            force_n: Vector3::zeros(),
            torque_nm: Vector3::zeros(),
            ft_at_s: f64::NEG_INFINITY,
        }
    }
}

/// The newest measurements and the signal that a new joint state arrived.
#[derive(Debug)]
struct Shared {
    measured: Mutex<Measured>,
    fresh: Condvar,
}

/// One command for the DDS thread.
#[derive(Clone, Copy, Debug)]
struct Command {
    dof: usize,
    q_rad: [f64; MAX_DOF],
}

/// The Gazebo arm as a [`Plant`]. See the module documentation.
#[derive(Debug)]
pub struct GazeboPlant {
    origin: Instant,
    dof: usize,
    joint_stale_s: f64,
    shared: Arc<Shared>,
    cache: Measured,
    commands: SyncSender<Command>,
    report: Arc<Mutex<GazeboReport>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stale_reads: u64,
    dropped: u64,
}

/// The child → sensor transform of the F/T joint, as rotation and offset.
#[derive(Clone, Copy, Debug)]
struct SensorMount {
    r_sensor_child: Matrix3<f64>,
    p_sensor_child: Vector3<f64>,
}

impl SensorMount {
    /// The fixed joint whose parent is `ft_sensor` (the joint the export puts the gz sensor on);
    /// identity when there is none (a URDF without a sensor link).
    fn from_urdf(xml: &str) -> Result<Self, Ros2Error> {
        let robot = urdf_rs::read_from_string(xml)
            .map_err(|e| Ros2Error::config(format!("the URDF does not parse: {e}")))?;
        let t = match robot
            .joints
            .iter()
            .find(|j| j.parent.link == frames::FT_SENSOR)
        {
            Some(j) => Transform::from_xyz_rpy(j.origin.xyz.0, j.origin.rpy.0)
                .map_err(|e| Ros2Error::config(format!("joint `{}`: {e}", j.name)))?,
            None => Transform::IDENTITY,
        };
        Ok(Self {
            r_sensor_child: t.rotation,
            p_sensor_child: t.translation,
        })
    }

    /// gz's child-frame wrench → the `ft_sensor` frame, torque about the sensor's origin.
    fn sensor_wrench(&self, f_child: Vector3<f64>, t_child: Vector3<f64>) -> [Vector3<f64>; 2] {
        let f = self.r_sensor_child * f_child;
        [
            f,
            self.r_sensor_child * t_child + self.p_sensor_child.cross(&f),
        ]
    }
}

impl GazeboPlant {
    /// Opens the DDS endpoints and waits (up to [`GazeboConfig::connect_timeout`]) for the first
    /// joint state carrying every joint of `chain` and the first wrench. `urdf_xml` is the
    /// chain's URDF (for the F/T sensor's mount).
    pub fn connect(
        chain: &Chain,
        urdf_xml: &str,
        config: &GazeboConfig,
    ) -> Result<Self, Ros2Error> {
        if !(config.joint_stale_s.is_finite() && config.joint_stale_s > 0.0) {
            return Err(Ros2Error::config(format!(
                "joint_stale_s = {} must be a positive number of seconds",
                config.joint_stale_s
            )));
        }
        let dof = chain.dof();
        if dof == 0 || dof > MAX_DOF {
            return Err(Ros2Error::config(format!(
                "the chain has {dof} joints (1–{MAX_DOF} supported)"
            )));
        }
        let mount = SensorMount::from_urdf(urdf_xml)?;
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            measured: Mutex::new(Measured::new(dof)),
            fresh: Condvar::new(),
        });
        let report = Arc::new(Mutex::new(GazeboReport::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let worker = Worker {
            origin,
            domain_id: config.domain_id,
            names: chain.joint_names().to_vec(),
            mount,
            shared: Arc::clone(&shared),
            report: Arc::clone(&report),
            stop: Arc::clone(&stop),
            commands: rx,
        };
        let thread = std::thread::Builder::new()
            .name("telecho-gazebo".into())
            .spawn(move || worker.run(&ready_tx))
            .map_err(|e| Ros2Error::thread(format!("cannot start the Gazebo thread: {e}")))?;
        let mut plant = Self {
            origin,
            dof,
            joint_stale_s: config.joint_stale_s,
            shared,
            cache: Measured::new(dof),
            commands: tx,
            report,
            stop,
            thread: Some(thread),
            stale_reads: 0,
            dropped: 0,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Ros2Error::thread("the Gazebo thread ended at start")),
        }
        let deadline = Instant::now() + config.connect_timeout;
        loop {
            let m = plant.snapshot();
            if m.joints_at_s.is_finite() && m.ft_at_s.is_finite() {
                plant.cache = m;
                return Ok(plant);
            }
            if Instant::now() >= deadline {
                let missing = match (m.joints_at_s.is_finite(), m.ft_at_s.is_finite()) {
                    (false, false) => format!("{JOINT_STATES_TOPIC} and {FT_TOPIC}"),
                    (false, true) => JOINT_STATES_TOPIC.to_owned(),
                    _ => FT_TOPIC.to_owned(),
                };
                let why = plant
                    .report()
                    .last_refusal
                    .map(|r| format!(" (last /joint_states refused: {r})"))
                    .unwrap_or_default();
                return Err(Ros2Error::config(format!(
                    "nothing on {missing} in domain {} within {:.0} s{why}: is the Gazebo \
                     launch (`ros2 launch ./launch/telecho_gazebo.launch.py`) running?",
                    config.domain_id,
                    config.connect_timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn snapshot(&self) -> Measured {
        match self.shared.measured.lock() {
            Ok(m) => *m,
            Err(p) => *p.into_inner(),
        }
    }

    /// What was exchanged so far.
    pub fn report(&self) -> GazeboReport {
        let mut r = match self.report.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        r.stale_reads = self.stale_reads;
        r.commands_dropped += self.dropped;
        r
    }

    /// Stops the DDS thread and returns the final report.
    pub fn stop(mut self) -> GazeboReport {
        self.shutdown();
        self.report()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GazeboPlant {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Plant for GazeboPlant {
    fn read(&mut self, q: &mut [f64], qd: &mut [f64]) -> (f64, FtSample) {
        // Wait for the simulator's next state, until the last one goes stale: a silent
        // simulator then reads stale at once, and the loop runs on the wall clock again.
        let left_s =
            self.cache.joints_at_s + self.joint_stale_s - self.origin.elapsed().as_secs_f64();
        if left_s > 0.0 {
            let last = self.cache.seq;
            let wait = Duration::from_secs_f64(left_s);
            let guard = match self.shared.measured.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let guard = match self
                .shared
                .fresh
                .wait_timeout_while(guard, wait, |m| m.seq == last)
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
            self.cache = *guard;
        } else if let Ok(m) = self.shared.measured.try_lock() {
            // Stale already: no wait; on contention this cycle reuses the previous reading.
            self.cache = *m;
        }
        let now_s = self.origin.elapsed().as_secs_f64();
        let m = &self.cache;
        let fresh = now_s - m.joints_at_s <= self.joint_stale_s;
        if !fresh {
            self.stale_reads += 1;
        }
        for (dst, src) in q.iter_mut().zip(&m.q_rad[..m.dof]) {
            *dst = if fresh { *src } else { f64::NAN };
        }
        for (dst, src) in qd.iter_mut().zip(&m.qd_rad_s[..m.dof]) {
            *dst = if fresh { *src } else { f64::NAN };
        }
        let ft = FtSample {
            stamp_s: if m.ft_at_s.is_finite() {
                m.ft_at_s
            } else {
                0.0
            },
            force_n: m.force_n,
            torque_nm: m.torque_nm,
            saturated: false,
        };
        (now_s, ft)
    }

    /// Publishes the joint position command (`q_cmd_rad`: the position controller takes
    /// positions whatever the controller's interface; in velocity mode `q_cmd_rad` is the
    /// integrated reference). A command with a non-finite value is dropped.
    fn write(&mut self, out: &ControlOutput) {
        if !out.send {
            return;
        }
        let n = out.q_cmd_rad.len();
        if n != self.dof || out.q_cmd_rad.iter().any(|v| !v.is_finite()) {
            self.dropped += 1;
            return;
        }
        let mut cmd = Command {
            dof: n,
            q_rad: [0.0; MAX_DOF],
        };
        cmd.q_rad[..n].copy_from_slice(&out.q_cmd_rad);
        if self.commands.try_send(cmd).is_err() {
            self.dropped += 1;
        }
    }
}

/// The DDS side.
struct Worker {
    origin: Instant,
    domain_id: u16,
    names: Vec<String>,
    mount: SensorMount,
    shared: Arc<Shared>,
    report: Arc<Mutex<GazeboReport>>,
    stop: Arc<AtomicBool>,
    commands: Receiver<Command>,
}

/// A `/joint_states` message in chain order, or why not.
fn joint_positions(
    names: &[String],
    msg: &JointState,
    q: &mut [f64],
    qd: &mut [f64],
) -> Result<bool, String> {
    if msg.position.len() != msg.name.len() {
        return Err(format!(
            "{} names but {} positions",
            msg.name.len(),
            msg.position.len()
        ));
    }
    let has_velocity = msg.velocity.len() == msg.name.len();
    for (i, want) in names.iter().enumerate() {
        let Some(k) = msg.name.iter().position(|n| n == want) else {
            return Err(format!("joint `{want}` is missing"));
        };
        let p = msg.position[k];
        if !p.is_finite() {
            return Err(format!("joint `{want}` position is {p}"));
        }
        q[i] = p;
        if has_velocity {
            let v = msg.velocity[k];
            if !v.is_finite() {
                return Err(format!("joint `{want}` velocity is {v}"));
            }
            qd[i] = v;
        }
    }
    Ok(has_velocity)
}

impl Worker {
    fn run(self, ready: &SyncSender<Result<(), Ros2Error>>) {
        let opened = (|| -> Result<_, Ros2Error> {
            let mut node = open_node(self.domain_id, "/", "telecho_gazebo_plant")?;
            let joints = subscription::<JointState>(&mut node, JOINT_STATES_TOPIC, stream_qos(10))?;
            let ft = subscription::<Wrench>(&mut node, FT_TOPIC, stream_qos(10))?;
            let cmd = publisher::<Float64MultiArray>(&mut node, COMMAND_TOPIC, command_qos())?;
            Ok((joints, ft, cmd, node))
        })();
        let (joints, ft, cmd, _node) = match opened {
            Ok(ep) => ep,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tracing::info!(
            domain = self.domain_id,
            "Gazebo plant: {JOINT_STATES_TOPIC} and {FT_TOPIC} in, {COMMAND_TOPIC} out"
        );
        let dof = self.names.len();
        let (mut q, mut qd) = ([0.0; MAX_DOF], [0.0; MAX_DOF]);
        // The previous accepted joint state (stamp s, positions) for finite differences.
        let mut prev: Option<(f64, [f64; MAX_DOF])> = None;
        let mut report = GazeboReport::default();
        while !self.stop.load(Ordering::Acquire) {
            let mut newest = None;
            match self.commands.recv_timeout(Duration::from_micros(500)) {
                Ok(c) => newest = Some(c),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(c) = self.commands.try_recv() {
                newest = Some(c);
            }
            if let Some(c) = newest {
                let msg = Float64MultiArray {
                    layout: MultiArrayLayout::default(),
                    data: c.q_rad[..c.dof].to_vec(),
                };
                match cmd.publish(msg) {
                    Ok(()) => report.commands_published += 1,
                    Err(e) => {
                        report.commands_dropped += 1;
                        tracing::debug!("cannot publish {COMMAND_TOPIC}: {e:?}");
                    }
                }
            }
            loop {
                let msg = match joints.take() {
                    Ok(Some((msg, _))) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        report.joint_states_refused += 1;
                        report.last_refusal = Some(format!("unreadable: {e:?}"));
                        continue;
                    }
                };
                let at_s = self.origin.elapsed().as_secs_f64();
                match joint_positions(&self.names, &msg, &mut q[..dof], &mut qd[..dof]) {
                    Ok(has_velocity) => {
                        let stamp_s = f64::from(msg.header.stamp.sec)
                            + f64::from(msg.header.stamp.nanosec) * 1e-9;
                        if !has_velocity {
                            qd[..dof].fill(0.0);
                            if let Some((t0, q0)) = prev {
                                let dt = stamp_s - t0;
                                if dt > 0.0 {
                                    for i in 0..dof {
                                        qd[i] = (q[i] - q0[i]) / dt;
                                    }
                                }
                            }
                        }
                        prev = Some((stamp_s, q));
                        report.joint_states_received += 1;
                        if let Ok(mut m) = self.shared.measured.lock() {
                            m.q_rad = q;
                            m.qd_rad_s = qd;
                            m.joints_at_s = at_s;
                            m.seq += 1;
                        }
                        self.shared.fresh.notify_all();
                    }
                    Err(why) => {
                        report.joint_states_refused += 1;
                        tracing::warn!("refused {JOINT_STATES_TOPIC}: {why}");
                        report.last_refusal = Some(why);
                    }
                }
            }
            loop {
                match ft.take() {
                    Ok(Some((w, _))) => {
                        let f = Vector3::new(w.force.x, w.force.y, w.force.z);
                        let t = Vector3::new(w.torque.x, w.torque.y, w.torque.z);
                        let [force_n, torque_nm] = self.mount.sensor_wrench(f, t);
                        report.wrenches_received += 1;
                        if let Ok(mut m) = self.shared.measured.lock() {
                            // A non-finite reading goes through: the supervisor faults on it.
                            m.force_n = force_n;
                            m.torque_nm = torque_nm;
                            m.ft_at_s = self.origin.elapsed().as_secs_f64();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => tracing::warn!("unreadable {FT_TOPIC}: {e:?}"),
                }
            }
            if let Ok(mut r) = self.report.lock() {
                r.clone_from(&report);
            }
        }
        if let Ok(mut r) = self.report.lock() {
            r.clone_from(&report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn joint_states_are_put_in_chain_order_by_name() {
        let msg = JointState {
            name: vec!["c".into(), "a".into(), "b".into(), "gripper".into()],
            position: vec![3.0, 1.0, 2.0, 9.0],
            velocity: vec![0.3, 0.1, 0.2, 0.9],
            ..JointState::default()
        };
        let (mut q, mut qd) = ([0.0; 3], [0.0; 3]);
        assert_eq!(joint_positions(&names(), &msg, &mut q, &mut qd), Ok(true));
        assert_eq!(q, [1.0, 2.0, 3.0]);
        assert_eq!(qd, [0.1, 0.2, 0.3]);
    }

    #[test]
    fn malformed_joint_states_are_refused_with_the_reason() {
        let (mut q, mut qd) = ([0.0; 3], [0.0; 3]);
        let missing = JointState {
            name: vec!["a".into(), "b".into()],
            position: vec![1.0, 2.0],
            ..JointState::default()
        };
        assert_eq!(
            joint_positions(&names(), &missing, &mut q, &mut qd),
            Err("joint `c` is missing".into())
        );
        let short = JointState {
            name: vec!["a".into(), "b".into(), "c".into()],
            position: vec![1.0, 2.0],
            ..JointState::default()
        };
        assert!(joint_positions(&names(), &short, &mut q, &mut qd)
            .unwrap_err()
            .contains("3 names but 2 positions"));
        let nan = JointState {
            name: vec!["a".into(), "b".into(), "c".into()],
            position: vec![1.0, f64::NAN, 3.0],
            ..JointState::default()
        };
        assert!(joint_positions(&names(), &nan, &mut q, &mut qd)
            .unwrap_err()
            .contains("`b` position is NaN"));
        // No velocities: positions only, the caller differentiates.
        let no_velocity = JointState {
            name: vec!["a".into(), "b".into(), "c".into()],
            position: vec![1.0, 2.0, 3.0],
            ..JointState::default()
        };
        assert_eq!(
            joint_positions(&names(), &no_velocity, &mut q, &mut qd),
            Ok(false)
        );
    }

    #[test]
    fn the_gz_child_frame_wrench_is_moved_to_the_sensor_origin() {
        // The bundled UR5e: the probe holder sits 20 mm along the sensor's z, axes aligned.
        let xml = include_str!("../../urdf/ur5e_probe.urdf");
        let mount = SensorMount::from_urdf(xml).unwrap();
        assert!((mount.p_sensor_child - Vector3::new(0.0, 0.0, 0.02)).norm() < 1e-12);
        // 10 N along x at the holder's origin is 0.2 N·m about the sensor's y.
        let [f, t] =
            mount.sensor_wrench(Vector3::new(10.0, 0.0, -5.0), Vector3::new(0.0, 0.0, 0.1));
        assert!((f - Vector3::new(10.0, 0.0, -5.0)).norm() < 1e-12);
        assert!((t - Vector3::new(0.0, 0.2, 0.1)).norm() < 1e-12, "{t}");
    }
}
