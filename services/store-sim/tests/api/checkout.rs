//! `POST /checkout`: fencing, stock, timing, and the overlap record.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::helpers::{checkout_with, eventually, overlapping_pair, spawn_app};

#[tokio::test]
async fn a_checkout_in_stock_is_purchased_and_recorded_with_its_times() {
    let app = spawn_app(Duration::from_millis(150)).await;
    app.set_stock("111", true).await;
    let (status, v) = app.checkout("111", 3, "watcher-a").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["result"], "purchased");
    assert_eq!(v["voided"], false);
    assert_eq!(v["price"], json!(59.99));

    let orders = app.orders().await;
    assert_eq!(orders["violations"], 0);
    assert_eq!(orders["violation_details"], json!([]));
    assert_eq!(orders["highest_token"], 3);
    assert_eq!(orders["in_flight"], json!([]));
    let o = &orders["orders"][0];
    assert_eq!(o["tcin"], "111");
    assert_eq!(o["fencing_token"], 3);
    assert_eq!(o["lease_id"], "lease-3");
    assert_eq!(o["watcher_id"], "watcher-a");
    assert_eq!(o["result"], "purchased");
    assert_eq!(o["accepted"], true);
    assert_eq!(o["voided"], false);
    let (start, end) = (
        o["started_at_ms"].as_u64().unwrap(),
        o["finished_at_ms"].as_u64().unwrap(),
    );
    assert!(start > 1_600_000_000_000, "unix ms: {start}");
    assert!(end - start >= 150, "took {} ms", end - start);
    app.stop().await;
}

#[tokio::test]
async fn refusals_are_recorded_stale_tokens_first() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("111", true).await;

    let (status, v) = app.checkout("222", 1, "a").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["result"], "out_of_stock");

    let (status, v) = app.checkout("111", 5, "a").await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::OK, json!("purchased"))
    );

    // Lower than the highest accepted token: refused, even in stock.
    let (status, v) = app.checkout("111", 4, "late").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["result"], "stale_token");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("highest accepted token 5")
    );
    // Stale beats out of stock, too.
    let (_, v) = app.checkout("222", 2, "late").await;
    assert_eq!(v["result"], "stale_token");

    // Equal to the highest: a token is used once, so reused is stale too.
    let (status, v) = app.checkout("111", 5, "a").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["result"], "stale_token");

    let (status, v) = app.checkout("999", 6, "a").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["result"], "unknown_product");

    let orders = app.orders().await;
    let results: Vec<&str> = orders["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        [
            "out_of_stock",
            "purchased",
            "stale_token",
            "stale_token",
            "stale_token",
            "unknown_product"
        ]
    );
    assert_eq!(orders["violations"], 0);
    assert_eq!(orders["highest_token"], 5);
    for o in orders["orders"].as_array().unwrap() {
        if o["accepted"] == false {
            assert_eq!(o["started_at_ms"], o["finished_at_ms"]);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn two_overlapping_checkouts_are_a_violation() {
    let app = spawn_app(Duration::from_millis(1000)).await;
    app.set_stock("111", true).await;
    // Rising tokens, so the only thing wrong here is that both run at once.
    let [a, b] =
        overlapping_pair(&app.client, app.addr, "111", 7, ["watcher-a", "watcher-b"]).await;
    assert_eq!(a.1["result"], "purchased");
    assert_eq!(b.1["result"], "purchased");

    let orders = app.orders().await;
    assert_eq!(orders["violations"], 1, "{orders:#}");
    let v = &orders["violation_details"][0];
    let watchers = [
        v["first"]["watcher_id"].clone(),
        v["second"]["watcher_id"].clone(),
    ];
    assert!(watchers.contains(&json!("watcher-a")) && watchers.contains(&json!("watcher-b")));
    assert_eq!(v["detected_by"], "in_flight");
    assert!(v["message"].as_str().unwrap().contains("overlapped"));
    app.stop().await;
}

#[tokio::test]
async fn an_overlap_is_seen_while_the_checkouts_are_still_running() {
    let app = spawn_app(Duration::from_millis(2000)).await;
    app.set_stock("222", true).await;
    let (client, addr) = (app.client.clone(), app.addr);
    let first =
        tokio::spawn(async move { checkout_with(&client, addr, "222", 1, "a", false).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.orders().await["in_flight"].as_array().unwrap().len() == 1
        })
        .await
    );
    let (client, addr) = (app.client.clone(), app.addr);
    let second =
        tokio::spawn(async move { checkout_with(&client, addr, "222", 2, "b", false).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.orders().await["violations"] == 1
        })
        .await,
        "counted as soon as the second began"
    );
    let in_flight = app.orders().await["in_flight"].clone();
    assert_eq!(in_flight.as_array().unwrap().len(), 2, "{in_flight}");
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(app.orders().await["violations"], 1, "counted once");
    app.stop().await;
}

#[tokio::test]
async fn sequential_checkouts_are_not_violations() {
    let app = spawn_app(Duration::from_millis(50)).await;
    app.set_stock("111", true).await;
    for token in 1..=5 {
        let (status, v) = app.checkout("111", token, "w").await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let orders = app.orders().await;
    assert_eq!(orders["violations"], 0, "{orders:#}");
    let list = orders["orders"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    for pair in list.windows(2) {
        assert!(pair[0]["finished_at_ms"].as_u64() <= pair[1]["started_at_ms"].as_u64());
    }
    app.stop().await;
}

#[tokio::test]
async fn test_mode_voids_the_order_so_the_loop_can_run_forever() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("111", true).await;
    for token in 1..=3 {
        let (status, v) = checkout_with(&app.client, app.addr, "111", token, "w", true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["result"], "purchased");
        assert_eq!(v["voided"], true);
        assert_eq!(v["test_mode"], true);
    }
    assert_eq!(app.shipping_status("111").await, "IN_STOCK");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_aborts_its_checkout() {
    let app = spawn_app(Duration::from_secs(30)).await;
    app.set_stock("111", true).await;
    // A raw connection, so the test decides exactly when the client goes
    // away: once the server has the checkout in flight.
    let body = r#"{"tcin": "111", "fencing_token": 1, "lease_id": "l1", "watcher_id": "gone"}"#;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /checkout HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.orders().await["in_flight"].as_array().unwrap().len() == 1
        })
        .await
    );
    drop(conn);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.orders().await["orders"]
                .as_array()
                .is_some_and(|o| o.len() == 1 && o[0]["result"] == "aborted")
        })
        .await,
        "{:#}",
        app.orders().await
    );
    // It no longer counts as running: the next checkout is not a violation.
    let resp = app
        .put_json("/admin/checkout", json!({"delay_ms": 10}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = app.checkout("111", 2, "next").await;
    assert_eq!(status, StatusCode::OK);
    let orders = app.orders().await;
    assert_eq!(orders["violations"], 0, "{orders:#}");
    assert_eq!(orders["orders"][0]["accepted"], true);
    assert_eq!(orders["in_flight"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn delay_and_failure_can_be_changed_at_run_time() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("111", true).await;
    let (status, v) = app.get_json("/admin/checkout").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"delay_ms": 10, "fail": false}));

    let v: Value = app
        .put_json("/admin/checkout", json!({"delay_ms": 250, "fail": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"delay_ms": 250, "fail": true}));
    let started = std::time::Instant::now();
    let (status, v) = app.checkout("111", 1, "w").await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["result"], "failed");
    assert_eq!(v["accepted"], true);

    // Only `fail` changes; the delay stays.
    let v: Value = app
        .put_json("/admin/checkout", json!({"fail": false}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"delay_ms": 250, "fail": false}));
    let (status, _) = app.checkout("111", 2, "w").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn orders_can_be_cleared() {
    let app = spawn_app(Duration::from_millis(300)).await;
    app.set_stock("111", true).await;
    overlapping_pair(&app.client, app.addr, "111", 1, ["a", "b"]).await;
    assert_eq!(app.orders().await["violations"], 1);
    let resp = app
        .client
        .delete(app.url("/admin/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let orders = app.orders().await;
    assert_eq!(orders["violations"], 0);
    assert_eq!(orders["orders"], json!([]));
    // Fencing does not go backwards on a clear.
    assert_eq!(orders["highest_token"], 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrency_every_overlapping_pair_is_counted_exactly_once() {
    let app = spawn_app(Duration::from_millis(300)).await;
    app.set_stock("111", true).await;
    let runs: Vec<_> = (0..10)
        .map(|i| {
            let (client, addr) = (app.client.clone(), app.addr);
            tokio::spawn(async move {
                // 70 ms apart: no start lands near another's end (300 ms later).
                tokio::time::sleep(Duration::from_millis(i * 70)).await;
                // Rising tokens in start order: each is accepted.
                checkout_with(&client, addr, "111", i + 1, &format!("w{i}"), true).await
            })
        })
        .collect();
    for r in runs {
        let (status, v) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let orders = app.orders().await;
    let list = orders["orders"].as_array().unwrap();
    assert_eq!(list.len(), 10);
    // With 300 ms checkouts, intervals that overlap do so by far more than
    // a millisecond, so the timestamps tell the same story as the ledger.
    let spans: Vec<(u64, u64)> = list
        .iter()
        .map(|o| {
            (
                o["started_at_ms"].as_u64().unwrap(),
                o["finished_at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut overlapping = 0;
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.0 < b.1 && b.0 < a.1 {
                overlapping += 1;
            }
        }
    }
    assert!(overlapping > 0);
    assert_eq!(orders["violations"], overlapping, "{orders:#}");
    app.stop().await;
}
