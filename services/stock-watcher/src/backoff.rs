//! Exponential back-off with jitter, used for reconnecting to the arbiter and
//! for pausing a stock source that refuses us.

use std::time::Duration;

use rand::Rng;

/// Doubling delays between `initial` and `max`, each drawn at random from its
/// upper half ("equal jitter"), so many watchers that fail together do not
/// retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter_upper_half(base)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// True when the next delay is the initial one (no failure since reset).
    pub fn is_reset(&self) -> bool {
        self.next == self.initial
    }
}

/// A random duration in `[d/2, d]`.
pub fn jitter_upper_half(d: Duration) -> Duration {
    let half = d / 2;
    let extra = rand::rng().random_range(0..=half.as_micros().max(1) as u64);
    half + Duration::from_micros(extra).min(half)
}

/// `d` scaled by a random factor in `[1 - fraction, 1 + fraction]`.
pub fn jitter_around(d: Duration, fraction: f64) -> Duration {
    let f = rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction));
    d.mul_f64(f.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let bounds = [100, 200, 400, 500, 500];
        for upper in bounds {
            let d = b.next_delay();
            let upper = Duration::from_millis(upper);
            assert!(
                d >= upper / 2 && d <= upper,
                "{d:?} not in [{:?}, {upper:?}]",
                upper / 2
            );
        }
        assert!(!b.is_reset());
        b.reset();
        assert!(b.is_reset());
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let d = jitter_around(Duration::from_secs(1), 0.1);
            assert!(d >= Duration::from_millis(900) && d <= Duration::from_millis(1100));
        }
    }
}
