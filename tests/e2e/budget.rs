//! The spending limit with the real binaries: an arbiter whose product
//! config sets a budget, the store simulator (its order book is what was
//! really bought) and a watcher polling the batch summary, which carries
//! prices. `restockctl budget` changes it with a reason; a `kill -9` of the
//! arbiter between the grant and the release keeps the reservation.

use std::{process::Command, time::Duration};

use restock_proto::v1::{self as pb, ProductState};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, bin, eventually,
    metrics::{check_metrics, metric, scrape},
    purchased,
};
use serde_json::{Value, json};

use crate::helpers::{product, status};

const LONG: Duration = Duration::from_secs(30);

/// A $30 and a $25 product (the simulator starts each at its max_price).
fn priced_products() -> Value {
    json!([
        {"tcin": "100", "name": "Elite Trainer Box", "max_price": 30.00},
        {"tcin": "200", "name": "Booster Bundle", "max_price": 25.00},
        {"tcin": "300", "name": "Sleeves", "max_price": 10.00}
    ])
}

async fn start(
    budget: Value,
    checkout_delay: &str,
) -> (ArbiterProcess, StoreSimProcess, WatcherProcess) {
    let list = priced_products();
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        budget: Some(budget),
        failure_cooldown: "300ms".into(),
        ..ArbiterOptions::listing(&list)
    })
    .await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", checkout_delay]).await;
    // The summary answers carry the price with the stock: what a grant
    // reserves and max_price checks.
    let watcher = WatcherProcess::start_with(
        WatcherOptions::new("w1", arbiter.url())
            .store(&store)
            .endpoint("summary")
            .poll_interval("200ms"),
    )
    .await;
    (arbiter, store, watcher)
}

async fn wait_state(
    arbiter: &ArbiterProcess,
    tcin: &str,
    want: ProductState,
) -> pb::GetStatusResponse {
    eventually(&format!("{tcin} {want:?}"), LONG, || async {
        let mut c = arbiter.client().await;
        let s = status(&mut c).await;
        (product(&s, tcin).state == want as i32).then_some(s)
    })
    .await
}

async fn wait_purchases(store: &StoreSimProcess, n: usize) -> Value {
    eventually(&format!("{n} purchases at the store"), LONG, || async {
        let o = store.orders().await;
        (purchased(&o).len() >= n).then_some(o)
    })
    .await
}

fn restockctl(arbiter: &ArbiterProcess, args: &[&str]) -> std::process::Output {
    Command::new(bin("restockctl"))
        .args(["--arbiter", &arbiter.addr().to_string()])
        .args(args)
        .output()
        .expect("run restockctl")
}

#[tokio::test]
async fn with_50_dollars_of_30_and_25_exactly_one_is_bought_and_the_other_is_over_budget() {
    let (arbiter, store, _w) = start(json!({"max_spend": 50.00}), "100ms").await;
    arbiter.set_paused(true).await;
    store.set_stock("100", true).await;
    store.set_stock("200", true).await;
    wait_state(&arbiter, "200", ProductState::Queued).await;
    arbiter.set_paused(false).await;

    wait_purchases(&store, 1).await;
    let s = wait_state(&arbiter, "200", ProductState::OverBudget).await;
    let b = s.budget.clone().expect("the status has the budget");
    assert_eq!(b.spent_cents, 3_000, "{b:?}");
    assert_eq!(b.left_cents, Some(2_000), "{b:?}");
    assert_eq!(b.purchases, 1);
    assert!(
        product(&s, "200").held_back.contains("$20.00 left"),
        "{:?}",
        product(&s, "200")
    );
    // The metrics say the same, and promtool accepts the page (NaN where
    // the budget sets no such limit).
    let (text, _) = scrape(&arbiter.metrics_url()).await;
    check_metrics("arbiter /metrics with a budget", &text);
    assert_eq!(
        metric(&text, "restock_budget_spent_dollars"),
        Some(30.0),
        "{text}"
    );
    assert_eq!(metric(&text, "restock_budget_left_dollars"), Some(20.0));
    assert!(metric(&text, "restock_budget_purchases_left").is_some_and(f64::is_nan));
    assert_eq!(
        metric(&text, r#"restock_products{state="over_budget"}"#),
        Some(1.0)
    );
    // Nothing more is bought while 200 stays in stock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let orders = store.orders().await;
    let bought: Vec<&str> = purchased(&orders)
        .iter()
        .map(|o| o["tcin"].as_str().unwrap())
        .collect();
    assert_eq!(bought, ["100"], "{orders:#}");

    // restockctl shows it, and refuses a change without a reason.
    let shown = restockctl(&arbiter, &["budget", "show"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("$30.00") && text.contains("$20.00 left"),
        "{text}"
    );
    let no_reason = restockctl(&arbiter, &["budget", "set", "--max-spend", "80"]);
    assert_eq!(no_reason.status.code(), Some(2), "{no_reason:?}");
    // Raised with a reason: 200 is bought, and the reason is in the history.
    let raised = restockctl(
        &arbiter,
        &[
            "budget",
            "set",
            "--max-spend",
            "80",
            "--reason",
            "second box for a friend",
        ],
    );
    assert!(raised.status.success(), "{raised:?}");
    let orders = wait_purchases(&store, 2).await;
    assert_eq!(purchased(&orders)[1]["tcin"], "200");
    let mut c = arbiter.client().await;
    let mut feed = c
        .watch_events(pb::WatchEventsRequest { from_sequence: 1 })
        .await
        .unwrap()
        .into_inner();
    let changed = tokio::time::timeout(LONG, async {
        loop {
            let e = feed.message().await.unwrap().expect("the feed stays open");
            if e.kind == pb::event::Kind::BudgetChanged as i32 {
                return e;
            }
        }
    })
    .await
    .expect("BUDGET_CHANGED in the history");
    assert!(
        changed.detail.contains("second box for a friend"),
        "{changed:?}"
    );
    let s = status(&mut c).await;
    assert_eq!(s.budget.unwrap().spent_cents, 5_500);
}

#[tokio::test]
async fn two_purchases_allowed_over_three_products_then_none() {
    let (arbiter, store, _w) = start(json!({"max_purchases": 2, "window": "24h"}), "50ms").await;
    arbiter.set_paused(true).await;
    for t in ["100", "200", "300"] {
        store.set_stock(t, true).await;
    }
    wait_state(&arbiter, "300", ProductState::Queued).await;
    arbiter.set_paused(false).await;
    wait_purchases(&store, 2).await;
    let s = wait_state(&arbiter, "300", ProductState::OverBudget).await;
    assert_eq!(s.budget.unwrap().purchases_left, Some(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(purchased(&store.orders().await).len(), 2);
}

#[tokio::test]
async fn a_failed_checkout_frees_its_reservation() {
    let (arbiter, store, _w) = start(json!({"max_spend": 50.00}), "100ms").await;
    store.put("/admin/checkout", json!({"fail": true})).await;
    store.set_stock("100", true).await;
    eventually("a failed checkout", LONG, || async {
        let o = store.orders().await;
        o["orders"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o["result"] == "failed"))
            .then_some(())
    })
    .await;
    let b = eventually("the failure released", LONG, || async {
        let mut c = arbiter.client().await;
        let s = status(&mut c).await;
        (s.active_lease.is_none()).then(|| s.budget.unwrap())
    })
    .await;
    assert_eq!(
        (b.spent_cents, b.purchases, b.reserved_cents),
        (0, 0, None),
        "{b:?}"
    );
    assert_eq!(b.left_cents, Some(5_000));
    // The next attempts go through: one purchase of $30.
    store.put("/admin/checkout", json!({"fail": false})).await;
    wait_purchases(&store, 1).await;
    let b = eventually("the purchase counted", LONG, || async {
        let mut c = arbiter.client().await;
        let b = status(&mut c).await.budget.unwrap();
        (b.purchases == 1).then_some(b)
    })
    .await;
    assert_eq!((b.spent_cents, b.reserved_cents), (3_000, None), "{b:?}");
}

#[tokio::test]
async fn a_kill_9_between_grant_and_release_keeps_the_reservation() {
    let (mut arbiter, store, _w) = start(json!({"max_spend": 50.00}), "4s").await;
    store.set_stock("100", true).await;
    eventually("a checkout in flight", LONG, || async {
        let o = store.orders().await;
        o["in_flight"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    })
    .await;
    arbiter.kill9_and_restart().await;
    let mut c = arbiter.client().await;
    let b = status(&mut c).await.budget.unwrap();
    assert_eq!(
        b.reserved_cents,
        Some(3_000),
        "the reservation came back: {b:?}"
    );
    assert_eq!(b.reserved_for_tcin, "100");
    assert_eq!(b.left_cents, Some(2_000));
    // The checkout finishes, its release turns the reservation into spend.
    wait_purchases(&store, 1).await;
    let b = eventually("the release counted", LONG, || async {
        let mut c = arbiter.client().await;
        let b = status(&mut c).await.budget.unwrap();
        (b.purchases == 1).then_some(b)
    })
    .await;
    assert_eq!((b.spent_cents, b.reserved_cents), (3_000, None), "{b:?}");
}

#[tokio::test]
async fn a_bad_budget_stops_start_up_naming_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("product_config.json");
    std::fs::write(
        &config,
        r#"{"products":[{"tcin":"100"}],"budget":{"max_spend":50,"window":"a while"}}"#,
    )
    .unwrap();
    let out = Command::new(bin("purchase-arbiter"))
        .args(["--config", &config.display().to_string()])
        .args([
            "--state-file",
            &dir.path().join("s.json").display().to_string(),
        ])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("product_config.json") && err.contains("budget.window"),
        "{err}"
    );
}
