//! `restock-notifier`: follows the purchase arbiter's `WatchEvents` and
//! sends one alert per restock, checkout and purchase, across every watcher
//! on every machine, to the user's destinations, through crashes (a state
//! file with an outbox) and rate limits (a worker per destination).
//!
//! # Layout
//!
//! - [`config`]: flags, each with an environment variable.
//! - [`alert`]: the [`alert::Alert`] every destination receives and its kinds.
//! - [`rules`]: which events (and which silences) become which alerts; no
//!   I/O, tested directly.
//! - [`destination`]: destination URLs (parsing, redaction, `?events=`),
//!   and sending one alert in each service's format.
//! - [`state`]: the state file's format and its atomic write.
//! - [`delivery`]: the shared [`delivery::Store`], and one worker per
//!   destination (token bucket, `429`, retries with back-off, deadline).
//! - [`follow`]: the arbiter connection: status, events, reconnects (to the
//!   leader among the `--arbiter` replicas), timers.
//! - [`grpc`]: `restock.v1.Notifier` (status, test alerts).
//! - [`metrics`]: what `/metrics` shows (`--http-listen`).
//!
//! [`run`] wires them; the binary parses flags, sets up logging and calls it.

pub mod alert;
pub mod config;
pub mod delivery;
pub mod destination;
pub mod follow;
pub mod grpc;
pub mod metrics;
pub mod rules;
pub mod state;

use std::{future::Future, sync::Arc, time::Duration};

use restock_proto::v1::notifier_server::NotifierServer;
use restock_runtime::{
    announce::ListenError,
    arbiters::{ArbiterListError, ArbiterUrls},
    auth::{AuthError, AuthPolicy, SendToken, ServerTls},
    grpc::support_routes,
    http::{bind_http, metrics_routes},
    rpc_metrics::{GrpcMetrics, RpcMetricsError},
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    alert::{UnknownKind, parse_kinds},
    config::NotifierConfig,
    delivery::{DeliverySettings, Store},
    destination::DestinationError,
    follow::{Arbiters, Follower, Live},
    rules::{RuleSettings, Rules},
    state::StateError,
};

/// Why the notifier could not start (or stopped). Each names what failed;
/// destination URLs in it are redacted.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("--events: {0}")]
    Events(#[from] UnknownKind),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("--arbiter {url}: {source}")]
    ArbiterUrl {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("--arbiter: {0}")]
    ArbiterList(#[from] ArbiterListError),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("reflection set-up: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("metrics set-up: {0}")]
    Metrics(#[from] RpcMetricsError),
    #[error("gRPC server: {0}")]
    Serve(tonic::transport::Error),
}

/// Checks what can be checked before binding (the alert kinds and every
/// destination URL), so a bad one stops the binary at once, with the
/// start-up exit code.
pub fn check(config: &NotifierConfig) -> Result<(), StartError> {
    let default_events = parse_kinds(&config.events)?;
    destination::parse_all(&config.notify, &default_events)?;
    Ok(())
}

/// Runs the notifier on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: NotifierConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let default_events = parse_kinds(&config.events)?;
    let destinations: Arc<[Arc<destination::Destination>]> =
        destination::parse_all(&config.notify, &default_events)?
            .into_iter()
            .map(Arc::new)
            .collect();
    let server_tls = config.tls.load()?;
    let token = config.token.load()?;
    let arbiters = Arbiters::new(
        ArbiterUrls::parse(&config.arbiter)?,
        config.arbiter_tls.clone(),
        SendToken::new(token.as_ref()),
        config.rpc_timeout,
    )?;
    let arbiter_url = arbiters.describe();

    let state_path = config.state_path();
    let saved = match &state_path {
        Some(p) => state::load(p)?,
        None => state::Saved::default(),
    };
    let metrics = metrics::NotifierMetrics::default();
    metrics.destinations(destinations.iter().map(|d| d.redacted.as_str()));
    let store = Store::new(saved, state_path.clone(), metrics.clone());
    // Alerts waiting for a destination no longer configured cannot go
    // anywhere: said once, then dropped.
    let dropped = store.with(|s| {
        let before = s.outbox.len();
        s.outbox
            .retain(|p| destinations.iter().any(|d| d.tag == p.dest));
        before - s.outbox.len()
    });
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "pending alerts for destinations no longer configured were dropped"
        );
    }

    let http = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .user_agent(concat!("restock-notifier/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let settings = DeliverySettings {
        per_minute: config.rate_per_minute,
        burst: config.rate_burst,
        deadline: config.delivery_deadline,
        retry_initial: config.retry_initial,
        retry_max: config.retry_max,
        request_timeout: config.request_timeout,
        test_deadline: config.test_deadline,
    };
    let stop = CancellationToken::new();
    let (dispatcher, workers) = delivery::start(&destinations, &store, &settings, http, &stop);
    let live = Live::default();

    let (health, support) =
        support_routes(grpc::SERVICE_NAME, &[restock_proto::FILE_DESCRIPTOR_SET]).await?;
    let auth = AuthPolicy::new(token.clone(), Vec::new());
    let http_auth = AuthPolicy::new(token, Vec::new());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let rpc_metrics = GrpcMetrics::register(
        &mut registry,
        &[grpc::SERVICE_NAME],
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )?;
    let http_listener = bind_http(config.http_listen).await?;
    let service = grpc::NotifierService {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        destinations: destinations.clone(),
        live: live.clone(),
        arbiter_url: arbiter_url.clone(),
        test_wait: config.test_deadline + Duration::from_secs(5),
    };
    let server = ServerTls::server_builder(server_tls.as_ref())?;
    let mut bound = restock_runtime::Bound::new().add("grpc", &listener);
    if let Some(l) = &http_listener {
        bound = bound.add("http", l);
    }
    bound.announce(&config.ready)?;
    info!(
        arbiter = %arbiter_url,
        destinations = ?destinations.iter().map(|d| d.redacted.as_str()).collect::<Vec<_>>(),
        state_file = %state_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        hold_down_ms = config.hold_down.as_millis() as u64,
        auth = auth.is_on(),
        tls = server_tls.is_some(),
        "notifier starting"
    );
    if destinations.is_empty() {
        info!("no destination configured (--notify / RESTOCK_NOTIFY): alerts are only logged");
    }

    let rules = Rules::new(RuleSettings {
        hold_down: config.hold_down,
        stuck_after: config.stuck_after,
        no_watchers_after: config.no_watchers_after,
        unreachable_after: config.unreachable_after,
    });
    let follower = Follower::new(
        arbiters,
        rules,
        store.clone(),
        dispatcher,
        destinations,
        live,
        config.rpc_timeout,
        config.reconnect_max,
    );
    let follow_task = tokio::spawn(follower.run(stop.clone()));

    let http_server = http_listener.map(|l| {
        let stop = stop.clone();
        tokio::spawn(restock_runtime::http::serve(
            l,
            metrics_routes(Arc::new(registry), http_auth),
            async move { stop.cancelled().await },
        ))
    });
    let server_stop = stop.clone();
    let served = server
        .layer(rpc_metrics)
        .add_routes(support)
        .add_service(auth.guard(NotifierServer::new(service)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            tokio::select! {
                () = shutdown => {}
                () = server_stop.cancelled() => {}
            }
        })
        .await;
    info!("notifier stopping");
    health.set(false).await;
    stop.cancel();
    let _ = follow_task.await;
    for w in workers {
        let _ = w.await;
    }
    if let Some(h) = http_server {
        let _ = h.await;
    }
    // The last word: position, outbox and records as they stand.
    store.persist().await?;
    served.map_err(StartError::Serve)
}
