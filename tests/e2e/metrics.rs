//! The arbiter's `/metrics`, scraped over real HTTP from the real binary:
//! the page passes `promtool check metrics`, and its numbers move as they
//! must after real calls (a grant, a refusal with its reason, a release by
//! outcome, a hand-off between two watchers' streams, a flooding stream cut
//! with `RESOURCE_EXHAUSTED`). Each number is read before and after, so a
//! metric that never moves fails.

use std::time::{Duration, Instant};

use restock_proto::v1::{self as pb, StockObservation, StockReport};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, WatcherStream,
    metrics::{check_metrics, metric, scrape},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::helpers::{acquire, must_acquire, release};

/// The page, checked for its content type.
async fn page(arbiter: &ArbiterProcess) -> String {
    let (text, content_type) = scrape(&arbiter.metrics_url()).await;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    text
}

/// One series' value; panics naming it (and showing the page) if absent.
fn value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

/// Scrapes until `series` reaches `want` (a stream's end is counted when
/// the server has sent its trailers, a moment after the client reads
/// them), or panics after 5 s with the last page.
async fn wait_for(arbiter: &ArbiterProcess, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = page(arbiter).await;
        if metric(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not reach {want} within 5 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const ACQUIRE_OK: &str = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="restock.v1.PurchaseArbiter",grpc_method="AcquirePurchase",grpc_code="OK"}"#;
const STREAM_CUT: &str = r#"grpc_server_handled_total{grpc_type="bidi_stream",grpc_service="restock.v1.PurchaseArbiter",grpc_method="StreamStock",grpc_code="ResourceExhausted"}"#;

#[tokio::test]
async fn a_grant_a_refusal_and_a_release_move_their_metrics_and_promtool_accepts_the_page() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    // The slot's gauges are set after the start-up write, which may finish
    // a moment after the listener answers (a loaded machine showed it).
    let before = wait_for(&arbiter, r#"restock_products{state="ready"}"#, 3.0).await;
    check_metrics("purchase-arbiter", &before);
    assert_eq!(value(&before, "restock_slot_held"), 0.0);
    assert_eq!(value(&before, "restock_grants_total"), 0.0);
    assert_eq!(value(&before, "restock_lease_ttl_seconds"), 30.0);
    assert_eq!(value(&before, r#"restock_products{state="ready"}"#), 3.0);
    assert_eq!(value(&before, ACQUIRE_OK), 0.0);

    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "100", "w1").await;
    let granted = page(&arbiter).await;
    assert_eq!(value(&granted, "restock_grants_total"), 1.0);
    assert_eq!(value(&granted, "restock_slot_held"), 1.0);
    assert_eq!(
        value(&granted, "restock_fencing_token"),
        lease.fencing_token as f64
    );
    let expires = value(&granted, "restock_lease_expires_timestamp_seconds");
    assert!(
        (expires - lease.expires_at_unix_ms as f64 / 1000.0).abs() < 0.001,
        "{expires} vs {lease:?}"
    );
    assert_eq!(
        value(&granted, r#"restock_products{state="attempting"}"#),
        1.0
    );
    assert_eq!(value(&granted, r#"restock_products{state="ready"}"#), 2.0);
    assert_eq!(value(&granted, ACQUIRE_OK), 1.0);
    assert!(value(&granted, "restock_journal_fsync_seconds_count") >= 1.0);

    // Refused twice under one request id: the retry is answered from
    // memory and is no second refusal.
    let refused = r#"restock_refusals_total{reason="another_purchase_active"}"#;
    assert_eq!(value(&granted, refused), 0.0);
    for _ in 0..2 {
        let r = acquire(&mut c, "200", "w2", "r-1").await;
        assert_eq!(r.reason, "another_purchase_active", "{r:?}");
    }
    let after_refusal = page(&arbiter).await;
    assert_eq!(value(&after_refusal, refused), 1.0);
    assert_eq!(
        value(&after_refusal, r#"restock_refusals_total{reason="paused"}"#),
        0.0
    );
    assert_eq!(value(&after_refusal, "restock_grants_total"), 1.0);

    let purchased = r#"restock_releases_total{outcome="purchased"}"#;
    assert_eq!(value(&after_refusal, purchased), 0.0);
    release(&mut c, &lease, pb::Outcome::Purchased)
        .await
        .expect("release");
    let released = page(&arbiter).await;
    assert_eq!(value(&released, purchased), 1.0);
    assert_eq!(
        value(&released, r#"restock_releases_total{outcome="failed"}"#),
        0.0
    );
    assert_eq!(value(&released, "restock_slot_held"), 0.0);
    assert_eq!(
        value(&released, "restock_lease_expires_timestamp_seconds"),
        0.0
    );
    // The token stays: the next grant's is larger.
    assert_eq!(
        value(&released, "restock_fencing_token"),
        lease.fencing_token as f64
    );
    assert_eq!(
        value(&released, r#"restock_products{state="purchased"}"#),
        1.0
    );
    assert_eq!(value(&released, "restock_lease_expirations_total"), 0.0);
    check_metrics("purchase-arbiter", &released);

    // SIGTERM stops the HTTP listener with the rest.
    let http = arbiter
        .process
        .announced("http")
        .expect("an HTTP address in the ready file");
    assert_eq!(
        arbiter.process.terminate(Duration::from_secs(10)),
        Some(0),
        "exit 0 on SIGTERM"
    );
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn a_hand_off_between_two_streams_is_timed_and_watchers_are_counted() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let before = page(&arbiter).await;
    assert_eq!(value(&before, "restock_watchers_connected"), 0.0);
    assert_eq!(value(&before, "restock_handoff_seconds_count"), 0.0);
    assert_eq!(value(&before, "restock_observations_total"), 0.0);

    let mut w1 = WatcherStream::open(&arbiter, "w1").await;
    let mut w2 = WatcherStream::open(&arbiter, "w2").await;
    w1.report(&[("100", true), ("300", false)]).await;
    let lease = w1.next_grant(Duration::from_secs(5)).await;
    assert_eq!(lease.tcin, "100");
    w2.report(&[("200", true)]).await;
    let text = wait_for(&arbiter, r#"restock_products{state="queued"}"#, 1.0).await;
    assert_eq!(value(&text, "restock_watchers_connected"), 2.0);
    assert_eq!(value(&text, "restock_observations_total"), 3.0);
    // The first grant freed nothing: no hand-off.
    assert_eq!(value(&text, "restock_handoff_seconds_count"), 0.0);

    let mut c = arbiter.client().await;
    release(&mut c, &lease, pb::Outcome::OutOfStock)
        .await
        .expect("release");
    let next = w2.next_grant(Duration::from_secs(5)).await;
    assert_eq!(next.tcin, "200");
    let text = page(&arbiter).await;
    assert_eq!(value(&text, "restock_handoff_seconds_count"), 1.0);
    assert!(value(&text, "restock_handoff_seconds_sum") < 5.0, "{text}");
    assert_eq!(
        value(&text, r#"restock_releases_total{outcome="out_of_stock"}"#),
        1.0
    );
    assert_eq!(value(&text, "restock_grants_total"), 2.0);
    assert_eq!(
        value(&text, "restock_fencing_token"),
        next.fencing_token as f64
    );

    drop(w1);
    drop(w2);
    wait_for(&arbiter, "restock_watchers_connected", 0.0).await;
}

#[tokio::test]
async fn a_flooding_stream_cut_counts_as_resource_exhausted() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--max-reports-per-second".into(), "5".into()],
        ..ArbiterOptions::default()
    })
    .await;
    assert_eq!(value(&page(&arbiter).await, STREAM_CUT), 0.0);
    let mut c = arbiter.client().await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(StockReport {
        watcher_id: "flooder".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut flood = c
        .stream_stock(ReceiverStream::new(rx))
        .await
        .expect("the flooder's stream opens")
        .into_inner();
    tokio::spawn(async move {
        let report = StockReport {
            watcher_id: String::new(),
            observations: vec![StockObservation {
                tcin: "300".into(),
                in_stock: false,
                ..Default::default()
            }],
            polling: Vec::new(),
            poll_interval_ms: 0,
            source_block: None,
        };
        // Bounded, in case the limit does not work.
        for _ in 0..10_000 {
            if tx.send(report.clone()).await.is_err() {
                break;
            }
        }
    });
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(15), flood.message()).await {
            Ok(Ok(Some(_))) => continue, // the catalog
            Ok(Err(e)) => break e,
            other => panic!("the flooding stream must be cut, got {other:?}"),
        }
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    let text = wait_for(&arbiter, STREAM_CUT, 1.0).await;
    let ok = r#"grpc_server_handled_total{grpc_type="bidi_stream",grpc_service="restock.v1.PurchaseArbiter",grpc_method="StreamStock",grpc_code="OK"}"#;
    assert_eq!(value(&text, ok), 0.0, "the cut stream is not counted OK");
    assert!(value(&text, "restock_observations_total") >= 5.0, "{text}");
    check_metrics("purchase-arbiter", &text);
}

#[tokio::test]
async fn with_http_listen_off_no_http_address_is_announced() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        http_listen: "off".into(),
        ..ArbiterOptions::default()
    })
    .await;
    assert_eq!(arbiter.process.announced("http"), None);
    assert_eq!(arbiter.status().await.products.len(), 3);
}
