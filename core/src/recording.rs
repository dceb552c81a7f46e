//! Recording ROS 2 messages to MCAP, and reading them back for replay.
//!
//! A [`Recorder`] writes one MCAP channel per topic, with message encoding `cdr` and a schema of
//! encoding `ros2msg` per message type (the layout rosbag2's MCAP storage plugin writes), so
//! Foxglove, `ros2 bag` and the PyPI `mcap-ros2-support` reader open the file. Times are nanoseconds
//! since the epoch.
//!
//! # Crash safety
//!
//! Messages are collected in small chunks held in memory (at most [`RecorderOptions::chunk_size`]
//! bytes) and each chunk is written to the file whole when it is full, when
//! [`RecorderOptions::flush_interval`] (default 1 s) has passed since the last flush (checked on
//! every [`Recorder::write`] and on [`Recorder::tick`], which the owner calls from a timer so a
//! silent topic does not hold a chunk open), or on [`Recorder::flush`]. Each flush hands the chunk to
//! the operating system, so after a `kill -9` the file holds every chunk flushed before it: at most
//! the last `flush_interval` of messages is lost. (A power loss can lose more: the recorder does not
//! `fsync`.)
//!
//! A file cut short like that has no summary and no footer. [`read_recording`] reads it front to
//! back anyway: it yields every message of every complete chunk, then one error for which
//! [`Error::is_truncated_recording`] is true. Other MCAP readers that read linearly (the `mcap`
//! crate's `MessageStream`, the PyPI `mcap` `StreamReader`, `mcap recover`) recover the same
//! messages; indexed readers that start from the footer refuse the file until it is recovered.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcap::records::MessageHeader;
use mcap::sans_io::LinearReaderOptions;
use mcap::{McapError, WriteOptions};

use crate::ros_msgs::{to_cdr, RosMessage};
use crate::Error;

/// MCAP message encoding of ROS 2 CDR data.
pub const MESSAGE_ENCODING: &str = "cdr";
/// MCAP schema encoding of ROS 2 `.msg` definitions.
pub const SCHEMA_ENCODING: &str = "ros2msg";
/// MCAP profile of ROS 2 recordings.
pub const PROFILE: &str = "ros2";

/// Tuning of a [`Recorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderOptions {
    /// A chunk is written out once its messages exceed this many bytes.
    pub chunk_size: u64,
    /// A chunk is written out once this long has passed since the previous flush: the most a crash
    /// can lose.
    pub flush_interval: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            chunk_size: 256 * 1024,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Writes ROS 2 messages to an MCAP file. See the [module documentation](self) for crash safety.
///
/// Call [`finish`](Self::finish) to write the summary and footer; dropping a recorder without it
/// also finishes the file but cannot report errors.
pub struct Recorder<W: Write + Seek = BufWriter<File>> {
    writer: mcap::Writer<W>,
    name: String,
    options: RecorderOptions,
    /// Topic -> (channel id, message type name).
    channels: HashMap<String, (u16, String)>,
    /// Message type name -> schema id.
    schemas: HashMap<String, u16>,
    sequence: u32,
    last_flush: Instant,
    unflushed: bool,
}

impl<W: Write + Seek> std::fmt::Debug for Recorder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("topics", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Recorder<BufWriter<File>> {
    /// Creates (or truncates) the MCAP file at `path` with the default options.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::create_with_options(path, RecorderOptions::default())
    }

    /// Creates (or truncates) the MCAP file at `path`.
    pub fn create_with_options(
        path: impl AsRef<Path>,
        options: RecorderOptions,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = File::create(path).map_err(|e| Error::recording(&name, e))?;
        Self::with_options(BufWriter::new(file), name, options)
    }
}

impl<W: Write + Seek> Recorder<W> {
    /// Records into any seekable writer; `name` names it in errors.
    pub fn with_options(
        writer: W,
        name: impl Into<String>,
        options: RecorderOptions,
    ) -> Result<Self, Error> {
        let name = name.into();
        let writer = WriteOptions::new()
            .profile(PROFILE)
            .compression(None)
            .chunk_size(Some(options.chunk_size))
            // Buffer each chunk in memory and write it whole: the file then only ever holds
            // complete chunks (plus, after a crash mid-write, one partial record at the end),
            // never a chunk header with placeholder lengths.
            .disable_seeking(true)
            .create(writer)
            .map_err(|e| Error::recording(&name, e))?;
        Ok(Self {
            writer,
            name,
            options,
            channels: HashMap::new(),
            schemas: HashMap::new(),
            sequence: 0,
            last_flush: Instant::now(),
            unflushed: false,
        })
    }

    /// Records `msg` on `topic` at `log_time_ns` (also used as the publish time).
    ///
    /// The first message on a topic creates its channel; a topic keeps the type of its first
    /// message, and a message of another type on it is an error.
    pub fn write<M: RosMessage>(
        &mut self,
        topic: &str,
        log_time_ns: u64,
        msg: &M,
    ) -> Result<(), Error> {
        let data = to_cdr(msg)?;
        let channel = self.channel(topic, M::TYPE_NAME, &M::schema_text)?;
        self.write_to_channel(channel, log_time_ns, log_time_ns, &data)
    }

    /// Records already-serialized CDR bytes (with their encapsulation header), e.g. received from
    /// DDS. `schema_text` is only used the first time `type_name` is seen.
    pub fn write_raw(
        &mut self,
        topic: &str,
        type_name: &str,
        schema_text: &str,
        log_time_ns: u64,
        publish_time_ns: u64,
        cdr: &[u8],
    ) -> Result<(), Error> {
        let channel = self.channel(topic, type_name, &|| schema_text.to_owned())?;
        self.write_to_channel(channel, log_time_ns, publish_time_ns, cdr)
    }

    /// Writes the current chunk out if the flush interval has passed; call it from a timer.
    pub fn tick(&mut self) -> Result<(), Error> {
        if self.unflushed && self.last_flush.elapsed() >= self.options.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the current chunk out and flushes it to the operating system.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.writer
            .flush()
            .map_err(|e| Error::recording(&self.name, e))?;
        self.last_flush = Instant::now();
        self.unflushed = false;
        Ok(())
    }

    /// Writes the last chunk, the summary (indexes, statistics) and the footer, and flushes.
    pub fn finish(self) -> Result<(), Error> {
        let Self {
            mut writer, name, ..
        } = self;
        writer.finish().map_err(|e| Error::recording(&name, e))?;
        writer
            .into_inner()
            .flush()
            .map_err(|e| Error::recording(name, e))
    }

    fn channel(
        &mut self,
        topic: &str,
        type_name: &str,
        schema_text: &dyn Fn() -> String,
    ) -> Result<u16, Error> {
        if let Some((id, existing)) = self.channels.get(topic) {
            if existing != type_name {
                return Err(Error::recording(
                    &self.name,
                    format!("topic {topic} records {existing}, cannot record {type_name} on it"),
                ));
            }
            return Ok(*id);
        }
        let schema = match self.schemas.get(type_name) {
            Some(&id) => id,
            None => {
                let id = self
                    .writer
                    .add_schema(type_name, SCHEMA_ENCODING, schema_text().as_bytes())
                    .map_err(|e| Error::recording(&self.name, e))?;
                self.schemas.insert(type_name.to_owned(), id);
                id
            }
        };
        let id = self
            .writer
            .add_channel(schema, topic, MESSAGE_ENCODING, &Default::default())
            .map_err(|e| Error::recording(&self.name, e))?;
        self.channels
            .insert(topic.to_owned(), (id, type_name.to_owned()));
        Ok(id)
    }

    fn write_to_channel(
        &mut self,
        channel_id: u16,
        log_time: u64,
        publish_time: u64,
        data: &[u8],
    ) -> Result<(), Error> {
        let header = MessageHeader {
            channel_id,
            sequence: self.sequence,
            log_time,
            publish_time,
        };
        self.sequence = self.sequence.wrapping_add(1);
        self.writer
            .write_to_known_channel(&header, data)
            .map_err(|e| Error::recording(&self.name, e))?;
        self.unflushed = true;
        self.tick()
    }
}

/// One recorded message, as [`read_recording`] yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedMessage {
    pub topic: String,
    /// Nanoseconds since the epoch.
    pub log_time_ns: u64,
    /// Nanoseconds since the epoch.
    pub publish_time_ns: u64,
    /// ROS 2 type name (the channel's schema name), e.g. `sensor_msgs/msg/JointState`.
    pub type_name: String,
    /// Message encoding of the channel (`cdr` for telecho's recordings).
    pub encoding: String,
    /// The serialized message; decode with [`crate::ros_msgs::from_cdr`].
    pub data: Vec<u8>,
}

/// Streams the messages of an MCAP recording in file order (not sorted by time), reading the file
/// incrementally.
///
/// A file without a footer (a recorder that crashed) yields every message of its complete chunks,
/// then an error for which [`Error::is_truncated_recording`] is true. After an error the iterator
/// ends.
pub fn read_recording(path: impl AsRef<Path>) -> Result<RecordingReader, Error> {
    let path = path.as_ref().to_path_buf();
    let name = path.display().to_string();
    let file = File::open(&path).map_err(|e| Error::recording(&name, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::recording(&name, e))?
        .len();
    // No record can be longer than the file: a corrupt length field is then an error, not an
    // attempt to allocate exabytes (found by `tests/cli_bag.rs` with a garbage file).
    let limit = usize::try_from(len).unwrap_or(usize::MAX);
    let options = LinearReaderOptions {
        record_length_limit: Some(limit),
        ..LinearReaderOptions::default()
    };
    Ok(RecordingReader {
        inner: mcap::io::MessageReader::new_with_options(BufReader::new(file), options),
        path,
        done: false,
    })
}

/// Iterator over a recording's messages; see [`read_recording`].
pub struct RecordingReader {
    inner: mcap::io::MessageReader<BufReader<File>>,
    path: PathBuf,
    done: bool,
}

impl std::fmt::Debug for RecordingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Iterator for RecordingReader {
    type Item = Result<RecordedMessage, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let name = || self.path.display().to_string();
        match self.inner.next() {
            None => {
                self.done = true;
                None
            }
            Some(Ok(m)) => Some(Ok(RecordedMessage {
                topic: m.channel.topic.clone(),
                log_time_ns: m.log_time,
                publish_time_ns: m.publish_time,
                type_name: m
                    .channel
                    .schema
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
                encoding: m.channel.message_encoding.clone(),
                data: m.data.into_owned(),
            })),
            Some(Err(e)) => {
                self.done = true;
                Some(Err(if is_truncation(&e) {
                    Error::truncated_recording(name())
                } else {
                    Error::recording(name(), e)
                }))
            }
        }
    }
}

/// Whether an MCAP read error means the file just stops early (no footer / cut mid-record).
fn is_truncation(e: &McapError) -> bool {
    match e {
        McapError::UnexpectedEof | McapError::UnexpectedEoc => true,
        McapError::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}
