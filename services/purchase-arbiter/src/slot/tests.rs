//! Unit tests of the slot's rules, driven with paused tokio time so every
//! deadline (lease TTL, stock staleness, cool-down) is hit to the millisecond.

use std::time::Duration;

use restock_domain::{ProductStatus, WatcherStatus};
use tokio::time::advance;

use super::*;
use crate::store::{
    format::Snapshot,
    saved::{restore, snapshot},
};

const LEASE_TTL: Duration = Duration::from_secs(30);
const STOCK_TTL: Duration = Duration::from_secs(45);
const COOLDOWN: Duration = Duration::from_secs(60);
const MS: Duration = Duration::from_millis(1);
/// Wall-clock start of every fixture, so wall times can be asserted exactly.
const T0: u64 = 1_700_000_000_000;

fn timing(test_mode: bool) -> Timing {
    Timing {
        lease_ttl: LEASE_TTL,
        stock_ttl: STOCK_TTL,
        failure_cooldown: COOLDOWN,
        test_mode,
    }
}

fn catalog(products: &str) -> PriorityList {
    PriorityList::parse(&format!(r#"{{"products":{products}}}"#), "test.json").unwrap()
}

/// An arbiter over `products` (the JSON array of the config file), in normal
/// mode, with its effects so far taken, and the clock it runs on.
fn fixture(products: &str) -> (Arbiter, Clock) {
    fixture_with(products, timing(false))
}

fn test_mode_fixture(products: &str) -> (Arbiter, Clock) {
    fixture_with(products, timing(true))
}

fn fixture_with(products: &str, timing: Timing) -> (Arbiter, Clock) {
    let clock = Clock::starting_at(T0);
    let mut a = Arbiter::new(catalog(products), timing, clock.now());
    a.take_effects();
    (a, clock)
}

fn t(s: &str) -> ProductId {
    ProductId::parse(s).unwrap()
}

fn w(s: &str) -> WatcherId {
    WatcherId::parse(s).unwrap()
}

fn lid(s: &str) -> LeaseId {
    LeaseId::parse(s).unwrap()
}

fn in_stock(tcin: &str) -> Observation {
    Observation {
        tcin: t(tcin),
        in_stock: true,
        price: None,
        observed_at_unix_ms: 0,
    }
}

fn out_of_stock(tcin: &str) -> Observation {
    Observation {
        tcin: t(tcin),
        in_stock: false,
        price: None,
        observed_at_unix_ms: 0,
    }
}

fn priced(tcin: &str, cents: u64) -> Observation {
    Observation {
        price: Some(restock_domain::Price::from_cents(cents)),
        ..in_stock(tcin)
    }
}

/// A connected watcher reports these observations.
fn report(a: &mut Arbiter, c: &Clock, watcher: &str, conn: u64, obs: &[Observation]) {
    a.report(c.now(), &w(watcher), conn, None, obs).unwrap();
}

fn acquire(a: &mut Arbiter, c: &Clock, tcin: &str, watcher: &str, req: &str) -> AcquireAnswer {
    a.acquire(c.now(), &t(tcin), &w(watcher), req).unwrap()
}

fn granted(answer: AcquireAnswer) -> ActiveLease {
    match answer {
        AcquireAnswer::Granted(l) => l,
        AcquireAnswer::Refused(r) => panic!("expected a grant, got {r:?}"),
    }
}

fn refused(answer: AcquireAnswer) -> Refusal {
    match answer {
        AcquireAnswer::Refused(r) => r,
        AcquireAnswer::Granted(l) => panic!("expected a refusal, got lease {l:?}"),
    }
}

fn release(a: &mut Arbiter, c: &Clock, l: &ActiveLease, outcome: Outcome) -> (bool, ProductState) {
    a.release(c.now(), &l.lease_id, l.token, outcome, "test")
        .unwrap()
}

/// The grants pushed since the last call, as (watcher, conn, lease).
fn pushed_grants(a: &mut Arbiter) -> Vec<(String, u64, ActiveLease)> {
    a.take_effects()
        .pushes
        .into_iter()
        .filter_map(|p| match p {
            Push::Grant {
                watcher_id,
                conn,
                lease,
            } => Some((watcher_id.to_string(), conn, lease)),
            _ => None,
        })
        .collect()
}

/// The one grant pushed since the last call.
fn one_pushed_grant(a: &mut Arbiter) -> (String, u64, ActiveLease) {
    let mut g = pushed_grants(a);
    assert_eq!(g.len(), 1, "expected exactly one grant, got {g:?}");
    g.pop().unwrap()
}

fn state(a: &Arbiter, c: &Clock, tcin: &str) -> ProductState {
    product(a, c, tcin).state
}

fn product(a: &Arbiter, c: &Clock, tcin: &str) -> ProductStatus {
    a.status(c.now())
        .products
        .into_iter()
        .find(|p| p.tcin.as_str() == tcin)
        .unwrap_or_else(|| panic!("product {tcin} is not tracked"))
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

fn stale<T>(r: Result<T, SlotError>) -> bool {
    matches!(r, Err(SlotError::Stale(_)))
}

fn holder(a: &Arbiter) -> Option<(String, u64)> {
    a.lease().map(|l| (l.tcin.to_string(), l.token.0))
}

const ABC: &str = r#"[{"tcin":"A"},{"tcin":"B"},{"tcin":"C"}]"#;

// ----- one lease at a time -----

#[tokio::test(start_paused = true)]
async fn a_second_acquire_is_refused_with_the_holder_until_the_first_is_released() {
    let (mut a, c) = fixture(ABC);
    let la = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    assert_eq!(la.tcin, t("A"));
    assert_eq!(la.watcher_id, w("w1"));
    assert_eq!(la.token, FencingToken(1));
    assert_eq!(la.ttl, LEASE_TTL);
    assert_eq!(la.granted_at_unix_ms, T0);
    assert_eq!(la.expires_at_unix_ms, T0 + 30_000);
    assert_eq!(state(&a, &c, "A"), ProductState::Attempting);

    let r = refused(acquire(&mut a, &c, "B", "w2", "r1"));
    assert_eq!(
        r,
        Refusal::AnotherPurchaseActive {
            holder_tcin: t("A"),
            holder_watcher_id: w("w1"),
        }
    );
    assert_eq!(r.reason(), "another_purchase_active");
    assert_eq!(holder(&a), Some(("A".into(), 1)));

    assert_eq!(
        release(&mut a, &c, &la, Outcome::Purchased),
        (true, ProductState::Purchased)
    );
    assert_eq!(a.lease(), None);
    let lb = granted(acquire(&mut a, &c, "B", "w2", "r2"));
    assert_eq!(lb.tcin, t("B"));
    assert_eq!(lb.token, FencingToken(2));
    assert_ne!(lb.lease_id, la.lease_id);
}

#[tokio::test(start_paused = true)]
async fn fencing_tokens_strictly_increase_with_every_grant() {
    let (mut a, c) = fixture(ABC);
    let mut tokens = Vec::new();
    for i in 0..6 {
        let tcin = ["A", "B", "C"][i % 3];
        let l = granted(acquire(&mut a, &c, tcin, "w1", &format!("r{i}")));
        tokens.push(l.token.0);
        release(&mut a, &c, &l, Outcome::Aborted);
    }
    assert_eq!(tokens, [1, 2, 3, 4, 5, 6]);
    assert_eq!(a.status(c.now()).next_token, FencingToken(7));
    assert_eq!(a.status(c.now()).counters.grants, 6);
}

// ----- priority -----

#[tokio::test(start_paused = true)]
async fn the_freed_slot_is_pushed_to_the_highest_priority_product_in_stock() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w2"), 2);
    assert_eq!(pushed_grants(&mut a), []);

    // Only C is in stock: it gets the free slot at once.
    report(&mut a, &c, "w1", 1, &[in_stock("C")]);
    let (who, conn, lc) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, lc.tcin.as_str()), ("w1", 1, "C"));

    // B then A come in while C holds the slot: both wait.
    report(&mut a, &c, "w2", 2, &[in_stock("B")]);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);
    assert_eq!(state(&a, &c, "B"), ProductState::Queued);

    release(&mut a, &c, &lc, Outcome::Purchased);
    let (who, conn, la) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, la.tcin.as_str()), ("w1", 1, "A"));
    assert_eq!(la.token, FencingToken(2));
    assert_eq!(state(&a, &c, "A"), ProductState::Attempting);
    assert_eq!(state(&a, &c, "B"), ProductState::Queued);

    release(&mut a, &c, &la, Outcome::Purchased);
    let (who, conn, lb) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, lb.tcin.as_str()), ("w2", 2, "B"));
    assert_eq!(lb.token, FencingToken(3));
}

#[tokio::test(start_paused = true)]
async fn the_grant_goes_to_the_watcher_that_saw_the_product_last() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w2"), 2);
    report(&mut a, &c, "w2", 2, &[in_stock("A")]);
    advance(Duration::from_secs(1)).await;
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(product(&a, &c, "A").in_stock_at, [w("w1"), w("w2")]);
    a.take_effects();

    release(&mut a, &c, &hold, Outcome::Aborted);
    let (who, conn, l) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, l.tcin.as_str()), ("w1", 1, "A"));
    assert_eq!(l.watcher_id, w("w1"));
}

#[tokio::test(start_paused = true)]
async fn watchers_that_saw_the_product_at_the_same_instant_are_picked_by_id() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w2"), 2);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w2", 2, &[in_stock("A")]);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    a.take_effects();
    release(&mut a, &c, &hold, Outcome::Aborted);
    let (who, conn, _) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn), ("w1", 1));
}

#[tokio::test(start_paused = true)]
async fn unconfigured_products_rank_after_configured_ones_ordered_by_id() {
    let (mut a, c) = fixture(r#"[{"tcin":"B"}]"#);
    a.set_paused(c.now(), true);
    a.connect(c.now(), &w("w1"), 1);
    report(
        &mut a,
        &c,
        "w1",
        1,
        &[in_stock("zz"), in_stock("mm"), in_stock("B")],
    );
    let status = a.status(c.now());
    let order: Vec<(&str, u32, bool)> = status
        .products
        .iter()
        .map(|p| (p.tcin.as_str(), p.priority, p.configured))
        .collect();
    assert_eq!(order, [("B", 1, true), ("mm", 2, false), ("zz", 3, false)]);
    a.take_effects();

    a.set_paused(c.now(), false);
    let mut bought = Vec::new();
    for _ in 0..3 {
        let (_, _, l) = one_pushed_grant(&mut a);
        bought.push(l.tcin.to_string());
        assert_eq!(
            release(&mut a, &c, &l, Outcome::Purchased),
            (true, ProductState::Purchased)
        );
    }
    assert_eq!(bought, ["B", "mm", "zz"]);
    assert_eq!(pushed_grants(&mut a), []);
}

#[tokio::test(start_paused = true)]
async fn a_lower_priority_acquire_is_refused_while_a_better_product_waits() {
    let (mut a, c) = fixture(ABC);
    let lc = granted(acquire(&mut a, &c, "C", "w1", "r1"));
    a.connect(c.now(), &w("w2"), 2);
    report(&mut a, &c, "w2", 2, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);

    let r = refused(acquire(&mut a, &c, "B", "w3", "r1"));
    assert_eq!(
        r,
        Refusal::HigherPriorityPending {
            pending_tcin: t("A")
        }
    );
    assert_eq!(r.reason(), "higher_priority_pending");
    // A itself has nothing better waiting: it is only told the slot is busy.
    assert_eq!(
        refused(acquire(&mut a, &c, "A", "w3", "r2")),
        Refusal::AnotherPurchaseActive {
            holder_tcin: t("C"),
            holder_watcher_id: w("w1"),
        }
    );
    assert_eq!(a.status(c.now()).counters.refusals, 2);

    // When the slot frees, A (not B) gets it.
    a.take_effects();
    release(&mut a, &c, &lc, Outcome::Purchased);
    let (who, _, l) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), l.tcin.as_str()), ("w2", "A"));
}

// ----- no switching -----

#[tokio::test(start_paused = true)]
async fn nothing_preempts_a_lease_not_even_a_better_product() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("C")]);
    let (_, _, lc) = one_pushed_grant(&mut a);

    for _ in 0..5 {
        advance(Duration::from_secs(10)).await;
        report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
        a.renew(c.now(), &lc.lease_id, lc.token).unwrap();
        assert_eq!(pushed_grants(&mut a), []);
        assert_eq!(holder(&a), Some(("C".into(), 1)));
        assert_eq!(state(&a, &c, "A"), ProductState::Queued);
    }
    assert_eq!(
        release(&mut a, &c, &lc, Outcome::Failed),
        (true, ProductState::Failed)
    );
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("A"));
}

#[tokio::test(start_paused = true)]
async fn test_mode_the_best_in_stock_product_wins_every_cycle_until_it_runs_out() {
    let (mut a, c) = test_mode_fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
    let (_, _, mut l) = one_pushed_grant(&mut a);
    assert_eq!(l.tcin, t("A"));

    for cycle in 1..=5u64 {
        advance(Duration::from_secs(5)).await;
        // The watcher keeps seeing both in stock.
        report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
        // Released purchased, A goes back to ready, is queued again at once
        // because it is still in stock, and wins the next cycle.
        assert_eq!(
            release(&mut a, &c, &l, Outcome::Purchased),
            (true, ProductState::Queued)
        );
        let (who, conn, next) = one_pushed_grant(&mut a);
        assert_eq!((who.as_str(), conn), ("w1", 1));
        assert_eq!(next.tcin, t("A"), "cycle {cycle}");
        assert_eq!(next.token, FencingToken(cycle + 1));
        assert_eq!(state(&a, &c, "B"), ProductState::Queued);
        assert_eq!(product(&a, &c, "A").purchases, cycle as u32);
        l = next;
    }

    // A sells out during the sixth attempt: the next cycle is B's.
    report(&mut a, &c, "w1", 1, &[out_of_stock("A"), in_stock("B")]);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(
        release(&mut a, &c, &l, Outcome::Purchased),
        (true, ProductState::Ready)
    );
    let (_, _, lb) = one_pushed_grant(&mut a);
    assert_eq!(lb.tcin, t("B"));
    assert_eq!(lb.token, FencingToken(7));
    assert_eq!(product(&a, &c, "A").purchases, 6);
    assert_eq!(a.status(c.now()).counters.purchases, 6);
}

#[tokio::test(start_paused = true)]
async fn an_out_of_stock_release_waits_for_a_fresh_report() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    assert_eq!(
        release(&mut a, &c, &la, Outcome::OutOfStock),
        (true, ProductState::Ready)
    );
    // The holder's word beats the watcher's earlier report: B goes next.
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("B"));
    assert_eq!(product(&a, &c, "A").in_stock_at, Vec::<WatcherId>::new());
    // A fresh report queues A again.
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);
}

// ----- normal mode: quantity, reset -----

#[tokio::test(start_paused = true)]
async fn normal_mode_buys_the_configured_quantity_then_refuses_until_reset() {
    let (mut a, c) = fixture(r#"[{"tcin":"A","quantity":2},{"tcin":"B"}]"#);
    let l1 = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    assert_eq!(
        release(&mut a, &c, &l1, Outcome::Purchased),
        (true, ProductState::Ready)
    );
    assert_eq!(product(&a, &c, "A").purchases, 1);

    let l2 = granted(acquire(&mut a, &c, "A", "w1", "r2"));
    assert_eq!(
        release(&mut a, &c, &l2, Outcome::Purchased),
        (true, ProductState::Purchased)
    );
    let view = product(&a, &c, "A");
    assert_eq!((view.purchases, view.quantity), (2, 2));

    let r = refused(acquire(&mut a, &c, "A", "w1", "r3"));
    assert_eq!(r, Refusal::AlreadyPurchased { purchases: 2 });
    assert_eq!(r.reason(), "already_purchased");

    // Even in stock, a purchased product is not granted.
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(state(&a, &c, "A"), ProductState::Purchased);

    // Reset: back to ready, queued because in stock, and granted at once.
    assert_eq!(a.reset(c.now(), &t("A")), Ok(ProductState::Purchased));
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [EventKind::Reset, EventKind::Queued, EventKind::Granted]
    );
    assert_eq!(product(&a, &c, "A").purchases, 0);
    assert_eq!(holder(&a), Some(("A".into(), 3)));
}

#[tokio::test(start_paused = true)]
async fn reset_refuses_the_product_holding_the_slot_and_unknown_products() {
    let (mut a, c) = fixture(ABC);
    granted(acquire(&mut a, &c, "A", "w1", "r1"));
    assert!(matches!(
        a.reset(c.now(), &t("A")),
        Err(SlotError::Stale(_))
    ));
    assert_eq!(state(&a, &c, "A"), ProductState::Attempting);
    assert_eq!(
        a.reset(c.now(), &t("nope")),
        Err(SlotError::UnknownProduct(t("nope")))
    );
    assert_eq!(a.reset(c.now(), &t("B")), Ok(ProductState::Ready));
}

#[tokio::test(start_paused = true)]
async fn a_disabled_product_is_never_queued_nor_granted() {
    let (mut a, c) = fixture(r#"[{"tcin":"A","enabled":false},{"tcin":"B"}]"#);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    let r = refused(acquire(&mut a, &c, "A", "w1", "r1"));
    assert_eq!((r.clone(), r.reason()), (Refusal::Disabled, "disabled"));
}

// ----- lease expiry and renewal -----

#[tokio::test(start_paused = true)]
async fn a_lease_expires_at_exactly_its_ttl_and_the_next_grant_is_made() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w2"), 2);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    report(&mut a, &c, "w2", 2, &[in_stock("B")]);
    assert_eq!(a.next_deadline(), Some(la.deadline));

    advance(LEASE_TTL - MS).await;
    a.tick(c.now());
    assert_eq!(a.lease(), Some(&la));
    assert_eq!(la.remaining(c.now()), MS);
    let effects = a.take_effects();
    assert_eq!(effects.pushes, []);
    assert_eq!(kinds(&effects.events), [EventKind::Queued]);

    advance(MS).await;
    a.tick(c.now());
    let effects = a.take_effects();
    let expired = &effects.events[0];
    assert_eq!(expired.kind, EventKind::Expired);
    assert_eq!(expired.outcome, Some(Outcome::Expired));
    assert_eq!(expired.lease_id.as_ref(), Some(&la.lease_id));
    assert_eq!(expired.fencing_token, Some(FencingToken(1)));
    assert_eq!(expired.from_state, Some(ProductState::Attempting));
    assert_eq!(expired.to_state, Some(ProductState::Failed));
    assert_eq!(expired.unix_ms, T0 + 30_000);
    assert_eq!(
        kinds(&effects.events),
        [EventKind::Expired, EventKind::Granted]
    );
    assert_eq!(
        effects.pushes[0],
        Push::Revoked {
            watcher_id: w("w1"),
            lease_id: la.lease_id.clone(),
            token: la.token,
            reason: "expired".into(),
        }
    );
    let Push::Grant {
        watcher_id,
        conn,
        lease,
    } = &effects.pushes[1]
    else {
        panic!("expected a grant, got {:?}", effects.pushes);
    };
    assert_eq!((watcher_id, *conn), (&w("w2"), 2));
    assert_eq!((lease.tcin.as_str(), lease.token), ("B", FencingToken(2)));
    assert_eq!(effects.pushes.len(), 2);
    assert!(effects.must_persist);

    let view = product(&a, &c, "A");
    assert_eq!(view.state, ProductState::Failed);
    assert_eq!(view.last_outcome, Some(Outcome::Expired));
    assert_eq!(view.cooldown_remaining, Duration::from_secs(60));
    let counters = a.status(c.now()).counters;
    assert_eq!((counters.expirations, counters.failures), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn renewing_extends_the_lease_by_a_full_ttl_from_now() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    advance(Duration::from_secs(20)).await;
    let renewed = a.renew(c.now(), &l.lease_id, l.token).unwrap();
    assert_eq!(renewed.lease_id, l.lease_id);
    assert_eq!(renewed.token, l.token);
    assert_eq!(renewed.expires_at_unix_ms, T0 + 50_000);
    assert_eq!(renewed.deadline, l.deadline + Duration::from_secs(20));
    assert_eq!(
        kinds(&a.take_effects().events),
        [EventKind::Granted, EventKind::Renewed]
    );

    // Past the original deadline, still held.
    advance(LEASE_TTL - MS).await;
    a.tick(c.now());
    assert_eq!(a.lease(), Some(&renewed));
    advance(MS).await;
    a.tick(c.now());
    assert_eq!(a.lease(), None);
    assert_eq!(state(&a, &c, "A"), ProductState::Failed);
}

#[tokio::test(start_paused = true)]
async fn stale_and_unknown_renews_and_releases_change_nothing() {
    let (mut a, c) = fixture(ABC);
    let old = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    release(&mut a, &c, &old, Outcome::Aborted);
    let cur = granted(acquire(&mut a, &c, "B", "w1", "r2"));
    a.take_effects();

    // The old lease id, with its own token.
    assert!(stale(a.renew(c.now(), &old.lease_id, old.token)));
    // The current lease id with the old token.
    assert!(stale(a.renew(c.now(), &cur.lease_id, old.token)));
    assert!(stale(a.release(
        c.now(),
        &cur.lease_id,
        old.token,
        Outcome::Purchased,
        ""
    )));
    // The old lease with an outcome other than the one it ended with.
    assert!(stale(a.release(
        c.now(),
        &old.lease_id,
        old.token,
        Outcome::Purchased,
        ""
    )));
    assert_eq!(
        a.renew(c.now(), &lid("lease-nope"), cur.token),
        Err(SlotError::UnknownLease(lid("lease-nope")))
    );
    assert_eq!(
        a.release(
            c.now(),
            &lid("lease-nope"),
            cur.token,
            Outcome::Purchased,
            ""
        ),
        Err(SlotError::UnknownLease(lid("lease-nope")))
    );

    assert_eq!(a.lease(), Some(&cur));
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    assert_eq!(state(&a, &c, "B"), ProductState::Attempting);
    let effects = a.take_effects();
    assert_eq!(effects.events, []);
    assert!(!effects.must_persist);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_release_is_harmless_but_a_different_outcome_is_refused() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    assert_eq!(
        release(&mut a, &c, &l, Outcome::Purchased),
        (true, ProductState::Purchased)
    );
    a.take_effects();
    assert_eq!(
        release(&mut a, &c, &l, Outcome::Purchased),
        (false, ProductState::Purchased)
    );
    let err = a
        .release(c.now(), &l.lease_id, l.token, Outcome::Failed, "")
        .unwrap_err();
    assert!(
        matches!(&err, SlotError::Stale(m) if m.contains("already ended: purchased")),
        "{err}"
    );
    assert_eq!(a.take_effects().events, []);
    let counters = a.status(c.now()).counters;
    assert_eq!((counters.purchases, counters.failures), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn only_the_arbiter_may_release_as_expired() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    assert!(matches!(
        a.release(c.now(), &l.lease_id, l.token, Outcome::Expired, ""),
        Err(SlotError::Invalid(_))
    ));
    assert_eq!(a.lease(), Some(&l));
}

#[tokio::test(start_paused = true)]
async fn a_release_after_expiry_is_stale_and_changes_nothing() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    advance(LEASE_TTL).await;
    let err = a
        .release(c.now(), &l.lease_id, l.token, Outcome::Purchased, "late")
        .unwrap_err();
    assert!(
        matches!(&err, SlotError::Stale(m) if m.contains("expired")),
        "{err}"
    );
    assert!(matches!(
        a.renew(c.now(), &l.lease_id, l.token),
        Err(SlotError::Stale(_))
    ));
    assert_eq!(state(&a, &c, "A"), ProductState::Failed);
    assert_eq!(product(&a, &c, "A").purchases, 0);
    assert_eq!(a.status(c.now()).counters.purchases, 0);
}

// ----- cool-down -----

#[tokio::test(start_paused = true)]
async fn a_failed_product_cools_down_then_is_granted_again_when_in_stock() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, l) = one_pushed_grant(&mut a);
    assert_eq!(
        release(&mut a, &c, &l, Outcome::Failed),
        (true, ProductState::Failed)
    );
    assert_eq!(pushed_grants(&mut a), []);

    let r = refused(acquire(&mut a, &c, "A", "w2", "r1"));
    assert_eq!(
        r,
        Refusal::CoolingDown {
            retry_after_ms: 60_000
        }
    );
    assert_eq!(r.reason(), "cooling_down");
    advance(Duration::from_secs(30)).await;
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(
        refused(acquire(&mut a, &c, "A", "w2", "r2")),
        Refusal::CoolingDown {
            retry_after_ms: 30_000
        }
    );
    advance(Duration::from_secs(30) - MS).await;
    a.tick(c.now());
    assert_eq!(state(&a, &c, "A"), ProductState::Failed);
    assert_eq!(pushed_grants(&mut a), []);

    advance(MS).await;
    a.tick(c.now());
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [EventKind::CooledDown, EventKind::Queued, EventKind::Granted]
    );
    assert_eq!(effects.events[0].from_state, Some(ProductState::Failed));
    assert_eq!(effects.events[0].to_state, Some(ProductState::Ready));
    assert!(matches!(
        &effects.pushes[..],
        [Push::Grant { lease, .. }] if lease.tcin == t("A") && lease.token == FencingToken(2)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_cooled_down_product_not_in_stock_is_ready_and_can_be_acquired() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    release(&mut a, &c, &l, Outcome::Failed);
    advance(COOLDOWN).await;
    a.tick(c.now());
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    assert_eq!(product(&a, &c, "A").cooldown_remaining, Duration::ZERO);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(
        granted(acquire(&mut a, &c, "A", "w1", "r2")).token,
        FencingToken(2)
    );
}

// ----- stock staleness -----

#[tokio::test(start_paused = true)]
async fn an_in_stock_report_stops_counting_after_the_stock_ttl() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);

    // Keep the slot held past the stock TTL.
    advance(Duration::from_secs(25)).await;
    a.renew(c.now(), &hold.lease_id, hold.token).unwrap();
    a.take_effects();
    advance(STOCK_TTL - Duration::from_secs(25) - MS).await;
    a.tick(c.now());
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);
    assert_eq!(a.take_effects().events, []);
    advance(MS).await;
    a.tick(c.now());
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    let effects = a.take_effects();
    assert_eq!(kinds(&effects.events), [EventKind::Unqueued]);
    assert_eq!(effects.events[0].from_state, Some(ProductState::Queued));
    assert_eq!(effects.events[0].to_state, Some(ProductState::Ready));
    assert_eq!(product(&a, &c, "A").in_stock_at, Vec::<WatcherId>::new());

    // The slot frees: nothing fresh is in stock, so nothing is granted.
    release(&mut a, &c, &hold, Outcome::Aborted);
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(a.lease(), None);
}

#[tokio::test(start_paused = true)]
async fn repeated_reports_keep_a_product_queued() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    for _ in 0..5 {
        advance(Duration::from_secs(20)).await;
        report(&mut a, &c, "w1", 1, &[in_stock("A")]);
        a.renew(c.now(), &hold.lease_id, hold.token).unwrap();
        assert_eq!(state(&a, &c, "A"), ProductState::Queued);
    }
    // 100 s after the first report, well past the stock TTL, still queued.
    assert_eq!(
        a.next_deadline(),
        Some(tokio::time::Instant::now() + LEASE_TTL)
    );
    a.take_effects();
    release(&mut a, &c, &hold, Outcome::Aborted);
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("A"));
}

// ----- watchers -----

#[tokio::test(start_paused = true)]
async fn a_disconnect_withdraws_the_watchers_reports() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    a.take_effects();

    a.disconnect(c.now(), &w("w1"), 1, "stream ended");
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [EventKind::WatcherLeft, EventKind::Unqueued]
    );
    let watchers = a.status(c.now()).watchers;
    assert_eq!(watchers.len(), 1);
    assert!(!watchers[0].connected);

    release(&mut a, &c, &hold, Outcome::Aborted);
    assert_eq!(pushed_grants(&mut a), []);
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_holders_lease_runs_on_until_it_expires() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w2"), 2);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, l) = one_pushed_grant(&mut a);
    report(&mut a, &c, "w2", 2, &[in_stock("B")]);
    a.disconnect(c.now(), &w("w1"), 1, "gone");
    assert_eq!(a.lease(), Some(&l));
    assert_eq!(pushed_grants(&mut a), []);

    // It may still renew by unary call.
    advance(Duration::from_secs(20)).await;
    report(&mut a, &c, "w2", 2, &[in_stock("B")]);
    let renewed = a.renew(c.now(), &l.lease_id, l.token).unwrap();
    advance(LEASE_TTL - MS).await;
    a.tick(c.now());
    assert_eq!(a.lease(), Some(&renewed));

    advance(MS).await;
    a.tick(c.now());
    let effects = a.take_effects();
    // No revocation for a watcher with no stream; the next grant goes out.
    assert_eq!(effects.pushes.len(), 1, "{:?}", effects.pushes);
    assert!(matches!(
        &effects.pushes[0],
        Push::Grant { watcher_id, conn: 2, lease } if *watcher_id == w("w2") && lease.tcin == t("B")
    ));
    assert_eq!(state(&a, &c, "A"), ProductState::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_newer_stream_replaces_the_older_one_of_the_same_watcher() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w1"), 2);
    assert!(!a.is_current_conn(&w("w1"), 1));
    assert!(a.is_current_conn(&w("w1"), 2));
    a.take_effects();

    // The old stream's last words are ignored.
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    a.disconnect(c.now(), &w("w1"), 1, "old stream closed");
    let effects = a.take_effects();
    assert_eq!(effects.events, []);
    assert_eq!(effects.pushes, []);
    assert!(a.status(c.now()).watchers[0].connected);

    report(&mut a, &c, "w1", 2, &[in_stock("A")]);
    let (who, conn, l) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, l.tcin.as_str()), ("w1", 2, "A"));
}

// ----- pause -----

#[tokio::test(start_paused = true)]
async fn a_paused_arbiter_grants_nothing_and_resuming_grants_the_best_at_once() {
    let (mut a, c) = fixture(ABC);
    a.set_paused(c.now(), true);
    assert!(a.paused());
    assert_eq!(kinds(&a.take_effects().events), [EventKind::Paused]);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("B"), in_stock("A")]);
    let r = refused(acquire(&mut a, &c, "C", "w2", "r1"));
    assert_eq!((r.clone(), r.reason()), (Refusal::Paused, "paused"));
    assert_eq!(pushed_grants(&mut a), []);
    assert_eq!(a.lease(), None);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);

    // Pausing twice is no new transition.
    a.set_paused(c.now(), true);
    assert_eq!(a.take_effects().events, []);

    a.set_paused(c.now(), false);
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [EventKind::Resumed, EventKind::Granted]
    );
    assert!(matches!(
        &effects.pushes[..],
        [Push::Grant { lease, .. }] if lease.tcin == t("A")
    ));
}

#[tokio::test(start_paused = true)]
async fn pausing_lets_the_current_lease_run_to_its_end() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    a.set_paused(c.now(), true);
    assert_eq!(a.lease(), Some(&l));
    a.renew(c.now(), &l.lease_id, l.token).unwrap();
    assert_eq!(
        release(&mut a, &c, &l, Outcome::Purchased),
        (true, ProductState::Purchased)
    );
}

// ----- idempotency -----

#[tokio::test(start_paused = true)]
async fn a_retried_request_gets_the_same_answer_and_never_a_second_lease() {
    let (mut a, c) = fixture(ABC);
    let first = granted(acquire(&mut a, &c, "A", "w1", "req-1"));
    let again = granted(acquire(&mut a, &c, "A", "w1", "req-1"));
    assert_eq!(again, first);

    // A retry shows the lease as it is now (renewed).
    advance(Duration::from_secs(5)).await;
    let renewed = a.renew(c.now(), &first.lease_id, first.token).unwrap();
    assert_eq!(granted(acquire(&mut a, &c, "A", "w1", "req-1")), renewed);

    // The same request id from another watcher is another request.
    let other = refused(acquire(&mut a, &c, "B", "w2", "req-1"));
    assert_eq!(
        other,
        Refusal::AnotherPurchaseActive {
            holder_tcin: t("A"),
            holder_watcher_id: w("w1"),
        }
    );

    release(&mut a, &c, &first, Outcome::Purchased);
    // After the release the retry still gets the original lease back, not a
    // new grant; the refusal is repeated as it was.
    let late = granted(acquire(&mut a, &c, "A", "w1", "req-1"));
    assert_eq!(late.lease_id, first.lease_id);
    assert_eq!(late.token, first.token);
    assert_eq!(refused(acquire(&mut a, &c, "B", "w2", "req-1")), other);
    assert_eq!(a.lease(), None);
    let status = a.status(c.now());
    assert_eq!(status.counters.grants, 1);
    assert_eq!(status.next_token, FencingToken(2));

    // A new request id is a new request.
    let lb = granted(acquire(&mut a, &c, "B", "w2", "req-2"));
    assert_eq!(lb.token, FencingToken(2));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_the_lease_ended_shows_it_ended() {
    let (mut a, c) = fixture(ABC);
    let first = granted(acquire(&mut a, &c, "A", "w1", "req-1"));
    advance(Duration::from_secs(5)).await;
    release(&mut a, &c, &first, Outcome::Purchased);
    advance(Duration::from_secs(1)).await;
    // The same lease, with nothing left and the moment it ended as its end.
    let late = granted(acquire(&mut a, &c, "A", "w1", "req-1"));
    assert_eq!((&late.lease_id, late.token), (&first.lease_id, first.token));
    assert_eq!(late.remaining(c.now()), Duration::ZERO);
    assert_eq!(late.view(c.now().mono).remaining, Duration::ZERO);
    assert_eq!(late.expires_at_unix_ms, T0 + 5_000);

    // Likewise for a lease that expired.
    let second = granted(acquire(&mut a, &c, "B", "w1", "req-2"));
    advance(LEASE_TTL).await;
    a.tick(c.now());
    advance(Duration::from_secs(1)).await;
    let late = granted(acquire(&mut a, &c, "B", "w1", "req-2"));
    assert_eq!(late.lease_id, second.lease_id);
    assert_eq!(late.remaining(c.now()), Duration::ZERO);
    assert_eq!(late.expires_at_unix_ms, second.expires_at_unix_ms);
}

// ----- max price -----

#[tokio::test(start_paused = true)]
async fn a_price_above_max_price_does_not_count_as_in_stock() {
    let (mut a, c) = fixture(r#"[{"tcin":"A","max_price":10.00},{"tcin":"B"}]"#);
    let hold = granted(acquire(&mut a, &c, "B", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);

    report(&mut a, &c, "w1", 1, &[priced("A", 1_001)]);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    report(&mut a, &c, "w1", 1, &[priced("A", 1_000)]);
    assert_eq!(state(&a, &c, "A"), ProductState::Queued);
    a.take_effects();
    // The price goes up while it waits: no longer queued.
    report(&mut a, &c, "w1", 1, &[priced("A", 1_500)]);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    let effects = a.take_effects();
    assert_eq!(kinds(&effects.events), [EventKind::Unqueued]);
    assert!(
        effects.events[0].detail.contains("max_price"),
        "{}",
        effects.events[0].detail
    );

    release(&mut a, &c, &hold, Outcome::Aborted);
    assert_eq!(pushed_grants(&mut a), []);
    // An unknown price holds back a product with a max_price (fail
    // closed: a watcher that cannot see the price cannot keep to it)...
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    assert_eq!(pushed_grants(&mut a), []);
    // ... and not one without (B has no limit).
    report(&mut a, &c, "w1", 1, &[in_stock("B")]);
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("B"));
}

#[tokio::test(start_paused = true)]
async fn a_product_with_a_max_price_is_never_granted_without_a_known_price() {
    let (mut a, c) = fixture(r#"[{"tcin":"A","max_price":10.00}]"#);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    assert_eq!(pushed_grants(&mut a), []);
    report(&mut a, &c, "w1", 1, &[priced("A", 999)]);
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("A"));
}

// ----- abandoned grants -----

#[tokio::test(start_paused = true)]
async fn an_undeliverable_grant_is_withdrawn_and_the_next_one_goes_elsewhere() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.connect(c.now(), &w("w2"), 2);
    // Hold the slot so both reports of A are in before it frees.
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    advance(Duration::from_secs(1)).await;
    report(&mut a, &c, "w2", 2, &[in_stock("A")]);
    release(&mut a, &c, &hold, Outcome::Aborted);
    let (who, conn, la) = one_pushed_grant(&mut a);
    assert_eq!((who.as_str(), conn, la.tcin.as_str()), ("w2", 2, "A"));

    a.abandon_grant(c.now(), &w("w2"), 2, &la.lease_id);
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [
            EventKind::WatcherLeft,
            EventKind::Released,
            EventKind::Queued,
            EventKind::Granted
        ]
    );
    assert_eq!(effects.events[1].outcome, Some(Outcome::Aborted));
    assert!(matches!(
        &effects.pushes[..],
        [Push::Grant { watcher_id, conn: 1, lease }]
            if *watcher_id == w("w1") && lease.tcin == t("A") && lease.token == FencingToken(3)
    ));
    assert!(!a.is_current_conn(&w("w2"), 2));
    assert_eq!(product(&a, &c, "A").last_outcome, Some(Outcome::Aborted));
    // The withdrawn lease is stale for its would-be holder.
    assert!(matches!(
        a.renew(c.now(), &la.lease_id, la.token),
        Err(SlotError::Stale(_))
    ));
}

// ----- snapshot and restore -----

/// Saves, round-trips through JSON like the state file does, and restores
/// with a wall clock starting at `unix_ms`.
fn restart(a: &Arbiter, c: &Clock, products: &str, unix_ms: u64) -> (Arbiter, Clock) {
    let snap = snapshot(a, c.now());
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    let clock = Clock::starting_at(unix_ms);
    let restored = restore(back, catalog(products), timing(false), clock.now()).unwrap();
    (restored, clock)
}

#[tokio::test(start_paused = true)]
async fn a_restored_arbiter_keeps_the_lease_tokens_and_product_states() {
    let (mut a, c) = fixture(ABC);
    let lc = granted(acquire(&mut a, &c, "C", "w1", "c1"));
    release(&mut a, &c, &lc, Outcome::Purchased);
    let la = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    a.connect(c.now(), &w("w2"), 2);
    report(&mut a, &c, "w2", 2, &[in_stock("B")]);
    assert_eq!(state(&a, &c, "B"), ProductState::Queued);
    advance(Duration::from_secs(10)).await;
    let old_events = a.events_from(0);
    let old_last = a.last_sequence();
    let reserved = snapshot(&a, c.now()).sequence_reserved;
    assert!(reserved >= old_last);

    // Down for 5 s by the wall clock.
    let (mut b, c2) = restart(&a, &c, ABC, T0 + 15_000);
    let lease = b.lease().cloned().expect("the lease survives");
    assert_eq!(lease.lease_id, la.lease_id);
    assert_eq!(lease.token, FencingToken(2));
    // The time left by whole milliseconds, rounded up (see saved::restore).
    assert_eq!(lease.expires_at_unix_ms, T0 + 30_001);
    assert_eq!(
        lease.remaining(c2.now()),
        Duration::from_secs(15) + Duration::from_millis(1)
    );
    assert_eq!(state(&b, &c2, "A"), ProductState::Attempting);
    assert_eq!(state(&b, &c2, "B"), ProductState::Ready);
    let view_c = product(&b, &c2, "C");
    assert_eq!(
        (view_c.state, view_c.purchases),
        (ProductState::Purchased, 1)
    );
    let status = b.status(c2.now());
    assert_eq!(status.next_token, FencingToken(3));
    assert_eq!(status.counters, a.status(c.now()).counters);
    assert!(status.watchers.is_empty());

    // Numbering continues after the reserved block; old events are kept.
    let effects = b.take_effects();
    assert!(effects.must_persist);
    assert_eq!(kinds(&effects.events), [EventKind::ArbiterStarted]);
    assert_eq!(effects.events[0].sequence, reserved + 1);
    assert!(effects.events[0].detail.contains("15001 ms left"));
    assert_eq!(b.events_from(0)[..old_events.len()], old_events[..]);
    assert_eq!(b.last_sequence(), reserved + 1);

    // The idempotent retry returns the very same lease.
    assert_eq!(granted(acquire(&mut b, &c2, "A", "w1", "r1")), lease);
    assert_eq!(
        refused(acquire(&mut b, &c2, "C", "w1", "c2")),
        Refusal::AlreadyPurchased { purchases: 1 }
    );

    // The lease ends on its original deadline, rounded up to the next
    // whole millisecond (never before it).
    advance(Duration::from_secs(15)).await;
    b.tick(c2.now());
    assert_eq!(b.lease(), Some(&lease));
    advance(MS).await;
    b.tick(c2.now());
    assert_eq!(b.lease(), None);
    assert_eq!(state(&b, &c2, "A"), ProductState::Failed);

    // The next grant continues the tokens.
    assert_eq!(
        granted(acquire(&mut b, &c2, "B", "w2", "b1")).token,
        FencingToken(3)
    );
    let seqs: Vec<u64> = b.take_effects().events.iter().map(|e| e.sequence).collect();
    assert!(seqs.iter().all(|s| *s > reserved + 1), "{seqs:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restored_lease_never_gets_more_than_its_ttl() {
    let (mut a, c) = fixture(ABC);
    granted(acquire(&mut a, &c, "A", "w1", "r1"));
    // The wall clock went back a minute while the arbiter was down.
    let (b, c2) = restart(&a, &c, ABC, T0 - 60_000);
    let lease = b.lease().unwrap();
    assert_eq!(lease.remaining(c2.now()), LEASE_TTL);
    assert_eq!(lease.expires_at_unix_ms, T0 - 60_000 + 30_000);
}

#[tokio::test(start_paused = true)]
async fn a_lease_whose_deadline_passed_while_down_expires_on_restore() {
    let (mut a, c) = fixture(ABC);
    let la = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    let (mut b, c2) = restart(&a, &c, ABC, T0 + 31_000);
    assert_eq!(b.lease(), None);
    let effects = b.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [EventKind::ArbiterStarted, EventKind::Expired]
    );
    assert_eq!(
        effects.events[1].lease_id.as_ref().map(LeaseId::as_str),
        Some(la.lease_id.as_str())
    );
    assert_eq!(state(&b, &c2, "A"), ProductState::Failed);
    assert!(matches!(
        b.release(c2.now(), &la.lease_id, la.token, Outcome::Purchased, ""),
        Err(SlotError::Stale(_))
    ));

    // Watchers come back; the next grant gets the next token.
    b.connect(c2.now(), &w("w1"), 9);
    report(&mut b, &c2, "w1", 9, &[in_stock("B")]);
    let (_, conn, lb) = one_pushed_grant(&mut b);
    assert_eq!(
        (conn, lb.tcin.as_str(), lb.token),
        (9, "B", FencingToken(2))
    );
}

#[tokio::test(start_paused = true)]
async fn a_restored_cool_down_keeps_its_wall_clock_end() {
    let (mut a, c) = fixture(ABC);
    let l = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    release(&mut a, &c, &l, Outcome::Failed);
    let (mut b, c2) = restart(&a, &c, ABC, T0 + 20_000);
    assert_eq!(
        refused(acquire(&mut b, &c2, "A", "w1", "r2")),
        Refusal::CoolingDown {
            retry_after_ms: 40_000
        }
    );
    advance(Duration::from_secs(40)).await;
    b.tick(c2.now());
    assert_eq!(state(&b, &c2, "A"), ProductState::Ready);
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_survive_a_restart_of_a_restart() {
    let (a, c) = fixture(ABC);
    let (mut b, c2) = restart(&a, &c, ABC, T0);
    let first_b = b.last_sequence();
    b.set_paused(c2.now(), true);
    let (mut d, _c3) = restart(&b, &c2, ABC, T0);
    // Paused state survives too.
    assert!(d.paused());
    let started = d.take_effects().events;
    assert_eq!(started.len(), 1);
    assert!(started[0].sequence > first_b + 1);
    assert!(started[0].sequence > SEQUENCE_BLOCK);
}

// ----- events -----

#[tokio::test(start_paused = true)]
async fn events_are_numbered_contiguously_and_resumable_from_any_number() {
    let clock = Clock::starting_at(T0);
    let mut a = Arbiter::new(catalog(ABC), timing(false), clock.now());
    let c = clock;
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
    advance(Duration::from_secs(1)).await;
    let l = a.lease().cloned().unwrap();
    a.renew(c.now(), &l.lease_id, l.token).unwrap();
    release(&mut a, &c, &l, Outcome::Purchased);
    a.set_paused(c.now(), true);
    a.set_paused(c.now(), false);
    a.disconnect(c.now(), &w("w1"), 1, "bye");

    let all: Vec<Event> = a.take_effects().events;
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    let n = all.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(
        kinds(&all),
        [
            EventKind::ArbiterStarted,
            EventKind::WatcherJoined,
            EventKind::Queued,
            EventKind::Queued,
            EventKind::Granted,
            EventKind::Renewed,
            EventKind::Released,
            EventKind::Granted,
            EventKind::Paused,
            EventKind::Resumed,
            EventKind::WatcherLeft,
        ]
    );
    assert_eq!(all[0].unix_ms, T0);
    assert_eq!(all[5].unix_ms, T0 + 1_000);
    assert_eq!(a.last_sequence(), n);
    assert_eq!(a.events_from(0), all);
    assert_eq!(a.events_from(1), all);
    assert_eq!(a.events_from(5), all[4..]);
    assert_eq!(a.events_from(n), all[all.len() - 1..]);
    assert_eq!(a.events_from(n + 1), []);
}

// ----- reload -----

#[tokio::test(start_paused = true)]
async fn a_reload_applies_the_new_order_and_ranks_dropped_products_last() {
    let (mut a, c) = fixture(ABC);
    let la = granted(acquire(&mut a, &c, "A", "w1", "r1"));
    release(&mut a, &c, &la, Outcome::Purchased);
    a.set_paused(c.now(), true);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("B"), in_stock("C")]);
    a.take_effects();

    a.reload(c.now(), catalog(r#"[{"tcin":"C"},{"tcin":"B"}]"#));
    let effects = a.take_effects();
    assert_eq!(kinds(&effects.events), [EventKind::ConfigReloaded]);
    assert_eq!(effects.pushes, [Push::CatalogChanged]);
    assert!(effects.must_persist);

    let order: Vec<(String, u32, bool, ProductState, u32)> = a
        .status(c.now())
        .products
        .into_iter()
        .map(|p| {
            (
                p.tcin.to_string(),
                p.priority,
                p.configured,
                p.state,
                p.purchases,
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("C".into(), 1, true, ProductState::Queued, 0),
            ("B".into(), 2, true, ProductState::Queued, 0),
            ("A".into(), 3, false, ProductState::Purchased, 1),
        ]
    );

    a.set_paused(c.now(), false);
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("C"));
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_disables_a_queued_product_unqueues_it() {
    let (mut a, c) = fixture(ABC);
    let hold = granted(acquire(&mut a, &c, "C", "unary", "r1"));
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A"), in_stock("B")]);
    a.take_effects();
    a.reload(
        c.now(),
        catalog(r#"[{"tcin":"A","enabled":false},{"tcin":"B"},{"tcin":"C"}]"#),
    );
    assert_eq!(state(&a, &c, "A"), ProductState::Ready);
    assert_eq!(
        kinds(&a.take_effects().events),
        [EventKind::Unqueued, EventKind::ConfigReloaded]
    );
    release(&mut a, &c, &hold, Outcome::Aborted);
    assert_eq!(one_pushed_grant(&mut a).2.tcin, t("B"));
}

// ----- corner cases -----

#[tokio::test(start_paused = true)]
async fn deadlines_falling_on_the_same_instant_are_all_settled_in_one_step() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Failed);
    advance(Duration::from_secs(30)).await;
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    // B's lease ends exactly when A's cool-down does.
    let lb = granted(acquire(&mut a, &c, "B", "w2", "r1"));
    assert_eq!(a.next_deadline(), Some(lb.deadline));
    a.take_effects();

    advance(Duration::from_secs(30)).await;
    a.tick(c.now());
    let effects = a.take_effects();
    assert_eq!(
        kinds(&effects.events),
        [
            EventKind::Expired,
            EventKind::CooledDown,
            EventKind::Queued,
            EventKind::Granted
        ]
    );
    assert_eq!(effects.events[0].tcin, Some(t("B")));
    assert_eq!(holder(&a), Some(("A".into(), 3)));
    assert_eq!(state(&a, &c, "B"), ProductState::Failed);
}

#[tokio::test(start_paused = true)]
async fn next_deadline_is_none_when_nothing_happens_by_itself() {
    let (mut a, c) = fixture(ABC);
    assert_eq!(a.next_deadline(), None);
    a.connect(c.now(), &w("w1"), 1);
    assert_eq!(a.next_deadline(), None);
    report(&mut a, &c, "w1", 1, &[in_stock("zz")]);
    let (_, _, l) = one_pushed_grant(&mut a);
    release(&mut a, &c, &l, Outcome::Failed);
    // The sighting goes stale before the cool-down ends.
    assert_eq!(
        a.next_deadline(),
        Some(tokio::time::Instant::now() + STOCK_TTL)
    );
    advance(STOCK_TTL).await;
    a.tick(c.now());
    assert_eq!(
        a.next_deadline(),
        Some(tokio::time::Instant::now() + (COOLDOWN - STOCK_TTL))
    );
}

#[tokio::test(start_paused = true)]
async fn the_number_of_tracked_products_is_capped() {
    let (mut a, c) = fixture("[]");
    a.set_paused(c.now(), true);
    a.connect(c.now(), &w("w1"), 1);
    let many: Vec<Observation> = (0..MAX_PRODUCTS)
        .map(|i| in_stock(&format!("p{i:05}")))
        .collect();
    report(&mut a, &c, "w1", 1, &many);
    let err = a
        .report(
            c.now(),
            &w("w1"),
            1,
            None,
            &[in_stock("one-too-many"), in_stock("p00000")],
        )
        .unwrap_err();
    assert!(matches!(err, SlotError::Full(_)), "{err}");
    let status = a.status(c.now());
    assert_eq!(status.products.len(), MAX_PRODUCTS);
    assert_eq!(status.products[0].tcin, t("p00000"));
    assert_eq!(status.products[0].state, ProductState::Queued);
    assert!(matches!(
        a.acquire(c.now(), &t("another"), &w("w1"), "r1"),
        Err(SlotError::Full(_))
    ));
    // A product already tracked is still answered.
    assert_eq!(
        refused(acquire(&mut a, &c, "p00001", "w1", "r2")),
        Refusal::Paused
    );
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_whose_lease_token_is_not_below_the_next_token_is_refused() {
    let (mut a, c) = fixture(ABC);
    granted(acquire(&mut a, &c, "A", "w1", "r1"));
    let mut snap = snapshot(&a, c.now());
    snap.next_fencing_token = 1;
    let err = restore(snap, catalog(ABC), timing(false), c.now()).unwrap_err();
    assert!(matches!(err, SlotError::Invalid(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn status_shows_each_watcher_with_its_last_report() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w2"), 2);
    advance(Duration::from_secs(3)).await;
    a.connect(c.now(), &w("w1"), 1);
    a.report(
        c.now(),
        &w("w1"),
        1,
        Some(vec![t("A"), t("B")]),
        &[out_of_stock("A")],
    )
    .unwrap();
    let watchers = a.status(c.now()).watchers;
    assert_eq!(
        watchers,
        [
            WatcherStatus {
                watcher_id: w("w1"),
                connected: true,
                last_report_unix_ms: T0 + 3_000,
                connected_since_unix_ms: T0 + 3_000,
                reports: 1,
                polling: vec![t("A"), t("B")],
                poll_interval: None,
                poll_phase: None,
                source_block: None,
            },
            WatcherStatus {
                watcher_id: w("w2"),
                connected: true,
                last_report_unix_ms: 0,
                connected_since_unix_ms: T0,
                reports: 0,
                polling: vec![],
                poll_interval: None,
                poll_phase: None,
                source_block: None,
            },
        ]
    );
    assert_eq!(a.status(c.now()).counters.observations, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_acquire_for_a_new_id_leaves_no_product_behind() {
    let (mut a, c) = fixture(r#"[{"tcin":"100"}]"#);
    let held = granted(acquire(&mut a, &c, "100", "w1", ""));
    for i in 0..50 {
        let answer = acquire(&mut a, &c, &format!("random-{i}"), "w2", "");
        assert!(matches!(
            refused(answer),
            Refusal::AnotherPurchaseActive { .. }
        ));
    }
    let status = a.status(c.now());
    assert_eq!(status.products.len(), 1, "refused ids are not tracked");
    // A granted new id is tracked, as it must be while it holds the slot.
    release(&mut a, &c, &held, Outcome::Aborted);
    granted(acquire(&mut a, &c, "new-one", "w2", ""));
    assert_eq!(a.status(c.now()).products.len(), 2);
}

fn block(kind: SourceBlockKind, since: u64) -> Option<SourceBlock> {
    Some(SourceBlock {
        kind,
        since_unix_ms: since,
        paused_until_unix_ms: since + 600_000,
        tracking_url: (kind == SourceBlockKind::Captcha).then(|| "/captcha?trackingId=t1".into()),
        source: Box::default(),
    })
}

/// The `SOURCE_*` events a call made.
fn source_events(a: &mut Arbiter) -> Vec<Event> {
    a.take_effects()
        .events
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::SourceBlocked | EventKind::SourceUnblocked
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_block_episode_is_one_event_when_it_starts_and_one_when_it_ends() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.take_effects();
    // Not blocked: nothing.
    a.set_source_block(c.now(), &w("w1"), 1, None);
    assert!(source_events(&mut a).is_empty());
    // A captcha: one event naming the watcher, the kind, the pause and the URL.
    a.set_source_block(c.now(), &w("w1"), 1, block(SourceBlockKind::Captcha, T0));
    let e = source_events(&mut a);
    assert_eq!(kinds(&e), [EventKind::SourceBlocked]);
    assert_eq!(e[0].watcher_id, Some(w("w1")));
    assert!(e[0].detail.starts_with("captcha: "), "{}", e[0].detail);
    assert!(e[0].detail.contains("paused for 10m"), "{}", e[0].detail);
    assert!(
        e[0].detail.contains("/captcha?trackingId=t1"),
        "{}",
        e[0].detail
    );
    let status = a.status(c.now());
    let shown = status.watchers[0].source_block.as_ref().expect("shown");
    assert_eq!(shown.kind, SourceBlockKind::Captcha);
    // Repeated, a new probe's pause, another block kind: the same episode.
    a.set_source_block(c.now(), &w("w1"), 1, block(SourceBlockKind::Captcha, T0));
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::Captcha, T0 + 1),
    );
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::PerimeterX, T0 + 2),
    );
    assert!(source_events(&mut a).is_empty());
    assert_eq!(
        a.status(c.now()).watchers[0]
            .source_block
            .as_ref()
            .unwrap()
            .kind,
        SourceBlockKind::PerimeterX
    );
    // Away and back still blocked: no new episode (the block is kept).
    a.disconnect(c.now(), &w("w1"), 1, "gone");
    assert!(a.status(c.now()).watchers[0].source_block.is_some());
    a.connect(c.now(), &w("w1"), 2);
    a.set_source_block(
        c.now(),
        &w("w1"),
        2,
        block(SourceBlockKind::PerimeterX, T0 + 2),
    );
    assert!(source_events(&mut a).is_empty());
    // A replaced stream's last words change nothing.
    a.set_source_block(c.now(), &w("w1"), 1, None);
    assert!(source_events(&mut a).is_empty());
    // Over: one event, and the status is clear.
    a.set_source_block(c.now(), &w("w1"), 2, None);
    let e = source_events(&mut a);
    assert_eq!(kinds(&e), [EventKind::SourceUnblocked]);
    assert!(
        e[0].detail.starts_with("perimeterx: over"),
        "{}",
        e[0].detail
    );
    assert!(a.status(c.now()).watchers[0].source_block.is_none());
    // A new block is a new episode.
    a.set_source_block(
        c.now(),
        &w("w1"),
        2,
        block(SourceBlockKind::Forbidden, T0 + 9),
    );
    assert_eq!(kinds(&source_events(&mut a)), [EventKind::SourceBlocked]);
}

#[tokio::test(start_paused = true)]
async fn a_back_off_is_shown_but_is_no_block() {
    let (mut a, c) = fixture(ABC);
    a.connect(c.now(), &w("w1"), 1);
    a.take_effects();
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::RateLimited, T0),
    );
    assert!(source_events(&mut a).is_empty());
    let shown = a.status(c.now()).watchers[0].source_block.clone().unwrap();
    assert!(!shown.is_block());
    // A captcha after the back-off starts an episode; a back-off after the
    // captcha ends it (the source answers, if only to throttle).
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::Captcha, T0 + 1),
    );
    assert_eq!(kinds(&source_events(&mut a)), [EventKind::SourceBlocked]);
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::ServerError, T0 + 2),
    );
    let e = source_events(&mut a);
    assert_eq!(kinds(&e), [EventKind::SourceUnblocked]);
    assert!(
        e[0].detail.contains("backing off: server_error"),
        "{}",
        e[0].detail
    );
    // A retired endpoint is a block too.
    a.set_source_block(
        c.now(),
        &w("w1"),
        1,
        block(SourceBlockKind::EndpointGone, T0 + 3),
    );
    let e = source_events(&mut a);
    assert_eq!(kinds(&e), [EventKind::SourceBlocked]);
    assert!(e[0].detail.contains("--target-endpoint"), "{}", e[0].detail);
    // No block of an unknown watcher is kept.
    a.set_source_block(
        c.now(),
        &w("nobody"),
        9,
        block(SourceBlockKind::Captcha, T0),
    );
    assert!(source_events(&mut a).is_empty());
}

mod budget;
