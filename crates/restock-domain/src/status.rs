//! Everything the arbiter shows about itself (`GetStatus`, `restockctl
//! status`, the monitor's snapshots): the slot, every product, every
//! watcher, the counters and the mode.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    ids::{FencingToken, Tcin, WatcherId},
    lease::Lease,
    product::{Outcome, ProductState},
};

/// Running totals since the state was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub grants: u64,
    pub purchases: u64,
    pub failures: u64,
    pub expirations: u64,
    pub refusals: u64,
    pub observations: u64,
}

/// A product's line in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductStatus {
    pub tcin: Tcin,
    pub name: String,
    /// 1 = top priority; products not in the config rank after the listed
    /// ones.
    pub priority: u32,
    pub state: ProductState,
    pub purchases: u32,
    pub quantity: u32,
    /// Listed in the product config (not only reported by a watcher).
    pub configured: bool,
    /// Connected watchers that see it in stock now.
    pub in_stock_at: Vec<WatcherId>,
    pub cooldown_remaining: Duration,
    pub last_outcome: Option<Outcome>,
    pub last_detail: String,
    /// How often some connected watcher polls it, all together; `None`
    /// when none says it does.
    pub effective_poll_interval: Option<Duration>,
}

/// A watcher's line in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherStatus {
    pub watcher_id: WatcherId,
    pub connected: bool,
    pub last_report_unix_ms: u64,
    pub connected_since_unix_ms: u64,
    pub reports: u64,
    /// The products it says it polls.
    pub polling: Vec<Tcin>,
    /// Its `--poll-interval`, when it said.
    pub poll_interval: Option<Duration>,
    /// Its phase in the arbiter's poll plan, when it has one.
    pub poll_phase: Option<Duration>,
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The lease holding the slot, if any.
    pub lease: Option<Lease>,
    /// In priority order.
    pub products: Vec<ProductStatus>,
    pub watchers: Vec<WatcherStatus>,
    pub test_mode: bool,
    pub paused: bool,
    pub counters: Counters,
    /// The token the next grant gets.
    pub next_token: FencingToken,
    /// The newest event this status includes.
    pub last_event_sequence: u64,
    pub lease_ttl: Duration,
    pub stock_ttl: Duration,
    pub failure_cooldown: Duration,
    pub config_path: String,
    /// Whether the arbiter plans the watchers' polling.
    pub poll_planning: bool,
}

impl Status {
    pub fn product(&self, tcin: &Tcin) -> Option<&ProductStatus> {
        self.products.iter().find(|p| &p.tcin == tcin)
    }

    pub fn connected_watchers(&self) -> usize {
        self.watchers.iter().filter(|w| w.connected).count()
    }
}
