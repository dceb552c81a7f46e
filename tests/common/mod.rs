//! Helpers shared by the end-to-end tests of the `telecho` binary (each test file includes this
//! module; not every file uses every helper).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the `telecho` binary to completion.
pub(crate) fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .expect("run telecho")
}

/// `TELECHO_REQUIRE_PEERS=1`: a missing outside program fails the test instead of skipping it.
pub(crate) fn require_peers() -> bool {
    std::env::var("TELECHO_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Writes a fresh site PKI (`telecho certs init`) into `dir`.
pub(crate) fn certs(dir: &Path) {
    let out = telecho(&["certs", "init", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `telecho teleop serve --sim` (seed 1) on an ephemeral loopback port, stdout piped
/// (the summary), and returns it with the address it listens on. Its other stderr lines are
/// passed through, prefixed with `[serve]`.
pub(crate) fn serve_sim(pki: &Path, audit: &Path, duration_s: f64) -> (Child, SocketAddr) {
    serve_sim_via(&[], "127.0.0.1:0", pki, audit, duration_s)
}

/// [`serve_sim`] listening on `listen`, started through the command `wrapper` (e.g. `ip netns
/// exec NS`; empty: directly).
pub(crate) fn serve_sim_via(
    wrapper: &[&str],
    listen: &str,
    pki: &Path,
    audit: &Path,
    duration_s: f64,
) -> (Child, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_telecho");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args([
            "teleop",
            "serve",
            "--sim",
            "--listen",
            listen,
            "--pki",
            pki.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
            "--sim-seed",
            "1",
            "--duration-s",
            &duration_s.to_string(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("telecho teleop serve: listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_owned());
                }
            } else {
                eprintln!("[serve] {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve prints its address");
    (child, addr.parse().unwrap())
}

/// Waits (at most `timeout`) for a `telecho` process that prints one JSON summary on stdout,
/// asserts it exited 0, and returns the summary.
pub(crate) fn child_summary(mut child: Child, timeout: Duration) -> serde_json::Value {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < timeout, "the process did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "exit {status:?}: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("summary `{out}`: {e}"))
}

/// A teleop client with the certificate `name` of `pki`, connected to `addr`.
pub(crate) async fn connect(
    pki: &Path,
    name: &str,
    addr: SocketAddr,
) -> telecho_teleop::net::client::TeleopClient {
    let cfg = telecho_teleop::net::client::ClientConfig::from_pki(pki, name, addr).unwrap();
    telecho_teleop::net::client::TeleopClient::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"))
}

/// The newest robot state a console has: drains the buffered events, waits (at most 2 s) for
/// one if none is buffered.
pub(crate) async fn next_state(
    c: &mut telecho_teleop::net::client::TeleopClient,
) -> telecho_teleop::wire::RobotState {
    use telecho_teleop::console::ConsoleEvent;
    let mut last = None;
    while let Some(ev) = c.next_event(Duration::ZERO).await {
        if let ConsoleEvent::State(s) = ev {
            last = Some(s);
        }
    }
    if let Some(s) = last {
        return s;
    }
    c.wait_for(Duration::from_secs(2), |e| match e {
        ConsoleEvent::State(s) => Some(s.clone()),
        _ => None,
    })
    .await
    .expect("a robot state within 2 s")
}
