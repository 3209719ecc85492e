//! The arbiter session: keeps one `StreamStock` stream open, reconnecting with
//! exponential back-off and jitter after any failure.
//!
//! On every (re)connect the first report names the watcher and carries the
//! current in-stock state, so the arbiter knows at once what this watcher
//! sees. The arbiter answers with its catalog, which feeds the poller. Then
//! the session sends a report whenever the poller says something changed,
//! plus a refresh of every in-stock product every third of the stock TTL (the
//! arbiter drops sightings that are not repeated within the TTL). Grants and
//! revocations pushed by the arbiter go to the checkout runner, which keeps
//! going over unary calls while the stream is down.

use std::{sync::Arc, time::Duration};

use restock_proto::v1::{
    self as pb, arbiter_message::Kind, purchase_arbiter_client::PurchaseArbiterClient,
};
use restock_runtime::auth::SendToken;
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming, transport::Endpoint};
use tracing::{error, info, warn};

use restock_domain::WatcherId;
use restock_runtime::backoff::Backoff;

use crate::{
    catalog::Catalog,
    runner::CheckoutRunner,
    state::{SharedState, unix_ms},
};

/// How long the arbiter may take to send its catalog on a new stream.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that lived this long resets the reconnect back-off.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Refresh period when the catalog gives no stock TTL.
const DEFAULT_REFRESH: Duration = Duration::from_secs(3);
/// Queued reports per stream.
const OUTBOUND_BUFFER: usize = 64;

/// Why a stream ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to the arbiter at {url}: {error}")]
    Connect { url: String, error: String },
    #[error("the arbiter refused the stream: {0:?}: {1}")]
    Refused(Code, String),
    #[error("the arbiter is shutting down (UNAVAILABLE): {0}")]
    ArbiterStopping(String),
    #[error("another stream with this watcher id replaced this one (ABORTED): {0}")]
    Replaced(String),
    #[error("the stream failed: {0:?}: {1}")]
    Failed(Code, String),
    #[error("the arbiter ended the stream")]
    Ended,
    #[error("the arbiter sent no catalog within {0:?}")]
    NoCatalog(Duration),
    #[error("the first message was not the catalog")]
    CatalogNotFirst,
}

impl StreamError {
    fn from_status(s: &tonic::Status) -> Self {
        match s.code() {
            Code::Unavailable => Self::ArbiterStopping(s.message().to_owned()),
            Code::Aborted => Self::Replaced(s.message().to_owned()),
            c => Self::Failed(c, s.message().to_owned()),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Session {
    pub url: String,
    pub endpoint: Endpoint,
    /// Sent on every (re)connect.
    pub token: SendToken,
    pub watcher_id: WatcherId,
    pub state: SharedState,
    pub runner: CheckoutRunner,
    pub catalogs: watch::Sender<Option<Arc<Catalog>>>,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Session {
    /// Runs until `stop` is cancelled; then closes the stream and returns.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(self.reconnect_initial, self.reconnect_max);
        let mut streams = 0u64;
        loop {
            let started = Instant::now();
            let ended = self.one_stream(&stop, &mut streams).await;
            {
                let mut st = self.state.lock();
                st.arbiter_connected = false;
            }
            let Err(e) = ended else {
                info!("arbiter stream closed");
                return;
            };
            match &e {
                StreamError::Replaced(_) => error!(
                    arbiter = %self.url,
                    watcher_id = %self.watcher_id,
                    error = %e,
                    "arbiter stream lost: is another watcher running with the same --watcher-id?"
                ),
                _ => warn!(arbiter = %self.url, error = %e, "arbiter stream lost"),
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            info!(
                arbiter = %self.url,
                delay_ms = delay.as_millis() as u64,
                "reconnecting to the arbiter"
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {},
            }
        }
    }

    /// One stream, from connecting to its end. `Ok` only on shutdown.
    async fn one_stream(
        &self,
        stop: &CancellationToken,
        streams: &mut u64,
    ) -> Result<(), StreamError> {
        let connect = self.endpoint.connect();
        let channel = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            c = connect => c.map_err(|e| StreamError::Connect {
                url: self.url.clone(),
                error: restock_runtime::error::chain_text(&e),
            })?,
        };
        let mut client = PurchaseArbiterClient::with_interceptor(channel, self.token.clone());
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let hello = {
            let mut st = self.state.lock();
            st.book.new_stream();
            st.book.take_report(Instant::now(), true)
        };
        let in_stock = hello.observations.len();
        tx.send(pb::StockReport {
            watcher_id: self.watcher_id.to_string(),
            observations: hello.observations,
            polling: hello.polling.unwrap_or_default(),
        })
        .await
        .map_err(|_| StreamError::Ended)?;
        let call = client.stream_stock(ReceiverStream::new(rx));
        let mut inbound = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = call => r.map_err(|s| match s.code() {
                Code::Unavailable => StreamError::from_status(&s),
                c => StreamError::Refused(c, s.message().to_owned()),
            })?.into_inner(),
        };
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = tokio::time::timeout(CATALOG_TIMEOUT, inbound.message()) => m,
        };
        let catalog = match first {
            Err(_) => return Err(StreamError::NoCatalog(CATALOG_TIMEOUT)),
            Ok(Err(s)) => return Err(StreamError::from_status(&s)),
            Ok(Ok(None)) => return Err(StreamError::Ended),
            Ok(Ok(Some(pb::ArbiterMessage {
                kind: Some(Kind::Catalog(c)),
            }))) => c,
            Ok(Ok(Some(_))) => return Err(StreamError::CatalogNotFirst),
        };
        let mut refresh_every = self.take_catalog(catalog);
        {
            let mut st = self.state.lock();
            st.arbiter_connected = true;
            st.arbiter_connected_since_unix_ms = unix_ms();
            if *streams > 0 {
                st.reconnects += 1;
            }
        }
        *streams += 1;
        info!(
            arbiter = %self.url,
            watcher_id = %self.watcher_id,
            in_stock,
            "connected to the arbiter"
        );
        let mut refresh = refresh_timer(refresh_every);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.close(tx, inbound).await;
                    return Ok(());
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(every) = self.handle(m) && every != refresh_every {
                            refresh_every = every;
                            refresh = refresh_timer(every);
                        }
                    }
                    Ok(None) => return Err(StreamError::Ended),
                    Err(s) => return Err(StreamError::from_status(&s)),
                },
                () = self.state.wait_report_due() => self.send_report(&tx, false).await?,
                _ = refresh.tick() => self.send_report(&tx, true).await?,
            }
        }
    }

    /// Handles one pushed message; returns the new refresh period when a
    /// catalog came.
    fn handle(&self, m: pb::ArbiterMessage) -> Option<Duration> {
        match m.kind {
            Some(Kind::Catalog(c)) => Some(self.take_catalog(c)),
            Some(Kind::Grant(lease)) => {
                self.runner.on_grant(lease, Instant::now());
                None
            }
            Some(Kind::Revoked(r)) => {
                self.runner.on_revoked(r);
                None
            }
            None => {
                warn!("the arbiter sent an empty message; ignored");
                None
            }
        }
    }

    fn take_catalog(&self, c: pb::Catalog) -> Duration {
        let catalog = Catalog::from_pb(c);
        info!(
            products = catalog.products().len(),
            lease_ttl_ms = catalog.lease_ttl.as_millis() as u64,
            stock_ttl_ms = catalog.stock_ttl.as_millis() as u64,
            test_mode = catalog.test_mode,
            "catalog received from the arbiter"
        );
        let every = refresh_period(catalog.stock_ttl);
        self.catalogs.send_replace(Some(Arc::new(catalog)));
        every
    }

    /// Ends our half of the stream and waits a moment for the arbiter to end
    /// its half, so it records a clean leave rather than a broken stream. A
    /// grant that still arrives goes to the runner, which releases it.
    async fn close(
        &self,
        tx: mpsc::Sender<pb::StockReport>,
        mut inbound: Streaming<pb::ArbiterMessage>,
    ) {
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(Some(m)) = inbound.message().await {
                self.handle(m);
            }
        })
        .await;
    }

    async fn send_report(
        &self,
        tx: &mpsc::Sender<pb::StockReport>,
        refresh: bool,
    ) -> Result<(), StreamError> {
        let content = self.state.lock().book.take_report(Instant::now(), refresh);
        if content.is_empty() {
            return Ok(());
        }
        tx.send(pb::StockReport {
            watcher_id: String::new(),
            observations: content.observations,
            polling: content.polling.unwrap_or_default(),
        })
        .await
        .map_err(|_| StreamError::Ended)
    }
}

/// In-stock products are repeated at least this often: a third of the stock
/// TTL, so one lost or late report never lets a sighting go stale.
pub fn refresh_period(stock_ttl: Duration) -> Duration {
    if stock_ttl.is_zero() {
        DEFAULT_REFRESH
    } else {
        (stock_ttl / 3).max(Duration::from_millis(10))
    }
}

fn refresh_timer(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(Instant::now() + every, every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}
