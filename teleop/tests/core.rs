//! The protocol core's state machines, driven with an injected clock: lease, clock sync,
//! command acceptance, motion prediction, link watchdog.

use nalgebra::{UnitQuaternion, Vector3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use telecho_teleop::acceptor::{AcceptorConfig, CommandAcceptor, DropReason};
use telecho_teleop::clock_sync::{answer, ClockSync, ClockSyncConfig, PongRejection};
use telecho_teleop::lease::{ChangeCause, Claimant, LeaseConfig, LeaseManager, TimeoutPolicy};
use telecho_teleop::predict::{MotionPredictor, PredictorConfig};
use telecho_teleop::watchdog::{LinkWatchdog, WatchdogConfig};
use telecho_teleop::wire::{
    CommandMode, DenyReason, LeaseOutcome, LinkState, Message, OperatorCommand, Pong, Pose, Role,
    Target,
};

fn who(conn: u64, name: &str, role: Role) -> Claimant {
    Claimant {
        conn,
        name: name.into(),
        role,
    }
}

/// The outcome a lease result sends to `to`.
fn outcome_to(r: &telecho_teleop::lease::LeaseResult, to: u64) -> Option<LeaseOutcome> {
    r.notices.iter().find_map(|n| match &n.msg {
        Message::LeaseUpdate { outcome, .. } if n.to == to => Some(*outcome),
        _ => None,
    })
}

#[test]
fn lease_acquire_release_and_observers() {
    let mut l = LeaseManager::new(LeaseConfig::default()).unwrap();
    let (a, b, obs) = (
        who(1, "alice", Role::Operator),
        who(2, "bob", Role::Operator),
        who(3, "olga", Role::Observer),
    );
    // Observers can never hold it, free or not, by acquire or take-over.
    let r = l.acquire(&obs, 1);
    assert_eq!(
        outcome_to(&r, 3),
        Some(LeaseOutcome::Denied(DenyReason::NotOperator))
    );
    assert!(l.holder().is_none());
    let r = l.take_over(&obs, 2, 0.0);
    assert_eq!(
        outcome_to(&r, 3),
        Some(LeaseOutcome::Denied(DenyReason::NotOperator))
    );

    let r = l.acquire(&a, 1);
    assert_eq!(outcome_to(&r, 1), Some(LeaseOutcome::Granted));
    assert_eq!(r.change.unwrap().cause, ChangeCause::Acquired);
    assert!(l.is_holder(1));
    // Idempotent for the holder, refused for another operator.
    let r = l.acquire(&a, 2);
    assert_eq!(outcome_to(&r, 1), Some(LeaseOutcome::Granted));
    assert!(r.change.is_none());
    let r = l.acquire(&b, 1);
    assert_eq!(
        outcome_to(&r, 2),
        Some(LeaseOutcome::Denied(DenyReason::Held))
    );
    // Only the holder releases.
    let r = l.release(2, 5);
    assert_eq!(
        outcome_to(&r, 2),
        Some(LeaseOutcome::Denied(DenyReason::NotHolder))
    );
    let r = l.release(1, 6);
    assert_eq!(outcome_to(&r, 1), Some(LeaseOutcome::Released));
    assert!(l.holder().is_none());
    let r = l.acquire(&b, 2);
    assert_eq!(outcome_to(&r, 2), Some(LeaseOutcome::Granted));
    assert_eq!(l.holder().unwrap().name, "bob");
}

#[test]
fn take_over_confirmed_denied_and_busy() {
    let mut l = LeaseManager::new(LeaseConfig::default()).unwrap();
    let (a, b, c) = (
        who(1, "alice", Role::Operator),
        who(2, "bob", Role::Operator),
        who(3, "carol", Role::Operator),
    );
    l.acquire(&a, 1);
    // Bob asks: alice is asked, bob waits.
    let r = l.take_over(&b, 7, 10.0);
    assert_eq!(outcome_to(&r, 2), Some(LeaseOutcome::Pending));
    assert!(r.notices.iter().any(|n| n.to == 1
        && n.msg
            == Message::TakeOverRequested {
                requester: "bob".into(),
                timeout_s: 5.0
            }));
    // Carol cannot queue a second take-over.
    let r = l.take_over(&c, 1, 10.5);
    assert_eq!(
        outcome_to(&r, 3),
        Some(LeaseOutcome::Denied(DenyReason::Busy))
    );
    // Only the holder answers.
    let r = l.confirm(2, 9);
    assert_eq!(
        outcome_to(&r, 2),
        Some(LeaseOutcome::Denied(DenyReason::NotHolder))
    );
    // Alice refuses: bob is told, alice keeps it.
    let r = l.refuse(1, 3);
    assert_eq!(
        outcome_to(&r, 2),
        Some(LeaseOutcome::Denied(DenyReason::HolderRefused))
    );
    assert!(l.is_holder(1));
    // Bob asks again; alice confirms: bob gets it (answering his request 8), alice is revoked.
    l.take_over(&b, 8, 11.0);
    let r = l.confirm(1, 4);
    assert_eq!(outcome_to(&r, 2), Some(LeaseOutcome::Granted));
    assert!(r
        .notices
        .iter()
        .any(|n| n.to == 2 && matches!(n.msg, Message::LeaseUpdate { req: 8, .. })));
    assert_eq!(outcome_to(&r, 1), Some(LeaseOutcome::Revoked));
    let ch = r.change.unwrap();
    assert_eq!(ch.cause, ChangeCause::TakeOverConfirmed);
    assert_eq!(ch.from.unwrap().name, "alice");
    assert_eq!(ch.to.unwrap().name, "bob");
    // The deadline of the finished request does not fire later.
    assert_eq!(l.tick(100.0), Default::default());
    assert!(l.is_holder(2));
}

#[test]
fn take_over_times_out_by_policy() {
    let (a, b) = (
        who(1, "alice", Role::Operator),
        who(2, "bob", Role::Operator),
    );
    // Grant: an absent holder cannot block the session.
    let mut l = LeaseManager::new(LeaseConfig {
        take_over_timeout_s: 3.0,
        on_timeout: TimeoutPolicy::Grant,
    })
    .unwrap();
    l.acquire(&a, 1);
    l.take_over(&b, 2, 100.0);
    assert_eq!(l.tick(102.999), Default::default());
    assert!(l.is_holder(1));
    let r = l.tick(103.0);
    assert_eq!(outcome_to(&r, 2), Some(LeaseOutcome::Granted));
    assert_eq!(outcome_to(&r, 1), Some(LeaseOutcome::Revoked));
    assert_eq!(r.change.unwrap().cause, ChangeCause::TakeOverTimedOut);
    assert!(l.is_holder(2));

    // Deny: silence keeps the holder.
    let mut l = LeaseManager::new(LeaseConfig {
        take_over_timeout_s: 3.0,
        on_timeout: TimeoutPolicy::Deny,
    })
    .unwrap();
    l.acquire(&a, 1);
    l.take_over(&b, 2, 100.0);
    let r = l.tick(104.0);
    assert_eq!(
        outcome_to(&r, 2),
        Some(LeaseOutcome::Denied(DenyReason::HolderRefused))
    );
    assert!(r.change.is_none());
    assert!(l.is_holder(1));
}

#[test]
fn disconnects_free_or_hand_over_the_lease() {
    let (a, b) = (
        who(1, "alice", Role::Operator),
        who(2, "bob", Role::Operator),
    );
    let mut l = LeaseManager::new(LeaseConfig::default()).unwrap();
    l.acquire(&a, 1);
    let r = l.disconnect(1);
    let ch = r.change.unwrap();
    assert_eq!(ch.cause, ChangeCause::HolderDisconnected);
    assert!(ch.to.is_none());
    assert!(l.holder().is_none());
    // Holder leaves while a take-over is pending: the requester gets it.
    l.acquire(&a, 1);
    l.take_over(&b, 5, 0.0);
    let r = l.disconnect(1);
    assert_eq!(outcome_to(&r, 2), Some(LeaseOutcome::Granted));
    assert_eq!(r.change.unwrap().from.unwrap().name, "alice");
    // Requester leaves: nothing pending any more.
    let c = who(3, "carol", Role::Operator);
    l.take_over(&c, 1, 0.0);
    l.disconnect(3);
    assert!(l.pending_requester().is_none());
    assert!(l.is_holder(2));
    assert!(LeaseManager::new(LeaseConfig {
        take_over_timeout_s: f64::NAN,
        on_timeout: TimeoutPolicy::Grant
    })
    .is_err());
}

/// One simulated exchange: `offset` = peer clock − local clock; delays in each direction.
fn exchange(cs: &mut ClockSync, local_now: f64, offset: f64, up: f64, turn: f64, down: f64) {
    let ping = cs.ping(local_now);
    let t1 = local_now + up + offset;
    let pong = answer(&ping, t1, t1 + turn);
    cs.on_pong(&pong, local_now + up + turn + down).unwrap();
}

#[test]
fn clock_sync_recovers_offset_and_delay_through_jitter() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cs = ClockSync::new(ClockSyncConfig::default()).unwrap();
    let offset = 1234.5678; // the peer's clock is ahead by this much
    let mut t = 10.0;
    let mut errors = Vec::new();
    for i in 0..100 {
        // 75 ms each way plus 0–20 ms of independent queueing jitter each way.
        let up = 0.075 + 0.020 * rng.random::<f64>();
        let down = 0.075 + 0.020 * rng.random::<f64>();
        exchange(&mut cs, t, offset, up, 0.0002, down);
        t += 0.1;
        if i >= 16 {
            errors.push((cs.estimate().unwrap().offset_s - offset).abs());
        }
    }
    let e = cs.estimate().unwrap();
    let worst = errors.iter().cloned().fold(0.0, f64::max);
    // The min-RTT sample of a 16-sample window is nearly jitter-free: offset within 5 ms
    // (the raw samples spread ±10 ms), one-way delay 75 + 10 ms on average.
    assert!(worst < 0.005, "offset error {worst}");
    assert!(e.uncertainty_s < 0.08, "{e:?}");
    assert!((e.one_way_delay_s - 0.085).abs() < 0.005, "{e:?}");
    assert!(e.rtt_min_s >= 0.150 && e.rtt_min_s < 0.160, "{e:?}");
    assert_eq!(e.samples, 16);
    // Mapping times both ways.
    let local = 50.0;
    assert!((cs.local_to_peer(local).unwrap() - (local + offset)).abs() < 0.005);
    assert!((cs.peer_to_local(local + offset).unwrap() - local).abs() < 0.005);
}

#[test]
fn clock_sync_bias_is_half_the_path_asymmetry() {
    // 20 ms up, 80 ms down, no jitter: NTP cannot see asymmetry; the offset is off by
    // (up − down) / 2 = −30 ms, within the reported uncertainty (RTT/2 = 50 ms).
    let mut cs = ClockSync::new(ClockSyncConfig::default()).unwrap();
    for i in 0..20 {
        exchange(&mut cs, i as f64 * 0.1, -3.0, 0.020, 0.0, 0.080);
    }
    let e = cs.estimate().unwrap();
    assert!((e.offset_s - (-3.0 - 0.030)).abs() < 1e-9, "{e:?}");
    assert!((e.uncertainty_s - 0.050).abs() < 1e-9);
}

#[test]
fn clock_sync_refuses_forged_replayed_and_inconsistent_pongs() {
    let mut cs = ClockSync::new(ClockSyncConfig::default()).unwrap();
    assert!(cs.estimate().is_none());
    assert!(cs.peer_to_local(1.0).is_none());
    let p = cs.ping(1.0);
    // Unknown id, or the right id with a different t0.
    let forged = Pong {
        id: p.id + 1,
        t0_s: 1.0,
        t1_s: 2.0,
        t2_s: 2.0,
    };
    assert_eq!(cs.on_pong(&forged, 1.1), Err(PongRejection::Unsolicited));
    let forged = Pong {
        t0_s: 0.5,
        ..answer(&p, 2.0, 2.0)
    };
    assert_eq!(cs.on_pong(&forged, 1.1), Err(PongRejection::Unsolicited));
    // Turnaround longer than the round trip.
    let bad = answer(&p, 2.0, 3.0);
    assert_eq!(cs.on_pong(&bad, 1.1), Err(PongRejection::Inconsistent));
    // A good one, then its replay.
    let p = cs.ping(2.0);
    let good = answer(&p, 7.05, 7.05);
    assert!(cs.on_pong(&good, 2.1).is_ok());
    assert_eq!(cs.on_pong(&good, 2.2), Err(PongRejection::Unsolicited));
    assert!((cs.estimate().unwrap().offset_s - 5.0).abs() < 1e-9);
    // Too slow.
    let p = cs.ping(3.0);
    assert_eq!(
        cs.on_pong(&answer(&p, 9.0, 9.0), 9.0),
        Err(PongRejection::TooSlow)
    );
    // Ping pacing.
    let mut cs = ClockSync::new(ClockSyncConfig::default()).unwrap();
    assert!(cs.poll_ping(0.0).is_some());
    assert!(cs.poll_ping(0.05).is_none());
    assert!(cs.poll_ping(0.1).is_some());
    assert!(ClockSync::new(ClockSyncConfig {
        window: 0,
        ..Default::default()
    })
    .is_err());
}

fn cmd(seq: u64, sent_s: f64, x: f64) -> OperatorCommand {
    OperatorCommand {
        seq,
        sent_s,
        mode: CommandMode::Contact,
        force_n: 5.0,
        target: Target::Pose(Pose {
            position_m: Vector3::new(x, 0.0, 0.3),
            orientation: UnitQuaternion::identity(),
        }),
    }
}

#[test]
fn acceptor_maps_clocks_and_drops_stale_reordered_and_out_of_limits() {
    let mut a = CommandAcceptor::new(AcceptorConfig {
        max_age_s: 0.1,
        ..Default::default()
    })
    .unwrap();
    // Console clock is 500 s ahead of ours.
    let off = Some(500.0);
    assert_eq!(
        a.check(&cmd(1, 510.0, 0.1), 10.05, None),
        Err(DropReason::NoClockSync)
    );
    let ok = a.check(&cmd(1, 510.0, 0.1), 10.05, off).unwrap();
    assert!((ok.sent_local_s - 10.0).abs() < 1e-9);
    assert!((ok.age_s - 0.05).abs() < 1e-9);
    // 150 ms old: stale.
    assert!(matches!(
        a.check(&cmd(2, 510.0, 0.1), 10.15, off),
        Err(DropReason::Stale { age_s }) if (age_s - 0.15).abs() < 1e-9
    ));
    assert_eq!(
        a.check(&cmd(4, 510.1, 0.1), 10.16, off).map(|a| a.cmd.seq),
        Ok(4)
    );
    assert_eq!(
        a.check(&cmd(3, 510.09, 0.1), 10.17, off),
        Err(DropReason::Reordered)
    );
    assert_eq!(
        a.check(&cmd(4, 510.1, 0.1), 10.17, off),
        Err(DropReason::Duplicate)
    );
    // 20 ms in the future (beyond the 5 ms tolerance): the clock is not trusted.
    assert_eq!(
        a.check(&cmd(5, 510.2, 0.1), 10.18, off),
        Err(DropReason::BadTimestamp)
    );
    // Site limits.
    assert_eq!(
        a.check(&cmd(6, 510.18, 3.0), 10.19, off),
        Err(DropReason::OutOfLimits("workspace"))
    );
    let mut c = cmd(7, 510.18, 0.1);
    c.force_n = 25.0;
    assert_eq!(
        a.check(&c, 10.19, off),
        Err(DropReason::OutOfLimits("force_n"))
    );
    c.force_n = 5.0;
    c.target = Target::Twist {
        linear_m_s: Vector3::new(0.3, 0.0, 0.0),
        angular_rad_s: Vector3::zeros(),
    };
    assert_eq!(
        a.check(&c, 10.19, off),
        Err(DropReason::OutOfLimits("linear_m_s"))
    );
    let s = a.stats();
    assert_eq!(
        (
            s.accepted,
            s.stale,
            s.reordered,
            s.duplicate,
            s.bad_timestamp
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!((s.no_clock_sync, s.out_of_limits, s.dropped()), (1, 3, 8));
    // A new lease holder: new sequence space.
    a.restart();
    assert!(a.check(&cmd(1, 510.19, 0.1), 10.2, off).is_ok());
}

#[test]
fn acceptor_rate_limits_a_flood_but_not_a_1khz_stream() {
    let mut a = CommandAcceptor::new(AcceptorConfig {
        max_rate_hz: 1100.0,
        burst: 50.0,
        ..Default::default()
    })
    .unwrap();
    // 2 s at 1 kHz: all pass.
    for i in 0..2000u64 {
        let t = i as f64 * 0.001;
        assert!(a.check(&cmd(i + 1, t, 0.1), t + 0.01, Some(0.0)).is_ok());
    }
    // Then 1000 commands within 10 ms (a 100 kHz flood): the burst and 11 refills pass.
    let mut ok = 0;
    for i in 0..1000u64 {
        let t = 2.0 + i as f64 * 1e-5;
        if a.check(&cmd(3000 + i, t, 0.1), t + 0.01, Some(0.0)).is_ok() {
            ok += 1;
        }
    }
    assert!((50..=65).contains(&ok), "{ok} passed the flood");
    assert_eq!(a.stats().rate_limited, 1000 - ok);
}

#[test]
fn predictor_removes_the_constant_velocity_lag() {
    // Operator moving at 20 mm/s, commands at 500 Hz arriving 150 ms late.
    let mut p = MotionPredictor::new(PredictorConfig::default()).unwrap();
    let v = 0.02;
    let delay = 0.150;
    let mut worst_raw: f64 = 0.0;
    let mut worst_pred: f64 = 0.0;
    for i in 0..500 {
        let t = i as f64 * 0.002;
        let z = Vector3::new(v * t, 0.0, 0.0);
        p.update(t, &z);
        if i > 100 {
            let truth = v * (t + delay);
            let predicted = p.predict(&z, delay).x;
            worst_raw = worst_raw.max((truth - z.x).abs());
            worst_pred = worst_pred.max((truth - predicted).abs());
        }
    }
    assert!((worst_raw - 0.003).abs() < 1e-9); // 3 mm behind without prediction
    assert!(worst_pred < 1e-6, "{worst_pred}"); // exact for constant velocity
    assert!((p.velocity().x - v).abs() < 1e-6);
}

#[test]
fn predictor_helps_on_a_scan_sweep_and_stays_bounded() {
    // A sweep: 40 mm amplitude at 0.25 Hz (peak 63 mm/s), 1 kHz, 100 ms delay.
    let mut p = MotionPredictor::new(PredictorConfig::default()).unwrap();
    let w = 2.0 * std::f64::consts::PI * 0.25;
    let delay = 0.1;
    let (mut se_raw, mut se_pred, mut n) = (0.0, 0.0, 0.0);
    for i in 0..8000 {
        let t = i as f64 * 0.001;
        let z = Vector3::new(0.04 * (w * t).sin(), 0.0, 0.0);
        p.update(t, &z);
        if t > 1.0 {
            let truth = 0.04 * (w * (t + delay)).sin();
            se_raw += (truth - z.x).powi(2);
            se_pred += (truth - p.predict(&z, delay).x).powi(2);
            n += 1.0;
        }
    }
    let (rms_raw, rms_pred) = ((se_raw / n).sqrt(), (se_pred / n).sqrt());
    // 4.4 mm RMS lag without prediction, under 0.5 mm with it.
    assert!(rms_raw > 0.004 && rms_raw < 0.0046, "{rms_raw}");
    assert!(rms_pred < 0.0005, "{rms_pred}");

    // A jump of 1 m between two samples 1 ms apart: the lead stays within 20 mm, the horizon
    // within 0.5 s, and a long gap restarts the filter.
    let mut p = MotionPredictor::new(PredictorConfig::default()).unwrap();
    p.update(0.0, &Vector3::zeros());
    p.update(0.001, &Vector3::new(1.0, 0.0, 0.0));
    let z = Vector3::new(1.0, 0.0, 0.0);
    assert!((p.predict(&z, 10.0) - z).norm() <= 0.02 + 1e-12);
    p.update(5.0, &z);
    assert_eq!(p.velocity(), Vector3::zeros());
    assert_eq!(p.predict(&z, 0.1), z);
    assert!(MotionPredictor::new(PredictorConfig {
        alpha: 1.5,
        ..Default::default()
    })
    .is_err());
}

#[test]
fn watchdog_holds_at_100_ms_retracts_at_1_s_and_latches() {
    let mut w = LinkWatchdog::new(WatchdogConfig::default()).unwrap();
    assert_eq!(w.state(), LinkState::Idle);
    // Unarmed: silence does nothing.
    assert_eq!(w.poll(50.0), None);
    assert_eq!(w.fresh(100.0).unwrap().state, LinkState::Live);
    for i in 1..100 {
        assert_eq!(w.poll(100.0 + i as f64 * 0.001), None); // 99 ms of silence
    }
    // (1 ns margins: 100.1 − 100.0 rounds below 0.1 in binary.)
    let ev = w.poll(100.1 + 1e-9).unwrap();
    assert_eq!(ev.state, LinkState::Hold);
    assert!((ev.silence_s - 0.1).abs() < 1e-8);
    // Commands return: live again.
    assert_eq!(w.fresh(100.3).unwrap().state, LinkState::Live);
    assert_eq!(w.poll(100.35), None);
    assert_eq!(w.poll(100.4 + 1e-9).unwrap().state, LinkState::Hold);
    assert_eq!(w.poll(101.0), None);
    let ev = w.poll(101.3 + 1e-9).unwrap();
    assert_eq!(ev.state, LinkState::Retract);
    assert!((ev.silence_s - 1.0).abs() < 1e-8);
    // Latched: fresh commands and disarming do not clear it, reset does.
    assert_eq!(w.fresh(101.4), None);
    assert_eq!(w.disarm(101.5), None);
    assert_eq!(w.state(), LinkState::Retract);
    assert_eq!(w.reset(101.6).unwrap().state, LinkState::Idle);
    assert_eq!(w.fresh(101.7).unwrap().state, LinkState::Live);
    // A long gap between polls goes straight to retract.
    assert_eq!(w.poll(105.0).unwrap().state, LinkState::Retract);
    // Released lease: idle, no hold/retract from the silence that follows.
    w.reset(106.0);
    w.fresh(106.1);
    assert_eq!(w.disarm(106.15).unwrap().state, LinkState::Idle);
    assert_eq!(w.poll(110.0), None);
    assert!(LinkWatchdog::new(WatchdogConfig {
        hold_after_s: 1.0,
        retract_after_s: 0.5
    })
    .is_err());
}
