//! Losing the lease: the watcher stops its own checkout before the lease's
//! TTL by its own clock when it cannot renew (arbiter frozen or killed), and
//! a shutdown aborts the checkout, closes the stream and releases the lease
//! ABORTED.

use std::time::{Duration, Instant};

use restock_proto::v1 as pb;
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, event_kind as kind, eventually, product,
    spawn_arbiter,
};

use crate::{
    helpers::{start_buying_watcher, start_watcher},
    stub::{CheckoutMode, StoreStub},
};

const TTL: Duration = Duration::from_secs(2);

fn short_lease() -> ArbiterOptions {
    ArbiterOptions {
        lease_ttl: "2s".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_arbiter_makes_it_stop_the_checkout_before_the_ttl() {
    let arbiter = ArbiterProcess::start(short_lease()).await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Hang);
    let watcher = start_buying_watcher(&arbiter, &store, &["--rpc-timeout", "300ms"]).await;
    store.set_stock("100", true);
    let posted = store.first_checkout().await;
    // Freeze the arbiter before the first renewal (at TTL/3).
    arbiter.process.signal("-STOP");
    let frozen_at = Instant::now();
    assert!(
        frozen_at - posted.received_at < TTL / 3,
        "froze too late to test this"
    );
    let ended = eventually(
        "the checkout to be dropped",
        Duration::from_secs(5),
        || async { store.checkouts()[0].ended_at },
    )
    .await;
    arbiter.process.signal("-CONT");
    let held = ended - posted.received_at;
    assert!(
        store.checkouts()[0].dropped,
        "the watcher dropped the request"
    );
    // The watcher received the grant before the POST arrived, so this is
    // an upper bound of its own timing: stopped before the TTL with room
    // to spare, and not much earlier than TTL - margin.
    assert!(held < TTL - Duration::from_millis(300), "held {held:?}");
    assert!(held > Duration::from_millis(1_000), "held {held:?}");
    assert!(
        watcher
            .process
            .log_text()
            .contains("renewing the lease failed")
    );

    // Thawed, the arbiter takes the watcher's ABORTED release (it stopped
    // early enough for the release to beat the deadline) or expires the
    // lease; either way the slot frees, and the next checkout starts only
    // after the first one ended.
    eventually(
        "the lease to end at the arbiter",
        Duration::from_secs(10),
        || async {
            let s = arbiter.status().await;
            let o = product(&s, "100").last_outcome;
            (o == pb::Outcome::Aborted as i32 || o == pb::Outcome::Expired as i32).then_some(())
        },
    )
    .await;
    let next = eventually("the next checkout", Duration::from_secs(10), || async {
        store.checkouts().get(1).cloned()
    })
    .await;
    assert!(next.received_at >= ended);
    assert!(next.token() > posted.token());
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_arbiter_makes_it_kill_the_checkout_command_then_it_reconnects() {
    let mut arbiter = ArbiterProcess::start(short_lease()).await;
    let store = StoreStub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("browser.pid");
    // The "browser" is a grandchild in the script's process group.
    let script = format!(
        "sleep 300 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
        pidfile.display()
    );
    let watcher = start_watcher(
        &arbiter,
        &store,
        &["--checkout", "command", "--checkout-command", &script],
    )
    .await;
    store.set_stock("100", true);
    let pid: u32 = eventually(
        "the checkout command to start",
        Duration::from_secs(10),
        || async { std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok() },
    )
    .await;
    let started = Instant::now();
    assert!(alive(pid));
    arbiter.process.kill9();
    eventually("the checkout's process group to be killed", TTL, || async {
        (!alive(pid)).then_some(())
    })
    .await;
    let killed_after = started.elapsed();
    assert!(
        killed_after < TTL - Duration::from_millis(300),
        "{killed_after:?}"
    );

    // The arbiter comes back with its state; the watcher reconnects by itself.
    arbiter.kill9_and_restart().await;
    eventually(
        "the watcher to reconnect",
        Duration::from_secs(15),
        || async {
            let s = watcher.status().await;
            (s.arbiter_connected && s.reconnects >= 1).then_some(())
        },
    )
    .await;
    let s = arbiter.status().await;
    assert!(
        s.watchers
            .iter()
            .any(|w| w.watcher_id == "w1" && w.connected),
        "{:?}",
        s.watchers
    );
    // Its first report on the new stream says what it sees in stock.
    eventually(
        "100 in stock at w1 again",
        Duration::from_secs(2),
        || async {
            let s = arbiter.status().await;
            (product(&s, "100").in_stock_at == ["w1"]).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_aborts_the_checkout_releases_aborted_and_exits_0() {
    let arbiter = spawn_arbiter().await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Hang);
    let mut watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    store.set_stock("100", true);
    store.first_checkout().await;
    let s = eventually(
        "the checkout in the watcher's status",
        Duration::from_secs(5),
        || async { watcher.status().await.checkout },
    )
    .await;
    assert_eq!(s.tcin, "100");

    let code = watcher.process.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(store.checkouts()[0].dropped);
    let evs = arbiter.events().await;
    let released = evs
        .iter()
        .find(|e| kind(e) == pb::event::Kind::Released && e.tcin == "100")
        .expect("the lease was released");
    assert_eq!(released.outcome, pb::Outcome::Aborted as i32);
    assert_eq!(released.fencing_token, s.fencing_token);
    // Released once; the slot was not handed back to the leaving watcher.
    let grants = evs
        .iter()
        .filter(|e| kind(e) == pb::event::Kind::Granted)
        .count();
    assert_eq!(grants, 1, "{evs:?}");
}
