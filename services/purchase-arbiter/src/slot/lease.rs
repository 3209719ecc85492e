//! The slot's own record of a lease: the current one ([`ActiveLease`], with
//! the monotonic deadline that never leaves the arbiter) and those that
//! ended ([`EndedLease`]). Holders and onlookers see a
//! [`restock_domain::Lease`] made from it ([`ActiveLease::view`]).

use std::time::Duration;

use tokio::time::Instant;

use restock_domain::{
    Event, EventKind, FencingToken, LeaseId, Outcome, ProductId, WatcherId,
    lease::Lease as LeaseView,
};

use super::Now;

/// The grant of the slot as the arbiter holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveLease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub ttl: Duration,
    pub granted_at_unix_ms: u64,
    /// Monotonic deadline; the wall-clock one is derived for display.
    pub deadline: Instant,
    pub expires_at_unix_ms: u64,
}

impl ActiveLease {
    /// An event about this lease.
    pub(super) fn event(&self, kind: EventKind) -> Event {
        Event::new(kind).lease(&self.lease_id, &self.tcin, &self.watcher_id, self.token)
    }

    pub fn remaining(&self, now: Now) -> Duration {
        self.deadline.saturating_duration_since(now.mono)
    }

    /// The lease as its holder and onlookers see it at monotonic time `at`.
    pub fn view(&self, at: Instant) -> LeaseView {
        LeaseView {
            lease_id: self.lease_id.clone(),
            tcin: self.tcin.clone(),
            watcher_id: self.watcher_id.clone(),
            token: self.token,
            ttl: self.ttl,
            granted_at_unix_ms: self.granted_at_unix_ms,
            expires_at_unix_ms: self.expires_at_unix_ms,
            remaining: self.deadline.saturating_duration_since(at),
        }
    }
}

/// A lease that ended, remembered so a late release or renew gets an exact
/// answer and a repeated release is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedLease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub outcome: Outcome,
    pub ended_at_unix_ms: u64,
}
