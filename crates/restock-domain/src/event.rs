//! The arbiter's numbered transitions: what `WatchEvents` streams, what the
//! state file keeps of recent history, and what the history checker reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    ids::{FencingToken, LeaseId, WatcherId},
    product::{Outcome, ProductState},
    product_id::ProductId,
};

/// What kind of transition an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The slot was granted (a lease with a new fencing token).
    Granted,
    /// The holder ended its lease with an outcome.
    Released,
    /// The holder stopped renewing; the arbiter ended the lease.
    Expired,
    /// A product was reported in stock and waits for the slot.
    Queued,
    /// A queued product is no longer in stock anywhere (or was disabled).
    Unqueued,
    /// An operator reset a product.
    Reset,
    Paused,
    Resumed,
    WatcherJoined,
    WatcherLeft,
    ConfigReloaded,
    /// A failed product's cool-down ended.
    CooledDown,
    /// The arbiter (re)started; its detail says from what state.
    ArbiterStarted,
    /// The holder renewed its lease.
    Renewed,
    /// A watcher's stock source began blocking it (one per episode; the
    /// detail names the kind).
    SourceBlocked,
    /// That block ended.
    SourceUnblocked,
    /// A product in stock is held back by the spending limit (queued →
    /// over_budget; the detail says which limit).
    OverBudget,
    /// The spending limit began holding products back (one per episode:
    /// what the notifier alerts).
    BudgetExhausted,
    /// It holds none back any more and has room again: spend rolled off,
    /// a reservation was freed, a held product fits, or the limit was
    /// raised or lifted. (Held products merely going out of stock end
    /// nothing: the limit would still stop them.)
    BudgetAvailable,
    /// The limits changed (an operator's `SetBudget` with its reason, or
    /// the product config), or the spend record was reset.
    BudgetChanged,
}

impl EventKind {
    pub const ALL: [Self; 20] = [
        Self::Granted,
        Self::Released,
        Self::Expired,
        Self::Queued,
        Self::Unqueued,
        Self::Reset,
        Self::Paused,
        Self::Resumed,
        Self::WatcherJoined,
        Self::WatcherLeft,
        Self::ConfigReloaded,
        Self::CooledDown,
        Self::ArbiterStarted,
        Self::Renewed,
        Self::SourceBlocked,
        Self::SourceUnblocked,
        Self::OverBudget,
        Self::BudgetExhausted,
        Self::BudgetAvailable,
        Self::BudgetChanged,
    ];

    /// The upper-case name the protocol and the command-line tool show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "GRANTED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
            Self::Queued => "QUEUED",
            Self::Unqueued => "UNQUEUED",
            Self::Reset => "RESET",
            Self::Paused => "PAUSED",
            Self::Resumed => "RESUMED",
            Self::WatcherJoined => "WATCHER_JOINED",
            Self::WatcherLeft => "WATCHER_LEFT",
            Self::ConfigReloaded => "CONFIG_RELOADED",
            Self::CooledDown => "COOLED_DOWN",
            Self::ArbiterStarted => "ARBITER_STARTED",
            Self::Renewed => "RENEWED",
            Self::SourceBlocked => "SOURCE_BLOCKED",
            Self::SourceUnblocked => "SOURCE_UNBLOCKED",
            Self::OverBudget => "OVER_BUDGET",
            Self::BudgetExhausted => "BUDGET_EXHAUSTED",
            Self::BudgetAvailable => "BUDGET_AVAILABLE",
            Self::BudgetChanged => "BUDGET_CHANGED",
        }
    }

    /// Does this event end a lease?
    pub fn ends_lease(self) -> bool {
        matches!(self, Self::Released | Self::Expired)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One numbered transition. Which fields are set depends on the kind: a
/// lease event names the lease, its product, watcher and token; a product
/// event its product and the states before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub sequence: u64,
    pub unix_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcin: Option<ProductId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watcher_id: Option<WatcherId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<LeaseId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<FencingToken>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<ProductState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_state: Option<ProductState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Event {
    /// An event of `kind` with nothing else set; the builders below fill it
    /// in, and the arbiter numbers and stamps it when it is emitted.
    pub fn new(kind: EventKind) -> Self {
        Self {
            sequence: 0,
            unix_ms: 0,
            kind,
            tcin: None,
            watcher_id: None,
            lease_id: None,
            fencing_token: None,
            outcome: None,
            from_state: None,
            to_state: None,
            detail: String::new(),
        }
    }

    /// Numbers and stamps the event.
    pub fn at(mut self, sequence: u64, unix_ms: u64) -> Self {
        self.sequence = sequence;
        self.unix_ms = unix_ms;
        self
    }

    /// A product moving from one state to another.
    pub fn product(mut self, tcin: &ProductId, from: ProductState, to: ProductState) -> Self {
        self.tcin = Some(tcin.clone());
        self.from_state = Some(from);
        self.to_state = Some(to);
        self
    }

    /// The lease the event is about.
    pub fn lease(
        mut self,
        lease_id: &LeaseId,
        tcin: &ProductId,
        watcher_id: &WatcherId,
        token: FencingToken,
    ) -> Self {
        self.tcin = Some(tcin.clone());
        self.watcher_id = Some(watcher_id.clone());
        self.lease_id = Some(lease_id.clone());
        self.fencing_token = Some(token);
        self
    }

    pub fn watcher(mut self, w: &WatcherId) -> Self {
        self.watcher_id = Some(w.clone());
        self
    }

    pub fn outcome(mut self, o: Outcome) -> Self {
        self.outcome = Some(o);
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json_without_empty_fields() {
        let t = ProductId::parse("1").unwrap();
        let e = Event::new(EventKind::Queued)
            .product(&t, ProductState::Ready, ProductState::Queued)
            .at(7, 1_000);
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("lease_id"), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }

    #[test]
    fn kind_names_match_the_protocol() {
        assert_eq!(EventKind::WatcherJoined.as_str(), "WATCHER_JOINED");
        assert!(EventKind::Expired.ends_lease());
        assert!(!EventKind::Renewed.ends_lease());
        assert_eq!(EventKind::ALL.len(), 20);
        assert_eq!(EventKind::SourceBlocked.as_str(), "SOURCE_BLOCKED");
    }
}
