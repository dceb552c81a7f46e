//! The bridge from accepted commands to controller targets: newest wins, bad values never
//! become targets, e-stop latches until reset, a released lease holds the last target.

use nalgebra::{UnitQuaternion, Vector3};
use telecho_control::{ControlOutput, TargetMode, TargetSource};
use telecho_teleop::control_link::{to_target, OperatorSource, TWIST_LOOKAHEAD_S};
use telecho_teleop::session::{ControlCommand, SessionRequest};
use telecho_teleop::watchdog::LinkEvent;
use telecho_teleop::wire::{CommandMode, LinkState, Pose, Target};

fn command(seq: u64, x: f64, mode: CommandMode) -> ControlCommand {
    let target = Target::Pose(Pose {
        position_m: Vector3::new(x, 0.1, 0.3),
        orientation: UnitQuaternion::identity(),
    });
    ControlCommand {
        conn: 1,
        operator: "operator".into(),
        seq,
        mode,
        force_n: 5.0,
        target,
        sent_target: target,
        velocity_m_s: Vector3::new(0.01, 0.0, 0.0),
        sent_s: 1.0,
        sent_local_s: 1.0,
        received_s: 1.05,
        age_s: 0.05,
        horizon_s: 0.05,
    }
}

fn out() -> ControlOutput {
    ControlOutput::new(6)
}

#[test]
fn newest_command_wins_and_reordered_ones_are_dropped() {
    let mut s = OperatorSource::new();
    let last = out();
    s.push_command(command(3, 0.43, CommandMode::Free));
    s.push_command(command(2, 0.42, CommandMode::Free)); // older: dropped
    s.push_command(command(5, 0.45, CommandMode::Contact)); // newer: supersedes #3
    let t = s.next_target(2.0, &last).expect("a target");
    assert!((t.t_base_probe.translation.x - 0.45).abs() < 1e-12);
    assert_eq!(t.mode, TargetMode::Contact);
    assert_eq!(t.force_n, 5.0);
    assert_eq!(t.stamp_s, 2.0, "stamped with the controller's time");
    assert_eq!(t.velocity_m_s, Vector3::new(0.01, 0.0, 0.0));
    // Nothing new: no target (the supervisor's watchdog sees the silence).
    assert!(s.next_target(2.001, &last).is_none());
    let st = s.stats();
    assert_eq!((st.applied, st.superseded, st.reordered), (1, 1, 1));
}

#[test]
fn free_commands_carry_no_force() {
    let t = to_target(&command(1, 0.4, CommandMode::Free), 1.0, &out()).unwrap();
    assert_eq!(t.mode, TargetMode::Free);
    assert_eq!(t.force_n, 0.0);
}

#[test]
fn non_finite_values_never_become_targets() {
    let mut s = OperatorSource::new();
    let mut c = command(1, 0.4, CommandMode::Contact);
    c.velocity_m_s = Vector3::new(f64::NAN, 0.0, 0.0);
    s.push_command(c);
    assert!(s.next_target(1.0, &out()).is_none());
    let mut c = command(2, f64::INFINITY, CommandMode::Contact);
    c.force_n = 5.0;
    s.push_command(c);
    assert!(s.next_target(1.001, &out()).is_none());
    assert_eq!(s.stats().invalid, 2);
    assert_eq!(s.stats().applied, 0);
}

#[test]
fn twist_moves_the_target_ahead_of_the_commanded_pose() {
    let mut c = command(1, 0.0, CommandMode::Free);
    c.target = Target::Twist {
        linear_m_s: Vector3::new(0.0, 0.02, 0.0),
        angular_rad_s: Vector3::zeros(),
    };
    let last = out();
    let t = to_target(&c, 1.0, &last).unwrap();
    let moved = t.t_base_probe.translation - last.t_base_probe_cmd.translation;
    assert!((moved.y - 0.02 * TWIST_LOOKAHEAD_S).abs() < 1e-12);
    assert_eq!(t.velocity_m_s, Vector3::new(0.0, 0.02, 0.0));
}

#[test]
fn estop_latches_until_reset() {
    let mut s = OperatorSource::new();
    assert!(!s.estop());
    s.session(&SessionRequest::EStop);
    assert!(s.estop());
    assert!(!s.reset(), "no reset pending");
    s.push_command(command(1, 0.4, CommandMode::Free));
    let _ = s.next_target(1.0, &out());
    assert!(s.estop(), "commands do not clear the e-stop");
    s.session(&SessionRequest::Reset);
    assert!(!s.estop());
    assert!(s.reset(), "the reset reaches the supervisor once");
    assert!(!s.reset());
}

#[test]
fn released_lease_holds_the_last_target() {
    let mut s = OperatorSource::new();
    let last = out();
    s.push_command(command(1, 0.41, CommandMode::Contact));
    let first = s.next_target(1.0, &last).unwrap();
    assert!(s.next_target(1.001, &last).is_none());
    s.link(LinkEvent {
        state: LinkState::Idle,
        at_s: 1.1,
        silence_s: 0.0,
    });
    let held = s.next_target(1.5, &last).expect("held target");
    assert_eq!(held.t_base_probe, first.t_base_probe);
    assert_eq!(held.mode, TargetMode::Contact, "force regulation continues");
    assert_eq!(held.stamp_s, 1.5, "freshly stamped");
    assert_eq!(held.velocity_m_s, Vector3::zeros());
    assert_eq!(s.link_state(), Some(LinkState::Idle));
    // A new operator command ends the hold.
    s.push_command(command(1, 0.42, CommandMode::Free));
    let t = s.next_target(1.6, &last).unwrap();
    assert!((t.t_base_probe.translation.x - 0.42).abs() < 1e-12);
    assert!(s.next_target(1.601, &last).is_none());
}
