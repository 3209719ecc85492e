//! The saved-state format: what the state file ([`Snapshot`]) and each
//! journal record ([`Delta`]) hold, as JSON. Field names and tags are a
//! contract with every state file already written: add fields with
//! `#[serde(default)]`, never rename one. These types are the format only;
//! `saved.rs` makes them from the slot and the slot from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use restock_domain::{
    Counters, Event, FencingToken, LeaseId, Outcome, ProductId, ProductState, WatcherId,
};

use crate::limits::{ENDED_LEASES, IDEMPOTENCY_ENTRIES, SAVED_EVENT_BYTES, SAVED_EVENTS};

/// Format version of [`Snapshot`]. Version 2 added the journal (a snapshot
/// names the journal whose records follow it); version 1 files are read.
pub const SNAPSHOT_VERSION: u32 = 2;

/// The durable state, as written to the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// The journal whose records apply on top of this snapshot (0: none).
    #[serde(default)]
    pub journal: u64,
    pub saved_at_unix_ms: u64,
    pub next_fencing_token: u64,
    pub sequence_reserved: u64,
    pub paused: bool,
    pub products: BTreeMap<ProductId, SavedProduct>,
    pub lease: Option<SavedLease>,
    #[serde(default)]
    pub ended_leases: Vec<SavedEndedLease>,
    #[serde(default)]
    pub idempotency: Vec<SavedAnswer>,
    #[serde(default)]
    pub counters: Counters,
    #[serde(default)]
    pub events: Vec<Event>,
    /// The spending limit's record (absent in files from before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SavedBudget>,
}

impl Snapshot {
    /// Applies one journal record, keeping the same bounds as the arbiter
    /// (ended leases, idempotency answers, saved events).
    pub fn apply(&mut self, d: Delta) {
        self.saved_at_unix_ms = d.saved_at_unix_ms;
        self.next_fencing_token = d.next_fencing_token;
        self.sequence_reserved = d.sequence_reserved;
        self.paused = d.paused;
        self.lease = d.lease;
        self.counters = d.counters;
        if let Some(b) = d.budget {
            self.budget = (!b.is_empty()).then_some(b);
        }
        for t in &d.removed_products {
            self.products.remove(t);
        }
        self.products.extend(d.products);
        fn push_bounded<T>(v: &mut Vec<T>, new: Vec<T>, bound: usize) {
            v.extend(new);
            if v.len() > bound {
                v.drain(..v.len() - bound);
            }
        }
        push_bounded(&mut self.ended_leases, d.ended_leases, ENDED_LEASES);
        push_bounded(&mut self.idempotency, d.idempotency, IDEMPOTENCY_ENTRIES);
        push_bounded(&mut self.events, d.events, SAVED_EVENTS);
        let keep = saved_event_count(self.events.iter().rev());
        self.events.drain(..self.events.len() - keep);
    }
}

/// About how many bytes `e` takes in the saved JSON: the fixed part of an
/// event with every field set (names, numbers, states) and its strings.
/// An estimate, so that choosing what to save costs no encoding; what
/// matters is that [`Snapshot::apply`] and the arbiter's snapshot use the
/// same one, so a journal replayed gives exactly the state written whole.
pub fn saved_event_bytes(e: &Event) -> usize {
    const FIXED: usize = 200;
    FIXED
        + e.tcin.as_ref().map_or(0, |t| t.as_str().len())
        + e.watcher_id.as_ref().map_or(0, |w| w.as_str().len())
        + e.lease_id.as_ref().map_or(0, |l| l.as_str().len())
        + e.detail.len()
}

/// How many of `newest_first` (events, newest first) are saved: as many as
/// fit in [`SAVED_EVENT_BYTES`], at most [`SAVED_EVENTS`], and always the
/// newest one.
pub fn saved_event_count<'a>(newest_first: impl Iterator<Item = &'a Event>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for e in newest_first.take(SAVED_EVENTS) {
        bytes += saved_event_bytes(e);
        if bytes > SAVED_EVENT_BYTES && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// One journal record: what changed since the previous write (see
/// `SaveMarks::delta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The journal (and so the snapshot) this record belongs to; set by the
    /// store when it writes the record.
    pub journal: u64,
    pub saved_at_unix_ms: u64,
    pub next_fencing_token: u64,
    pub sequence_reserved: u64,
    pub paused: bool,
    pub lease: Option<SavedLease>,
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub products: BTreeMap<ProductId, SavedProduct>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_products: Vec<ProductId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_leases: Vec<SavedEndedLease>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotency: Vec<SavedAnswer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// The spending limit's record, whole (it is small and bounded), when
    /// it changed since the previous record; an empty one means it holds
    /// nothing any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SavedBudget>,
}

/// The spending limit's record as saved: every purchase kept (oldest
/// first), the reservation of the lease in flight, an operator's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBudget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spends: Vec<SavedSpend>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<SavedReservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<SavedOperatorLimits>,
    #[serde(default)]
    pub exhausted: bool,
}

impl SavedBudget {
    pub fn is_empty(&self) -> bool {
        self.spends.is_empty()
            && self.reservation.is_none()
            && self.operator.is_none()
            && !self.exhausted
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSpend {
    pub at_unix_ms: u64,
    pub cents: u64,
    pub purchases: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedReservation {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub price_cents: Option<u64>,
}

/// Limits as saved; `None` fields are no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLimits {
    pub max_spend_cents: Option<u64>,
    pub max_purchases: Option<u32>,
    pub window_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOperatorLimits {
    /// `None`: the operator lifted every limit.
    pub limits: Option<SavedLimits>,
    pub config_was: Option<SavedLimits>,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// A product as saved: its state (QUEUED saved as READY) and history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProduct {
    pub state: ProductState,
    pub purchases: u32,
    pub cooldown_until_unix_ms: Option<u64>,
    pub last_outcome: Option<Outcome>,
    #[serde(default)]
    pub last_detail: String,
}

/// The current lease as saved: its wall-clock deadline carries it across a
/// restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub fencing_token: FencingToken,
    pub ttl_ms: u64,
    pub granted_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    /// Informational: what was left when saved.
    pub remaining_ms: u64,
}

/// An `AcquirePurchase` answer as saved: a grant by its lease id, or the
/// refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAnswer {
    pub watcher_id: WatcherId,
    pub request_id: String,
    pub granted_lease_id: Option<LeaseId>,
    pub refusal: Option<SavedRefusal>,
}

/// A lease that ended, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEndedLease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub outcome: Outcome,
    pub ended_at_unix_ms: u64,
}

/// Why an `AcquirePurchase` was refused, as saved (its `reason` tag is the
/// protocol's reason string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SavedRefusal {
    AnotherPurchaseActive {
        holder_tcin: ProductId,
        holder_watcher_id: WatcherId,
    },
    HigherPriorityPending {
        pending_tcin: ProductId,
    },
    AlreadyPurchased {
        purchases: u32,
    },
    CoolingDown {
        retry_after_ms: u64,
    },
    Paused,
    Disabled,
    OverBudget {
        detail: String,
    },
}
