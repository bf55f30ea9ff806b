//! Exponential back-off with full jitter, for reconnects and for retried requests.
//!
//! The ceiling doubles from `min` to `max` with each attempt, and each delay is drawn uniformly
//! from `[0, ceiling]` ("full jitter"): thousands of gateways that lost the same broker at the
//! same instant, or consoles that were all told BUSY, do not come back in lock-step. A zero
//! draw cannot spin: the next ceiling is twice as large.
//!
//! Written here rather than taken from a crate: `backoff` is unmaintained (RUSTSEC-2025-0012),
//! and `backon` draws its jitter from `[delay, 2 * delay)` and has no reset, neither of which
//! is full jitter with a reset after a stable connection.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling for the next delay: `min * 2^attempt`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; advances the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ms))
    }

    /// Starts over from `min` (after a connection that stayed up long enough to count as
    /// stable, or after a request that succeeded).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A wait of about `full`, drawn from `[full / 2, full]`: for a failure that only an operator
/// can fix (refused credentials, a broker certificate that expired). Its length is the point
/// (not hammering the broker or the log), so it does not shrink towards zero; the spread keeps
/// a fleet refused at once from coming back in step.
pub fn spread(full: Duration) -> Duration {
    let ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(ms / 2..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_secs());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(60));
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn every_delay_is_within_zero_and_its_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
        }
    }

    #[test]
    fn full_jitter_covers_the_whole_range() {
        // Uniform on [0, 60 s]: 1000 draws land in every tenth of the range, and both ends
        // are approached. A half-range ("equal") jitter would leave the lower half empty.
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let mut buckets = [0u32; 10];
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(60));
            let i = (d.as_millis() / 6000).min(9) as usize;
            buckets[i] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 30), "{buckets:?}");
    }

    #[test]
    fn a_max_below_min_is_raised_to_min() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        b.next_delay();
        assert_eq!(b.ceiling(), Duration::from_secs(5));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(5));
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5));
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        b.next_delay();
    }

    #[test]
    fn spread_stays_in_the_upper_half() {
        let full = Duration::from_secs(300);
        let draws: Vec<_> = (0..500).map(|_| spread(full)).collect();
        assert!(draws.iter().all(|d| *d >= full / 2 && *d <= full));
        let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(60), "{lo:?}..{hi:?}");
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }
}
