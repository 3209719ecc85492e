//! The `restock.v1.PurchaseArbiter` gRPC service: takes each request apart,
//! validates it into domain types, calls the arbiter task, and maps errors to
//! `Status` in one place ([`to_status`]).

use std::{path::PathBuf, pin::Pin, time::Duration};

use futures::Stream;
use restock_proto::v1::{self as pb, purchase_arbiter_server::PurchaseArbiter};
use tokio::{
    sync::{broadcast, mpsc},
    time::Instant,
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use restock_domain::{
    Event, FencingToken, LeaseId, Observation, Outcome, PriorityList, ProductState, Tcin, WatcherId,
};
use restock_proto::convert;

use crate::{
    slot::{AcquireAnswer, Lease, SlotError},
    task::{ArbiterError, ArbiterHandle, CloseReason, STREAM_BUFFER, WatcherMessage},
};

/// How long a new stream may take to name its watcher.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most observations in one report message.
pub const MAX_OBSERVATIONS_PER_REPORT: usize = 10_000;

/// How fast one `StreamStock` stream may send reports.
///
/// Every stream shares the arbiter's one command queue, so a stream that
/// floods reports would delay everyone's renewals and grants. Each stream
/// gets a token bucket: `per_second` reports a second, bursts of up to
/// `burst`. A report that finds the bucket empty waits for the next token,
/// which slows the sender (HTTP/2 flow control holds it back while the
/// arbiter is not reading). A stream that still has to be slowed for
/// `cut_after` reports in a row is flooding, not bursting, and is closed
/// with `RESOURCE_EXHAUSTED`. A watcher reports on changes and refreshes
/// every third of the stock TTL, a handful of messages a second at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimit {
    pub per_second: u32,
    pub burst: u32,
    pub cut_after: u32,
}

impl ReportLimit {
    /// `per_second` reports a second, a burst of one second's worth, cut
    /// after one more second of sustained excess. `None` for 0 (no limit).
    pub fn per_second(per_second: u32) -> Option<Self> {
        (per_second > 0).then_some(Self {
            per_second,
            burst: per_second,
            cut_after: per_second,
        })
    }
}

/// What [`ReportBucket::admit`] decided about one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the limit: handle it now.
    Now,
    /// Over the limit: handle it after this pause (the stream is slowed).
    After(Duration),
    /// Slowed for too long in a row: close the stream.
    Cut,
}

/// The token bucket of one stream; see [`ReportLimit`].
#[derive(Debug, Clone)]
pub struct ReportBucket {
    limit: ReportLimit,
    tokens: f64,
    /// When `tokens` was last brought up to date (may lie ahead after a
    /// pause was handed out: that token is already spent).
    at: Instant,
    slowed_in_a_row: u32,
}

impl ReportBucket {
    pub fn new(limit: ReportLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            at: now,
            slowed_in_a_row: 0,
        }
    }

    /// Takes one token for a report that arrived at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let rate = f64::from(self.limit.per_second.max(1));
        if now > self.at {
            let earned = now.duration_since(self.at).as_secs_f64() * rate;
            self.tokens = (self.tokens + earned).min(f64::from(self.limit.burst.max(1)));
            self.at = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.slowed_in_a_row = 0;
            return Admit::Now;
        }
        self.slowed_in_a_row += 1;
        if self.slowed_in_a_row > self.limit.cut_after {
            return Admit::Cut;
        }
        // The token that accrues during the pause is this report's.
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
        self.tokens = 0.0;
        self.at = self.at.max(now) + wait;
        Admit::After(wait)
    }
}

/// Maps every arbiter error to a status code and a message that says what
/// was wrong.
pub fn to_status(e: ArbiterError) -> Status {
    match e {
        ArbiterError::Slot(SlotError::Stale(m)) => Status::failed_precondition(m),
        ArbiterError::Slot(e @ SlotError::UnknownLease(_)) => Status::not_found(e.to_string()),
        ArbiterError::Slot(e @ SlotError::UnknownProduct(_)) => Status::not_found(e.to_string()),
        ArbiterError::Slot(SlotError::Invalid(m)) => Status::invalid_argument(m),
        ArbiterError::Slot(SlotError::Full(m)) => Status::resource_exhausted(m),
        e @ ArbiterError::Persist(_) => Status::unavailable(e.to_string()),
        e @ ArbiterError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn tcin(value: &str) -> Result<Tcin, Status> {
    Tcin::parse(value).map_err(invalid)
}

fn watcher_id(value: &str) -> Result<WatcherId, Status> {
    WatcherId::parse(value).map_err(invalid)
}

fn lease_ref(lease_id: &str, token: u64) -> Result<(LeaseId, FencingToken), Status> {
    Ok((
        LeaseId::parse(lease_id).map_err(invalid)?,
        FencingToken::presented(token).map_err(invalid)?,
    ))
}

/// A lease as it stands now, for an answer or a push.
fn live_lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease::from(&l.view(Instant::now()))
}

fn state_to_pb(s: ProductState) -> i32 {
    pb::ProductState::from(s) as i32
}

fn outcome_from_pb(value: i32) -> Result<Outcome, Status> {
    match convert::outcome("outcome", value) {
        Ok(Some(Outcome::Expired)) => Err(Status::invalid_argument(
            "outcome OUTCOME_EXPIRED is set by the arbiter only",
        )),
        Ok(Some(o)) => Ok(o),
        Ok(None) => Err(Status::invalid_argument(
            "outcome is missing: say OUTCOME_PURCHASED, OUTCOME_FAILED, OUTCOME_OUT_OF_STOCK or OUTCOME_ABORTED",
        )),
        Err(_) => Err(Status::invalid_argument(format!(
            "outcome {value} is not a known outcome"
        ))),
    }
}

fn watcher_message_to_pb(m: WatcherMessage) -> Result<pb::ArbiterMessage, Status> {
    use pb::arbiter_message::Kind;
    let kind = match m {
        WatcherMessage::Catalog(catalog) => Kind::Catalog(pb::Catalog::from(&catalog)),
        WatcherMessage::Grant(lease) => Kind::Grant(live_lease_to_pb(&lease)),
        WatcherMessage::Revoked {
            lease_id,
            token,
            reason,
        } => Kind::Revoked(pb::LeaseRevoked {
            lease_id: lease_id.to_string(),
            fencing_token: token.0,
            reason,
        }),
        WatcherMessage::Closed(reason, message) => {
            return Err(match reason {
                CloseReason::ShuttingDown => Status::unavailable(message),
                CloseReason::Replaced => Status::aborted(message),
                CloseReason::TooManyProducts => Status::resource_exhausted(message),
                CloseReason::NotReading => Status::resource_exhausted(message),
            });
        }
    };
    Ok(pb::ArbiterMessage { kind: Some(kind) })
}

/// The gRPC face of the arbiter task.
#[derive(Debug, Clone)]
pub struct ArbiterService {
    handle: ArbiterHandle,
    config_path: PathBuf,
    shutdown: CancellationToken,
    report_limit: Option<ReportLimit>,
}

impl ArbiterService {
    pub fn new(handle: ArbiterHandle, config_path: PathBuf, shutdown: CancellationToken) -> Self {
        Self {
            handle,
            config_path,
            shutdown,
            report_limit: None,
        }
    }

    /// Limits how fast each `StreamStock` stream may report (`None`: no
    /// limit).
    pub fn with_report_limit(mut self, limit: Option<ReportLimit>) -> Self {
        self.report_limit = limit;
        self
    }

    /// Re-reads the product config; a bad file keeps the current list.
    pub async fn reload(&self) -> Result<usize, Status> {
        let path = self.config_path.clone();
        let list = tokio::task::spawn_blocking(move || PriorityList::load(&path))
            .await
            .map_err(|e| Status::internal(format!("config reader failed: {e}")))?
            .map_err(|e| {
                warn!(error = %e, "product config reload refused; keeping the current list");
                Status::invalid_argument(format!("{e}; the current product list is kept"))
            })?;
        let n = self.handle.reload(list).await.map_err(to_status)?;
        info!(config = %self.config_path.display(), products = n, "product config reloaded");
        Ok(n)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PurchaseArbiter for ArbiterService {
    async fn acquire_purchase(
        &self,
        request: Request<pb::AcquirePurchaseRequest>,
    ) -> Result<Response<pb::AcquirePurchaseResponse>, Status> {
        let r = request.into_inner();
        let product = tcin(&r.tcin)?;
        let watcher = watcher_id(&r.watcher_id)?;
        if r.request_id.len() > 128 {
            return Err(Status::invalid_argument(format!(
                "request_id is {} bytes long; at most 128 are allowed",
                r.request_id.len()
            )));
        }
        let answer = self
            .handle
            .acquire(product.clone(), watcher.clone(), r.request_id)
            .await
            .map_err(to_status)?;
        let mut resp = pb::AcquirePurchaseResponse::default();
        match answer {
            AcquireAnswer::Granted(lease) => {
                info!(tcin = %product, watcher_id = %watcher, fencing_token = lease.token.0, "slot granted by AcquirePurchase");
                resp.granted = true;
                resp.lease = Some(live_lease_to_pb(&lease));
            }
            AcquireAnswer::Refused(refusal) => {
                use crate::slot::Refusal as R;
                resp.reason = refusal.reason().to_owned();
                resp.detail = refusal.detail();
                match refusal {
                    R::AnotherPurchaseActive {
                        holder_tcin,
                        holder_watcher_id,
                    } => {
                        resp.holder_tcin = holder_tcin.to_string();
                        resp.holder_watcher_id = holder_watcher_id.to_string();
                    }
                    R::HigherPriorityPending { pending_tcin } => {
                        resp.pending_tcin = pending_tcin.to_string();
                    }
                    R::CoolingDown { retry_after_ms } => resp.retry_after_ms = retry_after_ms,
                    R::AlreadyPurchased { .. } | R::Paused | R::Disabled => {}
                }
            }
        }
        Ok(Response::new(resp))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let r = request.into_inner();
        let (lease_id, token) = lease_ref(&r.lease_id, r.fencing_token)?;
        let lease = self
            .handle
            .renew(lease_id, token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RenewLeaseResponse {
            lease: Some(live_lease_to_pb(&lease)),
        }))
    }

    async fn release_purchase(
        &self,
        request: Request<pb::ReleasePurchaseRequest>,
    ) -> Result<Response<pb::ReleasePurchaseResponse>, Status> {
        let r = request.into_inner();
        let (lease_id, token) = lease_ref(&r.lease_id, r.fencing_token)?;
        let outcome = outcome_from_pb(r.outcome)?;
        if r.detail.len() > 4_096 {
            return Err(Status::invalid_argument(format!(
                "detail is {} bytes long; at most 4096 are kept",
                r.detail.len()
            )));
        }
        let (released, state) = self
            .handle
            .release(lease_id.clone(), token, outcome, r.detail)
            .await
            .map_err(|e| {
                warn!(lease_id = %lease_id, fencing_token = token.0, error = %e, "release refused");
                to_status(e)
            })?;
        info!(lease_id = %lease_id, fencing_token = token.0, outcome = outcome.as_str(), released, "lease released");
        Ok(Response::new(pb::ReleasePurchaseResponse {
            released,
            product_state: state_to_pb(state),
        }))
    }

    type StreamStockStream = BoxStream<pb::ArbiterMessage>;

    async fn stream_stock(
        &self,
        request: Request<Streaming<pb::StockReport>>,
    ) -> Result<Response<Self::StreamStockStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let mut inbound = request.into_inner();
        // The watcher names itself in its first message.
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no first StockReport naming the watcher within {HELLO_TIMEOUT:?}"
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream ended before its first StockReport",
                ));
            }
            Ok(Ok(Some(m))) => m,
        };
        if first.watcher_id.is_empty() {
            return Err(Status::invalid_argument(
                "the first StockReport on a stream must set watcher_id",
            ));
        }
        let watcher = watcher_id(&first.watcher_id)?;
        let (polling, observations) = parse_report(&watcher, first)?;
        let conn = self.handle.new_conn();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.handle
            .connect(watcher.clone(), conn, tx)
            .await
            .map_err(to_status)?;
        info!(watcher_id = %watcher, conn, peer = %peer, "watcher stream opened");
        let handle = self.handle.clone();
        let shutdown = self.shutdown.clone();
        let limit = self.report_limit;
        let (err_tx, err_rx) = mpsc::channel::<Status>(1);
        tokio::spawn(async move {
            let mut why = "stream ended by the watcher".to_owned();
            let mut next = Some((polling, observations));
            let mut bucket = limit.map(|l| ReportBucket::new(l, Instant::now()));
            loop {
                if let Some((polling, observations)) = next.take()
                    && handle
                        .report(watcher.clone(), conn, polling, observations)
                        .await
                        .is_err()
                {
                    break;
                }
                let msg = tokio::select! {
                    () = shutdown.cancelled() => {
                        why = "arbiter shutting down".into();
                        break;
                    }
                    m = inbound.message() => m,
                };
                match msg {
                    Ok(Some(report)) => {
                        match bucket.as_mut().map(|b| b.admit(Instant::now())) {
                            None | Some(Admit::Now) => {}
                            Some(Admit::After(pause)) => {
                                // Not reading meanwhile is what slows the sender.
                                tokio::select! {
                                    () = shutdown.cancelled() => {
                                        why = "arbiter shutting down".into();
                                        break;
                                    }
                                    () = tokio::time::sleep(pause) => {}
                                }
                            }
                            Some(Admit::Cut) => {
                                let l = limit.expect("a bucket has a limit");
                                warn!(watcher_id = %watcher, conn, per_second = l.per_second, burst = l.burst, "closing a watcher stream: it keeps reporting faster than the limit");
                                let _ = err_tx.try_send(Status::resource_exhausted(format!(
                                    "watcher {watcher} sent stock reports faster than {} per second (bursts of {}) for {} reports in a row; this stream is closed. Report changes rather than every poll, or raise --max-reports-per-second",
                                    l.per_second, l.burst, l.cut_after
                                )));
                                why = "reports too fast".into();
                                break;
                            }
                        }
                        if !report.watcher_id.is_empty() && report.watcher_id != watcher.as_str() {
                            let _ = err_tx.try_send(Status::invalid_argument(format!(
                                "this stream belongs to watcher {watcher}; a report names {:?}",
                                report.watcher_id
                            )));
                            why = "report named another watcher".into();
                            break;
                        }
                        match parse_report(&watcher, report) {
                            Ok(parsed) => next = Some(parsed),
                            Err(status) => {
                                why = format!("bad report: {}", status.message());
                                let _ = err_tx.try_send(status);
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        why = format!("stream error: {}", status.message());
                        break;
                    }
                }
            }
            info!(watcher_id = %watcher, conn, why = %why, "watcher stream closed");
            handle.disconnect(watcher, conn, why).await;
        });
        // Protocol errors found while reading end the reply stream too.
        let errors = ReceiverStream::new(err_rx).map(Err);
        let messages = ReceiverStream::new(rx).map(watcher_message_to_pb);
        let out = messages.merge(errors);
        // After the first error the stream ends (tonic sends it as the status).
        Ok(Response::new(Box::pin(out) as Self::StreamStockStream))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let mut status = self.handle.status().await.map_err(to_status)?;
        status.config_path = self.config_path.display().to_string();
        Ok(Response::new(pb::GetStatusResponse::from(&status)))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = request.into_inner().from_sequence;
        let (history, live) = self.handle.events(from.max(1)).await.map_err(to_status)?;
        // from_sequence 0 means "only what happens from now on".
        let history = if from == 0 { Vec::new() } else { history };
        let (tx, rx) = mpsc::channel(256);
        let handle = self.handle.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(follow_events(handle, history, live, tx, shutdown));
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::WatchEventsStream
        ))
    }

    async fn reset_product(
        &self,
        request: Request<pb::ResetProductRequest>,
    ) -> Result<Response<pb::ResetProductResponse>, Status> {
        let product = tcin(&request.into_inner().tcin)?;
        let previous = self
            .handle
            .reset(product.clone())
            .await
            .map_err(to_status)?;
        info!(tcin = %product, previous = previous.as_str(), "product reset");
        Ok(Response::new(pb::ResetProductResponse {
            previous_state: state_to_pb(previous),
        }))
    }

    async fn set_paused(
        &self,
        request: Request<pb::SetPausedRequest>,
    ) -> Result<Response<pb::SetPausedResponse>, Status> {
        let paused = request.into_inner().paused;
        let paused = self.handle.set_paused(paused).await.map_err(to_status)?;
        info!(paused, "pause switch set");
        Ok(Response::new(pb::SetPausedResponse { paused }))
    }

    async fn reload_config(
        &self,
        _request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let n = self.reload().await?;
        Ok(Response::new(pb::ReloadConfigResponse {
            products: n as u32,
            config_path: self.config_path.display().to_string(),
        }))
    }
}

type ParsedReport = (Option<Vec<Tcin>>, Vec<Observation>);

fn parse_report(watcher: &WatcherId, r: pb::StockReport) -> Result<ParsedReport, Status> {
    if r.observations.len() > MAX_OBSERVATIONS_PER_REPORT {
        return Err(Status::invalid_argument(format!(
            "a StockReport from {watcher} has {} observations; at most {MAX_OBSERVATIONS_PER_REPORT} are allowed per message",
            r.observations.len()
        )));
    }
    let observations = r
        .observations
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            Observation::try_from(o).map_err(|e| {
                Status::invalid_argument(format!(
                    "observation #{} from {watcher}: {}",
                    i + 1,
                    e.message
                ))
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let polling = if r.polling.is_empty() {
        None
    } else {
        let list = r
            .polling
            .iter()
            .map(|p| {
                Tcin::parse(p).map_err(|e| {
                    Status::invalid_argument(format!("polling list from {watcher}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Some(list)
    };
    Ok((polling, observations))
}

/// Sends history, then live events, to one `WatchEvents` follower. A follower
/// that falls behind the live buffer catches up from history.
async fn follow_events(
    handle: ArbiterHandle,
    history: Vec<Event>,
    mut live: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    shutdown: CancellationToken,
) {
    let mut last = 0u64;
    for e in history {
        last = e.sequence;
        if tx.send(Ok(pb::Event::from(&e))).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the arbiter is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            n = live.recv() => n,
        };
        match next {
            Ok(e) => {
                if e.sequence <= last {
                    continue;
                }
                last = e.sequence;
                if tx.send(Ok(pb::Event::from(&e))).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Catch up from history, then follow again.
                match handle.events(last + 1).await {
                    Ok((missed, rx)) => {
                        live = rx;
                        for e in missed {
                            last = e.sequence;
                            if tx.send(Ok(pb::Event::from(&e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(to_status(e))).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = tx
                    .send(Err(Status::unavailable("the arbiter is shutting down")))
                    .await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: u32) -> ReportLimit {
        ReportLimit::per_second(per_second).expect("non-zero")
    }

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(ReportLimit::per_second(0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_stream_is_slowed_then_cut() {
        let mut b = ReportBucket::new(limit(10), Instant::now());
        for i in 0..10 {
            assert_eq!(
                b.admit(Instant::now()),
                Admit::Now,
                "report {i} of the burst"
            );
        }
        // A sender that always has the next report ready: every report waits
        // a tenth of a second, and after ten of those in a row it is cut.
        for i in 0..10 {
            match b.admit(Instant::now()) {
                Admit::After(wait) => {
                    assert!(
                        (wait.as_secs_f64() - 0.1).abs() < 0.001,
                        "report {i}: {wait:?}"
                    );
                    tokio::time::advance(wait).await;
                }
                other => panic!("report {i} should be slowed, got {other:?}"),
            }
        }
        assert_eq!(b.admit(Instant::now()), Admit::Cut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_within_the_rate_is_never_slowed() {
        let mut b = ReportBucket::new(limit(10), Instant::now());
        for _ in 0..1_000 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
            tokio::time::advance(Duration::from_millis(105)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_refills_the_bucket_and_forgives_earlier_slowing() {
        let mut b = ReportBucket::new(limit(5), Instant::now());
        for _ in 0..5 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
        }
        assert!(matches!(b.admit(Instant::now()), Admit::After(_)));
        tokio::time::advance(Duration::from_secs(2)).await;
        // The token paid for by the pause above is spent; the rest refilled.
        for _ in 0..5 {
            assert_eq!(b.admit(Instant::now()), Admit::Now);
        }
        assert!(matches!(b.admit(Instant::now()), Admit::After(_)));
    }
}
