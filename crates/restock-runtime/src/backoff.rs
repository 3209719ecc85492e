//! Exponential back-off with jitter, for reconnecting (to the arbiter, to an
//! event stream) and for pausing a stock source that refuses us.

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

/// `d` scaled by a random factor in `[1 - fraction, 1]`: never longer than
/// `d`, so a bound stated as `d` holds.
pub fn jitter_below(d: Duration, fraction: f64) -> Duration {
    let f = rand::rng().random_range((1.0 - fraction.clamp(0.0, 1.0))..=1.0);
    d.mul_f64(f)
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
    fn jitter_stays_in_range_and_never_lengthens() {
        let mut shortest = Duration::from_secs(1);
        for _ in 0..1000 {
            let d = jitter_below(Duration::from_secs(1), 0.1);
            assert!(
                d >= Duration::from_millis(900) && d <= Duration::from_secs(1),
                "{d:?}"
            );
            shortest = shortest.min(d);
        }
        // It does jitter: 1,000 draws over 100 ms do not all land in the top 10 ms.
        assert!(shortest < Duration::from_millis(990), "{shortest:?}");
    }
}
