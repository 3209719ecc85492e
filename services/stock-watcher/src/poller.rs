//! The poll loop: every `--poll-interval` (jittered down by up to 10%) it asks the
//! source about every product of the watch list, top priority first, with at
//! most `--max-in-flight` requests at once and a time limit on each. Each
//! answer goes into the stock book as it arrives, and a change wakes the
//! arbiter session at once, so a restock reaches the arbiter without waiting
//! for the rest of the round.
//!
//! With a poll plan from the arbiter (see the arbiter's `plan` module), the
//! rounds follow it instead: they start at the moments it gives, one period
//! apart, so the watchers polling a product take turns. The plan is timed
//! from when it arrived, with this machine's monotonic clock. Without one
//! (planning off, or the arbiter stream down) the watcher polls on its own
//! schedule as above, and never stops.
//!
//! 403, 429, 435 and 5xx pause the whole source (one back-off shared by all
//! products, doubling while refusals go on, reset by the first good answer);
//! no product is reported out of stock because of them.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use restock_domain::{Catalog, ProductSpec, Tcin};
use restock_runtime::{
    backoff::{Backoff, jitter_below},
    error::Chain,
};

use crate::{
    metrics::SourceCode,
    source::{SourceError, StockSource},
    state::{SharedState, unix_ms},
};

/// How the poller paces itself.
#[derive(Debug, Clone)]
pub struct PollSettings {
    pub interval: Duration,
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// `--products`: empty means the whole catalog.
    pub only: Vec<Tcin>,
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
    let mut poller = Poller {
        describe: source.describe(),
        source,
        state,
        backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
        settings,
        list: Vec::new(),
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
        let round_start = Instant::now();
        let pause = poller.state.backoff_remaining(round_start);
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
            let next = next_round(&poller.settings, round_start, turn);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => break,
                changed = plans.changed() => {
                    if changed.is_err() {
                        // No more plans: our own schedule from here on.
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep_until(next_round(&poller.settings, round_start, None)) => break,
                        }
                    }
                }
            }
        }
    }
}

/// When the round after the one that started at `round_start` starts.
///
/// With a plan: its first turn after `round_start`; a round that ran past
/// its next turn waits for the one after (the turns of the others stay
/// where they are). Without: jittered so watchers do not poll in step, but
/// only downwards: the gap between two rounds never exceeds
/// --poll-interval, which is what bounds the time from a restock to its
/// sighting.
fn next_round(settings: &PollSettings, round_start: Instant, plan: Option<PollTurn>) -> Instant {
    match plan {
        Some(turn) => turn.next_after(round_start.max(Instant::now())),
        None => round_start + jitter_below(settings.interval, 0.1),
    }
}

struct Poller<S> {
    source: Arc<S>,
    describe: String,
    state: SharedState,
    settings: PollSettings,
    backoff: Backoff,
    list: Vec<ProductSpec>,
}

impl<S: StockSource> Poller<S> {
    fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        let min_freshness = self.settings.interval * 2 + self.settings.request_timeout;
        let list = self
            .state
            .lock()
            .book
            .set_catalog(&catalog, &self.settings.only, min_freshness);
        if list.is_empty() {
            warn!(
                "no product to poll: the catalog lists none that is enabled and allowed by --products"
            );
        }
        self.list = list;
        // The polling list (and maybe a retraction) goes to the arbiter.
        self.state.report_due();
    }

    /// One request per product, top priority first, bounded in flight.
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
        let limit = self.settings.request_timeout;
        let mut tcins: Vec<Tcin> = self.list.iter().map(|p| p.tcin.clone()).collect();
        if !self.backoff.is_reset() && !tcins.is_empty() {
            // Just out of a back-off: one probe first, so a source that
            // still refuses gets one request, not a burst.
            let probe = tcins.remove(0);
            let answer = ask(source.as_ref(), state, &probe, limit).await;
            let refused = matches!(answer, Err(SourceError::Throttled { .. }));
            self.note_health(&probe, &answer);
            self.apply(&probe, answer);
            if refused {
                return;
            }
        }
        let checks = futures::stream::iter(tcins.into_iter().enumerate())
            .map(|(i, tcin)| async move {
                // A refusal earlier in this round pauses the rest of it.
                if !state.backoff_remaining(Instant::now()).is_zero() {
                    return (i, None);
                }
                let answer = ask(source.as_ref(), state, &tcin, limit).await;
                (i, Some((tcin, answer)))
            })
            .buffer_unordered(self.settings.max_in_flight);
        futures::pin_mut!(checks);
        // Answers by position; `None` until it arrives, `Some(None)` skipped.
        let mut arrived: Vec<Option<Option<(Tcin, Answer)>>> = Vec::new();
        let mut next = 0;
        while let Some((i, done)) = checks.next().await {
            if let Some((tcin, answer)) = &done {
                self.note_health(tcin, answer);
            }
            if arrived.len() <= i {
                arrived.resize_with(i + 1, || None);
            }
            arrived[i] = Some(done);
            while let Some(slot) = arrived.get_mut(next).and_then(Option::take) {
                if let Some((tcin, answer)) = slot {
                    self.apply(&tcin, answer);
                }
                next += 1;
            }
        }
    }

    /// The source's health, from one answer: a refusal starts (or keeps) the
    /// back-off, a good answer ends it.
    fn note_health(&mut self, tcin: &Tcin, answer: &Answer) {
        let now = Instant::now();
        let mut st = self.state.lock();
        match answer {
            Ok(_) => {
                if !self.backoff.is_reset() {
                    info!(source = %self.describe, "the source answers again: back-off over");
                    self.backoff.reset();
                }
                st.backoff_until = None;
                self.state.metrics().set_backoff_active(false);
            }
            Err(SourceError::Throttled {
                status,
                retry_after,
            }) => {
                // Answers to requests sent before the pause began do not
                // lengthen it again.
                if st.backoff_until.is_some_and(|u| u > now) {
                    return;
                }
                let mut pause = self.backoff.next_delay();
                if let Some(asked) = retry_after {
                    pause = pause.max((*asked).min(self.settings.backoff_max));
                }
                st.backoff_until = Some(now + pause);
                self.state.metrics().set_backoff_active(true);
                warn!(
                    source = %self.describe,
                    tcin = %tcin,
                    status,
                    backoff_ms = pause.as_millis() as u64,
                    "the source refuses us (HTTP {status}): backing off; products keep their last known stock state"
                );
            }
            Err(_) => {}
        }
    }

    /// Puts one answer into the stock book; wakes the session when the
    /// arbiter must hear of it.
    fn apply(&mut self, tcin: &Tcin, answer: Answer) {
        let recorded = self.state.lock().book.record(
            tcin,
            answer.as_ref().copied(),
            Instant::now(),
            unix_ms(),
        );
        match &answer {
            Err(SourceError::Throttled { .. }) | Ok(_) => {}
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

type Answer = Result<crate::source::Sighting, SourceError>;

/// One request to the source, within `limit`, timed. The source counts the
/// answers it gets by HTTP status; a request this limit cuts short never
/// gets one, so it is counted here.
async fn ask<S: StockSource>(
    source: &S,
    state: &SharedState,
    tcin: &Tcin,
    limit: Duration,
) -> Answer {
    let started = Instant::now();
    let answer = match tokio::time::timeout(limit, source.check(tcin)).await {
        Ok(a) => a,
        Err(_) => {
            state.metrics().source_answer(SourceCode::Timeout);
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
    use crate::{catalog::tests::catalog, source::Sighting};

    /// A source whose answers are scripted per call; when the script runs
    /// out it repeats the last answer. Records call times and concurrency.
    struct FakeSource {
        script: Mutex<VecDeque<Result<Sighting, SourceError>>>,
        last: Mutex<Result<Sighting, SourceError>>,
        calls: Mutex<Vec<(Instant, String)>>,
        in_flight: AtomicUsize,
        max_seen: AtomicUsize,
        delay: Duration,
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

        async fn check(&self, tcin: &Tcin) -> Result<Sighting, SourceError> {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), tcin.to_string()));
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
            interval: Duration::from_secs(1),
            max_in_flight: 2,
            request_timeout: Duration::from_millis(500),
            backoff_initial: Duration::from_secs(4),
            backoff_max: Duration::from_secs(16),
            only: Vec::new(),
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
    });

    fn throttled() -> Result<Sighting, SourceError> {
        Err(SourceError::Throttled {
            status: 429,
            retry_after: None,
        })
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
        let left = state.backoff_remaining(Instant::now());
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
        assert_eq!(state.backoff_remaining(Instant::now()), Duration::ZERO);
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
                Err(SourceError::Throttled {
                    status: 503,
                    retry_after: Some(Duration::from_secs(15)),
                }),
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
            let left = state.backoff_remaining(Instant::now());
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
            text.contains("restock_source_requests_total{code=\"timeout\"} 1\n")
                && text.contains("restock_source_request_seconds_count 1\n"),
            "{text}"
        );
    }

    /// A source where product "1" answers slowly and the others fast.
    struct SlowTop;

    impl StockSource for SlowTop {
        fn describe(&self) -> String {
            "slow top".into()
        }
        async fn check(&self, tcin: &Tcin) -> Result<Sighting, SourceError> {
            if tcin.as_str() == "1" {
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

    #[tokio::test(start_paused = true)]
    async fn products_limits_the_watch_list() {
        let src = FakeSource::new(vec![IN], Duration::ZERO);
        let mut s = settings();
        s.only = vec![Tcin::parse("2").unwrap()];
        let (_state, stop) = start(src.clone(), &[("1", 0), ("2", 0)], s);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stop.cancel();
        assert!(src.calls().iter().all(|(_, t)| t == "2"));
    }
}
