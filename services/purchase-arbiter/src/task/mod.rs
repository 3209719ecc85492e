//! The one task that owns the [`Arbiter`]: every decision is made here, one
//! command at a time, so reading the state, deciding, persisting and
//! answering form one critical section without a lock.
//!
//! Commands arrive on a channel and are applied in batches: everything that
//! is waiting is applied, the state is written once (group commit), and only
//! then do the answers, grants and events go out. No answer that depends on a
//! change is sent before that change is on disk.
//!
//! # When a write fails
//!
//! The batch's changes stay in memory (undoing a grant would mean undoing
//! everything decided after it), but nothing shows them until a write holds
//! them: its callers get UNAVAILABLE ("not confirmed"); its events are not
//! published (`WatchEvents` history stops at the last published event);
//! its grants and revocations are held back. The task is then *unwritten*:
//! it takes no new command until [`WRITE_RETRY`] has passed (a failing
//! disk costs a few writes a second, not a busy loop), and every batch
//! after that writes before it answers anything, so no answer (a status, a
//! refusal naming the holder, a retried `AcquirePurchase`) shows an
//! unwritten lease. The first write that
//! succeeds holds everything: the held events are published in order and
//! the held pushes delivered, a grant only if its lease is still the
//! current one. So a crash can never make a follower or a watcher have seen
//! a grant, and its fencing token, that the restarted arbiter does not know
//! and would hand out again.
//!
//! Changes no answer depends on (stock reports, watchers joining and
//! leaving) are written lazily, within [`LAZY_FLUSH`], and their events go
//! out at once: nothing they describe survives a restart anyway (sightings
//! and connections are not saved). `GetStatus` answers after its batch's
//! write; `WatchEvents` answers at once, from what has been published.
//!
//! # Metrics
//!
//! The task records the arbiter's metrics (`crate::metrics`) where it
//! publishes: grants, releases and expiries as their events are published,
//! refusals when their answers go out, the slot's gauges after a batch
//! whose write succeeded. So a scrape shows what is durable, like an
//! answer, and never a grant that a crash could take back. Per batch this
//! costs a few atomic stores; stock reports add one add per batch.
//!
//! # Why a task and not a `Mutex<Arbiter>`
//!
//! mini-redis shares its state behind a `std::sync::Mutex` because its
//! critical section is a few map operations and never awaits. Here the
//! critical section is "decide, write to disk, answer", and the write is an
//! fdatasync: a millisecond or more on a good disk, far more on a busy one.
//! A `std::sync::Mutex` cannot be held across that await; a
//! `tokio::sync::Mutex` could, but then every caller waits for the one
//! before it *and its fsync*, so N concurrent calls cost N fsyncs in a row.
//! One owning task turns the queue into batches instead: everything that
//! arrived while a write was in flight is applied together and shares the
//! next write, so fifty concurrent acquires cost one or two fsyncs, not
//! fifty. It also puts the order of decisions, answers, pushes to watchers
//! and published events in one place, with no lock to forget or to hold in
//! the wrong order.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    sync::{broadcast, mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use restock_runtime::error::Chain;

use restock_domain::{
    BudgetLimits, BudgetStatus, Catalog, Event, EventKind, FencingToken, LeaseId, Observation,
    Outcome, Price, PriorityList, ProductId, ProductState, SourceBlock, Status, WatcherId,
    lease::holder_margin,
};

use crate::{
    limits::{
        COMMAND_QUEUE, EVENT_BUFFER, LAZY_FLUSH, MAX_BATCH, PLAN_RESEND, REPLAN_MIN_GAP,
        WRITE_RETRY,
    },
    metrics::ArbiterMetrics,
    plan::{self, Plan, PollSlot},
    slot::{AcquireAnswer, ActiveLease, Arbiter, Clock, Effects, Push, SlotError},
    store::{
        StateStore, StoreError,
        saved::{SaveMarks, snapshot},
    },
};

/// What a watcher's stream carries, before conversion to protocol messages.
#[derive(Debug, Clone)]
pub enum WatcherMessage {
    /// The product list and timings.
    Catalog(Catalog),
    Grant(ActiveLease),
    Revoked {
        lease_id: LeaseId,
        token: FencingToken,
        reason: String,
    },
    /// When to poll (see `crate::plan`): the slot, and the wait from now
    /// to its next round. `None`: no plan, poll on your own schedule.
    PollPlan(Option<(PollSlot, std::time::Duration)>),
    /// The arbiter closes this stream.
    Closed(CloseReason, String),
}

/// Why the arbiter closed a watcher's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ShuttingDown,
    Replaced,
    TooManyProducts,
}

/// A grant [`ArbiterTask::deliver`] did not put on its stream.
#[derive(Debug)]
enum Undelivered {
    /// The stream is gone or not reading: the grant is withdrawn.
    Closed {
        watcher_id: WatcherId,
        conn: u64,
        lease_id: LeaseId,
    },
    /// Too little of the lease was left when its write finished: it ends
    /// as expired.
    Late {
        watcher_id: WatcherId,
        lease_id: LeaseId,
        left: std::time::Duration,
    },
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArbiterError {
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The change could not be made durable, so it was not confirmed. (One
    /// failed write answers every call of its batch, hence the `Arc`.)
    #[error("could not persist the arbiter state, so the change is not confirmed")]
    Persist(#[source] Arc<PersistError>),
    #[error("the arbiter is shutting down")]
    ShuttingDown,
}

/// Why the state could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking thread that writes panicked or was cancelled.
    #[error("the state writer thread failed")]
    Writer(#[source] tokio::task::JoinError),
}

type Reply<T> = oneshot::Sender<Result<T, ArbiterError>>;

enum Command {
    Acquire {
        tcin: ProductId,
        watcher_id: WatcherId,
        request_id: String,
        reply: Reply<AcquireAnswer>,
    },
    Renew {
        lease_id: LeaseId,
        token: FencingToken,
        reply: Reply<ActiveLease>,
    },
    Release {
        lease_id: LeaseId,
        token: FencingToken,
        outcome: Outcome,
        detail: String,
        paid: Option<Price>,
        reply: Reply<(bool, ProductState)>,
    },
    Connect {
        watcher_id: WatcherId,
        conn: u64,
        sender: mpsc::Sender<WatcherMessage>,
    },
    Disconnect {
        watcher_id: WatcherId,
        conn: u64,
        why: String,
    },
    Report {
        watcher_id: WatcherId,
        conn: u64,
        polling: Option<Vec<ProductId>>,
        poll_interval: Option<std::time::Duration>,
        observations: Vec<Observation>,
        /// What the report says of the watcher's stock source.
        source_block: Option<SourceBlock>,
    },
    Status {
        reply: Reply<Status>,
    },
    Events {
        from: u64,
        reply: Reply<(Vec<Event>, broadcast::Receiver<Event>, u64)>,
    },
    Reset {
        tcin: ProductId,
        reply: Reply<ProductState>,
    },
    SetPaused {
        paused: bool,
        reply: Reply<bool>,
    },
    Reload {
        catalog: PriorityList,
        reply: Reply<usize>,
    },
    SetBudget {
        change: BudgetChange,
        reply: Reply<BudgetStatus>,
    },
}

/// What an operator's `SetBudget` asks (see [`Arbiter::set_budget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetChange {
    /// New limits (`Some(None)`: lift them all).
    pub limits: Option<Option<BudgetLimits>>,
    pub use_config: bool,
    pub reset_spend: bool,
    pub reason: String,
}

/// A cloneable handle to the arbiter task.
#[derive(Debug, Clone)]
pub struct ArbiterHandle {
    tx: mpsc::Sender<Command>,
    next_conn: Arc<AtomicU64>,
}

impl ArbiterHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ArbiterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| ArbiterError::ShuttingDown)?;
        rx.await.map_err(|_| ArbiterError::ShuttingDown)?
    }

    pub async fn acquire(
        &self,
        tcin: ProductId,
        watcher_id: WatcherId,
        request_id: String,
    ) -> Result<AcquireAnswer, ArbiterError> {
        self.call(|reply| Command::Acquire {
            tcin,
            watcher_id,
            request_id,
            reply,
        })
        .await
    }

    pub async fn renew(
        &self,
        lease_id: LeaseId,
        token: FencingToken,
    ) -> Result<ActiveLease, ArbiterError> {
        self.call(|reply| Command::Renew {
            lease_id,
            token,
            reply,
        })
        .await
    }

    pub async fn release(
        &self,
        lease_id: LeaseId,
        token: FencingToken,
        outcome: Outcome,
        detail: String,
        paid: Option<Price>,
    ) -> Result<(bool, ProductState), ArbiterError> {
        self.call(|reply| Command::Release {
            lease_id,
            token,
            outcome,
            detail,
            paid,
            reply,
        })
        .await
    }

    pub async fn set_budget(&self, change: BudgetChange) -> Result<BudgetStatus, ArbiterError> {
        self.call(|reply| Command::SetBudget { change, reply })
            .await
    }

    /// A new stream id, unique for this process.
    pub fn new_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a watcher's stream; the catalog is its first message.
    pub async fn connect(
        &self,
        watcher_id: WatcherId,
        conn: u64,
        sender: mpsc::Sender<WatcherMessage>,
    ) -> Result<(), ArbiterError> {
        self.tx
            .send(Command::Connect {
                watcher_id,
                conn,
                sender,
            })
            .await
            .map_err(|_| ArbiterError::ShuttingDown)
    }

    pub async fn disconnect(&self, watcher_id: WatcherId, conn: u64, why: String) {
        // During shutdown the task is gone and there is nothing to tell.
        let _ = self
            .tx
            .send(Command::Disconnect {
                watcher_id,
                conn,
                why,
            })
            .await;
    }

    /// Hands a report to the arbiter. Waits only for room in the queue, which
    /// is what slows a stream that reports faster than the arbiter absorbs.
    pub async fn report(
        &self,
        watcher_id: WatcherId,
        conn: u64,
        polling: Option<Vec<ProductId>>,
        poll_interval: Option<std::time::Duration>,
        observations: Vec<Observation>,
        source_block: Option<SourceBlock>,
    ) -> Result<(), ArbiterError> {
        self.tx
            .send(Command::Report {
                watcher_id,
                conn,
                polling,
                poll_interval,
                observations,
                source_block,
            })
            .await
            .map_err(|_| ArbiterError::ShuttingDown)
    }

    pub async fn status(&self) -> Result<Status, ArbiterError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Events from `from` still in history and published (on disk, or of
    /// the kinds written lazily), and a receiver for what is published
    /// next; taken together, so nothing falls between them.
    pub async fn events(
        &self,
        from: u64,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), ArbiterError> {
        let (history, live, _) = self.events_with_position(from).await?;
        Ok((history, live))
    }

    /// [`Self::events`], and the sequence number of the newest event
    /// published when the receiver subscribed (what the receiver's first
    /// event follows).
    pub async fn events_with_position(
        &self,
        from: u64,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>, u64), ArbiterError> {
        self.call(|reply| Command::Events { from, reply }).await
    }

    pub async fn reset(&self, tcin: ProductId) -> Result<ProductState, ArbiterError> {
        self.call(|reply| Command::Reset { tcin, reply }).await
    }

    pub async fn set_paused(&self, paused: bool) -> Result<bool, ArbiterError> {
        self.call(|reply| Command::SetPaused { paused, reply })
            .await
    }

    pub async fn reload(&self, catalog: PriorityList) -> Result<usize, ArbiterError> {
        self.call(|reply| Command::Reload { catalog, reply }).await
    }
}

/// What a watcher is told when its stream opens or the list changes.
fn catalog_message(a: &Arbiter) -> Catalog {
    let timing = a.timing();
    Catalog {
        products: a.catalog().clone(),
        lease_ttl: timing.lease_ttl,
        stock_ttl: timing.stock_ttl,
        test_mode: timing.test_mode,
    }
}

/// An answer waiting for the batch's write.
type Pending = Box<dyn FnOnce(Option<&Arc<PersistError>>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, value: Result<T, ArbiterError>) -> Pending {
    Box::new(move |persist_error: Option<&Arc<PersistError>>| {
        let value = match (persist_error, value) {
            (Some(e), Ok(_)) => Err(ArbiterError::Persist(Arc::clone(e))),
            (_, v) => v,
        };
        // The caller may have gone away; nothing to do then.
        let _ = reply.send(value);
    })
}

/// Starts the task that owns `arbiter`, recording into `metrics`. It stops
/// when `shutdown` is cancelled, after a last write, closing every watcher
/// stream.
pub fn spawn<S: StateStore>(
    arbiter: Arbiter,
    clock: Clock,
    store: S,
    shutdown: CancellationToken,
    metrics: ArbiterMetrics,
    poll_planning: bool,
) -> (ArbiterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let observations_seen = arbiter.counters().observations;
    let task = ArbiterTask {
        arbiter,
        clock,
        store,
        marks: SaveMarks::default(),
        rx,
        events,
        streams: HashMap::new(),
        dirty_since: None,
        retry_at: None,
        published: 0,
        held: Vec::new(),
        metrics,
        observations_seen,
        refused: Vec::new(),
        batch_started: Instant::now(),
        handoff_from: None,
        planning: Planning::new(poll_planning),
        budget_gauges_until: 0,
        budget_gauges_version: u64::MAX,
    };
    let join = tokio::spawn(task.run(shutdown));
    (
        ArbiterHandle {
            tx,
            next_conn: Arc::new(AtomicU64::new(1)),
        },
        join,
    )
}

struct ArbiterTask<S> {
    arbiter: Arbiter,
    /// When the budget gauges next go stale by themselves (the oldest
    /// spend rolling off), unix ms; `u64::MAX` when never.
    budget_gauges_until: u64,
    /// [`crate::slot::Budget::version`] the gauges show.
    budget_gauges_version: u64,
    clock: Clock,
    store: S,
    /// What the state file holds, so a journal record carries only changes.
    marks: SaveMarks,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    /// Each connected watcher's stream: its id and where to send.
    streams: HashMap<WatcherId, (u64, mpsc::Sender<WatcherMessage>)>,
    /// Set when a change that no answer waits for has not reached disk.
    dirty_since: Option<Instant>,
    /// Set while the task is unwritten (a write failed and none succeeded
    /// since): when to try again. See the module documentation.
    retry_at: Option<Instant>,
    /// The sequence number of the newest event sent to followers; events
    /// after it are in the history but not published yet.
    published: u64,
    /// Pushes of batches whose write failed, for after the write that holds
    /// them.
    held: Vec<Push>,
    metrics: ArbiterMetrics,
    /// The slot's observation count as last added to the metric (the slot
    /// counts since the state was created; the metric since this start).
    observations_seen: u64,
    /// Reasons of refusals not yet answered, counted once their answers go
    /// out (after the write that remembers them).
    refused: Vec<&'static str>,
    /// When the batch being applied began: where a hand-off starts.
    batch_started: Instant,
    /// Set when a published event ended a lease; the next grant put on a
    /// stream in the same commit measures the hand-off from it.
    handoff_from: Option<Instant>,
    planning: Planning,
}

/// The poll plan the task keeps and sends (see `crate::plan`). Nothing of
/// it is saved: watchers say their periods again when they reconnect.
#[derive(Debug)]
struct Planning {
    enabled: bool,
    /// Phases count from here.
    epoch: Instant,
    plan: Plan,
    /// Something the plan depends on changed since it was made.
    dirty: bool,
    /// When the plan was last made and sent.
    last: Option<Instant>,
}

impl Planning {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            epoch: Instant::now(),
            plan: Plan::default(),
            dirty: false,
            last: None,
        }
    }

    fn touch(&mut self) {
        self.dirty |= self.enabled;
    }

    /// When to make (or re-send) the plan next: soon after a change, but
    /// at most once per [`REPLAN_MIN_GAP`] (a hundred watchers starting
    /// together cause a few plans, not a hundred); otherwise every
    /// [`PLAN_RESEND`], to correct the watchers' clock drift.
    fn due(&self) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        match self.last {
            None if self.dirty => Some(self.epoch),
            None => None,
            Some(last) if self.dirty => Some(last + REPLAN_MIN_GAP),
            Some(last) if !self.plan.slots.is_empty() => Some(last + PLAN_RESEND),
            Some(_) => None,
        }
    }

    /// Fills in the plan's part of a status.
    fn annotate(&self, status: &mut Status) {
        status.poll_planning = self.enabled;
        for w in &mut status.watchers {
            w.poll_phase = self.plan.slots.get(&w.watcher_id).map(|s| s.phase);
        }
    }
}

/// What a commit's published events did, for the metrics.
#[derive(Debug, Default)]
struct Published {
    lease_ended: bool,
    products: bool,
}

impl Published {
    fn note(&mut self, e: &Event) {
        self.lease_ended |= e.kind.ends_lease();
        // Every other kind may move a product (or add one, or reload the
        // list); these three never do.
        self.products |= !matches!(
            e.kind,
            EventKind::Renewed
                | EventKind::WatcherJoined
                | EventKind::WatcherLeft
                | EventKind::SourceBlocked
                | EventKind::SourceUnblocked
        );
    }
}

fn log_event(e: &Event) {
    debug!(sequence = e.sequence, kind = ?e.kind, tcin = ?e.tcin.as_ref().map(ProductId::as_str), "event");
}

/// Runs a blocking state write on the blocking pool.
async fn run_blocking(
    write: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> Result<(), PersistError> {
    tokio::task::spawn_blocking(write)
        .await
        .map_err(PersistError::Writer)?
        .map_err(PersistError::from)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<S: StateStore> ArbiterTask<S> {
    async fn run(mut self, shutdown: CancellationToken) {
        // The start-up event and state are written before anything is served.
        let started = self.arbiter.take_effects();
        // The history read back from disk is published already.
        self.published = started
            .events
            .first()
            .map_or(self.arbiter.last_sequence(), |e| e.sequence - 1);
        self.commit_effects(started, Vec::new()).await;
        loop {
            let first = if let Some(retry_at) = self.retry_at {
                // Unwritten: commands wait in the queue until the disk is
                // tried again (and the batch they make writes first).
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(retry_at) => None,
                }
            } else {
                let wake = self.arbiter.next_deadline();
                let flush = self.dirty_since.map(|t| t + LAZY_FLUSH);
                let replan = self.planning.due();
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    cmd = self.rx.recv() => match cmd {
                        Some(cmd) => Some(cmd),
                        None => break,
                    },
                    () = sleep_until_some(wake) => None,
                    () = sleep_until_some(flush) => None,
                    () = sleep_until_some(replan) => None,
                }
            };
            let mut replies = Vec::new();
            self.batch_started = Instant::now();
            match first {
                Some(cmd) => self.apply(cmd, &mut replies),
                None => self.arbiter.tick(self.clock.now()),
            }
            while replies.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(cmd) => self.apply(cmd, &mut replies),
                    Err(_) => break,
                }
            }
            self.commit(replies).await;
            if self.planning.due().is_some_and(|at| at <= Instant::now()) {
                self.send_poll_plan();
            }
        }
        self.shut_down().await;
    }

    fn apply(&mut self, cmd: Command, replies: &mut Vec<Pending>) {
        let now = self.clock.now();
        let a = &mut self.arbiter;
        match cmd {
            Command::Acquire {
                tcin,
                watcher_id,
                request_id,
                reply,
            } => {
                // A retry answered from memory is no new refusal; the
                // slot's count says which this was.
                let refusals = a.counters().refusals;
                let r = a
                    .acquire(now, &tcin, &watcher_id, &request_id)
                    .map_err(ArbiterError::from);
                if a.counters().refusals != refusals
                    && let Ok(AcquireAnswer::Refused(refusal)) = &r
                {
                    self.refused.push(refusal.reason());
                }
                replies.push(pending(reply, r));
            }
            Command::Renew {
                lease_id,
                token,
                reply,
            } => {
                let r = a.renew(now, &lease_id, token).map_err(ArbiterError::from);
                replies.push(pending(reply, r));
            }
            Command::Release {
                lease_id,
                token,
                outcome,
                detail,
                paid,
                reply,
            } => {
                let r = a
                    .release_paid(now, &lease_id, token, outcome, &detail, paid)
                    .map_err(ArbiterError::from);
                replies.push(pending(reply, r));
            }
            Command::Connect {
                watcher_id,
                conn,
                sender,
            } => {
                if sender
                    .try_send(WatcherMessage::Catalog(catalog_message(a)))
                    .is_err()
                {
                    return; // already gone
                }
                if let Some((_, old)) = self.streams.insert(watcher_id.clone(), (conn, sender)) {
                    let _ = old.try_send(WatcherMessage::Closed(
                        CloseReason::Replaced,
                        format!("a newer stream opened for watcher {watcher_id}"),
                    ));
                }
                a.connect(now, &watcher_id, conn);
                self.planning.touch();
            }
            Command::Disconnect {
                watcher_id,
                conn,
                why,
            } => {
                if self
                    .streams
                    .get(&watcher_id)
                    .is_some_and(|(c, _)| *c == conn)
                {
                    self.streams.remove(&watcher_id);
                }
                a.disconnect(now, &watcher_id, conn, &why);
                self.planning.touch();
            }
            Command::Report {
                watcher_id,
                conn,
                polling,
                poll_interval,
                observations,
                source_block,
            } => {
                a.set_source_block(now, &watcher_id, conn, source_block);
                if polling.is_some() {
                    self.planning.touch();
                }
                if let Some(every) = poll_interval
                    && a.set_poll_interval(&watcher_id, conn, every)
                {
                    self.planning.touch();
                }
                if let Err(e) = a.report(now, &watcher_id, conn, polling, &observations) {
                    warn!(watcher_id = %watcher_id, error = %e, "closing a watcher stream: report refused");
                    if let Some((c, s)) = self.streams.get(&watcher_id)
                        && *c == conn
                    {
                        let _ = s.try_send(WatcherMessage::Closed(
                            CloseReason::TooManyProducts,
                            e.to_string(),
                        ));
                    }
                }
            }
            Command::Status { reply } => {
                // Shown after the batch's write, like any answer: it may
                // show a lease granted earlier in this batch.
                let mut status = a.status(now);
                self.planning.annotate(&mut status);
                replies.push(pending(reply, Ok(status)));
            }
            Command::Events { from, reply } => {
                // Answered now with what has been published; the receiver,
                // subscribed at the same moment, gets every later event as
                // it is published (after its write), so nothing falls
                // between the two and nothing unwritten is shown.
                let rx = self.events.subscribe();
                let published = self.published;
                let history = a
                    .history_from(from)
                    .take_while(|e| e.sequence <= published)
                    .cloned()
                    .collect();
                let _ = reply.send(Ok((history, rx, published)));
            }
            Command::Reset { tcin, reply } => {
                let r = a.reset(now, &tcin).map_err(ArbiterError::from);
                replies.push(pending(reply, r));
            }
            Command::SetPaused { paused, reply } => {
                a.set_paused(now, paused);
                replies.push(pending(reply, Ok(paused)));
            }
            Command::Reload { catalog, reply } => {
                let n = catalog.len();
                a.reload(now, catalog);
                self.planning.touch();
                replies.push(pending(reply, Ok(n)));
            }
            Command::SetBudget { change, reply } => {
                let r = a
                    .set_budget(
                        now,
                        change.limits,
                        change.use_config,
                        change.reset_spend,
                        &change.reason,
                    )
                    .map(|()| a.budget_status(now))
                    .map_err(ArbiterError::from);
                replies.push(pending(reply, r));
            }
        }
    }

    /// Makes the poll plan from the connected watchers and sends each its
    /// place: every planned watcher when the plan changed or is due to be
    /// re-sent (the offsets are recomputed from now, so a re-sent plan
    /// corrects drift without moving anyone); a watcher that left the plan
    /// while connected is told to poll on its own.
    fn send_poll_plan(&mut self) {
        let now = Instant::now();
        let (ranked, inputs) = self.arbiter.poll_inputs();
        let plan = plan::plan(&ranked, &inputs);
        let since_epoch = now.saturating_duration_since(self.planning.epoch);
        let changed = plan != self.planning.plan;
        for (watcher, slot) in &plan.slots {
            if let Some((_, stream)) = self.streams.get(watcher) {
                let _ = stream.try_send(WatcherMessage::PollPlan(Some((
                    *slot,
                    slot.offset(since_epoch),
                ))));
            }
        }
        for watcher in self.planning.plan.slots.keys() {
            if !plan.slots.contains_key(watcher)
                && let Some((_, stream)) = self.streams.get(watcher)
            {
                let _ = stream.try_send(WatcherMessage::PollPlan(None));
            }
        }
        if changed {
            info!(
                planned = plan.slots.len(),
                plan = ?plan
                    .slots
                    .iter()
                    .map(|(w, s)| format!("{w}@{}ms/{}ms", s.phase.as_millis(), s.period.as_millis()))
                    .collect::<Vec<_>>(),
                "poll plan"
            );
        }
        self.planning.plan = plan;
        self.planning.dirty = false;
        self.planning.last = Some(now);
    }

    /// Commits the batch just applied; see [`Self::commit_effects`].
    async fn commit(&mut self, replies: Vec<Pending>) {
        let effects = self.arbiter.take_effects();
        self.commit_effects(effects, replies).await;
    }

    /// Writes the state if the batch needs it (or the task is unwritten),
    /// then answers, publishes events and pushes messages to watchers; if
    /// the write fails, answers with the error and holds the rest back (see
    /// the module documentation). A grant a stream cannot take is withdrawn
    /// and the next one made, in a further round.
    async fn commit_effects(&mut self, mut effects: Effects, mut replies: Vec<Pending>) {
        // Connections are not saved: nothing to wait for.
        self.metrics.set_watchers_connected(self.streams.len());
        loop {
            if effects.must_persist || self.retry_at.is_some() {
                if let Err(e) = self.persist().await {
                    self.retry_at = Some(Instant::now() + WRITE_RETRY);
                    for r in replies.drain(..) {
                        r(Some(&e));
                    }
                    // The events stay in the history, unpublished.
                    self.hold(effects.pushes);
                    return;
                }
                if self.retry_at.take().is_some() {
                    info!(state_file = %self.store.describe(), "state written again; releasing what was held back");
                }
            } else {
                if effects.dirty && self.dirty_since.is_none() {
                    self.dirty_since = Some(Instant::now());
                }
                if self
                    .dirty_since
                    .is_some_and(|t| Instant::now() >= t + LAZY_FLUSH)
                {
                    // Nothing waits for this write, so a failure is only
                    // logged (and the write tried again a LAZY_FLUSH later).
                    let _ = self.persist().await;
                }
            }
            for r in replies.drain(..) {
                r(None);
            }
            for reason in self.refused.drain(..) {
                self.metrics.refused(reason);
            }
            let products_changed = self.publish(effects.events);
            self.record_state(products_changed);
            let mut pushes = std::mem::take(&mut self.held);
            pushes.append(&mut effects.pushes);
            let undelivered = self.deliver(pushes);
            if undelivered.is_empty() {
                // A grant made later is not this lease end's hand-off.
                self.handoff_from = None;
                return;
            }
            let now = self.clock.now();
            for u in undelivered {
                match u {
                    Undelivered::Closed {
                        watcher_id,
                        conn,
                        lease_id,
                    } => {
                        warn!(watcher_id = %watcher_id, lease_id = %lease_id, "grant could not be delivered; withdrawing it");
                        self.streams.remove(&watcher_id);
                        self.arbiter
                            .abandon_grant(now, &watcher_id, conn, &lease_id);
                    }
                    Undelivered::Late {
                        watcher_id,
                        lease_id,
                        left,
                    } => {
                        warn!(
                            watcher_id = %watcher_id,
                            lease_id = %lease_id,
                            left_ms = left.as_millis() as u64,
                            "a grant's write outlasted its lease: not pushed, the lease ends as expired and the next product is granted"
                        );
                        self.arbiter.expire_unpushed(now, &lease_id);
                    }
                }
            }
            effects = self.arbiter.take_effects();
        }
    }

    /// Sends every event not published yet to the followers, in order:
    /// those held back by failed writes (from the history), then `fresh`,
    /// the events of the batch being committed; counts them in the
    /// metrics. Returns whether any of them may have changed a product's
    /// state.
    fn publish(&mut self, fresh: Vec<Event>) -> bool {
        if fresh.is_empty() && self.published == self.arbiter.last_sequence() {
            return false; // most batches of stock reports
        }
        let mut seen = Published::default();
        let first_fresh = fresh.first().map_or(u64::MAX, |e| e.sequence);
        let held = self
            .arbiter
            .history_from(self.published + 1)
            .take_while(|e| e.sequence < first_fresh);
        for e in held {
            log_event(e);
            seen.note(e);
            self.metrics.published(e);
            // No followers is fine.
            let _ = self.events.send(e.clone());
        }
        for e in fresh {
            log_event(&e);
            seen.note(&e);
            self.metrics.published(&e);
            let _ = self.events.send(e);
        }
        self.published = self.arbiter.last_sequence();
        if seen.lease_ended && self.handoff_from.is_none() {
            self.handoff_from = Some(self.batch_started);
        }
        seen.products
    }

    /// The slot's gauges, as the write just made (or not needed) left it.
    /// Products are counted again only when `products_changed`.
    fn record_state(&mut self, products_changed: bool) {
        let a = &self.arbiter;
        self.metrics.set_slot(a.lease(), a.next_token());
        let observations = a.counters().observations;
        self.metrics
            .observed(observations.saturating_sub(self.observations_seen));
        self.observations_seen = observations;
        if products_changed {
            self.metrics
                .set_products(a.products().map(|(_, p)| p.state()));
        }
        // Spend moves when the record changes (a grant's reservation, a
        // release, a budget change) and as it rolls off by itself; stock
        // reports never move it, so ingest pays one comparison.
        let version = a.budget().version();
        if version != self.budget_gauges_version
            || (self.budget_gauges_until != u64::MAX
                && self.clock.now().unix_ms >= self.budget_gauges_until)
        {
            let b = a.budget_status(self.clock.now());
            self.metrics.set_budget(&b);
            self.budget_gauges_until = b.next_roll_off_unix_ms.unwrap_or(u64::MAX);
            self.budget_gauges_version = version;
        }
        self.metrics.set_watchers_connected(self.streams.len());
    }

    /// Keeps a failed batch's pushes until a write holds them. A grant
    /// whose lease ends before that is dropped, with its revocation: its
    /// watcher never saw it. What is held is so at most one grant, one
    /// catalog change and the revocation of the lease that was current
    /// when the writes started failing.
    fn hold(&mut self, pushes: Vec<Push>) {
        for push in pushes {
            match &push {
                Push::Revoked { lease_id, .. } => {
                    let grant = self.held.iter().position(
                        |h| matches!(h, Push::Grant { lease, .. } if lease.lease_id == *lease_id),
                    );
                    if let Some(i) = grant {
                        self.held.remove(i);
                        continue;
                    }
                }
                Push::CatalogChanged if self.held.contains(&Push::CatalogChanged) => continue,
                _ => {}
            }
            self.held.push(push);
        }
        let current = self.arbiter.lease().map(|l| l.lease_id.clone());
        self.held.retain(|h| match h {
            Push::Grant { lease, .. } => current.as_ref() == Some(&lease.lease_id),
            _ => true,
        });
    }

    /// Puts pushes on the streams; returns the grants that were not.
    fn deliver(&mut self, pushes: Vec<Push>) -> Vec<Undelivered> {
        let mut undelivered = Vec::new();
        let now = self.clock.now();
        for push in pushes {
            match push {
                Push::Grant {
                    watcher_id,
                    conn,
                    lease,
                } => {
                    // A grant held back by a failed write whose lease ended
                    // meanwhile is not the watcher's to see.
                    if self
                        .arbiter
                        .lease()
                        .is_none_or(|cur| cur.lease_id != lease.lease_id)
                    {
                        continue;
                    }
                    // Nor is one whose write took (nearly) all of its time:
                    // its holder could not finish, or even start, a checkout
                    // before the deadline (see `Arbiter::expire_unpushed`).
                    let left = lease.remaining(now);
                    if left <= holder_margin(lease.ttl) {
                        undelivered.push(Undelivered::Late {
                            watcher_id,
                            lease_id: lease.lease_id,
                            left,
                        });
                        continue;
                    }
                    let ok = match self.streams.get(&watcher_id) {
                        Some((c, s)) if *c == conn => {
                            s.try_send(WatcherMessage::Grant(lease.clone())).is_ok()
                        }
                        _ => false,
                    };
                    if ok {
                        if let Some(from) = self.handoff_from.take() {
                            self.metrics.handoff_took(from.elapsed().as_secs_f64());
                        }
                        info!(
                            watcher_id = %watcher_id,
                            tcin = %lease.tcin,
                            fencing_token = lease.token.0,
                            lease_id = %lease.lease_id,
                            "slot granted on the watcher's stream"
                        );
                    } else {
                        undelivered.push(Undelivered::Closed {
                            watcher_id,
                            conn,
                            lease_id: lease.lease_id,
                        });
                    }
                }
                Push::Revoked {
                    watcher_id,
                    lease_id,
                    token,
                    reason,
                } => {
                    if let Some((_, s)) = self.streams.get(&watcher_id) {
                        // A stream that is not reading learns it when it
                        // tries to renew.
                        let _ = s.try_send(WatcherMessage::Revoked {
                            lease_id,
                            token,
                            reason,
                        });
                    }
                }
                Push::CatalogChanged => {
                    let catalog = catalog_message(&self.arbiter);
                    for (_, s) in self.streams.values() {
                        let _ = s.try_send(WatcherMessage::Catalog(catalog.clone()));
                    }
                }
            }
        }
        undelivered
    }

    /// Writes what changed since the last write as one journal record, or
    /// the whole state when the store asks for it (see
    /// [`crate::store::StateFile`]).
    async fn persist(&mut self) -> Result<(), Arc<PersistError>> {
        let now = self.clock.now();
        let store = self.store.clone();
        // Wall time (std, not tokio's, which tests pause): the disk's.
        let started = std::time::Instant::now();
        let result = if store.needs_full() {
            let snapshot = snapshot(&self.arbiter, now);
            let mark = SaveMarks::full(&self.arbiter);
            run_blocking(move || store.save(snapshot))
                .await
                .map(|()| mark)
        } else {
            let (delta, mark) = self.marks.delta(&self.arbiter, now);
            if store.fsyncs() {
                run_blocking(move || store.append(delta))
                    .await
                    .map(|()| mark)
            } else {
                // Without fsync an append is one small write to the page
                // cache: cheaper here than a hop to a blocking thread.
                store
                    .append(delta)
                    .map(|()| mark)
                    .map_err(PersistError::from)
            }
        };
        match result {
            Ok(mark) => {
                if self.store.fsyncs() {
                    self.metrics.fsync_took(started.elapsed().as_secs_f64());
                }
                self.marks.persisted(mark);
                self.dirty_since = None;
                Ok(())
            }
            Err(e) => {
                error!(state_file = %self.store.describe(), error = %Chain(&e), "could not persist state");
                // Try again even if no further change asks for a write, but
                // a whole LAZY_FLUSH from now: trying again at once would
                // spin on a dead disk.
                self.dirty_since = Some(Instant::now());
                Err(Arc::new(e))
            }
        }
    }

    async fn shut_down(mut self) {
        info!("arbiter task stopping: final write, closing watcher streams");
        if self.dirty_since.is_some() || self.retry_at.is_some() {
            let _ = self.persist().await;
        }
        for (_, (_, s)) in self.streams.drain() {
            let _ = s.try_send(WatcherMessage::Closed(
                CloseReason::ShuttingDown,
                "the arbiter is shutting down".into(),
            ));
        }
        // Commands still queued get ShuttingDown when their reply drops.
        self.rx.close();
    }
}

#[cfg(test)]
mod tests;
