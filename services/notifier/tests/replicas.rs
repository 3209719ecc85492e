//! The notifier given several arbiter replicas (scripted ones, in this
//! process): it follows the events at the leader a follower names, and after
//! a failover at the new leader, from where it was.

use std::time::Duration;

use clap::Parser;
use restock_notifier::config::NotifierConfig;
use restock_proto::v1 as pb;
use restock_testkit::{
    ArbiterEndpoint, Call, History, Script, ScriptedArbiter, StatusSnapshot, eventually,
    history::now_ms,
};
use tokio::{net::TcpListener, sync::oneshot};

/// A status with products 100, 200, 300, the newest event `seq`, from a
/// replica in `role`, naming `leader_url`.
fn status(role: &str, leader_url: &str, seq: u64) -> pb::GetStatusResponse {
    pb::GetStatusResponse {
        role: role.into(),
        leader_url: leader_url.into(),
        ..StatusSnapshot::three().sequence(seq).build()
    }
}

fn watched_from(a: &ScriptedArbiter) -> Vec<u64> {
    a.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::WatchEvents { from_sequence } => Some(from_sequence),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_follows_the_leader_and_moves_to_the_new_one_from_where_it_was() {
    let history = History::starting(2, now_ms())
        .granted("100", "lease-1", 1)
        .released("100", "lease-1", 1);
    let last = history.last_sequence();
    // a leads; b is a follower naming a, and leads once a steps down.
    let a = ScriptedArbiter::start(
        Script::new()
            .statuses([status("leader", "", 1)])
            .events(history.into_events()),
    )
    .await;
    let b = ScriptedArbiter::start(
        Script::new().statuses([status("follower", &a.url(), 0), status("leader", "", last)]),
    )
    .await;
    b.step_down(Some(&a.url()));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let list = format!("{},{}", b.url(), a.url());
    let config = NotifierConfig::try_parse_from([
        "restock-notifier",
        "--arbiter",
        &list,
        "--state-file",
        "",
    ])
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(restock_notifier::run(listener, config, async move {
        let _ = stopped.await;
    }));

    // Fresh: from the event after the leader's newest one, at the leader.
    eventually(
        "events followed at the leader",
        Duration::from_secs(10),
        || async { watched_from(&a).contains(&2).then_some(()) },
    )
    .await;
    assert!(watched_from(&b).is_empty(), "{:?}", b.calls());

    // Failover: a steps down (its stream ends), b leads.
    b.lead();
    a.step_down(Some(&b.url()));
    let from = eventually(
        "events followed at the new leader",
        Duration::from_secs(5),
        || async { watched_from(&b).first().copied() },
    )
    .await;
    assert_eq!(from, last + 1, "resumes after the last event handled");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the notifier stops within 10 s")
        .unwrap()
        .expect("the notifier stops cleanly");
}
