//! What the history checker reports: problems (a promise broken), warnings
//! (something it could not check), purchase cycles, and the notices it
//! hands back after each observation.

use serde::Serialize;

use crate::{
    event::{Event, EventKind},
    ids::{FencingToken, LeaseId, WatcherId},
    product::Outcome,
    product_id::ProductId,
};

/// The promises the checker holds a history to, one kind of problem each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A purchase switched to another product mid-cycle, or a product was
    /// granted while one of higher priority waited in stock.
    ProductSwitch,
    /// Two purchases at once: a grant while another lease was alive, or two
    /// products ATTEMPTING.
    ConcurrentAttempt,
    /// A product ATTEMPTING, or QUEUED with the slot free, for too long.
    StuckPurchase,
    /// A grant whose fencing token is not above every token before it.
    FencingTokenReused,
    /// An event of a lease after its end, or carrying another token than
    /// its grant: the arbiter accepted a stale lease or token.
    StaleLeaseAccepted,
    /// An event of a lease that was never granted, in a history seen from
    /// the arbiter's first event (so the grant cannot have been missed).
    LeaseNeverGranted,
}

impl ProblemKind {
    pub const ALL: [Self; 6] = [
        Self::ProductSwitch,
        Self::ConcurrentAttempt,
        Self::StuckPurchase,
        Self::FencingTokenReused,
        Self::StaleLeaseAccepted,
        Self::LeaseNeverGranted,
    ];

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Self::ProductSwitch => "product switch mid-cycle",
            Self::ConcurrentAttempt => "concurrent purchase attempt",
            Self::StuckPurchase => "stuck purchase",
            Self::FencingTokenReused => "fencing token reused",
            Self::StaleLeaseAccepted => "stale lease accepted",
            Self::LeaseNeverGranted => "lease never granted",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Arbiter time of the observation that showed it.
    pub at_unix_ms: u64,
    /// The event that showed it; `None` when a status snapshot or the
    /// passing of time did.
    pub sequence: Option<u64>,
    /// The product it is about (the one granted, stuck, or switched to).
    pub tcin: ProductId,
    pub detail: String,
}

/// Something the checker could not check or had to correct; not a problem
/// of the system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub at_unix_ms: u64,
    pub message: String,
}

/// How a purchase cycle ended, as far as the checker knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleEnd {
    /// The lease still holds the slot.
    Open,
    /// A RELEASED or EXPIRED was seen.
    Seen {
        at_unix_ms: u64,
        /// [`EventKind::Released`] or [`EventKind::Expired`].
        kind: EventKind,
        /// `None` when the event carried none.
        outcome: Option<Outcome>,
        /// The event's detail (a checkout's answer, why a grant was
        /// withdrawn, ...).
        detail: String,
    },
    /// The lease was gone by a status snapshot at `by_unix_ms`, without a
    /// RELEASED or EXPIRED seen for it.
    Unseen { by_unix_ms: u64 },
}

/// One purchase cycle: a lease from its grant to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// 1, 2, ... in order of grant.
    pub number: usize,
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub started_at_unix_ms: u64,
    /// False when the lease was granted before the checker watched (its
    /// start comes from the lease's grant time in a snapshot).
    pub start_observed: bool,
    /// The grant or the newest renewal seen: an expiry before this plus the
    /// lease's TTL came early.
    pub extended_at_unix_ms: u64,
    pub end: CycleEnd,
}

impl Cycle {
    /// Ended with a RELEASED or EXPIRED the checker saw.
    pub fn completed(&self) -> bool {
        matches!(self.end, CycleEnd::Seen { .. })
    }

    /// Still holding the slot.
    pub fn is_open(&self) -> bool {
        self.end == CycleEnd::Open
    }

    /// When it ended, or by when it was seen gone.
    pub fn ended_at_unix_ms(&self) -> Option<u64> {
        match self.end {
            CycleEnd::Open => None,
            CycleEnd::Seen { at_unix_ms, .. } => Some(at_unix_ms),
            CycleEnd::Unseen { by_unix_ms } => Some(by_unix_ms),
        }
    }

    /// The outcome its end carried; `None` while open, when the end was not
    /// seen, or when the event carried none.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.end {
            CycleEnd::Seen { outcome, .. } => outcome,
            _ => None,
        }
    }

    /// From grant to the end seen; `None` unless [`Cycle::completed`].
    pub fn duration_ms(&self) -> Option<u64> {
        match self.end {
            CycleEnd::Seen { at_unix_ms, .. } => {
                Some(at_unix_ms.saturating_sub(self.started_at_unix_ms))
            }
            _ => None,
        }
    }
}

/// What one observation produced, in order, for live output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// An event other than RENEWED.
    Transition(Event),
    CycleEnded(Cycle),
    Problem(Problem),
    Warning(Warning),
}
