//! Does etcd wake a waiting Lock or Campaign call? The arbiter replicas
//! fail over only if it does (a candidate waits in Campaign until the
//! leader's key is gone). Debian 12's etcd 3.4.23 stops waking them for
//! good once 32 blocked Lock calls have been cancelled at once, which is
//! how the etcd lock baseline's hand-off ends (docs/benchmarks.md, "Arbiter
//! replicas on etcd").
//!
//! Each test needs a throwaway etcd (the last one leaves it broken on
//! 3.4.23): `RESTOCK_BENCH_PROBE_ETCD=http://127.0.0.1:PORT cargo test -p
//! restock-bench --test etcd_waiters -- --include-ignored --test-threads 1`.
//! Without the variable they pass without doing anything.

use std::time::Duration;

use etcd_client::{Client, LockOptions, ResignOptions};

/// How long a woken waiter may take (a few milliseconds when etcd works).
const WAKE: Duration = Duration::from_secs(5);

fn probe_etcd() -> Option<String> {
    let url = std::env::var("RESTOCK_BENCH_PROBE_ETCD").ok();
    if url.is_none() {
        eprintln!("RESTOCK_BENCH_PROBE_ETCD not set: nothing probed");
    }
    url
}

fn unique(what: &str) -> String {
    format!("/restock-bench-probe/{what}-{:016x}", rand::random::<u64>())
}

async fn session(url: &str) -> (Client, i64) {
    let mut c = Client::connect([url], None).await.expect("connect to etcd");
    let lease = c.lease_grant(600, None).await.expect("lease").id();
    (c, lease)
}

/// Holds a lock, queues a second session behind it, unlocks: the second
/// must get it.
async fn lock_is_handed_over(url: &str) {
    let name = unique("lock");
    let (mut a, la) = session(url).await;
    let held = a
        .lock(name.clone(), Some(LockOptions::new().with_lease(la)))
        .await
        .expect("first lock")
        .key()
        .to_vec();
    let (mut b, lb) = session(url).await;
    let waiter =
        tokio::spawn(async move { b.lock(name, Some(LockOptions::new().with_lease(lb))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.unlock(held).await.expect("unlock");
    tokio::time::timeout(WAKE, waiter)
        .await
        .expect("the waiting Lock was not granted after the unlock")
        .expect("task")
        .expect("Lock");
}

#[tokio::test]
async fn a_waiting_campaign_returns_when_the_leader_resigns() {
    let Some(url) = probe_etcd() else { return };
    let name = unique("election");
    let (mut a, la) = session(&url).await;
    let leader = a
        .campaign(name.clone(), "a", la)
        .await
        .expect("first campaign")
        .take_leader()
        .expect("leader key");
    let (mut b, lb) = session(&url).await;
    let candidate = tokio::spawn(async move { b.campaign(name, "b", lb).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    tokio::time::timeout(WAKE, candidate)
        .await
        .expect("the waiting Campaign did not return after the leader resigned")
        .expect("task")
        .expect("Campaign");
}

#[tokio::test]
async fn a_waiting_lock_is_granted_when_the_holder_unlocks() {
    let Some(url) = probe_etcd() else { return };
    lock_is_handed_over(&url).await;
}

#[tokio::test]
#[ignore = "fails on etcd 3.4.23 (Debian 12) and leaves that etcd waking no waiter"]
async fn cancelling_32_blocked_locks_leaves_waiters_woken() {
    let Some(url) = probe_etcd() else { return };
    let name = unique("cancelled");
    let (mut a, la) = session(&url).await;
    let held = a
        .lock(name.clone(), Some(LockOptions::new().with_lease(la)))
        .await
        .expect("first lock")
        .key()
        .to_vec();
    let mut blocked = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (mut c, l) = session(&url).await;
        let name = name.clone();
        blocked.spawn(async move { c.lock(name, Some(LockOptions::new().with_lease(l))).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocked.abort_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.unlock(held).await.expect("unlock");
    lock_is_handed_over(&url).await;
}
