//! Two retailers in one priority list, with the real binaries: a Target
//! product and two variants of a Shopify shop played by the store
//! simulator, one watcher polling both (Target's batch summary and the
//! shop's products.json), one arbiter. Priority order holds across the
//! retailers, one checkout at a time; one shop's bot wall pauses only that
//! shop; a watched variant the shop does not list is "not listed".

use std::time::Duration;

use restock_proto::v1::{self as pb, ProductState, event::Kind as EventKind};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, eventually, purchased,
};
use serde_json::{Value, json};

use crate::helpers::{product, status};

const LONG: Duration = Duration::from_secs(30);
const SHOP: &str = "cards.example";
const ETB_AT_SHOP: &str = "shopify:cards.example/40000000001";
const BUNDLE_AT_SHOP: &str = "shopify:cards.example/40000000002";
const ETB_AT_TARGET: &str = "94300069";

/// The shop's Elite Trainer Box first, Target's second, the shop's
/// booster bundle last.
fn products() -> Value {
    json!([
        {"retailer": "shopify", "shop": SHOP, "variant": 40000000001u64, "name": "ETB at the card shop", "max_price": 59.99},
        {"tcin": ETB_AT_TARGET, "name": "ETB at Target", "max_price": 59.99},
        {"retailer": "shopify", "shop": SHOP, "variant": 40000000002u64, "name": "Booster bundle at the card shop", "max_price": 32.99}
    ])
}

fn watcher_options(id: &str, arbiter: &ArbiterProcess, store: &StoreSimProcess) -> WatcherOptions {
    let shop_url = format!("{SHOP}={}/shops/{SHOP}", store.url());
    WatcherOptions::new(id, arbiter.url())
        .store(store)
        .endpoint("summary")
        .poll_interval("200ms")
        .args(&["--shopify-url", &shop_url])
}

async fn wait_state(
    arbiter: &ArbiterProcess,
    id: &str,
    want: ProductState,
) -> pb::GetStatusResponse {
    eventually(&format!("{id} {want:?}"), LONG, || async {
        let mut c = arbiter.client().await;
        let s = status(&mut c).await;
        (product(&s, id).state == want as i32).then_some(s)
    })
    .await
}

#[tokio::test]
async fn priority_order_holds_across_retailers_one_checkout_at_a_time() {
    let list = products();
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "300ms"]).await;
    let watcher = WatcherProcess::start_with(watcher_options("w1", &arbiter, &store)).await;

    // Every product in stock while the slot is paused: all three queue, so
    // the order of the purchases is the arbiter's choice alone.
    arbiter.set_paused(true).await;
    for id in [BUNDLE_AT_SHOP, ETB_AT_TARGET, ETB_AT_SHOP] {
        store.set_stock(id, true).await;
    }
    for id in [ETB_AT_SHOP, ETB_AT_TARGET, BUNDLE_AT_SHOP] {
        wait_state(&arbiter, id, ProductState::Queued).await;
    }
    let s = status(&mut arbiter.client().await).await;
    assert_eq!(product(&s, ETB_AT_SHOP).retailer, "shopify");
    assert_eq!(product(&s, ETB_AT_TARGET).retailer, "target");
    // The shop's answer carries the price: what max_price and the grant use.
    assert_eq!(product(&s, ETB_AT_SHOP).price_cents, Some(5_999));
    arbiter.set_paused(false).await;

    let orders = eventually("three purchases at the store", LONG, || async {
        let o = store.orders().await;
        (purchased(&o).len() >= 3).then_some(o)
    })
    .await;
    assert_eq!(orders["violations"], 0, "overlapping checkouts: {orders:#}");
    let bought: Vec<&str> = purchased(&orders)
        .iter()
        .map(|o| o["tcin"].as_str().unwrap())
        .collect();
    assert_eq!(
        bought,
        [ETB_AT_SHOP, ETB_AT_TARGET, BUNDLE_AT_SHOP],
        "{orders:#}"
    );
    let tokens: Vec<u64> = purchased(&orders)
        .iter()
        .map(|o| o["fencing_token"].as_u64().unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    for id in [ETB_AT_SHOP, ETB_AT_TARGET, BUNDLE_AT_SHOP] {
        wait_state(&arbiter, id, ProductState::Purchased).await;
    }
    // The watcher polled the shop through its product list.
    let polls: Value = reqwest::get(format!("{}/admin/polls?tcin={ETB_AT_SHOP}", store.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        polls["polls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["endpoint"] == "shopify_products" && p["watcher"] == "w1"),
        "{polls}"
    );
    let ws = watcher.status().await;
    assert!(ws.source_blocked.is_empty(), "{ws:?}");
    // Its status names both sources it polls.
    assert!(
        ws.source.starts_with("target ") && ws.source.contains("shopify:cards.example"),
        "{}",
        ws.source
    );
}

#[tokio::test]
async fn a_bot_wall_at_one_shop_pauses_only_that_shop_and_is_named() {
    let list = products();
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&list)).await;
    let store = StoreSimProcess::start(list, &[]).await;
    let watcher = WatcherProcess::start_with(
        watcher_options("w1", &arbiter, &store).args(&["--block-cooldown", "60s"]),
    )
    .await;
    watcher.wait_connected().await;
    store
        .put(
            "/admin/shopify/block",
            json!({"kind": "cloudflare", "shop": SHOP, "for": "60s"}),
        )
        .await;

    let ws = eventually("the watcher names the shop's bot wall", LONG, || async {
        let ws = watcher.status().await;
        (ws.source_blocked == "bot_wall").then_some(ws)
    })
    .await;
    assert!(
        ws.source_blocked_detail.contains("shopify:cards.example"),
        "{ws:?}"
    );
    let s = eventually("the arbiter shows the block", LONG, || async {
        let mut c = arbiter.client().await;
        let s = status(&mut c).await;
        s.watchers
            .iter()
            .any(|w| {
                w.source_blocked
                    && w.source_block.as_ref().is_some_and(|b| {
                        b.kind == "bot_wall" && b.source == "shopify:cards.example"
                    })
            })
            .then_some(s)
    })
    .await;
    assert_eq!(s.watchers.len(), 1);
    let events = arbiter.events().await;
    let blocked = events
        .iter()
        .find(|e| e.kind == EventKind::SourceBlocked as i32)
        .expect("a SOURCE_BLOCKED event");
    assert!(
        blocked.detail.contains("bot_wall") && blocked.detail.contains("shopify:cards.example"),
        "{blocked:?}"
    );

    // Target is still polled, and a Target restock is still bought.
    store.clear_polls().await;
    store.set_stock(ETB_AT_TARGET, true).await;
    wait_state(&arbiter, ETB_AT_TARGET, ProductState::Purchased).await;
    assert!(!store.polls(ETB_AT_TARGET).await.is_empty());
    // The shop, paused for the cool-down, got no request since.
    assert!(store.polls(ETB_AT_SHOP).await.is_empty());
}

#[tokio::test]
async fn a_variant_the_shop_does_not_list_is_not_listed_not_out_of_stock() {
    let list = products();
    // The arbiter also watches a variant the shop does not sell.
    let mut watched = list.clone();
    watched.as_array_mut().unwrap().push(json!(
        {"id": "shopify:cards.example/40000000009", "name": "Not yet on sale"}
    ));
    let arbiter = ArbiterProcess::start(ArbiterOptions::listing(&watched)).await;
    let store = StoreSimProcess::start(list, &[]).await;
    let watcher = WatcherProcess::start_with(watcher_options("w1", &arbiter, &store)).await;
    let ws = eventually("the missing variant shows as not listed", LONG, || async {
        let ws = watcher.status().await;
        ws.products
            .iter()
            .any(|p| p.tcin == "shopify:cards.example/40000000009" && p.error_kind == "not_listed")
            .then_some(ws)
    })
    .await;
    // It blocks nothing: the shop's listed variants are polled and read.
    assert!(ws.source_blocked.is_empty(), "{ws:?}");
    store.set_stock(BUNDLE_AT_SHOP, true).await;
    wait_state(&arbiter, BUNDLE_AT_SHOP, ProductState::Purchased).await;
}
