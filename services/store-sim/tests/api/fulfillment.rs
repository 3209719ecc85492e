//! The legacy fulfillment endpoint (`product_fulfillment_v1`) and the stock
//! admin API.

use std::{collections::HashMap, time::Duration};

use reqwest::StatusCode;
use restock_domain::ProductId;
use serde_json::{Value, json};
use store_sim::{
    scenario::{Scenario, Window},
    stock::Driver,
};

use crate::helpers::{eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn answers_in_the_retailers_format_and_follows_manual_stock() {
    let app = spawn_app(Duration::from_millis(10)).await;

    let resp = app.fulfillment("111").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = resp.json().await.unwrap();
    let product = &v["data"]["product"];
    assert_eq!(product["tcin"], "111");
    let f = &product["fulfillment"];
    assert_eq!(f["shipping_options"]["availability_status"], "OUT_OF_STOCK");
    assert_eq!(
        f["shipping_options"]["available_to_promise_quantity"],
        json!(0.0)
    );
    assert_eq!(f["store_options"][0]["location_id"], "1234");
    assert_eq!(
        f["store_options"][0]["order_pickup"]["availability_status"],
        "UNAVAILABLE"
    );
    assert_eq!(
        f["store_options"][0]["in_store_only"]["availability_status"],
        "OUT_OF_STOCK"
    );
    assert_eq!(
        f["scheduled_delivery"]["availability_status"],
        "UNAVAILABLE"
    );
    assert_eq!(
        f["store_options"][0]["ship_to_store"]["availability_status"],
        "UNAVAILABLE"
    );
    // Like every recorded fulfillment answer: no price (pdp_client_v1 has it).
    assert!(product.get("price").is_none(), "{product}");

    app.set_stock("111", true).await;
    let v: Value = app.fulfillment("111").await.json().await.unwrap();
    let f = &v["data"]["product"]["fulfillment"];
    assert_eq!(f["shipping_options"]["availability_status"], "IN_STOCK");
    assert_eq!(
        f["shipping_options"]["available_to_promise_quantity"],
        json!(10.0)
    );
    assert_eq!(
        f["store_options"][0]["order_pickup"]["availability_status"],
        "IN_STOCK"
    );
    assert_eq!(
        f["store_options"][0]["in_store_only"]["availability_status"],
        "IN_STOCK"
    );
    assert_eq!(f["scheduled_delivery"]["availability_status"], "IN_STOCK");
    assert!(
        f["store_options"][0].get("ship_to_store").is_none(),
        "in stock, the recording has no ship_to_store"
    );
    // The other product is untouched.
    assert_eq!(app.shipping_status("222").await, "OUT_OF_STOCK");

    app.set_stock("111", false).await;
    assert_eq!(app.shipping_status("111").await, "OUT_OF_STOCK");
    app.stop().await;
}

#[tokio::test]
async fn prices_can_be_set_and_the_stock_list_shows_everything() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let resp = app
        .put_json("/admin/stock/222", json!({"in_stock": true, "price": 75.5}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["in_stock"], true);
    assert_eq!(e["price"], json!(75.5));
    assert_eq!(e["formatted_price"], "$75.50");
    assert_eq!(e["source"], "manual");

    let v = app
        .redsky_json(store_sim::http::PDP_CLIENT_PATH, &[("tcin", "222")])
        .await;
    assert_eq!(v["data"]["product"]["price"]["current_retail"], json!(75.5));

    let (status, list) = app.get_json("/admin/stock").await;
    assert_eq!(status, StatusCode::OK);
    let products = list["products"].as_array().unwrap();
    assert_eq!(products.len(), 2);
    assert_eq!(products[0]["tcin"], "111");
    assert_eq!(products[0]["name"], "Elite Trainer Box");
    assert_eq!(products[0]["in_stock"], false);
    assert_eq!(products[0]["source"], "default");
    assert_eq!(products[0]["changed_at_ms"], Value::Null);
    assert_eq!(products[0]["max_price"], json!(59.99));
    assert_eq!(products[0]["quantity"], 2);
    assert_eq!(products[1]["price"], json!(75.5));
    assert_eq!(products[1]["max_price"], Value::Null);
    assert!(products[1]["changed_at_ms"].as_u64().unwrap() > 1_600_000_000_000);

    // A price-only change keeps the stock state.
    let e: Value = app
        .put_json("/admin/stock/222", json!({"price": 1}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (e["in_stock"].clone(), e["price"].clone()),
        (json!(true), json!(1.0))
    );

    let (status, one) = app.get_json("/admin/stock/222").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["tcin"], "222");
    app.stop().await;
}

#[tokio::test]
async fn a_scenario_moves_stock_on_its_own() {
    let tcin = ProductId::parse("222").unwrap();
    let scenario = Scenario::new(
        None,
        HashMap::from([(
            tcin,
            vec![Window {
                from_ms: 0,
                to_ms: 400,
                price: None,
            }],
        )]),
    );
    let app = spawn_app_with(Driver::Scenario(scenario), Duration::from_millis(10)).await;
    // In stock from the start (unless this machine is very slow)...
    let (_, list) = app.get_json("/admin/stock").await;
    if list["products"][1]["in_stock"] == true {
        assert_eq!(list["products"][1]["source"], "scenario");
    }
    // ...and out of stock once the window closes, by itself.
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.shipping_status("222").await == "OUT_OF_STOCK"
        })
        .await
    );
    assert_eq!(app.shipping_status("111").await, "OUT_OF_STOCK");
    app.stop().await;
}

#[tokio::test]
async fn missing_parameters_and_unknown_products_get_json_errors() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let path = store_sim::http::FULFILLMENT_PATH;
    for (query, want) in [
        (vec![("tcin", "111")], "key"),
        (vec![("key", "k")], "tcin"),
        (vec![("key", ""), ("tcin", "111")], "key"),
        (vec![("key", "k"), ("tcin", "1 1")], "product id \"1 1\""),
    ] {
        let resp = app
            .client
            .get(app.url(path))
            .query(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query:?}");
        let v: Value = resp.json().await.unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(want), "{query:?}: {msg}");
        assert_eq!(v["errors"][0]["message"], msg);
    }

    let resp = app.fulfillment("999").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["message"], "No product found with tcin 999");
    assert_eq!(v["data"]["product"], Value::Null);

    let resp = app
        .put_json("/admin/stock/999", json!({"in_stock": true}))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("999"));

    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
