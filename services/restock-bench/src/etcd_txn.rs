//! What one write of the arbiter's etcd store costs by itself: a
//! transaction guarded by a leadership key's create revision that puts one
//! journal record, as `purchase-arbiter --store etcd` writes every change
//! (issue 13: an etcd-store hand-off should cost about one of these over a
//! file-store one, no more). Also reads the record sizes a run left in etcd
//! and removes a run's keys.
//!
//! Uses the `etcd-client` crate, as the arbiter does (the same client
//! library, so the same client-side cost); the lock baseline in
//! [`crate::etcd_lock`] predates it in the workspace.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};

use crate::stats::Latencies;

/// The record size used when a run left no journal record to measure.
pub const DEFAULT_RECORD_BYTES: usize = 1024;

async fn connect(url: &str) -> anyhow::Result<Client> {
    tokio::time::timeout(Duration::from_secs(10), Client::connect([url], None))
        .await
        .with_context(|| format!("no connection to etcd at {url} within 10 s"))?
        .with_context(|| format!("connecting to etcd at {url}"))
}

/// `count` guarded transactions, each putting a new `record_bytes` value
/// under `prefix` (a new key each time, as journal records are), guarded by
/// a key's create revision as the arbiter's leader guards its writes.
/// Removes its keys afterwards.
pub async fn guarded_puts(
    url: &str,
    prefix: &str,
    count: usize,
    record_bytes: usize,
) -> anyhow::Result<Latencies> {
    let mut client = connect(url).await?;
    let leader = format!("{prefix}leader");
    client
        .put(leader.clone(), "bench", None)
        .await
        .context("etcd: putting the guard key")?;
    let got = client
        .get(leader.clone(), None)
        .await
        .context("etcd: reading the guard key")?;
    let Some(revision) = got.kvs().first().map(|kv| kv.create_revision()) else {
        bail!("etcd: the guard key {leader} is not there after putting it");
    };
    let value = vec![b'x'; record_bytes];
    let mut lat = Latencies::with_capacity(count);
    for n in 0..count {
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(
                format!("{prefix}journal/{n:020}"),
                value.clone(),
                None,
            )]);
        let t0 = Instant::now();
        let r = client.txn(txn).await.context("etcd: a guarded txn")?;
        lat.record(t0.elapsed());
        if !r.succeeded() {
            bail!("etcd: guarded txn {n} failed its guard (nothing else writes {leader})");
        }
    }
    delete_prefix(url, prefix).await?;
    Ok(lat)
}

/// The median size of the journal records an arbiter left under `prefix`
/// (`None` when there are none, e.g. a whole write replaced them last).
pub async fn journal_record_bytes(url: &str, prefix: &str) -> anyhow::Result<Option<usize>> {
    let mut client = connect(url).await?;
    let r = client
        .get(
            format!("{prefix}journal/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .context("etcd: reading journal records")?;
    let mut sizes: Vec<usize> = r.kvs().iter().map(|kv| kv.value().len()).collect();
    sizes.sort_unstable();
    Ok(sizes.get(sizes.len() / 2).copied())
}

/// etcd's current revision: it rises by one with every transaction that
/// writes, so the rise across a run counts the arbiter's etcd writes.
pub async fn revision(url: &str) -> anyhow::Result<i64> {
    let mut client = connect(url).await?;
    let r = client
        .get("/", None)
        .await
        .context("etcd: reading the revision")?;
    r.header()
        .map(|h| h.revision())
        .context("etcd answered without a header")
}

/// Deletes every key under `prefix` (a finished measurement's state).
pub async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    client
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await
        .with_context(|| format!("etcd: deleting {prefix}"))?;
    Ok(())
}
