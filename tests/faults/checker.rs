//! The fault suite's checker: reads what the store recorded (every
//! checkout, with its fencing token and times) and what the arbiter
//! recorded (its event history), together with the log of injected faults,
//! and decides whether the system kept its promises.
//!
//! The arbiter's own promises (one lease at a time, tokens strictly
//! increase, each lease ends once and a stale one is never accepted, no
//! switch mid-cycle, nothing stuck) are checked by the domain's history
//! checker ([`restock_domain::history::Checker`], the one `restockctl
//! monitor` uses), replayed over the whole event history; its cycles are
//! the leases the checks here compare the store's ledger with. What is this
//! suite's own: the store's ledger (overlap by wall time, stale tokens,
//! checkouts inside their lease), the timing of faults and recoveries,
//! purchases on both sides matching, and the history being complete.
//!
//! Plain data in, a [`Report`] out: no processes, no I/O, so the unit tests
//! below feed it synthetic histories and show that each check catches what
//! it is meant to catch.
//!
//! Times are unix milliseconds. The store, the arbiter and the suite run on
//! one machine and each derives its wall time from the monotonic clock, so
//! their times agree to within [`Settings::clock_tolerance_ms`]; every
//! comparison between two processes' times allows that much.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Duration,
};

use restock_domain::{
    Event, EventKind, FencingToken, Outcome,
    history::{Checker, Cycle, CycleEnd, ProblemKind},
    lease::holder_margin,
};

/// One checkout as the store recorded it (`GET /admin/orders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOrder {
    /// The store's sequence number: the order in which checkouts began.
    pub id: u64,
    pub tcin: String,
    pub token: u64,
    pub lease_id: String,
    pub watcher_id: String,
    pub started_at_ms: u64,
    /// `None` for a checkout still in flight.
    pub finished_at_ms: Option<u64>,
    /// `purchased`, `failed`, `aborted`, `stale_token`, `out_of_stock`, ...
    pub result: String,
    /// Got past the store's checks (purchased, failed or aborted).
    pub accepted: bool,
}

/// The store's whole order book.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreLedger {
    /// Finished attempts and the ones still in flight.
    pub orders: Vec<StoreOrder>,
    /// The store's own count of overlapping pairs.
    pub violations: u64,
}

/// The arbiter's running totals at the end of the run (`GetStatus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArbiterCounters {
    pub grants: u64,
    pub purchases: u64,
    pub expirations: u64,
}

/// What was done to the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of the arbiter at a random moment, then a restart.
    ArbiterKill,
    /// `kill -9` of the arbiter the moment a grant was seen.
    ArbiterKillAfterGrant,
    /// `kill -9` of a watcher (maybe not the holder), then a restart.
    WatcherKill,
    /// `kill -9` of the lease holder while its checkout runs.
    HolderKill,
    /// SIGSTOP of the holder for longer than the TTL, then SIGCONT.
    HolderPause,
    /// SIGSTOP of a watcher that holds nothing, for longer than the TTL:
    /// the slot may be pushed to it while it cannot read.
    WatcherPause,
    /// One watcher's link to the arbiter cut, then healed.
    WatcherCutOff,
    /// Every watcher of one host cut off from the arbiter, then healed.
    HostCutOff,
    /// Many products flipping in and out of stock.
    RestockStorm,
    /// HA mode: `kill -9` of the leading replica, restarted later (as a
    /// follower).
    LeaderKill,
    /// HA mode: SIGSTOP of the leading replica for longer than the
    /// election TTL, then SIGCONT: deposed meanwhile, it must not grant.
    LeaderPause,
    /// HA mode: the leading replica cut from every etcd member (not from
    /// the watchers), then healed.
    LeaderEtcdCut,
    /// HA mode: `kill -9` of one etcd member, restarted later on its data.
    EtcdMemberKill,
    /// HA mode: every replica restarted at once (SIGTERM or `kill -9`).
    ReplicasRestart,
    /// HA mode: SIGSTOP of the leading replica the moment one of its
    /// grants is streamed, for the election TTL + 1 s, then SIGCONT: the
    /// next leader carries the lease; the resumed one must grant nothing.
    LeaderPauseAtGrant,
    /// HA mode: SIGSTOP of one etcd member (the raft leader, or each in
    /// turn) for longer than the lease TTL but less than the election TTL,
    /// then SIGCONT: the leader's writes through it hang past the lease
    /// TTL while the leader itself may keep its lead.
    EtcdMemberPause,
}

impl FaultKind {
    pub const ALL: [FaultKind; 9] = [
        Self::ArbiterKill,
        Self::ArbiterKillAfterGrant,
        Self::WatcherKill,
        Self::HolderKill,
        Self::HolderPause,
        Self::WatcherPause,
        Self::WatcherCutOff,
        Self::HostCutOff,
        Self::RestockStorm,
    ];

    /// The HA mode's faults (`RESTOCK_FAULT_MODE=ha`).
    pub const HA: [FaultKind; 7] = [
        Self::LeaderKill,
        Self::LeaderPause,
        Self::LeaderEtcdCut,
        Self::EtcdMemberKill,
        Self::ReplicasRestart,
        Self::LeaderPauseAtGrant,
        Self::EtcdMemberPause,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ArbiterKill => "arbiter kill -9",
            Self::ArbiterKillAfterGrant => "arbiter kill -9 right after a grant",
            Self::WatcherKill => "watcher kill -9",
            Self::HolderKill => "holder kill -9 mid-checkout",
            Self::HolderPause => "holder SIGSTOP > TTL",
            Self::WatcherPause => "idle watcher SIGSTOP > TTL",
            Self::WatcherCutOff => "watcher cut off",
            Self::HostCutOff => "host cut off",
            Self::RestockStorm => "restock storm",
            Self::LeaderKill => "leader replica kill -9",
            Self::LeaderPause => "leader replica SIGSTOP > election TTL",
            Self::LeaderEtcdCut => "leader replica cut from etcd",
            Self::EtcdMemberKill => "etcd member kill -9",
            Self::ReplicasRestart => "all replicas restarted at once",
            Self::LeaderPauseAtGrant => "leader replica SIGSTOP at its grant",
            Self::EtcdMemberPause => "etcd member SIGSTOP > lease TTL",
        }
    }

    /// A short name for `RESTOCK_FAULT_ONLY`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::ArbiterKill => "arbiter-kill",
            Self::ArbiterKillAfterGrant => "arbiter-kill-after-grant",
            Self::WatcherKill => "watcher-kill",
            Self::HolderKill => "holder-kill",
            Self::HolderPause => "holder-pause",
            Self::WatcherPause => "watcher-pause",
            Self::WatcherCutOff => "watcher-cut",
            Self::HostCutOff => "host-cut",
            Self::RestockStorm => "storm",
            Self::LeaderKill => "leader-kill",
            Self::LeaderPause => "leader-pause",
            Self::LeaderEtcdCut => "leader-etcd-cut",
            Self::EtcdMemberKill => "etcd-member-kill",
            Self::ReplicasRestart => "replicas-restart",
            Self::LeaderPauseAtGrant => "leader-pause-at-grant",
            Self::EtcdMemberPause => "etcd-member-pause",
        }
    }

    /// Does it kill a watcher process (which then cannot release anything
    /// it held)?
    fn kills_watchers(self) -> bool {
        matches!(self, Self::WatcherKill | Self::HolderKill)
    }

    /// Does it leave every watcher without an arbiter that grants for a
    /// while (the arbiter down, or, in HA mode, a failover, which any HA
    /// fault may cause: an etcd member's loss can cost the leader its
    /// keep-alive)?
    fn kills_arbiter(self) -> bool {
        matches!(self, Self::ArbiterKill | Self::ArbiterKillAfterGrant) || self.is_ha()
    }

    fn is_ha(self) -> bool {
        Self::HA.contains(&self)
    }

    /// Does it aim at the leading replica (which must lose the lead)?
    fn deposes_leader(self) -> bool {
        matches!(
            self,
            Self::LeaderKill | Self::LeaderPause | Self::LeaderEtcdCut | Self::LeaderPauseAtGrant
        )
    }

    /// Is it a SIGSTOP of the leader, which is resumed later (and must
    /// then grant nothing)?
    fn pauses_leader(self) -> bool {
        matches!(self, Self::LeaderPause | Self::LeaderPauseAtGrant)
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    pub id: usize,
    pub kind: FaultKind,
    /// The watchers it hit (killed, paused or cut off).
    pub watchers: Vec<String>,
    pub started_ms: u64,
    /// When its cause was removed (restart issued, SIGCONT sent, link
    /// healed, storm over).
    pub healed_ms: u64,
    pub detail: String,
}

impl FaultRecord {
    fn hits(&self, watcher: &str) -> bool {
        self.watchers.iter().any(|w| w == watcher)
    }
}

/// The limits the checks hold the history to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub lease_ttl_ms: u64,
    /// A product ATTEMPTING, or QUEUED with the slot free, for longer than
    /// this is stuck (the history checker's limit).
    pub stuck_after_ms: u64,
    /// After a fault heals, the next grant must come within
    /// `lease_ttl_ms + liveness_margin_ms`.
    pub liveness_margin_ms: u64,
    /// How far two processes' clocks may disagree.
    pub clock_tolerance_ms: u64,
    /// The product config's budget, when the run sets one.
    pub budget: Option<BudgetSetting>,
}

/// The spending limit a run sets: at most `max_purchases` purchases in any
/// `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSetting {
    pub max_purchases: usize,
    pub window_ms: u64,
}

/// Everything the checker reads.
#[derive(Debug, Clone)]
pub struct History {
    /// The arbiter's events (`WatchEvents` from sequence 1), in order.
    pub events: Vec<Event>,
    /// Events that did not make a domain [`Event`]: their sequence and why.
    pub unreadable_events: Vec<String>,
    pub store: StoreLedger,
    pub faults: Vec<FaultRecord>,
    /// `None` when not known (then that cross-check is skipped).
    pub counters: Option<ArbiterCounters>,
    pub settings: Settings,
    /// HA mode (`RESTOCK_FAULT_MODE=ha`): the replicas' side of the run.
    pub ha: Option<HaHistory>,
}

/// What HA mode adds to the history: who streamed which event, the
/// replica each leader fault aimed at, and the failover bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HaHistory {
    /// Which replicas streamed each event, by sequence (bit `i`: replica
    /// `i`). The follower reads every replica; an event only the deposed
    /// leader streamed never reached etcd.
    pub served_by: BTreeMap<u64, u8>,
    /// Sequence numbers two replicas streamed with different events (the
    /// first one seen is in the history).
    pub conflicts: Vec<String>,
    /// The replica each leader fault aimed at, by fault id.
    pub targets: BTreeMap<usize, usize>,
    /// For each leader pause (by fault id): how long after SIGCONT the
    /// resumed replica said (`GetStatus`) it no longer led; `None` when it
    /// still said so at the suite's limit.
    pub resumed_as_follower: BTreeMap<usize, Option<u64>>,
    /// The replicas' `--election-ttl`.
    pub election_ttl_ms: u64,
    /// The faults (by id) injected while the replicas ran with another
    /// `--election-ttl` (the HA suite's etcd-member-pause phase), and that
    /// TTL: their failover and liveness bounds count it instead.
    pub election_ttls_ms: BTreeMap<usize, u64>,
    /// From a fault's injection, the next grant comes within the election
    /// TTL plus this (see the HA suite for why this much).
    pub failover_margin_ms: u64,
}

impl HaHistory {
    fn served(&self, sequence: u64) -> u8 {
        self.served_by.get(&sequence).copied().unwrap_or(0)
    }

    /// The election TTL in force for fault `f`.
    fn election_ttl_for(&self, f: &FaultRecord) -> u64 {
        self.election_ttls_ms
            .get(&f.id)
            .copied()
            .unwrap_or(self.election_ttl_ms)
    }

    /// How long after fault `f`'s injection the next grant may come.
    fn failover_bound(&self, f: &FaultRecord) -> u64 {
        self.election_ttl_for(f) + self.failover_margin_ms
    }
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// What was looked at, for the report.
    pub scope: String,
    /// Empty when the check passed.
    pub failures: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The figures of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub faults: BTreeMap<FaultKind, usize>,
    pub grants: usize,
    pub renewals: usize,
    pub arbiter_starts: usize,
    pub released: BTreeMap<&'static str, usize>,
    pub expirations: usize,
    pub undelivered_grants: usize,
    /// Leases ended EXPIRED at once because the write that held their
    /// grant left less than the holder's margin (never pushed).
    pub unpushed_grants: usize,
    pub checkout_attempts: usize,
    pub accepted_checkouts: usize,
    pub store_purchases: usize,
    pub arbiter_purchases: usize,
    pub lost_releases: usize,
    pub stale_token_refusals: usize,
    pub store_violations: u64,
    pub overlaps_found: usize,
    pub unexplained_expirations: usize,
    pub worst_recovery_ms: Option<u64>,
    /// HA mode: each fault's gap from its injection to the next grant.
    pub failover_gaps_ms: Vec<(FaultKind, u64)>,
}

/// The verdict.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    pub counts: Counts,
    /// Notes that are not failures (unexplained expirations, lost
    /// releases).
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    pub fn failures(&self) -> Vec<String> {
        self.checks
            .iter()
            .flat_map(|c| c.failures.iter().map(move |f| format!("{}: {f}", c.name)))
            .collect()
    }

    /// The report as printed at the end of a run.
    pub fn render(&self, seed: u64) -> String {
        let mut s = String::new();
        let c = &self.counts;
        let _ = writeln!(s, "fault-injection history check (seed {seed})");
        let _ = writeln!(s, "checks:");
        for check in &self.checks {
            let mark = if check.passed() { "ok  " } else { "FAIL" };
            let _ = writeln!(s, "  [{mark}] {} ({})", check.name, check.scope);
            for f in check.failures.iter().take(20) {
                let _ = writeln!(s, "         - {f}");
            }
            if check.failures.len() > 20 {
                let _ = writeln!(s, "         ... and {} more", check.failures.len() - 20);
            }
        }
        let total: usize = c.faults.values().sum();
        let _ = writeln!(s, "faults injected: {total}");
        for (k, n) in &c.faults {
            let _ = writeln!(s, "  {:<38} {n}", k.name());
        }
        let _ = writeln!(
            s,
            "arbiter: {} grants, {} renewals, {} starts (1 + restarts), {} expirations ({} not explained by a fault, {} of grants never pushed: their write left less than the holder's margin), {} grants withdrawn undelivered",
            c.grants,
            c.renewals,
            c.arbiter_starts,
            c.expirations,
            c.unexplained_expirations,
            c.unpushed_grants,
            c.undelivered_grants
        );
        let released: Vec<String> = c.released.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "arbiter releases by outcome: {}", released.join(", "));
        let _ = writeln!(
            s,
            "store: {} checkout attempts, {} accepted, {} purchases, {} refused stale_token",
            c.checkout_attempts, c.accepted_checkouts, c.store_purchases, c.stale_token_refusals
        );
        let _ = writeln!(
            s,
            "purchases: store {}, arbiter {}, release lost to a fault {}",
            c.store_purchases, c.arbiter_purchases, c.lost_releases
        );
        if let Some(w) = c.worst_recovery_ms {
            let _ = writeln!(s, "slowest grant after a fault healed: {w} ms");
        }
        if !c.failover_gaps_ms.is_empty() {
            let _ = writeln!(
                s,
                "failover gaps (injection to the next grant anywhere): {}",
                gap_summary(c.failover_gaps_ms.iter().map(|(_, g)| *g))
            );
            let kinds: BTreeSet<FaultKind> = c.failover_gaps_ms.iter().map(|(k, _)| *k).collect();
            for k in kinds {
                let gaps = c
                    .failover_gaps_ms
                    .iter()
                    .filter(|(f, _)| *f == k)
                    .map(|(_, g)| *g);
                let _ = writeln!(s, "  {:<38} {}", k.name(), gap_summary(gaps));
            }
        }
        let _ = writeln!(
            s,
            "violations: {} (store), {} (overlapping pairs found by the checker)",
            c.store_violations, c.overlaps_found
        );
        for n in self.notes.iter().take(20) {
            let _ = writeln!(s, "note: {n}");
        }
        if self.notes.len() > 20 {
            let _ = writeln!(s, "note: ... and {} more notes", self.notes.len() - 20);
        }
        s
    }
}

/// `n gaps, median M ms, worst W ms`.
fn gap_summary(gaps: impl Iterator<Item = u64>) -> String {
    let mut v: Vec<u64> = gaps.collect();
    v.sort_unstable();
    match v.len() {
        0 => "none".into(),
        n => {
            let median = if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2
            };
            format!("{n} gaps, median {median} ms, worst {} ms", v[n - 1])
        }
    }
}

/// How a lease ended, as the arbiter's history tells it (its RELEASED or
/// EXPIRED).
#[derive(Debug, Clone, Copy)]
struct LeaseEnd<'a> {
    at_ms: u64,
    kind: EventKind,
    outcome: Option<Outcome>,
    detail: &'a str,
}

/// The arbiter withdraws a grant it could not put on the watcher's stream;
/// the watcher never saw it (see `Arbiter::abandon_grant`).
const UNDELIVERED: &str = "grant could not be delivered";
/// The arbiter ends as EXPIRED, at once, a lease whose grant's write left
/// less than the holder's safety margin: the grant is never pushed, so no
/// one may use its token (see `Arbiter::expire_unpushed`).
const UNPUSHED: &str = "lease expired before it could be pushed";

impl LeaseEnd<'_> {
    /// The end of `lease`, if its RELEASED or EXPIRED was seen.
    fn of(lease: &Cycle) -> Option<LeaseEnd<'_>> {
        match &lease.end {
            CycleEnd::Seen {
                at_unix_ms,
                kind,
                outcome,
                detail,
            } => Some(LeaseEnd {
                at_ms: *at_unix_ms,
                kind: *kind,
                outcome: *outcome,
                detail,
            }),
            CycleEnd::Open | CycleEnd::Unseen { .. } => None,
        }
    }

    fn is_undelivered(&self) -> bool {
        self.kind == EventKind::Released
            && self.outcome == Some(Outcome::Aborted)
            && self.detail.contains(UNDELIVERED)
    }

    fn is_unpushed(&self) -> bool {
        self.kind == EventKind::Expired && self.detail.contains(UNPUSHED)
    }

    fn is_purchase(&self) -> bool {
        self.kind == EventKind::Released && self.outcome == Some(Outcome::Purchased)
    }
}

/// Every lease the arbiter granted, by its fencing token (the history
/// checker's cycles: one per GRANTED).
type Leases<'a> = BTreeMap<FencingToken, &'a Cycle>;

/// Runs every check.
pub fn check(h: &History) -> Report {
    let mut counts = Counts::default();
    let mut notes = Vec::new();
    for f in &h.faults {
        *counts.faults.entry(f.kind).or_default() += 1;
    }
    let arbiter = Checker::replay(&h.events, Duration::from_millis(h.settings.stuck_after_ms));
    let leases: Leases<'_> = arbiter.cycles().iter().map(|c| (c.token, c)).collect();
    count_arbiter(h, &arbiter, &mut counts);
    for w in arbiter.warnings() {
        notes.push(format!("history checker: {}", w.message));
    }
    let mut checks = vec![
        arbiter_promises(&arbiter, true),
        arbiter_promises(&arbiter, false),
        history_complete(h, &counts),
    ];
    checks.push(store_saw_no_overlap(h, &mut counts));
    checks.push(no_overlap(h, &mut counts));
    if let Some(b) = h.settings.budget {
        checks.push(never_over_budget(h, b));
    }
    checks.push(tokens_increase(h));
    checks.push(no_stale_token(h, &leases));
    checks.push(checkouts_end_inside_their_lease(h, &leases));
    checks.push(checkouts_inside_what_their_holder_was_given(h, &leases));
    checks.push(unreleased_leases_expire(
        h,
        &leases,
        &mut counts,
        &mut notes,
    ));
    checks.push(recovery_after_faults(h, &mut counts));
    checks.push(purchases_match(h, &leases, &mut counts, &mut notes));
    if let Some(ha) = &h.ha {
        checks.push(failover_gaps(h, ha, &mut counts));
        checks.push(deposed_leaders_wrote_nothing(h, ha, &mut notes));
        notes.extend(
            ha.conflicts
                .iter()
                .map(|c| format!("two replicas numbered events alike: {c}")),
        );
    }
    Report {
        checks,
        counts,
        notes,
    }
}

/// The arbiter's figures, from the history checker's cycles.
fn count_arbiter(h: &History, arbiter: &Checker, counts: &mut Counts) {
    counts.arbiter_starts = h
        .events
        .iter()
        .filter(|e| e.kind == EventKind::ArbiterStarted)
        .count();
    counts.grants = arbiter.cycles().len();
    counts.renewals = arbiter.renewals() as usize;
    for end in arbiter.cycles().iter().filter_map(LeaseEnd::of) {
        if end.kind == EventKind::Expired {
            counts.expirations += 1;
            if end.is_unpushed() {
                counts.unpushed_grants += 1;
            }
        } else if end.is_undelivered() {
            counts.undelivered_grants += 1;
        } else {
            *counts
                .released
                .entry(outcome_name(end.outcome))
                .or_default() += 1;
            if end.is_purchase() {
                counts.arbiter_purchases += 1;
            }
        }
    }
}

/// Is a problem of this kind about the leases themselves (one at a time,
/// tokens, each ends once), rather than about the products' cycle?
fn about_leases(kind: ProblemKind) -> bool {
    match kind {
        ProblemKind::ConcurrentAttempt
        | ProblemKind::FencingTokenReused
        | ProblemKind::StaleLeaseAccepted
        | ProblemKind::LeaseNeverGranted => true,
        ProblemKind::ProductSwitch | ProblemKind::StuckPurchase => false,
    }
}

/// What the history checker found, as two checks: the leases' promises
/// (`leases`), or the products' (no switch mid-cycle, nothing stuck).
fn arbiter_promises(arbiter: &Checker, leases: bool) -> Check {
    let failures = arbiter
        .problems()
        .iter()
        .filter(|p| about_leases(p.kind) == leases)
        .map(|p| match p.sequence {
            Some(seq) => format!("event {seq}: {}: {}", p.kind.label(), p.detail),
            None => format!("{}: {}", p.kind.label(), p.detail),
        })
        .collect();
    if leases {
        Check {
            name: "the arbiter's leases: one at a time, tokens increase, each ends once",
            scope: format!(
                "{} grants in {} events",
                arbiter.cycles().len(),
                arbiter.events_seen()
            ),
            failures,
        }
    } else {
        Check {
            name: "the arbiter's cycles: no product switch mid-cycle, nothing stuck",
            scope: format!(
                "{} transitions, {} completed cycles",
                arbiter.transitions_total(),
                arbiter.completed_cycles()
            ),
            failures,
        }
    }
}

/// An outcome as the report counts it.
fn outcome_name(o: Option<Outcome>) -> &'static str {
    o.map_or("unspecified", Outcome::as_str)
}

/// The follower saw every durable event: the history begins at the
/// arbiter's first event, every event was readable and every lease event
/// names its lease, sequence numbers only jump where the arbiter restarted
/// (it skips the rest of a reserved block), and the arbiter's own counters
/// agree with what the history shows.
fn history_complete(h: &History, counts: &Counts) -> Check {
    let mut failures = Vec::new();
    if let Some(first) = h.events.first()
        && first.sequence != 1
    {
        failures.push(format!(
            "the history begins at event {}, not at the arbiter's first (1)",
            first.sequence
        ));
    }
    failures.extend(
        h.unreadable_events
            .iter()
            .map(|why| format!("event {why}: not a valid event")),
    );
    for e in &h.events {
        let lease_event = matches!(
            e.kind,
            EventKind::Granted | EventKind::Renewed | EventKind::Released | EventKind::Expired
        );
        let named = e.lease_id.is_some()
            && e.tcin.is_some()
            && e.watcher_id.is_some()
            && e.fencing_token.is_some();
        if lease_event && !named {
            failures.push(format!(
                "event {} ({}) does not name its lease, product, watcher and fencing token",
                e.sequence, e.kind
            ));
        }
    }
    let mut failover_gaps = 0usize;
    for w in h.events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.sequence > a.sequence + 1
            && b.kind != EventKind::ArbiterStarted
            && failover_between(h, a, b)
        {
            failover_gaps += 1;
        }
        if b.sequence <= a.sequence {
            failures.push(format!(
                "event {} follows event {}: not in order",
                b.sequence, a.sequence
            ));
        } else if b.sequence != a.sequence + 1
            && b.kind != EventKind::ArbiterStarted
            && !failover_between(h, a, b)
        {
            failures.push(format!(
                "events {}..{} are missing and no restart explains it",
                a.sequence + 1,
                b.sequence - 1
            ));
        }
    }
    if let Some(c) = h.counters {
        let pairs = [
            ("grants", c.grants, counts.grants),
            ("purchases", c.purchases, counts.arbiter_purchases),
            ("expirations", c.expirations, counts.expirations),
        ];
        for (what, counter, seen) in pairs {
            if counter != seen as u64 {
                failures.push(format!(
                    "the arbiter counts {counter} {what}, the history shows {seen}"
                ));
            }
        }
    }
    Check {
        name: "the event history is complete",
        scope: format!(
            "{} events from #1, {} unreadable; gaps only at restarts{}; counters {}",
            h.events.len(),
            h.unreadable_events.len(),
            if h.ha.is_some() {
                format!(" and failovers ({failover_gaps} across a failover)")
            } else {
                String::new()
            },
            if h.counters.is_some() {
                "compared"
            } else {
                "not known"
            }
        ),
        failures,
    }
}

/// HA mode: may events be missing between `a` and `b` because the lead
/// changed hands? Each leader streams its events as it makes them, but
/// only what it wrote to etcd outlives it: the events a deposed leader made
/// last (and a follower cut from it did not read) are gone, and a new
/// leader numbers on from what etcd holds. So a gap is explained when
/// different replicas streamed `a` and `b`, or a fault that can move the
/// lead was under way between them (until a new leader could have been
/// elected). Outside HA mode, never.
fn failover_between(h: &History, a: &Event, b: &Event) -> bool {
    let Some(ha) = &h.ha else {
        return false;
    };
    if ha.served(a.sequence) != ha.served(b.sequence) {
        return true;
    }
    let tol = h.settings.clock_tolerance_ms;
    h.faults.iter().any(|f| {
        f.kind.kills_arbiter()
            && f.started_ms <= b.unix_ms + tol
            && f.healed_ms + ha.failover_bound(f) + tol >= a.unix_ms
    })
}

/// HA mode: from each fault's injection, the next grant anywhere (any
/// replica, through any failover) comes within the election TTL plus the
/// margin. Printed as median and worst, overall and by kind.
fn failover_gaps(h: &History, ha: &HaHistory, counts: &mut Counts) -> Check {
    let bound = ha.election_ttl_ms + ha.failover_margin_ms;
    let longer: BTreeSet<u64> = ha.election_ttls_ms.values().copied().collect();
    let grants: Vec<u64> = h
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Granted)
        .map(|e| e.unix_ms)
        .collect();
    let mut failures = Vec::new();
    for f in h.faults.iter().filter(|f| f.kind.is_ha()) {
        let bound = ha.failover_bound(f);
        match grants.iter().copied().find(|g| *g >= f.started_ms) {
            Some(g) => {
                let gap = g - f.started_ms;
                counts.failover_gaps_ms.push((f.kind, gap));
                if gap > bound {
                    failures.push(format!(
                        "fault #{} ({}, {}): the next grant came {gap} ms after it began (bound {bound} ms)",
                        f.id,
                        f.kind.name(),
                        f.detail
                    ));
                }
            }
            None => failures.push(format!(
                "fault #{} ({}, {}): no grant after it began",
                f.id,
                f.kind.name(),
                f.detail
            )),
        }
    }
    Check {
        name: "HA: from every fault's injection the next grant comes within election TTL + margin",
        scope: format!(
            "{} faults, bound {bound} ms = election TTL {} + margin {}{}",
            counts.failover_gaps_ms.len(),
            ha.election_ttl_ms,
            ha.failover_margin_ms,
            longer
                .iter()
                .map(|t| format!(
                    "; {} faults under election TTL {t}: bound {} ms",
                    ha.election_ttls_ms.values().filter(|v| *v == t).count(),
                    t + ha.failover_margin_ms
                ))
                .collect::<String>()
        ),
        failures,
    }
}

/// Is this event one a leader writes for a lease?
fn is_lease_write(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Granted | EventKind::Renewed | EventKind::Released | EventKind::Expired
    )
}

/// HA mode: a leader deposed by a fault (killed, paused past the election
/// TTL, cut from etcd) writes nothing once another replica has led. For
/// each such fault, from its injection to the next fault: once an event
/// streamed by another replica (and not by the target) shows the new
/// leader at work, no lease event may come from the target alone; and a
/// paused leader grants nothing after it is resumed. A deposed leader's
/// late write must fail at etcd (its txn is guarded on its leadership key);
/// one that got through would be streamed by it and by no one else. Store
/// refusals of stale tokens in that window are counted as the fencing
/// line at work, in the notes.
fn deposed_leaders_wrote_nothing(h: &History, ha: &HaHistory, notes: &mut Vec<String>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let mut failures = Vec::new();
    let mut looked_at = 0usize;
    for (i, f) in h.faults.iter().enumerate() {
        if !f.kind.deposes_leader() {
            continue;
        }
        let Some(&r) = ha.targets.get(&f.id) else {
            continue;
        };
        looked_at += 1;
        if let Some(None) = ha.resumed_as_follower.get(&f.id) {
            failures.push(format!(
                "fault #{} ({}): replica {r}, resumed after another replica took the lead, still said it led when the suite stopped asking",
                f.id,
                f.kind.name()
            ));
        }
        let bit = 1u8 << r;
        let until = h.faults.get(i + 1).map_or(u64::MAX, |n| n.started_ms);
        let window = || {
            h.events
                .iter()
                .filter(move |e| e.unix_ms >= f.started_ms && e.unix_ms < until)
        };
        let successor = window()
            .find(|e| is_lease_write(e.kind) && ha.served(e.sequence) & bit == 0)
            .map(|e| (e.unix_ms, ha.served(e.sequence)));
        for e in window().filter(|e| is_lease_write(e.kind) && ha.served(e.sequence) == bit) {
            let after_successor = successor.is_some_and(|(t, _)| e.unix_ms > t + tol);
            let resumed_grant = f.kind.pauses_leader()
                && e.kind == EventKind::Granted
                && e.unix_ms > f.healed_ms + tol;
            if after_successor || resumed_grant {
                failures.push(format!(
                    "fault #{} ({}): replica {r} alone streamed event {} ({}, token {}) at {}{}",
                    f.id,
                    f.kind.name(),
                    e.sequence,
                    e.kind,
                    e.fencing_token.map_or(0, |t| t.get()),
                    e.unix_ms,
                    match successor {
                        Some((t, by)) => format!(
                            ", after replicas {by:#05b} led from {t} (a deposed leader's write went through)"
                        ),
                        None => " after it was resumed".into(),
                    }
                ));
            }
        }
        let refused = h
            .store
            .orders
            .iter()
            .filter(|o| {
                o.result == "stale_token"
                    && o.started_at_ms >= f.started_ms
                    && o.started_at_ms < until
            })
            .count();
        if refused > 0 {
            notes.push(format!(
                "fault #{} ({}, replica {r}): the store refused {refused} checkouts with a stale token meanwhile (stopped by the fencing line, not a failure)",
                f.id,
                f.kind.name()
            ));
        }
    }
    Check {
        name: "HA: a deposed leader wrote nothing after its successor led (a resumed one granted nothing and stepped down)",
        scope: format!("{looked_at} leader faults"),
        failures,
    }
}

/// The store bought at most `max_purchases` in any window of the budget's
/// length, by the store's own start times. Why that is what the arbiter
/// promises: it grants only while the purchases it counted inside the
/// window (each counted when its lease ended, expiries too) leave room,
/// one lease at a time; a lease ends after its checkout started at the
/// store (the holder starts none without trusted time left), and the next
/// grant comes after that end. So every purchase that started inside a
/// window before another purchase's grant was counted by then. The window
/// is shortened by the clock tolerance, as the store's and the arbiter's
/// clocks may disagree that much.
fn never_over_budget(h: &History, b: BudgetSetting) -> Check {
    let mut starts: Vec<(u64, &StoreOrder)> = h
        .store
        .orders
        .iter()
        .filter(|o| o.accepted && o.result == "purchased")
        .map(|o| (o.started_at_ms, o))
        .collect();
    starts.sort_by_key(|(t, o)| (*t, o.id));
    let window = b.window_ms.saturating_sub(h.settings.clock_tolerance_ms);
    let mut failures = Vec::new();
    let mut first = 0;
    for (i, &(t, o)) in starts.iter().enumerate() {
        while starts[first].0 + window <= t {
            first += 1;
        }
        let inside = i + 1 - first;
        if inside > b.max_purchases {
            let tokens: Vec<String> = starts[first..=i]
                .iter()
                .map(|(_, o)| o.token.to_string())
                .collect();
            failures.push(format!(
                "{inside} purchases started within {} ms (tokens {}), ending with order #{} at {t}: the budget allows {} per {} ms",
                window,
                tokens.join(", "),
                o.id,
                b.max_purchases,
                b.window_ms
            ));
        }
    }
    Check {
        name: "the store never bought more than the budget allows in any window",
        scope: format!(
            "{} purchases, at most {} per {} ms",
            starts.len(),
            b.max_purchases,
            b.window_ms
        ),
        failures,
    }
}

fn accepted(h: &History) -> Vec<&StoreOrder> {
    let mut v: Vec<&StoreOrder> = h.store.orders.iter().filter(|o| o.accepted).collect();
    v.sort_by_key(|o| o.id);
    v
}

fn store_saw_no_overlap(h: &History, counts: &mut Counts) -> Check {
    counts.store_violations = h.store.violations;
    counts.checkout_attempts = h.store.orders.len();
    counts.stale_token_refusals = h
        .store
        .orders
        .iter()
        .filter(|o| o.result == "stale_token")
        .count();
    counts.store_purchases = h
        .store
        .orders
        .iter()
        .filter(|o| o.accepted && o.result == "purchased")
        .count();
    let failures = if h.store.violations == 0 {
        Vec::new()
    } else {
        vec![format!(
            "the store counted {} overlapping pairs",
            h.store.violations
        )]
    };
    Check {
        name: "the store saw no two checkouts at once (violations == 0)",
        scope: format!("{} checkout attempts", h.store.orders.len()),
        failures,
    }
}

/// Pairwise, over `[started_at_ms, finished_at_ms]` of accepted checkouts;
/// touching ends (one finishes in the millisecond the next starts) are not
/// an overlap, the same rule as the store's.
fn no_overlap(h: &History, counts: &mut Counts) -> Check {
    let mut acc = accepted(h);
    counts.accepted_checkouts = acc.len();
    acc.sort_by_key(|o| (o.started_at_ms, o.id));
    let mut failures = Vec::new();
    for (i, a) in acc.iter().enumerate() {
        let a_end = a.finished_at_ms.unwrap_or(u64::MAX);
        for b in &acc[i + 1..] {
            if b.started_at_ms >= a_end {
                break;
            }
            failures.push(format!(
                "checkout #{} (token {}, {} by {}, {}..{}) overlaps checkout #{} (token {}, {} by {}, from {})",
                a.id,
                a.token,
                a.tcin,
                a.watcher_id,
                a.started_at_ms,
                a.finished_at_ms.map_or("running".into(), |f| f.to_string()),
                b.id,
                b.token,
                b.tcin,
                b.watcher_id,
                b.started_at_ms
            ));
        }
    }
    counts.overlaps_found = failures.len();
    Check {
        name: "no two accepted checkouts overlap in time (pairwise)",
        scope: format!("{} accepted checkouts", acc.len()),
        failures,
    }
}

/// In the order checkouts began at the store (its sequence number).
fn tokens_increase(h: &History) -> Check {
    let acc = accepted(h);
    let failures = acc
        .windows(2)
        .filter(|w| w[1].token <= w[0].token)
        .map(|w| {
            format!(
                "checkout #{} (token {}) began after checkout #{} (token {})",
                w[1].id, w[1].token, w[0].id, w[0].token
            )
        })
        .collect();
    Check {
        name: "fencing tokens strictly increase in start order",
        scope: format!("{} accepted checkouts", acc.len()),
        failures,
    }
}

/// A token is stale from the moment the arbiter ended its lease. Every
/// accepted checkout must carry a token the arbiter granted, for that
/// product and watcher, and must have begun while that lease was live.
fn no_stale_token(h: &History, leases: &Leases<'_>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let mut failures = Vec::new();
    let acc = accepted(h);
    for o in &acc {
        let Some(l) = leases.get(&FencingToken(o.token)) else {
            failures.push(format!(
                "checkout #{} carries token {}, which the arbiter never granted",
                o.id, o.token
            ));
            continue;
        };
        if (!o.lease_id.is_empty() && o.lease_id != l.lease_id.as_str())
            || o.tcin != l.tcin.as_str()
            || (!o.watcher_id.is_empty() && o.watcher_id != l.watcher_id.as_str())
        {
            failures.push(format!(
                "checkout #{} (token {}, lease {}, {} by {}) does not match the lease granted with that token (lease {}, {} to {})",
                o.id, o.token, o.lease_id, o.tcin, o.watcher_id, l.lease_id, l.tcin, l.watcher_id
            ));
        }
        if o.started_at_ms + tol < l.started_at_unix_ms {
            failures.push(format!(
                "checkout #{} (token {}) began at {}, before its lease was granted at {}",
                o.id, o.token, o.started_at_ms, l.started_at_unix_ms
            ));
        }
        if let Some(end) = LeaseEnd::of(l)
            && o.started_at_ms > end.at_ms + tol
        {
            failures.push(format!(
                "checkout #{} (token {}) began at {}, {} ms after the arbiter ended that lease ({:?})",
                o.id,
                o.token,
                o.started_at_ms,
                o.started_at_ms - end.at_ms,
                end.kind
            ));
        }
    }
    Check {
        name: "no checkout with a stale token was accepted",
        scope: format!(
            "{} accepted checkouts against {} leases",
            acc.len(),
            leases.len()
        ),
        failures,
    }
}

/// What makes the next holder safe even when the store checks nothing but
/// tokens: a checkout has ended at the store before the arbiter frees the
/// slot (by a release, or by expiry while the holder stopped on its own).
fn checkouts_end_inside_their_lease(h: &History, leases: &Leases<'_>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let mut failures = Vec::new();
    let acc = accepted(h);
    for o in &acc {
        let Some(l) = leases.get(&FencingToken(o.token)) else {
            continue; // reported by the stale-token check
        };
        let Some(end) = LeaseEnd::of(l) else {
            continue; // the lease is still live: nothing to compare yet
        };
        match o.finished_at_ms {
            None => failures.push(format!(
                "checkout #{} (token {}) is still running, but the arbiter ended its lease at {}",
                o.id, o.token, end.at_ms
            )),
            Some(f) if f > end.at_ms + tol => failures.push(format!(
                "checkout #{} (token {}) ended at {f}, {} ms after the arbiter ended its lease ({:?} at {})",
                o.id,
                o.token,
                f - end.at_ms,
                end.kind,
                end.at_ms
            )),
            Some(_) => {}
        }
    }
    Check {
        name: "every checkout ended before the arbiter freed its slot",
        scope: format!("{} accepted checkouts", acc.len()),
        failures,
    }
}

/// What the holder was given, as against what the arbiter did with the
/// lease afterwards: the holder counts a lease from the grant or renewal it
/// received and stops `margin` before that runs out; it never learns of
/// the whole TTL a new leader gives a lease carried over a failover, or of
/// a restarted arbiter's, so a checkout must end within the TTL of the
/// last GRANTED or RENEWED of its lease that came before its end (from
/// whichever replica). Stricter than ending before the lease's end: a
/// holder that trusted a take-over's TTL, or ran on past its own deadline
/// while the next leader still held the slot for it, fails here. And a
/// grant the arbiter ended unpushed (its write left less than the margin)
/// never reached anyone: no checkout, accepted or refused, carries its
/// token.
fn checkouts_inside_what_their_holder_was_given(h: &History, leases: &Leases<'_>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let ttl = h.settings.lease_ttl_ms;
    let mut extended: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in &h.events {
        if let (EventKind::Granted | EventKind::Renewed, Some(t)) = (e.kind, e.fencing_token) {
            extended.entry(t.get()).or_default().push(e.unix_ms);
        }
    }
    let mut failures = Vec::new();
    let mut unpushed = 0usize;
    for l in leases.values() {
        if !LeaseEnd::of(l).is_some_and(|e| e.is_unpushed()) {
            continue;
        }
        unpushed += 1;
        for o in h.store.orders.iter().filter(|o| o.token == l.token.get()) {
            failures.push(format!(
                "checkout #{} ({}) carries token {}, whose grant to {} the arbiter never pushed (it expired unpushed)",
                o.id, o.result, o.token, l.watcher_id
            ));
        }
    }
    let acc = accepted(h);
    let mut looked_at = 0usize;
    for o in &acc {
        let (Some(l), Some(f)) = (leases.get(&FencingToken(o.token)), o.finished_at_ms) else {
            continue; // reported by the stale-token and lease-end checks
        };
        looked_at += 1;
        let last = extended
            .get(&o.token)
            .into_iter()
            .flatten()
            .copied()
            .filter(|t| *t <= f + tol)
            .max()
            .unwrap_or(l.started_at_unix_ms);
        if f > last + ttl + tol {
            failures.push(format!(
                "checkout #{} (token {}, {} by {}) ended at {f}, {} ms past the TTL of its lease's last grant or renewal (at {last}): its holder ran on time it was never given",
                o.id,
                o.token,
                o.tcin,
                o.watcher_id,
                f - last - ttl
            ));
        }
    }
    Check {
        name: "every checkout ended within the TTL of its lease's last grant or renewal, and none used a grant never pushed",
        scope: format!(
            "{looked_at} finished accepted checkouts, {unpushed} grants expired unpushed"
        ),
        failures,
    }
}

/// Was `watcher` unable to reach the arbiter at some moment in
/// `[from_ms, to_ms]` (killed, paused, cut off, or the arbiter down)?
fn link_broken(h: &History, watcher: &str, from_ms: u64, to_ms: u64) -> Option<usize> {
    h.faults
        .iter()
        .find(|f| {
            let hit = f.hits(watcher) || f.kind.kills_arbiter();
            if !hit || f.kind == FaultKind::RestockStorm {
                return false;
            }
            if f.kind.kills_watchers() {
                // A killed process never speaks again for what it held.
                f.started_ms <= to_ms && f.started_ms + h.settings.clock_tolerance_ms >= from_ms
            } else {
                f.started_ms <= to_ms && outage_end(h, f) >= from_ms
            }
        })
        .map(|f| f.id)
}

/// Until when `f` may have kept the watchers from a granting arbiter: its
/// heal, or in HA mode the heal plus the time a failover may still take
/// (a killed leader restarted at once is a follower; the lead moves only
/// when its etcd lease runs out, after the heal).
fn outage_end(h: &History, f: &FaultRecord) -> u64 {
    match &h.ha {
        Some(ha) if f.kind.is_ha() => f.healed_ms + ha.failover_bound(f),
        _ => f.healed_ms,
    }
}

/// A lease whose holder could not have released it (killed before the
/// lease ended, or paused or cut off when it ended) must end EXPIRED, never
/// as a release. Expiry never comes early. Expirations no fault explains
/// are reported as notes.
fn unreleased_leases_expire(
    h: &History,
    leases: &Leases<'_>,
    counts: &mut Counts,
    notes: &mut Vec<String>,
) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let ttl = h.settings.lease_ttl_ms;
    let mut failures = Vec::new();
    let mut silenced = 0usize;
    let margin = holder_margin(Duration::from_millis(ttl)).as_millis() as u64;
    for l in leases.values() {
        let Some(end) = LeaseEnd::of(l) else { continue };
        if end.is_undelivered() {
            continue;
        }
        if end.is_unpushed() {
            // Ended by the arbiter, not by its holder, who never saw it:
            // early by design, but by no more than the holder's margin
            // (no checkout may carry its token: see
            // `checkouts_inside_what_their_holder_was_given`).
            if end.at_ms + tol + margin < l.extended_at_unix_ms + ttl {
                failures.push(format!(
                    "lease with token {} expired unpushed at {}, {} ms before its TTL ran out (more than the holder's margin, {margin} ms)",
                    l.token,
                    end.at_ms,
                    l.extended_at_unix_ms + ttl - end.at_ms
                ));
            }
            notes.push(format!(
                "lease with token {} ({} to {}) expired unpushed {} ms after its grant: its write left less than the holder's margin",
                l.token,
                l.tcin,
                l.watcher_id,
                end.at_ms.saturating_sub(l.started_at_unix_ms)
            ));
            continue;
        }
        let silent_by = h.faults.iter().find(|f| {
            if !f.hits(l.watcher_id.as_str()) {
                return false;
            }
            if f.kind.kills_watchers() {
                l.started_at_unix_ms < f.started_ms && f.started_ms + tol < end.at_ms
            } else if matches!(
                f.kind,
                FaultKind::HolderPause
                    | FaultKind::WatcherPause
                    | FaultKind::WatcherCutOff
                    | FaultKind::HostCutOff
            ) {
                f.started_ms + tol < end.at_ms && end.at_ms < f.healed_ms
            } else {
                false
            }
        });
        if let Some(f) = silent_by {
            silenced += 1;
            if end.kind != EventKind::Expired {
                failures.push(format!(
                    "lease with token {} (holder {}) ended {:?}/{} at {} while fault #{} ({}) kept its holder silent; it must expire",
                    l.token,
                    l.watcher_id,
                    end.kind,
                    outcome_name(end.outcome),
                    end.at_ms,
                    f.id,
                    f.kind.name()
                ));
            }
        }
        if end.kind == EventKind::Expired {
            if end.at_ms + tol < l.extended_at_unix_ms + ttl {
                failures.push(format!(
                    "lease with token {} expired at {}, {} ms before its TTL ran out",
                    l.token,
                    end.at_ms,
                    l.extended_at_unix_ms + ttl - end.at_ms
                ));
            }
            if link_broken(h, l.watcher_id.as_str(), l.started_at_unix_ms, end.at_ms).is_none() {
                counts.unexplained_expirations += 1;
                notes.push(format!(
                    "lease with token {} ({} by {}) expired with no fault on its holder or the arbiter",
                    l.token, l.tcin, l.watcher_id
                ));
            }
        }
    }
    Check {
        name: "every lease that ended without its holder's release shows as EXPIRED",
        scope: format!(
            "{} leases, {silenced} of them with a silenced holder",
            leases.len()
        ),
        failures,
    }
}

/// After each fault heals, the next grant comes within TTL + margin. The
/// suite keeps products in stock throughout, so a grant is always due.
/// In HA mode the margin holds one election TTL; a fault injected under a
/// longer one (see [`HaHistory::election_ttls_ms`]) gets the difference.
fn recovery_after_faults(h: &History, counts: &mut Counts) -> Check {
    let base = h.settings.lease_ttl_ms + h.settings.liveness_margin_ms;
    let longer_election = |f: &FaultRecord| {
        h.ha.as_ref().map_or(0, |ha| {
            ha.election_ttl_for(f).saturating_sub(ha.election_ttl_ms)
        })
    };
    let grants: Vec<u64> = h
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Granted)
        .map(|e| e.unix_ms)
        .collect();
    let mut failures = Vec::new();
    for f in &h.faults {
        let bound = base + longer_election(f);
        let next = grants.iter().copied().find(|g| *g >= f.healed_ms);
        match next {
            Some(g) => {
                let took = g - f.healed_ms;
                counts.worst_recovery_ms = Some(counts.worst_recovery_ms.unwrap_or(0).max(took));
                if took > bound {
                    failures.push(format!(
                        "fault #{} ({}, {}): the next grant came {took} ms after it healed (bound {bound} ms)",
                        f.id,
                        f.kind.name(),
                        f.detail
                    ));
                }
            }
            None => failures.push(format!(
                "fault #{} ({}, {}): no grant after it healed",
                f.id,
                f.kind.name(),
                f.detail
            )),
        }
    }
    Check {
        name: "after every fault heals the next grant comes within TTL + margin",
        scope: format!(
            "{} faults, bound {} ms = TTL {} + margin {}{}",
            h.faults.len(),
            base,
            h.settings.lease_ttl_ms,
            h.settings.liveness_margin_ms,
            match h.faults.iter().map(longer_election).max() {
                Some(extra) if extra > 0 => {
                    format!(" (+{extra} ms under a longer election TTL)")
                }
                _ => String::new(),
            }
        ),
        failures,
    }
}

/// Purchases the arbiter recorded (released PURCHASED) against purchases
/// the store made. The one legitimate difference: the store sold, and the
/// holder's release never reached the arbiter because a fault cut the
/// holder off (killed, paused, partitioned, or the arbiter down) between
/// the store's answer and the lease's expiry; the lease then shows as
/// EXPIRED. Those are counted as lost releases; anything else fails.
fn purchases_match(
    h: &History,
    leases: &Leases<'_>,
    counts: &mut Counts,
    notes: &mut Vec<String>,
) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let store: BTreeMap<u64, &StoreOrder> = h
        .store
        .orders
        .iter()
        .filter(|o| o.accepted && o.result == "purchased")
        .map(|o| (o.token, o))
        .collect();
    let arbiter: BTreeSet<u64> = leases
        .values()
        .filter(|l| LeaseEnd::of(l).is_some_and(|e| e.is_purchase()))
        .map(|l| l.token.get())
        .collect();
    let mut failures = Vec::new();
    for t in &arbiter {
        if !store.contains_key(t) {
            failures.push(format!(
                "the arbiter recorded a purchase with token {t}, the store has no such purchase"
            ));
        }
    }
    for (t, o) in &store {
        if arbiter.contains(t) {
            continue;
        }
        let Some(l) = leases.get(&FencingToken(*t)) else {
            failures.push(format!(
                "the store sold with token {t} (checkout #{}), a token the arbiter never granted",
                o.id
            ));
            continue;
        };
        let Some(end) = LeaseEnd::of(l) else {
            failures.push(format!(
                "the store sold with token {t} (checkout #{}); the arbiter's lease has not ended",
                o.id
            ));
            continue;
        };
        let finished = o.finished_at_ms.unwrap_or(o.started_at_ms);
        let lost_to = link_broken(
            h,
            l.watcher_id.as_str(),
            finished.saturating_sub(tol),
            end.at_ms,
        );
        match (end.kind, lost_to) {
            (EventKind::Expired, Some(f)) => {
                counts.lost_releases += 1;
                notes.push(format!(
                    "the store sold with token {t} ({} by {}) and fault #{f} kept the release from the arbiter: lease EXPIRED (a lost release, counted, not a failure)",
                    l.tcin, l.watcher_id
                ));
            }
            _ => failures.push(format!(
                "the store sold with token {t} (checkout #{}, {} by {}), the arbiter recorded {:?}/{} and no fault explains a lost release",
                o.id,
                l.tcin,
                l.watcher_id,
                end.kind,
                outcome_name(end.outcome)
            )),
        }
    }
    Check {
        name: "purchases: the arbiter's released PURCHASED == the store's purchased, except lost releases",
        scope: format!("store {} purchases, arbiter {}", store.len(), arbiter.len()),
        failures,
    }
}

#[cfg(test)]
mod tests {
    use restock_domain::{Lease, LeaseId, ProductId, ProductState, WatcherId, history::build};

    use super::*;

    const TTL: u64 = 2_000;
    const STUCK_AFTER: u64 = 60_000;

    fn settings() -> Settings {
        Settings {
            lease_ttl_ms: TTL,
            stuck_after_ms: STUCK_AFTER,
            liveness_margin_ms: 3_000,
            clock_tolerance_ms: 100,
            budget: None,
        }
    }

    /// The lease with `token`: `lease-<token>` for product 100.
    fn lease(token: u64, watcher: &str) -> Lease {
        build::lease(
            &LeaseId::parse(&format!("lease-{token}")).unwrap(),
            &ProductId::parse("100").unwrap(),
            &WatcherId::parse(watcher).unwrap(),
            token,
            0,
        )
    }

    /// Builds histories: grants, releases and matching store orders.
    #[derive(Default)]
    struct Script {
        events: Vec<Event>,
        orders: Vec<StoreOrder>,
        faults: Vec<FaultRecord>,
        seq: u64,
    }

    impl Script {
        /// The next event's sequence number.
        fn next(&mut self) -> u64 {
            self.seq += 1;
            self.seq
        }

        fn grant(&mut self, at: u64, token: u64, watcher: &str) {
            let e = build::granted(self.next(), at, &lease(token, watcher), ProductState::Ready);
            self.events.push(e);
        }

        fn renew(&mut self, at: u64, token: u64, watcher: &str) {
            let e = build::renewed(self.next(), at, &lease(token, watcher));
            self.events.push(e);
        }

        fn release(&mut self, at: u64, token: u64, watcher: &str, outcome: Outcome) {
            let e = build::released(self.next(), at, &lease(token, watcher), outcome);
            self.events.push(e);
        }

        fn expire(&mut self, at: u64, token: u64, watcher: &str) {
            let e = build::expired(self.next(), at, &lease(token, watcher));
            self.events.push(e);
        }

        fn order(&mut self, token: u64, watcher: &str, start: u64, end: u64, result: &str) {
            let id = self.orders.len() as u64 + 1;
            self.orders.push(StoreOrder {
                id,
                tcin: "100".into(),
                token,
                lease_id: format!("lease-{token}"),
                watcher_id: watcher.into(),
                started_at_ms: start,
                finished_at_ms: Some(end),
                result: result.into(),
                accepted: matches!(result, "purchased" | "failed" | "aborted"),
            });
        }

        /// A clean cycle: grant at `at`, a checkout of 500 ms, release.
        fn cycle(&mut self, at: u64, token: u64, watcher: &str) {
            self.grant(at, token, watcher);
            self.order(token, watcher, at + 5, at + 505, "purchased");
            self.release(at + 510, token, watcher, Outcome::Purchased);
        }

        fn history(&self) -> History {
            History {
                events: self.events.clone(),
                unreadable_events: Vec::new(),
                store: StoreLedger {
                    orders: self.orders.clone(),
                    violations: 0,
                },
                faults: self.faults.clone(),
                counters: None,
                settings: settings(),
                ha: None,
            }
        }
    }

    fn failed_checks(r: &Report) -> Vec<&'static str> {
        r.checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| c.name)
            .collect()
    }

    /// Every check named failed (others may have failed too).
    fn assert_failed(r: &Report, names: &[&str]) {
        let failed = failed_checks(r);
        for name in names {
            assert!(failed.contains(name), "{name:?} not in {failed:?}");
        }
    }

    /// Only the check named failed, and its first failure says `what`.
    fn assert_only_failed(r: &Report, name: &str, what: &str) {
        assert_eq!(failed_checks(r), vec![name]);
        assert!(r.failures()[0].contains(what), "{}", r.render(1));
    }

    #[test]
    fn a_clean_history_passes() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.cycle(2_000, 2, "w2");
        s.cycle(3_000, 3, "w1");
        let r = check(&s.history());
        assert!(r.passed(), "{}", r.render(1));
        assert_eq!(r.counts.grants, 3);
        assert_eq!(r.counts.store_purchases, 3);
        assert_eq!(r.counts.arbiter_purchases, 3);
    }

    #[test]
    fn purchases_past_the_budget_in_one_window_are_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.cycle(1_600, 2, "w2");
        s.cycle(3_000, 3, "w1");
        let mut h = s.history();
        h.settings.budget = Some(BudgetSetting {
            max_purchases: 2,
            window_ms: 2_200,
        });
        // Starts at 1005, 1605 and 3005: the third is 2000 ms after the
        // first, inside 2100 ms (2200 less the clock tolerance).
        assert_only_failed(
            &check(&h),
            "the store never bought more than the budget allows in any window",
            "3 purchases started within 2100 ms (tokens 1, 2, 3)",
        );
        h.settings.budget = Some(BudgetSetting {
            max_purchases: 2,
            window_ms: 2_000,
        });
        assert!(check(&h).passed(), "{}", check(&h).render(1));
        h.settings.budget = Some(BudgetSetting {
            max_purchases: 3,
            window_ms: 60_000,
        });
        assert!(check(&h).passed());
    }

    #[test]
    fn an_overlap_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        // Token 2's checkout runs on past the start of token 3's.
        s.grant(2_000, 2, "w2");
        s.order(2, "w2", 2_005, 3_300, "purchased");
        s.release(2_510, 2, "w2", Outcome::Purchased);
        s.cycle(3_000, 3, "w1");
        let r = check(&s.history());
        assert_failed(
            &r,
            &[
                "no two accepted checkouts overlap in time (pairwise)",
                "every checkout ended before the arbiter freed its slot",
            ],
        );
        assert_eq!(r.counts.overlaps_found, 1);
        assert!(r.render(7).contains("seed 7"));
    }

    #[test]
    fn the_stores_own_violation_count_fails_the_run() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        let mut h = s.history();
        h.store.violations = 1;
        let r = check(&h);
        assert_eq!(
            failed_checks(&r),
            vec!["the store saw no two checkouts at once (violations == 0)"]
        );
    }

    #[test]
    fn a_token_going_backwards_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.cycle(2_000, 3, "w2");
        // Token 2 reaches the store after token 3 did (and does not overlap).
        s.grant(3_000, 2, "w1");
        s.order(2, "w1", 3_005, 3_505, "purchased");
        s.release(3_510, 2, "w1", Outcome::Purchased);
        let r = check(&s.history());
        assert_failed(
            &r,
            &[
                "fencing tokens strictly increase in start order",
                "the arbiter's leases: one at a time, tokens increase, each ends once",
            ],
        );
    }

    #[test]
    fn a_checkout_after_its_lease_expired_is_a_stale_token() {
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.expire(3_000, 1, "w1");
        // The holder woke up late and the store still took its token.
        s.order(1, "w1", 4_000, 4_500, "purchased");
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::HolderPause,
            watchers: vec!["w1".into()],
            started_ms: 1_100,
            healed_ms: 3_900,
            detail: "w1".into(),
        });
        s.cycle(3_200, 2, "w2");
        let r = check(&s.history());
        assert_failed(&r, &["no checkout with a stale token was accepted"]);
    }

    #[test]
    fn a_missing_purchase_is_caught_both_ways() {
        // The arbiter recorded a purchase the store never made.
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.orders.clear();
        let r = check(&s.history());
        assert_eq!(
            failed_checks(&r),
            vec![
                "purchases: the arbiter's released PURCHASED == the store's purchased, except lost releases"
            ]
        );
        // The store sold, the arbiter says the lease expired, and nothing
        // kept the holder from releasing.
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.order(1, "w1", 1_005, 1_505, "purchased");
        s.expire(3_000, 1, "w1");
        let r = check(&s.history());
        assert_eq!(
            failed_checks(&r),
            vec![
                "purchases: the arbiter's released PURCHASED == the store's purchased, except lost releases"
            ]
        );
        assert_eq!(r.counts.unexplained_expirations, 1);
    }

    #[test]
    fn a_release_lost_to_a_killed_holder_is_counted_not_failed() {
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.order(1, "w1", 1_005, 1_505, "purchased");
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::HolderKill,
            watchers: vec!["w1".into()],
            started_ms: 1_506,
            healed_ms: 2_000,
            detail: "w1".into(),
        });
        s.expire(3_000, 1, "w1");
        s.cycle(3_100, 2, "w2");
        let r = check(&s.history());
        assert!(r.passed(), "{}", r.render(1));
        assert_eq!(r.counts.lost_releases, 1);
        assert_eq!(r.counts.unexplained_expirations, 0);
    }

    #[test]
    fn a_silenced_holder_whose_lease_shows_released_is_caught() {
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::HolderKill,
            watchers: vec!["w1".into()],
            started_ms: 1_200,
            healed_ms: 1_500,
            detail: "w1".into(),
        });
        // A dead process cannot release: this release is made up.
        s.release(2_000, 1, "w1", Outcome::Aborted);
        s.cycle(2_100, 2, "w2");
        let r = check(&s.history());
        assert_eq!(
            failed_checks(&r),
            vec!["every lease that ended without its holder's release shows as EXPIRED"]
        );
    }

    #[test]
    fn an_early_expiry_is_caught() {
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.renew(1_500, 1, "w1");
        s.expire(3_000, 1, "w1");
        let r = check(&s.history());
        assert_failed(
            &r,
            &["every lease that ended without its holder's release shows as EXPIRED"],
        );
    }

    #[test]
    fn a_slow_recovery_and_two_live_leases_are_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::ArbiterKill,
            watchers: Vec::new(),
            started_ms: 1_600,
            healed_ms: 2_000,
            detail: "down 400 ms".into(),
        });
        s.grant(9_000, 2, "w1");
        s.grant(9_100, 3, "w2");
        let r = check(&s.history());
        assert_failed(
            &r,
            &[
                "after every fault heals the next grant comes within TTL + margin",
                "the arbiter's leases: one at a time, tokens increase, each ends once",
            ],
        );
    }

    #[test]
    fn a_gap_in_the_history_needs_a_restart_and_counters_must_agree() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.cycle(2_000, 2, "w1");
        s.events.remove(2); // the second grant went missing
        let mut h = s.history();
        h.counters = Some(ArbiterCounters {
            grants: 2,
            purchases: 2,
            expirations: 0,
        });
        let r = check(&h);
        assert_failed(&r, &["the event history is complete"]);
    }

    #[test]
    fn a_stale_or_never_granted_lease_fails_the_lease_check() {
        const LEASES: &str = "the arbiter's leases: one at a time, tokens increase, each ends once";
        // The arbiter took a renewal of a lease it had released.
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.renew(1_600, 1, "w1");
        s.cycle(2_000, 2, "w2");
        assert_only_failed(
            &check(&s.history()),
            LEASES,
            "event 3: stale lease accepted: RENEWED of lease lease-1",
        );
        // A lease ended that the whole history never granted.
        let mut s = Script::default();
        s.release(1_000, 9, "w1", Outcome::Aborted);
        assert_only_failed(&check(&s.history()), LEASES, "lease never granted");
    }

    #[test]
    fn a_switch_mid_cycle_or_a_stuck_purchase_fails_the_cycle_check() {
        const CYCLES: &str = "the arbiter's cycles: no product switch mid-cycle, nothing stuck";
        // The release names another product than the lease was granted for.
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        s.order(1, "w1", 1_005, 1_505, "purchased");
        let mut other = lease(1, "w1");
        other.tcin = ProductId::parse("200").unwrap();
        let seq = s.next();
        s.events
            .push(build::released(seq, 1_510, &other, Outcome::Purchased));
        assert_only_failed(&check(&s.history()), CYCLES, "product switch mid-cycle");
        // A checkout renewed past the stuck limit.
        let mut s = Script::default();
        s.grant(1_000, 1, "w1");
        let mut at = 1_000;
        while at < 1_000 + STUCK_AFTER + 2_000 {
            at += 1_500;
            s.renew(at, 1, "w1");
        }
        s.order(1, "w1", 1_005, at, "purchased");
        s.release(at + 5, 1, "w1", Outcome::Purchased);
        assert_only_failed(&check(&s.history()), CYCLES, "stuck purchase");
    }

    #[test]
    fn an_unreadable_or_truncated_history_is_not_complete() {
        const COMPLETE: &str = "the event history is complete";
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        let mut h = s.history();
        h.unreadable_events
            .push("3: kind: 99 is not a known event kind".into());
        assert_only_failed(&check(&h), COMPLETE, "event 3: kind: 99");
        // Read from event 5 on: the grants before could not be checked.
        let mut h = s.history();
        for e in &mut h.events {
            e.sequence += 4;
        }
        assert_only_failed(&check(&h), COMPLETE, "begins at event 5");
        // A grant without its token cannot be checked, and says so.
        let mut h = s.history();
        h.events[0].fencing_token = None;
        let r = check(&h);
        assert_failed(&r, &[COMPLETE]);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("does not name its lease")),
            "{:?}",
            r.notes
        );
    }

    /// A fault record for the HA tests.
    fn fault(id: usize, kind: FaultKind, started_ms: u64, healed_ms: u64) -> FaultRecord {
        FaultRecord {
            id,
            kind,
            watchers: Vec::new(),
            started_ms,
            healed_ms,
            detail: kind.slug().into(),
        }
    }

    /// HA mode's side: every event streamed by replica 0 up to `switch_at`
    /// (by time), by replica 1 after.
    fn ha(h: &History, switch_at: u64, targets: &[(usize, usize)]) -> HaHistory {
        HaHistory {
            served_by: h
                .events
                .iter()
                .map(|e| {
                    (
                        e.sequence,
                        if e.unix_ms < switch_at { 0b001 } else { 0b010 },
                    )
                })
                .collect(),
            conflicts: Vec::new(),
            targets: targets.iter().copied().collect(),
            resumed_as_follower: BTreeMap::new(),
            election_ttl_ms: 2_000,
            election_ttls_ms: BTreeMap::new(),
            failover_margin_ms: 4_000,
        }
    }

    const GAPS: &str =
        "HA: from every fault's injection the next grant comes within election TTL + margin";
    const DEPOSED: &str = "HA: a deposed leader wrote nothing after its successor led (a resumed one granted nothing and stepped down)";

    #[test]
    fn ha_a_failover_within_the_bound_passes_and_its_gap_is_measured() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults.push(fault(1, FaultKind::LeaderKill, 2_000, 4_000));
        // Replica 1 leads from 4_500; numbering jumps past what replica 0
        // had not written to etcd.
        s.seq += 5;
        s.cycle(4_500, 2, "w2");
        let mut h = s.history();
        h.ha = Some(ha(&h, 4_500, &[(1, 0)]));
        let r = check(&h);
        assert!(r.passed(), "{}", r.render(1));
        assert_eq!(
            r.counts.failover_gaps_ms,
            vec![(FaultKind::LeaderKill, 2_500)]
        );
        assert!(
            r.render(1).contains("median 2500 ms, worst 2500 ms"),
            "{}",
            r.render(1)
        );
    }

    #[test]
    fn ha_a_slow_failover_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderPause, 2_000, 4_500));
        s.cycle(9_000, 2, "w2");
        let mut h = s.history();
        h.ha = Some(ha(&h, 4_500, &[(1, 0)]));
        let r = check(&h);
        assert_failed(&r, &[GAPS]);
        assert!(
            r.failures()
                .iter()
                .any(|f| f.contains("7000 ms after it began"))
        );
    }

    #[test]
    fn ha_a_gap_needs_a_failover() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.seq += 3;
        s.cycle(2_000, 2, "w1");
        let mut h = s.history();
        // One replica streamed everything and no fault was under way.
        h.ha = Some(ha(&h, u64::MAX, &[]));
        assert_only_failed(&check(&h), "the event history is complete", "are missing");
    }

    #[test]
    fn ha_a_deposed_leaders_late_grant_is_caught_and_a_shared_one_is_not() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderPause, 2_000, 5_000));
        s.cycle(4_500, 2, "w2");
        // Replica 0, resumed, grants token 3 on its own at 5_200.
        s.grant(5_200, 3, "w1");
        s.expire(7_300, 3, "w1");
        let mut h = s.history();
        let mut sides = ha(&h, 4_500, &[(1, 0)]);
        let late = h
            .events
            .iter()
            .find(|e| e.unix_ms == 5_200)
            .unwrap()
            .sequence;
        sides.served_by.insert(late, 0b001);
        h.ha = Some(sides.clone());
        let r = check(&h);
        assert_failed(&r, &[DEPOSED]);
        assert!(
            r.failures()
                .iter()
                .any(|f| f.contains("replica 0 alone streamed event")),
            "{}",
            r.render(1)
        );
        // The same grant streamed by the new leader too went through etcd
        // under the new leadership: not the deposed leader's.
        sides.served_by.insert(late, 0b011);
        h.ha = Some(sides);
        assert!(!failed_checks(&check(&h)).contains(&DEPOSED));
    }

    #[test]
    fn ha_a_resumed_leader_that_still_says_it_leads_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderPause, 2_000, 4_400));
        s.cycle(4_500, 2, "w2");
        let mut h = s.history();
        let mut sides = ha(&h, 4_500, &[(1, 0)]);
        sides.resumed_as_follower.insert(1, Some(40));
        h.ha = Some(sides.clone());
        assert!(check(&h).passed());
        sides.resumed_as_follower.insert(1, None);
        h.ha = Some(sides);
        assert_only_failed(&check(&h), DEPOSED, "still said it led");
    }

    #[test]
    fn ha_stale_token_refusals_are_noted_not_failed() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderEtcdCut, 2_000, 4_400));
        s.cycle(4_500, 2, "w2");
        s.order(1, "w1", 4_800, 4_801, "stale_token");
        let mut h = s.history();
        h.ha = Some(ha(&h, 4_500, &[(1, 0)]));
        let r = check(&h);
        assert!(r.passed(), "{}", r.render(1));
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("refused 1 checkouts with a stale token")),
            "{:?}",
            r.notes
        );
    }

    const GIVEN: &str = "every checkout ended within the TTL of its lease's last grant or renewal, and none used a grant never pushed";

    #[test]
    fn a_checkout_past_its_last_grant_or_renewal_is_caught_though_a_takeover_carried_the_lease() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderPauseAtGrant, 2_050, 5_050));
        // Granted at 2_000 by replica 0, paused at once; replica 1 carries
        // the lease with a whole TTL from its take-over (4_400), and it
        // expires there at 6_400. The holder never renewed: its checkout
        // must end by 4_000 (+ tolerance), whatever replica 1 gave.
        s.grant(2_000, 2, "w2");
        s.order(2, "w2", 2_005, 4_300, "purchased");
        s.expire(6_400, 2, "w2");
        s.cycle(6_500, 3, "w1");
        let mut h = s.history();
        h.ha = Some(ha(&h, 4_400, &[(1, 0)]));
        let r = check(&h);
        assert!(
            !failed_checks(&r).contains(&"every checkout ended before the arbiter freed its slot"),
            "{}",
            r.render(1)
        );
        assert_failed(&r, &[GIVEN]);
        assert!(
            r.failures()
                .iter()
                .any(|f| f.contains("checkout #2") && f.contains("300 ms past")),
            "{}",
            r.render(1)
        );
        // Renewed at the new leader at 3_000: its time ran to 5_000.
        let mut s2 = Script::default();
        s2.cycle(1_000, 1, "w1");
        s2.faults = s.faults.clone();
        s2.grant(2_000, 2, "w2");
        s2.renew(3_000, 2, "w2");
        s2.order(2, "w2", 2_005, 4_300, "purchased");
        s2.release(4_310, 2, "w2", Outcome::Purchased);
        s2.cycle(6_500, 3, "w1");
        let mut h = s2.history();
        h.ha = Some(ha(&h, 2_900, &[(1, 0)]));
        let r = check(&h);
        assert!(r.passed(), "{}", r.render(1));
    }

    #[test]
    fn an_unpushed_grant_may_end_early_but_no_one_may_use_its_token() {
        let unpushed = |s: &mut Script, at: u64, token: u64| {
            let seq = s.next();
            let mut e = build::expired(seq, at, &lease(token, "w2"));
            e.detail = format!("{UNPUSHED}: the write that held the grant left 400 ms of it");
            s.events.push(e);
        };
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::EtcdMemberPause, 1_900, 3_500));
        // Its write took 1.6 s: 400 ms left, under the 500 ms margin.
        s.grant(2_000, 2, "w2");
        unpushed(&mut s, 3_600, 2);
        s.cycle(3_700, 3, "w1");
        let mut h = s.history();
        h.ha = Some(ha(&h, u64::MAX, &[]));
        let r = check(&h);
        assert!(r.passed(), "{}", r.render(1));
        assert_eq!(r.counts.unpushed_grants, 1);
        assert_eq!(r.counts.unexplained_expirations, 0);
        // Someone used the token anyway.
        let mut h2 = h.clone();
        h2.store.orders.push(StoreOrder {
            id: 9,
            tcin: "100".into(),
            token: 2,
            lease_id: "lease-2".into(),
            watcher_id: "w2".into(),
            started_at_ms: 3_650,
            finished_at_ms: Some(3_651),
            result: "stale_token".into(),
            accepted: false,
        });
        assert_only_failed(&check(&h2), GIVEN, "never pushed");
        // Ended far earlier than the margin allows.
        let mut s = Script::default();
        s.grant(2_000, 2, "w2");
        unpushed(&mut s, 2_900, 2);
        let r = check(&s.history());
        assert_only_failed(
            &r,
            "every lease that ended without its holder's release shows as EXPIRED",
            "expired unpushed",
        );
    }

    #[test]
    fn ha_faults_under_a_longer_election_ttl_are_held_to_its_bound() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::EtcdMemberPause, 2_000, 4_000));
        // 8 s to the next grant: past 2 s + 4 s, within 5 s + 4 s; 6 s
        // from the heal: past TTL + margin (5 s), within it + 3 s.
        s.cycle(10_000, 2, "w2");
        let mut h = s.history();
        let mut sides = ha(&h, 10_000, &[]);
        h.ha = Some(sides.clone());
        assert_failed(
            &check(&h),
            &[
                GAPS,
                "after every fault heals the next grant comes within TTL + margin",
            ],
        );
        sides.election_ttls_ms.insert(1, 5_000);
        h.ha = Some(sides);
        let r = check(&h);
        assert!(r.passed(), "{}", r.render(1));
    }

    #[test]
    fn ha_a_leader_paused_at_its_grant_that_grants_on_resume_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        s.faults
            .push(fault(1, FaultKind::LeaderPauseAtGrant, 2_010, 5_010));
        s.grant(2_000, 2, "w2");
        s.order(2, "w2", 2_005, 2_505, "purchased");
        // Released at replica 1, which leads from 4_400.
        s.release(4_500, 2, "w2", Outcome::Purchased);
        // Replica 0, resumed, grants token 3 on its own.
        s.grant(5_200, 3, "w1");
        s.expire(7_300, 3, "w1");
        let mut h = s.history();
        let mut sides = ha(&h, 4_400, &[(1, 0)]);
        let late = h
            .events
            .iter()
            .find(|e| e.unix_ms == 5_200)
            .unwrap()
            .sequence;
        sides.served_by.insert(late, 0b001);
        h.ha = Some(sides);
        let r = check(&h);
        assert_failed(&r, &[DEPOSED]);
        assert!(
            r.failures()
                .iter()
                .any(|f| f.contains("leader replica SIGSTOP at its grant")),
            "{}",
            r.render(1)
        );
    }
}
