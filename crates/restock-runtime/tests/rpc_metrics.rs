//! The per-RPC metrics layer on a real tonic server over TCP, scraped over
//! real HTTP: started and handled counts by type, service, method and code,
//! a stream's code taken from its trailers, a trailers-only refusal's from
//! its headers, a stream the client abandons as `Canceled`, and a path
//! nobody serves counted as `unknown`.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::Frame;
use restock_proto::v1::{
    GetStatusRequest, GetWatcherStatusRequest, purchase_arbiter_client::PurchaseArbiterClient,
    stock_watcher_client::StockWatcherClient,
};
use restock_runtime::{
    auth::AuthPolicy,
    grpc::support_routes,
    http::{metrics_routes, serve},
    metrics::Registry,
    rpc_metrics::GrpcMetrics,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, body::Body, server::NamedService};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const ARBITER: &str = "restock.v1.PurchaseArbiter";

/// A hand-written stand-in for the arbiter's service: `StreamStock`
/// answers headers, then ends the stream with a `grpc-status: 8`
/// (RESOURCE_EXHAUSTED) trailer, the way a server cuts a stream; any other
/// method is refused NOT_FOUND in the headers alone (trailers-only).
#[derive(Debug, Clone)]
struct CutStreams;

impl NamedService for CutStreams {
    const NAME: &'static str = ARBITER;
}

impl tower_service::Service<http::Request<Body>> for CutStreams {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let resp = if req.uri().path().ends_with("/StreamStock") {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(TrailersOnly(Some("8"))))
        } else {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "5")
                .header("grpc-message", "not here")
                .body(Body::empty())
        };
        std::future::ready(Ok(resp.expect("a valid response")))
    }
}

/// A body that is nothing but a `grpc-status` trailer.
struct TrailersOnly(Option<&'static str>);

impl http_body::Body for TrailersOnly {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|code| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(code));
            Ok(Frame::trailers(trailers))
        }))
    }
}

struct Server {
    grpc: String,
    http: String,
}

async fn start() -> Server {
    let mut registry = Registry::default();
    let layer = GrpcMetrics::register(
        &mut registry,
        &[ARBITER],
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )
    .unwrap();
    let (_health, support) = support_routes(ARBITER, &[restock_proto::FILE_DESCRIPTOR_SET])
        .await
        .unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        grpc: format!("http://{}", grpc.local_addr().unwrap()),
        http: format!("http://{}/metrics", http.local_addr().unwrap()),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_routes(support)
            .add_service(CutStreams)
            .serve_with_incoming(TcpListenerStream::new(grpc)),
    );
    tokio::spawn(serve(
        http,
        metrics_routes(Arc::new(registry), AuthPolicy::new(None, Vec::new())),
        std::future::pending(),
    ));
    server
}

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits for a series to reach `want`: the handled count is recorded when
/// the server has sent the status, which the client may see a moment
/// before.
async fn expect(url: &str, series: &str, want: f64) {
    let mut last = String::new();
    for _ in 0..100 {
        last = scrape(url).await;
        if value(&last, series) == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{series} is {:?}, not {want}:\n{last}",
        value(&last, series)
    );
}

/// The one call of `labels` is counted as ended with `code`, and not as
/// `OK` (what a header-only count would say of a stream).
async fn expect_ended_as(url: &str, labels: &str, code: &str) {
    expect(
        url,
        &format!("grpc_server_handled_total{{{labels},grpc_code=\"{code}\"}}"),
        1.0,
    )
    .await;
    let text = scrape(url).await;
    assert_eq!(
        value(
            &text,
            &format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}}")
        ),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn unary_calls_count_by_type_method_and_code() {
    let s = start().await;
    let channel = tonic::transport::Endpoint::from_shared(s.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for _ in 0..2 {
        health
            .check(HealthCheckRequest {
                service: ARBITER.into(),
            })
            .await
            .unwrap();
    }
    let labels = r#"grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check""#;
    expect(
        &s.http,
        &format!("grpc_server_started_total{{{labels}}}"),
        2.0,
    )
    .await;
    expect(
        &s.http,
        &format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}}"),
        2.0,
    )
    .await;
    expect(
        &s.http,
        &format!("grpc_server_handling_seconds_count{{{labels}}}"),
        2.0,
    )
    .await;
    // Watch is declared server-streaming in the health service's descriptor.
    let text = scrape(&s.http).await;
    assert!(
        text.contains(r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_counts_with_the_code_of_its_trailers() {
    let s = start().await;
    let mut client = PurchaseArbiterClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let mut stream = client
        .stream_stock(tokio_stream::pending::<restock_proto::v1::StockReport>())
        .await
        .expect("the stream opens (the headers say nothing of its end)")
        .into_inner();
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    let labels = r#"grpc_type="bidi_stream",grpc_service="restock.v1.PurchaseArbiter",grpc_method="StreamStock""#;
    expect_ended_as(&s.http, labels, "ResourceExhausted").await;
}

#[tokio::test]
async fn a_trailers_only_refusal_counts_with_the_code_in_its_headers() {
    let s = start().await;
    let mut client = PurchaseArbiterClient::connect(s.grpc.clone())
        .await
        .unwrap();
    let e = client.get_status(GetStatusRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let labels =
        r#"grpc_type="unary",grpc_service="restock.v1.PurchaseArbiter",grpc_method="GetStatus""#;
    expect(
        &s.http,
        &format!("grpc_server_handled_total{{{labels},grpc_code=\"NotFound\"}}"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_service_nobody_serves_is_counted_as_unknown() {
    let s = start().await;
    let mut client = StockWatcherClient::connect(s.grpc.clone()).await.unwrap();
    let e = client
        .get_watcher_status(GetWatcherStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let labels = r#"grpc_type="unknown",grpc_service="unknown",grpc_method="unknown""#;
    expect(
        &s.http,
        &format!("grpc_server_handled_total{{{labels},grpc_code=\"Unimplemented\"}}"),
        1.0,
    )
    .await;
    let text = scrape(&s.http).await;
    assert!(!text.contains("StockWatcher"), "{text}");
}

#[tokio::test]
async fn a_stream_the_client_abandons_counts_as_canceled() {
    let s = start().await;
    let channel = tonic::transport::Endpoint::from_shared(s.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: ARBITER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    // The first status arrives; the stream would go on for ever.
    watch.message().await.unwrap().expect("a first status");
    drop(watch);
    let labels =
        r#"grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch""#;
    expect_ended_as(&s.http, labels, "Canceled").await;
}
