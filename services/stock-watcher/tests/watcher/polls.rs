//! The watcher names itself on every stock request (`X-Restock-Watcher`),
//! so the store simulator's poll log tells the watchers' polls apart.

use std::time::Duration;

use restock_testkit::{
    ArbiterEndpoint, Poll, StoreSimProcess, WatcherOptions, WatcherProcess, eventually, poll_gaps,
    products_json, spawn_arbiter,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_logs_each_watchers_polls_under_its_id() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let mut watchers = Vec::new();
    for id in ["w1", "w2"] {
        let w = WatcherProcess::start_with(
            WatcherOptions::new(id, ArbiterEndpoint::url(&arbiter))
                .store(&store)
                .poll_interval("100ms"),
        )
        .await;
        w.wait_connected().await;
        watchers.push(w);
    }
    store.clear_polls().await;
    let polls: Vec<Poll> = eventually(
        "ten polls of 100 from each watcher",
        Duration::from_secs(15),
        || async {
            let p = store.polls("100").await;
            let of = |id: &str| p.iter().filter(|x| x.watcher == id).count();
            (of("w1") >= 10 && of("w2") >= 10).then_some(p)
        },
    )
    .await;
    assert!(
        polls.iter().all(|p| p.tcin == "100"),
        "only the product asked for"
    );
    let strangers: Vec<&Poll> = polls
        .iter()
        .filter(|p| p.watcher != "w1" && p.watcher != "w2")
        .collect();
    assert!(
        strangers.is_empty(),
        "polls from nobody known: {strangers:?}"
    );
    assert!(poll_gaps(&polls).iter().all(|g| *g >= 0.0), "oldest first");
    for id in ["w1", "w2"] {
        let own: Vec<Poll> = polls.iter().filter(|p| p.watcher == id).cloned().collect();
        let m = median(poll_gaps(&own));
        // Every 100 ms, jittered down by up to 10%; loose for a busy machine.
        assert!(
            (60.0..=150.0).contains(&m),
            "{id} polls every {m:.1} ms at the median: {own:?}"
        );
    }
}
