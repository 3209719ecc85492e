//! The four RedSky endpoints together: stock and price changes show on every
//! one, the summary answers many products at once, polls and metrics count
//! every endpoint, and injected faults stand in front of all of them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use store_sim::http::{FULFILLMENT_PATH, HIERARCHY_PATH, PDP_CLIENT_PATH, SUMMARY_PATH};

use crate::helpers::{TestApp, spawn_app};

/// Every channel's status in a `fulfillment` object: shipping, pickup, in
/// store, scheduled delivery.
fn channels(f: &Value) -> [String; 4] {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    [
        s(&f["shipping_options"]["availability_status"]),
        s(&f["store_options"][0]["order_pickup"]["availability_status"]),
        s(&f["store_options"][0]["in_store_only"]["availability_status"]),
        s(&f["scheduled_delivery"]["availability_status"]),
    ]
}

/// The fulfillment object of `tcin` on each endpoint that has one.
async fn fulfillments(app: &TestApp, tcin: &str) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for path in [FULFILLMENT_PATH, HIERARCHY_PATH] {
        let v = app.redsky_json(path, &[("tcin", tcin)]).await;
        out.push((path, v["data"]["product"]["fulfillment"].clone()));
    }
    let v = app.redsky_json(SUMMARY_PATH, &[("tcins", tcin)]).await;
    out.push((
        SUMMARY_PATH,
        v["data"]["product_summaries"][0]["fulfillment"].clone(),
    ));
    out
}

const IN: [&str; 4] = ["IN_STOCK", "IN_STOCK", "IN_STOCK", "IN_STOCK"];
// As both out-of-stock recordings write it (hierarchy 1011209279, summary #13).
const OUT: [&str; 4] = ["OUT_OF_STOCK", "UNAVAILABLE", "OUT_OF_STOCK", "UNAVAILABLE"];

#[tokio::test]
async fn stock_changes_show_on_every_endpoint_and_prices_where_prices_are() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for (path, f) in fulfillments(&app, "111").await {
        assert_eq!(channels(&f), OUT, "{path}");
        assert_eq!(f["is_out_of_stock_in_all_store_locations"], true, "{path}");
    }
    app.set_stock("111", true).await;
    for (path, f) in fulfillments(&app, "111").await {
        assert_eq!(channels(&f), IN, "{path}");
        assert_eq!(f["product_id"], "111", "{path}");
    }
    let resp = app
        .put_json(
            "/admin/stock/111",
            json!({"in_stock": false, "price": 12.5}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for (path, f) in fulfillments(&app, "111").await {
        assert_eq!(channels(&f), OUT, "{path}");
    }
    // The new price, on the two endpoints that carry one.
    let pdp = app.redsky_json(PDP_CLIENT_PATH, &[("tcin", "111")]).await;
    assert_eq!(
        pdp["data"]["product"]["price"]["current_retail"],
        json!(12.5)
    );
    assert_eq!(
        pdp["data"]["product"]["price"]["formatted_current_price"],
        "$12.50"
    );
    let sum = app.redsky_json(SUMMARY_PATH, &[("tcins", "111")]).await;
    assert_eq!(
        sum["data"]["product_summaries"][0]["price"]["current_retail"],
        json!(12.5)
    );
    // A product's own name is its title.
    assert_eq!(
        pdp["data"]["product"]["item"]["product_description"]["title"],
        "Elite Trainer Box"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_summary_answers_many_products_in_one_request_and_leaves_unknown_ones_out() {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("222", true).await;
    let v = app
        .redsky_json(
            SUMMARY_PATH,
            &[("tcins", "222,999,111,222"), ("skip_price_promo", "true")],
        )
        .await;
    let list = v["data"]["product_summaries"].as_array().unwrap();
    let tcins: Vec<&str> = list.iter().map(|s| s["tcin"].as_str().unwrap()).collect();
    assert_eq!(tcins, ["222", "111"], "in the order asked, each once");
    assert_eq!(channels(&list[0]["fulfillment"]), IN);
    assert_eq!(channels(&list[1]["fulfillment"]), OUT);
    assert!(list.iter().all(|s| s.get("price").is_none()));
    assert!(
        v.get("errors").is_none(),
        "no recording shows an error entry"
    );

    // The recording answers 29 products at once: more than 24 is fine.
    let many: Vec<String> = (1..=29).map(|i| (1000 + i).to_string()).collect();
    let many = format!("111,{}", many.join(","));
    let v = app.redsky_json(SUMMARY_PATH, &[("tcins", &many)]).await;
    assert_eq!(v["data"]["product_summaries"].as_array().unwrap().len(), 1);

    // Nothing known: an empty list, not an error.
    let v = app.redsky_json(SUMMARY_PATH, &[("tcins", "999")]).await;
    assert_eq!(v["data"]["product_summaries"], json!([]));

    for (query, want) in [
        (vec![("tcins", "")], "tcins"),
        (vec![("tcins", "111,1 1")], "tcins"),
    ] {
        let resp = app.redsky(SUMMARY_PATH, &query).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query:?}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(want), "{v}");
    }
    let resp = app
        .client
        .get(app.url(SUMMARY_PATH))
        .query(&[("tcins", "111")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "key is required");
    app.stop().await;
}

#[tokio::test]
async fn single_product_endpoints_check_their_parameters_and_know_their_products() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for path in [HIERARCHY_PATH, PDP_CLIENT_PATH] {
        let resp = app.redsky(path, &[("tcin", "999")]).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["errors"][0]["message"], "No product found with tcin 999");
        let resp = app.redsky(path, &[]).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("tcin"), "{v}");
    }
    app.stop().await;
}

#[tokio::test]
async fn every_endpoint_is_a_poll_of_each_product_it_names_and_is_counted() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let watcher = |path: &'static str, q: Vec<(&'static str, &'static str)>| {
        let app = &app;
        async move {
            app.client
                .get(app.url(path))
                .header("x-restock-watcher", "w7")
                .query(&[("key", "k")])
                .query(&q)
                .send()
                .await
                .unwrap()
        }
    };
    watcher(FULFILLMENT_PATH, vec![("tcin", "111")]).await;
    watcher(HIERARCHY_PATH, vec![("tcin", "111")]).await;
    watcher(PDP_CLIENT_PATH, vec![("tcin", "222")]).await;
    watcher(SUMMARY_PATH, vec![("tcins", "111,222,999,111")]).await;

    let (status, v) = app.get_json("/admin/polls").await;
    assert_eq!(status, StatusCode::OK);
    let polls: Vec<(String, String, String)> = v["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["endpoint"].as_str().unwrap().to_owned(),
                p["tcin"].as_str().unwrap().to_owned(),
                p["watcher"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let p = |e: &str, t: &str| (e.to_owned(), t.to_owned(), "w7".to_owned());
    assert_eq!(
        polls,
        [
            p("product_fulfillment_v1", "111"),
            p("product_fulfillment_and_variation_hierarchy_v1", "111"),
            p("pdp_client_v1", "222"),
            p("product_summary_with_fulfillment_v1", "111"),
            p("product_summary_with_fulfillment_v1", "222"),
            p("product_summary_with_fulfillment_v1", "999"),
        ]
    );
    let (_, v) = app
        .get_json("/admin/polls?endpoint=pdp_client_v1&tcin=222")
        .await;
    assert_eq!(v["polls"].as_array().unwrap().len(), 1);

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"store_sim_redsky_requests_total{endpoint="product_fulfillment_v1",code="200"} 1"#,
        r#"store_sim_redsky_requests_total{endpoint="product_fulfillment_and_variation_hierarchy_v1",code="200"} 1"#,
        r#"store_sim_redsky_requests_total{endpoint="pdp_client_v1",code="200"} 1"#,
        r#"store_sim_redsky_requests_total{endpoint="product_summary_with_fulfillment_v1",code="200"} 1"#,
        // The legacy endpoint's own counter is kept as it was.
        r#"store_sim_fulfillment_requests_total{code="200"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series}\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_injected_fault_answers_on_every_endpoint() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let resp = app
        .put_json("/admin/faults", json!({"status": 503, "retry_after_s": 3}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for (path, q) in [
        (FULFILLMENT_PATH, ("tcin", "111")),
        (HIERARCHY_PATH, ("tcin", "111")),
        (SUMMARY_PATH, ("tcins", "111")),
        (PDP_CLIENT_PATH, ("tcin", "111")),
    ] {
        let resp = app.redsky(path, &[q]).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(resp.headers()["retry-after"], "3", "{path}");
    }
    app.client
        .delete(app.url("/admin/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.redsky(SUMMARY_PATH, &[("tcins", "111")]).await.status(),
        StatusCode::OK
    );
    app.stop().await;
}
