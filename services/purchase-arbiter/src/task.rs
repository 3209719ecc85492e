//! The one task that owns the [`Arbiter`]: every decision is made here, one
//! command at a time, so reading the state, deciding, persisting and
//! answering form one critical section without a lock.
//!
//! Commands arrive on a channel and are applied in batches: everything that
//! is waiting is applied, the state is written once (group commit), and only
//! then do the answers, grants and events go out. No answer that depends on a
//! change is sent before that change is on disk.
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
    Catalog, Event, FencingToken, LeaseId, Observation, Outcome, PriorityList, ProductState,
    Status, Tcin, WatcherId,
};

use crate::{
    limits::{COMMAND_QUEUE, EVENT_BUFFER, LAZY_FLUSH, MAX_BATCH},
    slot::{AcquireAnswer, ActiveLease, Arbiter, Clock, Push, SlotError},
    store::{
        StateFile, StoreError,
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
        tcin: Tcin,
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
        polling: Option<Vec<Tcin>>,
        observations: Vec<Observation>,
    },
    Status {
        reply: Reply<Status>,
    },
    Events {
        from: u64,
        reply: Reply<(Vec<Event>, broadcast::Receiver<Event>)>,
    },
    Reset {
        tcin: Tcin,
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
        tcin: Tcin,
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
    ) -> Result<(bool, ProductState), ArbiterError> {
        self.call(|reply| Command::Release {
            lease_id,
            token,
            outcome,
            detail,
            reply,
        })
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
        polling: Option<Vec<Tcin>>,
        observations: Vec<Observation>,
    ) -> Result<(), ArbiterError> {
        self.tx
            .send(Command::Report {
                watcher_id,
                conn,
                polling,
                observations,
            })
            .await
            .map_err(|_| ArbiterError::ShuttingDown)
    }

    pub async fn status(&self) -> Result<Status, ArbiterError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Events from `from` still in history, and a receiver for what follows;
    /// taken together, so nothing falls between them.
    pub async fn events(
        &self,
        from: u64,
    ) -> Result<(Vec<Event>, broadcast::Receiver<Event>), ArbiterError> {
        self.call(|reply| Command::Events { from, reply }).await
    }

    pub async fn reset(&self, tcin: Tcin) -> Result<ProductState, ArbiterError> {
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

/// Starts the task that owns `arbiter`. It stops when `shutdown` is
/// cancelled, after a last write, closing every watcher stream.
pub fn spawn(
    arbiter: Arbiter,
    clock: Clock,
    store: StateFile,
    shutdown: CancellationToken,
) -> (ArbiterHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let task = ArbiterTask {
        arbiter,
        clock,
        store,
        marks: SaveMarks::default(),
        rx,
        events,
        streams: HashMap::new(),
        dirty_since: None,
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

struct ArbiterTask {
    arbiter: Arbiter,
    clock: Clock,
    store: StateFile,
    /// What the state file holds, so a journal record carries only changes.
    marks: SaveMarks,
    rx: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    /// Each connected watcher's stream: its id and where to send.
    streams: HashMap<WatcherId, (u64, mpsc::Sender<WatcherMessage>)>,
    /// Set when a change that no answer waits for has not reached disk.
    dirty_since: Option<Instant>,
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

impl ArbiterTask {
    async fn run(mut self, shutdown: CancellationToken) {
        // The start-up event and state are written before anything is served.
        self.commit(Vec::new()).await;
        loop {
            let wake = self.arbiter.next_deadline();
            let flush = self.dirty_since.map(|t| t + LAZY_FLUSH);
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                () = sleep_until_some(wake) => None,
                () = sleep_until_some(flush) => None,
            };
            let mut replies = Vec::new();
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
                let r = a
                    .acquire(now, &tcin, &watcher_id, &request_id)
                    .map_err(ArbiterError::from);
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
                reply,
            } => {
                let r = a
                    .release(now, &lease_id, token, outcome, &detail)
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
            }
            Command::Report {
                watcher_id,
                conn,
                polling,
                observations,
            } => {
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
                let view = a.status(now);
                let _ = reply.send(Ok(view));
            }
            Command::Events { from, reply } => {
                // Subscribing here, between batches, means the receiver gets
                // exactly the events after the history handed out with it.
                let rx = self.events.subscribe();
                let _ = reply.send(Ok((a.events_from(from), rx)));
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
                replies.push(pending(reply, Ok(n)));
            }
        }
    }

    /// Writes the state if the batch needs it, then answers, publishes events
    /// and pushes messages to watchers. A grant a stream cannot take is
    /// withdrawn and the next one made, in a further round.
    async fn commit(&mut self, mut replies: Vec<Pending>) {
        loop {
            let effects = self.arbiter.take_effects();
            let persist_error = if effects.must_persist {
                self.persist().await.err()
            } else {
                if effects.dirty && self.dirty_since.is_none() {
                    self.dirty_since = Some(Instant::now());
                }
                if self
                    .dirty_since
                    .is_some_and(|t| Instant::now() >= t + LAZY_FLUSH)
                {
                    // Nothing waits for this write, so a failure is only logged.
                    let _ = self.persist().await;
                }
                None
            };
            for r in replies.drain(..) {
                r(persist_error.as_ref());
            }
            for e in effects.events {
                debug!(sequence = e.sequence, kind = ?e.kind, tcin = ?e.tcin.as_ref().map(Tcin::as_str), "event");
                // No followers is fine.
                let _ = self.events.send(e);
            }
            if persist_error.is_some() {
                // Grants that are not on disk are not handed out; the lease
                // expires by itself and the slot moves on.
                return;
            }
            let undelivered = self.deliver(effects.pushes);
            if undelivered.is_empty() {
                return;
            }
            let now = self.clock.now();
            for (watcher_id, conn, lease_id) in undelivered {
                warn!(watcher_id = %watcher_id, lease_id = %lease_id, "grant could not be delivered; withdrawing it");
                self.streams.remove(&watcher_id);
                self.arbiter
                    .abandon_grant(now, &watcher_id, conn, &lease_id);
            }
        }
    }

    /// Puts pushes on the streams; returns the grants that could not be.
    fn deliver(&mut self, pushes: Vec<Push>) -> Vec<(WatcherId, u64, LeaseId)> {
        let mut undelivered = Vec::new();
        for push in pushes {
            match push {
                Push::Grant {
                    watcher_id,
                    conn,
                    lease,
                } => {
                    let ok = match self.streams.get(&watcher_id) {
                        Some((c, s)) if *c == conn => {
                            s.try_send(WatcherMessage::Grant(lease.clone())).is_ok()
                        }
                        _ => false,
                    };
                    if ok {
                        info!(
                            watcher_id = %watcher_id,
                            tcin = %lease.tcin,
                            fencing_token = lease.token.0,
                            lease_id = %lease.lease_id,
                            "slot granted on the watcher's stream"
                        );
                    } else {
                        undelivered.push((watcher_id, conn, lease.lease_id));
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
    /// the whole state when the store asks for it (see [`StateFile`]).
    async fn persist(&mut self) -> Result<(), Arc<PersistError>> {
        let now = self.clock.now();
        let store = self.store.clone();
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
                self.marks.persisted(mark);
                self.dirty_since = None;
                Ok(())
            }
            Err(e) => {
                error!(state_file = %self.store.describe(), error = %Chain(&e), "could not persist state");
                // Try again soon even if no further change asks for a write.
                self.dirty_since.get_or_insert_with(Instant::now);
                Err(Arc::new(e))
            }
        }
    }

    async fn shut_down(mut self) {
        info!("arbiter task stopping: final write, closing watcher streams");
        if self.dirty_since.is_some() {
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
