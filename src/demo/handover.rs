//! The demo's remote-expert phase: after the registration is accepted, a simulated expert at a
//! remote console takes over over QUIC — through the seeded impairment proxy at 150 ms RTT and
//! 1 % loss — and steers the probe from the scan's start point on the skin to the right L4/L5
//! facet joint (the `L4_facet_right` landmark: on L4's inferior articular process, at the joint
//! with L5) as the *registration* places it, holds the view, and retracts.
//!
//! The patient side is exactly `telecho teleop serve --sim` (same seed: the same patient,
//! placement and breathing as the scan), run in-process. The expert is the console's QUIC client
//! with the `operator` certificate of a site PKI made in `--out/pki`; every accepted command is in
//! `--out/teleop-audit.log`. Scoring (evaluator only) compares the probe's final true pose with
//! the true facet joint.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use nalgebra::{Matrix3, UnitQuaternion, Vector3};
use serde::Serialize;
use telecho_control::ScanProtocol;
use telecho_core::Transform;
use telecho_sim::plant::operator_start_pose;
use telecho_teleop::net::impair::Impairment;
use telecho_teleop::wire::{CommandMode, Pose, SafetyCode, Target};

use crate::cli_error::CliError;
use crate::perception::register::percentile;
use crate::scan::Scenario;
use crate::sim::Arm;
use crate::soak::Operator;
use crate::teleop::serve::{self, Hooks, LoopStatus, ServeArgs};

/// Round-trip time of the expert's link, ms.
pub(crate) const RTT_MS: f64 = 150.0;
/// Datagram loss of the expert's link, each direction.
pub(crate) const LOSS: f64 = 0.01;
/// The facet joint must lie within this distance of the image plane at the end of the hold, mm.
const PASS_PLANE_MM: f64 = 3.0;

/// Timeline of the expert's session, s from the lease: free-space approach to 20 mm above the
/// start point, contact there, move to the facet, hold, retract.
const APPROACH_S: f64 = 3.0;
const CONTACT_S: f64 = 3.0;
const MOVE_S: f64 = 6.0;
const HOLD_S: f64 = 4.0;
const RETRACT_S: f64 = 3.0;

#[derive(Debug, Default, Serialize)]
pub(crate) struct HandoverSummary {
    pub(crate) passed: bool,
    pub(crate) rtt_ms: f64,
    pub(crate) loss: f64,
    pub(crate) target: String,
    /// Distance from the true facet joint to the image plane (the probe's x–z plane) at the end
    /// of the hold, mm.
    pub(crate) facet_to_image_plane_mm: f64,
    /// Distance from the true facet joint to the probe axis at the end of the hold, mm.
    pub(crate) facet_to_probe_axis_mm: f64,
    /// Depth of the facet joint below the probe face, mm (inside the image when below
    /// `image_depth_mm`).
    pub(crate) facet_depth_mm: f64,
    /// Imaging depth of the expert's ultrasound stream (the scan's), mm.
    pub(crate) image_depth_mm: f64,
    /// Age of the operator commands applied at the patient side, ms.
    pub(crate) command_age_p50_ms: f64,
    pub(crate) command_age_p99_ms: f64,
    pub(crate) commands_sent: u64,
    pub(crate) commands_applied: u64,
    pub(crate) force_max_n: f64,
    pub(crate) force_limit_violations: u64,
    pub(crate) safety_events: std::collections::BTreeMap<String, u64>,
    pub(crate) audit_records: u64,
    pub(crate) wall_s: f64,
    /// With `--viewer`: what the console window received as observer (`states`, `frames`),
    /// from its summary when it was closed; `null` when it did not open or answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) viewer: Option<ViewerSeen>,
}

/// What the `--viewer` window received.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct ViewerSeen {
    pub(crate) states: u64,
    pub(crate) frames: u64,
    pub(crate) bad_frames: u64,
}

/// Minimum-jerk blend 0 → 1 over `u` ∈ [0, 1].
fn min_jerk(u: f64) -> f64 {
    let u = u.clamp(0.0, 1.0);
    u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)
}

/// Probe orientation looking into the back along the registered CT's anterior axis, array along
/// its cranial axis (a paramedian sagittal view).
fn sagittal_rotation(t_base_ct: &Transform) -> Matrix3<f64> {
    let inward = t_base_ct.rotation * Vector3::y();
    let cranial = t_base_ct.rotation * Vector3::z();
    let x = (cranial - inward * cranial.dot(&inward)).normalize();
    Matrix3::from_columns(&[x, inward.cross(&x), inward])
}

/// Where the expert steers, as the scan and the registration left it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Goal<'a> {
    /// The accepted registration.
    pub(crate) t_base_ct_est: &'a Transform,
    /// The target landmark where the perception node reports it (CT detection through the
    /// registration, base frame).
    pub(crate) facet_base_est: &'a Vector3<f64>,
    /// The evaluator's truth.
    pub(crate) facet_true_base: &'a Vector3<f64>,
    /// Imaging depth the scan chose for this patient, m (the expert's stream uses it too).
    pub(crate) image_depth_m: f64,
}

/// Runs the phase.
pub(crate) fn run(
    arm: Arm,
    seed: u64,
    out: &Path,
    goal: Goal<'_>,
    viewer: bool,
) -> Result<(HandoverSummary, Vec<f64>), CliError> {
    let Goal {
        t_base_ct_est,
        facet_base_est,
        facet_true_base,
        image_depth_m,
    } = goal;
    let wall = Instant::now();
    let pki = out.join("pki");
    if !pki.join("ca.pem").is_file() {
        telecho_teleop::pki::init(&pki, &[])
            .map_err(|e| CliError::failed(anyhow!("PKI in {}: {e}", pki.display())))?;
    }
    let audit = out.join("teleop-audit.log");
    let _ = std::fs::remove_file(&audit);
    let sargs = ServeArgs {
        us_depth_m: image_depth_m,
        ..ServeArgs::in_process(pki.clone(), audit, arm, seed, 30.0, 300.0)
    };
    let sc = Scenario::new(arm, seed, ScanProtocol::default_lumbar())?;
    let start = operator_start_pose(&sc.world, seed);
    let config = serve::server_config(&sargs, &sc)?;
    let rt = serve::runtime()?;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let ages = Arc::new(Mutex::new(Vec::new()));
    let hooks = Hooks {
        addr: Some(addr_tx),
        command_ages: Some(ages.clone()),
        ..Hooks::default()
    };
    let stop = hooks.stop.clone();
    let status = hooks.status.clone();
    let view = sagittal_rotation(t_base_ct_est);
    let (served, expert) = rt.block_on(async {
        let expert = async {
            let r = expert(
                &pki,
                addr_rx,
                &start,
                facet_base_est,
                &view,
                &status,
                viewer,
            )
            .await;
            stop.store(true, Ordering::Relaxed);
            r
        };
        tokio::join!(serve::serve(&sargs, sc, config, hooks), expert)
    });
    let served = served?;
    let (sent, probe_at_hold, seen) = expert.map_err(CliError::failed)?;
    let mut ages_ms: Vec<f64> = ages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|a| a * 1e3)
        .collect();
    ages_ms.sort_by(f64::total_cmp);
    // Evaluator: the true facet joint against the probe's true pose at the end of the hold.
    let d = facet_true_base - probe_at_hold.translation;
    let r = probe_at_hold.rotation;
    let (x, y, z) = (r.column(0), r.column(1), r.column(2));
    let plane_mm = 1e3 * d.dot(&y).abs();
    let axis_mm = 1e3 * (d.dot(&x).powi(2) + d.dot(&y).powi(2)).sqrt();
    let depth_mm = 1e3 * d.dot(&z);
    let s = HandoverSummary {
        passed: plane_mm <= PASS_PLANE_MM
            && served.force_limit_violations == 0
            && (0.0..image_depth_m * 1e3).contains(&depth_mm),
        rtt_ms: RTT_MS,
        loss: LOSS,
        target: "L4_facet_right (right L4/L5 facet joint)".into(),
        facet_to_image_plane_mm: plane_mm,
        facet_to_probe_axis_mm: axis_mm,
        facet_depth_mm: depth_mm,
        image_depth_mm: image_depth_m * 1e3,
        command_age_p50_ms: percentile(&ages_ms, 0.5),
        command_age_p99_ms: percentile(&ages_ms, 0.99),
        commands_sent: sent,
        commands_applied: served.commands_applied,
        force_max_n: served.force_max_n,
        force_limit_violations: served.force_limit_violations,
        safety_events: served.safety_events,
        audit_records: served.audit_records,
        wall_s: wall.elapsed().as_secs_f64(),
        viewer: seen.map(|v| ViewerSeen {
            states: v["states"].as_u64().unwrap_or(0),
            frames: v["frames"].as_u64().unwrap_or(0),
            bad_frames: v["bad_frames"].as_u64().unwrap_or(0),
        }),
    };
    Ok((s, ages_ms))
}

/// The console window of `--viewer`: a `telecho console --json` process connected as
/// `observer`. [`Viewer::close`] asks it to close (SIGTERM) and returns what it saw.
struct Viewer(Option<std::process::Child>);

impl Viewer {
    fn open(pki: &Path, addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let child = std::process::Command::new(exe)
            .args(["console", "--connect", &addr.to_string(), "--pki"])
            .arg(pki)
            .args(["--name", "observer", "--json"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        Ok(Self(Some(child)))
    }

    /// Closes the window; its summary (states, frames received) as `telecho console --json`
    /// prints it, `None` when it had already failed or does not answer within 5 s.
    fn close(mut self) -> Option<serde_json::Value> {
        let mut child = self.0.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            tracing::warn!("the viewer exited early ({status})");
            return None;
        }
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().ok()?;
                return serde_json::from_slice(&out.stdout).ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The expert's session; returns the commands sent and the true probe pose at the end of the
/// hold.
async fn expert(
    pki: &Path,
    addr_rx: tokio::sync::oneshot::Receiver<std::net::SocketAddr>,
    start: &Transform,
    facet: &Vector3<f64>,
    view: &Matrix3<f64>,
    status: &Arc<Mutex<LoopStatus>>,
    viewer: bool,
) -> anyhow::Result<(u64, Transform, Option<serde_json::Value>)> {
    let server = serve::patient_address(addr_rx).await?;
    let one_way = Impairment {
        delay_s: RTT_MS * 0.5e-3,
        jitter_s: 0.0,
        loss: LOSS,
        duplicate: 0.0,
    };
    let proxy = serve::impaired_link(server, one_way, 150).await?;
    // `--viewer`: the console in a window, watching as observer through the same link. It is a
    // window for the person running the demo, not part of the phase: if it cannot open, the
    // demo says so and goes on; it is closed when the phase ends.
    let viewer = if viewer {
        match Viewer::open(pki, proxy.local_addr()) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!("the viewer did not open: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let mut op = Operator::connect(pki, "operator", proxy.local_addr()).await?;
    op.acquire().await?;
    op.reset();
    let look = |p: Vector3<f64>| {
        Target::Pose(Pose {
            position_m: p,
            orientation: UnitQuaternion::from_matrix(view),
        })
    };
    let snapshot = || *status.lock().unwrap_or_else(|e| e.into_inner());
    let mut iv = tokio::time::interval(Duration::from_millis(4));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut at_hold = None;
    let outward = -view.column(2).into_owned();
    let mut retract_from = None;
    let approach_from = snapshot().t_base_probe.translation;
    let above_start = start.translation + outward * 0.02;
    loop {
        iv.tick().await;
        let t = t0.elapsed().as_secs_f64() - APPROACH_S;
        let (mode, force, target) = if t < 0.0 {
            let u = min_jerk(1.0 + t / APPROACH_S);
            (
                CommandMode::Free,
                0.0,
                look(approach_from + (above_start - approach_from) * u),
            )
        } else if t < CONTACT_S {
            (CommandMode::Contact, 8.0, look(start.translation))
        } else if t < CONTACT_S + MOVE_S {
            let u = min_jerk((t - CONTACT_S) / MOVE_S);
            (
                CommandMode::Contact,
                8.0,
                look(start.translation + (facet - start.translation) * u),
            )
        } else if t < CONTACT_S + MOVE_S + HOLD_S {
            (CommandMode::Contact, 8.0, look(*facet))
        } else if t < CONTACT_S + MOVE_S + HOLD_S + RETRACT_S {
            let s = snapshot();
            if at_hold.is_none() {
                at_hold = Some(s.t_base_probe);
            }
            let from = *retract_from.get_or_insert(s.t_base_probe.translation);
            let u = min_jerk((t - CONTACT_S - MOVE_S - HOLD_S) / RETRACT_S);
            (CommandMode::Free, 0.0, look(from + outward * (0.06 * u)))
        } else {
            break;
        };
        op.client.send_command(mode, force, target);
        sent += 1;
        op.drain().await;
    }
    let end = snapshot();
    if end.safety != SafetyCode::Normal {
        tracing::warn!(safety = ?end.safety, "remote expert session ended in a safety state");
    }
    op.client.request(|c| c.release());
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.client.close().await;
    let at_hold = at_hold.ok_or_else(|| anyhow!("the expert session ended before the hold"))?;
    let seen = viewer.and_then(Viewer::close);
    Ok((sent, at_hold, seen))
}
