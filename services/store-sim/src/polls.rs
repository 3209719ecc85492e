//! The poll log: every request to a RedSky endpoint (fulfillment,
//! hierarchy, summary, pdp) that names a product, one poll per product named
//! (a summary of three products is three polls), with the endpoint, who sent
//! it (the `X-Restock-Watcher` header the stock watcher sends) and when, so
//! tests and the benchmark can see how the polls of one product are spaced
//! across watchers (`GET /admin/polls`).
//!
//! Bounded: the last [`MAX_POLLS`] polls are kept, older ones are dropped
//! (and counted), so a simulator left running for days does not grow. A
//! poll costs one short mutex push on the request path; the log has its own
//! mutex so that reading it never delays the stock state's lock.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
};

use serde::Serialize;

/// Polls kept; older ones are dropped first.
pub const MAX_POLLS: usize = 50_000;

/// The header a stock watcher names itself in. The real retailer ignores
/// unknown headers.
pub const WATCHER_HEADER: &str = "x-restock-watcher";

/// One request for a product's stock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Poll {
    /// The aggregation asked, e.g. `product_fulfillment_v1`.
    pub endpoint: &'static str,
    /// As the request spelled it.
    pub tcin: String,
    /// The `X-Restock-Watcher` header; `""` when absent.
    pub watcher: String,
    /// Milliseconds since the simulator started, on its monotonic clock
    /// (sub-millisecond precision).
    pub at_ms: f64,
    /// The same moment in unix milliseconds (the clock of `changed_at_ms`
    /// and the orders' times).
    pub unix_ms: u64,
}

/// What `GET /admin/polls` may ask for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollFilter {
    pub tcin: Option<String>,
    /// Only polls of this endpoint (its aggregation name).
    pub endpoint: Option<String>,
    /// Only polls at or after this `at_ms`.
    pub since_ms: Option<f64>,
}

impl PollFilter {
    fn matches(&self, p: &Poll) -> bool {
        self.tcin.as_deref().is_none_or(|t| p.tcin == t)
            && self.endpoint.as_deref().is_none_or(|e| p.endpoint == e)
            && self.since_ms.is_none_or(|s| p.at_ms >= s)
    }
}

#[derive(Debug)]
struct Log {
    polls: VecDeque<Poll>,
    dropped: u64,
}

/// The bounded log; see the module documentation.
#[derive(Debug)]
pub struct PollLog {
    capacity: usize,
    inner: Mutex<Log>,
}

/// An answer of `GET /admin/polls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PollsView {
    /// Oldest first.
    pub polls: Vec<Poll>,
    /// Polls dropped since the start (or the last clear) because the log
    /// was full: when not 0, the oldest polls asked for may be missing.
    pub dropped: u64,
}

impl PollLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Log {
                polls: VecDeque::new(),
                dropped: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one poll, dropping the oldest when full.
    pub fn record(&self, poll: Poll) {
        let mut log = self.lock();
        if log.polls.len() >= self.capacity {
            log.polls.pop_front();
            log.dropped += 1;
        }
        log.polls.push_back(poll);
    }

    /// The polls that match, oldest first.
    pub fn view(&self, filter: &PollFilter) -> PollsView {
        let log = self.lock();
        // Polls are pushed in time order (the time is read just before the
        // push), so `since_ms` could binary-search; a scan of at most
        // MAX_POLLS is fast enough for an admin call.
        PollsView {
            polls: log
                .polls
                .iter()
                .filter(|p| filter.matches(p))
                .cloned()
                .collect(),
            dropped: log.dropped,
        }
    }

    /// Forgets every poll; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut log = self.lock();
        let n = log.polls.len();
        log.polls.clear();
        log.dropped = 0;
        n
    }
}

impl Default for PollLog {
    fn default() -> Self {
        Self::new(MAX_POLLS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(tcin: &str, watcher: &str, at_ms: f64) -> Poll {
        Poll {
            endpoint: if tcin == "2" {
                "pdp_client_v1"
            } else {
                "product_fulfillment_v1"
            },
            tcin: tcin.into(),
            watcher: watcher.into(),
            at_ms,
            unix_ms: 1_000 + at_ms as u64,
        }
    }

    #[test]
    fn keeps_the_newest_polls_and_counts_the_dropped_ones() {
        let log = PollLog::new(3);
        for i in 0..5 {
            log.record(poll("1", "w", f64::from(i)));
        }
        let v = log.view(&PollFilter::default());
        let at: Vec<f64> = v.polls.iter().map(|p| p.at_ms).collect();
        assert_eq!(at, vec![2.0, 3.0, 4.0], "oldest first, oldest dropped");
        assert_eq!(v.dropped, 2);
        assert_eq!(log.clear(), 3);
        let v = log.view(&PollFilter::default());
        assert!(v.polls.is_empty());
        assert_eq!(v.dropped, 0);
    }

    #[test]
    fn filters_by_product_and_time() {
        let log = PollLog::default();
        log.record(poll("1", "a", 1.5));
        log.record(poll("2", "b", 2.25));
        log.record(poll("1", "", 3.75));
        let only = |tcin: Option<&str>, since_ms: Option<f64>| -> Vec<(String, String, f64)> {
            log.view(&PollFilter {
                tcin: tcin.map(Into::into),
                endpoint: None,
                since_ms,
            })
            .polls
            .into_iter()
            .map(|p| (p.tcin, p.watcher, p.at_ms))
            .collect()
        };
        assert_eq!(
            only(Some("1"), None),
            vec![("1".into(), "a".into(), 1.5), ("1".into(), "".into(), 3.75)]
        );
        assert_eq!(
            only(None, Some(2.25)),
            vec![
                ("2".into(), "b".into(), 2.25),
                ("1".into(), "".into(), 3.75)
            ],
            "since_ms includes a poll at exactly that time"
        );
        assert_eq!(only(Some("2"), Some(3.0)), vec![]);
        assert_eq!(only(Some("9"), None), vec![]);
        let pdp = log.view(&PollFilter {
            endpoint: Some("pdp_client_v1".into()),
            ..PollFilter::default()
        });
        assert_eq!(pdp.polls.len(), 1);
        assert_eq!(pdp.polls[0].tcin, "2");
    }
}
