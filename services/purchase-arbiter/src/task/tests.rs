//! The task's promises about the disk, checked in-process against a state
//! file whose writes fail or wait on demand ([`TestDisk`]): nothing is
//! answered, published, pushed or shown before the write that holds it
//! succeeded, and a failing disk is tried again on a timer, not in a loop.
//!
//! Real time, not paused: writes run on blocking threads, and a test that
//! holds one at its gate would stop paused time from ever advancing.

use std::{
    io,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use restock_domain::{EventKind, Observation, PriorityList, ProductId, WatcherId};
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use restock_runtime::metrics::{Format, Registry, render};

use super::*;
use crate::{
    slot::{Clock, Timing},
    store::{
        StateFile,
        format::{Delta, Snapshot},
        saved,
    },
};

/// A state file whose writes can be made to fail, as on a full or broken
/// disk, or to wait at a gate, as on a slow one.
#[derive(Clone)]
struct TestDisk {
    file: StateFile,
    refuse: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    waiting: usize,
}

impl TestDisk {
    fn new(path: PathBuf) -> Self {
        Self {
            // No real fsync: the tests are about the order of things, and a
            // fsync per write only makes them slower.
            file: StateFile::new(Some(path), false),
            refuse: Arc::default(),
            attempts: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// From now on every write fails (or succeeds again).
    fn refuse_writes(&self, refuse: bool) {
        self.refuse.store(refuse, SeqCst);
    }

    /// Writes tried so far, failed or not.
    fn attempts(&self) -> usize {
        self.attempts.load(SeqCst)
    }

    /// Writes from now on wait until [`Self::open_gate`].
    fn close_gate(&self) {
        self.gate.state.lock().unwrap().closed = true;
    }

    fn open_gate(&self) {
        self.gate.state.lock().unwrap().closed = false;
        self.gate.changed.notify_all();
    }

    fn waiting_at_gate(&self) -> usize {
        self.gate.state.lock().unwrap().waiting
    }

    fn write(&self, write: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.attempts.fetch_add(1, SeqCst);
        {
            let mut g = self.gate.state.lock().unwrap();
            g.waiting += 1;
            while g.closed {
                g = self.gate.changed.wait(g).unwrap();
            }
            g.waiting -= 1;
        }
        if self.refuse.load(SeqCst) {
            return Err(StoreError::Write {
                path: self.file.describe(),
                step: "fdatasync journal",
                source: io::Error::other("no space left on the test disk"),
            });
        }
        write()
    }
}

impl StateStore for TestDisk {
    fn describe(&self) -> String {
        self.file.describe()
    }

    /// Writes go to a blocking thread, as with a real disk.
    fn fsyncs(&self) -> bool {
        true
    }

    fn needs_full(&self) -> bool {
        self.file.needs_full()
    }

    fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        self.write(|| self.file.save(snapshot))
    }

    fn append(&self, delta: Delta) -> Result<(), StoreError> {
        self.write(|| self.file.append(delta))
    }
}

const ABC: &str = r#"{"products":[{"tcin":"A"},{"tcin":"B"},{"tcin":"C"}]}"#;

fn timing(lease_ttl: Duration) -> Timing {
    Timing {
        lease_ttl,
        stock_ttl: Duration::from_secs(60),
        failure_cooldown: Duration::from_secs(60),
        test_mode: false,
    }
}

/// An arbiter task over a [`TestDisk`] in a temporary folder.
struct Running {
    handle: ArbiterHandle,
    /// What the task records, registered for [`Self::metrics_page`].
    metrics: Registry,
    disk: TestDisk,
    path: PathBuf,
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
    /// The temporary folder, when this run made it.
    dir: Option<tempfile::TempDir>,
}

impl Running {
    async fn start(lease_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut r = Self::start_at(path, lease_ttl).await;
        r.dir = Some(dir);
        r
    }

    /// Starts from what the state file at `path` holds (a restart), or
    /// fresh if there is none.
    async fn start_at(path: PathBuf, lease_ttl: Duration) -> Self {
        let disk = TestDisk::new(path.clone());
        let catalog = PriorityList::parse(ABC, "test.json").unwrap();
        let clock = Clock::new();
        let arbiter = match disk.file.load().unwrap() {
            Some(s) => saved::restore(s, catalog, timing(lease_ttl), clock.now()).unwrap(),
            None => Arbiter::new(catalog, timing(lease_ttl), clock.now()),
        };
        let stop = CancellationToken::new();
        let metrics = ArbiterMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (handle, task) = spawn(arbiter, clock, disk.clone(), stop.clone(), metrics, true);
        // The start-up write is done once a first call is answered.
        handle.status().await.unwrap();
        Self {
            handle,
            metrics: registry,
            disk,
            path,
            task: Some(task),
            stop,
            dir: None,
        }
    }

    /// `/metrics` as a scrape would see it now.
    fn metrics_page(&self) -> String {
        render(&self.metrics, Format::Text)
    }

    /// Opens a watcher's stream; its first message is the catalog.
    async fn connect(&self, watcher: &str) -> (u64, mpsc::Receiver<WatcherMessage>) {
        let conn = self.handle.new_conn();
        let (tx, mut rx) = mpsc::channel(16);
        self.handle.connect(w(watcher), conn, tx).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(first, Ok(Some(WatcherMessage::Catalog(_)))),
            "{first:?}"
        );
        (conn, rx)
    }

    async fn report_in_stock(&self, watcher: &str, conn: u64, tcin: &str) {
        let obs = Observation {
            tcin: t(tcin),
            in_stock: true,
            price: None,
            observed_at_unix_ms: 0,
        };
        self.handle
            .report(w(watcher), conn, None, None, vec![obs], None)
            .await
            .unwrap();
    }

    /// A follower of every event from now on.
    async fn follow(&self) -> broadcast::Receiver<Event> {
        self.handle.events(u64::MAX).await.unwrap().1
    }

    /// What a restarted arbiter would read.
    fn on_disk(&self) -> Snapshot {
        StateFile::new(Some(self.path.clone()), false)
            .load()
            .unwrap()
            .expect("a state file")
    }

    /// Stops the task at once, without a last write: `kill -9`. Returns
    /// the state file, and its folder for the caller to keep until the
    /// restarted run is done.
    async fn crash(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        (self.path.clone(), self.dir.take())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        self.disk.open_gate();
    }
}

fn t(s: &str) -> ProductId {
    ProductId::parse(s).unwrap()
}

fn w(s: &str) -> WatcherId {
    WatcherId::parse(s).unwrap()
}

/// Waits (up to 5 s) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 5 s for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every event received so far.
fn received(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut got = Vec::new();
    while let Ok(e) = rx.try_recv() {
        got.push(e);
    }
    got
}

fn grants(events: &[Event]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Granted)
        .map(|e| {
            (
                e.watcher_id.as_ref().map_or("", |w| w.as_str()).to_owned(),
                e.fencing_token.map_or(0, |t| t.0),
            )
        })
        .collect()
}

fn persist_failed<T: std::fmt::Debug>(r: Result<T, ArbiterError>) -> bool {
    matches!(r, Err(ArbiterError::Persist(_)))
}

// ----- a write that fails -----

#[tokio::test]
async fn a_grant_whose_write_failed_is_not_answered_published_or_shown_until_a_write_holds_it() {
    let a = Running::start(Duration::from_secs(30)).await;
    let mut follower = a.follow().await;
    a.disk.refuse_writes(true);

    let first = a.handle.acquire(t("A"), w("w1"), "r1".into()).await;
    assert!(persist_failed(first), "the grant's write failed");
    // WatchEvents did not see a GRANTED its caller was never told of.
    assert_eq!(received(&mut follower), []);
    let (history, _) = a.handle.events(1).await.unwrap();
    assert_eq!(grants(&history), []);
    // Nothing else shows the unwritten lease either: not the status, not a
    // refusal naming its holder, not a retry of the same request.
    assert!(persist_failed(a.handle.status().await));
    assert!(persist_failed(
        a.handle.acquire(t("B"), w("w2"), "r2".into()).await
    ));
    assert!(persist_failed(
        a.handle.acquire(t("A"), w("w1"), "r1".into()).await
    ));
    assert_eq!(received(&mut follower), []);
    assert_eq!(a.on_disk().lease, None);

    // The disk comes back: the next write holds the grant, and only then is
    // it published, shown and returned to the retry.
    a.disk.refuse_writes(false);
    let retry = a.handle.acquire(t("A"), w("w1"), "r1".into()).await;
    let Ok(AcquireAnswer::Granted(lease)) = retry else {
        panic!("the retry gets the lease once it is written: {retry:?}")
    };
    assert_eq!(lease.token, FencingToken(1));
    let on_disk = a.on_disk().lease.expect("the lease is on disk");
    assert_eq!(on_disk.lease_id, lease.lease_id);
    until("the grant to be published", || {
        grants(&received(&mut follower)) == [("w1".to_owned(), 1)]
    })
    .await;
    let status = a.handle.status().await.unwrap();
    assert_eq!(status.lease.map(|l| l.lease_id), Some(lease.lease_id));
}

#[tokio::test]
async fn metrics_show_a_grant_or_a_refusal_only_once_a_write_holds_it() {
    let a = Running::start(Duration::from_secs(30)).await;
    let shows = |line: &str| {
        let page = a.metrics_page();
        assert!(page.contains(line), "{line:?} missing from\n{page}");
    };
    let refused = "restock_refusals_total{reason=\"another_purchase_active\"}";
    a.disk.refuse_writes(true);
    assert!(persist_failed(
        a.handle.acquire(t("A"), w("w1"), "r1".into()).await
    ));
    // Decided in memory (B is refused for A's lease), written nowhere.
    assert!(persist_failed(
        a.handle.acquire(t("B"), w("w2"), "r2".into()).await
    ));
    shows("restock_grants_total 0\n");
    shows("restock_slot_held 0\n");
    shows("restock_fencing_token 0\n");
    shows(&format!("{refused} 0\n"));
    shows("restock_products{state=\"attempting\"} 0\n");

    // The next write holds both: the grant and the refusal count once,
    // and the refusal's retry (answered from memory) adds nothing.
    a.disk.refuse_writes(false);
    let retry = a.handle.acquire(t("A"), w("w1"), "r1".into()).await;
    assert!(matches!(retry, Ok(AcquireAnswer::Granted(_))), "{retry:?}");
    let again = a.handle.acquire(t("B"), w("w2"), "r2".into()).await;
    assert!(matches!(again, Ok(AcquireAnswer::Refused(_))), "{again:?}");
    shows("restock_grants_total 1\n");
    shows("restock_slot_held 1\n");
    shows("restock_fencing_token 1\n");
    shows(&format!("{refused} 1\n"));
    shows("restock_products{state=\"attempting\"} 1\n");
    let page = a.metrics_page();
    let fsyncs = page
        .lines()
        .find_map(|l| l.strip_prefix("restock_journal_fsync_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(fsyncs.is_some_and(|n| n >= 1), "{page}");
}

#[tokio::test]
async fn an_expired_lease_counts_as_an_expiration_not_a_release_and_frees_the_slot() {
    let a = Running::start(Duration::from_millis(200)).await;
    let granted = a.handle.acquire(t("A"), w("w1"), String::new()).await;
    assert!(
        matches!(granted, Ok(AcquireAnswer::Granted(_))),
        "{granted:?}"
    );
    assert!(a.metrics_page().contains("restock_slot_held 1\n"));
    until("the lease to expire", || {
        a.metrics_page()
            .contains("restock_lease_expirations_total 1\n")
    })
    .await;
    let page = a.metrics_page();
    for line in [
        "restock_slot_held 0\n",
        "restock_lease_expires_timestamp_seconds 0.0\n",
        "restock_products{state=\"failed\"} 1\n",
        "restock_releases_total{outcome=\"aborted\"} 0\n",
        "restock_releases_total{outcome=\"failed\"} 0\n",
    ] {
        assert!(page.contains(line), "{line:?} missing from\n{page}");
    }
}

#[tokio::test]
async fn a_pushed_grant_whose_write_failed_is_never_seen_so_a_crash_cannot_hand_out_its_token_twice()
 {
    let a = Running::start(Duration::from_secs(30)).await;
    let mut follower = a.follow().await;
    let (conn, mut w1) = a.connect("w1").await;
    a.disk.refuse_writes(true);
    let before = a.disk.attempts();
    a.report_in_stock("w1", conn, "A").await;
    until("the grant's write", || a.disk.attempts() > before).await;
    // Give a wrongly published event or push time to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen_before_the_crash = received(&mut follower);
    assert_eq!(
        grants(&seen_before_the_crash),
        [],
        "{seen_before_the_crash:?}"
    );
    assert!(w1.try_recv().is_err(), "no grant on the stream");

    // kill -9 before any write succeeds: the disk never held token 1.
    let (path, _dir) = a.crash().await;
    let b = Running::start_at(path, Duration::from_secs(30)).await;
    let (conn, mut w2) = b.connect("w2").await;
    b.report_in_stock("w2", conn, "A").await;
    let pushed = tokio::time::timeout(Duration::from_secs(5), w2.recv()).await;
    let Ok(Some(WatcherMessage::Grant(lease))) = pushed else {
        panic!("w2 gets the slot: {pushed:?}")
    };
    // The restarted arbiter hands out token 1 again, to w2; nobody outside
    // ever saw it given to w1.
    assert_eq!(lease.token, FencingToken(1));
    assert_eq!(lease.watcher_id, w("w2"));
}

#[tokio::test]
async fn a_held_grant_is_dropped_if_its_lease_ended_before_a_write_held_it() {
    let ttl = Duration::from_millis(200);
    let a = Running::start(ttl).await;
    let mut follower = a.follow().await;
    let (conn, mut w1) = a.connect("w1").await;
    a.disk.refuse_writes(true);
    a.report_in_stock("w1", conn, "A").await;
    // The lease runs out while no write succeeds.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(grants(&received(&mut follower)), []);
    a.disk.refuse_writes(false);
    until("the held events to be published", || {
        let got = received(&mut follower);
        let kinds: Vec<EventKind> = got.iter().map(|e| e.kind).collect();
        kinds.contains(&EventKind::Expired)
    })
    .await;
    // The watcher never got a grant that was over before it could be
    // written, nor a revocation of it.
    assert!(w1.try_recv().is_err(), "{:?}", w1.try_recv());
    assert_eq!(a.on_disk().lease, None);
}

#[tokio::test]
async fn a_failing_disk_is_tried_again_on_a_timer_not_in_a_loop() {
    let a = Running::start(Duration::from_secs(30)).await;
    a.disk.refuse_writes(true);
    let before = a.disk.attempts();
    assert!(persist_failed(
        a.handle.acquire(t("A"), w("w1"), "r1".into()).await
    ));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let tries = a.disk.attempts() - before;
    // One try every WRITE_RETRY (250 ms) while nothing else happens.
    assert!(
        (2..=16).contains(&tries),
        "{tries} writes tried in 2 s with the disk failing"
    );
}

// ----- reads wait for the write of their batch -----

/// Queues `first` then `second` before the task runs, so they land in one
/// batch, in that order.
async fn one_batch<A, B>(
    first: impl Future<Output = A> + Send + 'static,
    second: impl Future<Output = B> + Send + 'static,
) -> (JoinHandle<A>, JoinHandle<B>)
where
    A: Send + 'static,
    B: Send + 'static,
{
    let mut first = Box::pin(first);
    let mut second = Box::pin(second);
    assert!(futures::poll!(&mut first).is_pending());
    assert!(futures::poll!(&mut second).is_pending());
    (tokio::spawn(first), tokio::spawn(second))
}

#[tokio::test]
async fn get_status_answers_after_the_write_of_its_batch() {
    let a = Running::start(Duration::from_secs(30)).await;
    a.disk.close_gate();
    let h = a.handle.clone();
    let acquire = async move { h.acquire(t("A"), w("w1"), "r1".into()).await };
    let h = a.handle.clone();
    let status = async move { h.status().await };
    let (acquire, status) = one_batch(acquire, status).await;
    until("the grant's write", || a.disk.waiting_at_gate() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A crash now would erase the lease: the status must not show it yet.
    assert!(!status.is_finished(), "GetStatus answered before the write");
    assert!(!acquire.is_finished());
    a.disk.open_gate();
    let status = status.await.unwrap().unwrap();
    let lease = status.lease.expect("the written lease");
    assert_eq!(lease.token, FencingToken(1));
    assert!(matches!(
        acquire.await.unwrap(),
        Ok(AcquireAnswer::Granted(_))
    ));
}

#[tokio::test]
async fn watch_events_hands_out_only_what_is_written_then_the_rest_as_it_is() {
    let a = Running::start(Duration::from_secs(30)).await;
    a.disk.close_gate();
    let h = a.handle.clone();
    let acquire = async move { h.acquire(t("A"), w("w1"), "r1".into()).await };
    let h = a.handle.clone();
    let events = async move { h.events(1).await };
    let (acquire, events) = one_batch(acquire, events).await;
    until("the grant's write", || a.disk.waiting_at_gate() == 1).await;
    // The follower is answered at once, with history up to what is on
    // disk: the start-up event, not the grant being written.
    let (history, mut live) = events.await.unwrap().unwrap();
    let kinds: Vec<EventKind> = history.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::ArbiterStarted]);
    assert!(live.try_recv().is_err());
    a.disk.open_gate();
    acquire.await.unwrap().unwrap();
    // Once written, the grant follows on the live stream, right after.
    let next = tokio::time::timeout(Duration::from_secs(5), live.recv()).await;
    let next = next.unwrap().unwrap();
    assert_eq!(
        (next.kind, next.sequence),
        (EventKind::Granted, history[0].sequence + 1)
    );
}

// ----- a write that outlasts the lease -----

/// Every grant received on `rx` so far (other messages skipped).
fn grants_pushed(rx: &mut mpsc::Receiver<WatcherMessage>) -> Vec<ActiveLease> {
    let mut got = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let WatcherMessage::Grant(l) = m {
            got.push(l);
        }
    }
    got
}

#[tokio::test]
async fn a_grant_whose_write_outlasted_its_lease_is_never_pushed_and_the_next_product_is_granted() {
    // A 1 s lease; the write of its grant is held for 1.3 s (a sick disk, a
    // slow etcd txn, a paused process).
    let a = Running::start(Duration::from_secs(1)).await;
    let mut follower = a.follow().await;
    let (c1, mut rx1) = a.connect("w1").await;
    let (c2, mut rx2) = a.connect("w2").await;
    a.disk.close_gate();
    a.report_in_stock("w1", c1, "A").await;
    until("the grant's write", || a.disk.waiting_at_gate() == 1).await;
    a.report_in_stock("w2", c2, "B").await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    a.disk.open_gate();

    // The next product goes to w2, with a whole lease.
    let next = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx2.recv()).await {
            Ok(Some(WatcherMessage::Grant(l))) => break l,
            Ok(Some(_)) => continue,
            other => panic!("no grant for w2: {other:?}"),
        }
    };
    assert_eq!((next.tcin.as_str(), next.token), ("B", FencingToken(2)));
    // w1 never saw the grant whose lease had ended.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = grants_pushed(&mut rx1);
    assert!(
        late.is_empty(),
        "a grant past its deadline was pushed: {late:?}"
    );

    // The history says so: A granted, expired at once (never pushed), B
    // granted; in that order.
    let events: Vec<Event> = received(&mut follower)
        .into_iter()
        .filter(|e| e.fencing_token.is_some())
        .collect();
    let seen: Vec<(EventKind, &str, u64)> = events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.tcin.as_ref().map_or("", |t| t.as_str()),
                e.fencing_token.map_or(0, |t| t.0),
            )
        })
        .collect();
    assert_eq!(
        seen[..3],
        [
            (EventKind::Granted, "A", 1),
            (EventKind::Expired, "A", 1),
            (EventKind::Granted, "B", 2),
        ],
        "{events:#?}"
    );
    assert!(
        events[1].detail.contains("before it could be pushed"),
        "{:?}",
        events[1].detail
    );
}
