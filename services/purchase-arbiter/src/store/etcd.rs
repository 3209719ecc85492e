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
}

impl EtcdKeys {
    pub fn new(prefix: &str) -> Self {
        Self {
            election: format!("{prefix}election"),
            snapshot: format!("{prefix}state"),
            journal: format!("{prefix}journal/"),
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

/// Reads the state and its journal (`None`: etcd holds no state yet).
pub async fn load(
    client: &Client,
    endpoints: &str,
    keys: &EtcdKeys,
    limit: Duration,
) -> Result<Option<Snapshot>, StoreError> {
    let kv = client.kv_client();
    let got = bounded(endpoints, "read the state", limit, || {
        let mut kv = kv.clone();
        let key = keys.snapshot.clone();
        async move { kv.get(key, None).await }
    })
    .await?;
    let Some(kv_pair) = got.kvs().first() else {
        return Ok(None);
    };
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
    Ok(Some(snapshot))
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
        generation: u64,
        deposed: CancellationToken,
    ) -> Self {
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

    /// Runs `ops` in a transaction guarded by the leadership key; the
    /// revision it was written at.
    fn guarded(&self, step: &'static str, ops: Vec<TxnOp>) -> Result<i64, StoreError> {
        if self.deposed.is_cancelled() {
            return Err(self.deposed_error());
        }
        let txn = Txn::new().when([self.guard.compare()]).and_then(ops);
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
                warn!(error = %e, "a guarded write failed its guard; stepping down");
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

    fn save(&self, mut snapshot: Snapshot) -> Result<(), StoreError> {
        let mut j = self.lock();
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
        ];
        j.whole_written = false;
        let revision = self.guarded("write the whole state", ops)?;
        *j = Journal {
            generation,
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
        match self.guarded("write a journal record", vec![TxnOp::put(key, value, None)]) {
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
