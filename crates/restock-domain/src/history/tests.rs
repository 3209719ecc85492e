//! The checker fed made-up histories: each problem it claims to catch, and
//! the healthy histories it must not complain about. (These began as the
//! tests of `restockctl monitor`'s own checker, which this one replaced.)

use std::time::Duration;

use super::{Checker, Cycle, CycleEnd, Notice, ProblemKind, build};
use crate::{
    event::{Event, EventKind as Kind},
    ids::{LeaseId, WatcherId},
    lease::Lease,
    product::{Outcome, ProductState as St},
    product_id::ProductId,
    status::Status,
};

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1_000;

fn checker() -> Checker {
    Checker::new(Duration::from_secs(120))
}

fn t(tcin: &str) -> ProductId {
    ProductId::parse(tcin).unwrap()
}

/// A lease held by watcher `w1`.
fn lease(id: &str, tcin: &str, token: u64, granted_at: u64) -> Lease {
    build::lease(
        &LeaseId::parse(id).unwrap(),
        &t(tcin),
        &WatcherId::parse("w1").unwrap(),
        token,
        granted_at,
    )
}

/// Products in priority order (1 = first), all configured.
fn snapshot(seq: u64, products: &[(&str, St)], lease: Option<Lease>) -> Status {
    let products: Vec<(ProductId, St)> = products.iter().map(|(p, s)| (t(p), *s)).collect();
    build::status(seq, &products, lease)
}

fn ready3(seq: u64) -> Status {
    snapshot(
        seq,
        &[("100", St::Ready), ("200", St::Ready), ("300", St::Ready)],
        None,
    )
}

fn ev(seq: u64, at: u64, kind: Kind, tcin: &str, from: St, to: St) -> Event {
    build::product_event(seq, at, kind, &t(tcin), from, to)
}

fn granted(seq: u64, at: u64, tcin: &str, lease_id: &str, token: u64, from: St) -> Event {
    build::granted(seq, at, &lease(lease_id, tcin, token, at), from)
}

fn released(seq: u64, at: u64, tcin: &str, lease_id: &str, token: u64) -> Event {
    build::released(
        seq,
        at,
        &lease(lease_id, tcin, token, 0),
        Outcome::Purchased,
    )
}

fn renewed(seq: u64, at: u64, tcin: &str, lease_id: &str, token: u64) -> Event {
    build::renewed(seq, at, &lease(lease_id, tcin, token, 0))
}

/// Feeds events as if each arrived the moment it happened.
fn feed(m: &mut Checker, events: &[Event]) -> Vec<Notice> {
    events
        .iter()
        .flat_map(|e| m.observe_event(e, e.unix_ms))
        .collect()
}

fn kinds(m: &Checker) -> Vec<ProblemKind> {
    m.problems().iter().map(|p| p.kind).collect()
}

#[test]
fn test_mode_cycles_of_the_top_product_are_clean_and_counted() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let mut seq = 1;
    for i in 0..5u64 {
        let at = T0 + i * 10 * SEC;
        let lease = format!("lease-{}", i + 1);
        feed(
            &mut m,
            &[
                granted(seq + 1, at, "100", &lease, i + 1, St::Ready),
                renewed(seq + 2, at + 100, "100", &lease, i + 1),
                released(seq + 3, at + 200 + i, "100", &lease, i + 1),
            ],
        );
        seq += 3;
    }
    m.observe_status(&ready3(seq), T0 + 60 * SEC);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert!(m.warnings().is_empty(), "{:#?}", m.warnings());
    assert_eq!(m.completed_cycles(), 5);
    assert_eq!(m.renewals(), 5);
    let durations: Vec<u64> = m.cycles().iter().filter_map(Cycle::duration_ms).collect();
    assert_eq!(durations, [200, 201, 202, 203, 204]);
    assert!(
        m.cycles()
            .iter()
            .all(|c| c.outcome() == Some(Outcome::Purchased))
    );
}

#[test]
fn a_grant_while_a_higher_priority_product_is_queued_is_a_switch() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            ev(2, T0 + SEC, Kind::Queued, "100", St::Ready, St::Queued),
            granted(3, T0 + 2 * SEC, "200", "lease-1", 1, St::Ready),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ProductSwitch]);
    let p = &m.problems()[0];
    assert_eq!(p.sequence, Some(3));
    assert_eq!(p.tcin, t("200"));
    assert!(
        p.detail.contains("product 200 (priority 2) was granted")
            && p.detail
                .contains("higher-priority product 100 (priority 1) was QUEUED"),
        "{}",
        p.detail
    );
}

#[test]
fn a_lower_priority_product_waiting_and_a_better_one_arriving_mid_cycle_are_fine() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            ev(2, T0 + SEC, Kind::Queued, "300", St::Ready, St::Queued),
            ev(3, T0 + SEC, Kind::Queued, "200", St::Ready, St::Queued),
            // The best queued product wins ...
            granted(4, T0 + SEC, "200", "lease-1", 1, St::Queued),
            // ... and keeps the slot when a better one comes in stock.
            ev(5, T0 + 2 * SEC, Kind::Queued, "100", St::Ready, St::Queued),
            released(6, T0 + 3 * SEC, "200", "lease-1", 1),
            granted(7, T0 + 3 * SEC, "100", "lease-2", 2, St::Queued),
        ],
    );
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
}

#[test]
fn unconfigured_products_rank_after_configured_ones_by_id() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            // "050" is not in the config: it ranks after 300.
            ev(2, T0, Kind::Queued, "300", St::Ready, St::Queued),
            granted(3, T0, "050", "lease-1", 1, St::Ready),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ProductSwitch]);
    assert!(
        m.problems()[0].detail.contains("not in the product config"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn a_release_naming_another_product_than_the_lease_is_a_switch() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            granted(2, T0, "100", "lease-1", 1, St::Ready),
            released(3, T0 + SEC, "200", "lease-1", 1),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ProductSwitch]);
    assert!(
        m.problems()[0].detail.contains(
            "lease lease-1 was granted for product 100 but its RELEASED names product 200"
        ),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn a_grant_while_another_lease_is_held_is_a_concurrent_attempt() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let notices = feed(
        &mut m,
        &[
            granted(2, T0, "100", "lease-1", 1, St::Ready),
            granted(3, T0 + SEC, "200", "lease-2", 2, St::Ready),
            released(4, T0 + 2 * SEC, "100", "lease-1", 1),
            released(5, T0 + 3 * SEC, "200", "lease-2", 2),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ConcurrentAttempt]);
    let p = &m.problems()[0];
    assert_eq!(p.sequence, Some(3));
    assert!(
        p.detail.contains("lease lease-2 for product 200")
            && p.detail
                .contains("lease lease-1 (product 100, watcher w1, token 1) was still held"),
        "{}",
        p.detail
    );
    // Reported live, right after the GRANTED that showed it.
    let live: Vec<String> = notices
        .iter()
        .map(|n| match n {
            Notice::Transition(t) => format!("T{}", t.sequence),
            Notice::Problem(p) => format!("P{:?}", p.sequence),
            Notice::CycleEnded(c) => format!("C{}", c.number),
            Notice::Warning(_) => "W".into(),
        })
        .collect();
    assert_eq!(live, ["T2", "T3", "PSome(3)", "T4", "C1", "T5", "C2"]);
    assert_eq!(m.completed_cycles(), 2);
}

#[test]
fn a_snapshot_with_two_products_attempting_is_a_concurrent_attempt() {
    let mut m = checker();
    let s = snapshot(
        7,
        &[
            ("100", St::Attempting),
            ("200", St::Attempting),
            ("300", St::Ready),
        ],
        None,
    );
    m.observe_status(&s, T0);
    m.observe_status(&s, T0 + 2 * SEC); // reported once
    assert_eq!(kinds(&m), [ProblemKind::ConcurrentAttempt]);
    assert!(
        m.problems()[0]
            .detail
            .contains("2 products ATTEMPTING at once: 100, 200"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn a_snapshot_whose_lease_is_for_another_product_than_the_attempting_one_is_a_switch() {
    let mut m = checker();
    let lease = lease("lease-1", "100", 1, 0);
    let s = snapshot(
        3,
        &[("100", St::Ready), ("200", St::Attempting)],
        Some(lease),
    );
    m.observe_status(&s, T0);
    assert_eq!(kinds(&m), [ProblemKind::ProductSwitch]);
}

#[test]
fn a_purchase_attempting_past_the_limit_is_stuck_even_while_renewed() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            granted(2, T0, "100", "lease-1", 1, St::Ready),
            renewed(3, T0 + 60 * SEC, "100", "lease-1", 1),
            renewed(4, T0 + 119 * SEC, "100", "lease-1", 1),
        ],
    );
    assert!(m.problems().is_empty(), "not yet: {:#?}", m.problems());
    feed(&mut m, &[renewed(5, T0 + 121 * SEC, "100", "lease-1", 1)]);
    feed(&mut m, &[renewed(6, T0 + 150 * SEC, "100", "lease-1", 1)]);
    assert_eq!(kinds(&m), [ProblemKind::StuckPurchase], "reported once");
    assert!(
        m.problems()[0]
            .detail
            .contains("product 100 has been ATTEMPTING for 2m01s"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn a_silent_stuck_purchase_is_found_by_the_snapshots() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(&mut m, &[granted(2, T0, "100", "lease-1", 1, St::Ready)]);
    let attempting = snapshot(
        2,
        &[
            ("100", St::Attempting),
            ("200", St::Ready),
            ("300", St::Ready),
        ],
        Some(lease("lease-1", "100", 1, T0)),
    );
    m.observe_status(&attempting, T0 + 100 * SEC);
    assert!(m.problems().is_empty());
    assert!(m.warnings().is_empty(), "{:#?}", m.warnings());
    let notices = m.observe_status(&attempting, T0 + 125 * SEC);
    assert_eq!(kinds(&m), [ProblemKind::StuckPurchase]);
    assert!(matches!(notices.as_slice(), [Notice::Problem(_)]));
}

#[test]
fn a_lease_held_before_the_monitor_started_counts_from_its_grant() {
    let mut m = checker();
    let lease = lease("lease-9", "100", 9, T0 - 130 * SEC);
    let s = snapshot(
        40,
        &[("100", St::Attempting), ("200", St::Ready)],
        Some(lease),
    );
    m.observe_status(&s, T0);
    assert_eq!(kinds(&m), [ProblemKind::StuckPurchase]);
    feed(&mut m, &[released(41, T0 + SEC, "100", "lease-9", 9)]);
    assert_eq!(m.completed_cycles(), 1);
    let c = &m.cycles()[0];
    assert!(!c.start_observed);
    assert_eq!(c.duration_ms(), Some(131 * SEC));
}

#[test]
fn a_product_queued_with_the_slot_free_past_the_limit_is_stuck() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[ev(2, T0 + SEC, Kind::Queued, "200", St::Ready, St::Queued)],
    );
    let s = snapshot(
        2,
        &[("100", St::Ready), ("200", St::Queued), ("300", St::Ready)],
        None,
    );
    m.observe_status(&s, T0 + 100 * SEC);
    assert!(m.problems().is_empty());
    m.observe_status(&s, T0 + 122 * SEC);
    assert_eq!(kinds(&m), [ProblemKind::StuckPurchase]);
    assert!(
        m.problems()[0]
            .detail
            .contains("QUEUED for 2m01s (since 2023-11-14T22:13:21.000Z) with the slot free"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn waiting_behind_other_purchases_or_a_pause_is_not_stuck() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    // 100 cycles forever (TEST_MODE) while 300 waits in stock.
    let mut events = vec![ev(2, T0, Kind::Queued, "300", St::Ready, St::Queued)];
    let mut seq = 2;
    for i in 0..30u64 {
        let at = T0 + i * 10 * SEC;
        let lease = format!("lease-{}", i + 1);
        events.push(granted(seq + 1, at, "100", &lease, i + 1, St::Ready));
        events.push(released(seq + 2, at + 5 * SEC, "100", &lease, i + 1));
        seq += 2;
    }
    // Then the operator pauses: 300 waits, by design.
    events.push(build::plain(seq + 1, T0 + 300 * SEC, Kind::Paused));
    feed(&mut m, &events);
    let mut s = snapshot(
        seq + 1,
        &[("100", St::Ready), ("200", St::Ready), ("300", St::Queued)],
        None,
    );
    s.paused = true;
    m.observe_status(&s, T0 + 600 * SEC);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert_eq!(m.completed_cycles(), 30);
}

#[test]
fn a_reused_fencing_token_is_reported() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            granted(2, T0, "100", "lease-1", 5, St::Ready),
            released(3, T0 + SEC, "100", "lease-1", 5),
            granted(4, T0 + 2 * SEC, "100", "lease-2", 5, St::Ready),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::FencingTokenReused]);
}

#[test]
fn missed_events_pause_the_state_checks_until_a_snapshot_resyncs() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(&mut m, &[granted(2, T0, "100", "lease-1", 1, St::Ready)]);
    // #3 (lease-1 released) is lost; without care lease-2 would look like an
    // overlap.
    feed(
        &mut m,
        &[granted(4, T0 + SEC, "200", "lease-2", 2, St::Ready)],
    );
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert!(
        m.warnings()[0]
            .message
            .starts_with("events #3..#3 were missed"),
        "{:#?}",
        m.warnings()
    );
    let lease2 = lease("lease-2", "200", 2, T0 + SEC);
    let s = snapshot(
        4,
        &[
            ("100", St::Ready),
            ("200", St::Attempting),
            ("300", St::Ready),
        ],
        Some(lease2),
    );
    m.observe_status(&s, T0 + 2 * SEC);
    assert!(
        m.warnings()
            .iter()
            .any(|w| w.message.starts_with("tracking resynchronised")),
        "{:#?}",
        m.warnings()
    );
    // Checks are back: a new grant while lease-2 is held is an overlap.
    feed(
        &mut m,
        &[granted(5, T0 + 3 * SEC, "300", "lease-3", 3, St::Ready)],
    );
    assert_eq!(kinds(&m), [ProblemKind::ConcurrentAttempt]);
    // lease-1's end was never seen: not counted as a completed cycle.
    assert!(matches!(m.cycles()[0].end, CycleEnd::Unseen { .. }));
}

#[test]
fn a_snapshot_ahead_of_the_events_waits_for_them() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let reload = build::plain(2, T0, Kind::ConfigReloaded).detail("3 products");
    feed(&mut m, &[reload]);
    // The new config puts 300 first; this snapshot arrives before #3.
    let s = snapshot(
        3,
        &[("300", St::Queued), ("100", St::Ready), ("200", St::Ready)],
        None,
    );
    m.observe_status(&s, T0 + 10);
    feed(
        &mut m,
        &[
            ev(3, T0 + 5, Kind::Queued, "300", St::Ready, St::Queued),
            granted(4, T0 + 20, "100", "lease-1", 1, St::Ready),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ProductSwitch]);
    assert!(
        m.problems()[0].detail.contains("product 300 (priority 1)"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn old_events_replayed_after_a_reconnect_do_not_look_stuck() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    // The stream was down for five minutes; the history comes in at once.
    let late = T0 + 300 * SEC;
    for e in [
        granted(2, T0 + SEC, "100", "lease-1", 1, St::Ready),
        released(3, T0 + 6 * SEC, "100", "lease-1", 1),
    ] {
        m.observe_event(&e, late);
    }
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert_eq!(m.completed_cycles(), 1);
}

#[test]
fn an_arbiter_restart_keeps_the_lease_and_is_not_a_gap() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let started = build::plain(1001, T0 + 2 * SEC, Kind::ArbiterStarted).detail("state restored");
    feed(
        &mut m,
        &[
            ev(2, T0, Kind::Queued, "200", St::Ready, St::Queued),
            granted(3, T0 + SEC, "100", "lease-1", 1, St::Ready),
            started,
            released(1002, T0 + 3 * SEC, "100", "lease-1", 1),
            // After the restart 200 is READY again until a watcher reports.
            granted(1003, T0 + 4 * SEC, "300", "lease-2", 2, St::Ready),
        ],
    );
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert!(m.warnings().is_empty(), "{:#?}", m.warnings());
    assert_eq!(m.completed_cycles(), 1);
}

#[test]
fn a_lost_grant_after_a_restart_is_an_overlap() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    feed(
        &mut m,
        &[
            granted(2, T0, "100", "lease-1", 1, St::Ready),
            build::plain(1001, T0 + SEC, Kind::ArbiterStarted),
            granted(1002, T0 + 2 * SEC, "200", "lease-2", 2, St::Ready),
        ],
    );
    assert_eq!(kinds(&m), [ProblemKind::ConcurrentAttempt]);
}

#[test]
fn repeated_events_count_once() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let g = granted(2, T0, "100", "lease-1", 1, St::Ready);
    feed(&mut m, &[g.clone(), g]);
    assert!(m.problems().is_empty());
    assert_eq!(m.events_seen(), 1);
    assert_eq!(m.cycles().len(), 1);
}

#[test]
fn arbiter_time_is_estimated_from_the_events() {
    // The monitor's clock runs 30 s ahead of the arbiter's.
    let skew = 30 * SEC;
    let mut m = checker();
    m.observe_status(&ready3(1), T0 + skew);
    m.observe_event(&granted(2, T0, "100", "lease-1", 1, St::Ready), T0 + skew);
    let attempting = snapshot(
        2,
        &[
            ("100", St::Attempting),
            ("200", St::Ready),
            ("300", St::Ready),
        ],
        Some(lease("lease-1", "100", 1, T0)),
    );
    // 100 s after the grant by the arbiter's clock: not stuck yet, although
    // the local clock says 130 s.
    m.observe_status(&attempting, T0 + skew + 100 * SEC);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    m.observe_status(&attempting, T0 + skew + 121 * SEC);
    assert_eq!(kinds(&m), [ProblemKind::StuckPurchase]);
}

// ----- the lease bookkeeping the fault suite relies on -----

/// A history from the arbiter's first event, as the fault suite reads it.
fn whole_history(events: &[Event]) -> Checker {
    let mut all = vec![build::plain(1, T0 - SEC, Kind::ArbiterStarted).detail("fresh state")];
    all.extend_from_slice(events);
    Checker::replay(&all, Duration::from_secs(120))
}

#[test]
fn a_renewal_or_an_end_after_the_lease_ended_is_a_stale_lease_accepted() {
    let m = whole_history(&[
        granted(2, T0, "100", "lease-1", 1, St::Ready),
        released(3, T0 + SEC, "100", "lease-1", 1),
        renewed(4, T0 + 2 * SEC, "100", "lease-1", 1),
        build::expired(5, T0 + 3 * SEC, &lease("lease-1", "100", 1, T0)),
    ]);
    assert_eq!(
        kinds(&m),
        [
            ProblemKind::StaleLeaseAccepted,
            ProblemKind::StaleLeaseAccepted
        ]
    );
    assert!(
        m.problems()[0]
            .detail
            .starts_with("RENEWED of lease lease-1 (product 100, token 1) after the lease ended (RELEASED at 2023-11-14T22:13:21.000Z)"),
        "{}",
        m.problems()[0].detail
    );
    assert_eq!(m.problems()[1].sequence, Some(5));
    // The first end stands; the later ones change nothing.
    assert_eq!(m.completed_cycles(), 1);
    assert_eq!(m.cycles()[0].outcome(), Some(Outcome::Purchased));
}

#[test]
fn a_lease_event_with_another_token_than_its_grant_is_a_stale_token_accepted() {
    let m = whole_history(&[
        granted(2, T0, "100", "lease-1", 4, St::Ready),
        renewed(3, T0 + SEC, "100", "lease-1", 3),
        released(4, T0 + 2 * SEC, "100", "lease-1", 4),
    ]);
    assert_eq!(kinds(&m), [ProblemKind::StaleLeaseAccepted]);
    assert!(
        m.problems()[0]
            .detail
            .contains("granted with fencing token 4 but its RENEWED carries token 3"),
        "{}",
        m.problems()[0].detail
    );
}

#[test]
fn in_a_whole_history_an_unknown_lease_was_never_granted() {
    let m = whole_history(&[released(2, T0, "100", "lease-7", 7)]);
    assert_eq!(kinds(&m), [ProblemKind::LeaseNeverGranted]);
    assert!(m.warnings().is_empty(), "{:#?}", m.warnings());

    // Started mid-history, the grant may have come before: a warning.
    let mut m = checker();
    m.observe_status(&ready3(40), T0);
    feed(&mut m, &[released(41, T0, "100", "lease-7", 7)]);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert!(
        m.warnings()[0].message.contains("whose grant was not seen"),
        "{:#?}",
        m.warnings()
    );
}

#[test]
fn after_a_gap_even_a_whole_history_is_not_sure_of_unknown_leases() {
    let mut m = whole_history(&[granted(2, T0, "100", "lease-1", 1, St::Ready)]);
    // #3 and #4 (lease-1's end, lease-2's grant) are lost.
    feed(&mut m, &[released(5, T0 + SEC, "200", "lease-2", 2)]);
    m.observe_status(&ready3(5), T0 + 2 * SEC);
    feed(&mut m, &[released(6, T0 + 3 * SEC, "300", "lease-3", 3)]);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
}

#[test]
fn a_lease_event_that_does_not_name_its_lease_is_a_warning() {
    let mut bare = build::plain(2, T0, Kind::Granted);
    bare.tcin = Some(t("100"));
    let m = whole_history(&[bare, granted(3, T0 + SEC, "100", "lease-1", 1, St::Ready)]);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert_eq!(m.cycles().len(), 1);
    assert!(
        m.warnings()[0]
            .message
            .starts_with("event #2 (GRANTED) does not name its lease"),
        "{:#?}",
        m.warnings()
    );
}

#[test]
fn a_replayed_history_keeps_each_cycle_s_renewals_and_end() {
    let l = lease("lease-1", "100", 1, T0);
    let mut withdrawn = build::released(4, T0 + 5 * SEC, &l, Outcome::Aborted);
    withdrawn.detail = "grant could not be delivered".into();
    let m = whole_history(&[
        build::granted(2, T0, &l, St::Ready),
        build::renewed(3, T0 + 2 * SEC, &l),
        withdrawn,
    ]);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    let c = &m.cycles()[0];
    assert!(c.start_observed);
    assert_eq!(c.extended_at_unix_ms, T0 + 2 * SEC);
    assert_eq!(
        c.end,
        CycleEnd::Seen {
            at_unix_ms: T0 + 5 * SEC,
            kind: Kind::Released,
            outcome: Some(Outcome::Aborted),
            detail: "grant could not be delivered".into(),
        }
    );
    assert_eq!(m.renewals(), 1);
    assert_eq!(m.transitions_total(), 3);
}

#[test]
fn odd_times_and_sequences_do_not_panic() {
    let mut m = checker();
    let mut e = granted(u64::MAX, u64::MAX, "100", "lease-1", u64::MAX, St::Ready);
    m.observe_event(&e, 0);
    e.sequence = 1;
    m.observe_event(&e, u64::MAX);
    m.observe_status(&ready3(u64::MAX), 0);
    m.warn("late", u64::MAX);
    assert_eq!(m.events_seen(), 1);
}

#[test]
fn a_watcher_blocked_mid_cycle_moves_nothing_and_is_no_problem() {
    let mut m = checker();
    m.observe_status(&ready3(1), T0);
    let w = WatcherId::parse("w1").unwrap();
    feed(
        &mut m,
        &[
            granted(2, T0 + SEC, "100", "lease-1", 1, St::Ready),
            build::plain(3, T0 + 2 * SEC, Kind::SourceBlocked)
                .watcher(&w)
                .detail("captcha: the stock source blocks this watcher"),
            build::plain(4, T0 + 3 * SEC, Kind::SourceUnblocked)
                .watcher(&w)
                .detail("captcha: over"),
            released(5, T0 + 4 * SEC, "100", "lease-1", 1),
        ],
    );
    m.observe_status(&ready3(5), T0 + 5 * SEC);
    assert!(m.problems().is_empty(), "{:#?}", m.problems());
    assert!(m.warnings().is_empty(), "{:#?}", m.warnings());
    assert_eq!(m.completed_cycles(), 1);
}
