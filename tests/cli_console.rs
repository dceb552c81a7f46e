//! `telecho console`: the real binary against `telecho teleop serve --sim` over QUIC on loopback,
//! rendered off screen (`--screenshot`). Rendering needs a graphics driver: Mesa's lavapipe
//! (`mesa-vulkan-drivers`, a CPU Vulkan) is enough and CI installs it; without one these tests
//! skip, unless `TELECHO_REQUIRE_PEERS=1`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;

use common::{require_peers, telecho};

fn skip_without_driver(test: &str) -> bool {
    if telecho_testkit::have_vulkan_driver() {
        return false;
    }
    assert!(
        !require_peers(),
        "{test}: no Vulkan driver (install mesa-vulkan-drivers)"
    );
    eprintln!("{test}: skipped, no Vulkan driver (install mesa-vulkan-drivers)");
    true
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pki(name: &str) -> PathBuf {
    let dir = telecho_testkit::scratch_dir(name);
    common::certs(&dir);
    dir
}

fn serve(pki: &Path) -> Server {
    let (child, addr) = common::serve_sim(pki, &pki.join("audit.log"), 60.0);
    Server { child, addr }
}

/// Share of pixels of an RGB PNG that differ from its top-left pixel, and its size.
fn png_coverage(path: &Path) -> (f64, u32, u32) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let px = &buf[..info.buffer_size()];
    let bg = &px[..3];
    let n = px
        .chunks_exact(3)
        .filter(|p| p.iter().zip(bg).any(|(a, b)| a.abs_diff(*b) > 8))
        .count();
    (
        n as f64 / f64::from(info.width * info.height),
        info.width,
        info.height,
    )
}

#[test]
fn screenshot_of_a_live_steered_session_shows_the_scene() {
    if skip_without_driver("screenshot_of_a_live_steered_session_shows_the_scene") {
        return;
    }
    let dir = pki("console-live");
    let server = serve(&dir);
    let shot = dir.join("console.png");
    // By host name: the site certificate names localhost.
    let out = telecho(&[
        "console",
        "--connect",
        &format!("localhost:{}", server.addr.port()),
        "--pki",
        dir.to_str().unwrap(),
        "--screenshot",
        shot.to_str().unwrap(),
        "--wait-s",
        "4",
        "--steer",
        "--width",
        "960",
        "--height",
        "540",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "console failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{r}");
    assert_eq!(r["role"], "operator");
    assert_eq!(r["lease_holder"], "operator");
    // Robot state ≥ 60 Hz and ultrasound frames over ~4 s of a loaded 2-core machine.
    assert!(r["states"].as_u64().unwrap() > 100, "{r}");
    assert!(r["frames"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["bad_frames"], 0);
    assert!(r["haptics"].as_u64().unwrap() > 100, "{r}");
    assert!(r["commands_sent"].as_u64().unwrap() > 50, "{r}");
    assert!(r["command_rtt_ms"].as_f64().unwrap() < 200.0, "{r}");
    let (coverage, w, h) = png_coverage(&shot);
    assert_eq!((w, h), (960, 540));
    assert!(
        (r["non_background_fraction"].as_f64().unwrap() - coverage).abs() < 1e-9,
        "the report describes the file"
    );
    // Arm, probes, text, gauge and the ultrasound panel: far from blank.
    assert!(
        coverage > 0.05,
        "only {coverage:.3} of the picture is drawn"
    );
}

/// The registered plan over the live scene: the CBCT bone surface (`--ct`) and the landmarks of a
/// `perception register --json` output (`--registration`) of the served patient (seed 1). A
/// registration file with a non-rigid `t_base_ct` or a NaN landmark is refused.
#[test]
fn the_registered_cbct_and_landmarks_are_drawn_over_the_scene() {
    if skip_without_driver("the_registered_cbct_and_landmarks_are_drawn_over_the_scene") {
        return;
    }
    let dir = pki("console-plan");
    let scan = dir.join("scan");
    let out = telecho(&["scan", "--sim-seed", "1", "--out", scan.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ct = scan.join("ct.nii.gz");
    let out = telecho(&[
        "perception",
        "register",
        "--ct",
        ct.to_str().unwrap(),
        "--sweep",
        scan.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registration = dir.join("registration.json");
    std::fs::write(&registration, &out.stdout).unwrap();
    let reg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let landmarks = reg["landmarks"].as_array().unwrap().len();

    // Refusals first (no server needed: the plan is checked before connecting).
    let mut bad = reg.clone();
    bad["t_base_ct"][0][0] = serde_json::json!(2.0);
    let bad_rigid = dir.join("bad-rigid.json");
    std::fs::write(&bad_rigid, bad.to_string()).unwrap();
    let mut bad = reg.clone();
    bad["landmarks"][0]["xyz"] = serde_json::json!([0.1, "x", 0.2]);
    let bad_landmark = dir.join("bad-landmark.json");
    std::fs::write(&bad_landmark, bad.to_string()).unwrap();
    for (file, needle) in [(&bad_rigid, "t_base_ct"), (&bad_landmark, "landmark")] {
        let out = telecho(&[
            "console",
            "--connect",
            "127.0.0.1:9",
            "--pki",
            dir.to_str().unwrap(),
            "--registration",
            file.to_str().unwrap(),
            "--screenshot",
            "/dev/null",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
    }

    let server = serve(&dir);
    let shot = dir.join("plan.png");
    let out = telecho(&[
        "console",
        "--connect",
        &server.addr.to_string(),
        "--pki",
        dir.to_str().unwrap(),
        "--ct",
        ct.to_str().unwrap(),
        "--registration",
        registration.to_str().unwrap(),
        "--screenshot",
        shot.to_str().unwrap(),
        "--wait-s",
        "2",
        "--width",
        "800",
        "--height",
        "450",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{r}");
    assert_eq!(r["landmarks"].as_u64(), Some(landmarks as u64));
    assert!(r["bone_points"].as_u64().unwrap() > 1000, "{r}");
    let (coverage, w, h) = png_coverage(&shot);
    assert_eq!((w, h), (800, 450));
    assert!(coverage > 0.05, "only {coverage:.3} drawn");
}

#[test]
fn an_observer_watches_but_cannot_steer() {
    if skip_without_driver("an_observer_watches_but_cannot_steer") {
        return;
    }
    let dir = pki("console-observer");
    let server = serve(&dir);
    let shot = dir.join("observer.png");
    let args = |steer: bool| {
        let mut a = vec![
            "console".to_owned(),
            "--connect".to_owned(),
            server.addr.to_string(),
            "--pki".to_owned(),
            dir.to_str().unwrap().to_owned(),
            "--name".to_owned(),
            "observer".to_owned(),
            "--screenshot".to_owned(),
            shot.to_str().unwrap().to_owned(),
            "--wait-s".to_owned(),
            "1.5".to_owned(),
            "--width".to_owned(),
            "320".to_owned(),
            "--height".to_owned(),
            "240".to_owned(),
            "--json".to_owned(),
        ];
        if steer {
            a.push("--steer".to_owned());
        }
        a
    };
    let run = |steer: bool| {
        let a = args(steer);
        telecho(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let watch = run(false);
    assert!(
        watch.status.success(),
        "{}",
        String::from_utf8_lossy(&watch.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&watch.stdout).unwrap();
    assert_eq!(r["role"], "observer");
    assert!(r["states"].as_u64().unwrap() > 20, "{r}");
    assert_eq!(r["commands_sent"], 0);
    let steer = run(true);
    assert_eq!(steer.status.code(), Some(1));
    let err = String::from_utf8_lossy(&steer.stderr);
    assert!(err.contains("lease was not granted"), "{err}");
    // A name the server certificate does not carry: refused at the handshake (exit 1).
    let out = telecho(&[
        "console",
        "--connect",
        &server.addr.to_string(),
        "--pki",
        dir.to_str().unwrap(),
        "--name",
        "observer",
        "--server-name",
        "telecho.example",
        "--screenshot",
        "/dev/null",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not valid for name"), "{err}");
}

#[test]
fn bad_console_input_is_one_clear_line() {
    let dir = pki("console-bad");
    let d = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "console",
                "--connect",
                "127.0.0.1:9",
                "--pki",
                d,
                "--name",
                "nobody",
            ],
            "nobody",
        ),
        (
            &[
                "console",
                "--connect",
                "127.0.0.1:9",
                "--pki",
                d,
                "--width",
                "10",
            ],
            "--width",
        ),
        (
            &["console", "--connect", "127.0.0.1:9", "--pki", d, "--steer"],
            "--steer",
        ),
        (
            &["console", "--connect", "127.0.0.1", "--pki", d],
            "--connect",
        ),
        (&["console", "--connect", ":4433", "--pki", d], "--connect"),
        (
            &["console", "--connect", "localhost:99999", "--pki", d],
            "--connect",
        ),
        (
            &[
                "console",
                "--connect",
                "127.0.0.1:9",
                "--pki",
                d,
                "--registration",
                "/nonexistent/registration.json",
            ],
            "registration.json",
        ),
    ];
    for (args, needle) in cases {
        let out = telecho(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    // Nobody listening: a network failure (exit 1), not a hang.
    let out = telecho(&[
        "console",
        "--connect",
        "127.0.0.1:9",
        "--pki",
        d,
        "--screenshot",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
