//! `telecho console`: the remote sonographer's console. Connects to the patient side over QUIC
//! with its certificate, shows the arm, the measured and the predicted probe, the skin under
//! the probe, the ultrasound plane and image, the registered CBCT bone surface and landmarks, a
//! force gauge and the link latency (kiss3d), and steers from the keyboard and a 3D mouse.
//! `--screenshot FILE` renders the same view off screen after a few seconds of live data and
//! exits.
//!
//! Keys (window): arrows move the probe target laterally and cranially (10 mm/s while held),
//! `W`/`S` move it along the probe axis, `+`/`-` change the force setpoint by 0.5 N, `L` takes
//! the lease, `K` releases it, `Space` e-stop, `R` reset. A 3D mouse (through spacenavd,
//! [`telecho_teleop::spacemouse`]) adds its translation to the keys' and turns the probe,
//! within [`MAX_TILT_DEG`] of its orientation when the lease was taken; its button 0 takes or
//! releases the lease, button 1 resets. Keyboard and 3D mouse together are a [`HapticDevice`]
//! without force output; the force is shown on the gauge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Args;
use nalgebra::{UnitQuaternion, Vector3};
use serde::Serialize;
use telecho_control::Chain;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::haptics::{ArmModel, DeviceSample, HapticDevice, SimulatedOperator};
use telecho_teleop::net::client::{ClientConfig, TeleopClient};
use telecho_teleop::spacemouse::{
    self, SpaceMouseAction, SpaceMouseClient, SpaceMouseConfig, Twist,
};
use telecho_teleop::view::{LandmarkMark, SceneModel};
use telecho_teleop::wire::{CommandMode, LeaseOutcome, Pose, Role, Target};

use crate::cli_error::CliError;
use crate::sim::Arm;
use crate::CliResult;

/// Probe target speed while an arrow key is held, m/s.
const KEY_SPEED_M_S: f64 = 0.01;

/// Most the 3D mouse tilts the probe axis away from its direction when the lease was taken, °.
const MAX_TILT_DEG: f64 = 30.0;

/// Most bone-surface points drawn (the CT surface is subsampled evenly to this many).
const MAX_BONE_POINTS: usize = 20_000;

#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    /// The patient side (`telecho teleop serve --listen ADDR`): `IP:PORT` or `HOST:PORT`. Its
    /// certificate must name that IP or host (`telecho certs init --names`), unless
    /// `--server-name` says which name to check instead.
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// The name the patient side's certificate must carry (default: the host or IP of
    /// `--connect`).
    #[arg(long)]
    server_name: Option<String>,
    /// Site PKI directory (`telecho certs init`): `ca.pem` and this console's certificate.
    #[arg(long)]
    pki: PathBuf,
    /// Which certificate of the PKI to present (`operator`, `observer`, or a name issued with
    /// `telecho certs issue`); the role comes from the certificate.
    #[arg(long, default_value = "operator")]
    name: String,
    /// The arm at the patient side (drawn from its bundled URDF).
    #[arg(long, value_enum, default_value_t = Arm::Ur5e)]
    arm: Arm,
    /// The patient's CBCT (NIfTI or DICOM directory): its posterior bone surface is drawn,
    /// placed with `--registration`.
    #[arg(long, requires = "registration")]
    ct: Option<PathBuf>,
    /// The output of `telecho perception register --json` (`t_base_ct`, landmarks).
    #[arg(long)]
    registration: Option<PathBuf>,
    /// Render off screen to this PNG after `--wait-s` seconds of live data, then exit.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// With `--screenshot`: seconds of live data before the picture.
    #[arg(long, default_value_t = 3.0)]
    wait_s: f64,
    /// With `--screenshot`: take the lease and steer with the simulated operator (a 10 mm circle
    /// around the probe's position, 8 N), so that the ghost probe and the haptic loop are live.
    #[arg(long)]
    steer: bool,
    /// View width, pixels.
    #[arg(long, default_value_t = 1280)]
    width: u32,
    /// View height, pixels.
    #[arg(long, default_value_t = 720)]
    height: u32,
    /// The patient side's contact-force limit, N (the gauge's full scale).
    #[arg(long, default_value_t = 20.0)]
    force_limit_n: f64,
    /// Print one JSON object (what was received and rendered) instead of a line.
    #[arg(long)]
    json: bool,
    /// spacenavd's socket, for a 3D mouse (SpaceMouse, SpaceNavigator, Spaceball) beside the
    /// keyboard in the window. Without this option the default socket is used when it exists.
    #[arg(long, value_name = "PATH", default_missing_value = spacemouse::DEFAULT_SOCKET,
          num_args = 0..=1)]
    spacemouse: Option<PathBuf>,
    /// Keyboard only, even when spacenavd runs.
    #[arg(long, conflicts_with = "spacemouse")]
    no_spacemouse: bool,
    /// 3D mouse: probe speed at full deflection, mm/s.
    #[arg(long, default_value_t = 10.0)]
    spacemouse_mm_s: f64,
    /// 3D mouse: probe turn rate at full deflection, °/s.
    #[arg(long, default_value_t = 10.0)]
    spacemouse_deg_s: f64,
}

#[derive(Debug, Serialize)]
struct ConsoleReport {
    role: Option<Role>,
    identity: String,
    lease_holder: String,
    states: u64,
    haptics: u64,
    frames: u64,
    bad_frames: u64,
    bone_points: usize,
    landmarks: usize,
    commands_sent: u64,
    command_rtt_ms: Option<f64>,
    frame_age_ms: Option<f64>,
    screenshot: Option<PathBuf>,
    width: u32,
    height: u32,
    /// Share of pixels that differ from the background: 0 for a blank picture.
    non_background_fraction: Option<f64>,
}

impl ConsoleReport {
    /// What the session received and sent; the picture's fields are left empty.
    fn of(model: &SceneModel, commands_sent: u64, width: u32, height: u32) -> Self {
        Self {
            role: model.role,
            identity: model.identity.clone(),
            lease_holder: model.holder.clone(),
            states: model.states,
            haptics: model.haptics,
            frames: model.frames,
            bad_frames: model.bad_frames,
            bone_points: model.bone_points.len(),
            landmarks: model.landmarks.len(),
            commands_sent,
            command_rtt_ms: model.latency.command_rtt_s.map(|s| s * 1e3),
            frame_age_ms: model.latency.frame_age_s.map(|s| s * 1e3),
            screenshot: None,
            width,
            height,
            non_background_fraction: None,
        }
    }
}

impl ConsoleReport {
    /// Prints the report: one JSON object, or one line.
    fn print(&self, json: bool) -> CliResult {
        if json {
            let text = serde_json::to_string(self)
                .context("report")
                .map_err(CliError::failed)?;
            println!("{text}");
        } else {
            let picture = self
                .screenshot
                .as_ref()
                .map(|p| format!(" → {} ({}×{})", p.display(), self.width, self.height))
                .unwrap_or_default();
            println!(
                "telecho console: {} ({:?}), {} states, {} haptic, {} frames, {} commands \
                 sent{picture}",
                self.identity,
                self.role,
                self.states,
                self.haptics,
                self.frames,
                self.commands_sent
            );
        }
        Ok(())
    }
}

fn check(args: &ConsoleArgs) -> Result<(), CliError> {
    if !(args.wait_s.is_finite() && (0.0..=600.0).contains(&args.wait_s)) {
        return Err(CliError::input(anyhow!("--wait-s must be 0–600 s")));
    }
    if !(64..=8192).contains(&args.width) || !(64..=8192).contains(&args.height) {
        return Err(CliError::input(anyhow!(
            "--width and --height must be 64–8192 pixels"
        )));
    }
    if !(args.force_limit_n.is_finite() && args.force_limit_n > 0.0) {
        return Err(CliError::input(anyhow!("--force-limit-n must be positive")));
    }
    if args.steer && args.screenshot.is_none() {
        return Err(CliError::input(anyhow!(
            "--steer is for --screenshot runs; in the window, steer with the keys"
        )));
    }
    if args.spacemouse.is_some() && args.screenshot.is_some() {
        return Err(CliError::input(anyhow!(
            "--spacemouse is for the window; --screenshot runs steer with --steer"
        )));
    }
    spacemouse_config(args)
        .validate()
        .map_err(|e| CliError::input(anyhow!("--spacemouse-mm-s/--spacemouse-deg-s: {e}")))?;
    Ok(())
}

fn spacemouse_config(args: &ConsoleArgs) -> SpaceMouseConfig {
    SpaceMouseConfig {
        max_speed_m_s: args.spacemouse_mm_s * 1e-3,
        max_rate_rad_s: args.spacemouse_deg_s.to_radians(),
        ..SpaceMouseConfig::default()
    }
}

/// The 3D mouse: the socket `--spacemouse` names (an error if it cannot be reached), else
/// spacenavd's default socket if it exists, unless `--no-spacemouse`. Logs which input is used.
fn open_spacemouse(args: &ConsoleArgs) -> Result<Option<SpaceMouseClient>, CliError> {
    let default = Path::new(spacemouse::DEFAULT_SOCKET);
    let path = match &args.spacemouse {
        _ if args.no_spacemouse => {
            tracing::info!("input: keyboard (--no-spacemouse)");
            return Ok(None);
        }
        Some(path) => path.as_path(),
        None if default.exists() => default,
        None => {
            tracing::info!(
                "input: keyboard (no spacenavd socket at {}; see --spacemouse)",
                default.display()
            );
            return Ok(None);
        }
    };
    match SpaceMouseClient::connect(path, spacemouse_config(args)) {
        Ok(mouse) => {
            tracing::info!(
                "input: keyboard and 3D mouse (spacenavd at {})",
                path.display()
            );
            Ok(Some(mouse))
        }
        Err(e) if args.spacemouse.is_some() => Err(CliError::input(anyhow!("--spacemouse: {e}"))),
        Err(e) => {
            tracing::warn!("{e}; input: keyboard only");
            Ok(None)
        }
    }
}

/// The patient's plan: the registered CBCT bone surface and landmarks, base frame.
fn load_plan(args: &ConsoleArgs, model: &mut SceneModel) -> Result<(), CliError> {
    let Some(reg) = &args.registration else {
        return Ok(());
    };
    let text = std::fs::read(reg)
        .with_context(|| format!("cannot read {}", reg.display()))
        .map_err(CliError::input)?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not JSON", reg.display()))
        .map_err(CliError::input)?;
    let rows: [[f64; 4]; 4] = v
        .get("t_base_ct")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .ok_or_else(|| CliError::input(anyhow!("{}: no 4×4 t_base_ct", reg.display())))?;
    let t_base_ct = telecho_perception::registration::transform_from_rows(&rows)
        .map_err(|e| CliError::input(anyhow!("{}: t_base_ct: {e}", reg.display())))?;
    if let Some(list) = v.get("landmarks").and_then(|l| l.as_array()) {
        for l in list {
            let name = l.get("name").and_then(|n| n.as_str());
            let xyz: Option<[f64; 3]> = l
                .get("xyz")
                .and_then(|x| serde_json::from_value(x.clone()).ok());
            let (Some(name), Some(xyz)) = (name, xyz) else {
                return Err(CliError::input(anyhow!(
                    "{}: a landmark without name or xyz",
                    reg.display()
                )));
            };
            if xyz.iter().any(|v| !v.is_finite()) {
                return Err(CliError::input(anyhow!(
                    "{}: landmark {name} is not finite",
                    reg.display()
                )));
            }
            model.landmarks.push(LandmarkMark {
                name: name.to_owned(),
                xyz: Vector3::from(xyz),
                confidence: l.get("confidence").and_then(|c| c.as_f64()).unwrap_or(1.0),
            });
        }
    }
    if let Some(ct) = &args.ct {
        let vol = telecho_perception::ct_load::load_ct(ct)
            .map_err(|e| CliError::input(anyhow!("{}: {e}", ct.display())))?;
        let surface = telecho_perception::ct_surface::extract_posterior_bone_surface(
            &vol,
            &Default::default(),
        )
        .map_err(|e| CliError::input(anyhow!("{}: {e}", ct.display())))?;
        let step = surface.points.len().div_ceil(MAX_BONE_POINTS).max(1);
        model.bone_points = surface
            .points
            .iter()
            .step_by(step)
            .map(|p| t_base_ct.transform_point(p))
            .collect();
    }
    Ok(())
}

/// The keyboard and the 3D mouse as a hand controller: keys and cap set a velocity, the handle
/// integrates it. It has no motors, so the rendered force is shown, not felt.
#[derive(Debug)]
struct DeskDevice {
    position_m: Vector3<f64>,
    velocity_m_s: Vector3<f64>,
}

impl HapticDevice for DeskDevice {
    fn sample(&mut self) -> DeviceSample {
        DeviceSample {
            position_m: self.position_m,
            velocity_m_s: self.velocity_m_s,
        }
    }

    fn set_force(&mut self, _force_n: Vector3<f64>) {}
}

/// Drains the client's events into the model.
async fn pump(client: &mut TeleopClient, model: &mut SceneModel, chain: &Chain) {
    while let Some(ev) = client.next_event(Duration::ZERO).await {
        if let ConsoleEvent::TakeOverRequested { requester, .. } = &ev {
            tracing::warn!(%requester, "another operator asks for the lease (Y hands it over, N refuses)");
        }
        model.apply(&ev, Some(chain));
    }
    model.expire_take_over(Instant::now());
    model.latency = client.latency();
}

/// `IP:PORT` or `HOST:PORT` → the address to dial and the name its certificate must carry.
fn resolve(connect: &str) -> Result<(SocketAddr, String), CliError> {
    if let Ok(addr) = connect.parse::<SocketAddr>() {
        return Ok((addr, addr.ip().to_string()));
    }
    let bad = || {
        CliError::input(anyhow!(
            "--connect {connect:?}: expected IP:PORT or HOST:PORT"
        ))
    };
    let (host, port) = connect.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| CliError::input(anyhow!("--connect {connect:?}: cannot resolve {host}: {e}")))?
        .collect();
    // IPv4 first: a QUIC dial to an address nobody listens on only fails at the timeout.
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| CliError::input(anyhow!("--connect {connect:?}: {host} has no address")))?;
    Ok((addr, host.to_owned()))
}

fn pose_target(position: Vector3<f64>, orientation: UnitQuaternion<f64>) -> Target {
    Target::Pose(Pose {
        position_m: position,
        orientation,
    })
}

pub(crate) fn run(args: &ConsoleArgs) -> CliResult {
    check(args)?;
    let (_, urdf) = args.arm.bundled();
    let chain = Chain::from_urdf_str(urdf, None, "probe_tip")
        .map_err(|e| CliError::failed(anyhow!("bundled URDF: {e}")))?;
    let mut model = SceneModel::new(args.force_limit_n);
    load_plan(args, &mut model)?;
    let rt = crate::teleop::serve::runtime()?;
    let (addr, host) = resolve(&args.connect)?;
    let mut cfg = ClientConfig::from_pki(&args.pki, &args.name, addr)
        .map_err(|e| CliError::input(anyhow!("PKI {}: {e}", args.pki.display())))?;
    cfg.server_name = args.server_name.clone().unwrap_or(host);
    let mut client = rt
        .block_on(TeleopClient::connect(cfg))
        .map_err(|e| CliError::failed(anyhow!("cannot connect to {}: {e}", args.connect)))?;
    let w = client.welcome().clone();
    model.apply(
        &ConsoleEvent::Welcome {
            role: w.role,
            conn_id: w.conn_id,
            identity: w.identity.clone(),
            holder: w.holder.clone(),
        },
        None,
    );
    let result = match &args.screenshot {
        Some(path) => screenshot_run(args, path, &rt, &mut client, &mut model, &chain),
        None => window_run(args, &rt, &mut client, &mut model, &chain),
    };
    rt.block_on(client.close());
    result
}

fn screenshot_run(
    args: &ConsoleArgs,
    path: &Path,
    rt: &tokio::runtime::Runtime,
    client: &mut TeleopClient,
    model: &mut SceneModel,
    chain: &Chain,
) -> CliResult {
    let commands_sent = rt
        .block_on(async {
            let start = Instant::now();
            let wait = Duration::from_secs_f64(args.wait_s);
            let mut sent = 0u64;
            let mut op: Option<(SimulatedOperator, UnitQuaternion<f64>, f64)> = None;
            if args.steer {
                match client.lease(|c| c.acquire(), Duration::from_secs(3)).await {
                    Some(LeaseOutcome::Granted) => model.holder.clone_from(&model.identity),
                    other => return Err(anyhow!("the lease was not granted: {other:?}")),
                }
                client.request(|c| c.reset());
            }
            let mut iv = tokio::time::interval(Duration::from_millis(10));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while start.elapsed() < wait {
                iv.tick().await;
                pump(client, model, chain).await;
                if !args.steer {
                    continue;
                }
                if op.is_none() {
                    if let Some(p) = model.probe {
                        let centre = p.translation;
                        let r = p.rotation;
                        let (x, y) = (r.column(0).into_owned(), r.column(1).into_owned());
                        let path = move |t: f64| {
                            let a = std::f64::consts::TAU * t / 4.0;
                            centre + (x * a.cos() + y * a.sin() - x) * 0.01
                        };
                        let sim = SimulatedOperator::new(ArmModel::default(), path)?;
                        let q = UnitQuaternion::from_matrix(&r);
                        op = Some((sim, q, start.elapsed().as_secs_f64()));
                    }
                }
                if let Some((sim, q, t_prev)) = &mut op {
                    let t = start.elapsed().as_secs_f64();
                    let dt = (t - *t_prev).clamp(0.0, 0.05);
                    *t_prev = t;
                    sim.step(dt);
                    let s = sim.sample();
                    let f =
                        client.request(|c| c.renderer().render(&s.position_m, &s.velocity_m_s, dt));
                    sim.set_force(f.force_n);
                    let target = pose_target(s.position_m, *q);
                    client.send_command(CommandMode::Contact, 8.0, target);
                    model.commanded(&target, 8.0);
                    sent += 1;
                }
            }
            pump(client, model, chain).await;
            Ok(sent)
        })
        .map_err(CliError::failed)?;
    let pixels = telecho_teleop::view::render::screenshot(model, args.width, args.height)
        .map_err(|e| CliError::failed(anyhow!("{e}")))?;
    let image = telecho_perception::fuse::RgbImage {
        width: pixels.width as usize,
        height: pixels.height as usize,
        data: pixels.data,
    };
    telecho_perception::fuse::write_png(path, &image)
        .map_err(|e| CliError::failed(anyhow!("{e}")))?;
    let bg = &image.data[..3];
    let differing = image
        .data
        .chunks_exact(3)
        .filter(|p| p.iter().zip(bg).any(|(a, b)| a.abs_diff(*b) > 8))
        .count();
    let report = ConsoleReport {
        screenshot: Some(path.to_path_buf()),
        non_background_fraction: Some(
            differing as f64 / (image.width as f64 * image.height as f64),
        ),
        ..ConsoleReport::of(
            model,
            commands_sent,
            image.width as u32,
            image.height as u32,
        )
    };
    report.print(args.json)?;
    if model.states == 0 {
        return Err(CliError::failed(anyhow!(
            "no robot state received from {} within {} s",
            args.connect,
            args.wait_s
        )));
    }
    Ok(())
}

fn window_run(
    args: &ConsoleArgs,
    rt: &tokio::runtime::Runtime,
    client: &mut TeleopClient,
    model: &mut SceneModel,
    chain: &Chain,
) -> CliResult {
    use telecho_teleop::view::render::{ConsoleKey, ConsoleWindow};
    // SIGINT/SIGTERM close the window like its close button (the summary is still printed).
    crate::teleop::serve::install_interrupt_handler();
    let interrupted =
        || crate::teleop::serve::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
    let mut commands_sent = 0u64;
    let mut mouse = open_spacemouse(args)?;
    rt.block_on(async {
        let mut window = ConsoleWindow::open("telecho console", args.width, args.height).await;
        // The hand controller, the probe orientation it commands, and the orientation when the
        // lease was taken (the 3D mouse's tilt limit is about it).
        let mut device: Option<(DeskDevice, UnitQuaternion<f64>, UnitQuaternion<f64>)> = None;
        let mut force_n = 8.0f64;
        let mut last = Instant::now();
        loop {
            pump(client, model, chain).await;
            let now = Instant::now();
            let dt = (now - last).as_secs_f64().clamp(1e-4, 0.1);
            last = now;
            // The 3D mouse's buttons act as their keys; a broken stream drops the mouse (and
            // its motion), the keyboard stays.
            let mouse_keys = match mouse.as_mut().map(|m| m.poll(now)) {
                Some(Ok(polled)) => polled.actions,
                Some(Err(e)) => {
                    tracing::error!("3D mouse: {e}; input: keyboard only from now on");
                    mouse = None;
                    Vec::new()
                }
                None => Vec::new(),
            };
            let mouse_keys = mouse_keys.into_iter().map(|action| match action {
                SpaceMouseAction::ToggleLease if client.has_lease() => ConsoleKey::Release,
                SpaceMouseAction::ToggleLease => ConsoleKey::Acquire,
                SpaceMouseAction::Reset => ConsoleKey::Reset,
            });
            let keys: Vec<ConsoleKey> = window.pressed().into_iter().chain(mouse_keys).collect();
            for key in keys {
                match key {
                    ConsoleKey::Acquire => {
                        client.request(|c| c.acquire());
                    }
                    ConsoleKey::Release => {
                        client.request(|c| c.release());
                    }
                    ConsoleKey::EStop => {
                        client.request(|c| c.estop());
                    }
                    ConsoleKey::Reset => {
                        client.request(|c| c.reset());
                    }
                    ConsoleKey::TakeOver => {
                        client.request(|c| c.take_over());
                    }
                    ConsoleKey::Yield => {
                        if let Some(who) = model.take_over_answered() {
                            tracing::info!(%who, "lease handed over");
                            client.request(|c| c.confirm_take_over());
                        }
                    }
                    ConsoleKey::Refuse => {
                        if let Some(who) = model.take_over_answered() {
                            tracing::info!(%who, "take-over refused");
                            client.request(|c| c.deny_take_over());
                        }
                    }
                    ConsoleKey::ForceUp => force_n = (force_n + 0.5).min(18.0),
                    ConsoleKey::ForceDown => force_n = (force_n - 0.5).max(1.0),
                    _ => {}
                }
            }
            // The handle starts where the probe is once we hold the lease.
            if !client.has_lease() {
                device = None;
            } else if device.is_none() {
                if let Some(p) = model.probe {
                    let dev = DeskDevice {
                        position_m: p.translation,
                        velocity_m_s: Vector3::zeros(),
                    };
                    let q = UnitQuaternion::from_matrix(&p.rotation);
                    device = Some((dev, q, q));
                }
            }
            if let Some((dev, q, q_lease)) = &mut device {
                let axis = |plus: ConsoleKey, minus: ConsoleKey| {
                    f64::from(u8::from(window.held(plus))) - f64::from(u8::from(window.held(minus)))
                };
                let local = Vector3::new(
                    axis(ConsoleKey::Right, ConsoleKey::Left),
                    axis(ConsoleKey::Up, ConsoleKey::Down),
                    axis(ConsoleKey::In, ConsoleKey::Out),
                );
                let cap = mouse.as_ref().map_or(Twist::default(), |m| m.twist(now));
                dev.velocity_m_s =
                    q.to_rotation_matrix() * (local * KEY_SPEED_M_S + cap.linear_m_s);
                dev.position_m += dev.velocity_m_s * dt;
                *q = spacemouse::turn_probe(
                    *q,
                    *q_lease,
                    cap.angular_rad_s,
                    dt,
                    MAX_TILT_DEG.to_radians(),
                );
                let s = dev.sample();
                let f = client.request(|c| c.renderer().render(&s.position_m, &s.velocity_m_s, dt));
                dev.set_force(f.force_n);
                let target = pose_target(s.position_m, *q);
                client.send_command(CommandMode::Contact, force_n, target);
                commands_sent += 1;
                model.commanded(&target, force_n);
            }
            if !window.show(model).await || interrupted() {
                break;
            }
        }
    });
    ConsoleReport::of(model, commands_sent, args.width, args.height).print(args.json)
}
