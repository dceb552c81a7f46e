//! `telecho node perception`: the perception node as its own process, on ROS 2.
//!
//! It collects the control node's ultrasound stream into a tracked sweep and registers the
//! patient's CBCT to it:
//!
//! | topic / service | type | direction |
//! |---|---|---|
//! | `/us/image` | `sensor_msgs/msg/Image` (mono8) | in |
//! | `/us/probe_pose` | `geometry_msgs/msg/PoseStamped` (measured tip pose at acquisition) | in |
//! | `/us/frame_info` | `std_msgs/msg/String` (JSON: force, scan run, state, sweep) | in |
//! | `/us/pixel_spacing` | `geometry_msgs/msg/Vector3Stamped` (x column, y row spacing, m) | in |
//! | `/tf_static` | `tf2_msgs/msg/TFMessage` (`probe_tip` → `us_image`) | in; out: `base_link` → `ct` |
//! | `/scan/protocol`, `/scan/status` | `std_msgs/msg/String` (JSON, latched) | in |
//! | `/perception/register` | `std_srvs/srv/Trigger` | service |
//! | `/perception/registration` | `std_msgs/msg/String` (JSON, latched) | out |
//! | `/perception/landmarks` | `visualization_msgs/msg/MarkerArray` (latched) | out |
//!
//! The four `/us/*` messages of a frame carry the same stamp; the node joins them on it and keeps
//! the frames the executor took in `contact` or `sweep` of the newest scan run (a new run starts
//! a new sweep). On `/perception/register` — or when the run reports `done`, with
//! `--register-when-done` — it writes the frames as a `telecho-sweep/1` directory
//! (`OUT/sweep/`, the format `telecho scan` writes, `q_rad` left out: ROS 2 carries the pose)
//! and runs the same pipeline as `telecho perception register` on it. A registration publishes
//! `base_link` → `ct` on `/tf_static`, the CT landmarks in the base frame as spheres and labels,
//! the full result as JSON (also `OUT/registration.json`) and answers the service with that
//! JSON. A refusal (too little bone, ambiguous level) answers `success: false` with the reason
//! and publishes nothing. A repeated request over the same frames answers from the last result.
//!
//! Exit codes: 0 the run ended; 1 DDS failed; 2 bad arguments or an unreadable CT.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use serde::Serialize;
use telecho_control::ros2::{
    self, FrameInfo, ProtocolInfo, Ros2Config, RosSubscription, ScanStatus, Wire,
};
use telecho_core::ros_msgs::{
    ColorRGBA, Header, Image, Marker, MarkerArray, Point, PoseStamped, StringMsg, TFMessage,
    TriggerResponse, Vector3 as MsgVector3, Vector3Stamped,
};
use telecho_core::{frames, Transform};
use telecho_perception::registration::CtModel;
use telecho_perception::sweep::Sweep;

use crate::cli_error::CliError;
use crate::perception::register::{register_out, register_with, DetectorChoice, Timing};
use crate::scan::{
    write_json_with_frames, FrameRecord, ProbeInfo, SweepEntry, SweepHeader, SWEEP_FORMAT,
};
use crate::CliResult;

/// Partial frames older than this (behind the newest stamp) are dropped, ns.
const PARTIAL_HORIZON_NS: u64 = 5_000_000_000;

#[derive(Debug, Args)]
pub(crate) struct PerceptionArgs {
    /// The patient's CBCT: NIfTI (.nii, .nii.gz) or a DICOM series directory.
    #[arg(long, value_name = "FILE")]
    ct: PathBuf,
    /// Where the collected sweep (`sweep/`) and `registration.json` go.
    #[arg(long, value_name = "DIR", default_value = "telecho-perception")]
    out: PathBuf,
    /// Expose the node over ROS 2 (implied: always on).
    #[arg(long)]
    ros2: bool,
    /// DDS domain (default: ROS_DOMAIN_ID, else 0).
    #[arg(long, value_name = "ID")]
    domain_id: Option<u16>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "S")]
    duration_s: Option<f64>,
    /// Register as soon as a scan run reports `done`.
    #[arg(long)]
    register_when_done: bool,
    /// Exit after the first successful registration.
    #[arg(long)]
    exit_after_register: bool,
    /// Per-frame bone detector.
    #[arg(long, value_enum, default_value_t = DetectorChoice::Classical)]
    detector: DetectorChoice,
    /// Threads for detection and the registration search (≥ 1).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
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

/// What the node printed at the end.
#[derive(Debug, Default, Serialize)]
struct Summary {
    domain_id: u16,
    /// Wall time the node ran, s.
    duration_s: f64,
    /// Complete frames received (image, pose and info joined).
    frames_received: u64,
    /// Frames of the current run kept for the sweep.
    frames_collected: usize,
    /// Frames refused (wrong size, non-finite pose, unreadable info).
    frames_refused: u64,
    /// Scan run the frames belong to.
    run: u32,
    /// Last scan state heard.
    scan_state: Option<String>,
    registrations: u64,
    refusals: u64,
    service_requests: u64,
    /// The last successful registration (as `perception register --json`).
    registration: Option<serde_json::Value>,
    /// The last refusal's reason.
    refusal: Option<String>,
}

struct Node {
    args_out: PathBuf,
    model: CtModel,
    landmarks_source: &'static str,
    load_ct_s: f64,
    ct_preprocessing_s: f64,
    detector: DetectorChoice,
    threads: usize,
    protocol: Option<ProtocolInfo>,
    status: Option<ScanStatus>,
    t_probe_image: Option<Transform>,
    spacing_m: Option<[f64; 2]>,
    size: Option<(u32, u32)>,
    partial: BTreeMap<u64, Partial>,
    run: u32,
    frames: Vec<Collected>,
    registered_run: Option<u32>,
    /// Frame count and answer of the last registration attempt.
    last: Option<(u32, usize, TriggerResponse)>,
    summary: Summary,
}

pub(crate) fn run(args: &PerceptionArgs) -> CliResult {
    let _ = args.ros2; // Implied.
    if args.threads == 0 {
        return Err(CliError::input(anyhow!("--threads must be at least 1")));
    }
    let deadline = match args.duration_s {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Instant::now() + Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(CliError::input(anyhow!(
                "--duration-s {s} must be a positive number of seconds"
            )))
        }
    };
    let domain_id = match args.domain_id {
        Some(d) if d <= 232 => d,
        Some(d) => return Err(CliError::input(anyhow!("--domain-id {d} is outside 0–232"))),
        None => Ros2Config::domain_from_env().map_err(CliError::input)?,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))
        .map_err(CliError::input)?;
    let t = Instant::now();
    let ct = telecho_perception::ct_load::load_ct(&args.ct)
        .map_err(|e| CliError::input(anyhow!("--ct {}: {e}", args.ct.display())))?;
    let load_ct_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let model = CtModel::from_volume(&ct).map_err(|e| {
        CliError::input(anyhow!(
            "--ct {}: no usable bone surface: {e}",
            args.ct.display()
        ))
    })?;
    drop(ct);
    let ct_preprocessing_s = t.elapsed().as_secs_f64();
    tracing::info!(
        load_ct_s,
        ct_preprocessing_s,
        landmarks = model.landmarks().len(),
        "CBCT ready"
    );

    let mut dds =
        ros2::open_node(domain_id, "/", "telecho_perception").map_err(CliError::failed)?;
    let dds_err = |e: ros2::Ros2Error| CliError::failed(anyhow!(e));
    let image_sub =
        ros2::subscription::<Image>(&mut dds, "/us/image", ros2::frame_qos(64)).map_err(dds_err)?;
    let pose_sub =
        ros2::subscription::<PoseStamped>(&mut dds, "/us/probe_pose", ros2::frame_qos(64))
            .map_err(dds_err)?;
    let info_sub = ros2::subscription::<StringMsg>(&mut dds, "/us/frame_info", ros2::frame_qos(64))
        .map_err(dds_err)?;
    let spacing_sub =
        ros2::subscription::<Vector3Stamped>(&mut dds, "/us/pixel_spacing", ros2::frame_qos(64))
            .map_err(dds_err)?;
    let tf_static_sub =
        ros2::subscription::<TFMessage>(&mut dds, "/tf_static", ros2::latched_qos())
            .map_err(dds_err)?;
    let status_sub = ros2::subscription::<StringMsg>(&mut dds, "/scan/status", ros2::latched_qos())
        .map_err(dds_err)?;
    let protocol_sub =
        ros2::subscription::<StringMsg>(&mut dds, "/scan/protocol", ros2::latched_qos())
            .map_err(dds_err)?;
    let tf_static_pub = ros2::publisher::<TFMessage>(&mut dds, "/tf_static", ros2::latched_qos())
        .map_err(dds_err)?;
    let landmarks_pub =
        ros2::publisher::<MarkerArray>(&mut dds, "/perception/landmarks", ros2::latched_qos())
            .map_err(dds_err)?;
    let registration_pub =
        ros2::publisher::<StringMsg>(&mut dds, "/perception/registration", ros2::latched_qos())
            .map_err(dds_err)?;
    let server = ros2::trigger_server(
        &mut dds,
        "/perception/register",
        Ros2Config::default().service_mapping,
    )
    .map_err(dds_err)?;
    tracing::info!(domain = domain_id, "perception node running");

    let mut node = Node {
        args_out: args.out.clone(),
        model,
        landmarks_source: "detected",
        load_ct_s,
        ct_preprocessing_s,
        detector: args.detector,
        threads: args.threads,
        protocol: None,
        status: None,
        t_probe_image: None,
        spacing_m: None,
        size: None,
        partial: BTreeMap::new(),
        run: 0,
        frames: Vec::new(),
        registered_run: None,
        last: None,
        summary: Summary {
            domain_id,
            ..Summary::default()
        },
    };
    let started = Instant::now();
    crate::teleop::serve::install_interrupt_handler();
    let publish = |reg: &serde_json::Value, t_base_ct: &Transform| -> anyhow::Result<()> {
        let header = Header::new(now_ns(), frames::BASE.to_owned());
        tf_static_pub
            .publish(TFMessage {
                transforms: vec![ros2::transform_stamped(
                    &header,
                    frames::BASE,
                    frames::CT,
                    t_base_ct,
                )],
            })
            .map_err(|e| anyhow!("/tf_static: {e:?}"))?;
        landmarks_pub
            .publish(landmark_markers(&header, reg))
            .map_err(|e| anyhow!("/perception/landmarks: {e:?}"))?;
        registration_pub
            .publish(StringMsg {
                data: reg.to_string(),
            })
            .map_err(|e| anyhow!("/perception/registration: {e:?}"))?;
        Ok(())
    };
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d)
            || crate::teleop::serve::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
        {
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
                if t.header.frame_id == frames::PROBE_TIP
                    && t.child_frame_id == ros2::US_IMAGE_FRAME
                {
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
        while let Ok(Some((msg, _))) = image_sub.take() {
            busy = true;
            let ns = msg.header.stamp.as_nanos();
            node.partial.entry(ns).or_default().image = Some(msg);
            node.complete(ns);
        }
        while let Ok(Some((msg, _))) = pose_sub.take() {
            busy = true;
            let ns = msg.header.stamp.as_nanos();
            let t = pose_transform(&msg);
            node.partial.entry(ns).or_default().pose = Some(t);
            node.complete(ns);
        }
        while let Ok(Some((msg, _))) = info_sub.take() {
            busy = true;
            match serde_json::from_str::<FrameInfo>(&msg.data) {
                Ok(info) => {
                    let ns = info.stamp_ns;
                    node.partial.entry(ns).or_default().info = Some(info);
                    node.complete(ns);
                }
                Err(e) => {
                    node.summary.frames_refused += 1;
                    tracing::warn!("unreadable /us/frame_info: {e}");
                }
            }
        }
        node.prune();
        let mut want_register = false;
        while let Ok(Some((msg, _))) = status_sub.take() {
            match serde_json::from_str::<ScanStatus>(&msg.data) {
                Ok(s) => {
                    tracing::info!(run = s.run, state = %s.state, sweep = s.sweep_index, "scan status");
                    if args.register_when_done
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
            continue_draining(&mut node, &image_sub, &pose_sub, &info_sub);
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
            continue_draining(&mut node, &image_sub, &pose_sub, &info_sub);
            let response = node.register(&publish);
            let success = response.success;
            if let Err(e) = server.send_response(id, Wire(response)) {
                tracing::warn!("cannot answer /perception/register: {e:?}");
            }
            if success && args.exit_after_register {
                break;
            }
        }
        if args.exit_after_register && node.summary.registrations > 0 {
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
    node.summary.frames_collected = node.frames.len();
    node.summary.run = node.run;
    node.summary.scan_state = node.status.as_ref().map(|s| s.state.clone());
    let s = &node.summary;
    if args.json {
        println!("{}", serde_json::to_string(s).map_err(CliError::failed)?);
    } else {
        println!(
            "perception node: {} frames received, {} collected (run {}), {} registrations, {} \
             refusals, {} service requests",
            s.frames_received,
            s.frames_collected,
            s.run,
            s.registrations,
            s.refusals,
            s.service_requests
        );
        if let Some(r) = &s.refusal {
            println!("last refusal: {r}");
        }
    }
    Ok(())
}

/// Takes what is queued on the frame topics (before a registration, so it sees every frame).
fn continue_draining(
    node: &mut Node,
    image: &RosSubscription<Image>,
    pose: &RosSubscription<PoseStamped>,
    info: &RosSubscription<StringMsg>,
) {
    while let Ok(Some((msg, _))) = image.take() {
        let ns = msg.header.stamp.as_nanos();
        node.partial.entry(ns).or_default().image = Some(msg);
        node.complete(ns);
    }
    while let Ok(Some((msg, _))) = pose.take() {
        let ns = msg.header.stamp.as_nanos();
        node.partial.entry(ns).or_default().pose = Some(pose_transform(&msg));
        node.complete(ns);
    }
    while let Ok(Some((msg, _))) = info.take() {
        if let Ok(i) = serde_json::from_str::<FrameInfo>(&msg.data) {
            let ns = i.stamp_ns;
            node.partial.entry(ns).or_default().info = Some(i);
            node.complete(ns);
        }
    }
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

impl Node {
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
        self.summary.frames_received += 1;
        let size_ok = image.encoding == "mono8"
            && image.step == image.width
            && image.data.len() == image.width as usize * image.height as usize
            && self.size.is_none_or(|s| s == (image.width, image.height));
        if !size_ok || !pose.is_finite() || !info.force_n.is_finite() {
            self.summary.frames_refused += 1;
            tracing::warn!(
                width = image.width,
                height = image.height,
                encoding = %image.encoding,
                "ultrasound frame refused (size, encoding or pose)"
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
            self.last = None;
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

    /// Writes the sweep, registers, publishes; the answer for the service.
    fn register(
        &mut self,
        publish: &dyn Fn(&serde_json::Value, &Transform) -> anyhow::Result<()>,
    ) -> TriggerResponse {
        if let Some((run, n, answer)) = &self.last {
            if *run == self.run && *n == self.frames.len() {
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
                let reason = format!("{e:#}");
                tracing::warn!("registration refused: {reason}");
                self.summary.refusal = Some(reason.clone());
                TriggerResponse {
                    success: false,
                    message: reason,
                }
            }
        };
        self.last = Some((self.run, self.frames.len(), answer.clone()));
        answer
    }

    fn try_register(
        &mut self,
        publish: &dyn Fn(&serde_json::Value, &Transform) -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        if self.frames.is_empty() {
            return Err(anyhow!(
                "no ultrasound frames of a scan yet (start one with /scan/start)"
            ));
        }
        let protocol = self
            .protocol
            .clone()
            .ok_or_else(|| anyhow!("no /scan/protocol heard: is the control node running?"))?;
        let t_probe_image = self
            .t_probe_image
            .ok_or_else(|| anyhow!("no probe_tip → us_image calibration on /tf_static yet"))?;
        let spacing = self
            .spacing_m
            .ok_or_else(|| anyhow!("no /us/pixel_spacing heard yet"))?;
        let dir = self.args_out.join("sweep");
        self.write_sweep(&dir, &protocol, &t_probe_image, spacing)?;
        let sweep = Sweep::read(&dir)?;
        let outcome = register_with(&self.model, &sweep, self.detector, self.threads)?;
        if let Some(r) = &outcome.registration.refusal {
            return Err(anyhow!("registration refused: {}", r.reason));
        }
        let timing = Timing {
            load_ct_s: self.load_ct_s,
            ct_preprocessing_s: self.ct_preprocessing_s,
            read_sweep_s: 0.0,
            compound_s: outcome.compound_s,
            register_s: outcome.register_s,
        };
        let out = register_out(&outcome, timing, self.landmarks_source);
        let json = serde_json::to_value(&out)?;
        let path = self.args_out.join("registration.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        publish(&json, &outcome.registration.t_base_ct)?;
        self.summary.registration = Some(json.clone());
        tracing::info!(
            rmse_mm = out.rmse_mm,
            uncertainty_mm = out.uncertainty_mm,
            frames = self.frames.len(),
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
    ) -> anyhow::Result<()> {
        let (width, height) = self.size.ok_or_else(|| anyhow!("no frame size yet"))?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        self.frames
            .sort_by(|a, b| a.info.time_s.total_cmp(&b.info.time_s));
        // The pixel file is written in time order and the records in sweep order: sweeps run
        // one after the other, so the two agree.
        let in_order = self
            .frames
            .windows(2)
            .all(|w| w[0].info.sweep_index <= w[1].info.sweep_index);
        if !in_order {
            return Err(anyhow!("frames of the sweeps are interleaved in time"));
        }
        let path = dir.join("frames.u8");
        let mut w = BufWriter::new(
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?,
        );
        for f in &self.frames {
            w.write_all(&f.pixels)?;
        }
        w.flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        let status = self.status.as_ref().filter(|s| s.run == self.run);
        let run_done = status.is_some_and(|s| s.state == "done");
        let current_sweep = status.map_or(usize::MAX, |s| s.sweep_index);
        let mut sweeps = Vec::new();
        let mut records = Vec::with_capacity(self.frames.len());
        for (index, s) in protocol.sweeps.iter().enumerate() {
            let first = records.len();
            for f in self.frames.iter().filter(|f| f.info.sweep_index == index) {
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
                    other => return Err(anyhow!("sweep `{}`: orientation `{other}`", s.name)),
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
        if records.len() != self.frames.len() {
            return Err(anyhow!(
                "{} frames name sweeps the protocol does not have",
                self.frames.len() - records.len()
            ));
        }
        let r = t_probe_image.rotation;
        let t = t_probe_image.translation;
        let m = |i: usize| [r[(i, 0)] * sx, r[(i, 1)] * sz, r[(i, 2)] * sx, t[i]];
        let header = SweepHeader {
            format: SWEEP_FORMAT,
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
            arm: protocol.arm.clone(),
            urdf: protocol.urdf.clone(),
            seed: protocol.seed,
            protocol: protocol.name.clone(),
            completed: run_done,
            sweeps,
        };
        write_json_with_frames(&dir.join("sweep.json"), &header, &records)?;
        Ok(())
    }
}

/// The registered CT landmarks as RViz/Foxglove markers in the base frame: a sphere (radius
/// from the landmark's uncertainty, at least 2 mm) and a label per landmark.
fn landmark_markers(header: &Header, reg: &serde_json::Value) -> MarkerArray {
    let mut markers = vec![Marker {
        header: header.clone(),
        ns: "telecho/landmarks".into(),
        action: Marker::DELETEALL,
        ..Marker::default()
    }];
    let Some(list) = reg["landmarks"].as_array() else {
        return MarkerArray { markers };
    };
    for (i, l) in list.iter().enumerate() {
        let xyz: Vec<f64> = l["xyz"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default();
        if xyz.len() != 3 {
            continue;
        }
        let name = l["name"].as_str().unwrap_or_default();
        let confidence = l["confidence"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0) as f32;
        let d = (2.0 * l["uncertainty_mm"].as_f64().unwrap_or(2.0).max(2.0)) * 1e-3;
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
