//! Scan protocol files: the bundled default, and clear line-numbered errors for malformed files.

use telecho_control::protocol::{ImagingDepth, ProbeOrientation, ScanProtocol};

#[test]
fn bundled_lumbar_protocol_covers_l5_to_l1() {
    let p = ScanProtocol::default_lumbar();
    assert_eq!(p.name, "lumbar-l5-l1");
    let sagittal: Vec<_> = p
        .sweeps
        .iter()
        .filter(|s| s.orientation == ProbeOrientation::Sagittal)
        .collect();
    let transverse: Vec<_> = p
        .sweeps
        .iter()
        .filter(|s| s.orientation == ProbeOrientation::Transverse)
        .collect();
    // Midline + two paramedian sagittal sweeps, each covering L5 (0) to L1 (4 × 36 mm cranial).
    assert_eq!(sagittal.len(), 3);
    for s in &sagittal {
        assert!(s.from[1] <= -0.01 && s.to[1] >= 0.144 + 0.015, "{}", s.name);
        assert!((s.force_n - 8.0).abs() < 1e-12 && (s.speed_m_s - 0.02).abs() < 1e-12);
    }
    assert_eq!(sagittal.iter().filter(|s| s.from[0] == 0.0).count(), 1);
    assert!(
        sagittal.iter().any(|s| s.from[0] > 0.015) && sagittal.iter().any(|s| s.from[0] < -0.015)
    );
    // One transverse sweep per level, 36 mm apart, across the midline.
    assert_eq!(transverse.len(), 5);
    for (i, s) in transverse.iter().enumerate() {
        assert!((s.from[1] - 0.036 * i as f64).abs() < 1e-9, "{}", s.name);
        assert!(s.from[0] < 0.0 && s.to[0] > 0.0);
    }
    // 3 × 180 mm + 5 × 60 mm at 20 mm/s.
    assert!(
        (p.sweep_length_m() - 0.84).abs() < 1e-9,
        "{}",
        p.sweep_length_m()
    );
    assert!((p.sweep_duration_s() - 42.0).abs() < 1e-6);
}

#[test]
fn defaults_apply_and_sweeps_override() {
    let p = ScanProtocol::from_toml_str(
        r#"
name = "t"
[defaults]
force_n = 6.0
[[sweep]]
name = "a"
orientation = "transverse"
from = [0.0, 0.0]
to = [0.05, 0.0]
[[sweep]]
name = "b"
orientation = "sagittal"
from = [0.0, 0.0]
to = [0.0, 0.1]
force_n = 12.5
speed_m_s = 0.01
tilt_deg = -5.0
"#,
        "test",
    )
    .unwrap();
    assert_eq!(p.sweeps[0].force_n, 6.0);
    assert_eq!(p.sweeps[0].speed_m_s, 0.02);
    assert_eq!(p.sweeps[1].force_n, 12.5);
    assert!((p.sweeps[1].tilt_rad + 5f64.to_radians()).abs() < 1e-15);
    assert!((p.sweeps[1].duration_s() - 10.0).abs() < 1e-9);
    assert_eq!(p.approach_height_m, 0.03);
}

/// Each malformed file fails with an error naming the line of the culprit.
#[test]
fn malformed_protocols_name_the_line() {
    let sweep =
        "[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.1]\n";
    let cases: Vec<(String, usize, &str)> = vec![
        // TOML syntax error on line 2.
        ("name = \"x\"\nforce_n = = 3\n".into(), 2, ""),
        // Force out of range, line 4.
        (format!("name = \"x\"\n{sweep}force_n = 30.0\n"), 7, "force_n = 30"),
        (format!("name = \"x\"\n[defaults]\nforce_n = 0.5\n{sweep}"), 3, "force_n = 0.5"),
        // Speed above the in-contact limit.
        (format!("name = \"x\"\n{sweep}speed_m_s = 0.2\n"), 7, "speed_m_s"),
        // Unknown key.
        (format!("name = \"x\"\n{sweep}forse_n = 3.0\n"), 7, "forse_n"),
        // Bad orientation value.
        ("name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"oblique\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.1]\n".into(), 4, "oblique"),
        // Wrong arity of a point.
        ("name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0]\nto = [0.0, 0.1]\n".into(), 5, ""),
        // Point too far from the start.
        ("name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.9]\n".into(), 6, "within"),
        // Zero-length sweep.
        ("name = \"x\"\n[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.0]\n".into(), 6, "1 mm"),
        // Duplicate name.
        (format!("name = \"x\"\n{sweep}{sweep}"), 8, "used twice"),
        // Tilt too large.
        (format!("name = \"x\"\n{sweep}tilt_deg = 45.0\n"), 7, "tilt_deg"),
        // NaN is not a force.
        (format!("name = \"x\"\n{sweep}force_n = nan\n"), 7, "force_n"),
        // Retract below approach.
        (format!("name = \"x\"\n[defaults]\napproach_height_m = 0.1\nretract_height_m = 0.05\n{sweep}"), 4, "retract_height_m"),
        // Imaging: a depth that is neither "auto" nor metres, out of range, bounds the wrong
        // way round, an auto-only key beside a fixed depth, an unknown key.
        (format!("name = \"x\"\n{sweep}[imaging]\ndepth = \"deep\"\n"), 8, "auto"),
        (format!("name = \"x\"\n{sweep}[imaging]\ndepth = 0.5\n"), 8, "depth = 0.5"),
        (format!("name = \"x\"\n{sweep}[imaging]\nmin_depth_m = 0.1\nmax_depth_m = 0.08\n"), 9, "max_depth_m"),
        (format!("name = \"x\"\n{sweep}[imaging]\ndepth = 0.08\nmax_depth_m = 0.1\n"), 9, "auto"),
        (format!("name = \"x\"\n{sweep}[imaging]\ndeph = 0.08\n"), 8, "deph"),
    ];
    for (text, line, needle) in cases {
        let err = ScanProtocol::from_toml_str(&text, "p.toml")
            .expect_err(&text)
            .to_string();
        assert!(
            err.contains(&format!("p.toml, line {line}:")),
            "expected line {line} in {err:?} for\n{text}"
        );
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    // No sweeps at all; a missing name.
    let err = ScanProtocol::from_toml_str("name = \"x\"\n", "p.toml").unwrap_err();
    assert!(err.to_string().contains("no [[sweep]]"), "{err}");
    let err = ScanProtocol::from_toml_str(sweep, "p.toml").unwrap_err();
    assert!(err.to_string().contains("name"), "{err}");
}

#[test]
fn imaging_depth_is_automatic_unless_fixed() {
    let sweep =
        "[[sweep]]\nname = \"a\"\norientation = \"sagittal\"\nfrom = [0.0, 0.0]\nto = [0.0, 0.1]\n";
    let parse = |extra: &str| {
        ScanProtocol::from_toml_str(&format!("name = \"x\"\n{sweep}{extra}"), "p.toml")
            .unwrap()
            .imaging
    };
    // No table: automatic within 70–120 mm, 45 mm below the first bone echo.
    let auto = ImagingDepth::Auto {
        min_depth_m: 0.070,
        max_depth_m: 0.120,
        below_first_bone_m: 0.045,
    };
    assert_eq!(parse(""), auto);
    assert_eq!(ScanProtocol::default_lumbar().imaging, auto);
    assert_eq!(
        parse("[imaging]\ndepth = 0.09\n"),
        ImagingDepth::Fixed(0.09)
    );
    // An integer is not a depth in metres within range; a float is.
    assert!(ScanProtocol::from_toml_str(
        &format!("name = \"x\"\n{sweep}[imaging]\ndepth = 1\n"),
        "p"
    )
    .is_err());
    assert_eq!(
        parse("[imaging]\ndepth = \"auto\"\nmax_depth_m = 0.15\nbelow_first_bone_m = 0.05\n"),
        ImagingDepth::Auto {
            min_depth_m: 0.070,
            max_depth_m: 0.15,
            below_first_bone_m: 0.05,
        }
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = ScanProtocol::from_file(std::path::Path::new("/nonexistent/protocol.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/protocol.toml") && err.contains("cannot read"),
        "{err}"
    );
}
