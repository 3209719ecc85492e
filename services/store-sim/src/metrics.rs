//! The simulator's Prometheus metrics, served at `GET /metrics` on its own
//! port:
//!
//! - `store_sim_fulfillment_requests_total{code}`: answers of the legacy
//!   fulfillment endpoint (`product_fulfillment_v1`) by HTTP status (200,
//!   404, blocks and the injected 403/429/435/5xx faults). Kept as it was:
//!   dashboards and the watcher's tests read it.
//! - `store_sim_redsky_requests_total{endpoint, code}`: answers of every
//!   RedSky endpoint (`product_fulfillment_v1`,
//!   `product_fulfillment_and_variation_hierarchy_v1`,
//!   `product_summary_with_fulfillment_v1`, `pdp_client_v1`) by status,
//!   blocks and faults included.
//! - `store_sim_blocked_answers_total{kind, endpoint}`: answers a block
//!   (`PUT /admin/block`) gave instead of data, by block kind.
//! - `store_sim_shopify_requests_total{endpoint, code}`: answers of the
//!   Shopify storefront endpoints (`shopify_products`,
//!   `shopify_collection_products`, `shopify_product_json`,
//!   `shopify_product_js`) by status, blocks, faults and 404s included.
//! - `store_sim_shopify_blocked_answers_total{kind, endpoint}`: answers a
//!   storefront block (`PUT /admin/shopify/block`) gave instead of data.
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

use crate::{
    block::BlockKind,
    ledger::CheckoutResult,
    redsky::Endpoint,
    shopify::{block::ShopifyBlockKind, routes::ShopifyEndpoint},
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointCodeLabel {
    endpoint: &'static str,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockedLabel {
    kind: &'static str,
    endpoint: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// See the module documentation. Cheap to clone: every handle is shared.
#[derive(Debug, Clone, Default)]
pub struct SimMetrics {
    fulfillment: Family<CodeLabel, Counter>,
    redsky: Family<EndpointCodeLabel, Counter>,
    blocked: Family<BlockedLabel, Counter>,
    shopify: Family<EndpointCodeLabel, Counter>,
    shopify_blocked: Family<BlockedLabel, Counter>,
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
            "store_sim_redsky_requests",
            "Answers of every RedSky endpoint by endpoint and HTTP status, blocks and faults included",
            self.redsky.clone(),
        );
        registry.register(
            "store_sim_blocked_answers",
            "Answers a block gave instead of data, by block kind and endpoint",
            self.blocked.clone(),
        );
        registry.register(
            "store_sim_shopify_requests",
            "Answers of the Shopify storefront endpoints by endpoint and HTTP status, blocks and faults included",
            self.shopify.clone(),
        );
        registry.register(
            "store_sim_shopify_blocked_answers",
            "Answers a storefront block gave instead of data, by block kind and endpoint",
            self.shopify_blocked.clone(),
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

    /// Counts an answer of the legacy fulfillment endpoint.
    pub fn fulfillment_answered(&self, code: u16) {
        self.fulfillment.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts an answer of any RedSky endpoint.
    pub fn redsky_answered(&self, endpoint: Endpoint, code: u16) {
        self.redsky
            .get_or_create(&EndpointCodeLabel {
                endpoint: endpoint.name(),
                code,
            })
            .inc();
    }

    /// Counts an answer a block gave instead of data.
    pub fn blocked(&self, kind: BlockKind, endpoint: Endpoint) {
        self.blocked
            .get_or_create(&BlockedLabel {
                kind: kind.as_str(),
                endpoint: endpoint.name(),
            })
            .inc();
    }

    /// Counts an answer of a storefront endpoint.
    pub fn shopify_answered(&self, endpoint: ShopifyEndpoint, code: u16) {
        self.shopify
            .get_or_create(&EndpointCodeLabel {
                endpoint: endpoint.name(),
                code,
            })
            .inc();
    }

    /// Counts an answer a storefront block gave instead of data.
    pub fn shopify_blocked(&self, kind: ShopifyBlockKind, endpoint: ShopifyEndpoint) {
        self.shopify_blocked
            .get_or_create(&BlockedLabel {
                kind: kind.as_str(),
                endpoint: endpoint.name(),
            })
            .inc();
    }

    /// Counts a checkout attempt that ended (refused ones included).
    pub fn checkout_ended(&self, result: CheckoutResult) {
        self.checkouts
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts `n` newly found overlapping checkouts.
    pub fn violations_found(&self, n: usize) {
        self.violations.inc_by(n as u64);
    }
}
