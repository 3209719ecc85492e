//! A polite request budget for one retailer host (`--target-max-rps`).
//!
//! Every request the watcher sends to the host (stock polls and
//! `pdp_client_v1` price fetches) first takes its turn here: turns are at
//! least `1 / rate` apart, whoever asks, so requests are spaced evenly and
//! never burst (a budget of one request, refilled at the rate). A few lines
//! with tokio's clock do it; no crate is needed.

use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Requests per second public tools report surviving on Target's own host
/// (one request every 2 s; see the README, "Against the real Target"):
/// the default of `--target-max-rps` there, and the most the start-up check
/// calls safe.
pub const SAFE_TARGET_RPS: f64 = 0.5;

/// Whether `host` is Target's own (`target.com` or a subdomain, such as
/// `redsky.target.com`).
pub fn is_target_host(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "target.com" || host.ends_with(".target.com")
}

/// Spaces the requests to one host.
#[derive(Debug)]
pub struct HostBudget {
    /// Least time between two requests; `None`: unlimited.
    spacing: Option<Duration>,
    /// When the next request may go.
    next: Mutex<Option<Instant>>,
}

impl HostBudget {
    /// No limit: [`HostBudget::acquire`] never waits.
    pub fn unlimited() -> Self {
        Self {
            spacing: None,
            next: Mutex::new(None),
        }
    }

    /// At most `rps` requests per second (`None` or a rate that is not
    /// positive and finite: unlimited).
    pub fn per_second(rps: Option<f64>) -> Self {
        match rps.filter(|r| r.is_finite() && *r > 0.0) {
            Some(r) => Self {
                spacing: Some(Duration::from_secs_f64(1.0 / r)),
                next: Mutex::new(None),
            },
            None => Self::unlimited(),
        }
    }

    /// The least time between two requests (`None`: unlimited).
    #[cfg(test)]
    pub fn spacing(&self) -> Option<Duration> {
        self.spacing
    }

    /// When the next request may go (`None`: no limit, or no request yet).
    pub fn next_free(&self) -> Option<Instant> {
        self.spacing?;
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this request's turn. The turn is taken when asked (first
    /// come, first served); a caller dropped while waiting leaves its turn
    /// unused, which only makes the next request later, never earlier.
    pub async fn acquire(&self) {
        let Some(spacing) = self.spacing else {
            return;
        };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + spacing);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn target_hosts_are_recognised() {
        assert!(is_target_host("redsky.target.com"));
        assert!(is_target_host("REDSKY.Target.com."));
        assert!(is_target_host("target.com"));
        assert!(!is_target_host("127.0.0.1"));
        assert!(!is_target_host("nottarget.com"));
        assert!(!is_target_host("target.com.example"));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_at_the_rate_whoever_asks() {
        let budget = Arc::new(HostBudget::per_second(Some(0.5)));
        assert_eq!(budget.spacing(), Some(Duration::from_secs(2)));
        let t0 = Instant::now();
        // Three callers at once: turns at 0, 2 and 4 s.
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let b = budget.clone();
            tasks.push(tokio::spawn(async move {
                b.acquire().await;
                Instant::now().duration_since(t0)
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap());
        }
        at.sort();
        assert_eq!(
            at,
            [
                Duration::ZERO,
                Duration::from_secs(2),
                Duration::from_secs(4)
            ]
        );
        // After a quiet spell no burst is saved up: one at once, then spaced.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let t1 = Instant::now();
        budget.acquire().await;
        assert_eq!(Instant::now(), t1);
        budget.acquire().await;
        assert_eq!(Instant::now().duration_since(t1), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        for b in [
            HostBudget::unlimited(),
            HostBudget::per_second(None),
            HostBudget::per_second(Some(0.0)),
            HostBudget::per_second(Some(f64::INFINITY)),
        ] {
            let t0 = Instant::now();
            for _ in 0..100 {
                b.acquire().await;
            }
            assert_eq!(Instant::now(), t0);
            assert_eq!(b.spacing(), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_dropped_while_waiting_does_not_let_the_next_one_early() {
        let b = HostBudget::per_second(Some(1.0));
        let t0 = Instant::now();
        b.acquire().await;
        // Gives up waiting for its turn at 1 s.
        let _ = tokio::time::timeout(Duration::from_millis(100), b.acquire()).await;
        b.acquire().await;
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(2));
    }
}
