//! Builders for made-up histories: the events and status snapshots the
//! arbiter would emit, with the fields a test cares about and plausible
//! values for the rest. The history checker's tests use them, and so can
//! any other test that feeds it a history (the fault suite's checker).
//!
//! They take ids already checked (a test parses its literals once), so
//! nothing here can fail.

use std::time::Duration;

use crate::{
    event::{Event, EventKind},
    ids::{FencingToken, LeaseId, WatcherId},
    lease::Lease,
    product::{Outcome, ProductState},
    product_id::ProductId,
    status::{Counters, ProductStatus, Status},
};

/// The TTL [`lease`] gives (the arbiter's default).
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// A lease as a snapshot shows it. Its deadline is left unset (0), so a
/// checker learns no clock offset from it; a test that wants one sets
/// `expires_at_unix_ms` and `remaining`.
pub fn lease(
    lease_id: &LeaseId,
    tcin: &ProductId,
    watcher_id: &WatcherId,
    token: u64,
    granted_at_unix_ms: u64,
) -> Lease {
    Lease {
        lease_id: lease_id.clone(),
        tcin: tcin.clone(),
        watcher_id: watcher_id.clone(),
        token: FencingToken(token),
        ttl: LEASE_TTL,
        granted_at_unix_ms,
        expires_at_unix_ms: 0,
        remaining: Duration::ZERO,
    }
}

/// A product event: `kind` for `tcin`, from one state to another.
pub fn product_event(
    sequence: u64,
    at: u64,
    kind: EventKind,
    tcin: &ProductId,
    from: ProductState,
    to: ProductState,
) -> Event {
    Event::new(kind).product(tcin, from, to).at(sequence, at)
}

/// An event of `kind` about nothing in particular (PAUSED,
/// ARBITER_STARTED, CONFIG_RELOADED, ...).
pub fn plain(sequence: u64, at: u64, kind: EventKind) -> Event {
    Event::new(kind).at(sequence, at)
}

fn of_lease(kind: EventKind, l: &Lease) -> Event {
    Event::new(kind).lease(&l.lease_id, &l.tcin, &l.watcher_id, l.token)
}

/// The grant of `l`: its product goes from `from` to ATTEMPTING.
pub fn granted(sequence: u64, at: u64, l: &Lease, from: ProductState) -> Event {
    of_lease(EventKind::Granted, l)
        .product(&l.tcin, from, ProductState::Attempting)
        .at(sequence, at)
}

/// A renewal of `l` (no state changes).
pub fn renewed(sequence: u64, at: u64, l: &Lease) -> Event {
    of_lease(EventKind::Renewed, l).at(sequence, at)
}

/// The holder's release of `l` with `outcome`; its product goes from
/// ATTEMPTING to where the arbiter sends it in TEST_MODE (READY, or FAILED
/// after a failure).
pub fn released(sequence: u64, at: u64, l: &Lease, outcome: Outcome) -> Event {
    let to = match outcome {
        Outcome::Failed | Outcome::Expired => ProductState::Failed,
        Outcome::Purchased | Outcome::OutOfStock | Outcome::Aborted => ProductState::Ready,
    };
    of_lease(EventKind::Released, l)
        .product(&l.tcin, ProductState::Attempting, to)
        .outcome(outcome)
        .at(sequence, at)
}

/// The arbiter's expiry of `l`: its product goes from ATTEMPTING to FAILED.
pub fn expired(sequence: u64, at: u64, l: &Lease) -> Event {
    of_lease(EventKind::Expired, l)
        .product(&l.tcin, ProductState::Attempting, ProductState::Failed)
        .outcome(Outcome::Expired)
        .at(sequence, at)
}

/// A status at event `sequence`: `products` in priority order (1 = first),
/// all configured, in the states given; `lease` holding the slot. TEST_MODE,
/// next token 1, the rest empty.
pub fn status(
    sequence: u64,
    products: &[(ProductId, ProductState)],
    lease: Option<Lease>,
) -> Status {
    Status {
        lease,
        products: products
            .iter()
            .enumerate()
            .map(|(i, (tcin, state))| ProductStatus {
                tcin: tcin.clone(),
                name: format!("Product {tcin}"),
                priority: u32::try_from(i + 1).unwrap_or(u32::MAX),
                state: *state,
                purchases: 0,
                quantity: 1,
                configured: true,
                in_stock_at: Vec::new(),
                cooldown_remaining: Duration::ZERO,
                last_outcome: None,
                last_detail: String::new(),
                effective_poll_interval: None,
                price: None,
                held_back: String::new(),
            })
            .collect(),
        watchers: Vec::new(),
        test_mode: true,
        paused: false,
        counters: Counters::default(),
        next_token: FencingToken(1),
        last_event_sequence: sequence,
        lease_ttl: LEASE_TTL,
        stock_ttl: Duration::from_secs(10),
        failure_cooldown: Duration::from_secs(60),
        config_path: String::new(),
        poll_planning: false,
        budget: crate::BudgetStatus::none(),
    }
}
