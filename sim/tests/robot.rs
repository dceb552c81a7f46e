//! Joint servo: bandwidth, latency, encoder noise, limits, bad commands, velocity mode.

use telecho_control::Chain;
use telecho_sim::robot::CRITICALLY_DAMPED_BANDWIDTH_RATIO;
use telecho_sim::{JointCommand, ServoArm, ServoMode, ServoParams};

fn urdf(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../urdf/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn ur5e() -> Chain {
    Chain::from_urdf_str(&urdf("ur5e_probe.urdf"), Some("base_link"), "probe_tip").unwrap()
}

fn panda() -> Chain {
    Chain::from_urdf_str(&urdf("panda_probe.urdf"), Some("base_link"), "probe_tip").unwrap()
}

const Q0: [f64; 6] = [0.3, -1.4, 1.6, -1.8, -1.57, 0.2];
const PANDA_Q0: [f64; 7] = [0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8];

/// Linear loop only: no latency, no interpolation, no noise, no acceleration limit.
fn ideal() -> ServoParams {
    ServoParams {
        latency_s: 0.0,
        interpolation_s: 0.0,
        encoder_noise_rad: 0.0,
        velocity_noise_rad_s: 0.0,
        max_acceleration_rad_s2: f64::INFINITY,
        ..ServoParams::default()
    }
}

/// x with (1 + x)e^{−x} = 1 − fraction: the step response of ωₙ²/(s+ωₙ)² reaches `fraction`
/// at t = x/ωₙ.
fn critically_damped_time(fraction: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 50.0f64);
    for _ in 0..200 {
        let x = 0.5 * (lo + hi);
        if 1.0 - (1.0 + x) * (-x).exp() < fraction {
            lo = x;
        } else {
            hi = x;
        }
    }
    0.5 * (lo + hi)
}

#[test]
fn position_step_response_matches_bandwidth() {
    for bw in [10.0, 25.0, 60.0] {
        let params = ServoParams {
            bandwidth_hz: bw,
            ..ideal()
        };
        let mut arm = ServoArm::new(ur5e(), params, &Q0, 1).unwrap();
        let step = 1e-3;
        let mut target = Q0;
        target[1] += step;
        arm.command(JointCommand::Position(&target)).unwrap();
        let dt = 1e-5;
        let (mut t10, mut t63, mut t90) = (None, None, None);
        let mut peak: f64 = 0.0;
        for i in 1..=20_000 {
            arm.step(dt).unwrap();
            let t = i as f64 * dt;
            let y = (arm.true_q()[1] - Q0[1]) / step;
            peak = peak.max(y);
            for (slot, level) in [
                (&mut t10, 0.1),
                (&mut t63, 1.0 - (-1.0f64).exp()),
                (&mut t90, 0.9),
            ] {
                if slot.is_none() && y >= level {
                    *slot = Some(t);
                }
            }
        }
        let wn = 2.0 * std::f64::consts::PI * bw / CRITICALLY_DAMPED_BANDWIDTH_RATIO;
        let t63_expect = critically_damped_time(1.0 - (-1.0f64).exp()) / wn;
        let rise_expect = (critically_damped_time(0.9) - critically_damped_time(0.1)) / wn;
        let (t10, t63, t90) = (t10.unwrap(), t63.unwrap(), t90.unwrap());
        println!(
            "bandwidth {bw} Hz: t63 {:.3} ms (expected {:.3}), rise 10–90 % {:.3} ms (expected \
             {:.3}), peak {peak:.6}",
            t63 * 1e3,
            t63_expect * 1e3,
            (t90 - t10) * 1e3,
            rise_expect * 1e3
        );
        assert!((t63 / t63_expect - 1.0).abs() < 0.1);
        assert!(((t90 - t10) / rise_expect - 1.0).abs() < 0.1);
        assert!(peak <= 1.0 + 1e-9, "critically damped: no overshoot");
        // The other joints did not move.
        assert_eq!(arm.true_q()[0], Q0[0]);
    }
}

#[test]
fn sine_at_bandwidth_is_attenuated_3_db() {
    let bw = 25.0;
    let mut arm = ServoArm::new(
        ur5e(),
        ServoParams {
            bandwidth_hz: bw,
            ..ideal()
        },
        &Q0,
        2,
    )
    .unwrap();
    let dt = 1e-4;
    let amp = 1e-3;
    let w = 2.0 * std::f64::consts::PI * bw;
    let mut max_late: f64 = 0.0;
    for i in 0..20_000 {
        let t = i as f64 * dt;
        let mut target = Q0;
        target[0] += amp * (w * t).sin();
        arm.command(JointCommand::Position(&target)).unwrap();
        arm.step(dt).unwrap();
        if t > 1.0 {
            max_late = max_late.max((arm.true_q()[0] - Q0[0]).abs());
        }
    }
    let gain = max_late / amp;
    println!("gain at the bandwidth frequency: {gain:.4} (−3 dB = 0.7071)");
    assert!((gain / std::f64::consts::FRAC_1_SQRT_2 - 1.0).abs() < 0.1);
}

#[test]
fn latency_delays_the_first_motion() {
    for (latency, dt) in [(0.002, 1e-3), (0.0025, 1e-4), (0.010, 1e-3)] {
        let params = ServoParams {
            latency_s: latency,
            ..ideal()
        };
        let mut arm = ServoArm::new(ur5e(), params, &Q0, 3).unwrap();
        let mut target = Q0;
        target[2] += 0.01;
        arm.command(JointCommand::Position(&target)).unwrap();
        assert_eq!(arm.pending_commands(), 1);
        let mut first = None;
        for i in 1..=1000 {
            arm.step(dt).unwrap();
            if first.is_none() && arm.true_q()[2] != Q0[2] {
                // Motion began within the step that ended here.
                first = Some((i as f64 - 1.0) * dt);
            }
        }
        let start = first.unwrap();
        println!("latency {latency} s, step {dt} s: motion began in the step from {start:.4} s");
        assert!((start - latency).abs() <= 1e-3 + 1e-9);
        assert!(start <= latency + 1e-9 && start + dt >= latency - 1e-9);
        assert_eq!(arm.pending_commands(), 0);
    }
}

#[test]
fn encoder_noise_has_the_configured_sigma() {
    let params = ServoParams {
        encoder_noise_rad: 2e-5,
        velocity_noise_rad_s: 1e-3,
        ..ServoParams::default()
    };
    let mut arm = ServoArm::new(ur5e(), params, &Q0, 4).unwrap();
    let n = 20_000;
    let (mut s, mut s2, mut v2) = (0.0, 0.0, 0.0);
    let mut count = 0.0;
    for _ in 0..n {
        arm.step(1e-3).unwrap();
        for (i, (&m, &t)) in arm.measured_q().iter().zip(arm.true_q()).enumerate() {
            let e = m - t;
            s += e;
            s2 += e * e;
            v2 += (arm.measured_qd()[i] - arm.true_qd()[i]).powi(2);
            count += 1.0;
        }
    }
    let mean = s / count;
    let sigma = (s2 / count - mean * mean).sqrt();
    let sigma_v = (v2 / count).sqrt();
    println!("encoder noise σ = {sigma:.4e} rad (configured 2e-5), mean {mean:.2e}; velocity σ = {sigma_v:.4e}");
    assert!((sigma / 2e-5 - 1.0).abs() < 0.1);
    assert!((sigma_v / 1e-3 - 1.0).abs() < 0.1);
    assert!(mean.abs() < 1e-6);
    // The arm itself did not move.
    assert_eq!(arm.true_q(), &Q0);
}

#[test]
fn joint_limits_are_hard_stops() {
    let chain = panda();
    let limits: Vec<_> = chain.limits().to_vec();
    let q0 = [0.0, -0.3, 0.0, -2.0, 0.0, 1.8, 0.8];
    let mut arm = ServoArm::new(chain, ServoParams::default(), &q0, 5).unwrap();
    // Targets beyond every upper limit.
    let target: Vec<f64> = limits.iter().map(|l| l.upper + 0.5).collect();
    arm.command(JointCommand::Position(&target)).unwrap();
    for _ in 0..4000 {
        arm.step(1e-3).unwrap();
        for (q, l) in arm.true_q().iter().zip(&limits) {
            assert!(
                *q >= l.lower && *q <= l.upper,
                "{q} outside [{}, {}]",
                l.lower,
                l.upper
            );
        }
    }
    for ((q, v), l) in arm.true_q().iter().zip(arm.true_qd()).zip(&limits) {
        assert_eq!(*q, l.upper, "resting on the stop");
        assert_eq!(*v, 0.0);
    }
    // Velocity mode into the lower stops.
    let v: Vec<f64> = limits.iter().map(|l| -l.velocity).collect();
    for _ in 0..6000 {
        arm.command(JointCommand::Velocity(&v)).unwrap();
        arm.step(1e-3).unwrap();
        for (q, l) in arm.true_q().iter().zip(&limits) {
            assert!(*q >= l.lower && *q <= l.upper);
        }
    }
    for (q, l) in arm.true_q().iter().zip(&limits) {
        assert_eq!(*q, l.lower);
    }
    // Initial positions outside the limits are refused.
    let mut bad = q0;
    bad[3] = 0.5;
    let e = ServoArm::new(panda(), ServoParams::default(), &bad, 5).unwrap_err();
    assert!(e.to_string().contains("joint 3"), "{e}");
}

#[test]
fn velocity_and_acceleration_limits_hold() {
    let params = ServoParams {
        max_acceleration_rad_s2: 12.0,
        ..ServoParams::default()
    };
    let chain = ur5e();
    let vmax: Vec<f64> = chain.limits().iter().map(|l| l.velocity).collect();
    let mut arm = ServoArm::new(chain, params, &Q0, 6).unwrap();
    let mut target = Q0;
    target[0] += 2.0;
    arm.command(JointCommand::Position(&target)).unwrap();
    let mut prev = arm.true_qd().to_vec();
    let mut peak_v: f64 = 0.0;
    for _ in 0..5000 {
        arm.step(1e-3).unwrap();
        for i in 0..6 {
            let v = arm.true_qd()[i];
            assert!(v.abs() <= vmax[i] + 1e-12);
            assert!(((v - prev[i]) / 1e-3).abs() <= 12.0 * (1.0 + 1e-9) + 1e-6);
            prev[i] = v;
        }
        peak_v = peak_v.max(arm.true_qd()[0].abs());
    }
    println!(
        "2 rad step: peak speed {peak_v:.3} rad/s (limit {:.3})",
        vmax[0]
    );
    assert!((arm.true_q()[0] - target[0]).abs() < 1e-3, "arrives");
}

#[test]
fn invalid_commands_are_refused_and_the_arm_holds() {
    let mut arm = ServoArm::new(ur5e(), ServoParams::default(), &Q0, 7).unwrap();
    let mut nan = Q0;
    nan[4] = f64::NAN;
    let e = arm.command(JointCommand::Position(&nan)).unwrap_err();
    assert!(e.to_string().contains("value 4"), "{e}");
    let mut inf = Q0;
    inf[0] = f64::INFINITY;
    assert!(arm.command(JointCommand::Velocity(&inf)).is_err());
    let e = arm.command(JointCommand::Position(&Q0[..5])).unwrap_err();
    assert!(e.to_string().contains("5 values"), "{e}");
    assert_eq!(arm.pending_commands(), 0);
    for _ in 0..500 {
        arm.step(1e-3).unwrap();
        assert_eq!(arm.true_q(), &Q0, "holds");
    }
    // Moving toward a valid target, a NaN command changes nothing: it still arrives there.
    let mut target = Q0;
    target[1] -= 0.05;
    arm.command(JointCommand::Position(&target)).unwrap();
    arm.step(0.05).unwrap();
    assert!(arm.command(JointCommand::Position(&nan)).is_err());
    arm.step(0.5).unwrap();
    assert!((arm.true_q()[1] - target[1]).abs() < 1e-9);
    // Bad step sizes are refused.
    assert!(arm.step(f64::NAN).is_err());
    assert!(arm.step(-1e-3).is_err());
    // Bad parameters are refused.
    for bad in [
        ServoParams {
            bandwidth_hz: f64::NAN,
            ..ServoParams::default()
        },
        ServoParams {
            latency_s: -0.001,
            ..ServoParams::default()
        },
        ServoParams {
            max_acceleration_rad_s2: 0.0,
            ..ServoParams::default()
        },
        ServoParams {
            encoder_noise_rad: f64::INFINITY,
            ..ServoParams::default()
        },
    ] {
        assert!(ServoArm::new(ur5e(), bad, &Q0, 0).is_err());
    }
}

#[test]
fn velocity_mode_tracks_a_constant_velocity_and_stops_when_the_stream_ends() {
    let params = ServoParams {
        encoder_noise_rad: 0.0,
        velocity_noise_rad_s: 0.0,
        ..ServoParams::default()
    };
    let mut arm = ServoArm::new(ur5e(), params, &Q0, 8).unwrap();
    let v = [0.2, -0.1, 0.05, 0.0, 0.3, -0.25];
    for _ in 0..300 {
        arm.command(JointCommand::Velocity(&v)).unwrap();
        arm.step(1e-3).unwrap();
    }
    assert_eq!(arm.mode(), ServoMode::Velocity);
    let q_a = arm.true_q().to_vec();
    for _ in 0..500 {
        arm.command(JointCommand::Velocity(&v)).unwrap();
        arm.step(1e-3).unwrap();
    }
    for i in 0..6 {
        assert!(
            (arm.true_qd()[i] - v[i]).abs() < 1e-9,
            "joint {i}: {}",
            arm.true_qd()[i]
        );
        let slope = (arm.true_q()[i] - q_a[i]) / 0.5;
        assert!((slope - v[i]).abs() < 1e-9, "joint {i}: slope {slope}");
    }
    // The stream stops: after the 0.1 s watchdog the arm decelerates to rest.
    arm.step(0.5).unwrap();
    assert!(
        arm.true_qd().iter().all(|v| v.abs() < 1e-9),
        "{:?}",
        arm.true_qd()
    );
}

#[test]
fn same_seed_same_measurements() {
    let run = |seed| {
        let mut arm = ServoArm::new(ur5e(), ServoParams::default(), &Q0, seed).unwrap();
        let mut out = Vec::new();
        for i in 0..200 {
            let mut t = Q0;
            t[0] += 1e-4 * i as f64;
            arm.command(JointCommand::Position(&t)).unwrap();
            arm.step(1e-3).unwrap();
            out.extend(arm.measured_q().iter().map(|v| v.to_bits()));
        }
        out
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

/// A position reference streamed at 1 kHz is a staircase. Each stair of a fast ramp asks the
/// loop for more than the acceleration limit at its start unless the drive interpolates. With the
/// default interpolation the loop never saturates on a feasible ramp; without it (zero-order
/// hold) the saturated loop must still track at a steady sampled velocity (no limit cycle
/// between samples: the old whole-step saturation chattered by ±a_max·1 ms = ±0.015 rad/s).
#[test]
fn staircase_ramp_at_the_acceleration_limit_is_smooth() {
    for interpolation_s in [1e-3, 0.0] {
        let params = ServoParams {
            latency_s: 0.0,
            encoder_noise_rad: 0.0,
            velocity_noise_rad_s: 0.0,
            interpolation_s,
            ..ServoParams::default()
        };
        let a_max = params.max_acceleration_rad_s2;
        let w = params.position_natural_frequency_rad_s();
        let speed = 1.2;
        // Each stair asks for ω²·Δq = 71 rad/s² at its start: far beyond the 15 rad/s² limit.
        assert!(w * w * speed * 1e-3 > 4.0 * a_max);
        let mut arm = ServoArm::new(panda(), params, &PANDA_Q0, 11).unwrap();
        let mut target = PANDA_Q0;
        let (mut v_min, mut v_max) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut lag_err: f64 = 0.0;
        for k in 0..600 {
            // Reference ramps up at 8 rad/s² (the controller's planner limit) to 1.2 rad/s.
            let v_ref = (8.0 * k as f64 * 1e-3).min(speed);
            target[4] -= v_ref * 1e-3;
            arm.command(JointCommand::Position(&target)).unwrap();
            arm.step(1e-3).unwrap();
            let v = arm.true_qd()[4];
            if k >= 400 {
                v_min = v_min.min(v);
                v_max = v_max.max(v);
                // Interpolated: the reference reaches each command one period after it took
                // effect, and the linear loop lags a ramp by 2·q̇/ωₙ.
                lag_err = lag_err.max((arm.true_q()[4] - (target[4] + 2.0 * speed / w)).abs());
            }
        }
        println!(
            "interpolation {interpolation_s} s: sampled velocity over the last 200 ms \
             {v_min:.6} … {v_max:.6} rad/s, lag error {lag_err:.2e} rad"
        );
        if interpolation_s > 0.0 {
            // Linear loop, exact.
            assert!(v_max - v_min < 1e-9, "{v_min} … {v_max}");
            assert!((v_max + speed).abs() < 1e-9);
            assert!(lag_err < 1e-9, "{lag_err}");
        } else {
            assert!(v_max - v_min < 1e-3, "{v_min} … {v_max}");
            // Within the ripple of one stair (±a_max·0.5 ms) of the ramp speed.
            assert!((0.5 * (v_min + v_max) + speed).abs() < 0.5 * a_max * 1e-3);
        }
    }
}
