//! The stock watcher: polls a stock source for its products, streams
//! in-stock sightings to the purchase arbiter over one long-lived stream, and
//! runs a checkout only when the arbiter grants one.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables, checked into [`config::Settings`].
//! - `catalog`: the watch list derived from the arbiter's catalog.
//! - `source`: stock sources (Target's RedSky endpoints, answers that are
//!   not stock classified by kind) and the cookie file.
//! - `poller`: the poll loop, with jitter, a bound on requests in flight,
//!   time limits and the source's back-off.
//! - `book`: what the source said and what the arbiter was told; decides
//!   each stock report.
//! - `session`: the `StreamStock` stream, reconnecting to the leader among
//!   the `--arbiter` replicas (with back-off once every URL failed).
//! - `runner`: turns a grant into one checkout and releases it.
//! - `lease`: the lease keeper: renews, and stops the checkout when the
//!   lease can no longer be trusted (unit-tested with paused time).
//! - `checkout`: the HTTP and command checkouts.
//! - `arbiter`: the link to the arbiter replicas (which URL to try now,
//!   each URL's endpoint and TLS) and the unary calls (renew, release),
//!   sent again at once to the leader a follower names.
//! - `status`: the `restock.v1.StockWatcher` status service.
//! - `state`: the shared state behind those.
//! - `metrics`: the watcher's Prometheus metrics, served on
//!   `--http-listen` (off unless set) with the status server's per-RPC
//!   metrics from `restock-runtime`.
//!
//! Only [`config`], [`run`] and [`StartError`] are public: the binary and the
//! in-process tests need nothing else.
//!
//! # Protocol at the edge
//!
//! The core speaks `restock-domain` types: `Catalog`, `Lease`,
//! `Observation`, the ids and `Outcome`. Protocol messages are converted
//! (with `restock-proto`'s conversions) in three places only: `session`
//! (the stream: catalogs, grants and revocations in, stock reports out),
//! `arbiter` (the renew and release calls) and `status` (the watcher's own
//! status answer). A grant or catalog that does not convert is logged with
//! the reason; a bad grant is never run.
//!
//! The token and TLS flags, logging, back-off, error chains and health +
//! reflection come from `restock-runtime`, shared by every binary.
//!
//! [`run`] takes an already bound listener and a shutdown future, so tests
//! bind port 0 and run the watcher in-process.

// Only the flags are public (the binary and the in-process tests build a
// `WatcherConfig`); everything else is the watcher's own business.
mod arbiter;
mod book;
mod catalog;
mod checkout;
pub mod config;
mod lease;
mod metrics;
mod poller;
mod runner;
mod session;
mod source;
mod state;
mod status;

use std::{future::Future, sync::Arc};

use restock_domain::Retailer;
use restock_proto::v1::stock_watcher_server::{self, StockWatcherServer};
use restock_runtime::auth::{AuthError, AuthPolicy, SendToken, ServerTls};
use restock_runtime::{
    announce::ListenError,
    error::Chain,
    grpc::support_routes,
    http::{bind_http, metrics_routes},
    metrics::Registry,
    rpc_metrics::{GrpcMetrics, RpcMetricsError},
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    arbiter::{ArbiterCalls, ArbiterLink},
    checkout::{Checkout, CommandCheckout, HttpCheckout},
    config::{CheckoutSettings, SourceKind, WatcherConfig},
    poller::{CatalogWatch, PlanWatch, PollSettings, Scope},
    runner::CheckoutRunner,
    session::Session,
    source::{
        StockSource,
        shopify::{ShopifySettings, ShopifySource},
        target::TargetSource,
    },
    state::SharedState,
    status::StatusService,
};

/// Why the watcher could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The TLS flags of this watcher's own server, of its link to the
    /// arbiter, or the shared token (the error names the flag, the file and
    /// the problem, and keeps the I/O error).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("stock source: {0}")]
    Source(#[from] source::target::SetupError),
    #[error("Shopify source: cannot build the HTTP client: {0}")]
    ShopifyClient(#[source] reqwest::Error),
    #[error("checkout HTTP client: {0}")]
    CheckoutClient(#[from] reqwest::Error),
    /// An `--arbiter` URL's endpoint or TLS set-up (the error names the
    /// URL).
    #[error("--arbiter: {0}")]
    ArbiterUrl(#[source] arbiter::LinkError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error("gRPC server failed: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    #[error("gRPC server failed: the gRPC server stopped")]
    ServerStopped,
    #[error("per-RPC metrics: {0}")]
    RpcMetrics(#[from] RpcMetricsError),
}

/// Runs the watcher until `shutdown` completes: then it stops polling,
/// aborts a running checkout, closes the stream, releases the lease ABORTED
/// and returns.
pub async fn run(
    listener: TcpListener,
    config: WatcherConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let settings = config.settings()?;
    // TLS files and the token are read first, so a bad one stops start-up
    // with a message naming it.
    let tls = config.tls.load()?;
    let token = config.token.load()?;
    let send_token = SendToken::new(token.as_ref());
    let link = ArbiterLink::new(
        settings.arbiter.clone(),
        config.arbiter_tls.clone(),
        send_token.clone(),
    )
    .map_err(StartError::ArbiterUrl)?;
    let arbiter_tls = link.any_tls().map_err(StartError::ArbiterUrl)?;
    let arbiter_url = link.describe();
    let open = if config.public_status {
        vec![format!(
            "/{}/GetWatcherStatus",
            stock_watcher_server::SERVICE_NAME
        )]
    } else {
        Vec::new()
    };
    // /metrics follows the status call: behind the token, unless
    // --public-status opens both.
    let http_auth = AuthPolicy::new(
        token.clone(),
        if config.public_status {
            vec![restock_runtime::http::METRICS_PATH.to_owned()]
        } else {
            Vec::new()
        },
    );
    let auth = AuthPolicy::new(token, open);
    let server = ServerTls::server_builder(tls.as_ref())?;
    let state = SharedState::new();
    let source = match settings.source {
        SourceKind::Target => Arc::new(
            TargetSource::new(config.target_settings(&settings)?)?
                .counting(state.metrics().clone()),
        ),
    };
    let checkout = match &settings.checkout {
        CheckoutSettings::Http { url } => {
            Checkout::Http(HttpCheckout::new(url.clone(), settings.checkout_timeout)?)
        }
        CheckoutSettings::Command { command } => Checkout::Command(CommandCheckout::new(
            command.clone(),
            settings.checkout_timeout,
        )),
    };
    let calls = ArbiterCalls::new(
        link.clone(),
        settings.rpc_timeout,
        settings.failover_allowance,
    );
    let (catalog_tx, catalog_rx) = watch::channel(None);
    let (plan_tx, plan_rx) = watch::channel(None);
    let runner = CheckoutRunner::new(
        checkout,
        calls,
        state.clone(),
        settings.watcher_id.clone(),
        settings.rpc_timeout,
        catalog_rx.clone(),
        settings.shops.clone(),
    );

    let status = StatusService {
        state: state.clone(),
        watcher_id: settings.watcher_id.clone(),
        arbiter: arbiter_url.clone(),
        source: source.describe(),
        checkout_kind: settings.checkout_kind(),
    };
    let (health, support) = support_routes(
        stock_watcher_server::SERVICE_NAME,
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )
    .await?;
    // One registry per watcher (not per process), so in-process tests see
    // each watcher's own numbers.
    let mut registry = Registry::default();
    state.metrics().register(&mut registry);
    let rpc_metrics = GrpcMetrics::register(
        &mut registry,
        &[stock_watcher_server::SERVICE_NAME],
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )?;
    let http_listener = bind_http(config.http_listen).await?;
    let mut bound = restock_runtime::Bound::new().add("grpc", &listener);
    if let Some(l) = &http_listener {
        bound = bound.add("http", l);
    }
    bound.announce(&config.ready)?;
    info!(
        watcher_id = %settings.watcher_id,
        arbiter = %arbiter_url,
        source = %source.describe(),
        checkout = settings.checkout_kind().as_str(),
        poll_interval_ms = settings.poll_interval.as_millis() as u64,
        products = ?settings.products.iter().map(ToString::to_string).collect::<Vec<_>>(),
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.mutual),
        arbiter_tls,
        auth = auth.is_on(),
        public_status = config.public_status,
        http_listen = %config.http_listen,
        "stock watcher starting"
    );
    settings.warn_if_impolite();
    let server_stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = server_stop.clone();
        server
            .layer(rpc_metrics)
            .add_routes(support)
            .add_service(auth.guard(StockWatcherServer::new(status)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                stop.cancelled().await
            })
    });

    // The HTTP listener stops last, with the gRPC server, so a scrape sees
    // the shutdown through to the end.
    let http_server = http_listener.map(|l| {
        let stop = server_stop.clone();
        tokio::spawn(restock_runtime::http::serve(
            l,
            metrics_routes(Arc::new(registry), http_auth),
            async move { stop.cancelled().await },
        ))
    });

    let poll_stop = CancellationToken::new();
    let poll_settings = PollSettings {
        interval: settings.poll_interval,
        max_in_flight: settings.max_in_flight,
        request_timeout: settings.request_timeout,
        backoff_initial: settings.source_backoff_initial,
        backoff_max: settings.source_backoff_max,
        block_cooldown: settings.block_cooldown,
        only: settings.products.clone(),
        request_spacing: settings
            .target_max_rps
            .map(|r| std::time::Duration::from_secs_f64(1.0 / r)),
        scope: Scope::Retailer(Retailer::Target),
    };
    // Target's poller runs from the start; each Shopify shop gets a poller
    // of its own when the catalog first lists one of its products.
    let poller = tokio::spawn(poller::run(
        source,
        state.clone(),
        poll_settings.clone(),
        catalog_rx.clone(),
        plan_rx.clone(),
        poll_stop.clone(),
    ));
    let shops = tokio::spawn(run_shops(
        ShopPollers {
            settings: settings.clone(),
            poll: poll_settings,
            state: state.clone(),
        },
        catalog_rx,
        plan_rx,
        poll_stop.clone(),
    ));
    let session_stop = CancellationToken::new();
    let session = tokio::spawn(
        Session {
            link,
            watcher_id: settings.watcher_id.clone(),
            state: state.clone(),
            runner: runner.clone(),
            catalogs: catalog_tx,
            plans: plan_tx,
            poll_interval: settings.poll_interval,
            reconnect_initial: settings.reconnect_initial,
            reconnect_max: settings.reconnect_max,
        }
        .run(session_stop.clone()),
    );

    let mut server = server;
    let mut failed = None;
    tokio::select! {
        () = shutdown => info!("shutting down: stopping polls and any checkout"),
        served = &mut server => {
            let why = match served {
                Ok(Ok(())) => StartError::ServerStopped,
                Ok(Err(e)) => StartError::Serve(e),
                Err(e) => StartError::ServerTask(e),
            };
            error!(error = %Chain(&why), "gRPC server failed; stopping");
            failed = Some(why);
        }
    }
    health.set(false).await;
    poll_stop.cancel();
    // The checkout stops now; the stream closes next, so the arbiter drops
    // this watcher's sightings; then the lease is released ABORTED (released
    // earlier, the slot would come straight back to this leaving watcher).
    runner.begin_shutdown();
    session_stop.cancel();
    let _ = session.await;
    runner.stream_closed();
    runner.wait_idle().await;
    let _ = poller.await;
    let _ = shops.await;
    server_stop.cancel();
    if failed.is_none() {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(StartError::Serve(e)),
            Err(e) => failed = Some(StartError::ServerTask(e)),
        }
    }
    if let Some(h) = http_server {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the HTTP listener failed"),
            Err(e) => warn!(error = %e, "the HTTP listener task failed"),
        }
    }
    info!("stock watcher stopped");
    match failed {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// What a Shopify shop's poller needs.
struct ShopPollers {
    settings: config::Settings,
    poll: PollSettings,
    state: SharedState,
}

/// Starts one poller per Shopify shop the catalog lists (a shop dropped
/// from the catalog keeps an idle poller: it has nothing to poll), and
/// waits for them when `stop` is cancelled.
async fn run_shops(
    shops: ShopPollers,
    mut catalogs: CatalogWatch,
    plans: PlanWatch,
    stop: CancellationToken,
) {
    let mut running: JoinSet<()> = JoinSet::new();
    let mut started = std::collections::HashSet::new();
    loop {
        let listed: Vec<String> = catalogs
            .borrow_and_update()
            .as_ref()
            .map(|c| {
                c.products
                    .products()
                    .iter()
                    .filter(|p| shops.poll.only.is_empty() || shops.poll.only.contains(&p.tcin))
                    .filter_map(|p| p.tcin.shopify().map(|s| s.shop.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        for shop in listed {
            if started.contains(&shop) {
                continue;
            }
            let s = &shops.settings;
            let source = ShopifySource::new(ShopifySettings {
                shop: shop.clone(),
                directory: s.shops.clone(),
                user_agent: s.user_agent.clone(),
                request_timeout: s.request_timeout,
                max_rps: s.shopify_max_rps,
                simulator: s.source_is_simulator,
                watcher_id: s.watcher_id.to_string(),
            });
            let source = match source {
                Ok(src) => Arc::new(src.counting(shops.state.metrics().clone())),
                Err(e) => {
                    error!(shop = %shop, error = %Chain(&StartError::ShopifyClient(e)), "cannot poll this shop");
                    continue;
                }
            };
            info!(shop = %shop, source = %source.describe(), "polling a Shopify shop");
            started.insert(shop.clone());
            let mut poll = shops.poll.clone();
            poll.scope = Scope::Shop(shop);
            poll.request_spacing = s
                .shopify_max_rps
                .map(|r| std::time::Duration::from_secs_f64(1.0 / r));
            // One request at a time per shop.
            poll.max_in_flight = 1;
            running.spawn(poller::run(
                source,
                shops.state.clone(),
                poll,
                catalogs.clone(),
                plans.clone(),
                stop.clone(),
            ));
        }
        tokio::select! {
            () = stop.cancelled() => break,
            changed = catalogs.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    while running.join_next().await.is_some() {}
}
