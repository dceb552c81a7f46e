//! Outside programs that some tests talk to, and what a test does when one is missing.
//!
//! `cargo test --workspace` must pass on a machine with only the Rust toolchain, so a test that needs
//! a peer (Cyclone DDS, ONNX Runtime, a URDF shipped by a Python package, …) skips when the peer is
//! absent. CI sets `TELECHO_REQUIRE_PEERS=1`, and then a missing peer fails the test instead.

use std::path::PathBuf;
use std::process::Command;

/// Name of the environment variable that turns a missing peer into a test failure.
pub const REQUIRE_PEERS_VAR: &str = "TELECHO_REQUIRE_PEERS";

/// True when `TELECHO_REQUIRE_PEERS` is set to `1` (or `true`).
pub fn peers_required() -> bool {
    matches!(
        std::env::var(REQUIRE_PEERS_VAR).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Reports a missing peer: panics (failing the calling test) when peers are required, otherwise
/// prints a skip notice to stderr and returns so the test can `return` early.
pub fn missing_peer(peer: &str, how_to_install: &str) {
    if peers_required() {
        panic!(
            "{REQUIRE_PEERS_VAR}=1 but peer `{peer}` is missing; install it with: {how_to_install}"
        );
    }
    eprintln!("SKIPPED: peer `{peer}` is missing (install: {how_to_install})");
}

/// Runs a Python snippet with `python3` and returns its trimmed stdout, or `None` when Python or the
/// imported module is not available.
pub fn python_output(code: &str) -> Option<String> {
    let out = Command::new("python3").arg("-c").arg(code).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Folder of the data shipped by the PyPI package `pybullet` (`pybullet_data`), holding published
/// robot URDFs (Franka Panda, KUKA iiwa) that telecho did not write. `TELECHO_PYBULLET_DATA`
/// overrides the lookup.
pub fn pybullet_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TELECHO_PYBULLET_DATA") {
        let p = PathBuf::from(dir);
        return p.is_dir().then_some(p);
    }
    let dir = python_output("import pybullet_data; print(pybullet_data.getDataPath())")?;
    let p = PathBuf::from(dir);
    p.is_dir().then_some(p)
}
