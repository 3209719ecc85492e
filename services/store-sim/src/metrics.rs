//! The simulator's Prometheus metrics, served at `GET /metrics` on its own
//! port:
//!
//! - `store_sim_fulfillment_requests_total{code}`: fulfillment answers by
//!   HTTP status (200, 404, and the injected 403/429/435/5xx faults).
//! - `store_sim_checkouts_total{result}`: checkout attempts by result,
//!   refused ones (stale token, out of stock) included.
//! - `store_sim_violations_total`: checkouts found in progress at the same
//!   time as another one: what the project exists to prevent, so anything
//!   but 0 is a bug.
//!
//! `DELETE /admin/orders` forgets the recorded violations, but not this
//! count: a counter only goes up.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::ledger::CheckoutResult;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// See the module documentation. Cheap to clone: every handle is shared.
#[derive(Debug, Clone, Default)]
pub struct SimMetrics {
    fulfillment: Family<CodeLabel, Counter>,
    checkouts: Family<ResultLabel, Counter>,
    violations: Counter,
}

impl SimMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "store_sim_fulfillment_requests",
            "Fulfillment answers by HTTP status, injected faults included",
            self.fulfillment.clone(),
        );
        registry.register(
            "store_sim_checkouts",
            "Checkout attempts by result, refused ones included",
            self.checkouts.clone(),
        );
        registry.register(
            "store_sim_violations",
            "Checkouts that were in progress at the same time as another (must stay 0)",
            self.violations.clone(),
        );
    }

    pub fn fulfillment_answered(&self, code: u16) {
        self.fulfillment.get_or_create(&CodeLabel { code }).inc();
    }

    pub fn checkout_ended(&self, result: CheckoutResult) {
        self.checkouts
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn violations_found(&self, n: usize) {
        self.violations.inc_by(n as u64);
    }
}
