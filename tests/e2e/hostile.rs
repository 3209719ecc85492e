//! Hostile and broken input against both services: bytes that are not
//! HTTP/2, gRPC calls cut short or lying about their length, protobuf that
//! is not protobuf, oversize messages, invalid ids, unknown leases and wrong
//! tokens, a stream that floods reports, streams opened and dropped by the
//! thousand, thousands of idle connections, and a stock source that answers
//! garbage or never stops answering.
//!
//! After each, the service must still serve (health SERVING, status
//! answers) and its state must be intact: a lease taken before is still
//! there with the same id, token and expiry, and no token was spent.
//!
//! Broken files (state file, product config at start-up and on reload) are
//! in `arbiter_faults.rs`, next to the tests that were there first.

use std::time::{Duration, Instant};

use futures::StreamExt;
use restock_proto::v1::{
    self as pb, GetStatusRequest, GetWatcherStatusRequest, ReleasePurchaseRequest,
    RenewLeaseRequest, ResetProductRequest, StockObservation, StockReport, arbiter_message::Kind,
};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, eventually, wait_healthy,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::{
    helpers::{Client, WatcherStream, acquire, must_acquire, renew, status},
    raw_h2::{self, DATA, END_HEADERS, END_STREAM, HEADERS},
};

const RELEASE: &str = "/restock.v1.PurchaseArbiter/ReleasePurchase";
const LIMIT: Duration = Duration::from_secs(5);

/// An arbiter with a long TTL and a lease held on product 100.
async fn arbiter_holding_a_lease(extra_args: &[&str]) -> (ArbiterProcess, pb::Lease) {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        lease_ttl: "300s".into(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..ArbiterOptions::default()
    })
    .await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "100", "holder").await;
    (arbiter, lease)
}

/// The arbiter serves, and `lease` is still the live lease, unchanged.
async fn assert_intact(arbiter: &ArbiterProcess, lease: &pb::Lease, after: &str) {
    wait_healthy(arbiter.addr(), LIMIT).await;
    let mut c = arbiter.client().await;
    let s = tokio::time::timeout(LIMIT, c.get_status(GetStatusRequest {}))
        .await
        .unwrap_or_else(|_| panic!("after {after}: GetStatus took over {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("after {after}: GetStatus failed: {e}"))
        .into_inner();
    let held = s
        .active_lease
        .unwrap_or_else(|| panic!("after {after}: the lease is gone"));
    assert_eq!(
        (
            &held.lease_id,
            held.fencing_token,
            held.expires_at_unix_ms,
            &held.watcher_id
        ),
        (
            &lease.lease_id,
            lease.fencing_token,
            lease.expires_at_unix_ms,
            &lease.watcher_id
        ),
        "after {after}: the lease changed"
    );
    assert_eq!(
        s.next_fencing_token,
        lease.fencing_token + 1,
        "after {after}: a fencing token was spent"
    );
}

/// Deterministic noise.
fn noise(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Byte strings that are not (valid) HTTP/2, and whether the server must
/// give up on the connection (`false`: it may wait for more).
fn garbage_cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let with_handshake = |tail: Vec<u8>| {
        let mut b = raw_h2::handshake();
        b.extend(tail);
        b
    };
    // A frame header declaring 16 MiB, far above the 16 KiB frame limit.
    let mut huge = vec![0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1];
    huge.extend(noise(100));
    vec![
        ("64 KiB of noise", noise(64 * 1024), true),
        (
            "an HTTP/1.1 request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            true,
        ),
        ("half a preface", raw_h2::PREFACE[..10].to_vec(), false),
        ("the preface, then noise", with_handshake(noise(4096)), true),
        (
            "a header block that is not HPACK",
            with_handshake(raw_h2::frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &[0xff; 32],
            )),
            true,
        ),
        ("a 16 MiB frame header", with_handshake(huge), true),
        (
            "DATA on stream 0",
            with_handshake(raw_h2::frame(DATA, 0, 0, b"x")),
            true,
        ),
    ]
}

#[tokio::test]
async fn garbage_on_the_arbiters_port_is_dropped_and_the_lease_is_intact() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    for (what, bytes, must_close) in garbage_cases() {
        let a = raw_h2::exchange(arbiter.addr(), &bytes, LIMIT).await;
        if must_close {
            assert!(
                a.goaway.is_some() || a.closed,
                "{what}: the server should give up on the connection, got {a:?}"
            );
        }
        assert_intact(&arbiter, &lease, what).await;
    }
}

/// A `ReleasePurchaseRequest`, encoded by hand (protobuf wire format).
fn release_request(lease_id: &str, token: u64, outcome: pb::Outcome) -> Vec<u8> {
    let mut b = vec![0x0a, lease_id.len() as u8]; // field 1, length-delimited
    b.extend_from_slice(lease_id.as_bytes());
    b.push(0x10); // field 2, varint
    let mut t = token;
    while t >= 0x80 {
        b.push((t as u8) | 0x80);
        t >>= 7;
    }
    b.push(t as u8);
    b.extend([0x18, outcome as u8]); // field 3, varint
    b
}

#[tokio::test]
async fn broken_grpc_calls_are_refused_and_never_act_on_a_partial_message() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let msg = release_request(&lease.lease_id, lease.fencing_token, pb::Outcome::Purchased);
    let full = raw_h2::grpc_message(&msg);

    let truncated = &full[..full.len() - 1];
    let mut four_gib = raw_h2::grpc_prefix(false, u32::MAX);
    four_gib.extend_from_slice(&msg);
    let mut compressed = raw_h2::grpc_prefix(true, msg.len() as u32);
    compressed.extend_from_slice(&msg);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "the real release, one byte short of its length prefix",
            raw_h2::call(RELEASE, truncated),
        ),
        ("a length prefix of 4 GiB", raw_h2::call(RELEASE, &four_gib)),
        (
            "the compressed flag without an encoding",
            raw_h2::call(RELEASE, &compressed),
        ),
        (
            "bytes that are not protobuf",
            raw_h2::call(RELEASE, &raw_h2::grpc_message(&[0xff; 32])),
        ),
        ("half a length prefix", raw_h2::call(RELEASE, &full[..3])),
        (
            "a method that does not exist",
            raw_h2::call("/restock.v1.PurchaseArbiter/StealSlot", &full),
        ),
    ];
    for (what, bytes) in cases {
        let a = raw_h2::exchange(arbiter.addr(), &bytes, LIMIT).await;
        assert!(a.is_refusal(), "{what}: expected a refusal, got {a:?}");
        assert_intact(&arbiter, &lease, what).await;
    }

    // The connection drops in the middle of the real release.
    let mut s = TcpStream::connect(arbiter.addr()).await.unwrap();
    let mut b = raw_h2::handshake();
    b.extend(raw_h2::frame(
        HEADERS,
        END_HEADERS,
        1,
        &raw_h2::grpc_header_block(RELEASE),
    ));
    b.extend(raw_h2::frame(DATA, 0, 1, &full[..full.len() / 2]));
    s.write_all(&b).await.unwrap();
    drop(s);
    assert_intact(&arbiter, &lease, "a connection closed mid-message").await;

    // The same bytes, whole, do release: the cases above were refused for
    // what was wrong with them, not for a mistake in the encoding.
    let a = raw_h2::exchange(arbiter.addr(), &raw_h2::call(RELEASE, &full), LIMIT).await;
    assert!(a.data_frames > 0, "the whole release is answered: {a:?}");
    let mut c = arbiter.client().await;
    assert_eq!(status(&mut c).await.active_lease, None);
}

#[tokio::test]
async fn oversize_messages_are_refused_and_the_lease_is_intact() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let mut c = arbiter.client().await;
    // Over the 1 MiB decode limit.
    let e = c
        .release_purchase(ReleasePurchaseRequest {
            lease_id: lease.lease_id.clone(),
            fencing_token: lease.fencing_token,
            outcome: pb::Outcome::Failed as i32,
            detail: "x".repeat(2 * 1024 * 1024),
            paid_price_cents: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e}"
    );
    // Under the decode limit, over the detail limit.
    let e = c
        .release_purchase(ReleasePurchaseRequest {
            lease_id: lease.lease_id.clone(),
            fencing_token: lease.fencing_token,
            outcome: pb::Outcome::Failed as i32,
            detail: "x".repeat(5_000),
            paid_price_cents: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("4096"), "{e}");
    assert_intact(&arbiter, &lease, "oversize releases").await;

    // A 2 MiB report on a stream, and one with too many observations.
    for (what, report, code, says) in [
        (
            "a 2 MiB report",
            StockReport {
                watcher_id: "big".into(),
                observations: vec![StockObservation {
                    tcin: "9".repeat(2 * 1024 * 1024),
                    in_stock: true,
                    ..Default::default()
                }],
                polling: Vec::new(),
                poll_interval_ms: 0,
                source_block: None,
            },
            None,
            "",
        ),
        (
            "10,001 observations",
            StockReport {
                watcher_id: "many".into(),
                observations: (0..10_001)
                    .map(|i| StockObservation {
                        tcin: format!("{}", 1_000 + i),
                        in_stock: false,
                        ..Default::default()
                    })
                    .collect(),
                polling: Vec::new(),
                poll_interval_ms: 0,
                source_block: None,
            },
            Some(Code::InvalidArgument),
            "at most 10000",
        ),
    ] {
        let e = match c.stream_stock(tokio_stream::iter(vec![report])).await {
            Err(e) => e,
            Ok(r) => {
                let mut inbound = r.into_inner();
                loop {
                    match tokio::time::timeout(LIMIT, inbound.message()).await {
                        Ok(Ok(Some(_))) => continue,
                        Ok(Err(e)) => break e,
                        other => panic!("{what}: the stream must fail, got {other:?}"),
                    }
                }
            }
        };
        match code {
            Some(code) => assert_eq!(e.code(), code, "{what}: {e}"),
            None => assert!(
                matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
                "{what}: {e}"
            ),
        }
        assert!(e.message().contains(says), "{what}: {e}");
        assert_intact(&arbiter, &lease, what).await;
    }
}

#[tokio::test]
async fn invalid_product_ids_are_refused_everywhere_and_change_nothing() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let mut c = arbiter.client().await;
    let long = "1".repeat(65);
    let bad = [
        "",
        " 100",
        "100\n",
        "10\u{0}0",
        "../../etc/passwd",
        "１２３", // full-width digits
        "🛒",
        "100;DROP TABLE products",
        long.as_str(),
    ];
    for t in bad {
        let e = c
            .reset_product(ResetProductRequest { tcin: t.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "reset {t:?}: {e}");
        let e = c
            .acquire_purchase(pb::AcquirePurchaseRequest {
                tcin: t.into(),
                watcher_id: "w".into(),
                request_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "acquire {t:?}: {e}");
        // In a stream's polling list.
        let first = StockReport {
            watcher_id: "poller".into(),
            observations: Vec::new(),
            polling: vec!["200".into(), t.into()],
            poll_interval_ms: 0,
            source_block: None,
        };
        let e = c
            .stream_stock(tokio_stream::iter(vec![first]))
            .await
            .map(|_| ())
            .expect_err("a bad polling list is refused");
        assert_eq!(e.code(), Code::InvalidArgument, "polling {t:?}: {e}");
    }
    // A well-formed id that is not known: not found, and not added.
    let e = c
        .reset_product(ResetProductRequest {
            tcin: "424242".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let s = status(&mut c).await;
    assert!(s.products.iter().all(|p| p.tcin != "424242"));
    assert_eq!(s.products.len(), 3);
    // The held product cannot be reset from under its lease.
    let e = c
        .reset_product(ResetProductRequest { tcin: "100".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert_intact(&arbiter, &lease, "invalid product ids").await;
}

#[tokio::test]
async fn unknown_leases_and_wrong_tokens_change_nothing() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let mut c = arbiter.client().await;
    let renew = |c: &mut Client, id: &str, token: u64| {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            c.renew_lease(RenewLeaseRequest {
                lease_id: id,
                fencing_token: token,
            })
            .await
            .map(|_| ())
            .unwrap_err()
        }
    };
    let release = |c: &mut Client, id: &str, token: u64| {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            c.release_purchase(ReleasePurchaseRequest {
                lease_id: id,
                fencing_token: token,
                outcome: pb::Outcome::Purchased as i32,
                detail: String::new(),
                paid_price_cents: None,
            })
            .await
            .map(|_| ())
            .unwrap_err()
        }
    };
    let id = lease.lease_id.as_str();
    let t = lease.fencing_token;
    let long_id = "l".repeat(129);
    let cases: Vec<(&str, String, u64, Code)> = vec![
        (
            "the lease with the next token",
            id.into(),
            t + 1,
            Code::FailedPrecondition,
        ),
        (
            "the lease with a far token",
            id.into(),
            t + 1_000,
            Code::FailedPrecondition,
        ),
        (
            "the lease with u64::MAX",
            id.into(),
            u64::MAX,
            Code::FailedPrecondition,
        ),
        (
            "the lease with token 0",
            id.into(),
            0,
            Code::InvalidArgument,
        ),
        ("an unknown lease", "lease-0-none".into(), t, Code::NotFound),
        ("an empty lease id", String::new(), t, Code::InvalidArgument),
        ("a 129-byte lease id", long_id, t, Code::InvalidArgument),
        // Not a lease id at all (lease ids are printable ASCII), so the
        // request is malformed rather than about an unknown lease.
        (
            "a lease id with a NUL",
            format!("{id}\u{0}"),
            t,
            Code::InvalidArgument,
        ),
    ];
    for (what, lease_id, token, code) in &cases {
        let e = renew(&mut c, lease_id, *token).await;
        assert_eq!(e.code(), *code, "renew, {what}: {e}");
        let e = release(&mut c, lease_id, *token).await;
        assert_eq!(e.code(), *code, "release, {what}: {e}");
    }
    // Someone else asking for the slot is refused with an answer, not a
    // second lease.
    let r = acquire(&mut c, "200", "intruder", "r-1").await;
    assert!(!r.granted, "{r:?}");
    assert_eq!(r.reason, "another_purchase_active");
    assert_intact(&arbiter, &lease, "wrong tokens and unknown leases").await;
}

#[tokio::test]
async fn a_flooding_stream_is_slowed_then_cut_while_another_watcher_gets_its_grant() {
    // The default limit: 200 reports a second, bursts of 200.
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
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
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
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
        while sent < 100_000 && tx.send(report.clone()).await.is_ok() {
            sent += 1;
        }
        sent
    });
    // While the flood runs, another watcher reports and must be served at
    // once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut good = WatcherStream::open(&arbiter, "good").await;
    let asked = Instant::now();
    good.report(&[("100", true)]).await;
    let grant = good.next_grant(Duration::from_secs(2)).await;
    let grant_took = asked.elapsed();
    assert_eq!(grant.tcin, "100");
    assert!(
        grant_took < Duration::from_secs(1),
        "the grant took {grant_took:?} during the flood"
    );

    let e = loop {
        match tokio::time::timeout(Duration::from_secs(15), flood.message()).await {
            Ok(Ok(Some(_))) => continue, // the catalog
            Ok(Err(e)) => break e,
            other => panic!("the flooding stream must be cut, got {other:?}"),
        }
    };
    let cut_after = started.elapsed();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("faster than 200 per second"), "{e}");
    let sent = sender.await.unwrap();
    assert!(
        sent >= 200,
        "the burst passes before any slowing ({sent} sent)"
    );
    assert!(
        cut_after >= Duration::from_millis(500),
        "slowed before being cut, not cut at once ({cut_after:?})"
    );
    eprintln!(
        "flood: {sent} reports queued, cut after {cut_after:?}; the other watcher's grant took {grant_took:?}"
    );

    // The good watcher's stream and lease are untouched.
    good.report(&[("100", true)]).await;
    let s = status(&mut c).await;
    let w = |id: &str| s.watchers.iter().find(|w| w.watcher_id == id).cloned();
    assert!(w("good").is_some_and(|w| w.connected), "{s:?}");
    assert!(w("flooder").is_some_and(|w| !w.connected), "{s:?}");
    assert_intact(&arbiter, &grant, "a flood").await;
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn two_thousand_streams_opened_and_dropped_leave_nothing_behind() {
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let pid = arbiter.process.pid();
    let c = arbiter.client().await;
    let before = fds(pid);
    let started = Instant::now();
    for i in 0..2_000u32 {
        let mut c = c.clone();
        let (tx, rx) = mpsc::channel(1);
        if i % 10 == 9 {
            // Opened and dropped before it even names its watcher.
            let _ = tokio::time::timeout(
                Duration::from_millis(5),
                c.stream_stock(ReceiverStream::new(rx)),
            )
            .await;
            drop(tx);
            continue;
        }
        tx.send(StockReport {
            watcher_id: format!("churn-{}", i % 8),
            observations: vec![StockObservation {
                tcin: "200".into(),
                in_stock: true,
                ..Default::default()
            }],
            polling: Vec::new(),
            poll_interval_ms: 0,
            source_block: None,
        })
        .await
        .unwrap();
        let mut inbound = c
            .stream_stock(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("stream {i}: {e}"))
            .into_inner();
        if i % 10 < 7 {
            // Read the catalog, then drop.
            let first = tokio::time::timeout(LIMIT, inbound.message())
                .await
                .unwrap_or_else(|_| panic!("stream {i}: no catalog"))
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            assert!(matches!(first.and_then(|m| m.kind), Some(Kind::Catalog(_))));
        }
    }
    let took = started.elapsed();
    eprintln!("2,000 streams opened and dropped in {took:?}");
    let mut client = arbiter.client().await;
    eventually(
        "every churned stream to be seen closed",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move {
                let s = client
                    .get_status(GetStatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                s.watchers
                    .iter()
                    .filter(|w| w.watcher_id.starts_with("churn-"))
                    .all(|w| !w.connected)
                    .then_some(())
            }
        },
    )
    .await;
    let s = status(&mut client).await;
    let p = s.products.iter().find(|p| p.tcin == "200").unwrap();
    assert!(
        p.in_stock_at.is_empty(),
        "closed streams' sightings no longer count: {p:?}"
    );
    drop(c);
    eventually(
        "the arbiter's descriptors back to normal",
        LIMIT,
        || async { (fds(pid) <= before + 10).then_some(()) },
    )
    .await;
    assert_intact(&arbiter, &lease, "2,000 streams opened and dropped").await;
}

/// The soft and hard limits on open files of this process.
fn nofile_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => (1024, 1024),
    }
}

/// Raises this process's soft limit on open files to `want` if the hard
/// limit allows (with util-linux `prlimit`; children inherit it). Returns
/// the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile_limits();
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    nofile_limits().0
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_service() {
    let mut n = 2_000u64;
    // The test process and the arbiter each hold one descriptor per
    // connection, plus their own.
    let soft = raise_nofile(n + 300);
    if soft < n + 300 {
        n = soft.saturating_sub(300).max(100);
        eprintln!("the open-files limit is {soft}; using {n} idle connections instead of 2,000");
    }
    let (arbiter, lease) = arbiter_holding_a_lease(&[]).await;
    let pid = arbiter.process.pid();
    let before = fds(pid);
    let addr = arbiter.addr();
    let started = Instant::now();
    let conns: Vec<TcpStream> = futures::stream::iter(0..n)
        .map(|i| {
            async move {
                let mut s = TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.write_all(&raw_h2::handshake()).await.unwrap();
                // The server's SETTINGS: the HTTP/2 handshake is done.
                let mut head = [0u8; 9];
                tokio::time::timeout(LIMIT, s.read_exact(&mut head))
                    .await
                    .unwrap_or_else(|_| panic!("connection {i}: no SETTINGS"))
                    .unwrap();
                assert_eq!(head[3], raw_h2::SETTINGS, "connection {i}");
                s
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    eprintln!(
        "{n} idle HTTP/2 connections open in {:?}",
        started.elapsed()
    );
    let held = fds(pid);
    assert!(
        // (less a few: `before` counted a client connection since closed)
        held + 5 >= before + n as usize,
        "the arbiter holds them all: {held} descriptors, {before} before"
    );
    // Service goes on: status, a renewal, another watcher's stream.
    let t = Instant::now();
    let mut c = arbiter.client().await;
    status(&mut c).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let renewed = renew(&mut c, &lease)
        .await
        .expect("renewal during the idle crowd");
    let w = WatcherStream::open(&arbiter, "late-comer").await;
    assert_eq!(w.catalog.products.len(), 3);
    drop(conns);
    eventually(
        "the idle connections to be released",
        Duration::from_secs(10),
        || async { (fds(pid) <= before + 10).then_some(()) },
    )
    .await;
    assert_intact(&arbiter, &renewed, &format!("{n} idle connections")).await;
}

/// What a fake stock source answers, by product id.
fn source_answer(tcin: &str) -> SourceAnswer {
    match tcin {
        "101" => SourceAnswer::Body(200, br#"{"data": {"product": {"fulfillment": "#.to_vec()),
        "102" => SourceAnswer::Body(200, b"<html><body>Access Denied</body></html>".to_vec()),
        "103" => SourceAnswer::Endless,
        "104" => {
            let mut b = vec![b'['; 100_000];
            b.extend(vec![b']'; 100_000]);
            SourceAnswer::Body(200, b)
        }
        "105" => SourceAnswer::Body(
            200,
            serde_json::to_vec(&serde_json::json!({"data": {"product": {"tcin": "105",
                "fulfillment": {"shipping_options": {"availability_status": "IN_STOCK"}}}}}))
            .unwrap(),
        ),
        "106" => SourceAnswer::Silent,
        "107" => SourceAnswer::ShortBody,
        _ => SourceAnswer::Body(
            200,
            br#"{"data": {"product": {"fulfillment": 42, "price": {"current_retail": "free"}}}}"#
                .to_vec(),
        ),
    }
}

#[derive(Debug)]
enum SourceAnswer {
    Body(u16, Vec<u8>),
    /// 200, then a body that never ends.
    Endless,
    /// Headers, then nothing.
    Silent,
    /// Content-Length 1000, ten bytes, then the connection closes.
    ShortBody,
}

/// A stock source and checkout that misbehave on purpose, speaking just
/// enough HTTP/1.1 (one request per connection).
async fn hostile_source() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_one(s));
        }
    });
    format!("http://{addr}")
}

async fn serve_one(mut s: TcpStream) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let answer = if path.starts_with("/checkout") {
        SourceAnswer::Endless
    } else {
        let tcin = path
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("tcin="))
            .unwrap_or("");
        source_answer(tcin)
    };
    let _ = match answer {
        SourceAnswer::Body(code, body) => {
            let head = format!(
                "HTTP/1.1 {code} OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.ok();
            s.write_all(&body).await
        }
        SourceAnswer::Endless => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 64 * 1024];
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            // Until the client hangs up (bounded: 16 GiB).
            for _ in 0..(256 * 1024) {
                if s.write_all(&framed).await.is_err() {
                    return;
                }
            }
            Ok(())
        }
        SourceAnswer::Silent => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
            s.write_all(head.as_bytes()).await.ok();
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        SourceAnswer::ShortBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"data\":";
            s.write_all(head.as_bytes()).await
        }
    };
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test]
async fn a_stock_source_and_checkout_that_answer_garbage_never_crash_the_watcher() {
    let products = ["101", "102", "103", "104", "105", "106", "107", "108"];
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        products: products.iter().map(|s| s.to_string()).collect(),
        ..ArbiterOptions::default()
    })
    .await;
    let source = hostile_source().await;
    let watcher = WatcherProcess::start_with(
        WatcherOptions::new("w-hostile", arbiter.url())
            .source(&source)
            .checkout_http(format!("{source}/checkout"))
            .poll_interval("200ms")
            .args(&[
                "--request-timeout",
                "2s",
                "--checkout-timeout",
                "20s",
                "--source-backoff-initial",
                "200ms",
                "--source-backoff-max",
                "500ms",
            ]),
    )
    .await;
    let pid = watcher.process.pid();
    let wc = watcher.client().await;

    // The one good product is seen, granted, and its checkout (whose answer
    // never ends) fails within bounds, with the lease released.
    let mut c = arbiter.client().await;
    let p = eventually(
        "the checkout of 105 to end and be released",
        Duration::from_secs(40),
        || {
            let mut c = c.clone();
            async move {
                let s = c.get_status(GetStatusRequest {}).await.ok()?.into_inner();
                let p = s.products.into_iter().find(|p| p.tcin == "105")?;
                (p.last_outcome != 0).then_some(p)
            }
        },
    )
    .await;
    assert_eq!(
        p.last_outcome(),
        pb::Outcome::Failed,
        "an endless checkout answer is a failure: {p:?}"
    );
    // Every product answered (or failed) a few times: a silent source
    // costs a whole request time limit per try.
    let s = eventually(
        "every product polled three times",
        Duration::from_secs(30),
        || {
            let mut wc = wc.clone();
            async move {
                let s = wc
                    .get_watcher_status(GetWatcherStatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                (s.products.len() == products.len()
                    && s.products.iter().all(|p| p.polls + p.errors >= 3))
                .then_some(s)
            }
        },
    )
    .await;
    let poll = |t: &str| {
        s.products
            .iter()
            .find(|p| p.tcin == t)
            .unwrap_or_else(|| panic!("{t} not in {s:?}"))
    };
    for t in ["101", "102", "103", "104", "106", "107", "108"] {
        let p = poll(t);
        assert!(!p.in_stock, "{t} is not in stock: {p:?}");
        if t != "108" {
            assert!(p.errors > 0 && !p.last_error.is_empty(), "{t}: {p:?}");
        }
    }
    assert!(poll("105").in_stock);
    assert!(
        poll("103").last_error.contains("larger than"),
        "an endless answer is cut off: {:?}",
        poll("103")
    );
    let rss = rss_mib(pid);
    eprintln!("watcher resident memory after endless answers: {rss} MiB");
    assert!(rss < 200, "the watcher's memory grew to {rss} MiB");
    wait_healthy(watcher.addr(), LIMIT).await;
    status(&mut c).await;
}

#[tokio::test]
async fn garbage_on_the_watchers_status_port_is_dropped_and_it_keeps_serving() {
    let arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let store = StoreSimProcess::start(
        serde_json::json!([{"tcin": "100"}, {"tcin": "200"}, {"tcin": "300"}]),
        &[],
    )
    .await;
    let w = WatcherProcess::start(&arbiter, &store, "w-garbage", &[]).await;
    let path = "/restock.v1.StockWatcher/GetWatcherStatus";
    let mut cases: Vec<(&str, Vec<u8>, bool)> = garbage_cases();
    let mut four_gib = raw_h2::grpc_prefix(false, u32::MAX);
    four_gib.extend_from_slice(b"x");
    cases.extend([
        (
            "a call one byte short",
            raw_h2::call(path, &raw_h2::grpc_message(b"\x0a\x01x")[..7]),
            false,
        ),
        (
            "a call claiming 4 GiB",
            raw_h2::call(path, &four_gib),
            false,
        ),
        (
            "a call that is not protobuf",
            raw_h2::call(path, &raw_h2::grpc_message(&[0xff; 16])),
            false,
        ),
    ]);
    for (what, bytes, must_close) in cases {
        let a = raw_h2::exchange(w.addr(), &bytes, LIMIT).await;
        if must_close {
            assert!(a.goaway.is_some() || a.closed, "{what}: {a:?}");
        } else if what.starts_with("a call") {
            assert!(a.is_refusal(), "{what}: {a:?}");
        }
        wait_healthy(w.addr(), LIMIT).await;
        let mut wc = w.client().await;
        let s = wc
            .get_watcher_status(GetWatcherStatusRequest {})
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"))
            .into_inner();
        assert_eq!(s.watcher_id, "w-garbage", "after {what}");
    }
}
