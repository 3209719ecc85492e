//! One watcher's `StreamStock` stream, driven by the test: it names the
//! watcher, reads the catalog, reports stock and reads what the arbiter
//! pushes (grants, revocations), for tests that play a watcher by hand.

use std::time::Duration;

use restock_proto::v1::{
    self as pb, ArbiterMessage, StockObservation, StockReport, arbiter_message::Kind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::ArbiterEndpoint;

/// See the module documentation.
#[derive(Debug)]
pub struct WatcherStream {
    pub id: String,
    tx: mpsc::Sender<StockReport>,
    pub inbound: Streaming<ArbiterMessage>,
    pub catalog: pb::Catalog,
}

impl WatcherStream {
    /// Opens the stream, names the watcher, and reads the catalog.
    pub async fn open(arbiter: &impl ArbiterEndpoint, id: &str) -> Self {
        let mut c = arbiter.client().await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(StockReport {
            watcher_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut inbound = c
            .stream_stock(ReceiverStream::new(rx))
            .await
            .expect("StreamStock")
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), inbound.message())
            .await
            .expect("catalog within 5s")
            .expect("stream ok")
            .expect("a first message");
        let catalog = match first.kind {
            Some(Kind::Catalog(c)) => c,
            other => panic!("first message should be the catalog, got {other:?}"),
        };
        Self {
            id: id.into(),
            tx,
            inbound,
            catalog,
        }
    }

    /// Reports products in stock (`true`) or out of stock (`false`).
    pub async fn report(&self, items: &[(&str, bool)]) {
        let observations = items
            .iter()
            .map(|(t, s)| StockObservation {
                tcin: (*t).into(),
                in_stock: *s,
                price_cents: None,
                observed_at_unix_ms: 0,
            })
            .collect();
        self.tx
            .send(StockReport {
                watcher_id: String::new(),
                observations,
                polling: Vec::new(),
                poll_interval_ms: 0,
                source_block: None,
            })
            .await
            .expect("send report");
    }

    /// The next pushed message, within `limit`; `None` on timeout.
    pub async fn next(&mut self, limit: Duration) -> Option<Result<ArbiterMessage, tonic::Status>> {
        match tokio::time::timeout(limit, self.inbound.message()).await {
            Err(_) => None,
            Ok(Ok(Some(m))) => Some(Ok(m)),
            Ok(Ok(None)) => Some(Err(tonic::Status::cancelled("stream ended"))),
            Ok(Err(s)) => Some(Err(s)),
        }
    }

    /// Waits for a grant, skipping other messages.
    pub async fn next_grant(&mut self, limit: Duration) -> pb::Lease {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None => panic!("watcher {}: no grant within {limit:?}", self.id),
                Some(Ok(ArbiterMessage {
                    kind: Some(Kind::Grant(l)),
                })) => return l,
                Some(Ok(_)) => continue,
                Some(Err(s)) => panic!("watcher {}: stream failed: {s}", self.id),
            }
        }
    }

    /// Asserts that no grant arrives within `limit`.
    pub async fn expect_no_grant(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                None => return,
                Some(Ok(ArbiterMessage {
                    kind: Some(Kind::Grant(l)),
                })) => panic!("watcher {}: unexpected grant {l:?}", self.id),
                Some(Ok(_)) => continue,
                Some(Err(s)) => panic!("watcher {}: stream failed: {s}", self.id),
            }
        }
    }
}
