//! Delays between attempts: exponential from `min` to `max`, each spread by
//! a random jitter (the worker's reconnects: so a fleet of workers that lost
//! the same server does not return in lockstep) or none (retries of one
//! request). Reset after a success.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    min: Duration,
    max: Duration,
    /// Fraction of the delay that is randomised, in [0, 1].
    jitter: f64,
    attempt: u32,
}

impl ExponentialBackoff {
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        assert!(!min.is_zero() && min <= max, "backoff needs 0 < min <= max");
        assert!(
            (0.0..=1.0).contains(&jitter),
            "jitter is a fraction in [0, 1]"
        );
        ExponentialBackoff {
            min,
            max,
            jitter,
            attempt: 0,
        }
    }

    /// The reference schedule: 1 s doubling to 60 s, here with 20 % jitter.
    pub fn protocol_default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60), 0.2)
    }

    /// The delay before the next attempt, and advance.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.spread(base)
    }

    /// Jump to the slow end (e.g. after the server refused our key: retrying
    /// fast cannot help, but the key may be fixed without restarting us).
    pub fn slowest(&mut self) -> Duration {
        self.attempt = 32;
        self.spread(self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn spread(&self, base: Duration) -> Duration {
        // Jitter only ever shortens, so `max` stays a true cap.
        let factor = 1.0 - self.jitter * fastrand::f64();
        base.mul_f64(factor)
            .max(self.min.mul_f64(1.0 - self.jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let mut b = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60), 0.0);
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.slowest(), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = ExponentialBackoff::protocol_default();
            for step in 0..10u32 {
                let d = b.next_delay();
                let base = Duration::from_secs((1u64 << step).min(60));
                assert!(d <= base, "{d:?} > {base:?}");
                assert!(
                    d >= base.mul_f64(0.8) || d >= Duration::from_millis(800),
                    "{d:?} too short for {base:?}"
                );
                if step == 3 {
                    seen.insert(d.as_millis());
                }
            }
        }
        assert!(
            seen.len() > 50,
            "jitter should spread delays, saw {} distinct",
            seen.len()
        );
    }

    #[test]
    #[should_panic]
    fn rejects_zero_min() {
        ExponentialBackoff::new(Duration::ZERO, Duration::from_secs(1), 0.1);
    }
}
