//! Append-only, hash-chained audit log.
//!
//! One JSON object per line:
//!
//! ```text
//! {"seq":0,"time":1763681234.5,"who":{"cn":"operator","fingerprint":"5f…"},"what":{"event":"lease",…},"prev":"000…0","hash":"9c…"}
//! ```
//!
//! `hash` is the SHA-256 (lowercase hex) of the line's exact bytes up to, not including,
//! `,"hash":`, so it covers `seq`, `time`, `who`, `what` and `prev`; `prev` is the previous
//! line's hash (64 zeros for the first line) and `seq` counts lines from 0. Changing any byte of
//! a line breaks its hash; deleting, inserting or reordering lines breaks the `seq` and `prev`
//! links of the next line. [`verify`] names the first line that fails. Cutting lines off the
//! end cannot be seen from the file alone: anchor the last hash elsewhere (it is returned by
//! [`verify`] and [`AuditLog::last_hash`]) to detect that.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ErrorKind;
use crate::Error;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_KEY: &str = ",\"hash\":\"";

/// Who did it: the certificate's common name and SHA-256 fingerprint (of its DER), or
/// `server` with an empty fingerprint for the patient side's own decisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// Common name.
    pub cn: String,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub fingerprint: String,
}

impl Who {
    /// The patient side itself.
    pub fn server() -> Self {
        Self {
            cn: "server".into(),
            fingerprint: String::new(),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A client connected.
    Connected {
        /// Connection id.
        conn: u64,
        /// Role from the certificate.
        role: String,
        /// Remote address.
        remote: String,
    },
    /// A client went away.
    Disconnected {
        /// Connection id.
        conn: u64,
        /// Why, as the transport reported it.
        reason: String,
    },
    /// An operator command was accepted and handed to the control node.
    Command {
        /// Connection id.
        conn: u64,
        /// Sequence number.
        seq: u64,
        /// `free` or `contact`.
        mode: String,
        /// Force setpoint, N.
        force_n: f64,
        /// Pose target `[x, y, z, qw, qx, qy, qz]` or twist `[vx, vy, vz, wx, wy, wz]`.
        target: Vec<f64>,
        /// `pose` or `twist`.
        kind: String,
        /// Age at arrival, ms.
        age_ms: f64,
    },
    /// Commands refused from a client (first one, then at most once a second with a count).
    CommandRefused {
        /// Connection id.
        conn: u64,
        /// Why.
        reason: String,
        /// Refusals of this kind since the last record.
        count: u64,
    },
    /// The lease changed hands.
    Lease {
        /// Why.
        cause: String,
        /// Previous holder (empty: none).
        from: String,
        /// New holder (empty: none).
        to: String,
    },
    /// A lease request was refused.
    LeaseDenied {
        /// Connection id.
        conn: u64,
        /// The request.
        request: String,
        /// Why.
        reason: String,
    },
    /// A session-control request (e-stop, reset, start/stop protocol).
    Session {
        /// Connection id.
        conn: u64,
        /// The action.
        action: String,
        /// Detail (protocol name).
        detail: String,
        /// Done or refused.
        accepted: bool,
    },
    /// The link watchdog changed state.
    Link {
        /// New state.
        state: String,
        /// Silence since the last fresh command, ms.
        silence_ms: f64,
    },
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: f64,
    who: &'a Who,
    what: &'a AuditEvent,
    prev: &'a str,
}

#[derive(Deserialize)]
struct Parsed {
    seq: u64,
    time: f64,
    prev: String,
    hash: String,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The chain without a file: builds lines.
#[derive(Clone, Debug)]
pub struct AuditChain {
    next_seq: u64,
    prev: String,
}

impl Default for AuditChain {
    fn default() -> Self {
        Self {
            next_seq: 0,
            prev: GENESIS.to_owned(),
        }
    }
}

impl AuditChain {
    /// The line (without newline) recording `what` done by `who` at `time_unix_s`.
    pub fn line(&mut self, time_unix_s: f64, who: &Who, what: &AuditEvent) -> String {
        let body = Body {
            seq: self.next_seq,
            time: if time_unix_s.is_finite() {
                time_unix_s
            } else {
                0.0
            },
            who,
            what,
            prev: &self.prev,
        };
        // Serializing these plain types cannot fail (string keys, finite numbers).
        let mut text = serde_json::to_string(&body).unwrap_or_default();
        text.pop(); // the closing brace
        let hash = sha256_hex(text.as_bytes());
        text.push_str(HASH_KEY);
        text.push_str(&hash);
        text.push_str("\"}");
        self.prev = hash;
        self.next_seq += 1;
        text
    }

    /// Hash of the last line ([`GENESIS`] when empty).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    /// Lines so far.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// True before the first line.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }
}

/// Result of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records in the log.
    pub records: u64,
    /// Hash of the last record ([`GENESIS`] for an empty log).
    pub last_hash: String,
}

fn tampered(line: usize, reason: impl Into<String>) -> Error {
    ErrorKind::AuditTampered {
        line,
        reason: reason.into(),
    }
    .into()
}

fn check_line(no: usize, line: &str, expect_seq: u64, prev: &str) -> Result<String, Error> {
    let idx = line
        .rfind(HASH_KEY)
        .ok_or_else(|| tampered(no, "no hash field"))?;
    let body = &line[..idx];
    let rest = &line[idx + HASH_KEY.len()..];
    let hash = rest
        .strip_suffix("\"}")
        .ok_or_else(|| tampered(no, "hash is not the last field"))?;
    if sha256_hex(body.as_bytes()) != hash {
        return Err(tampered(no, "hash does not match the record"));
    }
    let parsed: Parsed =
        serde_json::from_str(line).map_err(|e| tampered(no, format!("not a record: {e}")))?;
    if parsed.hash != hash {
        return Err(tampered(no, "hash field inconsistent"));
    }
    if parsed.seq != expect_seq {
        return Err(tampered(
            no,
            format!(
                "seq {} where {} was expected (a line was removed or inserted)",
                parsed.seq, expect_seq
            ),
        ));
    }
    if parsed.prev != prev {
        return Err(tampered(
            no,
            "prev does not match the previous line's hash (a line was removed or changed)",
        ));
    }
    if !parsed.time.is_finite() {
        return Err(tampered(no, "time is not finite"));
    }
    Ok(hash.to_owned())
}

/// Verifies the chain of a log's text. Errors name the first bad line (1-based).
pub fn verify_str(text: &str) -> Result<Verified, Error> {
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    for (i, line) in text.lines().enumerate() {
        prev = check_line(i + 1, line, seq, &prev)?;
        seq += 1;
    }
    Ok(Verified {
        records: seq,
        last_hash: prev,
    })
}

/// Verifies the log at `path`. Errors name the first bad line (1-based).
pub fn verify(path: &Path) -> Result<Verified, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| tampered(i + 1, format!("unreadable: {e}")))?;
        prev = check_line(i + 1, &line, seq, &prev)?;
        seq += 1;
    }
    Ok(Verified {
        records: seq,
        last_hash: prev,
    })
}

/// The log file: opened for appending after verifying what is already there.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    chain: AuditChain,
    out: BufWriter<File>,
    /// The newest record written by this process (empty before the first).
    last: String,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. An existing log file is verified first and the
    /// chain continues from its last line; a log that fails verification is refused.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut chain = AuditChain::default();
        // A regular file is a log to continue; anything else (a pipe to a log collector, a
        // device) is written to without reading it back.
        if path.is_file() {
            let v = verify(path)?;
            chain.next_seq = v.records;
            chain.prev = v.last_hash;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            chain,
            out: BufWriter::new(file),
            last: String::new(),
        })
    }

    /// Appends a record stamped with the wall clock.
    pub fn append(&mut self, who: &Who, what: &AuditEvent) -> Result<(), Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.append_at(now, who, what)
    }

    /// Appends a record stamped `time_unix_s`.
    pub fn append_at(
        &mut self,
        time_unix_s: f64,
        who: &Who,
        what: &AuditEvent,
    ) -> Result<(), Error> {
        self.last = self.chain.line(time_unix_s, who, what);
        self.out
            .write_all(self.last.as_bytes())
            .and_then(|_| self.out.write_all(b"\n"))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The newest record this process appended, exactly as written (one JSON line without its
    /// newline); `None` before the first.
    pub fn last_record(&self) -> Option<&str> {
        (!self.last.is_empty()).then_some(self.last.as_str())
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Records written (including those found when opening).
    pub fn len(&self) -> u64 {
        self.chain.len()
    }

    /// True when the log has no record.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// Hash of the last record.
    pub fn last_hash(&self) -> &str {
        self.chain.last_hash()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
