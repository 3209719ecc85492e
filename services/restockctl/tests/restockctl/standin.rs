//! A stand-in arbiter serving scripted histories that the real arbiter
//! refuses to produce (a product switch, overlapping leases, a stuck
//! purchase), so the real `restockctl monitor` can be shown to catch each and
//! exit non-zero. Also the `health` command against a server that is not an
//! arbiter at all.

use std::{
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use restock_proto::v1::{
    self as pb, ProductState as St,
    event::Kind,
    purchase_arbiter_server::{PurchaseArbiter, PurchaseArbiterServer},
};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

use crate::helpers::ctl;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What the stand-in answers: `GetStatus` gives `statuses[0]` first, then
/// `statuses[1]`, ... and the last one forever; `WatchEvents{from}` gives the
/// scripted events with a sequence >= from, then stays open.
#[derive(Debug, Clone)]
struct Script {
    statuses: Vec<pb::GetStatusResponse>,
    events: Vec<pb::Event>,
}

#[derive(Debug)]
struct StandIn {
    script: Script,
    status_calls: AtomicUsize,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn not_scripted<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the stand-in's script"))
}

#[tonic::async_trait]
impl PurchaseArbiter for StandIn {
    async fn acquire_purchase(
        &self,
        _: Request<pb::AcquirePurchaseRequest>,
    ) -> Result<Response<pb::AcquirePurchaseResponse>, Status> {
        not_scripted()
    }

    async fn renew_lease(
        &self,
        _: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        not_scripted()
    }

    async fn release_purchase(
        &self,
        _: Request<pb::ReleasePurchaseRequest>,
    ) -> Result<Response<pb::ReleasePurchaseResponse>, Status> {
        not_scripted()
    }

    type StreamStockStream = BoxStream<pb::ArbiterMessage>;

    async fn stream_stock(
        &self,
        _: Request<Streaming<pb::StockReport>>,
    ) -> Result<Response<Self::StreamStockStream>, Status> {
        not_scripted()
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let i = self.status_calls.fetch_add(1, Ordering::SeqCst);
        let statuses = &self.script.statuses;
        Ok(Response::new(statuses[i.min(statuses.len() - 1)].clone()))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = request.into_inner().from_sequence;
        let history: Vec<Result<pb::Event, Status>> = self
            .script
            .events
            .iter()
            .filter(|e| from > 0 && e.sequence >= from)
            .cloned()
            .map(Ok)
            .collect();
        let stream = tokio_stream::iter(history).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream) as Self::WatchEventsStream))
    }

    async fn reset_product(
        &self,
        _: Request<pb::ResetProductRequest>,
    ) -> Result<Response<pb::ResetProductResponse>, Status> {
        not_scripted()
    }

    async fn set_paused(
        &self,
        _: Request<pb::SetPausedRequest>,
    ) -> Result<Response<pb::SetPausedResponse>, Status> {
        not_scripted()
    }

    async fn reload_config(
        &self,
        _: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        not_scripted()
    }
}

/// A stand-in served on 127.0.0.1:0 until dropped.
struct Served {
    url: String,
    _stop: oneshot::Sender<()>,
}

/// How the stand-in answers health checks.
enum Health {
    /// No health service at all.
    Absent,
    /// The server as a whole SERVING, the arbiter service as given.
    Arbiter(ServingStatus),
}

async fn serve(script: Script, health: Health) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let standin = StandIn {
        script,
        status_calls: AtomicUsize::new(0),
    };
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_service = match health {
        Health::Absent => None,
        Health::Arbiter(status) => {
            reporter
                .set_service_status("restock.v1.PurchaseArbiter", status)
                .await;
            Some(health_service)
        }
    };
    let router = tonic::transport::Server::builder()
        .add_optional_service(health_service)
        .add_service(PurchaseArbiterServer::new(standin));
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("stand-in server");
    });
    Served { url, _stop: stop }
}

// ----- scripted histories -----

/// Products 100, 200, 300 in that priority order, all in the given states.
fn status(seq: u64, states: [St; 3], lease: Option<pb::Lease>) -> pb::GetStatusResponse {
    pb::GetStatusResponse {
        products: ["100", "200", "300"]
            .iter()
            .zip(states)
            .enumerate()
            .map(|(i, (tcin, state))| pb::ProductStatus {
                tcin: (*tcin).into(),
                name: format!("Product {tcin}"),
                priority: i as u32 + 1,
                state: state as i32,
                quantity: 1,
                configured: true,
                ..Default::default()
            })
            .collect(),
        active_lease: lease,
        test_mode: true,
        last_event_sequence: seq,
        next_fencing_token: 1,
        lease_ttl_ms: 30_000,
        ..Default::default()
    }
}

fn event(seq: u64, at: u64, kind: Kind, tcin: &str, from: St, to: St) -> pb::Event {
    pb::Event {
        sequence: seq,
        unix_ms: at,
        kind: kind as i32,
        tcin: tcin.into(),
        from_state: from as i32,
        to_state: to as i32,
        ..Default::default()
    }
}

fn granted(seq: u64, at: u64, tcin: &str, lease: &str, token: u64) -> pb::Event {
    pb::Event {
        watcher_id: "w1".into(),
        lease_id: lease.into(),
        fencing_token: token,
        detail: "scripted".into(),
        ..event(seq, at, Kind::Granted, tcin, St::Ready, St::Attempting)
    }
}

fn released(seq: u64, at: u64, tcin: &str, lease: &str, token: u64) -> pb::Event {
    pb::Event {
        watcher_id: "w1".into(),
        lease_id: lease.into(),
        fencing_token: token,
        outcome: pb::Outcome::Purchased as i32,
        ..event(seq, at, Kind::Released, tcin, St::Attempting, St::Ready)
    }
}

const READY: [St; 3] = [St::Ready, St::Ready, St::Ready];

/// Runs `monitor --json` for a short window; returns the exit code and the
/// report.
async fn monitor_json(url: &str, extra: &[&str]) -> (crate::helpers::Output, serde_json::Value) {
    let mut args = vec![
        "--arbiter",
        url,
        "--json",
        "monitor",
        "--duration",
        "2s",
        "--interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    let out = ctl(&args).await;
    let report = out.json();
    (out, report)
}

fn problem_kinds(report: &serde_json::Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_product_switch_and_exits_non_zero() {
    let t = now_ms();
    let mut queued = READY;
    queued[0] = St::Queued;
    let served = serve(
        Script {
            statuses: vec![status(1, READY, None), status(4, queued, None)],
            events: vec![
                event(2, t, Kind::Queued, "100", St::Ready, St::Queued),
                // 200 gets the slot although 100 (priority 1) is waiting.
                granted(3, t + 10, "200", "lease-1", 1),
                released(4, t + 20, "200", "lease-1", 1),
            ],
        },
        Health::Absent,
    )
    .await;
    let (out, report) = monitor_json(&served.url, &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(problem_kinds(&report), ["product_switch"], "{}", out.show());
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("product 200 (priority 2) was granted")
            && detail.contains("product 100 (priority 1) was QUEUED"),
        "{detail}"
    );
    assert_eq!(report["problems"][0]["sequence"], 3);
    assert_eq!(report["clean"], false);
    assert_eq!(report["summary"]["cycles_completed"], 1);
    assert_eq!(report["summary"]["problems"]["product_switch"], 1);
    // The live lines went to stderr, the problem among them.
    assert!(
        out.stderr
            .contains("PROBLEM product switch mid-cycle: product 200"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_overlapping_leases_and_exits_non_zero() {
    let t = now_ms();
    let served = serve(
        Script {
            statuses: vec![status(1, READY, None), status(5, READY, None)],
            events: vec![
                granted(2, t, "100", "lease-1", 1),
                // A second lease while lease-1 is still held.
                granted(3, t + 10, "200", "lease-2", 2),
                released(4, t + 20, "100", "lease-1", 1),
                released(5, t + 30, "200", "lease-2", 2),
            ],
        },
        Health::Absent,
    )
    .await;
    let (out, report) = monitor_json(&served.url, &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(
        problem_kinds(&report),
        ["concurrent_attempt"],
        "{}",
        out.show()
    );
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("lease lease-2 for product 200")
            && detail.contains("lease lease-1 (product 100, watcher w1, token 1) was still held"),
        "{detail}"
    );
    assert_eq!(report["summary"]["cycles_completed"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_snapshot_with_two_products_attempting() {
    let both = [St::Attempting, St::Attempting, St::Ready];
    let served = serve(
        Script {
            statuses: vec![status(1, READY, None), status(1, both, None)],
            events: vec![],
        },
        Health::Absent,
    )
    .await;
    let (out, report) = monitor_json(&served.url, &[]).await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert_eq!(
        problem_kinds(&report),
        ["concurrent_attempt"],
        "{}",
        out.show()
    );
    assert!(
        report["problems"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("2 products ATTEMPTING at once: 100, 200"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_reports_a_stuck_purchase_in_text_and_exits_non_zero() {
    let t = now_ms();
    let lease = pb::Lease {
        lease_id: "lease-1".into(),
        tcin: "100".into(),
        watcher_id: "w1".into(),
        fencing_token: 1,
        ttl_ms: 30_000,
        granted_at_unix_ms: t,
        ..Default::default()
    };
    let mut attempting = READY;
    attempting[0] = St::Attempting;
    let served = serve(
        Script {
            // The checkout starts and then nothing happens: the snapshots
            // keep showing it ATTEMPTING.
            statuses: vec![status(1, READY, None), status(2, attempting, Some(lease))],
            events: vec![granted(2, t, "100", "lease-1", 1)],
        },
        Health::Absent,
    )
    .await;
    let out = ctl(&[
        "--arbiter",
        &served.url,
        "monitor",
        "--duration",
        "3s",
        "--interval",
        "200ms",
        "--stuck-after",
        "1s",
    ])
    .await;
    assert_eq!(out.code, 1, "{}", out.show());
    assert!(
        out.stdout
            .contains("PROBLEM stuck purchase: product 100 has been ATTEMPTING for"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout
            .contains("RESULT: 1 problem found: 1 stuck purchase"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout.contains("0 completed, 1 still open"),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_scripted_history_exits_zero() {
    let t = now_ms();
    let served = serve(
        Script {
            statuses: vec![status(1, READY, None), status(5, READY, None)],
            events: vec![
                granted(2, t, "100", "lease-1", 1),
                released(3, t + 10, "100", "lease-1", 1),
                granted(4, t + 20, "100", "lease-2", 2),
                released(5, t + 30, "100", "lease-2", 2),
            ],
        },
        Health::Absent,
    )
    .await;
    let (out, report) = monitor_json(&served.url, &[]).await;
    assert_eq!(out.code, 0, "{}", out.show());
    assert_eq!(report["clean"], true);
    assert_eq!(report["summary"]["cycles_completed"], 2);
    assert_eq!(report["summary"]["outcomes"]["OUTCOME_PURCHASED"], 2);
}

// ----- health -----

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_zero_only_when_serving() {
    let script = Script {
        statuses: vec![status(1, READY, None)],
        events: vec![],
    };
    let served = serve(script.clone(), Health::Arbiter(ServingStatus::NotServing)).await;

    let whole = ctl(&["--arbiter", &served.url, "health"]).await;
    assert_eq!(whole.code, 0, "{}", whole.show());
    assert_eq!(whole.stdout.trim(), format!("{}: SERVING", served.url));

    let arbiter = ctl(&[
        "--arbiter",
        &served.url,
        "health",
        "--service",
        "restock.v1.PurchaseArbiter",
    ])
    .await;
    assert_eq!(arbiter.code, 1, "{}", arbiter.show());
    assert!(arbiter.stdout.contains("NOT_SERVING"), "{}", arbiter.show());

    let unknown = ctl(&[
        "--arbiter",
        &served.url,
        "--json",
        "health",
        "--service",
        "no.such.Service",
    ])
    .await;
    assert_eq!(unknown.code, 1, "{}", unknown.show());
    assert_eq!(unknown.json()["status"], "SERVICE_UNKNOWN");

    // A server without the health service says so, with the gRPC code.
    let bare = serve(script, Health::Absent).await;
    let out = ctl(&["--arbiter", &bare.url, "health"]).await;
    assert_eq!(out.code, 4, "{}", out.show());
    assert!(
        out.stderr
            .contains("restockctl: Health.Check failed: UNIMPLEMENTED"),
        "{}",
        out.show()
    );

    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let out = ctl(&["--arbiter", &addr, "--timeout", "3s", "health"]).await;
    assert_eq!(out.code, 3, "{}", out.show());
    assert!(
        out.stderr.contains(&format!(
            "restockctl: cannot reach server at http://{addr}: "
        )),
        "{}",
        out.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_against_an_unreachable_arbiter_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = ctl(&["--arbiter", &url, "monitor", "--duration", "1s"]).await;
    assert_eq!(out.code, 3, "{}", out.show());
    assert!(
        out.stderr
            .contains(&format!("restockctl: cannot reach arbiter at {url}: ")),
        "{}",
        out.show()
    );
}
