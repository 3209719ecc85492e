//! The poll loop: every `--poll-interval` (jittered down by up to 10%) it asks the
//! source about every product of the watch list, top priority first, with at
//! most `--max-in-flight` requests at once and a time limit on each. A source
//! that answers many products in one request (Target's batch summaries) gets
//! them in chunks of its batch size, so a round of up to 24 products is one
//! request; others get one request per product. Each answer goes into the
//! stock book as it arrives, and a change wakes the arbiter session at once,
//! so a restock reaches the arbiter without waiting for the rest of the
//! round. The source spaces its own requests to the retailer's host
//! (`--target-max-rps`); the round takes as long as that needs.
//!
//! With a poll plan from the arbiter (see the arbiter's `plan` module), the
//! rounds (one batch request, or one request per product) follow it instead: they start at the moments it gives, one period
//! apart, so the watchers polling a product take turns. The plan is timed
//! from when it arrived, with this machine's monotonic clock. Without one
//! (planning off, or the arbiter stream down) the watcher polls on its own
//! schedule as above, and never stops.
//!
//! Answers that are not stock act by their kind (see
//! [`crate::source::RefusalKind`]); no product is ever reported out of stock
//! because of one:
//!
//! - `captcha`, `perimeterx`, `forbidden` (a block): the whole retailer is
//!   paused for `--block-cooldown`, then one probe request; while the block
//!   lasts the pause doubles (up to 16 times the cool-down). Nothing is done
//!   to get around it.
//! - `rate_limited`, `server_error`, `not_json`: the whole source backs off
//!   (`--source-backoff-initial` doubling to `--source-backoff-max`, a
//!   `Retry-After` honored up to that maximum), then one probe.
//! - `unknown_product`, `bad_request`: that product alone is polled once per
//!   `--block-cooldown`.
//! - `endpoint_gone` (410): polling stops; the error names the flag to
//!   change (`--target-endpoint`).
//!
//! The first good answer ends a block or back-off.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use std::collections::HashMap;

use restock_domain::{Catalog, ProductId, ProductSpec, Retailer};
use restock_runtime::{
    backoff::{Backoff, jitter_below},
    error::Chain,
};

use crate::{
    metrics::SourceCode,
    source::{Answer, Reaction, Refusal, SourceError, StockSource},
    state::{BlockRecord, SharedState, unix_ms},
};

/// Longest block pause, in cool-downs.
const MAX_BLOCK_DOUBLINGS: u32 = 4;

/// How the poller paces itself.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub interval: Duration,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `--block-cooldown`: the first pause after a block; also how often a
    /// product the source does not know is asked again.
    pub block_cooldown: Duration,
    /// `--products`: empty means the whole catalog.
    pub only: Vec<ProductId>,
    /// Which products of the watch list this poller's source answers for.
    pub scope: Scope,
    /// The least time between two requests to the source's host
    /// (`--target-max-rps`; `None`: unlimited). Only to know how long a
    /// round may take: the source does the spacing.
    pub request_spacing: Option<Duration>,
}

/// The products one poller (one source) answers for: the watcher runs one
/// poller per source, each with its own pause, so a block by one shop never
/// stops Target or another shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every product of the retailer (Target).
    Retailer(Retailer),
    /// The products of one Shopify shop (its host name).
    Shop(String),
}

impl Scope {
    pub fn covers(&self, id: &ProductId) -> bool {
        match self {
            Self::Retailer(r) => id.retailer() == *r,
            Self::Shop(shop) => id.shopify().is_some_and(|s| s.shop == shop),
        }
    }

    /// The source's name in status, logs and the arbiter's view.
    pub fn name(&self) -> String {
        match self {
            Self::Retailer(r) => r.as_str().to_owned(),
            Self::Shop(shop) => format!("shopify:{shop}"),
        }
    }
}

/// The latest catalog from the arbiter (`None` until the first one).
pub type CatalogWatch = watch::Receiver<Option<Arc<Catalog>>>;

/// This watcher's turn in the arbiter's poll plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTurn {
    /// A round starts at `first + k·period`.
    pub first: Instant,
    pub period: Duration,
    /// Its place among the watchers sharing the period (for the log).
    pub position: u32,
    pub of: u32,
}

impl PollTurn {
    /// The first start of a round strictly after `t`.
    pub fn next_after(&self, t: Instant) -> Instant {
        if self.first > t || self.period.is_zero() {
            return self.first;
        }
        let since = t.duration_since(self.first).as_nanos();
        let period = self.period.as_nanos();
        let k = since / period + 1;
        self.first + Duration::from_nanos(u64::try_from(k * period).unwrap_or(u64::MAX))
    }
}

/// The current poll plan (`None`: poll on our own schedule).
pub type PlanWatch = watch::Receiver<Option<PollTurn>>;

/// Polls until `stop` is cancelled. See the module documentation.
pub async fn run<S: StockSource>(
    source: Arc<S>,
    state: SharedState,
    settings: PollSettings,
    mut catalogs: CatalogWatch,
    mut plans: PlanWatch,
    stop: CancellationToken,
) {
    let slot = state.add_source(&settings.scope.name());
    let mut poller = Poller {
        slot,
        describe: source.describe(),
        source,
        state,
        backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
        settings,
        list: Vec::new(),
        blocks_in_a_row: 0,
        probes: 0,
        rare: HashMap::new(),
    };
    // `changed()` marks the value seen, so a wake-up from it is remembered
    // here rather than asked again with `has_changed()`.
    let mut catalog_changed = true;
    loop {
        if catalog_changed || catalogs.has_changed().unwrap_or(false) {
            catalog_changed = false;
            let catalog = catalogs.borrow_and_update().clone();
            if let Some(c) = catalog {
                poller.set_catalog(c);
            }
        }
        if poller.list.is_empty() {
            // Nothing to poll until a catalog (with products for us) comes.
            tokio::select! {
                () = stop.cancelled() => return,
                changed = catalogs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    catalog_changed = true;
                }
            }
            continue;
        }
        if poller.state.lock().sources[slot].stopped.is_some() {
            // 410: only a change of flags helps. Status stays up.
            stop.cancelled().await;
            return;
        }
        let round_start = Instant::now();
        let pause = poller.state.backoff_remaining(slot, round_start);
        if !pause.is_zero() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {},
            }
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = poller.round() => {},
        }
        // Until the next round: the plan's next turn, or our own schedule.
        // A plan that arrives (or ends) meanwhile decides again.
        loop {
            let turn = *plans.borrow_and_update();
            let next = next_round(
                &poller.settings,
                round_start,
                turn,
                poller.source.next_request_at(),
            );
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => break,
                changed = plans.changed() => {
                    if changed.is_err() {
                        // No more plans: our own schedule from here on.
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep_until(next_round(&poller.settings, round_start, None, None)) => break,
                        }
                    }
                }
            }
        }
    }
}

/// How early a planned turn may come before the budget's slot and still be
/// taken (the budget then holds the request that long): turns and slots
/// are computed on the same clock from periods that need not divide
/// evenly, so an exact comparison would skip whole turns on rounding.
const BUDGET_SLACK: Duration = Duration::from_millis(5);

/// When the round after the one that started at `round_start` starts.
///
/// With a plan: its first turn after `round_start`, and not before the
/// source's budget can serve it (`budget_free`, see
/// [`StockSource::next_request_at`]); a round that ran past its next turn
/// waits for the one after (the turns of the others stay where they are).
/// Without: jittered so watchers do not poll in step, but only downwards:
/// the gap between two rounds never exceeds --poll-interval, which is what
/// bounds the time from a restock to its sighting.
fn next_round(
    settings: &PollSettings,
    round_start: Instant,
    plan: Option<PollTurn>,
    budget_free: Option<Instant>,
) -> Instant {
    match plan {
        Some(turn) => {
            let mut after = round_start.max(Instant::now());
            if let Some(free) = budget_free {
                // next_after is strictly after its argument: a turn exactly
                // at the slot (less the slack) is still taken.
                let earliest = free
                    .checked_sub(BUDGET_SLACK + Duration::from_nanos(1))
                    .unwrap_or(free);
                after = after.max(earliest);
            }
            turn.next_after(after)
        }
        None => round_start + jitter_below(settings.interval, 0.1),
    }
}

struct Poller<S> {
    /// This source's place in the shared state's `sources`.
    slot: usize,
    source: Arc<S>,
    describe: String,
    state: SharedState,
    settings: PollSettings,
    backoff: Backoff,
    list: Vec<ProductSpec>,
    /// Blocks answered in a row (0: not blocked).
    blocks_in_a_row: u32,
    /// Products polled rarely (unknown to the source): not before then.
    rare: HashMap<ProductId, Instant>,
    /// Probes after a pause take the products in turn, so one product the
    /// source keeps refusing (a garbled answer) cannot keep every other
    /// product from being polled.
    probes: usize,
}

impl<S: StockSource> Poller<S> {
    fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        // A round lasts the interval, or longer when the host's budget
        // spaces its requests (at most every product in chunks).
        let scope = &self.settings.scope;
        let requests = catalog
            .products
            .products()
            .iter()
            .filter(|p| scope.covers(&p.tcin))
            .count()
            .div_ceil(self.source.batch_size().max(1));
        let budgeted = self
            .settings
            .request_spacing
            .map_or(Duration::ZERO, |d| d.saturating_mul(requests as u32));
        let round = self.settings.interval.max(budgeted);
        let min_freshness = round * 2 + self.settings.request_timeout;
        let mut list =
            self.state
                .lock()
                .book
                .set_catalog(&catalog, &self.settings.only, min_freshness);
        if list.is_empty() && self.settings.scope == Scope::Retailer(Retailer::Target) {
            warn!(
                "no product to poll: the catalog lists none that is enabled and allowed by --products"
            );
        }
        list.retain(|p| self.settings.scope.covers(&p.tcin));
        if list.is_empty() {
            // Nothing of this source is watched any more (a shop dropped
            // from the catalog): its block, if any, no longer stands for
            // anything the watcher polls.
            let metrics = self.state.metrics().clone();
            let mut st = self.state.lock();
            let source = st.source(self.slot);
            if source.block.is_some() && source.stopped.is_none() {
                source.block = None;
                source.backoff_until = None;
                metrics.set_source_gauges(&st.sources);
            }
        }
        self.list = list;
        // The polling list (and maybe a retraction) goes to the arbiter.
        self.state.report_due();
    }

    /// One request per product (or per chunk of products, for a source
    /// that answers many at once), top priority first, bounded in flight.
    ///
    /// Answers reach the stock book in priority order: an answer waits until
    /// every product above it in this round has its answer (or was skipped).
    /// The top product is reported the moment its answer arrives, and a lower
    /// product that happened to answer first cannot reach the arbiter ahead
    /// of a better one that is also in stock.
    async fn round(&mut self) {
        let source = self.source.clone();
        let state = self.state.clone();
        let (source, state) = (&source, &state);
        let limit = (!source.times_its_requests()).then_some(self.settings.request_timeout);
        let now = Instant::now();
        self.rare.retain(|_, until| *until > now);
        let products: Vec<ProductSpec> = self
            .list
            .iter()
            .filter(|p| !self.rare.contains_key(&p.tcin))
            .cloned()
            .collect();
        let mut units: Vec<Vec<ProductSpec>> = products
            .chunks(source.batch_size().max(1))
            .map(<[ProductSpec]>::to_vec)
            .collect();
        if (!self.backoff.is_reset() || self.blocks_in_a_row > 0) && !units.is_empty() {
            // Just out of a back-off or block: one probe request first, so a
            // source that still refuses gets one request, not a burst.
            let probe = units.remove(self.probes % units.len());
            self.probes = self.probes.wrapping_add(1);
            let answer = ask(source.as_ref(), state, &probe, limit).await;
            let refused = match &answer {
                Err(e) => e.pauses_source(),
                Ok(answers) => answers
                    .iter()
                    .any(|a| a.as_ref().err().is_some_and(SourceError::pauses_source)),
            };
            self.note_unit_health(&probe, &answer);
            self.apply_unit(&probe, answer);
            if refused {
                return;
            }
        }
        let slot = self.slot;
        let checks = futures::stream::iter(units.into_iter().enumerate())
            .map(|(i, unit)| async move {
                // A refusal earlier in this round pauses the rest of it.
                if !state.backoff_remaining(slot, Instant::now()).is_zero()
                    || state.lock().sources[slot].stopped.is_some()
                {
                    return (i, None);
                }
                let answer = ask(source.as_ref(), state, &unit, limit).await;
                (i, Some((unit, answer)))
            })
            .buffer_unordered(self.settings.max_in_flight);
        futures::pin_mut!(checks);
        // Answers by position; `None` until it arrives, `Some(None)` skipped.
        let mut arrived: Vec<Option<Option<UnitAnswer>>> = Vec::new();
        let mut next = 0;
        while let Some((i, done)) = checks.next().await {
            if let Some((unit, answer)) = &done {
                self.note_unit_health(unit, answer);
            }
            if arrived.len() <= i {
                arrived.resize_with(i + 1, || None);
            }
            arrived[i] = Some(done);
            while let Some(slot) = arrived.get_mut(next).and_then(Option::take) {
                if let Some((unit, answer)) = slot {
                    self.apply_unit(&unit, answer);
                }
                next += 1;
            }
        }
    }

    /// The source's health from one request's answer: a failure of the
    /// whole request counts once (for all its products), else each
    /// product's answer counts.
    fn note_unit_health(
        &mut self,
        unit: &[ProductSpec],
        answer: &Result<Vec<Answer>, SourceError>,
    ) {
        match answer {
            Err(e) => {
                let tcins: Vec<ProductId> = unit.iter().map(|p| p.tcin.clone()).collect();
                self.note_health(&tcins, &Err(e.clone()));
            }
            Ok(answers) => {
                for (p, a) in unit.iter().zip(answers) {
                    self.note_health(std::slice::from_ref(&p.tcin), a);
                }
            }
        }
    }

    /// Puts one request's answers into the stock book, in order: a failure
    /// of the whole request is every product's error; a product the source
    /// gave no answer for gets one.
    fn apply_unit(&mut self, unit: &[ProductSpec], answer: Result<Vec<Answer>, SourceError>) {
        match answer {
            Err(e) => {
                for p in unit {
                    self.apply(&p.tcin, Err(e.clone()));
                }
            }
            Ok(answers) => {
                let mut answers = answers.into_iter();
                for p in unit {
                    let a = answers.next().unwrap_or_else(|| {
                        Err(SourceError::Format(
                            "the source gave no answer for this product".into(),
                        ))
                    });
                    self.apply(&p.tcin, a);
                }
            }
        }
    }

    /// The source's health, from one answer: a block or throttle starts
    /// (or keeps) the pause, an unknown product is set aside, a retired
    /// endpoint stops polling, a good answer ends it all.
    fn note_health(&mut self, tcins: &[ProductId], answer: &Answer) {
        let now = Instant::now();
        let tcin = tcins
            .iter()
            .map(ProductId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let metrics = self.state.metrics().clone();
        let mut guard = self.state.lock();
        let st = &mut *guard;
        // A product the answer does not list (`not_listed`) is still an
        // answer of the source: it answers again.
        let answered = match answer {
            Ok(_) => true,
            Err(SourceError::Refused(r)) if r.kind.reaction() == Reaction::Keep => {
                metrics.source_refused(r.kind);
                true
            }
            Err(_) => false,
        };
        let refusal = match answer {
            _ if answered => {
                let source = st.source(self.slot);
                if let Some(b) = source.block.take() {
                    info!(source = %self.describe, kind = b.kind.as_str(), "the source answers again: {} over", b.kind);
                }
                self.backoff.reset();
                self.blocks_in_a_row = 0;
                source.backoff_until = None;
                metrics.set_source_gauges(&st.sources);
                return;
            }
            Err(SourceError::Refused(r)) => r,
            Ok(_) | Err(_) => return,
        };
        metrics.source_refused(refusal.kind);
        match refusal.kind.reaction() {
            Reaction::Keep => {}
            Reaction::Block | Reaction::Throttle => {
                // Answers to requests sent before the pause began do not
                // lengthen it again.
                if st.source(self.slot).backoff_until.is_some_and(|u| u > now) {
                    return;
                }
                let block = refusal.kind.reaction() == Reaction::Block;
                let pause = if block {
                    let doublings = self.blocks_in_a_row.min(MAX_BLOCK_DOUBLINGS);
                    self.blocks_in_a_row += 1;
                    self.settings.block_cooldown * 2u32.pow(doublings)
                } else {
                    let mut pause = self.backoff.next_delay();
                    if let Some(asked) = refusal.retry_after {
                        pause = pause.max(asked.min(self.settings.backoff_max));
                    }
                    pause
                };
                let source = st.source(self.slot);
                source.backoff_until = Some(now + pause);
                set_block(&mut source.block, refusal);
                metrics.set_source_gauges(&st.sources);
                drop(guard);
                let kind = refusal.kind.as_str();
                if block {
                    warn!(
                        source = %self.describe,
                        tcin = %tcin,
                        kind,
                        status = refusal.status,
                        tracking_url = refusal.tracking_url.as_deref().unwrap_or(""),
                        pause_s = pause.as_secs(),
                        "the source blocks us ({kind}, HTTP {}): polling paused for {:?}, then one probe; nothing is done to get around it (see the README, \"Against the real Target\")",
                        refusal.status, pause
                    );
                } else {
                    warn!(
                        source = %self.describe,
                        tcin = %tcin,
                        kind,
                        status = refusal.status,
                        backoff_ms = pause.as_millis() as u64,
                        "the source refuses us ({kind}, HTTP {}): backing off; products keep their last known stock state",
                        refusal.status
                    );
                }
            }
            Reaction::RareProduct => {
                let cooldown = self.settings.block_cooldown;
                drop(guard);
                let mut new = false;
                for t in tcins {
                    new |= self.rare.insert(t.clone(), now + cooldown).is_none();
                }
                if new {
                    warn!(
                        source = %self.describe,
                        tcin = %tcin,
                        kind = refusal.kind.as_str(),
                        error = %refusal,
                        "the source does not answer for this product ({}): asking again once per --block-cooldown ({cooldown:?})",
                        refusal.kind
                    );
                }
            }
            Reaction::StopEndpoint => {
                let why = format!(
                    "{refusal}: the endpoint was retired; polling stopped. Choose another with --target-endpoint (RESTOCK_TARGET_ENDPOINT) and restart"
                );
                let source = st.source(self.slot);
                source.stopped = Some(why.clone());
                set_block(&mut source.block, refusal);
                metrics.set_source_gauges(&st.sources);
                drop(guard);
                error!(source = %self.describe, kind = "endpoint_gone", "{why}");
            }
        }
    }

    /// Puts one answer into the stock book; wakes the session when the
    /// arbiter must hear of it.
    fn apply(&mut self, tcin: &ProductId, answer: Answer) {
        let recorded = self.state.lock().book.record(
            tcin,
            answer.as_ref().copied(),
            Instant::now(),
            unix_ms(),
        );
        match &answer {
            Ok(_) => {}
            Err(SourceError::Refused(r))
                if !matches!(r.kind.reaction(), Reaction::RareProduct | Reaction::Keep) => {}
            Err(e) if recorded.first_error => warn!(
                source = %self.describe,
                tcin = %tcin,
                error = %Chain(e),
                "poll failed; the product keeps its last known stock state"
            ),
            Err(e) => {
                debug!(source = %self.describe, tcin = %tcin, error = %Chain(e), "poll failed again")
            }
        }
        if recorded.report_due {
            self.state.report_due();
        }
    }
}

/// The products of one request and what the source said about them.
type UnitAnswer = (Vec<ProductSpec>, Result<Vec<Answer>, SourceError>);

/// Records the source-wide block (or throttle) of `refusal`, keeping the
/// start of an episode that goes on with the same kind.
fn set_block(slot: &mut Option<BlockRecord>, refusal: &Refusal) {
    match slot {
        Some(b) if b.kind == refusal.kind => {
            b.detail = refusal.to_string();
            b.tracking_url.clone_from(&refusal.tracking_url);
        }
        _ => {
            *slot = Some(BlockRecord {
                kind: refusal.kind,
                detail: refusal.to_string(),
                since_unix_ms: unix_ms(),
                tracking_url: refusal.tracking_url.clone(),
            });
        }
    }
}

/// One request to the source about `unit`, within `limit` and timed (a
/// source that times its own requests gets `None`: it may wait for its
/// host's budget, and counts and times its requests itself). The source
/// counts the answers it gets by HTTP status; a request this limit cuts
/// short never gets one, so it is counted here.
async fn ask<S: StockSource>(
    source: &S,
    state: &SharedState,
    unit: &[ProductSpec],
    limit: Option<Duration>,
) -> Result<Vec<Answer>, SourceError> {
    let Some(limit) = limit else {
        return source.check_many(unit).await;
    };
    let started = Instant::now();
    let answer = match tokio::time::timeout(limit, source.check_many(unit)).await {
        Ok(a) => a,
        Err(_) => {
            let retailer = unit.first().map_or(Retailer::Target, |p| p.tcin.retailer());
            state.metrics().source_answer(retailer, SourceCode::Timeout);
            Err(SourceError::Timeout(limit))
        }
    };
    state
        .metrics()
        .source_request_took(started.elapsed().as_secs_f64());
    answer
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{
            Mutex,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use super::*;
    use crate::{
        catalog::tests::catalog,
        source::{RefusalKind, Sighting},
    };

    /// A source whose answers are scripted per call; when the script runs
    /// out it repeats the last answer. Records call times and concurrency.
    struct FakeSource {
        script: Mutex<VecDeque<Result<Sighting, SourceError>>>,
        last: Mutex<Result<Sighting, SourceError>>,
        calls: Mutex<Vec<(Instant, String)>>,
        in_flight: AtomicUsize,
        max_seen: AtomicUsize,
        delay: Duration,
        /// What it says of its request budget (`next_request_at`).
        budget_free: Mutex<Option<Instant>>,
    }

    impl FakeSource {
        fn new(script: Vec<Result<Sighting, SourceError>>, delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                last: Mutex::new(script.last().cloned().expect("a script")),
                script: Mutex::new(script.into()),
                calls: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                max_seen: AtomicUsize::new(0),
                delay,
                budget_free: Mutex::new(None),
            })
        }

        fn calls(&self) -> Vec<(Instant, String)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl StockSource for FakeSource {
        fn describe(&self) -> String {
            "fake".into()
        }

        fn next_request_at(&self) -> Option<Instant> {
            *self.budget_free.lock().unwrap()
        }

        async fn check(&self, product: &ProductSpec) -> Result<Sighting, SourceError> {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), product.tcin.to_string()));
            let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_seen.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let next = self.script.lock().unwrap().pop_front();
            match next {
                Some(a) => {
                    *self.last.lock().unwrap() = a.clone();
                    a
                }
                None => self.last.lock().unwrap().clone(),
            }
        }
    }

    fn settings() -> PollSettings {
        PollSettings {
            scope: Scope::Retailer(Retailer::Target),
            interval: Duration::from_secs(1),
            max_in_flight: 2,
            request_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_secs(4),
            backoff_max: Duration::from_secs(16),
            block_cooldown: Duration::from_secs(60),
            only: Vec::new(),
            request_spacing: None,
        }
    }

    fn start(
        source: Arc<FakeSource>,
        products: &[(&str, u64)],
        settings: PollSettings,
    ) -> (SharedState, CancellationToken) {
        let (state, stop, plans) = start_planned(source, products, settings);
        // No plan ever comes, as with planning off.
        tokio::spawn(async move {
            let _keep = plans;
            std::future::pending::<()>().await;
        });
        (state, stop)
    }

    fn start_planned(
        source: Arc<FakeSource>,
        products: &[(&str, u64)],
        settings: PollSettings,
    ) -> (
        SharedState,
        CancellationToken,
        watch::Sender<Option<PollTurn>>,
    ) {
        let state = SharedState::new();
        let catalog = Arc::new(catalog(products, 9_000));
        // The catalog arrives after the poller started, as from the stream.
        let (tx, rx) = watch::channel(None);
        let (plan_tx, plan_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                run(source, state, settings, rx, plan_rx, stop).await;
            }
        });
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send_replace(Some(catalog));
            std::future::pending::<()>().await;
        });
        (state, stop, plan_tx)
    }

    #[test]
    fn a_turn_comes_once_a_period_from_its_first() {
        let t0 = Instant::now();
        let ms = |m| Duration::from_millis(m);
        let turn = PollTurn {
            first: t0 + ms(50),
            period: ms(300),
            position: 1,
            of: 3,
        };
        assert_eq!(turn.next_after(t0), t0 + ms(50));
        assert_eq!(turn.next_after(t0 + ms(50)), t0 + ms(350));
        assert_eq!(turn.next_after(t0 + ms(349)), t0 + ms(350));
        assert_eq!(turn.next_after(t0 + ms(1_000)), t0 + ms(1_250));
    }

    /// A planned turn the source's budget cannot serve yet is skipped for
    /// the first one it can: the round then lands on the plan's phase, not
    /// wherever the budget would have delayed it to (which would keep a
    /// watcher on the phase of its first request).
    #[tokio::test(start_paused = true)]
    async fn a_planned_round_waits_for_the_first_turn_the_budget_can_serve() {
        let src = FakeSource::new(vec![IN], Duration::ZERO);
        let mut s = settings();
        s.interval = Duration::from_millis(300);
        let (_state, stop, plans) = start_planned(src.clone(), &[("1", 0)], s);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        let ms = |m| Duration::from_millis(m);
        // The budget is spent until t0 + 500; the plan's turns are at
        // t0 + 120 + k·300. Turns at 120 and 420 cannot be served; 720 can,
        // and so can every turn after it. A turn only a hair before the
        // budget's slot (rounding) is taken, not skipped.
        *src.budget_free.lock().unwrap() = Some(t0 + ms(500));
        plans.send_replace(Some(PollTurn {
            first: t0 + ms(120),
            period: ms(300),
            position: 1,
            of: 2,
        }));
        tokio::time::sleep(ms(750)).await;
        *src.budget_free.lock().unwrap() = Some(t0 + ms(1_021));
        tokio::time::sleep(ms(700)).await;
        let rounds: Vec<u128> = src
            .calls()
            .iter()
            .filter(|(at, _)| *at >= t0)
            .map(|(at, _)| at.duration_since(t0).as_millis())
            .collect();
        assert_eq!(
            rounds,
            [720, 1_020, 1_320],
            "the first turn the budget can serve, then the plan"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_follow_the_plan_and_go_back_to_their_own_schedule_without_one() {
        let src = FakeSource::new(vec![IN], Duration::ZERO);
        let mut s = settings();
        s.interval = Duration::from_millis(300);
        let (_state, stop, plans) = start_planned(src.clone(), &[("1", 0)], s);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t0 = Instant::now();
        let ms = |m| Duration::from_millis(m);
        // The plan: turns at t0 + 120 + k·300.
        plans.send_replace(Some(PollTurn {
            first: t0 + ms(120),
            period: ms(300),
            position: 1,
            of: 2,
        }));
        tokio::time::sleep(ms(1_000)).await;
        let planned: Vec<u128> = src
            .calls()
            .iter()
            .filter(|(at, _)| *at >= t0)
            .map(|(at, _)| at.duration_since(t0).as_millis())
            .collect();
        assert_eq!(planned, [120, 420, 720], "rounds at the plan's turns");
        // The stream goes down: own schedule again, never stopping.
        plans.send_replace(None);
        let t1 = Instant::now();
        tokio::time::sleep(ms(2_000)).await;
        let own = src.calls().iter().filter(|(at, _)| *at > t1).count();
        assert!((6..=8).contains(&own), "{own} rounds in 2 s at 300 ms");
        stop.cancel();
    }

    const IN: Result<Sighting, SourceError> = Ok(Sighting {
        in_stock: true,
        price: None,
        variant: None,
    });

    fn throttled() -> Result<Sighting, SourceError> {
        Err(SourceError::refused(RefusalKind::RateLimited, 429))
    }

    #[tokio::test(start_paused = true)]
    async fn polls_every_product_each_interval_with_bounded_concurrency() {
        let src = FakeSource::new(vec![IN], Duration::from_millis(100));
        let products = [("1", 0), ("2", 0), ("3", 0), ("4", 0), ("5", 0)];
        let (state, stop) = start(src.clone(), &products, settings());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        stop.cancel();
        let calls = src.calls();
        // Rounds start at 0 and then every 0.9–1 s: 4 rounds of 5 products.
        assert!((15..=20).contains(&calls.len()), "{} calls", calls.len());
        assert_eq!(src.max_seen.load(Ordering::SeqCst), 2);
        // Top priority first in each round.
        assert_eq!(calls[0].1, "1");
        let st = state.lock().book.poll_statuses();
        assert!(st.iter().all(|p| p.in_stock && p.polls >= 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_pauses_the_whole_source_then_it_recovers() {
        // First answer: 429. Then in stock.
        let src = FakeSource::new(vec![throttled(), IN], Duration::ZERO);
        let mut s = settings();
        s.max_in_flight = 1;
        let (state, stop) = start(src.clone(), &[("1", 0), ("2", 0)], s);
        let mut registry = restock_runtime::metrics::Registry::default();
        state.metrics().register(&mut registry);
        let backoff_active = || {
            restock_runtime::metrics::render(&registry, restock_runtime::metrics::Format::Text)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("restock_source_backoff_active ")?
                        .parse::<i64>()
                        .ok()
                })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // One request, refused; the second product was skipped.
        assert_eq!(src.calls().len(), 1);
        assert_eq!(backoff_active(), Some(1));
        let left = state.backoff_remaining(0, Instant::now());
        assert!(
            left >= Duration::from_millis(1_800) && left <= Duration::from_secs(4),
            "{left:?}"
        );
        {
            let st = state.lock();
            let polls = st.book.poll_statuses();
            assert!(polls[0].last_error.contains("429"));
            assert!(!polls[0].in_stock);
        }
        // Nothing is asked during the pause.
        tokio::time::sleep(left - Duration::from_millis(150)).await;
        assert_eq!(src.calls().len(), 1);
        // After it, polling resumes and the back-off clears.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(src.calls().len() >= 3);
        assert_eq!(state.backoff_remaining(0, Instant::now()), Duration::ZERO);
        assert!(state.lock().book.poll_statuses().iter().all(|p| p.in_stock));
        assert_eq!(backoff_active(), Some(0));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_double_the_pause_and_honor_retry_after() {
        let src = FakeSource::new(
            vec![
                throttled(),
                throttled(),
                Err(SourceError::Refused(crate::source::Refusal {
                    retry_after: Some(Duration::from_secs(15)),
                    ..match SourceError::refused(RefusalKind::ServerError, 503) {
                        SourceError::Refused(r) => r,
                        _ => unreachable!(),
                    }
                })),
                IN,
            ],
            Duration::ZERO,
        );
        let mut s = settings();
        s.max_in_flight = 1;
        let (state, stop) = start(src.clone(), &[("1", 0)], s);
        let mut pauses = Vec::new();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let left = state.backoff_remaining(0, Instant::now());
            pauses.push(left);
            tokio::time::sleep(left + Duration::from_millis(5)).await;
        }
        stop.cancel();
        assert!(pauses[0] <= Duration::from_secs(4), "{pauses:?}");
        assert!(
            pauses[1] >= Duration::from_millis(3_900) && pauses[1] <= Duration::from_secs(8),
            "{pauses:?}"
        );
        assert!(
            pauses[2] >= Duration::from_millis(14_900),
            "Retry-After 15s: {pauses:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_times_out_without_changing_the_state() {
        let src = FakeSource::new(vec![IN], Duration::from_secs(5));
        let (state, stop) = start(src.clone(), &[("1", 0)], settings());
        let mut registry = restock_runtime::metrics::Registry::default();
        state.metrics().register(&mut registry);
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.cancel();
        let st = state.lock().book.poll_statuses();
        assert!(st[0].last_error.contains("timed out"), "{st:?}");
        assert!(!st[0].in_stock);
        assert_eq!(st[0].errors, 1);
        // The poller's own limit cut it short: counted as a timeout, timed.
        let text =
            restock_runtime::metrics::render(&registry, restock_runtime::metrics::Format::Text);
        assert!(
            text.contains(
                "restock_source_requests_total{code=\"timeout\",retailer=\"target\"} 1\n"
            ) && text.contains("restock_source_request_seconds_count 1\n"),
            "{text}"
        );
    }

    /// A source where product "1" answers slowly and the others fast.
    struct SlowTop;

    impl StockSource for SlowTop {
        fn describe(&self) -> String {
            "slow top".into()
        }
        async fn check(&self, product: &ProductSpec) -> Result<Sighting, SourceError> {
            if product.tcin.as_str() == "1" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            IN
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_reach_the_book_in_priority_order() {
        let state = SharedState::new();
        let catalog = Arc::new(catalog(&[("1", 0), ("2", 0), ("3", 0)], 9_000));
        let (_tx, rx) = watch::channel(Some(catalog));
        let stop = CancellationToken::new();
        let mut s = settings();
        s.max_in_flight = 3;
        let (_plans, plan_rx) = watch::channel(None);
        tokio::spawn(run(
            Arc::new(SlowTop),
            state.clone(),
            s,
            rx,
            plan_rx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // "2" and "3" answered, but wait for "1".
        let r = state.lock().book.take_report(Instant::now(), false);
        assert!(r.observations.is_empty(), "{r:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = state.lock().book.take_report(Instant::now(), false);
        let ids: Vec<&str> = r.observations.iter().map(|o| o.tcin.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3"]);
        stop.cancel();
    }

    fn captcha() -> Result<Sighting, SourceError> {
        Err(SourceError::Refused(crate::source::Refusal {
            tracking_url: Some("https://redsky.target.com/captcha?trackingId=t1".into()),
            ..match SourceError::refused(RefusalKind::Captcha, 403) {
                SourceError::Refused(r) => r,
                _ => unreachable!(),
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_captcha_pauses_for_the_cooldown_doubling_while_it_lasts() {
        // Blocked twice, then answers again.
        let src = FakeSource::new(vec![captcha(), captcha(), IN], Duration::ZERO);
        let mut s = settings();
        s.max_in_flight = 1;
        let (state, stop) = start(src.clone(), &[("1", 0), ("2", 0)], s);
        let mut registry = restock_runtime::metrics::Registry::default();
        state.metrics().register(&mut registry);
        let gauge = |kind: &str| {
            let text =
                restock_runtime::metrics::render(&registry, restock_runtime::metrics::Format::Text);
            text.contains(&format!("restock_source_blocked{{kind=\"{kind}\"}} 1\n"))
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(src.calls().len(), 1, "polling stops at the first block");
        {
            let st = state.lock();
            let b = st.sources[0].block.as_ref().expect("blocked");
            assert_eq!(b.kind, RefusalKind::Captcha);
            assert!(b.detail.contains("trackingId=t1"), "{}", b.detail);
            assert_eq!(st.book.poll_statuses()[0].error_kind, "captcha");
        }
        assert!(gauge("captcha"));
        // The cool-down (60 s): nothing asked; then one probe, blocked again.
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(src.calls().len(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(src.calls().len(), 2, "one probe");
        // Doubled: 120 s.
        tokio::time::sleep(Duration::from_secs(118)).await;
        assert_eq!(src.calls().len(), 2);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(src.calls().len() >= 3);
        assert!(
            state.lock().sources[0].block.is_none(),
            "over at the good answer"
        );
        assert!(!gauge("captcha"));
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_not_listed_answer_ends_a_block_and_keeps_the_product_polled() {
        // A shop that walled us, then lists its products without the
        // watched one: the shop answers again, and the product is asked
        // every round.
        let not_listed = || {
            Err(SourceError::Refused(Refusal {
                kind: RefusalKind::NotListed,
                status: 200,
                retry_after: None,
                tracking_url: None,
                detail: "variant 1 is not in the shop's product list".into(),
            }))
        };
        let src = FakeSource::new(vec![captcha(), not_listed()], Duration::ZERO);
        let mut s = settings();
        s.max_in_flight = 1;
        let (state, stop) = start(src.clone(), &[("1", 0)], s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(state.lock().sources[0].block.is_some());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(
            state.lock().sources[0].block.is_none(),
            "the list's answer ends the block"
        );
        let calls = src.calls().len();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(src.calls().len() >= calls + 4, "polled every round");
        assert_eq!(
            state.lock().book.poll_statuses()[0].error_kind,
            "not_listed"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_product_is_polled_rarely_and_410_stops_polling() {
        struct Mixed;
        impl StockSource for Mixed {
            fn describe(&self) -> String {
                "mixed".into()
            }
            async fn check(&self, product: &ProductSpec) -> Result<Sighting, SourceError> {
                match product.tcin.as_str() {
                    "404" => Err(SourceError::refused(RefusalKind::UnknownProduct, 404)),
                    _ => IN,
                }
            }
        }
        let state = SharedState::new();
        let catalog = Arc::new(catalog(&[("404", 0), ("2", 0)], 9_000));
        let (_tx, rx) = watch::channel(Some(catalog));
        let (_plans, plan_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        tokio::spawn(run(
            Arc::new(Mixed),
            state.clone(),
            settings(),
            rx,
            plan_rx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        let polls = state.lock().book.poll_statuses();
        assert_eq!(polls[0].polls, 1, "404: once per cool-down");
        assert_eq!(polls[0].error_kind, "unknown_product");
        assert!(polls[1].polls >= 10, "the others at full cadence");
        // Its cool-down (60 s) over: asked again at the next round.
        tokio::time::sleep(Duration::from_secs(52)).await;
        assert_eq!(state.lock().book.poll_statuses()[0].polls, 2);
        stop.cancel();

        let src = FakeSource::new(
            vec![Err(SourceError::refused(RefusalKind::EndpointGone, 410))],
            Duration::ZERO,
        );
        let (state, stop) = start(src.clone(), &[("1", 0), ("2", 0)], settings());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            src.calls().len(),
            1,
            "a retired endpoint is not asked again"
        );
        let why = state.lock().sources[0].stopped.clone().expect("stopped");
        assert!(why.contains("--target-endpoint"), "{why}");
        stop.cancel();
    }

    /// Answers up to two products per request (as the summaries answer 24);
    /// "404" is unknown to it. Its first request is blocked when told.
    struct Batch {
        requests: Mutex<Vec<(Instant, Vec<String>)>>,
        block_next: std::sync::atomic::AtomicBool,
    }

    impl StockSource for Batch {
        fn describe(&self) -> String {
            "batch".into()
        }
        async fn check(&self, _: &ProductSpec) -> Result<Sighting, SourceError> {
            panic!("a batch source is asked with check_many")
        }
        fn batch_size(&self) -> usize {
            2
        }
        async fn check_many(&self, products: &[ProductSpec]) -> Result<Vec<Answer>, SourceError> {
            self.requests.lock().unwrap().push((
                Instant::now(),
                products.iter().map(|p| p.tcin.to_string()).collect(),
            ));
            if self.block_next.swap(false, Ordering::SeqCst) {
                return Err(captcha().unwrap_err());
            }
            Ok(products
                .iter()
                .map(|p| match p.tcin.as_str() {
                    "404" => Err(SourceError::refused(RefusalKind::UnknownProduct, 200)),
                    _ => IN,
                })
                .collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_source_gets_one_request_per_chunk_and_answers_per_product() {
        let src = Arc::new(Batch {
            requests: Mutex::new(Vec::new()),
            block_next: std::sync::atomic::AtomicBool::new(true),
        });
        let state = SharedState::new();
        let catalog = Arc::new(catalog(
            &[("1", 0), ("2", 0), ("404", 0), ("4", 0), ("5", 0)],
            9_000,
        ));
        let (_tx, rx) = watch::channel(Some(catalog));
        let (_plans, plan_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let mut s = settings();
        s.max_in_flight = 1;
        tokio::spawn(run(
            src.clone(),
            state.clone(),
            s,
            rx,
            plan_rx,
            stop.clone(),
        ));
        let requests = || -> Vec<Vec<String>> {
            src.requests
                .lock()
                .unwrap()
                .iter()
                .map(|(_, r)| r.clone())
                .collect()
        };
        let polls = |t: &str| {
            state
                .lock()
                .book
                .poll_statuses()
                .into_iter()
                .find(|p| p.tcin.as_str() == t)
                .unwrap()
        };
        // The first request is blocked: the whole source pauses at once, and
        // both its products carry the block; nothing else is asked.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(requests(), [vec!["1", "2"]]);
        assert_eq!(
            state.lock().sources[0].block.as_ref().map(|b| b.kind),
            Some(RefusalKind::Captcha)
        );
        assert_eq!(polls("1").error_kind, "captcha");
        assert_eq!(polls("2").error_kind, "captcha");
        assert_eq!(polls("4").polls, 0);
        // Counted once, not once per product.
        let mut registry = restock_runtime::metrics::Registry::default();
        state.metrics().register(&mut registry);
        let text =
            restock_runtime::metrics::render(&registry, restock_runtime::metrics::Format::Text);
        assert!(
            text.contains("restock_source_refusals_total{kind=\"captcha\"} 1\n"),
            "{text}"
        );
        // After the cool-down: one probe request, then the rest in chunks of
        // two, top priority first.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            requests(),
            [vec!["1", "2"], vec!["1", "2"], vec!["404", "4"], vec!["5"]]
        );
        assert!(state.lock().sources[0].block.is_none());
        // The product the source does not know is that product's error alone.
        assert_eq!(polls("404").error_kind, "unknown_product");
        for t in ["1", "2", "4", "5"] {
            assert!(polls(t).in_stock && polls(t).error_kind.is_empty(), "{t}");
        }
        // Next round: without it (polled rarely), two requests for four.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(requests()[4..6], [vec!["1", "2"], vec!["4", "5"]]);
        assert_eq!(polls("404").polls, 1);
        stop.cancel();
    }

    /// The default `check_many` asks one product at a time and stops at a
    /// block: nothing more goes to a source that blocks.
    #[tokio::test(start_paused = true)]
    async fn the_default_check_many_stops_at_a_block() {
        let products: Vec<ProductSpec> = ["1", "2", "3"]
            .iter()
            .map(|t| ProductSpec::plain(ProductId::parse(t).unwrap()))
            .collect();
        let src = FakeSource::new(vec![IN, captcha(), IN], Duration::ZERO);
        let answers = src.check_many(&products).await.unwrap();
        assert_eq!(src.calls().len(), 2, "the third is not asked");
        assert!(answers[0].is_ok());
        assert_eq!(answers[1].as_ref().unwrap_err().kind_str(), "captcha");
        assert_eq!(answers[2].as_ref().unwrap_err().kind_str(), "captcha");
        let src = FakeSource::new(vec![captcha(), IN], Duration::ZERO);
        let e = src.check_many(&products).await.unwrap_err();
        assert_eq!(
            e.kind_str(),
            "captcha",
            "a block of the first is the call's"
        );
        assert_eq!(src.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn products_limits_the_watch_list() {
        let src = FakeSource::new(vec![IN], Duration::ZERO);
        let mut s = settings();
        s.only = vec![ProductId::parse("2").unwrap()];
        let (_state, stop) = start(src.clone(), &[("1", 0), ("2", 0)], s);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop.cancel();
        assert!(src.calls().iter().all(|(_, t)| t == "2"));
    }
}
