//! Contention: 64 clients, each on its own connection and with its own
//! product, race for the slot with `AcquirePurchase` for a fixed time. The
//! winner releases at once (PURCHASED, test mode) and races again. Reports
//! refusals per second and the latency of every `AcquirePurchase` answer.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use restock_proto::v1 as pb;
use tokio::task::JoinSet;
use tracing::info;

use super::{Ctx, FSYNC_SETTINGS, progress};
use crate::{
    restock::{self, ArbiterProcess, ArbiterSpec, product_ids},
    stats::{Latencies, Row, System},
};

const SCENARIO: &str = "contention";
/// Clients racing at once.
pub const CLIENTS: usize = 64;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for fsync in FSYNC_SETTINGS {
        info!(
            scenario = SCENARIO,
            fsync,
            clients = CLIENTS,
            for_ms = ctx.plan.contention_for.as_millis() as u64,
            "restock: clients racing for the slot"
        );
        let r = race(ctx, fsync, ctx.plan.contention_for).await?;
        let secs = r.elapsed.as_secs_f64();
        info!(
            scenario = SCENARIO,
            fsync,
            refusals = r.refusals,
            grants = r.grants,
            grants_per_second = (r.grants as f64 / secs).round(),
            "race over"
        );
        let row = Row::new(SCENARIO, System::Restock)
            .variant(format!(
                "{CLIENTS} clients; per second = refusals ({:.0} grants/s)",
                r.grants as f64 / secs
            ))
            .fsync(fsync)
            .latencies(&r.latencies)
            .per_second(r.refusals as f64 / secs);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

struct RaceResult {
    latencies: Latencies,
    refusals: u64,
    grants: u64,
    elapsed: Duration,
}

async fn race(ctx: &Ctx, fsync: bool, duration: Duration) -> anyhow::Result<RaceResult> {
    let products = product_ids(CLIENTS);
    let mut arbiter =
        ArbiterProcess::start(&ctx.env, &ArbiterSpec::cycling(products.clone(), fsync)).await?;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(arbiter.client().await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let grants = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut tasks = JoinSet::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let tcin = products[i].clone();
        let (stop, refusals, grants, start_line) = (
            stop.clone(),
            refusals.clone(),
            grants.clone(),
            start_line.clone(),
        );
        tasks.spawn(async move {
            let watcher = format!("bench-racer-{i}");
            let mut lat = Latencies::with_capacity(4_096);
            start_line.wait().await;
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let t0 = Instant::now();
                let r = restock::acquire(&mut c, &tcin, &watcher, &format!("race-{i}-{k}")).await?;
                lat.record(t0.elapsed());
                match r.lease.filter(|_| r.granted) {
                    Some(lease) => {
                        grants.fetch_add(1, Ordering::Relaxed);
                        restock::release(&mut c, &lease, pb::Outcome::Purchased).await?;
                    }
                    None => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(lat)
        });
    }
    start_line.wait().await;
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::default();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.context("a racing client panicked")??);
    }
    let elapsed = started.elapsed();
    arbiter.check_running()?;
    Ok(RaceResult {
        latencies,
        refusals: refusals.load(Ordering::Relaxed),
        grants: grants.load(Ordering::Relaxed),
        elapsed,
    })
}
