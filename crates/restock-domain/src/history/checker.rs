//! The [`Checker`]: a state machine fed the arbiter's events and status
//! snapshots, one at a time, each with the time it arrived. See the
//! [module documentation](super) for what it tracks and reports.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::Duration,
};

use super::records::{Cycle, CycleEnd, Notice, Problem, ProblemKind, Warning};
use crate::{
    duration::{millis, short_ms},
    event::{Event, EventKind},
    ids::{FencingToken, LeaseId, WatcherId},
    product::ProductState,
    product_id::ProductId,
    status::Status,
    timestamp::rfc3339_ms,
};

/// Snapshots waiting for the event stream to catch up; the oldest go first.
const MAX_PENDING_SNAPSHOTS: usize = 64;
/// Transitions kept for a final report; later ones are only counted.
pub const MAX_KEPT_TRANSITIONS: usize = 10_000;

/// A product's state and since when (arbiter time) it has been in it (or
/// was first seen in it).
#[derive(Debug, Clone)]
struct Tracked {
    state: ProductState,
    since: u64,
}

/// The lease an event names. Every lease event (GRANTED, RENEWED, RELEASED,
/// EXPIRED) the arbiter emits carries all four; one that does not is
/// reported as a warning and not checked.
#[derive(Debug, Clone, Copy)]
struct Named<'a> {
    lease_id: &'a LeaseId,
    tcin: &'a ProductId,
    watcher_id: &'a WatcherId,
    token: FencingToken,
}

impl<'a> Named<'a> {
    fn of(e: &'a Event) -> Option<Self> {
        Some(Self {
            lease_id: e.lease_id.as_ref()?,
            tcin: e.tcin.as_ref()?,
            watcher_id: e.watcher_id.as_ref()?,
            token: e.fencing_token?,
        })
    }
}

/// A lease the checker believes holds the slot.
#[derive(Debug, Clone)]
struct Held {
    lease_id: LeaseId,
    tcin: ProductId,
    watcher_id: WatcherId,
    token: FencingToken,
    /// Index into `cycles`.
    cycle: usize,
}

impl Held {
    fn describe(&self) -> String {
        format!(
            "lease {} (product {}, watcher {}, token {})",
            self.lease_id, self.tcin, self.watcher_id, self.token
        )
    }
}

/// Where a product stands in the arbiter's order.
#[derive(Debug, Clone, Copy)]
struct Rank {
    configured: bool,
    priority: u32,
}

/// The history checker. See the [module documentation](super).
#[derive(Debug)]
pub struct Checker {
    stuck_after_ms: u64,
    started: bool,
    /// Every event since the arbiter's first has been seen (the history
    /// began at sequence 1, or at a snapshot of sequence 0, with no gap
    /// since), so a lease event cannot be about a grant that was missed.
    complete: bool,
    /// The newest event applied (or the point the first snapshot described).
    last_seq: u64,
    products: BTreeMap<ProductId, Tracked>,
    /// Priorities from the latest usable snapshot; `None` after a reload or
    /// a restart until a snapshot taken after it arrives.
    ranks: Option<BTreeMap<ProductId, Rank>>,
    /// Sequence of the last reload/restart: snapshots at or after it carry
    /// the current priorities.
    ranks_valid_from: u64,
    held: Vec<Held>,
    /// Leases whose RELEASED or EXPIRED was seen, with their cycle: any
    /// later event of one shows a stale lease accepted.
    ended: HashMap<LeaseId, usize>,
    paused: bool,
    /// Since when the slot has been free and the arbiter not paused.
    idle_since: Option<u64>,
    /// Why the tracked state cannot be trusted (missed events), until a
    /// snapshot resynchronises it.
    uncertain: Option<String>,
    /// Every new grant must carry at least this token.
    token_floor: u64,
    /// The newest arbiter time the checker knows the state at.
    horizon: u64,
    /// Local clock minus arbiter clock, estimated (smallest seen).
    offset_ms: Option<i64>,
    pending: VecDeque<(Status, u64)>,
    cycles: Vec<Cycle>,
    transitions: Vec<Event>,
    transitions_total: u64,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
    /// Keys of the problems reported, so each is reported once however
    /// many observations show it again.
    reported: HashSet<String>,
    events_seen: u64,
    renewals: u64,
    snapshots_seen: u64,
    notices: Vec<Notice>,
}

impl Checker {
    /// A checker that calls a purchase stuck after `stuck_after`.
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            stuck_after_ms: millis(stuck_after),
            started: false,
            complete: false,
            last_seq: 0,
            products: BTreeMap::new(),
            ranks: None,
            ranks_valid_from: 0,
            held: Vec::new(),
            ended: HashMap::new(),
            paused: false,
            idle_since: None,
            uncertain: None,
            token_floor: 0,
            horizon: 0,
            offset_ms: None,
            pending: VecDeque::new(),
            cycles: Vec::new(),
            transitions: Vec::new(),
            transitions_total: 0,
            problems: Vec::new(),
            warnings: Vec::new(),
            reported: HashSet::new(),
            events_seen: 0,
            renewals: 0,
            snapshots_seen: 0,
            notices: Vec::new(),
        }
    }

    /// A whole recorded history, each event taken as arriving the moment
    /// it happened (for a history read after the fact).
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>, stuck_after: Duration) -> Self {
        let mut checker = Self::new(stuck_after);
        for e in events {
            checker.observe_event(e, e.unix_ms);
        }
        checker
    }

    // ----- what it found -----

    /// The newest event sequence applied; a resumed stream asks for the next.
    pub fn last_sequence(&self) -> u64 {
        self.last_seq
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Every cycle, in order of grant.
    pub fn cycles(&self) -> &[Cycle] {
        &self.cycles
    }

    /// Events other than RENEWED, in order (at most [`MAX_KEPT_TRANSITIONS`]).
    pub fn transitions(&self) -> &[Event] {
        &self.transitions
    }

    /// Every transition seen, kept or not.
    pub fn transitions_total(&self) -> u64 {
        self.transitions_total
    }

    /// Events applied (repeats of one already seen are not counted).
    pub fn events_seen(&self) -> u64 {
        self.events_seen
    }

    pub fn renewals(&self) -> u64 {
        self.renewals
    }

    pub fn snapshots_seen(&self) -> u64 {
        self.snapshots_seen
    }

    /// Cycles that ended with a RELEASED or EXPIRED seen.
    pub fn completed_cycles(&self) -> usize {
        self.cycles.iter().filter(|c| c.completed()).count()
    }

    // ----- observations -----

    /// A warning from the plumbing (the arbiter unreachable, a message that
    /// could not be read, ...), at local time `local_unix_ms`.
    pub fn warn(&mut self, message: impl Into<String>, local_unix_ms: u64) -> Vec<Notice> {
        let at = self.arbiter_time(local_unix_ms);
        self.warning(at, message.into());
        std::mem::take(&mut self.notices)
    }

    /// One status snapshot, received at local time `received_unix_ms`.
    pub fn observe_status(&mut self, s: &Status, received_unix_ms: u64) -> Vec<Notice> {
        self.snapshots_seen += 1;
        if let Some(l) = &s.lease {
            let remaining = millis(l.remaining);
            if l.expires_at_unix_ms >= remaining && l.expires_at_unix_ms > 0 {
                // expires_at - remaining is the arbiter's clock when it answered.
                let answered = l.expires_at_unix_ms - remaining;
                self.learn_offset(signed_diff(received_unix_ms, answered));
            }
        }
        let at = self.arbiter_time(received_unix_ms);
        self.check_snapshot(s, at);
        let seq = s.last_event_sequence;
        if !self.started {
            self.started = true;
            self.complete = seq == 0;
            self.last_seq = seq;
            self.resync(s, at, true);
        } else if seq > self.last_seq {
            if self.pending.len() == MAX_PENDING_SNAPSHOTS {
                self.pending.pop_front();
            }
            self.pending.push_back((s.clone(), at));
        } else if seq == self.last_seq {
            self.resync(s, at, false);
        } else {
            self.use_stale(s);
        }
        std::mem::take(&mut self.notices)
    }

    /// One event, received at local time `received_unix_ms`.
    pub fn observe_event(&mut self, e: &Event, received_unix_ms: u64) -> Vec<Notice> {
        self.learn_offset(signed_diff(received_unix_ms, e.unix_ms));
        if self.started && e.sequence <= self.last_seq {
            return Vec::new(); // seen already (a resumed stream may repeat)
        }
        self.events_seen += 1;
        let t = e.unix_ms;
        if !self.started {
            // The arbiter numbers its events from 1 (its first start).
            self.complete = e.sequence == 1;
        } else if e.sequence > self.last_seq + 1 && e.kind != EventKind::ArbiterStarted {
            let why = format!(
                "events #{}..#{} were missed",
                self.last_seq + 1,
                e.sequence - 1
            );
            self.warning(
                t,
                format!(
                    "{why}; checks that depend on the tracked state wait for the next status snapshot"
                ),
            );
            self.uncertain = Some(why);
            self.complete = false;
        }
        self.started = true;
        // The state as it was lasted until this event.
        self.advance(t);
        self.last_seq = e.sequence;
        if e.kind == EventKind::Renewed {
            self.renewals += 1;
        } else {
            self.record_transition(e);
        }
        match e.kind {
            EventKind::Granted | EventKind::Renewed | EventKind::Released | EventKind::Expired => {
                match Named::of(e) {
                    Some(l) if e.kind == EventKind::Granted => self.on_granted(e, l),
                    Some(l) if e.kind == EventKind::Renewed => self.on_renewed(e, l),
                    Some(l) => self.on_ended(e, l),
                    None => {
                        let message = format!(
                            "event #{} ({}) does not name its lease, product, watcher and fencing token; not checked",
                            e.sequence, e.kind
                        );
                        self.warning(t, message);
                    }
                }
            }
            EventKind::Paused => {
                self.paused = true;
                self.idle_since = None;
            }
            EventKind::Resumed => {
                self.paused = false;
                if self.held.is_empty() {
                    self.idle_since = Some(t);
                }
            }
            EventKind::ConfigReloaded => {
                self.ranks = None;
                self.ranks_valid_from = e.sequence;
            }
            EventKind::ArbiterStarted => {
                // The product list may have changed while it was down, and a
                // restored arbiter drops queued products back to ready
                // (watchers report again) without events.
                self.ranks = None;
                self.ranks_valid_from = e.sequence;
                for p in self.products.values_mut() {
                    if matches!(p.state, ProductState::Queued | ProductState::OverBudget) {
                        p.state = ProductState::Ready;
                        p.since = t;
                    }
                }
            }
            EventKind::Queued
            | EventKind::Unqueued
            | EventKind::Reset
            | EventKind::WatcherJoined
            | EventKind::WatcherLeft
            | EventKind::CooledDown
            // A watcher's source blocking it moves no product or lease.
            | EventKind::SourceBlocked
            | EventKind::SourceUnblocked
            // The spending limit holds products back (a product event the
            // transition record applies) or says how it stands.
            | EventKind::OverBudget
            | EventKind::BudgetExhausted
            | EventKind::BudgetAvailable
            | EventKind::BudgetChanged => {}
        }
        self.apply_product_state(e);
        self.apply_pending();
        std::mem::take(&mut self.notices)
    }

    // ----- events -----

    fn on_granted(&mut self, e: &Event, l: Named<'_>) {
        let t = e.unix_ms;
        if self.uncertain.is_none() {
            self.check_grant(e, l);
        }
        if l.token.get() < self.token_floor {
            let detail = format!(
                "lease {} for product {} got fencing token {}, but tokens up to {} were already in use: tokens must strictly increase",
                l.lease_id,
                l.tcin,
                l.token,
                self.token_floor - 1
            );
            self.problem(
                ProblemKind::FencingTokenReused,
                format!("token:{}", l.lease_id),
                Some(e.sequence),
                t,
                l.tcin,
                detail,
            );
        }
        self.held.retain(|h| &h.lease_id != l.lease_id);
        // A lease id granted again starts a new life.
        self.ended.remove(l.lease_id);
        self.hold(l, t, true);
        self.idle_since = None;
    }

    /// What a grant must find: no other lease held and no other product
    /// ATTEMPTING, the same product if the lease is granted again, and no
    /// higher-priority product QUEUED.
    fn check_grant(&mut self, e: &Event, l: Named<'_>) {
        let t = e.unix_ms;
        let others: Vec<String> = self
            .held
            .iter()
            .filter(|h| &h.lease_id != l.lease_id)
            .map(Held::describe)
            .collect();
        let attempting: Vec<String> = self
            .products
            .iter()
            .filter(|(tcin, p)| {
                p.state == ProductState::Attempting
                    && *tcin != l.tcin
                    && !self.held.iter().any(|h| &h.tcin == *tcin)
            })
            .map(|(tcin, _)| format!("product {tcin} was still ATTEMPTING"))
            .collect();
        if !others.is_empty() || !attempting.is_empty() {
            let mut why: Vec<String> = others
                .into_iter()
                .map(|o| format!("{o} was still held (no RELEASED or EXPIRED seen for it)"))
                .collect();
            why.extend(attempting);
            let detail = format!(
                "lease {} for product {} (watcher {}, token {}) was granted while {}",
                l.lease_id,
                l.tcin,
                l.watcher_id,
                l.token,
                why.join(" and ")
            );
            self.problem(
                ProblemKind::ConcurrentAttempt,
                format!("overlap:{}", l.lease_id),
                Some(e.sequence),
                t,
                l.tcin,
                detail,
            );
        }
        if let Some(h) = self
            .held
            .iter()
            .find(|h| &h.lease_id == l.lease_id && &h.tcin != l.tcin)
        {
            let detail = format!(
                "lease {} was granted for product {} and then again for product {}",
                l.lease_id, h.tcin, l.tcin
            );
            self.problem(
                ProblemKind::ProductSwitch,
                format!("switch-regrant:{}", l.lease_id),
                Some(e.sequence),
                t,
                l.tcin,
                detail,
            );
        }
        if let Some(ranks) = &self.ranks {
            let mine = rank_key(ranks, l.tcin);
            let better: Vec<String> = self
                .products
                .iter()
                .filter(|(tcin, p)| {
                    p.state == ProductState::Queued
                        && *tcin != l.tcin
                        && rank_key(ranks, tcin) < mine
                })
                .map(|(tcin, _)| format!("product {tcin} ({})", priority_text(ranks, tcin)))
                .collect();
            if !better.is_empty() {
                let detail = format!(
                    "product {} ({}) was granted (lease {}, watcher {}, token {}) while higher-priority {} {} QUEUED: in stock and eligible",
                    l.tcin,
                    priority_text(ranks, l.tcin),
                    l.lease_id,
                    l.watcher_id,
                    l.token,
                    better.join(", "),
                    if better.len() == 1 { "was" } else { "were" }
                );
                self.problem(
                    ProblemKind::ProductSwitch,
                    format!("switch-priority:{}", l.lease_id),
                    Some(e.sequence),
                    t,
                    l.tcin,
                    detail,
                );
            }
        }
    }

    /// An event about an existing lease (RENEWED, RELEASED, EXPIRED): it
    /// must be the held lease, for the product and with the token it was
    /// granted with.
    fn check_lease_event(&mut self, e: &Event, l: Named<'_>) {
        if self.uncertain.is_some() {
            return;
        }
        match self.lease_event_findings(e, l) {
            Ok(found) => {
                for (kind, key, detail) in found {
                    self.problem(kind, key, Some(e.sequence), e.unix_ms, l.tcin, detail);
                }
            }
            Err(warning) => self.warning(e.unix_ms, warning),
        }
    }

    /// What is wrong with an event about an existing lease, as problems
    /// (kind, key, detail); or a warning when the checker cannot be sure.
    fn lease_event_findings(
        &self,
        e: &Event,
        l: Named<'_>,
    ) -> Result<Vec<(ProblemKind, String, String)>, String> {
        let what = e.kind.as_str();
        let (lease, tcin, token) = (l.lease_id, l.tcin, l.token);
        if let Some(h) = self.held.iter().find(|h| &h.lease_id == lease) {
            let mut found = Vec::new();
            if &h.tcin != tcin {
                found.push((
                    ProblemKind::ProductSwitch,
                    format!("switch-lease:{lease}:{tcin}"),
                    format!(
                        "lease {lease} was granted for product {} but its {what} names product {tcin}",
                        h.tcin
                    ),
                ));
            }
            if h.token != token {
                found.push((
                    ProblemKind::StaleLeaseAccepted,
                    format!("stale-token:{lease}:{token}"),
                    format!(
                        "lease {lease} was granted with fencing token {} but its {what} carries token {token}",
                        h.token
                    ),
                ));
            }
            return Ok(found);
        }
        if let Some(&index) = self.ended.get(lease) {
            let ended = match self.cycles.get(index).map(|c| &c.end) {
                Some(CycleEnd::Seen {
                    kind, at_unix_ms, ..
                }) => format!("{kind} at {}", rfc3339_ms(*at_unix_ms)),
                _ => "ended".to_owned(),
            };
            return Ok(vec![(
                ProblemKind::StaleLeaseAccepted,
                format!("stale-lease:{}", e.sequence),
                format!(
                    "{what} of lease {lease} (product {tcin}, token {token}) after the lease ended ({ended}): an ended lease can be neither renewed nor ended again"
                ),
            )]);
        }
        if !self.held.is_empty() {
            let held: Vec<String> = self.held.iter().map(Held::describe).collect();
            return Ok(vec![(
                ProblemKind::ConcurrentAttempt,
                format!("overlap-lease:{lease}"),
                format!(
                    "{what} of lease {lease} (product {tcin}, token {token}) while {} was the one held: two leases were alive at once",
                    held.join(" and ")
                ),
            )]);
        }
        if self.complete {
            return Ok(vec![(
                ProblemKind::LeaseNeverGranted,
                format!("never-granted:{lease}"),
                format!(
                    "{what} of lease {lease} (product {tcin}, token {token}), which was never granted: every event since the arbiter's first was seen"
                ),
            )]);
        }
        Err(format!(
            "{what} of lease {lease} (product {tcin}), whose grant was not seen"
        ))
    }

    fn on_renewed(&mut self, e: &Event, l: Named<'_>) {
        self.check_lease_event(e, l);
        if let Some(h) = self.held.iter().find(|h| &h.lease_id == l.lease_id)
            && let Some(c) = self.cycles.get_mut(h.cycle)
        {
            c.extended_at_unix_ms = e.unix_ms;
        }
    }

    fn on_ended(&mut self, e: &Event, l: Named<'_>) {
        self.check_lease_event(e, l);
        if let Some(i) = self.held.iter().position(|h| &h.lease_id == l.lease_id) {
            let h = self.held.remove(i);
            let end = CycleEnd::Seen {
                at_unix_ms: e.unix_ms,
                kind: e.kind,
                outcome: e.outcome,
                detail: e.detail.clone(),
            };
            self.close_cycle(h.cycle, end);
            self.ended.insert(h.lease_id, h.cycle);
        }
        if self.held.is_empty() && !self.paused {
            self.idle_since = Some(e.unix_ms);
        }
    }

    fn apply_product_state(&mut self, e: &Event) {
        let (Some(tcin), Some(to)) = (&e.tcin, e.to_state) else {
            return;
        };
        let t = e.unix_ms;
        let p = self.products.entry(tcin.clone()).or_insert(Tracked {
            state: e.from_state.unwrap_or(to),
            since: t,
        });
        if p.state != to {
            p.state = to;
            p.since = t;
        }
    }

    fn record_transition(&mut self, e: &Event) {
        self.transitions_total += 1;
        if self.transitions.len() < MAX_KEPT_TRANSITIONS {
            self.transitions.push(e.clone());
        }
        self.notices.push(Notice::Transition(e.clone()));
    }

    // ----- snapshots -----

    /// Checks that need nothing but the snapshot itself.
    fn check_snapshot(&mut self, s: &Status, at: u64) {
        let attempting: Vec<&ProductId> = s
            .products
            .iter()
            .filter(|p| p.state == ProductState::Attempting)
            .map(|p| &p.tcin)
            .collect();
        if let [first, _, ..] = attempting.as_slice() {
            let list = attempting
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let detail = format!(
                "a status snapshot (at event #{}) shows {} products ATTEMPTING at once: {list}",
                s.last_event_sequence,
                attempting.len()
            );
            let key = format!("snapshot-overlap:{list}");
            self.problem(ProblemKind::ConcurrentAttempt, key, None, at, first, detail);
        } else if let (Some(l), [other]) = (&s.lease, attempting.as_slice())
            && &l.tcin != *other
        {
            let detail = format!(
                "a status snapshot (at event #{}) shows lease {} held for product {} while product {other} is ATTEMPTING",
                s.last_event_sequence, l.lease_id, l.tcin
            );
            let key = format!("snapshot-switch:{}:{other}", l.lease_id);
            self.problem(ProblemKind::ProductSwitch, key, None, at, other, detail);
        }
    }

    /// Takes a snapshot that describes exactly the point the events reached
    /// (or the very first one) as the truth.
    fn resync(&mut self, s: &Status, at: u64, initial: bool) {
        self.ranks = Some(ranks_of(s));
        self.paused = s.paused;
        self.token_floor = self.token_floor.max(s.next_token.get());
        let lease = s.lease.as_ref();
        let certain = !initial && self.uncertain.is_none();

        for h in std::mem::take(&mut self.held) {
            if lease.is_some_and(|l| l.lease_id == h.lease_id) {
                self.held.push(h);
            } else {
                self.close_cycle(h.cycle, CycleEnd::Unseen { by_unix_ms: at });
                let message = format!(
                    "{} is no longer held, but no RELEASED or EXPIRED for it was seen",
                    h.describe()
                );
                self.warning(at, message);
            }
        }
        if let Some(l) = lease
            && !self.held.iter().any(|h| h.lease_id == l.lease_id)
        {
            if certain {
                let message = format!(
                    "lease {} (product {}) is held, but its grant was not seen",
                    l.lease_id, l.tcin
                );
                self.warning(at, message);
            }
            let start = if l.granted_at_unix_ms > 0 {
                l.granted_at_unix_ms
            } else {
                at
            };
            let named = Named {
                lease_id: &l.lease_id,
                tcin: &l.tcin,
                watcher_id: &l.watcher_id,
                token: l.token,
            };
            self.hold(named, start, false);
        }

        for p in &s.products {
            let since = match lease {
                Some(l)
                    if p.state == ProductState::Attempting
                        && l.tcin == p.tcin
                        && l.granted_at_unix_ms > 0 =>
                {
                    l.granted_at_unix_ms
                }
                _ => at,
            };
            match self.products.get_mut(&p.tcin) {
                Some(t) if t.state == p.state => {}
                Some(t) => {
                    let was = t.state;
                    t.state = p.state;
                    t.since = since;
                    if certain {
                        let message = format!(
                            "product {} was tracked as {} but status says {}; corrected",
                            p.tcin,
                            upper(was),
                            upper(p.state)
                        );
                        self.warning(at, message);
                    }
                }
                None => {
                    self.products.insert(
                        p.tcin.clone(),
                        Tracked {
                            state: p.state,
                            since,
                        },
                    );
                }
            }
        }

        self.idle_since = if self.held.is_empty() && !self.paused {
            Some(self.idle_since.unwrap_or(at))
        } else {
            None
        };
        if let Some(why) = self.uncertain.take() {
            let message = format!(
                "tracking resynchronised from a status snapshot at event #{} after: {why}",
                s.last_event_sequence
            );
            self.warning(at, message);
        }
        self.advance(at);
    }

    /// A snapshot older than the events already applied: only what cannot
    /// have changed since is used.
    fn use_stale(&mut self, s: &Status) {
        if s.last_event_sequence >= self.ranks_valid_from {
            self.ranks = Some(ranks_of(s));
        }
        self.token_floor = self.token_floor.max(s.next_token.get());
    }

    fn apply_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut waiting = VecDeque::new();
        while let Some((s, at)) = self.pending.pop_front() {
            match s.last_event_sequence.cmp(&self.last_seq) {
                Ordering::Greater => waiting.push_back((s, at)),
                Ordering::Equal => self.resync(&s, at, false),
                Ordering::Less => self.use_stale(&s),
            }
        }
        self.pending = waiting;
    }

    // ----- time -----

    fn learn_offset(&mut self, candidate: i64) {
        self.offset_ms = Some(self.offset_ms.map_or(candidate, |o| o.min(candidate)));
    }

    /// A local time as arbiter time, by the estimated offset.
    fn arbiter_time(&self, local_unix_ms: u64) -> u64 {
        let local = i64::try_from(local_unix_ms).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_sub(self.offset_ms.unwrap_or(0))).unwrap_or(0)
    }

    /// The state is known up to `t`: check what has been waiting too long.
    fn advance(&mut self, t: u64) {
        self.horizon = self.horizon.max(t);
        if self.uncertain.is_some() || !self.started {
            return;
        }
        let now = self.horizon;
        let mut stuck = Vec::new();
        for (tcin, p) in &self.products {
            let (since, queued) = match (p.state, self.idle_since) {
                (ProductState::Attempting, _) => (p.since, false),
                (ProductState::Queued, Some(idle)) => (p.since.max(idle), true),
                _ => continue,
            };
            if now.saturating_sub(since) > self.stuck_after_ms {
                stuck.push((tcin.clone(), since, queued));
            }
        }
        for (tcin, since, queued) in stuck {
            let waited = short_ms(now.saturating_sub(since));
            let limit = short_ms(self.stuck_after_ms);
            let detail = if queued {
                format!(
                    "product {tcin} has been QUEUED for {waited} (since {}) with the slot free and the arbiter not paused, longer than the {limit} limit: nothing granted it",
                    rfc3339_ms(since)
                )
            } else {
                let lease = self
                    .held
                    .iter()
                    .find(|h| h.tcin == tcin)
                    .map(|h| {
                        format!(
                            ", lease {}, watcher {}, token {}",
                            h.lease_id, h.watcher_id, h.token
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "product {tcin} has been ATTEMPTING for {waited} (since {}{lease}), longer than the {limit} limit",
                    rfc3339_ms(since)
                )
            };
            let state = if queued { "queued" } else { "attempting" };
            let key = format!("stuck:{state}:{tcin}:{since}");
            self.problem(ProblemKind::StuckPurchase, key, None, now, &tcin, detail);
        }
    }

    // ----- records -----

    /// Takes `l` as holding the slot since `start`: a new cycle, and no
    /// later grant may carry its token or an older one.
    fn hold(&mut self, l: Named<'_>, start: u64, start_observed: bool) {
        self.cycles.push(Cycle {
            number: self.cycles.len() + 1,
            lease_id: l.lease_id.clone(),
            tcin: l.tcin.clone(),
            watcher_id: l.watcher_id.clone(),
            token: l.token,
            started_at_unix_ms: start,
            start_observed,
            extended_at_unix_ms: start,
            end: CycleEnd::Open,
        });
        self.held.push(Held {
            lease_id: l.lease_id.clone(),
            tcin: l.tcin.clone(),
            watcher_id: l.watcher_id.clone(),
            token: l.token,
            cycle: self.cycles.len() - 1,
        });
        self.token_floor = self.token_floor.max(l.token.get().saturating_add(1));
    }

    fn close_cycle(&mut self, index: usize, end: CycleEnd) {
        if let Some(c) = self.cycles.get_mut(index) {
            c.end = end;
            let c = c.clone();
            self.notices.push(Notice::CycleEnded(c));
        }
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        key: String,
        sequence: Option<u64>,
        at: u64,
        tcin: &ProductId,
        detail: String,
    ) {
        if !self.reported.insert(key) {
            return;
        }
        let p = Problem {
            kind,
            at_unix_ms: at,
            sequence,
            tcin: tcin.clone(),
            detail,
        };
        self.problems.push(p.clone());
        self.notices.push(Notice::Problem(p));
    }

    fn warning(&mut self, at: u64, message: String) {
        let w = Warning {
            at_unix_ms: at,
            message,
        };
        self.warnings.push(w.clone());
        self.notices.push(Notice::Warning(w));
    }
}

/// `a - b` as a signed number of milliseconds, saturating.
fn signed_diff(a: u64, b: u64) -> i64 {
    let a = i64::try_from(a).unwrap_or(i64::MAX);
    let b = i64::try_from(b).unwrap_or(i64::MAX);
    a.saturating_sub(b)
}

/// `READY`, `ATTEMPTING`, ...: product states as the protocol and the
/// event lines write them.
fn upper(s: ProductState) -> String {
    s.as_str().to_ascii_uppercase()
}

fn ranks_of(s: &Status) -> BTreeMap<ProductId, Rank> {
    s.products
        .iter()
        .map(|p| {
            (
                p.tcin.clone(),
                Rank {
                    configured: p.configured,
                    priority: p.priority,
                },
            )
        })
        .collect()
}

/// The arbiter's ordering: configured products by their place in the list,
/// then every other product by id. A product the snapshot did not list yet
/// is a new, unconfigured one (every configured product is listed).
fn rank_key<'a>(ranks: &BTreeMap<ProductId, Rank>, tcin: &'a ProductId) -> (u64, &'a str) {
    match ranks.get(tcin) {
        Some(r) if r.configured => (u64::from(r.priority), ""),
        _ => (u64::MAX, tcin.as_str()),
    }
}

fn priority_text(ranks: &BTreeMap<ProductId, Rank>, tcin: &ProductId) -> String {
    match ranks.get(tcin) {
        Some(r) if r.configured => format!("priority {}", r.priority),
        _ => "not in the product config".into(),
    }
}
