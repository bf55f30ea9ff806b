//! Exponential back-off with jitter, for reconnects and for retryable errors.

use std::time::Duration;

/// Doubles from `initial` up to `max`; each delay is drawn from the upper half of the current
/// step ("equal jitter"), so many consoles or calls that failed together spread out, while no
/// delay collapses to zero and spins.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The delay before re-sending after a retryable error (100 ms doubling to 2 s).
    pub(crate) fn retry() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// The delay before reconnecting to the broker (200 ms doubling to 5 s).
    pub(crate) fn reconnect() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(5))
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::retry();
        let steps: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let caps = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, cap) in steps.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
