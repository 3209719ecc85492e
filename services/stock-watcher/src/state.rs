//! The watcher's shared state: the stock book, the arbiter link, each
//! source's back-off and the checkout in progress, behind one cloneable handle that the
//! poller, the arbiter session, the checkout runner and the status service
//! share.
//!
//! The metrics handles ride along, outside the lock.
//!
//! A `std::sync::Mutex`, not a tokio one: every critical section is a few
//! field reads or writes and nothing awaits while the lock is held.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use restock_domain::{FencingToken, LeaseId, ProductId, SourceBlock, SourceBlockKind};
use tokio::{sync::Notify, time::Instant};

use crate::{book::StockBook, metrics::WatcherMetrics, source::RefusalKind};

/// The source-wide block (or throttle, or retired endpoint) in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub kind: RefusalKind,
    /// The last such answer, with the captcha tracking URL when there is one.
    pub detail: String,
    pub since_unix_ms: u64,
    /// With a captcha: the tracking URL the retailer gave (last answer's).
    pub tracking_url: Option<String>,
}

/// What the arbiter was last told of the sources' block on one stream: a
/// report is due when it differs (see [`Inner::source_block`]).
pub type BlockToken = Option<(usize, RefusalKind, u64, Option<Instant>, Option<String>)>;

/// One stock source of the watcher (Target, or one Shopify shop): its
/// pause and why. Each source is polled, paused and probed on its own, so a
/// block by one shop never pauses Target or another shop.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    /// `target` or `shopify:<shop>`: the name status, logs and the arbiter
    /// show.
    pub name: String,
    /// The source asked us to pause until then.
    pub backoff_until: Option<Instant>,
    /// Why the source is paused (or stopped), until its next good answer.
    pub block: Option<BlockRecord>,
    /// Polling stopped for good (410 Gone): why, naming the flag to change.
    pub stopped: Option<String>,
}

impl SourceHealth {
    /// Time left of this source's pause (zero when none).
    pub fn backoff_remaining(&self, now: Instant) -> Duration {
        self.backoff_until
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }
}

fn block_kind(kind: RefusalKind) -> Option<SourceBlockKind> {
    Some(match kind {
        RefusalKind::Captcha => SourceBlockKind::Captcha,
        RefusalKind::PerimeterX => SourceBlockKind::PerimeterX,
        RefusalKind::Forbidden => SourceBlockKind::Forbidden,
        RefusalKind::EndpointGone => SourceBlockKind::EndpointGone,
        RefusalKind::RateLimited => SourceBlockKind::RateLimited,
        RefusalKind::ServerError => SourceBlockKind::ServerError,
        RefusalKind::NotJson => SourceBlockKind::NotJson,
        RefusalKind::BotWall => SourceBlockKind::BotWall,
        RefusalKind::PasswordPage => SourceBlockKind::PasswordPage,
        RefusalKind::SecurityRejection => SourceBlockKind::SecurityRejection,
        RefusalKind::BadRequest | RefusalKind::UnknownProduct | RefusalKind::NotListed => {
            return None;
        }
    })
}

impl Inner {
    /// The source-wide refusal in force, as the arbiter is told it on the
    /// stream (`None`: every source answers), and the token that says
    /// whether it changed since the last report. With several sources
    /// refused at once, the worst: a block before a back-off, then the
    /// first source. Per-product refusals are never source-wide.
    pub fn source_block(&self, now: Instant) -> (Option<SourceBlock>, BlockToken) {
        let Some(i) = self.worst_source() else {
            return (None, None);
        };
        let source = &self.sources[i];
        let Some((b, kind)) = source
            .block
            .as_ref()
            .and_then(|b| Some((b, block_kind(b.kind)?)))
        else {
            return (None, None);
        };
        // Stopped for good (410) has no pause end; a pause over is 0 too.
        let until = source.backoff_until.filter(|_| source.stopped.is_none());
        let paused_until_unix_ms = until
            .map(|u| u.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
            .map_or(0, |left| unix_ms() + left.as_millis() as u64);
        let block = SourceBlock {
            kind,
            since_unix_ms: b.since_unix_ms,
            paused_until_unix_ms,
            tracking_url: b.tracking_url.as_deref().map(Into::into),
            source: source.name.as_str().into(),
        };
        let token = Some((i, b.kind, b.since_unix_ms, until, b.tracking_url.clone()));
        (Some(block), token)
    }

    /// The slot of the source refused worst: a block before a back-off,
    /// then the first source; `None` while every source answers.
    pub fn worst_source(&self) -> Option<usize> {
        self.sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, block_kind(s.block.as_ref()?.kind)?)))
            .min_by_key(|(i, kind)| (!kind.is_block(), *i))
            .map(|(i, _)| i)
    }

    /// The source at `slot` (registered by [`SharedState::add_source`]).
    pub fn source(&mut self, slot: usize) -> &mut SourceHealth {
        &mut self.sources[slot]
    }
}

/// Wall-clock milliseconds since the epoch (display only).
pub use restock_domain::timestamp::now_unix_ms as unix_ms;

/// Everything the status call shows, and the stock book.
#[derive(Debug, Default)]
pub struct Inner {
    pub book: StockBook,
    pub arbiter_connected: bool,
    /// The arbiter URL of the current (or last) stream; empty before one.
    pub arbiter_url: String,
    pub arbiter_connected_since_unix_ms: u64,
    pub reconnects: u64,
    /// Every stock source, in the order they were added (Target first).
    pub sources: Vec<SourceHealth>,
    pub checkout: Option<CheckoutRecord>,
    pub checkouts_purchased: u64,
    pub checkouts_failed: u64,
}

/// The checkout in progress, as the status call shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutRecord {
    pub tcin: ProductId,
    pub lease_id: LeaseId,
    pub token: FencingToken,
    pub started_at_unix_ms: u64,
    /// Successful renewals so far.
    pub renewals: u64,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct SharedState {
    inner: Arc<Mutex<Inner>>,
    report_due: Arc<Notify>,
    /// Beside the lock, not under it: recording is atomic already.
    metrics: WatcherMetrics,
}

impl SharedState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the state. A panic elsewhere while the lock was held leaves the
    /// data usable (it is plain counters and maps), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watcher's metrics (registered for `/metrics` by `run`).
    pub fn metrics(&self) -> &WatcherMetrics {
        &self.metrics
    }

    /// Wakes the arbiter session: a stock report is due.
    pub fn report_due(&self) {
        self.report_due.notify_one();
    }

    /// Completes when [`Self::report_due`] was called (a call made while
    /// nobody waits is kept for the next wait).
    pub async fn wait_report_due(&self) {
        self.report_due.notified().await;
    }

    /// Adds a stock source named `name` (`target`, `shopify:<shop>`) and
    /// returns its slot; a name added before gets its old slot.
    pub fn add_source(&self, name: &str) -> usize {
        let mut st = self.lock();
        if let Some(i) = st.sources.iter().position(|s| s.name == name) {
            return i;
        }
        st.sources.push(SourceHealth {
            name: name.to_owned(),
            ..SourceHealth::default()
        });
        st.sources.len() - 1
    }

    /// Time left of the back-off of the source at `slot` (zero when none).
    pub fn backoff_remaining(&self, slot: usize, now: Instant) -> Duration {
        self.lock()
            .sources
            .get(slot)
            .map_or(Duration::ZERO, |s| s.backoff_remaining(now))
    }
}
