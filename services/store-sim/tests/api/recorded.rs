//! Every RedSky answer of the simulator has the structure of a recorded
//! answer of Target's API (`tests/data/target/`, see `SOURCES.md`): the
//! same key paths with the same JSON types. Values (dates, names,
//! quantities, prices) are the simulator's and are not compared.

use std::time::Duration;

use serde_json::Value;
use store_sim::http::{FULFILLMENT_PATH, HIERARCHY_PATH, PDP_CLIENT_PATH, SUMMARY_PATH};

use crate::helpers::{assert_same_shape, assert_shape_within, fixture, shape, spawn_app};

/// `store_id=2272` as in the recordings; it must not matter for the shape.
const STORE: (&str, &str) = ("store_id", "2272");

#[tokio::test]
async fn the_hierarchy_answer_is_shaped_like_the_recordings_in_and_out_of_stock() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let out = app
        .redsky_json(HIERARCHY_PATH, &[("tcin", "111"), STORE])
        .await;
    assert_same_shape(
        &out,
        &fixture("hierarchy_v1-oos-1011209279.json"),
        "out of stock",
    );
    app.set_stock("111", true).await;
    let inn = app
        .redsky_json(HIERARCHY_PATH, &[("tcin", "111"), STORE])
        .await;
    assert_same_shape(
        &inn,
        &fixture("hierarchy_v1-instock-13356914.json"),
        "in stock",
    );
    app.stop().await;
}

#[tokio::test]
async fn the_legacy_fulfillment_answer_carries_the_recorded_fulfillment_object_and_no_price() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let recorded = |name: &str| fixture(name)["data"]["product"]["fulfillment"].clone();
    let out = app
        .redsky_json(FULFILLMENT_PATH, &[("tcin", "111"), STORE])
        .await;
    assert_same_shape(
        &out["data"]["product"]["fulfillment"],
        &recorded("hierarchy_v1-oos-1011209279.json"),
        "legacy, out of stock",
    );
    app.set_stock("111", true).await;
    let inn = app
        .redsky_json(FULFILLMENT_PATH, &[("tcin", "111"), STORE])
        .await;
    assert_same_shape(
        &inn["data"]["product"]["fulfillment"],
        &recorded("hierarchy_v1-instock-13356914.json"),
        "legacy, in stock",
    );
    // Nothing beyond the product's identity and its fulfillment, and every
    // path is one the hierarchy recording has: no price.
    let keys: Vec<&String> = inn["data"]["product"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["__typename", "fulfillment", "tcin"]);
    assert_shape_within(
        &inn,
        &fixture("hierarchy_v1-instock-13356914.json"),
        "legacy",
    );
    app.stop().await;
}

#[tokio::test]
async fn the_summary_is_shaped_like_the_recorded_batch_and_its_price_like_a_recorded_product_summary()
 {
    let app = spawn_app(Duration::from_millis(10)).await;
    app.set_stock("222", true).await;
    let v = app
        .redsky_json(
            SUMMARY_PATH,
            &[("tcins", "111,222"), STORE, ("skip_price_promo", "true")],
        )
        .await;
    let recorded = fixture("summary_v1-threshr-29.json");
    let summaries = &recorded["data"]["product_summaries"];
    // #0 is in stock everywhere, #13 out everywhere (see SOURCES.md).
    assert_eq!(summaries[13]["tcin"], "88541940");
    assert_same_shape(
        &v["data"]["product_summaries"][0]["fulfillment"],
        &summaries[13]["fulfillment"],
        "summary, out of stock",
    );
    assert_same_shape(
        &v["data"]["product_summaries"][1]["fulfillment"],
        &summaries[0]["fulfillment"],
        "summary, in stock",
    );
    // The whole answer is a part of the recorded one (which has more item
    // details), and has everything a client reads.
    assert_shape_within(&v, &recorded, "summary");
    let ours = shape(&v);
    for path in [
        "data.product_summaries: array",
        "data.product_summaries[].__typename: string",
        "data.product_summaries[].tcin: string",
        "data.product_summaries[].item.product_description.title: string",
        "data.product_summaries[].item.enrichment.buy_url: string",
        "data.product_summaries[].fulfillment.shipping_options.availability_status: string",
        "data.product_summaries[].fulfillment.store_options[].order_pickup.availability_status: string",
        "data.product_summaries[].fulfillment.store_options[].in_store_only.availability_status: string",
        "data.product_summaries[].fulfillment.scheduled_delivery.availability_status: string",
    ] {
        assert!(shape(&recorded).contains(path), "the recording has {path}");
        assert!(ours.contains(path), "ours lacks {path}");
    }

    // Asked without skip_price_promo, each summary has a price, shaped like
    // a recorded ProductSummary's.
    let priced = app
        .redsky_json(SUMMARY_PATH, &[("tcins", "111,222"), STORE])
        .await;
    let recorded_price = &fixture("recommendations_v1-productsummary-price-1011209279.json")["data"]
        ["recommended_products"]["products"][0]["price"];
    for s in priced["data"]["product_summaries"].as_array().unwrap() {
        assert_same_shape(&s["price"], recorded_price, "summary price");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_pdp_client_answer_has_the_price_where_the_recording_has_it() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let v = app
        .redsky_json(
            PDP_CLIENT_PATH,
            &[("tcin", "111"), STORE, ("pricing_store_id", "2272")],
        )
        .await;
    let recorded = fixture("pdp_client_v1-1011209279.json");
    assert_same_shape(
        &v["data"]["product"]["price"],
        &recorded["data"]["product"]["price"],
        "pdp price",
    );
    assert_shape_within(&v, &recorded, "pdp_client_v1");
    let price = &v["data"]["product"]["price"];
    assert_eq!(price["current_retail"], serde_json::json!(59.99));
    assert_eq!(price["formatted_current_price"], "$59.99");
    // Like the recording: no stock in this answer.
    assert!(v["data"]["product"].get("fulfillment").is_none());
    app.stop().await;
}

#[tokio::test]
async fn the_recorded_fixtures_say_what_sources_md_says() {
    // Guards the files the watcher's parser is written against: a fixture
    // edited by mistake would fail here.
    let status = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    let inn = fixture("hierarchy_v1-instock-13356914.json");
    let out = fixture("hierarchy_v1-oos-1011209279.json");
    let f = "/data/product/fulfillment";
    for (v, want) in [(&inn, "IN_STOCK"), (&out, "OUT_OF_STOCK")] {
        assert_eq!(
            status(v, &format!("{f}/shipping_options/availability_status")),
            want
        );
    }
    assert_eq!(
        status(
            &out,
            &format!("{f}/store_options/0/order_pickup/availability_status")
        ),
        "UNAVAILABLE"
    );
    assert_eq!(out["data"]["product"]["fulfillment"]["sold_out"], false);
    let pdp = fixture("pdp_client_v1-1011209279.json");
    assert_eq!(
        pdp["data"]["product"]["price"]["current_retail"],
        serde_json::json!(17.99)
    );
    let summary = fixture("summary_v1-threshr-29.json");
    assert_eq!(
        summary["data"]["product_summaries"]
            .as_array()
            .unwrap()
            .len(),
        29
    );
    let captcha = fixture("block-captcha-403.json");
    assert!(
        captcha["captchaRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/captcha?trackingId=")
    );
}
