//! Reconnect delays: exponential backoff with jitter, so a fleet of sensors
//! that lost the decider together does not reconnect in lockstep.

use std::time::Duration;

/// Exponential backoff with "equal jitter": each delay is half the current
/// step plus a random share of the other half.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            step: min,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    /// A seed that differs between processes and starts.
    pub fn seed() -> u64 {
        let pid = u64::from(std::process::id());
        crate::clock::monotonic_ns() ^ (pid << 32) ^ crate::clock::unix_ms() as u64
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: plenty for jitter, no dependency.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The next delay; doubles the step up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        let span = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.next_random() % span)
    }

    /// Back to the shortest delay (after a connection worked).
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(min, max, 42);
        let mut last_step = Duration::ZERO;
        for i in 0..10 {
            let step = (min * 2u32.pow(i)).min(max);
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "delay {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            last_step = step;
        }
        assert_eq!(last_step, max);
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn different_seeds_jitter_differently() {
        let mk = |seed| {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8), seed);
            (0..4).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(mk(1), mk(2));
    }
}
