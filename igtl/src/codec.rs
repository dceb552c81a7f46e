//! The OpenIGTLink wire format, without I/O: the 58-byte header, the version-2 extended header
//! and metadata (protocol v3), and the bodies of TRANSFORM, IMAGE, POINT, STATUS and the
//! GET_/STT_/STP_/RTS_ requests.
//!
//! All numbers are big-endian (the IMAGE pixels excepted: their byte order is the image header's
//! `endian` field). Fixed-size text fields are padded with zero bytes. Decoding validates every
//! size and field and returns an [`Error`] naming what was wrong; it never panics on any input.

use nalgebra::{Matrix4, Vector4};

use crate::crc::crc64;
use crate::error::{Error, ErrorKind};

/// Size of the message header, bytes.
pub const HEADER_SIZE: usize = 58;
/// Size of the version-2 extended header, bytes.
pub const EXTENDED_HEADER_SIZE: usize = 12;
/// Size of a TRANSFORM body, bytes (12 float32).
pub const TRANSFORM_SIZE: usize = 48;
/// Size of the IMAGE header that precedes the pixels, bytes.
pub const IMAGE_HEADER_SIZE: usize = 72;
/// Size of one POINT element, bytes.
pub const POINT_ELEMENT_SIZE: usize = 136;
/// Size of the fixed part of a STATUS body (code, sub-code, error name), bytes.
pub const STATUS_HEADER_SIZE: usize = 30;
/// Default upper bound on a body accepted by [`Decoder`] (a garbage header announcing terabytes
/// is refused before anything is buffered).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 64 << 20;

const TYPE_LEN: usize = 12;
const DEVICE_LEN: usize = 20;
const POINT_NAME_LEN: usize = 64;
const POINT_GROUP_LEN: usize = 32;
const POINT_OWNER_LEN: usize = 20;
const STATUS_NAME_LEN: usize = 20;
/// Largest body accepted for STT_/RTS_ requests (STT_TDATA has 36 bytes).
const MAX_REQUEST_BODY: usize = 256;
/// IANA MIBenum of US-ASCII, a metadata value encoding.
pub const ENCODING_ASCII: u16 = 3;
/// IANA MIBenum of UTF-8, a metadata value encoding.
pub const ENCODING_UTF8: u16 = 106;

/// OpenIGTLink timestamp: seconds since the Unix epoch and a binary fraction of a second
/// (`fraction / 2^32` s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub seconds: u32,
    /// Fraction of a second in units of 2^-32 s.
    pub fraction: u32,
}

impl Timestamp {
    /// From seconds since the epoch; negative or non-finite values give 0, values past 2106 saturate.
    pub fn from_secs_f64(s: f64) -> Self {
        if !s.is_finite() || s <= 0.0 {
            return Self::default();
        }
        if s >= f64::from(u32::MAX) + 1.0 {
            return Self {
                seconds: u32::MAX,
                fraction: u32::MAX,
            };
        }
        let seconds = s.floor();
        let fraction = ((s - seconds) * 4_294_967_296.0)
            .floor()
            .min(4_294_967_295.0);
        Self {
            seconds: seconds as u32,
            fraction: fraction as u32,
        }
    }

    /// Seconds since the epoch.
    pub fn as_secs_f64(&self) -> f64 {
        f64::from(self.seconds) + f64::from(self.fraction) / 4_294_967_296.0
    }

    /// The wall clock now.
    pub fn now() -> Self {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self::from_secs_f64(s)
    }

    /// The 64-bit field of the header.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.seconds) << 32) | u64::from(self.fraction)
    }

    /// From the 64-bit field of the header.
    pub fn from_u64(v: u64) -> Self {
        Self {
            seconds: (v >> 32) as u32,
            fraction: v as u32,
        }
    }
}

/// The 58-byte message header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header version: 1 (OpenIGTLink 1 and 2), 2 (OpenIGTLink 3: the body starts with the
    /// extended header and ends with the metadata).
    pub version: u16,
    /// Message type, e.g. `TRANSFORM` (at most 12 ASCII characters).
    pub type_name: String,
    /// Device (message) name, at most 20 bytes.
    pub device_name: String,
    /// When the data was generated.
    pub timestamp: Timestamp,
    /// Size of the body that follows, bytes.
    pub body_size: u64,
    /// CRC-64/ECMA-182 of the body.
    pub crc: u64,
}

impl Header {
    /// Decodes the first [`HEADER_SIZE`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let Some(h) = bytes.get(..HEADER_SIZE) else {
            return Err(Error::header(format!(
                "{} bytes, a header has {HEADER_SIZE}",
                bytes.len()
            )));
        };
        let mut r = Reader::new(h);
        let version = r.u16();
        if version != 1 && version != 2 {
            return Err(Error::header(format!(
                "version {version} (only 1 and 2 exist)"
            )));
        }
        let type_name = type_text(r.take(TYPE_LEN))?;
        let device_name =
            text(r.take(DEVICE_LEN)).map_err(|e| Error::header(format!("device name: {e}")))?;
        let timestamp = Timestamp::from_u64(r.u64());
        let body_size = r.u64();
        let crc = r.u64();
        Ok(Self {
            version,
            type_name,
            device_name,
            timestamp,
            body_size,
            crc,
        })
    }

    /// Encodes the header.
    pub fn encode(&self) -> Result<[u8; HEADER_SIZE], Error> {
        if self.version != 1 && self.version != 2 {
            return Err(Error::encode(
                "header",
                format!("version {} (only 1 and 2 exist)", self.version),
            ));
        }
        if self.type_name.is_empty()
            || !self.type_name.bytes().all(|b| b.is_ascii_graphic())
            || self.type_name.len() > TYPE_LEN
        {
            return Err(Error::encode(
                "header",
                format!(
                    "type name {:?} must be 1–{TYPE_LEN} printable ASCII characters",
                    self.type_name
                ),
            ));
        }
        let mut out = Vec::with_capacity(HEADER_SIZE);
        out.extend_from_slice(&self.version.to_be_bytes());
        put_text(&mut out, &self.type_name, TYPE_LEN, "header", "type name")?;
        put_text(
            &mut out,
            &self.device_name,
            DEVICE_LEN,
            "header",
            "device name",
        )?;
        out.extend_from_slice(&self.timestamp.to_u64().to_be_bytes());
        out.extend_from_slice(&self.body_size.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        let mut h = [0u8; HEADER_SIZE];
        h.copy_from_slice(&out);
        Ok(h)
    }
}

/// A rigid (or affine) transform: the upper 3×4 of a homogeneous matrix, row-major. On the wire it
/// travels as 12 float32 in column order `R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransformData {
    /// Rows 0–2 of the 4×4 matrix; column 3 is the translation (mm).
    pub matrix: [[f32; 4]; 3],
}

impl TransformData {
    /// From a 4×4 homogeneous matrix (the last row is not sent).
    pub fn from_matrix4(m: &Matrix4<f64>) -> Self {
        Self {
            matrix: std::array::from_fn(|r| std::array::from_fn(|c| m[(r, c)] as f32)),
        }
    }

    /// As a 4×4 homogeneous matrix.
    pub fn to_matrix4(&self) -> Matrix4<f64> {
        Matrix4::from_fn(|r, c| {
            if r < 3 {
                f64::from(self.matrix[r][c])
            } else if c == 3 {
                1.0
            } else {
                0.0
            }
        })
    }
}

/// Pixel type of an IMAGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// Signed 8-bit (code 2).
    Int8,
    /// Unsigned 8-bit (code 3).
    Uint8,
    /// Signed 16-bit (code 4).
    Int16,
    /// Unsigned 16-bit (code 5).
    Uint16,
    /// Signed 32-bit (code 6).
    Int32,
    /// Unsigned 32-bit (code 7).
    Uint32,
    /// 32-bit float (code 10).
    Float32,
    /// 64-bit float (code 11).
    Float64,
}

impl ScalarType {
    /// The code in the IMAGE header.
    pub fn code(self) -> u8 {
        match self {
            Self::Int8 => 2,
            Self::Uint8 => 3,
            Self::Int16 => 4,
            Self::Uint16 => 5,
            Self::Int32 => 6,
            Self::Uint32 => 7,
            Self::Float32 => 10,
            Self::Float64 => 11,
        }
    }

    /// From the code in the IMAGE header.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            2 => Self::Int8,
            3 => Self::Uint8,
            4 => Self::Int16,
            5 => Self::Uint16,
            6 => Self::Int32,
            7 => Self::Uint32,
            10 => Self::Float32,
            11 => Self::Float64,
            _ => return None,
        })
    }

    /// Bytes per scalar.
    pub fn size(self) -> usize {
        match self {
            Self::Int8 | Self::Uint8 => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Int32 | Self::Uint32 | Self::Float32 => 4,
            Self::Float64 => 8,
        }
    }
}

/// Byte order of IMAGE pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Code 1.
    Big,
    /// Code 2.
    Little,
}

/// The patient coordinate system an IMAGE's geometry is given in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coordinate {
    /// Code 1: +x right, +y anterior, +z superior.
    Ras,
    /// Code 2: +x left, +y posterior, +z superior (DICOM's patient system).
    Lps,
}

/// An IMAGE: 2D or 3D pixels with their geometry.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Components per pixel (1: scalar).
    pub components: u8,
    /// Pixel type.
    pub scalar_type: ScalarType,
    /// Byte order of the pixels.
    pub endian: Endian,
    /// Frame of `axes` and `center`.
    pub coordinate: Coordinate,
    /// Pixels along i, j, k (i fastest in memory).
    pub size: [u16; 3],
    /// The i, j, k axis vectors, mm: direction of each index, length = its spacing.
    pub axes: [[f32; 3]; 3],
    /// Position of the volume's centre (index `(size − 1) / 2`), mm.
    pub center: [f32; 3],
    /// First index of the sub-volume the pixels cover.
    pub subvolume_offset: [u16; 3],
    /// Size of the sub-volume the pixels cover.
    pub subvolume_size: [u16; 3],
    /// The sub-volume's pixels, i fastest, then j, then k; components interleaved.
    pub data: Vec<u8>,
}

impl Image {
    /// A whole single-component image from its index-to-world matrix: column `c` of
    /// `ijk_to_world` is the direction × spacing (mm) of index `c`, column 3 is the position of
    /// pixel (0, 0, 0) (mm). The header carries the centre, so it is computed here.
    pub fn from_ijk_to_world(
        size: [u16; 3],
        scalar_type: ScalarType,
        coordinate: Coordinate,
        ijk_to_world: &Matrix4<f64>,
        data: Vec<u8>,
    ) -> Result<Self, Error> {
        let center = ijk_to_world
            * Vector4::new(
                (f64::from(size[0]) - 1.0) / 2.0,
                (f64::from(size[1]) - 1.0) / 2.0,
                (f64::from(size[2]) - 1.0) / 2.0,
                1.0,
            );
        let image = Self {
            components: 1,
            scalar_type,
            endian: Endian::Little,
            coordinate,
            size,
            axes: std::array::from_fn(|c| std::array::from_fn(|r| ijk_to_world[(r, c)] as f32)),
            center: [center.x as f32, center.y as f32, center.z as f32],
            subvolume_offset: [0; 3],
            subvolume_size: size,
            data,
        };
        image.check().map_err(|e| Error::encode("IMAGE", e))?;
        Ok(image)
    }

    /// The index-to-world matrix (column 3: position of pixel (0, 0, 0), mm).
    pub fn ijk_to_world(&self) -> Matrix4<f64> {
        let mut m = Matrix4::identity();
        for c in 0..3 {
            for r in 0..3 {
                m[(r, c)] = f64::from(self.axes[c][r]);
            }
        }
        for r in 0..3 {
            let offset: f64 = (0..3)
                .map(|c| m[(r, c)] * (f64::from(self.size[c]) - 1.0) / 2.0)
                .sum();
            m[(r, 3)] = f64::from(self.center[r]) - offset;
        }
        m
    }

    /// Pixel spacing along i, j, k, mm (lengths of the axis vectors).
    pub fn spacing(&self) -> [f64; 3] {
        self.axes
            .map(|a| a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
    }

    /// Bytes the pixels of the sub-volume must have.
    pub fn expected_data_len(&self) -> u64 {
        self.subvolume_size
            .iter()
            .map(|&s| u64::from(s))
            .product::<u64>()
            * u64::from(self.components)
            * self.scalar_type.size() as u64
    }

    fn check(&self) -> Result<(), String> {
        if self.components == 0 {
            return Err("0 components per pixel".into());
        }
        if self.size.contains(&0) {
            return Err(format!("size {:?} has a zero dimension", self.size));
        }
        for a in 0..3 {
            let end = u32::from(self.subvolume_offset[a]) + u32::from(self.subvolume_size[a]);
            if self.subvolume_size[a] == 0 || end > u32::from(self.size[a]) {
                return Err(format!(
                    "sub-volume offset {:?} size {:?} is not inside the image size {:?}",
                    self.subvolume_offset, self.subvolume_size, self.size
                ));
            }
        }
        if self
            .axes
            .iter()
            .flatten()
            .chain(&self.center)
            .any(|v| !v.is_finite())
        {
            return Err("geometry has a non-finite value".into());
        }
        let want = self.expected_data_len();
        if self.data.len() as u64 != want {
            return Err(format!(
                "{} pixel bytes, the header needs {want} ({:?} × {} component(s) × {} byte(s))",
                self.data.len(),
                self.subvolume_size,
                self.components,
                self.scalar_type.size()
            ));
        }
        Ok(())
    }
}

/// One element of a POINT message (a fiducial).
#[derive(Clone, Debug, PartialEq)]
pub struct PointElement {
    /// Name or description (at most 64 bytes).
    pub name: String,
    /// Group, e.g. "Landmark" (at most 32 bytes).
    pub group: String,
    /// Colour, RGBA.
    pub rgba: [u8; 4],
    /// Position, mm.
    pub position: [f32; 3],
    /// Diameter, mm (may be 0).
    pub diameter: f32,
    /// Owner image id (at most 20 bytes).
    pub owner: String,
}

/// Status codes of the STATUS message.
pub mod status_code {
    /// Invalid packet (0 is not used).
    pub const INVALID: u16 = 0;
    /// OK.
    pub const OK: u16 = 1;
    /// Unknown error.
    pub const UNKNOWN_ERROR: u16 = 2;
    /// Panic mode (emergency).
    pub const PANIC: u16 = 3;
    /// Not found (file, configuration, device).
    pub const NOT_FOUND: u16 = 4;
    /// Access denied.
    pub const ACCESS_DENIED: u16 = 5;
    /// Busy.
    pub const BUSY: u16 = 6;
    /// Time out / connection lost.
    pub const TIME_OUT: u16 = 7;
    /// Overflow / cannot be reached.
    pub const OVERFLOW: u16 = 8;
    /// Checksum error.
    pub const CHECKSUM_ERROR: u16 = 9;
    /// Configuration error.
    pub const CONFIG_ERROR: u16 = 10;
    /// Not enough resources.
    pub const NOT_ENOUGH_RESOURCE: u16 = 11;
    /// Illegal / unknown instruction.
    pub const UNKNOWN_INSTRUCTION: u16 = 12;
    /// Device not ready (starting up).
    pub const NOT_READY: u16 = 13;
    /// Manual mode.
    pub const MANUAL_MODE: u16 = 14;
    /// Device disabled.
    pub const DISABLED: u16 = 15;
    /// Device not present.
    pub const NOT_PRESENT: u16 = 16;
    /// Device version not known.
    pub const UNKNOWN_VERSION: u16 = 17;
    /// Hardware failure.
    pub const HARDWARE_FAILURE: u16 = 18;
    /// Exiting / shut down in progress.
    pub const SHUT_DOWN: u16 = 19;
}

/// A STATUS message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status code, see [`status_code`].
    pub code: u16,
    /// Device-specific sub-code.
    pub subcode: i64,
    /// Short error name, at most 20 bytes ("OK", "Error", ...).
    pub error_name: String,
    /// Free-text description (sent zero-terminated).
    pub message: String,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `GET_<type>`: send the current data once.
    Get,
    /// `STT_<type>`: start streaming.
    Start,
    /// `STP_<type>`: stop streaming.
    Stop,
    /// `RTS_<type>`: the answer to a request (one status byte: 0 success, 1 error).
    Ready,
}

impl RequestKind {
    /// The type-name prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Get => "GET_",
            Self::Start => "STT_",
            Self::Stop => "STP_",
            Self::Ready => "RTS_",
        }
    }
}

/// A GET_/STT_/STP_/RTS_ message: a query or stream control for a data type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Which query.
    pub kind: RequestKind,
    /// The data type it is about as the type name spells it: `TRANS` (the 12-character type
    /// field makes TRANSFORM's requests `GET_TRANS`, `STT_TRANS`, ...), `IMAGE`, `POINT`,
    /// `STATUS`, `TDATA`.
    pub data_type: String,
    /// The body: empty for GET_ and STP_; for STT_TDATA the resolution (uint32, ms) and the
    /// coordinate name (char[32]); for RTS_ one status byte.
    pub body: Vec<u8>,
}

impl Request {
    /// The message type the request is about: `TRANSFORM` for `TRANS`, the data type otherwise.
    pub fn target_type(&self) -> &str {
        match self.data_type.as_str() {
            "TRANS" => "TRANSFORM",
            other => other,
        }
    }
}

/// The content of a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    /// TRANSFORM.
    Transform(TransformData),
    /// IMAGE.
    Image(Image),
    /// POINT (any number of elements, possibly none).
    Point(Vec<PointElement>),
    /// STATUS.
    Status(Status),
    /// GET_/STT_/STP_/RTS_.
    Request(Request),
}

impl Content {
    /// The header's type name of this content.
    pub fn type_name(&self) -> String {
        match self {
            Self::Transform(_) => "TRANSFORM".into(),
            Self::Image(_) => "IMAGE".into(),
            Self::Point(_) => "POINT".into(),
            Self::Status(_) => "STATUS".into(),
            Self::Request(r) => format!("{}{}", r.kind.prefix(), r.data_type),
        }
    }
}

/// A whole message: header fields, content and (header version 2) message id and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Header version: 1, or 2 for the OpenIGTLink 3 extended header and metadata.
    pub version: u16,
    /// Device name (at most 20 bytes).
    pub device_name: String,
    /// When the data was generated.
    pub timestamp: Timestamp,
    /// Message id of the extended header (version 2 only; 0 otherwise).
    pub message_id: u32,
    /// Metadata key/value pairs (version 2 only), in order.
    pub metadata: Vec<(String, String)>,
    /// The content.
    pub content: Content,
}

impl Message {
    /// A version-1 message.
    pub fn new(device_name: impl Into<String>, timestamp: Timestamp, content: Content) -> Self {
        Self {
            version: 1,
            device_name: device_name.into(),
            timestamp,
            message_id: 0,
            metadata: Vec::new(),
            content,
        }
    }

    /// The same message as header version 2 with an extended header and these metadata.
    pub fn with_metadata(mut self, message_id: u32, metadata: Vec<(String, String)>) -> Self {
        self.version = 2;
        self.message_id = message_id;
        self.metadata = metadata;
        self
    }

    /// Encodes header and body.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let type_name = self.content.type_name();
        let content = encode_content(&self.content)?;
        let body = match self.version {
            1 => {
                if !self.metadata.is_empty() || self.message_id != 0 {
                    return Err(Error::encode(
                        "header",
                        "metadata and message id need header version 2",
                    ));
                }
                content
            }
            2 => {
                let (meta_header, meta_body) = encode_metadata(&self.metadata)?;
                let mut body = Vec::with_capacity(
                    EXTENDED_HEADER_SIZE + content.len() + meta_header.len() + meta_body.len(),
                );
                body.extend_from_slice(&(EXTENDED_HEADER_SIZE as u16).to_be_bytes());
                body.extend_from_slice(&(meta_header.len() as u16).to_be_bytes());
                body.extend_from_slice(&(meta_body.len() as u32).to_be_bytes());
                body.extend_from_slice(&self.message_id.to_be_bytes());
                body.extend_from_slice(&content);
                body.extend_from_slice(&meta_header);
                body.extend_from_slice(&meta_body);
                body
            }
            v => {
                return Err(Error::encode(
                    "header",
                    format!("version {v} (only 1 and 2 exist)"),
                ))
            }
        };
        let header = Header {
            version: self.version,
            type_name,
            device_name: self.device_name.clone(),
            timestamp: self.timestamp,
            body_size: body.len() as u64,
            crc: crc64(&body),
        }
        .encode()?;
        let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a message from its decoded header and its whole body: checks the CRC, then the
    /// extended header and metadata (version 2), then the content of the type.
    pub fn decode_body(header: &Header, body: &[u8]) -> Result<Self, Error> {
        if body.len() as u64 != header.body_size {
            return Err(Error::body(
                &header.type_name,
                format!("{} bytes, the header says {}", body.len(), header.body_size),
            ));
        }
        let computed = crc64(body);
        if computed != header.crc {
            return Err(Error(ErrorKind::Crc {
                type_name: header.type_name.clone(),
                expected: header.crc,
                computed,
            }));
        }
        let (content_bytes, message_id, metadata) = if header.version == 2 {
            split_extended(&header.type_name, body)?
        } else {
            (body, 0, Vec::new())
        };
        let content = decode_content(&header.type_name, content_bytes)?;
        Ok(Self {
            version: header.version,
            device_name: header.device_name.clone(),
            timestamp: header.timestamp,
            message_id,
            metadata,
            content,
        })
    }

    /// Decodes one message from the start of `bytes`; returns it and the bytes it used. An
    /// incomplete message is an error (use [`Decoder`] for a stream).
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), Error> {
        let header = Header::decode(bytes)?;
        let total = (HEADER_SIZE as u64).checked_add(header.body_size);
        match total {
            Some(total) if total <= bytes.len() as u64 => {
                let total = total as usize;
                let msg = Self::decode_body(&header, &bytes[HEADER_SIZE..total])?;
                Ok((msg, total))
            }
            _ => Err(Error::body(
                &header.type_name,
                format!(
                    "truncated: the header announces {} body bytes, {} are there",
                    header.body_size,
                    bytes.len() - HEADER_SIZE
                ),
            )),
        }
    }
}

/// Incremental decoder of a byte stream (a TCP connection): push what arrived, pop messages.
///
/// After a header or CRC error the stream cannot be trusted to be in step any more: drop the
/// connection. After an unknown-type or body error the message was consumed whole and the next
/// one can be decoded.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_body_size: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY_SIZE)
    }
}

impl Decoder {
    /// A decoder refusing bodies larger than `max_body_size` bytes.
    pub fn new(max_body_size: u64) -> Self {
        Self {
            buf: Vec::new(),
            max_body_size,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not decoded yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        if self.buf.len() < HEADER_SIZE {
            return Ok(None);
        }
        let header = match Header::decode(&self.buf) {
            Ok(h) => h,
            Err(e) => {
                self.buf.clear();
                return Err(e);
            }
        };
        if header.body_size > self.max_body_size {
            self.buf.clear();
            return Err(Error::header(format!(
                "{} body of {} bytes is over the limit of {} bytes",
                header.type_name, header.body_size, self.max_body_size
            )));
        }
        let total = HEADER_SIZE + header.body_size as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let result = Message::decode_body(&header, &self.buf[HEADER_SIZE..total]);
        self.buf.drain(..total);
        result.map(Some)
    }
}

fn encode_content(content: &Content) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    match content {
        Content::Transform(t) => {
            if t.matrix.iter().flatten().any(|v| !v.is_finite()) {
                return Err(Error::encode("TRANSFORM", "matrix has a non-finite value"));
            }
            for c in 0..4 {
                for r in 0..3 {
                    out.extend_from_slice(&t.matrix[r][c].to_be_bytes());
                }
            }
        }
        Content::Image(im) => {
            im.check().map_err(|e| Error::encode("IMAGE", e))?;
            out.reserve(IMAGE_HEADER_SIZE + im.data.len());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.push(im.components);
            out.push(im.scalar_type.code());
            out.push(match im.endian {
                Endian::Big => 1,
                Endian::Little => 2,
            });
            out.push(match im.coordinate {
                Coordinate::Ras => 1,
                Coordinate::Lps => 2,
            });
            for s in im.size {
                out.extend_from_slice(&s.to_be_bytes());
            }
            for v in im.axes.iter().flatten().chain(&im.center) {
                out.extend_from_slice(&v.to_be_bytes());
            }
            for v in im.subvolume_offset.iter().chain(&im.subvolume_size) {
                out.extend_from_slice(&v.to_be_bytes());
            }
            out.extend_from_slice(&im.data);
        }
        Content::Point(points) => {
            out.reserve(points.len() * POINT_ELEMENT_SIZE);
            for p in points {
                if p.position.iter().any(|v| !v.is_finite()) || !p.diameter.is_finite() {
                    return Err(Error::encode(
                        "POINT",
                        format!("point {:?} has a non-finite value", p.name),
                    ));
                }
                put_text(&mut out, &p.name, POINT_NAME_LEN, "POINT", "name")?;
                put_text(&mut out, &p.group, POINT_GROUP_LEN, "POINT", "group")?;
                out.extend_from_slice(&p.rgba);
                for v in p.position {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&p.diameter.to_be_bytes());
                put_text(&mut out, &p.owner, POINT_OWNER_LEN, "POINT", "owner")?;
            }
        }
        Content::Status(s) => {
            out.extend_from_slice(&s.code.to_be_bytes());
            out.extend_from_slice(&s.subcode.to_be_bytes());
            put_text(
                &mut out,
                &s.error_name,
                STATUS_NAME_LEN,
                "STATUS",
                "error name",
            )?;
            if s.message.contains('\0') {
                return Err(Error::encode("STATUS", "message contains a NUL byte"));
            }
            out.extend_from_slice(s.message.as_bytes());
            out.push(0);
        }
        Content::Request(r) => {
            if r.data_type.is_empty()
                || !r.data_type.bytes().all(|b| b.is_ascii_graphic())
                || r.data_type.len() + 4 > TYPE_LEN
            {
                return Err(Error::encode(
                    "request",
                    format!(
                        "data type {:?} must be 1–8 printable ASCII characters",
                        r.data_type
                    ),
                ));
            }
            check_request_body(r.kind, &r.data_type, r.body.len())
                .map_err(|e| Error::encode("request", e))?;
            out.extend_from_slice(&r.body);
        }
    }
    Ok(out)
}

fn check_request_body(kind: RequestKind, data_type: &str, len: usize) -> Result<(), String> {
    match kind {
        RequestKind::Get | RequestKind::Stop if len != 0 => Err(format!(
            "{}{data_type} has {len} body bytes, it has none",
            kind.prefix()
        )),
        RequestKind::Start | RequestKind::Ready if len > MAX_REQUEST_BODY => Err(format!(
            "{}{data_type} has {len} body bytes, at most {MAX_REQUEST_BODY} are accepted",
            kind.prefix()
        )),
        _ => Ok(()),
    }
}

fn decode_content(type_name: &str, b: &[u8]) -> Result<Content, Error> {
    let bad = |reason: String| Error::body(type_name, reason);
    Ok(match type_name {
        "TRANSFORM" => {
            if b.len() != TRANSFORM_SIZE {
                return Err(bad(format!(
                    "{} bytes, TRANSFORM has {TRANSFORM_SIZE}",
                    b.len()
                )));
            }
            let mut r = Reader::new(b);
            let mut matrix = [[0f32; 4]; 3];
            for c in 0..4 {
                for row in matrix.iter_mut() {
                    row[c] = r.f32();
                }
            }
            if matrix.iter().flatten().any(|v| !v.is_finite()) {
                return Err(bad("matrix has a non-finite value".into()));
            }
            Content::Transform(TransformData { matrix })
        }
        "IMAGE" => {
            if b.len() < IMAGE_HEADER_SIZE {
                return Err(bad(format!(
                    "{} bytes, shorter than the {IMAGE_HEADER_SIZE}-byte image header",
                    b.len()
                )));
            }
            let mut r = Reader::new(b);
            let version = r.u16();
            if version != 1 {
                return Err(bad(format!("image header version {version} (1 expected)")));
            }
            let components = r.u8();
            let scalar_code = r.u8();
            let scalar_type = ScalarType::from_code(scalar_code)
                .ok_or_else(|| bad(format!("unknown scalar type {scalar_code}")))?;
            let endian = match r.u8() {
                1 => Endian::Big,
                2 => Endian::Little,
                e => return Err(bad(format!("endian {e} (1 big or 2 little)"))),
            };
            let coordinate = match r.u8() {
                1 => Coordinate::Ras,
                2 => Coordinate::Lps,
                c => return Err(bad(format!("coordinate system {c} (1 RAS or 2 LPS)"))),
            };
            let size = [r.u16(), r.u16(), r.u16()];
            let axes: [[f32; 3]; 3] = std::array::from_fn(|_| [r.f32(), r.f32(), r.f32()]);
            let center = [r.f32(), r.f32(), r.f32()];
            let subvolume_offset = [r.u16(), r.u16(), r.u16()];
            let subvolume_size = [r.u16(), r.u16(), r.u16()];
            let image = Image {
                components,
                scalar_type,
                endian,
                coordinate,
                size,
                axes,
                center,
                subvolume_offset,
                subvolume_size,
                data: b[IMAGE_HEADER_SIZE..].to_vec(),
            };
            image.check().map_err(bad)?;
            Content::Image(image)
        }
        "POINT" => {
            if !b.len().is_multiple_of(POINT_ELEMENT_SIZE) {
                return Err(bad(format!(
                    "{} bytes is not a whole number of {POINT_ELEMENT_SIZE}-byte elements",
                    b.len()
                )));
            }
            let mut points = Vec::with_capacity(b.len() / POINT_ELEMENT_SIZE);
            for (i, e) in b.chunks_exact(POINT_ELEMENT_SIZE).enumerate() {
                let mut r = Reader::new(e);
                let field = |what: &str, bytes: &[u8]| {
                    text(bytes)
                        .map_err(|err| Error::body(type_name, format!("element {i} {what}: {err}")))
                };
                let name = field("name", r.take(POINT_NAME_LEN))?;
                let group = field("group", r.take(POINT_GROUP_LEN))?;
                let rgba = [r.u8(), r.u8(), r.u8(), r.u8()];
                let position = [r.f32(), r.f32(), r.f32()];
                let diameter = r.f32();
                let owner = field("owner", r.take(POINT_OWNER_LEN))?;
                if position.iter().any(|v| !v.is_finite()) || !diameter.is_finite() {
                    return Err(bad(format!("element {i} has a non-finite value")));
                }
                points.push(PointElement {
                    name,
                    group,
                    rgba,
                    position,
                    diameter,
                    owner,
                });
            }
            Content::Point(points)
        }
        "STATUS" => {
            if b.len() < STATUS_HEADER_SIZE {
                return Err(bad(format!(
                    "{} bytes, shorter than the {STATUS_HEADER_SIZE} bytes of code, sub-code and error name",
                    b.len()
                )));
            }
            let mut r = Reader::new(b);
            let code = r.u16();
            let subcode = r.u64() as i64;
            let error_name =
                text(r.take(STATUS_NAME_LEN)).map_err(|e| bad(format!("error name: {e}")))?;
            let message =
                text(&b[STATUS_HEADER_SIZE..]).map_err(|e| bad(format!("message: {e}")))?;
            Content::Status(Status {
                code,
                subcode,
                error_name,
                message,
            })
        }
        other => {
            let kind = [
                RequestKind::Get,
                RequestKind::Start,
                RequestKind::Stop,
                RequestKind::Ready,
            ]
            .into_iter()
            .find(|k| other.starts_with(k.prefix()) && other.len() > 4);
            let Some(kind) = kind else {
                return Err(Error(ErrorKind::UnknownType(other.to_owned())));
            };
            let data_type = other[4..].to_owned();
            check_request_body(kind, &data_type, b.len()).map_err(bad)?;
            Content::Request(Request {
                kind,
                data_type,
                body: b.to_vec(),
            })
        }
    })
}

type Metadata = Vec<(String, String)>;

/// Splits a version-2 body into content, message id and metadata.
fn split_extended<'a>(type_name: &str, body: &'a [u8]) -> Result<(&'a [u8], u32, Metadata), Error> {
    let bad = |reason: String| Error::body(type_name, reason);
    if body.len() < EXTENDED_HEADER_SIZE {
        return Err(bad(format!(
            "{} bytes, shorter than the {EXTENDED_HEADER_SIZE}-byte extended header of version 2",
            body.len()
        )));
    }
    let mut r = Reader::new(body);
    let ext_size = usize::from(r.u16());
    let meta_header_size = usize::from(r.u16());
    let meta_size = r.u32() as usize;
    let message_id = r.u32();
    if ext_size < EXTENDED_HEADER_SIZE {
        return Err(bad(format!(
            "extended header size {ext_size} (at least {EXTENDED_HEADER_SIZE})"
        )));
    }
    let tail = meta_header_size.checked_add(meta_size);
    let content_end = tail.and_then(|t| body.len().checked_sub(t));
    let Some(content_end) = content_end.filter(|&e| e >= ext_size) else {
        return Err(bad(format!(
            "extended header {ext_size} + metadata header {meta_header_size} + metadata {meta_size} bytes do not fit in a body of {}",
            body.len()
        )));
    };
    let content = &body[ext_size..content_end];
    let meta = &body[content_end..];
    let mut metadata = Vec::new();
    if meta_header_size == 0 {
        if meta_size != 0 {
            return Err(bad(format!(
                "{meta_size} metadata bytes but no metadata header"
            )));
        }
        return Ok((content, message_id, metadata));
    }
    if meta_header_size < 2 {
        return Err(bad(format!("metadata header of {meta_header_size} bytes")));
    }
    let count = usize::from(u16::from_be_bytes([meta[0], meta[1]]));
    if 2 + 8 * count != meta_header_size {
        return Err(bad(format!(
            "metadata header of {meta_header_size} bytes for {count} entries (needs {})",
            2 + 8 * count
        )));
    }
    let mut index = Reader::new(&meta[2..meta_header_size]);
    let mut data = &meta[meta_header_size..];
    for i in 0..count {
        let key_size = usize::from(index.u16());
        let encoding = index.u16();
        let value_size = index.u32() as usize;
        let Some(kv) = key_size
            .checked_add(value_size)
            .filter(|&n| n <= data.len())
        else {
            return Err(bad(format!("metadata entry {i} runs past the metadata")));
        };
        let key = std::str::from_utf8(&data[..key_size])
            .map_err(|_| bad(format!("metadata key {i} is not UTF-8")))?
            .to_owned();
        let value_bytes = &data[key_size..kv];
        let value = match encoding {
            ENCODING_ASCII if value_bytes.is_ascii() => String::from_utf8_lossy(value_bytes).into_owned(),
            ENCODING_ASCII | ENCODING_UTF8 => std::str::from_utf8(value_bytes)
                .map_err(|_| bad(format!("metadata value of {key:?} is not valid text")))?
                .to_owned(),
            other => {
                return Err(bad(format!(
                    "metadata value of {key:?} has encoding {other} (only 3 US-ASCII and 106 UTF-8 are read)"
                )))
            }
        };
        metadata.push((key, value));
        data = &data[kv..];
    }
    if !data.is_empty() {
        return Err(bad(format!(
            "{} metadata bytes left after the {count} entries",
            data.len()
        )));
    }
    Ok((content, message_id, metadata))
}

fn encode_metadata(metadata: &[(String, String)]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    if metadata.len() > usize::from(u16::MAX) {
        return Err(Error::encode("metadata", "more than 65535 entries"));
    }
    let mut header = Vec::with_capacity(2 + 8 * metadata.len());
    let mut body = Vec::new();
    if metadata.is_empty() {
        return Ok((header, body));
    }
    header.extend_from_slice(&(metadata.len() as u16).to_be_bytes());
    for (key, value) in metadata {
        if key.len() > usize::from(u16::MAX) {
            return Err(Error::encode(
                "metadata",
                format!("key of {} bytes", key.len()),
            ));
        }
        let encoding = if value.is_ascii() {
            ENCODING_ASCII
        } else {
            ENCODING_UTF8
        };
        header.extend_from_slice(&(key.len() as u16).to_be_bytes());
        header.extend_from_slice(&encoding.to_be_bytes());
        header.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(value.as_bytes());
    }
    Ok((header, body))
}

/// Writes `s` into a zero-padded field of `len` bytes.
fn put_text(
    out: &mut Vec<u8>,
    s: &str,
    len: usize,
    type_name: &'static str,
    field: &str,
) -> Result<(), Error> {
    if s.len() > len || s.contains('\0') {
        return Err(Error::encode(
            type_name,
            format!("{field} {s:?} must be at most {len} bytes without NUL"),
        ));
    }
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + len - s.len(), 0);
    Ok(())
}

/// Text of a zero-padded field (up to the first NUL).
fn text(bytes: &[u8]) -> Result<String, String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end])
        .map(str::to_owned)
        .map_err(|_| "not UTF-8 text".to_owned())
}

fn type_text(bytes: &[u8]) -> Result<String, Error> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let t = &bytes[..end];
    if t.is_empty() || !t.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Error::header(format!(
            "type name {:?} is not 1–12 printable ASCII characters",
            String::from_utf8_lossy(t)
        )));
    }
    Ok(String::from_utf8_lossy(t).into_owned())
}

/// Big-endian reader over a slice whose length the caller has checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next `n` bytes; past the end it yields zeros (callers check lengths first, so this only
    /// keeps a bug from becoming a panic).
    fn take(&mut self, n: usize) -> &'a [u8] {
        static ZEROS: [u8; 64] = [0; 64];
        let start = self.pos.min(self.bytes.len());
        let end = (self.pos + n).min(self.bytes.len());
        self.pos += n;
        if end - start == n {
            &self.bytes[start..end]
        } else {
            &ZEROS[..n.min(64)]
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let t = self.take(N);
        a[..t.len()].copy_from_slice(t);
        a
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    fn f32(&mut self) -> f32 {
        f32::from_be_bytes(self.array())
    }
}
