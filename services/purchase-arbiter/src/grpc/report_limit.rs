//! The per-stream rate limit on stock reports: a token bucket per
//! `StreamStock` stream ([`ReportBucket`]) that slows a stream reporting
//! too fast, then closes it.

use std::time::Duration;

use tokio::time::Instant;

/// How fast one `StreamStock` stream may send reports.
///
/// Every stream shares the arbiter's one command queue, so a stream that
/// floods reports would delay everyone's renewals and grants. Each stream
/// gets a token bucket: `per_second` reports a second, bursts of up to
/// `burst`. A report that finds the bucket empty waits for the next token,
/// which slows the sender (HTTP/2 flow control holds it back while the
/// arbiter is not reading). A stream that still has to be slowed for
/// `cut_after` reports in a row is flooding, not bursting, and is closed
/// with `RESOURCE_EXHAUSTED`. A watcher reports on changes and refreshes
/// every third of the stock TTL, a handful of messages a second at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimit {
    pub per_second: u32,
    pub burst: u32,
    pub cut_after: u32,
}

impl ReportLimit {
    /// `per_second` reports a second, a burst of one second's worth, cut
    /// after one more second of sustained excess. `None` for 0 (no limit).
    pub fn per_second(per_second: u32) -> Option<Self> {
        (per_second > 0).then_some(Self {
            per_second,
            burst: per_second,
            cut_after: per_second,
        })
    }
}

/// What [`ReportBucket::admit`] decided about one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the limit: handle it now.
    Now,
    /// Over the limit: handle it after this pause (the stream is slowed).
    After(Duration),
    /// Slowed for too long in a row: close the stream.
    Cut,
}

/// The token bucket of one stream; see [`ReportLimit`].
#[derive(Debug, Clone)]
pub struct ReportBucket {
    limit: ReportLimit,
    tokens: f64,
    /// When `tokens` was last brought up to date (may lie ahead after a
    /// pause was handed out: that token is already spent).
    at: Instant,
    slowed_in_a_row: u32,
}

impl ReportBucket {
    pub fn new(limit: ReportLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            at: now,
            slowed_in_a_row: 0,
        }
    }

    pub fn limit(&self) -> ReportLimit {
        self.limit
    }

    /// Takes one token for a report that arrived at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let rate = f64::from(self.limit.per_second.max(1));
        if now > self.at {
            let earned = now.duration_since(self.at).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(f64::from(self.limit.burst.max(1)));
            self.at = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.slowed_in_a_row = 0;
            return Admit::Now;
        }
        self.slowed_in_a_row += 1;
        if self.slowed_in_a_row > self.limit.cut_after {
            return Admit::Cut;
        }
        // The token that accrues during the pause is this report's.
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
        self.tokens = 0.0;
        self.at = self.at.max(now) + wait;
        Admit::After(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32) -> ReportLimit {
        ReportLimit::per_second(per_second).expect("non-zero")
    }

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(ReportLimit::per_second(0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_stream_is_slowed_then_cut() {
        let mut b = ReportBucket::new(limit(10), Instant::now());
        for i in 0..10 {
            assert_eq!(
                b.admit(Instant::now()),
                Admit::Now,
                "report {i} of the burst"
            );
        }
        // A sender that always has the next report ready: every report waits
        // a tenth of a second, and after ten of those in a row it is cut.
        for i in 0..10 {
            match b.admit(Instant::now()) {
                Admit::After(wait) => {
                    assert!(
                        (wait.as_secs_f64() - 0.1).abs() < 0.001,
                        "report {i}: {wait:?}"
                    );
                    tokio::time::advance(wait).await;
                }
                other => panic!("report {i} should be slowed, got {other:?}"),
            }
        }
        assert_eq!(b.admit(Instant::now()), Admit::Cut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_within_the_rate_is_never_slowed() {
        let mut b = ReportBucket::new(limit(10), Instant::now());
        for _ in 0..1_000 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
            tokio::time::advance(Duration::from_millis(105)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_refills_the_bucket_and_forgives_earlier_slowing() {
        let mut b = ReportBucket::new(limit(5), Instant::now());
        for _ in 0..5 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
        }
        assert!(matches!(b.admit(Instant::now()), Admit::After(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        // The token paid for by the pause above is spent; the rest refilled.
        for _ in 0..5 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
        }
        assert!(matches!(b.admit(Instant::now()), Admit::After(_)));
    }
}
