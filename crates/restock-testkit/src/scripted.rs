//! A scripted arbiter, for what a correct arbiter never does on demand: a
//! second grant while a checkout runs, a revocation while renewals work,
//! releases that fail with UNAVAILABLE, a history with a product switch or
//! overlapping leases, a status that shows a purchase stuck.
//!
//! It serves `restock.v1.PurchaseArbiter` (and, unless told not to, gRPC
//! health) in this process, on a `127.0.0.1:0` listener it binds itself,
//! until dropped. What it answers:
//! - `StreamStock`: the scripted catalog, then whatever the test pushes
//!   ([`ScriptedArbiter::push`]) down the newest stream;
//! - `RenewLease`: the pushed grant with that id, with its whole TTL left
//!   (NOT_FOUND for any other);
//! - `ReleasePurchase`: released, unless told to fail the next few;
//! - `GetStatus`: the scripted answers in turn, the last one forever;
//! - `WatchEvents{from}`: the scripted events with a sequence >= `from`
//!   (none for 0, "only new ones"), then the stream stays open;
//! - anything else: UNIMPLEMENTED.
//!
//! It can play a replica that does not lead ([`ScriptedArbiter::step_down`]):
//! its open streams (the watcher's and `WatchEvents`) end and every call but `GetStatus` is answered as a
//! follower answers (`UNAVAILABLE`, the leader in the `restock-leader`
//! trailer), until [`ScriptedArbiter::lead`].
//!
//! Every call is recorded ([`ScriptedArbiter::calls`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
};

use restock_proto::v1::{
    self as pb,
    arbiter_message::Kind,
    purchase_arbiter_server::{PurchaseArbiter, PurchaseArbiterServer},
};
use tokio::{net::TcpListener, sync::mpsc, sync::oneshot};
use tokio_stream::{
    Stream,
    wrappers::{ReceiverStream, TcpListenerStream},
};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;

use crate::{ArbiterEndpoint, init_test_logs};

/// One call made to the scripted arbiter.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// A report on a `StreamStock` stream (the first one names the watcher).
    Report(pb::StockReport),
    /// `RenewLease` of this lease id.
    Renew(String),
    Release(Release),
    GetStatus,
    WatchEvents {
        from_sequence: u64,
    },
}

/// A `ReleasePurchase` call.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub lease_id: String,
    pub outcome: pb::Outcome,
    pub detail: String,
}

/// What the scripted arbiter answers; see the module documentation.
#[derive(Debug, Clone)]
pub struct Script {
    catalog: pb::Catalog,
    statuses: Vec<pb::GetStatusResponse>,
    events: Vec<pb::Event>,
    /// The health of `restock.v1.PurchaseArbiter` (the server as a whole
    /// is SERVING); `None`: no health service at all.
    health: Option<ServingStatus>,
}

impl Default for Script {
    /// One product, 100 ("Cards"), a 3 s lease TTL, no statuses, no events,
    /// health SERVING.
    fn default() -> Self {
        Self {
            catalog: pb::Catalog {
                products: vec![pb::CatalogProduct {
                    tcin: "100".into(),
                    name: "Cards".into(),
                    priority: 1,
                    max_price_cents: 0,
                    quantity: 1,
                    enabled: true,
                }],
                lease_ttl_ms: 3_000,
                stock_ttl_ms: 10_000,
                test_mode: false,
            },
            statuses: Vec::new(),
            events: Vec::new(),
            health: Some(ServingStatus::Serving),
        }
    }
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog a watcher's stream opens with.
    pub fn catalog(mut self, catalog: pb::Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// `GetStatus` answers these in turn, then the last one forever.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = pb::GetStatusResponse>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// The history `WatchEvents` serves.
    pub fn events(mut self, events: impl IntoIterator<Item = pb::Event>) -> Self {
        self.events = events.into_iter().collect();
        self
    }

    /// The health the arbiter service reports (the server stays SERVING).
    pub fn arbiter_health(mut self, status: ServingStatus) -> Self {
        self.health = Some(status);
        self
    }

    /// Serves no health service at all.
    pub fn without_health(mut self) -> Self {
        self.health = None;
        self
    }
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<Call>,
    /// The newest watcher stream, for [`ScriptedArbiter::push`].
    stream: Option<mpsc::Sender<Result<pb::ArbiterMessage, Status>>>,
    /// Grants pushed, by lease id: what `RenewLease` answers.
    granted: HashMap<String, pb::Lease>,
    /// Releases still to refuse with UNAVAILABLE.
    fail_releases: u32,
    /// `Some`: a replica that does not lead, naming this leader (if any).
    follower_of: Option<Option<String>>,
    /// Open `WatchEvents` streams: dropping them ends the streams.
    event_streams: Vec<mpsc::Sender<Result<pb::Event, Status>>>,
    status_calls: usize,
}

type Shared = Arc<Mutex<Recorded>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Recorded> {
    // A test that panicked while holding it has failed already; what it
    // recorded is still worth reading.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// See the module documentation. Cheap to clone; the server stops when the
/// last clone is dropped.
#[derive(Debug, Clone)]
pub struct ScriptedArbiter {
    addr: SocketAddr,
    shared: Shared,
    _stop: Arc<oneshot::Sender<()>>,
}

impl ScriptedArbiter {
    /// Serves `script` on `127.0.0.1:0`.
    pub async fn start(script: Script) -> Self {
        init_test_logs();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let shared = Shared::default();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health_service = match script.health {
            None => None,
            Some(status) => {
                reporter
                    .set_service_status(pb::purchase_arbiter_server::SERVICE_NAME, status)
                    .await;
                Some(health_service)
            }
        };
        let service = Service {
            script,
            shared: shared.clone(),
        };
        let router = tonic::transport::Server::builder()
            .add_optional_service(health_service)
            .add_service(PurchaseArbiterServer::new(service));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            // Keeps the health status alive while serving.
            let _reporter = reporter;
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("the scripted arbiter serves");
        });
        Self {
            addr,
            shared,
            _stop: Arc::new(stop),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared).calls.clone()
    }

    /// The reports received so far, in order.
    pub fn reports(&self) -> Vec<pb::StockReport> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Report(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The releases asked for so far (accepted or refused), in order.
    pub fn releases(&self) -> Vec<Release> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Release(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Whether `RenewLease` was called for `lease_id` among `calls`.
    pub fn renewed_in(calls: &[Call], lease_id: &str) -> bool {
        calls
            .iter()
            .any(|c| matches!(c, Call::Renew(id) if id == lease_id))
    }

    /// Whether `RenewLease` has been called for `lease_id`.
    pub fn renewed(&self, lease_id: &str) -> bool {
        Self::renewed_in(&self.calls(), lease_id)
    }

    /// Refuses the next `n` releases with UNAVAILABLE (recording them).
    pub fn fail_releases(&self, n: u32) {
        lock(&self.shared).fail_releases = n;
    }

    /// Whether a watcher's stream is open.
    pub fn connected(&self) -> bool {
        lock(&self.shared)
            .stream
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// Pushes a message down the newest watcher stream; a grant is then
    /// what `RenewLease` answers for its lease id.
    pub async fn push(&self, kind: Kind) {
        let tx = {
            let mut r = lock(&self.shared);
            if let Kind::Grant(lease) = &kind {
                r.granted.insert(lease.lease_id.clone(), lease.clone());
            }
            r.stream.clone().expect("a watcher stream is open")
        };
        tx.send(Ok(pb::ArbiterMessage { kind: Some(kind) }))
            .await
            .expect("the stream takes the message");
    }

    /// Plays a replica that does not lead (naming `leader`, if any): the
    /// open watcher stream ends, and every call but `GetStatus` is answered
    /// `UNAVAILABLE` with the leader's URL in the `restock-leader` trailer.
    pub fn step_down(&self, leader: Option<&str>) {
        let mut r = lock(&self.shared);
        r.follower_of = Some(leader.map(str::to_owned));
        r.stream = None;
        r.event_streams.clear();
    }

    /// Leads (again): answers every call as scripted.
    pub fn lead(&self) {
        lock(&self.shared).follower_of = None;
    }

    /// Makes `RenewLease` answer for `lease` without pushing a grant: a new
    /// leader that read the lease from the shared store.
    pub fn adopt(&self, lease: pb::Lease) {
        lock(&self.shared)
            .granted
            .insert(lease.lease_id.clone(), lease);
    }

    /// Pushes a grant of `lease`.
    pub async fn grant(&self, lease: pb::Lease) {
        self.push(Kind::Grant(lease)).await;
    }

    /// Pushes a revocation of the lease `lease_id`.
    pub async fn revoke(&self, lease_id: &str, fencing_token: u64, reason: &str) {
        self.push(Kind::Revoked(pb::LeaseRevoked {
            lease_id: lease_id.into(),
            fencing_token,
            reason: reason.into(),
        }))
        .await;
    }
}

impl ArbiterEndpoint for ScriptedArbiter {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

struct Service {
    script: Script,
    shared: Shared,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The follower's answer while [`ScriptedArbiter::step_down`] holds.
fn unless_leading(shared: &Shared) -> Result<(), Status> {
    match &lock(shared).follower_of {
        None => Ok(()),
        Some(leader) => Err(restock_runtime::leader::not_leader(leader.as_deref())),
    }
}

fn not_scripted<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "not part of the scripted arbiter's script",
    ))
}

#[tonic::async_trait]
impl PurchaseArbiter for Service {
    async fn acquire_purchase(
        &self,
        _: Request<pb::AcquirePurchaseRequest>,
    ) -> Result<Response<pb::AcquirePurchaseResponse>, Status> {
        not_scripted()
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let r = request.into_inner();
        lock(&self.shared)
            .calls
            .push(Call::Renew(r.lease_id.clone()));
        unless_leading(&self.shared)?;
        let rec = lock(&self.shared);
        match rec.granted.get(&r.lease_id) {
            Some(lease) => Ok(Response::new(pb::RenewLeaseResponse {
                lease: Some(pb::Lease {
                    remaining_ms: lease.ttl_ms,
                    ..lease.clone()
                }),
            })),
            None => Err(Status::not_found(format!(
                "lease {} was never granted",
                r.lease_id
            ))),
        }
    }

    async fn release_purchase(
        &self,
        request: Request<pb::ReleasePurchaseRequest>,
    ) -> Result<Response<pb::ReleasePurchaseResponse>, Status> {
        let r = request.into_inner();
        lock(&self.shared).calls.push(Call::Release(Release {
            lease_id: r.lease_id,
            outcome: pb::Outcome::try_from(r.outcome).unwrap_or_default(),
            detail: r.detail,
        }));
        unless_leading(&self.shared)?;
        let mut rec = lock(&self.shared);
        if rec.fail_releases > 0 {
            rec.fail_releases -= 1;
            return Err(Status::unavailable("state write failed"));
        }
        Ok(Response::new(pb::ReleasePurchaseResponse {
            released: true,
            product_state: pb::ProductState::Ready as i32,
        }))
    }

    type StreamStockStream = BoxStream<pb::ArbiterMessage>;

    async fn stream_stock(
        &self,
        request: Request<Streaming<pb::StockReport>>,
    ) -> Result<Response<Self::StreamStockStream>, Status> {
        unless_leading(&self.shared)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(pb::ArbiterMessage {
            kind: Some(Kind::Catalog(self.script.catalog.clone())),
        }))
        .await
        .expect("room for the catalog");
        lock(&self.shared).stream = Some(tx);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                lock(&shared).calls.push(Call::Report(r));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let i = {
            let mut rec = lock(&self.shared);
            rec.calls.push(Call::GetStatus);
            rec.status_calls += 1;
            rec.status_calls - 1
        };
        let statuses = &self.script.statuses;
        match statuses.get(i.min(statuses.len().saturating_sub(1))) {
            Some(s) => Ok(Response::new(s.clone())),
            None => not_scripted(),
        }
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = request.into_inner().from_sequence;
        lock(&self.shared).calls.push(Call::WatchEvents {
            from_sequence: from,
        });
        unless_leading(&self.shared)?;
        let history: Vec<pb::Event> = self
            .script
            .events
            .iter()
            .filter(|e| from > 0 && e.sequence >= from)
            .cloned()
            .collect();
        // The history, then open until a step-down drops the sender.
        let (tx, rx) = mpsc::channel(history.len().max(1));
        for e in history {
            tx.try_send(Ok(e)).expect("room for the history");
        }
        lock(&self.shared).event_streams.push(tx);
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as Self::WatchEventsStream
        ))
    }

    async fn reset_product(
        &self,
        _: Request<pb::ResetProductRequest>,
    ) -> Result<Response<pb::ResetProductResponse>, Status> {
        not_scripted()
    }

    async fn set_paused(
        &self,
        _: Request<pb::SetPausedRequest>,
    ) -> Result<Response<pb::SetPausedResponse>, Status> {
        not_scripted()
    }

    async fn reload_config(
        &self,
        _: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        not_scripted()
    }

    async fn set_budget(
        &self,
        _: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        not_scripted()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::lease;

    #[tokio::test]
    async fn a_pushed_grant_reaches_the_stream_and_is_renewed_and_released() {
        let arbiter = ScriptedArbiter::start(Script::new()).await;
        let mut w = crate::WatcherStream::open(&arbiter, "w1").await;
        assert_eq!(w.catalog.products[0].tcin, "100");
        assert!(arbiter.connected());

        arbiter
            .grant(lease("lease-1", "100", "w1", 7, Duration::from_secs(3)))
            .await;
        let pushed = w.next_grant(Duration::from_secs(5)).await;
        assert_eq!(pushed.fencing_token, 7);
        let mut c = arbiter.client().await;
        let renewed = c
            .renew_lease(pb::RenewLeaseRequest {
                lease_id: "lease-1".into(),
                fencing_token: 7,
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .unwrap();
        assert_eq!(renewed.remaining_ms, 3_000);
        let unknown = c
            .renew_lease(pb::RenewLeaseRequest {
                lease_id: "lease-9".into(),
                fencing_token: 9,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        arbiter.fail_releases(1);
        let release = pb::ReleasePurchaseRequest {
            lease_id: "lease-1".into(),
            fencing_token: 7,
            outcome: pb::Outcome::Purchased as i32,
            detail: "done".into(),
            paid_price_cents: None,
        };
        let refused = c.release_purchase(release.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(
            c.release_purchase(release)
                .await
                .unwrap()
                .into_inner()
                .released
        );
        assert_eq!(arbiter.releases().len(), 2);
        assert!(arbiter.renewed("lease-1"));
        assert_eq!(arbiter.reports()[0].watcher_id, "w1");
    }

    #[tokio::test]
    async fn statuses_are_answered_in_turn_and_events_from_a_sequence() {
        let history = crate::History::starting(2, 1_000)
            .granted("100", "lease-1", 1)
            .released("100", "lease-1", 1);
        let arbiter = ScriptedArbiter::start(
            Script::new()
                .statuses([
                    crate::StatusSnapshot::three().build(),
                    crate::StatusSnapshot::three().sequence(3).build(),
                ])
                .events(history.into_events()),
        )
        .await;
        let seqs: Vec<u64> = [
            arbiter.status().await,
            arbiter.status().await,
            arbiter.status().await,
        ]
        .iter()
        .map(|s| s.last_event_sequence)
        .collect();
        assert_eq!(seqs, [1, 3, 3]);
        let events = arbiter.events().await;
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [2, 3]
        );
    }
}
