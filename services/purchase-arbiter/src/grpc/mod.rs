//! The `restock.v1.PurchaseArbiter` gRPC service: takes each request apart,
//! validates it into domain types, calls the arbiter task, and maps errors to
//! `Status` in one place ([`to_status`]).
//!
//! The watcher's long-lived stream has its own module ([`stream`]), as has
//! its rate limit ([`report_limit`]).

mod report_limit;
mod stream;

use std::{path::PathBuf, pin::Pin};

use futures::{Stream, StreamExt};
use restock_proto::v1::{self as pb, purchase_arbiter_server::PurchaseArbiter};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use restock_domain::{
    BudgetLimits, FencingToken, LeaseId, Outcome, Price, PriorityList, ProductId, ProductState,
    WatcherId,
};
use restock_proto::convert;
use restock_runtime::error::chain_text;

pub use report_limit::ReportLimit;

use crate::{
    feed::{self, FeedEnd},
    limits::{MAX_DETAIL_BYTES, MAX_REQUEST_ID_BYTES},
    replica::Replica,
    slot::{AcquireAnswer, ActiveLease, Refusal, SlotError},
    task::{ArbiterError, ArbiterHandle, BudgetChange},
};

/// Maps every arbiter error to a status code and a message that says what
/// was wrong.
pub fn to_status(e: ArbiterError) -> Status {
    match e {
        ArbiterError::Slot(SlotError::Stale(m)) => Status::failed_precondition(m),
        ArbiterError::Slot(e @ SlotError::UnknownLease(_)) => Status::not_found(e.to_string()),
        ArbiterError::Slot(e @ SlotError::UnknownProduct(_)) => Status::not_found(e.to_string()),
        ArbiterError::Slot(SlotError::Invalid(m)) => Status::invalid_argument(m),
        ArbiterError::Slot(SlotError::Full(m)) => Status::resource_exhausted(m),
        // The message carries the cause (which file, which step, which
        // error): "could not persist" alone tells an operator nothing.
        e @ ArbiterError::Persist(_) => Status::unavailable(chain_text(&e)),
        e @ ArbiterError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn tcin(value: &str) -> Result<ProductId, Status> {
    ProductId::parse(value).map_err(invalid)
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
fn live_lease_to_pb(l: &ActiveLease) -> pb::Lease {
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

/// The gRPC face of the arbiter task.
#[derive(Debug, Clone)]
pub struct ArbiterService {
    replica: Replica,
    config_path: PathBuf,
    report_limit: Option<ReportLimit>,
}

impl ArbiterService {
    pub fn new(replica: Replica, config_path: PathBuf) -> Self {
        Self {
            replica,
            config_path,
            report_limit: None,
        }
    }

    /// The arbiter task to ask: the standalone one or this leader's; a
    /// follower's `UNAVAILABLE` naming the leader otherwise.
    fn handle(&self) -> Result<ArbiterHandle, Status> {
        self.replica.current().map(|t| t.handle)
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
        let n = self.handle()?.reload(list).await.map_err(to_status)?;
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
        if r.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "request_id is {} bytes long; at most {MAX_REQUEST_ID_BYTES} are allowed",
                r.request_id.len()
            )));
        }
        let answer = self
            .handle()?
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
                use Refusal as R;
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
                    R::AlreadyPurchased { .. } | R::Paused | R::Disabled | R::OverBudget { .. } => {
                    }
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
            .handle()?
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
        if r.detail.len() > MAX_DETAIL_BYTES {
            return Err(Status::invalid_argument(format!(
                "detail is {} bytes long; at most {MAX_DETAIL_BYTES} are kept",
                r.detail.len()
            )));
        }
        let paid = match r.paid_price_cents {
            Some(_) if outcome != Outcome::Purchased => {
                return Err(Status::invalid_argument(format!(
                    "paid_price_cents is for a PURCHASED release; this one says {}",
                    outcome.as_str()
                )));
            }
            Some(c) if c > MAX_PAID_CENTS => {
                return Err(Status::invalid_argument(format!(
                    "paid_price_cents {c} is more than {} cents: not a price",
                    MAX_PAID_CENTS
                )));
            }
            c => c.map(Price::from_cents),
        };
        let (released, state) = self
            .handle()?
            .release(lease_id.clone(), token, outcome, r.detail, paid)
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
        stream::open(self, request).await.map(Response::new)
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let Ok(term) = self.replica.current() else {
            return Ok(Response::new(self.replica.follower_status()));
        };
        let mut status = term.handle.status().await.map_err(to_status)?;
        status.config_path = self.config_path.display().to_string();
        let mut answer = pb::GetStatusResponse::from(&status);
        self.replica.annotate(&mut answer);
        Ok(Response::new(answer))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = request.into_inner().from_sequence;
        // from_sequence 0 means "only what happens from now on".
        let from = if from == 0 { u64::MAX } else { from };
        let term = self.replica.current()?;
        let feed = feed::follow(term.handle, from, term.stop)
            .await
            .map_err(to_status)?;
        let events = ReceiverStream::new(feed).map(|item| match item {
            Ok(e) => Ok(pb::Event::from(&e)),
            Err(FeedEnd::ShuttingDown) => Err(Status::unavailable("the arbiter is shutting down")),
            Err(FeedEnd::Failed(e)) => Err(to_status(e)),
        });
        Ok(Response::new(Box::pin(events) as Self::WatchEventsStream))
    }

    async fn reset_product(
        &self,
        request: Request<pb::ResetProductRequest>,
    ) -> Result<Response<pb::ResetProductResponse>, Status> {
        let product = tcin(&request.into_inner().tcin)?;
        let previous = self
            .handle()?
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
        let paused = self.handle()?.set_paused(paused).await.map_err(to_status)?;
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

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let change = budget_change(request.into_inner())?;
        let status = self
            .handle()?
            .set_budget(change.clone())
            .await
            .map_err(to_status)?;
        info!(
            reason = %change.reason,
            limits = ?change.limits,
            use_config = change.use_config,
            reset_spend = change.reset_spend,
            "budget changed by an operator"
        );
        Ok(Response::new(pb::SetBudgetResponse {
            budget: Some((&status).into()),
        }))
    }
}

/// Highest `paid_price_cents` taken: the config's own price ceiling.
const MAX_PAID_CENTS: u64 = (restock_domain::product::MAX_PRICE_DOLLARS as u64) * 100;

/// Checks a `SetBudget` request into what the task applies.
fn budget_change(r: pb::SetBudgetRequest) -> Result<BudgetChange, Status> {
    if r.reason.len() > MAX_DETAIL_BYTES {
        return Err(Status::invalid_argument(format!(
            "reason is {} bytes long; at most {MAX_DETAIL_BYTES} are kept",
            r.reason.len()
        )));
    }
    let chosen = usize::from(r.limits.is_some()) + usize::from(r.lift) + usize::from(r.use_config);
    if chosen > 1 {
        return Err(Status::invalid_argument(
            "give one of limits, lift and use_config, not several",
        ));
    }
    let limits = match (r.limits, r.lift) {
        (Some(l), _) => {
            if l.max_spend_cents.is_some_and(|c| c > MAX_PAID_CENTS) {
                return Err(Status::invalid_argument(format!(
                    "limits.max_spend_cents is more than {MAX_PAID_CENTS} cents"
                )));
            }
            let l = BudgetLimits::from(l);
            if !l.limits_anything() {
                return Err(Status::invalid_argument(
                    "limits names neither max_spend_cents nor max_purchases; to lift every limit set lift",
                ));
            }
            Some(Some(l))
        }
        (None, true) => Some(None),
        (None, false) => None,
    };
    Ok(BudgetChange {
        limits,
        use_config: r.use_config,
        reset_spend: r.reset_spend,
        reason: r.reason,
    })
}

#[cfg(test)]
mod tests {
    //! One test per status code [`to_status`] gives, so a change to the
    //! mapping is a deliberate one.

    use std::sync::Arc;

    use tonic::Code;

    use super::*;
    use crate::{store::StoreError, task::PersistError};

    fn code_and_message(e: ArbiterError) -> (Code, String) {
        let s = to_status(e);
        (s.code(), s.message().to_owned())
    }

    #[test]
    fn a_stale_lease_or_token_is_failed_precondition() {
        let (code, message) = code_and_message(ArbiterError::Slot(SlotError::Stale(
            "lease x has fencing token 2, not 1".into(),
        )));
        assert_eq!(code, Code::FailedPrecondition);
        assert_eq!(message, "lease x has fencing token 2, not 1");
    }

    #[test]
    fn an_unknown_lease_or_product_is_not_found() {
        let lease = LeaseId::parse("lease-9-x").unwrap();
        let (code, message) = code_and_message(SlotError::UnknownLease(lease).into());
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("lease-9-x"), "{message}");
        let tcin = ProductId::parse("123").unwrap();
        let (code, message) = code_and_message(SlotError::UnknownProduct(tcin).into());
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("product 123"), "{message}");
    }

    #[test]
    fn an_invalid_request_is_invalid_argument() {
        let (code, message) = code_and_message(SlotError::Invalid("outcome EXPIRED".into()).into());
        assert_eq!(
            (code, message.as_str()),
            (Code::InvalidArgument, "outcome EXPIRED")
        );
    }

    #[test]
    fn a_full_table_is_resource_exhausted() {
        let (code, message) = code_and_message(SlotError::Full("10000 products".into()).into());
        assert_eq!(
            (code, message.as_str()),
            (Code::ResourceExhausted, "10000 products")
        );
    }

    #[test]
    fn a_failed_write_is_unavailable_and_names_the_file_and_the_cause() {
        let e = PersistError::Store(StoreError::Write {
            path: "/data/state.json".into(),
            step: "fdatasync journal",
            source: std::io::Error::other("No space left on device"),
        });
        let (code, message) = code_and_message(ArbiterError::Persist(Arc::new(e)));
        assert_eq!(code, Code::Unavailable);
        assert!(message.contains("not confirmed"), "{message}");
        assert!(message.contains("/data/state.json"), "{message}");
        assert!(message.contains("No space left on device"), "{message}");
    }

    #[test]
    fn shutting_down_is_unavailable() {
        let (code, message) = code_and_message(ArbiterError::ShuttingDown);
        assert_eq!(
            (code, message.as_str()),
            (Code::Unavailable, "the arbiter is shutting down")
        );
    }
}
