//! Which events become which alerts: no I/O, no clock of its own (every
//! call says what time it is), so the rules are tested directly.
//!
//! What the rules remember between events ([`RulesState`]: which products
//! are available and since when they are out, the current lease, the
//! connected watchers, the outages) is saved in the state file with the
//! event position, so a restart neither repeats nor forgets an alert.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use restock_domain::{Event, EventKind, Outcome, ProductState, duration::short};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertKind};

/// The time limits of the rules.
#[derive(Debug, Clone, Copy)]
pub struct RuleSettings {
    /// How long a product must have been out of stock everywhere before it
    /// coming back is a new `in_stock` alert.
    pub hold_down: Duration,
    /// A lease held this long is `stuck`.
    pub stuck_after: Duration,
    /// No watcher connected for this long is `no_watchers`.
    pub no_watchers_after: Duration,
    /// The arbiter unreachable for this long is `arbiter_unreachable`.
    pub unreachable_after: Duration,
}

/// Whether a product is available (queued or being bought), and since when
/// it is not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    pub available: bool,
    /// When it stopped being available (arbiter's clock, unix ms); `None`
    /// when it never was.
    #[serde(default)]
    pub out_since_ms: Option<u64>,
}

/// The lease being held, as the events told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub tcin: String,
    pub watcher_id: String,
    pub token: u64,
    pub granted_at_ms: u64,
    #[serde(default)]
    pub stuck_alerted: bool,
}

/// What the rules remember; saved with the event position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesState {
    #[serde(default)]
    pub products: BTreeMap<String, Availability>,
    #[serde(default)]
    pub lease: Option<HeldLease>,
    #[serde(default)]
    pub watchers: BTreeSet<String>,
    /// Since when no watcher is connected (unix ms), and whether that was
    /// alerted.
    #[serde(default)]
    pub no_watchers_since_ms: Option<u64>,
    #[serde(default)]
    pub no_watchers_alerted: bool,
    /// Since when the arbiter is unreachable (unix ms, the notifier's
    /// clock), and whether that was alerted.
    #[serde(default)]
    pub down_since_ms: Option<u64>,
    #[serde(default)]
    pub down_alerted: bool,
    /// Watchers whose stock source blocks them, as alerted; its end is
    /// alerted only when its start was.
    #[serde(default)]
    pub blocked_watchers: BTreeSet<String>,
    /// Blocked watchers as of an arbiter (re)start (unix ms of the start):
    /// the arbiter keeps blocks in memory only, so a watcher still blocked
    /// is announced again when it reconnects. A `SOURCE_BLOCKED` within
    /// [`REANNOUNCED_WITHIN`] of the start is that, not a new episode; a
    /// later one is new (the block ended while the arbiter was down).
    #[serde(default)]
    pub blocked_at_restart: BTreeMap<String, u64>,
    /// A spending-limit episode is open: its `BUDGET_EXHAUSTED` was
    /// alerted (or it was in force when a fresh notifier looked), so its
    /// `BUDGET_AVAILABLE` is alerted and another `BUDGET_EXHAUSTED` is not
    /// news unless the end was missed.
    #[serde(default)]
    pub budget_exhausted: bool,
    /// The arbiter (re)started while that episode was open: a
    /// `BUDGET_EXHAUSTED` after it is the same episode announced again (an
    /// arbiter that lost track of it), not a new one. Without a restart in
    /// between the arbiter never sends two, so a second one means its end
    /// was missed (a gap in the events) and is alerted.
    #[serde(default)]
    pub budget_exhausted_at_restart: bool,
}

/// How long after an arbiter's start a blocked watcher's block is taken as
/// the one it had before (watchers reconnect within seconds).
pub const REANNOUNCED_WITHIN: Duration = Duration::from_secs(120);

/// What the arbiter's status says, as far as the rules care.
#[derive(Debug, Clone, Default)]
pub struct ArbiterView {
    pub names: HashMap<String, String>,
    pub test_mode: bool,
    pub connected_watchers: BTreeSet<String>,
    /// Products queued or attempting now.
    pub available: BTreeSet<String>,
    /// The lease now: (tcin, watcher, token, granted at).
    pub lease: Option<(String, String, u64, u64)>,
    /// Watchers whose stock source blocks them now.
    pub blocked_watchers: BTreeSet<String>,
    /// The spending limit holds products back now.
    pub budget_exhausted: bool,
}

/// The rules, with what they know of the arbiter (names, mode).
#[derive(Debug, Clone)]
pub struct Rules {
    pub settings: RuleSettings,
    names: HashMap<String, String>,
    test_mode: bool,
}

impl Rules {
    pub fn new(settings: RuleSettings) -> Self {
        Self {
            settings,
            names: HashMap::new(),
            test_mode: false,
        }
    }

    pub fn test_mode(&self) -> bool {
        self.test_mode
    }

    /// Takes in a fresh status: names and mode, and the present (watchers,
    /// the lease). On a `fresh` start (no saved position) the products
    /// already available are marked so, and not alerted: they were in stock
    /// before the notifier looked. Otherwise the events since the saved
    /// position are replayed next and say what became available meanwhile,
    /// alerts included.
    pub fn on_status(
        &mut self,
        state: &mut RulesState,
        view: ArbiterView,
        now_ms: u64,
        fresh: bool,
    ) {
        self.names = view.names;
        self.test_mode = view.test_mode;
        if fresh {
            for tcin in &view.available {
                let a = state.products.entry(tcin.clone()).or_default();
                a.available = true;
            }
            // Blocked before the notifier looked: not alerted, but its end
            // will be.
            state.blocked_watchers = view.blocked_watchers;
            // Likewise a spending limit holding products back.
            state.budget_exhausted = view.budget_exhausted;
            state.budget_exhausted_at_restart = false;
        }
        state.watchers = view.connected_watchers;
        self.watchers_changed(state, now_ms);
        match (&state.lease, view.lease) {
            (Some(held), Some((_, _, token, _))) if held.token == token => {}
            (_, Some((tcin, watcher_id, token, granted_at_ms))) => {
                state.lease = Some(HeldLease {
                    tcin,
                    watcher_id,
                    token,
                    granted_at_ms,
                    stuck_alerted: false,
                });
            }
            (_, None) => state.lease = None,
        }
    }

    /// The alerts one event makes (usually none).
    pub fn on_event(&self, state: &mut RulesState, e: &Event) -> Vec<Alert> {
        let tcin = e.tcin.as_ref().map(|t| t.to_string());
        let watcher = e.watcher_id.as_ref().map(|w| w.to_string());
        let token = e.fencing_token.map(|t| t.get());
        let mut out = Vec::new();
        match e.kind {
            EventKind::Queued => {
                if let Some(t) = &tcin
                    && self.becomes_available(state, t, e.unix_ms)
                {
                    out.push(self.in_stock(e, t));
                }
            }
            EventKind::Granted => {
                if let Some(t) = &tcin {
                    if e.from_state != Some(ProductState::Queued)
                        && self.becomes_available(state, t, e.unix_ms)
                    {
                        out.push(self.in_stock(e, t));
                    }
                    state.products.entry(t.clone()).or_default().available = true;
                    state.lease = Some(HeldLease {
                        tcin: t.clone(),
                        watcher_id: watcher.clone().unwrap_or_default(),
                        token: token.unwrap_or(0),
                        granted_at_ms: e.unix_ms,
                        stuck_alerted: false,
                    });
                    let name = self.name(t);
                    let who = watcher.as_deref().unwrap_or("a watcher");
                    out.push(self.about(
                        e,
                        AlertKind::CheckoutStarted,
                        format!("Checkout started: {name}"),
                        format!(
                            "{who} is checking out {name} ({}) with fencing token {}.",
                            product_text(t),
                            token.unwrap_or(0)
                        ),
                    ));
                }
            }
            EventKind::Released | EventKind::Expired => {
                if let Some(t) = &tcin {
                    self.goes_out(state, t, e.unix_ms);
                    if state.lease.as_ref().is_some_and(|l| Some(l.token) == token) {
                        state.lease = None;
                    }
                    out.push(self.lease_ended(e, t));
                }
            }
            EventKind::Unqueued => {
                if let Some(t) = &tcin {
                    self.goes_out(state, t, e.unix_ms);
                }
            }
            EventKind::ArbiterStarted => self.arbiter_started(state, e.unix_ms),
            EventKind::WatcherJoined => {
                if let Some(w) = watcher {
                    state.watchers.insert(w);
                    self.watchers_changed(state, e.unix_ms);
                }
            }
            EventKind::WatcherLeft => {
                if let Some(w) = watcher {
                    state.watchers.remove(&w);
                    self.watchers_changed(state, e.unix_ms);
                }
            }
            EventKind::SourceBlocked => {
                if let Some(w) = watcher {
                    let reannounced = state
                        .blocked_at_restart
                        .remove(&w)
                        .is_some_and(|at| e.unix_ms.saturating_sub(at) <= ms(REANNOUNCED_WITHIN));
                    if state.blocked_watchers.insert(w.clone()) && !reannounced {
                        out.push(self.source_blocked(e, &w));
                    }
                }
            }
            EventKind::SourceUnblocked => {
                if let Some(w) = watcher
                    && state.blocked_watchers.remove(&w)
                {
                    out.push(self.source_unblocked(e, &w));
                }
            }
            EventKind::BudgetExhausted => {
                let repeated = state.budget_exhausted && state.budget_exhausted_at_restart;
                state.budget_exhausted = true;
                state.budget_exhausted_at_restart = false;
                if !repeated {
                    out.push(self.budget_exhausted(e));
                }
            }
            EventKind::BudgetAvailable => {
                state.budget_exhausted_at_restart = false;
                if std::mem::take(&mut state.budget_exhausted) {
                    out.push(self.budget_available(e));
                }
            }
            _ => {}
        }
        out
    }

    /// Alerts that come from time passing: a stuck lease, no watchers (both
    /// only while the arbiter is reachable, `connected`), an unreachable
    /// arbiter (`down_reason` says why it is).
    pub fn on_tick(
        &self,
        state: &mut RulesState,
        now_ms: u64,
        connected: bool,
        arbiter: &str,
        down_reason: &str,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        if connected {
            if let Some(l) = &mut state.lease
                && !l.stuck_alerted
                && now_ms.saturating_sub(l.granted_at_ms) >= ms(self.settings.stuck_after)
            {
                l.stuck_alerted = true;
                let l = l.clone();
                let name = self.name(&l.tcin);
                let held = short(Duration::from_millis(
                    now_ms.saturating_sub(l.granted_at_ms),
                ));
                let mut a = Alert::new(
                    format!("stuck-{}", l.token),
                    AlertKind::Stuck,
                    format!("Purchase stuck: {name}"),
                    format!(
                        "{} has held the purchase slot for {name} ({}) for {held} (fencing token {}); the limit is {}.",
                        l.watcher_id,
                        product_text(&l.tcin),
                        l.token,
                        short(self.settings.stuck_after)
                    ),
                    now_ms,
                );
                a.about_product(&l.tcin);
                a.name = self.names.get(&l.tcin).cloned();
                a.fencing_token = Some(l.token);
                a.watcher_id = Some(l.watcher_id.clone());
                out.push(a.in_test_mode(self.test_mode));
            }
            if let Some(since) = state.no_watchers_since_ms
                && !state.no_watchers_alerted
                && now_ms.saturating_sub(since) >= ms(self.settings.no_watchers_after)
            {
                state.no_watchers_alerted = true;
                out.push(
                    Alert::new(
                        format!("no_watchers-{since}"),
                        AlertKind::NoWatchers,
                        "No watcher connected".to_owned(),
                        format!(
                            "No stock watcher has been connected to the arbiter for {}: nothing is being polled.",
                            short(Duration::from_millis(now_ms.saturating_sub(since)))
                        ),
                        now_ms,
                    )
                    .in_test_mode(self.test_mode),
                );
            }
        } else if let Some(since) = state.down_since_ms
            && !state.down_alerted
            && now_ms.saturating_sub(since) >= ms(self.settings.unreachable_after)
        {
            state.down_alerted = true;
            out.push(
                Alert::new(
                    format!("arbiter_unreachable-{since}"),
                    AlertKind::ArbiterUnreachable,
                    "Arbiter unreachable".to_owned(),
                    format!(
                        "The notifier has not reached the arbiter at {arbiter} for {}: {down_reason}",
                        short(Duration::from_millis(now_ms.saturating_sub(since)))
                    ),
                    now_ms,
                )
                .in_test_mode(self.test_mode),
            );
        }
        out
    }

    /// The alert for events `from..=to` that were never received (the
    /// arbiter's history no longer held them when the notifier resumed):
    /// whatever they would have alerted is lost, so the user is told to
    /// look. Its id is the range, so it is the same alert however often
    /// the gap is met (a receiver drops a repeat by its key).
    pub fn missed_events(&self, from: u64, to: u64, now_ms: u64) -> Alert {
        let which = if from == to {
            format!("Event {from} was")
        } else {
            format!("Events {from} to {to} ({} events) were", to - from + 1)
        };
        Alert::new(
            format!("missed_events-{from}-{to}"),
            AlertKind::MissedEvents,
            "Events missed: alerts may be lost".to_owned(),
            format!(
                "{which} not received: the arbiter no longer holds them (the notifier was away longer than its event history reaches). Purchased or in_stock alerts among them may be lost; check the arbiter's status (restockctl status)."
            ),
            now_ms,
        )
        .in_test_mode(self.test_mode)
    }

    /// The arbiter could not be reached (again); the outage starts now
    /// unless it already started.
    pub fn arbiter_down(&self, state: &mut RulesState, now_ms: u64) {
        state.down_since_ms.get_or_insert(now_ms);
    }

    /// The event stream is open: any outage is over.
    pub fn arbiter_up(&self, state: &mut RulesState) {
        state.down_since_ms = None;
        state.down_alerted = false;
    }

    fn watchers_changed(&self, state: &mut RulesState, now_ms: u64) {
        if state.watchers.is_empty() {
            state.no_watchers_since_ms.get_or_insert(now_ms);
        } else {
            state.no_watchers_since_ms = None;
            state.no_watchers_alerted = false;
        }
    }

    /// Marks `tcin` available; true when that is news worth an alert (it
    /// was never seen, or out for at least the hold-down).
    fn becomes_available(&self, state: &mut RulesState, tcin: &str, at_ms: u64) -> bool {
        let a = state.products.entry(tcin.to_owned()).or_default();
        if a.available {
            return false;
        }
        a.available = true;
        match a.out_since_ms {
            None => true,
            Some(since) => at_ms.saturating_sub(since) >= ms(self.settings.hold_down),
        }
    }

    /// A restarted arbiter (or a replica taking over) puts its queued
    /// products back to ready without an event per product, so every
    /// product thought available goes out as of the restart; the hold-down
    /// then decides whether its next report is news. The lease is kept: it
    /// may carry over the restart (its product is attempting again) and is
    /// ended by its own RELEASED or EXPIRED. Without this a product that
    /// sold out while the arbiter was down would never alert again.
    fn arbiter_started(&self, state: &mut RulesState, at_ms: u64) {
        // Blocks are the arbiter's memory only: each is announced again
        // when its watcher reconnects, or never if it ended meanwhile.
        for w in std::mem::take(&mut state.blocked_watchers) {
            state.blocked_at_restart.insert(w, at_ms);
        }
        // The arbiter saves its budget episode, so it normally goes on
        // without a word; one that lost it announces it again.
        if state.budget_exhausted {
            state.budget_exhausted_at_restart = true;
        }
        let leased = state.lease.as_ref().map(|l| l.tcin.clone());
        let available: Vec<String> = state
            .products
            .iter()
            .filter(|(tcin, a)| a.available && Some(*tcin) != leased.as_ref())
            .map(|(tcin, _)| tcin.clone())
            .collect();
        for tcin in available {
            self.goes_out(state, &tcin, at_ms);
        }
    }

    fn goes_out(&self, state: &mut RulesState, tcin: &str, at_ms: u64) {
        let a = state.products.entry(tcin.to_owned()).or_default();
        if a.available || a.out_since_ms.is_none() {
            a.available = false;
            a.out_since_ms = Some(at_ms);
        }
    }

    fn name(&self, tcin: &str) -> String {
        match self.names.get(tcin) {
            Some(n) if !n.trim().is_empty() => n.clone(),
            _ => format!("product {tcin}"),
        }
    }

    /// An alert about the event's product, lease and watcher.
    fn about(&self, e: &Event, kind: AlertKind, title: String, message: String) -> Alert {
        let mut a = Alert::new(
            format!("e{}-{}", e.sequence, kind.as_str()),
            kind,
            title,
            message,
            e.unix_ms,
        );
        if let Some(t) = &e.tcin {
            a.about_product(t.as_str());
        }
        a.name = a.tcin.as_ref().and_then(|t| self.names.get(t)).cloned();
        a.fencing_token = e.fencing_token.map(|t| t.get());
        a.watcher_id = e.watcher_id.as_ref().map(|w| w.to_string());
        a.in_test_mode(self.test_mode)
    }

    /// A watcher's stock source blocks it. Its id is the event's, so it is
    /// sent once; the kind is the first word of the event's detail.
    fn source_blocked(&self, e: &Event, watcher: &str) -> Alert {
        let (kind, what) = split_kind(&e.detail);
        let mut message = format!(
            "The stock source blocks watcher {watcher} ({kind}): it polls nothing there until the block ends, so restocks it would see are missed."
        );
        if !what.is_empty() {
            message.push_str(&format!(" Detail: {what}."));
        }
        message.push_str(if what.contains("shopify:") {
            " Nothing is done to get around it; see the README, \"Shopify storefronts\"."
        } else {
            " Nothing is done to get around it; see the README, \"Against the real Target\"."
        });
        self.about(
            e,
            AlertKind::SourceBlocked,
            format!("Source blocked ({kind}): watcher {watcher}"),
            message,
        )
    }

    /// That block ended.
    fn source_unblocked(&self, e: &Event, watcher: &str) -> Alert {
        let (kind, what) = split_kind(&e.detail);
        let mut message = format!("The {kind} block of watcher {watcher} is over");
        if !what.is_empty() {
            message.push_str(&format!(": {what}"));
        }
        message.push('.');
        self.about(
            e,
            AlertKind::SourceUnblocked,
            format!("Source unblocked: watcher {watcher}"),
            message,
        )
    }

    /// The spending limit holds products in stock back. Its id is the
    /// event's, so it is sent once; the limit is the one the event's detail
    /// names (`the spending limit ($250.00, 4 purchases per 24h) holds
    /// back 2 products in stock`).
    fn budget_exhausted(&self, e: &Event) -> Alert {
        let detail = e.detail.trim().trim_end_matches('.');
        let title = match limit_in(detail) {
            Some(limit) => format!("Budget exhausted: {limit}"),
            None => "Budget exhausted".to_owned(),
        };
        let what = if detail.is_empty() {
            "The spending limit holds back products in stock".to_owned()
        } else {
            capitalised(detail)
        };
        self.about(
            e,
            AlertKind::BudgetExhausted,
            title,
            format!(
                "{what}: they are not bought until it has room again (spend rolls out of its window, a checkout in flight fails, or an operator changes it: restockctl budget)."
            ),
        )
    }

    /// That episode ended: room came back.
    fn budget_available(&self, e: &Event) -> Alert {
        let detail = e.detail.trim().trim_end_matches('.');
        let title = match limit_in(detail) {
            Some(limit) => format!("Budget available: {limit}"),
            None => "Budget available".to_owned(),
        };
        let mut message = "Room came back".to_owned();
        if !detail.is_empty() {
            message.push_str(&format!(": {detail}"));
        }
        message.push_str("; products in stock are bought again.");
        self.about(e, AlertKind::BudgetAvailable, title, message)
    }

    fn in_stock(&self, e: &Event, tcin: &str) -> Alert {
        let name = self.name(tcin);
        let mut a = self.about(
            e,
            AlertKind::InStock,
            format!("In stock: {name}"),
            format!("{name} ({}) is in stock.", product_text(tcin)),
        );
        // The queueing is not a lease: no token, no single watcher.
        a.fencing_token = None;
        a
    }

    fn lease_ended(&self, e: &Event, tcin: &str) -> Alert {
        let name = self.name(tcin);
        let who = e
            .watcher_id
            .as_ref()
            .map_or("a watcher".to_owned(), |w| w.to_string());
        let token = e.fencing_token.map_or(0, |t| t.get());
        let detail = if e.detail.trim().is_empty() {
            String::new()
        } else {
            format!(" Detail: {}", e.detail.trim())
        };
        match (e.kind, e.outcome) {
            (EventKind::Released, Some(Outcome::Purchased)) => {
                let price = price_from_detail(&e.detail);
                let price_text = price
                    .map(|c| format!(" for {}", restock_domain::Price::from_cents(c).formatted()))
                    .unwrap_or_default();
                let mut a = self.about(
                    e,
                    AlertKind::Purchased,
                    format!("Purchased: {name}"),
                    format!(
                        "{who} bought {name} ({}){price_text}, fencing token {token}.{detail}",
                        product_text(tcin)
                    ),
                );
                a.price_cents = price;
                a
            }
            (EventKind::Expired, _) => self.about(
                e,
                AlertKind::CheckoutFailed,
                format!("Lease expired: {name}"),
                format!(
                    "{who} stopped renewing its lease on {name} ({}, fencing token {token}); the arbiter ended it.{detail}",
                    product_text(tcin)
                ),
            ),
            (_, outcome) => {
                let how = outcome.map_or("unknown", |o| o.as_str());
                self.about(
                    e,
                    AlertKind::CheckoutFailed,
                    format!("Checkout failed: {name}"),
                    format!(
                        "{who}'s checkout of {name} ({}, fencing token {token}) ended {how}.{detail}",
                        product_text(tcin)
                    ),
                )
            }
        }
    }
}

/// The kind (`captcha`) and the rest of a `SOURCE_*` event's detail
/// (`captcha: the stock source ...`).
fn split_kind(detail: &str) -> (&str, &str) {
    match detail.split_once(':') {
        Some((kind, rest)) if !kind.is_empty() && !kind.contains(' ') => (kind, rest.trim()),
        _ => ("unknown kind", detail.trim()),
    }
}

/// The limit a `BUDGET_*` event's detail names in brackets (`the spending
/// limit ($250.00 per 24h) has room again`).
fn limit_in(detail: &str) -> Option<&str> {
    let start = detail.find('(')? + 1;
    let end = start + detail.get(start..)?.find(')')?;
    let limit = detail.get(start..end)?.trim();
    (!limit.is_empty()).then_some(limit)
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The price of a purchase, from the checkout's detail when it holds a JSON
/// object with `price_cents` (cents) or `price` (dollars), as the store
/// simulator's order does (`HTTP 200: {"result":"purchased","price":19.99,…}`).
pub fn price_from_detail(detail: &str) -> Option<u64> {
    let start = detail.find('{')?;
    let end = detail.rfind('}')?;
    let doc: serde_json::Value = serde_json::from_str(detail.get(start..=end)?).ok()?;
    if let Some(c) = doc.get("price_cents").and_then(serde_json::Value::as_u64) {
        return Some(c);
    }
    let dollars = doc.get("price").and_then(serde_json::Value::as_f64)?;
    restock_domain::Price::from_dollars(dollars)
        .ok()
        .map(|p| p.cents())
}

/// A product id as alerts write it: `TCIN 94300069` (Target), `Shopify
/// cards.example variant 4001` or `Shopify cards.example product etb`.
fn product_text(id: &str) -> String {
    match restock_domain::ProductId::parse(id) {
        Ok(p) => p.describe(),
        Err(_) => format!("product {id}"),
    }
}

#[cfg(test)]
mod tests {
    use restock_domain::{FencingToken, LeaseId, ProductId, WatcherId};

    use super::*;

    fn rules() -> Rules {
        Rules::new(RuleSettings {
            hold_down: Duration::from_secs(60),
            stuck_after: Duration::from_secs(120),
            no_watchers_after: Duration::from_secs(300),
            unreachable_after: Duration::from_secs(30),
        })
    }

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    fn queued(seq: u64, at: u64) -> Event {
        queued_of("100", seq, at)
    }

    fn queued_of(tcin: &str, seq: u64, at: u64) -> Event {
        Event::new(EventKind::Queued)
            .product(&t(tcin), ProductState::Ready, ProductState::Queued)
            .at(seq, at)
    }

    /// What a restarted arbiter (or a replica taking over) says, and all it
    /// says: its queued products are back to ready without an event.
    fn started(seq: u64, at: u64) -> Event {
        Event::new(EventKind::ArbiterStarted)
            .detail("state restored")
            .at(seq, at)
    }

    fn unqueued(seq: u64, at: u64) -> Event {
        Event::new(EventKind::Unqueued)
            .product(&t("100"), ProductState::Queued, ProductState::Ready)
            .at(seq, at)
    }

    fn lease_event(kind: EventKind, seq: u64, at: u64) -> Event {
        Event::new(kind)
            .lease(
                &LeaseId::parse("l1").unwrap(),
                &t("100"),
                &WatcherId::parse("w1").unwrap(),
                FencingToken(7),
            )
            .at(seq, at)
    }

    #[test]
    fn flapping_inside_the_hold_down_alerts_once() {
        let r = rules();
        let mut s = RulesState::default();
        let mut alerts = r.on_event(&mut s, &queued(1, 1_000));
        for i in 0..10 {
            alerts.extend(r.on_event(&mut s, &unqueued(2 + 2 * i, 2_000 + i * 1_000)));
            alerts.extend(r.on_event(&mut s, &queued(3 + 2 * i, 2_500 + i * 1_000)));
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::InStock);
        assert_eq!(alerts[0].id, "e1-in_stock");
        // Out for longer than the hold-down: a new alert.
        r.on_event(&mut s, &unqueued(30, 20_000));
        let again = r.on_event(&mut s, &queued(31, 80_000));
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn after_an_arbiter_restart_the_hold_down_decides_whether_stock_is_news() {
        let r = rules();
        let mut s = RulesState::default();
        assert_eq!(r.on_event(&mut s, &queued_of("100", 1, 1_000)).len(), 1);
        assert_eq!(r.on_event(&mut s, &queued_of("200", 2, 1_500)).len(), 1);
        // The arbiter restarts at 10 s: both were queued, both are ready
        // now, and no event said so.
        assert!(r.on_event(&mut s, &started(1_001, 10_000)).is_empty());
        for tcin in ["100", "200"] {
            assert_eq!(
                s.products[tcin],
                Availability {
                    available: false,
                    out_since_ms: Some(10_000)
                },
                "{tcin}"
            );
        }
        // 200 reported again inside the hold-down after the restart: the
        // same restock, not news.
        assert!(
            r.on_event(&mut s, &queued_of("200", 1_002, 30_000))
                .is_empty()
        );
        // 100 back once the hold-down has passed since the restart: news.
        let again = r.on_event(&mut s, &queued_of("100", 1_003, 70_000));
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].kind, AlertKind::InStock);
        assert_eq!(again[0].id, "e1003-in_stock");
        assert_eq!(again[0].tcin.as_deref(), Some("100"));
    }

    #[test]
    fn a_lease_carried_over_a_restart_is_kept_and_its_product_stays_available() {
        let r = rules();
        let mut s = RulesState::default();
        r.on_event(&mut s, &queued(1, 1_000));
        let mut granted = lease_event(EventKind::Granted, 2, 2_000);
        granted.from_state = Some(ProductState::Queued);
        r.on_event(&mut s, &granted);
        // The restored lease's product is attempting again, not ready.
        assert!(r.on_event(&mut s, &started(1_001, 10_000)).is_empty());
        assert_eq!(s.lease.as_ref().map(|l| l.token), Some(7));
        assert!(s.products["100"].available);
        // Its own release ends it, long after the hold-down, and a
        // TEST_MODE requeue at once is still the same restock.
        let released = lease_event(EventKind::Released, 1_002, 90_000).outcome(Outcome::Purchased);
        assert_eq!(r.on_event(&mut s, &released)[0].kind, AlertKind::Purchased);
        assert!(s.lease.is_none());
        assert!(r.on_event(&mut s, &queued(1_003, 90_001)).is_empty());
    }

    #[test]
    fn a_purchase_alerts_with_its_price_and_token() {
        let r = rules();
        let mut s = RulesState::default();
        r.on_event(&mut s, &queued(1, 1_000));
        let mut granted = lease_event(EventKind::Granted, 2, 2_000);
        granted.from_state = Some(ProductState::Queued);
        let started = r.on_event(&mut s, &granted);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].kind, AlertKind::CheckoutStarted);
        let released = lease_event(EventKind::Released, 3, 3_000)
            .outcome(Outcome::Purchased)
            .detail(r#"HTTP 200: {"result":"purchased","price":19.99}"#);
        let bought = r.on_event(&mut s, &released);
        assert_eq!(bought[0].kind, AlertKind::Purchased);
        assert_eq!(bought[0].price_cents, Some(1999));
        assert_eq!(bought[0].fencing_token, Some(7));
        assert!(
            bought[0].message.contains("$19.99"),
            "{}",
            bought[0].message
        );
        // Requeued at once in TEST_MODE: no second in-stock alert.
        assert!(r.on_event(&mut s, &queued(4, 3_001)).is_empty());
        assert!(s.lease.is_none());
    }

    #[test]
    fn a_grant_straight_from_ready_is_in_stock() {
        let r = rules();
        let mut s = RulesState::default();
        let mut granted = lease_event(EventKind::Granted, 1, 1_000);
        granted.from_state = Some(ProductState::Ready);
        let kinds: Vec<AlertKind> = r
            .on_event(&mut s, &granted)
            .iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(kinds, [AlertKind::InStock, AlertKind::CheckoutStarted]);
        let expired = r.on_event(&mut s, &lease_event(EventKind::Expired, 2, 5_000));
        assert_eq!(expired[0].kind, AlertKind::CheckoutFailed);
        assert!(expired[0].title.starts_with("Lease expired"));
    }

    #[test]
    fn timers_alert_once() {
        let mut r = rules();
        let mut s = RulesState::default();
        let mut granted = lease_event(EventKind::Granted, 1, 0);
        granted.from_state = Some(ProductState::Queued);
        r.on_event(&mut s, &granted);
        r.on_status(&mut s, ArbiterView::default(), 0, true);
        // on_status without a lease clears it; put it back.
        r.on_event(&mut s, &granted);
        assert!(r.on_tick(&mut s, 119_000, true, "a", "").is_empty());
        let stuck = r.on_tick(&mut s, 121_000, true, "a", "");
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].kind, AlertKind::Stuck);
        let later = r.on_tick(&mut s, 400_000, true, "a", "");
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!(later[0].kind, AlertKind::NoWatchers);
        assert!(r.on_tick(&mut s, 900_000, true, "a", "").is_empty());

        r.arbiter_down(&mut s, 1_000_000);
        r.arbiter_down(&mut s, 1_010_000);
        assert!(
            r.on_tick(&mut s, 1_020_000, false, "a", "refused")
                .is_empty()
        );
        let down = r.on_tick(&mut s, 1_031_000, false, "http://a", "refused");
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].id, "arbiter_unreachable-1000000");
        assert!(down[0].message.contains("refused"));
        assert!(r.on_tick(&mut s, 1_100_000, false, "a", "").is_empty());
        r.arbiter_up(&mut s);
        assert_eq!(s.down_since_ms, None);
    }

    #[test]
    fn what_was_in_stock_before_a_fresh_start_is_not_news_but_a_replay_is() {
        let mut r = rules();
        let view = || ArbiterView {
            available: ["100".to_owned()].into_iter().collect(),
            ..ArbiterView::default()
        };
        let mut fresh = RulesState::default();
        r.on_status(&mut fresh, view(), 0, true);
        assert!(r.on_event(&mut fresh, &queued(5, 1_000)).is_empty());
        // Resuming: the product came in while the notifier was away.
        let mut resumed = RulesState::default();
        r.on_status(&mut resumed, view(), 0, false);
        assert_eq!(r.on_event(&mut resumed, &queued(5, 1_000)).len(), 1);
    }

    #[test]
    fn missed_events_name_their_range_in_the_text_and_the_id() {
        let r = rules();
        let a = r.missed_events(41, 97, 5_000);
        assert_eq!(a.kind, AlertKind::MissedEvents);
        assert_eq!(a.id, "missed_events-41-97");
        assert_eq!(a.unix_ms, 5_000);
        assert!(
            a.message
                .starts_with("Events 41 to 97 (57 events) were not received"),
            "{}",
            a.message
        );
        assert!(a.message.contains("may be lost"), "{}", a.message);
        // The same gap met again (a restart) is the same alert.
        assert_eq!(r.missed_events(41, 97, 9_000).id, a.id);
        let one = r.missed_events(7, 7, 0);
        assert!(
            one.message.starts_with("Event 7 was not"),
            "{}",
            one.message
        );
    }

    #[test]
    fn prices_come_from_the_checkout_detail() {
        assert_eq!(price_from_detail(r#"HTTP 200: {"price": 5.5}"#), Some(550));
        assert_eq!(price_from_detail(r#"{"price_cents": 12}"#), Some(12));
        assert_eq!(price_from_detail("order 42"), None);
    }

    fn source(kind: EventKind, watcher: &str, detail: &str, seq: u64) -> Event {
        Event::new(kind)
            .watcher(&WatcherId::parse(watcher).unwrap())
            .detail(detail)
            .at(seq, 1_000 * seq)
    }

    #[test]
    fn a_block_episode_alerts_once_when_it_starts_and_once_when_it_ends() {
        let r = rules();
        let mut s = RulesState::default();
        let blocked = source(
            EventKind::SourceBlocked,
            "w1",
            "captcha: the stock source blocks this watcher; tracking URL /captcha?trackingId=t1",
            5,
        );
        let a = r.on_event(&mut s, &blocked);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::SourceBlocked);
        // Its id is the event's: the same event replayed makes the same id.
        assert_eq!(a[0].id, "e5-source_blocked");
        assert_eq!(a[0].watcher_id.as_deref(), Some("w1"));
        assert_eq!(a[0].title, "Source blocked (captcha): watcher w1");
        assert!(
            a[0].message.contains("/captcha?trackingId=t1"),
            "{}",
            a[0].message
        );
        // Announced again: no repeat.
        let again = source(EventKind::SourceBlocked, "w1", "perimeterx: ...", 9);
        assert!(r.on_event(&mut s, &again).is_empty());
        // Another watcher's block is its own episode.
        let other = source(EventKind::SourceBlocked, "w2", "forbidden: ...", 10);
        assert_eq!(r.on_event(&mut s, &other).len(), 1);
        // The end: one alert, then nothing more.
        let over = source(
            EventKind::SourceUnblocked,
            "w1",
            "captcha: over; the source answers w1 again",
            11,
        );
        let a = r.on_event(&mut s, &over);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, AlertKind::SourceUnblocked);
        assert_eq!(a[0].id, "e11-source_unblocked");
        assert!(
            a[0].message
                .starts_with("The captcha block of watcher w1 is over"),
            "{}",
            a[0].message
        );
        assert!(r.on_event(&mut s, &over).is_empty());
        // A new block after it is a new episode.
        assert_eq!(
            r.on_event(
                &mut s,
                &source(EventKind::SourceBlocked, "w1", "captcha: x", 12)
            )
            .len(),
            1
        );
    }

    #[test]
    fn after_an_arbiter_restart_a_block_announced_again_is_the_same_episode() {
        let r = rules();
        let mut s = RulesState::default();
        let b = |w: &str, seq: u64| source(EventKind::SourceBlocked, w, "captcha: x", seq);
        assert_eq!(r.on_event(&mut s, &b("w1", 1)).len(), 1);
        assert_eq!(r.on_event(&mut s, &b("w2", 2)).len(), 1);
        // The arbiter restarts (at 3 s); w1 reconnects still blocked soon
        // after: the same episode. w2's block ended while it was down.
        assert!(r.on_event(&mut s, &started(3, 3_000)).is_empty());
        assert!(r.on_event(&mut s, &b("w1", 5)).is_empty());
        let over = source(EventKind::SourceUnblocked, "w1", "captcha: over", 6);
        assert_eq!(r.on_event(&mut s, &over).len(), 1);
        // w2 blocked again long after: a new episode, alerted.
        let later = source(EventKind::SourceBlocked, "w2", "captcha: y", 1_000);
        assert_eq!(r.on_event(&mut s, &later).len(), 1);
    }

    #[test]
    fn a_block_seen_before_the_notifier_looked_is_not_alerted_but_its_end_is() {
        let r = rules();
        let mut r = r;
        let mut s = RulesState::default();
        let view = ArbiterView {
            blocked_watchers: ["w1".to_owned()].into(),
            connected_watchers: ["w1".to_owned()].into(),
            ..Default::default()
        };
        r.on_status(&mut s, view, 1_000, true);
        let over = source(EventKind::SourceUnblocked, "w1", "captcha: over", 3);
        assert_eq!(r.on_event(&mut s, &over).len(), 1);
        // An end whose start was never alerted is not alerted either.
        let stray = source(EventKind::SourceUnblocked, "w9", "captcha: over", 4);
        assert!(r.on_event(&mut s, &stray).is_empty());
        // The state file keeps it (and an old one without it still loads).
        s.blocked_watchers.insert("w2".into());
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RulesState>(&json).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<RulesState>("{}").unwrap(),
            RulesState::default()
        );
    }

    fn budget(kind: EventKind, detail: &str, seq: u64) -> Event {
        Event::new(kind).detail(detail).at(seq, 1_000 * seq)
    }

    const EXHAUSTED: &str =
        "the spending limit ($250.00, 4 purchases per 24h) holds back 2 products in stock";
    const ROOM: &str = "the spending limit ($250.00, 4 purchases per 24h) has room again";

    #[test]
    fn a_budget_episode_alerts_once_when_it_starts_and_once_when_it_ends() {
        let r = rules();
        let mut s = RulesState::default();
        let exhausted = budget(EventKind::BudgetExhausted, EXHAUSTED, 5);
        let a = r.on_event(&mut s, &exhausted);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, AlertKind::BudgetExhausted);
        // Its id is the event's: the same event replayed makes the same id.
        assert_eq!(a[0].id, "e5-budget_exhausted");
        assert_eq!(a[0].title, "Budget exhausted: $250.00, 4 purchases per 24h");
        assert!(
            a[0].message.starts_with(
                "The spending limit ($250.00, 4 purchases per 24h) holds back 2 products in stock: they are not bought"
            ),
            "{}",
            a[0].message
        );
        assert_eq!(a[0].tcin, None);
        assert_eq!(a[0].watcher_id, None);
        assert!(s.budget_exhausted);
        // Products going over budget in it are not alerted one by one.
        let over = Event::new(EventKind::OverBudget)
            .product(&t("100"), ProductState::Queued, ProductState::OverBudget)
            .detail("budget: 4 of 4 purchases made in the last 1day")
            .at(6, 6_000);
        assert!(r.on_event(&mut s, &over).is_empty());
        // The end: one alert, then nothing more.
        let room = budget(EventKind::BudgetAvailable, ROOM, 11);
        let a = r.on_event(&mut s, &room);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].kind, AlertKind::BudgetAvailable);
        assert_eq!(a[0].id, "e11-budget_available");
        assert_eq!(a[0].title, "Budget available: $250.00, 4 purchases per 24h");
        assert_eq!(
            a[0].message,
            "Room came back: the spending limit ($250.00, 4 purchases per 24h) has room again; products in stock are bought again."
        );
        assert!(r.on_event(&mut s, &room).is_empty());
        // A new episode after it is alerted again.
        let again = r.on_event(&mut s, &budget(EventKind::BudgetExhausted, EXHAUSTED, 12));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, "e12-budget_exhausted");
        // A limit lifted by an operator ends it without naming one.
        let lifted = budget(
            EventKind::BudgetAvailable,
            "no spending limit is in force",
            13,
        );
        let a = r.on_event(&mut s, &lifted);
        assert_eq!(a[0].title, "Budget available");
        assert!(
            a[0].message.contains("no spending limit is in force"),
            "{}",
            a[0].message
        );
        // The changes themselves are not alerted.
        let changed = budget(EventKind::BudgetChanged, "limits lifted: sale over", 14);
        assert!(r.on_event(&mut s, &changed).is_empty());
    }

    #[test]
    fn after_an_arbiter_restart_a_budget_episode_announced_again_is_the_same_one() {
        let r = rules();
        let mut s = RulesState::default();
        let exhausted = |seq| budget(EventKind::BudgetExhausted, EXHAUSTED, seq);
        assert_eq!(r.on_event(&mut s, &exhausted(1)).len(), 1);
        // The arbiter restarts while it is open and announces it again.
        assert!(r.on_event(&mut s, &started(1_001, 1_001_000)).is_empty());
        assert!(r.on_event(&mut s, &exhausted(1_002)).is_empty());
        assert!(s.budget_exhausted);
        // Its end is alerted once.
        let room = budget(EventKind::BudgetAvailable, ROOM, 1_003);
        assert_eq!(r.on_event(&mut s, &room).len(), 1);
        // A restart with no episode open leaves the next one news.
        assert!(r.on_event(&mut s, &started(2_001, 2_001_000)).is_empty());
        assert_eq!(r.on_event(&mut s, &exhausted(2_002)).len(), 1);
        // Without a restart the arbiter never sends two: a second one
        // means the end was missed (a gap), so it is a new episode.
        assert_eq!(r.on_event(&mut s, &exhausted(2_100)).len(), 1);
    }

    #[test]
    fn a_budget_episode_seen_before_the_notifier_looked_is_not_alerted_but_its_end_is() {
        let mut r = rules();
        let mut s = RulesState::default();
        let view = ArbiterView {
            budget_exhausted: true,
            ..Default::default()
        };
        r.on_status(&mut s, view, 1_000, true);
        assert!(s.budget_exhausted);
        let room = budget(EventKind::BudgetAvailable, ROOM, 3);
        assert_eq!(r.on_event(&mut s, &room).len(), 1);
        // An end whose start was never alerted is not alerted either.
        assert!(r.on_event(&mut s, &room).is_empty());
        // Resuming (not fresh): the replayed events say what happened.
        let mut resumed = RulesState::default();
        let view = ArbiterView {
            budget_exhausted: true,
            ..Default::default()
        };
        r.on_status(&mut resumed, view, 1_000, false);
        assert!(!resumed.budget_exhausted);
        // The state file keeps it (and an old one without it still loads).
        s.budget_exhausted = true;
        s.budget_exhausted_at_restart = true;
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RulesState>(&json).unwrap(), s);
    }
}
