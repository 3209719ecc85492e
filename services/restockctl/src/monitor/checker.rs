//! The monitor's checker: a pure state machine fed the arbiter's events (from
//! `WatchEvents`) and periodic status snapshots (from `GetStatus`), producing
//! transitions, the cycle history and the problems it finds. No I/O and no
//! clock of its own: every observation carries its time, so tests feed it
//! made-up histories.
//!
//! # What it tracks
//!
//! Product states and the held lease(s) follow the events, which carry every
//! state change in order. A snapshot is taken as truth only at the point of
//! the event stream it describes (its `last_event_sequence`): one that is
//! ahead of the events waits until they catch up; one that is behind is used
//! only for what cannot have changed since (priorities, the fencing-token
//! floor). After missed events (a sequence gap) the state-based checks pause
//! until a snapshot at the right point resynchronises the tracking, so the
//! monitor never reports a problem it only imagined.
//!
//! Time is the arbiter's: events carry its clock, and a snapshot's time is its
//! arrival time corrected by the smallest observed (arrival - event time)
//! offset. "Now" for the stuck check is the newest moment the monitor has
//! knowledge of (the last event, or a snapshot at the current point of the
//! stream), so a burst of old events replayed after a reconnect never looks
//! stuck.
//!
//! # The problems
//!
//! - **Product switch mid-cycle**: a GRANTED for product X while a product Y
//!   of higher priority was QUEUED (in stock and eligible; the arbiter only
//!   queues eligible products), or an event of the held lease
//!   (GRANTED/RENEWED/RELEASED/EXPIRED) naming a different product than the
//!   lease was granted for, or a snapshot whose lease is for X while Y is
//!   ATTEMPTING.
//! - **Concurrent purchase attempt**: a GRANTED while another lease is still
//!   held (no RELEASED/EXPIRED seen for it) or another product is ATTEMPTING;
//!   an event of a lease other than the held one (two leases alive); or a
//!   snapshot with two or more products ATTEMPTING.
//! - **Stuck purchase**: a product ATTEMPTING for longer than the limit (a
//!   lease renewed forever counts), or QUEUED for longer than the limit while
//!   the slot was free and the arbiter not paused. A product waiting behind
//!   other purchases, or behind a pause, is waiting by design and not stuck.
//! - **Fencing token reused**: a grant whose token is not above every token
//!   seen before (tokens must strictly increase, across restarts too).
//!
//! A cycle is one lease: GRANTED .. RELEASED/EXPIRED.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use restock_proto::v1::{self as pb, ProductState as St, event::Kind};
use serde::Serialize;

use crate::format::{duration_ms, kind_name, outcome_name, state_name, time};

/// Snapshots waiting for the event stream to catch up; the oldest go first.
const MAX_PENDING_SNAPSHOTS: usize = 64;
/// Transitions kept for the final report; later ones are only counted.
pub const MAX_KEPT_TRANSITIONS: usize = 10_000;

/// The kinds of problem the monitor looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    ProductSwitch,
    ConcurrentAttempt,
    StuckPurchase,
    FencingTokenReused,
}

impl ProblemKind {
    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Self::ProductSwitch => "product switch mid-cycle",
            Self::ConcurrentAttempt => "concurrent purchase attempt",
            Self::StuckPurchase => "stuck purchase",
            Self::FencingTokenReused => "fencing token reused",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Arbiter time of the observation that showed it.
    pub at_unix_ms: u64,
    /// The event that showed it; `None` when a status snapshot or the
    /// passing of time did.
    pub sequence: Option<u64>,
    pub tcin: String,
    pub detail: String,
}

/// Something the monitor could not check or had to correct; not a problem of
/// the system, and it does not change the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub at_unix_ms: u64,
    pub message: String,
}

/// One event as the monitor reports it (every kind except RENEWED).
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub sequence: u64,
    pub at_unix_ms: u64,
    pub kind: String,
    pub tcin: String,
    pub watcher_id: String,
    pub fencing_token: u64,
    pub from_state: String,
    pub to_state: String,
    pub outcome: String,
    pub detail: String,
}

/// One purchase cycle: a lease from its grant to its end.
#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    /// 1, 2, ... in order of grant.
    pub number: usize,
    pub lease_id: String,
    pub tcin: String,
    pub watcher_id: String,
    pub fencing_token: u64,
    pub started_at_unix_ms: u64,
    pub ended_at_unix_ms: Option<u64>,
    /// As in the .proto (`OUTCOME_PURCHASED`, ...); `None` while open or when
    /// the end was not seen.
    pub outcome: Option<String>,
    pub duration_ms: Option<u64>,
    /// False when the lease was granted before the monitor watched (its start
    /// comes from the lease's grant time).
    pub start_observed: bool,
    /// False when the lease disappeared without a RELEASED/EXPIRED seen.
    pub end_observed: bool,
}

impl Cycle {
    /// Ended with a RELEASED or EXPIRED the monitor saw.
    pub fn completed(&self) -> bool {
        self.ended_at_unix_ms.is_some() && self.end_observed
    }
}

/// What one observation produced, in order, for live output.
#[derive(Debug, Clone)]
pub enum Notice {
    Transition(Transition),
    CycleEnded(Cycle),
    Problem(Problem),
    Warning(Warning),
}

#[derive(Debug, Clone)]
struct Tracked {
    state: St,
    /// Arbiter time it entered `state` (or was first seen in it).
    since: u64,
}

#[derive(Debug, Clone)]
struct Held {
    lease_id: String,
    tcin: String,
    watcher_id: String,
    token: u64,
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

#[derive(Debug, Clone, Copy)]
struct Rank {
    configured: bool,
    priority: u32,
}

/// The checker. See the module documentation.
#[derive(Debug)]
pub struct Monitor {
    stuck_after_ms: u64,
    started: bool,
    /// The newest event applied (or the point the first snapshot described).
    last_seq: u64,
    products: BTreeMap<String, Tracked>,
    /// Priorities from the latest usable snapshot; `None` after a reload or a
    /// restart until a snapshot taken after it arrives.
    ranks: Option<BTreeMap<String, Rank>>,
    /// Sequence of the last reload/restart: snapshots at or after it carry
    /// the current priorities.
    ranks_valid_from: u64,
    held: Vec<Held>,
    paused: bool,
    /// Since when the slot has been free and the arbiter not paused.
    idle_since: Option<u64>,
    /// Why the tracked state cannot be trusted (missed events), until a
    /// snapshot resynchronises it.
    uncertain: Option<String>,
    /// Every new grant must carry at least this token.
    token_floor: u64,
    /// The newest arbiter time the monitor knows the state at.
    horizon: u64,
    /// Local clock minus arbiter clock, estimated (smallest seen).
    offset_ms: Option<i64>,
    pending: VecDeque<(pb::GetStatusResponse, u64)>,
    cycles: Vec<Cycle>,
    transitions: Vec<Transition>,
    transitions_total: u64,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
    reported: HashSet<String>,
    events_seen: u64,
    renewals: u64,
    snapshots_seen: u64,
    notices: Vec<Notice>,
}

impl Monitor {
    /// A checker that calls a purchase stuck after `stuck_after`.
    pub fn new(stuck_after: Duration) -> Self {
        Self {
            stuck_after_ms: stuck_after.as_millis().min(u64::MAX as u128) as u64,
            started: false,
            last_seq: 0,
            products: BTreeMap::new(),
            ranks: None,
            ranks_valid_from: 0,
            held: Vec::new(),
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
    pub fn cycles(&self) -> &[Cycle] {
        &self.cycles
    }
    /// Transitions kept (at most [`MAX_KEPT_TRANSITIONS`]).
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }
    pub fn transitions_total(&self) -> u64 {
        self.transitions_total
    }
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

    /// A warning from the plumbing (the arbiter unreachable, ...), at local
    /// time `local_unix_ms`.
    pub fn warn(&mut self, message: impl Into<String>, local_unix_ms: u64) -> Vec<Notice> {
        let at = self.arbiter_time(local_unix_ms);
        self.warning(at, message.into());
        std::mem::take(&mut self.notices)
    }

    /// One `GetStatus` answer, received at local time `received_unix_ms`.
    pub fn observe_snapshot(
        &mut self,
        s: &pb::GetStatusResponse,
        received_unix_ms: u64,
    ) -> Vec<Notice> {
        self.snapshots_seen += 1;
        if let Some(l) = &s.active_lease
            && l.expires_at_unix_ms >= l.remaining_ms
            && l.expires_at_unix_ms > 0
        {
            // expires_at - remaining is the arbiter's clock when it answered.
            let answered = l.expires_at_unix_ms - l.remaining_ms;
            self.learn_offset(received_unix_ms as i64 - answered as i64);
        }
        let at = self.arbiter_time(received_unix_ms);
        self.check_snapshot(s, at);
        let seq = s.last_event_sequence;
        if !self.started {
            self.started = true;
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

    /// One event from `WatchEvents`, received at local time `received_unix_ms`.
    pub fn observe_event(&mut self, e: &pb::Event, received_unix_ms: u64) -> Vec<Notice> {
        self.learn_offset(received_unix_ms as i64 - e.unix_ms as i64);
        if self.started && e.sequence <= self.last_seq {
            return Vec::new(); // seen already (a resumed stream may repeat)
        }
        self.events_seen += 1;
        let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unspecified);
        let t = e.unix_ms;
        if self.started && e.sequence > self.last_seq + 1 && kind != Kind::ArbiterStarted {
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
        }
        self.started = true;
        // The state as it was lasted until this event.
        self.advance(t);
        self.last_seq = e.sequence;
        if kind == Kind::Renewed {
            self.renewals += 1;
        } else {
            self.record_transition(e);
        }
        match kind {
            Kind::Granted => self.on_granted(e),
            Kind::Released | Kind::Expired => self.on_ended(e),
            Kind::Renewed => self.on_renewed(e),
            Kind::Paused => {
                self.paused = true;
                self.idle_since = None;
            }
            Kind::Resumed => {
                self.paused = false;
                if self.held.is_empty() {
                    self.idle_since = Some(t);
                }
            }
            Kind::ConfigReloaded => {
                self.ranks = None;
                self.ranks_valid_from = e.sequence;
            }
            Kind::ArbiterStarted => {
                // The product list may have changed while it was down, and a
                // restored arbiter drops queued products back to ready
                // (watchers report again) without events.
                self.ranks = None;
                self.ranks_valid_from = e.sequence;
                for p in self.products.values_mut() {
                    if p.state == St::Queued {
                        p.state = St::Ready;
                        p.since = t;
                    }
                }
            }
            _ => {}
        }
        self.apply_product_state(e);
        self.apply_pending();
        std::mem::take(&mut self.notices)
    }

    // ----- events -----

    fn on_granted(&mut self, e: &pb::Event) {
        let t = e.unix_ms;
        if self.uncertain.is_none() {
            let others: Vec<String> = self
                .held
                .iter()
                .filter(|h| h.lease_id != e.lease_id)
                .map(Held::describe)
                .collect();
            let attempting: Vec<String> = self
                .products
                .iter()
                .filter(|(tcin, p)| {
                    p.state == St::Attempting
                        && **tcin != e.tcin
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
                self.problem(
                    ProblemKind::ConcurrentAttempt,
                    format!("overlap:{}", e.lease_id),
                    Some(e.sequence),
                    t,
                    &e.tcin,
                    format!(
                        "lease {} for product {} (watcher {}, token {}) was granted while {}",
                        e.lease_id,
                        e.tcin,
                        e.watcher_id,
                        e.fencing_token,
                        why.join(" and ")
                    ),
                );
            }
            if let Some(h) = self
                .held
                .iter()
                .find(|h| h.lease_id == e.lease_id && h.tcin != e.tcin)
            {
                let detail = format!(
                    "lease {} was granted for product {} and then again for product {}",
                    e.lease_id, h.tcin, e.tcin
                );
                self.problem(
                    ProblemKind::ProductSwitch,
                    format!("switch-regrant:{}", e.lease_id),
                    Some(e.sequence),
                    t,
                    &e.tcin,
                    detail,
                );
            }
            if let Some(ranks) = &self.ranks {
                let mine = rank_key(ranks, &e.tcin);
                let better: Vec<String> = self
                    .products
                    .iter()
                    .filter(|(tcin, p)| {
                        p.state == St::Queued && **tcin != e.tcin && rank_key(ranks, tcin) < mine
                    })
                    .map(|(tcin, _)| format!("product {tcin} ({})", priority_text(ranks, tcin)))
                    .collect();
                if !better.is_empty() {
                    let detail = format!(
                        "product {} ({}) was granted (lease {}, watcher {}, token {}) while higher-priority {} {} QUEUED: in stock and eligible",
                        e.tcin,
                        priority_text(ranks, &e.tcin),
                        e.lease_id,
                        e.watcher_id,
                        e.fencing_token,
                        better.join(", "),
                        if better.len() == 1 { "was" } else { "were" }
                    );
                    self.problem(
                        ProblemKind::ProductSwitch,
                        format!("switch-priority:{}", e.lease_id),
                        Some(e.sequence),
                        t,
                        &e.tcin,
                        detail,
                    );
                }
            }
        }
        if e.fencing_token != 0 && e.fencing_token < self.token_floor {
            let detail = format!(
                "lease {} for product {} got fencing token {}, but tokens up to {} were already in use: tokens must strictly increase",
                e.lease_id,
                e.tcin,
                e.fencing_token,
                self.token_floor - 1
            );
            self.problem(
                ProblemKind::FencingTokenReused,
                format!("token:{}", e.lease_id),
                Some(e.sequence),
                t,
                &e.tcin,
                detail,
            );
        }
        self.token_floor = self.token_floor.max(e.fencing_token.saturating_add(1));
        self.held.retain(|h| h.lease_id != e.lease_id);
        let cycle = self.open_cycle(
            &e.lease_id,
            &e.tcin,
            &e.watcher_id,
            e.fencing_token,
            t,
            true,
        );
        self.held.push(Held {
            lease_id: e.lease_id.clone(),
            tcin: e.tcin.clone(),
            watcher_id: e.watcher_id.clone(),
            token: e.fencing_token,
            cycle,
        });
        self.idle_since = None;
    }

    /// An event about an existing lease (RENEWED, RELEASED, EXPIRED): it must
    /// be the held lease, for the product it was granted for.
    fn check_lease_event(&mut self, e: &pb::Event) {
        if self.uncertain.is_some() {
            return;
        }
        let what = kind_name(e.kind);
        match self.held.iter().find(|h| h.lease_id == e.lease_id) {
            Some(h) if h.tcin != e.tcin => {
                let detail = format!(
                    "lease {} was granted for product {} but its {what} names product {}",
                    e.lease_id, h.tcin, e.tcin
                );
                self.problem(
                    ProblemKind::ProductSwitch,
                    format!("switch-lease:{}:{}", e.lease_id, e.tcin),
                    Some(e.sequence),
                    e.unix_ms,
                    &e.tcin,
                    detail,
                );
            }
            Some(_) => {}
            None if !self.held.is_empty() => {
                let held: Vec<String> = self.held.iter().map(Held::describe).collect();
                let detail = format!(
                    "{what} of lease {} (product {}, token {}) while {} was the one held: two leases were alive at once",
                    e.lease_id,
                    e.tcin,
                    e.fencing_token,
                    held.join(" and ")
                );
                self.problem(
                    ProblemKind::ConcurrentAttempt,
                    format!("overlap-lease:{}", e.lease_id),
                    Some(e.sequence),
                    e.unix_ms,
                    &e.tcin,
                    detail,
                );
            }
            None => {
                let message = format!(
                    "{what} of lease {} (product {}), which the monitor never saw granted",
                    e.lease_id, e.tcin
                );
                self.warning(e.unix_ms, message);
            }
        }
    }

    fn on_renewed(&mut self, e: &pb::Event) {
        self.check_lease_event(e);
    }

    fn on_ended(&mut self, e: &pb::Event) {
        self.check_lease_event(e);
        if let Some(i) = self.held.iter().position(|h| h.lease_id == e.lease_id) {
            let h = self.held.remove(i);
            self.close_cycle(h.cycle, e.unix_ms, Some(e.outcome), true);
        }
        if self.held.is_empty() && !self.paused {
            self.idle_since = Some(e.unix_ms);
        }
    }

    fn apply_product_state(&mut self, e: &pb::Event) {
        if e.tcin.is_empty() {
            return;
        }
        let to = St::try_from(e.to_state).unwrap_or(St::Unspecified);
        if to == St::Unspecified {
            return;
        }
        let from = St::try_from(e.from_state).unwrap_or(St::Unspecified);
        let t = e.unix_ms;
        let p = self.products.entry(e.tcin.clone()).or_insert(Tracked {
            state: if from == St::Unspecified { to } else { from },
            since: t,
        });
        if p.state != to {
            p.state = to;
            p.since = t;
        }
    }

    fn record_transition(&mut self, e: &pb::Event) {
        self.transitions_total += 1;
        let outcome = if e.outcome == pb::Outcome::Unspecified as i32 {
            String::new()
        } else {
            outcome_name(e.outcome)
        };
        let state = |v: i32| {
            if v == St::Unspecified as i32 {
                String::new()
            } else {
                state_name(v)
            }
        };
        let t = Transition {
            sequence: e.sequence,
            at_unix_ms: e.unix_ms,
            kind: kind_name(e.kind),
            tcin: e.tcin.clone(),
            watcher_id: e.watcher_id.clone(),
            fencing_token: e.fencing_token,
            from_state: state(e.from_state),
            to_state: state(e.to_state),
            outcome,
            detail: e.detail.clone(),
        };
        if self.transitions.len() < MAX_KEPT_TRANSITIONS {
            self.transitions.push(t.clone());
        }
        self.notices.push(Notice::Transition(t));
    }

    // ----- snapshots -----

    /// Checks that need nothing but the snapshot itself.
    fn check_snapshot(&mut self, s: &pb::GetStatusResponse, at: u64) {
        let attempting: Vec<&str> = s
            .products
            .iter()
            .filter(|p| p.state == St::Attempting as i32)
            .map(|p| p.tcin.as_str())
            .collect();
        if attempting.len() >= 2 {
            let list = attempting.join(", ");
            self.problem(
                ProblemKind::ConcurrentAttempt,
                format!("snapshot-overlap:{list}"),
                None,
                at,
                attempting[0],
                format!(
                    "a status snapshot (at event #{}) shows {} products ATTEMPTING at once: {list}",
                    s.last_event_sequence,
                    attempting.len()
                ),
            );
        } else if let (Some(l), [other]) = (&s.active_lease, attempting.as_slice())
            && l.tcin != *other
        {
            let detail = format!(
                "a status snapshot (at event #{}) shows lease {} held for product {} while product {other} is ATTEMPTING",
                s.last_event_sequence, l.lease_id, l.tcin
            );
            self.problem(
                ProblemKind::ProductSwitch,
                format!("snapshot-switch:{}:{other}", l.lease_id),
                None,
                at,
                other,
                detail,
            );
        }
    }

    /// Takes a snapshot that describes exactly the point the events reached
    /// (or the very first one) as the truth.
    fn resync(&mut self, s: &pb::GetStatusResponse, at: u64, initial: bool) {
        self.ranks = Some(ranks_of(s));
        self.paused = s.paused;
        self.token_floor = self.token_floor.max(s.next_fencing_token);
        let lease = s.active_lease.as_ref();
        let certain = !initial && self.uncertain.is_none();

        for h in std::mem::take(&mut self.held) {
            if lease.is_some_and(|l| l.lease_id == h.lease_id) {
                self.held.push(h);
            } else {
                self.close_cycle(h.cycle, at, None, false);
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
                    "lease {} (product {}) is held, but the monitor never saw it granted",
                    l.lease_id, l.tcin
                );
                self.warning(at, message);
            }
            let start = if l.granted_at_unix_ms > 0 {
                l.granted_at_unix_ms
            } else {
                at
            };
            let cycle = self.open_cycle(
                &l.lease_id,
                &l.tcin,
                &l.watcher_id,
                l.fencing_token,
                start,
                false,
            );
            self.held.push(Held {
                lease_id: l.lease_id.clone(),
                tcin: l.tcin.clone(),
                watcher_id: l.watcher_id.clone(),
                token: l.fencing_token,
                cycle,
            });
            self.token_floor = self.token_floor.max(l.fencing_token.saturating_add(1));
        }

        for p in &s.products {
            let state = St::try_from(p.state).unwrap_or(St::Unspecified);
            let since = match lease {
                Some(l)
                    if state == St::Attempting && l.tcin == p.tcin && l.granted_at_unix_ms > 0 =>
                {
                    l.granted_at_unix_ms
                }
                _ => at,
            };
            match self.products.get_mut(&p.tcin) {
                Some(t) if t.state == state => {}
                Some(t) => {
                    if certain {
                        let message = format!(
                            "the monitor tracked product {} as {} but status says {}; corrected",
                            p.tcin,
                            t.state.as_str_name(),
                            state.as_str_name()
                        );
                        t.state = state;
                        t.since = since;
                        self.warning(at, message);
                    } else {
                        t.state = state;
                        t.since = since;
                    }
                }
                None => {
                    self.products
                        .insert(p.tcin.clone(), Tracked { state, since });
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
    fn use_stale(&mut self, s: &pb::GetStatusResponse) {
        if s.last_event_sequence >= self.ranks_valid_from {
            self.ranks = Some(ranks_of(s));
        }
        self.token_floor = self.token_floor.max(s.next_fencing_token);
    }

    fn apply_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut waiting = VecDeque::new();
        while let Some((s, at)) = self.pending.pop_front() {
            match s.last_event_sequence.cmp(&self.last_seq) {
                std::cmp::Ordering::Greater => waiting.push_back((s, at)),
                std::cmp::Ordering::Equal => self.resync(&s, at, false),
                std::cmp::Ordering::Less => self.use_stale(&s),
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
        (local_unix_ms as i64 - self.offset_ms.unwrap_or(0)).max(0) as u64
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
                (St::Attempting, _) => (p.since, false),
                (St::Queued, Some(idle)) => (p.since.max(idle), true),
                _ => continue,
            };
            if now.saturating_sub(since) > self.stuck_after_ms {
                stuck.push((tcin.clone(), since, queued));
            }
        }
        for (tcin, since, queued) in stuck {
            let waited = duration_ms(now - since);
            let limit = duration_ms(self.stuck_after_ms);
            let detail = if queued {
                format!(
                    "product {tcin} has been QUEUED for {waited} (since {}) with the slot free and the arbiter not paused, longer than the {limit} limit: nothing granted it",
                    time(since)
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
                    time(since)
                )
            };
            let state = if queued { "queued" } else { "attempting" };
            self.problem(
                ProblemKind::StuckPurchase,
                format!("stuck:{state}:{tcin}:{since}"),
                None,
                now,
                &tcin,
                detail,
            );
        }
    }

    // ----- records -----

    fn open_cycle(
        &mut self,
        lease_id: &str,
        tcin: &str,
        watcher_id: &str,
        token: u64,
        start: u64,
        start_observed: bool,
    ) -> usize {
        self.cycles.push(Cycle {
            number: self.cycles.len() + 1,
            lease_id: lease_id.to_owned(),
            tcin: tcin.to_owned(),
            watcher_id: watcher_id.to_owned(),
            fencing_token: token,
            started_at_unix_ms: start,
            ended_at_unix_ms: None,
            outcome: None,
            duration_ms: None,
            start_observed,
            end_observed: false,
        });
        self.cycles.len() - 1
    }

    fn close_cycle(&mut self, index: usize, end: u64, outcome: Option<i32>, observed: bool) {
        let c = &mut self.cycles[index];
        c.ended_at_unix_ms = Some(end);
        c.end_observed = observed;
        if observed {
            c.outcome = outcome.map(outcome_name);
            c.duration_ms = Some(end.saturating_sub(c.started_at_unix_ms));
        }
        let c = c.clone();
        self.notices.push(Notice::CycleEnded(c));
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        key: String,
        sequence: Option<u64>,
        at: u64,
        tcin: &str,
        detail: String,
    ) {
        if !self.reported.insert(key) {
            return;
        }
        let p = Problem {
            kind,
            at_unix_ms: at,
            sequence,
            tcin: tcin.to_owned(),
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

fn ranks_of(s: &pb::GetStatusResponse) -> BTreeMap<String, Rank> {
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
fn rank_key<'a>(ranks: &BTreeMap<String, Rank>, tcin: &'a str) -> (u64, &'a str) {
    match ranks.get(tcin) {
        Some(r) if r.configured => (u64::from(r.priority), ""),
        _ => (u64::MAX, tcin),
    }
}

fn priority_text(ranks: &BTreeMap<String, Rank>, tcin: &str) -> String {
    match ranks.get(tcin) {
        Some(r) if r.configured => format!("priority {}", r.priority),
        _ => "not in the product config".into(),
    }
}

#[cfg(test)]
mod tests;
