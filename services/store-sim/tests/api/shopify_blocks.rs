//! `PUT /admin/shopify/block`: one shop's storefront, or every shop's,
//! answers with a throttle, Shopify's security rejection, Cloudflare's
//! challenge or the password page until the block ends.

use std::time::Duration;

use reqwest::{Response, StatusCode, redirect::Policy};
use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, spawn_shopify_app};

const CARDS: &str = "/shops/cards.example/products.json";
const OTHER: &str = "/shops/other.example/products.json";

async fn block(app: &TestApp, body: Value) -> Value {
    let resp = app.put_json("/admin/shopify/block", body.clone()).await;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}: {v}");
    v
}

async fn clear(app: &TestApp, query: &str) -> Value {
    let resp = app
        .client
        .delete(app.url(&format!("/admin/shopify/block{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// A client that does not follow redirects, to see a 302 as it is.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(app: &TestApp, path: &str, host: Option<&str>) -> Response {
    let mut req = no_redirects().get(app.url(path));
    if let Some(h) = host {
        req = req.header("Host", h);
    }
    req.send().await.unwrap()
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_rate_limit_on_one_shop_sends_retry_after_and_spares_the_others() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let v = block(
        &app,
        json!({"kind": "rate_limited", "shop": "Cards.Example", "retry_after": "7s", "for": "1m"}),
    )
    .await;
    assert_eq!(v["block"]["shop"], "cards.example");
    assert_eq!(v["block"]["kind"], "rate_limited");
    assert_eq!(v["block"]["status"], 429);
    assert_eq!(v["block"]["retry_after_s"], 7);

    for (path, host) in [
        (CARDS, None),
        ("/products.json", Some("cards.example:443")),
        (
            "/shops/cards.example/products/surging-sparks-booster-bundle.js",
            None,
        ),
        ("/shops/cards.example/collections/all/products.json", None),
    ] {
        let resp = get(&app, path, host).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("7"));
        assert_eq!(resp.text().await.unwrap(), "local_rate_limited");
    }
    assert_eq!(get(&app, OTHER, None).await.status(), StatusCode::OK);
    // Not the admin routes, not Target's.
    let (status, v) = app.get_json("/admin/shopify/block").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["blocks"].as_array().unwrap().len(), 1);
    assert!(v["blocks"][0]["remaining_ms"].as_u64().unwrap() <= 60_000);
    let resp = app
        .redsky(store_sim::http::FULFILLMENT_PATH, &[("tcin", "111")])
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Without retry_after: the time left.
    block(
        &app,
        json!({"kind": "rate_limited", "shop": "cards.example", "for": "2500ms"}),
    )
    .await;
    let resp = get(&app, CARDS, None).await;
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("3"));

    let v = clear(&app, "?shop=cards.example").await;
    assert_eq!(v["cleared"][0]["kind"], "rate_limited");
    assert_eq!(v["blocks"], json!([]));
    assert_eq!(get(&app, CARDS, None).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_throttle_on_every_shop_sends_no_retry_after_and_a_shops_own_block_wins() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    let v = block(&app, json!({"kind": "throttled"})).await;
    assert_eq!(v["block"]["shop"], Value::Null);
    for path in [CARDS, OTHER] {
        let resp = get(&app, path, None).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(header(&resp, "retry-after"), None);
        assert_eq!(resp.text().await.unwrap(), "local_rate_limited");
    }
    // A shop's own block answers before the all-shops one.
    block(
        &app,
        json!({"kind": "security_rejection", "shop": "other.example"}),
    )
    .await;
    assert_eq!(get(&app, OTHER, None).await.status().as_u16(), 430);
    assert_eq!(
        get(&app, CARDS, None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let (_, v) = app.get_json("/admin/shopify/block").await;
    let kinds: Vec<(Value, Value)> = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["shop"].clone(), b["kind"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Value::Null, json!("throttled")),
            (json!("other.example"), json!("security_rejection"))
        ]
    );
    // A block answers before an injected fault.
    app.put_json("/admin/faults", json!({"status": 503})).await;
    assert_eq!(get(&app, OTHER, None).await.status().as_u16(), 430);

    let v = clear(&app, "").await;
    assert_eq!(v["cleared"].as_array().unwrap().len(), 2);
    assert_eq!(
        get(&app, CARDS, None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the fault is still in force"
    );
    app.client
        .delete(app.url("/admin/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(get(&app, CARDS, None).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_security_rejection_is_a_430_html_page() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    block(
        &app,
        json!({"kind": "security_rejection", "shop": "cards.example"}),
    )
    .await;
    let resp = get(&app, CARDS, None).await;
    assert_eq!(resp.status().as_u16(), 430);
    assert!(
        header(&resp, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("<title>Access denied</title>"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_cloudflare_challenge_is_a_403_just_a_moment_page() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "cloudflare", "shop": "cards.example"})).await;
    let resp = get(&app, "/products.json", Some("cards.example")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&resp, "cf-mitigated").as_deref(), Some("challenge"));
    assert_eq!(header(&resp, "server").as_deref(), Some("cloudflare"));
    assert!(header(&resp, "cf-ray").is_some());
    assert!(
        header(&resp, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("<title>Just a moment...</title>"), "{body}");
    assert!(body.contains("_cf_chl_opt"), "{body}");

    block(
        &app,
        json!({"kind": "cloudflare", "shop": "cards.example", "status": 503}),
    )
    .await;
    let resp = get(&app, CARDS, None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "cf-mitigated").as_deref(), Some("challenge"));
    app.stop().await;
}

#[tokio::test]
async fn a_password_block_redirects_to_the_password_page_or_shows_it() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "password", "shop": "cards.example"})).await;
    for (path, host, location) in [
        ("/products.json", Some("cards.example"), "/password"),
        (CARDS, None, "/shops/cards.example/password"),
        (
            "/shops/cards.example/products/journey-together-bundle.js",
            None,
            "/shops/cards.example/password",
        ),
    ] {
        let resp = get(&app, path, host).await;
        assert_eq!(resp.status(), StatusCode::FOUND, "{path}");
        assert_eq!(header(&resp, "location").as_deref(), Some(location));
        // Where it points is served: the password page.
        let page = get(&app, location, host).await;
        assert_eq!(page.status(), StatusCode::OK, "{location}");
        let body = page.text().await.unwrap();
        assert!(body.contains(r#"id="login_form""#), "{body}");
        assert!(body.contains(&format!(r#"action="{location}""#)), "{body}");
    }

    block(
        &app,
        json!({"kind": "password", "shop": "cards.example", "status": 200}),
    )
    .await;
    let resp = get(&app, "/products.json", Some("cards.example")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        header(&resp, "content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains(r#"<form method="post" action="/password" id="login_form""#),
        "{body}"
    );
    // A watcher reading it as JSON fails: it is not products.json.
    assert!(serde_json::from_str::<Value>(&body).is_err());
    assert_eq!(get(&app, OTHER, None).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn blocks_end_by_themselves_and_bad_requests_name_the_field() {
    let app = spawn_shopify_app(Duration::from_millis(10)).await;
    block(
        &app,
        json!({"kind": "throttled", "shop": "cards.example", "for": "300ms"}),
    )
    .await;
    assert_eq!(
        get(&app, CARDS, None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let ended = eventually(Duration::from_secs(5), || async {
        get(&app, CARDS, None).await.status() == StatusCode::OK
    })
    .await;
    assert!(ended, "the block never ended");
    let (_, v) = app.get_json("/admin/shopify/block").await;
    assert_eq!(v["blocks"], json!([]));

    for (body, field) in [
        (json!({"kind": "captcha"}), "kind:"),
        (json!({"shop": "cards.example"}), "kind:"),
        (
            json!({"kind": "throttled", "shop": "unknown.example"}),
            "shop:",
        ),
        (
            json!({"kind": "throttled", "retry_after": "1s"}),
            "retry_after:",
        ),
        (json!({"kind": "password", "status": 301}), "status:"),
        (json!({"kind": "cloudflare", "for": "soon"}), "for:"),
        (json!({"kind": "cloudflare", "until": "1s"}), "until:"),
    ] {
        let resp = app.put_json("/admin/shopify/block", body.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = resp.json().await.unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.starts_with(field), "{body}: {msg}");
    }
    // Nothing was blocked by the refused requests.
    assert_eq!(get(&app, CARDS, None).await.status(), StatusCode::OK);

    // Blocked answers are counted.
    block(&app, json!({"kind": "throttled"})).await;
    get(&app, CARDS, None).await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"store_sim_shopify_blocked_answers_total{kind="throttled",endpoint="shopify_products"}"#,
        r#"store_sim_shopify_requests_total{endpoint="shopify_products",code="429"}"#,
        r#"store_sim_shopify_requests_total{endpoint="shopify_products",code="200"}"#,
    ] {
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n >= 1.0, "{series} {n}");
    }
    app.stop().await;
}
