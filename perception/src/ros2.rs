//! The perception node's ROS 2 adapter (`ros2` feature): it collects the control node's
//! ultrasound stream into a tracked sweep and registers the patient's CBCT to it.
//!
//! | topic / service | type | direction |
//! |---|---|---|
//! | `/us/image` | `sensor_msgs/msg/Image` (mono8) | in |
//! | `/us/probe_pose` | `geometry_msgs/msg/PoseStamped` (measured tip pose at acquisition) | in |
//! | `/us/frame_info` | `std_msgs/msg/String` (JSON [`FrameInfo`]: force, scan run, state, sweep) | in |
//! | `/us/pixel_spacing` | `geometry_msgs/msg/Vector3Stamped` (x column, y row spacing, m) | in |
//! | `/tf_static` | `tf2_msgs/msg/TFMessage` (`probe_tip` → `us_image`) | in; out: `base_link` → `ct` |
//! | `/scan/protocol`, `/scan/status` | `std_msgs/msg/String` (JSON, latched) | in |
//! | `/perception/register` | `std_srvs/srv/Trigger` | service |
//! | `/perception/registration` | `std_msgs/msg/String` (JSON [`crate::pipeline::RegistrationReport`], latched) | out |
//! | `/perception/landmarks` | `visualization_msgs/msg/MarkerArray` (latched) | out |
//!
//! The four `/us/*` messages of a frame carry the same stamp; the node joins them on it and keeps
//! the frames the executor took in `contact` or `sweep` of the newest scan run (a new run starts
//! a new sweep). On `/perception/register` — or when the run reports `done`, with
//! [`NodeConfig::register_when_done`] — it writes the frames as a `telecho-sweep/1` directory
//! (`out/sweep/`, the format `telecho scan` writes; `q_rad` left out: ROS 2 carries the pose) and
//! runs [`crate::pipeline`] on it. A registration publishes `base_link` → `ct` on `/tf_static`, the
//! CT landmarks in the base frame as spheres and labels, the full result as JSON (also
//! `out/registration.json`) and answers the service with that JSON. A refusal (too little bone,
//! ambiguous level) answers `success: false` with the reason and publishes nothing. A repeated
//! request over the same frames answers from the last result (clients re-send unanswered
//! requests).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use telecho_core::ros2::{
    frame_qos, latched_qos, open_node, publisher, subscription, transform_stamped, trigger_server,
    Subscription, Wire, DEFAULT_SERVICE_MAPPING,
};
use telecho_core::ros_msgs::{
    ColorRGBA, FrameInfo, Header, Image, Marker, MarkerArray, Point, PoseStamped, ProtocolInfo,
    ScanStatus, StringMsg, TFMessage, TriggerResponse, Vector3 as MsgVector3, Vector3Stamped,
};
use telecho_core::{frames, Transform};

use crate::error::{Error, ErrorKind};
use crate::pipeline::{
    register_with, report, DetectorKind, LandmarkOut, RegistrationReport, Timing,
};
use crate::registration::CtModel;
use crate::sweep::{Sweep, FORMAT};
use crate::sweep_write::{write_json_with_frames, FrameRecord, ProbeInfo, SweepEntry, SweepHeader};

/// Partial frames older than this (behind the newest stamp) are dropped, ns.
const PARTIAL_HORIZON_NS: u64 = 5_000_000_000;

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// DDS domain.
    pub domain_id: u16,
    /// Where the collected sweep (`sweep/`) and `registration.json` go (created).
    pub out: PathBuf,
    /// Per-frame bone detector.
    pub detector: DetectorKind,
    /// Threads for detection and the registration search (≥ 1).
    pub threads: usize,
    /// Register as soon as a scan run reports `done`.
    pub register_when_done: bool,
    /// Return after the first successful registration (its results delivered).
    pub exit_after_register: bool,
    /// Return after this long (`None`: until `stop`).
    pub duration: Option<Duration>,
    /// How the CT landmarks were obtained (`detected` or `file`), for the report.
    pub landmarks_source: &'static str,
    /// Time spent loading the CT, s (reported in the registration's timing).
    pub load_ct_s: f64,
    /// Time spent building the CT model, s.
    pub ct_preprocessing_s: f64,
}

/// One frame as it arrives in pieces.
#[derive(Default)]
struct Partial {
    image: Option<Image>,
    pose: Option<Transform>,
    info: Option<FrameInfo>,
}

/// One complete frame of the current scan run.
struct Collected {
    info: FrameInfo,
    t_base_probe: Transform,
    pixels: Vec<u8>,
}

/// What the node did, counted (what `telecho node perception` prints at the end).
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSummary {
    /// DDS domain.
    pub domain_id: u16,
    /// Wall time the node ran, s.
    pub duration_s: f64,
    /// Complete frames received (image, pose and info joined).
    pub frames_received: u64,
    /// Frames of the current run kept for the sweep.
    pub frames_collected: usize,
    /// Frames refused (wrong size, non-finite pose, unreadable info).
    pub frames_refused: u64,
    /// Scan run the frames belong to.
    pub run: u32,
    /// Last scan state heard.
    pub scan_state: Option<String>,
    /// Successful registrations.
    pub registrations: u64,
    /// Registrations refused (with the reason in the answer).
    pub refusals: u64,
    /// `/perception/register` requests answered.
    pub service_requests: u64,
    /// The last successful registration (as `perception register --json`).
    pub registration: Option<serde_json::Value>,
    /// The last refusal's reason.
    pub refusal: Option<String>,
}

struct Node {
    out: PathBuf,
    model: CtModel,
    landmarks_source: &'static str,
    load_ct_s: f64,
    ct_preprocessing_s: f64,
    detector: DetectorKind,
    threads: usize,
    protocol: Option<ProtocolInfo>,
    status: Option<ScanStatus>,
    t_probe_image: Option<Transform>,
    spacing_m: Option<[f64; 2]>,
    c: FrameCollector,
    registered_run: Option<u32>,
    /// Frame count and answer of the last registration attempt.
    last: Option<(u32, usize, TriggerResponse)>,
    summary: NodeSummary,
}

/// Runs the perception node on `config.domain_id` with the CBCT `model` until `stop` is set,
/// `config.duration` has passed or (with `exit_after_register`) a registration succeeded.
/// Fails before anything runs when DDS cannot start or `out` cannot be created.
pub fn run(model: CtModel, config: &NodeConfig, stop: &AtomicBool) -> Result<NodeSummary, Error> {
    if config.threads == 0 {
        return Err(
            ErrorKind::Invalid("the perception node needs at least 1 thread".into()).into(),
        );
    }
    std::fs::create_dir_all(&config.out).map_err(|e| {
        Error::from(ErrorKind::Invalid(format!(
            "cannot create {}: {e}",
            config.out.display()
        )))
    })?;
    let deadline = config.duration.map(|d| Instant::now() + d);
    let dds_err = |e: telecho_core::Error| -> Error { ErrorKind::Invalid(e.to_string()).into() };
    let mut dds = open_node(config.domain_id, "/", "telecho_perception").map_err(dds_err)?;
    let image_sub = subscription::<Image>(&mut dds, "/us/image", frame_qos(64)).map_err(dds_err)?;
    let pose_sub =
        subscription::<PoseStamped>(&mut dds, "/us/probe_pose", frame_qos(64)).map_err(dds_err)?;
    let info_sub =
        subscription::<StringMsg>(&mut dds, "/us/frame_info", frame_qos(64)).map_err(dds_err)?;
    let spacing_sub = subscription::<Vector3Stamped>(&mut dds, "/us/pixel_spacing", frame_qos(64))
        .map_err(dds_err)?;
    let tf_static_sub =
        subscription::<TFMessage>(&mut dds, "/tf_static", latched_qos()).map_err(dds_err)?;
    let status_sub =
        subscription::<StringMsg>(&mut dds, "/scan/status", latched_qos()).map_err(dds_err)?;
    let protocol_sub =
        subscription::<StringMsg>(&mut dds, "/scan/protocol", latched_qos()).map_err(dds_err)?;
    let tf_static_pub =
        publisher::<TFMessage>(&mut dds, "/tf_static", latched_qos()).map_err(dds_err)?;
    let landmarks_pub = publisher::<MarkerArray>(&mut dds, "/perception/landmarks", latched_qos())
        .map_err(dds_err)?;
    let registration_pub =
        publisher::<StringMsg>(&mut dds, "/perception/registration", latched_qos())
            .map_err(dds_err)?;
    let server = trigger_server(&mut dds, "/perception/register", DEFAULT_SERVICE_MAPPING)
        .map_err(dds_err)?;
    tracing::info!(domain = config.domain_id, "perception node running");

    let mut node = Node {
        out: config.out.clone(),
        model,
        landmarks_source: config.landmarks_source,
        load_ct_s: config.load_ct_s,
        ct_preprocessing_s: config.ct_preprocessing_s,
        detector: config.detector,
        threads: config.threads,
        protocol: None,
        status: None,
        t_probe_image: None,
        spacing_m: None,
        c: FrameCollector::default(),
        registered_run: None,
        last: None,
        summary: NodeSummary {
            domain_id: config.domain_id,
            ..NodeSummary::default()
        },
    };
    let started = Instant::now();
    let publish =
        |reg: &RegistrationReport, json: &str, t_base_ct: &Transform| -> Result<(), String> {
            let header = Header::new(now_ns(), frames::BASE.to_owned());
            tf_static_pub
                .publish(TFMessage {
                    transforms: vec![transform_stamped(
                        &header,
                        frames::BASE,
                        frames::CT,
                        t_base_ct,
                    )],
                })
                .map_err(|e| format!("/tf_static: {e:?}"))?;
            landmarks_pub
                .publish(landmark_markers(&header, &reg.landmarks))
                .map_err(|e| format!("/perception/landmarks: {e:?}"))?;
            registration_pub
                .publish(StringMsg {
                    data: json.to_owned(),
                })
                .map_err(|e| format!("/perception/registration: {e:?}"))?;
            Ok(())
        };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || stop.load(Ordering::Relaxed) {
            break;
        }
        let mut busy = false;
        while let Ok(Some((msg, _))) = protocol_sub.take() {
            match serde_json::from_str::<ProtocolInfo>(&msg.data) {
                Ok(p) => node.protocol = Some(p),
                Err(e) => tracing::warn!("unreadable /scan/protocol: {e}"),
            }
        }
        while let Ok(Some((msg, _))) = tf_static_sub.take() {
            for t in &msg.transforms {
                if t.header.frame_id == frames::PROBE_TIP && t.child_frame_id == frames::US_IMAGE {
                    node.t_probe_image = Some(Transform::from(&t.transform));
                }
            }
        }
        while let Ok(Some((msg, _))) = spacing_sub.take() {
            let v = msg.vector;
            if v.x.is_finite() && v.x > 0.0 && v.y.is_finite() && v.y > 0.0 {
                node.spacing_m = Some([v.x, v.y]);
            }
        }
        busy |= drain_frames(&mut node.c, &image_sub, &pose_sub, &info_sub);
        node.c.prune();
        let mut want_register = false;
        while let Ok(Some((msg, _))) = status_sub.take() {
            match serde_json::from_str::<ScanStatus>(&msg.data) {
                Ok(s) => {
                    tracing::info!(run = s.run, state = %s.state, sweep = s.sweep_index, "scan status");
                    if config.register_when_done
                        && s.state == "done"
                        && node.registered_run != Some(s.run)
                    {
                        want_register = true;
                    }
                    node.status = Some(s);
                }
                Err(e) => tracing::warn!("unreadable /scan/status: {e}"),
            }
        }
        if want_register {
            // Give the last frames of the run a moment to arrive.
            std::thread::sleep(Duration::from_millis(300));
            drain_frames(&mut node.c, &image_sub, &pose_sub, &info_sub);
            let response = node.register(&publish);
            if let Some(s) = &node.status {
                node.registered_run = Some(s.run);
            }
            tracing::info!(success = response.success, "registration after the scan");
        }
        loop {
            let (id, _) = match server.receive_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("unreadable /perception/register request: {e:?}");
                    break;
                }
            };
            busy = true;
            node.summary.service_requests += 1;
            drain_frames(&mut node.c, &image_sub, &pose_sub, &info_sub);
            let response = node.register(&publish);
            let success = response.success;
            if let Err(e) = server.send_response(id, Wire(response)) {
                tracing::warn!("cannot answer /perception/register: {e:?}");
            }
            if success && config.exit_after_register {
                break;
            }
        }
        if config.exit_after_register && node.summary.registrations > 0 {
            // Give the reliable writers time to deliver the results (and their repairs) to
            // the subscribers before the participant closes.
            std::thread::sleep(Duration::from_secs(1));
            break;
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    node.summary.duration_s = started.elapsed().as_secs_f64();
    node.summary.frames_collected = node.c.frames.len();
    node.summary.frames_received = node.c.received;
    node.summary.frames_refused = node.c.refused;
    node.summary.run = node.c.run;
    node.summary.scan_state = node.status.as_ref().map(|s| s.state.clone());
    Ok(node.summary)
}

/// Takes what is queued on the frame topics; true when anything was.
fn drain_frames(
    c: &mut FrameCollector,
    image: &Subscription<Image>,
    pose: &Subscription<PoseStamped>,
    info: &Subscription<StringMsg>,
) -> bool {
    let mut any = false;
    while let Ok(Some((msg, _))) = image.take() {
        c.image(msg);
        any = true;
    }
    while let Ok(Some((msg, _))) = pose.take() {
        c.pose(&msg);
        any = true;
    }
    while let Ok(Some((msg, _))) = info.take() {
        c.info(&msg.data);
        any = true;
    }
    any
}

fn pose_transform(msg: &PoseStamped) -> Transform {
    let p = &msg.pose;
    let rt = telecho_core::ros_msgs::Transform {
        translation: MsgVector3 {
            x: p.position.x,
            y: p.position.y,
            z: p.position.z,
        },
        rotation: p.orientation,
    };
    Transform::from(&rt)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Joins the `/us/*` pieces of each frame on their stamp and keeps the complete frames of the
/// newest scan run taken in `contact` or `sweep`. No I/O.
#[derive(Default)]
struct FrameCollector {
    partial: BTreeMap<u64, Partial>,
    /// Frame size, fixed by the first accepted frame.
    size: Option<(u32, u32)>,
    /// Scan run of `frames`.
    run: u32,
    frames: Vec<Collected>,
    /// Complete frames (image, pose and info joined).
    received: u64,
    /// Frames refused: wrong size or encoding, non-finite pose or force, unreadable info.
    refused: u64,
}

impl FrameCollector {
    fn image(&mut self, msg: Image) {
        let ns = msg.header.stamp.as_nanos();
        self.partial.entry(ns).or_default().image = Some(msg);
        self.complete(ns);
    }

    fn pose(&mut self, msg: &PoseStamped) {
        let ns = msg.header.stamp.as_nanos();
        self.partial.entry(ns).or_default().pose = Some(pose_transform(msg));
        self.complete(ns);
    }

    fn info(&mut self, json: &str) {
        match serde_json::from_str::<FrameInfo>(json) {
            Ok(info) => {
                let ns = info.stamp_ns;
                self.partial.entry(ns).or_default().info = Some(info);
                self.complete(ns);
            }
            Err(e) => {
                self.refused += 1;
                tracing::warn!("unreadable /us/frame_info: {e}");
            }
        }
    }

    /// Moves the frame stamped `ns` to the sweep once its image, pose and info are all in.
    fn complete(&mut self, ns: u64) {
        let ready = self
            .partial
            .get(&ns)
            .is_some_and(|p| p.image.is_some() && p.pose.is_some() && p.info.is_some());
        if !ready {
            return;
        }
        let Some(p) = self.partial.remove(&ns) else {
            return;
        };
        let (Some(image), Some(pose), Some(info)) = (p.image, p.pose, p.info) else {
            return;
        };
        self.received += 1;
        let size_ok = image.encoding == "mono8"
            && image.step == image.width
            && image.width > 0
            && image.height > 0
            && image.data.len() == image.width as usize * image.height as usize
            && self.size.is_none_or(|s| s == (image.width, image.height));
        let finite = pose.is_finite()
            && info.force_n.is_finite()
            && info.force_setpoint_n.is_finite()
            && info.time_s.is_finite();
        if !size_ok || !finite {
            self.refused += 1;
            tracing::warn!(
                width = image.width,
                height = image.height,
                encoding = %image.encoding,
                "ultrasound frame refused (size, encoding, pose or force)"
            );
            return;
        }
        self.size = Some((image.width, image.height));
        let scanning = matches!(info.state.as_deref(), Some("contact" | "sweep"));
        if !scanning {
            return;
        }
        if info.run != self.run {
            if info.run < self.run {
                return; // A stale frame of an earlier run.
            }
            tracing::info!(run = info.run, "new scan run: collecting a new sweep");
            self.run = info.run;
            self.frames.clear();
        }
        self.frames.push(Collected {
            info,
            t_base_probe: pose,
            pixels: image.data,
        });
    }

    /// Drops pieces of frames that will never complete.
    fn prune(&mut self) {
        let Some((&newest, _)) = self.partial.last_key_value() else {
            return;
        };
        let horizon = newest.saturating_sub(PARTIAL_HORIZON_NS);
        self.partial = self.partial.split_off(&horizon);
    }
}

impl Node {
    /// Writes the sweep, registers, publishes; the answer for the service.
    fn register(
        &mut self,
        publish: &dyn Fn(&RegistrationReport, &str, &Transform) -> Result<(), String>,
    ) -> TriggerResponse {
        if let Some((run, n, answer)) = &self.last {
            if *run == self.c.run && *n == self.c.frames.len() {
                return answer.clone();
            }
        }
        let answer = match self.try_register(publish) {
            Ok(json) => {
                self.summary.registrations += 1;
                TriggerResponse {
                    success: true,
                    message: json,
                }
            }
            Err(e) => {
                self.summary.refusals += 1;
                let reason = e;
                tracing::warn!("registration refused: {reason}");
                self.summary.refusal = Some(reason.clone());
                TriggerResponse {
                    success: false,
                    message: reason,
                }
            }
        };
        self.last = Some((self.c.run, self.c.frames.len(), answer.clone()));
        answer
    }

    fn try_register(
        &mut self,
        publish: &dyn Fn(&RegistrationReport, &str, &Transform) -> Result<(), String>,
    ) -> Result<String, String> {
        if self.c.frames.is_empty() {
            return Err(
                "no ultrasound frames of a scan yet (start one with /scan/start)".to_string(),
            );
        }
        let protocol = self
            .protocol
            .clone()
            .ok_or_else(|| "no /scan/protocol heard: is the control node running?".to_string())?;
        let t_probe_image = self
            .t_probe_image
            .ok_or_else(|| "no probe_tip → us_image calibration on /tf_static yet".to_string())?;
        let spacing = self
            .spacing_m
            .ok_or_else(|| "no /us/pixel_spacing heard yet".to_string())?;
        let dir = self.out.join("sweep");
        self.write_sweep(&dir, &protocol, &t_probe_image, spacing)?;
        let sweep = Sweep::read(&dir).map_err(|e| e.to_string())?;
        let outcome = register_with(&self.model, &sweep, self.detector, self.threads)
            .map_err(|e| e.to_string())?;
        if let Some(r) = &outcome.registration.refusal {
            return Err(format!("registration refused: {}", r.reason));
        }
        let timing = Timing {
            load_ct_s: self.load_ct_s,
            ct_preprocessing_s: self.ct_preprocessing_s,
            read_sweep_s: 0.0,
            compound_s: outcome.compound_s,
            register_s: outcome.register_s,
        };
        let out = report(&outcome, timing, self.landmarks_source);
        let json = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        let path = self.out.join("registration.json");
        let text = serde_json::to_vec_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        publish(&out, &json.to_string(), &outcome.registration.t_base_ct)?;
        self.summary.registration = Some(json.clone());
        tracing::info!(
            rmse_mm = out.rmse_mm,
            uncertainty_mm = out.uncertainty_mm,
            frames = self.c.frames.len(),
            "registered"
        );
        Ok(json.to_string())
    }

    /// Writes the collected frames as `dir/sweep.json` + `dir/frames.u8`.
    fn write_sweep(
        &mut self,
        dir: &Path,
        protocol: &ProtocolInfo,
        t_probe_image: &Transform,
        [sx, sz]: [f64; 2],
    ) -> Result<(), String> {
        let (width, height) = self.c.size.ok_or_else(|| "no frame size yet".to_string())?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.c
            .frames
            .sort_by(|a, b| a.info.time_s.total_cmp(&b.info.time_s));
        // The pixel file is written in time order and the records in sweep order: sweeps run
        // one after the other, so the two agree.
        let in_order = self
            .c
            .frames
            .windows(2)
            .all(|w| w[0].info.sweep_index <= w[1].info.sweep_index);
        if !in_order {
            return Err("frames of the sweeps are interleaved in time".to_string());
        }
        let path = dir.join("frames.u8");
        let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut w = BufWriter::new(File::create(&path).map_err(io)?);
        for f in &self.c.frames {
            w.write_all(&f.pixels).map_err(io)?;
        }
        w.flush().map_err(io)?;
        let status = self.status.as_ref().filter(|s| s.run == self.c.run);
        let run_done = status.is_some_and(|s| s.state == "done");
        let current_sweep = status.map_or(usize::MAX, |s| s.sweep_index);
        let mut sweeps = Vec::new();
        let mut records = Vec::with_capacity(self.c.frames.len());
        for (index, s) in protocol.sweeps.iter().enumerate() {
            let first = records.len();
            for f in self.c.frames.iter().filter(|f| f.info.sweep_index == index) {
                records.push(FrameRecord {
                    index: records.len(),
                    time_s: f.info.time_s,
                    t_base_probe: f.t_base_probe.to_rows(),
                    force_n: f.info.force_n,
                    force_setpoint_n: f.info.force_setpoint_n,
                    sweep: s.name.clone(),
                    sweep_index: index,
                    state: if f.info.state.as_deref() == Some("sweep") {
                        "sweep"
                    } else {
                        "contact"
                    },
                    q_rad: Vec::new(),
                });
            }
            let count = records.len() - first;
            sweeps.push(SweepEntry {
                index,
                name: s.name.clone(),
                orientation: match s.orientation.as_str() {
                    "sagittal" => "sagittal",
                    "transverse" => "transverse",
                    other => return Err(format!("sweep `{}`: orientation `{other}`", s.name)),
                },
                force_n: s.force_n,
                speed_m_s: s.speed_m_s,
                tilt_deg: s.tilt_deg,
                first_frame: first,
                frame_count: count,
                completed: count > 0 && (run_done || index < current_sweep),
            });
        }
        // Every frame must name a sweep of the protocol, or the pixel file would not match.
        if records.len() != self.c.frames.len() {
            return Err(format!(
                "{} frames name sweeps the protocol does not have",
                self.c.frames.len() - records.len()
            ));
        }
        let r = t_probe_image.rotation;
        let t = t_probe_image.translation;
        let m = |i: usize| [r[(i, 0)] * sx, r[(i, 1)] * sz, r[(i, 2)] * sx, t[i]];
        let header = SweepHeader {
            format: FORMAT,
            frames_file: "frames.u8",
            pixel_type: "u8",
            width: width as usize,
            height: height as usize,
            frame_bytes: width as usize * height as usize,
            frame_count: records.len(),
            pixel_spacing_m: [sx, sz],
            t_probe_image: [m(0), m(1), m(2), [0.0, 0.0, 0.0, 1.0]],
            base_frame: frames::BASE,
            probe_frame: frames::PROBE_TIP,
            pose_source: "ros2:/us/probe_pose",
            force_source: "controller_estimate",
            probe: ProbeInfo {
                frequency_hz: protocol.probe.frequency_hz,
                aperture_m: protocol.probe.aperture_m,
                depth_m: protocol.probe.depth_m,
                slice_thickness_m: protocol.probe.slice_thickness_m,
            },
            imaging: None,
            arm: protocol.arm.clone(),
            urdf: protocol.urdf.clone(),
            seed: protocol.seed,
            protocol: protocol.name.clone(),
            completed: run_done,
            sweeps,
        };
        write_json_with_frames(&dir.join("sweep.json"), &header, &records)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The registered CT landmarks as RViz/Foxglove markers in the base frame: a sphere (radius
/// from the landmark's uncertainty, at least 2 mm) and a label per landmark.
fn landmark_markers(header: &Header, landmarks: &[LandmarkOut]) -> MarkerArray {
    let mut markers = vec![Marker {
        header: header.clone(),
        ns: "telecho/landmarks".into(),
        action: Marker::DELETEALL,
        ..Marker::default()
    }];
    for (i, l) in landmarks.iter().enumerate() {
        let xyz = l.xyz;
        if xyz.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let name = &l.name;
        let confidence = l.confidence.clamp(0.0, 1.0) as f32;
        let d = (2.0 * l.uncertainty_mm.max(2.0)) * 1e-3;
        let mut pose = telecho_core::ros_msgs::Pose {
            position: Point {
                x: xyz[0],
                y: xyz[1],
                z: xyz[2],
            },
            ..Default::default()
        };
        pose.orientation.w = 1.0;
        let id = i32::try_from(i).unwrap_or(i32::MAX);
        markers.push(Marker {
            header: header.clone(),
            ns: "telecho/landmarks".into(),
            id: 2 * id,
            type_: Marker::SPHERE,
            action: Marker::ADD,
            pose,
            scale: MsgVector3 { x: d, y: d, z: d },
            color: ColorRGBA {
                r: 1.0 - confidence,
                g: confidence,
                b: 0.2,
                a: 0.9,
            },
            lifetime: telecho_core::ros_msgs::Duration::default(),
            ..Marker::default()
        });
        let mut label = pose;
        label.position.z += 0.01;
        markers.push(Marker {
            header: header.clone(),
            ns: "telecho/landmark_names".into(),
            id: 2 * id + 1,
            type_: Marker::TEXT_VIEW_FACING,
            action: Marker::ADD,
            pose: label,
            scale: MsgVector3 {
                x: 0.0,
                y: 0.0,
                z: 0.006,
            },
            color: ColorRGBA {
                r: 1.0,
                g: 1.0,
                b: 1.0,
                a: 1.0,
            },
            text: name.to_owned(),
            ..Marker::default()
        });
    }
    MarkerArray { markers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telecho_core::ros_msgs::{Pose, Quaternion, Time};

    const W: u32 = 4;
    const H: u32 = 3;

    fn image(ns: u64, w: u32, h: u32, encoding: &str) -> Image {
        Image {
            header: Header {
                stamp: Time::from_nanos(ns),
                frame_id: frames::US_IMAGE.into(),
            },
            height: h,
            width: w,
            encoding: encoding.into(),
            is_bigendian: 0,
            step: w,
            data: vec![7; (w * h) as usize],
        }
    }

    fn pose(ns: u64, x: f64) -> PoseStamped {
        PoseStamped {
            header: Header {
                stamp: Time::from_nanos(ns),
                frame_id: frames::BASE.into(),
            },
            pose: Pose {
                position: Point { x, y: 0.1, z: 0.2 },
                orientation: Quaternion {
                    x: 0.0,
                    y: 0.0,
                    z: 0.0,
                    w: 1.0,
                },
            },
        }
    }

    fn info(ns: u64, run: u32, state: Option<&str>, force_n: f64) -> String {
        serde_json::to_string(&FrameInfo {
            stamp_ns: ns,
            time_s: ns as f64 * 1e-9,
            force_n,
            force_setpoint_n: 8.0,
            run,
            state: state.map(str::to_owned),
            sweep_index: 0,
        })
        .unwrap()
    }

    fn frame(c: &mut FrameCollector, ns: u64, run: u32, state: Option<&str>) {
        c.info(&info(ns, run, state, 8.0));
        c.pose(&pose(ns, 0.3));
        c.image(image(ns, W, H, "mono8"));
    }

    #[test]
    fn pieces_join_on_their_stamp_in_any_order() {
        let mut c = FrameCollector::default();
        // Image first, then pose, then info; and the other way round for the next frame.
        c.image(image(1_000, W, H, "mono8"));
        c.pose(&pose(1_000, 0.31));
        assert_eq!(c.received, 0, "not complete without its info");
        c.info(&info(1_000, 1, Some("sweep"), 8.1));
        c.info(&info(2_000, 1, Some("contact"), 3.0));
        c.pose(&pose(2_000, 0.32));
        c.image(image(2_000, W, H, "mono8"));
        assert_eq!((c.received, c.refused, c.frames.len(), c.run), (2, 0, 2, 1));
        assert_eq!(c.frames[0].t_base_probe.translation.x, 0.31);
        assert_eq!(c.frames[0].info.force_n, 8.1);
        assert_eq!(c.frames[1].info.force_n, 3.0);
        assert!(c.partial.is_empty());
        // Frames outside contact and sweep (approach, no scan) are received but not kept.
        frame(&mut c, 3_000, 1, Some("approach"));
        frame(&mut c, 4_000, 1, None);
        assert_eq!((c.received, c.frames.len()), (4, 2));
    }

    #[test]
    fn malformed_frames_are_refused_and_counted() {
        let mut c = FrameCollector::default();
        frame(&mut c, 1_000, 1, Some("sweep"));
        // Wrong size for this stream, wrong encoding, a short buffer.
        c.info(&info(2_000, 1, Some("sweep"), 8.0));
        c.pose(&pose(2_000, 0.3));
        c.image(image(2_000, W + 1, H, "mono8"));
        c.info(&info(3_000, 1, Some("sweep"), 8.0));
        c.pose(&pose(3_000, 0.3));
        c.image(image(3_000, W, H, "rgb8"));
        let mut short = image(4_000, W, H, "mono8");
        short.data.pop();
        c.info(&info(4_000, 1, Some("sweep"), 8.0));
        c.pose(&pose(4_000, 0.3));
        c.image(short);
        // A NaN pose, a NaN force, unreadable info.
        c.info(&info(5_000, 1, Some("sweep"), 8.0));
        c.pose(&pose(5_000, f64::NAN));
        c.image(image(5_000, W, H, "mono8"));
        c.info(&info(6_000, 1, Some("sweep"), f64::NAN));
        c.pose(&pose(6_000, 0.3));
        c.image(image(6_000, W, H, "mono8"));
        c.info("{not json");
        assert_eq!(c.refused, 6);
        assert_eq!(c.frames.len(), 1, "only the good frame is kept");
    }

    #[test]
    fn a_new_run_starts_a_new_sweep_and_stale_frames_are_dropped() {
        let mut c = FrameCollector::default();
        frame(&mut c, 1_000, 1, Some("sweep"));
        frame(&mut c, 2_000, 1, Some("sweep"));
        frame(&mut c, 3_000, 2, Some("contact"));
        assert_eq!((c.run, c.frames.len()), (2, 1));
        frame(&mut c, 2_500, 1, Some("sweep"));
        assert_eq!((c.run, c.frames.len()), (2, 1), "a late frame of run 1");
    }

    #[test]
    fn landmarks_become_a_sphere_and_a_label_each_and_non_finite_ones_are_left_out() {
        let lm = |name: &str, x: f64, uncertainty_mm: f64| LandmarkOut {
            name: name.into(),
            xyz: [x, 0.1, 0.2],
            confidence: 0.8,
            uncertainty_mm,
            xyz_vertebra: [x, 0.1, 0.2],
        };
        let header = Header::new(0, frames::BASE.to_owned());
        let m = landmark_markers(
            &header,
            &[
                lm("L4_spinous_tip", 0.3, 1.0),
                lm("L4_lamina_left", f64::NAN, 3.0),
            ],
        );
        assert_eq!(m.markers.len(), 3);
        assert_eq!(m.markers[0].action, Marker::DELETEALL);
        let (sphere, label) = (&m.markers[1], &m.markers[2]);
        assert_eq!(
            (sphere.type_, label.type_),
            (Marker::SPHERE, Marker::TEXT_VIEW_FACING)
        );
        assert_eq!(sphere.pose.position.x, 0.3);
        assert!(
            (sphere.scale.x - 0.004).abs() < 1e-12,
            "at least 2 mm radius"
        );
        assert_eq!(label.text, "L4_spinous_tip");
        assert_eq!(sphere.header.frame_id, frames::BASE);
    }

    #[test]
    fn pieces_that_never_complete_are_pruned_after_five_seconds() {
        let mut c = FrameCollector::default();
        c.image(image(1_000_000_000, W, H, "mono8"));
        c.pose(&pose(2_000_000_000, 0.3));
        c.prune();
        assert_eq!(c.partial.len(), 2);
        c.pose(&pose(6_500_000_000, 0.3));
        c.prune();
        assert_eq!(
            c.partial.keys().copied().collect::<Vec<_>>(),
            [2_000_000_000, 6_500_000_000]
        );
    }
}
