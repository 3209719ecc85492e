//! The one global purchase slot: products and their states, the lease and its
//! fencing token, connected watchers and what they see in stock, the event
//! history. Plain data and rules, no I/O and no gRPC types, so that every rule
//! is unit-tested directly with paused time.
//!
//! Every public method takes the current time ([`Now`]) and ends by settling
//! the slot: expiring a lease whose deadline passed, dropping stale stock
//! reports, ending cool-downs, and granting the best eligible product when the
//! slot is free. What the caller must do afterwards (persist, push messages to
//! watchers, publish events) is collected in [`Effects`] and taken with
//! [`Arbiter::take_effects`].
//!
//! Beside the rules: [`clock`] (one reading of both clocks), [`lease`] (the
//! slot's own record of a lease), [`view`] (what `GetStatus` shows). How the
//! state is saved and read back is the store's business (`store::saved`),
//! through the read accessors and [`Arbiter::resume`] at the end of this file.

mod budget;
mod clock;
mod lease;
mod view;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tokio::time::Instant;

use restock_domain::{
    BudgetLimits, Counters, Event, EventKind, FencingToken, LeaseId, Observation, Outcome, Price,
    PriceCheck, PriorityList, ProductId, ProductSpec, ProductState, SourceBlock, SourceBlockKind,
    WatcherId, duration::short,
};

pub use budget::{Budget, OperatorLimits, Reservation, Spend};
pub use clock::{Clock, Now};
pub use lease::{ActiveLease, EndedLease};

use crate::{
    bounded_log::{BoundedLog, BoundedMap},
    limits::{
        ENDED_LEASES, EVENT_HISTORY, IDEMPOTENCY_ENTRIES, MAX_PRODUCTS, MAX_WATCHERS,
        SEQUENCE_BLOCK,
    },
};

/// The timings and mode the arbiter runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// How long an in-stock report counts unless repeated.
    pub stock_ttl: Duration,
    /// How long a failed product waits before it is eligible again.
    pub failure_cooldown: Duration,
    /// A purchased product goes straight back to ready, so the cycle repeats.
    pub test_mode: bool,
}

/// Whole milliseconds of `d`, saturating.
pub fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The idempotency key of an `AcquirePurchase`: (watcher, request id).
pub type AnswerKey = (WatcherId, String);

/// Why the slot was not granted to an `AcquirePurchase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
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
    /// The spending limit holds it back; the detail says which limit.
    OverBudget {
        detail: String,
    },
}

impl Refusal {
    /// The machine-readable reason string of the protocol.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::AnotherPurchaseActive { .. } => "another_purchase_active",
            Self::HigherPriorityPending { .. } => "higher_priority_pending",
            Self::AlreadyPurchased { .. } => "already_purchased",
            Self::CoolingDown { .. } => "cooling_down",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
            Self::OverBudget { .. } => "over_budget",
        }
    }

    /// A sentence for people.
    pub fn detail(&self) -> String {
        match self {
            Self::AnotherPurchaseActive {
                holder_tcin,
                holder_watcher_id,
            } => format!(
                "the purchase slot is held by product {holder_tcin} (watcher {holder_watcher_id})"
            ),
            Self::HigherPriorityPending { pending_tcin } => format!(
                "product {pending_tcin} has a higher priority and is in stock, waiting for the slot"
            ),
            Self::AlreadyPurchased { purchases } => {
                format!("already purchased ({purchases} bought); reset the product to buy it again")
            }
            Self::CoolingDown { retry_after_ms } => format!(
                "the last attempt failed; the product is eligible again in {retry_after_ms} ms"
            ),
            Self::Paused => "the arbiter is paused: no purchase is granted".into(),
            Self::Disabled => "the product is disabled in the product config".into(),
            Self::OverBudget { detail } => detail.clone(),
        }
    }
}

/// The answer to an `AcquirePurchase`, remembered per request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireAnswer {
    Granted(ActiveLease),
    Refused(Refusal),
}

/// Why a renew, release or reset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// The lease exists (or existed) but is not the current one, or the token
    /// does not match it.
    #[error("{0}")]
    Stale(String),
    /// No lease with that id was ever granted (or it is long forgotten).
    #[error("no lease {0:?} is known to this arbiter")]
    UnknownLease(LeaseId),
    #[error("product {0} is not known to this arbiter")]
    UnknownProduct(ProductId),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Full(String),
}

/// A message for one watcher's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// The slot is this watcher's.
    Grant {
        watcher_id: WatcherId,
        conn: u64,
        lease: ActiveLease,
    },
    /// A lease this watcher held ended without its release.
    Revoked {
        watcher_id: WatcherId,
        lease_id: LeaseId,
        token: FencingToken,
        reason: String,
    },
    /// The product list changed: every connected watcher gets the new catalog.
    CatalogChanged,
}

/// What the caller must do after a call.
#[derive(Debug, Default)]
pub struct Effects {
    /// New events, in sequence order.
    pub events: Vec<Event>,
    /// Messages for watchers' streams.
    pub pushes: Vec<Push>,
    /// The state must be on disk before any answer to this call goes out.
    pub must_persist: bool,
    /// Something changed that should reach disk soon, but no answer depends
    /// on it.
    pub dirty: bool,
}

#[derive(Debug, Clone)]
struct Sighting {
    at: Instant,
}

/// One product's state. The durable part is read through its accessors by
/// the saved-state code (`store::saved`); the sightings are not saved.
#[derive(Debug, Clone)]
pub struct Product {
    state: ProductState,
    purchases: u32,
    /// Monotonic and wall-clock end of the cool-down of a failed product.
    cooldown_until: Option<(Instant, u64)>,
    last_outcome: Option<Outcome>,
    last_detail: String,
    /// Connected watchers that reported it in stock, and when.
    sightings: BTreeMap<WatcherId, Sighting>,
}

impl Product {
    fn new() -> Self {
        Self::restored(ProductState::Ready, 0, None, None, String::new())
    }

    /// A product as read back after a restart, with no sightings (watchers
    /// report again).
    pub fn restored(
        state: ProductState,
        purchases: u32,
        cooldown_until: Option<(Instant, u64)>,
        last_outcome: Option<Outcome>,
        last_detail: String,
    ) -> Self {
        Self {
            state,
            purchases,
            cooldown_until,
            last_outcome,
            last_detail,
            sightings: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> ProductState {
        self.state
    }

    pub fn purchases(&self) -> u32 {
        self.purchases
    }

    /// The wall-clock end of the cool-down of a failed product.
    pub fn cooldown_until_unix_ms(&self) -> Option<u64> {
        self.cooldown_until.map(|(_, u)| u)
    }

    pub fn last_outcome(&self) -> Option<Outcome> {
        self.last_outcome
    }

    pub fn last_detail(&self) -> &str {
        &self.last_detail
    }
}

#[derive(Debug, Clone)]
struct Watcher {
    /// The id of its open stream; `None` when disconnected.
    conn: Option<u64>,
    connected_since_unix_ms: u64,
    last_report_unix_ms: u64,
    last_seen: Instant,
    reports: u64,
    polling: Vec<ProductId>,
    /// Its `--poll-interval`, once it said (kept across reconnects).
    poll_interval: Option<Duration>,
    /// Its stock source refusing it, as its last report said; kept while
    /// it is away (it reports again when it comes back). Not saved.
    source_block: Option<SourceBlock>,
}

/// The whole arbiter state. See the module documentation.
#[derive(Debug)]
pub struct Arbiter {
    timing: Timing,
    catalog: PriorityList,
    products: HashMap<ProductId, Product>,
    watchers: HashMap<WatcherId, Watcher>,
    lease: Option<ActiveLease>,
    next_token: u64,
    paused: bool,
    next_sequence: u64,
    sequence_reserved: u64,
    /// Every transition, newest last, for `WatchEvents` and the state file.
    history: BoundedLog<Event>,
    /// Recently ended leases, for exact answers to late renews and releases.
    ended: BoundedLog<EndedLease>,
    /// `AcquirePurchase` answers by (watcher, request id), for retries.
    answers: BoundedMap<AnswerKey, AcquireAnswer>,
    counters: Counters,
    /// The spending limit's record (saved).
    budget: Budget,
    /// The newest price a watcher reported for each tracked product (not
    /// saved: watchers report again): what a grant reserves. Kept apart
    /// from [`Product`] so the products scanned on every report stay small.
    prices: HashMap<ProductId, Price>,
    /// Why the spending limit holds each OVER_BUDGET product back.
    held_back: HashMap<ProductId, String>,
    /// The room the budget had at the last settle (not saved): room that
    /// grows ends a `BUDGET_EXHAUSTED` episode.
    budget_room: Option<(u64, u32)>,
    /// The newest reading of the clocks, to turn the budget's wall-clock
    /// roll-off into a monotonic deadline.
    last_now: Option<Now>,
    /// The limits changed: the next settle looks at every product even if
    /// none is in force now.
    budget_lifted: bool,
    effects: Effects,
}

impl Arbiter {
    /// A fresh arbiter: every configured product ready, the slot free.
    pub fn new(catalog: PriorityList, timing: Timing, now: Now) -> Self {
        let mut a = Self::new_empty(catalog, timing);
        a.add_configured_products();
        a.emit(
            now,
            Event::new(EventKind::ArbiterStarted).detail("fresh state"),
        );
        a.effects.must_persist = true;
        a
    }

    fn add_configured_products(&mut self) {
        for p in self.catalog.products() {
            self.products
                .entry(p.tcin.clone())
                .or_insert_with(Product::new);
        }
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn catalog(&self) -> &PriorityList {
        &self.catalog
    }

    pub fn lease(&self) -> Option<&ActiveLease> {
        self.lease.as_ref()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Takes what the caller has to do since the last call.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// Events with a sequence >= `from` that are still in memory.
    #[cfg(test)]
    pub fn events_from(&self, from: u64) -> Vec<Event> {
        self.history_from(from).cloned().collect()
    }

    /// Events with a sequence >= `from` that are still in memory, oldest
    /// first, without copying them.
    pub fn history_from(&self, from: u64) -> impl Iterator<Item = &Event> {
        self.history
            .iter_from(self.history.partition_point(|e| e.sequence < from))
    }

    /// The sequence number of the newest event (0 when none).
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    /// The earliest moment something happens by itself (a lease expires, a
    /// report goes stale, a cool-down ends): the caller calls [`Self::tick`]
    /// then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.lease.as_ref().map(|l| l.deadline);
        let mut consider = |t: Instant| {
            next = Some(match next {
                Some(n) if n <= t => n,
                _ => t,
            })
        };
        for p in self.products.values() {
            if let Some((until, _)) = p.cooldown_until {
                consider(until);
            }
            for s in p.sightings.values() {
                consider(s.at + self.timing.stock_ttl);
            }
        }
        if let Some(now) = self.last_now
            && let (Some(limits), _) = self.budget_limits()
            && let Some(at) = self.budget.next_roll_off(limits.window, now.unix_ms)
        {
            consider(now.mono + Duration::from_millis(at.saturating_sub(now.unix_ms)));
        }
        next
    }

    // ----- events -----

    fn emit(&mut self, now: Now, mut event: Event) {
        event.sequence = self.next_sequence;
        event.unix_ms = now.unix_ms;
        self.next_sequence += 1;
        if self.next_sequence > self.sequence_reserved {
            // Reserve the next block on disk before any of its numbers is
            // shown, so a crash never makes a number repeat.
            self.sequence_reserved = self.next_sequence - 1 + SEQUENCE_BLOCK;
            self.effects.must_persist = true;
        }
        self.history.push(event.clone());
        self.effects.events.push(event);
        self.effects.dirty = true;
    }

    // ----- products -----

    fn product_mut(&mut self, tcin: &ProductId) -> Result<&mut Product, SlotError> {
        if !self.products.contains_key(tcin) {
            if self.products.len() >= MAX_PRODUCTS {
                return Err(SlotError::Full(format!(
                    "the arbiter already tracks {MAX_PRODUCTS} products; product {tcin} is refused"
                )));
            }
            self.products.insert(tcin.clone(), Product::new());
        }
        Ok(self.products.get_mut(tcin).expect("inserted above"))
    }

    fn spec(&self, tcin: &ProductId) -> Option<&ProductSpec> {
        self.catalog.get(tcin)
    }

    fn enabled(&self, tcin: &ProductId) -> bool {
        self.spec(tcin).is_none_or(|s| s.enabled)
    }

    /// Is the product in stock at some connected watcher, fresh enough?
    fn in_stock(&self, p: &Product, now: Now) -> bool {
        p.sightings
            .values()
            .any(|s| now.mono < s.at + self.timing.stock_ttl)
    }

    /// Moves a READY/QUEUED product to the state its sightings say.
    fn requeue(&mut self, now: Now, tcin: &ProductId, why: &str) {
        let Some(p) = self.products.get(tcin) else {
            return;
        };
        let should_queue = self.in_stock(p, now) && self.enabled(tcin);
        let from = p.state;
        let to = match (from, should_queue) {
            (ProductState::Ready, true) => ProductState::Queued,
            (ProductState::Queued | ProductState::OverBudget, false) => ProductState::Ready,
            _ => return,
        };
        self.products.get_mut(tcin).expect("checked").state = to;
        if from == ProductState::OverBudget {
            self.held_back.remove(tcin);
        }
        let kind = if to == ProductState::Queued {
            EventKind::Queued
        } else {
            EventKind::Unqueued
        };
        self.emit(now, Event::new(kind).product(tcin, from, to).detail(why));
    }

    /// Products in priority order.
    fn ranked(&self) -> Vec<&ProductId> {
        let mut ids: Vec<&ProductId> = self.products.keys().collect();
        ids.sort_by_key(|t| self.catalog.rank_key(t));
        ids
    }

    // ----- settling -----

    /// Applies everything that happens by itself up to `now`, then grants the
    /// slot if it is free.
    pub fn tick(&mut self, now: Now) {
        self.settle(now);
    }

    fn settle(&mut self, now: Now) {
        // An expired lease frees the slot first.
        if let Some(lease) = &self.lease
            && now.mono >= lease.deadline
        {
            let lease = self.lease.take().expect("checked");
            self.end_lease(
                now,
                lease,
                Outcome::Expired,
                "lease expired: the holder stopped renewing".into(),
                None,
            );
        }
        // Stale sightings, and cool-downs that ended.
        let ttl = self.timing.stock_ttl;
        let mut touched = Vec::new();
        let mut cooled = Vec::new();
        for (tcin, p) in self.products.iter_mut() {
            let before = p.sightings.len();
            p.sightings.retain(|_, s| now.mono < s.at + ttl);
            if p.sightings.len() != before {
                touched.push(tcin.clone());
            }
            if let Some((until, _)) = p.cooldown_until
                && now.mono >= until
            {
                p.cooldown_until = None;
                if p.state == ProductState::Failed {
                    cooled.push(tcin.clone());
                }
            }
        }
        for tcin in cooled {
            self.products.get_mut(&tcin).expect("exists").state = ProductState::Ready;
            self.emit(
                now,
                Event::new(EventKind::CooledDown).product(
                    &tcin,
                    ProductState::Failed,
                    ProductState::Ready,
                ),
            );
            self.effects.must_persist = true;
            self.requeue(now, &tcin, "in stock after its cool-down");
        }
        for tcin in touched {
            self.requeue(now, &tcin, "in-stock report went stale");
        }
        self.apply_budget(now);
        if self.grant_next(now) {
            // The grant's reservation may leave no room for others.
            self.apply_budget(now);
        }
    }

    // ----- the spending limit -----

    /// The limits in force (the product config's, or an operator's that
    /// replaced them), and where they come from.
    pub fn budget_limits(&self) -> (Option<BudgetLimits>, restock_domain::BudgetSource) {
        self.budget.limits(self.catalog.budget())
    }

    /// The spending limit's record.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Why the budget would not let `tcin` be granted now; `None` when it
    /// fits (or no limit is in force).
    fn over_budget(&self, now: Now, tcin: &ProductId) -> Option<String> {
        let (Some(limits), _) = self.budget_limits() else {
            return None;
        };
        let price = self.prices.get(tcin).copied();
        self.budget.why_not(&limits, price, now.unix_ms)
    }

    /// Rolls spend out of the window, then moves products in stock
    /// between QUEUED and OVER_BUDGET as the budget (counting the
    /// reservation in flight) has room for them, and opens or ends the
    /// episode the notifier alerts: one `BUDGET_EXHAUSTED` when the limit
    /// starts holding products back, one `BUDGET_AVAILABLE` when room
    /// comes back and nothing is held back any more.
    fn apply_budget(&mut self, now: Now) {
        self.last_now = Some(now);
        let (limits, _) = self.budget_limits();
        // Without a limit nothing is held back: the pass is needed only
        // once after the limits were lifted (to let held products go and
        // end the episode). This keeps settling a report as cheap as it
        // was for the arbiters that set no budget.
        if limits.is_none() && !self.budget.exhausted() && !self.budget_lifted {
            return;
        }
        self.budget_lifted = false;
        if self
            .budget
            .roll_off(limits.and_then(|l| l.window), now.unix_ms)
        {
            self.effects.must_persist = true;
        }
        let mut let_through = false;
        let ids: Vec<ProductId> = self
            .products
            .iter()
            .filter(|(_, p)| matches!(p.state, ProductState::Queued | ProductState::OverBudget))
            .map(|(t, _)| t.clone())
            .collect();
        for tcin in ids {
            let why = self.over_budget(now, &tcin);
            let p = self.products.get_mut(&tcin).expect("listed above");
            match (p.state, why) {
                (ProductState::Queued, Some(why)) => {
                    p.state = ProductState::OverBudget;
                    self.held_back.insert(tcin.clone(), why.clone());
                    self.emit(
                        now,
                        Event::new(EventKind::OverBudget)
                            .product(&tcin, ProductState::Queued, ProductState::OverBudget)
                            .detail(why),
                    );
                }
                (ProductState::OverBudget, Some(why)) => {
                    self.held_back.insert(tcin, why);
                }
                (ProductState::OverBudget, None) => {
                    p.state = ProductState::Queued;
                    self.held_back.remove(&tcin);
                    let_through = true;
                    self.emit(
                        now,
                        Event::new(EventKind::Queued)
                            .product(&tcin, ProductState::OverBudget, ProductState::Queued)
                            .detail("the budget has room for it again"),
                    );
                }
                _ => {}
            }
        }
        let held = self
            .products
            .values()
            .filter(|p| p.state == ProductState::OverBudget)
            .count();
        let room = self.budget.room(limits.as_ref(), now.unix_ms);
        let grew = self
            .budget_room
            .is_some_and(|(c, n)| room.0 > c || room.1 > n);
        self.budget_room = Some(room);
        if held > 0 && !self.budget.exhausted() {
            self.budget.set_exhausted(true);
            self.effects.must_persist = true;
            let detail = format!(
                "the spending limit ({}) holds back {held} product{} in stock",
                limits.map_or_else(|| "none".to_owned(), |l| l.describe()),
                if held == 1 { "" } else { "s" }
            );
            self.emit(now, Event::new(EventKind::BudgetExhausted).detail(detail));
        } else if held == 0 && self.budget.exhausted() && (let_through || grew || limits.is_none())
        {
            self.budget.set_exhausted(false);
            self.effects.must_persist = true;
            let detail = match limits {
                Some(l) => format!("the spending limit ({}) has room again", l.describe()),
                None => "no spending limit is in force".to_owned(),
            };
            self.emit(now, Event::new(EventKind::BudgetAvailable).detail(detail));
        }
    }

    /// The spend of a lease that ended: a purchase is spend (at the price
    /// the checkout paid, else the one reserved); an expired lease counts
    /// as spent too, since its holder went silent mid-checkout and may
    /// have bought (fail closed: an operator resets it when it did not);
    /// any other outcome frees the reservation.
    fn settle_reservation(
        &mut self,
        now: Now,
        lease: &ActiveLease,
        outcome: Outcome,
        paid: Option<Price>,
    ) -> Option<String> {
        let reserved = self.budget.take_reservation(&lease.lease_id);
        // A lease without a reservation that expires was never pushed
        // (`expire_unpushed` took it) or comes from a state written before
        // budgets: no checkout of it is known to have run.
        let counts =
            outcome == Outcome::Purchased || (outcome == Outcome::Expired && reserved.is_some());
        if !counts {
            return None;
        }
        let price = paid.or_else(|| reserved.as_ref().and_then(|r| r.price));
        let window = self.budget_limits().0.and_then(|l| l.window);
        self.budget.record(
            Spend {
                at_unix_ms: now.unix_ms,
                cents: price.map_or(0, Price::cents),
                purchases: 1,
            },
            budget::merge_span(window),
        );
        Some(match (outcome, price) {
            (Outcome::Expired, Some(p)) => format!(
                "; {p} counted as spent (the checkout may have bought; reset the budget if it did not)"
            ),
            (Outcome::Expired, None) => {
                "; counted as a purchase (the checkout may have bought)".to_owned()
            }
            (_, Some(p)) => format!("; {p} spent"),
            (_, None) => "; price unknown, counted as a purchase".to_owned(),
        })
    }

    /// `SetBudget`: an operator replaces the limits (`Some(None)` lifts
    /// them all), goes back to the product config's (`use_config`), and/or
    /// forgets the spend recorded so far (`reset_spend`). The reason goes
    /// into the event history.
    pub fn set_budget(
        &mut self,
        now: Now,
        limits: Option<Option<BudgetLimits>>,
        use_config: bool,
        reset_spend: bool,
        reason: &str,
    ) -> Result<(), SlotError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(SlotError::Invalid(
                "a reason is required: it goes into the event history".into(),
            ));
        }
        if use_config && limits.is_some() {
            return Err(SlotError::Invalid(
                "give new limits or go back to the product config's, not both".into(),
            ));
        }
        if !use_config && limits.is_none() && !reset_spend {
            return Err(SlotError::Invalid(
                "nothing to do: give new limits, go back to the product config's, or reset the spend"
                    .into(),
            ));
        }
        if let Some(Some(l)) = &limits
            && !l.limits_anything()
        {
            return Err(SlotError::Invalid(
                "the new budget names neither max_spend nor max_purchases; to lift every limit say so (no limits)".into(),
            ));
        }
        self.settle(now);
        let mut did = Vec::new();
        if let Some(new) = limits {
            self.budget.set_operator(Some(OperatorLimits {
                limits: new,
                config_was: self.catalog.budget().copied(),
                reason: reason.to_owned(),
                at_unix_ms: now.unix_ms,
            }));
            did.push(match new {
                Some(l) => format!("limits set to {}", l.describe()),
                None => "every limit lifted".to_owned(),
            });
        }
        if use_config {
            self.budget.set_operator(None);
            did.push(match self.catalog.budget() {
                Some(l) => format!("back to the product config's limits ({})", l.describe()),
                None => "back to the product config, which sets no limit".to_owned(),
            });
        }
        if reset_spend {
            let t = self.budget.totals(None, now.unix_ms);
            self.budget.reset_spends();
            did.push(format!(
                "spend record reset ({} over {} purchases forgotten)",
                Price::from_cents(t.spent),
                t.purchases
            ));
        }
        self.budget_lifted = true;
        self.emit(
            now,
            Event::new(EventKind::BudgetChanged).detail(format!("{}: {reason}", did.join("; "))),
        );
        self.effects.must_persist = true;
        self.settle(now);
        Ok(())
    }

    /// When the slot is free and not paused, grants the best queued product
    /// to the connected watcher that saw it most recently.
    fn grant_next(&mut self, now: Now) -> bool {
        if self.lease.is_some() || self.paused {
            return false;
        }
        let pick = self.ranked().into_iter().find_map(|tcin| {
            let p = &self.products[tcin];
            if p.state != ProductState::Queued {
                return None;
            }
            p.sightings
                .iter()
                .filter(|(w, _)| self.watchers.get(*w).is_some_and(|w| w.conn.is_some()))
                .max_by(|a, b| a.1.at.cmp(&b.1.at).then_with(|| b.0.cmp(a.0)))
                .map(|(w, _)| (tcin.clone(), w.clone()))
        });
        if let Some((tcin, watcher_id)) = pick {
            let conn = self.watchers[&watcher_id].conn.expect("filtered");
            let lease = self.grant(now, &tcin, &watcher_id, "pushed on the watcher's stream");
            self.effects.pushes.push(Push::Grant {
                watcher_id,
                conn,
                lease,
            });
            return true;
        }
        false
    }

    fn grant(
        &mut self,
        now: Now,
        tcin: &ProductId,
        watcher_id: &WatcherId,
        how: &str,
    ) -> ActiveLease {
        let token = FencingToken(self.next_token);
        self.next_token += 1;
        let ttl = self.timing.lease_ttl;
        let lease = ActiveLease {
            lease_id: LeaseId::parse(&format!(
                "lease-{}-{}",
                token.0,
                uuid::Uuid::new_v4().simple()
            ))
            .expect("lease-<token>-<hex> is a valid lease id"),
            tcin: tcin.clone(),
            watcher_id: watcher_id.clone(),
            token,
            ttl,
            granted_at_unix_ms: now.unix_ms,
            deadline: now.mono + ttl,
            expires_at_unix_ms: now.unix_ms + ms(ttl),
        };
        let p = self.products.get_mut(tcin).expect("granted products exist");
        let from = p.state;
        p.state = ProductState::Attempting;
        let price = self.prices.get(tcin).copied();
        self.budget.reserve(Reservation {
            lease_id: lease.lease_id.clone(),
            tcin: tcin.clone(),
            price,
        });
        self.lease = Some(lease.clone());
        self.counters.grants += 1;
        self.emit(
            now,
            lease
                .event(EventKind::Granted)
                .product(tcin, from, ProductState::Attempting)
                .detail(how),
        );
        self.effects.must_persist = true;
        lease
    }

    /// Ends the (already taken) lease with an outcome and moves its product on.
    fn end_lease(
        &mut self,
        now: Now,
        lease: ActiveLease,
        outcome: Outcome,
        mut detail: String,
        paid: Option<Price>,
    ) {
        // The holder's detail is kept as it said it; what the budget
        // counted is added only while a limit is in force.
        if let Some(spend) = self.settle_reservation(now, &lease, outcome, paid)
            && self.budget_limits().0.is_some()
        {
            detail.push_str(&spend);
        }
        let test_mode = self.timing.test_mode;
        let cooldown = self.timing.failure_cooldown;
        let quantity = self.spec(&lease.tcin).map_or(1, |s| s.quantity);
        let p = self
            .products
            .get_mut(&lease.tcin)
            .expect("leased products exist");
        let from = p.state;
        p.last_outcome = Some(outcome);
        p.last_detail = detail.clone();
        p.state = match outcome {
            Outcome::Purchased => {
                p.purchases = p.purchases.saturating_add(1);
                if test_mode || p.purchases < quantity {
                    ProductState::Ready
                } else {
                    ProductState::Purchased
                }
            }
            Outcome::Failed | Outcome::Expired => {
                p.cooldown_until = Some((now.mono + cooldown, now.unix_ms + ms(cooldown)));
                ProductState::Failed
            }
            Outcome::OutOfStock => {
                // The holder saw it out of stock: wait for a fresh report.
                p.sightings.clear();
                ProductState::Ready
            }
            Outcome::Aborted => ProductState::Ready,
        };
        let to = p.state;
        match outcome {
            Outcome::Purchased => self.counters.purchases += 1,
            Outcome::Expired => {
                self.counters.expirations += 1;
                self.counters.failures += 1;
            }
            Outcome::Failed => self.counters.failures += 1,
            _ => {}
        }
        let kind = if outcome == Outcome::Expired {
            EventKind::Expired
        } else {
            EventKind::Released
        };
        let mut event = lease
            .event(kind)
            .product(&lease.tcin, from, to)
            .detail(detail);
        event.outcome = Some(outcome);
        self.emit(now, event);
        if outcome == Outcome::Expired
            && self
                .watchers
                .get(&lease.watcher_id)
                .is_some_and(|w| w.conn.is_some())
        {
            self.effects.pushes.push(Push::Revoked {
                watcher_id: lease.watcher_id.clone(),
                lease_id: lease.lease_id.clone(),
                token: lease.token,
                reason: "expired".into(),
            });
        }
        self.ended.push(EndedLease {
            lease_id: lease.lease_id,
            tcin: lease.tcin.clone(),
            watcher_id: lease.watcher_id,
            token: lease.token,
            outcome,
            ended_at_unix_ms: now.unix_ms,
        });
        self.effects.must_persist = true;
        self.requeue(now, &lease.tcin, "still in stock");
    }

    // ----- calls -----

    /// `AcquirePurchase`: grants the slot for `tcin`, or says why not.
    pub fn acquire(
        &mut self,
        now: Now,
        tcin: &ProductId,
        watcher_id: &WatcherId,
        request_id: &str,
    ) -> Result<AcquireAnswer, SlotError> {
        self.settle(now);
        let key = (!request_id.is_empty()).then(|| (watcher_id.clone(), request_id.to_owned()));
        if let Some(key) = &key
            && let Some(previous) = self.answers.get(key)
        {
            return Ok(match previous {
                // The lease as it is now: still running, or ended.
                AcquireAnswer::Granted(l) => AcquireAnswer::Granted(
                    match self.lease.as_ref().filter(|cur| cur.lease_id == l.lease_id) {
                        Some(current) => current.clone(),
                        None => self.as_ended(l, now),
                    },
                ),
                refused => refused.clone(),
            });
        }
        let new_product = !self.products.contains_key(tcin);
        self.product_mut(tcin)?;
        let answer = match self.refusal(now, tcin) {
            Some(r) => {
                self.counters.refusals += 1;
                if new_product {
                    // A refused request for an id never seen before leaves no
                    // trace, so random ids cannot fill the product table.
                    self.products.remove(tcin);
                }
                AcquireAnswer::Refused(r)
            }
            None => AcquireAnswer::Granted(self.grant(now, tcin, watcher_id, "AcquirePurchase")),
        };
        if let Some(key) = key {
            self.answers.insert(key, answer.clone());
            self.effects.must_persist = true;
        }
        Ok(answer)
    }

    /// A lease that is no longer the current one, as a retry of its
    /// `AcquirePurchase` shows it: nothing left, and ending when it ended
    /// (released, expired or withdrawn), or by `now` if that is forgotten.
    fn as_ended(&self, lease: &ActiveLease, now: Now) -> ActiveLease {
        let ended_at = self
            .ended
            .iter()
            .rev()
            .find(|e| e.lease_id == lease.lease_id)
            .map_or(lease.expires_at_unix_ms.min(now.unix_ms), |e| {
                e.ended_at_unix_ms
            });
        ActiveLease {
            deadline: lease.deadline.min(now.mono),
            expires_at_unix_ms: ended_at,
            ..lease.clone()
        }
    }

    fn refusal(&self, now: Now, tcin: &ProductId) -> Option<Refusal> {
        if self.paused {
            return Some(Refusal::Paused);
        }
        if !self.enabled(tcin) {
            return Some(Refusal::Disabled);
        }
        let p = &self.products[tcin];
        match p.state {
            ProductState::Purchased => {
                return Some(Refusal::AlreadyPurchased {
                    purchases: p.purchases,
                });
            }
            ProductState::Failed => {
                let left = p.cooldown_until.map_or(Duration::ZERO, |(u, _)| {
                    u.saturating_duration_since(now.mono)
                });
                return Some(Refusal::CoolingDown {
                    retry_after_ms: ms(left),
                });
            }
            _ => {}
        }
        let my_rank = self.catalog.rank_key(tcin);
        if let Some(better) = self.ranked().into_iter().find(|t| {
            *t != tcin
                && self.catalog.rank_key(t) < my_rank
                && self.products[*t].state == ProductState::Queued
        }) {
            return Some(Refusal::HigherPriorityPending {
                pending_tcin: better.clone(),
            });
        }
        if let Some(l) = &self.lease {
            return Some(Refusal::AnotherPurchaseActive {
                holder_tcin: l.tcin.clone(),
                holder_watcher_id: l.watcher_id.clone(),
            });
        }
        if let Some(detail) = self.over_budget(now, tcin) {
            return Some(Refusal::OverBudget { detail });
        }
        None
    }

    fn check_current(&self, lease_id: &LeaseId, token: FencingToken) -> Result<(), SlotError> {
        match &self.lease {
            Some(l) if &l.lease_id == lease_id && l.token == token => Ok(()),
            Some(l) if &l.lease_id == lease_id => Err(SlotError::Stale(format!(
                "lease {lease_id} has fencing token {}, not {token}",
                l.token
            ))),
            current => {
                let now_holder = current.as_ref().map_or_else(
                    || "the slot is free".to_owned(),
                    |l| {
                        format!(
                            "the slot is now held by product {} with token {}",
                            l.tcin, l.token
                        )
                    },
                );
                match self.ended.iter().rev().find(|e| &e.lease_id == lease_id) {
                    Some(e) => Err(SlotError::Stale(format!(
                        "lease {lease_id} (token {}) already ended: {}; {now_holder}",
                        e.token,
                        e.outcome.as_str()
                    ))),
                    None => Err(SlotError::UnknownLease(lease_id.clone())),
                }
            }
        }
    }

    /// `RenewLease`: extends the current lease by its TTL.
    pub fn renew(
        &mut self,
        now: Now,
        lease_id: &LeaseId,
        token: FencingToken,
    ) -> Result<ActiveLease, SlotError> {
        self.settle(now);
        self.check_current(lease_id, token)?;
        let ttl = self.timing.lease_ttl;
        let lease = self.lease.as_mut().expect("checked");
        lease.deadline = now.mono + ttl;
        lease.expires_at_unix_ms = now.unix_ms + ms(ttl);
        lease.ttl = ttl;
        let lease = lease.clone();
        self.emit(now, lease.event(EventKind::Renewed));
        self.effects.must_persist = true;
        Ok(lease)
    }

    /// `ReleasePurchase`: ends the current lease with the checkout's outcome.
    /// Returns `false` for a harmless repeat of a release already done.
    #[cfg(test)]
    pub fn release(
        &mut self,
        now: Now,
        lease_id: &LeaseId,
        token: FencingToken,
        outcome: Outcome,
        detail: &str,
    ) -> Result<(bool, ProductState), SlotError> {
        self.release_paid(now, lease_id, token, outcome, detail, None)
    }

    /// [`Self::release`] with what a purchase paid, when the checkout
    /// said (counted against the budget instead of the reserved price).
    pub fn release_paid(
        &mut self,
        now: Now,
        lease_id: &LeaseId,
        token: FencingToken,
        outcome: Outcome,
        detail: &str,
        paid: Option<Price>,
    ) -> Result<(bool, ProductState), SlotError> {
        if outcome == Outcome::Expired {
            return Err(SlotError::Invalid(
                "outcome EXPIRED is set by the arbiter only; release with PURCHASED, FAILED, OUT_OF_STOCK or ABORTED".into(),
            ));
        }
        self.settle(now);
        if let Err(e) = self.check_current(lease_id, token) {
            // A repeat of the very same release is harmless.
            if let Some(done) = self.ended.iter().rev().find(|e| &e.lease_id == lease_id)
                && done.token == token
                && done.outcome == outcome
            {
                let state = self
                    .products
                    .get(&done.tcin)
                    .map_or(ProductState::Ready, |p| p.state);
                return Ok((false, state));
            }
            return Err(e);
        }
        let lease = self.lease.take().expect("checked");
        let tcin = lease.tcin.clone();
        self.end_lease(now, lease, outcome, detail.to_owned(), paid);
        let state = self.products[&tcin].state;
        self.settle(now);
        Ok((true, state))
    }

    /// A grant could not be put on the watcher's stream (it closed, or it is
    /// not reading): the watcher never saw it, so the lease is withdrawn at
    /// once instead of blocking the slot for a whole TTL, the stream is
    /// treated as gone, and the next grant is made.
    pub fn abandon_grant(
        &mut self,
        now: Now,
        watcher_id: &WatcherId,
        conn: u64,
        lease_id: &LeaseId,
    ) {
        self.disconnect(now, watcher_id, conn, "its stream could not take a grant");
        if self.lease.as_ref().is_some_and(|l| &l.lease_id == lease_id) {
            let lease = self.lease.take().expect("checked");
            self.end_lease(
                now,
                lease,
                Outcome::Aborted,
                "grant could not be delivered to the watcher".into(),
                None,
            );
        }
        self.settle(now);
    }

    /// A grant whose lease is (nearly) over by the time its write finished
    /// (a slow fsync or etcd txn, a paused process): pushing it would let
    /// its holder start a checkout it could not finish before the deadline,
    /// or after it, while the next holder is granted. So it is never
    /// pushed: the lease ends as expired at once and the next product is
    /// granted, in the same batch.
    pub fn expire_unpushed(&mut self, now: Now, lease_id: &LeaseId) {
        if self.lease.as_ref().is_some_and(|l| &l.lease_id == lease_id) {
            let lease = self.lease.take().expect("checked");
            let left = ms(lease.remaining(now));
            // Never pushed, so no checkout ran: nothing was spent.
            self.budget.take_reservation(&lease.lease_id);
            self.end_lease(
                now,
                lease,
                Outcome::Expired,
                format!(
                    "lease expired before it could be pushed: the write that held the grant left {left} ms of it, less than its holder's safety margin"
                ),
                None,
            );
        }
        self.settle(now);
    }

    /// A watcher opened its stream. A second stream under the same id
    /// replaces the first (`conn` tells them apart).
    pub fn connect(&mut self, now: Now, watcher_id: &WatcherId, conn: u64) {
        self.settle(now);
        if !self.watchers.contains_key(watcher_id) && self.watchers.len() >= MAX_WATCHERS {
            self.forget_oldest_watcher();
        }
        let w = self
            .watchers
            .entry(watcher_id.clone())
            .or_insert_with(|| Watcher {
                conn: None,
                connected_since_unix_ms: now.unix_ms,
                last_report_unix_ms: 0,
                last_seen: now.mono,
                reports: 0,
                polling: Vec::new(),
                poll_interval: None,
                source_block: None,
            });
        let replaced = w.conn.is_some();
        w.conn = Some(conn);
        w.connected_since_unix_ms = now.unix_ms;
        w.last_seen = now.mono;
        let detail = if replaced {
            "stream opened again; the older stream is closed"
        } else {
            "stream opened"
        };
        self.emit(
            now,
            Event::new(EventKind::WatcherJoined)
                .watcher(watcher_id)
                .detail(detail),
        );
        self.settle(now);
    }

    fn forget_oldest_watcher(&mut self) {
        if let Some(oldest) = self
            .watchers
            .iter()
            .filter(|(_, w)| w.conn.is_none())
            .min_by_key(|(_, w)| w.last_seen)
            .map(|(id, _)| id.clone())
        {
            self.watchers.remove(&oldest);
        }
    }

    /// A watcher's stream ended. Its in-stock reports no longer count; a
    /// lease it holds runs on (it may still renew and release by unary calls)
    /// until released or expired.
    pub fn disconnect(&mut self, now: Now, watcher_id: &WatcherId, conn: u64, why: &str) {
        let Some(w) = self.watchers.get_mut(watcher_id) else {
            return;
        };
        if w.conn != Some(conn) {
            return; // an older stream, already replaced
        }
        w.conn = None;
        w.last_seen = now.mono;
        let mut touched = Vec::new();
        for (tcin, p) in self.products.iter_mut() {
            if p.sightings.remove(watcher_id).is_some() {
                touched.push(tcin.clone());
            }
        }
        self.emit(
            now,
            Event::new(EventKind::WatcherLeft)
                .watcher(watcher_id)
                .detail(why),
        );
        for tcin in touched {
            self.requeue(now, &tcin, "its watchers left");
        }
        self.settle(now);
    }

    /// Is `conn` the open stream of this watcher?
    pub fn is_current_conn(&self, watcher_id: &WatcherId, conn: u64) -> bool {
        self.watchers
            .get(watcher_id)
            .is_some_and(|w| w.conn == Some(conn))
    }

    /// A watcher's stream says how often it polls. Returns whether that
    /// changed what the arbiter knew (so polling is planned anew).
    pub fn set_poll_interval(
        &mut self,
        watcher_id: &WatcherId,
        conn: u64,
        every: Duration,
    ) -> bool {
        if !self.is_current_conn(watcher_id, conn) {
            return false;
        }
        let w = self.watchers.get_mut(watcher_id).expect("checked");
        w.poll_interval.replace(every) != Some(every)
    }

    /// What poll planning needs: every connected watcher that said how
    /// often it polls, and the products in priority order.
    pub fn poll_inputs(&self) -> (Vec<ProductId>, Vec<crate::plan::PollInput>) {
        let ranked = self.ranked().into_iter().cloned().collect();
        let watchers = self
            .watchers
            .iter()
            .filter(|(_, w)| w.conn.is_some())
            .filter_map(|(id, w)| {
                Some(crate::plan::PollInput {
                    watcher: id.clone(),
                    period: w.poll_interval?,
                    polling: w.polling.clone(),
                })
            })
            .collect();
        (ranked, watchers)
    }

    /// What a watcher's report says of its stock source (every report of
    /// a watcher that knows says it; `None` is "it answers"). A block
    /// starting is a `SOURCE_BLOCKED` event, its end `SOURCE_UNBLOCKED`:
    /// one pair per episode, however often it is repeated, whatever its
    /// kind changes to meanwhile. Back-offs (`rate_limited`, ...) are kept
    /// for the status but are no block.
    pub fn set_source_block(
        &mut self,
        now: Now,
        watcher_id: &WatcherId,
        conn: u64,
        block: Option<SourceBlock>,
    ) {
        if !self.is_current_conn(watcher_id, conn) {
            return;
        }
        let w = self.watchers.get_mut(watcher_id).expect("checked");
        if w.source_block == block {
            return;
        }
        let was = w
            .source_block
            .as_ref()
            .filter(|b| b.is_block())
            .map(|b| (b.kind, b.source.clone()));
        w.source_block = block;
        let event = match (was, w.source_block.as_ref().filter(|b| b.is_block())) {
            (None, Some(b)) => Event::new(EventKind::SourceBlocked).detail(block_detail(b)),
            // A watcher reports its worst block: one at another of its
            // sources (Target, a shop) is told as a block of its own.
            (Some((_, source)), Some(b)) if source != b.source => {
                Event::new(EventKind::SourceBlocked).detail(block_detail(b))
            }
            (Some((kind, _)), None) => Event::new(EventKind::SourceUnblocked).detail(format!(
                "{kind}: over; the source answers {watcher_id} again{}",
                match &w.source_block {
                    Some(b) => format!(" (backing off: {})", b.kind),
                    None => String::new(),
                }
            )),
            _ => return,
        };
        self.emit(now, event.watcher(watcher_id));
    }

    /// A batch of observations from a watcher's stream.
    pub fn report(
        &mut self,
        now: Now,
        watcher_id: &WatcherId,
        conn: u64,
        polling: Option<Vec<ProductId>>,
        observations: &[Observation],
    ) -> Result<(), SlotError> {
        if !self.is_current_conn(watcher_id, conn) {
            return Ok(()); // a replaced stream's last words
        }
        let w = self.watchers.get_mut(watcher_id).expect("checked");
        w.last_report_unix_ms = now.unix_ms;
        w.last_seen = now.mono;
        w.reports += 1;
        if let Some(polling) = polling {
            w.polling = polling;
        }
        self.counters.observations += observations.len() as u64;
        let mut result = Ok(());
        for o in observations {
            // Checked here too, not only by the watcher: a watcher of an
            // older version (or one whose source gives no price) cannot
            // make the arbiter buy over the limit.
            let price = self
                .spec(&o.tcin)
                .map_or(PriceCheck::Allowed, |s| s.price_check(o.price));
            let in_stock = o.in_stock && price == PriceCheck::Allowed;
            if in_stock {
                let p = match self.product_mut(&o.tcin) {
                    Ok(p) => p,
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                };
                let was_seen = p
                    .sightings
                    .insert(watcher_id.clone(), Sighting { at: now.mono });
                if was_seen.is_none() {
                    let why = format!("reported in stock by {watcher_id}");
                    self.requeue(now, &o.tcin, &why);
                }
            } else if let Some(p) = self.products.get_mut(&o.tcin)
                && p.sightings.remove(watcher_id).is_some()
            {
                let why = match price.why_not() {
                    Some(why) if o.in_stock => format!("in stock at {watcher_id}, but {why}"),
                    _ => format!("reported out of stock by {watcher_id}"),
                };
                self.requeue(now, &o.tcin, &why);
            }
            if let Some(price) = o.price
                && self.products.contains_key(&o.tcin)
            {
                match self.prices.get_mut(&o.tcin) {
                    Some(known) => *known = price,
                    None => {
                        self.prices.insert(o.tcin.clone(), price);
                    }
                }
            }
        }
        self.settle(now);
        result
    }

    /// `ResetProduct`: back to ready (or queued when in stock), purchases and
    /// cool-down cleared. A product holding the lease cannot be reset.
    pub fn reset(&mut self, now: Now, tcin: &ProductId) -> Result<ProductState, SlotError> {
        self.settle(now);
        let Some(p) = self.products.get_mut(tcin) else {
            return Err(SlotError::UnknownProduct(tcin.clone()));
        };
        if p.state == ProductState::Attempting {
            return Err(SlotError::Stale(format!(
                "product {tcin} holds the purchase slot; release the lease first or let it expire"
            )));
        }
        let from = p.state;
        p.state = ProductState::Ready;
        p.purchases = 0;
        p.cooldown_until = None;
        if from == ProductState::OverBudget {
            self.held_back.remove(tcin);
        }
        self.emit(
            now,
            Event::new(EventKind::Reset).product(tcin, from, ProductState::Ready),
        );
        self.effects.must_persist = true;
        self.requeue(now, tcin, "in stock after reset");
        self.settle(now);
        Ok(from)
    }

    /// `SetPaused`: a paused arbiter grants nothing; the current lease runs to
    /// its end.
    pub fn set_paused(&mut self, now: Now, paused: bool) {
        if self.paused != paused {
            self.paused = paused;
            let kind = if paused {
                EventKind::Paused
            } else {
                EventKind::Resumed
            };
            self.emit(now, Event::new(kind));
            self.effects.must_persist = true;
        }
        self.settle(now);
    }

    /// Replaces the product list. Products no longer listed keep their state
    /// and rank after the listed ones.
    pub fn reload(&mut self, now: Now, catalog: PriorityList) {
        let n = catalog.len();
        let budget_was = self.budget_limits().0;
        let config_budget_changed = catalog.budget() != self.catalog.budget();
        self.catalog = catalog;
        if config_budget_changed {
            self.budget_lifted = true;
            let replaced = self.budget.forget_replaced_operator(self.catalog.budget());
            let now_limits = self.budget_limits().0;
            if replaced || now_limits != budget_was {
                let detail = format!(
                    "the product config's budget changed: {}{}",
                    now_limits.map_or_else(|| "no limit".to_owned(), |l| l.describe()),
                    if replaced {
                        "; it replaces the limits an operator had set"
                    } else {
                        ""
                    }
                );
                self.emit(now, Event::new(EventKind::BudgetChanged).detail(detail));
            }
        }
        self.add_configured_products();
        let ids: Vec<ProductId> = self.products.keys().cloned().collect();
        for tcin in &ids {
            self.requeue(now, tcin, "product config reloaded");
        }
        self.emit(
            now,
            Event::new(EventKind::ConfigReloaded).detail(format!("{n} products")),
        );
        self.effects.pushes.push(Push::CatalogChanged);
        self.effects.must_persist = true;
        self.settle(now);
    }

    // ----- what the saved state is made of (see `store::saved`) -----

    /// The fencing token the next grant gets.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// The last event sequence number reserved on disk.
    pub fn sequence_reserved(&self) -> u64 {
        self.sequence_reserved
    }

    /// Grants, purchases, failures and the rest, counted since the state
    /// was first created.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Every tracked product, in no particular order.
    pub fn products(&self) -> impl Iterator<Item = (&ProductId, &Product)> {
        self.products.iter()
    }

    /// One tracked product.
    pub fn product(&self, tcin: &ProductId) -> Option<&Product> {
        self.products.get(tcin)
    }

    /// The events kept in memory, oldest first, in sequence order.
    pub fn history(&self) -> &BoundedLog<Event> {
        &self.history
    }

    /// The leases that ended most recently, oldest first.
    pub fn ended(&self) -> &BoundedLog<EndedLease> {
        &self.ended
    }

    /// The remembered `AcquirePurchase` answers, oldest first.
    pub fn answers(&self) -> &BoundedMap<AnswerKey, AcquireAnswer> {
        &self.answers
    }

    /// Continues from a state read back after a restart: numbering goes on
    /// after the reserved block (numbers shown before a crash may not have
    /// reached the disk), configured products missing from it are added,
    /// the lease's product is the one attempting, and the slot is settled
    /// (a lease whose deadline passed while the arbiter was down expires).
    pub fn resume(
        saved: Resume,
        catalog: PriorityList,
        timing: Timing,
        now: Now,
    ) -> Result<Self, SlotError> {
        let mut a = Self::new_empty(catalog, timing);
        a.next_token = saved.next_token.max(1);
        a.paused = saved.paused;
        a.sequence_reserved = saved.sequence_reserved;
        a.next_sequence = saved.sequence_reserved + 1;
        a.counters = saved.counters;
        a.budget = saved.budget;
        a.products.extend(saved.products);
        a.add_configured_products();
        let mut started = "state restored".to_owned();
        if let Some(lease) = saved.lease {
            if lease.token.0 >= a.next_token {
                return Err(SlotError::Invalid(format!(
                    "the lease's fencing token {} is not below the next token {}",
                    lease.token, a.next_token
                )));
            }
            started = format!(
                "state restored; lease {} (product {}, token {}) carries on with {} ms left",
                lease.lease_id,
                lease.tcin,
                lease.token,
                ms(lease.remaining(now))
            );
            a.product_mut(&lease.tcin)?.state = ProductState::Attempting;
            a.lease = Some(lease);
        }
        // Saved together, so a reservation belongs to the carried lease;
        // one that does not (a state written by hand, say) counts as
        // spent rather than vanish: the limit fails closed.
        if let Some(r) = a.budget.reservation().cloned()
            && a.lease.as_ref().is_none_or(|l| l.lease_id != r.lease_id)
        {
            a.budget.take_reservation(&r.lease_id);
            let window = a.budget_limits().0.and_then(|l| l.window);
            a.budget.record(
                Spend {
                    at_unix_ms: now.unix_ms,
                    cents: r.price.map_or(0, Price::cents),
                    purchases: 1,
                },
                budget::merge_span(window),
            );
        }
        a.ended = BoundedLog::restored(ENDED_LEASES, saved.ended);
        a.answers = BoundedMap::restored(IDEMPOTENCY_ENTRIES, saved.answers);
        a.history = BoundedLog::restored(EVENT_HISTORY, saved.history);
        a.emit(now, Event::new(EventKind::ArbiterStarted).detail(started));
        a.effects.must_persist = true;
        a.settle(now);
        Ok(a)
    }

    fn new_empty(catalog: PriorityList, timing: Timing) -> Self {
        Self {
            timing,
            catalog,
            products: HashMap::new(),
            watchers: HashMap::new(),
            lease: None,
            next_token: 1,
            paused: false,
            next_sequence: 1,
            sequence_reserved: 0,
            history: BoundedLog::new(EVENT_HISTORY),
            ended: BoundedLog::new(ENDED_LEASES),
            answers: BoundedMap::new(IDEMPOTENCY_ENTRIES),
            counters: Counters::default(),
            budget: Budget::default(),
            prices: HashMap::new(),
            held_back: HashMap::new(),
            budget_room: None,
            last_now: None,
            budget_lifted: false,
            effects: Effects::default(),
        }
    }
}

/// The durable state as read back after a restart, in the slot's terms:
/// what [`Arbiter::resume`] continues from.
#[derive(Debug)]
pub struct Resume {
    pub next_token: u64,
    pub paused: bool,
    pub sequence_reserved: u64,
    pub counters: Counters,
    pub products: Vec<(ProductId, Product)>,
    pub lease: Option<ActiveLease>,
    /// Oldest first, as are the two below.
    pub ended: Vec<EndedLease>,
    pub answers: Vec<(AnswerKey, AcquireAnswer)>,
    pub history: Vec<Event>,
    pub budget: Budget,
}

/// The detail of a `SOURCE_BLOCKED` event: the kind first (`captcha: ...`),
/// then what the watcher does about it.
fn block_detail(b: &SourceBlock) -> String {
    let mut d = format!(
        "{}: the stock source {} blocks this watcher",
        b.kind,
        b.source_name()
    );
    if b.kind == SourceBlockKind::EndpointGone {
        d.push_str("; the endpoint was retired and polling stopped (choose another with --target-endpoint)");
    } else if b.paused_until_unix_ms > b.since_unix_ms {
        let pause = Duration::from_millis(b.paused_until_unix_ms - b.since_unix_ms);
        d.push_str(&format!(
            "; polling paused for {}, then one probe",
            short(pause)
        ));
    }
    if let Some(u) = &b.tracking_url {
        d.push_str(&format!("; tracking URL {u}"));
    }
    d
}
