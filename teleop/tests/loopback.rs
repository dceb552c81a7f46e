//! The QUIC link on loopback: mutual TLS, roles, lease, commands, feedback, frames, reconnect,
//! malformed input. Bounds on time are generous (a shared, loaded machine).

mod common;

use std::time::Duration;

use nalgebra::{UnitQuaternion, Vector3};
use telecho_teleop::audit::verify;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::net::client::{ClientConfig, TeleopClient};
use telecho_teleop::net::server::{CommandReceiver, ServerConfig, ServerEvent, TeleopServer};
use telecho_teleop::net::ClientAuth;
use telecho_teleop::pki::{load_certs, load_key, PkiDir};
use telecho_teleop::session::{ControlCommand, SessionRequest};
use telecho_teleop::us_codec;
use telecho_teleop::wire::{
    CommandMode, DenyReason, FrameEncoding, LeaseOutcome, LinkState, Pose, Role, SafetyCode,
    Target, UsFrameMsg,
};
use tokio::sync::mpsc;

use common::{client_config, pkis, server_config, tmp};

const T: Duration = Duration::from_secs(10);

fn target(x: f64) -> Target {
    Target::Pose(Pose {
        position_m: Vector3::new(x, 0.0, 0.3),
        orientation: UnitQuaternion::identity(),
    })
}

/// Sends `n` commands 2 ms apart.
async fn steer(c: &TeleopClient, n: usize) {
    let mut iv = tokio::time::interval(Duration::from_millis(2));
    for i in 0..n {
        iv.tick().await;
        c.send_command(CommandMode::Contact, 5.0, target(0.4 + 1e-5 * i as f64));
    }
}

/// Waits for clock sync on the client (the server pings too; both converge in one RTT).
async fn synced(c: &TeleopClient) {
    for _ in 0..200 {
        if c.clock().is_some() {
            tokio::time::sleep(Duration::from_millis(30)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no clock sync");
}

/// Commands until none came for `wait`.
async fn drain(rx: &mut CommandReceiver, wait: Duration) -> Vec<ControlCommand> {
    let mut v = Vec::new();
    while let Ok(Some(x)) = tokio::time::timeout(wait, rx.recv()).await {
        v.push(x);
    }
    v
}

async fn next_link(rx: &mut mpsc::UnboundedReceiver<ServerEvent>, state: LinkState) -> bool {
    let deadline = tokio::time::Instant::now() + T;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let ServerEvent::Link(l) = ev {
            if l.state == state {
                return true;
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_steers_and_receives_state_feedback_and_frames() {
    let dir = tmp("loop-steer");
    let cfg = server_config(&dir);
    let audit = cfg.audit.clone().unwrap();
    let (server, mut ch) = TeleopServer::bind(cfg).unwrap();
    let addr = server.local_addr().unwrap();
    let mut c = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    assert_eq!(c.welcome().role, Role::Operator);
    assert_eq!(c.welcome().identity, "operator");
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    synced(&c).await;
    // The control node reads while the console steers.
    let ((), cmds) = tokio::join!(
        steer(&c, 300),
        drain(&mut ch.commands, Duration::from_millis(300))
    );
    // Datagrams on loopback: nearly all arrive, in order, fresh.
    assert!(cmds.len() >= 250, "{} of 300", cmds.len());
    assert!(cmds.windows(2).all(|w| w[1].seq > w[0].seq));
    assert!(cmds
        .iter()
        .all(|c| c.operator == "operator" && c.age_s < 0.2));
    assert!(cmds
        .iter()
        .all(|c| c.force_n == 5.0 && c.mode == CommandMode::Contact));

    // Robot state, haptic feedback and an ultrasound frame back to the console.
    server.publish_state(
        SafetyCode::Normal,
        vec![0.1; 6],
        Pose::identity(),
        Vector3::new(0.0, 0.0, 5.0),
        Vector3::zeros(),
    );
    server.publish_haptic(Vector3::new(0.0, 0.0, 5.0), Vector3::zeros(), None);
    let px: Vec<u8> = (0..256 * 256).map(|i| ((i * 31) % 253) as u8).collect();
    let payload = us_codec::encode(&px, 256, 256, FrameEncoding::DeltaZstd).unwrap();
    server.publish_frame(UsFrameMsg {
        seq: 1,
        acquired_s: server.now_s(),
        width: 256,
        height: 256,
        lateral_spacing_m: 1.5e-4,
        axial_spacing_m: 2.7e-4,
        probe: Pose::identity(),
        encoding: FrameEncoding::DeltaZstd,
        payload,
    });
    let (mut state, mut haptic, mut frame) = (None, None, None);
    let deadline = tokio::time::Instant::now() + T;
    while state.is_none() || haptic.is_none() || frame.is_none() {
        match tokio::time::timeout_at(deadline, async { c.next_event(T).await }).await {
            Ok(Some(ConsoleEvent::State(s))) => state = Some(s),
            Ok(Some(ConsoleEvent::Haptic(h))) => haptic = Some(h),
            Ok(Some(ConsoleEvent::UsFrame(f))) => frame = Some(f),
            Ok(Some(_)) => {}
            _ => panic!(
                "missing: state {state:?} haptic {haptic:?} frame {}",
                frame.is_some()
            ),
        }
    }
    let state = state.unwrap();
    assert_eq!(state.joints_rad.len(), 6);
    // The console stopped steering ≥ 300 ms ago: the watchdog holds (or has retracted).
    assert!(
        matches!(state.link, LinkState::Hold | LinkState::Retract),
        "{state:?}"
    );
    let haptic = haptic.unwrap();
    assert_eq!(haptic.cmd_seq, cmds.last().unwrap().seq);
    let frame = frame.unwrap();
    assert_eq!(
        us_codec::decode(&frame.payload, 256, 256, frame.encoding).unwrap(),
        px
    );
    let lat = c.latency();
    assert!(lat.command_rtt_s.unwrap() < 1.0 && lat.frame_age_s.unwrap() < 1.0);
    assert_eq!(server.stats().frames_sent, 1);

    c.close().await;
    server.shutdown().await.unwrap();
    let v = verify(&audit).unwrap();
    // connect, lease, ≥ 250 commands, link live, disconnect …
    assert!(
        v.records as usize >= cmds.len() + 3,
        "{} records",
        v.records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_valid_client_certificate_are_refused() {
    let (server, mut ch) = TeleopServer::bind(server_config(&tmp("loop-refuse"))).unwrap();
    let addr = server.local_addr().unwrap();
    let site = PkiDir::new(&pkis().site);
    let foreign = PkiDir::new(&pkis().foreign);

    // No client certificate.
    let mut cfg = client_config("operator", addr);
    cfg.auth = ClientAuth::None;
    let e = TeleopClient::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");

    // A certificate from another site's CA.
    let mut cfg = client_config("operator", addr);
    cfg.auth = ClientAuth::Cert(
        load_certs(&foreign.cert("operator")).unwrap(),
        load_key(&foreign.key("operator")).unwrap(),
    );
    assert!(TeleopClient::connect(cfg).await.is_err());

    // An expired certificate of our own CA.
    assert!(TeleopClient::connect(client_config("expired", addr))
        .await
        .is_err());

    // The server's own certificate is not a client certificate (no clientAuth, no role).
    let mut cfg = client_config("operator", addr);
    cfg.auth = ClientAuth::Cert(
        load_certs(&site.cert("server")).unwrap(),
        load_key(&site.key("server")).unwrap(),
    );
    assert!(TeleopClient::connect(cfg).await.is_err());

    // Wrong application protocol.
    let mut cfg = client_config("operator", addr);
    cfg.alpn = b"h3".to_vec();
    let e = TeleopClient::connect(cfg).await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");

    // The client refuses a server its CA did not sign.
    let mut cfg = client_config("operator", addr);
    cfg.ca = load_certs(&foreign.ca_cert()).unwrap();
    assert!(TeleopClient::connect(cfg).await.is_err());

    // Nothing got through: no connection, no command; a valid client still connects.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = server.stats();
    assert!(st.handshakes_failed + st.bad_identity >= 5, "{st:?}");
    assert_eq!(st.core.connections, 0);
    assert!(ch.commands.try_recv().is_none());
    assert!(ch.events.try_recv().is_err());
    let c = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    assert_eq!(server.stats().core.connections, 1);
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_must_name_the_address_dialled() {
    // 127.0.0.2 is loopback too, but the site's server certificate does not name it (only
    // localhost, 127.0.0.1, ::1): a client that dials it refuses the server, as it would a
    // stranger at that address.
    let mut sc = server_config(&tmp("loop-name"));
    sc.listen = "127.0.0.2:0".parse().unwrap();
    let (server, _ch) = TeleopServer::bind(sc).unwrap();
    let addr = server.local_addr().unwrap();
    let cfg = client_config("operator", addr);
    assert_eq!(cfg.server_name, "127.0.0.2");
    let e = TeleopClient::connect(cfg).await.unwrap_err().to_string();
    println!("dialling 127.0.0.2: {e}");
    assert!(e.contains("certificate") || e.contains("name"), "{e}");
    assert_eq!(server.stats().core.connections, 0);
    // Checking a name the certificate carries instead connects.
    let mut cfg = client_config("operator", addr);
    cfg.server_name = "localhost".into();
    let c = TeleopClient::connect(cfg).await.unwrap();
    assert_eq!(server.stats().core.connections, 1);
    c.close().await;
    server.shutdown().await.unwrap();
    // A certificate that names the address (`certs init --names 127.0.0.2`) is accepted as dialled.
    let named = tmp("loop-name-pki");
    let _ = std::fs::remove_dir_all(&named);
    telecho_teleop::pki::init(&named, &["127.0.0.2".to_owned()]).unwrap();
    let mut sc = ServerConfig::from_pki(&named, "127.0.0.2:0".parse().unwrap()).unwrap();
    sc.audit = Some(named.join("audit.jsonl"));
    let (server, _ch) = TeleopServer::bind(sc).unwrap();
    let addr = server.local_addr().unwrap();
    let cfg = ClientConfig::from_pki(&named, "operator", addr).unwrap();
    let c = TeleopClient::connect(cfg).await.unwrap();
    assert_eq!(server.stats().core.connections, 1);
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observer_cannot_steer_but_can_stop() {
    let dir = tmp("loop-observer");
    let cfg = server_config(&dir);
    let audit = cfg.audit.clone().unwrap();
    let (server, mut ch) = TeleopServer::bind(cfg).unwrap();
    let addr = server.local_addr().unwrap();
    let mut obs = TeleopClient::connect(client_config("observer", addr))
        .await
        .unwrap();
    assert_eq!(obs.welcome().role, Role::Observer);
    assert_eq!(
        obs.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Denied(DenyReason::NotOperator))
    );
    assert_eq!(
        obs.lease(|c| c.take_over(), T).await,
        Some(LeaseOutcome::Denied(DenyReason::NotOperator))
    );
    synced(&obs).await;
    steer(&obs, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ch.commands.try_recv().is_none(),
        "an observer's command got through"
    );
    let st = server.stats().core.commands;
    assert!(st.not_holder >= 90 && st.accepted == 0, "{st:?}");
    // E-stop is anyone's; reset is not.
    let req = obs.request(|c| c.estop());
    let ok = obs
        .wait_for(T, |e| match e {
            ConsoleEvent::Reply { req: r, status, .. } if *r == req => Some(*status),
            _ => None,
        })
        .await;
    assert_eq!(ok, Some(telecho_teleop::wire::ReplyStatus::Ok));
    let mut saw_estop = false;
    while let Ok(ev) = ch.events.try_recv() {
        saw_estop |= matches!(ev, ServerEvent::Session { request: SessionRequest::EStop, ref by } if by == "observer");
    }
    assert!(saw_estop);
    let fp = obs.welcome().identity.clone();
    obs.close().await;
    server.shutdown().await.unwrap();
    // The refusal is in the audit log with the observer's name and fingerprint.
    verify(&audit).unwrap();
    let text = std::fs::read_to_string(&audit).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"event\":\"command_refused\""))
        .expect("refusal audited");
    assert!(line.contains(&format!("\"cn\":\"{fp}\"")) && line.contains("not_holder (observer)"));
    let fingerprint = telecho_teleop::pki::read_identity(
        &load_certs(&PkiDir::new(&pkis().site).cert("observer")).unwrap()[0],
    )
    .unwrap()
    .fingerprint;
    assert!(line.contains(&fingerprint));
    assert!(text.contains("\"action\":\"estop\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_over_is_confirmed_by_the_holder_over_the_network() {
    let (server, mut ch) = TeleopServer::bind(server_config(&tmp("loop-takeover"))).unwrap();
    let addr = server.local_addr().unwrap();
    let mut a = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    let mut b = TeleopClient::connect(client_config("operator-2", addr))
        .await
        .unwrap();
    assert_eq!(
        a.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    assert_eq!(
        b.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Denied(DenyReason::Held))
    );
    assert_eq!(
        b.lease(|c| c.take_over(), T).await,
        Some(LeaseOutcome::Pending)
    );
    let who = a
        .wait_for(T, |e| match e {
            ConsoleEvent::TakeOverRequested { requester, .. } => Some(requester.clone()),
            _ => None,
        })
        .await;
    assert_eq!(who.as_deref(), Some("operator-2"));
    a.request(|c| c.confirm_take_over());
    let granted = b
        .wait_for(T, |e| match e {
            ConsoleEvent::Lease { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .await;
    assert_eq!(granted, Some(LeaseOutcome::Granted));
    let revoked = a
        .wait_for(T, |e| match e {
            ConsoleEvent::Lease { outcome, .. } if *outcome == LeaseOutcome::Revoked => Some(()),
            _ => None,
        })
        .await;
    assert!(revoked.is_some());
    assert_eq!(server.lease_holder().as_deref(), Some("operator-2"));
    assert!(b.has_lease() && !a.has_lease());
    // Only the new holder steers.
    synced(&a).await;
    synced(&b).await;
    steer(&a, 50).await;
    steer(&b, 50).await;
    let cmds = drain(&mut ch.commands, Duration::from_millis(300)).await;
    assert!(!cmds.is_empty());
    assert!(cmds.iter().all(|c| c.operator == "operator-2"));
    a.close().await;
    b.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_and_reacquire_without_restarting_either_side() {
    let (server, mut ch) = TeleopServer::bind(server_config(&tmp("loop-reconnect"))).unwrap();
    let addr = server.local_addr().unwrap();
    let mut c = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    synced(&c).await;
    steer(&c, 50).await;
    assert!(next_link(&mut ch.events, LinkState::Live).await);
    // The console goes away: the lease is freed, the robot holds.
    c.close().await;
    assert!(next_link(&mut ch.events, LinkState::Hold).await);
    assert_eq!(server.lease_holder(), None);
    let first = drain(&mut ch.commands, Duration::from_millis(50)).await;
    assert!(!first.is_empty());

    // A new connection with the same certificate takes the lease back and steers again.
    let mut c = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    assert_eq!(c.welcome().holder, "");
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    // If the reconnect took over a second the link retracted (latched): reset it first.
    c.request(|c| c.reset());
    synced(&c).await;
    steer(&c, 50).await;
    assert!(next_link(&mut ch.events, LinkState::Live).await);
    let second = drain(&mut ch.commands, Duration::from_millis(300)).await;
    assert!(second.len() >= 30, "{}", second.len());
    // New connection, new sequence space from 1.
    assert!(second[0].seq < 10 && second[0].conn != first[0].conn);
    c.close().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_dropped_and_counted_and_the_connection_survives() {
    let (server, mut ch) = TeleopServer::bind(server_config(&tmp("loop-malformed"))).unwrap();
    let addr = server.local_addr().unwrap();
    let mut c = TeleopClient::connect(client_config("operator", addr))
        .await
        .unwrap();
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    synced(&c).await;
    let good = telecho_teleop::wire::Message::Command(telecho_teleop::wire::OperatorCommand {
        seq: 1_000_000,
        sent_s: c.now_s(),
        mode: CommandMode::Free,
        force_n: 0.0,
        target: target(0.4),
    })
    .to_bytes();
    let mut nan = good.clone();
    nan[28..36].copy_from_slice(&f64::NAN.to_le_bytes());
    for bad in [
        vec![1u8],
        vec![9, 1, 2, 3],
        nan,
        good[..50].to_vec(),
        vec![0xff; 120],
    ] {
        c.send_raw_datagram(bad).unwrap();
    }
    // The same valid datagram twice: a replay passes once.
    c.send_raw_datagram(good.clone()).unwrap();
    c.send_raw_datagram(good).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = server.stats();
    assert_eq!(st.core.malformed_datagrams, 5, "{st:?}");
    assert_eq!(st.core.commands.duplicate, 1);
    let cmds = drain(&mut ch.commands, Duration::from_millis(100)).await;
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].seq, 1_000_000);
    // Still connected: the lease answers, commands flow (new seq above the replayed one).
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    c.close().await;
    server.shutdown().await.unwrap();
}
