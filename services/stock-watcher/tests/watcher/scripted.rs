//! The watcher (run in-process through the library's `run`) against a
//! scripted arbiter: what a correct arbiter does not do on demand.

use std::time::Duration;

use clap::Parser;
use restock_proto::v1 as pb;
use restock_testkit::{
    ArbiterEndpoint, Script, ScriptedArbiter, eventually, history::lease, wait_healthy,
};
use stock_watcher::config::WatcherConfig;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::stub::{CheckoutMode, StoreStub};

const TTL: Duration = Duration::from_secs(3);

/// A watcher running in this process; stopped by [`InProcess::stop`].
pub struct InProcess {
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), stock_watcher::StartError>>,
}

impl InProcess {
    pub async fn start(arbiter_url: &str, store: &StoreStub) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let checkout_url = store.checkout_url();
        let source_url = store.url();
        let config = WatcherConfig::try_parse_from([
            "stock-watcher",
            "--arbiter",
            arbiter_url,
            "--watcher-id",
            "w1",
            "--source-url",
            &source_url,
            "--source-is-simulator",
            "--target-endpoint",
            "fulfillment",
            "--checkout",
            "http",
            "--checkout-url",
            &checkout_url,
            "--poll-interval",
            "100ms",
        ])
        .unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(stock_watcher::run(listener, config, async move {
            let _ = rx.await;
        }));
        wait_healthy(addr, Duration::from_secs(10)).await;
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the watcher stops within 10s")
            .unwrap()
            .expect("the watcher stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_grant_is_released_aborted_and_a_revocation_stops_the_checkout() {
    let arbiter = ScriptedArbiter::start(Script::new()).await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Hang);
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    eventually("the stream", Duration::from_secs(10), || async {
        arbiter.connected().then_some(())
    })
    .await;

    arbiter.grant(lease("lease-1", "100", "w1", 1, TTL)).await;
    eventually("the checkout POST", Duration::from_secs(5), || async {
        store.checkouts().into_iter().next()
    })
    .await;

    // A second grant while the first checkout runs: released ABORTED, and
    // the running checkout carries on.
    arbiter.grant(lease("lease-2", "100", "w1", 2, TTL)).await;
    let r = eventually(
        "the second lease's release",
        Duration::from_secs(5),
        || async { arbiter.releases().into_iter().next() },
    )
    .await;
    assert_eq!(r.lease_id, "lease-2");
    assert_eq!(r.outcome, pb::Outcome::Aborted);
    assert!(r.detail.contains("one checkout at a time"), "{r:?}");
    assert_eq!(store.checkouts().len(), 1);
    assert!(store.checkouts()[0].ended_at.is_none());

    // The first lease keeps being renewed (every TTL/3).
    eventually("a renewal", Duration::from_secs(3), || async {
        arbiter.renewed("lease-1").then_some(())
    })
    .await;

    // A revocation stops the checkout at once, and it is not released.
    arbiter.revoke("lease-1", 1, "expired").await;
    let revoked_at = std::time::Instant::now();
    let ended = eventually(
        "the checkout to be dropped",
        Duration::from_secs(2),
        || async { store.checkouts()[0].ended_at },
    )
    .await;
    assert!(ended.duration_since(revoked_at) < Duration::from_millis(500));
    assert!(store.checkouts()[0].dropped);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        arbiter.releases().iter().all(|r| r.lease_id != "lease-1"),
        "a revoked lease is not released"
    );
    let renewals_after = arbiter.calls().len();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        !ScriptedArbiter::renewed_in(&arbiter.calls()[renewals_after..], "lease-1"),
        "a lease given up is never renewed"
    );
    watcher.stop().await;
}

/// A grant whose lease has already ended when it arrives (`remaining_ms: 0`,
/// what the arbiter writes for an ended lease), or has less left than the
/// watcher's safety margin: no checkout starts, and it is released ABORTED.
/// A grant with time left afterwards still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_with_no_time_left_starts_no_checkout_and_is_released_aborted() {
    let arbiter = ScriptedArbiter::start(Script::new()).await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Purchase(Duration::from_millis(200)));
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    eventually("the stream", Duration::from_secs(10), || async {
        arbiter.connected().then_some(())
    })
    .await;

    let mut ended = lease("lease-ended", "100", "w1", 3, TTL);
    ended.remaining_ms = 0;
    arbiter.grant(ended).await;
    // The safety margin of a 3 s lease is 600 ms: 400 ms left is too little.
    let mut late = lease("lease-late", "100", "w1", 4, TTL);
    late.remaining_ms = 400;
    arbiter.grant(late).await;
    let mut rs = eventually("both releases", Duration::from_secs(5), || async {
        let r = arbiter.releases();
        (r.len() >= 2).then_some(r)
    })
    .await;
    // Each release is its own task: they may arrive in either order.
    rs.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
    for (r, id) in rs.iter().zip(["lease-ended", "lease-late"]) {
        assert_eq!(r.lease_id, id, "{rs:?}");
        assert_eq!(r.outcome, pb::Outcome::Aborted, "{r:?}");
        assert!(r.detail.contains("no time left"), "{r:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        store.checkouts().is_empty(),
        "no checkout may start on a lease with no time left: {:?}",
        store.checkouts()
    );
    assert!(!arbiter.renewed("lease-ended") && !arbiter.renewed("lease-late"));

    arbiter.grant(lease("lease-ok", "100", "w1", 5, TTL)).await;
    let c = eventually("the checkout POST", Duration::from_secs(5), || async {
        store.checkouts().into_iter().next()
    })
    .await;
    assert_eq!(c.token(), 5);
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_retried_while_the_arbiter_answers_unavailable() {
    let arbiter = ScriptedArbiter::start(Script::new()).await;
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Purchase(Duration::from_millis(1_300)));
    arbiter.fail_releases(2);
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    eventually("the stream", Duration::from_secs(10), || async {
        arbiter.connected().then_some(())
    })
    .await;
    arbiter.grant(lease("lease-7", "100", "w1", 7, TTL)).await;
    let rs = eventually("an accepted release", Duration::from_secs(10), || async {
        let r = arbiter.releases();
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(rs.len(), 3, "two UNAVAILABLE answers, then accepted");
    assert!(
        rs.iter()
            .all(|r| r.lease_id == "lease-7" && r.outcome == pb::Outcome::Purchased)
    );
    let c = &store.checkouts()[0];
    assert_eq!(c.token(), 7);
    assert_eq!(c.body["lease_id"], "lease-7");
    assert!(
        arbiter.renewed("lease-7"),
        "renewed at TTL/3 = 1s during the 1.3s checkout"
    );
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_carry_the_watcher_id_polling_list_and_price() {
    let arbiter = ScriptedArbiter::start(Script::new()).await;
    let store = StoreStub::start().await;
    store.set_price("100", 12.5);
    store.set_stock("100", true);
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    let reports = eventually("an in-stock report", Duration::from_secs(10), || async {
        let reports = arbiter.reports();
        reports
            .iter()
            .any(|r| r.observations.iter().any(|o| o.in_stock))
            .then_some(reports)
    })
    .await;
    assert_eq!(
        reports[0].watcher_id, "w1",
        "the first report names the watcher"
    );
    assert!(reports[1..].iter().all(|r| r.watcher_id.is_empty()));
    assert!(reports.iter().any(|r| r.polling == ["100"]));
    let o = reports
        .iter()
        .flat_map(|r| &r.observations)
        .find(|o| o.in_stock)
        .unwrap();
    assert_eq!(o.tcin, "100");
    assert_eq!(o.price_cents, Some(1_250));
    assert!(o.observed_at_unix_ms > 0);
    watcher.stop().await;
}

/// The watcher alone (against a scripted arbiter that checks nothing): a
/// product with a max_price is reported in stock only with a known price
/// within it; in stock with no price, or above it, is reported as not in
/// stock (the status still shows what the source said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_with_a_max_price_is_reported_in_stock_only_with_a_price_within_it() {
    let catalog = pb::Catalog {
        products: vec![pb::CatalogProduct {
            tcin: "100".into(),
            name: "Cards".into(),
            priority: 1,
            max_price_cents: 1_000,
            quantity: 1,
            enabled: true,
        }],
        lease_ttl_ms: 3_000,
        stock_ttl_ms: 10_000,
        test_mode: false,
    };
    let arbiter = ScriptedArbiter::start(Script::new().catalog(catalog)).await;
    let store = StoreStub::start().await;
    store.set_stock("100", true);
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    let in_stock_reported = || {
        arbiter
            .reports()
            .iter()
            .flat_map(|r| r.observations.clone())
            .filter(|o| o.tcin == "100" && o.in_stock)
            .collect::<Vec<_>>()
    };
    // In stock with no price at the source (polled every 100 ms): never
    // reported in stock.
    let polled = |n: usize| {
        let store = &store;
        async move { (store.polls().len() >= n).then_some(()) }
    };
    eventually("ten polls without a price", Duration::from_secs(10), || {
        polled(10)
    })
    .await;
    assert_eq!(in_stock_reported(), [], "in stock with no known price");
    // Above the limit: the same.
    store.set_price("100", 24.99);
    let seen = store.polls().len();
    eventually("ten polls above the limit", Duration::from_secs(10), || {
        polled(seen + 10)
    })
    .await;
    assert_eq!(in_stock_reported(), [], "above max_price");
    // Within it: in stock, with the price.
    store.set_price("100", 9.99);
    let o = eventually("an in-stock report", Duration::from_secs(10), || async {
        in_stock_reported().into_iter().next()
    })
    .await;
    assert_eq!(o.price_cents, Some(999));
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};

    let arbiter = ScriptedArbiter::start(Script::new()).await;
    let store = StoreStub::start().await;
    let watcher = InProcess::start(&arbiter.url(), &store).await;
    let url = format!("http://{}", watcher.addr);

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = tokio_stream::iter([
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "grpc.health.v1.Health".into(),
                ),
            ),
        },
    ]);
    let mut answers = client
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let first = answers.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        first.message_response
    else {
        panic!("not a service list: {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "restock.v1.StockWatcher",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Only what this server serves: the descriptor set also describes the
    // arbiter's service, which a watcher does not serve.
    assert!(
        !names.iter().any(|n| n == "restock.v1.PurchaseArbiter"),
        "the watcher lists a service it does not serve: {names:?}"
    );
    let second = answers.next().await.unwrap().unwrap();
    assert!(
        matches!(
            second.message_response,
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "the health descriptor is registered: {second:?}"
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.next().await.unwrap().is_ok());
    watcher.stop().await;
}

/// Two replicas, the follower listed first: the watcher goes straight to the
/// leader it names. After a failover (the leader steps down naming the
/// other, which leads now and knows the lease) the running checkout's lease
/// is renewed at the new leader within its deadline, the checkout carries
/// on, and the stream moves there too, opening with a full report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_follows_the_leader_through_a_failover() {
    let a = ScriptedArbiter::start(Script::new()).await;
    let b = ScriptedArbiter::start(Script::new()).await;
    b.step_down(Some(&a.url()));
    let store = StoreStub::start().await;
    store.set_checkout_mode(CheckoutMode::Hang);
    let watcher = InProcess::start(&format!("{},{}", b.url(), a.url()), &store).await;
    eventually(
        "the stream at the leader",
        Duration::from_secs(5),
        || async { a.connected().then_some(()) },
    )
    .await;
    assert!(!b.connected(), "the follower holds no stream");
    assert!(b.reports().is_empty(), "{:?}", b.reports());

    let granted = lease("lease-1", "100", "w1", 1, TTL);
    a.grant(granted.clone()).await;
    eventually("the checkout POST", Duration::from_secs(5), || async {
        store.checkouts().into_iter().next()
    })
    .await;
    eventually(
        "a renewal at the first leader",
        Duration::from_secs(3),
        || async { a.renewed("lease-1").then_some(()) },
    )
    .await;

    // Failover.
    b.adopt(granted);
    b.lead();
    a.step_down(Some(&b.url()));
    let failover = std::time::Instant::now();
    eventually(
        "a renewal at the new leader",
        Duration::from_secs(3),
        || async { b.renewed("lease-1").then_some(()) },
    )
    .await;
    eventually(
        "the stream at the new leader",
        Duration::from_secs(5),
        || async { b.connected().then_some(()) },
    )
    .await;
    let hello = eventually("the first report", Duration::from_secs(5), || async {
        b.reports().into_iter().next()
    })
    .await;
    assert_eq!(hello.watcher_id, "w1");
    assert_eq!(hello.polling, ["100"], "{hello:?}");

    // Longer than the TTL after the failover, the checkout still runs.
    tokio::time::sleep(TTL.saturating_sub(failover.elapsed()) + Duration::from_millis(500)).await;
    let checkout = &store.checkouts()[0];
    assert!(
        checkout.ended_at.is_none() && !checkout.dropped,
        "the checkout carries on: {checkout:?}"
    );
    assert!(
        b.releases().is_empty() && a.releases().is_empty(),
        "nothing released while the checkout runs"
    );
    watcher.stop().await;
}
