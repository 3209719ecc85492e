//! `/metrics` of the real binaries over real HTTP: a watcher started with
//! `--http-listen 127.0.0.1:0` and the store simulator it polls. Each page
//! passes `promtool check metrics`, and the counters move as they must: a
//! source that answers 429 shows as `code="429"` and an active back-off, a
//! purchase cycle with the real arbiter as a purchased checkout on both
//! sides, and the watcher's own status calls in the per-RPC metrics.

use std::time::Duration;

use restock_testkit::{
    StoreSimProcess, WatcherOptions, WatcherProcess, check_metrics, eventually, metric,
    products_json, scrape, spawn_arbiter,
};

const LIMIT: Duration = Duration::from_secs(15);

async fn start_watcher(
    arbiter_url: String,
    store: &StoreSimProcess,
    extra: &[&str],
) -> WatcherProcess {
    let w = WatcherProcess::start_with(
        WatcherOptions::new("w1", arbiter_url)
            .store(store)
            .args(&["--http-listen", "127.0.0.1:0"])
            .args(extra),
    )
    .await;
    w.wait_connected().await;
    w
}

/// Waits until `series` on the page at `url` satisfies `ok`; returns the page.
async fn until(url: &str, series: &str, ok: impl Fn(f64) -> bool) -> String {
    eventually(&format!("{series} at {url}"), LIMIT, || async {
        let (text, _) = scrape(url).await;
        metric(&text, series).is_some_and(&ok).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_answering_429_shows_by_code_and_as_a_back_off() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100", "200", "300"]), &[]).await;
    let watcher = start_watcher(
        restock_testkit::ArbiterEndpoint::url(&arbiter),
        &store,
        &[
            "--source-backoff-initial",
            "5s",
            "--source-backoff-max",
            "5s",
        ],
    )
    .await;
    let url = watcher.metrics_url();
    let before = until(
        &url,
        r#"restock_source_requests_total{code="200",retailer="target"}"#,
        |v| v > 0.0,
    )
    .await;
    assert_eq!(
        metric(
            &before,
            r#"restock_source_requests_total{code="429",retailer="target"}"#
        ),
        None
    );
    assert_eq!(metric(&before, "restock_source_backoff_active"), Some(0.0));
    assert_eq!(metric(&before, "restock_arbiter_connected"), Some(1.0));

    store
        .put(
            "/admin/faults",
            serde_json::json!({"status": 429, "for_ms": 10_000}),
        )
        .await;
    let during = until(
        &url,
        r#"restock_source_requests_total{code="429",retailer="target"}"#,
        |v| v >= 1.0,
    )
    .await;
    let during = if metric(&during, "restock_source_backoff_active") == Some(1.0) {
        during
    } else {
        until(&url, "restock_source_backoff_active", |v| v == 1.0).await
    };
    assert!(
        metric(&during, "restock_source_request_seconds_count").is_some_and(|n| n > 1.0),
        "{during}"
    );
    check_metrics("stock-watcher", &during);

    // The simulator counted the same refusals on its side.
    let (sim, content_type) = scrape(&format!("{}/metrics", store.url())).await;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(
        metric(
            &sim,
            r#"store_sim_redsky_requests_total{endpoint="product_fulfillment_and_variation_hierarchy_v1",code="429"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{sim}"
    );
    check_metrics("store-sim", &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_cycle_counts_on_the_watcher_and_the_store() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100", "200", "300"]), &[]).await;
    let watcher = start_watcher(restock_testkit::ArbiterEndpoint::url(&arbiter), &store, &[]).await;
    let url = watcher.metrics_url();
    let (text, content_type) = scrape(&url).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        metric(&text, r#"restock_checkouts_total{outcome="purchased"}"#),
        Some(0.0)
    );

    store.set_stock("200", true).await;
    let text = until(
        &url,
        r#"restock_checkouts_total{outcome="purchased"}"#,
        |v| v == 1.0,
    )
    .await;
    assert_eq!(metric(&text, "restock_checkout_seconds_count"), Some(1.0));
    assert_eq!(
        metric(&text, r#"restock_checkouts_total{outcome="failed"}"#),
        Some(0.0)
    );

    // The watcher's status service, through the per-RPC layer.
    watcher.status().await;
    watcher.status().await;
    let ok = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="restock.v1.StockWatcher",grpc_method="GetWatcherStatus",grpc_code="OK"}"#;
    let text = until(&url, ok, |v| v >= 2.0).await;
    let started = metric(
        &text,
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="restock.v1.StockWatcher",grpc_method="GetWatcherStatus"}"#,
    )
    .expect("started count");
    assert!(started >= metric(&text, ok).unwrap(), "{text}");
    check_metrics("stock-watcher", &text);

    let (sim, _) = scrape(&format!("{}/metrics", store.url())).await;
    assert_eq!(
        metric(&sim, r#"store_sim_checkouts_total{result="purchased"}"#),
        Some(1.0),
        "{sim}"
    );
    assert_eq!(
        metric(&sim, "store_sim_violations_total"),
        Some(0.0),
        "{sim}"
    );
    check_metrics("store-sim", &sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_http_listen_a_watcher_serves_no_http() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let w = WatcherProcess::start_with(
        WatcherOptions::new("w1", restock_testkit::ArbiterEndpoint::url(&arbiter)).store(&store),
    )
    .await;
    assert_eq!(w.process.announced("http"), None);
    assert!(w.process.announced("grpc").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_metrics_needs_it_unless_the_status_is_public() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let token_file = token_file.display().to_string();
    let client = reqwest::Client::new();
    for (public, without) in [(false, 401), (true, 200)] {
        let mut args = vec![
            "--http-listen",
            "127.0.0.1:0",
            "--auth-token-file",
            &token_file,
        ];
        if public {
            args.push("--public-status");
        }
        let w = WatcherProcess::start_with(
            WatcherOptions::new("w1", restock_testkit::ArbiterEndpoint::url(&arbiter))
                .store(&store)
                .args(&args),
        )
        .await;
        let url = w.metrics_url();
        let status = |auth: Option<&'static str>| {
            let mut r = client.get(&url);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            async move { r.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(None).await, without, "public status: {public}");
        assert_eq!(status(Some("Bearer s3cret-token")).await, 200);
        if !public {
            // A status call without the token is refused before the
            // service sees it, and the per-RPC layer counts the refusal.
            let refused = w
                .client()
                .await
                .get_watcher_status(restock_proto::v1::GetWatcherStatusRequest {})
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            let series = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="restock.v1.StockWatcher",grpc_method="GetWatcherStatus",grpc_code="Unauthenticated"}"#;
            eventually("the refusal counted", LIMIT, || async {
                let text = client
                    .get(&url)
                    .header("authorization", "Bearer s3cret-token")
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                (metric(&text, series) == Some(1.0)).then_some(())
            })
            .await;
        }
        let live = client
            .get(url.replace("/metrics", "/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), 200, "liveness never needs the token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_http_listener_with_the_rest() {
    let arbiter = spawn_arbiter().await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let mut w = start_watcher(restock_testkit::ArbiterEndpoint::url(&arbiter), &store, &[]).await;
    let url = w.metrics_url();
    scrape(&url).await;
    assert_eq!(w.process.terminate(LIMIT), Some(0), "a clean exit");
    assert!(
        reqwest::get(&url).await.is_err(),
        "nothing listens on {url} any more"
    );
}
