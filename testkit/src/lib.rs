//! Test support shared by telecho's crates (a dev-dependency only).
//!
//! Tests write scans, CT volumes and PKIs of up to ~100 MB each. Left in the system's temporary
//! directory they add up run after run (a CI run once filled the disk), so every test's files live
//! under one directory per test process, `$TMPDIR/telecho-test-<binary>-<pid>/`, which is removed
//! when the process exits — also when tests fail, and also for directories shared by several tests
//! through a `static`, whose destructors never run. Set `TELECHO_KEEP_TEST_FILES=1` to keep them
//! for a post-mortem; the path is then printed at exit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static BASE: OnceLock<PathBuf> = OnceLock::new();

/// The per-process base directory (created on first use, removed at process exit).
pub fn base() -> &'static Path {
    BASE.get_or_init(|| {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".to_owned());
        // Cargo names test binaries `<target>-<hash>`; the hash only makes the path longer.
        let exe = exe.split('-').next().unwrap_or("tests").to_owned();
        let dir = std::env::temp_dir().join(format!("telecho-test-{exe}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("test scratch directory {}: {e}", dir.display()));
        // SAFETY: `atexit` with a plain `extern "C"` function that takes no arguments; it only
        // reads the `OnceLock`, which is initialised before registration.
        unsafe {
            libc::atexit(remove_base);
        }
        dir
    })
}

extern "C" fn remove_base() {
    if let Some(dir) = BASE.get() {
        if std::env::var_os("TELECHO_KEEP_TEST_FILES").is_some() {
            eprintln!("test files kept in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A path `name` under this process's scratch directory that does not exist yet (anything left
/// there by an earlier use of the same name is removed). The caller creates it if it needs to.
pub fn scratch(name: &str) -> PathBuf {
    let dir = base().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

/// Like [`scratch`], but the directory exists (empty) on return.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("test scratch directory {}: {e}", dir.display()));
    dir
}

/// True when a Vulkan driver is installed (an ICD file of Mesa's `mesa-vulkan-drivers` or a GPU
/// vendor's): what the console's kiss3d view needs to render, in a window or off screen.
pub fn have_vulkan_driver() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut r| r.next().is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_paths_are_fresh_and_under_one_base() {
        let a = scratch_dir("a");
        std::fs::write(a.join("f"), b"x").unwrap();
        assert!(a.join("f").is_file());
        let again = scratch("a");
        assert_eq!(again, a);
        assert!(!again.exists(), "an earlier use of the name is removed");
        assert!(again.starts_with(base()));
        assert!(base()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&std::process::id().to_string()));
    }

    /// Run by `the_base_directory_is_removed_when_the_process_exits` in a child process.
    #[test]
    #[ignore = "child process of another test"]
    fn child_writes_a_file_and_prints_the_base() {
        std::fs::write(scratch_dir("kept?").join("data"), [0u8; 4096]).unwrap();
        println!("BASE={}", base().display());
    }

    #[test]
    fn the_base_directory_is_removed_when_the_process_exits() {
        let run = |keep: bool| {
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "--exact",
                "tests::child_writes_a_file_and_prints_the_base",
                "--ignored",
                "--nocapture",
            ]);
            if keep {
                cmd.env("TELECHO_KEEP_TEST_FILES", "1");
            } else {
                cmd.env_remove("TELECHO_KEEP_TEST_FILES");
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = text.lines().find_map(|l| l.strip_prefix("BASE=")).unwrap();
            PathBuf::from(line)
        };
        let gone = run(false);
        assert!(!gone.exists(), "{} left behind", gone.display());
        let kept = run(true);
        assert!(
            kept.join("kept?/data").is_file(),
            "TELECHO_KEEP_TEST_FILES keeps the files"
        );
        std::fs::remove_dir_all(kept).unwrap();
    }
}
