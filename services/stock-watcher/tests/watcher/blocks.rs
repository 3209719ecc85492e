//! The real retailer's answers, played by the stub: a captcha block
//! (the recorded 403 body) met mid-run on the hierarchy endpoint pauses
//! polling, is named in the status, the metrics and the log, and polling
//! resumes by itself after the cool-down once the block is gone; a product
//! with a `max_price` whose price cannot be learnt is "in stock, price
//! unknown" and never bought.

use std::time::{Duration, Instant};

use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, WatcherOptions, WatcherProcess, eventually, product,
    spawn_arbiter, spawn_arbiter_with,
};

use crate::stub::StoreStub;

const CAPTCHA: &str = include_str!("../../../../tests/data/target/block-captcha-403.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_pauses_polling_names_the_block_and_ends_after_the_cooldown() {
    let arbiter = spawn_arbiter().await;
    let store = StoreStub::start().await;
    store.set_stock("100", true);
    let w = WatcherProcess::start_with(
        WatcherOptions::new("w1", ArbiterEndpoint::url(&arbiter))
            .source(store.url())
            .checkout_http(store.checkout_url())
            .endpoint("hierarchy")
            .args(&[
                "--block-cooldown",
                "1s",
                "--http-listen",
                "127.0.0.1:0",
                "--max-in-flight",
                "1",
            ]),
    )
    .await;
    w.wait_connected().await;
    eventually("a good poll", Duration::from_secs(10), || async {
        let s = w.status().await;
        s.products.iter().any(|p| p.in_stock).then_some(())
    })
    .await;
    let fault = Duration::from_millis(1_500);
    let started = Instant::now();
    store.set_fault_body(403, CAPTCHA, fault);
    let s = eventually("blocked", Duration::from_secs(5), || async {
        let s = w.status().await;
        (s.source_blocked == "captcha").then_some(s)
    })
    .await;
    assert!(
        s.source_blocked_detail.contains("trackingId=1770e73d"),
        "the tracking URL is kept: {}",
        s.source_blocked_detail
    );
    assert!(s.backoff_remaining_ms > 0);
    let text = reqwest::get(w.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("restock_source_blocked{kind=\"captcha\"} 1"),
        "{text}"
    );
    // Polling stops within one request: during the block, only the request
    // that met it and one probe per (doubling) cool-down.
    tokio::time::sleep(fault.saturating_sub(started.elapsed())).await;
    let blocked = store.polls().iter().filter(|(_, s)| *s == 403).count();
    assert!(
        (1..=2).contains(&blocked),
        "{blocked} requests while blocked"
    );
    // After the cool-down, one probe finds the block gone: polling resumes.
    eventually("the block ends", Duration::from_secs(10), || async {
        let s = w.status().await;
        (s.source_blocked.is_empty() && s.products.iter().all(|p| p.last_error.is_empty()))
            .then_some(())
    })
    .await;
    let log = w.process.log_text();
    assert!(log.contains("blocks us (captcha"), "the log names the kind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_stock_with_an_unknown_price_is_shown_and_never_bought() {
    let list = serde_json::json!([{"tcin": "100", "name": "Limited", "max_price": 50.00}]);
    let arbiter = spawn_arbiter_with(ArbiterOptions::listing(&list)).await;
    let store = StoreStub::start().await;
    // In stock, no price in the stock answer, and the stub serves no
    // pdp_client_v1 (404): the price stays unknown.
    store.set_stock("100", true);
    let w = WatcherProcess::start_with(
        WatcherOptions::new("w1", ArbiterEndpoint::url(&arbiter))
            .source(store.url())
            .checkout_http(store.checkout_url())
            .endpoint("hierarchy"),
    )
    .await;
    w.wait_connected().await;
    eventually(
        "in stock, price unknown",
        Duration::from_secs(10),
        || async {
            let s = w.status().await;
            s.products
                .iter()
                .any(|p| p.tcin == "100" && p.in_stock && p.price_unknown)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(store.checkouts().is_empty(), "never bought without a price");
    let a = arbiter.status().await;
    assert!(product(&a, "100").in_stock_at.is_empty(), "never queued");
    assert!(w.process.log_text().contains("in stock, price unknown"));
    // The price becomes known (in the answer): bought.
    store.set_price("100", 40.0);
    store
        .wait_checkout_of(
            "100",
            "bought once the price is known",
            Duration::from_secs(10),
        )
        .await;
}
