//! 3D-mouse input (3Dconnexion SpaceMouse / SpaceNavigator, Spaceball) through `spacenavd`.
//!
//! The free `spacenavd` daemon talks to the device (USB or serial) and serves its events on a
//! UNIX stream socket. This module has three parts:
//!
//! - [`Decoder`]: the socket protocol, no I/O. We speak the original ("v0") protocol of
//!   libspnav, which spacenavd 1.x keeps for every client that sends no protocol-change request
//!   (facts from spacenavd 1.1 `src/proto_unix.c`, `src/proto.h`, `src/client.c`, and libspnav
//!   `src/spnav.c`): the daemon writes fixed packets of eight native-endian `i32`. Word 0 is the
//!   event type: 0 motion, 1 button press, 2 button release. A motion carries x, y, z, rx, ry,
//!   rz in words 1–6 (the device's counts times the daemon's and the client's sensitivity,
//!   after the daemon's dead zone) and in word 7 the milliseconds since the previous motion of
//!   that device. A button carries its number in word 1 (and 1/0 for pressed in word 2). A v0
//!   client's event mask is motion and buttons only, so any other type means the stream is not
//!   what we think it is: [`Decoder::push`] reports it and the caller drops the device.
//! - [`SpaceMouse`]: maps the counts to a probe-frame twist (dead band, full scale, speed
//!   limits, staleness) and the buttons to console actions.
//! - [`SpaceMouseClient`]: a non-blocking client of the daemon's socket, polled once per console
//!   frame.
//!
//! # Axes
//!
//! spacenavd normalises every device to one left-handed frame (spacenavd 1.1 `src/dev.c`, and
//! libspnav's `spnav_posrot_moveobj`, which maps it onto OpenGL's right-handed frame as
//! `(x, y, −z)`, rotations `(rx, ry, −rz)`): +x the cap moved right, +y pulled up, +z pushed
//! away from the user; rotations by the left-hand rule about those axes (+ry turns the cap
//! counter-clockwise seen from above, +rz tilts its top to the right, +rx tilts it towards the
//! user).
//!
//! The cap is held as the probe's handle, the probe pointing down into the desk: the probe
//! frame (x lateral, y elevation, z along the probe into the patient, right-handed) is then
//! right = +x, towards the user = +y, down = +z, and the mapping is a proper rotation (no
//! mirror), so the probe turns the way the cap turns:
//!
//! | probe frame | from spacenavd | the cap … |
//! |---|---|---|
//! | v_x | +x | moved right |
//! | v_y | −z | pulled towards you |
//! | v_z | −y | pushed down (into the patient) |
//! | ω_x | +rx | tilted towards you (handle towards you) |
//! | ω_y | −rz | tilted left (handle left) |
//! | ω_z | −ry | twisted clockwise seen from above |
//!
//! Axes can be inverted or remapped in spacenavd's own configuration (`/etc/spnavrc`:
//! `invert-trans`, `invert-rot`, `swap-yz`).
//!
//! # Staleness
//!
//! The daemon sends a motion event only when a value changes (serial devices: spacenavd 1.1
//! `src/dev_serial.c` queues only changed axes; USB: evdev reports changes), and when the cap
//! returns to rest the device reports zeros. Its `repeat-interval` option (off by default)
//! repeats the last non-zero motion. A velocity older than
//! [`SpaceMouseConfig::stale_after_s`] is dropped to zero: a lost daemon or device stops the
//! probe instead of driving it on. Without `repeat-interval`, a cap held perfectly still
//! therefore stops the probe after that time until the reading changes again.

use std::io::{ErrorKind as IoErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nalgebra::{UnitQuaternion, Vector3};
use thiserror::Error;

/// Where spacenavd listens (its compile-time `SOCK_NAME`).
pub const DEFAULT_SOCKET: &str = "/var/run/spnav.sock";

/// Bytes of one daemon → client packet: eight `i32`.
pub const PACKET_BYTES: usize = 32;

/// Event types of the v0 protocol (spacenavd `UEV_MOTION`, `UEV_PRESS`, `UEV_RELEASE`).
const UEV_MOTION: i32 = 0;
const UEV_PRESS: i32 = 1;
const UEV_RELEASE: i32 = 2;

/// Button numbers accepted: 0 to this − 1 (spacenavd 1.1 handles 64, `MAX_BUTTONS` in its
/// `cfgfile.h`; we leave room for later versions).
const MAX_BUTTONS: i32 = 256;

/// Most bytes read from the socket in one [`SpaceMouseClient::poll`].
const MAX_READ_PER_POLL: usize = 1 << 20;

/// What went wrong with the 3D mouse.
#[derive(Debug, Error)]
pub enum SpaceMouseError {
    /// A packet with an event type a v0 client never receives.
    #[error("spacenavd packet: unknown event type {0} (a protocol-v0 client gets 0 motion, 1 press, 2 release)")]
    UnknownEvent(i32),
    /// A button packet with an impossible button number.
    #[error("spacenavd packet: button number {0} outside 0–255")]
    BadButton(i32),
    /// A setting of [`SpaceMouseConfig`] out of its range.
    #[error("3D mouse setting {name} = {value} is invalid: {why}")]
    BadConfig {
        name: &'static str,
        value: f64,
        why: &'static str,
    },
    /// The daemon's socket could not be reached.
    #[error("cannot connect to spacenavd at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading the socket failed.
    #[error("reading spacenavd at {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The daemon closed the connection (stopped, or restarted).
    #[error("spacenavd at {} closed the connection", path.display())]
    Closed { path: PathBuf },
}

/// One event from the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpnavEvent {
    /// The cap's deflection, spacenavd's axes and counts.
    Motion {
        /// x, y, z.
        translation: [i32; 3],
        /// rx, ry, rz.
        rotation: [i32; 3],
        /// Milliseconds since the device's previous motion event.
        period_ms: i32,
    },
    /// A button went down or up.
    Button { number: u8, pressed: bool },
}

/// Decodes one packet.
pub fn decode_packet(packet: &[u8; PACKET_BYTES]) -> Result<SpnavEvent, SpaceMouseError> {
    let mut w = [0i32; 8];
    for (word, bytes) in w.iter_mut().zip(packet.chunks_exact(4)) {
        *word = i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    match w[0] {
        UEV_MOTION => Ok(SpnavEvent::Motion {
            translation: [w[1], w[2], w[3]],
            rotation: [w[4], w[5], w[6]],
            period_ms: w[7],
        }),
        UEV_PRESS | UEV_RELEASE => {
            let number = u8::try_from(w[1])
                .ok()
                .filter(|_| w[1] < MAX_BUTTONS)
                .ok_or(SpaceMouseError::BadButton(w[1]))?;
            Ok(SpnavEvent::Button {
                number,
                pressed: w[0] == UEV_PRESS,
            })
        }
        other => Err(SpaceMouseError::UnknownEvent(other)),
    }
}

/// Encodes one event as the daemon sends it (for tests and stand-in servers).
pub fn encode_packet(event: &SpnavEvent) -> [u8; PACKET_BYTES] {
    let w: [i32; 8] = match *event {
        SpnavEvent::Motion {
            translation: t,
            rotation: r,
            period_ms,
        } => [UEV_MOTION, t[0], t[1], t[2], r[0], r[1], r[2], period_ms],
        SpnavEvent::Button { number, pressed } => [
            if pressed { UEV_PRESS } else { UEV_RELEASE },
            i32::from(number),
            i32::from(pressed),
            0,
            0,
            0,
            0,
            0,
        ],
    };
    let mut out = [0u8; PACKET_BYTES];
    for (bytes, word) in out.chunks_exact_mut(4).zip(w) {
        bytes.copy_from_slice(&word.to_ne_bytes());
    }
    out
}

/// Reassembles packets from a byte stream that may split them anywhere.
#[derive(Debug, Default)]
pub struct Decoder {
    partial: Vec<u8>,
}

impl Decoder {
    /// A decoder at a packet boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of an incomplete packet held for the next [`push`](Self::push).
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Appends `bytes` and decodes every complete packet into `out`. On a bad packet, the
    /// events before it are in `out`, the error names what was wrong, and the decoder is reset:
    /// a stream that sent one bad packet is not trusted to be in step.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SpnavEvent>) -> Result<(), SpaceMouseError> {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            let need = PACKET_BYTES - self.partial.len();
            let take = need.min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() < PACKET_BYTES {
                return Ok(());
            }
            let mut packet = [0u8; PACKET_BYTES];
            packet.copy_from_slice(&self.partial);
            self.partial.clear();
            out.push(decode_packet(&packet)?);
        }
        let mut chunks = rest.chunks_exact(PACKET_BYTES);
        for chunk in &mut chunks {
            let mut packet = [0u8; PACKET_BYTES];
            packet.copy_from_slice(chunk);
            out.push(decode_packet(&packet)?);
        }
        self.partial.extend_from_slice(chunks.remainder());
        Ok(())
    }
}

/// How the cap's deflection becomes a probe velocity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpaceMouseConfig {
    /// Counts at full deflection (a SpaceNavigator reports about ±350 through spacenavd at
    /// sensitivity 1); larger readings are clamped to it.
    pub full_scale: f64,
    /// Dead band, as a fraction of full scale: smaller readings are zero, larger ones are
    /// rescaled so that the velocity starts at zero at its edge.
    pub deadband: f64,
    /// Probe speed at full deflection, m/s (also the most the translation gives, in any
    /// direction).
    pub max_speed_m_s: f64,
    /// Probe turn rate at full deflection, rad/s (also the most the rotation gives).
    pub max_rate_rad_s: f64,
    /// A motion older than this is taken as zero, s.
    pub stale_after_s: f64,
}

impl Default for SpaceMouseConfig {
    fn default() -> Self {
        Self {
            full_scale: 350.0,
            deadband: 0.05,
            max_speed_m_s: 0.01,
            max_rate_rad_s: 10f64.to_radians(),
            stale_after_s: 0.2,
        }
    }
}

impl SpaceMouseConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), SpaceMouseError> {
        let bad = |name, value, why| Err(SpaceMouseError::BadConfig { name, value, why });
        if !(self.full_scale.is_finite() && self.full_scale >= 1.0) {
            return bad("full_scale", self.full_scale, "must be at least 1 count");
        }
        if !(self.deadband.is_finite() && (0.0..0.9).contains(&self.deadband)) {
            return bad("deadband", self.deadband, "must be in [0, 0.9)");
        }
        if !(self.max_speed_m_s.is_finite() && (0.0..=0.1).contains(&self.max_speed_m_s)) {
            return bad("max_speed_m_s", self.max_speed_m_s, "must be 0–0.1 m/s");
        }
        if !(self.max_rate_rad_s.is_finite() && (0.0..=1.0).contains(&self.max_rate_rad_s)) {
            return bad("max_rate_rad_s", self.max_rate_rad_s, "must be 0–1 rad/s");
        }
        if !(self.stale_after_s.is_finite()
            && self.stale_after_s > 0.0
            && self.stale_after_s <= 5.0)
        {
            return bad("stale_after_s", self.stale_after_s, "must be in (0, 5] s");
        }
        Ok(())
    }

    /// One axis: counts → [-1, 1] with dead band and clamping.
    fn normalise(&self, counts: i32) -> f64 {
        let n = (f64::from(counts) / self.full_scale).clamp(-1.0, 1.0);
        let a = n.abs();
        if a <= self.deadband {
            0.0
        } else {
            n.signum() * (a - self.deadband) / (1.0 - self.deadband)
        }
    }

    /// The probe-frame twist of a motion (see the module's axis table).
    pub fn twist(&self, translation: [i32; 3], rotation: [i32; 3]) -> Twist {
        let [x, y, z] = translation.map(|c| self.normalise(c));
        let [rx, ry, rz] = rotation.map(|c| self.normalise(c));
        let linear = cap_norm(Vector3::new(x, -z, -y), 1.0) * self.max_speed_m_s;
        let angular = cap_norm(Vector3::new(rx, -rz, -ry), 1.0) * self.max_rate_rad_s;
        Twist {
            linear_m_s: linear,
            angular_rad_s: angular,
        }
    }
}

fn cap_norm(v: Vector3<f64>, max: f64) -> Vector3<f64> {
    let n = v.norm();
    if n > max {
        v * (max / n)
    } else {
        v
    }
}

/// A velocity in the probe frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Twist {
    /// Translational velocity, m/s.
    pub linear_m_s: Vector3<f64>,
    /// Angular velocity, rad/s.
    pub angular_rad_s: Vector3<f64>,
}

/// What a 3D-mouse button asks the console to do (on press).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceMouseAction {
    /// Button 0: take the lease, or release it when holding it.
    ToggleLease,
    /// Button 1: reset (clears a latched stop on the patient side).
    Reset,
}

impl SpaceMouseAction {
    /// The action of a pressed button, if any. The e-stop stays on the keyboard (`Space`): a
    /// 3D mouse's buttons are small and easy to hit by accident, and the e-stop must not depend
    /// on an optional device.
    pub fn of_button(number: u8) -> Option<Self> {
        match number {
            0 => Some(Self::ToggleLease),
            1 => Some(Self::Reset),
            _ => None,
        }
    }
}

/// The 3D mouse's state: the newest motion and when it came.
#[derive(Clone, Debug)]
pub struct SpaceMouse {
    config: SpaceMouseConfig,
    counts: ([i32; 3], [i32; 3]),
    twist: Twist,
    last_motion: Option<Instant>,
}

impl SpaceMouse {
    /// A mouse at rest; the configuration is checked.
    pub fn new(config: SpaceMouseConfig) -> Result<Self, SpaceMouseError> {
        config.validate()?;
        Ok(Self {
            config,
            counts: ([0; 3], [0; 3]),
            twist: Twist::default(),
            last_motion: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SpaceMouseConfig {
        &self.config
    }

    /// Takes in one event received at `now`; returns the console action of a button press.
    pub fn apply(&mut self, event: &SpnavEvent, now: Instant) -> Option<SpaceMouseAction> {
        match *event {
            SpnavEvent::Motion {
                translation,
                rotation,
                ..
            } => {
                self.counts = (translation, rotation);
                self.twist = self.config.twist(translation, rotation);
                self.last_motion = Some(now);
                None
            }
            SpnavEvent::Button { number, pressed } => {
                if pressed {
                    SpaceMouseAction::of_button(number)
                } else {
                    None
                }
            }
        }
    }

    /// The newest motion's counts (translation, rotation), spacenavd's axes.
    pub fn counts(&self) -> ([i32; 3], [i32; 3]) {
        self.counts
    }

    /// When the newest motion came.
    pub fn last_motion(&self) -> Option<Instant> {
        self.last_motion
    }

    /// The probe-frame twist at `now`: zero before any motion and once the newest motion is
    /// older than [`SpaceMouseConfig::stale_after_s`].
    pub fn twist(&self, now: Instant) -> Twist {
        match self.last_motion {
            Some(t)
                if now.saturating_duration_since(t)
                    <= Duration::from_secs_f64(self.config.stale_after_s) =>
            {
                self.twist
            }
            _ => Twist::default(),
        }
    }

    /// Drops the motion (the device is gone).
    pub fn stop(&mut self) {
        self.twist = Twist::default();
        self.last_motion = None;
    }
}

/// Turns the probe orientation `q` by the probe-frame angular velocity for `dt` seconds, and
/// keeps the probe axis (its z) within `max_tilt_rad` of the axis of `q_ref` (the orientation
/// when the lease was taken); turning about the probe axis is not limited. Non-finite input
/// leaves `q` as it is.
pub fn turn_probe(
    q: UnitQuaternion<f64>,
    q_ref: UnitQuaternion<f64>,
    angular_rad_s: Vector3<f64>,
    dt: f64,
    max_tilt_rad: f64,
) -> UnitQuaternion<f64> {
    if !(dt.is_finite() && dt >= 0.0 && angular_rad_s.iter().all(|w| w.is_finite())) {
        return q;
    }
    let turned = q * UnitQuaternion::from_scaled_axis(angular_rad_s * dt);
    let axis = turned * Vector3::z();
    let axis_ref = q_ref * Vector3::z();
    let tilt = axis.angle(&axis_ref);
    if tilt <= max_tilt_rad {
        return turned;
    }
    // Turn the axis back towards the reference by the excess, about their common normal.
    match nalgebra::Unit::try_new(axis.cross(&axis_ref), 1e-12) {
        Some(normal) => UnitQuaternion::from_axis_angle(&normal, tilt - max_tilt_rad) * turned,
        None => q,
    }
}

/// What one [`SpaceMouseClient::poll`] received.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Polled {
    /// The events, in order.
    pub events: Vec<SpnavEvent>,
    /// The console actions of the button presses among them.
    pub actions: Vec<SpaceMouseAction>,
}

/// A non-blocking client of spacenavd's socket (protocol v0: it never writes to the daemon).
#[derive(Debug)]
pub struct SpaceMouseClient {
    stream: UnixStream,
    path: PathBuf,
    decoder: Decoder,
    mouse: SpaceMouse,
}

impl SpaceMouseClient {
    /// Connects to the daemon at `path`.
    pub fn connect(path: &Path, config: SpaceMouseConfig) -> Result<Self, SpaceMouseError> {
        let mouse = SpaceMouse::new(config)?;
        let connect_err = |source| SpaceMouseError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream.set_nonblocking(true).map_err(connect_err)?;
        Ok(Self {
            stream,
            path: path.to_path_buf(),
            decoder: Decoder::new(),
            mouse,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mouse's state.
    pub fn mouse(&self) -> &SpaceMouse {
        &self.mouse
    }

    /// Reads whatever the daemon sent since the last poll, without blocking. An error (bad
    /// packet, closed socket) stops the mouse; the caller should drop the client.
    pub fn poll(&mut self, now: Instant) -> Result<Polled, SpaceMouseError> {
        let result = self.read_available(now);
        if result.is_err() {
            self.mouse.stop();
        }
        result
    }

    fn read_available(&mut self, now: Instant) -> Result<Polled, SpaceMouseError> {
        let mut polled = Polled::default();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < MAX_READ_PER_POLL {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(SpaceMouseError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(n) => {
                    total += n;
                    self.decoder.push(&buf[..n], &mut polled.events)?;
                }
                Err(e) if e.kind() == IoErrorKind::WouldBlock => break,
                Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(SpaceMouseError::Read {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        for ev in &polled.events {
            if let Some(action) = self.mouse.apply(ev, now) {
                polled.actions.push(action);
            }
        }
        Ok(polled)
    }

    /// The probe-frame twist at `now` (zero once stale).
    pub fn twist(&self, now: Instant) -> Twist {
        self.mouse.twist(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn motion(t: [i32; 3], r: [i32; 3]) -> SpnavEvent {
        SpnavEvent::Motion {
            translation: t,
            rotation: r,
            period_ms: 16,
        }
    }

    fn words(w: [i32; 8]) -> [u8; PACKET_BYTES] {
        let mut out = [0u8; PACKET_BYTES];
        for (b, v) in out.chunks_exact_mut(4).zip(w) {
            b.copy_from_slice(&v.to_ne_bytes());
        }
        out
    }

    #[test]
    fn decodes_the_daemons_packets() {
        let m = decode_packet(&words([0, 10, -20, 30, -40, 50, -60, 8])).unwrap();
        assert_eq!(
            m,
            SpnavEvent::Motion {
                translation: [10, -20, 30],
                rotation: [-40, 50, -60],
                period_ms: 8
            }
        );
        let press = decode_packet(&words([1, 3, 1, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(
            press,
            SpnavEvent::Button {
                number: 3,
                pressed: true
            }
        );
        let release = decode_packet(&words([2, 3, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(
            release,
            SpnavEvent::Button {
                number: 3,
                pressed: false
            }
        );
        for ev in [m, press, release] {
            assert_eq!(decode_packet(&encode_packet(&ev)).unwrap(), ev);
        }
    }

    #[test]
    fn rejects_unknown_types_and_bad_buttons() {
        for kind in [3, 4, 5, 6, 7, -1, i32::MAX, i32::MIN] {
            let err = decode_packet(&words([kind, 0, 0, 0, 0, 0, 0, 0])).unwrap_err();
            assert!(matches!(err, SpaceMouseError::UnknownEvent(k) if k == kind));
            assert!(err.to_string().contains("unknown event type"), "{err}");
        }
        for b in [-1, 256, i32::MAX] {
            let err = decode_packet(&words([1, b, 1, 0, 0, 0, 0, 0])).unwrap_err();
            assert!(
                matches!(err, SpaceMouseError::BadButton(n) if n == b),
                "{err}"
            );
        }
    }

    #[test]
    fn reassembles_packets_split_anywhere() {
        let events = [
            motion([1, 2, 3], [4, 5, 6]),
            SpnavEvent::Button {
                number: 0,
                pressed: true,
            },
            motion([-7, 0, 9], [0, -11, 12]),
        ];
        let stream: Vec<u8> = events.iter().flat_map(encode_packet).collect();
        for split in [1, 3, 4, 31, 32, 33, 50, 64, 95] {
            let mut dec = Decoder::new();
            let mut out = Vec::new();
            let (a, b) = stream.split_at(split);
            dec.push(a, &mut out).unwrap();
            assert_eq!(dec.pending(), split % PACKET_BYTES);
            dec.push(b, &mut out).unwrap();
            assert_eq!(out, events, "split at {split}");
            assert_eq!(dec.pending(), 0);
        }
        // Byte by byte.
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out, events);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let mut good = encode_packet(&motion([5, 5, 5], [0, 0, 0])).to_vec();
        good.extend_from_slice(&words([9, 0, 0, 0, 0, 0, 0, 0]));
        good.extend_from_slice(&encode_packet(&motion([1, 1, 1], [0, 0, 0])));
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let err = dec.push(&good, &mut out).unwrap_err();
        assert!(matches!(err, SpaceMouseError::UnknownEvent(9)));
        assert_eq!(
            out,
            [motion([5, 5, 5], [0, 0, 0])],
            "events before the bad one kept"
        );
        // Pseudo-random bytes in random pieces: errors or events, never a panic.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let mut dec = Decoder::new();
            let mut out = Vec::new();
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut at = 0;
            while at < bytes.len() {
                let n = 1 + (next() % 70) as usize;
                let end = (at + n).min(bytes.len());
                if dec.push(&bytes[at..end], &mut out).is_err() {
                    dec = Decoder::new();
                }
                at = end;
            }
        }
    }

    #[test]
    fn maps_axes_with_deadband_full_scale_and_signs() {
        let cfg = SpaceMouseConfig::default();
        // Inside the dead band (5 % of 350 = 17.5 counts): nothing.
        let t = cfg.twist([17, -17, 10], [-17, 5, 17]);
        assert_eq!(t, Twist::default());
        // Full scale and beyond: the max speed, clamped.
        let t = cfg.twist([350, 0, 0], [0, 0, 0]);
        assert!((t.linear_m_s - Vector3::new(0.01, 0.0, 0.0)).norm() < 1e-12);
        let t = cfg.twist([i32::MAX, 0, 0], [0, 0, 0]);
        assert!((t.linear_m_s - Vector3::new(0.01, 0.0, 0.0)).norm() < 1e-12);
        let t = cfg.twist([i32::MIN, 0, 0], [0, 0, 0]);
        assert!((t.linear_m_s - Vector3::new(-0.01, 0.0, 0.0)).norm() < 1e-12);
        // Half way past the dead band: (0.525 − 0.05) / 0.95 = 0.5.
        let half = (0.525 * 350.0) as i32 + 1; // 184 counts
        let expect = (f64::from(half) / 350.0 - 0.05) / 0.95 * 0.01;
        // Pull towards you (−z) → +y; push down (−y) → +z (into the patient).
        let t = cfg.twist([0, 0, -half], [0, 0, 0]);
        assert!((t.linear_m_s - Vector3::new(0.0, expect, 0.0)).norm() < 1e-12);
        let t = cfg.twist([0, -half, 0], [0, 0, 0]);
        assert!((t.linear_m_s - Vector3::new(0.0, 0.0, expect)).norm() < 1e-12);
        // Rotations: rx → ωx, rz → −ωy, ry → −ωz.
        let rate = (f64::from(half) / 350.0 - 0.05) / 0.95 * 10f64.to_radians();
        let t = cfg.twist([0; 3], [half, 0, 0]);
        assert!((t.angular_rad_s - Vector3::new(rate, 0.0, 0.0)).norm() < 1e-12);
        let t = cfg.twist([0; 3], [0, 0, half]);
        assert!((t.angular_rad_s - Vector3::new(0.0, -rate, 0.0)).norm() < 1e-12);
        let t = cfg.twist([0; 3], [0, half, 0]);
        assert!((t.angular_rad_s - Vector3::new(0.0, 0.0, -rate)).norm() < 1e-12);
        // Diagonal at full scale: capped at the max speed, not √3 of it.
        let t = cfg.twist([350, 350, 350], [350, 350, 350]);
        assert!((t.linear_m_s.norm() - 0.01).abs() < 1e-12);
        assert!((t.angular_rad_s.norm() - 10f64.to_radians()).abs() < 1e-12);
    }

    #[test]
    fn staleness_and_buttons() {
        let mut mouse = SpaceMouse::new(SpaceMouseConfig::default()).unwrap();
        let t0 = Instant::now();
        assert_eq!(mouse.twist(t0), Twist::default(), "no motion yet");
        assert_eq!(mouse.apply(&motion([350, 0, 0], [0; 3]), t0), None);
        assert!((mouse.twist(t0 + Duration::from_millis(150)).linear_m_s.x - 0.01).abs() < 1e-12);
        assert_eq!(
            mouse.twist(t0 + Duration::from_millis(201)),
            Twist::default(),
            "stale after 200 ms"
        );
        // A zero motion (the cap released) stops at once.
        mouse.apply(&motion([0; 3], [0; 3]), t0 + Duration::from_millis(10));
        assert_eq!(
            mouse.twist(t0 + Duration::from_millis(11)),
            Twist::default()
        );
        let press = |number, pressed| SpnavEvent::Button { number, pressed };
        assert_eq!(
            mouse.apply(&press(0, true), t0),
            Some(SpaceMouseAction::ToggleLease)
        );
        assert_eq!(mouse.apply(&press(0, false), t0), None);
        assert_eq!(
            mouse.apply(&press(1, true), t0),
            Some(SpaceMouseAction::Reset)
        );
        assert_eq!(mouse.apply(&press(2, true), t0), None);
        // A button does not refresh the motion.
        mouse.apply(&motion([350, 0, 0], [0; 3]), t0);
        mouse.apply(&press(5, true), t0 + Duration::from_millis(150));
        assert_eq!(
            mouse.twist(t0 + Duration::from_millis(250)),
            Twist::default()
        );
    }

    #[test]
    fn config_is_checked() {
        let ok = SpaceMouseConfig::default();
        assert!(ok.validate().is_ok());
        for bad in [
            SpaceMouseConfig {
                full_scale: 0.0,
                ..ok
            },
            SpaceMouseConfig {
                deadband: f64::NAN,
                ..ok
            },
            SpaceMouseConfig {
                deadband: 0.95,
                ..ok
            },
            SpaceMouseConfig {
                max_speed_m_s: -0.01,
                ..ok
            },
            SpaceMouseConfig {
                max_rate_rad_s: f64::INFINITY,
                ..ok
            },
            SpaceMouseConfig {
                stale_after_s: 0.0,
                ..ok
            },
        ] {
            let err = SpaceMouse::new(bad).unwrap_err();
            assert!(matches!(err, SpaceMouseError::BadConfig { .. }), "{err}");
        }
    }

    #[test]
    fn turning_the_probe_is_limited_in_tilt_not_twist() {
        let q_ref = UnitQuaternion::from_euler_angles(0.3, -0.2, 1.0);
        let max = 30f64.to_radians();
        // 10 °/s about the probe's x for 1 s in 100 steps: 10° of tilt.
        let mut q = q_ref;
        for _ in 0..100 {
            q = turn_probe(
                q,
                q_ref,
                Vector3::new(10f64.to_radians(), 0.0, 0.0),
                0.01,
                max,
            );
        }
        let rel = q_ref.inverse() * q;
        assert!((rel.angle() - 10f64.to_radians()).abs() < 1e-9);
        assert!((rel.axis().unwrap().into_inner() - Vector3::x()).norm() < 1e-9);
        // Keep going for 5 s: stops at 30°.
        for _ in 0..500 {
            q = turn_probe(
                q,
                q_ref,
                Vector3::new(10f64.to_radians(), 0.0, 0.0),
                0.01,
                max,
            );
        }
        let tilt = (q * Vector3::z()).angle(&(q_ref * Vector3::z()));
        assert!((tilt - max).abs() < 1e-9, "tilt {}", tilt.to_degrees());
        // Back the other way: free to come back.
        let back = turn_probe(q, q_ref, Vector3::new(-0.1, 0.0, 0.0), 1.0, max);
        let tilt_back = (back * Vector3::z()).angle(&(q_ref * Vector3::z()));
        assert!(tilt_back < max - 0.09);
        // Twist about the probe axis is not limited.
        let mut q = q_ref;
        for _ in 0..100 {
            q = turn_probe(q, q_ref, Vector3::new(0.0, 0.0, 1.0), 0.01, max);
        }
        assert!(((q_ref.inverse() * q).angle() - 1.0).abs() < 1e-9);
        // Non-finite input changes nothing.
        assert_eq!(
            turn_probe(q, q_ref, Vector3::new(f64::NAN, 0.0, 0.0), 0.01, max),
            q
        );
        assert_eq!(turn_probe(q, q_ref, Vector3::x(), f64::INFINITY, max), q);
    }

    #[test]
    fn client_reads_a_socket_speaking_the_protocol() {
        use std::io::Write;
        use std::os::unix::net::UnixListener;
        let dir = std::env::temp_dir().join(format!(
            "telecho-spnav-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spnav.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = SpaceMouseClient::connect(&path, SpaceMouseConfig::default()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let now = Instant::now();
        assert_eq!(client.poll(now).unwrap(), Polled::default());
        let mut bytes = encode_packet(&motion([350, 0, 0], [0; 3])).to_vec();
        bytes.extend_from_slice(&encode_packet(&SpnavEvent::Button {
            number: 0,
            pressed: true,
        }));
        server.write_all(&bytes[..40]).unwrap();
        let p = client.poll(now).unwrap();
        assert_eq!(p.events.len(), 1);
        server.write_all(&bytes[40..]).unwrap();
        let p = client.poll(now).unwrap();
        assert_eq!(p.actions, [SpaceMouseAction::ToggleLease]);
        assert!((client.twist(now).linear_m_s.x - 0.01).abs() < 1e-12);
        drop(server);
        let err = client.poll(now).unwrap_err();
        assert!(matches!(err, SpaceMouseError::Closed { .. }), "{err}");
        assert_eq!(client.twist(now), Twist::default(), "stopped on error");
        let _ = std::fs::remove_dir_all(&dir);
        let err = SpaceMouseClient::connect(&path, SpaceMouseConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("cannot connect to spacenavd"),
            "{err}"
        );
    }
}
