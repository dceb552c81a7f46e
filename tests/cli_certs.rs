//! `telecho certs init|issue` end to end: files, roles read back, refusals and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use telecho_teleop::pki::{load_certs, read_identity};
use telecho_teleop::wire::Role;

fn telecho(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telecho"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("cli-certs-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn role_of(dir: &Path, name: &str) -> (String, Role) {
    let certs = load_certs(&dir.join(format!("{name}.pem"))).unwrap();
    let id = read_identity(&certs[0]).unwrap();
    (id.name, id.role)
}

#[test]
fn init_then_issue_writes_certificates_with_roles() {
    let dir = tmp("init");
    let d = dir.to_str().unwrap();
    let out = telecho(&[
        "certs",
        "init",
        "--out",
        d,
        "--names",
        "robot.local,192.168.1.20",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        listed,
        [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "operator.pem",
            "operator.key",
            "observer.pem",
            "observer.key"
        ]
    );
    assert_eq!(
        role_of(&dir, "operator"),
        ("operator".into(), Role::Operator)
    );
    assert_eq!(
        role_of(&dir, "observer"),
        ("observer".into(), Role::Observer)
    );

    let out = telecho(&[
        "certs", "issue", "--pki", d, "--role", "observer", "--name", "nurse-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    assert_eq!(role_of(&dir, "nurse-1"), ("nurse-1".into(), Role::Observer));

    // Refusals: one line on stderr, exit code 2, nothing overwritten.
    let before = std::fs::read(dir.join("ca.key")).unwrap();
    let out = telecho(&["certs", "init", "--out", d]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: ") && err.contains("refusing to replace a site CA"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), before);
    let out = telecho(&[
        "certs", "issue", "--pki", d, "--role", "operator", "--name", "nurse-1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = telecho(&[
        "certs", "issue", "--pki", d, "--role", "operator", "--name", "../x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = telecho(&[
        "certs", "issue", "--pki", d, "--role", "admin", "--name", "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = telecho(&[
        "certs",
        "init",
        "--out",
        tmp("bad").to_str().unwrap(),
        "--names",
        "a b",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
