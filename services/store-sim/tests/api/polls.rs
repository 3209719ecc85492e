//! `GET /admin/polls`: every stock request, by product and watcher, in order.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

async fn poll_as(app: &TestApp, tcin: &str, watcher: Option<&str>) -> StatusCode {
    let mut req = app
        .client
        .get(app.url(store_sim::http::FULFILLMENT_PATH))
        .query(&[("key", "k"), ("tcin", tcin)]);
    if let Some(w) = watcher {
        req = req.header("X-Restock-Watcher", w);
    }
    req.send().await.unwrap().status()
}

fn polls(v: &Value) -> Vec<(String, String, f64)> {
    v["polls"]
        .as_array()
        .expect("a polls list")
        .iter()
        .map(|p| {
            (
                p["tcin"].as_str().unwrap().to_owned(),
                p["watcher"].as_str().unwrap().to_owned(),
                p["at_ms"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_stock_request_is_logged_with_its_watcher_oldest_first() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let (_, before) = app.get_json("/admin/polls").await;
    assert_eq!(polls(&before), vec![]);

    assert_eq!(poll_as(&app, "111", Some("w1")).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(poll_as(&app, "222", Some("w2")).await, StatusCode::OK);
    assert_eq!(poll_as(&app, "111", None).await, StatusCode::OK);
    // An unknown product and an injected fault are still polls.
    assert_eq!(
        poll_as(&app, "999", Some("w1")).await,
        StatusCode::NOT_FOUND
    );
    app.put_json("/admin/faults", serde_json::json!({"status": 429}))
        .await;
    assert_eq!(
        poll_as(&app, "111", Some("w3")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // A request that names no product is not.
    let r = app
        .client
        .get(app.url(store_sim::http::FULFILLMENT_PATH))
        .query(&[("key", "k")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);

    let (status, all) = app.get_json("/admin/polls").await;
    assert_eq!(status, StatusCode::OK);
    let all = polls(&all);
    let who: Vec<(&str, &str)> = all
        .iter()
        .map(|(t, w, _)| (t.as_str(), w.as_str()))
        .collect();
    assert_eq!(
        who,
        vec![
            ("111", "w1"),
            ("222", "w2"),
            ("111", ""),
            ("999", "w1"),
            ("111", "w3")
        ]
    );
    let times: Vec<f64> = all.iter().map(|p| p.2).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[1] - times[0] >= 5.0,
        "the 5 ms sleep shows in the times: {times:?}"
    );
    assert!(
        times.iter().any(|t| t.fract() != 0.0),
        "sub-millisecond precision: {times:?}"
    );

    // Filters: the product, and polls at or after a time.
    let (_, one) = app.get_json("/admin/polls?tcin=111").await;
    let one = polls(&one);
    assert_eq!(one.len(), 3);
    assert!(one.iter().all(|p| p.0 == "111"));
    // A hair earlier: serde_json's default float parsing may land one ulp
    // off the printed value, which would leave out the poll at `since`.
    let since = all[2].2 - 1e-6;
    let (_, late) = app
        .get_json(&format!("/admin/polls?tcin=111&since_ms={since}"))
        .await;
    let late: Vec<String> = polls(&late).into_iter().map(|p| p.1).collect();
    assert_eq!(late, vec!["".to_owned(), "w3".to_owned()]);
    let (status, bad) = app.get_json("/admin/polls?since_ms=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    // unix_ms is on the orders' clock: near now.
    let (_, raw) = app.get_json("/admin/polls?tcin=222").await;
    let unix_ms = raw["polls"][0]["unix_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(unix_ms) < 60_000, "{unix_ms} vs {now}");

    let r = app
        .client
        .delete(app.url("/admin/polls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["cleared"], 5);
    let (_, after) = app.get_json("/admin/polls").await;
    assert_eq!(polls(&after), vec![]);
    assert_eq!(after["dropped"], 0);
}
