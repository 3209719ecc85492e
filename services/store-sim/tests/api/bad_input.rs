//! Malformed requests get a 400 with a JSON error, never a panic or a hang.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

async fn error_of(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let v: Value = resp.json().await.expect("a JSON error body");
    (
        status,
        v["error"].as_str().expect("an error field").to_owned(),
    )
}

#[tokio::test]
async fn malformed_checkouts_are_refused_and_not_recorded() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let cases: [(&str, &str); 7] = [
        ("{\"tcin\": \"111\", ", "invalid JSON"),
        ("", "empty"),
        ("[1,2]", "invalid JSON"),
        (r#"{"fencing_token": 1}"#, "tcin"),
        (r#"{"tcin": "111"}"#, "fencing_token"),
        (r#"{"tcin": "111", "fencing_token": -1}"#, "expected u64"),
        (
            r#"{"tcin": "1 1", "fencing_token": 1}"#,
            "product id \"1 1\"",
        ),
    ];
    for (body, want) in cases {
        let resp = app
            .client
            .post(app.url("/checkout"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(resp).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error.contains(want), "{body}: {error}");
    }
    // Parse errors say where.
    let resp = app
        .client
        .post(app.url("/checkout"))
        .body("{\n \"tcin\": 111x }")
        .send()
        .await
        .unwrap();
    let (_, error) = error_of(resp).await;
    assert!(error.contains("line 2"), "{error}");
    // A body without a content type is still read as JSON.
    let resp = app
        .client
        .post(app.url("/checkout"))
        .body(r#"{"tcin": "111", "fencing_token": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "out of stock, but understood"
    );

    let orders = app.orders().await;
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn malformed_admin_requests_are_refused() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for (path, body, want) in [
        (
            "/admin/stock/111",
            json!({"instock": true}),
            "unknown field",
        ),
        ("/admin/stock/111", json!({}), "nothing to change"),
        (
            "/admin/stock/111",
            json!({"in_stock": "yes"}),
            "invalid JSON",
        ),
        ("/admin/stock/111", json!({"price": -5}), "price"),
        (
            "/admin/stock/a%20b",
            json!({"in_stock": true}),
            "product id \"a b\"",
        ),
        ("/admin/checkout", json!({"delay": 5}), "unknown field"),
        ("/admin/faults", json!({"status": "429"}), "invalid JSON"),
    ] {
        let (status, error) = error_of(app.put_json(path, body.clone()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(error.contains(want), "{path} {body}: {error}");
    }
    let (status, _) = error_of(app.client.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = error_of(app.client.get(app.url("/checkout")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // Nothing changed.
    assert_eq!(app.shipping_status("111").await, "OUT_OF_STOCK");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_running_checkout_finish() {
    let app = spawn_app(Duration::from_millis(400)).await;
    app.set_stock("111", true).await;
    let (client, addr) = (app.client.clone(), app.addr);
    let running = tokio::spawn(async move {
        crate::helpers::checkout_with(&client, addr, "111", 1, "w", false).await
    });
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.orders().await["in_flight"].as_array().unwrap().len() == 1
        })
        .await
    );
    app.stop().await;
    let (status, v) = running.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["result"], "purchased");
}
