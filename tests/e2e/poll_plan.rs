//! Poll planning with the real binaries: three watchers polling one product
//! every 300 ms take turns, which the store simulator's poll log
//! (`GET /admin/polls`) shows as polls alternating between them about
//! 100 ms apart; with one killed the two left re-space to about 150 ms, and
//! with it back the turns return. A watcher cut off from the arbiter keeps
//! polling on its own schedule.
//!
//! Timing bounds are wide (a loaded 2-core CI machine runs these with debug
//! builds): the medians must sit near the plan, and unplanned polling (three
//! watchers at random relative moments) would fail them by its spread.

use std::time::Duration;

use restock_proto::v1 as pb;
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, eventually, products_json,
};
use serde_json::Value;

const TCIN: &str = "100";
const LONG: Duration = Duration::from_secs(30);

/// One poll the simulator saw.
#[derive(Debug, Clone)]
struct Poll {
    watcher: String,
    at_ms: f64,
}

async fn polls_since(store: &StoreSimProcess, since_ms: f64) -> Vec<Poll> {
    let v: Value = reqwest::get(format!("{}/admin/polls?tcin={TCIN}", store.url()))
        .await
        .expect("GET /admin/polls")
        .json()
        .await
        .expect("the poll log is JSON");
    let mut polls: Vec<Poll> = v["polls"]
        .as_array()
        .unwrap_or_else(|| panic!("no polls array in {v}"))
        .iter()
        .map(|p| Poll {
            watcher: p["watcher"].as_str().unwrap_or_default().to_owned(),
            at_ms: p["at_ms"].as_f64().expect("at_ms"),
        })
        .filter(|p| p.at_ms > since_ms)
        .collect();
    polls.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    polls
}

/// The simulator's clock now, as its poll log counts it: the newest poll.
async fn sim_now(store: &StoreSimProcess) -> f64 {
    polls_since(store, f64::MIN)
        .await
        .last()
        .map_or(0.0, |p| p.at_ms)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Watches `seconds` of polls and checks they come from `watchers` in turn,
/// `expect_ms` apart.
async fn assert_turns(store: &StoreSimProcess, watchers: &[&str], expect_ms: f64, what: &str) {
    let since = sim_now(store).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = polls_since(store, since).await;
    let n = watchers.len();
    assert!(
        polls.len() >= 3 * n,
        "{what}: too few polls in 3 s: {polls:?}"
    );
    for p in &polls {
        assert!(
            watchers.contains(&p.watcher.as_str()),
            "{what}: a poll from {:?}, expected only {watchers:?}",
            p.watcher
        );
    }
    let mut gaps: Vec<f64> = polls.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect();
    let m = median(&mut gaps);
    let wide = gaps
        .iter()
        .filter(|g| (**g - expect_ms).abs() > expect_ms * 0.5)
        .count();
    let trace: Vec<String> = polls
        .iter()
        .map(|p| format!("{}@{:.0}", p.watcher, p.at_ms))
        .collect();
    assert!(
        (m - expect_ms).abs() <= expect_ms * 0.25,
        "{what}: median gap {m:.1} ms, expected about {expect_ms} ms; polls: {trace:?}"
    );
    assert!(
        wide * 5 <= gaps.len(),
        "{what}: {wide} of {} gaps far from {expect_ms} ms (sorted: {gaps:?}); polls: {trace:?}",
        gaps.len()
    );
    // In turn: the same watcher polls again only after the n-1 others.
    let in_turn = polls
        .windows(n)
        .filter(|w| {
            let mut ids: Vec<&str> = w.iter().map(|p| p.watcher.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len() == n
        })
        .count();
    assert!(
        in_turn * 10 >= (polls.len() - n + 1) * 8,
        "{what}: polls not in turn ({in_turn} of {} windows of {n} hold every watcher): {trace:?}",
        polls.len() - n + 1
    );
}

/// Waits until the arbiter's plan has `n` watchers sharing the period.
async fn wait_planned(arbiter: &ArbiterProcess, n: usize) -> pb::GetStatusResponse {
    eventually(&format!("{n} watchers planned"), LONG, || async {
        let s = arbiter.status().await;
        let planned: Vec<&pb::WatcherStatus> = s
            .watchers
            .iter()
            .filter(|w| w.connected && w.planned)
            .collect();
        (planned.len() == n && s.watchers.iter().filter(|w| w.connected).count() == n)
            .then_some(s.clone())
    })
    .await
}

#[tokio::test]
async fn three_watchers_take_turns_two_re_space_and_the_third_rejoins() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&[TCIN])).await;
    let store = StoreSimProcess::start(products_json(&[TCIN]), &[]).await;
    let start = |id: &str| {
        WatcherProcess::start_with(
            WatcherOptions::new(id, arbiter.url())
                .store(&store)
                .poll_interval("300ms"),
        )
    };
    let w1 = start("w1").await;
    let w2 = start("w2").await;
    let mut w3 = start("w3").await;
    for w in [&w1, &w2, &w3] {
        w.wait_connected().await;
    }
    let s = wait_planned(&arbiter, 3).await;
    let mut phases: Vec<u64> = s.watchers.iter().map(|w| w.poll_phase_ms).collect();
    phases.sort_unstable();
    assert_eq!(phases, [0, 100, 200], "{s:?}");
    assert!(s.poll_planning);
    assert_eq!(s.products[0].effective_poll_interval_ms, 100);
    assert!(s.watchers.iter().all(|w| w.poll_interval_ms == 300));
    // Let a round or two settle on the plan, then watch.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_turns(&store, &["w1", "w2", "w3"], 100.0, "three watchers").await;

    // One goes: the two left share the period.
    w3.process.terminate(Duration::from_secs(10));
    let s = wait_planned(&arbiter, 2).await;
    assert_eq!(s.products[0].effective_poll_interval_ms, 150);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_turns(&store, &["w1", "w2"], 150.0, "two watchers").await;

    // It comes back: turns of three again.
    w3.process.restart();
    w3.process.wait_ready().await;
    w3.wait_connected().await;
    wait_planned(&arbiter, 3).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_turns(&store, &["w1", "w2", "w3"], 100.0, "the third back").await;
}

#[tokio::test]
async fn a_watcher_cut_off_from_the_arbiter_keeps_polling_on_its_own_schedule() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::products(&[TCIN])).await;
    let store = StoreSimProcess::start(products_json(&[TCIN]), &[]).await;
    let w = WatcherProcess::start_with(
        WatcherOptions::new("alone", arbiter.url())
            .store(&store)
            .poll_interval("200ms"),
    )
    .await;
    w.wait_connected().await;
    wait_planned(&arbiter, 1).await;
    // What the planning-off test looks for in a watcher's log is there when
    // a plan came.
    eventually("the watcher to log its plan", LONG, || async {
        w.process
            .log_text()
            .contains("poll plan from the arbiter")
            .then_some(())
    })
    .await;

    // No arbiter at all: the watcher goes on polling, every 200 ms or a
    // little less (its own jittered schedule).
    arbiter.process.terminate(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let since = sim_now(&store).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = polls_since(&store, since).await;
    assert!(
        (10..=20).contains(&polls.len()),
        "{} polls in 3 s at 200 ms without the arbiter: {polls:?}",
        polls.len()
    );
    let longest = polls
        .windows(2)
        .map(|p| p[1].at_ms - p[0].at_ms)
        .fold(0.0, f64::max);
    assert!(longest < 400.0, "a gap of {longest:.0} ms: {polls:?}");

    // The arbiter back on the same address: the watcher rejoins the plan.
    arbiter.kill9_and_restart().await;
    w.wait_connected().await;
    wait_planned(&arbiter, 1).await;
}

#[tokio::test]
async fn with_planning_off_no_watcher_gets_a_plan_and_status_says_so() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--poll-planning".into(), "false".into()],
        ..ArbiterOptions::products(&[TCIN])
    })
    .await;
    let store = StoreSimProcess::start(products_json(&[TCIN]), &[]).await;
    let mut watchers = Vec::new();
    for id in ["off-1", "off-2"] {
        let w = WatcherProcess::start_with(
            WatcherOptions::new(id, arbiter.url())
                .store(&store)
                .poll_interval("300ms"),
        )
        .await;
        w.wait_connected().await;
        watchers.push(w);
    }
    // Longer than a re-plan takes (0.2 s) with two watchers connected.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = arbiter.status().await;
    assert!(!s.poll_planning, "{s:?}");
    assert_eq!(s.watchers.iter().filter(|w| w.connected).count(), 2);
    assert!(
        s.watchers
            .iter()
            .all(|w| !w.planned && w.poll_interval_ms == 300),
        "{s:?}"
    );
    // The effective interval is shown all the same: two at 300 ms.
    assert_eq!(s.products[0].effective_poll_interval_ms, 150);
    for w in &watchers {
        assert!(
            !w.process.log_text().contains("poll plan from the arbiter"),
            "{} got a plan:\n{}",
            w.id,
            w.process.log_text()
        );
    }
}
