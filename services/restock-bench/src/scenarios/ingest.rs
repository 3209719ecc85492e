//! Ingest: 100 watcher streams (each on its own connection) send reports
//! for 1,000 products as fast as the arbiter takes them. A checkout holds
//! the slot meanwhile (as it would while reports pour in), so in-stock
//! products queue without being granted.
//!
//! Each report carries 100 observations, a tenth of them in stock. The
//! arbiter's own observation counter (`GetStatus`) says what it absorbed;
//! its CPU comes from `/proc/PID/stat`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use restock_proto::v1::StockObservation;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::info;

use super::{Ctx, progress};
use crate::{
    procs,
    restock::{self, ArbiterProcess, ArbiterSpec, WatcherStream, observation, product_ids},
    stats::{Row, System},
};

const SCENARIO: &str = "ingest";
pub const STREAMS: usize = 100;
pub const PRODUCTS: usize = 1_000;
/// Observations per report message.
pub const BATCH: usize = 100;
const WARM_UP: Duration = Duration::from_secs(1);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    // Reports are not made durable one by one (only grants and other
    // answers wait for the disk), so fsync matters little here: measured
    // with the default, fsync on.
    let fsync = true;
    info!(
        scenario = SCENARIO,
        streams = STREAMS,
        products = PRODUCTS,
        batch = BATCH,
        for_ms = ctx.plan.ingest_for.as_millis() as u64,
        "restock: streams reporting as fast as they can"
    );
    let r = ingest(ctx, fsync, ctx.plan.ingest_for).await?;
    let row = Row::new(SCENARIO, System::Restock)
        .variant(format!(
            "{STREAMS} streams, {PRODUCTS} products, {BATCH} observations per report"
        ))
        .fsync(fsync)
        .per_second(r.observations_per_second)
        .cpu_percent(r.cpu_percent)
        .rss_mb(r.rss_mb)
        .samples(r.observations);
    progress(&row);
    info!(
        scenario = SCENARIO,
        cpu_percent = r.cpu_percent,
        "arbiter CPU (100% = one core)"
    );
    Ok(vec![row])
}

/// What one ingest run measured.
#[derive(Debug, Clone, Copy)]
pub struct IngestResult {
    pub observations: u64,
    pub observations_per_second: f64,
    /// Of one core.
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

/// The reports each stream cycles through: every product once per cycle.
pub fn report_cycle(products: &[String], batch: usize) -> Vec<Vec<StockObservation>> {
    products
        .chunks(batch)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, t)| observation(t, i.is_multiple_of(10)))
                .collect()
        })
        .collect()
}

async fn ingest(ctx: &Ctx, fsync: bool, duration: Duration) -> anyhow::Result<IngestResult> {
    let mut all = product_ids(PRODUCTS + 1);
    let holder_tcin = all.pop().expect("one more than PRODUCTS");
    let products = all;
    let mut spec_products = products.clone();
    spec_products.push(holder_tcin.clone());
    let mut arbiter = ArbiterProcess::start(
        &ctx.env,
        &ArbiterSpec::cycling(spec_products, fsync).without_report_limit(),
    )
    .await?;
    let mut control = arbiter.client().await?;
    let held = restock::acquire(&mut control, &holder_tcin, "bench-holder", "").await?;
    if !held.granted {
        bail!(
            "could not take the slot before ingest: {} ({})",
            held.reason,
            held.detail
        );
    }
    let cycle = Arc::new(report_cycle(&products, BATCH));
    let (grants_tx, _grants) = mpsc::unbounded_channel();
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let channel = restock::connect(&arbiter.url).await?;
        streams.push(
            WatcherStream::open(
                channel,
                i,
                format!("bench-ingest-{i}"),
                Vec::new(),
                grants_tx.clone(),
            )
            .await?,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (stop, cycle) = (stop.clone(), cycle.clone());
        tasks.spawn(async move {
            // Streams start at different places in the product list.
            let mut k = i;
            while !stop.load(Ordering::Relaxed) {
                s.report(cycle[k % cycle.len()].clone()).await?;
                k += 1;
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(WARM_UP).await;
    let ticks = procs::clock_ticks_per_second();
    let obs0 = observations(&mut control).await?;
    let cpu0 = arbiter.cpu_ticks()?;
    let t0 = Instant::now();
    tokio::time::sleep(duration).await;
    let obs1 = observations(&mut control).await?;
    let cpu1 = arbiter.cpu_ticks()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let rss_mb = arbiter.rss_mb()?;
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r.context("a reporting stream task panicked")??;
    }
    arbiter.check_running()?;
    let observations = obs1.saturating_sub(obs0);
    Ok(IngestResult {
        observations,
        observations_per_second: observations as f64 / elapsed,
        cpu_percent: (cpu1.saturating_sub(cpu0)) as f64 / ticks / elapsed * 100.0,
        rss_mb,
    })
}

async fn observations(c: &mut restock::Client) -> anyhow::Result<u64> {
    let s = restock::status(c).await?;
    Ok(s.counters.map_or(0, |c| c.observations))
}
