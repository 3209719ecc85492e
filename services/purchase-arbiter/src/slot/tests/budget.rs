//! The spending limit: granting counts spend and the reservation in
//! flight, a product that does not fit is held back (OVER_BUDGET) and the
//! next one that fits is granted, spend rolls off with the window, and the
//! record survives a restart.

use super::*;

/// Products $30 (A) and $25 (B) and one without a price (C), in that
/// priority order, under `budget` (the JSON object).
fn budget_fixture(products: &str, budget: &str) -> (Arbiter, Clock) {
    let list = PriorityList::parse(
        &format!(r#"{{"products":{products},"budget":{budget}}}"#),
        "test.json",
    )
    .unwrap();
    let clock = Clock::starting_at(T0);
    let mut a = Arbiter::new(list, timing(false), clock.now());
    a.take_effects();
    a.connect(clock.now(), &w("w1"), 1);
    a.take_effects();
    (a, clock)
}

const AB: &str = r#"[{"tcin":"A"},{"tcin":"B"},{"tcin":"C"}]"#;

fn release_paid(a: &mut Arbiter, c: &Clock, l: &ActiveLease, outcome: Outcome, paid: Option<u64>) {
    a.release_paid(
        c.now(),
        &l.lease_id,
        l.token,
        outcome,
        "test",
        paid.map(Price::from_cents),
    )
    .unwrap();
}

fn events_of(a: &mut Arbiter) -> Vec<Event> {
    a.take_effects().events
}

#[tokio::test(start_paused = true)]
async fn with_50_dollars_of_30_and_25_only_one_is_bought_and_the_other_is_over_budget() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(
        &mut a,
        &c,
        "w1",
        1,
        &[priced("A", 3_000), priced("B", 2_500)],
    );
    let (_, _, la) = one_pushed_grant(&mut a);
    assert_eq!(la.tcin.as_str(), "A");
    // Counting the $30 in flight, $25 does not fit in the $20 left.
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    let held = product(&a, &c, "B").held_back;
    assert!(held.contains("$20.00 left of $50.00"), "{held}");
    let b = a.status(c.now()).budget;
    assert_eq!(b.reserved, Some(Price::from_cents(3_000)));
    assert_eq!(b.left, Some(Price::from_cents(2_000)));
    assert_eq!(b.held_back, 1);
    release(&mut a, &c, &la, Outcome::Purchased);
    let events = events_of(&mut a);
    assert!(
        !events.iter().any(|e| e.kind == EventKind::Granted),
        "nothing more may be granted: {events:?}"
    );
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    let b = a.status(c.now()).budget;
    assert_eq!(
        (b.spent, b.purchases, b.reserved),
        (Price::from_cents(3_000), 1, None)
    );
    // B stays held back however often it is reported, and AcquirePurchase
    // says why.
    report(&mut a, &c, "w1", 1, &[priced("B", 2_500)]);
    assert!(a.lease().is_none());
    let r = refused(acquire(&mut a, &c, "B", "w1", "b1"));
    assert_eq!(r.reason(), "over_budget");
    assert!(r.detail().contains("$20.00 left"), "{}", r.detail());
}

#[tokio::test(start_paused = true)]
async fn the_next_product_that_fits_is_granted_instead() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(&mut a, &c, "w1", 1, &[priced("A", 3_000)]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Purchased);
    a.take_effects();
    // $25 (B) does not fit in $20; $15 (C, lower priority) does.
    report(
        &mut a,
        &c,
        "w1",
        1,
        &[priced("B", 2_500), priced("C", 1_500)],
    );
    let (_, _, lc) = one_pushed_grant(&mut a);
    assert_eq!(lc.tcin.as_str(), "C");
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
}

#[tokio::test(start_paused = true)]
async fn a_checkout_that_fails_frees_its_reservation_and_room_comes_back() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(
        &mut a,
        &c,
        "w1",
        1,
        &[priced("A", 3_000), priced("B", 2_500)],
    );
    let events = a.history_from(0).cloned().collect::<Vec<_>>();
    let la = a.lease().cloned().expect("A granted");
    a.take_effects();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::BudgetExhausted)
            .count(),
        1,
        "{events:?}"
    );
    release(&mut a, &c, &la, Outcome::Failed);
    let events = events_of(&mut a);
    let ks = kinds(&events);
    assert!(ks.contains(&EventKind::BudgetAvailable), "{ks:?}");
    let granted_b = events
        .iter()
        .find(|e| e.kind == EventKind::Granted)
        .expect("B granted once A's reservation was freed");
    assert_eq!(granted_b.tcin.as_ref().unwrap().as_str(), "B");
    let b = a.status(c.now()).budget;
    assert_eq!(b.spent, Price::from_cents(0));
    assert_eq!(b.reserved, Some(Price::from_cents(2_500)));
}

#[tokio::test(start_paused = true)]
async fn two_purchases_allowed_over_three_products_then_none() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_purchases":2}"#);
    report(
        &mut a,
        &c,
        "w1",
        1,
        &[in_stock("A"), in_stock("B"), in_stock("C")],
    );
    for want in ["A", "B"] {
        let (_, _, l) = one_pushed_grant(&mut a);
        assert_eq!(l.tcin.as_str(), want);
        release(&mut a, &c, &l, Outcome::Purchased);
    }
    assert!(pushed_grants(&mut a).is_empty());
    assert!(a.lease().is_none());
    assert_eq!(state(&a, &c, "C"), ProductState::OverBudget);
    assert!(product(&a, &c, "C").held_back.contains("2 of 2 purchases"));
    assert_eq!(a.status(c.now()).budget.purchases_left, Some(0));
}

#[tokio::test(start_paused = true)]
async fn with_a_max_spend_a_product_without_a_price_is_never_granted() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":500}"#);
    report(&mut a, &c, "w1", 1, &[in_stock("C")]);
    assert!(pushed_grants(&mut a).is_empty());
    assert_eq!(state(&a, &c, "C"), ProductState::OverBudget);
    assert!(product(&a, &c, "C").held_back.contains("no price known"));
    // Once a price is reported, it fits.
    report(&mut a, &c, "w1", 1, &[priced("C", 100)]);
    assert_eq!(one_pushed_grant(&mut a).2.tcin.as_str(), "C");
}

#[tokio::test(start_paused = true)]
async fn the_price_paid_counts_instead_of_the_reserved_one() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(&mut a, &c, "w1", 1, &[priced("A", 3_000)]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release_paid(&mut a, &c, &la, Outcome::Purchased, Some(3_500));
    assert_eq!(a.status(c.now()).budget.spent, Price::from_cents(3_500));
    let released = events_of(&mut a)
        .into_iter()
        .find(|e| e.kind == EventKind::Released)
        .unwrap();
    assert!(
        released.detail.contains("$35.00 spent"),
        "{}",
        released.detail
    );
}

#[tokio::test(start_paused = true)]
async fn spend_rolls_off_as_the_window_slides() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_purchases":1,"window":"60s"}"#);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Purchased);
    let bought_at = c.now().unix_ms;
    // B in stock: held back for a minute after A's purchase.
    advance(Duration::from_secs(20)).await;
    report(&mut a, &c, "w1", 1, &[in_stock("B")]);
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    assert_eq!(
        a.status(c.now()).budget.next_roll_off_unix_ms,
        Some(bought_at + 60_000)
    );
    // Once A's report is stale, the roll-off is the next deadline: the
    // task wakes up for it (B's report is fresh until 65 s).
    advance(Duration::from_secs(26)).await;
    a.tick(c.now());
    assert_eq!(
        a.next_deadline(),
        Some(c.now().mono + Duration::from_secs(14))
    );
    advance(Duration::from_secs(14) - MS).await;
    a.tick(c.now());
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    a.take_effects();
    advance(MS).await;
    a.tick(c.now());
    let (_, _, lb) = one_pushed_grant(&mut a);
    assert_eq!(lb.tcin.as_str(), "B");
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_counts_as_spent_since_its_checkout_may_have_bought() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(&mut a, &c, "w1", 1, &[priced("A", 3_000)]);
    one_pushed_grant(&mut a);
    advance(LEASE_TTL).await;
    a.tick(c.now());
    let b = a.status(c.now()).budget;
    assert_eq!((b.spent, b.purchases), (Price::from_cents(3_000), 1));
    let expired = events_of(&mut a)
        .into_iter()
        .find(|e| e.kind == EventKind::Expired)
        .unwrap();
    assert!(
        expired.detail.contains("counted as spent"),
        "{}",
        expired.detail
    );
}

#[tokio::test(start_paused = true)]
async fn a_grant_never_pushed_spends_nothing() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_spend":50}"#);
    report(&mut a, &c, "w1", 1, &[priced("A", 3_000)]);
    let (_, _, la) = one_pushed_grant(&mut a);
    a.expire_unpushed(c.now(), &la.lease_id);
    let b = a.status(c.now()).budget;
    assert_eq!(
        (b.spent, b.purchases, b.reserved),
        (Price::from_cents(0), 0, None)
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_the_spend_and_the_reservation_in_flight() {
    let products = AB;
    let (mut a, c) = budget_fixture(products, r#"{"max_spend":50}"#);
    report(&mut a, &c, "w1", 1, &[priced("B", 2_500)]);
    let (_, _, lb) = one_pushed_grant(&mut a);
    release(&mut a, &c, &lb, Outcome::Purchased);
    report(&mut a, &c, "w1", 1, &[priced("C", 1_000)]);
    let (_, _, lc) = one_pushed_grant(&mut a);
    // Killed here, between grant and release.
    let snap = snapshot(&a, c.now());
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    let list = a.catalog().clone();
    let clock = Clock::starting_at(c.now().unix_ms + 1_000);
    let mut b = restore(back, list, timing(false), clock.now()).unwrap();
    let st = b.status(clock.now()).budget;
    assert_eq!(st.spent, Price::from_cents(2_500));
    assert_eq!(st.reserved, Some(Price::from_cents(1_000)));
    assert_eq!(st.left, Some(Price::from_cents(1_500)));
    // The carried lease's release turns its reservation into spend, once.
    b.release(clock.now(), &lc.lease_id, lc.token, Outcome::Purchased, "")
        .unwrap();
    assert!(
        b.release(clock.now(), &lc.lease_id, lc.token, Outcome::Purchased, "")
            .is_ok()
    );
    let st = b.status(clock.now()).budget;
    assert_eq!(
        (st.spent, st.purchases, st.reserved),
        (Price::from_cents(3_500), 2, None)
    );
}

#[tokio::test(start_paused = true)]
async fn an_operator_raises_the_limit_and_resets_the_spend_with_a_reason() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_purchases":1}"#);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Purchased);
    report(&mut a, &c, "w1", 1, &[in_stock("B")]);
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    a.take_effects();
    assert!(matches!(
        a.set_budget(c.now(), None, false, false, "why not"),
        Err(SlotError::Invalid(_))
    ));
    assert!(matches!(
        a.set_budget(c.now(), None, false, true, "  "),
        Err(SlotError::Invalid(_))
    ));
    let raised = BudgetLimits {
        max_purchases: Some(2),
        ..Default::default()
    };
    a.set_budget(
        c.now(),
        Some(Some(raised)),
        false,
        false,
        "second box for a friend",
    )
    .unwrap();
    let events = events_of(&mut a);
    let changed = events
        .iter()
        .find(|e| e.kind == EventKind::BudgetChanged)
        .unwrap();
    assert!(
        changed.detail.contains("second box for a friend"),
        "{}",
        changed.detail
    );
    assert!(events.iter().any(|e| e.kind == EventKind::Granted));
    let st = a.status(c.now()).budget;
    assert!(matches!(
        st.source,
        restock_domain::BudgetSource::Operator { .. }
    ));
    // Reset: the spend is forgotten, the one in flight keeps its place.
    a.set_budget(c.now(), None, false, true, "new month")
        .unwrap();
    let st = a.status(c.now()).budget;
    assert_eq!((st.purchases, st.purchases_left), (0, Some(1)));
    // A product config whose budget changes replaces the operator's limits.
    let list = PriorityList::parse(
        &format!(r#"{{"products":{AB},"budget":{{"max_purchases":5}}}}"#),
        "test.json",
    )
    .unwrap();
    a.reload(c.now(), list);
    let st = a.status(c.now()).budget;
    assert_eq!(st.source, restock_domain::BudgetSource::Config);
    assert_eq!(st.limits.unwrap().max_purchases, Some(5));
}

#[tokio::test(start_paused = true)]
async fn spend_is_recorded_without_a_budget_and_counts_once_one_is_set() {
    let (mut a, c) = fixture(AB);
    a.connect(c.now(), &w("w1"), 1);
    report(&mut a, &c, "w1", 1, &[priced("A", 4_000)]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Purchased);
    let st = a.status(c.now()).budget;
    assert!(st.limits.is_none());
    assert_eq!(st.spent, Price::from_cents(4_000));
    let limits = BudgetLimits {
        max_spend: Some(Price::from_cents(5_000)),
        ..Default::default()
    };
    a.set_budget(c.now(), Some(Some(limits)), false, false, "cap the card")
        .unwrap();
    report(&mut a, &c, "w1", 1, &[priced("B", 2_000)]);
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
}

#[tokio::test(start_paused = true)]
async fn lifting_every_limit_lets_the_held_products_go_and_ends_the_episode() {
    let (mut a, c) = budget_fixture(AB, r#"{"max_purchases":1}"#);
    report(&mut a, &c, "w1", 1, &[in_stock("A")]);
    let (_, _, la) = one_pushed_grant(&mut a);
    release(&mut a, &c, &la, Outcome::Purchased);
    report(&mut a, &c, "w1", 1, &[in_stock("B")]);
    assert_eq!(state(&a, &c, "B"), ProductState::OverBudget);
    a.take_effects();
    a.set_budget(c.now(), Some(None), false, false, "no limit tonight")
        .unwrap();
    let fx = a.take_effects();
    let ks = kinds(&fx.events);
    assert!(ks.contains(&EventKind::BudgetAvailable), "{ks:?}");
    assert!(ks.contains(&EventKind::Granted), "{ks:?}");
    assert!(a.status(c.now()).budget.limits.is_none());
    // Spend is still recorded with no limit in force.
    assert_eq!(a.status(c.now()).budget.purchases, 1);
}
