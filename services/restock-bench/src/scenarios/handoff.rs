//! Hand-off: one watcher holds the slot, N others wait with a product in
//! stock on their own streams. The holder releases (unary
//! `ReleasePurchase`); timed until the next grant reaches the next watcher's
//! stream. Baselines: a Redis lock whose waiters retry every 10 ms and every
//! 50 ms, and etcd's Lock call (waiters blocked in it).
//!
//! The Redis waiters run twice: taking turns in a fixed order (the next in
//! line gets the lock, as the next product in priority order gets the
//! slot), and first-come (whoever polls first; Redis itself knows no order).
//!
//! With etcd given, the arbiter is measured a third time as a lone
//! `--store etcd` replica (its own `--etcd-prefix`), and one guarded etcd
//! transaction putting a record of the size its journal records had is
//! timed by itself: issue 13 expects the etcd store's hand-off to cost
//! about one such transaction over the file store's, no more.
//!
//! Every watcher gets the slot once per round, in priority order: a holder
//! releases with OUT_OF_STOCK (its sighting is cleared), so the next product
//! down the list wins. Before the last one releases, every other watcher
//! reports its product in stock again; that set-up is not timed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use restock_proto::v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient};
use tokio::sync::mpsc;
use tracing::info;

use super::{Ctx, FSYNC_SETTINGS, etcd_replica, progress};
use crate::{
    etcd_lock, etcd_txn,
    redis_lock::{self, Order},
    restock::{
        self, ArbiterProcess, ArbiterSpec, Granted, WatcherStream, observation, product_ids,
    },
    stats::{Latencies, Row, Store, System},
};

const SCENARIO: &str = "handoff";
const WAIT: Duration = Duration::from_secs(10);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let variant = format!("{} waiters", ctx.waiters);
    for fsync in FSYNC_SETTINGS {
        info!(
            scenario = SCENARIO,
            fsync,
            handoffs = ctx.plan.handoffs,
            waiters = ctx.waiters,
            "restock hand-off"
        );
        let spec = ArbiterSpec::cycling(product_ids(ctx.waiters + 1), fsync);
        let lat = restock_handoff(ctx, &spec, ctx.plan.handoffs).await?;
        let row = Row::new(SCENARIO, System::Restock)
            .variant(variant.clone())
            .fsync(fsync)
            .store(Store::File)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    if let Some(url) = &ctx.etcd_url {
        rows.extend(etcd_store(ctx, url, &variant).await?);
    }
    if let Some(url) = &ctx.redis_url {
        for (order, label) in [
            (Order::Priority, "next in line"),
            (Order::AnyWaiter, "any waiter"),
        ] {
            for (retry, count) in [
                (Duration::from_millis(10), ctx.plan.redis_handoffs_10ms),
                (Duration::from_millis(50), ctx.plan.redis_handoffs_50ms),
            ] {
                info!(
                    scenario = SCENARIO,
                    retry_ms = retry.as_millis() as u64,
                    handoffs = count,
                    order = label,
                    "Redis lock hand-off"
                );
                let lat = redis_lock::handoff(url, ctx.waiters, retry, count, order).await?;
                let row = Row::new(SCENARIO, System::Redis)
                    .variant(format!(
                        "{variant}, retry every {} ms, {label}",
                        retry.as_millis()
                    ))
                    .fsync(false)
                    .latencies(&lat);
                progress(&row);
                rows.push(row);
            }
        }
    }
    if let Some(url) = &ctx.etcd_url {
        info!(
            scenario = SCENARIO,
            handoffs = ctx.plan.handoffs,
            "etcd lock hand-off"
        );
        let lat = etcd_lock::handoff(url, ctx.waiters, ctx.plan.handoffs).await?;
        let row = Row::new(SCENARIO, System::Etcd)
            .variant(format!("{variant}, blocked in Lock"))
            .fsync(ctx.etcd_fsync)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The hand-off with the arbiter on etcd, then one guarded etcd
/// transaction of the same record size.
async fn etcd_store(ctx: &Ctx, url: &str, variant: &str) -> anyhow::Result<Vec<Row>> {
    let replica = etcd_replica(url, "handoff")?;
    let prefix = replica.prefix.clone();
    info!(
        scenario = SCENARIO,
        handoffs = ctx.plan.handoffs,
        waiters = ctx.waiters,
        etcd_prefix = %prefix,
        "restock hand-off, arbiter on etcd (--store etcd)"
    );
    let spec = ArbiterSpec::cycling(product_ids(ctx.waiters + 1), true).on_etcd(replica);
    // Nothing else writes to etcd meanwhile: the revision's rise counts the
    // arbiter's writes (its start-up's few among thousands of hand-offs).
    let before = etcd_txn::revision(url).await?;
    let lat = restock_handoff(ctx, &spec, ctx.plan.handoffs).await?;
    let writes = (etcd_txn::revision(url).await? - before) as f64 / ctx.plan.handoffs as f64;
    info!(
        scenario = SCENARIO,
        etcd_writes_per_handoff = format!("{writes:.2}"),
        "the arbiter's etcd writes, counted by etcd's revision"
    );
    let mut rows = vec![
        Row::new(SCENARIO, System::Restock)
            .variant(format!(
                "{variant}, arbiter on etcd (--store etcd), {writes:.2} etcd writes per hand-off"
            ))
            .fsync(ctx.etcd_fsync)
            .store(Store::Etcd)
            .latencies(&lat),
    ];
    progress(&rows[0]);
    let measured = etcd_txn::journal_record_bytes(url, &prefix).await?;
    etcd_txn::delete_prefix(url, &prefix).await?;
    let bytes = measured.unwrap_or(etcd_txn::DEFAULT_RECORD_BYTES);
    info!(
        scenario = SCENARIO,
        txns = ctx.plan.handoffs,
        record_bytes = bytes,
        measured = measured.is_some(),
        "one guarded etcd txn, as the etcd store writes a hand-off's record"
    );
    let txn_prefix = restock::fresh_etcd_prefix("txn");
    let lat = etcd_txn::guarded_puts(url, &txn_prefix, ctx.plan.handoffs, bytes).await?;
    let row = Row::new(SCENARIO, System::Etcd)
        .variant(format!(
            "one guarded txn: put a {bytes}-byte record if the leader key stands"
        ))
        .fsync(ctx.etcd_fsync)
        .latencies(&lat);
    progress(&row);
    rows.push(row);
    Ok(rows)
}

async fn next_grant(grants: &mut mpsc::UnboundedReceiver<Granted>) -> anyhow::Result<Granted> {
    tokio::time::timeout(WAIT, grants.recv())
        .await
        .with_context(|| format!("no grant reached any watcher within {WAIT:?}"))?
        .context("every watcher stream closed")
}

async fn restock_handoff(ctx: &Ctx, spec: &ArbiterSpec, count: usize) -> anyhow::Result<Latencies> {
    let fsync = spec.fsync;
    let n = spec.products.len();
    let products = spec.products.clone();
    let mut arbiter = ArbiterProcess::start_leading(&ctx.env, spec).await?;
    let mut control = arbiter.client().await?;
    // Everyone reports first, so the first grant goes to the top product.
    restock::set_paused(&mut control, true).await?;
    let (grants_tx, mut grants) = mpsc::unbounded_channel();
    let mut streams = Vec::with_capacity(n);
    let mut unary = Vec::with_capacity(n);
    for (i, tcin) in products.iter().enumerate() {
        let channel = restock::connect(&arbiter.url).await?;
        unary.push(PurchaseArbiterClient::new(channel.clone()));
        streams.push(
            WatcherStream::open(
                channel,
                i,
                format!("bench-w{i}"),
                vec![observation(tcin, true)],
                grants_tx.clone(),
            )
            .await?,
        );
    }
    restock::wait_queued(&control, &products, WAIT).await?;
    restock::set_paused(&mut control, false).await?;
    let mut current = next_grant(&mut grants).await?;
    if current.watcher != 0 {
        bail!(
            "the first grant went to watcher {}, not to the top product's",
            current.watcher
        );
    }
    let mut lat = Latencies::with_capacity(count);
    for k in 0..count {
        let h = current.watcher;
        let last = h == n - 1;
        if last {
            for (j, s) in streams.iter().enumerate().take(n - 1) {
                s.report(vec![observation(&products[j], true)]).await?;
            }
            restock::wait_queued(&control, &products[..n - 1], WAIT).await?;
        }
        let t0 = Instant::now();
        restock::release(&mut unary[h], &current.lease, pb::Outcome::OutOfStock).await?;
        let next = next_grant(&mut grants).await?;
        lat.record(next.at.saturating_duration_since(t0));
        let expected = (h + 1) % n;
        if next.watcher != expected {
            bail!(
                "hand-off {k}: the grant went to watcher {}, expected {expected} (priority order)",
                next.watcher
            );
        }
        if last {
            streams[h]
                .report(vec![observation(&products[h], true)])
                .await?;
            restock::wait_queued(&control, &products[h..], WAIT).await?;
        }
        current = next;
        if (k + 1).is_multiple_of(1_000) {
            info!(
                scenario = SCENARIO,
                fsync,
                done = k + 1,
                of = count,
                "hand-offs"
            );
        }
    }
    arbiter.check_running()?;
    Ok(lat)
}
