//! A scripted arbiter, for what a correct arbiter never does on demand: a
//! second grant while a checkout runs, a revocation while renewals work,
//! releases that fail with UNAVAILABLE. The test pushes messages down the
//! watcher's stream and reads back every call the watcher made.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::Stream;
use restock_proto::v1::{
    self as pb,
    arbiter_message::Kind,
    purchase_arbiter_server::{PurchaseArbiter, PurchaseArbiterServer},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One call the watcher made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Report(pb::StockReport),
    Renew(String),
    Release {
        lease_id: String,
        outcome: pb::Outcome,
        detail: String,
    },
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    stream: Option<mpsc::Sender<Result<pb::ArbiterMessage, Status>>>,
    /// Releases still to refuse with UNAVAILABLE.
    fail_releases: u32,
}

/// See the module documentation.
#[derive(Clone)]
pub struct FakeArbiter {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeArbiter {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let svc = Service {
            inner: inner.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PurchaseArbiterServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self { url, inner }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn fail_releases(&self, n: u32) {
        self.inner.lock().unwrap().fail_releases = n;
    }

    /// Pushes a message down the watcher's current stream.
    pub async fn push(&self, kind: Kind) {
        let tx = self
            .inner
            .lock()
            .unwrap()
            .stream
            .clone()
            .expect("a watcher stream is open");
        tx.send(Ok(pb::ArbiterMessage { kind: Some(kind) }))
            .await
            .expect("the stream takes the message");
    }

    pub fn connected(&self) -> bool {
        self.inner
            .lock()
            .unwrap()
            .stream
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }
}

/// A lease for product `tcin` held by `watcher`.
pub fn lease(id: &str, tcin: &str, watcher: &str, token: u64, ttl: Duration) -> pb::Lease {
    pb::Lease {
        lease_id: id.into(),
        tcin: tcin.into(),
        watcher_id: watcher.into(),
        fencing_token: token,
        ttl_ms: ttl.as_millis() as u64,
        remaining_ms: ttl.as_millis() as u64,
        ..Default::default()
    }
}

struct Service {
    inner: Arc<Mutex<Inner>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PurchaseArbiter for Service {
    async fn acquire_purchase(
        &self,
        _: Request<pb::AcquirePurchaseRequest>,
    ) -> Result<Response<pb::AcquirePurchaseResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let r = request.into_inner();
        self.inner
            .lock()
            .unwrap()
            .calls
            .push(Call::Renew(r.lease_id.clone()));
        Ok(Response::new(pb::RenewLeaseResponse {
            lease: Some(lease(
                &r.lease_id,
                "100",
                "w1",
                r.fencing_token,
                Duration::from_secs(3),
            )),
        }))
    }

    async fn release_purchase(
        &self,
        request: Request<pb::ReleasePurchaseRequest>,
    ) -> Result<Response<pb::ReleasePurchaseResponse>, Status> {
        let r = request.into_inner();
        let mut st = self.inner.lock().unwrap();
        st.calls.push(Call::Release {
            lease_id: r.lease_id,
            outcome: pb::Outcome::try_from(r.outcome).unwrap_or_default(),
            detail: r.detail,
        });
        if st.fail_releases > 0 {
            st.fail_releases -= 1;
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
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        tx.send(Ok(pb::ArbiterMessage {
            kind: Some(Kind::Catalog(pb::Catalog {
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
            })),
        }))
        .await
        .unwrap();
        self.inner.lock().unwrap().stream = Some(tx);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                inner.lock().unwrap().calls.push(Call::Report(r));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchEventsStream = BoxStream<pb::Event>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reset_product(
        &self,
        _: Request<pb::ResetProductRequest>,
    ) -> Result<Response<pb::ResetProductResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn set_paused(
        &self,
        _: Request<pb::SetPausedRequest>,
    ) -> Result<Response<pb::SetPausedResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reload_config(
        &self,
        _: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}
