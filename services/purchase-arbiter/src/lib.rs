//! The purchase arbiter: the one global purchase slot shared by every stock
//! watcher, served over gRPC.
//!
//! # Layout
//!
//! The vocabulary (ids, states, outcomes, events, the product list) comes
//! from `restock-domain`; TLS, the token, logging and the shutdown signal
//! from `restock-runtime`.
//!
//! - `slot`: the rules — leases, fencing, priority, expiry, requeueing,
//!   grants — as plain data with no I/O, unit-tested with paused time;
//!   beside them the slot's clock, its lease records and the status view.
//! - `bounded_log`: the bounded records the slot keeps (history, ended
//!   leases, idempotency answers), each with a running total.
//! - `store`: the state file (snapshot plus journal, written atomically);
//!   its format (`store::format`) and how the slot is saved and restored
//!   (`store::saved`).
//! - `task`: the one task that owns the slot; batches commands, persists,
//!   then answers.
//! - `replica`: which task answers now: the one task of a standalone
//!   arbiter, or the current term's with `--store etcd`, where a follower
//!   names the leader instead.
//! - `ha`: replicas on etcd: the election, each term's task over the
//!   guarded etcd store (`store::etcd`), stepping down.
//! - `grpc`: the `restock.v1.PurchaseArbiter` service over the task; the
//!   watcher's stream and its rate limit in their own modules. Its per-RPC
//!   metrics (`restock-runtime`) are served on `--http-listen`
//!   (`0.0.0.0:8081` unless set) at `GET /metrics`.
//! - `plan`: poll planning, the turns the watchers of a product take; the
//!   task makes the plan and sends it down the watchers' streams.
//! - `feed`: following the event history (history, then live, catching up
//!   when behind), shared by `WatchEvents` and `/events`.
//! - `web`: the HTTP listener's routes: the live status page (`/`, its
//!   script and style inside the binary), `/api/status`, `/events`
//!   (server-sent events), `/metrics`, the login form, `/healthz`.
//! - `metrics`: the arbiter's own Prometheus metrics (the slot, grants,
//!   refusals, releases, hand-off and fsync times, watchers, products),
//!   recorded by the task after each write.
//! - `limits`: every bound and tuning figure, each with its reason.
//! - [`config`]: flags and environment variables (public: the binary
//!   parses them).
//!
//! [`run`] takes an already bound listener and a shutdown future, so tests
//! bind port 0 and run the server in-process.

pub mod config;

mod bounded_log;
mod feed;
mod grpc;
mod ha;
mod limits;
mod metrics;
mod plan;
mod replica;
mod slot;
mod store;
mod task;
mod web;

use std::{future::Future, sync::Arc};

use restock_domain::{CatalogError, PriorityList};
use restock_proto::v1::purchase_arbiter_server::{self, PurchaseArbiterServer};
use restock_runtime::{
    announce::ListenError,
    auth::{AuthError, AuthPolicy, ServerTls},
    error::Chain,
    grpc::support_routes,
    http::{METRICS_PATH, bind_http},
    metrics::Registry,
    rpc_metrics::{GrpcMetrics, RpcMetricsError},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{ArbiterConfig, ConfigError, StoreKind},
    grpc::{ArbiterService, ReportLimit},
    limits::{HTTP2_KEEPALIVE, MAX_ENCODING_MESSAGE_BYTES},
    metrics::ArbiterMetrics,
    replica::{Replica, Role, Term},
    slot::{Arbiter, Clock, SlotError, Timing},
    store::{StateFile, StoreError, saved},
};

/// Why the arbiter could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS files or the bearer token (the error names the flag, the
    /// file and the problem, and keeps the I/O error).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state file {path} cannot be used: {source}")]
    Restore { path: String, source: SlotError },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("per-RPC metrics: {0}")]
    RpcMetrics(#[from] RpcMetricsError),
}

/// Loads the product list and the saved state, then serves until `shutdown`
/// completes. SIGHUP reloads the product list. Streams end on shutdown and
/// the state is written a last time.
pub async fn run(
    listener: TcpListener,
    config: ArbiterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    config.validate()?;
    // TLS files and the token are read first: a bad one stops start-up
    // before anything else happens, with a message naming it.
    let tls = config.tls.load()?;
    let token = config.token.load()?;
    let open = if config.public_status {
        vec![format!(
            "/{}/GetStatus",
            purchase_arbiter_server::SERVICE_NAME
        )]
    } else {
        Vec::new()
    };
    // The status page, its JSON and events, and /metrics follow GetStatus:
    // behind the token, unless --public-status opens them all.
    let http_auth = AuthPolicy::new(
        token.clone(),
        if config.public_status {
            [
                web::PAGE_PATH,
                web::STATUS_PATH,
                web::EVENTS_PATH,
                METRICS_PATH,
            ]
            .map(str::to_owned)
            .to_vec()
        } else {
            Vec::new()
        },
    );
    let auth = AuthPolicy::new(token, open);
    let mutual_tls = tls.as_ref().is_some_and(|t| t.mutual);
    let server = ServerTls::server_builder(tls.as_ref())?;
    let catalog = PriorityList::load(&config.config)?;
    let products = catalog.len();
    let timing = Timing {
        lease_ttl: config.lease_ttl,
        stock_ttl: config.stock_ttl,
        failure_cooldown: config.failure_cooldown,
        test_mode: config.test_mode,
    };
    let clock = Clock::new();

    // One registry per arbiter (not per process), so in-process tests see
    // each arbiter's own numbers.
    let mut registry = Registry::default();
    let metrics = ArbiterMetrics::default();
    metrics.set_lease_ttl(config.lease_ttl.as_secs_f64());
    metrics.set_leading(config.store == StoreKind::File);
    metrics.register(&mut registry);
    let rpc_metrics = GrpcMetrics::register(
        &mut registry,
        &[purchase_arbiter_server::SERVICE_NAME],
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )?;

    let stop = CancellationToken::new();
    // The file store: one task for the life of the process. The etcd
    // store: terms started by `ha` once this replica is elected.
    let (replica, state, standalone_task, replicas) = match config.store {
        StoreKind::File => {
            let store = StateFile::new(config.state_path(), !config.no_fsync);
            store.check_writable()?;
            let now = clock.now();
            let arbiter = match store.load()? {
                Some(snapshot) => {
                    saved::restore(snapshot, catalog, timing, now).map_err(|source| {
                        StartError::Restore {
                            path: store.describe(),
                            source,
                        }
                    })?
                }
                None => Arbiter::new(catalog, timing, now),
            };
            if let Some(lease) = arbiter.lease() {
                info!(
                    tcin = %lease.tcin,
                    watcher_id = %lease.watcher_id,
                    fencing_token = lease.token.get(),
                    remaining_ms = lease.remaining(now).as_millis() as u64,
                    "lease carried over from before the restart"
                );
            }
            let (handle, task) = task::spawn(
                arbiter,
                clock,
                store.clone(),
                stop.clone(),
                metrics,
                config.poll_planning,
            );
            let (replica, _) = Replica::new(Role::Standalone(Term {
                handle,
                stop: stop.clone(),
            }));
            (replica, store.describe(), Some(task), None)
        }
        StoreKind::Etcd => {
            // A state file to import is read now: a missing or unreadable
            // one would otherwise be found only by the replica that wins
            // the first election (and, missing, used to mean "start with
            // tokens from 1").
            if let Some(path) = &config.etcd.import_state_file
                && store::StateFile::new(Some(path.clone()), false)
                    .load()?
                    .is_none()
            {
                return Err(ConfigError::ImportMissing(path.display().to_string()).into());
            }
            let client = ha::connect(&config.etcd).await?;
            let endpoints = config.etcd.endpoints().join(",");
            let bound = listener.local_addr().map_err(|source| {
                StartError::Listen(ListenError::Bind {
                    what: "grpc",
                    addr: config.listen,
                    source,
                })
            })?;
            let advertise_url = ha::advertise_url(&config, bound, tls.is_some());
            let (replica, roles) = Replica::new(Role::Follower { leader_url: None });
            let keys = store::etcd::EtcdKeys::new(&config.etcd.etcd_prefix);
            let state = format!("etcd {endpoints} key {}", keys.snapshot);
            let replicas = ha::Replicas {
                client,
                endpoints,
                keys,
                ttl: config.etcd.election_ttl,
                advertise_url,
                import: config.etcd.import_state_file.clone(),
                token_floor: config.etcd.token_floor,
                fresh_state: config.etcd.fresh_state,
                write_limit: config.etcd.write_limit(config.lease_ttl),
                compact: config.etcd.etcd_compact,
                config_path: config.config.clone(),
                timing,
                clock,
                metrics,
                poll_planning: config.poll_planning,
            };
            (replica, state, None, Some((replicas, roles)))
        }
    };
    let web = web::Web {
        replica: replica.clone(),
        auth: http_auth,
        config_path: config.config.display().to_string(),
        stuck_after: config.stuck_after,
    };
    let service = ArbiterService::new(replica, config.config.clone())
        .with_report_limit(ReportLimit::per_second(config.max_reports_per_second));

    let (health, support) = support_routes(
        purchase_arbiter_server::SERVICE_NAME,
        &[restock_proto::FILE_DESCRIPTOR_SET],
    )
    .await?;

    // A replica serves health at once (SERVING overall) but its service
    // only while it leads.
    let elections = match replicas {
        Some((replicas, roles)) => {
            health.set_service(false).await;
            Some(ha::spawn(replicas, roles, health.clone(), stop.clone()))
        }
        None => None,
    };

    spawn_reload_on_sighup(service.clone(), stop.clone());

    let arbiter_server = PurchaseArbiterServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(MAX_ENCODING_MESSAGE_BYTES);
    let http_listener = bind_http(config.http_listen).await?;
    let mut bound = restock_runtime::Bound::new().add("grpc", &listener);
    if let Some(l) = &http_listener {
        bound = bound.add("http", l);
    }
    bound.announce(&config.ready)?;
    info!(
        config = %config.config.display(),
        state = %state,
        store = ?config.store,
        products,
        lease_ttl_ms = config.lease_ttl.as_millis() as u64,
        stock_ttl_ms = config.stock_ttl.as_millis() as u64,
        test_mode = config.test_mode,
        max_reports_per_second = config.max_reports_per_second,
        tls = tls.is_some(),
        mutual_tls,
        auth = auth.is_on(),
        public_status = config.public_status,
        http_listen = %config.http_listen,
        "purchase arbiter serving"
    );
    // The HTTP listener stops last, after the final state write, so a
    // scrape sees the shutdown through to the end.
    let http_stop = CancellationToken::new();
    let http_server = http_listener.map(|l| {
        let stop = http_stop.clone();
        tokio::spawn(restock_runtime::http::serve(
            l,
            web::routes(web, Arc::new(registry)),
            async move { stop.cancelled().await },
        ))
    });
    let stopping = stop.clone();
    let health_on_stop = health.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {},
            () = stopping.cancelled() => {},
        }
        info!("shutting down: ending streams");
        health_on_stop.set(false).await;
        // Ends watcher and event streams, so graceful shutdown does not wait
        // for them forever.
        stopping.cancel();
    };
    let serve = server
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE))
        .layer(rpc_metrics)
        .add_routes(support)
        .add_service(auth.guard(arbiter_server))
        // TCP_NODELAY, as tonic sets it on sockets it accepts itself (it
        // does not on an incoming stream handed to it): without it, a small
        // message written while an earlier one is unacknowledged (the
        // catalog right after the stream's headers, a grant right after a
        // revocation) waits for the peer's delayed ACK, up to 40 ms.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        );
    // Graceful shutdown waits for clients to close their connections; a
    // client that keeps an ended stream's connection open must not hold the
    // process (docker stop kills after 10 s), so the wait is bounded.
    let grace = config.shutdown_grace;
    let forced = stop.clone();
    let served = tokio::select! {
        served = serve => served,
        () = async move {
            forced.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            warn!(grace_ms = grace.as_millis() as u64, "clients kept connections open past the shutdown grace; closing them");
            Ok(())
        }
    };
    info!("gRPC server stopped; waiting for the final state write");
    stop.cancel();
    for task in standalone_task.into_iter().chain(elections) {
        if let Err(e) = task.await {
            warn!(error = %Chain(&e), "arbiter task ended abnormally");
        }
    }
    http_stop.cancel();
    if let Some(h) = http_server {
        match h.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the HTTP listener failed"),
            Err(e) => warn!(error = %e, "the HTTP listener task failed"),
        }
    }
    info!("purchase arbiter stopped");
    served.map_err(StartError::from)
}

#[cfg(unix)]
fn spawn_reload_on_sighup(service: ArbiterService, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reload by RPC only");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading the product config");
            // A bad file is logged and the current list kept.
            let _ = service.reload().await;
        }
    });
}

#[cfg(not(unix))]
fn spawn_reload_on_sighup(_service: ArbiterService, _stop: CancellationToken) {}
