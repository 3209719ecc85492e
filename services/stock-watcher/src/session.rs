//! The arbiter session: keeps one `StreamStock` stream open, with the leader
//! among the `--arbiter` URLs, reconnecting after any failure: straight to
//! the leader a replica named, else to the next URL given, and with
//! exponential back-off and jitter once every URL failed in a row (with one
//! URL: after every failure, as before replicas existed).
//!
//! On every (re)connect the first report names the watcher and carries the
//! current in-stock state, so the arbiter knows at once what this watcher
//! sees. The arbiter answers with its catalog, which feeds the poller. Then
//! the session sends a report whenever the poller says something changed,
//! plus a refresh of every in-stock product every third of the stock TTL (the
//! arbiter drops sightings that are not repeated within the TTL). Every
//! report also says whether the source blocks the watcher (a captcha,
//! PerimeterX, a retired endpoint, a back-off; `StockReport.source_block`),
//! and a change of that is a report of its own within [`BLOCK_CHECK`], so
//! the arbiter can show it and its history mark when a block starts and
//! ends. Grants and
//! revocations pushed by the arbiter go to the checkout runner, which keeps
//! going over unary calls while the stream is down.
//!
//! This is the stream's edge: the arbiter's catalogs, grants and revocations
//! become domain values here (through `restock-proto`'s conversions), and
//! reports are built here from the stock book's observations. Nothing past
//! it sees a protocol message.

use std::{sync::Arc, time::Duration};

use restock_proto::v1::{
    self as pb, arbiter_message::Kind, purchase_arbiter_client::PurchaseArbiterClient,
};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};
use tracing::{error, info, warn};

use restock_domain::{Catalog, FencingToken, Lease, LeaseId, ProductId, SourceBlock, WatcherId};
use restock_proto::ConvertError;
use restock_runtime::{arbiters::Move, backoff::Backoff, error::Chain, leader::is_not_leader};

use crate::{
    arbiter::{ArbiterLink, CallError, LinkError},
    book::ReportContent,
    poller::PollTurn,
    runner::{CheckoutRunner, Revocation},
    state::{BlockToken, SharedState, unix_ms},
};

/// How long the arbiter may take to send its catalog on a new stream.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that lived this long resets the reconnect back-off.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Refresh period when the catalog gives no stock TTL.
const DEFAULT_REFRESH: Duration = Duration::from_secs(3);
/// Queued reports per stream.
const OUTBOUND_BUFFER: usize = 64;
/// How often the session looks whether the source's block changed (a block
/// starting or ending is reported within this, or at once with a change of
/// stock): a lock and a comparison, no message unless it changed.
const BLOCK_CHECK: Duration = Duration::from_millis(250);

/// Why a stream ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Link(#[source] LinkError),
    #[error("cannot connect to the arbiter at {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the arbiter refused the stream: {0}")]
    Refused(#[source] CallError),
    #[error("the arbiter is shutting down: {0}")]
    ArbiterStopping(#[source] CallError),
    /// A replica that does not lead (it names the leader when it knows).
    #[error("this arbiter replica does not lead: {0}")]
    NotLeader(#[source] CallError),
    #[error("another stream with this watcher id replaced this one: {0}")]
    Replaced(#[source] CallError),
    #[error("the stream failed: {0}")]
    Failed(#[source] CallError),
    #[error("the arbiter ended the stream")]
    Ended,
    #[error("the arbiter sent no catalog within {0:?}")]
    NoCatalog(Duration),
    #[error("the first message was not the catalog")]
    CatalogNotFirst,
    /// Not expected of a correct arbiter (it checks its config): the stream
    /// is dropped and opened again, with back-off, rather than polling from
    /// a catalog the watcher cannot read.
    #[error("the arbiter sent a catalog that cannot be used: {0}")]
    BadCatalog(#[source] ConvertError),
}

impl StreamError {
    /// A stream that ended with an error status: UNAVAILABLE is an arbiter
    /// going away, ABORTED a newer stream with this watcher's id.
    fn from_status(s: tonic::Status) -> Self {
        match s.code() {
            Code::Unavailable if is_not_leader(&s) => Self::NotLeader(s.into()),
            Code::Unavailable => Self::ArbiterStopping(s.into()),
            Code::Aborted => Self::Replaced(s.into()),
            _ => Self::Failed(s.into()),
        }
    }

    /// Moves `link` on from `url` as this end says: to the leader a replica
    /// named, or to the next URL when `url` could not be reached, knows no
    /// leader, stopped, or gave no catalog. A stream refused or replaced by
    /// a leader that answers stays with it.
    fn move_link(&self, link: &ArbiterLink, url: &str) -> Move {
        match self {
            Self::Refused(e) | Self::ArbiterStopping(e) | Self::NotLeader(e) | Self::Failed(e) => {
                link.on_error(url, e.status())
            }
            Self::Link(_) | Self::Connect { .. } | Self::Ended | Self::NoCatalog(_) => {
                link.on_failure(url)
            }
            Self::Replaced(_) | Self::CatalogNotFirst | Self::BadCatalog(_) => Move::Stay,
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Session {
    /// The arbiter URLs and which one leads, shared with the unary calls.
    pub link: ArbiterLink,
    pub watcher_id: WatcherId,
    pub state: SharedState,
    pub runner: CheckoutRunner,
    pub catalogs: watch::Sender<Option<Arc<Catalog>>>,
    /// Where the arbiter's poll plan goes (to the poller); `None` while no
    /// stream is up, so the poller keeps its own schedule.
    pub plans: watch::Sender<Option<PollTurn>>,
    /// `--poll-interval`, told to the arbiter in the first report.
    pub poll_interval: Duration,
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
            let url = self.link.current();
            let ended = self.one_stream(&url, &stop, &mut streams).await;
            // Cut off from the arbiter: our own schedule until the next plan.
            self.plans.send_replace(None);
            {
                let mut st = self.state.lock();
                st.arbiter_connected = false;
            }
            self.state.metrics().set_arbiter_connected(false);
            let Err(e) = ended else {
                info!("arbiter stream closed");
                return;
            };
            match &e {
                StreamError::Replaced(_) => error!(
                    arbiter = %url,
                    watcher_id = %self.watcher_id,
                    error = %Chain(&e),
                    "arbiter stream lost: is another watcher running with the same --watcher-id?"
                ),
                _ => warn!(arbiter = %url, error = %Chain(&e), "arbiter stream lost"),
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff.reset();
            }
            // Moving to a named leader or to the next URL is immediate; the
            // back-off is for an arbiter that failed again, or for a whole
            // round of URLs that failed. (The unary calls may have found
            // the leader already: then the stream follows them.)
            let step = e.move_link(&self.link, &url);
            let moved = self.link.current() != url;
            let back_off = !moved || self.link.should_back_off();
            let why = match step {
                Move::ToLeader { .. } => "the replica named the leader",
                Move::ToNext { .. } if back_off => "every arbiter URL failed in a row",
                Move::ToNext { .. } => "trying the next arbiter URL",
                Move::Stay if moved => "a renewal or release found the leader",
                Move::Stay => "the same arbiter again",
            };
            let delay = if back_off {
                backoff.next_delay()
            } else {
                Duration::ZERO
            };
            info!(
                arbiter = %self.link.current(),
                previous = %url,
                reason = why,
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
        url: &str,
        stop: &CancellationToken,
        streams: &mut u64,
    ) -> Result<(), StreamError> {
        let (dial, endpoint) = self.link.endpoint(url).map_err(StreamError::Link)?;
        let connect = endpoint.connect();
        let channel = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            c = connect => c.map_err(|source| StreamError::Connect {
                url: dial,
                source,
            })?,
        };
        let mut client = PurchaseArbiterClient::with_interceptor(channel, self.link.token());
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let (hello, block, mut told_block) = {
            let mut st = self.state.lock();
            st.book.new_stream();
            let now = Instant::now();
            let (block, token) = st.source_block(now);
            (st.book.take_report(now, true), block, token)
        };
        let in_stock = hello.observations.len();
        tx.send(stock_report(
            Some((&self.watcher_id, self.poll_interval)),
            hello,
            block.as_ref(),
        ))
        .await
        .map_err(|_| StreamError::Ended)?;
        let call = client.stream_stock(ReceiverStream::new(rx));
        let mut inbound = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            r = call => r.map_err(|s| match s.code() {
                Code::Unavailable => StreamError::from_status(s),
                _ => StreamError::Refused(s.into()),
            })?.into_inner(),
        };
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = tokio::time::timeout(CATALOG_TIMEOUT, inbound.message()) => m,
        };
        let catalog = match first {
            Err(_) => return Err(StreamError::NoCatalog(CATALOG_TIMEOUT)),
            Ok(Err(s)) => return Err(StreamError::from_status(s)),
            Ok(Ok(None)) => return Err(StreamError::Ended),
            Ok(Ok(Some(pb::ArbiterMessage {
                kind: Some(Kind::Catalog(c)),
            }))) => c,
            Ok(Ok(Some(_))) => return Err(StreamError::CatalogNotFirst),
        };
        let mut refresh_every = self.take_catalog(catalog)?;
        // A catalog comes only from the leader (or a lone arbiter).
        self.link.on_success(url);
        {
            let mut st = self.state.lock();
            st.arbiter_url = url.to_owned();
            st.arbiter_connected = true;
            st.arbiter_connected_since_unix_ms = unix_ms();
            if *streams > 0 {
                st.reconnects += 1;
            }
        }
        self.state.metrics().set_arbiter_connected(true);
        *streams += 1;
        info!(
            arbiter = %url,
            watcher_id = %self.watcher_id,
            in_stock,
            "connected to the arbiter"
        );
        let mut refresh = refresh_timer(refresh_every);
        let mut block_check = tokio::time::interval(BLOCK_CHECK);
        block_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    self.close(tx, inbound).await;
                    return Ok(());
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        if let Some(every) = self.handle(m)? && every != refresh_every {
                            refresh_every = every;
                            refresh = refresh_timer(every);
                        }
                    }
                    Ok(None) => return Err(StreamError::Ended),
                    Err(s) => return Err(StreamError::from_status(s)),
                },
                () = self.state.wait_report_due() => self.send_report(&tx, false, &mut told_block).await?,
                _ = refresh.tick() => self.send_report(&tx, true, &mut told_block).await?,
                _ = block_check.tick() => {
                    let changed = self.state.lock().source_block(Instant::now()).1 != told_block;
                    if changed {
                        self.send_report(&tx, false, &mut told_block).await?;
                    }
                }
            }
        }
    }

    /// Handles one pushed message; returns the new refresh period when a
    /// catalog came.
    fn handle(&self, m: pb::ArbiterMessage) -> Result<Option<Duration>, StreamError> {
        Ok(match m.kind {
            Some(Kind::Catalog(c)) => Some(self.take_catalog(c)?),
            Some(Kind::Grant(grant)) => {
                let received_at = Instant::now();
                let lease_id = grant.lease_id.clone();
                match Lease::try_from(grant) {
                    Ok(lease) => self.runner.on_grant(lease, received_at),
                    // Nothing runs without a lease this watcher can name and
                    // time. It is not released either (it may not even
                    // have a usable id): the arbiter expires it after its
                    // TTL, as for a watcher that went away.
                    Err(e) => error!(
                        lease_id = %lease_id,
                        error = %Chain(&e),
                        "the arbiter pushed a grant that cannot be used; ignored"
                    ),
                }
                None
            }
            Some(Kind::Revoked(r)) => {
                match LeaseId::parse(&r.lease_id) {
                    Ok(lease_id) => self.runner.on_revoked(Revocation {
                        lease_id,
                        token: FencingToken(r.fencing_token),
                        reason: r.reason,
                    }),
                    // No checkout runs under a lease id that is not valid.
                    Err(e) => info!(
                        lease_id = %r.lease_id,
                        reason = %r.reason,
                        error = %Chain(&e),
                        "the arbiter revoked a lease that has no running checkout here"
                    ),
                }
                None
            }
            Some(Kind::PollPlan(p)) => {
                let turn = (p.period_ms > 0).then(|| PollTurn {
                    first: Instant::now() + Duration::from_millis(p.offset_ms),
                    period: Duration::from_millis(p.period_ms),
                    position: p.position,
                    of: p.of,
                });
                let before = self.plans.send_replace(turn);
                let changed = match (before, turn) {
                    (Some(a), Some(b)) => {
                        (a.period, a.position, a.of) != (b.period, b.position, b.of)
                    }
                    (a, b) => a.is_some() != b.is_some(),
                };
                if changed {
                    info!(
                        period_ms = p.period_ms,
                        offset_ms = p.offset_ms,
                        turn = p.position + 1,
                        of = p.of,
                        "poll plan from the arbiter"
                    );
                }
                None
            }
            None => {
                warn!("the arbiter sent an empty message; ignored");
                None
            }
        })
    }

    /// Converts the arbiter's catalog and hands it to the poller; returns
    /// the refresh period it implies.
    fn take_catalog(&self, c: pb::Catalog) -> Result<Duration, StreamError> {
        let catalog = catalog_from_pb(c).map_err(StreamError::BadCatalog)?;
        info!(
            products = catalog.products.len(),
            lease_ttl_ms = catalog.lease_ttl.as_millis() as u64,
            stock_ttl_ms = catalog.stock_ttl.as_millis() as u64,
            test_mode = catalog.test_mode,
            "catalog received from the arbiter"
        );
        let every = refresh_period(catalog.stock_ttl);
        self.catalogs.send_replace(Some(Arc::new(catalog)));
        Ok(every)
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
                // Only a grant matters now (the runner releases it); a bad
                // catalog this late changes nothing.
                let _ = self.handle(m);
            }
        })
        .await;
    }

    async fn send_report(
        &self,
        tx: &mpsc::Sender<pb::StockReport>,
        refresh: bool,
        told_block: &mut BlockToken,
    ) -> Result<(), StreamError> {
        let (content, block) = {
            let mut st = self.state.lock();
            let now = Instant::now();
            let (block, token) = st.source_block(now);
            let content = st.book.take_report(now, refresh);
            if content.is_empty() && token == *told_block {
                return Ok(());
            }
            *told_block = token;
            (content, block)
        };
        tx.send(stock_report(None, content, block.as_ref()))
            .await
            .map_err(|_| StreamError::Ended)
    }
}

/// The arbiter's catalog as a domain [`Catalog`], in priority order.
///
/// A product whose id is invalid is left out with a warning and the rest
/// are kept, as the watcher always did: the arbiter validates its config,
/// so this is defence, and one bad entry should not stop every product
/// from being polled. Anything else that does not convert is an error.
fn catalog_from_pb(mut c: pb::Catalog) -> Result<Catalog, ConvertError> {
    c.products.retain(|p| match ProductId::parse(&p.tcin) {
        Ok(_) => true,
        Err(e) => {
            warn!(
                tcin = %p.tcin,
                error = %Chain(&e),
                "the arbiter's catalog lists an invalid product id; skipped"
            );
            false
        }
    });
    Catalog::try_from(c)
}

/// A `StockReport` carrying `content`; only the first report of a stream
/// names the watcher and says how often it polls. Every report says what
/// blocks the source (`block`), so a report without one ends a block.
fn stock_report(
    hello: Option<(&WatcherId, Duration)>,
    content: ReportContent,
    block: Option<&SourceBlock>,
) -> pb::StockReport {
    pb::StockReport {
        source_block: block.map(pb::SourceBlock::from),
        watcher_id: hello.map(|(w, _)| w.to_string()).unwrap_or_default(),
        poll_interval_ms: hello.map_or(0, |(_, every)| {
            u64::try_from(every.as_millis()).unwrap_or(u64::MAX)
        }),
        observations: content
            .observations
            .iter()
            .map(pb::StockObservation::from)
            .collect(),
        polling: content
            .polling
            .unwrap_or_default()
            .iter()
            .map(ProductId::to_string)
            .collect(),
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

#[cfg(test)]
mod tests {
    use restock_domain::{Observation, Price};

    use super::*;

    fn product(tcin: &str, priority: u32, max_price_cents: u64) -> pb::CatalogProduct {
        pb::CatalogProduct {
            tcin: tcin.into(),
            name: format!("Product {tcin}"),
            priority,
            max_price_cents,
            quantity: 1,
            enabled: true,
        }
    }

    #[test]
    fn a_catalog_is_sorted_by_priority_and_bad_products_are_skipped() {
        let c = catalog_from_pb(pb::Catalog {
            // The arbiter's order does not matter, the priority does.
            products: vec![
                product("300", 3, 0),
                product("bad id", 0, 0),
                product("200", 2, 2_000),
                product("100", 1, 0),
            ],
            lease_ttl_ms: 30_000,
            stock_ttl_ms: 10_000,
            test_mode: true,
        })
        .unwrap();
        let ids: Vec<&str> = c
            .products
            .products()
            .iter()
            .map(|p| p.tcin.as_str())
            .collect();
        assert_eq!(ids, ["100", "200", "300"]);
        let t = |s| ProductId::parse(s).unwrap();
        assert_eq!(
            c.products.get(&t("200")).unwrap().max_price,
            Some(Price::from_cents(2_000))
        );
        assert_eq!(c.products.get(&t("100")).unwrap().max_price, None);
        assert_eq!(c.stock_ttl, Duration::from_secs(10));
        assert!(c.test_mode);
    }

    #[test]
    fn only_the_first_report_names_the_watcher() {
        let w = WatcherId::parse("w1").unwrap();
        let content = ReportContent {
            observations: vec![Observation {
                tcin: ProductId::parse("100").unwrap(),
                in_stock: true,
                price: Some(Price::from_cents(1_250)),
                observed_at_unix_ms: 7,
            }],
            polling: Some(vec![ProductId::parse("100").unwrap()]),
        };
        let first = stock_report(
            Some((&w, Duration::from_millis(300))),
            content.clone(),
            None,
        );
        assert_eq!(first.watcher_id, "w1");
        assert_eq!(first.poll_interval_ms, 300);
        assert_eq!(first.polling, ["100"]);
        assert_eq!(first.observations[0].price_cents, Some(1_250));
        assert_eq!(first.observations[0].observed_at_unix_ms, 7);
        let later = stock_report(
            None,
            ReportContent {
                polling: None,
                ..content
            },
            None,
        );
        assert!(later.watcher_id.is_empty() && later.polling.is_empty());
        assert_eq!(later.poll_interval_ms, 0);
        assert!(first.source_block.is_none() && later.source_block.is_none());
    }

    #[test]
    fn every_report_says_what_blocks_the_source() {
        use crate::{source::RefusalKind, state::BlockRecord};
        let state = SharedState::new();
        let now = Instant::now();
        assert_eq!(state.lock().source_block(now), (None, None));
        let shop = state.add_source("shopify:cards.example");
        let target = state.add_source("target");
        assert_eq!(state.add_source("target"), target);
        {
            let mut guard = state.lock();
            let st = guard.source(target);
            st.block = Some(BlockRecord {
                kind: RefusalKind::Captcha,
                detail: String::new(),
                since_unix_ms: 1_000,
                tracking_url: Some("/captcha?trackingId=x".into()),
            });
            st.backoff_until = Some(now + Duration::from_secs(600));
        }
        let (block, token) = state.lock().source_block(now);
        let block = block.expect("blocked");
        assert!(token.is_some());
        let r = stock_report(None, ReportContent::default(), Some(&block));
        let b = r.source_block.expect("sent");
        assert_eq!(b.kind, "captcha");
        assert_eq!(b.source, "target");
        assert_eq!(b.since_unix_ms, 1_000);
        assert_eq!(b.tracking_url, "/captcha?trackingId=x");
        assert!(b.paused_until_unix_ms >= unix_ms() + 590_000);
        // The token is stable while nothing changes, so no report repeats it.
        assert_eq!(state.lock().source_block(now).1, token);
        // A block of Target outranks a back-off of the shop listed first.
        state.lock().source(shop).block = Some(BlockRecord {
            kind: RefusalKind::RateLimited,
            detail: String::new(),
            since_unix_ms: 2_000,
            tracking_url: None,
        });
        let (worst, _) = state.lock().source_block(now);
        assert_eq!(worst.unwrap().source.as_ref(), "target");
        // A per-product refusal is not the source's: the shop's back-off
        // is what is left to tell.
        state.lock().source(target).block.as_mut().unwrap().kind = RefusalKind::UnknownProduct;
        let (left, _) = state.lock().source_block(now);
        assert_eq!(left.unwrap().source.as_ref(), "shopify:cards.example");
        state.lock().source(shop).block = None;
        assert_eq!(state.lock().source_block(now), (None, None));
    }

    #[test]
    fn refresh_is_a_third_of_the_stock_ttl() {
        assert_eq!(
            refresh_period(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(refresh_period(Duration::ZERO), DEFAULT_REFRESH);
    }
}
