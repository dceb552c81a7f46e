//! The wire protocol: message types and their compact, versioned little-endian encoding.
//!
//! No I/O here. [`Message::encode`] appends one message to a buffer; [`Message::decode`] parses
//! exactly one message from a byte slice and validates every field (finite, within the
//! [`limits`], known enumerations, valid UTF-8, no trailing bytes). A bad message gives an
//! [`Error`] naming the field; the decoder never panics, whatever the bytes (property-tested
//! with arbitrary input).
//!
//! Layout (byte by byte in `docs/PROTOCOL.md`): every message starts with the protocol version
//! ([`PROTOCOL_VERSION`]) and a type byte, then the fields in declaration order: integers and
//! IEEE-754 `f64` little-endian, booleans and enumerations one byte, strings a `u16` length then
//! UTF-8, vectors three `f64`, poses a position and a unit quaternion `(w, x, y, z)`. On a QUIC
//! datagram one message fills the datagram; on a stream every message is preceded by its length
//! as a `u32` ([`encode_frame`]).

use nalgebra::{Quaternion, Unit, UnitQuaternion, Vector3};
use telecho_core::Transform;

use crate::error::ErrorKind;
use crate::Error;

/// Version byte at the start of every message.
pub const PROTOCOL_VERSION: u8 = 1;

/// The TLS application-layer protocol name of the link.
pub const ALPN: &[u8] = b"telecho/1";

/// Validation bounds applied by the decoder. They reject what cannot be physical; the patient
/// side applies tighter, configurable limits before anything reaches the control node.
pub mod limits {
    /// Largest time stamp, s (every clock counts seconds from its own start).
    pub const MAX_TIME_S: f64 = 1.0e9;
    /// Largest position component, m.
    pub const MAX_POSITION_M: f64 = 10.0;
    /// Largest linear speed of a twist target, m/s.
    pub const MAX_LINEAR_SPEED_M_S: f64 = 1.0;
    /// Largest angular speed of a twist target, rad/s.
    pub const MAX_ANGULAR_SPEED_RAD_S: f64 = 4.0;
    /// Largest contact-force setpoint, N.
    pub const MAX_FORCE_SETPOINT_N: f64 = 50.0;
    /// Largest measured force component, N.
    pub const MAX_FORCE_N: f64 = 1000.0;
    /// Largest measured torque component, N·m.
    pub const MAX_TORQUE_NM: f64 = 200.0;
    /// Largest contact stiffness, N/m.
    pub const MAX_STIFFNESS_N_M: f64 = 1.0e6;
    /// Largest contact damping, N·s/m.
    pub const MAX_DAMPING_N_S_M: f64 = 1.0e5;
    /// Allowed deviation of a quaternion's or normal's norm from 1.
    pub const UNIT_TOLERANCE: f64 = 1.0e-3;
    /// Most joints in a robot state.
    pub const MAX_JOINTS: usize = 16;
    /// Largest joint angle magnitude, rad.
    pub const MAX_JOINT_RAD: f64 = 100.0;
    /// Longest string, bytes of UTF-8.
    pub const MAX_STRING_BYTES: usize = 256;
    /// Largest image side, pixels.
    pub const MAX_IMAGE_SIDE: u16 = 4096;
    /// Largest pixel spacing, m.
    pub const MAX_SPACING_M: f64 = 0.01;
    /// Longest take-over timeout, s.
    pub const MAX_TIMEOUT_S: f64 = 600.0;
    /// Longest control-stream frame, bytes.
    pub const MAX_CONTROL_FRAME: usize = 4096;
    /// Longest ultrasound-stream frame, bytes.
    pub const MAX_US_FRAME: usize = 16 * 1024 * 1024 + 1024;
}

/// A decoded unit vector or quaternion whose norm is within this of 1 is taken as already
/// normalised (a few ulps: what one normalisation leaves).
const UNIT_ROUNDING: f64 = 8.0 * f64::EPSILON;

/// A probe pose: position and orientation, in the robot base frame unless stated otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pose {
    /// Position, m.
    pub position_m: Vector3<f64>,
    /// Orientation.
    pub orientation: UnitQuaternion<f64>,
}

impl Pose {
    /// The identity pose.
    pub fn identity() -> Self {
        Self {
            position_m: Vector3::zeros(),
            orientation: UnitQuaternion::identity(),
        }
    }

    /// The pose of a transform (its rotation must be orthonormal).
    pub fn from_transform(t: &Transform) -> Self {
        let r = nalgebra::Rotation3::from_matrix_unchecked(t.rotation);
        Self {
            position_m: t.translation,
            orientation: UnitQuaternion::from_rotation_matrix(&r),
        }
    }

    /// The transform of this pose.
    pub fn to_transform(&self) -> Transform {
        Transform::new(
            *self.orientation.to_rotation_matrix().matrix(),
            self.position_m,
        )
    }
}

/// What an operator command asks the probe to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Go to this probe pose `t_base_probe`.
    Pose(Pose),
    /// Move with this velocity (base frame).
    Twist {
        /// Linear velocity, m/s.
        linear_m_s: Vector3<f64>,
        /// Angular velocity, rad/s.
        angular_rad_s: Vector3<f64>,
    },
}

/// Free-space motion or hybrid force/position contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandMode {
    /// Track the target in free space.
    Free,
    /// Regulate the contact force along the probe axis at the setpoint.
    Contact,
}

/// An operator command (console → patient, datagram).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OperatorCommand {
    /// Sequence number, strictly increasing within a connection.
    pub seq: u64,
    /// Send time on the console's clock, s.
    pub sent_s: f64,
    /// Free or contact.
    pub mode: CommandMode,
    /// Contact-force setpoint, N (ignored in free mode).
    pub force_n: f64,
    /// The target.
    pub target: Target,
}

/// The local contact model estimated at the patient side: a plane through `point_m` with outward
/// normal `normal` and a spring–damper along it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContactModel {
    /// A point on the skin surface, m (base frame).
    pub point_m: Vector3<f64>,
    /// Outward surface normal (unit).
    pub normal: Unit<Vector3<f64>>,
    /// Stiffness along the normal, N/m.
    pub stiffness_n_m: f64,
    /// Damping along the normal, N·s/m.
    pub damping_n_s_m: f64,
}

/// Haptic feedback (patient → console, datagram).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HapticFeedback {
    /// Sequence number.
    pub seq: u64,
    /// Measurement time on the patient's clock, s.
    pub measured_s: f64,
    /// Sequence number of the newest accepted command (0: none yet).
    pub cmd_seq: u64,
    /// That command's send time on the console's clock, s (0: none yet); lets the console
    /// measure the command-to-feedback latency without clock sync.
    pub cmd_sent_s: f64,
    /// Measured contact force on the probe, N (base frame).
    pub force_n: Vector3<f64>,
    /// Measured torque, N·m (base frame, about the probe tip).
    pub torque_nm: Vector3<f64>,
    /// The local contact model, when the probe is near or on the skin.
    pub contact: Option<ContactModel>,
}

/// The control node's safety state, as the console sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetyCode {
    /// Commands pass.
    Normal,
    /// Holding (watchdog).
    Hold,
    /// Retracting or retracted (latched until reset).
    Retract,
    /// Fault stop (latched).
    FaultStop,
    /// E-stop (latched).
    EStop,
}

/// The command link's state at the patient side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No operator command yet (or the lease was released): the control node is on its own.
    Idle,
    /// Fresh commands arrive.
    Live,
    /// No fresh command for the hold time: hold with force regulation.
    Hold,
    /// No fresh command for the retract time: retract (latched until reset).
    Retract,
}

/// Robot state (patient → console, datagram, ≥ 60 Hz).
#[derive(Clone, Debug, PartialEq)]
pub struct RobotState {
    /// Sequence number.
    pub seq: u64,
    /// Measurement time on the patient's clock, s.
    pub measured_s: f64,
    /// Safety state of the control node.
    pub safety: SafetyCode,
    /// Link state at the patient side.
    pub link: LinkState,
    /// Measured joint angles, rad (at most [`limits::MAX_JOINTS`]).
    pub joints_rad: Vec<f64>,
    /// Measured probe pose `t_base_probe`.
    pub probe: Pose,
    /// Measured contact force, N (base frame).
    pub force_n: Vector3<f64>,
    /// Measured torque, N·m.
    pub torque_nm: Vector3<f64>,
}

/// Clock-sync request (either direction, datagram).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ping {
    /// Request id, echoed in the pong.
    pub id: u32,
    /// Send time on the sender's clock, s.
    pub t0_s: f64,
}

/// Clock-sync answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pong {
    /// The ping's id.
    pub id: u32,
    /// The ping's send time (echoed), s, pinger's clock.
    pub t0_s: f64,
    /// Receive time of the ping, s, answerer's clock.
    pub t1_s: f64,
    /// Send time of the pong, s, answerer's clock.
    pub t2_s: f64,
}

/// How an ultrasound frame's pixels are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameEncoding {
    /// `width × height` bytes, row-major, 8-bit grey.
    Raw,
    /// Each row's pixels replaced by their difference to the left neighbour (mod 256; the first
    /// pixel of a row kept), then one zstd frame.
    DeltaZstd,
}

/// An ultrasound frame (patient → console, one unidirectional stream per frame).
#[derive(Clone, Debug, PartialEq)]
pub struct UsFrameMsg {
    /// Sequence number.
    pub seq: u64,
    /// Acquisition time on the patient's clock, s.
    pub acquired_s: f64,
    /// Image width (elements, lateral), pixels.
    pub width: u16,
    /// Image height (depth, axial), pixels.
    pub height: u16,
    /// Lateral pixel spacing, m.
    pub lateral_spacing_m: f64,
    /// Axial pixel spacing, m.
    pub axial_spacing_m: f64,
    /// Probe pose at acquisition `t_base_probe`.
    pub probe: Pose,
    /// Pixel encoding.
    pub encoding: FrameEncoding,
    /// Encoded pixels.
    pub payload: Vec<u8>,
}

/// A client's role, read from its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May hold the control lease and steer.
    Operator,
    /// Watches only.
    Observer,
}

impl Role {
    /// `operator` or `observer`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Observer => "observer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a lease request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// Another operator holds the lease (ask for a take-over).
    Held,
    /// Observers can never hold the lease.
    NotOperator,
    /// The holder refused the take-over.
    HolderRefused,
    /// Another take-over is already pending.
    Busy,
    /// Only the holder may do that.
    NotHolder,
}

/// The result of a lease request, or an unsolicited lease change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The recipient now holds the lease.
    Granted,
    /// The recipient released the lease.
    Released,
    /// The take-over waits for the holder's answer (or the timeout).
    Pending,
    /// The recipient lost the lease to a take-over.
    Revoked,
    /// Refused.
    Denied(DenyReason),
    /// The lease changed hands between other clients (broadcast; `holder` says who).
    Changed,
}

/// Status of a session-control request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// Done (handed to the control node).
    Ok,
    /// Refused: only the lease holder may do that.
    NotHolder,
    /// Refused: invalid request.
    Invalid,
}

/// Which channel a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// QUIC datagram (unreliable, newest wins).
    Datagram,
    /// The reliable bidirectional control stream.
    Control,
    /// A unidirectional stream of its own.
    UsStream,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// Operator command (datagram, console → patient).
    Command(OperatorCommand),
    /// Haptic feedback (datagram, patient → console).
    Haptic(HapticFeedback),
    /// Robot state (datagram, patient → console).
    State(RobotState),
    /// Clock-sync request (datagram, either way).
    Ping(Ping),
    /// Clock-sync answer (datagram, either way).
    Pong(Pong),
    /// Ultrasound frame (own unidirectional stream, patient → console).
    UsFrame(UsFrameMsg),
    /// First message on the control stream (console → patient).
    Hello {
        /// Free-form client software name.
        client: String,
    },
    /// Answer to `Hello` (patient → console).
    Welcome {
        /// The role the server read from the client's certificate.
        role: Role,
        /// Connection id the server gave this client.
        conn_id: u64,
        /// Server clock at sending, s.
        server_time_s: f64,
        /// The client's identity (certificate common name).
        identity: String,
        /// Current lease holder's identity (empty: free).
        holder: String,
    },
    /// Ask for the lease.
    LeaseAcquire {
        /// Request id.
        req: u32,
    },
    /// Give the lease back.
    LeaseRelease {
        /// Request id.
        req: u32,
    },
    /// Ask the holder to hand the lease over.
    LeaseTakeOver {
        /// Request id.
        req: u32,
    },
    /// Patient → holder: someone asks for a take-over.
    TakeOverRequested {
        /// The requester's identity.
        requester: String,
        /// Seconds the holder has to answer before the timeout policy applies.
        timeout_s: f64,
    },
    /// Holder → patient: hand the lease to the requester.
    TakeOverConfirm {
        /// Request id.
        req: u32,
    },
    /// Holder → patient: keep the lease.
    TakeOverDeny {
        /// Request id.
        req: u32,
    },
    /// Patient → console: result of a lease request (`req` 0: unsolicited).
    LeaseUpdate {
        /// The request this answers (0: none).
        req: u32,
        /// What happened.
        outcome: LeaseOutcome,
        /// The holder after the change (empty: free).
        holder: String,
    },
    /// Emergency stop (any authenticated role).
    EStop {
        /// Request id.
        req: u32,
    },
    /// Reset latched safety states (lease holder only).
    Reset {
        /// Request id.
        req: u32,
    },
    /// Start a named scan protocol (lease holder only).
    StartProtocol {
        /// Request id.
        req: u32,
        /// Protocol name.
        name: String,
    },
    /// Stop the running scan protocol (lease holder only).
    StopProtocol {
        /// Request id.
        req: u32,
    },
    /// Patient → console: result of a session-control request.
    Reply {
        /// The request this answers.
        req: u32,
        /// Status.
        status: ReplyStatus,
        /// Human-readable detail.
        text: String,
    },
}

/// Message type bytes.
mod ty {
    pub(super) const COMMAND: u8 = 0x01;
    pub(super) const HAPTIC: u8 = 0x02;
    pub(super) const STATE: u8 = 0x03;
    pub(super) const PING: u8 = 0x04;
    pub(super) const PONG: u8 = 0x05;
    pub(super) const US_FRAME: u8 = 0x10;
    pub(super) const HELLO: u8 = 0x20;
    pub(super) const WELCOME: u8 = 0x21;
    pub(super) const LEASE_ACQUIRE: u8 = 0x22;
    pub(super) const LEASE_RELEASE: u8 = 0x23;
    pub(super) const LEASE_TAKE_OVER: u8 = 0x24;
    pub(super) const TAKE_OVER_REQUESTED: u8 = 0x25;
    pub(super) const TAKE_OVER_CONFIRM: u8 = 0x26;
    pub(super) const TAKE_OVER_DENY: u8 = 0x27;
    pub(super) const LEASE_UPDATE: u8 = 0x28;
    pub(super) const ESTOP: u8 = 0x29;
    pub(super) const RESET: u8 = 0x2A;
    pub(super) const START_PROTOCOL: u8 = 0x2B;
    pub(super) const STOP_PROTOCOL: u8 = 0x2C;
    pub(super) const REPLY: u8 = 0x2D;
}

impl Message {
    /// The channel this message belongs on; the receiver refuses it on any other.
    pub fn channel(&self) -> Channel {
        match self {
            Message::Command(_)
            | Message::Haptic(_)
            | Message::State(_)
            | Message::Ping(_)
            | Message::Pong(_) => Channel::Datagram,
            Message::UsFrame(_) => Channel::UsStream,
            _ => Channel::Control,
        }
    }

    /// Short name of the message type (for logs and counters).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Command(_) => "command",
            Message::Haptic(_) => "haptic",
            Message::State(_) => "state",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::UsFrame(_) => "us_frame",
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::LeaseAcquire { .. } => "lease_acquire",
            Message::LeaseRelease { .. } => "lease_release",
            Message::LeaseTakeOver { .. } => "lease_take_over",
            Message::TakeOverRequested { .. } => "take_over_requested",
            Message::TakeOverConfirm { .. } => "take_over_confirm",
            Message::TakeOverDeny { .. } => "take_over_deny",
            Message::LeaseUpdate { .. } => "lease_update",
            Message::EStop { .. } => "estop",
            Message::Reset { .. } => "reset",
            Message::StartProtocol { .. } => "start_protocol",
            Message::StopProtocol { .. } => "stop_protocol",
            Message::Reply { .. } => "reply",
        }
    }

    /// Encodes into a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }

    /// Appends the encoding of this message to `out`. Encoding does not validate: a message
    /// with out-of-range fields encodes, and the receiver's decoder refuses it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.u8(PROTOCOL_VERSION);
        match self {
            Message::Command(c) => {
                w.u8(ty::COMMAND);
                w.u64(c.seq);
                w.f64(c.sent_s);
                w.u8(match c.mode {
                    CommandMode::Free => 0,
                    CommandMode::Contact => 1,
                });
                w.f64(c.force_n);
                match &c.target {
                    Target::Pose(p) => {
                        w.u8(0);
                        w.pose(p);
                    }
                    Target::Twist {
                        linear_m_s,
                        angular_rad_s,
                    } => {
                        w.u8(1);
                        w.vec3(linear_m_s);
                        w.vec3(angular_rad_s);
                    }
                }
            }
            Message::Haptic(h) => {
                w.u8(ty::HAPTIC);
                w.u64(h.seq);
                w.f64(h.measured_s);
                w.u64(h.cmd_seq);
                w.f64(h.cmd_sent_s);
                w.vec3(&h.force_n);
                w.vec3(&h.torque_nm);
                match &h.contact {
                    None => w.u8(0),
                    Some(m) => {
                        w.u8(1);
                        w.vec3(&m.point_m);
                        w.vec3(&m.normal);
                        w.f64(m.stiffness_n_m);
                        w.f64(m.damping_n_s_m);
                    }
                }
            }
            Message::State(s) => {
                w.u8(ty::STATE);
                w.u64(s.seq);
                w.f64(s.measured_s);
                w.u8(safety_code(s.safety));
                w.u8(link_code(s.link));
                w.u8(s.joints_rad.len().min(255) as u8);
                for q in s.joints_rad.iter().take(255) {
                    w.f64(*q);
                }
                w.pose(&s.probe);
                w.vec3(&s.force_n);
                w.vec3(&s.torque_nm);
            }
            Message::Ping(p) => {
                w.u8(ty::PING);
                w.u32(p.id);
                w.f64(p.t0_s);
            }
            Message::Pong(p) => {
                w.u8(ty::PONG);
                w.u32(p.id);
                w.f64(p.t0_s);
                w.f64(p.t1_s);
                w.f64(p.t2_s);
            }
            Message::UsFrame(f) => {
                w.u8(ty::US_FRAME);
                w.u64(f.seq);
                w.f64(f.acquired_s);
                w.u16(f.width);
                w.u16(f.height);
                w.f64(f.lateral_spacing_m);
                w.f64(f.axial_spacing_m);
                w.pose(&f.probe);
                w.u8(match f.encoding {
                    FrameEncoding::Raw => 0,
                    FrameEncoding::DeltaZstd => 1,
                });
                w.u32(f.payload.len().min(u32::MAX as usize) as u32);
                w.0.extend_from_slice(&f.payload);
            }
            Message::Hello { client } => {
                w.u8(ty::HELLO);
                w.string(client);
            }
            Message::Welcome {
                role,
                conn_id,
                server_time_s,
                identity,
                holder,
            } => {
                w.u8(ty::WELCOME);
                w.u8(role_code(*role));
                w.u64(*conn_id);
                w.f64(*server_time_s);
                w.string(identity);
                w.string(holder);
            }
            Message::LeaseAcquire { req } => w.req(ty::LEASE_ACQUIRE, *req),
            Message::LeaseRelease { req } => w.req(ty::LEASE_RELEASE, *req),
            Message::LeaseTakeOver { req } => w.req(ty::LEASE_TAKE_OVER, *req),
            Message::TakeOverRequested {
                requester,
                timeout_s,
            } => {
                w.u8(ty::TAKE_OVER_REQUESTED);
                w.string(requester);
                w.f64(*timeout_s);
            }
            Message::TakeOverConfirm { req } => w.req(ty::TAKE_OVER_CONFIRM, *req),
            Message::TakeOverDeny { req } => w.req(ty::TAKE_OVER_DENY, *req),
            Message::LeaseUpdate {
                req,
                outcome,
                holder,
            } => {
                w.u8(ty::LEASE_UPDATE);
                w.u32(*req);
                w.u8(outcome_code(*outcome));
                w.string(holder);
            }
            Message::EStop { req } => w.req(ty::ESTOP, *req),
            Message::Reset { req } => w.req(ty::RESET, *req),
            Message::StartProtocol { req, name } => {
                w.req(ty::START_PROTOCOL, *req);
                w.string(name);
            }
            Message::StopProtocol { req } => w.req(ty::STOP_PROTOCOL, *req),
            Message::Reply { req, status, text } => {
                w.req(ty::REPLY, *req);
                w.u8(match status {
                    ReplyStatus::Ok => 0,
                    ReplyStatus::NotHolder => 1,
                    ReplyStatus::Invalid => 2,
                });
                w.string(text);
            }
        }
    }

    /// Decodes exactly one message from `bytes`, validating every field.
    pub fn decode(bytes: &[u8]) -> Result<Message, Error> {
        decode_inner(bytes).map_err(Error::from)
    }
}

/// Appends `msg` to `out` as a stream frame: its length (`u32` LE) and its encoding.
pub fn encode_frame(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    msg.encode(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Checks a stream frame's length prefix against the channel's bound.
pub fn check_frame_len(len: u32, max: usize) -> Result<usize, Error> {
    let len = len as usize;
    if len < 2 || len > max {
        return Err(ErrorKind::FrameLength { len, max }.into());
    }
    Ok(len)
}

fn safety_code(s: SafetyCode) -> u8 {
    match s {
        SafetyCode::Normal => 0,
        SafetyCode::Hold => 1,
        SafetyCode::Retract => 2,
        SafetyCode::FaultStop => 3,
        SafetyCode::EStop => 4,
    }
}

fn link_code(l: LinkState) -> u8 {
    match l {
        LinkState::Idle => 0,
        LinkState::Live => 1,
        LinkState::Hold => 2,
        LinkState::Retract => 3,
    }
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Operator => 1,
        Role::Observer => 2,
    }
}

fn outcome_code(o: LeaseOutcome) -> u8 {
    match o {
        LeaseOutcome::Granted => 0,
        LeaseOutcome::Released => 1,
        LeaseOutcome::Pending => 2,
        LeaseOutcome::Revoked => 3,
        LeaseOutcome::Changed => 4,
        LeaseOutcome::Denied(DenyReason::Held) => 16,
        LeaseOutcome::Denied(DenyReason::NotOperator) => 17,
        LeaseOutcome::Denied(DenyReason::HolderRefused) => 18,
        LeaseOutcome::Denied(DenyReason::Busy) => 19,
        LeaseOutcome::Denied(DenyReason::NotHolder) => 20,
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn vec3(&mut self, v: &Vector3<f64>) {
        for x in v.iter() {
            self.f64(*x);
        }
    }
    fn pose(&mut self, p: &Pose) {
        self.vec3(&p.position_m);
        let q = p.orientation.quaternion();
        self.f64(q.w);
        self.f64(q.i);
        self.f64(q.j);
        self.f64(q.k);
    }
    fn string(&mut self, s: &str) {
        // Truncate at a character boundary so the receiver's length check passes.
        let mut end = s.len().min(limits::MAX_STRING_BYTES);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn req(&mut self, ty: u8, req: u32) {
        self.u8(ty);
        self.u32(req);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ErrorKind> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(ErrorKind::Truncated {
                msg: self.msg,
                field,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ErrorKind> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ErrorKind> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ErrorKind> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ErrorKind> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ErrorKind> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn f64(&mut self, field: &'static str) -> Result<f64, ErrorKind> {
        let v = f64::from_le_bytes(self.array(field)?);
        if !v.is_finite() {
            return Err(ErrorKind::NotFinite {
                msg: self.msg,
                field,
            });
        }
        Ok(v)
    }

    fn f64_in(&mut self, field: &'static str, min: f64, max: f64) -> Result<f64, ErrorKind> {
        let v = self.f64(field)?;
        if v < min || v > max {
            return Err(ErrorKind::OutOfRange {
                msg: self.msg,
                field,
                value: v,
                min,
                max,
            });
        }
        Ok(v)
    }

    fn time(&mut self, field: &'static str) -> Result<f64, ErrorKind> {
        self.f64_in(field, 0.0, limits::MAX_TIME_S)
    }

    fn vec3_in(&mut self, field: &'static str, max_abs: f64) -> Result<Vector3<f64>, ErrorKind> {
        Ok(Vector3::new(
            self.f64_in(field, -max_abs, max_abs)?,
            self.f64_in(field, -max_abs, max_abs)?,
            self.f64_in(field, -max_abs, max_abs)?,
        ))
    }

    fn norm_in(
        &self,
        field: &'static str,
        v: Vector3<f64>,
        max: f64,
    ) -> Result<Vector3<f64>, ErrorKind> {
        let n = v.norm();
        if n > max {
            return Err(ErrorKind::OutOfRange {
                msg: self.msg,
                field,
                value: n,
                min: 0.0,
                max,
            });
        }
        Ok(v)
    }

    fn unit_check(&self, field: &'static str, norm: f64) -> Result<(), ErrorKind> {
        if (norm - 1.0).abs() > limits::UNIT_TOLERANCE {
            return Err(ErrorKind::NotUnit {
                msg: self.msg,
                field,
                norm,
            });
        }
        Ok(())
    }

    fn unit_vec3(&mut self, field: &'static str) -> Result<Unit<Vector3<f64>>, ErrorKind> {
        let v = self.vec3_in(field, 2.0)?;
        let n = v.norm();
        self.unit_check(field, n)?;
        // Renormalised only when not already unit to rounding: decode∘encode is then exact
        // after one pass (renormalising a normalised value can move its last bits; found by
        // fuzzing the round trip).
        Ok(if (n - 1.0).abs() <= UNIT_ROUNDING {
            Unit::new_unchecked(v)
        } else {
            Unit::new_normalize(v)
        })
    }

    fn pose(&mut self, field: &'static str) -> Result<Pose, ErrorKind> {
        let position_m = self.vec3_in(field, limits::MAX_POSITION_M)?;
        let w = self.f64_in(field, -2.0, 2.0)?;
        let x = self.f64_in(field, -2.0, 2.0)?;
        let y = self.f64_in(field, -2.0, 2.0)?;
        let z = self.f64_in(field, -2.0, 2.0)?;
        let q = Quaternion::new(w, x, y, z);
        let n = q.norm();
        self.unit_check(field, n)?;
        Ok(Pose {
            position_m,
            // As in `unit_vec3`: left as sent when already unit to rounding.
            orientation: if (n - 1.0).abs() <= UNIT_ROUNDING {
                UnitQuaternion::new_unchecked(q)
            } else {
                UnitQuaternion::from_quaternion(q)
            },
        })
    }

    fn string(&mut self, field: &'static str) -> Result<String, ErrorKind> {
        let n = self.u16(field)? as usize;
        if n > limits::MAX_STRING_BYTES {
            return Err(ErrorKind::BadString {
                msg: self.msg,
                field,
                reason: "longer than 256 bytes",
            });
        }
        let bytes = self.take(n, field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| ErrorKind::BadString {
            msg: self.msg,
            field,
            reason: "not UTF-8",
        })?;
        if s.chars().any(char::is_control) {
            return Err(ErrorKind::BadString {
                msg: self.msg,
                field,
                reason: "contains control characters",
            });
        }
        Ok(s.to_owned())
    }

    fn bad_enum(&self, field: &'static str, value: u8) -> ErrorKind {
        ErrorKind::BadEnum {
            msg: self.msg,
            field,
            value,
        }
    }

    fn finish(&self) -> Result<(), ErrorKind> {
        let extra = self.buf.len() - self.pos;
        if extra != 0 {
            return Err(ErrorKind::TrailingBytes {
                msg: self.msg,
                extra,
            });
        }
        Ok(())
    }
}

fn decode_inner(bytes: &[u8]) -> Result<Message, ErrorKind> {
    if bytes.len() < 2 {
        return Err(ErrorKind::Truncated {
            msg: "message",
            field: "header",
            need: 2,
            have: bytes.len(),
        });
    }
    if bytes[0] != PROTOCOL_VERSION {
        return Err(ErrorKind::UnsupportedVersion(bytes[0]));
    }
    let t = bytes[1];
    let msg = match t {
        ty::COMMAND => "command",
        ty::HAPTIC => "haptic",
        ty::STATE => "state",
        ty::PING => "ping",
        ty::PONG => "pong",
        ty::US_FRAME => "us_frame",
        ty::HELLO => "hello",
        ty::WELCOME => "welcome",
        ty::LEASE_ACQUIRE => "lease_acquire",
        ty::LEASE_RELEASE => "lease_release",
        ty::LEASE_TAKE_OVER => "lease_take_over",
        ty::TAKE_OVER_REQUESTED => "take_over_requested",
        ty::TAKE_OVER_CONFIRM => "take_over_confirm",
        ty::TAKE_OVER_DENY => "take_over_deny",
        ty::LEASE_UPDATE => "lease_update",
        ty::ESTOP => "estop",
        ty::RESET => "reset",
        ty::START_PROTOCOL => "start_protocol",
        ty::STOP_PROTOCOL => "stop_protocol",
        ty::REPLY => "reply",
        other => return Err(ErrorKind::UnknownType(other)),
    };
    let mut r = Reader {
        buf: bytes,
        pos: 2,
        msg,
    };
    let m = match t {
        ty::COMMAND => {
            let seq = r.u64("seq")?;
            let sent_s = r.time("sent_s")?;
            let mode = match r.u8("mode")? {
                0 => CommandMode::Free,
                1 => CommandMode::Contact,
                v => return Err(r.bad_enum("mode", v)),
            };
            let force_n = r.f64_in("force_n", 0.0, limits::MAX_FORCE_SETPOINT_N)?;
            let target = match r.u8("target_kind")? {
                0 => Target::Pose(r.pose("target_pose")?),
                1 => {
                    let lin = r.vec3_in("linear_m_s", limits::MAX_LINEAR_SPEED_M_S)?;
                    let lin = r.norm_in("linear_m_s", lin, limits::MAX_LINEAR_SPEED_M_S)?;
                    let ang = r.vec3_in("angular_rad_s", limits::MAX_ANGULAR_SPEED_RAD_S)?;
                    let ang = r.norm_in("angular_rad_s", ang, limits::MAX_ANGULAR_SPEED_RAD_S)?;
                    Target::Twist {
                        linear_m_s: lin,
                        angular_rad_s: ang,
                    }
                }
                v => return Err(r.bad_enum("target_kind", v)),
            };
            Message::Command(OperatorCommand {
                seq,
                sent_s,
                mode,
                force_n,
                target,
            })
        }
        ty::HAPTIC => {
            let seq = r.u64("seq")?;
            let measured_s = r.time("measured_s")?;
            let cmd_seq = r.u64("cmd_seq")?;
            let cmd_sent_s = r.time("cmd_sent_s")?;
            let force_n = r.vec3_in("force_n", limits::MAX_FORCE_N)?;
            let torque_nm = r.vec3_in("torque_nm", limits::MAX_TORQUE_NM)?;
            let contact = match r.u8("has_contact")? {
                0 => None,
                1 => Some(ContactModel {
                    point_m: r.vec3_in("contact_point_m", limits::MAX_POSITION_M)?,
                    normal: r.unit_vec3("contact_normal")?,
                    stiffness_n_m: r.f64_in("stiffness_n_m", 0.0, limits::MAX_STIFFNESS_N_M)?,
                    damping_n_s_m: r.f64_in("damping_n_s_m", 0.0, limits::MAX_DAMPING_N_S_M)?,
                }),
                v => return Err(r.bad_enum("has_contact", v)),
            };
            Message::Haptic(HapticFeedback {
                seq,
                measured_s,
                cmd_seq,
                cmd_sent_s,
                force_n,
                torque_nm,
                contact,
            })
        }
        ty::STATE => {
            let seq = r.u64("seq")?;
            let measured_s = r.time("measured_s")?;
            let safety = match r.u8("safety")? {
                0 => SafetyCode::Normal,
                1 => SafetyCode::Hold,
                2 => SafetyCode::Retract,
                3 => SafetyCode::FaultStop,
                4 => SafetyCode::EStop,
                v => return Err(r.bad_enum("safety", v)),
            };
            let link = match r.u8("link")? {
                0 => LinkState::Idle,
                1 => LinkState::Live,
                2 => LinkState::Hold,
                3 => LinkState::Retract,
                v => return Err(r.bad_enum("link", v)),
            };
            let n = r.u8("n_joints")? as usize;
            if n > limits::MAX_JOINTS {
                return Err(ErrorKind::OutOfRange {
                    msg,
                    field: "n_joints",
                    value: n as f64,
                    min: 0.0,
                    max: limits::MAX_JOINTS as f64,
                });
            }
            let mut joints_rad = Vec::with_capacity(n);
            for _ in 0..n {
                joints_rad.push(r.f64_in(
                    "joints_rad",
                    -limits::MAX_JOINT_RAD,
                    limits::MAX_JOINT_RAD,
                )?);
            }
            Message::State(RobotState {
                seq,
                measured_s,
                safety,
                link,
                joints_rad,
                probe: r.pose("probe")?,
                force_n: r.vec3_in("force_n", limits::MAX_FORCE_N)?,
                torque_nm: r.vec3_in("torque_nm", limits::MAX_TORQUE_NM)?,
            })
        }
        ty::PING => Message::Ping(Ping {
            id: r.u32("id")?,
            t0_s: r.time("t0_s")?,
        }),
        ty::PONG => Message::Pong(Pong {
            id: r.u32("id")?,
            t0_s: r.time("t0_s")?,
            t1_s: r.time("t1_s")?,
            t2_s: r.time("t2_s")?,
        }),
        ty::US_FRAME => {
            let seq = r.u64("seq")?;
            let acquired_s = r.time("acquired_s")?;
            let width = r.u16("width")?;
            let height = r.u16("height")?;
            for (field, v) in [("width", width), ("height", height)] {
                if v == 0 || v > limits::MAX_IMAGE_SIDE {
                    return Err(ErrorKind::OutOfRange {
                        msg,
                        field,
                        value: v as f64,
                        min: 1.0,
                        max: limits::MAX_IMAGE_SIDE as f64,
                    });
                }
            }
            let lateral_spacing_m = r.f64_in("lateral_spacing_m", 1e-6, limits::MAX_SPACING_M)?;
            let axial_spacing_m = r.f64_in("axial_spacing_m", 1e-6, limits::MAX_SPACING_M)?;
            let probe = r.pose("probe")?;
            let encoding = match r.u8("encoding")? {
                0 => FrameEncoding::Raw,
                1 => FrameEncoding::DeltaZstd,
                v => return Err(r.bad_enum("encoding", v)),
            };
            let len = r.u32("payload_len")? as usize;
            let pixels = width as usize * height as usize;
            let ok = match encoding {
                FrameEncoding::Raw => len == pixels,
                // zstd never expands incompressible input by more than a small bound.
                FrameEncoding::DeltaZstd => len <= pixels + pixels / 64 + 1024,
            };
            if !ok {
                return Err(ErrorKind::BadPayloadLength { len, width, height });
            }
            let payload = r.take(len, "payload")?.to_vec();
            Message::UsFrame(UsFrameMsg {
                seq,
                acquired_s,
                width,
                height,
                lateral_spacing_m,
                axial_spacing_m,
                probe,
                encoding,
                payload,
            })
        }
        ty::HELLO => Message::Hello {
            client: r.string("client")?,
        },
        ty::WELCOME => Message::Welcome {
            role: match r.u8("role")? {
                1 => Role::Operator,
                2 => Role::Observer,
                v => return Err(r.bad_enum("role", v)),
            },
            conn_id: r.u64("conn_id")?,
            server_time_s: r.time("server_time_s")?,
            identity: r.string("identity")?,
            holder: r.string("holder")?,
        },
        ty::LEASE_ACQUIRE => Message::LeaseAcquire { req: r.u32("req")? },
        ty::LEASE_RELEASE => Message::LeaseRelease { req: r.u32("req")? },
        ty::LEASE_TAKE_OVER => Message::LeaseTakeOver { req: r.u32("req")? },
        ty::TAKE_OVER_REQUESTED => Message::TakeOverRequested {
            requester: r.string("requester")?,
            timeout_s: r.f64_in("timeout_s", 0.0, limits::MAX_TIMEOUT_S)?,
        },
        ty::TAKE_OVER_CONFIRM => Message::TakeOverConfirm { req: r.u32("req")? },
        ty::TAKE_OVER_DENY => Message::TakeOverDeny { req: r.u32("req")? },
        ty::LEASE_UPDATE => {
            let req = r.u32("req")?;
            let outcome = match r.u8("outcome")? {
                0 => LeaseOutcome::Granted,
                1 => LeaseOutcome::Released,
                2 => LeaseOutcome::Pending,
                3 => LeaseOutcome::Revoked,
                4 => LeaseOutcome::Changed,
                16 => LeaseOutcome::Denied(DenyReason::Held),
                17 => LeaseOutcome::Denied(DenyReason::NotOperator),
                18 => LeaseOutcome::Denied(DenyReason::HolderRefused),
                19 => LeaseOutcome::Denied(DenyReason::Busy),
                20 => LeaseOutcome::Denied(DenyReason::NotHolder),
                v => return Err(r.bad_enum("outcome", v)),
            };
            Message::LeaseUpdate {
                req,
                outcome,
                holder: r.string("holder")?,
            }
        }
        ty::ESTOP => Message::EStop { req: r.u32("req")? },
        ty::RESET => Message::Reset { req: r.u32("req")? },
        ty::START_PROTOCOL => Message::StartProtocol {
            req: r.u32("req")?,
            name: r.string("name")?,
        },
        ty::STOP_PROTOCOL => Message::StopProtocol { req: r.u32("req")? },
        ty::REPLY => Message::Reply {
            req: r.u32("req")?,
            status: match r.u8("status")? {
                0 => ReplyStatus::Ok,
                1 => ReplyStatus::NotHolder,
                2 => ReplyStatus::Invalid,
                v => return Err(r.bad_enum("status", v)),
            },
            text: r.string("text")?,
        },
        _ => return Err(ErrorKind::UnknownType(t)),
    };
    r.finish()?;
    Ok(m)
}
