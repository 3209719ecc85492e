//! The checkout ledger: every checkout attempt, the fencing check, and the
//! overlap detector that the project's tests treat as ground truth.
//!
//! A checkout is **accepted** when its fencing token is above every token
//! accepted so far (a token is used once: an equal one is a holder, or an
//! arbiter that lost its state, reusing it) and the product is known and in
//! stock. An accepted checkout is *in flight* from
//! [`Ledger::begin`] to [`Ledger::finish`]. Two accepted checkouts overlap
//! when one begins while the other is in flight; every such pair is one
//! violation.
//!
//! Overlaps are found from the in-flight set, not from timestamps: the
//! ledger lives behind one mutex, so "B began while A was in flight" is
//! decided exactly even when both start in the same millisecond. As a
//! second check, each finishing checkout is compared by its timestamps with
//! every finished accepted one (strict overlap, so back-to-back checkouts
//! that share a millisecond boundary are not flagged); a pair is counted
//! once however it is found.
//!
//! Refused attempts (stale token, unknown product, out of stock) are
//! recorded too, with `started_at_ms == finished_at_ms`, and never overlap.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use restock_domain::Price;

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// As sent (unknown products are recorded too).
    pub tcin: String,
    pub fencing_token: u64,
    pub lease_id: String,
    pub watcher_id: String,
    pub test_mode: bool,
}

/// How a checkout attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutResult {
    /// Bought (voided right after in test mode).
    Purchased,
    /// Refused: the fencing token is not above the highest accepted one.
    StaleToken,
    /// Refused: the product is out of stock.
    OutOfStock,
    /// Refused: the simulator does not know the product.
    UnknownProduct,
    /// Accepted, then failed because failure was injected
    /// (`PUT /admin/checkout {"fail": true}`).
    Failed,
    /// Accepted, then the client went away (closed the connection) before
    /// the checkout finished; it stops there.
    Aborted,
}

impl CheckoutResult {
    /// Whether the attempt got past the checks and was in flight.
    pub fn accepted(self) -> bool {
        matches!(self, Self::Purchased | Self::Failed | Self::Aborted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchased => "purchased",
            Self::StaleToken => "stale_token",
            Self::OutOfStock => "out_of_stock",
            Self::UnknownProduct => "unknown_product",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

/// The product as the store saw it when the checkout began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StockCheck {
    InStock(Price),
    OutOfStock(Price),
    UnknownProduct,
}

/// One recorded checkout attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    /// Sequence number of the attempt, from 1.
    pub id: u64,
    pub tcin: String,
    pub fencing_token: u64,
    pub lease_id: String,
    pub watcher_id: String,
    pub test_mode: bool,
    /// Unix ms.
    pub started_at_ms: u64,
    /// Unix ms.
    pub finished_at_ms: u64,
    pub result: CheckoutResult,
    /// Whether it got past the checks (purchased, failed or aborted).
    pub accepted: bool,
    /// A test-mode purchase, voided right after (the cart is emptied).
    pub voided: bool,
    /// The price when the checkout began, in dollars; `null` for unknown
    /// products.
    pub price: Option<Price>,
    /// Why it ended that way, for people.
    pub message: String,
}

/// An accepted checkout that has not finished.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InFlight {
    pub id: u64,
    pub tcin: String,
    pub fencing_token: u64,
    pub lease_id: String,
    pub watcher_id: String,
    pub test_mode: bool,
    /// Unix ms.
    pub started_at_ms: u64,
    pub price: Price,
}

/// Which checkout, in a violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckoutRef {
    pub id: u64,
    pub tcin: String,
    pub fencing_token: u64,
    pub lease_id: String,
    pub watcher_id: String,
    pub started_at_ms: u64,
}

/// How an overlap was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    /// The second began while the first was in flight.
    InFlight,
    /// Their recorded time intervals overlap.
    Timestamps,
}

/// Two accepted checkouts that were in progress at the same time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The one that began first.
    pub first: CheckoutRef,
    pub second: CheckoutRef,
    pub detected_by: Detection,
    /// Unix ms.
    pub detected_at_ms: u64,
    pub message: String,
}

/// What [`Ledger::begin`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// In flight now; finish it with [`Ledger::finish`].
    Accepted(InFlight),
    /// Refused and recorded.
    Refused(Order),
}

/// Everything recorded, for `GET /admin/orders`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub orders: Vec<Order>,
    pub in_flight: Vec<InFlight>,
    pub violations: usize,
    pub violation_details: Vec<Violation>,
    pub highest_token: Option<u64>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    next_id: u64,
    highest_token: Option<u64>,
    in_flight: BTreeMap<u64, InFlight>,
    orders: Vec<Order>,
    violations: Vec<Violation>,
    /// (lower id, higher id) of every pair already counted.
    counted: HashSet<(u64, u64)>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest fencing token accepted so far.
    pub fn highest_token(&self) -> Option<u64> {
        self.highest_token
    }

    /// Checks and records the start of a checkout at `now_ms` (unix ms).
    /// Checks in order: fencing token, known product, in stock.
    pub fn begin(&mut self, attempt: Attempt, stock: StockCheck, now_ms: u64) -> Begin {
        self.next_id += 1;
        let id = self.next_id;
        let refusal = match (self.highest_token, stock) {
            (Some(h), _) if attempt.fencing_token <= h => Some((
                CheckoutResult::StaleToken,
                format!(
                    "fencing token {} is not above the highest accepted token {h} (each token is used once)",
                    attempt.fencing_token
                ),
                stock_price(stock),
            )),
            (_, StockCheck::UnknownProduct) => Some((
                CheckoutResult::UnknownProduct,
                format!("no product with tcin {}", attempt.tcin),
                None,
            )),
            (_, StockCheck::OutOfStock(p)) => Some((
                CheckoutResult::OutOfStock,
                format!("tcin {} is out of stock", attempt.tcin),
                Some(p),
            )),
            (_, StockCheck::InStock(_)) => None,
        };
        if let Some((result, message, price)) = refusal {
            let order = Order {
                id,
                tcin: attempt.tcin,
                fencing_token: attempt.fencing_token,
                lease_id: attempt.lease_id,
                watcher_id: attempt.watcher_id,
                test_mode: attempt.test_mode,
                started_at_ms: now_ms,
                finished_at_ms: now_ms,
                result,
                accepted: false,
                voided: false,
                price,
                message,
            };
            self.orders.push(order.clone());
            return Begin::Refused(order);
        }
        let StockCheck::InStock(price) = stock else {
            unreachable!("every other case is a refusal")
        };
        self.highest_token = Some(attempt.fencing_token.max(self.highest_token.unwrap_or(0)));
        let started = InFlight {
            id,
            tcin: attempt.tcin,
            fencing_token: attempt.fencing_token,
            lease_id: attempt.lease_id,
            watcher_id: attempt.watcher_id,
            test_mode: attempt.test_mode,
            started_at_ms: now_ms,
            price,
        };
        let overlapping: Vec<CheckoutRef> = self.in_flight.values().map(in_flight_ref).collect();
        for first in overlapping {
            self.count(first, in_flight_ref(&started), Detection::InFlight, now_ms);
        }
        self.in_flight.insert(id, started.clone());
        Begin::Accepted(started)
    }

    /// Records the end of an accepted checkout at `now_ms` (unix ms).
    /// `result` must be an accepted result; `None` if `id` is not in flight.
    pub fn finish(
        &mut self,
        id: u64,
        result: CheckoutResult,
        message: String,
        now_ms: u64,
    ) -> Option<Order> {
        debug_assert!(result.accepted(), "{result:?} is not an accepted result");
        let f = self.in_flight.remove(&id)?;
        let order = Order {
            id,
            voided: result == CheckoutResult::Purchased && f.test_mode,
            tcin: f.tcin,
            fencing_token: f.fencing_token,
            lease_id: f.lease_id,
            watcher_id: f.watcher_id,
            test_mode: f.test_mode,
            started_at_ms: f.started_at_ms,
            finished_at_ms: now_ms.max(f.started_at_ms),
            result,
            accepted: true,
            price: Some(f.price),
            message,
        };
        let overlapping: Vec<(CheckoutRef, CheckoutRef)> = self
            .orders
            .iter()
            .filter(|o| {
                o.accepted
                    && o.started_at_ms < order.finished_at_ms
                    && order.started_at_ms < o.finished_at_ms
            })
            .map(|o| {
                let (a, b) = (order_ref(o), order_ref(&order));
                if (a.started_at_ms, a.id) <= (b.started_at_ms, b.id) {
                    (a, b)
                } else {
                    (b, a)
                }
            })
            .collect();
        for (first, second) in overlapping {
            self.count(first, second, Detection::Timestamps, now_ms);
        }
        self.orders.push(order.clone());
        Some(order)
    }

    /// Number of overlapping pairs found.
    pub fn violations(&self) -> usize {
        self.violations.len()
    }

    /// A copy of everything recorded.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            orders: self.orders.clone(),
            in_flight: self.in_flight.values().cloned().collect(),
            violations: self.violations.len(),
            violation_details: self.violations.clone(),
            highest_token: self.highest_token,
        }
    }

    /// Forgets finished orders and violations (for tests). Checkouts in
    /// flight stay in flight and are recorded when they finish; the highest
    /// accepted token is kept (fencing never goes backwards), and a pair
    /// counted before is not counted again.
    pub fn clear(&mut self) {
        self.orders.clear();
        self.violations.clear();
    }

    fn count(&mut self, first: CheckoutRef, second: CheckoutRef, how: Detection, now_ms: u64) {
        let key = (first.id.min(second.id), first.id.max(second.id));
        if !self.counted.insert(key) {
            return;
        }
        let message = format!(
            "checkout #{} (tcin {}, token {}, watcher {:?}) overlapped checkout #{} (tcin {}, token {}, watcher {:?})",
            second.id,
            second.tcin,
            second.fencing_token,
            second.watcher_id,
            first.id,
            first.tcin,
            first.fencing_token,
            first.watcher_id
        );
        tracing::error!(
            first_id = first.id,
            second_id = second.id,
            first_token = first.fencing_token,
            second_token = second.fencing_token,
            first_watcher = %first.watcher_id,
            second_watcher = %second.watcher_id,
            detected_by = ?how,
            "VIOLATION: two checkouts in progress at once"
        );
        self.violations.push(Violation {
            first,
            second,
            detected_by: how,
            detected_at_ms: now_ms,
            message,
        });
    }
}

fn stock_price(s: StockCheck) -> Option<Price> {
    match s {
        StockCheck::InStock(p) | StockCheck::OutOfStock(p) => Some(p),
        StockCheck::UnknownProduct => None,
    }
}

fn in_flight_ref(f: &InFlight) -> CheckoutRef {
    CheckoutRef {
        id: f.id,
        tcin: f.tcin.clone(),
        fencing_token: f.fencing_token,
        lease_id: f.lease_id.clone(),
        watcher_id: f.watcher_id.clone(),
        started_at_ms: f.started_at_ms,
    }
}

fn order_ref(o: &Order) -> CheckoutRef {
    CheckoutRef {
        id: o.id,
        tcin: o.tcin.clone(),
        fencing_token: o.fencing_token,
        lease_id: o.lease_id.clone(),
        watcher_id: o.watcher_id.clone(),
        started_at_ms: o.started_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICE: Price = Price::from_cents(1999);
    const IN: StockCheck = StockCheck::InStock(PRICE);

    fn attempt(token: u64, watcher: &str) -> Attempt {
        Attempt {
            tcin: "1".into(),
            fencing_token: token,
            lease_id: format!("lease-{token}"),
            watcher_id: watcher.into(),
            test_mode: false,
        }
    }

    fn accept(l: &mut Ledger, token: u64, watcher: &str, now: u64) -> u64 {
        match l.begin(attempt(token, watcher), IN, now) {
            Begin::Accepted(f) => f.id,
            Begin::Refused(o) => panic!("refused: {o:?}"),
        }
    }

    fn done(l: &mut Ledger, id: u64, now: u64) -> Order {
        l.finish(id, CheckoutResult::Purchased, "ok".into(), now)
            .expect("in flight")
    }

    #[test]
    fn sequential_checkouts_are_not_violations_even_back_to_back() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 1, "a", 100);
        done(&mut l, a, 400);
        // Starts in the very millisecond the first one finished.
        let b = accept(&mut l, 2, "b", 400);
        done(&mut l, b, 700);
        let c = accept(&mut l, 3, "b", 700);
        done(&mut l, c, 700);
        assert_eq!(l.violations(), 0);
        assert_eq!(l.snapshot().orders.len(), 3);
    }

    #[test]
    fn checkouts_starting_in_the_same_millisecond_are_caught() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 5, "a", 1000);
        let b = accept(&mut l, 6, "b", 1000);
        assert_eq!(l.violations(), 1, "found as soon as the second began");
        // Finishing both in the same millisecond does not count it twice.
        done(&mut l, a, 1000);
        done(&mut l, b, 1000);
        let s = l.snapshot();
        assert_eq!(s.violations, 1);
        let v = &s.violation_details[0];
        assert_eq!((v.first.id, v.second.id), (a, b));
        assert_eq!(v.detected_by, Detection::InFlight);
        assert!(v.message.contains("watcher \"b\""), "{}", v.message);
    }

    #[test]
    fn every_overlapping_pair_counts_once() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 1, "a", 0);
        let b = accept(&mut l, 2, "b", 10);
        let c = accept(&mut l, 3, "c", 20);
        for id in [b, a, c] {
            done(&mut l, id, 50);
        }
        assert_eq!(l.violations(), 3);
        // A later, separate checkout adds nothing.
        let d = accept(&mut l, 4, "c", 60);
        done(&mut l, d, 90);
        assert_eq!(l.violations(), 3);
    }

    #[test]
    fn the_timestamp_check_catches_what_the_in_flight_set_did_not_see() {
        // Possible only if records were made out of order; the ledger still
        // compares intervals on finish.
        let mut l = Ledger::new();
        let a = accept(&mut l, 1, "a", 100);
        done(&mut l, a, 500);
        let b = accept(&mut l, 2, "b", 600);
        l.in_flight.get_mut(&b).unwrap().started_at_ms = 300;
        done(&mut l, b, 700);
        let s = l.snapshot();
        assert_eq!(s.violations, 1);
        assert_eq!(s.violation_details[0].detected_by, Detection::Timestamps);
        assert_eq!(s.violation_details[0].first.id, a);
    }

    #[test]
    fn stale_and_reused_tokens_are_refused() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 7, "a", 0);
        done(&mut l, a, 10);
        match l.begin(attempt(6, "old"), IN, 20) {
            Begin::Refused(o) => {
                assert_eq!(o.result, CheckoutResult::StaleToken);
                assert!(!o.accepted);
                assert_eq!((o.started_at_ms, o.finished_at_ms), (20, 20));
                assert!(
                    o.message.contains("highest accepted token 7"),
                    "{}",
                    o.message
                );
            }
            other => panic!("{other:?}"),
        }
        // The same token again (reused by a holder, or by an arbiter that
        // lost its state and counts from 1 again): refused as well.
        match l.begin(attempt(7, "again"), IN, 30) {
            Begin::Refused(o) => assert_eq!(o.result, CheckoutResult::StaleToken),
            other => panic!("a reused token was accepted: {other:?}"),
        }
        let next = accept(&mut l, 8, "a", 40);
        done(&mut l, next, 50);
        assert_eq!(l.highest_token(), Some(8));
        assert_eq!(l.violations(), 0);
        assert_eq!(
            l.snapshot().orders.len(),
            4,
            "refused attempts are recorded"
        );
    }

    #[test]
    fn refused_attempts_do_not_raise_the_token_or_overlap() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 3, "a", 0);
        let out = l.begin(attempt(9, "b"), StockCheck::OutOfStock(PRICE), 5);
        assert!(matches!(out, Begin::Refused(ref o) if o.result == CheckoutResult::OutOfStock));
        let unknown = l.begin(attempt(9, "b"), StockCheck::UnknownProduct, 6);
        assert!(
            matches!(unknown, Begin::Refused(ref o) if o.result == CheckoutResult::UnknownProduct && o.price.is_none())
        );
        done(&mut l, a, 10);
        assert_eq!(l.highest_token(), Some(3));
        assert_eq!(l.violations(), 0);
    }

    #[test]
    fn aborted_and_failed_checkouts_still_count_for_overlaps() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 1, "a", 0);
        let b = accept(&mut l, 2, "b", 5);
        l.finish(a, CheckoutResult::Aborted, "gone".into(), 6)
            .unwrap();
        l.finish(b, CheckoutResult::Failed, "boom".into(), 8)
            .unwrap();
        assert_eq!(l.violations(), 1);
        assert!(
            l.finish(a, CheckoutResult::Purchased, "again".into(), 9)
                .is_none()
        );
    }

    #[test]
    fn test_mode_purchases_are_voided() {
        let mut l = Ledger::new();
        let mut at = attempt(1, "a");
        at.test_mode = true;
        let Begin::Accepted(f) = l.begin(at, IN, 0) else {
            panic!()
        };
        let o = done(&mut l, f.id, 5);
        assert!(o.voided && o.test_mode);
        assert_eq!(o.result, CheckoutResult::Purchased);
    }

    #[test]
    fn clearing_keeps_in_flight_checkouts_and_the_highest_token() {
        let mut l = Ledger::new();
        let a = accept(&mut l, 4, "a", 0);
        let b = accept(&mut l, 5, "b", 1);
        assert_eq!(l.violations(), 1);
        l.clear();
        assert_eq!(l.violations(), 0);
        assert_eq!(l.snapshot().in_flight.len(), 2);
        done(&mut l, a, 2);
        done(&mut l, b, 3);
        assert_eq!(l.snapshot().orders.len(), 2);
        assert_eq!(l.violations(), 0, "the pair was counted before the clear");
        assert_eq!(l.highest_token(), Some(5));
    }
}
