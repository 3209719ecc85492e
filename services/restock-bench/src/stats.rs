//! Latency samples, percentiles, and the result rows written to
//! `results.json`.

use std::time::Duration;

use serde::Serialize;

/// Which system a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Restock,
    Redis,
    Etcd,
}

impl System {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restock => "restock",
            Self::Redis => "redis",
            Self::Etcd => "etcd",
        }
    }
}

/// Where the arbiter of a restock row kept its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// The state file and its journal (`--store file`, the default).
    File,
    /// `--store etcd`: replicas electing a leader through etcd.
    Etcd,
}

/// One line of the results. Fields that do not apply are left out of the
/// JSON. `variant`, `samples`, `cpu_percent` and `poll_interval_ms` add to
/// the fields: they tell rows of one scenario and system apart
/// (Redis polling every 10 ms or 50 ms, memory idle or reporting, the number
/// of watchers end to end).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub system: System,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval_ms: Option<u64>,
    /// End to end: watcher processes polling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchers: Option<u64>,
    /// End to end: whether the arbiter planned the watchers' polls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<bool>,
    /// End to end: the gaps between consecutive polls of a product across
    /// all watchers (the simulator's poll log): median, p99, and p99/median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_gap_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_gap_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_gap_spread: Option<f64>,
    /// Restock rows of the hand-off, grant and failover scenarios: the
    /// arbiter's store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<Store>,
    /// Failover: the replicas' `--election-ttl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_ttl_ms: Option<u64>,
    /// End to end under a request budget (issue 20): the watchers'
    /// `--target-endpoint` (`summary`: one request per round for every
    /// product; `hierarchy`: one request per product).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<&'static str>,
    /// Budgeted: each watcher's `--target-max-rps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rps: Option<f64>,
    /// Budgeted: products every watcher polls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub products: Option<u64>,
    /// Budgeted: requests the simulator answered during the measurement
    /// (every RedSky endpoint, every watcher).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Budgeted: `requests` divided by the flips detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_detection: Option<f64>,
    /// Budgeted: `requests` per watcher per second of the measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_s_per_watcher: Option<f64>,
    /// Budgeted: the shortest time between two requests of one watcher
    /// (the simulator's poll log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_request_gap_ms: Option<f64>,
}

impl Row {
    pub fn new(scenario: &'static str, system: System) -> Self {
        Self {
            scenario,
            system,
            variant: None,
            fsync: None,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            max_us: None,
            per_second: None,
            rss_mb: None,
            samples: None,
            cpu_percent: None,
            poll_interval_ms: None,
            watchers: None,
            planned: None,
            poll_gap_p50_ms: None,
            poll_gap_p99_ms: None,
            poll_gap_spread: None,
            store: None,
            election_ttl_ms: None,
            endpoint: None,
            max_rps: None,
            products: None,
            requests: None,
            requests_per_detection: None,
            requests_per_s_per_watcher: None,
            min_request_gap_ms: None,
        }
    }

    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    pub fn election_ttl(mut self, ttl: Duration) -> Self {
        self.election_ttl_ms = Some(ttl.as_millis() as u64);
        self
    }

    pub fn variant(mut self, v: impl Into<String>) -> Self {
        self.variant = Some(v.into());
        self
    }

    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = Some(on);
        self
    }

    /// Sets p50/p99/p99.9/max and the sample count from `lat`.
    pub fn latencies(mut self, lat: &Latencies) -> Self {
        let s = lat.summary();
        self.p50_us = Some(s.p50_us);
        self.p99_us = Some(s.p99_us);
        self.p999_us = Some(s.p999_us);
        self.max_us = Some(s.max_us);
        self.samples = Some(s.count as u64);
        self
    }

    pub fn per_second(mut self, v: f64) -> Self {
        self.per_second = Some(round1(v));
        self
    }

    pub fn rss_mb(mut self, v: f64) -> Self {
        self.rss_mb = Some(round1(v));
        self
    }

    pub fn cpu_percent(mut self, v: f64) -> Self {
        self.cpu_percent = Some(round1(v));
        self
    }

    pub fn samples(mut self, n: u64) -> Self {
        self.samples = Some(n);
        self
    }

    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval_ms = Some(d.as_millis() as u64);
        self
    }
}

impl Row {
    pub fn watchers(mut self, n: usize) -> Self {
        self.watchers = Some(n as u64);
        self
    }

    pub fn planned(mut self, on: bool) -> Self {
        self.planned = Some(on);
        self
    }

    /// Sets the figures of a row under a request budget (issue 20).
    pub fn budget(mut self, b: &BudgetFigures) -> Self {
        self.endpoint = Some(b.endpoint);
        self.max_rps = Some(b.max_rps);
        self.products = Some(b.products as u64);
        self.requests = Some(b.requests);
        self.requests_per_detection =
            (b.detections > 0).then(|| round2(b.requests as f64 / b.detections as f64));
        self.requests_per_s_per_watcher = (b.seconds > 0.0 && b.watchers > 0)
            .then(|| round2(b.requests as f64 / b.seconds / b.watchers as f64));
        self.min_request_gap_ms = b.min_request_gap_ms.map(round1);
        self
    }

    /// Sets the poll-gap figures (nothing when there were no gaps).
    pub fn poll_gaps(mut self, g: &GapSummary) -> Self {
        if g.count > 0 {
            self.poll_gap_p50_ms = Some(round2(g.p50_ms));
            self.poll_gap_p99_ms = Some(round2(g.p99_ms));
            self.poll_gap_spread = Some(round2(g.spread()));
        }
        self
    }
}

/// What a measurement under a request budget counted besides latency.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetFigures {
    pub endpoint: &'static str,
    pub max_rps: f64,
    pub products: usize,
    pub watchers: usize,
    /// Requests the simulator answered during the measurement.
    pub requests: u64,
    /// Flips detected (each one checkout).
    pub detections: usize,
    /// How long the measurement took.
    pub seconds: f64,
    pub min_request_gap_ms: Option<f64>,
}

/// Gaps between consecutive polls, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GapSummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl GapSummary {
    /// Nearest-rank median, p99 and maximum of `gaps`.
    pub fn of(gaps: &[f64]) -> Self {
        let mut v: Vec<f64> = gaps.iter().copied().filter(|g| g.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = (q * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        Self {
            count: v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: v.last().copied().unwrap_or(0.0),
        }
    }

    /// p99 / median: 1 for perfectly even polling.
    pub fn spread(&self) -> f64 {
        if self.p50_ms > 0.0 {
            self.p99_ms / self.p50_ms
        } else {
            0.0
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Collected latency samples.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

/// Percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.samples.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles (p99.9 of fewer than 1,000 samples is the
    /// maximum).
    pub fn summary(&self) -> Summary {
        let mut v = self.samples.clone();
        v.sort_unstable();
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let rank = (q * v.len() as f64).ceil() as usize;
            let i = rank.clamp(1, v.len()) - 1;
            round1(v[i].as_nanos() as f64 / 1_000.0)
        };
        Summary {
            count: v.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        for us in 1..=1_000 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1_000);
        assert_eq!(s.p50_us, 500.0);
        assert_eq!(s.p99_us, 990.0);
        assert_eq!(s.p999_us, 999.0);
        assert_eq!(s.max_us, 1_000.0);
    }

    #[test]
    fn an_empty_set_summarises_to_zero() {
        let s = Latencies::default().summary();
        assert_eq!((s.count, s.p50_us, s.p99_us), (0, 0.0, 0.0));
    }

    #[test]
    fn poll_gaps_summarise_to_median_p99_and_spread() {
        // 98 gaps of 100 ms and two of 160 ms: the p99 is a long one.
        let mut gaps = vec![100.0; 98];
        gaps.extend([160.0, 160.0]);
        let g = GapSummary::of(&gaps);
        assert_eq!(
            (g.count, g.p50_ms, g.p99_ms, g.max_ms),
            (100, 100.0, 160.0, 160.0)
        );
        assert!((g.spread() - 1.6).abs() < 1e-9);
        let row = Row::new("end_to_end", System::Restock).poll_gaps(&g);
        assert_eq!(row.poll_gap_spread, Some(1.6));
        let none = Row::new("end_to_end", System::Restock).poll_gaps(&GapSummary::of(&[]));
        assert_eq!(none.poll_gap_p50_ms, None, "no gaps, no figures");
    }

    #[test]
    fn rows_leave_out_what_does_not_apply() {
        let row = Row::new("memory", System::Restock)
            .variant("idle")
            .rss_mb(12.345);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"scenario": "memory", "system": "restock", "variant": "idle", "rss_mb": 12.3})
        );
    }
}
