//! The console's scene model (what the kiss3d view draws), without a GPU: events in, figures
//! out.

use nalgebra::{Matrix3, Unit, UnitQuaternion, Vector3};
use telecho_control::Chain;
use telecho_core::Transform;
use telecho_teleop::console::ConsoleEvent;
use telecho_teleop::us_codec;
use telecho_teleop::view::{SceneModel, UsImage};
use telecho_teleop::wire::{
    ContactModel, FrameEncoding, HapticFeedback, LinkState, Pose, RobotState, Role, SafetyCode,
    Target, UsFrameMsg,
};

const URDF: &str = include_str!("../../urdf/ur5e_probe.urdf");

/// Probe pointing down (its +z is the base's −z), array along the base's +y.
fn probe_down(at: Vector3<f64>) -> Transform {
    Transform::new(
        Matrix3::from_columns(&[Vector3::y(), Vector3::x(), -Vector3::z()]),
        at,
    )
}

fn state(joints: Vec<f64>, probe: &Transform, force: Vector3<f64>) -> ConsoleEvent {
    ConsoleEvent::State(RobotState {
        seq: 1,
        measured_s: 1.0,
        safety: SafetyCode::Normal,
        link: LinkState::Live,
        joints_rad: joints,
        probe: Pose::from_transform(probe),
        force_n: force,
        torque_nm: Vector3::zeros(),
    })
}

fn frame(seq: u64, width: u16, height: u16, payload: Vec<u8>, probe: &Transform) -> UsFrameMsg {
    UsFrameMsg {
        seq,
        acquired_s: 1.0,
        width,
        height,
        lateral_spacing_m: 1e-3,
        axial_spacing_m: 0.5e-3,
        probe: Pose::from_transform(probe),
        encoding: FrameEncoding::DeltaZstd,
        payload,
    }
}

#[test]
fn robot_state_draws_the_arm_and_the_gauge_reads_the_axial_force() {
    let chain = Chain::from_urdf_str(URDF, None, "probe_tip").unwrap();
    let mut m = SceneModel::new(20.0);
    let q = chain.mid_configuration();
    let tip = chain.fk(&q).unwrap();
    // The skin pushes the probe back up: +z of the base, 8 N, for a probe pointing down.
    m.apply(
        &state(q.clone(), &tip, Vector3::new(0.0, 0.0, 8.0)),
        Some(&chain),
    );
    assert_eq!(m.arm.len(), chain.dof() + 1);
    assert!((m.arm.last().unwrap() - tip.translation).norm() < 1e-12);
    let down = probe_down(tip.translation);
    m.apply(
        &state(q.clone(), &down, Vector3::new(0.0, 0.0, 8.0)),
        Some(&chain),
    );
    let (axial, share) = m.gauge();
    assert!((axial - 8.0).abs() < 1e-9, "{axial}");
    assert!((share - 0.4).abs() < 1e-9);
    // The view's bounds hold the whole arm and the probe.
    let (centre, radius) = m.bounds().unwrap();
    for p in m.arm.iter().chain([&down.translation]) {
        assert!(
            (p - centre).norm() <= radius + 1e-12,
            "{p:?} outside the view"
        );
    }
    assert!(SceneModel::new(20.0).bounds().is_none());
    // The registered landmarks are in view too, wherever the patient lies.
    let far = Vector3::new(0.9, -0.6, -0.3);
    m.landmarks.push(telecho_teleop::view::LandmarkMark {
        name: "L4_spinous_tip".into(),
        xyz: far,
        confidence: 1.0,
    });
    let (centre, radius) = m.bounds().unwrap();
    for p in m.arm.iter().chain([&down.translation, &far]) {
        assert!(
            (p - centre).norm() <= radius + 1e-12,
            "{p:?} outside the view"
        );
    }
    // A joint vector that does not fit the arm clears the drawing instead of drawing garbage.
    m.apply(&state(vec![0.0; 3], &down, Vector3::zeros()), Some(&chain));
    assert!(m.arm.is_empty());
    // A non-finite force is not shown (the previous one stays).
    m.apply(
        &state(q, &down, Vector3::new(f64::NAN, 0.0, 0.0)),
        Some(&chain),
    );
    assert_eq!(m.force_n, Vector3::zeros());
    assert_eq!(m.states, 4);
    assert_eq!(m.safety, Some(SafetyCode::Normal));
}

#[test]
fn frames_decode_into_a_plane_below_the_probe_and_bad_ones_are_counted() {
    let probe = probe_down(Vector3::new(0.5, 0.0, 0.2));
    let (w, h) = (5usize, 9usize);
    let pixels: Vec<u8> = (0..w * h).map(|i| (i * 7 % 251) as u8).collect();
    let payload = us_codec::encode(&pixels, w, h, FrameEncoding::DeltaZstd).unwrap();
    let mut m = SceneModel::new(20.0);
    m.apply(
        &ConsoleEvent::UsFrame(frame(3, w as u16, h as u16, payload, &probe)),
        None,
    );
    let us = m.us.clone().expect("decoded");
    assert_eq!(us.pixels, pixels);
    assert_eq!(m.frames, 1);
    // 5 columns at 1 mm: ±2 mm along the array (base +y); 9 rows at 0.5 mm: 4 mm deep (−z).
    let c = us.corners_base();
    let expect = [
        Vector3::new(0.5, -0.002, 0.2),
        Vector3::new(0.5, 0.002, 0.2),
        Vector3::new(0.5, 0.002, 0.196),
        Vector3::new(0.5, -0.002, 0.196),
    ];
    for (got, want) in c.iter().zip(&expect) {
        assert!((got - want).norm() < 1e-12, "{got:?} vs {want:?}");
    }
    // Truncated payload, zero spacing: not shown, counted, the previous frame stays.
    m.apply(
        &ConsoleEvent::UsFrame(frame(4, w as u16, h as u16, vec![1, 2, 3], &probe)),
        None,
    );
    let mut zero = frame(
        5,
        w as u16,
        h as u16,
        us_codec::encode(&pixels, w, h, FrameEncoding::DeltaZstd).unwrap(),
        &probe,
    );
    zero.axial_spacing_m = 0.0;
    assert!(UsImage::decode(&zero).is_none());
    m.apply(&ConsoleEvent::UsFrame(zero), None);
    assert_eq!(m.bad_frames, 2);
    assert_eq!(m.us.as_ref().map(|u| u.seq), Some(3));
}

#[test]
fn welcome_lease_haptics_and_commands_fill_the_status() {
    let mut m = SceneModel::new(20.0);
    m.apply(
        &ConsoleEvent::Welcome {
            role: Role::Observer,
            conn_id: 7,
            identity: "observer".into(),
            holder: "operator".into(),
        },
        None,
    );
    let contact = ContactModel {
        point_m: Vector3::new(0.5, 0.0, 0.1),
        normal: Unit::new_normalize(Vector3::z()),
        stiffness_n_m: 2000.0,
        damping_n_s_m: 5.0,
    };
    m.apply(
        &ConsoleEvent::Haptic(HapticFeedback {
            seq: 1,
            measured_s: 1.0,
            cmd_seq: 0,
            cmd_sent_s: 0.0,
            force_n: Vector3::new(0.0, 0.0, 6.0),
            torque_nm: Vector3::zeros(),
            contact: Some(contact),
        }),
        None,
    );
    assert_eq!(m.contact, Some(contact));
    assert_eq!(m.haptics, 1);
    let target = Target::Pose(Pose {
        position_m: Vector3::new(0.5, 0.01, 0.1),
        orientation: UnitQuaternion::identity(),
    });
    m.commanded(&target, 8.0);
    assert_eq!(m.ghost.unwrap().translation, Vector3::new(0.5, 0.01, 0.1));
    m.commanded(&target, f64::NAN);
    assert_eq!(m.force_setpoint_n, 8.0);
    let lines = m.status_lines().join("\n");
    assert!(
        lines.contains("observer (observer) — lease: operator"),
        "{lines}"
    );
    assert!(lines.contains("setpoint 8.0 N, limit 20 N"), "{lines}");
}

/// A take-over asked of the lease holder is shown with its keys until it is answered, the lease
/// changes, or its time runs out.
#[test]
fn a_take_over_request_is_prompted_until_answered_or_expired() {
    let mut m = SceneModel::new(20.0);
    m.apply(
        &ConsoleEvent::Welcome {
            role: Role::Operator,
            conn_id: 1,
            identity: "operator".into(),
            holder: "operator".into(),
        },
        None,
    );
    assert!(!m.status_lines().join("\n").contains("asks for the lease"));
    let ask = ConsoleEvent::TakeOverRequested {
        requester: "operator2".into(),
        timeout_s: 5.0,
    };
    m.apply(&ask, None);
    let lines = m.status_lines();
    assert_eq!(
        lines[1],
        "operator2 asks for the lease: Y hands it over, N refuses (within 5 s, or it is refused)"
    );
    // Answered (Y or N in the window): the prompt goes, and the requester is named once.
    assert_eq!(m.take_over_answered().as_deref(), Some("operator2"));
    assert_eq!(m.take_over_answered(), None);
    assert!(!m.status_lines().join("\n").contains("asks for the lease"));
    // A lease change clears it too (the patient side decided).
    m.apply(&ask, None);
    m.apply(
        &ConsoleEvent::Lease {
            req: 0,
            outcome: telecho_teleop::wire::LeaseOutcome::Granted,
            holder: "operator2".into(),
        },
        None,
    );
    assert_eq!(m.take_over, None);
    assert_eq!(m.holder, "operator2");
    // Unanswered: it stays for its 5 s, then goes.
    m.apply(&ask, None);
    let at = m.take_over.as_ref().unwrap().2;
    m.expire_take_over(at + std::time::Duration::from_secs_f64(4.9));
    assert!(m.take_over.is_some());
    m.expire_take_over(at + std::time::Duration::from_secs_f64(5.1));
    assert_eq!(m.take_over, None);
}
