//! The history checker: reads what the store recorded (every checkout, with
//! its fencing token and times) and what the arbiter recorded (its event
//! history), together with the log of injected faults, and decides whether
//! the system kept its promises.
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
};

/// What kind of transition an arbiter event records (only the ones the
/// checker reads are told apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Granted,
    Renewed,
    Released,
    Expired,
    ArbiterStarted,
    Other,
}

/// How a lease ended, as the arbiter recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unspecified,
    Purchased,
    Failed,
    OutOfStock,
    Aborted,
    Expired,
}

/// One event of the arbiter's history (`WatchEvents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterEvent {
    pub sequence: u64,
    pub unix_ms: u64,
    pub kind: EventKind,
    pub tcin: String,
    pub watcher_id: String,
    pub lease_id: String,
    pub token: u64,
    pub outcome: Outcome,
    pub detail: String,
}

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
        }
    }

    /// Does it kill a watcher process (which then cannot release anything
    /// it held)?
    fn kills_watchers(self) -> bool {
        matches!(self, Self::WatcherKill | Self::HolderKill)
    }

    fn kills_arbiter(self) -> bool {
        matches!(self, Self::ArbiterKill | Self::ArbiterKillAfterGrant)
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
    /// After a fault heals, the next grant must come within
    /// `lease_ttl_ms + liveness_margin_ms`.
    pub liveness_margin_ms: u64,
    /// How far two processes' clocks may disagree.
    pub clock_tolerance_ms: u64,
}

/// Everything the checker reads.
#[derive(Debug, Clone)]
pub struct History {
    pub events: Vec<ArbiterEvent>,
    pub store: StoreLedger,
    pub faults: Vec<FaultRecord>,
    /// `None` when not known (then that cross-check is skipped).
    pub counters: Option<ArbiterCounters>,
    pub settings: Settings,
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
            "arbiter: {} grants, {} renewals, {} starts (1 + restarts), {} expirations ({} not explained by a fault), {} grants withdrawn undelivered",
            c.grants,
            c.renewals,
            c.arbiter_starts,
            c.expirations,
            c.unexplained_expirations,
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

/// A lease as the arbiter's history tells it.
#[derive(Debug, Clone)]
struct LeaseLife {
    token: u64,
    lease_id: String,
    tcin: String,
    watcher_id: String,
    granted_ms: u64,
    /// The grant or the last renewal.
    last_extended_ms: u64,
    end: Option<LeaseEnd>,
}

#[derive(Debug, Clone)]
struct LeaseEnd {
    at_ms: u64,
    kind: EventKind,
    outcome: Outcome,
    detail: String,
}

/// The arbiter withdraws a grant it could not put on the watcher's stream;
/// the watcher never saw it (see `Arbiter::abandon_grant`).
const UNDELIVERED: &str = "grant could not be delivered";

impl LeaseEnd {
    fn is_undelivered(&self) -> bool {
        self.kind == EventKind::Released
            && self.outcome == Outcome::Aborted
            && self.detail.contains(UNDELIVERED)
    }
}

/// Runs every check.
pub fn check(h: &History) -> Report {
    let mut counts = Counts::default();
    let mut notes = Vec::new();
    for f in &h.faults {
        *counts.faults.entry(f.kind).or_default() += 1;
    }
    let mut checks = Vec::new();
    let (leases, structure) = lease_lives(h, &mut counts);
    checks.push(structure);
    checks.push(history_complete(h, &counts));
    checks.push(store_saw_no_overlap(h, &mut counts));
    checks.push(no_overlap(h, &mut counts));
    checks.push(tokens_increase(h));
    checks.push(no_stale_token(h, &leases));
    checks.push(checkouts_end_inside_their_lease(h, &leases));
    checks.push(unreleased_leases_expire(
        h,
        &leases,
        &mut counts,
        &mut notes,
    ));
    checks.push(recovery_after_faults(h, &mut counts));
    checks.push(purchases_match(h, &leases, &mut counts, &mut notes));
    Report {
        checks,
        counts,
        notes,
    }
}

/// Every lease from the history; checks that at most one is live at a
/// time, tokens increase with every grant, and each lease ends once.
fn lease_lives(h: &History, counts: &mut Counts) -> (BTreeMap<u64, LeaseLife>, Check) {
    let mut failures = Vec::new();
    let mut leases: BTreeMap<u64, LeaseLife> = BTreeMap::new();
    let mut by_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut open: Option<u64> = None;
    let mut last_token = 0u64;
    for e in &h.events {
        match e.kind {
            EventKind::ArbiterStarted => counts.arbiter_starts += 1,
            EventKind::Granted => {
                counts.grants += 1;
                if e.token <= last_token {
                    failures.push(format!(
                        "event {}: grant with token {} after token {last_token}",
                        e.sequence, e.token
                    ));
                }
                last_token = last_token.max(e.token);
                if let Some(t) = open {
                    failures.push(format!(
                        "event {}: lease with token {} granted while the lease with token {t} was still live",
                        e.sequence, e.token
                    ));
                }
                open = Some(e.token);
                by_id.insert(e.lease_id.clone(), e.token);
                leases.insert(
                    e.token,
                    LeaseLife {
                        token: e.token,
                        lease_id: e.lease_id.clone(),
                        tcin: e.tcin.clone(),
                        watcher_id: e.watcher_id.clone(),
                        granted_ms: e.unix_ms,
                        last_extended_ms: e.unix_ms,
                        end: None,
                    },
                );
            }
            EventKind::Renewed => {
                counts.renewals += 1;
                match leases.get_mut(&e.token) {
                    Some(l) if l.end.is_none() => l.last_extended_ms = e.unix_ms,
                    Some(_) => failures.push(format!(
                        "event {}: renewal of the lease with token {} after it ended",
                        e.sequence, e.token
                    )),
                    None => failures.push(format!(
                        "event {}: renewal of a lease never granted (token {})",
                        e.sequence, e.token
                    )),
                }
            }
            EventKind::Released | EventKind::Expired => {
                let token = if e.token != 0 {
                    e.token
                } else {
                    by_id.get(&e.lease_id).copied().unwrap_or(0)
                };
                let Some(l) = leases.get_mut(&token) else {
                    failures.push(format!(
                        "event {}: lease {} (token {}) ended but was never granted",
                        e.sequence, e.lease_id, e.token
                    ));
                    continue;
                };
                if let Some(prev) = &l.end {
                    failures.push(format!(
                        "event {}: lease with token {token} ended twice (first {:?} at {})",
                        e.sequence, prev.kind, prev.at_ms
                    ));
                    continue;
                }
                let end = LeaseEnd {
                    at_ms: e.unix_ms,
                    kind: e.kind,
                    outcome: e.outcome,
                    detail: e.detail.clone(),
                };
                if e.kind == EventKind::Expired {
                    counts.expirations += 1;
                } else if end.is_undelivered() {
                    counts.undelivered_grants += 1;
                } else {
                    *counts.released.entry(outcome_name(e.outcome)).or_default() += 1;
                    if e.outcome == Outcome::Purchased {
                        counts.arbiter_purchases += 1;
                    }
                }
                l.end = Some(end);
                if open == Some(token) {
                    open = None;
                }
            }
            EventKind::Other => {}
        }
    }
    let check = Check {
        name: "the arbiter's leases: one at a time, tokens increase, each ends once",
        scope: format!("{} grants in {} events", counts.grants, h.events.len()),
        failures,
    };
    (leases, check)
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Unspecified => "unspecified",
        Outcome::Purchased => "purchased",
        Outcome::Failed => "failed",
        Outcome::OutOfStock => "out_of_stock",
        Outcome::Aborted => "aborted",
        Outcome::Expired => "expired",
    }
}

/// The follower saw every durable event: sequence numbers only jump where
/// the arbiter restarted (it skips the rest of a reserved block), and the
/// arbiter's own counters agree with what the history shows.
fn history_complete(h: &History, counts: &Counts) -> Check {
    let mut failures = Vec::new();
    for w in h.events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.sequence <= a.sequence {
            failures.push(format!(
                "event {} follows event {}: not in order",
                b.sequence, a.sequence
            ));
        } else if b.sequence != a.sequence + 1 && b.kind != EventKind::ArbiterStarted {
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
            "{} events; gaps only at restarts; counters {}",
            h.events.len(),
            if h.counters.is_some() {
                "compared"
            } else {
                "not known"
            }
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
fn no_stale_token(h: &History, leases: &BTreeMap<u64, LeaseLife>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let mut failures = Vec::new();
    let acc = accepted(h);
    for o in &acc {
        let Some(l) = leases.get(&o.token) else {
            failures.push(format!(
                "checkout #{} carries token {}, which the arbiter never granted",
                o.id, o.token
            ));
            continue;
        };
        if (!o.lease_id.is_empty() && o.lease_id != l.lease_id)
            || o.tcin != l.tcin
            || (!o.watcher_id.is_empty() && o.watcher_id != l.watcher_id)
        {
            failures.push(format!(
                "checkout #{} (token {}, lease {}, {} by {}) does not match the lease granted with that token (lease {}, {} to {})",
                o.id, o.token, o.lease_id, o.tcin, o.watcher_id, l.lease_id, l.tcin, l.watcher_id
            ));
        }
        if o.started_at_ms + tol < l.granted_ms {
            failures.push(format!(
                "checkout #{} (token {}) began at {}, before its lease was granted at {}",
                o.id, o.token, o.started_at_ms, l.granted_ms
            ));
        }
        if let Some(end) = &l.end
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
fn checkouts_end_inside_their_lease(h: &History, leases: &BTreeMap<u64, LeaseLife>) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let mut failures = Vec::new();
    let acc = accepted(h);
    for o in &acc {
        let Some(l) = leases.get(&o.token) else {
            continue; // reported by the stale-token check
        };
        let Some(end) = &l.end else {
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
                f.started_ms <= to_ms && f.healed_ms >= from_ms
            }
        })
        .map(|f| f.id)
}

/// A lease whose holder could not have released it (killed before the
/// lease ended, or paused or cut off when it ended) must end EXPIRED, never
/// as a release. Expiry never comes early. Expirations no fault explains
/// are reported as notes.
fn unreleased_leases_expire(
    h: &History,
    leases: &BTreeMap<u64, LeaseLife>,
    counts: &mut Counts,
    notes: &mut Vec<String>,
) -> Check {
    let tol = h.settings.clock_tolerance_ms;
    let ttl = h.settings.lease_ttl_ms;
    let mut failures = Vec::new();
    let mut silenced = 0usize;
    for l in leases.values() {
        let Some(end) = &l.end else { continue };
        if end.is_undelivered() {
            continue;
        }
        let silent_by = h.faults.iter().find(|f| {
            if !f.hits(&l.watcher_id) {
                return false;
            }
            if f.kind.kills_watchers() {
                l.granted_ms < f.started_ms && f.started_ms + tol < end.at_ms
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
            if end.at_ms + tol < l.last_extended_ms + ttl {
                failures.push(format!(
                    "lease with token {} expired at {}, {} ms before its TTL ran out",
                    l.token,
                    end.at_ms,
                    l.last_extended_ms + ttl - end.at_ms
                ));
            }
            if link_broken(h, &l.watcher_id, l.granted_ms, end.at_ms).is_none() {
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
fn recovery_after_faults(h: &History, counts: &mut Counts) -> Check {
    let bound = h.settings.lease_ttl_ms + h.settings.liveness_margin_ms;
    let grants: Vec<u64> = h
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Granted)
        .map(|e| e.unix_ms)
        .collect();
    let mut failures = Vec::new();
    for f in &h.faults {
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
            "{} faults, bound {} ms = TTL {} + margin {}",
            h.faults.len(),
            bound,
            h.settings.lease_ttl_ms,
            h.settings.liveness_margin_ms
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
    leases: &BTreeMap<u64, LeaseLife>,
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
        .filter(|l| {
            l.end
                .as_ref()
                .is_some_and(|e| e.kind == EventKind::Released && e.outcome == Outcome::Purchased)
        })
        .map(|l| l.token)
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
        let Some(l) = leases.get(t) else {
            failures.push(format!(
                "the store sold with token {t} (checkout #{}), a token the arbiter never granted",
                o.id
            ));
            continue;
        };
        let Some(end) = &l.end else {
            failures.push(format!(
                "the store sold with token {t} (checkout #{}); the arbiter's lease has not ended",
                o.id
            ));
            continue;
        };
        let finished = o.finished_at_ms.unwrap_or(o.started_at_ms);
        let lost_to = link_broken(h, &l.watcher_id, finished.saturating_sub(tol), end.at_ms);
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
    use super::*;

    const TTL: u64 = 2_000;

    fn settings() -> Settings {
        Settings {
            lease_ttl_ms: TTL,
            liveness_margin_ms: 3_000,
            clock_tolerance_ms: 100,
        }
    }

    /// Builds histories: grants, releases and matching store orders.
    #[derive(Default)]
    struct Script {
        events: Vec<ArbiterEvent>,
        orders: Vec<StoreOrder>,
        faults: Vec<FaultRecord>,
        seq: u64,
    }

    impl Script {
        fn event(&mut self, at: u64, kind: EventKind, token: u64, watcher: &str, outcome: Outcome) {
            self.seq += 1;
            self.events.push(ArbiterEvent {
                sequence: self.seq,
                unix_ms: at,
                kind,
                tcin: "100".into(),
                watcher_id: watcher.into(),
                lease_id: format!("lease-{token}"),
                token,
                outcome,
                detail: String::new(),
            });
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
            self.event(at, EventKind::Granted, token, watcher, Outcome::Unspecified);
            self.order(token, watcher, at + 5, at + 505, "purchased");
            self.event(
                at + 510,
                EventKind::Released,
                token,
                watcher,
                Outcome::Purchased,
            );
        }

        fn history(&self) -> History {
            History {
                events: self.events.clone(),
                store: StoreLedger {
                    orders: self.orders.clone(),
                    violations: 0,
                },
                faults: self.faults.clone(),
                counters: None,
                settings: settings(),
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
    fn an_overlap_is_caught() {
        let mut s = Script::default();
        s.cycle(1_000, 1, "w1");
        // Token 2's checkout runs on past the start of token 3's.
        s.event(2_000, EventKind::Granted, 2, "w2", Outcome::Unspecified);
        s.order(2, "w2", 2_005, 3_300, "purchased");
        s.event(2_510, EventKind::Released, 2, "w2", Outcome::Purchased);
        s.cycle(3_000, 3, "w1");
        let r = check(&s.history());
        let failed = failed_checks(&r);
        assert!(
            failed.contains(&"no two accepted checkouts overlap in time (pairwise)"),
            "{failed:?}"
        );
        assert!(
            failed.contains(&"every checkout ended before the arbiter freed its slot"),
            "{failed:?}"
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
        s.event(3_000, EventKind::Granted, 2, "w1", Outcome::Unspecified);
        s.order(2, "w1", 3_005, 3_505, "purchased");
        s.event(3_510, EventKind::Released, 2, "w1", Outcome::Purchased);
        let r = check(&s.history());
        let failed = failed_checks(&r);
        assert!(
            failed.contains(&"fencing tokens strictly increase in start order"),
            "{failed:?}"
        );
        assert!(
            failed
                .contains(&"the arbiter's leases: one at a time, tokens increase, each ends once"),
            "{failed:?}"
        );
    }

    #[test]
    fn a_checkout_after_its_lease_expired_is_a_stale_token() {
        let mut s = Script::default();
        s.event(1_000, EventKind::Granted, 1, "w1", Outcome::Unspecified);
        s.event(3_000, EventKind::Expired, 1, "w1", Outcome::Expired);
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
        let failed = failed_checks(&r);
        assert!(
            failed.contains(&"no checkout with a stale token was accepted"),
            "{failed:?}"
        );
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
        s.event(1_000, EventKind::Granted, 1, "w1", Outcome::Unspecified);
        s.order(1, "w1", 1_005, 1_505, "purchased");
        s.event(3_000, EventKind::Expired, 1, "w1", Outcome::Expired);
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
        s.event(1_000, EventKind::Granted, 1, "w1", Outcome::Unspecified);
        s.order(1, "w1", 1_005, 1_505, "purchased");
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::HolderKill,
            watchers: vec!["w1".into()],
            started_ms: 1_506,
            healed_ms: 2_000,
            detail: "w1".into(),
        });
        s.event(3_000, EventKind::Expired, 1, "w1", Outcome::Expired);
        s.cycle(3_100, 2, "w2");
        let r = check(&s.history());
        assert!(r.passed(), "{}", r.render(1));
        assert_eq!(r.counts.lost_releases, 1);
        assert_eq!(r.counts.unexplained_expirations, 0);
    }

    #[test]
    fn a_silenced_holder_whose_lease_shows_released_is_caught() {
        let mut s = Script::default();
        s.event(1_000, EventKind::Granted, 1, "w1", Outcome::Unspecified);
        s.faults.push(FaultRecord {
            id: 1,
            kind: FaultKind::HolderKill,
            watchers: vec!["w1".into()],
            started_ms: 1_200,
            healed_ms: 1_500,
            detail: "w1".into(),
        });
        // A dead process cannot release: this release is made up.
        s.event(2_000, EventKind::Released, 1, "w1", Outcome::Aborted);
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
        s.event(1_000, EventKind::Granted, 1, "w1", Outcome::Unspecified);
        s.event(1_500, EventKind::Renewed, 1, "w1", Outcome::Unspecified);
        s.event(3_000, EventKind::Expired, 1, "w1", Outcome::Expired);
        let r = check(&s.history());
        let failed = failed_checks(&r);
        assert!(
            failed
                .contains(&"every lease that ended without its holder's release shows as EXPIRED"),
            "{failed:?}"
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
        s.event(9_000, EventKind::Granted, 2, "w1", Outcome::Unspecified);
        s.event(9_100, EventKind::Granted, 3, "w2", Outcome::Unspecified);
        let r = check(&s.history());
        let failed = failed_checks(&r);
        assert!(
            failed.contains(&"after every fault heals the next grant comes within TTL + margin"),
            "{failed:?}"
        );
        assert!(
            failed
                .contains(&"the arbiter's leases: one at a time, tokens increase, each ends once"),
            "{failed:?}"
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
        let failed = failed_checks(&r);
        assert!(
            failed.contains(&"the event history is complete"),
            "{failed:?}"
        );
    }
}
