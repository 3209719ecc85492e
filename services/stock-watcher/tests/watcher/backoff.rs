//! A source that refuses us (429) makes the watcher back off, never report
//! its products out of stock because of it, and recover by itself.

use std::time::{Duration, Instant};

use restock_proto::v1::event::Kind;
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, event_kind as kind, eventually, product, spawn_arbiter,
    spawn_arbiter_with,
};

use crate::{helpers::start_buying_watcher, stub::StoreStub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_makes_it_back_off_and_recover() {
    let arbiter = spawn_arbiter().await;
    // Paused: the in-stock product stays queued, so we can watch what the
    // arbiter believes during the fault.
    arbiter.set_paused(true).await;
    let store = StoreStub::start().await;
    store.set_stock("100", true);
    let watcher = start_buying_watcher(
        &arbiter,
        &store,
        &[
            "--source-backoff-initial",
            "400ms",
            "--source-backoff-max",
            "800ms",
        ],
    )
    .await;
    eventually("100 queued", Duration::from_secs(10), || async {
        let s = arbiter.status().await;
        (!product(&s, "100").in_stock_at.is_empty()).then_some(())
    })
    .await;

    let fault = Duration::from_secs(3);
    let fault_start = Instant::now();
    store.set_fault(429, fault);
    // Status shows the pause and the refusal (the answer may reach the
    // product's line a moment after the pause starts).
    eventually(
        "the watcher to back off",
        Duration::from_secs(5),
        || async {
            let s = watcher.status().await;
            (s.backoff_remaining_ms > 0 && s.products.iter().any(|p| p.last_error.contains("429")))
                .then_some(())
        },
    )
    .await;
    // Meanwhile the product is still in stock as far as the arbiter knows.
    let a = arbiter.status().await;
    assert_eq!(product(&a, "100").in_stock_at, ["w1"]);
    tokio::time::sleep(fault + Duration::from_millis(200) - fault_start.elapsed()).await;

    // Far fewer requests than polling 3 products every 100ms would make
    // (about 90 in 3s).
    let refused = store.polls().iter().filter(|(_, s)| *s == 429).count();
    assert!(
        (1..=20).contains(&refused),
        "{refused} requests during the fault"
    );
    assert!(
        !arbiter
            .events()
            .await
            .iter()
            .any(|e| kind(e) == Kind::Unqueued && e.tcin == "100"),
        "the fault must not make product 100 out of stock"
    );
    let log = watcher.process.log_text();
    assert!(log.contains("backing off"), "the log says it backs off");

    // It recovers by itself: polls succeed again and the purchase happens.
    eventually("polls succeed again", Duration::from_secs(5), || async {
        let s = watcher.status().await;
        (s.backoff_remaining_ms == 0 && s.products.iter().all(|p| p.last_error.is_empty()))
            .then_some(())
    })
    .await;
    arbiter.set_paused(false).await;
    store
        .wait_checkout_of("100", "bought after the fault", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_stock_products_are_refreshed_before_the_stock_ttl() {
    // A short stock TTL: the arbiter forgets a sighting after 600ms unless
    // the watcher repeats it (the watcher refreshes every TTL/3 = 200ms).
    let arbiter = spawn_arbiter_with(ArbiterOptions {
        stock_ttl: "600ms".into(),
        ..Default::default()
    })
    .await;
    arbiter.set_paused(true).await;
    let store = StoreStub::start().await;
    store.set_stock("100", true);
    let _watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    eventually("100 queued", Duration::from_secs(10), || async {
        let s = arbiter.status().await;
        (!product(&s, "100").in_stock_at.is_empty()).then_some(())
    })
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let s = arbiter.status().await;
        assert_eq!(
            product(&s, "100").in_stock_at,
            ["w1"],
            "the sighting went stale"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !arbiter
            .events()
            .await
            .iter()
            .any(|e| kind(e) == Kind::Unqueued),
        "never unqueued"
    );
}
