//! The whole purchase cycle with real processes: one arbiter, the store
//! simulator and three watchers talking real gRPC and HTTP. The simulator's
//! order book (`GET /admin/orders`) is the ground truth: it records every
//! checkout and counts any two that overlap in time as a violation.

use std::{collections::HashMap, time::Duration};

use restock_proto::v1::{
    self as pb, ProductState, ReleasePurchaseRequest, event::Kind as EventKind,
};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, eventually, products_json, purchased,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::{Client, product, status};

const LONG: Duration = Duration::from_secs(30);

/// The store saw no overlap, and the tokens of accepted checkouts strictly
/// increase in start order.
fn assert_clean(orders: &Value) {
    assert_eq!(orders["violations"], 0, "overlapping checkouts: {orders:#}");
    let mut accepted: Vec<&Value> = orders["orders"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["accepted"] == true)
        .collect();
    accepted.sort_by_key(|o| o["started_at_ms"].as_u64());
    let tokens: Vec<u64> = accepted
        .iter()
        .map(|o| o["fencing_token"].as_u64().unwrap())
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must strictly increase in start order: {tokens:?}"
    );
}

async fn wait_queued(c: &Client, tcins: &[&str]) {
    eventually(&format!("{tcins:?} queued"), LONG, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            tcins
                .iter()
                .all(|t| product(&s, t).state == ProductState::Queued as i32)
                .then_some(())
        }
    })
    .await;
}

async fn wait_orders<F>(store: &StoreSimProcess, what: &str, mut done: F) -> Value
where
    F: FnMut(&Value) -> bool,
{
    let start = std::time::Instant::now();
    loop {
        let o = store.orders().await;
        if done(&o) {
            return o;
        }
        assert!(
            start.elapsed() < LONG,
            "timed out waiting for {what}: {o:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_products_seen_by_different_watchers_are_bought_in_priority_order() {
    let list = products_json(&["100", "200", "300"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "200ms"]).await;
    // Each watcher polls a different product.
    let _w = [
        WatcherProcess::start(&arbiter, &store, "w-300", &["--products", "300"]).await,
        WatcherProcess::start(&arbiter, &store, "w-200", &["--products", "200"]).await,
        WatcherProcess::start(&arbiter, &store, "w-100", &["--products", "100"]).await,
    ];
    let mut c = arbiter.client().await;
    // Let all three be seen before the slot is given out, so the choice is
    // about priority and not about which poll came first.
    arbiter.set_paused(true).await;
    for t in ["300", "200", "100"] {
        store.set_stock(t, true).await;
    }
    wait_queued(&c, &["100", "200", "300"]).await;
    arbiter.set_paused(false).await;

    let orders = wait_orders(&store, "three purchases", |o| purchased(o).len() == 3).await;
    let bought: Vec<(&str, &str)> = purchased(&orders)
        .iter()
        .map(|o| {
            (
                o["tcin"].as_str().unwrap(),
                o["watcher_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bought,
        [("100", "w-100"), ("200", "w-200"), ("300", "w-300")]
    );
    assert_clean(&orders);
    let s = status(&mut c).await;
    for t in ["100", "200", "300"] {
        assert_eq!(product(&s, t).state, ProductState::Purchased as i32);
    }
}

#[tokio::test]
async fn test_mode_ten_cycles_buy_the_top_product_then_the_next_when_it_sells_out() {
    let list = products_json(&["100", "200", "300"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::listing(&list)
    })
    .await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "50ms"]).await;
    let _w = [
        WatcherProcess::start(&arbiter, &store, "w1", &[]).await,
        WatcherProcess::start(&arbiter, &store, "w2", &[]).await,
        WatcherProcess::start(&arbiter, &store, "w3", &[]).await,
    ];
    let c = arbiter.client().await;
    arbiter.set_paused(true).await;
    store.set_stock("200", true).await;
    store.set_stock("100", true).await;
    wait_queued(&c, &["100", "200"]).await;
    arbiter.set_paused(false).await;

    let orders = wait_orders(&store, "ten purchases", |o| purchased(o).len() >= 10).await;
    for o in purchased(&orders) {
        assert_eq!(o["tcin"], "100", "no switching while 100 is in stock: {o}");
        assert_eq!(o["voided"], true, "TEST_MODE checkouts empty the cart");
    }
    assert_clean(&orders);

    store.set_stock("100", false).await;
    let orders = wait_orders(&store, "a purchase of 200", |o| {
        purchased(o).iter().any(|o| o["tcin"] == "200")
    })
    .await;
    let seq: Vec<&str> = purchased(&orders)
        .iter()
        .map(|o| o["tcin"].as_str().unwrap())
        .collect();
    let first_200 = seq.iter().position(|t| *t == "200").unwrap();
    assert!(
        seq[..first_200].iter().all(|t| *t == "100") && first_200 >= 10,
        "{seq:?}"
    );
    assert_clean(&orders);
}

#[tokio::test]
async fn killing_the_holder_mid_checkout_expires_its_lease_and_another_watcher_buys() {
    let list = products_json(&["100"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "2s".into(),
        failure_cooldown: "300ms".into(),
        ..ArbiterOptions::listing(&list)
    })
    .await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "20s"]).await;
    let mut watchers: HashMap<String, WatcherProcess> = HashMap::new();
    for id in ["w1", "w2", "w3"] {
        watchers.insert(
            id.into(),
            WatcherProcess::start(&arbiter, &store, id, &[]).await,
        );
    }
    let mut c = arbiter.client().await;
    store.set_stock("100", true).await;

    // The checkout is running at the store: kill its watcher.
    let running = wait_orders(&store, "a running checkout", |o| {
        o["in_flight"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let first = running["in_flight"][0].clone();
    let holder = first["watcher_id"].as_str().unwrap().to_owned();
    let stale_token = first["fencing_token"].as_u64().unwrap();
    let stale_lease = first["lease_id"].as_str().unwrap().to_owned();
    watchers.get_mut(&holder).unwrap().process.kill9();
    store.put("/admin/checkout", json!({"delay_ms": 100})).await;

    let orders = wait_orders(&store, "a purchase after the expiry", |o| {
        !purchased(o).is_empty()
    })
    .await;
    let bought = purchased(&orders)[0];
    assert_ne!(
        bought["watcher_id"],
        holder.as_str(),
        "another watcher buys"
    );
    assert!(bought["fencing_token"].as_u64().unwrap() > stale_token);
    assert_clean(&orders);

    let expired = arbiter
        .events()
        .await
        .into_iter()
        .find(|e| e.kind == EventKind::Expired as i32)
        .expect("an EXPIRED event");
    assert_eq!(expired.lease_id, stale_lease);
    assert_eq!(expired.watcher_id, holder);

    // The dead watcher comes back; whatever it says about its old lease is
    // refused, by the arbiter and by the store.
    watchers.get_mut(&holder).unwrap().process.restart();
    let err = c
        .release_purchase(ReleasePurchaseRequest {
            lease_id: stale_lease.clone(),
            fencing_token: stale_token,
            outcome: pb::Outcome::Purchased as i32,
            detail: "late".into(),
            paid_price_cents: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let late = reqwest::Client::new()
        .post(format!("{}/checkout", store.url()))
        .json(&json!({"tcin": "100", "fencing_token": stale_token, "lease_id": stale_lease, "watcher_id": holder}))
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 409);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["result"], "stale_token");
    eventually("the restarted watcher rejoins", LONG, || {
        let mut c = c.clone();
        let holder = holder.clone();
        async move {
            let s = status(&mut c).await;
            s.watchers
                .iter()
                .any(|w| w.watcher_id == holder && w.connected)
                .then_some(())
        }
    })
    .await;
    assert_clean(&store.orders().await);
}

#[tokio::test]
async fn an_arbiter_restart_mid_checkout_lets_the_checkout_finish_and_release() {
    let list = products_json(&["100", "200"]);
    let mut arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "10s".into(),
        ..ArbiterOptions::listing(&list)
    })
    .await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "3s"]).await;
    let _w = [
        WatcherProcess::start(&arbiter, &store, "w1", &[]).await,
        WatcherProcess::start(&arbiter, &store, "w2", &[]).await,
    ];
    store.set_stock("100", true).await;
    store.set_stock("200", true).await;
    let running = wait_orders(&store, "a running checkout", |o| {
        o["in_flight"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    let token = running["in_flight"][0]["fencing_token"].as_u64().unwrap();
    let tcin = running["in_flight"][0]["tcin"].as_str().unwrap().to_owned();

    arbiter.kill9_and_restart().await;
    let mut c = arbiter.client().await;
    // The lease survived; the checkout finishes and its release is accepted.
    let orders = wait_orders(&store, "both products bought", |o| purchased(o).len() == 2).await;
    assert_eq!(purchased(&orders)[0]["fencing_token"].as_u64(), Some(token));
    assert_eq!(purchased(&orders)[0]["tcin"], tcin.as_str());
    assert_clean(&orders);
    let s = eventually("both purchases recorded by the arbiter", LONG, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            (s.counters.as_ref()?.purchases == 2).then_some(s)
        }
    })
    .await;
    assert_eq!(product(&s, "100").purchases, 1);
    assert_eq!(product(&s, "200").purchases, 1);
    assert!(s.next_fencing_token > token + 1);
    let _ = status(&mut c).await;
}

#[tokio::test]
async fn watchers_back_off_while_the_store_answers_429_and_recover() {
    let list = products_json(&["100"]);
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "50ms"]).await;
    let w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
    store
        .put("/admin/faults", json!({"status": 429, "for_ms": 2500}))
        .await;
    store.set_stock("100", true).await;

    let mut wc = w.client().await;
    let backing_off = eventually("the watcher to back off", LONG, || {
        let mut wc = wc.clone();
        async move {
            let s = wc
                .get_watcher_status(pb::GetWatcherStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.backoff_remaining_ms > 0).then_some(s)
        }
    })
    .await;
    assert!(backing_off.products.iter().any(|p| p.errors > 0));
    // Nothing is bought while the store refuses to answer...
    assert!(purchased(&store.orders().await).is_empty());
    // ...and the watcher recovers by itself once it answers again.
    let orders = wait_orders(&store, "a purchase after the 429s", |o| {
        !purchased(o).is_empty()
    })
    .await;
    assert_clean(&orders);
    assert!(
        w.process.log_text().contains("429"),
        "the back-off is logged"
    );
    let s = wc
        .get_watcher_status(pb::GetWatcherStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.arbiter_connected);
}

#[tokio::test]
async fn a_product_above_its_max_price_is_never_bought() {
    let list = json!([
        {"tcin": "100", "name": "Too dear", "max_price": 10.00},
        {"tcin": "200", "name": "Fine", "max_price": 50.00}
    ]);
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "50ms"]).await;
    let _w = [
        WatcherProcess::start(&arbiter, &store, "w1", &[]).await,
        WatcherProcess::start(&arbiter, &store, "w2", &[]).await,
    ];
    store
        .put(
            "/admin/stock/100",
            json!({"in_stock": true, "price": 15.00}),
        )
        .await;
    store
        .put(
            "/admin/stock/200",
            json!({"in_stock": true, "price": 20.00}),
        )
        .await;
    let orders = wait_orders(&store, "200 bought", |o| !purchased(o).is_empty()).await;
    assert_eq!(purchased(&orders)[0]["tcin"], "200");
    // Well past several poll rounds: 100 is never attempted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let orders = store.orders().await;
    assert!(
        orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["tcin"] != "100"),
        "{orders:#}"
    );
    let mut c = arbiter.client().await;
    assert_eq!(
        product(&status(&mut c).await, "100").state,
        ProductState::Ready as i32
    );
}

/// The simulator's stock endpoint for each `--target-endpoint`.
const STOCK_ENDPOINTS: [(&str, &str); 3] = [
    ("fulfillment", "product_fulfillment_v1"),
    (
        "hierarchy",
        "product_fulfillment_and_variation_hierarchy_v1",
    ),
    ("summary", "product_summary_with_fulfillment_v1"),
];

/// `store_sim_redsky_requests_total{endpoint}`, every status summed.
async fn redsky_requests(store: &StoreSimProcess, endpoint: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", store.url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics page");
    let label = format!("endpoint=\"{endpoint}\"");
    text.lines()
        .filter(|l| l.starts_with("store_sim_redsky_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Three watchers polling every product with `--target-endpoint endpoint`:
/// the three products in stock are bought one at a time, in priority order,
/// with no overlap at the store; only that endpoint is asked for stock.
/// Returns the requests and the product polls the store counted on it.
async fn purchases_cycle_in_priority_order_on(endpoint: &str) -> (u64, usize) {
    let tcins = ["100", "200", "300"];
    let list = products_json(&tcins);
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "200ms"]).await;
    let mut watchers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        watchers.push(
            WatcherProcess::start_with(
                WatcherOptions::new(id, arbiter.url())
                    .store(&store)
                    .endpoint(endpoint),
            )
            .await,
        );
    }
    let c = arbiter.client().await;
    arbiter.set_paused(true).await;
    for t in ["300", "200", "100"] {
        store.set_stock(t, true).await;
    }
    wait_queued(&c, &tcins).await;
    arbiter.set_paused(false).await;
    let orders = wait_orders(&store, "three purchases", |o| purchased(o).len() == 3).await;
    let bought: Vec<&str> = purchased(&orders)
        .iter()
        .map(|o| o["tcin"].as_str().unwrap())
        .collect();
    assert_eq!(bought, tcins, "{endpoint}: priority order");
    // One at a time: no two checkouts overlapped at the store.
    assert_clean(&orders);
    // Only the chosen endpoint is asked for stock.
    let (_, name) = STOCK_ENDPOINTS
        .iter()
        .find(|(flag, _)| *flag == endpoint)
        .expect("a known endpoint");
    for (_, other) in STOCK_ENDPOINTS.iter().filter(|(f, _)| *f != endpoint) {
        assert_eq!(
            redsky_requests(&store, other).await,
            0,
            "{endpoint}: {other}"
        );
    }
    let requests = redsky_requests(&store, name).await;
    let mut polls = 0;
    for t in tcins {
        polls += store
            .polls(t)
            .await
            .iter()
            .filter(|p| !p.watcher.is_empty())
            .count();
    }
    assert!(
        requests > 0 && polls > 0,
        "{endpoint}: {requests} requests, {polls} polls"
    );
    (requests, polls)
}

#[tokio::test]
async fn purchases_cycle_in_priority_order_on_the_fulfillment_endpoint() {
    let (requests, polls) = purchases_cycle_in_priority_order_on("fulfillment").await;
    // One product per request (polls counted after the requests).
    assert!(
        polls as u64 >= requests,
        "{requests} requests, {polls} polls"
    );
}

#[tokio::test]
async fn purchases_cycle_in_priority_order_on_the_hierarchy_endpoint() {
    let (requests, polls) = purchases_cycle_in_priority_order_on("hierarchy").await;
    assert!(
        polls as u64 >= requests,
        "{requests} requests, {polls} polls"
    );
}

#[tokio::test]
async fn purchases_cycle_in_priority_order_on_the_summary_endpoint_with_one_request_per_round() {
    let (requests, polls) = purchases_cycle_in_priority_order_on("summary").await;
    // Every request carried all three products: a round is one request,
    // fewer requests than products polled. (The polls are read after the
    // requests were counted, so a request in flight only adds polls.)
    assert!(
        polls as u64 >= 3 * requests,
        "summary: {requests} requests for {polls} product polls"
    );
}

/// Poll planning with the batch endpoint: the round (one summary request
/// for every product) is what the plan spaces. Three watchers polling
/// three products every 300 ms send one request each per round, in turn,
/// about 100 ms apart.
#[tokio::test]
async fn summary_rounds_are_one_request_each_and_the_watchers_take_turns() {
    let tcins = ["100", "200", "300"];
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&tcins)).await;
    let store = StoreSimProcess::start(products_json(&tcins), &[]).await;
    let mut watchers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let w = WatcherProcess::start_with(
            WatcherOptions::new(id, arbiter.url())
                .store(&store)
                .endpoint("summary")
                .poll_interval("300ms"),
        )
        .await;
        w.wait_connected().await;
        watchers.push(w);
    }
    eventually("three watchers planned", LONG, || async {
        let s = arbiter.status().await;
        (s.watchers
            .iter()
            .filter(|w| w.connected && w.planned)
            .count()
            == 3)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let since = store.polls("100").await.last().map_or(0.0, |p| p.at_ms);
    let requests_before = redsky_requests(&store, "product_summary_with_fulfillment_v1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests =
        redsky_requests(&store, "product_summary_with_fulfillment_v1").await - requests_before;
    let polls: Vec<Vec<restock_testkit::Poll>> = {
        let mut v = Vec::new();
        for t in tcins {
            v.push(
                store
                    .polls(t)
                    .await
                    .into_iter()
                    .filter(|p| p.at_ms > since)
                    .collect(),
            );
        }
        v
    };
    // About 10 rounds per watcher in 3 s: 30 requests, each carrying all
    // three products (every poll of 100 has one of 200 and 300 at the same
    // moment, from the same watcher).
    assert!(
        (20..=40).contains(&requests),
        "{requests} summary requests in 3 s"
    );
    let top = &polls[0];
    for p in top {
        for other in &polls[1..] {
            assert!(
                other
                    .iter()
                    .any(|o| o.watcher == p.watcher && (o.at_ms - p.at_ms).abs() < 1.0),
                "the request at {} ms of {} did not carry every product",
                p.at_ms,
                p.watcher
            );
        }
    }
    // In turn, about 100 ms apart (median; a loaded machine jitters).
    let mut gaps: Vec<f64> = restock_testkit::poll_gaps(top);
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    assert!(
        (75.0..=125.0).contains(&median),
        "median gap {median:.1} ms between summary requests: {top:?}"
    );
    let in_turn = top
        .windows(3)
        .filter(|w| {
            let mut ids: Vec<&str> = w.iter().map(|p| p.watcher.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len() == 3
        })
        .count();
    assert!(
        in_turn * 10 >= (top.len() - 2) * 8,
        "requests not in turn: {top:?}"
    );
}
