use proptest::prelude::*;
use telecho_teleop::command_filter::{CommandFilter, Verdict};

#[test]
fn duplicates_future_and_nan_are_refused() {
    let mut f = CommandFilter::new(0.1).unwrap();
    assert_eq!(f.check(5, 1.0, 1.01), Verdict::Accept);
    assert_eq!(f.check(5, 1.0, 1.02), Verdict::Duplicate);
    assert_eq!(f.check(6, 1.5, 1.03), Verdict::BadTimestamp); // 470 ms in the future
    assert_eq!(f.check(7, f64::NAN, 1.03), Verdict::BadTimestamp);
    assert_eq!(f.check(8, 1.02, 1.03), Verdict::Accept);
    assert_eq!(f.counts(), (2, 3));
    assert!(CommandFilter::new(f64::NAN).is_err());
    assert!(CommandFilter::new(0.0).is_err());
}

proptest! {
    /// Whatever order datagrams arrive in, accepted sequence numbers strictly increase and every
    /// accepted command is younger than the bound.
    #[test]
    fn accepted_stream_is_monotonic_and_fresh(
        arrivals in prop::collection::vec((0u64..200, 0.0..0.5f64), 1..300)
    ) {
        let max_age = 0.15;
        let mut f = CommandFilter::new(max_age).unwrap();
        let mut now = 0.0;
        let mut last = None;
        for (seq, delay) in arrivals {
            now += 0.001;
            let sent = now - delay;
            if f.check(seq, sent, now) == Verdict::Accept {
                if let Some(l) = last { prop_assert!(seq > l); }
                prop_assert!(now - sent <= max_age);
                last = Some(seq);
            }
        }
    }
}
