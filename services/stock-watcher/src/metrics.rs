//! The watcher's own Prometheus metrics (the per-RPC ones of its status
//! server come from `restock-runtime`):
//!
//! - `restock_source_requests_total{code, retailer}`: answers from the
//!   stock sources by HTTP status, so 403/429/430/435 blocks show;
//!   `transport` when no answer came (refused, reset, DNS), `timeout` when
//!   none came in time; `retailer` is `target` or `shopify` (a shop's 429 is
//!   not Target's).
//! - `restock_source_request_seconds`: time of one source request.
//! - `restock_source_backoff_active`: how many of the watcher's sources
//!   (Target, each Shopify shop) are paused by a refusal (403, 429, 430, 435,
//!   5xx, a bot wall) until their next good answer: 1 or 0 with one source.
//! - `restock_source_blocked{kind}`: how many sources are paused (or
//!   stopped) by an answer of that kind: `captcha`, `perimeterx`,
//!   `forbidden`, `bot_wall`, `password_page`, `security_rejection`,
//!   `rate_limited`, `server_error`, `not_json`, `endpoint_gone`; every kind
//!   shows, at 0 when not in force.
//! - `restock_source_refusals_total{kind}`: every answer that is not stock,
//!   by kind (those above, and `bad_request`, `unknown_product`,
//!   `not_listed`).
//! - `restock_checkouts_total{outcome}`: finished checkouts by outcome.
//! - `restock_checkout_seconds`: one checkout, from its start on a grant to
//!   its end.
//! - `restock_arbiter_connected`: 1 while the stream to the arbiter is open.
//!
//! The handles are created with the shared state (tests that never serve
//! HTTP get them too, unregistered) and registered once in the server's
//! registry. Recording is an atomic add or a map lookup without allocation:
//! the source's answer code is a small `Copy` value, not a string.

use std::fmt::Write as _;

use restock_domain::Retailer;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    checkout::CheckoutOutcome,
    source::{Reaction, RefusalKind},
};

/// Source requests take milliseconds to seconds (the limit is
/// `--request-timeout`, 5 s by default).
const SOURCE_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Checkouts run seconds to minutes (`--checkout-timeout`, 120 s).
const CHECKOUT_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// What the source answered, as the `code` label shows it.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum SourceCode {
    /// An HTTP status.
    Status(u16),
    /// No answer: connection refused or reset, DNS failure.
    Transport,
    /// No answer within the request's time limit.
    Timeout,
}

impl EncodeLabelValue for SourceCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Self::Status(s) => write!(encoder, "{s}"),
            Self::Transport => encoder.write_str("transport"),
            Self::Timeout => encoder.write_str("timeout"),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: SourceCode,
    /// `target` or `shopify`: whose answers (a shop's 429 is not Target's).
    retailer: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// See the module documentation. Cheap to clone: every handle is shared.
#[derive(Debug, Clone)]
pub struct WatcherMetrics {
    source_requests: Family<CodeLabel, Counter>,
    source_seconds: Histogram,
    backoff_active: Gauge,
    blocked: Family<KindLabel, Gauge>,
    refusals: Family<KindLabel, Counter>,
    checkouts: Family<OutcomeLabel, Counter>,
    checkout_seconds: Histogram,
    arbiter_connected: Gauge,
}

impl Default for WatcherMetrics {
    fn default() -> Self {
        let checkouts = Family::<OutcomeLabel, Counter>::default();
        // Every outcome shows from the start, at 0, so a rate over a
        // series that has not happened yet is 0 rather than absent.
        for o in [
            CheckoutOutcome::Purchased,
            CheckoutOutcome::OutOfStock,
            CheckoutOutcome::Failed,
            CheckoutOutcome::Aborted,
        ] {
            let _created = checkouts.get_or_create(&OutcomeLabel {
                outcome: o.as_str(),
            });
        }
        let blocked = Family::<KindLabel, Gauge>::default();
        let refusals = Family::<KindLabel, Counter>::default();
        for k in RefusalKind::ALL {
            let label = KindLabel { kind: k.as_str() };
            let _created = refusals.get_or_create(&label);
            if !matches!(k.reaction(), Reaction::RareProduct | Reaction::Keep) {
                let _created = blocked.get_or_create(&label);
            }
        }
        Self {
            blocked,
            refusals,
            source_requests: Family::default(),
            source_seconds: Histogram::new(SOURCE_BUCKETS),
            backoff_active: Gauge::default(),
            checkouts,
            checkout_seconds: Histogram::new(CHECKOUT_BUCKETS),
            arbiter_connected: Gauge::default(),
        }
    }
}

impl WatcherMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "restock_source_requests",
            "Stock source requests by answer: the HTTP status, transport or timeout",
            self.source_requests.clone(),
        );
        registry.register(
            "restock_source_request_seconds",
            "Time of one stock source request",
            self.source_seconds.clone(),
        );
        registry.register(
            "restock_source_backoff_active",
            "Sources that refuse us now (from a 403, 429, 430, 435, 5xx or bot wall until their next good answer)",
            self.backoff_active.clone(),
        );
        registry.register(
            "restock_source_blocked",
            "Sources paused or stopped by an answer of this kind (captcha, perimeterx, bot_wall, rate_limited, ...)",
            self.blocked.clone(),
        );
        registry.register(
            "restock_source_refusals",
            "Source answers that are not stock, by kind",
            self.refusals.clone(),
        );
        registry.register(
            "restock_checkouts",
            "Finished checkouts by outcome",
            self.checkouts.clone(),
        );
        registry.register(
            "restock_checkout_seconds",
            "Time of one checkout, from its start on a grant to its end",
            self.checkout_seconds.clone(),
        );
        registry.register(
            "restock_arbiter_connected",
            "1 while this watcher's stream to the arbiter is open",
            self.arbiter_connected.clone(),
        );
    }

    /// One answer (or its absence) from a source of `retailer`.
    pub fn source_answer(&self, retailer: Retailer, code: SourceCode) {
        self.source_requests
            .get_or_create(&CodeLabel {
                code,
                retailer: retailer.as_str(),
            })
            .inc();
    }

    pub fn source_request_took(&self, seconds: f64) {
        self.source_seconds.observe(seconds);
    }

    /// Sets the back-off and block gauges from every source's state.
    pub fn set_source_gauges(&self, sources: &[crate::state::SourceHealth]) {
        self.backoff_active.set(
            sources
                .iter()
                .filter(|s| s.backoff_until.is_some() || s.stopped.is_some())
                .count() as i64,
        );
        for kind in RefusalKind::ALL {
            let n = sources
                .iter()
                .filter(|s| s.block.as_ref().is_some_and(|b| b.kind == kind))
                .count();
            if !matches!(kind.reaction(), Reaction::RareProduct | Reaction::Keep) {
                self.blocked
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .set(n as i64);
            }
        }
    }

    pub fn source_refused(&self, kind: RefusalKind) {
        self.refusals
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    pub fn checkout_finished(&self, outcome: CheckoutOutcome, seconds: f64) {
        self.checkouts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.checkout_seconds.observe(seconds);
    }

    pub fn set_arbiter_connected(&self, connected: bool) {
        self.arbiter_connected.set(i64::from(connected));
    }
}

#[cfg(test)]
mod tests {
    use restock_runtime::metrics::{Format, render};

    use super::*;

    #[test]
    fn codes_are_labelled_by_status_or_by_what_went_wrong() {
        let m = WatcherMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.source_answer(Retailer::Target, SourceCode::Status(429));
        m.source_answer(Retailer::Target, SourceCode::Status(429));
        m.source_answer(Retailer::Shopify, SourceCode::Status(429));
        m.source_answer(Retailer::Target, SourceCode::Transport);
        m.source_answer(Retailer::Target, SourceCode::Timeout);
        m.checkout_finished(CheckoutOutcome::Purchased, 0.3);
        let text = render(&r, Format::Text);
        for line in [
            "restock_source_requests_total{code=\"429\",retailer=\"target\"} 2\n",
            "restock_source_requests_total{code=\"429\",retailer=\"shopify\"} 1\n",
            "restock_source_requests_total{code=\"transport\",retailer=\"target\"} 1\n",
            "restock_source_requests_total{code=\"timeout\",retailer=\"target\"} 1\n",
            "restock_checkouts_total{outcome=\"purchased\"} 1\n",
            "restock_checkouts_total{outcome=\"failed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
