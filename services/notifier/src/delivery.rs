//! Getting alerts to their destinations: the [`Store`] (the saved state
//! behind a lock, and writing it), and one worker per destination, so a
//! slow or dead destination never holds up the others.
//!
//! A worker sends its alerts in order, one at a time: it waits for its
//! token bucket (`--rate-per-minute`, `--rate-burst`), honours a `429`'s
//! wait (and Discord's empty-bucket headers), retries other failures with
//! back-off and jitter until `--delivery-deadline` has passed since the
//! alert was queued, and then records it as failed with the reason. A
//! permanent refusal (a 4xx other than 408/429) is recorded at once.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use restock_runtime::Backoff;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    alert::Alert,
    destination::{Destination, SendError},
    metrics::{Attempt, NotifierMetrics},
    state::{self, FAILED_KEPT, Failed, Pending, Saved, StateError},
};

/// The notifier's wall clock, unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The saved state, shared by the event follower, the workers and the
/// status call, and the one way to write it.
///
/// A `std::sync::Mutex`, not a tokio one: nothing awaits while it is held
/// (callers copy what they need out, or serialize, and let go).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
struct StoreInner {
    saved: Mutex<Saved>,
    /// `None`: memory only (`--state-file ""`).
    path: Option<PathBuf>,
    /// Writes one at a time, each of the state as it is when it starts, so
    /// an older snapshot never lands after a newer one.
    write: tokio::sync::Mutex<()>,
    metrics: NotifierMetrics,
}

impl Store {
    pub fn new(saved: Saved, path: Option<PathBuf>, metrics: NotifierMetrics) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                saved: Mutex::new(saved),
                path,
                write: tokio::sync::Mutex::new(()),
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &NotifierMetrics {
        &self.inner.metrics
    }

    /// Sets the pending gauge of every destination from the outbox.
    pub fn count_pending(&self, destinations: &[Arc<Destination>]) {
        let counts: Vec<usize> = self.with(|s| {
            destinations
                .iter()
                .map(|d| s.outbox.iter().filter(|p| p.dest == d.tag).count())
                .collect()
        });
        for (d, n) in destinations.iter().zip(counts) {
            self.inner.metrics.set_pending(&d.redacted, n);
        }
    }

    /// Runs `f` on the state, under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut Saved) -> R) -> R {
        let mut s = self
            .inner
            .saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    /// Writes the state as it is now (atomically; see [`crate::state`]).
    pub async fn persist(&self) -> Result<(), StateError> {
        let Some(path) = self.inner.path.clone() else {
            return Ok(());
        };
        let _one_at_a_time = self.inner.write.lock().await;
        let bytes = self
            .with(|s| serde_json::to_vec_pretty(s))
            .unwrap_or_default();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || state::write_atomic(&p, &bytes)).await {
            Ok(r) => r,
            Err(e) => Err(StateError::Write {
                path,
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Writes the state, retrying (with back-off, logging each failure)
    /// until it is written or `stop` is cancelled: nothing is sent, and no
    /// progress counted, before it is on disk.
    pub async fn persist_until_ok(&self, stop: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.persist().await {
                Ok(()) => return,
                Err(e) => {
                    let wait = backoff.next_delay();
                    error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot save the notifier's state; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Queues `alerts` for every destination that wants them (in the
    /// state; the caller persists, then dispatches). Returns what to
    /// dispatch: (destination index, alert id).
    pub fn enqueue(
        saved: &mut Saved,
        alerts: &[Alert],
        destinations: &[Arc<Destination>],
        now: u64,
        metrics: &NotifierMetrics,
    ) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for a in alerts {
            metrics.alert(a.kind);
            info!(
                alert_id = %a.id,
                kind = %a.kind,
                title = %a.title,
                message = %a.message,
                tcin = a.tcin.as_deref().unwrap_or(""),
                fencing_token = a.fencing_token.unwrap_or(0),
                "alert"
            );
            for (i, d) in destinations.iter().enumerate() {
                if !d.wants(a.kind) {
                    continue;
                }
                let alert = a.for_destination(&d.tag);
                if saved.outbox.iter().any(|p| p.alert.id == alert.id) {
                    continue;
                }
                out.push((i, alert.id.clone()));
                saved.outbox.push(Pending {
                    dest: d.tag.clone(),
                    alert,
                    queued_unix_ms: now,
                    attempts: 0,
                });
            }
        }
        out
    }
}

/// How a worker delivers.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub per_minute: f64,
    pub burst: u32,
    pub deadline: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Per request (HTTP, SMTP) and per command run.
    pub request_timeout: Duration,
    /// How long a test alert may take, retries included.
    pub test_deadline: Duration,
}

/// What a worker is asked to do.
#[derive(Debug)]
pub enum Job {
    /// Deliver this outbox entry (by alert id).
    Pending(String),
    /// Deliver a test alert (not saved) and say how it went.
    Test {
        alert: Alert,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The workers' queues, one per destination, in `--notify` order.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    queues: Arc<[mpsc::UnboundedSender<Job>]>,
}

impl Dispatcher {
    /// Hands a job to destination `i`'s worker.
    pub fn send(&self, i: usize, job: Job) -> bool {
        self.queues.get(i).is_some_and(|q| q.send(job).is_ok())
    }
}

/// Starts one worker per destination; each first takes up the outbox
/// entries already waiting for it. Workers end when `stop` is cancelled
/// (what they were sending stays in the outbox).
pub fn start(
    destinations: &[Arc<Destination>],
    store: &Store,
    settings: &DeliverySettings,
    client: reqwest::Client,
    stop: &CancellationToken,
) -> (Dispatcher, Vec<tokio::task::JoinHandle<()>>) {
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for d in destinations {
        let (tx, rx) = mpsc::unbounded_channel();
        let waiting: Vec<String> = store.with(|s| {
            s.outbox
                .iter()
                .filter(|p| p.dest == d.tag)
                .map(|p| p.alert.id.clone())
                .collect()
        });
        if !waiting.is_empty() {
            info!(destination = %d.redacted, pending = waiting.len(), "resuming delivery of pending alerts");
        }
        for id in waiting {
            let _ = tx.send(Job::Pending(id));
        }
        let worker = Worker {
            dest: d.clone(),
            store: store.clone(),
            settings: settings.clone(),
            client: client.clone(),
            bucket: TokenBucket::new(settings.burst, settings.per_minute),
            pause_until: None,
            stop: stop.clone(),
        };
        tasks.push(tokio::spawn(worker.run(rx)));
        queues.push(tx);
    }
    (
        Dispatcher {
            queues: queues.into(),
        },
        tasks,
    )
}

/// How one delivery ended.
#[derive(Debug)]
enum End {
    Delivered,
    Failed(String),
    /// The notifier is stopping; the alert stays pending.
    Stopped,
}

struct Worker {
    dest: Arc<Destination>,
    store: Store,
    settings: DeliverySettings,
    client: reqwest::Client,
    bucket: TokenBucket,
    /// Not before this (the destination said its bucket is empty).
    pause_until: Option<Instant>,
    stop: CancellationToken,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        loop {
            let job = tokio::select! {
                () = self.stop.cancelled() => return,
                j = rx.recv() => match j { Some(j) => j, None => return },
            };
            match job {
                Job::Pending(id) => {
                    let entry = self
                        .store
                        .with(|s| s.outbox.iter().find(|p| p.alert.id == id).cloned());
                    let Some(p) = entry else { continue };
                    let age = Duration::from_millis(now_ms().saturating_sub(p.queued_unix_ms));
                    let deadline = Instant::now() + self.settings.deadline.saturating_sub(age);
                    match self.deliver(&p.alert, deadline).await {
                        End::Stopped => return,
                        End::Delivered => {
                            let now = now_ms();
                            self.store.with(|s| {
                                s.outbox.retain(|q| q.alert.id != id);
                                let r = s.records.entry(self.dest.tag.clone()).or_default();
                                r.sent += 1;
                                r.last_sent_unix_ms = now;
                            });
                            self.store.persist_until_ok(&self.stop).await;
                            self.count_pending();
                            info!(destination = %self.dest.redacted, alert_id = %id, kind = %p.alert.kind, "alert delivered");
                        }
                        End::Failed(reason) => {
                            let now = now_ms();
                            self.store.with(|s| {
                                s.outbox.retain(|q| q.alert.id != id);
                                let r = s.records.entry(self.dest.tag.clone()).or_default();
                                r.failed += 1;
                                r.last_error = reason.clone();
                                r.last_error_unix_ms = now;
                                s.failed.push(Failed {
                                    dest: self.dest.tag.clone(),
                                    id: id.clone(),
                                    reason: reason.clone(),
                                    unix_ms: now,
                                });
                                let extra = s.failed.len().saturating_sub(FAILED_KEPT);
                                s.failed.drain(..extra);
                            });
                            self.store.persist_until_ok(&self.stop).await;
                            self.count_pending();
                            self.store
                                .metrics()
                                .attempt(&self.dest.redacted, Attempt::Failed);
                            error!(destination = %self.dest.redacted, alert_id = %id, kind = %p.alert.kind, error = %reason, "alert not delivered; given up");
                        }
                    }
                }
                Job::Test { alert, reply } => {
                    let deadline = Instant::now() + self.settings.test_deadline;
                    let answer = match self.deliver(&alert, deadline).await {
                        End::Delivered => {
                            self.store.with(|s| {
                                let r = s.records.entry(self.dest.tag.clone()).or_default();
                                r.sent += 1;
                                r.last_sent_unix_ms = now_ms();
                            });
                            info!(destination = %self.dest.redacted, alert_id = %alert.id, "test alert delivered");
                            Ok(())
                        }
                        End::Failed(reason) => {
                            warn!(destination = %self.dest.redacted, alert_id = %alert.id, error = %reason, "test alert not delivered");
                            Err(reason)
                        }
                        End::Stopped => Err("the notifier is stopping".to_owned()),
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Sends until delivered, refused for good, past `deadline`, or
    /// stopped.
    async fn deliver(&mut self, alert: &Alert, deadline: Instant) -> End {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        let mut attempts = 0u32;
        loop {
            if let Some(t) = self.pause_until.take()
                && !self.sleep_until(t).await
            {
                return End::Stopped;
            }
            let wait = self.bucket.wait();
            if !wait.is_zero() && !self.sleep_until(Instant::now() + wait).await {
                return End::Stopped;
            }
            self.bucket.take();
            attempts += 1;
            let sent = tokio::select! {
                r = self.dest.send(&self.client, alert, self.settings.request_timeout) => r,
                () = self.stop.cancelled() => return End::Stopped,
            };
            let metrics = self.store.metrics();
            let (wait, reason) = match sent {
                Ok(s) => {
                    metrics.attempt(&self.dest.redacted, Attempt::Delivered);
                    self.pause_until = s.pause.map(|d| Instant::now() + d);
                    return End::Delivered;
                }
                Err(SendError::Permanent(reason)) => {
                    return End::Failed(format!("refused: {reason}"));
                }
                Err(SendError::RateLimited {
                    retry_after: Some(d),
                    reason,
                }) => {
                    metrics.attempt(&self.dest.redacted, Attempt::RateLimited);
                    (d, reason)
                }
                Err(e) => {
                    metrics.attempt(
                        &self.dest.redacted,
                        if matches!(e, SendError::RateLimited { .. }) {
                            Attempt::RateLimited
                        } else {
                            Attempt::Retried
                        },
                    );
                    (backoff.next_delay(), e.reason().to_owned())
                }
            };
            let now = now_ms();
            self.store.with(|s| {
                let r = s.records.entry(self.dest.tag.clone()).or_default();
                r.last_error = reason.clone();
                r.last_error_unix_ms = now;
                if let Some(p) = s.outbox.iter_mut().find(|p| p.alert.id == alert.id) {
                    p.attempts = p.attempts.saturating_add(1);
                }
            });
            if Instant::now() + wait > deadline {
                return End::Failed(format!(
                    "gave up after {attempts} attempt(s) (the delivery deadline passed): {reason}"
                ));
            }
            warn!(
                destination = %self.dest.redacted,
                alert_id = %alert.id,
                attempt = attempts,
                retry_in_ms = wait.as_millis() as u64,
                error = %reason,
                "alert not delivered yet; retrying"
            );
            if !self.sleep_until(Instant::now() + wait).await {
                return End::Stopped;
            }
        }
    }

    fn count_pending(&self) {
        let n = self
            .store
            .with(|s| s.outbox.iter().filter(|p| p.dest == self.dest.tag).count());
        self.store.metrics().set_pending(&self.dest.redacted, n);
    }

    /// Sleeps; false when stopped first.
    async fn sleep_until(&self, t: Instant) -> bool {
        tokio::select! {
            () = tokio::time::sleep_until(t) => true,
            () = self.stop.cancelled() => false,
        }
    }
}

/// A token bucket: `burst` sends at once, then `per_minute` a minute.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, per_minute: f64) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            tokens: capacity,
            per_sec: (per_minute / 60.0).max(1e-6),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
    }

    /// How long until a token is there.
    fn wait(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
        }
    }

    fn take(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_paces() {
        let mut b = TokenBucket::new(2, 60.0);
        assert!(b.wait().is_zero());
        b.take();
        assert!(b.wait().is_zero());
        b.take();
        let w = b.wait();
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.wait().is_zero());
    }
}
