//! ROS 2 over DDS for telecho's nodes (`ros2` feature): `ros2-client` (pure Rust, RustDDS)
//! participants, publishers, subscriptions and `std_srvs/srv/Trigger` services with the QoS
//! profiles the nodes agree on. The message types are [`crate::ros_msgs`]; each node's adapter
//! lives in its own crate (`telecho_control::ros2`, `telecho_perception::ros2`).
//!
//! DDS topic names carry the `rt/` prefix and DDS type names the `pkg::msg::dds_::Name_` form, as
//! ROS 2's rmw layers do, so ROS 2 nodes on any DDS (Cyclone, Fast DDS) see these topics.
//! Services use [`DEFAULT_SERVICE_MAPPING`], the request/reply layout of `rmw_cyclonedds`.

use std::time::{Duration, Instant};

use ros2_client::qos::{Durability, History, WhenFull};
use ros2_client::service::{Client, Server};
use ros2_client::{
    Context, ContextOptions, MessageTypeName, Name, NodeName, NodeOptions, QosProfile,
    ServiceTypeName,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use ros2_client::service::{RmwRequestId, ServiceMapping};
pub use ros2_client::{Node, Publisher, Subscription};

use crate::ros_msgs::{
    Header, RosMessage, TransformStamped, TriggerRequest, TriggerResponse, TRIGGER_SERVICE,
};
use crate::{Error, Transform};

/// How telecho's services map onto DDS: the `rmw_cyclonedds` layout (a request header in the
/// payload). ROS 2 on Fast DDS or Connext uses `Enhanced`.
pub const DEFAULT_SERVICE_MAPPING: ServiceMapping = ServiceMapping::Cyclone;

/// A ROS 2 node on its own DDS participant in `domain_id`, for polling (no spinner runs, so no
/// parameter services and no rosout).
pub fn open_node(domain_id: u16, namespace: &str, name: &str) -> Result<Node, Error> {
    let context = Context::with_options(ContextOptions::new().domain_id(domain_id))
        .map_err(|e| Error::dds("DDS participant", e))?;
    let name = NodeName::new(namespace, name).map_err(|e| Error::dds("node name", e))?;
    context
        .new_node(
            name,
            NodeOptions::new()
                .enable_rosout(false)
                .start_parameter_services(false),
        )
        .map_err(|e| Error::dds("node", e))
}

/// QoS of streams: best effort, volatile, the last `depth` samples.
pub fn stream_qos(depth: usize) -> QosProfile {
    QosProfile::subscription_default()
        .reliability_best_effort()
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth })
}

/// QoS of latched data: reliable, transient-local, the last sample.
pub fn latched_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::TransientLocal)
        .history(History::KeepLast { depth: 1 })
}

/// QoS of commands: reliable, volatile, the last 10.
pub fn command_qos() -> QosProfile {
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

fn topic_name(full: &str) -> Result<Name, Error> {
    Name::parse(full).map_err(|e| Error::dds(full, e))
}

/// Creates a publisher of `M` on `topic` (ROS 2 name, e.g. `/probe/wrench`).
pub fn publisher<M: RosMessage>(
    node: &mut Node,
    topic: &str,
    qos: QosProfile,
) -> Result<Publisher<M>, Error> {
    let t = node
        .create_topic(&topic_name(topic)?, type_name::<M>(), &qos)
        .map_err(|e| Error::dds(topic, e))?;
    node.create_publisher::<M>(&t, Some(qos))
        .map_err(|e| Error::dds(topic, e))
}

/// Creates a subscription of `M` on `topic`.
pub fn subscription<M: RosMessage + 'static>(
    node: &mut Node,
    topic: &str,
    qos: QosProfile,
) -> Result<Subscription<M>, Error> {
    let t = node
        .create_topic(&topic_name(topic)?, type_name::<M>(), &qos)
        .map_err(|e| Error::dds(topic, e))?;
    node.create_subscription::<M>(&t, Some(qos))
        .map_err(|e| Error::dds(topic, e))
}

/// QoS of the ultrasound stream: reliable (a perception node compounding the sweep needs every
/// frame; best-effort viewers match it too), volatile, the last `depth`.
pub fn frame_qos(depth: usize) -> QosProfile {
    QosProfile::subscription_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth })
}

/// A ROS 2 message wrapper for types `ros2-client`'s service API needs to implement its
/// `Message` trait (the message types live in `telecho_core`, the trait in `ros2-client`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Wire<T>(pub T);

impl<T: Serialize + DeserializeOwned> ros2_client::Message for Wire<T> {}

/// A `std_srvs/srv/Trigger` server.
pub type TriggerServer = Server<Wire<TriggerRequest>, Wire<TriggerResponse>>;
/// A `std_srvs/srv/Trigger` client.
pub type TriggerClient = Client<Wire<TriggerRequest>, Wire<TriggerResponse>>;

/// QoS of services: reliable, volatile, the last 10.
pub fn service_qos() -> QosProfile {
    command_qos()
}

/// Creates a `std_srvs/srv/Trigger` server on `service` (e.g. `/scan/start`).
pub fn trigger_server(
    node: &mut Node,
    service: &str,
    mapping: ServiceMapping,
) -> Result<TriggerServer, Error> {
    node.create_server(
        mapping,
        &topic_name(service)?,
        &ServiceTypeName::new(TRIGGER_SERVICE.0, TRIGGER_SERVICE.1),
        service_qos(),
        service_qos(),
    )
    .map_err(|e| Error::dds(service, e))
}

/// Creates a `std_srvs/srv/Trigger` client of `service`.
pub fn trigger_client(
    node: &mut Node,
    service: &str,
    mapping: ServiceMapping,
) -> Result<TriggerClient, Error> {
    node.create_client(
        mapping,
        &topic_name(service)?,
        &ServiceTypeName::new(TRIGGER_SERVICE.0, TRIGGER_SERVICE.1),
        service_qos(),
        service_qos(),
    )
    .map_err(|e| Error::dds(service, e))
}

/// Calls a Trigger service and waits up to `timeout` for the answer (polling; no executor).
///
/// Without a spinner the client cannot see when the server has matched, and a request written
/// before discovery completes is lost, so an unanswered request is sent again every second. Servers
/// must therefore treat a repeated trigger as harmless (telecho's do: a second `/scan/start`
/// while a scan runs is refused, a second `/perception/register` over the same frames answers
/// from the cached result). Any answer to any of the sent requests counts.
pub fn call_trigger(client: &TriggerClient, timeout: Duration) -> Result<TriggerResponse, Error> {
    let deadline = Instant::now() + timeout;
    let mut sent: Vec<ros2_client::service::RmwRequestId> = Vec::new();
    let mut last_send: Option<Instant> = None;
    while Instant::now() < deadline {
        if last_send.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            let id = client
                .send_request(Wire(TriggerRequest::default()))
                .map_err(|e| Error::dds("service request", e))?;
            sent.push(id);
            last_send = Some(Instant::now());
        }
        match client.receive_response() {
            Ok(Some((id, resp))) if sent.contains(&id) => return Ok(resp.0),
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::dds("service response", e)),
        }
    }
    Err(Error::dds(
        "service call",
        format!("no answer within {:.1} s", timeout.as_secs_f64()),
    ))
}

/// A `geometry_msgs/TransformStamped` from `parent` to `child` with `header`'s stamp.
pub fn transform_stamped(
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
