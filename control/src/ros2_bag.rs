//! Recording and replay of telecho's ROS 2 topics over DDS (`ros2` feature), as `ros2 bag`
//! does: [`record`] subscribes to the topics on a domain and writes every message to an MCAP
//! file (`ros2msg` schemas, CDR, log time = reception); [`replay`] publishes a recording's
//! messages again with their original spacing, so the nodes receive them as if live.
//!
//! The topic set is [`TOPICS`]: what the control node publishes and takes (see
//! [`crate::ros2`]: state, commands, the ultrasound stream, the scan's status, safety events),
//! what the perception node publishes (`/perception/registration`, `/perception/landmarks`) and
//! `/audit`. Each
//! is subscribed with QoS that matches its publisher (best effort for streams, reliable for
//! commands, reliable + transient-local for latched data, so a recorder started late still gets
//! `/tf_static` and `/robot_description`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ros2_client::{Node, Publisher, Subscription};
use serde::Serialize;
use telecho_core::recording::{RecordedMessage, Recorder};
use telecho_core::ros_msgs::{
    from_cdr, DiagnosticArray, Float64, Image, JointState, MarkerArray, PoseStamped, RosMessage,
    StringMsg, TFMessage, Vector3Stamped, WrenchStamped,
};

use crate::ros2::{command_qos, latched_qos, publisher, stream_qos, subscription, Ros2Error};

/// How a topic's publisher offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicKind {
    /// Best effort, volatile (high-rate streams).
    Stream,
    /// Reliable, volatile (commands).
    Command,
    /// Reliable, transient-local (latched: sent once, kept for late joiners).
    Latched,
}

/// A recorded topic: name, ROS 2 type, QoS kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BagTopic {
    /// Topic, e.g. `/joint_states`.
    pub topic: &'static str,
    /// ROS 2 type name, e.g. `sensor_msgs/msg/JointState`.
    pub type_name: &'static str,
    /// QoS kind.
    pub kind: TopicKind,
}

const fn t(topic: &'static str, type_name: &'static str, kind: TopicKind) -> BagTopic {
    BagTopic {
        topic,
        type_name,
        kind,
    }
}

/// Every topic telecho's nodes publish or take.
pub const TOPICS: &[BagTopic] = &[
    t("/joint_states", JointState::TYPE_NAME, TopicKind::Stream),
    t("/probe/wrench", WrenchStamped::TYPE_NAME, TopicKind::Stream),
    t("/probe/pose", PoseStamped::TYPE_NAME, TopicKind::Stream),
    t("/tf", TFMessage::TYPE_NAME, TopicKind::Stream),
    t("/tf_static", TFMessage::TYPE_NAME, TopicKind::Latched),
    t(
        "/robot_description",
        StringMsg::TYPE_NAME,
        TopicKind::Latched,
    ),
    t(
        "/probe/target_pose",
        PoseStamped::TYPE_NAME,
        TopicKind::Command,
    ),
    t(
        "/probe/force_setpoint",
        Float64::TYPE_NAME,
        TopicKind::Command,
    ),
    t("/us/image", Image::TYPE_NAME, TopicKind::Stream),
    t(
        "/us/pixel_spacing",
        Vector3Stamped::TYPE_NAME,
        TopicKind::Stream,
    ),
    t("/us/probe_pose", PoseStamped::TYPE_NAME, TopicKind::Stream),
    t("/us/frame_info", StringMsg::TYPE_NAME, TopicKind::Stream),
    t("/scan/status", StringMsg::TYPE_NAME, TopicKind::Latched),
    t("/scan/protocol", StringMsg::TYPE_NAME, TopicKind::Latched),
    t(
        "/perception/registration",
        StringMsg::TYPE_NAME,
        TopicKind::Latched,
    ),
    t(
        "/perception/landmarks",
        MarkerArray::TYPE_NAME,
        TopicKind::Latched,
    ),
    t(
        "/safety/events",
        DiagnosticArray::TYPE_NAME,
        TopicKind::Command,
    ),
    t("/audit", DiagnosticArray::TYPE_NAME, TopicKind::Command),
];

/// Settings of [`record`] and [`replay`].
#[derive(Clone, Debug, PartialEq)]
pub struct BagConfig {
    /// DDS domain.
    pub domain_id: u16,
    /// Only these topics (empty: all of [`TOPICS`]).
    pub topics: Vec<String>,
    /// Stop after this long (record: of recording; replay: of playing).
    pub duration: Option<Duration>,
    /// Replay speed (1 = the recorded spacing; 2 = twice as fast).
    pub rate: f64,
}

impl Default for BagConfig {
    fn default() -> Self {
        Self {
            domain_id: 0,
            topics: Vec::new(),
            duration: None,
            rate: 1.0,
        }
    }
}

impl BagConfig {
    /// Checks the topic names and the rate.
    pub fn validate(&self) -> Result<(), Ros2Error> {
        for name in &self.topics {
            if !TOPICS.iter().any(|t| t.topic == name) {
                return Err(Ros2Error::bag(format!(
                    "unknown topic {name} (known: {})",
                    TOPICS
                        .iter()
                        .map(|t| t.topic)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100.0) {
            return Err(Ros2Error::bag(format!(
                "replay rate {} (0 < rate ≤ 100)",
                self.rate
            )));
        }
        Ok(())
    }

    fn selected(&self) -> Result<Vec<BagTopic>, Ros2Error> {
        self.validate()?;
        Ok(TOPICS
            .iter()
            .filter(|t| self.topics.is_empty() || self.topics.iter().any(|n| n == t.topic))
            .copied()
            .collect())
    }
}

/// What [`record`] or [`replay`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BagReport {
    /// Messages per topic.
    pub messages: BTreeMap<String, u64>,
    /// Messages in all.
    pub total: u64,
    /// Wall time, s.
    pub duration_s: f64,
    /// Replay: messages skipped (topic not selected, unknown type, undecodable CDR).
    pub skipped: u64,
}

fn qos(kind: TopicKind) -> ros2_client::QosProfile {
    match kind {
        TopicKind::Stream => stream_qos(1000),
        TopicKind::Command => command_qos(),
        TopicKind::Latched => latched_qos(),
    }
}

fn open_node(domain_id: u16, name: &str) -> Result<Node, Ros2Error> {
    Ok(crate::ros2::open_node(domain_id, "/", name)?)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A subscription that writes what it takes.
trait Tap {
    fn topic(&self) -> &'static str;
    /// Takes everything queued; returns how many were written.
    fn drain(&mut self, rec: &mut Recorder) -> Result<u64, Ros2Error>;
}

struct TypedTap<M: RosMessage + 'static> {
    topic: &'static str,
    sub: Subscription<M>,
}

impl<M: RosMessage + 'static> Tap for TypedTap<M> {
    fn topic(&self) -> &'static str {
        self.topic
    }

    fn drain(&mut self, rec: &mut Recorder) -> Result<u64, Ros2Error> {
        let mut n = 0;
        loop {
            match self.sub.take() {
                Ok(Some((msg, _))) => {
                    rec.write(self.topic, now_ns(), &msg)
                        .map_err(|e| Ros2Error::bag(e.to_string()))?;
                    n += 1;
                }
                Ok(None) => return Ok(n),
                Err(e) => {
                    tracing::warn!(topic = self.topic, "undecodable sample: {e:?}");
                }
            }
        }
    }
}

/// Runs `$make::<M>($node, $t)` with `M` the message type named by `$t.type_name`.
macro_rules! with_message_type {
    ($make:ident, $node:expr, $t:expr) => {
        match $t.type_name {
            JointState::TYPE_NAME => $make::<JointState>($node, $t),
            WrenchStamped::TYPE_NAME => $make::<WrenchStamped>($node, $t),
            PoseStamped::TYPE_NAME => $make::<PoseStamped>($node, $t),
            TFMessage::TYPE_NAME => $make::<TFMessage>($node, $t),
            StringMsg::TYPE_NAME => $make::<StringMsg>($node, $t),
            Float64::TYPE_NAME => $make::<Float64>($node, $t),
            Image::TYPE_NAME => $make::<Image>($node, $t),
            DiagnosticArray::TYPE_NAME => $make::<DiagnosticArray>($node, $t),
            Vector3Stamped::TYPE_NAME => $make::<Vector3Stamped>($node, $t),
            MarkerArray::TYPE_NAME => $make::<MarkerArray>($node, $t),
            other => Err(Ros2Error::bag(format!("no message type {other}"))),
        }
    };
}

fn tap(node: &mut Node, t: BagTopic) -> Result<Box<dyn Tap>, Ros2Error> {
    fn typed<M: RosMessage + 'static>(
        node: &mut Node,
        t: BagTopic,
    ) -> Result<Box<dyn Tap>, Ros2Error> {
        Ok(Box::new(TypedTap::<M> {
            topic: t.topic,
            sub: subscription::<M>(node, t.topic, qos(t.kind))?,
        }))
    }
    with_message_type!(typed, node, t)
}

/// Records the selected topics of `config.domain_id` into `rec` until `stop` is set or
/// `config.duration` has passed. The recorder is flushed at least once a second (a killed
/// recorder loses at most that); the caller finishes it.
pub fn record(
    config: &BagConfig,
    rec: &mut Recorder,
    stop: &AtomicBool,
) -> Result<BagReport, Ros2Error> {
    let topics = config.selected()?;
    let mut node = open_node(config.domain_id, "telecho_record")?;
    let mut taps = topics
        .iter()
        .map(|t| tap(&mut node, *t))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let mut report = BagReport::default();
    for t in &taps {
        report.messages.insert(t.topic().to_owned(), 0);
    }
    while !stop.load(Ordering::Relaxed) && config.duration.is_none_or(|d| start.elapsed() < d) {
        let mut got = 0;
        for t in &mut taps {
            let n = t.drain(rec)?;
            if n > 0 {
                *report.messages.entry(t.topic().to_owned()).or_default() += n;
                got += n;
            }
        }
        report.total += got;
        rec.tick().map_err(|e| Ros2Error::bag(e.to_string()))?;
        if got == 0 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    report.duration_s = start.elapsed().as_secs_f64();
    drop(taps);
    drop(node);
    Ok(report)
}

/// A publisher that takes CDR bytes.
trait Outlet {
    fn publish_cdr(&self, cdr: &[u8]) -> Result<(), String>;
}

struct TypedOutlet<M: RosMessage> {
    publisher: Publisher<M>,
}

impl<M: RosMessage> Outlet for TypedOutlet<M> {
    fn publish_cdr(&self, cdr: &[u8]) -> Result<(), String> {
        let msg = from_cdr::<M>(cdr).map_err(|e| e.to_string())?;
        self.publisher
            .publish(msg)
            .map_err(|_| "DDS write failed".to_owned())
    }
}

fn outlet(node: &mut Node, t: BagTopic) -> Result<Box<dyn Outlet>, Ros2Error> {
    fn typed<M: RosMessage + 'static>(
        node: &mut Node,
        t: BagTopic,
    ) -> Result<Box<dyn Outlet>, Ros2Error> {
        Ok(Box::new(TypedOutlet::<M> {
            publisher: publisher::<M>(node, t.topic, qos(t.kind))?,
        }))
    }
    with_message_type!(typed, node, t)
}

/// Publishes `messages` (in log-time order, as a recording holds them) on their topics with the
/// recorded spacing divided by `config.rate`, after `warm_up` (time for subscribers to match).
/// Messages of topics not selected, of another type than the topic's, or that do not decode are
/// skipped and counted.
pub fn replay(
    messages: impl IntoIterator<Item = RecordedMessage>,
    config: &BagConfig,
    warm_up: Duration,
    stop: &AtomicBool,
) -> Result<BagReport, Ros2Error> {
    let topics = config.selected()?;
    let mut node = open_node(config.domain_id, "telecho_replay")?;
    let mut outlets: BTreeMap<&'static str, (BagTopic, Box<dyn Outlet>)> = BTreeMap::new();
    for t in &topics {
        outlets.insert(t.topic, (*t, outlet(&mut node, *t)?));
    }
    std::thread::sleep(warm_up);
    let start = Instant::now();
    let mut report = BagReport::default();
    let mut first_ns: Option<u64> = None;
    for m in messages {
        if stop.load(Ordering::Relaxed) || config.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let Some((t, out)) = outlets.get(m.topic.as_str()) else {
            report.skipped += 1;
            continue;
        };
        if m.type_name != t.type_name || m.encoding != "cdr" {
            report.skipped += 1;
            continue;
        }
        let t0 = *first_ns.get_or_insert(m.log_time_ns);
        let due = Duration::from_nanos(m.log_time_ns.saturating_sub(t0)).div_f64(config.rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        match out.publish_cdr(&m.data) {
            Ok(()) => {
                *report.messages.entry(m.topic.clone()).or_default() += 1;
                report.total += 1;
            }
            Err(e) => {
                tracing::warn!(topic = %m.topic, "not replayed: {e}");
                report.skipped += 1;
            }
        }
    }
    report.duration_s = start.elapsed().as_secs_f64();
    // Let reliable samples reach their readers before the participant goes.
    std::thread::sleep(Duration::from_millis(200));
    drop(outlets);
    drop(node);
    Ok(report)
}
