//! How long to wait before a retry: one rule, exponential with jitter, for every retry loop
//! (a stage's Kafka client, a sink's batch, the ScyllaDB store's contended writes), each with
//! its own [`Backoff`].

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Retry number `attempt` (0-based) waits `first` doubled `attempt` times, capped at `max`,
/// plus up to `jitter_percent` % of that, so that callers retrying at once spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter_percent: u32,
}

impl Backoff {
    /// How long to wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << attempt.min(31))
            .min(self.max);
        base + jitter(base * self.jitter_percent / 100)
    }
}

/// A spread of up to `span`, different for each call, so that racing callers draw apart.
pub fn jitter(span: Duration) -> Duration {
    static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut x = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    Duration::from_nanos(x % (span.as_nanos() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let backoff = Backoff {
            first: Duration::from_millis(50),
            max: Duration::from_secs(5),
            jitter_percent: 25,
        };
        for _ in 0..100 {
            let first = backoff.delay(0);
            assert!(first >= Duration::from_millis(50), "{first:?}");
            assert!(first <= Duration::from_micros(62_500), "{first:?}");
            assert!(backoff.delay(3) >= Duration::from_millis(400));
            assert!(backoff.delay(3) <= Duration::from_millis(500));
            for attempt in [7, 30, u32::MAX] {
                let capped = backoff.delay(attempt);
                assert!(capped >= Duration::from_secs(5), "{capped:?}");
                assert!(capped <= Duration::from_millis(6_250), "{capped:?}");
            }
        }
        let none = Backoff {
            jitter_percent: 0,
            ..backoff
        };
        assert_eq!(none.delay(1), Duration::from_millis(100));
    }
}
