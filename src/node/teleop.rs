//! `telecho node teleop`: the patient side of the teleoperation link whose robot is a control
//! node on ROS 2 (`telecho node control`), not an in-process simulator.
//!
//! The QUIC side is the same [`TeleopServer`] as `telecho teleop serve` (mutual TLS with the
//! site PKI, the control lease, command acceptance, the link watchdog, the audit log; its
//! configuration from [`crate::teleop::serve::site_server_config`]). One DDS thread does the
//! rest, polling every 2 ms:
//!
//! - accepted commands go through [`SetpointLink`] (the link-loss policy: the control node holds
//!   a ROS set-point forever, so this node holds, retracts once after 1 s of silence, lifts once
//!   on e-stop, and publishes nothing while its DDS inputs are stale) and out as
//!   `/probe/force_setpoint` then `/probe/target_pose` (force first, so a retract never pairs a
//!   contact force with the lifted pose), each checked with the control node's own
//!   [`CommandValidator`] before it leaves;
//! - `/probe/pose`, `/joint_states` and `/probe/wrench` (non-finite ones refused and counted)
//!   become the robot state and haptic feedback datagrams at `--state-hz`, the contact model
//!   estimated from the wrench and pose by [`ContactEstimator`];
//! - `/us/image` (+ `/us/pixel_spacing`, `/us/probe_pose` of the same stamp) become the QUIC
//!   ultrasound stream (delta-zstd, [`us_codec`]);
//! - every audit record, once written through to the log, goes out on `/audit`
//!   (`diagnostic_msgs/DiagnosticArray`, one status per record: `seq`, `who` and the record's
//!   JSON line exactly as in the file, so a recording carries a verifiable copy).
//!
//! The F/T wrench arrives in `ft_sensor`; the sensor's pose in the tip frame comes from the
//! arm's URDF (`--arm`), the workspace box from the nominal patient placement (as the control
//! node's supervisor has them). At the end it prints a summary (one JSON object with `--json`).
//!
//! Exit codes: 0 the run ended; 1 DDS or the server failed; 2 bad arguments or PKI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context};
use clap::Args;
use nalgebra::{Matrix3, UnitQuaternion, Vector3};
use serde::Serialize;
use telecho_control::ros2::{
    self, command_qos, frame_qos, pose_msg, publisher, stream_qos, subscription, CommandValidator,
    Ros2Config,
};
use telecho_control::{Chain, ControllerConfig, ProbeController, SafetyConfig};
use telecho_core::ros_msgs::{
    DiagnosticArray, DiagnosticStatus, Float64, Header, Image, JointState, KeyValue, PoseStamped,
    Vector3Stamped, WrenchStamped,
};
use telecho_core::{frames, Transform};
use telecho_sim::plant::patient_workspace;
use telecho_sim::PatientPlacement;
use telecho_teleop::net::server::{ServerEvent, TeleopServer};
use telecho_teleop::session::SessionRequest;
use telecho_teleop::setpoint_link::{
    ContactEstimator, Input, Setpoint, SetpointLink, SetpointLinkConfig, SetpointLinkStats,
};
use telecho_teleop::us_codec;
use telecho_teleop::wire::{FrameEncoding, LinkState, Pose, SafetyCode, UsFrameMsg};

use crate::cli_error::CliError;
use crate::sim::Arm;
use crate::teleop::serve;
use crate::CliResult;

/// Audit records queued for `/audit` between two DDS polls (commands arrive at up to 1 kHz).
const AUDIT_QUEUE: usize = 4096;

/// Damping of the contact model streamed to the console, N·s/m (as `teleop serve`).
const CONTACT_DAMPING_N_S_M: f64 = 50.0;
/// A contact force above this counts as touching for the contact model, N (twice the
/// controller's touch threshold, as its raw-magnitude test).
const TOUCH_N: f64 = 1.0;
/// DDS polling period.
const POLL: Duration = Duration::from_millis(2);
/// Largest joint count passed on (the wire's limit).
const MAX_JOINTS: usize = telecho_teleop::wire::limits::MAX_JOINTS;

#[derive(Debug, Args)]
pub(crate) struct TeleopArgs {
    /// UDP address to listen on (e.g. 0.0.0.0:4433, 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// PKI directory made by `telecho certs init` (ca.pem, server.pem, server.key).
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// Hash-chained audit log (JSON lines; appended to, verified first when it exists).
    #[arg(long, value_name = "PATH", default_value = "telecho-audit.log")]
    audit: PathBuf,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// The arm the control node drives (its URDF places the F/T sensor).
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// Robot state and haptic feedback rate, Hz (60–500).
    #[arg(long, default_value_t = 100.0)]
    state_hz: f64,
    /// Commands older than this at arrival are refused, ms (20–2000).
    #[arg(long, default_value_t = 200.0)]
    max_age_ms: f64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What came in over DDS, counted.
#[derive(Clone, Debug, Default, Serialize)]
struct DdsCounts {
    poses_received: u64,
    poses_refused: u64,
    joint_states_received: u64,
    joint_states_refused: u64,
    wrenches_received: u64,
    wrenches_refused: u64,
    images_received: u64,
    images_refused: u64,
    spacings_received: u64,
    spacings_refused: u64,
    us_poses_received: u64,
    /// Set-points the control node's validator would refuse (never published; expected 0).
    setpoints_refused: u64,
    /// DDS publish errors.
    publish_errors: u64,
    targets_published: u64,
    forces_published: u64,
    /// Audit records published on `/audit`.
    audit_published: u64,
}

/// What `node teleop` prints at the end.
#[derive(Debug, Serialize)]
struct Summary {
    listen: String,
    domain_id: u16,
    duration_s: f64,
    connections: u64,
    commands_accepted: u64,
    commands_refused: u64,
    malformed_datagrams: u64,
    commands_unaudited: u64,
    link: SetpointLinkStats,
    dds: DdsCounts,
    states_sent: u64,
    frames_sent: u64,
    frames_skipped: u64,
    /// Scan protocols asked for from the console (not run here: `/scan/start` runs them).
    protocols_refused: u64,
    final_safety: String,
    audit: String,
    audit_records: u64,
}

/// The robot's geometry this node needs.
struct Geometry {
    validator: CommandValidator,
    /// The F/T sensor frame in the probe-tip frame.
    t_tip_sensor: Transform,
    link: SetpointLinkConfig,
}

fn geometry(arm: Arm) -> Result<(Geometry, SafetyConfig), CliError> {
    let (_, xml) = arm.bundled();
    // The control node's supervisor: the workspace box around the nominal patient placement
    // (the same for every seed), the default limits.
    let (workspace_min_m, workspace_max_m) =
        patient_workspace(&PatientPlacement::default().nominal_t_base_ct);
    let safety = SafetyConfig {
        workspace_min_m,
        workspace_max_m,
        ..SafetyConfig::default()
    };
    let controller = ProbeController::from_urdf_str(
        xml,
        ControllerConfig {
            safety,
            ..ControllerConfig::default()
        },
    )
    .map_err(CliError::failed)?;
    let sensor_tip = Chain::from_urdf_str(xml, Some(frames::FT_SENSOR), frames::PROBE_TIP)
        .map_err(CliError::failed)?;
    let link = SetpointLinkConfig {
        retract_m: safety.safe_retract_m,
        estop_lift_m: safety.force_retract_m,
        workspace_min_m,
        workspace_max_m,
        force_range_n: [
            ros2::FORCE_SETPOINT_RANGE_N[0],
            safety.force_limit_n - safety.setpoint_margin_n,
        ],
        ..SetpointLinkConfig::default()
    };
    Ok((
        Geometry {
            validator: CommandValidator::for_controller(&controller),
            t_tip_sensor: sensor_tip.fk_unchecked(&[]).inverse(),
            link,
        },
        safety,
    ))
}

pub(crate) fn run(args: &TeleopArgs) -> CliResult {
    serve::check_common(args.duration_s, args.max_age_ms)?;
    if !(args.state_hz.is_finite() && (60.0..=500.0).contains(&args.state_hz)) {
        return Err(CliError::input(anyhow!(
            "--state-hz must be within 60–500, got {}",
            args.state_hz
        )));
    }
    let domain_id = match args.domain_id {
        Some(d) if d <= 232 => d,
        Some(d) => return Err(CliError::input(anyhow!("--domain-id {d} is outside 0–232"))),
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    let (geo, safety) = geometry(args.arm)?;
    // Scan protocols run on the control node (`/scan/start`); none is offered here. The one
    // entry is not a valid protocol name, so the core answers every `StartProtocol` `Invalid`,
    // naming where scans run (an empty list would pass any name on).
    let mut config = serve::site_server_config(
        &args.pki,
        args.listen,
        &args.audit,
        &safety,
        args.max_age_ms,
        &["none here: call /scan/start on the control node"],
    )?;
    // Copies of the audit records for `/audit` (a full queue drops the copy, never the record).
    let (audit_tx, audit_rx) = std::sync::mpsc::sync_channel(AUDIT_QUEUE);
    config.audit_tap = Some(audit_tx);
    let summary = serve::runtime()?.block_on(async {
        let wall = Instant::now();
        let (server, channels) = TeleopServer::bind(config).map_err(|e| {
            CliError::input(anyhow!(
                "cannot serve on {} (audit log {}): {e}",
                args.listen,
                args.audit.display()
            ))
        })?;
        let server = Arc::new(server);
        let addr = server.local_addr().map_err(CliError::failed)?;
        eprintln!("telecho node teleop: listening on {addr}");
        let stop = Arc::new(AtomicBool::new(false));
        let dds = {
            let server = server.clone();
            let stop = stop.clone();
            let handle = tokio::runtime::Handle::current();
            let period = Duration::from_secs_f64(1.0 / args.state_hz);
            let link = SetpointLink::new(geo.link).map_err(CliError::failed)?;
            // The DDS endpoints live on their thread; it reports whether they opened.
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let thread = std::thread::Builder::new()
                .name("telecho-teleop-dds".into())
                .spawn(move || {
                    let _rt = handle.enter();
                    let opened = ros2::open_node(domain_id, "/", "telecho_teleop")
                        .map_err(anyhow::Error::from)
                        .and_then(Endpoints::open);
                    let endpoints = match opened {
                        Ok(e) => {
                            let _ = ready_tx.send(Ok(()));
                            e
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return None;
                        }
                    };
                    let mut w = Bridge {
                        server,
                        geo,
                        link,
                        contact: ContactEstimator::new(TOUCH_N, CONTACT_DAMPING_N_S_M),
                        channels,
                        audit: audit_rx,
                        counts: DdsCounts::default(),
                        joints: Vec::new(),
                        wrench: None,
                        spacing: None,
                        us_pose: None,
                        frame_seq: 0,
                        protocols_refused: 0,
                        states_sent: 0,
                        stamp_origin: (SystemTime::now(), Instant::now()),
                    };
                    let mut next_state = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        w.step(&endpoints);
                        if Instant::now() >= next_state {
                            w.publish_state();
                            next_state += period;
                            if next_state < Instant::now() {
                                next_state = Instant::now() + period;
                            }
                        }
                        std::thread::sleep(POLL);
                    }
                    drop(endpoints);
                    Some(w)
                })
                .context("DDS thread")
                .map_err(CliError::failed)?;
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CliError::failed(e.context("DDS"))),
                Err(_) => return Err(CliError::failed(anyhow!("the DDS thread stopped"))),
            }
            thread
        };
        serve::wait_for_stop(args.duration_s, &stop).await;
        stop.store(true, Ordering::Relaxed);
        let bridge = tokio::task::spawn_blocking(move || dds.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .ok_or_else(|| CliError::failed(anyhow!("the DDS thread panicked")))?;
        let now = bridge.server.now_s();
        let final_safety = format!("{:?}", bridge.link.safety(now)).to_lowercase();
        let Bridge {
            server: bridge_server,
            link,
            counts,
            protocols_refused,
            states_sent,
            channels,
            ..
        } = bridge;
        // The server shuts down cleanly only when this is its last handle.
        drop((bridge_server, channels));
        let stats = server.stats();
        let audit_records = serve::close_server(server, &args.audit).await?;
        Ok::<_, CliError>(Summary {
            listen: addr.to_string(),
            domain_id,
            duration_s: wall.elapsed().as_secs_f64(),
            connections: stats.core.connections,
            commands_accepted: stats.core.commands.accepted,
            commands_refused: stats.core.commands.dropped(),
            malformed_datagrams: stats.core.malformed_datagrams,
            commands_unaudited: stats.commands_unaudited,
            link: link.stats(),
            dds: counts,
            states_sent,
            frames_sent: stats.frames_sent,
            frames_skipped: stats.frames_skipped,
            protocols_refused,
            final_safety,
            audit: args.audit.display().to_string(),
            audit_records,
        })
    })?;
    print_summary(&summary, args.json)
}

fn print_summary(s: &Summary, json: bool) -> CliResult {
    if json {
        println!(
            "{}",
            serde_json::to_string(s)
                .context("summary")
                .map_err(CliError::failed)?
        );
        return Ok(());
    }
    println!(
        "teleop node on {} (domain {}), {:.1} s: {} connections, {} commands accepted, {} \
         set-points published ({} holds, {} retracts, {} e-stops), {} withheld on stale input; \
         DDS in: {} poses ({} refused), {} joint states ({} refused), {} wrenches ({} refused), \
         {} images; {} frames sent; final safety {}, audit {} ({} records)",
        s.listen,
        s.domain_id,
        s.duration_s,
        s.connections,
        s.commands_accepted,
        s.link.setpoints_published,
        s.link.holds,
        s.link.retracts,
        s.link.estops,
        s.link.withheld_faulted,
        s.dds.poses_received,
        s.dds.poses_refused,
        s.dds.joint_states_received,
        s.dds.joint_states_refused,
        s.dds.wrenches_received,
        s.dds.wrenches_refused,
        s.dds.images_received,
        s.frames_sent,
        s.final_safety,
        s.audit,
        s.audit_records
    );
    Ok(())
}

struct Endpoints {
    pose: ros2::Subscription<PoseStamped>,
    joints: ros2::Subscription<JointState>,
    wrench: ros2::Subscription<WrenchStamped>,
    image: ros2::Subscription<Image>,
    spacing: ros2::Subscription<Vector3Stamped>,
    us_pose: ros2::Subscription<PoseStamped>,
    target: ros2::Publisher<PoseStamped>,
    force: ros2::Publisher<Float64>,
    audit: ros2::Publisher<DiagnosticArray>,
    // Declared last, so dropped last.
    _node: ros2::Node,
}

impl Endpoints {
    fn open(mut node: ros2::Node) -> anyhow::Result<Self> {
        Ok(Self {
            pose: subscription(&mut node, "/probe/pose", stream_qos(10))?,
            joints: subscription(&mut node, "/joint_states", stream_qos(10))?,
            wrench: subscription(&mut node, "/probe/wrench", stream_qos(100))?,
            image: subscription(&mut node, "/us/image", frame_qos(4))?,
            spacing: subscription(&mut node, "/us/pixel_spacing", frame_qos(4))?,
            us_pose: subscription(&mut node, "/us/probe_pose", frame_qos(4))?,
            target: publisher(&mut node, "/probe/target_pose", command_qos())?,
            force: publisher(&mut node, "/probe/force_setpoint", command_qos())?,
            // Reliable, as `telecho record` subscribes to it.
            audit: publisher(&mut node, "/audit", command_qos())?,
            _node: node,
        })
    }
}

/// The DDS side: the policy, the newest measurements, the counters.
struct Bridge {
    server: Arc<TeleopServer>,
    geo: Geometry,
    link: SetpointLink,
    contact: ContactEstimator,
    channels: telecho_teleop::net::server::ServerChannels,
    /// Audit records written through to the log, for `/audit`.
    audit: std::sync::mpsc::Receiver<String>,
    counts: DdsCounts,
    joints: Vec<f64>,
    /// The newest contact wrench on the tip in the base frame (force N, torque N·m).
    wrench: Option<(Vector3<f64>, Vector3<f64>)>,
    /// The newest pixel spacing (column, row), m, with its stamp.
    spacing: Option<(u64, [f64; 2])>,
    /// The newest `/us/probe_pose`, with its stamp.
    us_pose: Option<(u64, Transform)>,
    frame_seq: u64,
    protocols_refused: u64,
    states_sent: u64,
    stamp_origin: (SystemTime, Instant),
}

/// A measured `PoseStamped` in `base` as a transform: finite, a unit quaternion (±1e-3),
/// normalised.
fn measured_pose(msg: &PoseStamped, base: &str) -> Option<Transform> {
    let p = &msg.pose.position;
    let o = &msg.pose.orientation;
    let q = nalgebra::Quaternion::new(o.w, o.x, o.y, o.z);
    let finite = [p.x, p.y, p.z, o.x, o.y, o.z, o.w]
        .iter()
        .all(|v| v.is_finite());
    if !finite || msg.header.frame_id != base || (q.norm() - 1.0).abs() > 1e-3 {
        return None;
    }
    let r = UnitQuaternion::from_quaternion(q).to_rotation_matrix();
    Some(Transform::new(r.into_inner(), Vector3::new(p.x, p.y, p.z)))
}

fn vec3(v: &telecho_core::ros_msgs::Vector3) -> Vector3<f64> {
    Vector3::new(v.x, v.y, v.z)
}

impl Bridge {
    fn now(&self) -> f64 {
        self.server.now_s()
    }

    fn base(&self) -> &str {
        &self.geo.validator.base_frame
    }

    fn step(&mut self, ep: &Endpoints) {
        let now = self.now();
        while let Ok(ev) = self.channels.events.try_recv() {
            match ev {
                ServerEvent::Link(l) if l.state == LinkState::Idle => {
                    self.link.lease_released(now);
                }
                ServerEvent::Link(_) => {}
                ServerEvent::Session { by, request } => {
                    tracing::info!(%by, ?request, "session request");
                    if let SessionRequest::StartProtocol(name) = &request {
                        self.protocols_refused += 1;
                        tracing::warn!(
                            protocol = %name,
                            "scan protocols run on the control node: call /scan/start"
                        );
                    }
                    self.link.session(&request, now);
                }
                ServerEvent::Connected { conn, identity } => {
                    tracing::info!(conn, who = %identity.name, role = identity.role.as_str(), "connected");
                }
                ServerEvent::Disconnected { conn } => tracing::info!(conn, "disconnected"),
            }
        }
        self.take_measurements(ep, now);
        while let Some(c) = self.channels.commands.try_recv() {
            self.link.command(&c);
        }
        if let Some(s) = self.link.poll(now) {
            self.publish_setpoint(ep, &s);
        }
        while let Ok(line) = self.audit.try_recv() {
            self.publish_audit(ep, line);
        }
    }

    /// One audit record on `/audit`: its sequence number and signer as values, and the record
    /// itself (the hash-chained JSON line, verifiable like the file).
    fn publish_audit(&mut self, ep: &Endpoints, line: String) {
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let seq = parsed["seq"]
            .as_u64()
            .map_or_else(String::new, |s| s.to_string());
        let who = parsed["who"]["cn"].as_str().unwrap_or_default().to_owned();
        let msg = DiagnosticArray {
            header: Header::new(self.stamp(), String::new()),
            status: vec![DiagnosticStatus {
                level: DiagnosticStatus::OK,
                name: "telecho_teleop: audit".into(),
                message: format!("audit record {seq}"),
                hardware_id: "telecho_teleop".into(),
                values: vec![
                    KeyValue {
                        key: "seq".into(),
                        value: seq,
                    },
                    KeyValue {
                        key: "who".into(),
                        value: who,
                    },
                    KeyValue {
                        key: "record".into(),
                        value: line,
                    },
                ],
            }],
        };
        match ep.audit.publish(msg) {
            Ok(()) => self.counts.audit_published += 1,
            Err(e) => {
                self.counts.publish_errors += 1;
                tracing::warn!("cannot publish /audit: {e:?}");
            }
        }
    }

    fn take_measurements(&mut self, ep: &Endpoints, now: f64) {
        loop {
            match ep.pose.take() {
                Ok(Some((msg, _))) => match measured_pose(&msg, self.base()) {
                    Some(t) if self.link.pose(&t, now) => self.counts.poses_received += 1,
                    _ => {
                        self.counts.poses_refused += 1;
                        tracing::warn!("refused /probe/pose: not finite, not a unit quaternion or not in the base frame");
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    self.counts.poses_refused += 1;
                    tracing::warn!("unreadable /probe/pose: {e:?}");
                }
            }
        }
        loop {
            match ep.joints.take() {
                Ok(Some((msg, _))) => {
                    let ok = !msg.position.is_empty()
                        && msg.position.len() <= MAX_JOINTS
                        && msg.position.iter().all(|v| v.is_finite());
                    if ok {
                        self.counts.joint_states_received += 1;
                        self.joints.clone_from(&msg.position);
                        self.link.seen(Input::Joints, now);
                    } else {
                        self.counts.joint_states_refused += 1;
                        tracing::warn!("refused /joint_states: empty, too long or not finite");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.counts.joint_states_refused += 1;
                    tracing::warn!("unreadable /joint_states: {e:?}");
                }
            }
        }
        loop {
            match ep.wrench.take() {
                Ok(Some((msg, _))) => {
                    let f = vec3(&msg.wrench.force);
                    let tau = vec3(&msg.wrench.torque);
                    let ok = f.iter().chain(tau.iter()).all(|v| v.is_finite())
                        && msg.header.frame_id == frames::FT_SENSOR;
                    if ok {
                        self.counts.wrenches_received += 1;
                        self.link.seen(Input::Wrench, now);
                        self.wrench = self.to_base(&f, &tau);
                    } else {
                        self.counts.wrenches_refused += 1;
                        tracing::warn!("refused /probe/wrench: not finite or not in ft_sensor");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.counts.wrenches_refused += 1;
                    tracing::warn!("unreadable /probe/wrench: {e:?}");
                }
            }
        }
        loop {
            match ep.spacing.take() {
                Ok(Some((msg, _))) => {
                    let v = [msg.vector.x, msg.vector.y];
                    if v.iter().all(|s| s.is_finite() && *s > 0.0 && *s < 0.01) {
                        self.counts.spacings_received += 1;
                        self.spacing = Some((msg.header.stamp.as_nanos(), v));
                    } else {
                        self.counts.spacings_refused += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => self.counts.spacings_refused += 1,
            }
        }
        loop {
            match ep.us_pose.take() {
                Ok(Some((msg, _))) => {
                    if let Some(t) = measured_pose(&msg, self.base()) {
                        self.counts.us_poses_received += 1;
                        self.us_pose = Some((msg.header.stamp.as_nanos(), t));
                    }
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        loop {
            match ep.image.take() {
                Ok(Some((msg, _))) => self.frame(&msg),
                Ok(None) => break,
                Err(e) => {
                    self.counts.images_refused += 1;
                    tracing::warn!("unreadable /us/image: {e:?}");
                }
            }
        }
    }

    /// The sensor-frame wrench as the contact wrench on the tip in the base frame (as the
    /// controller computes it), at the newest measured pose.
    fn to_base(
        &self,
        f: &Vector3<f64>,
        tau: &Vector3<f64>,
    ) -> Option<(Vector3<f64>, Vector3<f64>)> {
        let t_base_tip = self.link.measured_pose()?;
        let t_base_sensor = t_base_tip * self.geo.t_tip_sensor;
        let r: Matrix3<f64> = t_base_sensor.rotation;
        let f_base = r * f;
        let torque_tip =
            r * tau + (t_base_sensor.translation - t_base_tip.translation).cross(&f_base);
        (f_base
            .iter()
            .chain(torque_tip.iter())
            .all(|v| v.is_finite()))
        .then_some((f_base, torque_tip))
    }

    /// One `/us/image` to the QUIC ultrasound stream.
    fn frame(&mut self, msg: &Image) {
        let stamp = msg.header.stamp.as_nanos();
        let (w, h) = (msg.width as usize, msg.height as usize);
        let ok = msg.encoding == "mono8"
            && w > 0
            && h > 0
            && w <= u16::MAX as usize
            && h <= u16::MAX as usize
            && msg.step as usize == w
            && msg.data.len() == w * h;
        let Some((_, [col, row])) = self.spacing.filter(|_| ok) else {
            self.counts.images_refused += 1;
            if !ok {
                tracing::warn!(
                    encoding = %msg.encoding,
                    width = w,
                    height = h,
                    "refused /us/image: not a packed mono8 image"
                );
            }
            return;
        };
        // The tracked pose of this frame when it has arrived, else the newest measured one.
        let probe = match (self.us_pose, self.link.measured_pose()) {
            (Some((s, t)), _) if s == stamp => t,
            (_, Some(t)) => t,
            (Some((_, t)), None) => t,
            (None, None) => {
                self.counts.images_refused += 1;
                return;
            }
        };
        self.counts.images_received += 1;
        match us_codec::encode(&msg.data, w, h, FrameEncoding::DeltaZstd) {
            Ok(payload) => {
                self.frame_seq += 1;
                self.server.publish_frame(UsFrameMsg {
                    seq: self.frame_seq,
                    acquired_s: self.server.now_s(),
                    width: w as u16,
                    height: h as u16,
                    lateral_spacing_m: col,
                    axial_spacing_m: row,
                    probe: Pose::from_transform(&probe),
                    encoding: FrameEncoding::DeltaZstd,
                    payload,
                });
            }
            Err(e) => tracing::warn!("cannot encode an ultrasound frame: {e}"),
        }
    }

    fn stamp(&self) -> u64 {
        let (wall, mono) = self.stamp_origin;
        let t = wall + mono.elapsed();
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Publishes a set-point: the force first, then the pose. Both are checked with the control
    /// node's validator first; nothing it would refuse (or anything non-finite) leaves.
    fn publish_setpoint(&mut self, ep: &Endpoints, s: &Setpoint) {
        let header = Header::new(self.stamp(), self.base().to_owned());
        let pose = PoseStamped {
            header,
            pose: pose_msg(&s.t_base_probe),
        };
        let force = Float64 {
            data: s.force_n.unwrap_or(0.0),
        };
        if let Err(e) = self
            .geo
            .validator
            .pose(&pose)
            .map(|_| ())
            .and_then(|()| self.geo.validator.force(&force).map(|_| ()))
        {
            self.counts.setpoints_refused += 1;
            tracing::warn!("set-point withheld (the control node would refuse it): {e}");
            return;
        }
        match ep.force.publish(force) {
            Ok(()) => self.counts.forces_published += 1,
            Err(e) => {
                self.counts.publish_errors += 1;
                tracing::warn!("cannot publish /probe/force_setpoint: {e:?}");
                return;
            }
        }
        match ep.target.publish(pose) {
            Ok(()) => self.counts.targets_published += 1,
            Err(e) => {
                self.counts.publish_errors += 1;
                tracing::warn!("cannot publish /probe/target_pose: {e:?}");
            }
        }
    }

    /// Robot state and haptic feedback to the consoles (nothing before the first pose).
    fn publish_state(&mut self) {
        let Some(pose) = self.link.measured_pose() else {
            return;
        };
        let now = self.now();
        let safety = self.link.safety(now);
        let (f, tau) = self.wrench.unwrap_or((Vector3::zeros(), Vector3::zeros()));
        let contact = if safety == SafetyCode::FaultStop {
            None
        } else {
            self.contact.update(&pose, &f)
        };
        self.server.publish_state(
            safety,
            self.joints.clone(),
            Pose::from_transform(&pose),
            f,
            tau,
        );
        self.server.publish_haptic(f, tau, contact);
        self.states_sent += 1;
    }
}
