//! The ROS 2 message types telecho publishes, defined once, and their CDR encoding.
//!
//! `ros2-client` ships no message types, so they live here: plain structs whose fields are declared
//! in the order of the ROS 2 `.msg` definitions (serde serializes struct fields in declaration
//! order, and CDR has no field names, so the order *is* the wire format). Definitions follow ROS 2
//! Jazzy (`ros2/common_interfaces`, branch `jazzy`), whose wire layout is identical to Humble's for
//! every type here.
//!
//! Each type implements [`RosMessage`], which carries its ROS 2 type name
//! (`sensor_msgs/msg/JointState`) and its `ros2msg` schema text (the `.msg` definition followed by
//! the definitions it depends on, each after a line of 80 `=` and a `MSG: pkg/Name` line), which is
//! what rosbag2 writes into MCAP files and what Foxglove and `mcap-ros2-support` parse.
//!
//! [`to_cdr`] and [`from_cdr`] produce and read the serialized form ROS 2 puts on the wire and into
//! rosbag2 files: a 4-byte encapsulation header `00 01 00 00` (plain CDR, little-endian) followed by
//! XCDR1 data aligned relative to the end of that header. The CDR body itself is done by
//! `cdr-encoding`, the crate RustDDS / `ros2-client` use, so what we record is byte-for-byte what we
//! will publish.
//!
//! ```
//! use telecho_core::ros_msgs::{from_cdr, to_cdr, Float64, RosMessage};
//!
//! let bytes = to_cdr(&Float64 { data: 1.5 }).unwrap();
//! assert_eq!(bytes, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f]);
//! assert_eq!(from_cdr::<Float64>(&bytes).unwrap().data, 1.5);
//! assert_eq!(Float64::TYPE_NAME, "std_msgs/msg/Float64");
//! ```

use byteorder::LittleEndian;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Encapsulation header of plain CDR, little-endian (`CDR_LE`), with zero options.
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// Separator line between the definitions of a `ros2msg` schema.
const SEPARATOR: &str =
    "================================================================================";

/// A `.msg` definition: the type name, its own fields (and constants), and the types it uses.
#[derive(Debug)]
pub struct MsgDef {
    /// Full ROS 2 type name, e.g. `geometry_msgs/msg/Pose`.
    pub name: &'static str,
    /// The `.msg` text of this type alone (comments dropped; type names fully qualified).
    pub text: &'static str,
    /// The message types this one's fields use, directly.
    pub deps: &'static [&'static MsgDef],
}

impl MsgDef {
    /// The `ros2msg` schema text: this definition, then every definition it depends on
    /// (depth-first, each once), each preceded by the separator and a `MSG: pkg/Name` line.
    pub fn schema_text(&self) -> String {
        let mut out = String::from(self.text);
        let mut seen = vec![self.name];
        let mut stack: Vec<&MsgDef> = self.deps.iter().rev().copied().collect();
        while let Some(def) = stack.pop() {
            if seen.contains(&def.name) {
                continue;
            }
            seen.push(def.name);
            out.push_str(SEPARATOR);
            out.push_str("\nMSG: ");
            out.push_str(&def.name.replacen("/msg/", "/", 1));
            out.push('\n');
            out.push_str(def.text);
            stack.extend(def.deps.iter().rev().copied());
        }
        out
    }
}

/// A ROS 2 message type telecho can serialize.
pub trait RosMessage: Serialize + DeserializeOwned {
    /// Full ROS 2 type name, e.g. `sensor_msgs/msg/JointState`.
    const TYPE_NAME: &'static str;
    /// The `.msg` definition tree.
    const DEF: &'static MsgDef;

    /// The `ros2msg` schema text (see [`MsgDef::schema_text`]).
    fn schema_text() -> String {
        Self::DEF.schema_text()
    }
}

/// Serializes a message to CDR as ROS 2 does: encapsulation header `00 01 00 00`, then XCDR1
/// little-endian data.
pub fn to_cdr<M: RosMessage>(msg: &M) -> Result<Vec<u8>, Error> {
    let body =
        cdr_encoding::to_vec::<M, LittleEndian>(msg).map_err(|e| Error::cdr(M::TYPE_NAME, e))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&CDR_LE_HEADER);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Deserializes a message from CDR bytes that start with the encapsulation header.
///
/// Only little-endian plain CDR (`00 01`) is accepted. The options bytes are ignored, and up to 3
/// trailing bytes are allowed because DDS implementations pad payloads to a multiple of 4. Truncated
/// or malformed input returns an error; it never panics.
pub fn from_cdr<M: RosMessage>(bytes: &[u8]) -> Result<M, Error> {
    let Some((header, body)) = bytes.split_first_chunk::<4>() else {
        return Err(Error::cdr(
            M::TYPE_NAME,
            format!(
                "{} bytes, shorter than the 4-byte encapsulation header",
                bytes.len()
            ),
        ));
    };
    if header[..2] != CDR_LE_HEADER[..2] {
        return Err(Error::cdr(
            M::TYPE_NAME,
            format!(
                "encapsulation {:02x} {:02x} is not plain little-endian CDR (00 01)",
                header[0], header[1]
            ),
        ));
    }
    let (msg, used) = cdr_encoding::from_bytes::<M, LittleEndian>(body)
        .map_err(|e| Error::cdr(M::TYPE_NAME, e))?;
    let extra = body.len() - used;
    if extra > 3 {
        return Err(Error::cdr(
            M::TYPE_NAME,
            format!("{extra} unexpected bytes after the message"),
        ));
    }
    Ok(msg)
}

macro_rules! ros_message {
    ($ty:ident, $def:ident, $name:literal, $text:expr, [$($dep:ident),*]) => {
        #[doc = concat!("Definition of `", $name, "`.")]
        pub static $def: MsgDef = MsgDef { name: $name, text: $text, deps: &[$(&$dep),*] };
        impl RosMessage for $ty {
            const TYPE_NAME: &'static str = $name;
            const DEF: &'static MsgDef = &$def;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// builtin_interfaces

/// `builtin_interfaces/msg/Time`: seconds and nanoseconds since the epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    /// From nanoseconds since the epoch (saturating at the `i32` seconds range).
    pub fn from_nanos(ns: u64) -> Self {
        let sec = (ns / 1_000_000_000).min(i32::MAX as u64) as i32;
        Self {
            sec,
            nanosec: (ns % 1_000_000_000) as u32,
        }
    }

    /// Nanoseconds since the epoch; times before the epoch give 0.
    pub fn as_nanos(&self) -> u64 {
        if self.sec < 0 {
            return 0;
        }
        self.sec as u64 * 1_000_000_000 + u64::from(self.nanosec)
    }
}
ros_message!(
    Time,
    TIME_DEF,
    "builtin_interfaces/msg/Time",
    "int32 sec\nuint32 nanosec\n",
    []
);

/// `builtin_interfaces/msg/Duration`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Duration {
    pub sec: i32,
    pub nanosec: u32,
}
ros_message!(
    Duration,
    DURATION_DEF,
    "builtin_interfaces/msg/Duration",
    "int32 sec\nuint32 nanosec\n",
    []
);

// ---------------------------------------------------------------------------------------------
// std_msgs

/// `std_msgs/msg/Header`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub stamp: Time,
    pub frame_id: String,
}

impl Header {
    /// A header stamped `ns` nanoseconds after the epoch, in frame `frame_id`.
    pub fn new(ns: u64, frame_id: impl Into<String>) -> Self {
        Self {
            stamp: Time::from_nanos(ns),
            frame_id: frame_id.into(),
        }
    }
}
ros_message!(
    Header,
    HEADER_DEF,
    "std_msgs/msg/Header",
    "builtin_interfaces/Time stamp\nstring frame_id\n",
    [TIME_DEF]
);

/// `std_msgs/msg/ColorRGBA`, components in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ColorRGBA {
    pub r: f32,
    pub g: f32,
    pub b: f32,
    pub a: f32,
}
ros_message!(
    ColorRGBA,
    COLOR_RGBA_DEF,
    "std_msgs/msg/ColorRGBA",
    "float32 r\nfloat32 g\nfloat32 b\nfloat32 a\n",
    []
);

/// `std_msgs/msg/Float64` (e.g. `/probe/force_setpoint` in newtons).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Float64 {
    pub data: f64,
}
ros_message!(
    Float64,
    FLOAT64_DEF,
    "std_msgs/msg/Float64",
    "float64 data\n",
    []
);

/// `std_msgs/msg/String` (e.g. `/robot_description`, the URDF XML). Named `StringMsg` so it does
/// not shadow [`std::string::String`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringMsg {
    pub data: String,
}
ros_message!(
    StringMsg,
    STRING_DEF,
    "std_msgs/msg/String",
    "string data\n",
    []
);

/// `std_msgs/msg/MultiArrayDimension`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiArrayDimension {
    pub label: String,
    pub size: u32,
    pub stride: u32,
}
ros_message!(
    MultiArrayDimension,
    MULTI_ARRAY_DIMENSION_DEF,
    "std_msgs/msg/MultiArrayDimension",
    "string label\nuint32 size\nuint32 stride\n",
    []
);

/// `std_msgs/msg/MultiArrayLayout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiArrayLayout {
    pub dim: Vec<MultiArrayDimension>,
    pub data_offset: u32,
}
ros_message!(
    MultiArrayLayout,
    MULTI_ARRAY_LAYOUT_DEF,
    "std_msgs/msg/MultiArrayLayout",
    "std_msgs/MultiArrayDimension[] dim\nuint32 data_offset\n",
    [MULTI_ARRAY_DIMENSION_DEF]
);

/// `std_msgs/msg/Float64MultiArray` (the joint commands of a `ros2_control`
/// `JointGroupPositionController`, one value per joint in the controller's `joints` order, with
/// an empty layout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Float64MultiArray {
    pub layout: MultiArrayLayout,
    pub data: Vec<f64>,
}
ros_message!(
    Float64MultiArray,
    FLOAT64_MULTI_ARRAY_DEF,
    "std_msgs/msg/Float64MultiArray",
    "std_msgs/MultiArrayLayout layout\nfloat64[] data\n",
    [MULTI_ARRAY_LAYOUT_DEF]
);

// ---------------------------------------------------------------------------------------------
// geometry_msgs

/// `geometry_msgs/msg/Vector3`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Vector3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}
ros_message!(
    Vector3,
    VECTOR3_DEF,
    "geometry_msgs/msg/Vector3",
    "float64 x\nfloat64 y\nfloat64 z\n",
    []
);

/// `geometry_msgs/msg/Vector3Stamped` (`/us/pixel_spacing`: x = column spacing, y = row
/// spacing, m).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vector3Stamped {
    pub header: Header,
    pub vector: Vector3,
}
ros_message!(
    Vector3Stamped,
    VECTOR3_STAMPED_DEF,
    "geometry_msgs/msg/Vector3Stamped",
    "std_msgs/Header header\ngeometry_msgs/Vector3 vector\n",
    [HEADER_DEF, VECTOR3_DEF]
);

/// `geometry_msgs/msg/Point`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}
ros_message!(
    Point,
    POINT_DEF,
    "geometry_msgs/msg/Point",
    "float64 x\nfloat64 y\nfloat64 z\n",
    []
);

/// `geometry_msgs/msg/Quaternion` (default: identity, `w = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub w: f64,
}

impl Default for Quaternion {
    fn default() -> Self {
        Self {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        }
    }
}
ros_message!(
    Quaternion,
    QUATERNION_DEF,
    "geometry_msgs/msg/Quaternion",
    "float64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
    []
);

/// `geometry_msgs/msg/Pose`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    pub position: Point,
    pub orientation: Quaternion,
}
ros_message!(
    Pose,
    POSE_DEF,
    "geometry_msgs/msg/Pose",
    "geometry_msgs/Point position\ngeometry_msgs/Quaternion orientation\n",
    [POINT_DEF, QUATERNION_DEF]
);

/// `geometry_msgs/msg/PoseStamped` (e.g. `/probe/target_pose`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoseStamped {
    pub header: Header,
    pub pose: Pose,
}
ros_message!(
    PoseStamped,
    POSE_STAMPED_DEF,
    "geometry_msgs/msg/PoseStamped",
    "std_msgs/Header header\ngeometry_msgs/Pose pose\n",
    [HEADER_DEF, POSE_DEF]
);

/// `geometry_msgs/msg/Wrench`: force (N) and torque (N·m).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Wrench {
    pub force: Vector3,
    pub torque: Vector3,
}
ros_message!(
    Wrench,
    WRENCH_DEF,
    "geometry_msgs/msg/Wrench",
    "geometry_msgs/Vector3 force\ngeometry_msgs/Vector3 torque\n",
    [VECTOR3_DEF]
);

/// `geometry_msgs/msg/WrenchStamped` (e.g. `/probe/wrench`, `frame_id` = `ft_sensor`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WrenchStamped {
    pub header: Header,
    pub wrench: Wrench,
}
ros_message!(
    WrenchStamped,
    WRENCH_STAMPED_DEF,
    "geometry_msgs/msg/WrenchStamped",
    "std_msgs/Header header\ngeometry_msgs/Wrench wrench\n",
    [HEADER_DEF, WRENCH_DEF]
);

/// `geometry_msgs/msg/Transform`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    pub translation: Vector3,
    pub rotation: Quaternion,
}

impl From<&crate::Transform> for Transform {
    fn from(t: &crate::Transform) -> Self {
        let q = nalgebra::UnitQuaternion::from_matrix(&t.rotation);
        Self {
            translation: Vector3 {
                x: t.translation.x,
                y: t.translation.y,
                z: t.translation.z,
            },
            rotation: Quaternion {
                x: q.i,
                y: q.j,
                z: q.k,
                w: q.w,
            },
        }
    }
}

impl From<&Transform> for crate::Transform {
    fn from(t: &Transform) -> Self {
        let r = t.rotation;
        let q = nalgebra::UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(
            r.w, r.x, r.y, r.z,
        ));
        let v = t.translation;
        crate::Transform::new(
            q.to_rotation_matrix().into_inner(),
            nalgebra::Vector3::new(v.x, v.y, v.z),
        )
    }
}
ros_message!(
    Transform,
    TRANSFORM_DEF,
    "geometry_msgs/msg/Transform",
    "geometry_msgs/Vector3 translation\ngeometry_msgs/Quaternion rotation\n",
    [VECTOR3_DEF, QUATERNION_DEF]
);

/// `geometry_msgs/msg/TransformStamped`: `header.frame_id` is the parent frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformStamped {
    pub header: Header,
    pub child_frame_id: String,
    pub transform: Transform,
}
ros_message!(
    TransformStamped,
    TRANSFORM_STAMPED_DEF,
    "geometry_msgs/msg/TransformStamped",
    "std_msgs/Header header\nstring child_frame_id\ngeometry_msgs/Transform transform\n",
    [HEADER_DEF, TRANSFORM_DEF]
);

// ---------------------------------------------------------------------------------------------
// sensor_msgs

/// `sensor_msgs/msg/JointState` (`/joint_states`): rad, rad/s, N·m for revolute joints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    pub header: Header,
    pub name: Vec<String>,
    pub position: Vec<f64>,
    pub velocity: Vec<f64>,
    pub effort: Vec<f64>,
}
ros_message!(
    JointState,
    JOINT_STATE_DEF,
    "sensor_msgs/msg/JointState",
    "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort\n",
    [HEADER_DEF]
);

/// `sensor_msgs/msg/Image` (`/us/image`, `encoding` = `mono8`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    pub encoding: String,
    pub is_bigendian: u8,
    /// Row length in bytes.
    pub step: u32,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
ros_message!(
    Image,
    IMAGE_DEF,
    "sensor_msgs/msg/Image",
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n",
    [HEADER_DEF]
);

/// `sensor_msgs/msg/CompressedImage` (used inside [`Marker`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressedImage {
    pub header: Header,
    pub format: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
ros_message!(
    CompressedImage,
    COMPRESSED_IMAGE_DEF,
    "sensor_msgs/msg/CompressedImage",
    "std_msgs/Header header\nstring format\nuint8[] data\n",
    [HEADER_DEF]
);

// ---------------------------------------------------------------------------------------------
// tf2_msgs

/// `tf2_msgs/msg/TFMessage` (`/tf`, `/tf_static`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TFMessage {
    pub transforms: Vec<TransformStamped>,
}
ros_message!(
    TFMessage,
    TF_MESSAGE_DEF,
    "tf2_msgs/msg/TFMessage",
    "geometry_msgs/TransformStamped[] transforms\n",
    [TRANSFORM_STAMPED_DEF]
);

// ---------------------------------------------------------------------------------------------
// visualization_msgs

/// `visualization_msgs/msg/UVCoordinate` (float32 in Humble/Jazzy; Rolling later moved to float64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UVCoordinate {
    pub u: f32,
    pub v: f32,
}
ros_message!(
    UVCoordinate,
    UV_COORDINATE_DEF,
    "visualization_msgs/msg/UVCoordinate",
    "float32 u\nfloat32 v\n",
    []
);

/// `visualization_msgs/msg/MeshFile`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshFile {
    pub filename: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
ros_message!(
    MeshFile,
    MESH_FILE_DEF,
    "visualization_msgs/msg/MeshFile",
    "string filename\nuint8[] data\n",
    []
);

/// `visualization_msgs/msg/Marker` (landmarks on `/perception/landmarks`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub header: Header,
    pub ns: String,
    pub id: i32,
    /// One of the shape constants ([`Marker::SPHERE`], …).
    #[serde(rename = "type")]
    pub type_: i32,
    /// [`Marker::ADD`], [`Marker::DELETE`] or [`Marker::DELETEALL`].
    pub action: i32,
    pub pose: Pose,
    pub scale: Vector3,
    pub color: ColorRGBA,
    /// Zero means forever.
    pub lifetime: Duration,
    pub frame_locked: bool,
    pub points: Vec<Point>,
    pub colors: Vec<ColorRGBA>,
    pub texture_resource: String,
    pub texture: CompressedImage,
    pub uv_coordinates: Vec<UVCoordinate>,
    pub text: String,
    pub mesh_resource: String,
    pub mesh_file: MeshFile,
    pub mesh_use_embedded_materials: bool,
}

impl Marker {
    pub const ARROW: i32 = 0;
    pub const CUBE: i32 = 1;
    pub const SPHERE: i32 = 2;
    pub const CYLINDER: i32 = 3;
    pub const LINE_STRIP: i32 = 4;
    pub const LINE_LIST: i32 = 5;
    pub const CUBE_LIST: i32 = 6;
    pub const SPHERE_LIST: i32 = 7;
    pub const POINTS: i32 = 8;
    pub const TEXT_VIEW_FACING: i32 = 9;
    pub const MESH_RESOURCE: i32 = 10;
    pub const TRIANGLE_LIST: i32 = 11;
    pub const ARROW_STRIP: i32 = 12;
    pub const ADD: i32 = 0;
    pub const MODIFY: i32 = 0;
    pub const DELETE: i32 = 2;
    pub const DELETEALL: i32 = 3;
}
ros_message!(
    Marker,
    MARKER_DEF,
    "visualization_msgs/msg/Marker",
    "int32 ARROW=0
int32 CUBE=1
int32 SPHERE=2
int32 CYLINDER=3
int32 LINE_STRIP=4
int32 LINE_LIST=5
int32 CUBE_LIST=6
int32 SPHERE_LIST=7
int32 POINTS=8
int32 TEXT_VIEW_FACING=9
int32 MESH_RESOURCE=10
int32 TRIANGLE_LIST=11
int32 ARROW_STRIP=12
int32 ADD=0
int32 MODIFY=0
int32 DELETE=2
int32 DELETEALL=3
std_msgs/Header header
string ns
int32 id
int32 type
int32 action
geometry_msgs/Pose pose
geometry_msgs/Vector3 scale
std_msgs/ColorRGBA color
builtin_interfaces/Duration lifetime
bool frame_locked
geometry_msgs/Point[] points
std_msgs/ColorRGBA[] colors
string texture_resource
sensor_msgs/CompressedImage texture
visualization_msgs/UVCoordinate[] uv_coordinates
string text
string mesh_resource
visualization_msgs/MeshFile mesh_file
bool mesh_use_embedded_materials
",
    [
        HEADER_DEF,
        POSE_DEF,
        VECTOR3_DEF,
        COLOR_RGBA_DEF,
        DURATION_DEF,
        POINT_DEF,
        COMPRESSED_IMAGE_DEF,
        UV_COORDINATE_DEF,
        MESH_FILE_DEF
    ]
);

/// `visualization_msgs/msg/MarkerArray`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarkerArray {
    pub markers: Vec<Marker>,
}
ros_message!(
    MarkerArray,
    MARKER_ARRAY_DEF,
    "visualization_msgs/msg/MarkerArray",
    "visualization_msgs/Marker[] markers\n",
    [MARKER_DEF]
);

// ---------------------------------------------------------------------------------------------
// diagnostic_msgs: safety events and node status, as `ros2 topic echo` and Foxglove show them.

/// `diagnostic_msgs/msg/KeyValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}
ros_message!(
    KeyValue,
    KEY_VALUE_DEF,
    "diagnostic_msgs/msg/KeyValue",
    "string key\nstring value\n",
    []
);

/// `diagnostic_msgs/msg/DiagnosticStatus`; `level` is one of the `DiagnosticStatus::OK`… constants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<KeyValue>,
}

impl DiagnosticStatus {
    /// Level `OK`.
    pub const OK: u8 = 0;
    /// Level `WARN`.
    pub const WARN: u8 = 1;
    /// Level `ERROR`.
    pub const ERROR: u8 = 2;
    /// Level `STALE`.
    pub const STALE: u8 = 3;
}
ros_message!(
    DiagnosticStatus,
    DIAGNOSTIC_STATUS_DEF,
    "diagnostic_msgs/msg/DiagnosticStatus",
    "byte OK=0\nbyte WARN=1\nbyte ERROR=2\nbyte STALE=3\nbyte level\nstring name\nstring message\nstring hardware_id\ndiagnostic_msgs/KeyValue[] values\n",
    [KEY_VALUE_DEF]
);

/// `diagnostic_msgs/msg/DiagnosticArray`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    pub header: Header,
    pub status: Vec<DiagnosticStatus>,
}
ros_message!(
    DiagnosticArray,
    DIAGNOSTIC_ARRAY_DEF,
    "diagnostic_msgs/msg/DiagnosticArray",
    "std_msgs/Header header\ndiagnostic_msgs/DiagnosticStatus[] status\n",
    [HEADER_DEF, DIAGNOSTIC_STATUS_DEF]
);

// ---------------------------------------------------------------------------------------------
// std_srvs: the services telecho offers (`/scan/start`, `/scan/stop`, `/perception/register`).

/// `std_srvs/srv/Trigger` request. The service has no request fields; ROS 2's IDL gives an empty
/// structure one `uint8` member so that it has a wire form (rosidl's
/// `structure_needs_at_least_one_member`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRequest {
    pub structure_needs_at_least_one_member: u8,
}

/// `std_srvs/srv/Trigger` response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerResponse {
    /// The request was carried out.
    pub success: bool,
    /// What happened, or why not.
    pub message: String,
}

/// ROS 2 service type names (`pkg`, `Name`) of the services above.
pub const TRIGGER_SERVICE: (&str, &str) = ("std_srvs", "Trigger");

// ---------------------------------------------------------------------------------------------
// telecho's node-to-node payloads: JSON in `std_msgs/String` (`/us/frame_info`, `/scan/status`,
// `/scan/protocol`), so any ROS 2 tool shows them and no custom message package is needed.

/// `/us/frame_info`: what the control node knew when a frame was taken (one JSON object per
/// frame, in a `std_msgs/String`, stamped like the image by `stamp_ns`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameInfo {
    /// The image's header stamp, ns since the epoch.
    pub stamp_ns: u64,
    /// Acquisition time on the control node's clock, s.
    pub time_s: f64,
    /// Controller force estimate along the probe axis, N.
    pub force_n: f64,
    /// Force reference, N.
    pub force_setpoint_n: f64,
    /// Scan run (0: no scan yet).
    pub run: u32,
    /// Executor state (`None` outside a scan).
    pub state: Option<String>,
    /// Current sweep of the run.
    pub sweep_index: usize,
}

/// `/scan/status` (latched, `std_msgs/String` JSON): published on every executor state or
/// sweep change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanStatus {
    /// Scan run (0: none started yet).
    pub run: u32,
    /// Executor state, or `none` before any scan.
    pub state: String,
    /// Protocol name.
    pub protocol: String,
    /// Current sweep index and name.
    pub sweep_index: usize,
    /// Name of the current sweep.
    pub sweep_name: Option<String>,
    /// Sweeps in the protocol.
    pub sweep_count: usize,
    /// Why the run aborted.
    pub abort_cause: Option<String>,
    /// Control-node time of the change, s.
    pub time_s: f64,
}

impl ScanStatus {
    /// True while a run is under way (started and not done or aborted).
    pub fn is_running(&self) -> bool {
        !matches!(self.state.as_str(), "none" | "done" | "aborted")
    }
}

/// `/scan/protocol` (latched, `std_msgs/String` JSON): the protocol a node's `/scan/start`
/// runs, and the probe and patient it runs on — what a perception node needs to write the
/// tracked sweep (`docs/SWEEP_FORMAT.md`) from the live topics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtocolInfo {
    /// Protocol name.
    pub name: String,
    /// Bundled arm (`ur5e`, `panda`).
    pub arm: String,
    /// URDF robot name.
    pub urdf: String,
    /// Simulated patient seed (0 on hardware).
    pub seed: u64,
    /// The ultrasound probe.
    pub probe: ProbeDescription,
    /// The sweeps, in order.
    pub sweeps: Vec<SweepDescription>,
}

/// The probe in [`ProtocolInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeDescription {
    /// Centre frequency, Hz.
    pub frequency_hz: f64,
    /// Aperture, m.
    pub aperture_m: f64,
    /// Imaging depth, m.
    pub depth_m: f64,
    /// Elevational slice thickness, m.
    pub slice_thickness_m: f64,
}

/// One sweep in [`ProtocolInfo`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepDescription {
    /// Sweep name.
    pub name: String,
    /// `sagittal` or `transverse`.
    pub orientation: String,
    /// Force setpoint, N.
    pub force_n: f64,
    /// Speed, m/s.
    pub speed_m_s: f64,
    /// Beam tilt toward the midline, degrees.
    pub tilt_deg: f64,
}

#[cfg(test)]
mod string_msg_tests {
    use super::*;

    #[test]
    fn string_msg_is_a_cdr_string_with_its_terminating_nul() {
        let bytes = to_cdr(&StringMsg { data: "ab".into() }).unwrap();
        // Header, length 3 (two characters and the NUL), "ab\0".
        assert_eq!(bytes, [0, 1, 0, 0, 3, 0, 0, 0, b'a', b'b', 0]);
        assert_eq!(from_cdr::<StringMsg>(&bytes).unwrap().data, "ab");
        assert_eq!(StringMsg::TYPE_NAME, "std_msgs/msg/String");
        assert_eq!(StringMsg::schema_text(), "string data\n");
    }

    #[test]
    fn trigger_messages_have_the_rosidl_wire_form() {
        // The empty request is one uint8; the response a bool and a string.
        let req: Vec<u8> =
            cdr_encoding::to_vec::<_, LittleEndian>(&TriggerRequest::default()).unwrap();
        assert_eq!(req, [0]);
        let resp = TriggerResponse {
            success: true,
            message: "ok".into(),
        };
        let bytes: Vec<u8> = cdr_encoding::to_vec::<_, LittleEndian>(&resp).unwrap();
        // bool, 3 bytes of padding to the string length, length 3, "ok\0".
        assert_eq!(bytes, [1, 0, 0, 0, 3, 0, 0, 0, b'o', b'k', 0]);
        let (back, _) = cdr_encoding::from_bytes::<TriggerResponse, LittleEndian>(&bytes).unwrap();
        assert_eq!(back, resp);
    }

    #[test]
    fn float64_multi_array_has_the_rosidl_wire_form() {
        let msg = Float64MultiArray {
            layout: MultiArrayLayout::default(),
            data: vec![0.5, -1.25],
        };
        let bytes = to_cdr(&msg).unwrap();
        // Header; 0 dimensions; data_offset 0; length 2; 4 bytes of padding (doubles align to 8
        // from the body's start); the 2 doubles.
        let mut want = vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&0.5f64.to_le_bytes());
        want.extend_from_slice(&(-1.25f64).to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(from_cdr::<Float64MultiArray>(&bytes).unwrap(), msg);
        let schema = Float64MultiArray::schema_text();
        assert!(schema.starts_with("std_msgs/MultiArrayLayout layout\nfloat64[] data\n"));
        assert!(schema.contains("MSG: std_msgs/MultiArrayLayout\n"));
        assert!(schema.contains("MSG: std_msgs/MultiArrayDimension\nstring label\n"));
    }

    #[test]
    fn vector3_stamped_schema_names_its_dependencies() {
        let s = Vector3Stamped::schema_text();
        assert!(s.starts_with("std_msgs/Header header\ngeometry_msgs/Vector3 vector\n"));
        assert!(s.contains("MSG: geometry_msgs/Vector3\n"));
        assert!(s.contains("MSG: std_msgs/Header\n"));
    }
}
