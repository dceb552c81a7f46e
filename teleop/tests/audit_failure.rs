//! The audit log cannot be written (disk full): accepted operator commands are withheld from the
//! control node — nothing moves the robot without being on record — and the failure is counted.
//! The log is `/dev/full`, where every write fails with ENOSPC, as on a full disk.

mod common;

use std::path::Path;
use std::time::Duration;

use nalgebra::{UnitQuaternion, Vector3};
use telecho_teleop::net::client::TeleopClient;
use telecho_teleop::net::server::TeleopServer;
use telecho_teleop::wire::{CommandMode, LeaseOutcome, Pose, Target};

use common::{client_config, server_config, tmp};

const T: Duration = Duration::from_secs(10);

async fn steer(c: &TeleopClient, n: usize) {
    let mut iv = tokio::time::interval(Duration::from_millis(5));
    for i in 0..n {
        iv.tick().await;
        c.send_command(
            CommandMode::Contact,
            5.0,
            Target::Pose(Pose {
                position_m: Vector3::new(0.4 + 1e-5 * i as f64, 0.0, 0.3),
                orientation: UnitQuaternion::identity(),
            }),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_withheld_while_the_audit_log_cannot_be_written() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("skipped: no /dev/full on this system");
        return;
    }
    let mut cfg = server_config(&tmp("audit-full"));
    cfg.audit = Some(full.to_owned());
    let (server, mut ch) = TeleopServer::bind(cfg).unwrap();
    let mut c = TeleopClient::connect(client_config("operator", server.local_addr().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    steer(&c, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut passed = 0;
    while ch.commands.try_recv().is_some() {
        passed += 1;
    }
    let st = server.stats();
    println!(
        "audit on /dev/full: {} accepted, {} withheld, {} passed, {} audit failures",
        st.core.commands.accepted, st.commands_unaudited, passed, st.audit_failures
    );
    assert_eq!(
        passed, 0,
        "a command reached the control node without an audit record"
    );
    assert!(st.core.commands.accepted >= 90, "{st:?}");
    assert_eq!(st.commands_unaudited, st.core.commands.accepted, "{st:?}");
    assert!(st.audit_failures >= st.commands_unaudited, "{st:?}");
    c.close().await;
    let _ = server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_writable_log_every_accepted_command_passes_and_is_on_record() {
    let cfg = server_config(&tmp("audit-ok"));
    let audit = cfg.audit.clone().unwrap();
    let (server, mut ch) = TeleopServer::bind(cfg).unwrap();
    let mut c = TeleopClient::connect(client_config("operator", server.local_addr().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        c.lease(|c| c.acquire(), T).await,
        Some(LeaseOutcome::Granted)
    );
    steer(&c, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut passed = 0u64;
    while ch.commands.try_recv().is_some() {
        passed += 1;
    }
    let st = server.stats();
    assert_eq!(st.commands_unaudited, 0);
    assert_eq!(st.audit_failures, 0);
    // The queue keeps the newest commands; every accepted one went through it.
    assert!(
        passed >= 1 && st.core.commands.accepted >= 90,
        "{passed} {st:?}"
    );
    c.close().await;
    server.shutdown().await.unwrap();
    // Written through at once: the records are in the file, not in a buffer.
    let v = telecho_teleop::audit::verify(&audit).unwrap();
    assert!(v.records >= st.core.commands.accepted, "{v:?}");
}
