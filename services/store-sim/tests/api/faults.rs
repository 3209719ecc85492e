//! Injected faults on the fulfillment endpoint.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{eventually, spawn_app};

#[tokio::test]
async fn a_429_lasts_for_its_time_then_the_store_recovers() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("111", true).await;

    let resp = app
        .put_json("/admin/faults", json!({"status": 429, "for_ms": 1500}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["fault"]["status"], 429);
    assert!(v["fault"]["remaining_ms"].as_u64().unwrap() <= 1500);

    let resp = app.fulfillment("111").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_none());
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("429"));
    // Unknown products get the fault too: it comes before any lookup.
    assert_eq!(
        app.fulfillment("999").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Only the retailer's endpoint is affected.
    let (status, v) = app.get_json("/admin/faults").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["fault"]["status"], 429);
    let (status, _) = app.checkout("111", 1, "w").await;
    assert_eq!(status, StatusCode::OK);

    assert!(
        eventually(Duration::from_secs(5), || async {
            app.fulfillment("111").await.status() == StatusCode::OK
        })
        .await,
        "the fault ends by itself"
    );
    assert_eq!(app.shipping_status("111").await, "IN_STOCK");
    let (_, v) = app.get_json("/admin/faults").await;
    assert_eq!(v["fault"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn every_blocking_status_can_be_injected_and_cleared() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for status in [403u16, 435, 500, 503] {
        let resp = app
            .put_json(
                "/admin/faults",
                json!({"status": status, "retry_after_s": 2}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = app.fulfillment("111").await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["retry-after"], "2");
        let resp = app
            .client
            .delete(app.url("/admin/faults"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["cleared"]["status"], status);
        assert_eq!(app.fulfillment("111").await.status(), StatusCode::OK);
    }

    for bad in [
        json!({"status": 200}),
        json!({"status": 700}),
        json!({"for_ms": 5}),
    ] {
        let resp = app.put_json("/admin/faults", bad.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    app.stop().await;
}
