//! The 3D mouse end to end through the real `spacenavd` (Debian package `spacenavd`, 1.1 in
//! bookworm): the test plays a serial Spaceball on a pseudo-terminal, the daemon drives it
//! from its `serial` config option, and our client (`telecho_teleop::spacemouse`) reads the
//! daemon's socket and must see the test's motions, with the right signs and magnitudes
//! through our probe-frame mapping, and its buttons as console actions.
//!
//! The Spaceball serial protocol as spacenavd 1.1 speaks it (facts from its
//! `src/dev_serial.c`): the daemon writes `\r@RESET\r` and takes a reply containing `\r@1` as
//! a Spaceball (`@2 Firmware version 2.42` makes it a 2003C with 8 buttons), then sends
//! `\rCB\rMSSV\rk\r`. Packets are an id byte, data, and `\r`; in the data, 0x11, 0x13, `\r` and
//! `^` are escaped as `^Q`, `^S`, `^M`, `^^`. A motion is `D`, two timer bytes and six
//! big-endian `i16` (x, y, z, rx, ry, rz, already spacenavd's axes); buttons are `K` with two
//! bytes, bits 0–3 of the second being buttons 0–3.
//!
//! Where the daemon puts its socket: upstream spacenavd binds `/var/run/spnav.sock`; Debian's
//! 1.1 build binds `run/spnav.sock` relative to its working directory (its daemon mode changes
//! to `/` first, so the service still ends up at `/run/spnav.sock`). The test runs the daemon
//! in the foreground in a fresh directory and takes the socket there; with an upstream build
//! it takes `/var/run/spnav.sock` once the pid file there names the daemon it started.
//!
//! The second test steers `telecho console` (its window, on a virtual X display, against
//! `telecho teleop serve --sim`) with the same stand-in device and watches the probe move as an
//! observer.
//!
//! Without `spacenavd` (or, for the console, `Xvfb` and a Vulkan driver) the tests skip, unless
//! `TELECHO_REQUIRE_PEERS=1`.

mod common;

use std::ffi::CStr;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nalgebra::{Quaternion, UnitQuaternion, Vector3};
use telecho_core::peers::missing_peer;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::net::client::TeleopClient;
use telecho_teleop::spacemouse::{
    SpaceMouseAction, SpaceMouseClient, SpaceMouseConfig, SpnavEvent, Twist,
};

/// One daemon at a time (an upstream build has one socket path for all).
static ONE_DAEMON: Mutex<()> = Mutex::new(());

/// The master side of a pseudo-terminal, non-blocking, and its slave's path. The slave is kept
/// open too, so that the master never reads EIO while the daemon has it closed.
struct Pty {
    master: File,
    _slave: File,
    slave_path: PathBuf,
}

fn open_pty() -> Pty {
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes at most
    // buf.len() bytes, NUL-terminated.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = File::from(OwnedFd::from_raw_fd(fd));
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()),
            0,
            "ptsname_r"
        );
        let slave_path = PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_str().unwrap());
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0);
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .expect("open the pty's slave");
        Pty {
            master,
            _slave: slave,
            slave_path,
        }
    }
}

impl Pty {
    /// Reads what the daemon wrote until `needle` shows up (or panics after `timeout`).
    fn expect(&mut self, needle: &[u8], timeout: Duration, daemon: &Daemon) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            assert!(
                Instant::now() < deadline,
                "the daemon never wrote {:?} to the serial line (got {:?}); its log:\n{}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&seen),
                daemon.log()
            );
            match self.master.read(&mut buf) {
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                // EIO: no slave open (cannot happen while we hold one); wait.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("reading the pty: {e}"),
            }
        }
        seen
    }

    /// Sends one Spaceball packet: id, escaped data, CR.
    fn send(&mut self, id: u8, data: &[u8]) {
        let mut out = vec![id];
        for &b in data {
            match b {
                0x11 => out.extend_from_slice(b"^Q"),
                0x13 => out.extend_from_slice(b"^S"),
                b'\r' => out.extend_from_slice(b"^M"),
                b'^' => out.extend_from_slice(b"^^"),
                _ => out.push(b),
            }
        }
        out.push(b'\r');
        self.master.write_all(&out).expect("write to the pty");
    }

    /// A Spaceball motion packet (`D`): timer, then x, y, z, rx, ry, rz big-endian.
    fn motion(&mut self, t: [i16; 3], r: [i16; 3]) {
        let mut data = vec![0u8, 0u8];
        for v in t.iter().chain(&r) {
            data.extend_from_slice(&v.to_be_bytes());
        }
        self.send(b'D', &data);
    }

    /// A Spaceball key packet (`K`) with buttons 0–3 down as in `mask`.
    fn keys(&mut self, mask: u8) {
        self.send(b'K', &[b'@', b'@' | (mask & 0x0f)]);
    }
}

/// The daemon, stopped (SIGTERM, then SIGKILL) and its directory removed when dropped, also
/// when the test fails.
struct Daemon {
    child: Child,
    dir: PathBuf,
    /// Its sockets before any client connected.
    own_sockets: usize,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("spnavd.log")).unwrap_or_default()
    }

    /// The daemon's open sockets (its listening socket, hotplug netlink socket and clients).
    fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// Waits until the daemon has accepted `n` clients beyond its own sockets. `connect`
    /// returns once the kernel queued the connection, but spacenavd accepts only when its
    /// `select` wakes for the listening socket; device input read in a pass that began before
    /// then goes to the clients accepted so far, so a first motion or button could reach no
    /// one (seen once on a loaded CI machine).
    fn wait_clients(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.sockets() < self.own_sockets + n {
            assert!(
                Instant::now() < deadline,
                "spacenavd did not accept {n} client(s) in 5 s ({} sockets, {} its own); \
                 its log:\n{}",
                self.sockets(),
                self.own_sockets,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the daemon's socket: `run/spnav.sock` in its directory (Debian's build), or
    /// the upstream `/var/run/spnav.sock` once `/var/run/spnavd.pid` names this daemon.
    fn socket(&mut self, timeout: Duration) -> PathBuf {
        let deadline = Instant::now() + timeout;
        let local = self.dir.join("run/spnav.sock");
        let pid = self.child.id().to_string();
        loop {
            if local.exists() {
                return local;
            }
            let upstream = Path::new("/var/run/spnav.sock");
            let pid_file = std::fs::read_to_string("/var/run/spnavd.pid").unwrap_or_default();
            if upstream.exists() && pid_file.trim() == pid {
                return upstream.to_path_buf();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("spacenavd exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "spacenavd made no socket in {timeout:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls the client until `want` events arrived (or panics after 3 s); returns them with the
/// actions and the instant of the poll that completed them.
fn receive(
    client: &mut SpaceMouseClient,
    want: usize,
    daemon: &Daemon,
) -> (Vec<SpnavEvent>, Vec<SpaceMouseAction>, Instant) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut events, mut actions) = (Vec::new(), Vec::new());
    loop {
        let now = Instant::now();
        let p = client.poll(now).expect("poll spacenavd");
        events.extend(p.events);
        actions.extend(p.actions);
        if events.len() >= want {
            return (events, actions, now);
        }
        assert!(
            now < deadline,
            "received {events:?} of {want} events from spacenavd; its log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The documented mapping, written out independently of the library: dead band 5 % of 350
/// counts, rescaled; 10 mm/s and 10 °/s at full scale.
fn expected(t: [i32; 3], r: [i32; 3]) -> (Vector3<f64>, Vector3<f64>) {
    let n = |c: i32| {
        let a = (f64::from(c) / 350.0).clamp(-1.0, 1.0);
        if a.abs() <= 0.05 {
            0.0
        } else {
            a.signum() * (a.abs() - 0.05) / 0.95
        }
    };
    let v = Vector3::new(n(t[0]), -n(t[2]), -n(t[1])) * 0.01;
    let w = Vector3::new(n(r[0]), -n(r[2]), -n(r[1])) * 10f64.to_radians();
    (v, w)
}

/// True when `spacenavd` can be run; otherwise reports the missing peer.
fn have_spacenavd() -> bool {
    match Command::new("spacenavd")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            missing_peer("spacenavd", "apt-get install spacenavd");
            false
        }
        Err(e) => panic!("cannot run spacenavd: {e}"),
    }
}

/// spacenavd driving the test's Spaceball, and the path of its socket.
struct Spaceball {
    pty: Pty,
    daemon: Daemon,
    socket: PathBuf,
}

/// Starts spacenavd in the foreground in a fresh directory, its `serial` option naming a new
/// pseudo-terminal, and answers its Spaceball handshake there.
fn start_spaceball() -> Spaceball {
    let mut pty = open_pty();
    let dir = std::env::temp_dir().join(format!(
        "telecho-spacenavd-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let config = dir.join("spnavrc");
    std::fs::write(&config, format!("serial = {}\n", pty.slave_path.display())).unwrap();
    let child = Command::new("spacenavd")
        .arg("-d")
        .arg("-c")
        .arg(&config)
        .arg("-l")
        .arg(dir.join("spnavd.log"))
        .current_dir(&dir)
        .env_remove("DISPLAY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start spacenavd");
    let mut daemon = Daemon {
        child,
        dir,
        own_sockets: 0,
    };
    pty.expect(b"@RESET\r", Duration::from_secs(5), &daemon);
    pty.master
        .write_all(b"\r@1 Spaceball alive and well after a reset.\r@2 Firmware version 2.42\r")
        .unwrap();
    pty.expect(b"MSSV\r", Duration::from_secs(5), &daemon);
    pty.keys(0); // the answer to its key-report request (`k`)
    let socket = daemon.socket(Duration::from_secs(5));
    // Its own sockets, once the count has held for 50 ms (its X11 probe opens one briefly
    // after the listening socket exists).
    let (mut held, mut last) = (0, daemon.sockets());
    while held < 5 {
        std::thread::sleep(Duration::from_millis(10));
        let now = daemon.sockets();
        held = if now == last { held + 1 } else { 0 };
        last = now;
    }
    daemon.own_sockets = last;
    Spaceball {
        pty,
        daemon,
        socket,
    }
}

#[test]
fn spacenavd_drives_the_probe_twist_and_console_actions() {
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    if !have_spacenavd() {
        return;
    }
    let started = Instant::now();
    let Spaceball {
        mut pty,
        daemon,
        socket,
    } = start_spaceball();
    let cfg = SpaceMouseConfig::default();
    let mut client = SpaceMouseClient::connect(&socket, cfg).expect("connect to spacenavd");
    daemon.wait_clients(1);

    // 1. A motion on all six axes: counts through unchanged (sensitivity 1, dead zone 2), and
    // our twist with the documented signs and magnitudes.
    let (t, r) = ([105i16, -140, 70], [70i16, -105, 140]);
    pty.motion(t, r);
    let (events, actions, got_at) = receive(&mut client, 1, &daemon);
    let t32 = t.map(i32::from);
    let r32 = r.map(i32::from);
    assert!(
        matches!(events[0], SpnavEvent::Motion { translation, rotation, .. }
            if translation == t32 && rotation == r32),
        "{events:?}"
    );
    assert!(actions.is_empty());
    let twist = client.twist(got_at);
    let (v, w) = expected(t32, r32);
    let v_err = (twist.linear_m_s - v).norm();
    let w_err = (twist.angular_rad_s - w).norm();
    eprintln!(
        "motion {t32:?}/{r32:?} → v = {:.3?} mm/s (error {v_err:.1e} m/s), ω = {:.3?} °/s \
         (error {w_err:.1e} rad/s), {:.0} ms after start",
        (twist.linear_m_s * 1e3).as_slice(),
        twist.angular_rad_s.map(f64::to_degrees).as_slice(),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(v_err < 1e-12 && w_err < 1e-12);
    // Signs spelled out: right, pulled towards you… here z = +70 is pushed away → −y;
    // y = −140 is pushed down → +z (into the patient).
    assert!(twist.linear_m_s.x > 0.0 && twist.linear_m_s.y < 0.0 && twist.linear_m_s.z > 0.0);
    assert!(
        twist.angular_rad_s.x > 0.0 && twist.angular_rad_s.y < 0.0 && twist.angular_rad_s.z > 0.0
    );

    // 2. Held still: the daemon sends nothing more (no repeat by default), so the velocity
    // goes stale and drops to zero.
    std::thread::sleep(Duration::from_millis(300));
    let now = Instant::now();
    let p = client.poll(now).unwrap();
    assert!(p.events.is_empty(), "the daemon repeated: {:?}", p.events);
    assert_eq!(client.twist(now), Twist::default(), "stale after 200 ms");

    // 3. Beyond full scale (clamped to 10 mm/s along −x), then released: zeros arrive.
    pty.motion([-1000, 0, 0], [0, 0, 0]);
    let (events, _, got_at) = receive(&mut client, 1, &daemon);
    assert!(
        matches!(
            events[0],
            SpnavEvent::Motion {
                translation: [-1000, 0, 0],
                rotation: [0, 0, 0],
                ..
            }
        ),
        "{events:?}"
    );
    let twist = client.twist(got_at);
    assert!(
        (twist.linear_m_s - Vector3::new(-0.01, 0.0, 0.0)).norm() < 1e-12,
        "{twist:?}"
    );
    assert_eq!(twist.angular_rad_s, Vector3::zeros());
    pty.motion([0, 0, 0], [0, 0, 0]);
    let (events, _, got_at) = receive(&mut client, 1, &daemon);
    assert!(
        matches!(
            events[0],
            SpnavEvent::Motion {
                translation: [0, 0, 0],
                rotation: [0, 0, 0],
                ..
            }
        ),
        "{events:?}"
    );
    assert_eq!(client.twist(got_at), Twist::default(), "released");

    // 4. Buttons 0 and 1 pressed and released: the lease toggle and reset, on press only.
    pty.keys(0b01);
    pty.keys(0b00);
    pty.keys(0b10);
    pty.keys(0b00);
    let (events, actions, _) = receive(&mut client, 4, &daemon);
    let b = |number, pressed| SpnavEvent::Button { number, pressed };
    assert_eq!(
        events,
        [b(0, true), b(0, false), b(1, true), b(1, false)],
        "buttons"
    );
    assert_eq!(
        actions,
        [SpaceMouseAction::ToggleLease, SpaceMouseAction::Reset]
    );
    eprintln!(
        "spacenavd at {}: motion, staleness, clamping, release and 2 buttons checked in {:.0} ms",
        socket.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// A process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A virtual X display (`Xvfb`, the first free display number), or `None` when Xvfb or a
/// Vulkan driver is missing.
fn virtual_display() -> Option<(Reaped, String)> {
    if !telecho_testkit::have_vulkan_driver() {
        missing_peer(
            "a Vulkan driver (for the console window)",
            "apt-get install mesa-vulkan-drivers",
        );
        return None;
    }
    let spawned = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "640x480x24",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            missing_peer("Xvfb (for the console window)", "apt-get install xvfb");
            return None;
        }
        Err(e) => panic!("cannot run Xvfb: {e}"),
    };
    // Xvfb writes its display number once it accepts connections.
    let mut out = child.stdout.take().unwrap();
    let mut number = String::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        number.push(char::from(byte[0]));
    }
    assert!(!number.is_empty(), "Xvfb printed no display number");
    Some((Reaped(child), format!(":{}", number.trim())))
}

/// Waits (at most `timeout`) until the observer hears that the lease holder is `holder(h)`.
fn wait_holder(
    rt: &tokio::runtime::Runtime,
    c: &mut TeleopClient,
    timeout: Duration,
    holder: impl Fn(&str) -> bool,
) -> Option<String> {
    rt.block_on(c.wait_for(timeout, |e| match e {
        ConsoleEvent::Lease { holder: h, .. } if holder(h) => Some(h.clone()),
        _ => None,
    }))
}

/// Holds the cap at a deflection for `secs`: the reading changes by a count every 20 ms as a
/// real sensor's does, so the daemon keeps sending.
fn hold(pty: &mut Pty, t: [i16; 3], r: [i16; 3], secs: f64) {
    let start = Instant::now();
    let mut i = 0i16;
    while start.elapsed().as_secs_f64() < secs {
        let jitter = |v: i16| if v == 0 { 0 } else { v + i % 2 };
        pty.motion(t.map(jitter), r.map(jitter));
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    pty.motion([0; 3], [0; 3]);
}

#[test]
fn console_window_steers_the_probe_with_the_3d_mouse() {
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    if !have_spacenavd() {
        return;
    }
    let Some((_xvfb, display)) = virtual_display() else {
        return;
    };
    let pki = telecho_testkit::scratch_dir("spacemouse-console");
    common::certs(&pki);
    let (serve, addr) = common::serve_sim(&pki, &pki.join("audit.log"), 300.0);
    let serve = Reaped(serve);
    let Spaceball {
        mut pty,
        daemon,
        socket,
    } = start_spaceball();
    // A worker thread keeps the observer's connection serviced while the test sleeps.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut observer = rt.block_on(common::connect(&pki, "observer", addr));

    let mut console = Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(["console", "--connect", &addr.to_string(), "--pki"])
        .arg(&pki)
        .arg("--spacemouse")
        .arg(&socket)
        .args(["--json", "--width", "320", "--height", "240"])
        .env("DISPLAY", &display)
        .env("RUST_LOG", "telecho::console=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start telecho console");
    let stderr = console.stderr.take().unwrap();
    let (tx, said) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[console] {line}");
            let _ = tx.send(line);
        }
    });
    let console = Reaped(console);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = said
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the console never said it uses the 3D mouse"));
        if line.contains("input: keyboard and 3D mouse") {
            break;
        }
    }
    daemon.wait_clients(1);

    // Button 0 takes the lease (the window's loop reads it once it runs).
    pty.keys(0b01);
    pty.keys(0b00);
    let holder = wait_holder(&rt, &mut observer, Duration::from_secs(60), |h| {
        !h.is_empty()
    })
    .unwrap_or_else(|| {
        panic!(
            "button 0 did not take the lease; daemon log:\n{}",
            daemon.log()
        )
    });
    // Push the cap right for 2.5 s (300 counts of 350: 8.5 mm/s past the 5 % dead band), then
    // tilt its top left (−rz) for 2 s (8.5 °/s about the probe's +y).
    std::thread::sleep(Duration::from_millis(500));
    let s0 = rt.block_on(common::next_state(&mut observer));
    hold(&mut pty, [300, 0, 0], [0, 0, 0], 2.5);
    hold(&mut pty, [0, 0, 0], [0, 0, -300], 2.0);
    std::thread::sleep(Duration::from_millis(800));
    let s1 = rt.block_on(common::next_state(&mut observer));

    // Button 0 again releases the lease; SIGTERM ends the console (which prints its report)
    // and the patient side (which flushes its audit log).
    pty.keys(0b01);
    pty.keys(0b00);
    assert!(
        wait_holder(&rt, &mut observer, Duration::from_secs(10), str::is_empty).is_some(),
        "button 0 did not release the lease"
    );
    rt.block_on(observer.close());
    let mut console = console;
    let status = terminate(&mut console.0);
    let mut out = String::new();
    let mut stdout = console.0.stdout.take().unwrap();
    stdout.read_to_string(&mut out).unwrap();
    assert!(status.success(), "console exit {status:?}: {out}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("console report: {report}");
    assert!(report["commands_sent"].as_u64().unwrap() > 3, "{report}");
    let mut serve = serve;
    assert!(terminate(&mut serve.0).success(), "serve exit");

    // What the console commanded, from the patient side's audit log: the first and the last
    // accepted pose targets ([x, y, z, qw, qx, qy, qz]).
    let audit = std::fs::read_to_string(pki.join("audit.log")).unwrap();
    let targets: Vec<Vec<f64>> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["what"]["event"] == "command" && r["who"]["cn"] == holder.as_str())
        .map(|r| serde_json::from_value(r["what"]["target"].clone()).unwrap())
        .collect();
    assert!(targets.len() > 3, "{} commands audited", targets.len());
    let pose = |t: &[f64]| {
        let q = UnitQuaternion::from_quaternion(Quaternion::new(t[3], t[4], t[5], t[6]));
        (Vector3::new(t[0], t[1], t[2]), q)
    };
    let (p_first, q_first) = pose(&targets[0]);
    let (p_last, q_last) = pose(&targets[targets.len() - 1]);
    // In the probe frame at lease time: the translation came before any rotation, so it is
    // along x only; the rotation is about y only.
    let moved = q_first.inverse() * (p_last - p_first);
    let turned = (q_first.inverse() * q_last).scaled_axis();
    let measured = s0.probe.orientation.inverse() * (s1.probe.position_m - s0.probe.position_m);
    let measured_turn = (s0.probe.orientation.inverse() * s1.probe.orientation).scaled_axis();
    eprintln!(
        "{} commands from {holder}: target moved {:.3?} mm and turned {:.3?}° (probe frame); \
         the measured probe moved {:.1?} mm and turned {:.1?}°",
        targets.len(),
        (moved * 1e3).as_slice(),
        turned.map(f64::to_degrees).as_slice(),
        (measured * 1e3).as_slice(),
        measured_turn.map(f64::to_degrees).as_slice(),
    );
    // Nominal: 8.5 mm/s × 2.5 s = 21.2 mm and 8.5 °/s × 2 s = 17.0°. The console integrates
    // real frame time (at most 0.1 s a frame), so a slow software renderer gets less, never more
    // than about a frame's worth beyond; axes and signs are exact.
    assert!(
        moved.x > 2e-3 && moved.x < 23.5e-3,
        "the target should move 2–23.5 mm along the probe's +x: {moved:?}"
    );
    assert!(
        moved.y.abs() < 1e-9 && moved.z.abs() < 1e-9,
        "and only along x: {moved:?}"
    );
    assert!(
        turned.y > 2f64.to_radians() && turned.y < 19f64.to_radians(),
        "the target should turn 2–19° about the probe's +y: {turned:?}"
    );
    assert!(
        turned.x.abs() < 1e-9 && turned.z.abs() < 1e-9,
        "and only about y: {turned:?}"
    );
}

/// SIGTERM to our child, then waits (at most 20 s) for it to exit.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "pid {pid} did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
