//! Exponential backoff with full jitter, for retries of deliveries and reconnects.
//!
//! Each wait is uniform in `[0, min(max, initial * 2^n)]` ("full jitter"): retries of many
//! clients spread out instead of arriving together after an outage.

use std::time::Duration;

/// The state of one retry sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            current: initial,
            max,
        }
    }

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let cap = self.current.min(self.max);
        self.current = self.current.saturating_mul(2).min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..20).map(|_| b.next_wait()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(waits[0] <= Duration::from_millis(100));
        assert_eq!(b.current, Duration::from_secs(1));
        assert!(
            waits.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "no jitter"
        );
    }
}
