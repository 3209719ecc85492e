//! The state in etcd (`--store etcd`): the same [`Snapshot`] and [`Delta`]
//! records as the state file, as etcd keys under `--etcd-prefix`, written
//! only by the replica that leads.
//!
//! - `<prefix>state`: the whole state, as JSON, naming its generation
//!   (`Snapshot::journal`).
//! - `<prefix>journal/<generation>/<n>`: one record per later write, `n`
//!   zero-padded so etcd's key order is the write order.
//! - `<prefix>election`: the election (etcd's election API keeps one key per
//!   candidate under it; the oldest is the leader, its value the leader's
//!   `--advertise-url`).
//! - `<prefix>written`: the marker that a state was ever written here, put
//!   with every whole state. A replica that finds the marker but no state
//!   knows the state was lost (deleted, or a wrong prefix restored) and
//!   refuses to start a new one, which would hand out fencing tokens from 1
//!   again (`crate::ha`).
//!
//! **Every write is a transaction guarded by the leadership key**: it
//! succeeds only while the key this replica was elected with still exists
//! with the create revision it had (a key re-created by a later campaign has
//! another). So a replica that was paused, cut off or outvoted, and does not
//! know it yet, can make nothing durable: its write fails as a whole, the
//! store says [`StoreError::Deposed`], and the term's stop signal ends the
//! term at once (no answer, push or event of the failed batch goes out: the
//! task shows nothing a write does not hold). Writing the whole state
//! replaces the journal in the same transaction, so a reader sees either the
//! old state and its journal or the new state, never a mix.
//!
//! **And on the state key's revision**: every transaction also compares the
//! `mod_revision` of `<prefix>state` with the one this term last read or
//! wrote. A write whose answer timed out may still be applied by etcd later
//! (a member that was paused or cut off holds it, then passes it on), after
//! the retry that replaced it and the journal records after that: within
//! the same term the leadership key still stands, so without this compare
//! that late whole state would put the state back and its journal delete
//! would take the newer records with it. With it, the late write finds the
//! key moved and changes nothing. A retry that finds the key moved by its
//! own late-applied first try fails the same way, and the term steps down:
//! the next term reads back whatever etcd holds (safe, if not the fastest).
//!
//! Reading (by a replica that has just been elected) takes the state and its
//! journal's records in order. Fencing tokens are part of every record
//! (`next_fencing_token`), so they rise across every change of leader.
//!
//! etcd keeps every old version of a key until its history is compacted;
//! with `--etcd-compact` (the default) the leader compacts it after each
//! whole state it writes, keeping the last [`ETCD_KEEP_REVISIONS`].
//!
//! The task's writes run on a blocking thread (as the state file's fsyncs
//! do); each request here is bounded by the store's timeout, so a lost etcd
//! never holds a write for longer.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    StateStore, StoreError,
    format::{Delta, SNAPSHOT_VERSION, Snapshot},
};
use crate::limits::{ETCD_JOURNAL_COMPACT, ETCD_KEEP_REVISIONS, JOURNAL_SNAPSHOT_RATIO};

/// The keys of one deployment under its prefix.
#[derive(Debug, Clone)]
pub struct EtcdKeys {
    pub election: String,
    pub snapshot: String,
    pub journal: String,
    pub marker: String,
}

impl EtcdKeys {
    pub fn new(prefix: &str) -> Self {
        Self {
            election: format!("{prefix}election"),
            snapshot: format!("{prefix}state"),
            journal: format!("{prefix}journal/"),
            marker: format!("{prefix}written"),
        }
    }

    fn journal_of(&self, generation: u64) -> String {
        format!("{}{generation:020}/", self.journal)
    }
}

/// Runs one etcd request with a time limit, naming the step if it fails.
/// A request that never left (no connection to the member the client
/// picked, e.g. one that was just killed) is sent again at once, within the
/// same limit: the client balances over every endpoint, and the next try
/// goes elsewhere. A request that may have reached etcd is never repeated
/// here (its outcome is unknown; the caller decides).
pub async fn bounded<T, F>(
    endpoints: &str,
    step: &'static str,
    limit: Duration,
    mut request: impl FnMut() -> F,
) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    let fail = |message: String| StoreError::Etcd {
        endpoints: endpoints.to_owned(),
        step,
        message,
    };
    let tries = async {
        loop {
            match request().await {
                Err(e) if never_sent(&e) => {
                    debug!(step, error = %e, "etcd request not sent; trying another member");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    };
    match tokio::time::timeout(limit, tries).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {limit:?}"))),
    }
}

/// Whether `e` says the request never reached etcd (no connection).
pub fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        _ => false,
    }
}

/// What a new term reads from etcd.
#[derive(Debug)]
pub struct Loaded {
    /// The state and its journal applied; `None` when etcd holds none.
    pub snapshot: Option<Snapshot>,
    /// The `mod_revision` of the state key (0 when there is none): the
    /// term's writes are guarded on it.
    pub state_revision: i64,
    /// Whether the marker that a state was ever written here is present.
    pub marker: bool,
}

/// The marker's value (what it says to someone reading etcd by hand).
const MARKER_VALUE: &str = "a restock arbiter state has been written under this prefix; if the state key beside it is missing, that state was lost";

/// Reads the state and its journal, and the marker.
pub async fn load(
    client: &Client,
    endpoints: &str,
    keys: &EtcdKeys,
    limit: Duration,
) -> Result<Loaded, StoreError> {
    let kv = client.kv_client();
    // One transaction, so the state and the marker are read at one
    // revision.
    let read = Txn::new().and_then([
        TxnOp::get(keys.snapshot.clone(), None),
        TxnOp::get(keys.marker.clone(), None),
    ]);
    let got = bounded(endpoints, "read the state", limit, || {
        let mut kv = kv.clone();
        let read = read.clone();
        async move { kv.txn(read).await }
    })
    .await?;
    let mut ranges = got.op_responses().into_iter().filter_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => Some(g),
        _ => None,
    });
    let state = ranges.next();
    let marker = ranges.next().is_some_and(|g| !g.kvs().is_empty());
    let Some(kv_pair) = state.as_ref().and_then(|g| g.kvs().first()) else {
        return Ok(Loaded {
            snapshot: None,
            state_revision: 0,
            marker,
        });
    };
    let state_revision = kv_pair.mod_revision();
    let corrupt = |key: &str, message: String| StoreError::EtcdCorrupt {
        key: key.to_owned(),
        message,
    };
    let mut snapshot: Snapshot = serde_json::from_slice(kv_pair.value())
        .map_err(|e| corrupt(&keys.snapshot, e.to_string()))?;
    if snapshot.version > SNAPSHOT_VERSION {
        return Err(corrupt(
            &keys.snapshot,
            format!(
                "format version {}; this arbiter reads versions 1 to {SNAPSHOT_VERSION}",
                snapshot.version
            ),
        ));
    }
    let prefix = keys.journal_of(snapshot.journal);
    let records = bounded(endpoints, "read the journal", limit, || {
        let mut kv = kv.clone();
        let prefix = prefix.clone();
        async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
    })
    .await?;
    // etcd returns a range in key order, which is the write order.
    for r in records.kvs() {
        let key = String::from_utf8_lossy(r.key()).into_owned();
        let delta: Delta =
            serde_json::from_slice(r.value()).map_err(|e| corrupt(&key, e.to_string()))?;
        snapshot.apply(delta);
    }
    Ok(Loaded {
        snapshot: Some(snapshot),
        state_revision,
        marker,
    })
}

/// The leadership key a term was elected with: writes succeed only while
/// it stands.
#[derive(Debug, Clone)]
pub struct Guard {
    pub key: Vec<u8>,
    pub revision: i64,
}

impl Guard {
    fn describe(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }
}

/// How to reach this deployment's keys.
#[derive(Clone)]
pub struct EtcdAccess {
    pub client: Client,
    /// For messages.
    pub endpoints: String,
    pub keys: EtcdKeys,
    /// Bound of one request.
    pub limit: Duration,
    /// Compact etcd's history after each whole write.
    pub compact: bool,
}

/// One leader term's writer (see the module documentation).
#[derive(Clone)]
pub struct EtcdState {
    client: Client,
    endpoints: String,
    keys: EtcdKeys,
    guard: Guard,
    /// Cancelled when a write finds the leadership gone: ends the term.
    deposed: CancellationToken,
    compact: bool,
    /// Bound of one etcd request.
    limit: Duration,
    runtime: tokio::runtime::Handle,
    journal: Arc<Mutex<Journal>>,
}

#[derive(Debug, Default)]
struct Journal {
    /// The generation of the state last read or written.
    generation: u64,
    /// The state key's `mod_revision` as this term last read or wrote it
    /// (0: no state key): every write is guarded on it.
    state_revision: i64,
    /// Records written after it (this term).
    records: u64,
    bytes: u64,
    snapshot_bytes: u64,
    /// False until this term wrote the whole state, and after a failed
    /// write (its outcome is unknown): the next write is a whole one.
    whole_written: bool,
}

impl std::fmt::Debug for EtcdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdState")
            .field("endpoints", &self.endpoints)
            .field("keys", &self.keys)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl EtcdState {
    /// A writer for the term elected with `guard`, continuing after the
    /// generation it read. Must be made on the runtime it blocks on.
    pub fn new(
        access: EtcdAccess,
        guard: Guard,
        loaded: &Loaded,
        deposed: CancellationToken,
    ) -> Self {
        let generation = loaded.snapshot.as_ref().map_or(0, |s| s.journal);
        Self {
            client: access.client,
            endpoints: access.endpoints,
            keys: access.keys,
            guard,
            deposed,
            compact: access.compact,
            limit: access.limit,
            runtime: tokio::runtime::Handle::current(),
            journal: Arc::new(Mutex::new(Journal {
                generation,
                state_revision: loaded.state_revision,
                ..Journal::default()
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deposed_error(&self) -> StoreError {
        StoreError::Deposed {
            key: self.guard.describe(),
            revision: self.guard.revision,
        }
    }

    /// `ops` in a transaction guarded by the leadership key and by the
    /// state key's revision as this term last saw it (see the module
    /// documentation).
    fn guarded_txn(&self, state_revision: i64, ops: Vec<TxnOp>) -> Txn {
        Txn::new()
            .when([
                self.guard.compare(),
                Compare::mod_revision(self.keys.snapshot.clone(), CompareOp::Equal, state_revision),
            ])
            .and_then(ops)
    }

    /// The transaction that writes `snapshot` as the whole state of the
    /// next generation after `j`'s: its generation, encoded size and txn.
    fn whole_state_txn(
        &self,
        j: &Journal,
        mut snapshot: Snapshot,
    ) -> Result<(u64, u64, Txn), StoreError> {
        let generation = j.generation + 1;
        snapshot.journal = generation;
        let value = to_json(&snapshot, &self.keys.snapshot)?;
        let bytes = value.len() as u64;
        let ops = vec![
            TxnOp::put(self.keys.snapshot.clone(), value, None),
            // Every older generation's records go in the same transaction.
            TxnOp::delete(
                self.keys.journal.clone(),
                Some(DeleteOptions::new().with_prefix()),
            ),
            TxnOp::put(self.keys.marker.clone(), MARKER_VALUE, None),
        ];
        Ok((generation, bytes, self.guarded_txn(j.state_revision, ops)))
    }

    /// Runs `txn` (from [`Self::guarded_txn`]); the revision it was written
    /// at.
    fn guarded(&self, step: &'static str, txn: Txn) -> Result<i64, StoreError> {
        if self.deposed.is_cancelled() {
            return Err(self.deposed_error());
        }
        let kv = self.client.kv_client();
        let answer = self
            .runtime
            .block_on(bounded(&self.endpoints, step, self.limit, || {
                let mut kv = kv.clone();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            }));
        match answer {
            Ok(r) if r.succeeded() => Ok(r.header().map_or(0, |h| h.revision())),
            Ok(_) => {
                let e = self.deposed_error();
                warn!(
                    error = %e,
                    state_key = %self.keys.snapshot,
                    "a guarded write failed its guard (the leadership key is gone or re-created, or the state key moved since this term last wrote it); stepping down"
                );
                self.deposed.cancel();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Compacts etcd's history up to [`ETCD_KEEP_REVISIONS`] before
    /// `revision`: a candidate that has just started waiting for the
    /// leader's key to go watches from a recent revision, and compacting
    /// past it would cut its campaign short.
    fn compact_to(&self, revision: i64) {
        let revision = revision - ETCD_KEEP_REVISIONS;
        if revision <= 0 {
            return;
        }
        let kv = self.client.kv_client();
        let done = self.runtime.block_on(bounded(
            &self.endpoints,
            "compact etcd's history",
            self.limit,
            || {
                let mut kv = kv.clone();
                async move { kv.compact(revision, None).await }
            },
        ));
        match done {
            Ok(_) => debug!(revision, "etcd history compacted"),
            // Another compaction got there first, or etcd is busy: the next
            // whole write tries again.
            Err(e) => debug!(error = %e, "etcd history not compacted"),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::EtcdCorrupt {
        key: what.to_owned(),
        message: format!("cannot encode: {e}"),
    })
}

impl StateStore for EtcdState {
    fn describe(&self) -> String {
        format!("etcd {} key {}", self.endpoints, self.keys.snapshot)
    }

    fn fsyncs(&self) -> bool {
        // Every write waits for etcd (a network round trip and etcd's own
        // fsync): on a blocking thread.
        true
    }

    fn needs_full(&self) -> bool {
        let j = self.lock();
        !j.whole_written
            || j.bytes >= ETCD_JOURNAL_COMPACT.max(JOURNAL_SNAPSHOT_RATIO * j.snapshot_bytes)
    }

    fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut j = self.lock();
        let (generation, bytes, txn) = self.whole_state_txn(&j, snapshot)?;
        j.whole_written = false;
        let revision = self.guarded("write the whole state", txn)?;
        *j = Journal {
            generation,
            // The put is part of this transaction: the key's mod_revision
            // is the transaction's revision.
            state_revision: revision,
            records: 0,
            bytes: 0,
            snapshot_bytes: bytes,
            whole_written: true,
        };
        drop(j);
        if self.compact && revision > 0 {
            self.compact_to(revision);
        }
        Ok(())
    }

    fn append(&self, mut delta: Delta) -> Result<(), StoreError> {
        let mut j = self.lock();
        delta.journal = j.generation;
        let n = j.records + 1;
        let key = format!("{}{n:020}", self.keys.journal_of(j.generation));
        let value = to_json(&delta, &key)?;
        let bytes = value.len() as u64;
        let txn = self.guarded_txn(j.state_revision, vec![TxnOp::put(key, value, None)]);
        match self.guarded("write a journal record", txn) {
            Ok(_) => {
                j.records = n;
                j.bytes += bytes;
                Ok(())
            }
            Err(e) => {
                // Whether it was written is unknown: the next write is a
                // whole one, which replaces the journal either way.
                j.whole_written = false;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real three-member etcd cluster (the test kit's); skipped
    //! where etcd is not installed, unless RESTOCK_REQUIRE_ETCD is set.

    use restock_domain::PriorityList;
    use restock_testkit::etcd::EtcdCluster;

    use super::*;
    use crate::{
        slot::{Arbiter, Clock, Timing},
        store::saved::{SaveMarks, snapshot},
    };

    fn arbiter() -> Arbiter {
        let catalog = PriorityList::parse(r#"{"products":[{"tcin":"A"}]}"#, "test.json").unwrap();
        let timing = Timing {
            lease_ttl: Duration::from_secs(30),
            stock_ttl: Duration::from_secs(30),
            failure_cooldown: Duration::from_secs(30),
            test_mode: false,
        };
        Arbiter::new(catalog, timing, Clock::new().now())
    }

    /// A whole state whose next fencing token says which write it is.
    fn state(next_token: u64) -> Snapshot {
        let mut s = snapshot(&arbiter(), Clock::new().now());
        s.next_fencing_token = next_token;
        s
    }

    fn record(next_token: u64) -> Delta {
        let (mut d, _) = SaveMarks::default().delta(&arbiter(), Clock::new().now());
        d.next_fencing_token = next_token;
        d
    }

    /// Elected through `client`: the guard its writes carry.
    async fn elected(client: &Client, keys: &EtcdKeys) -> Guard {
        let lease = client.lease_client().grant(60, None).await.unwrap().id();
        let mut won = client
            .election_client()
            .campaign(keys.election.clone(), "test", lease)
            .await
            .unwrap();
        let leader = won.take_leader().expect("a leader key");
        Guard {
            key: leader.key().to_vec(),
            revision: leader.rev(),
        }
    }

    /// A term's writer that talks to etcd through `client` alone.
    fn writer(client: &Client, keys: &EtcdKeys, guard: &Guard, loaded: &Loaded) -> EtcdState {
        let access = EtcdAccess {
            client: client.clone(),
            endpoints: "test".into(),
            keys: keys.clone(),
            limit: Duration::from_secs(5),
            compact: false,
        };
        EtcdState::new(access, guard.clone(), loaded, CancellationToken::new())
    }

    /// Issue 19, finding 5: the first try of a whole-state write goes to a
    /// member that is paused (SIGSTOP), so its answer never comes; the retry (same generation,
    /// same term) commits through another member, and a journal record
    /// follows. When the paused member wakes, the first try reaches etcd
    /// late. Guarded on the leadership key alone it applied (the key still
    /// stands within the term): the state went back and its journal delete
    /// took the newer record. Guarded also on the state key's revision, it
    /// changes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_state_write_applied_late_cannot_roll_the_state_back() {
        let Some(etcd) = EtcdCluster::start(3).await else {
            return;
        };
        let urls = etcd.client_urls();
        let keys = EtcdKeys::new("/late-write/");
        let mut clients = Vec::new();
        for url in &urls {
            clients.push(Client::connect([url.clone()], None).await.unwrap());
        }
        // Pause a member that does not lead etcd's own raft, so the rest
        // commit at once (pausing the raft leader makes them elect another
        // first, and etcd answers "request timed out" meanwhile).
        let mut follower = None;
        for (i, c) in clients.iter_mut().enumerate() {
            let s = c.status().await.unwrap();
            if s.header().map(|h| h.member_id()) != Some(s.leader()) {
                follower = Some(i);
                break;
            }
        }
        let p = follower.expect("two of three members follow");
        let paused = clients[p].clone();
        let other = clients[(p + 1) % clients.len()].clone();
        let guard = elected(&other, &keys).await;
        let loaded = load(&other, "test", &keys, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(loaded.snapshot.is_none() && !loaded.marker);
        let first_try = writer(&paused, &keys, &guard, &loaded);
        let retry = writer(&other, &keys, &guard, &loaded);

        etcd.stop(p);
        // Sent, and left to etcd: the store's time limit gives up waiting
        // for the answer, but what was sent may still be applied.
        let (_, _, late_txn) = {
            let j = first_try.lock();
            first_try.whole_state_txn(&j, state(100)).unwrap()
        };
        let mut kv = paused.kv_client();
        let late = tokio::spawn(async move { kv.txn(late_txn).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!late.is_finished(), "the paused member answered");

        tokio::task::spawn_blocking(move || {
            retry.save(state(200))?;
            retry.append(record(201))
        })
        .await
        .unwrap()
        .expect("the retry and the next record commit through another member");

        etcd.cont(p);
        let answer = tokio::time::timeout(Duration::from_secs(20), late)
            .await
            .expect("the woken member answers")
            .unwrap();
        if let Ok(r) = &answer {
            assert!(!r.succeeded(), "the late whole-state write was applied");
        }
        let now = load(&other, "test", &keys, Duration::from_secs(5))
            .await
            .unwrap();
        let s = now.snapshot.expect("a state");
        assert_eq!(
            s.next_fencing_token, 201,
            "the retry's state and its journal record stand"
        );
        assert!(now.marker, "a whole write leaves the marker");
    }
}
