//! The arbiter's own Prometheus metrics (the per-RPC ones come from
//! `restock-runtime`). Every one of them is recorded by the task that owns
//! the slot, after the write that holds what it counts, so a scrape never
//! shows a grant, a refusal or a release that a crash could take back:
//!
//! - `restock_slot_held`: 1 while a lease holds the slot.
//! - `restock_fencing_token`: the token of the newest grant (it stays after
//!   the lease ends; the next grant's is larger).
//! - `restock_lease_expires_timestamp_seconds`: when the current lease ends
//!   unless renewed (Unix time; 0 while the slot is free), and
//!   `restock_lease_ttl_seconds`, `--lease-ttl`: together they say whether
//!   the slot is held past what its lease allows.
//! - `restock_grants_total`, `restock_refusals_total{reason}`,
//!   `restock_releases_total{outcome}`, `restock_lease_expirations_total`.
//! - `restock_handoff_seconds`: from the start of the batch that ended a
//!   lease (its release, or the tick that expired it) to the next grant on
//!   a watcher's stream, when that grant follows at once (a product was
//!   waiting); a slot left free for a while is no hand-off.
//! - `restock_journal_fsync_seconds`: one state write that waits for the
//!   disk (a journal record or a snapshot, with its fdatasync).
//! - `restock_watchers_connected`, `restock_observations_total`,
//!   `restock_products{state}`.
//!
//! Recording is an atomic add or store on a handle created once: per batch
//! of stock reports, one add of how many observations it held; product
//! states are counted again only after a batch that published a product's
//! change.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use restock_domain::{Event, EventKind, Outcome, ProductState};

use crate::slot::ActiveLease;

/// The `reason` label values: the protocol's refusal reasons
/// ([`crate::slot::Refusal::reason`]), all present from the start at 0.
const REFUSAL_REASONS: [&str; 7] = [
    "another_purchase_active",
    "higher_priority_pending",
    "already_purchased",
    "cooling_down",
    "paused",
    "disabled",
    "over_budget",
];

/// A hand-off is one batch and one write: milliseconds, more on a slow
/// disk.
const HANDOFF_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// An fdatasync takes well under a millisecond on an SSD with a write
/// cache, ten or more on a disk that must reach the platter, and seconds on
/// a disk in trouble.
const FSYNC_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// See the module documentation. Cheap to clone: every handle is shared.
#[derive(Debug, Clone)]
pub struct ArbiterMetrics {
    leading: Gauge,
    slot_held: Gauge,
    fencing_token: Gauge,
    lease_expires: Gauge<f64, AtomicU64>,
    lease_ttl: Gauge<f64, AtomicU64>,
    grants: Counter,
    refusals: Family<ReasonLabel, Counter>,
    releases: Family<OutcomeLabel, Counter>,
    /// `releases`' handles, by [`Outcome`] (the `Expired` one unused:
    /// expiries are counted apart).
    release_by_outcome: [Counter; Outcome::ALL.len()],
    expirations: Counter,
    handoff_seconds: Histogram,
    fsync_seconds: Histogram,
    watchers_connected: Gauge,
    observations: Counter,
    products: Family<StateLabel, Gauge>,
    /// `products`' handles, by [`ProductState`].
    product_states: [Gauge; ProductState::ALL.len()],
    budget_spent: Gauge<f64, AtomicU64>,
    budget_reserved: Gauge<f64, AtomicU64>,
    budget_left: Gauge<f64, AtomicU64>,
    budget_purchases: Gauge,
    budget_purchases_left: Gauge<f64, AtomicU64>,
}

impl Default for ArbiterMetrics {
    fn default() -> Self {
        let refusals = Family::<ReasonLabel, Counter>::default();
        for reason in REFUSAL_REASONS {
            let _created = refusals.get_or_create(&ReasonLabel { reason });
        }
        let releases = Family::<OutcomeLabel, Counter>::default();
        let release_by_outcome = Outcome::ALL.map(|o| {
            if o == Outcome::Expired {
                // Not a release: restock_lease_expirations_total.
                Counter::default()
            } else {
                releases
                    .get_or_create(&OutcomeLabel {
                        outcome: o.as_str(),
                    })
                    .clone()
            }
        });
        let products = Family::<StateLabel, Gauge>::default();
        let product_states = ProductState::ALL.map(|s| {
            products
                .get_or_create(&StateLabel { state: s.as_str() })
                .clone()
        });
        Self {
            leading: Gauge::default(),
            slot_held: Gauge::default(),
            fencing_token: Gauge::default(),
            lease_expires: Gauge::default(),
            lease_ttl: Gauge::default(),
            grants: Counter::default(),
            refusals,
            releases,
            release_by_outcome,
            expirations: Counter::default(),
            handoff_seconds: Histogram::new(HANDOFF_BUCKETS),
            fsync_seconds: Histogram::new(FSYNC_BUCKETS),
            watchers_connected: Gauge::default(),
            observations: Counter::default(),
            products,
            product_states,
            budget_spent: Gauge::default(),
            budget_reserved: Gauge::default(),
            budget_left: Gauge::default(),
            budget_purchases: Gauge::default(),
            budget_purchases_left: Gauge::default(),
        }
    }
}

impl ArbiterMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "restock_arbiter_leading",
            "1 while this arbiter grants (standalone, or the replica elected through etcd); 0 on a replica that follows",
            self.leading.clone(),
        );
        registry.register(
            "restock_slot_held",
            "1 while a lease holds the purchase slot",
            self.slot_held.clone(),
        );
        registry.register(
            "restock_fencing_token",
            "Fencing token of the newest grant (stays after its lease ends)",
            self.fencing_token.clone(),
        );
        registry.register(
            "restock_lease_expires_timestamp_seconds",
            "When the current lease ends unless renewed, Unix time; 0 while the slot is free",
            self.lease_expires.clone(),
        );
        registry.register(
            "restock_lease_ttl_seconds",
            "How long a lease lasts unless renewed (--lease-ttl)",
            self.lease_ttl.clone(),
        );
        registry.register(
            "restock_grants",
            "Leases granted (each with a new fencing token)",
            self.grants.clone(),
        );
        registry.register(
            "restock_refusals",
            "AcquirePurchase calls refused, by reason (a retry answered from memory is not counted again)",
            self.refusals.clone(),
        );
        registry.register(
            "restock_releases",
            "Leases ended by their holder, by outcome",
            self.releases.clone(),
        );
        registry.register(
            "restock_lease_expirations",
            "Leases ended by the arbiter because the holder stopped renewing",
            self.expirations.clone(),
        );
        registry.register(
            "restock_budget_spent_dollars",
            "Spend counted against the budget: purchases inside its window (all recorded, without a window), in dollars",
            self.budget_spent.clone(),
        );
        registry.register(
            "restock_budget_reserved_dollars",
            "What the lease in flight holds back from the budget (its product's price at the grant), in dollars",
            self.budget_reserved.clone(),
        );
        registry.register(
            "restock_budget_left_dollars",
            "max_spend less spent and reserved, in dollars; NaN when the budget sets no max_spend",
            self.budget_left.clone(),
        );
        registry.register(
            "restock_budget_purchases",
            "Purchases counted against the budget (inside its window)",
            self.budget_purchases.clone(),
        );
        registry.register(
            "restock_budget_purchases_left",
            "max_purchases less purchases and the one in flight; NaN when the budget sets no max_purchases",
            self.budget_purchases_left.clone(),
        );
        registry.register(
            "restock_handoff_seconds",
            "From the batch that ended a lease to the next grant on a watcher's stream, when one follows at once",
            self.handoff_seconds.clone(),
        );
        registry.register(
            "restock_journal_fsync_seconds",
            "One state write that waits for the disk (journal record or snapshot, with its fdatasync)",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "restock_watchers_connected",
            "Watchers with an open StockStream",
            self.watchers_connected.clone(),
        );
        registry.register(
            "restock_observations",
            "Stock observations received from watchers",
            self.observations.clone(),
        );
        registry.register(
            "restock_products",
            "Tracked products by state",
            self.products.clone(),
        );
    }

    /// Whether this arbiter grants. A replica that stops leading shows an
    /// empty slot and no watchers: the leader's figures are the ones that
    /// count, and a follower's stale ones would set off alerts.
    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
        if !leading {
            self.slot_held.set(0);
            self.lease_expires.set(0.0);
            self.watchers_connected.set(0);
        }
    }

    /// `--lease-ttl`.
    pub fn set_lease_ttl(&self, seconds: f64) {
        self.lease_ttl.set(seconds);
    }

    /// One event, once it is published (so durable, or of a kind nothing
    /// durable depends on).
    pub fn published(&self, e: &Event) {
        match e.kind {
            EventKind::Granted => {
                self.grants.inc();
            }
            EventKind::Released => {
                if let Some(o) = e.outcome {
                    self.release_by_outcome[outcome_index(o)].inc();
                }
            }
            EventKind::Expired => {
                self.expirations.inc();
            }
            _ => {}
        }
    }

    /// One `AcquirePurchase` refused, once its answer is written.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// The slot as the last successful write left it: its lease, and the
    /// token the next grant gets.
    pub fn set_slot(&self, lease: Option<&ActiveLease>, next_token: u64) {
        self.slot_held.set(i64::from(lease.is_some()));
        self.fencing_token
            .set(i64::try_from(next_token.saturating_sub(1)).unwrap_or(i64::MAX));
        self.lease_expires
            .set(lease.map_or(0.0, |l| l.expires_at_unix_ms as f64 / 1000.0));
    }

    pub fn set_watchers_connected(&self, n: usize) {
        self.watchers_connected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn observed(&self, n: u64) {
        if n > 0 {
            self.observations.inc_by(n);
        }
    }

    /// How many tracked products are in each state.
    pub fn set_products(&self, states: impl Iterator<Item = ProductState>) {
        let mut counts = [0i64; ProductState::ALL.len()];
        for s in states {
            counts[state_index(s)] += 1;
        }
        for (gauge, n) in self.product_states.iter().zip(counts) {
            gauge.set(n);
        }
    }

    /// The spending limit as it stands: spend and purchases in the window,
    /// the reservation in flight, and what is left (NaN where there is no
    /// such limit).
    pub fn set_budget(&self, b: &restock_domain::BudgetStatus) {
        self.budget_spent.set(b.spent.dollars());
        self.budget_reserved
            .set(b.reserved.map_or(0.0, restock_domain::Price::dollars));
        self.budget_left
            .set(b.left.map_or(f64::NAN, restock_domain::Price::dollars));
        self.budget_purchases.set(i64::from(b.purchases));
        self.budget_purchases_left
            .set(b.purchases_left.map_or(f64::NAN, f64::from));
    }

    pub fn handoff_took(&self, seconds: f64) {
        self.handoff_seconds.observe(seconds);
    }

    pub fn fsync_took(&self, seconds: f64) {
        self.fsync_seconds.observe(seconds);
    }
}

fn outcome_index(o: Outcome) -> usize {
    Outcome::ALL
        .iter()
        .position(|x| *x == o)
        .expect("Outcome::ALL lists every outcome")
}

fn state_index(s: ProductState) -> usize {
    ProductState::ALL
        .iter()
        .position(|x| *x == s)
        .expect("ProductState::ALL lists every state")
}

#[cfg(test)]
mod tests {
    use restock_domain::{ProductId, WatcherId};
    use restock_runtime::metrics::{Format, render};

    use super::*;
    use crate::slot::Refusal;

    #[test]
    fn every_refusal_reason_has_its_series_from_the_start() {
        let tcin = ProductId::parse("100").unwrap();
        let watcher = WatcherId::parse("w1").unwrap();
        for r in [
            Refusal::AnotherPurchaseActive {
                holder_tcin: tcin.clone(),
                holder_watcher_id: watcher,
            },
            Refusal::HigherPriorityPending { pending_tcin: tcin },
            Refusal::AlreadyPurchased { purchases: 1 },
            Refusal::CoolingDown { retry_after_ms: 1 },
            Refusal::Paused,
            Refusal::Disabled,
        ] {
            assert!(REFUSAL_REASONS.contains(&r.reason()), "{}", r.reason());
        }
        let m = ArbiterMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.refused("paused");
        let mut released = Event::new(EventKind::Released);
        released.outcome = Some(Outcome::OutOfStock);
        m.published(&released);
        let mut expired = Event::new(EventKind::Expired);
        expired.outcome = Some(Outcome::Expired);
        m.published(&expired);
        m.set_products(
            [
                ProductState::Ready,
                ProductState::Ready,
                ProductState::Failed,
            ]
            .into_iter(),
        );
        let text = render(&registry, Format::Text);
        for line in [
            "restock_refusals_total{reason=\"paused\"} 1\n",
            "restock_refusals_total{reason=\"cooling_down\"} 0\n",
            "restock_releases_total{outcome=\"out_of_stock\"} 1\n",
            "restock_releases_total{outcome=\"purchased\"} 0\n",
            "restock_lease_expirations_total 1\n",
            "restock_products{state=\"ready\"} 2\n",
            "restock_products{state=\"failed\"} 1\n",
            "restock_products{state=\"attempting\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // An expiry is not a release.
        assert!(!text.contains("outcome=\"expired\""), "{text}");
    }
}
