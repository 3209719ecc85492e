//! The store simulator: an HTTP server that plays the retailers for demos,
//! tests and dry runs. It serves Target's RedSky answers (fulfillment,
//! hierarchy, batch summary, product details with price) and, on the same
//! port, the Shopify storefronts the product config names (`products.json`,
//! collections, a product's `.json` and `.js`), each in the shapes of
//! recorded real answers, with stock that is scripted, random or set by
//! hand; it can be told to answer like Target's bot wall (captcha,
//! PerimeterX, "Press & Hold", 429), like a Shopify shop's throttles and
//! walls (429, 430, Cloudflare's challenge, the password page) or with any
//! 4xx/5xx for a while; and it runs one checkout for every retailer that
//! refuses stale fencing tokens and records every attempt — including any
//! two checkouts that were in progress at once, the violation the whole
//! project exists to prevent.
//!
//! # Layout
//!
//! - [`catalog`]: the product list (Target and Shopify products), read from
//!   the arbiter's config file.
//! - [`scenario`]: scripted in-stock windows (pure functions of time).
//! - [`random`]: seeded random restocks and sell-outs.
//! - [`stock`]: each product's stock and price from those sources and from
//!   manual settings.
//! - [`ledger`]: checkout attempts, the fencing check and the overlap
//!   detector.
//! - [`sim`]: all of the above behind one cloneable, mutex-guarded handle.
//! - [`polls`]: the bounded log of every stock request, by product and
//!   watcher (`GET /admin/polls`).
//! - [`fulfillment`]: Target's `fulfillment` object, as recorded.
//! - [`redsky`]: the RedSky endpoints and their answers, as recorded.
//! - [`block`]: the bot-wall answers of `PUT /admin/block`.
//! - [`shopify`]: the Shopify storefronts: shops, products, handles and
//!   variant ids derived from the catalog ([`shopify::store`]), their
//!   answers ([`shopify::json`]), their blocks (`PUT /admin/shopify/block`,
//!   [`shopify::block`]) and routes ([`shopify::routes`]).
//! - [`http`]: the routes.
//! - [`metrics`]: the Prometheus metrics behind `GET /metrics`.
//! - [`config`]: flags and environment variables.
//!
//! [`run`] takes an already bound listener and a shutdown future, so tests
//! bind `127.0.0.1:0` and run the server in-process.

pub mod block;
pub mod catalog;
pub mod config;
pub mod fulfillment;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod polls;
pub mod random;
pub mod redsky;
pub mod scenario;
pub mod shopify;
pub mod sim;
pub mod stock;

use std::{future::Future, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

pub use crate::sim::Simulator;

/// Serves `sim` on `listener` until `shutdown` completes. Then it stops
/// accepting connections, lets running requests (a checkout in its delay)
/// finish for up to `grace`, and returns.
pub async fn run(
    listener: TcpListener,
    sim: Simulator,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, setup = %sim.describe(), "store simulator listening");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stopping = |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which only happens after it
        // sent `true`.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let graceful = {
        let rx = rx.clone();
        async move {
            stopping(rx).await;
            info!("shutting down: no new connections; letting running requests finish");
        }
    };
    let server = axum::serve(listener, http::router(sim)).with_graceful_shutdown(graceful);
    tokio::select! {
        r = async { server.await } => {
            info!("store simulator stopped");
            r
        }
        () = async { stopping(rx).await; tokio::time::sleep(grace).await } => {
            warn!(grace_ms = grace.as_millis() as u64, "requests still running after the grace period; stopping anyway");
            Ok(())
        }
    }
}
