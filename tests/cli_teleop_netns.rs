//! `telecho teleop serve --sim` on another host: the patient side runs in its own Linux network
//! namespace behind a veth link (its own network stack, a 1500-byte MTU, a routed address, not
//! loopback), and the operator — the console library in this process — reaches it by that
//! address, with a server certificate that names it (`certs init --names`). Steering, robot
//! state, haptic feedback and ultrasound frames must all cross a real interface.
//!
//! Needs root and iproute2 (`ip netns`, veth); without them the test skips, unless
//! `TELECHO_REQUIRE_PEERS=1`. The kernel here has no `netem`, so the link adds no delay: the
//! impairment proxy's tests cover latency and loss.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{connect, telecho};
use nalgebra::Vector3;
use telecho_core::peers::missing_peer;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::wire::{CommandMode, LeaseOutcome, LinkState, Pose, SafetyCode, Target};

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Link {
    ns: String,
    host_if: String,
    /// The namespace's address, and ours.
    far: String,
    near: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Link {
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let net = 1 + id % 250;
        let link = Link {
            ns: format!("tlc{id}"),
            host_if: format!("tlc{id}h"),
            far: format!("10.231.{net}.1"),
            near: format!("10.231.{net}.2"),
        };
        let far_if = format!("tlc{id}n");
        // Left over from a killed run of the same pid: ignore errors.
        let _ = ip(&["netns", "del", &link.ns]);
        let _ = ip(&["link", "del", &link.host_if]);
        ip(&["netns", "add", &link.ns])?;
        ip(&[
            "link",
            "add",
            &link.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &far_if,
        ])?;
        ip(&["link", "set", &far_if, "netns", &link.ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", link.near),
            "dev",
            &link.host_if,
        ])?;
        ip(&["link", "set", &link.host_if, "mtu", "1500", "up"])?;
        let exec = ["netns", "exec", link.ns.as_str(), "ip"];
        let inside = |args: &[&str]| ip(&[&exec[..], args].concat());
        inside(&["addr", "add", &format!("{}/30", link.far), "dev", &far_if])?;
        inside(&["link", "set", &far_if, "mtu", "1500", "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pki_naming(dir: &Path, name: &str) {
    let _ = std::fs::remove_dir_all(dir);
    let out = telecho(&[
        "certs",
        "init",
        "--out",
        dir.to_str().unwrap(),
        "--names",
        name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_operator_steers_the_patient_side_across_a_network_link() {
    let link = match Link::create() {
        Ok(l) => l,
        Err(e) => {
            missing_peer(
                "network namespaces (root and iproute2)",
                &format!("apt-get install iproute2 and run as root ({e})"),
            );
            return;
        }
    };
    let dir = telecho_testkit::scratch_dir("cli-teleop-netns");
    let pki = dir.join("pki");
    pki_naming(&pki, &link.far);
    let wrapper = ["ip", "netns", "exec", link.ns.as_str()];
    let (child, addr) = common::serve_sim_via(
        &wrapper,
        &format!("{}:0", link.far),
        &pki,
        &dir.join("audit.log"),
        30.0,
    );
    let _server = Server(child);
    assert_eq!(addr.ip().to_string(), link.far);
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", link.host_if)).unwrap();
    assert_eq!(mtu.trim(), "1500");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(steer_across(addr, &pki));
    eprintln!("link {} ↔ {} (namespace {})", link.near, link.far, link.ns);
}

async fn steer_across(addr: SocketAddr, pki: &Path) {
    let mut op = connect(pki, "operator", addr).await;
    let o = op.lease(|c| c.acquire(), Duration::from_secs(3)).await;
    assert_eq!(o, Some(LeaseOutcome::Granted));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s0 = op
        .wait_for(Duration::from_secs(2), |e| match e {
            ConsoleEvent::State(s) => Some(s.clone()),
            _ => None,
        })
        .await
        .expect("robot state across the link");
    let p0 = s0.probe.position_m;
    // Steer 15 mm sideways over 1 s at 200 Hz, hold 1 s; count what comes back meanwhile.
    let goal = p0 + Vector3::new(0.0, 0.015, 0.0);
    let (mut states, mut haptics, mut frames, mut frame_bytes) = (0u64, 0u64, 0u64, 0usize);
    let mut last = s0.clone();
    let start = Instant::now();
    let mut iv = tokio::time::interval(Duration::from_millis(5));
    while start.elapsed() < Duration::from_secs(2) {
        iv.tick().await;
        let a = (start.elapsed().as_secs_f64() / 1.0).min(1.0);
        let pose = Pose {
            position_m: p0 + (goal - p0) * a,
            orientation: s0.probe.orientation,
        };
        op.send_command(CommandMode::Free, 0.0, Target::Pose(pose));
        while let Some(ev) = op.next_event(Duration::ZERO).await {
            match ev {
                ConsoleEvent::State(s) => {
                    states += 1;
                    last = s;
                }
                ConsoleEvent::Haptic(_) => haptics += 1,
                ConsoleEvent::UsFrame(f) => {
                    frames += 1;
                    frame_bytes = frame_bytes.max(f.payload.len());
                }
                _ => {}
            }
        }
    }
    let err_mm = (last.probe.position_m - goal).norm() * 1e3;
    let rtt_ms = op.latency().command_rtt_s.map(|s| s * 1e3);
    eprintln!(
        "across the link: probe {err_mm:.2} mm from the goal; in 2 s {states} states, {haptics} \
         haptic, {frames} frames (largest {frame_bytes} B, over a 1500 B MTU); command round \
         trip {rtt_ms:?} ms"
    );
    assert!(err_mm < 3.0, "probe {err_mm:.2} mm from the goal");
    assert_eq!(last.safety, SafetyCode::Normal);
    assert_eq!(last.link, LinkState::Live);
    // Robot state ≥ 60 Hz, frames ≥ 30 fps (a little slack for a loaded 2-core machine), each
    // frame many times the MTU.
    assert!(states >= 100, "{states} states in 2 s");
    assert!(haptics >= 100, "{haptics} haptic messages in 2 s");
    assert!(frames >= 40, "{frames} frames in 2 s");
    assert!(frame_bytes > 3 * 1500, "largest frame {frame_bytes} B");
    assert!(
        rtt_ms.is_some_and(|r| r < 50.0),
        "command round trip {rtt_ms:?} ms"
    );
    assert_eq!(op.stats().malformed_datagrams, 0);
    op.close().await;
}
