//! Grant latency and the unary cycle.
//!
//! - `grant`: the slot is free; a watcher reports a product in stock on its
//!   stream; timed until its grant arrives on that stream. Baselines: one
//!   `SET NX PX` on a free Redis lock, one Lock call on a free etcd lock.
//!   With etcd given, also the arbiter as a lone `--store etcd` replica.
//! - `cycle`: `AcquirePurchase` + `ReleasePurchase`, timed together (each
//!   with a fresh request id, as a client that retries safely sends).
//!   Baselines: `SET NX PX` + Lua compare-and-delete; etcd Lock + Unlock.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use restock_proto::v1 as pb;
use tokio::sync::mpsc;
use tracing::info;

use super::{Ctx, FSYNC_SETTINGS, etcd_replica, progress};
use crate::{
    etcd_lock, etcd_txn, redis_lock,
    restock::{self, ArbiterProcess, ArbiterSpec, WatcherStream, observation, product_ids},
    stats::{Latencies, Row, Store, System},
};

const WAIT: Duration = Duration::from_secs(10);

pub async fn run_grant(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    const SCENARIO: &str = "grant";
    let count = ctx.plan.grants;
    let mut rows = Vec::new();
    for fsync in FSYNC_SETTINGS {
        info!(
            scenario = SCENARIO,
            fsync,
            grants = count,
            "restock: report → grant on the stream"
        );
        let lat = restock_grant(ctx, &spec(ctx, fsync), count).await?;
        let row = Row::new(SCENARIO, System::Restock)
            .variant("report in stock → grant pushed")
            .fsync(fsync)
            .store(Store::File)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    if let Some(url) = &ctx.etcd_url {
        let replica = etcd_replica(url, "grant")?;
        let prefix = replica.prefix.clone();
        info!(
            scenario = SCENARIO,
            grants = count,
            etcd_prefix = %prefix,
            "restock: report → grant on the stream, arbiter on etcd (--store etcd)"
        );
        let before = etcd_txn::revision(url).await?;
        let lat = restock_grant(ctx, &spec(ctx, true).on_etcd(replica), count).await?;
        // Each grant and the release after it (not timed): the revision's
        // rise counts the arbiter's etcd writes.
        let writes = (etcd_txn::revision(url).await? - before) as f64 / count as f64;
        etcd_txn::delete_prefix(url, &prefix).await?;
        let row = Row::new(SCENARIO, System::Restock)
            .variant(format!(
                "report in stock → grant pushed, arbiter on etcd (--store etcd), {writes:.2} etcd writes per grant + release"
            ))
            .fsync(ctx.etcd_fsync)
            .store(Store::Etcd)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    if let Some(url) = &ctx.redis_url {
        let lat = redis_lock::grant(url, count).await?;
        let row = Row::new(SCENARIO, System::Redis)
            .variant("SET NX PX on a free lock")
            .fsync(false)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    if let Some(url) = &ctx.etcd_url {
        let lat = etcd_lock::grant(url, count).await?;
        let row = Row::new(SCENARIO, System::Etcd)
            .variant("Lock on a free lock")
            .fsync(ctx.etcd_fsync)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

pub async fn run_cycle(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    const SCENARIO: &str = "cycle";
    let count = ctx.plan.cycles;
    let mut rows = Vec::new();
    for fsync in FSYNC_SETTINGS {
        info!(
            scenario = SCENARIO,
            fsync,
            cycles = count,
            "restock: AcquirePurchase + ReleasePurchase"
        );
        let lat = restock_cycle(ctx, fsync, count).await?;
        let row = Row::new(SCENARIO, System::Restock)
            .variant("AcquirePurchase + ReleasePurchase")
            .fsync(fsync)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    // The floor under any unary call: a gRPC health check, which never
    // reaches the arbiter's task.
    let lat = grpc_floor(ctx, count).await?;
    let row = Row::new(SCENARIO, System::Restock)
        .variant("floor: two gRPC health checks (no arbiter work)")
        .latencies(&lat);
    progress(&row);
    rows.push(row);
    if let Some(url) = &ctx.redis_url {
        let lat = redis_lock::cycle(url, count).await?;
        let row = Row::new(SCENARIO, System::Redis)
            .variant("SET NX PX + compare-and-delete")
            .fsync(false)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    if let Some(url) = &ctx.etcd_url {
        let lat = etcd_lock::cycle(url, count).await?;
        let row = Row::new(SCENARIO, System::Etcd)
            .variant("Lock + Unlock")
            .fsync(ctx.etcd_fsync)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The same product list as the hand-off, so the arbiter ranks as many
/// products per decision. The grant loop sends a report per grant, thousands
/// a second on one stream: the per-stream report limit (a guard against a
/// flooding watcher) would slow and then close it, so it is off.
fn spec(ctx: &Ctx, fsync: bool) -> ArbiterSpec {
    ArbiterSpec::cycling(product_ids(ctx.waiters + 1), fsync).without_report_limit()
}

async fn restock_grant(ctx: &Ctx, spec: &ArbiterSpec, count: usize) -> anyhow::Result<Latencies> {
    let tcin = spec.products[0].clone();
    let mut arbiter = ArbiterProcess::start_leading(&ctx.env, spec).await?;
    let channel = restock::connect(&arbiter.url).await?;
    let mut unary = restock::Client::new(channel.clone());
    let (grants_tx, mut grants) = mpsc::unbounded_channel();
    let stream =
        WatcherStream::open(channel, 0, "bench-grant".into(), Vec::new(), grants_tx).await?;
    let mut lat = Latencies::with_capacity(count);
    for k in 0..count {
        let t0 = Instant::now();
        stream.report(vec![observation(&tcin, true)]).await?;
        let g = tokio::time::timeout(WAIT, grants.recv())
            .await
            .with_context(|| format!("grant {k}: nothing arrived within {WAIT:?}"))?
            .context("the watcher stream closed")?;
        lat.record(g.at.saturating_duration_since(t0));
        if g.lease.tcin != tcin {
            bail!("grant {k} was for product {}, not {tcin}", g.lease.tcin);
        }
        // Clears the sighting, so the next report queues it afresh.
        restock::release(&mut unary, &g.lease, pb::Outcome::OutOfStock).await?;
    }
    arbiter.check_running()?;
    Ok(lat)
}

async fn grpc_floor(ctx: &Ctx, count: usize) -> anyhow::Result<Latencies> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let arbiter = ArbiterProcess::start(&ctx.env, &spec(ctx, false)).await?;
    let mut health = HealthClient::new(restock::connect(&arbiter.url).await?);
    let mut lat = Latencies::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        for _ in 0..2 {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .context("gRPC health check")?;
        }
        lat.record(t0.elapsed());
    }
    Ok(lat)
}

async fn restock_cycle(ctx: &Ctx, fsync: bool, count: usize) -> anyhow::Result<Latencies> {
    let spec = spec(ctx, fsync);
    let tcin = spec.products[0].clone();
    let mut arbiter = ArbiterProcess::start(&ctx.env, &spec).await?;
    let mut c = arbiter.client().await?;
    let mut lat = Latencies::with_capacity(count);
    for k in 0..count {
        let t0 = Instant::now();
        let r = restock::acquire(&mut c, &tcin, "bench-cycle", &format!("cycle-{k}")).await?;
        let Some(lease) = r.lease.filter(|_| r.granted) else {
            bail!(
                "cycle {k}: AcquirePurchase refused: {} ({})",
                r.reason,
                r.detail
            );
        };
        restock::release(&mut c, &lease, pb::Outcome::Purchased).await?;
        lat.record(t0.elapsed());
    }
    arbiter.check_running()?;
    Ok(lat)
}
