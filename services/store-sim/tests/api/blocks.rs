//! `PUT /admin/block`: every RedSky endpoint answers like Target's bot wall
//! until the block ends, on `DELETE` or by itself; bad requests name the
//! field; blocked answers are counted.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use store_sim::http::{FULFILLMENT_PATH, HIERARCHY_PATH, PDP_CLIENT_PATH, SUMMARY_PATH};

use crate::helpers::{TestApp, assert_same_shape, eventually, fixture, spawn_app};

/// One request to each RedSky endpoint.
async fn each_endpoint(app: &TestApp) -> Vec<(&'static str, Response)> {
    let mut out = Vec::new();
    for (path, q) in [
        (FULFILLMENT_PATH, ("tcin", "111")),
        (HIERARCHY_PATH, ("tcin", "111")),
        (SUMMARY_PATH, ("tcins", "111,222")),
        (PDP_CLIENT_PATH, ("tcin", "111")),
    ] {
        out.push((path, app.redsky(path, &[q]).await));
    }
    out
}

async fn block(app: &TestApp, body: Value) -> Value {
    let resp = app.put_json("/admin/block", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK, "{body}");
    resp.json().await.unwrap()
}

async fn unblock(app: &TestApp) -> Value {
    let resp = app
        .client
        .delete(app.url("/admin/block"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn all_answer_data(app: &TestApp) {
    for (path, resp) in each_endpoint(app).await {
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_captcha_block_answers_the_recorded_403_until_deleted() {
    let app = spawn_app(Duration::from_millis(10)).await;
    let v = block(&app, json!({"kind": "captcha", "for": "30s"})).await;
    assert_eq!(v["block"]["kind"], "captcha");
    assert_eq!(v["block"]["status"], 403);
    assert!(v["block"]["remaining_ms"].as_u64().unwrap() <= 30_000);
    let recorded = fixture("block-captcha-403.json");
    let mut ids = Vec::new();
    for (path, resp) in each_endpoint(&app).await {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(
            content_type(&resp).starts_with("application/json"),
            "{path}"
        );
        let text = resp.text().await.unwrap();
        // The recorded byte layout, not just the same JSON.
        assert!(
            text.starts_with("{\n  \"captchaRelativeURL\":\"/captcha?trackingId="),
            "{text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_same_shape(&body, &recorded, path);
        let rel = body["captchaRelativeURL"].as_str().unwrap();
        let id = rel.strip_prefix("/captcha?trackingId=").unwrap().to_owned();
        assert_eq!(
            body["captchaAbsoluteURL"],
            format!("http://{}/captcha?trackingId={id}", app.addr),
            "points at the simulator, not target.com"
        );
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "a new trackingId each time");
    // Only the retailer's endpoints are behind the wall.
    let (status, _) = app.get_json("/admin/stock").await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = app.get_json("/admin/block").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["block"]["kind"], "captcha");

    let v = unblock(&app).await;
    assert_eq!(v["cleared"]["kind"], "captcha");
    assert_eq!(v["block"], Value::Null);
    all_answer_data(&app).await;
    let (_, v) = app.get_json("/admin/block").await;
    assert_eq!(v["block"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_perimeterx_block_answers_435_with_the_px_json_or_403_if_asked() {
    let app = spawn_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "perimeterx", "for": "1m"})).await;
    for (path, resp) in each_endpoint(&app).await {
        assert_eq!(resp.status().as_u16(), 435, "{path}");
        assert!(
            content_type(&resp).starts_with("application/json"),
            "{path}"
        );
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["appId"], "PXGWPp4wUS");
        assert!(
            v["blockScript"]
                .as_str()
                .unwrap()
                .starts_with("https://captcha.px-cdn.net/PXGWPp4wUS/captcha.js")
        );
        assert_eq!(v["uuid"].as_str().unwrap().len(), 36);
        assert_eq!(v["vid"], "");
    }
    block(&app, json!({"kind": "perimeterx", "status": 403})).await;
    let resp = app.redsky(HIERARCHY_PATH, &[("tcin", "111")]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    unblock(&app).await;
    all_answer_data(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn an_html_challenge_serves_the_press_and_hold_page() {
    let app = spawn_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "html_challenge", "for": "1m"})).await;
    for (path, resp) in each_endpoint(&app).await {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(content_type(&resp).starts_with("text/html"), "{path}");
        let html = resp.text().await.unwrap();
        for marker in [
            "Press &amp; Hold",
            "window._pxAppId = 'PXGWPp4wUS'",
            "id=\"px-captcha\"",
            "Reference ID ",
            "collector-PXGWPp4wUS.perimeterx.net",
        ] {
            assert!(html.contains(marker), "{path}: no {marker}");
        }
        assert!(!html.contains("<script src"), "loads nothing from outside");
    }
    block(&app, json!({"kind": "html_challenge", "status": 200})).await;
    let resp = app.redsky(PDP_CLIENT_PATH, &[("tcin", "111")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.text().await.unwrap().contains("Press &amp; Hold"));
    unblock(&app).await;
    all_answer_data(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_answers_429_with_retry_after() {
    let app = spawn_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "rate_limited", "for": "30s"})).await;
    for (path, resp) in each_endpoint(&app).await {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        let secs: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&secs), "{path}: the time left, {secs}");
    }
    block(
        &app,
        json!({"kind": "rate_limited", "for": "30s", "retry_after": "7s"}),
    )
    .await;
    let resp = app.redsky(SUMMARY_PATH, &[("tcins", "111")]).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    block(&app, json!({"kind": "rate_limited"})).await;
    let resp = app.redsky(SUMMARY_PATH, &[("tcins", "111")]).await;
    assert_eq!(resp.headers()["retry-after"], "60", "no end: 60 s");
    unblock(&app).await;
    all_answer_data(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_block_ends_by_itself_after_its_time() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for kind in ["captcha", "perimeterx", "html_challenge", "rate_limited"] {
        block(&app, json!({"kind": kind, "for": "300ms"})).await;
        let first = app.redsky(HIERARCHY_PATH, &[("tcin", "111")]).await;
        assert_ne!(first.status(), StatusCode::OK, "{kind}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                app.redsky(HIERARCHY_PATH, &[("tcin", "111")])
                    .await
                    .status()
                    == StatusCode::OK
            })
            .await,
            "{kind} never ended"
        );
        let (_, v) = app.get_json("/admin/block").await;
        assert_eq!(v["block"], Value::Null, "{kind}");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_block_requests_name_the_field() {
    let app = spawn_app(Duration::from_millis(10)).await;
    for (body, field) in [
        (json!({"kind": "teapot", "for": "30s"}), "kind"),
        (json!({"for": "30s"}), "kind"),
        (json!({"kind": "captcha", "for": "soon"}), "for"),
        (json!({"kind": "captcha", "for": "0s"}), "for"),
        (json!({"kind": "captcha", "status": 200}), "status"),
        (
            json!({"kind": "captcha", "retry_after": "3s"}),
            "retry_after",
        ),
        (json!({"kind": "captcha", "fr": "3s"}), "fr"),
    ] {
        let resp = app.put_json("/admin/block", body.clone()).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = resp.json().await.unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{field}:")), "{body}: {msg}");
    }
    let resp = app
        .client
        .put(app.url("/admin/block"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Nothing was blocked by any of them.
    let (_, v) = app.get_json("/admin/block").await;
    assert_eq!(v["block"], Value::Null);
    all_answer_data(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn blocked_answers_are_counted_and_still_polls() {
    let app = spawn_app(Duration::from_millis(10)).await;
    block(&app, json!({"kind": "captcha", "for": "30s"})).await;
    each_endpoint(&app).await;
    app.redsky(FULFILLMENT_PATH, &[("tcin", "111")]).await;
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
        r#"store_sim_blocked_answers_total{kind="captcha",endpoint="product_fulfillment_v1"} 2"#,
        r#"store_sim_blocked_answers_total{kind="captcha",endpoint="product_summary_with_fulfillment_v1"} 1"#,
        r#"store_sim_redsky_requests_total{endpoint="pdp_client_v1",code="403"} 1"#,
        r#"store_sim_fulfillment_requests_total{code="403"} 2"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series}\n{text}");
    }
    let (_, v) = app.get_json("/admin/polls?tcin=111").await;
    assert_eq!(
        v["polls"].as_array().unwrap().len(),
        5,
        "a blocked request is still a poll"
    );
    app.stop().await;
}
