#![doc = include_str!("../README.md")]

pub mod codec;
pub mod convert;
pub mod crc;
mod error;
pub mod server;
pub mod stream;

pub use codec::{
    status_code, Content, Coordinate, Decoder, Endian, Header, Image, Message, PointElement,
    Request, RequestKind, ScalarType, Status, Timestamp, TransformData,
};
pub use convert::BaseToLps;
pub use crc::crc64;
pub use error::Error;
pub use server::{Server, ServerConfig};
