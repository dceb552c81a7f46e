//! MCAP recording of a simulated scan: what the control node measures and commands, cycle by
//! cycle, as the ROS 2 topics the nodes publish (`ros2msg` schemas, CDR), so Foxglove and rosbag2
//! open the file.
//!
//! | topic | type | rate |
//! |---|---|---|
//! | `/probe/wrench` | geometry_msgs/WrenchStamped (`ft_sensor`, raw F/T) | every cycle (1 kHz) |
//! | `/joint_states` | sensor_msgs/JointState (measured) | every cycle (1 kHz) |
//! | `/tf` | tf2_msgs/TFMessage (`base_link` → `probe_tip`, measured) | 100 Hz |
//! | `/probe/target_pose` | geometry_msgs/PoseStamped (the controller's reference) | 100 Hz |
//! | `/probe/force_setpoint` | std_msgs/Float64 (N) | 100 Hz |
//! | `/us/image` | sensor_msgs/Image mono8 | every rendered frame |
//! | `/safety/events` | diagnostic_msgs/DiagnosticArray | on each event |
//!
//! Log times are the simulation clock in nanoseconds. The recorder flushes at least once per
//! second of wall time (see [`telecho_core::recording`]), so a killed run loses at most that.

use std::path::Path;

use anyhow::Context;
use telecho_control::{ControlOutput, SafetyEvent};
use telecho_core::recording::Recorder;
use telecho_core::ros_msgs::{
    Float64, Header, Image, JointState, Pose, PoseStamped, TFMessage, Time, TransformStamped,
    Vector3, Wrench, WrenchStamped,
};
use telecho_sim::SimWorld;

/// Frame names of the recorded messages (REP 105 and the bundled URDFs).
const BASE_FRAME: &str = "base_link";
const FT_FRAME: &str = "ft_sensor";
const PROBE_FRAME: &str = "probe_tip";
const IMAGE_FRAME: &str = "us_image";

/// Cycles between the 100 Hz topics at 1 kHz.
const SLOW_EVERY: u64 = 10;

/// Records a scan into an MCAP file.
#[derive(Debug)]
pub(crate) struct ScanTap {
    recorder: Recorder,
    /// Reused every cycle (names fixed, positions and velocities overwritten).
    joints: JointState,
    cycle: u64,
    /// Messages written.
    pub(crate) messages: u64,
}

fn stamp(time_s: f64) -> (Time, u64) {
    let ns = (time_s.max(0.0) * 1e9).round() as u64;
    (Time::from_nanos(ns), ns)
}

fn header(time_s: f64, frame: &str) -> (Header, u64) {
    let (t, ns) = stamp(time_s);
    (
        Header {
            stamp: t,
            frame_id: frame.to_owned(),
        },
        ns,
    )
}

fn v3(v: &nalgebra::Vector3<f64>) -> Vector3 {
    Vector3 {
        x: v.x,
        y: v.y,
        z: v.z,
    }
}

impl ScanTap {
    /// A recording into `path` (created or replaced) of the arm whose joints are `joint_names`.
    pub(crate) fn create(path: &Path, joint_names: Vec<String>) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let recorder = Recorder::create(path)
            .with_context(|| format!("cannot create the recording {}", path.display()))?;
        Ok(Self {
            recorder,
            joints: JointState {
                header: Header::default(),
                position: vec![0.0; joint_names.len()],
                velocity: vec![0.0; joint_names.len()],
                name: joint_names,
                effort: Vec::new(),
            },
            cycle: 0,
            messages: 0,
        })
    }

    /// Records one control cycle: the world after its step and the controller's output.
    pub(crate) fn cycle(&mut self, world: &SimWorld, out: &ControlOutput) -> anyhow::Result<()> {
        let obs = world.observe();
        let r = &mut self.recorder;
        let (h, ns) = header(obs.ft.stamp_s, FT_FRAME);
        r.write(
            "/probe/wrench",
            ns,
            &WrenchStamped {
                header: h,
                wrench: Wrench {
                    force: v3(&obs.ft.force_n),
                    torque: v3(&obs.ft.torque_nm),
                },
            },
        )?;
        let (h, ns) = header(obs.time_s, "");
        let j = &mut self.joints;
        j.header = h;
        j.position.clear();
        j.position.extend_from_slice(obs.q_rad);
        j.velocity.clear();
        j.velocity.extend_from_slice(obs.qd_rad_s);
        r.write("/joint_states", ns, j)?;
        self.messages += 2;
        if self.cycle.is_multiple_of(SLOW_EVERY) {
            let (h, ns) = header(obs.time_s, BASE_FRAME);
            r.write(
                "/tf",
                ns,
                &TFMessage {
                    transforms: vec![TransformStamped {
                        header: h.clone(),
                        child_frame_id: PROBE_FRAME.to_owned(),
                        transform: (&out.t_base_probe).into(),
                    }],
                },
            )?;
            let cmd: telecho_core::ros_msgs::Transform = (&out.t_base_probe_cmd).into();
            r.write(
                "/probe/target_pose",
                ns,
                &PoseStamped {
                    header: h,
                    pose: Pose {
                        position: telecho_core::ros_msgs::Point {
                            x: cmd.translation.x,
                            y: cmd.translation.y,
                            z: cmd.translation.z,
                        },
                        orientation: cmd.rotation,
                    },
                },
            )?;
            r.write(
                "/probe/force_setpoint",
                ns,
                &Float64 {
                    data: out.force_setpoint_n,
                },
            )?;
            self.messages += 3;
        }
        for e in out.events.as_slice() {
            self.event(e)?;
        }
        self.cycle += 1;
        self.recorder.tick()?;
        Ok(())
    }

    /// Records one safety event.
    fn event(&mut self, e: &SafetyEvent) -> anyhow::Result<()> {
        let (h, ns) = header(e.time_s, BASE_FRAME);
        self.recorder
            .write("/safety/events", ns, &e.to_diagnostic(h))?;
        self.messages += 1;
        Ok(())
    }

    /// Records one ultrasound frame (8-bit, row-major, `width` × `height`).
    pub(crate) fn image(
        &mut self,
        time_s: f64,
        width: usize,
        height: usize,
        pixels: &[u8],
    ) -> anyhow::Result<()> {
        let (h, ns) = header(time_s, IMAGE_FRAME);
        self.recorder.write(
            "/us/image",
            ns,
            &Image {
                header: h,
                height: u32::try_from(height)?,
                width: u32::try_from(width)?,
                encoding: "mono8".to_owned(),
                is_bigendian: 0,
                step: u32::try_from(width)?,
                data: pixels.to_vec(),
            },
        )?;
        self.messages += 1;
        Ok(())
    }

    /// Closes the file (summary and footer).
    pub(crate) fn finish(self) -> anyhow::Result<u64> {
        let n = self.messages;
        self.recorder.finish()?;
        Ok(n)
    }
}
