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

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use restock_domain::{
    Counters, Event, EventKind, FencingToken, LeaseId, Observation, Outcome, PriorityList,
    ProductSpec, ProductState, ProductStatus, Status, Tcin, WatcherId, WatcherStatus,
    lease::Lease as LeaseView,
};

/// Most products the arbiter tracks (configured plus reported); reports of
/// more new products are refused.
pub const MAX_PRODUCTS: usize = 10_000;
/// Most watchers remembered; the longest-disconnected are forgotten first.
pub const MAX_WATCHERS: usize = 4_096;
/// Events kept in memory for `WatchEvents` resumption.
pub const EVENT_HISTORY: usize = 10_000;
/// Idempotency answers remembered (per watcher and request id).
pub const IDEMPOTENCY_ENTRIES: usize = 4_096;
/// Ended leases remembered, so late releases get a precise answer.
pub const ENDED_LEASES: usize = 1_024;
/// Event sequence numbers are reserved on disk in blocks of this size, so a
/// restart never reuses a number even if the last events were not persisted.
pub const SEQUENCE_BLOCK: u64 = 1_000;

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

/// One reading of the clocks: monotonic for deadlines, wall-clock for display
/// and persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

/// Reads both clocks consistently: wall time is derived from the monotonic
/// clock and one wall reading at start, so paused time in tests moves both,
/// and a wall-clock jump never shortens or extends a lease.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_mono: Instant,
    base_unix_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::starting_at(unix)
    }

    /// A clock whose wall time starts at `unix_ms` now.
    pub fn starting_at(unix_ms: u64) -> Self {
        Self {
            base_mono: Instant::now(),
            base_unix_ms: unix_ms,
        }
    }

    pub fn now(&self) -> Now {
        let mono = Instant::now();
        let since = mono.saturating_duration_since(self.base_mono).as_millis() as u64;
        Now {
            mono,
            unix_ms: self.base_unix_ms + since,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// A grant of the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: LeaseId,
    pub tcin: Tcin,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub ttl: Duration,
    pub granted_at_unix_ms: u64,
    /// Monotonic deadline; the wall-clock one is derived for display.
    pub deadline: Instant,
    pub expires_at_unix_ms: u64,
}

impl Lease {
    /// An event about this lease.
    fn event(&self, kind: EventKind) -> Event {
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

/// Why the slot was not granted to an `AcquirePurchase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Refusal {
    AnotherPurchaseActive {
        holder_tcin: Tcin,
        holder_watcher_id: WatcherId,
    },
    HigherPriorityPending {
        pending_tcin: Tcin,
    },
    AlreadyPurchased {
        purchases: u32,
    },
    CoolingDown {
        retry_after_ms: u64,
    },
    Paused,
    Disabled,
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
        }
    }
}

/// The answer to an `AcquirePurchase`, remembered per request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireAnswer {
    Granted(Lease),
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
    UnknownProduct(Tcin),
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
        lease: Lease,
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

#[derive(Debug, Clone)]
struct Product {
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
        Self {
            state: ProductState::Ready,
            purchases: 0,
            cooldown_until: None,
            last_outcome: None,
            last_detail: String::new(),
            sightings: BTreeMap::new(),
        }
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
    polling: Vec<Tcin>,
}

/// A lease that ended, remembered so a late release or renew gets an exact
/// answer and a repeated release is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedLease {
    pub lease_id: LeaseId,
    pub tcin: Tcin,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    pub outcome: Outcome,
    pub ended_at_unix_ms: u64,
}

/// The whole arbiter state. See the module documentation.
#[derive(Debug)]
pub struct Arbiter {
    timing: Timing,
    catalog: PriorityList,
    products: HashMap<Tcin, Product>,
    watchers: HashMap<WatcherId, Watcher>,
    lease: Option<Lease>,
    next_token: u64,
    paused: bool,
    next_sequence: u64,
    sequence_reserved: u64,
    history: VecDeque<Event>,
    ended: VecDeque<EndedLease>,
    idempotency: HashMap<(WatcherId, String), AcquireAnswer>,
    idempotency_order: VecDeque<(WatcherId, String)>,
    /// Ended leases and idempotency answers ever added (the deques drop
    /// their oldest), so a [`Delta`] knows how many are new.
    ended_total: u64,
    idempotency_total: u64,
    /// What the last successful write put on disk.
    persisted: Persisted,
    counters: Counters,
    effects: Effects,
}

/// What the state file (snapshot and journal) holds, as far as the arbiter
/// knows: the next [`Delta`] carries only what changed since.
#[derive(Debug, Default)]
struct Persisted {
    /// The newest event on disk.
    events_upto: u64,
    ended_total: u64,
    idempotency_total: u64,
    products: HashMap<Tcin, SavedProduct>,
}

/// Where a write brings the disk to. Handed back with
/// [`Arbiter::persisted`] once the write succeeded; a failed write leaves
/// the marks where they were, so the next write carries its changes again.
#[derive(Debug)]
pub struct PersistMark {
    events_upto: u64,
    ended_total: u64,
    idempotency_total: u64,
    products: ProductsMark,
}

#[derive(Debug)]
enum ProductsMark {
    /// A full snapshot: the disk now holds exactly these products.
    All(HashMap<Tcin, SavedProduct>),
    /// A delta: these changed, these were removed.
    Changed {
        upserted: Vec<(Tcin, SavedProduct)>,
        removed: Vec<Tcin>,
    },
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

    pub fn lease(&self) -> Option<&Lease> {
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
    pub fn events_from(&self, from: u64) -> Vec<Event> {
        let start = self.history.partition_point(|e| e.sequence < from);
        self.history.range(start..).cloned().collect()
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
        if self.history.len() == EVENT_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
        self.effects.events.push(event);
        self.effects.dirty = true;
    }

    // ----- products -----

    fn product_mut(&mut self, tcin: &Tcin) -> Result<&mut Product, SlotError> {
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

    fn spec(&self, tcin: &Tcin) -> Option<&ProductSpec> {
        self.catalog.get(tcin)
    }

    fn enabled(&self, tcin: &Tcin) -> bool {
        self.spec(tcin).is_none_or(|s| s.enabled)
    }

    /// Is the product in stock at some connected watcher, fresh enough?
    fn in_stock(&self, p: &Product, now: Now) -> bool {
        p.sightings
            .values()
            .any(|s| now.mono < s.at + self.timing.stock_ttl)
    }

    /// Moves a READY/QUEUED product to the state its sightings say.
    fn requeue(&mut self, now: Now, tcin: &Tcin, why: &str) {
        let Some(p) = self.products.get(tcin) else {
            return;
        };
        let should_queue = self.in_stock(p, now) && self.enabled(tcin);
        let from = p.state;
        let to = match (from, should_queue) {
            (ProductState::Ready, true) => ProductState::Queued,
            (ProductState::Queued, false) => ProductState::Ready,
            _ => return,
        };
        self.products.get_mut(tcin).expect("checked").state = to;
        let kind = if to == ProductState::Queued {
            EventKind::Queued
        } else {
            EventKind::Unqueued
        };
        self.emit(now, Event::new(kind).product(tcin, from, to).detail(why));
    }

    /// Products in priority order.
    fn ranked(&self) -> Vec<&Tcin> {
        let mut ids: Vec<&Tcin> = self.products.keys().collect();
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
        self.grant_next(now);
    }

    /// When the slot is free and not paused, grants the best queued product
    /// to the connected watcher that saw it most recently.
    fn grant_next(&mut self, now: Now) {
        if self.lease.is_some() || self.paused {
            return;
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
        }
    }

    fn grant(&mut self, now: Now, tcin: &Tcin, watcher_id: &WatcherId, how: &str) -> Lease {
        let token = FencingToken(self.next_token);
        self.next_token += 1;
        let ttl = self.timing.lease_ttl;
        let lease = Lease {
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
    fn end_lease(&mut self, now: Now, lease: Lease, outcome: Outcome, detail: String) {
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
        if self.ended.len() == ENDED_LEASES {
            self.ended.pop_front();
        }
        self.ended_total += 1;
        self.ended.push_back(EndedLease {
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
        tcin: &Tcin,
        watcher_id: &WatcherId,
        request_id: &str,
    ) -> Result<AcquireAnswer, SlotError> {
        self.settle(now);
        let key = (!request_id.is_empty()).then(|| (watcher_id.clone(), request_id.to_owned()));
        if let Some(key) = &key
            && let Some(previous) = self.idempotency.get(key)
        {
            return Ok(match previous {
                // Show the lease as it is now if it is still the current one.
                AcquireAnswer::Granted(l) => AcquireAnswer::Granted(
                    self.lease
                        .as_ref()
                        .filter(|cur| cur.lease_id == l.lease_id)
                        .unwrap_or(l)
                        .clone(),
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
            if self.idempotency_order.len() == IDEMPOTENCY_ENTRIES
                && let Some(old) = self.idempotency_order.pop_front()
            {
                self.idempotency.remove(&old);
            }
            self.idempotency_order.push_back(key.clone());
            self.idempotency_total += 1;
            self.idempotency.insert(key, answer.clone());
            self.effects.must_persist = true;
        }
        Ok(answer)
    }

    fn refusal(&self, now: Now, tcin: &Tcin) -> Option<Refusal> {
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
    ) -> Result<Lease, SlotError> {
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
    pub fn release(
        &mut self,
        now: Now,
        lease_id: &LeaseId,
        token: FencingToken,
        outcome: Outcome,
        detail: &str,
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
        self.end_lease(now, lease, outcome, detail.to_owned());
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

    /// A batch of observations from a watcher's stream.
    pub fn report(
        &mut self,
        now: Now,
        watcher_id: &WatcherId,
        conn: u64,
        polling: Option<Vec<Tcin>>,
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
            let too_expensive = self.spec(&o.tcin).is_some_and(|s| s.too_expensive(o.price));
            let in_stock = o.in_stock && !too_expensive;
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
                let why = if too_expensive {
                    format!("{watcher_id} reports a price above max_price")
                } else {
                    format!("reported out of stock by {watcher_id}")
                };
                self.requeue(now, &o.tcin, &why);
            }
        }
        self.settle(now);
        result
    }

    /// `ResetProduct`: back to ready (or queued when in stock), purchases and
    /// cool-down cleared. A product holding the lease cannot be reset.
    pub fn reset(&mut self, now: Now, tcin: &Tcin) -> Result<ProductState, SlotError> {
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
        self.catalog = catalog;
        self.add_configured_products();
        let ids: Vec<Tcin> = self.products.keys().cloned().collect();
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

    /// Everything `GetStatus` shows.
    /// Everything `GetStatus` shows (all but the config path, which the
    /// arbiter's state does not know).
    pub fn status(&self, now: Now) -> Status {
        let products = self
            .ranked()
            .into_iter()
            .enumerate()
            .map(|(i, tcin)| {
                let p = &self.products[tcin];
                let spec = self.spec(tcin);
                ProductStatus {
                    tcin: tcin.clone(),
                    name: spec.map_or_else(|| tcin.to_string(), |s| s.name.clone()),
                    priority: (i + 1) as u32,
                    state: p.state,
                    purchases: p.purchases,
                    quantity: spec.map_or(1, |s| s.quantity),
                    configured: spec.is_some(),
                    in_stock_at: p
                        .sightings
                        .iter()
                        .filter(|(_, s)| now.mono < s.at + self.timing.stock_ttl)
                        .map(|(w, _)| w.clone())
                        .collect(),
                    cooldown_remaining: p.cooldown_until.map_or(Duration::ZERO, |(u, _)| {
                        u.saturating_duration_since(now.mono)
                    }),
                    last_outcome: p.last_outcome,
                    last_detail: p.last_detail.clone(),
                }
            })
            .collect();
        let mut watchers: Vec<WatcherStatus> = self
            .watchers
            .iter()
            .map(|(id, w)| WatcherStatus {
                watcher_id: id.clone(),
                connected: w.conn.is_some(),
                last_report_unix_ms: w.last_report_unix_ms,
                connected_since_unix_ms: w.connected_since_unix_ms,
                reports: w.reports,
                polling: w.polling.clone(),
            })
            .collect();
        watchers.sort_by(|a, b| a.watcher_id.cmp(&b.watcher_id));
        Status {
            lease: self.lease.as_ref().map(|l| l.view(now.mono)),
            products,
            watchers,
            test_mode: self.timing.test_mode,
            paused: self.paused,
            counters: self.counters,
            next_token: FencingToken(self.next_token),
            last_event_sequence: self.last_sequence(),
            lease_ttl: self.timing.lease_ttl,
            stock_ttl: self.timing.stock_ttl,
            failure_cooldown: self.timing.failure_cooldown,
            config_path: String::new(),
        }
    }

    // ----- persistence -----

    /// The durable part of the state.
    pub fn snapshot(&self, now: Now) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            journal: 0,
            saved_at_unix_ms: now.unix_ms,
            next_fencing_token: self.next_token,
            sequence_reserved: self.sequence_reserved,
            paused: self.paused,
            products: self
                .products
                .iter()
                .map(|(tcin, p)| (tcin.clone(), saved_product(p)))
                .collect(),
            lease: self.saved_lease(now),
            ended_leases: self.ended.iter().cloned().collect(),
            idempotency: self
                .idempotency_order
                .iter()
                .filter_map(|k| self.saved_answer(k))
                .collect(),
            counters: self.counters,
            events: self
                .history
                .iter()
                .rev()
                .take(SAVED_EVENTS)
                .rev()
                .cloned()
                .collect(),
        }
    }

    /// The mark of a full [`Self::snapshot`] taken now.
    pub fn full_mark(&self) -> PersistMark {
        PersistMark {
            events_upto: self.last_sequence(),
            ended_total: self.ended_total,
            idempotency_total: self.idempotency_total,
            products: ProductsMark::All(
                self.products
                    .iter()
                    .map(|(tcin, p)| (tcin.clone(), saved_product(p)))
                    .collect(),
            ),
        }
    }

    /// What changed since the last successful write: the small fields in
    /// full, the products whose saved form differs, and the events, ended
    /// leases and idempotency answers added since. Applied to the state on
    /// disk ([`Snapshot::apply`]) it gives exactly [`Self::snapshot`].
    pub fn delta(&self, now: Now) -> (Delta, PersistMark) {
        let p = &self.persisted;
        let mut upserted = Vec::new();
        for (tcin, product) in &self.products {
            if p.products.get(tcin).is_none_or(|s| !same_saved(product, s)) {
                upserted.push((tcin.clone(), saved_product(product)));
            }
        }
        let removed: Vec<Tcin> = p
            .products
            .keys()
            .filter(|t| !self.products.contains_key(*t))
            .cloned()
            .collect();
        let first_new = self
            .history
            .partition_point(|e| e.sequence <= p.events_upto);
        let new_events = self.history.len() - first_new;
        let events: Vec<Event> = self
            .history
            .iter()
            .skip(first_new + new_events.saturating_sub(SAVED_EVENTS))
            .cloned()
            .collect();
        let new_ended = (self.ended_total - p.ended_total).min(self.ended.len() as u64) as usize;
        let ended_leases: Vec<EndedLease> = self
            .ended
            .iter()
            .skip(self.ended.len() - new_ended)
            .cloned()
            .collect();
        let new_answers = (self.idempotency_total - p.idempotency_total)
            .min(self.idempotency_order.len() as u64) as usize;
        let idempotency: Vec<SavedAnswer> = self
            .idempotency_order
            .iter()
            .skip(self.idempotency_order.len() - new_answers)
            .filter_map(|k| self.saved_answer(k))
            .collect();
        let delta = Delta {
            journal: 0,
            saved_at_unix_ms: now.unix_ms,
            next_fencing_token: self.next_token,
            sequence_reserved: self.sequence_reserved,
            paused: self.paused,
            lease: self.saved_lease(now),
            counters: self.counters,
            products: upserted.iter().cloned().collect(),
            removed_products: removed.clone(),
            ended_leases,
            idempotency,
            events,
        };
        let mark = PersistMark {
            events_upto: self.last_sequence(),
            ended_total: self.ended_total,
            idempotency_total: self.idempotency_total,
            products: ProductsMark::Changed { upserted, removed },
        };
        (delta, mark)
    }

    /// A write with this mark reached the disk.
    pub fn persisted(&mut self, mark: PersistMark) {
        let p = &mut self.persisted;
        p.events_upto = mark.events_upto;
        p.ended_total = mark.ended_total;
        p.idempotency_total = mark.idempotency_total;
        match mark.products {
            ProductsMark::All(all) => p.products = all,
            ProductsMark::Changed { upserted, removed } => {
                for t in removed {
                    p.products.remove(&t);
                }
                p.products.extend(upserted);
            }
        }
    }

    fn saved_lease(&self, now: Now) -> Option<SavedLease> {
        self.lease.as_ref().map(|l| SavedLease {
            lease_id: l.lease_id.clone(),
            tcin: l.tcin.clone(),
            watcher_id: l.watcher_id.clone(),
            fencing_token: l.token,
            ttl_ms: ms(l.ttl),
            granted_at_unix_ms: l.granted_at_unix_ms,
            expires_at_unix_ms: l.expires_at_unix_ms,
            remaining_ms: ms(l.remaining(now)),
        })
    }

    fn saved_answer(&self, key: &(WatcherId, String)) -> Option<SavedAnswer> {
        let a = self.idempotency.get(key)?;
        Some(SavedAnswer {
            watcher_id: key.0.clone(),
            request_id: key.1.clone(),
            granted_lease_id: match a {
                AcquireAnswer::Granted(l) => Some(l.lease_id.clone()),
                AcquireAnswer::Refused(_) => None,
            },
            refusal: match a {
                AcquireAnswer::Granted(_) => None,
                AcquireAnswer::Refused(r) => Some(r.clone()),
            },
        })
    }

    /// Rebuilds the arbiter from a snapshot. The lease keeps the time it had
    /// left by the wall clock (never more than its TTL).
    pub fn restore(
        snapshot: Snapshot,
        catalog: PriorityList,
        timing: Timing,
        now: Now,
    ) -> Result<Self, SlotError> {
        let mut a = Self::new_empty(catalog, timing);
        a.next_token = snapshot.next_fencing_token.max(1);
        a.paused = snapshot.paused;
        a.sequence_reserved = snapshot.sequence_reserved;
        // Continue numbering after the reserved block: numbers shown before a
        // crash may not have reached the disk.
        a.next_sequence = snapshot.sequence_reserved + 1;
        a.counters = snapshot.counters;
        let mono_at = |unix: u64| {
            if unix <= now.unix_ms {
                now.mono
            } else {
                now.mono + Duration::from_millis(unix - now.unix_ms)
            }
        };
        for (tcin, p) in snapshot.products {
            a.products.insert(
                tcin,
                Product {
                    state: match p.state {
                        ProductState::Queued | ProductState::Attempting => ProductState::Ready,
                        s => s,
                    },
                    purchases: p.purchases,
                    cooldown_until: p.cooldown_until_unix_ms.map(|u| {
                        let capped = u.min(now.unix_ms + ms(timing.failure_cooldown));
                        (mono_at(capped), capped)
                    }),
                    last_outcome: p.last_outcome,
                    last_detail: p.last_detail,
                    sightings: BTreeMap::new(),
                },
            );
        }
        a.add_configured_products();
        let mut started = "state restored".to_owned();
        if let Some(l) = snapshot.lease {
            if l.fencing_token.0 >= a.next_token {
                return Err(SlotError::Invalid(format!(
                    "the lease's fencing token {} is not below the next token {}",
                    l.fencing_token, a.next_token
                )));
            }
            let ttl = Duration::from_millis(l.ttl_ms);
            let left = l
                .expires_at_unix_ms
                .saturating_sub(now.unix_ms)
                .min(l.ttl_ms);
            let lease = Lease {
                lease_id: l.lease_id,
                tcin: l.tcin.clone(),
                watcher_id: l.watcher_id,
                token: l.fencing_token,
                ttl,
                granted_at_unix_ms: l.granted_at_unix_ms,
                deadline: now.mono + Duration::from_millis(left),
                expires_at_unix_ms: now.unix_ms + left,
            };
            started = format!(
                "state restored; lease {} (product {}, token {}) carries on with {left} ms left",
                lease.lease_id, lease.tcin, lease.token
            );
            a.product_mut(&lease.tcin)?.state = ProductState::Attempting;
            a.lease = Some(lease);
        }
        a.ended = snapshot.ended_leases.into_iter().collect();
        for s in snapshot.idempotency {
            let answer = match (s.granted_lease_id, s.refusal) {
                (_, Some(r)) => AcquireAnswer::Refused(r),
                (Some(id), None) => {
                    // Only the current lease can be shown again in full; a
                    // retry of an older grant gets it from the ended list.
                    match a.lease.as_ref().filter(|l| l.lease_id == id) {
                        Some(l) => AcquireAnswer::Granted(l.clone()),
                        None => match a.ended.iter().find(|e| e.lease_id == id) {
                            Some(e) => AcquireAnswer::Granted(Lease {
                                lease_id: e.lease_id.clone(),
                                tcin: e.tcin.clone(),
                                watcher_id: e.watcher_id.clone(),
                                token: e.token,
                                ttl: timing.lease_ttl,
                                granted_at_unix_ms: 0,
                                deadline: now.mono,
                                expires_at_unix_ms: e.ended_at_unix_ms,
                            }),
                            None => continue,
                        },
                    }
                }
                (None, None) => continue,
            };
            let key = (s.watcher_id, s.request_id);
            a.idempotency_order.push_back(key.clone());
            a.idempotency.insert(key, answer);
        }
        a.ended_total = a.ended.len() as u64;
        a.idempotency_total = a.idempotency_order.len() as u64;
        a.history = snapshot.events.into_iter().collect();
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
            history: VecDeque::new(),
            ended: VecDeque::new(),
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            ended_total: 0,
            idempotency_total: 0,
            persisted: Persisted::default(),
            counters: Counters::default(),
            effects: Effects::default(),
        }
    }
}

/// How a product is saved. Stock reports are not persisted (watchers report
/// again after a restart), so QUEUED is saved as READY.
fn saved_product(p: &Product) -> SavedProduct {
    SavedProduct {
        state: saved_state(p.state),
        purchases: p.purchases,
        cooldown_until_unix_ms: p.cooldown_until.map(|(_, u)| u),
        last_outcome: p.last_outcome,
        last_detail: p.last_detail.clone(),
    }
}

fn saved_state(s: ProductState) -> ProductState {
    match s {
        ProductState::Queued => ProductState::Ready,
        s => s,
    }
}

/// `saved_product(p) == *s`, without allocating.
fn same_saved(p: &Product, s: &SavedProduct) -> bool {
    saved_state(p.state) == s.state
        && p.purchases == s.purchases
        && p.cooldown_until.map(|(_, u)| u) == s.cooldown_until_unix_ms
        && p.last_outcome == s.last_outcome
        && p.last_detail == s.last_detail
}

/// Format version of [`Snapshot`]. Version 2 added the journal (a snapshot
/// names the journal whose records follow it); version 1 files are read.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Events kept in the state file.
pub const SAVED_EVENTS: usize = 500;

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
    pub products: BTreeMap<Tcin, SavedProduct>,
    pub lease: Option<SavedLease>,
    #[serde(default)]
    pub ended_leases: Vec<EndedLease>,
    #[serde(default)]
    pub idempotency: Vec<SavedAnswer>,
    #[serde(default)]
    pub counters: Counters,
    #[serde(default)]
    pub events: Vec<Event>,
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
    }
}

/// One journal record: what changed since the previous write. See
/// [`Arbiter::delta`].
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
    pub products: BTreeMap<Tcin, SavedProduct>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_products: Vec<Tcin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_leases: Vec<EndedLease>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idempotency: Vec<SavedAnswer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProduct {
    pub state: ProductState,
    pub purchases: u32,
    pub cooldown_until_unix_ms: Option<u64>,
    pub last_outcome: Option<Outcome>,
    #[serde(default)]
    pub last_detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLease {
    pub lease_id: LeaseId,
    pub tcin: Tcin,
    pub watcher_id: WatcherId,
    pub fencing_token: FencingToken,
    pub ttl_ms: u64,
    pub granted_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    /// Informational: what was left when saved.
    pub remaining_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAnswer {
    pub watcher_id: WatcherId,
    pub request_id: String,
    pub granted_lease_id: Option<LeaseId>,
    pub refusal: Option<Refusal>,
}

#[cfg(test)]
mod tests;
