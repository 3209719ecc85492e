//! `GET /metrics`: checkouts by result (refusals included), fulfillment
//! answers by status (an injected fault included), and overlapping
//! checkouts, counted over real HTTP. (promtool checks this page in the
//! watcher's metrics tests, which run the real binary.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, overlapping_pair, spawn_app};

async fn metrics(app: &TestApp) -> String {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn checkouts_and_answers_are_counted_by_result_and_status() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("111", true).await;
    app.checkout("222", 1, "a").await;
    app.checkout("111", 5, "a").await;
    app.checkout("111", 4, "late").await;
    app.fulfillment("111").await;
    app.put_json("/admin/faults", json!({"status": 435, "for_ms": 5000}))
        .await;
    app.fulfillment("111").await;
    app.fulfillment("111").await;

    let text = metrics(&app).await;
    for (series, want) in [
        (r#"store_sim_checkouts_total{result="out_of_stock"}"#, 1.0),
        (r#"store_sim_checkouts_total{result="purchased"}"#, 1.0),
        (r#"store_sim_checkouts_total{result="stale_token"}"#, 1.0),
        (r#"store_sim_fulfillment_requests_total{code="200"}"#, 1.0),
        (r#"store_sim_fulfillment_requests_total{code="435"}"#, 2.0),
        ("store_sim_violations_total", 0.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_overlap_counts_as_a_violation_and_stays_counted_after_a_clear() {
    let app = spawn_app(Duration::from_millis(500)).await;
    app.set_stock("111", true).await;
    overlapping_pair(&app.client, app.addr, "111", 7, ["watcher-a", "watcher-b"]).await;
    assert_eq!(
        value(&metrics(&app).await, "store_sim_violations_total"),
        Some(1.0)
    );
    let r = app
        .client
        .delete(app.url("/admin/orders"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        value(&metrics(&app).await, "store_sim_violations_total"),
        Some(1.0),
        "a counter does not go back"
    );
    app.stop().await;
}
