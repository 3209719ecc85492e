//! The spending limit's record: what was spent and when ([`Spend`]), what
//! the lease in flight holds back ([`Reservation`]), and an operator's
//! limits when they replace the product config's. Plain data and sums;
//! the rules of when a product is held back are in the slot (`mod.rs`),
//! where every grant is decided.
//!
//! Every purchase is recorded, with a budget or without, so a budget set
//! later counts what was already bought inside its window.

use std::{collections::VecDeque, time::Duration};

use restock_domain::{BudgetLimits, BudgetSource, LeaseId, Price, ProductId};

use crate::limits::BUDGET_SPENDS;

use super::ms;

/// One purchase (or several, merged when the record is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// When it was recorded (the release, or the lease's end).
    pub at_unix_ms: u64,
    pub cents: u64,
    pub purchases: u32,
}

/// What the lease in flight holds back: the product's newest reported
/// price when it was granted (`None`: no price was known, which only a
/// budget without `max_spend` lets through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub price: Option<Price>,
}

/// Limits an operator set with `SetBudget`. They hold while the product
/// config's budget is the one they replaced (`config_was`): a config that
/// changes its budget afterwards is the newer word and wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorLimits {
    /// `None`: the operator lifted every limit.
    pub limits: Option<BudgetLimits>,
    pub config_was: Option<BudgetLimits>,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// The whole record; saved with the rest of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    /// Oldest first; at most [`BUDGET_SPENDS`] (the oldest are merged).
    spends: VecDeque<Spend>,
    reservation: Option<Reservation>,
    operator: Option<OperatorLimits>,
    /// The limit is holding (or held, when last asked) products back: the
    /// episode a `BUDGET_EXHAUSTED` opened and a `BUDGET_AVAILABLE` ends.
    exhausted: bool,
    /// Moves on with every change (not saved): a journal record carries
    /// the record only when it moved since the last write.
    version: u64,
}

/// How close in time two purchases are merged into one entry of the
/// record, under `window` (the window in force, if any): a 64th of the
/// window (a purchase then counts at most that much longer than it
/// should), and with no window an hour (only the sums matter then, and a
/// window set later of an hour or more counts nearly exactly).
pub fn merge_span(window: Option<Duration>) -> Duration {
    match window {
        Some(w) => w / 64,
        None => Duration::from_secs(3_600),
    }
}

/// Sums inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub spent: u64,
    pub purchases: u32,
}

impl Budget {
    /// A record read back after a restart.
    pub fn restored(
        spends: Vec<Spend>,
        reservation: Option<Reservation>,
        operator: Option<OperatorLimits>,
        exhausted: bool,
    ) -> Self {
        let mut b = Self {
            spends: VecDeque::new(),
            reservation,
            operator,
            exhausted,
            version: 0,
        };
        for s in spends {
            b.push(s);
        }
        b
    }

    pub fn spends(&self) -> impl Iterator<Item = &Spend> {
        self.spends.iter()
    }

    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    pub fn operator(&self) -> Option<&OperatorLimits> {
        self.operator.as_ref()
    }

    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// See the field: equal versions mean an equal record.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub(super) fn set_exhausted(&mut self, on: bool) {
        self.exhausted = on;
        self.version += 1;
    }

    /// The limits in force given the product config's, and where they
    /// come from.
    pub fn limits(&self, config: Option<&BudgetLimits>) -> (Option<BudgetLimits>, BudgetSource) {
        match &self.operator {
            Some(op) if op.config_was.as_ref() == config => (
                op.limits,
                BudgetSource::Operator {
                    reason: op.reason.clone(),
                    at_unix_ms: op.at_unix_ms,
                },
            ),
            _ => (config.copied(), BudgetSource::Config),
        }
    }

    /// Drops an operator's limits that a changed product config replaced;
    /// returns whether it did.
    pub(super) fn forget_replaced_operator(&mut self, config: Option<&BudgetLimits>) -> bool {
        if self
            .operator
            .as_ref()
            .is_some_and(|op| op.config_was.as_ref() != config)
        {
            self.operator = None;
            self.version += 1;
            return true;
        }
        false
    }

    pub(super) fn set_operator(&mut self, op: Option<OperatorLimits>) {
        self.operator = op;
        self.version += 1;
    }

    /// Forgets every recorded spend (the reservation in flight stays: its
    /// checkout may still buy).
    pub(super) fn reset_spends(&mut self) {
        self.spends.clear();
        self.version += 1;
    }

    pub(super) fn reserve(&mut self, r: Reservation) {
        self.reservation = Some(r);
        self.version += 1;
    }

    /// Takes the reservation of `lease_id`, if it holds one.
    pub(super) fn take_reservation(&mut self, lease_id: &LeaseId) -> Option<Reservation> {
        if self
            .reservation
            .as_ref()
            .is_some_and(|r| &r.lease_id == lease_id)
        {
            self.version += 1;
            return self.reservation.take();
        }
        None
    }

    /// Records a purchase. One within `merge_within` of the newest entry
    /// is added to it, at the later time (see [`merge_span`]); a full
    /// record merges its two oldest entries likewise. Either way spend
    /// rolls off later than it would, never earlier, so the limit is never
    /// loosened, and the record (written with every grant and release)
    /// stays a few entries long however many purchases a TEST_MODE night
    /// makes.
    pub(super) fn record(&mut self, spend: Spend, merge_within: Duration) {
        match self.spends.back_mut() {
            Some(last)
                if spend.at_unix_ms >= last.at_unix_ms
                    && spend.at_unix_ms - last.at_unix_ms <= ms(merge_within) =>
            {
                last.at_unix_ms = spend.at_unix_ms;
                last.cents = last.cents.saturating_add(spend.cents);
                last.purchases = last.purchases.saturating_add(spend.purchases);
            }
            _ => self.push(spend),
        }
        self.version += 1;
    }

    fn push(&mut self, spend: Spend) {
        self.spends.push_back(spend);
        while self.spends.len() > BUDGET_SPENDS {
            let a = self.spends.pop_front().expect("over the bound");
            let b = self.spends.front_mut().expect("over the bound");
            b.cents = b.cents.saturating_add(a.cents);
            b.purchases = b.purchases.saturating_add(a.purchases);
            b.at_unix_ms = b.at_unix_ms.max(a.at_unix_ms);
        }
    }

    /// Drops spend that rolled out of `window`.
    pub(super) fn roll_off(&mut self, window: Option<Duration>, now_unix_ms: u64) -> bool {
        let Some(w) = window else {
            return false;
        };
        let before = self.spends.len();
        while self
            .spends
            .front()
            .is_some_and(|s| s.at_unix_ms.saturating_add(ms(w)) <= now_unix_ms)
        {
            self.spends.pop_front();
        }
        let dropped = self.spends.len() != before;
        if dropped {
            self.version += 1;
        }
        dropped
    }

    /// Spend and purchases inside `window` (all recorded, without one).
    pub fn totals(&self, window: Option<Duration>, now_unix_ms: u64) -> Totals {
        let mut t = Totals::default();
        for s in &self.spends {
            if window.is_none_or(|w| s.at_unix_ms.saturating_add(ms(w)) > now_unix_ms) {
                t.spent = t.spent.saturating_add(s.cents);
                t.purchases = t.purchases.saturating_add(s.purchases);
            }
        }
        t
    }

    /// When the oldest spend inside the window rolls off (unix ms).
    pub fn next_roll_off(&self, window: Option<Duration>, now_unix_ms: u64) -> Option<u64> {
        let w = ms(window?);
        self.spends
            .iter()
            .map(|s| s.at_unix_ms.saturating_add(w))
            .find(|&t| t > now_unix_ms)
    }

    /// What the reservation holds back, in cents (an unknown price counts
    /// as nothing: only a budget without `max_spend` grants one).
    pub fn reserved_cents(&self) -> u64 {
        self.reservation
            .as_ref()
            .and_then(|r| r.price)
            .map_or(0, Price::cents)
    }

    /// Why granting a product at `price` would break `limits`, counting
    /// the spend in the window and the reservation in flight; `None` when
    /// it fits.
    pub fn why_not(
        &self,
        limits: &BudgetLimits,
        price: Option<Price>,
        now_unix_ms: u64,
    ) -> Option<String> {
        let t = self.totals(limits.window, now_unix_ms);
        let in_flight = u32::from(self.reservation.is_some());
        let per = match limits.window {
            Some(w) => format!(" in the last {}", restock_domain::budget::window_text(w)),
            None => String::new(),
        };
        if let Some(max) = limits.max_purchases
            && t.purchases.saturating_add(in_flight) >= max
        {
            let flight = if in_flight > 0 {
                " and one checkout in flight"
            } else {
                ""
            };
            return Some(format!(
                "budget: {} of {max} purchases made{per}{flight}",
                t.purchases
            ));
        }
        if let Some(max) = limits.max_spend {
            let Some(price) = price else {
                return Some(
                    "budget: no price known for it, and the budget has a max_spend".to_owned(),
                );
            };
            let committed = t.spent.saturating_add(self.reserved_cents());
            if committed.saturating_add(price.cents()) > max.cents() {
                let left = Price::from_cents(max.cents().saturating_sub(committed));
                return Some(format!(
                    "budget: its price {price} is more than the {left} left of {max}{per} ({} spent, {} reserved)",
                    Price::from_cents(t.spent),
                    Price::from_cents(self.reserved_cents()),
                ));
            }
        }
        None
    }

    /// The room left under `limits`: (cents, purchases), `u64::MAX` /
    /// `u32::MAX` where there is no such limit. Compared between passes to
    /// tell when room came back.
    pub fn room(&self, limits: Option<&BudgetLimits>, now_unix_ms: u64) -> (u64, u32) {
        let Some(l) = limits else {
            return (u64::MAX, u32::MAX);
        };
        let t = self.totals(l.window, now_unix_ms);
        let cents = l.max_spend.map_or(u64::MAX, |m| {
            m.cents()
                .saturating_sub(t.spent.saturating_add(self.reserved_cents()))
        });
        let purchases = l.max_purchases.map_or(u32::MAX, |m| {
            m.saturating_sub(
                t.purchases
                    .saturating_add(u32::from(self.reservation.is_some())),
            )
        });
        (cents, purchases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(spend: Option<u64>, purchases: Option<u32>, window_s: Option<u64>) -> BudgetLimits {
        BudgetLimits {
            max_spend: spend.map(Price::from_cents),
            max_purchases: purchases,
            window: window_s.map(Duration::from_secs),
        }
    }

    fn spend(at: u64, cents: u64) -> Spend {
        Spend {
            at_unix_ms: at,
            cents,
            purchases: 1,
        }
    }

    #[test]
    fn spend_counts_inside_the_window_and_rolls_off() {
        let mut b = Budget::default();
        b.record(spend(1_000, 3_000), Duration::ZERO);
        b.record(spend(5_000, 2_000), Duration::ZERO);
        let w = Some(Duration::from_secs(10));
        assert_eq!(b.totals(w, 10_999).spent, 5_000);
        assert_eq!(b.totals(w, 11_000).spent, 2_000);
        assert_eq!(b.totals(None, 99_000).spent, 5_000);
        assert_eq!(b.next_roll_off(w, 2_000), Some(11_000));
        assert!(b.roll_off(w, 11_000));
        assert_eq!(b.spends().count(), 1);
        assert!(!b.roll_off(None, 1_000_000));
    }

    #[test]
    fn a_product_fits_only_with_room_for_its_price_and_the_reservation() {
        let mut b = Budget::default();
        let l = limits(Some(5_000), None, None);
        assert_eq!(b.why_not(&l, Some(Price::from_cents(3_000)), 0), None);
        b.reserve(Reservation {
            lease_id: LeaseId::parse("l1").unwrap(),
            tcin: ProductId::parse("1").unwrap(),
            price: Some(Price::from_cents(3_000)),
        });
        let why = b.why_not(&l, Some(Price::from_cents(2_500)), 0).unwrap();
        assert!(why.contains("$20.00 left of $50.00"), "{why}");
        assert_eq!(b.why_not(&l, Some(Price::from_cents(2_000)), 0), None);
        let unknown = b.why_not(&l, None, 0).unwrap();
        assert!(unknown.contains("no price known"), "{unknown}");
        assert_eq!(b.room(Some(&l), 0), (2_000, u32::MAX));
    }

    #[test]
    fn purchases_count_the_one_in_flight() {
        let mut b = Budget::default();
        let l = limits(None, Some(2), Some(60));
        b.record(spend(0, 0), Duration::ZERO);
        assert_eq!(b.why_not(&l, None, 1_000), None);
        b.reserve(Reservation {
            lease_id: LeaseId::parse("l1").unwrap(),
            tcin: ProductId::parse("1").unwrap(),
            price: None,
        });
        let why = b.why_not(&l, None, 1_000).unwrap();
        assert!(
            why.contains("1 of 2 purchases") && why.contains("in flight"),
            "{why}"
        );
        assert!(
            b.take_reservation(&LeaseId::parse("other").unwrap())
                .is_none()
        );
        assert!(b.take_reservation(&LeaseId::parse("l1").unwrap()).is_some());
        // The one purchase rolls off after the minute.
        assert_eq!(b.why_not(&l, None, 60_000), None);
    }

    #[test]
    fn a_full_record_merges_its_oldest_and_never_loosens_the_limit() {
        let mut b = Budget::default();
        for i in 0..(BUDGET_SPENDS as u64 + 10) {
            b.record(spend(i, 100), Duration::ZERO);
        }
        assert_eq!(b.spends().count(), BUDGET_SPENDS);
        let t = b.totals(None, 0);
        assert_eq!(t.spent, 100 * (BUDGET_SPENDS as u64 + 10));
        assert_eq!(t.purchases, BUDGET_SPENDS as u32 + 10);
        // The merged spend rolls off at the later of the merged times.
        assert_eq!(b.spends().next().unwrap().at_unix_ms, 10);
    }

    #[test]
    fn purchases_close_together_share_an_entry_at_the_later_time() {
        let mut b = Budget::default();
        let w = Duration::from_secs(64);
        let span = merge_span(Some(w));
        assert_eq!(span, Duration::from_secs(1));
        b.record(spend(10_000, 100), span);
        b.record(spend(10_900, 200), span);
        b.record(spend(12_000, 400), span);
        let entries: Vec<(u64, u64, u32)> = b
            .spends()
            .map(|s| (s.at_unix_ms, s.cents, s.purchases))
            .collect();
        assert_eq!(entries, [(10_900, 300, 2), (12_000, 400, 1)]);
        // The merged pair rolls off with the later one, never earlier.
        assert_eq!(b.totals(Some(w), 10_000 + 64_000).purchases, 3);
        assert_eq!(b.totals(Some(w), 10_900 + 64_000).purchases, 1);
        assert_eq!(merge_span(None), Duration::from_secs(3_600));
    }

    #[test]
    fn operator_limits_hold_until_the_config_budget_changes() {
        let config = limits(Some(5_000), None, None);
        let mut b = Budget::default();
        b.set_operator(Some(OperatorLimits {
            limits: Some(limits(Some(9_000), None, None)),
            config_was: Some(config),
            reason: "raise for the drop".into(),
            at_unix_ms: 1,
        }));
        let (l, source) = b.limits(Some(&config));
        assert_eq!(l.unwrap().max_spend, Some(Price::from_cents(9_000)));
        assert!(matches!(source, BudgetSource::Operator { .. }));
        let changed = limits(Some(7_000), None, None);
        assert_eq!(b.limits(Some(&changed)).1, BudgetSource::Config);
        assert!(!b.forget_replaced_operator(Some(&config)));
        assert!(b.forget_replaced_operator(Some(&changed)));
        assert!(b.operator().is_none());
    }
}
