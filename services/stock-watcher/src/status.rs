//! The `restock.v1.StockWatcher` gRPC service: this watcher's arbiter link,
//! the last poll of every product, the source's back-off and the checkout in
//! progress, read from the shared state. The state holds domain values; this
//! is where they become the protocol's.

use restock_domain::{Price, WatcherId};
use restock_proto::v1::{self as pb, stock_watcher_server::StockWatcher};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    book::ProductPoll,
    config::CheckoutKind,
    state::{CheckoutRecord, SharedState},
};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StatusService {
    pub state: SharedState,
    pub watcher_id: WatcherId,
    pub arbiter: String,
    pub source: String,
    pub checkout_kind: CheckoutKind,
}

impl StatusService {
    /// The status as the protocol shows it.
    pub fn snapshot(&self) -> pb::GetWatcherStatusResponse {
        let now = Instant::now();
        let st = self.state.lock();
        // The source refused worst (see `Inner::worst_source`), named when
        // the watcher has several.
        let worst = st.worst_source().map(|i| &st.sources[i]);
        let backoff_remaining_ms = st
            .sources
            .iter()
            .map(|s| s.backoff_remaining(now))
            .max()
            .unwrap_or_default()
            .as_millis() as u64;
        let named = |text: &str, name: &str| {
            if st.sources.len() > 1 {
                format!("{name}: {text}")
            } else {
                text.to_owned()
            }
        };
        pb::GetWatcherStatusResponse {
            watcher_id: self.watcher_id.to_string(),
            // The replica streamed with (the leader), else the URLs given.
            arbiter: if st.arbiter_url.is_empty() {
                self.arbiter.clone()
            } else {
                st.arbiter_url.clone()
            },
            arbiter_connected: st.arbiter_connected,
            arbiter_connected_since_unix_ms: if st.arbiter_connected {
                st.arbiter_connected_since_unix_ms
            } else {
                0
            },
            reconnects: st.reconnects,
            // Target's source, and each shop polled.
            source: std::iter::once(self.source.clone())
                .chain(
                    st.sources
                        .iter()
                        .filter(|s| s.name.starts_with("shopify:"))
                        .map(|s| s.name.clone()),
                )
                .collect::<Vec<_>>()
                .join("; "),
            backoff_remaining_ms,
            products: st.book.poll_statuses().iter().map(poll_status).collect(),
            checkout: st.checkout.as_ref().map(checkout_status),
            checkouts_purchased: st.checkouts_purchased,
            checkouts_failed: st.checkouts_failed,
            checkout_kind: self.checkout_kind.as_str().to_owned(),
            source_blocked: worst
                .and_then(|s| s.block.as_ref())
                .map(|b| b.kind.as_str().to_owned())
                .unwrap_or_default(),
            source_blocked_detail: match worst {
                Some(s) => match (&s.stopped, &s.block) {
                    (Some(why), _) => named(why, &s.name),
                    (None, Some(b)) => named(&b.detail, &s.name),
                    (None, None) => String::new(),
                },
                None => String::new(),
            },
            source_blocked_since_unix_ms: worst
                .and_then(|s| s.block.as_ref())
                .map_or(0, |b| b.since_unix_ms),
            source_stopped: st.sources.iter().any(|s| s.stopped.is_some()),
        }
    }
}

fn poll_status(p: &ProductPoll) -> pb::PollStatus {
    pb::PollStatus {
        tcin: p.tcin.to_string(),
        in_stock: p.in_stock,
        price_cents: p.price.map(Price::cents),
        last_poll_unix_ms: p.last_poll_unix_ms,
        last_error: p.last_error.clone(),
        polls: p.polls,
        errors: p.errors,
        error_kind: p.error_kind.to_owned(),
        price_unknown: p.price_unknown,
    }
}

fn checkout_status(c: &CheckoutRecord) -> pb::CheckoutStatus {
    pb::CheckoutStatus {
        tcin: c.tcin.to_string(),
        lease_id: c.lease_id.to_string(),
        fencing_token: c.token.get(),
        started_at_unix_ms: c.started_at_unix_ms,
        renewals: c.renewals,
    }
}

#[tonic::async_trait]
impl StockWatcher for StatusService {
    async fn get_watcher_status(
        &self,
        _request: Request<pb::GetWatcherStatusRequest>,
    ) -> Result<Response<pb::GetWatcherStatusResponse>, Status> {
        Ok(Response::new(self.snapshot()))
    }
}
