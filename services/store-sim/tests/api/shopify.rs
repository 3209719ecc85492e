//! The Shopify storefronts: answers in the recorded shapes, paging, shops
//! told apart by path prefix and by `Host`, prices as strings and as
//! cents, stock set through the admin API with every spelling of a Shopify
//! id, polls, faults, and checkouts fenced by the one ledger Target's use.

use std::{collections::BTreeSet, time::Duration};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use store_sim::stock::Driver;

use crate::helpers::{TestApp, shopify_fixture, spawn_shopify_app, spawn_store};

const ETB: &str = "shopify:cards.example/40000000001";
const BUNDLE: &str = "shopify:cards.example/40000000002";
const JOURNEY: &str = "shopify:cards.example/journey-together-bundle";
const SWITCH: &str = "shopify:other.example/50000000001";

/// `GET path`, with a `Host` header if given.
async fn get(app: &TestApp, path: &str, host: Option<&str>) -> Response {
    let mut req = app.client.get(app.url(path));
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    req.send().await.unwrap()
}

/// A 200 JSON answer of `GET path`.
async fn get_ok(app: &TestApp, path: &str, host: Option<&str>) -> Value {
    let resp = get(app, path, host).await;
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path} (host {host:?}): {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Same keys as the recorded object, and the same JSON type for every key
/// both have a value for (a recorded `null` says nothing of the type).
fn assert_like(ours: &Value, recorded: &Value, what: &str) {
    let (a, b) = (keys(ours), keys(recorded));
    assert_eq!(
        a,
        b,
        "{what}: keys differ\n only ours: {:?}\n only recorded: {:?}",
        a.difference(&b).collect::<Vec<_>>(),
        b.difference(&a).collect::<Vec<_>>()
    );
    for k in &a {
        let (o, r) = (&ours[k], &recorded[k]);
        if !o.is_null() && !r.is_null() {
            assert_eq!(kind(o), kind(r), "{what}.{k}: ours {o}, recorded {r}");
        }
    }
}

/// `available` of a variant in a `products.json` answer.
fn available_in(v: &Value, variant: u64) -> bool {
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["variants"].as_array().unwrap())
        .find(|x| x["id"] == variant)
        .unwrap_or_else(|| panic!("no variant {variant} in {v}"))["available"]
        .as_bool()
        .unwrap()
}

fn handles(v: &Value) -> Vec<String> {
    v["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["handle"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_answer_has_the_keys_and_types_of_a_recording() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    app.set_stock("shopify:cards.example%2F40000000001", true)
        .await;

    let ours = get_ok(&app, "/shops/cards.example/products.json", None).await;
    for (file, what) in [
        ("products-bluetokai.json", "products.json"),
        (
            "collection-legado-coffee-beans.json",
            "collection products.json",
        ),
    ] {
        let recorded = shopify_fixture(file);
        assert_like(&ours, &recorded, what);
        for p in ours["products"].as_array().unwrap() {
            assert_like(p, &recorded["products"][0], &format!("{what} product"));
            assert_like(
                &p["options"][0],
                &recorded["products"][0]["options"][0],
                &format!("{what} option"),
            );
            for v in p["variants"].as_array().unwrap() {
                assert_like(
                    v,
                    &recorded["products"][0]["variants"][0],
                    &format!("{what} variant"),
                );
            }
        }
    }
    let collection = get_ok(
        &app,
        "/shops/cards.example/collections/all/products.json",
        None,
    )
    .await;
    assert_eq!(keys(&collection), keys(&ours));
    assert_eq!(handles(&collection), handles(&ours));

    let recorded = shopify_fixture("product_js-ratio-eight.json");
    for handle in [
        "prismatic-evolutions-elite-trainer-box",
        "journey-together-bundle",
    ] {
        let js = get_ok(
            &app,
            &format!("/shops/cards.example/products/{handle}.js"),
            None,
        )
        .await;
        assert_like(&js, &recorded, "product .js");
        assert_like(&js["options"][0], &recorded["options"][0], ".js option");
        for v in js["variants"].as_array().unwrap() {
            assert_like(v, &recorded["variants"][0], ".js variant");
        }
    }

    let recorded = shopify_fixture("product_json-minimalist-niacinamide.json");
    for handle in [
        "prismatic-evolutions-elite-trainer-box",
        "journey-together-bundle",
    ] {
        let pj = get_ok(
            &app,
            &format!("/shops/cards.example/products/{handle}.json"),
            None,
        )
        .await;
        assert_like(&pj, &recorded, "product .json");
        assert_like(
            &pj["product"],
            &recorded["product"],
            "product .json product",
        );
        assert_like(
            &pj["product"]["options"][0],
            &recorded["product"]["options"][0],
            ".json option",
        );
        for v in pj["product"]["variants"].as_array().unwrap() {
            assert_like(v, &recorded["product"]["variants"][0], ".json variant");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn products_are_derived_from_the_config_entries() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let v = get_ok(&app, "/shops/cards.example/products.json", None).await;
    assert_eq!(
        handles(&v),
        [
            "prismatic-evolutions-elite-trainer-box",
            "surging-sparks-booster-bundle",
            "journey-together-bundle"
        ],
        "config order; handles from names, or the configured handle"
    );
    let etb = &v["products"][0];
    assert_eq!(etb["title"], "Prismatic Evolutions Elite Trainer Box");
    assert_eq!(etb["variants"].as_array().unwrap().len(), 1);
    assert_eq!(etb["variants"][0]["id"], 40_000_000_001u64);
    assert_eq!(etb["variants"][0]["title"], "Default Title");
    assert_eq!(etb["variants"][0]["product_id"], etb["id"]);
    let journey = &v["products"][2];
    let titles: Vec<&str> = journey["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Case of 6", "Single"]);

    // GET /admin/stock says where each Shopify product is served.
    let (status, e) = app.get_json(&format!("/admin/stock?id={JOURNEY}")).await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(e["shopify"]["shop"], "cards.example");
    assert_eq!(e["shopify"]["handle"], "journey-together-bundle");
    assert_eq!(e["shopify"]["product_id"], journey["id"]);
    assert_eq!(
        e["shopify"]["variant_ids"],
        json!([journey["variants"][0]["id"], journey["variants"][1]["id"]])
    );
    let (_, all) = app.get_json("/admin/stock").await;
    assert!(
        all["products"][0].get("shopify").is_none(),
        "a Target entry has no shopify placement: {}",
        all["products"][0]
    );
    // And /admin/shopify/shops lists the layout.
    let (status, shops) = app.get_json("/admin/shopify/shops").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = shops["shops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shop"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cards.example", "other.example"]);
    assert_eq!(shops["shops"][0]["products"][2]["entry"], JOURNEY);
    app.stop().await;
}

#[tokio::test]
async fn pages_follow_shopifys_limits() {
    let entries: Vec<String> = (1..=260)
        .map(|i| {
            format!(
                r#"{{"retailer":"shopify","shop":"bulk.example","variant":{},"name":"Card {i}"}}"#,
                90_000 + i
            )
        })
        .collect();
    let products = format!(r#"{{"products":[{}]}}"#, entries.join(","));
    let app = spawn_store(&products, Driver::Manual, Duration::from_millis(10)).await;
    let count = |v: &Value| v["products"].as_array().unwrap().len();
    for base in [
        "/shops/bulk.example/products.json",
        "/shops/bulk.example/collections/all/products.json",
        "/shops/bulk.example/collections/frontpage/products.json",
    ] {
        let first = get_ok(&app, base, None).await;
        assert_eq!(count(&first), 30, "{base}: the default limit");
        assert_eq!(first["products"][0]["handle"], "card-1");
        assert_eq!(first["products"][29]["handle"], "card-30");
        let v = get_ok(&app, &format!("{base}?limit=250"), None).await;
        assert_eq!(count(&v), 250);
        let v = get_ok(&app, &format!("{base}?limit=1000"), None).await;
        assert_eq!(count(&v), 250, "{base}: at most 250");
        let v = get_ok(&app, &format!("{base}?limit=250&page=2"), None).await;
        assert_eq!(count(&v), 10);
        assert_eq!(v["products"][0]["handle"], "card-251");
        let v = get_ok(&app, &format!("{base}?limit=250&page=3"), None).await;
        assert_eq!(v, json!({"products": []}), "{base}: past the end");
        let v = get_ok(&app, &format!("{base}?page=2"), None).await;
        assert_eq!(v["products"][0]["handle"], "card-31");
        let v = get_ok(&app, &format!("{base}?limit=7&page=38"), None).await;
        assert_eq!(handles(&v), ["card-260"]);
        let v = get_ok(&app, &format!("{base}?limit=x&page=0&sort=1"), None).await;
        assert_eq!(count(&v), 30, "{base}: nonsense reads as the defaults");
    }
    app.stop().await;
}

#[tokio::test]
async fn shops_are_told_apart_by_path_or_by_host() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let by_path = get_ok(&app, "/shops/cards.example/products.json", None).await;
    for host in ["cards.example", "cards.example:8080", "CARDS.Example"] {
        let v = get_ok(&app, "/products.json", Some(host)).await;
        assert_eq!(v, by_path, "Host: {host}");
        let v = get_ok(&app, "/collections/all/products.json", Some(host)).await;
        assert_eq!(handles(&v), handles(&by_path), "Host: {host}");
        let js = get_ok(
            &app,
            "/products/surging-sparks-booster-bundle.js",
            Some(host),
        )
        .await;
        assert_eq!(js["variants"][0]["id"], 40_000_000_002u64);
    }
    let other = get_ok(&app, "/products.json", Some("other.example")).await;
    assert_eq!(handles(&other), ["switch-2"]);
    let other = get_ok(&app, "/shops/Other.Example/products.json", None).await;
    assert_eq!(handles(&other), ["switch-2"]);

    // Unknown shops, unknown products and unknown files: Shopify's HTML 404.
    for (path, host) in [
        ("/products.json", Some("unknown.example")),
        ("/products.json", None),
        ("/shops/unknown.example/products.json", None),
        ("/shops/unknown.example/collections/all/products.json", None),
        ("/shops/cards.example/products/no-such-thing.js", None),
        ("/shops/cards.example/products/no-such-thing.json", None),
        ("/products/switch-2.js", Some("cards.example")),
        ("/shops/cards.example/products/switch-2.html", None),
    ] {
        let resp = get(&app, path, host).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path} {host:?}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("<title>404 Not Found</title>"),
            "{path}: {body}"
        );
    }
    // Only the storefront paths look at Host: the rest answer as before.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn prices_are_strings_of_dollars_in_json_and_cents_in_js() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let resp = app
        .client
        .put(app.url("/admin/stock"))
        .query(&[("id", ETB)])
        .json(&json!({"price": 54.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let list = get_ok(&app, "/shops/cards.example/products.json", None).await;
    assert_eq!(list["products"][0]["variants"][0]["price"], "54.50");
    assert_eq!(
        list["products"][1]["variants"][0]["price"], "32.99",
        "max_price is the starting price"
    );
    let path = "/shops/cards.example/products/prismatic-evolutions-elite-trainer-box";
    let js = get_ok(&app, &format!("{path}.js"), None).await;
    assert_eq!(js["price"], 5450);
    assert_eq!(js["price_min"], 5450);
    assert_eq!(js["variants"][0]["price"], 5450);
    let pj = get_ok(&app, &format!("{path}.json"), None).await;
    assert_eq!(pj["product"]["variants"][0]["price"], "54.50");

    // A handle product: the sold-out case costs six singles.
    let js = get_ok(
        &app,
        "/shops/cards.example/products/journey-together-bundle.js",
        None,
    )
    .await;
    assert_eq!(js["variants"][1]["price"], 2999);
    assert_eq!(js["variants"][0]["price"], 6 * 2999);
    assert_eq!(js["price"], 2999);
    assert_eq!(js["price_varies"], true);
    app.stop().await;
}

#[tokio::test]
async fn availability_follows_admin_stock_however_the_id_is_written() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let list = || get_ok(&app, "/shops/cards.example/products.json", None);
    let v = list().await;
    assert!(!available_in(&v, 40_000_000_001), "out of stock at start");

    // Percent-encoded slash.
    app.set_stock("shopify:cards.example%2F40000000001", true)
        .await;
    assert!(available_in(&list().await, 40_000_000_001));
    assert!(!available_in(&list().await, 40_000_000_002));
    // A raw slash.
    app.set_stock("shopify:cards.example/40000000001", false)
        .await;
    assert!(!available_in(&list().await, 40_000_000_001));
    // The query form.
    let resp = app
        .client
        .put(app.url(&format!("/admin/stock?id={BUNDLE}")))
        .json(&json!({"in_stock": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["tcin"], BUNDLE);
    assert_eq!(e["in_stock"], true);
    assert!(available_in(&list().await, 40_000_000_002));
    let js = get_ok(
        &app,
        "/shops/cards.example/products/surging-sparks-booster-bundle.js",
        None,
    )
    .await;
    assert_eq!(js["available"], true);
    assert_eq!(js["variants"][0]["available"], true);
    assert_eq!(js["variants"][0]["inventory_quantity"], 10);

    // GET in every form too.
    for path in [
        "/admin/stock/shopify:cards.example%2F40000000002".to_owned(),
        "/admin/stock/shopify:cards.example/40000000002".to_owned(),
        format!("/admin/stock?id={BUNDLE}"),
    ] {
        let (status, e) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(
            (e["tcin"].clone(), e["in_stock"].clone()),
            (json!(BUNDLE), json!(true))
        );
    }
    let (status, _) = app
        .get_json("/admin/stock?id=shopify:cards.example/9")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = app
        .put_json("/admin/stock", json!({"in_stock": true}))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "no id");

    // A handle product is available through its second variant only.
    let journey = "/shops/cards.example/products/journey-together-bundle.js";
    assert_eq!(get_ok(&app, journey, None).await["available"], false);
    app.set_stock("shopify:cards.example%2Fjourney-together-bundle", true)
        .await;
    let js = get_ok(&app, journey, None).await;
    assert_eq!(js["available"], true);
    assert_eq!(js["variants"][0]["available"], false);
    assert_eq!(js["variants"][1]["available"], true);

    // The other shop and Target's products are untouched.
    assert!(!available_in(
        &get_ok(&app, "/products.json", Some("other.example")).await,
        50_000_000_001
    ));
    assert_eq!(app.shipping_status("111").await, "OUT_OF_STOCK");
    app.stop().await;
}

#[tokio::test]
async fn storefront_requests_are_polls_of_the_products_they_cover() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let send = |path: &'static str, host: Option<&'static str>, watcher: &'static str| {
        let mut req = app
            .client
            .get(app.url(path))
            .header("X-Restock-Watcher", watcher);
        if let Some(h) = host {
            req = req.header("Host", h);
        }
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(
        send("/products.json", Some("cards.example"), "w1").await,
        StatusCode::OK
    );
    assert_eq!(
        send(
            "/shops/cards.example/products.json?limit=1&page=2",
            None,
            "w2"
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send("/shops/other.example/products/switch-2.js", None, "w1").await,
        StatusCode::OK
    );
    assert_eq!(
        send(
            "/shops/cards.example/collections/all/products.json?limit=1",
            None,
            "w3"
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send(
            "/shops/cards.example/products/journey-together-bundle.json",
            None,
            ""
        )
        .await,
        StatusCode::OK
    );
    // Covering nothing: no polls.
    send("/shops/cards.example/products.json?page=2", None, "w1").await;
    send("/shops/cards.example/products/nope.js", None, "w1").await;
    send("/shops/unknown.example/products.json", None, "w1").await;

    let (_, v) = app.get_json("/admin/polls").await;
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
    let want: Vec<(String, String, String)> = [
        ("shopify_products", ETB, "w1"),
        ("shopify_products", BUNDLE, "w1"),
        ("shopify_products", JOURNEY, "w1"),
        ("shopify_products", BUNDLE, "w2"),
        ("shopify_product_js", SWITCH, "w1"),
        ("shopify_collection_products", ETB, "w3"),
        ("shopify_product_json", JOURNEY, ""),
    ]
    .iter()
    .map(|(e, t, w)| ((*e).to_owned(), (*t).to_owned(), (*w).to_owned()))
    .collect();
    assert_eq!(polls, want);
    let (_, v) = app.get_json(&format!("/admin/polls?tcin={ETB}")).await;
    assert_eq!(v["polls"].as_array().unwrap().len(), 2);
    let (_, v) = app
        .get_json("/admin/polls?endpoint=shopify_product_js")
        .await;
    assert_eq!(v["polls"][0]["tcin"], SWITCH);

    // Blocked and faulted requests are polls too.
    app.put_json("/admin/shopify/block", json!({"kind": "throttled"}))
        .await;
    assert_eq!(
        send("/shops/other.example/products.json", None, "w9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (_, v) = app
        .get_json("/admin/polls?tcin=shopify:other.example/50000000001")
        .await;
    assert_eq!(v["polls"].as_array().unwrap().len(), 2);
    app.stop().await;
}

async fn redsky_status(app: &TestApp) -> StatusCode {
    app.redsky(store_sim::http::FULFILLMENT_PATH, &[("tcin", "111")])
        .await
        .status()
}

#[tokio::test]
async fn faults_reach_the_storefronts_unless_limited_to_target() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let shop = "/shops/cards.example/products.json";

    let resp = app
        .put_json("/admin/faults", json!({"status": 503, "retry_after_s": 4}))
        .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["fault"]["retailer"], Value::Null);
    let resp = get(&app, shop, None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "4");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"], "simulated fault: HTTP 503");
    assert_eq!(redsky_status(&app).await, StatusCode::SERVICE_UNAVAILABLE);

    let resp = app
        .put_json(
            "/admin/faults",
            json!({"status": 500, "retailer": "target"}),
        )
        .await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["fault"]["retailer"], "target");
    assert_eq!(get(&app, shop, None).await.status(), StatusCode::OK);
    assert_eq!(redsky_status(&app).await, StatusCode::INTERNAL_SERVER_ERROR);

    app.put_json(
        "/admin/faults",
        json!({"status": 502, "retailer": "shopify"}),
    )
    .await;
    assert_eq!(
        get(&app, shop, None).await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(redsky_status(&app).await, StatusCode::OK);

    let resp = app
        .put_json(
            "/admin/faults",
            json!({"status": 502, "retailer": "bestbuy"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().starts_with("retailer:"), "{v}");

    app.client
        .delete(app.url("/admin/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&app, shop, None).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_shopify_checkout_is_fenced_by_the_one_ledger() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    app.set_stock("shopify:cards.example%2F40000000001", true)
        .await;
    app.set_stock("111", true).await;
    let checkout = |tcin: &str, token: u64| {
        let body = json!({
            "tcin": tcin,
            "fencing_token": token,
            "lease_id": format!("lease-{token}"),
            "watcher_id": "w1",
            "test_mode": true,
            // What the watcher adds for Shopify products: accepted, ignored.
            "retailer": "shopify",
            "shop": "cards.example",
            "shop_url": "http://127.0.0.1:1/shops/cards.example",
            "variant": 40_000_000_001u64,
        });
        let req = app.client.post(app.url("/checkout")).json(&body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };

    let (status, v) = checkout(ETB, 5).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["result"], "purchased");
    assert_eq!(v["tcin"], ETB);
    assert_eq!(v["price"], json!(59.99));
    assert_eq!(v["voided"], true);

    let (status, v) = checkout(ETB, 4).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["result"], "stale_token");
    // One ledger for every retailer: a Target checkout with an older token
    // is stale too.
    let (status, v) = checkout("111", 3).await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::CONFLICT, json!("stale_token"))
    );
    let (status, v) = checkout("111", 6).await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::OK, json!("purchased"))
    );
    let (status, v) = checkout(ETB, 6).await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::CONFLICT, json!("stale_token"))
    );

    // Out of stock and unknown Shopify products are refused as Target's are.
    let (status, v) = checkout(BUNDLE, 7).await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::CONFLICT, json!("out_of_stock"))
    );
    assert_eq!(v["price"], json!(32.99));
    let (status, v) = checkout("shopify:cards.example/123", 8).await;
    assert_eq!(
        (status, v["result"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_product"))
    );

    let orders = app.orders().await;
    assert_eq!(orders["highest_token"], 6);
    assert_eq!(orders["violations"], 0);
    assert_eq!(orders["orders"].as_array().unwrap().len(), 7);
    app.stop().await;
}
