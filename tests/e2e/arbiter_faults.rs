//! Bad input, bad files and signals: the arbiter answers with the right
//! status code and a message that says what was wrong, refuses to start on a
//! broken file (naming it), and shuts down cleanly, ending open streams.

use std::{path::Path, time::Duration};

use restock_proto::v1::{
    self as pb, AcquirePurchaseRequest, ReleasePurchaseRequest, RenewLeaseRequest,
    WatchEventsRequest,
};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, Process, bin, write_product_config,
};
use tonic::Code;

use crate::helpers::{WatcherStream, must_acquire, status};

/// The live lease's id and token, and the products in priority order.
async fn lease_and_order(c: &mut crate::helpers::Client) -> (Option<(String, u64)>, Vec<String>) {
    let s = status(c).await;
    (
        s.active_lease.map(|l| (l.lease_id, l.fencing_token)),
        s.products.into_iter().map(|p| p.tcin).collect(),
    )
}

async fn acquire_err(c: &mut crate::helpers::Client, tcin: &str, watcher: &str) -> tonic::Status {
    c.acquire_purchase(AcquirePurchaseRequest {
        tcin: tcin.into(),
        watcher_id: watcher.into(),
        request_id: String::new(),
    })
    .await
    .expect_err("the request must be refused")
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let mut c = arbiter.client().await;

    let cases = [
        ("", "w1", "product id is empty"),
        ("12 34", "w1", "' '"),
        (&"9".repeat(65) as &str, "w1", "at most 64"),
        ("bestbuy:6614313", "w1", "unknown retailer \"bestbuy\""),
        ("shopify:cards.example", "w1", "shopify:<shop host>/"),
        ("100", "", "watcher id is empty"),
        ("100", "w 1", "watcher id"),
    ];
    for (tcin, watcher, want) in cases {
        let e = acquire_err(&mut c, tcin, watcher).await;
        assert_eq!(e.code(), Code::InvalidArgument, "{tcin:?}/{watcher:?}: {e}");
        assert!(e.message().contains(want), "{tcin:?}/{watcher:?}: {e}");
    }

    // Unknown lease, missing token, missing outcome.
    let e = c
        .renew_lease(RenewLeaseRequest {
            lease_id: "lease-does-not-exist".into(),
            fencing_token: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("lease-does-not-exist"), "{e}");
    let e = c
        .release_purchase(ReleasePurchaseRequest {
            lease_id: "x".into(),
            fencing_token: 0,
            outcome: pb::Outcome::Purchased as i32,
            detail: String::new(),
            paid_price_cents: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("fencing_token"), "{e}");
    let lease = must_acquire(&mut c, "100", "w1").await;
    for (outcome, want) in [
        (0, "outcome is missing"),
        (42, "not a known outcome"),
        (5, "arbiter only"),
    ] {
        let e = c
            .release_purchase(ReleasePurchaseRequest {
                lease_id: lease.lease_id.clone(),
                fencing_token: lease.fencing_token,
                outcome,
                detail: String::new(),
                paid_price_cents: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(want), "{e}");
    }

    // An oversize message is refused by the decode limit (1 MiB by default).
    let e = acquire_err(&mut c, &"7".repeat(2 * 1024 * 1024), "w1").await;
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "oversize message: {e}"
    );

    // Nothing above lost or changed anything.
    let s = status(&mut c).await;
    assert_eq!(s.active_lease.unwrap().lease_id, lease.lease_id);
}

#[tokio::test]
async fn a_stream_with_bad_reports_is_closed_with_invalid_argument() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let mut w = WatcherStream::open(&arbiter, "w1").await;
    w.report(&[("not a tcin", true)]).await;
    let e = match w.next(Duration::from_secs(5)).await {
        Some(Err(e)) => e,
        other => panic!("expected the stream to fail, got {other:?}"),
    };
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("observation #1"), "{e}");

    // A stream without a watcher id is refused at once.
    let mut c = arbiter.client().await;
    let first = pb::StockReport::default();
    let e = match c.stream_stock(tokio_stream::iter(vec![first])).await {
        Ok(_) => panic!("a stream without a watcher id must be refused"),
        Err(e) => e,
    };
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("watcher_id"), "{e}");
    // The arbiter still serves.
    status(&mut c).await;
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_cleanly() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let mut w = WatcherStream::open(&arbiter, "w1").await;
    let mut c = arbiter.client().await;
    let mut events = c
        .watch_events(WatchEventsRequest { from_sequence: 0 })
        .await
        .unwrap()
        .into_inner();

    let code = arbiter.process.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "SIGTERM is a clean exit");
    match w.next(Duration::from_secs(5)).await {
        Some(Err(e)) => assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Cancelled | Code::Unknown
            ),
            "{e}"
        ),
        other => panic!("the watcher stream must end, got {other:?}"),
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the event stream ends");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "no event after shutdown: {ended:?}"
    );
    assert!(
        arbiter
            .process
            .log_text()
            .contains("purchase arbiter stopped")
    );
}

/// Starts the arbiter binary expecting it to fail; returns its log.
fn start_expecting_failure(dir: &Path, args: &[String]) -> String {
    let log = dir.join("failed-start.log");
    let mut p = Process::start(
        "purchase-arbiter (bad start)",
        bin("purchase-arbiter"),
        args.to_vec(),
        log,
    );
    let code = p.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(code, Some(c) if c != 0),
        "start-up must fail, exit {code:?}"
    );
    p.log_text()
}

/// The flags of a start with these files, on port 0 and without HTTP (the
/// start is meant to fail before anyone could connect, and must not fail
/// for a taken port 8081 instead).
fn start_args(config: &Path, state: &Path) -> Vec<String> {
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--http-listen".into(),
        "off".into(),
        "--config".into(),
        config.display().to_string(),
        "--state-file".into(),
        state.display().to_string(),
    ]
}

#[tokio::test]
async fn a_corrupt_state_file_stops_start_up_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_product_config(dir.path(), &["100"]);
    let state = dir.path().join("state.json");
    let garbage = b"{\"version\": 1, \"next_fencing_token\": 12, \"produ";
    std::fs::write(&state, garbage).unwrap();
    let args = start_args(&config, &state);
    let log = start_expecting_failure(dir.path(), &args);
    assert!(log.contains(&state.display().to_string()), "{log}");
    assert!(log.contains("corrupt"), "{log}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        garbage,
        "never silently replaced"
    );
}

#[tokio::test]
async fn a_broken_product_config_stops_start_up_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("products.json");
    std::fs::write(
        &config,
        "{\n  \"products\": [\n    {\"tcin\": \"1\",}\n  ]\n}\n",
    )
    .unwrap();
    let args = start_args(&config, &dir.path().join("s.json"));
    let log = start_expecting_failure(dir.path(), &args);
    assert!(log.contains(&config.display().to_string()), "{log}");
    assert!(log.contains("line 3"), "{log}");

    // A duplicate id is named too.
    std::fs::write(&config, r#"{"products":[{"tcin":"1"},{"tcin":"1"}]}"#).unwrap();
    let log = start_expecting_failure(dir.path(), &args);
    assert!(log.contains("listed twice"), "{log}");
}

#[tokio::test]
async fn bad_flags_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().unwrap();
    // Durations take a unit or a bare number of seconds (one grammar in
    // every binary); anything else is refused with an example.
    let log = start_expecting_failure(dir.path(), &["--lease-ttl".into(), "30 parsecs".into()]);
    assert!(
        log.contains("--lease-ttl") && log.contains("500ms"),
        "{log}"
    );
}

#[tokio::test]
async fn every_kind_of_broken_state_file_stops_start_up_and_the_good_one_brings_the_lease_back() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "300s".into(),
        ..ArbiterOptions::default()
    })
    .await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "100", "holder").await;
    arbiter.process.kill9();

    // Everything the state consists of (the file, and any journal next to
    // it), to put back at the end.
    let state = arbiter.state_file();
    let name = state.file_name().unwrap().to_string_lossy().into_owned();
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(arbiter.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    let good = std::fs::read(&state).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut d = doc.clone();
        d[key] = value;
        serde_json::to_vec(&d).unwrap()
    };
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an empty file", Vec::new(), "corrupt"),
        (
            "the first half of the file",
            good[..good.len() / 2].to_vec(),
            "corrupt",
        ),
        ("binary garbage", garbage, "corrupt"),
        (
            "JSON of another shape",
            br#"{"hello": "world"}"#.to_vec(),
            "corrupt",
        ),
        ("a JSON array", b"[]".to_vec(), "corrupt"),
        (
            "a format version from the future",
            with("version", 99.into()),
            "version 99",
        ),
        (
            "a token that is not a number",
            with("next_fencing_token", "many".into()),
            "corrupt",
        ),
    ];
    let args = start_args(&arbiter.config_file(), &state);
    for (what, bytes, says) in cases {
        std::fs::write(&state, &bytes).unwrap();
        let log = start_expecting_failure(arbiter.dir.path(), &args);
        assert!(log.contains(&state.display().to_string()), "{what}: {log}");
        assert!(log.contains(says), "{what}: {log}");
        assert_eq!(
            std::fs::read(&state).unwrap(),
            bytes,
            "{what}: the file is never replaced"
        );
    }

    // The good state back: the lease is there, with its token.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    arbiter.kill9_and_restart().await;
    let mut c = arbiter.client().await;
    let (held, _) = lease_and_order(&mut c).await;
    assert_eq!(held, Some((lease.lease_id.clone(), lease.fencing_token)));
    assert_eq!(
        status(&mut c).await.next_fencing_token,
        lease.fencing_token + 1
    );
}

#[tokio::test]
async fn a_broken_product_config_on_reload_keeps_the_list_and_the_lease() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "300s".into(),
        ..ArbiterOptions::default()
    })
    .await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "200", "holder").await;
    let before = lease_and_order(&mut c).await;
    let config = arbiter.config_file();
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        (
            "a trailing comma",
            Some("{\n  \"products\": [\n    {\"tcin\": \"100\"},\n  ]\n}\n"),
            "line 4",
        ),
        ("not JSON", Some("products = [100, 200]\n"), "line 1"),
        ("an empty file", Some(""), "line 1"),
        (
            "an invalid id",
            Some(r#"{"products": [{"tcin": "1 2"}]}"#),
            "product #1",
        ),
        (
            "a duplicate id",
            Some(r#"{"products": [{"tcin": "100"}, {"tcin": "100"}]}"#),
            "listed twice",
        ),
        ("a missing file", None, "cannot read"),
    ];
    for (what, text, says) in cases {
        match text {
            Some(t) => std::fs::write(&config, t).unwrap(),
            None => std::fs::remove_file(&config).unwrap(),
        }
        let e = c
            .reload_config(pb::ReloadConfigRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e}");
        assert!(
            e.message().contains(&config.display().to_string()) && e.message().contains(says),
            "{what}: {e}"
        );
        // SIGHUP with the same file: logged, the arbiter carries on.
        arbiter.process.signal("-HUP");
        restock_testkit::wait_healthy(arbiter.addr(), Duration::from_secs(5)).await;
        assert_eq!(lease_and_order(&mut c).await, before, "after {what}");
    }
    // A good file is taken, and the lease is still there.
    restock_testkit::write_product_config(arbiter.dir.path(), &["300", "200", "100"]);
    c.reload_config(pb::ReloadConfigRequest {}).await.unwrap();
    let (held, order) = lease_and_order(&mut c).await;
    assert_eq!(held, Some((lease.lease_id, lease.fencing_token)));
    assert_eq!(order, ["300", "200", "100"]);
}

/// SIGTERM turns the server's overall health (the empty service name, what
/// most probes ask) NOT_SERVING together with the arbiter's own service,
/// before the streams end.
#[tokio::test]
async fn sigterm_turns_overall_and_service_health_not_serving() {
    use tonic_health::{
        ServingStatus,
        pb::{HealthCheckRequest, health_client::HealthClient},
    };
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let channel = tonic::transport::Channel::from_shared(arbiter.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watches = Vec::new();
    for service in ["", "restock.v1.PurchaseArbiter"] {
        let mut w = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = w.message().await.unwrap().expect("a first status");
        assert_eq!(
            first.status,
            ServingStatus::Serving as i32,
            "{service:?} before SIGTERM"
        );
        watches.push((service, w));
    }
    arbiter.process.signal("-TERM");
    for (service, mut w) in watches {
        let next = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .unwrap_or_else(|_| panic!("no health change for {service:?} within 5 s of SIGTERM"))
            .unwrap_or_else(|e| panic!("health watch of {service:?} failed: {e}"))
            .unwrap_or_else(|| panic!("health watch of {service:?} ended without a change"));
        assert_eq!(
            next.status,
            ServingStatus::NotServing as i32,
            "{service:?} after SIGTERM"
        );
    }
}
