//! The purchase cycle: a restock is reported, granted, checked out with the
//! lease's fencing token, and released with the real outcome.

use std::time::Duration;

use restock_proto::v1::{self as pb, ReloadConfigRequest, event::Kind};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, event_kind as kind, eventually, product,
    spawn_arbiter, spawn_arbiter_with,
};

use crate::{helpers::start_buying_watcher, stub::StoreStub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_switched_in_stock_gets_bought_with_the_leases_token() {
    let arbiter = spawn_arbiter().await;
    let store = StoreStub::start().await;
    let watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    // Everything is out of stock: nothing is bought.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.checkouts().is_empty());

    store.set_stock("200", true);
    let checkout = store.first_checkout().await;
    assert_eq!(checkout.tcin(), "200");
    assert_eq!(checkout.body["watcher_id"], "w1");
    assert_eq!(checkout.body["test_mode"], false);

    // The release says purchased, and the POST carried the granted lease.
    eventually(
        "product 200 purchased at the arbiter",
        Duration::from_secs(10),
        || async {
            let s = arbiter.status().await;
            (product(&s, "200").state == pb::ProductState::Purchased as i32).then_some(())
        },
    )
    .await;
    let evs = arbiter.events().await;
    let granted = evs
        .iter()
        .find(|e| kind(e) == Kind::Granted && e.tcin == "200")
        .expect("a GRANTED event");
    assert_eq!(checkout.token(), granted.fencing_token);
    assert_eq!(checkout.body["lease_id"], granted.lease_id.as_str());
    let released = evs
        .iter()
        .find(|e| kind(e) == Kind::Released && e.lease_id == granted.lease_id)
        .expect("a RELEASED event");
    assert_eq!(released.outcome, pb::Outcome::Purchased as i32);
    assert!(released.detail.contains("purchased"), "{released:?}");

    let s = watcher.status().await;
    assert_eq!(s.checkouts_purchased, 1);
    assert!(s.checkout.is_none());
    assert_eq!(s.checkout_kind, "http");
    assert_eq!(store.checkouts().len(), 1, "bought once (normal mode)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_mode_cycles_the_top_product_with_test_mode_set() {
    let arbiter = spawn_arbiter_with(ArbiterOptions {
        test_mode: true,
        ..Default::default()
    })
    .await;
    let store = StoreStub::start().await;
    store.set_stock("100", true);
    store.set_stock("300", true);
    let _watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    let orders = eventually("three checkouts", Duration::from_secs(15), || async {
        let c = store.checkouts();
        (c.len() >= 3).then_some(c)
    })
    .await;
    for (i, o) in orders.iter().enumerate() {
        assert_eq!(o.tcin(), "100", "order {i}: the top product while in stock");
        assert_eq!(o.body["test_mode"], true);
        if i > 0 {
            assert!(
                o.token() > orders[i - 1].token(),
                "tokens strictly increase"
            );
            let prev_end = orders[i - 1].ended_at.expect("previous order ended");
            assert!(o.received_at >= prev_end, "orders never overlap");
        }
    }
    // Out of stock: the next one in priority is bought.
    store.set_stock("100", false);
    store
        .wait_checkout_of("300", "product 300 bought", Duration::from_secs(15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_above_its_max_price_is_not_bought() {
    let arbiter = spawn_arbiter().await;
    std::fs::write(
        arbiter.config_file(),
        r#"{"products": [
            {"tcin": "100", "name": "Cards", "max_price": 10.0},
            {"tcin": "200", "name": "Console"}
        ]}"#,
    )
    .unwrap();
    arbiter
        .client()
        .await
        .reload_config(ReloadConfigRequest {})
        .await
        .expect("ReloadConfig");
    let store = StoreStub::start().await;
    store.set_price("100", 24.99);
    store.set_stock("100", true);
    let watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    eventually(
        "the price in the watcher's status",
        Duration::from_secs(10),
        || async {
            let s = watcher.status().await;
            s.products
                .iter()
                .any(|p| p.tcin == "100" && p.in_stock && p.price_cents == Some(2_499))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(store.checkouts().is_empty(), "over max_price: not bought");
    let s = arbiter.status().await;
    assert!(product(&s, "100").in_stock_at.is_empty());

    store.set_price("100", 9.99);
    store
        .wait_checkout_of("100", "bought at the lower price", Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arbiter_restarted_mid_checkout_takes_the_release() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "8s".into(),
        ..Default::default()
    })
    .await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(crate::stub::CheckoutMode::Purchase(Duration::from_secs(3)));
    let watcher = start_buying_watcher(&arbiter, &store, &[]).await;
    store.set_stock("100", true);
    store.first_checkout().await;
    arbiter.kill9_and_restart().await;
    eventually(
        "100 purchased after the restart",
        Duration::from_secs(15),
        || async {
            let s = arbiter.status().await;
            let p = product(&s, "100");
            (p.state == pb::ProductState::Purchased as i32).then_some(())
        },
    )
    .await;
    let c = &store.checkouts()[0];
    assert!(!c.dropped, "the checkout finished");
    assert_eq!(store.checkouts().len(), 1);
    let s = watcher.status().await;
    assert_eq!(s.checkouts_purchased, 1);
    eventually(
        "the watcher to reconnect",
        Duration::from_secs(10),
        || async {
            let s = watcher.status().await;
            (s.arbiter_connected && s.reconnects >= 1).then_some(())
        },
    )
    .await;
}
