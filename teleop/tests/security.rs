//! The site PKI (roles carried in certificates) and the hash-chained audit log.

use std::fs;
use std::path::PathBuf;

use telecho_teleop::audit::{verify, verify_str, AuditChain, AuditEvent, AuditLog, Who, GENESIS};
use telecho_teleop::pki::{init, issue, load_certs, load_key, read_identity, PkiDir};
use telecho_teleop::wire::Role;

fn tmp(name: &str) -> PathBuf {
    let d = telecho_testkit::scratch(&format!("teleop-{name}"));
    let _ = fs::remove_dir_all(&d);
    d
}

#[test]
fn init_writes_a_pki_whose_certificates_carry_their_roles() {
    let dir = tmp("pki-init");
    let w = init(&dir, &["robot.example.org".into(), "10.1.2.3".into()]).unwrap();
    let names: Vec<String> = w
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
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
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pki = PkiDir::new(&dir);
    for (name, role) in [("operator", Role::Operator), ("observer", Role::Observer)] {
        let certs = load_certs(&pki.cert(name)).unwrap();
        let id = read_identity(&certs[0]).unwrap();
        assert_eq!((id.name.as_str(), id.role), (name, role));
        assert_eq!(id.fingerprint.len(), 64);
        load_key(&pki.key(name)).unwrap();
    }
    // The server certificate has no role: refused as a client identity.
    let server = load_certs(&pki.cert("server")).unwrap();
    let e = read_identity(&server[0]).unwrap_err();
    assert!(e.to_string().contains("no telecho:role: role"), "{e}");
    // The server names are in the certificate (DER holds DNS names as ASCII).
    let der = server[0].as_ref();
    let has = |s: &[u8]| der.windows(s.len()).any(|w| w == s);
    assert!(has(b"localhost") && has(b"robot.example.org"));
    assert!(has(&[10, 1, 2, 3]) && has(&[127, 0, 0, 1]));
    // The OU carries the role too.
    let op = load_certs(&pki.cert("operator")).unwrap();
    assert!(op[0].as_ref().windows(8).any(|w| w == b"operator"));

    // Never overwritten.
    let e = init(&dir, &[]).unwrap_err();
    assert!(
        e.to_string().contains("refusing to replace a site CA"),
        "{e}"
    );
    // Bad server names refused.
    let e = init(&tmp("pki-bad"), &["bad name!".into()]).unwrap_err();
    assert!(e
        .to_string()
        .contains("neither an IP address nor a DNS name"));
}

#[test]
fn issue_adds_clients_signed_by_the_site_ca() {
    let dir = tmp("pki-issue");
    init(&dir, &[]).unwrap();
    let w = issue(&dir, Role::Operator, "dr-martin").unwrap();
    assert_eq!(w.files.len(), 2);
    let pki = PkiDir::new(&dir);
    let id = read_identity(&load_certs(&pki.cert("dr-martin")).unwrap()[0]).unwrap();
    assert_eq!((id.name.as_str(), id.role), ("dr-martin", Role::Operator));
    let id = {
        issue(&dir, Role::Observer, "student.1").unwrap();
        read_identity(&load_certs(&pki.cert("student.1")).unwrap()[0]).unwrap()
    };
    assert_eq!(id.role, Role::Observer);
    // Refusals: existing name, reserved or bad names, missing CA.
    assert!(issue(&dir, Role::Operator, "dr-martin")
        .unwrap_err()
        .to_string()
        .contains("already exists"));
    for bad in ["", "ca", "server", "../x", "a b", ".hidden"] {
        assert!(issue(&dir, Role::Operator, bad).is_err(), "{bad:?}");
    }
    let e = issue(&tmp("pki-none"), Role::Operator, "x").unwrap_err();
    assert!(e.to_string().contains("ca.pem"), "{e}");
    // Garbage is not a certificate.
    assert!(read_identity(b"not a certificate").is_err());
}

fn who() -> Who {
    Who {
        cn: "operator".into(),
        fingerprint: "ab".repeat(32),
    }
}

fn event(seq: u64) -> AuditEvent {
    AuditEvent::Command {
        conn: 1,
        seq,
        mode: "contact".into(),
        force_n: 5.0,
        target: vec![0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0],
        kind: "pose".into(),
        age_ms: 12.5,
    }
}

#[test]
fn audit_chain_verifies_and_names_the_tampered_line() {
    let mut chain = AuditChain::default();
    let lines: Vec<String> = (0..5)
        .map(|i| chain.line(1.7e9 + i as f64, &who(), &event(i)))
        .collect();
    let text = lines.join("\n") + "\n";
    let v = verify_str(&text).unwrap();
    assert_eq!(v.records, 5);
    assert_eq!(v.last_hash, chain.last_hash());
    assert!(lines[0].contains(&format!("\"prev\":\"{GENESIS}\"")));
    assert!(lines[0].starts_with("{\"seq\":0,\"time\":1700000000.0,\"who\":{\"cn\":\"operator\""));
    assert!(lines[2].contains("\"event\":\"command\""));

    // Edit one byte of line 3 (the force 5.0 → 9.0).
    let mut ls = lines.clone();
    ls[2] = ls[2].replace("\"force_n\":5.0", "\"force_n\":9.0");
    assert_ne!(ls[2], lines[2]);
    let e = verify_str(&(ls.join("\n") + "\n")).unwrap_err();
    assert_eq!(e.audit_line(), Some(3), "{e}");
    assert_eq!(
        e.to_string(),
        "audit log line 3: hash does not match the record"
    );

    // Delete line 2: line 2 (formerly 3) no longer follows.
    let mut ls = lines.clone();
    ls.remove(1);
    let e = verify_str(&(ls.join("\n") + "\n")).unwrap_err();
    assert_eq!(e.audit_line(), Some(2));
    assert!(e.to_string().contains("seq 2 where 1 was expected"), "{e}");

    // Delete line 2 and forge line 3 as a valid successor of line 1 (renumbered, re-hashed):
    // the next original line still points at the real line 3's hash. (A complete forgery
    // must recompute every later hash; only an external anchor of the last hash reveals that.)
    let mut forged_chain = AuditChain::default();
    let _ = forged_chain.line(1.7e9, &who(), &event(0));
    let mut ls = lines.clone();
    ls.remove(1);
    ls[1] = forged_chain.line(1.7e9 + 2.0, &who(), &event(2));
    let e = verify_str(&(ls.join("\n") + "\n")).unwrap_err();
    assert_eq!(e.audit_line(), Some(3), "{e}");

    // Swapping two lines, and a line that is not a record.
    let mut ls = lines.clone();
    ls.swap(3, 4);
    assert_eq!(
        verify_str(&ls.join("\n")).unwrap_err().audit_line(),
        Some(4)
    );
    let mut ls = lines.clone();
    ls.insert(2, "hello".into());
    assert_eq!(
        verify_str(&ls.join("\n")).unwrap_err().audit_line(),
        Some(3)
    );
    assert_eq!(verify_str("").unwrap().records, 0);
}

#[test]
fn audit_log_file_appends_across_reopen_and_refuses_a_tampered_file() {
    let dir = tmp("audit");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    {
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..3 {
            log.append(&who(), &event(i)).unwrap();
        }
        log.append(
            &Who::server(),
            &AuditEvent::Lease {
                cause: "acquired".into(),
                from: String::new(),
                to: "operator".into(),
            },
        )
        .unwrap();
        log.flush().unwrap();
    }
    // Reopen: the chain continues.
    {
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.len(), 4);
        log.append(&who(), &event(3)).unwrap();
    }
    let v = verify(&path).unwrap();
    assert_eq!(v.records, 5);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().nth(4).unwrap().starts_with("{\"seq\":4,"));

    // Flip one byte in line 2 (a digit of the time stamp).
    let mut bytes = text.clone().into_bytes();
    let line2 = text.lines().next().unwrap().len() + 1;
    let at = line2 + text[line2..].find("\"time\":").unwrap() + 8;
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    fs::write(&path, &bytes).unwrap();
    let e = verify(&path).unwrap_err();
    assert_eq!(e.audit_line(), Some(2), "{e}");
    // A tampered log is not appended to.
    let e = AuditLog::open(&path).unwrap_err();
    assert_eq!(e.audit_line(), Some(2));

    // Delete the last-but-one line.
    let mut ls: Vec<&str> = text.lines().collect();
    ls.remove(3);
    fs::write(&path, ls.join("\n") + "\n").unwrap();
    let e = verify(&path).unwrap_err();
    assert_eq!(e.audit_line(), Some(4));
    assert!(verify(&dir.join("missing.jsonl")).is_err());
}
