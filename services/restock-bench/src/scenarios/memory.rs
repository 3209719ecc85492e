//! Memory: the arbiter's resident set (`VmRSS` in `/proc/PID/status`) with
//! no stream, with 1,000 connected watcher streams (each on its own
//! connection, as from 1,000 machines) idle, and with all of them reporting
//! (a report of 10 observations from each every 100 ms; the peak is kept).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::info;

use super::{Ctx, progress};
use crate::{
    restock::{self, ArbiterProcess, ArbiterSpec, WatcherStream, observation, product_ids},
    stats::{Row, System},
};

const SCENARIO: &str = "memory";
pub const STREAMS: usize = 1_000;
const PRODUCTS: usize = 100;
const OBSERVATIONS: usize = 10;
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// Streams opened at once while connecting.
const CONNECTING: usize = 50;
/// File descriptors needed: a socket per stream on each side, and spare.
pub const FILES_NEEDED: u64 = 2 * STREAMS as u64 + 512;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let fsync = true;
    let mut all = product_ids(PRODUCTS + 1);
    let holder_tcin = all.pop().expect("one more than PRODUCTS");
    let products = Arc::new(all);
    let mut spec_products = (*products).clone();
    spec_products.push(holder_tcin.clone());
    let mut arbiter =
        ArbiterProcess::start(&ctx.env, &ArbiterSpec::cycling(spec_products, fsync)).await?;
    let mut control = arbiter.client().await?;
    // A running checkout holds the slot, so in-stock reports only queue.
    let held = restock::acquire(&mut control, &holder_tcin, "bench-holder", "").await?;
    if !held.granted {
        bail!("could not take the slot: {} ({})", held.reason, held.detail);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rows = Vec::new();
    let rss0 = arbiter.rss_mb()?;
    rows.push(row("no watcher stream", rss0));

    info!(
        scenario = SCENARIO,
        streams = STREAMS,
        "opening watcher streams"
    );
    let started = Instant::now();
    let (grants_tx, _grants) = mpsc::unbounded_channel();
    let url = arbiter.url.clone();
    let streams: Vec<WatcherStream> = futures::stream::iter(0..STREAMS)
        .map(|i| {
            let (url, products, grants_tx) = (url.clone(), products.clone(), grants_tx.clone());
            async move {
                let channel = restock::connect(&url).await?;
                let first = observations_of(&products, i, 0);
                WatcherStream::open(channel, i, format!("bench-mem-{i}"), first, grants_tx).await
            }
        })
        .buffer_unordered(CONNECTING)
        .try_collect()
        .await?;
    restock::wait_connected(&control, STREAMS, Duration::from_secs(30)).await?;
    info!(
        scenario = SCENARIO,
        streams = streams.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "all streams connected"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = arbiter.rss_mb()?;
    rows.push(row(&format!("{STREAMS} streams, idle"), idle));

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (i, s) in streams.into_iter().enumerate() {
        let (stop, products) = (stop.clone(), products.clone());
        tasks.spawn(async move {
            let phase = rand::rng().random_range(0..REPORT_EVERY.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(phase)).await;
            let mut tick = tokio::time::interval(REPORT_EVERY);
            let mut round = 1;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                s.report(observations_of(&products, i, round)).await?;
                round += 1;
            }
            // Keep the stream open until the measurement ends.
            anyhow::Ok(s)
        });
    }
    let obs0 = observed(&mut control).await?;
    let t0 = Instant::now();
    let mut peak = 0.0f64;
    while t0.elapsed() < ctx.plan.memory_reporting_for {
        peak = peak.max(arbiter.rss_mb()?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(arbiter.rss_mb()?);
    let obs1 = observed(&mut control).await?;
    let rate = obs1.saturating_sub(obs0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut kept = Vec::with_capacity(STREAMS);
    while let Some(r) = tasks.join_next().await {
        kept.push(r.context("a reporting stream task panicked")??);
    }
    let mut reporting = row(&format!("{STREAMS} streams, reporting (peak)"), peak);
    reporting = reporting.per_second(rate);
    rows.push(reporting);
    arbiter.check_running()?;
    drop(kept);
    for r in &rows {
        progress(r);
    }
    Ok(rows)
}

fn row(variant: &str, rss: f64) -> Row {
    Row::new(SCENARIO, System::Restock)
        .variant(variant)
        .fsync(true)
        .rss_mb(rss)
}

/// Ten products per report, a different slice each round; one in ten in
/// stock.
fn observations_of(
    products: &[String],
    stream: usize,
    round: usize,
) -> Vec<restock_proto::v1::StockObservation> {
    (0..OBSERVATIONS)
        .map(|j| {
            let p = (stream * 7 + round * OBSERVATIONS + j) % products.len();
            observation(&products[p], p.is_multiple_of(10))
        })
        .collect()
}

async fn observed(c: &mut restock::Client) -> anyhow::Result<u64> {
    let s = restock::status(c).await?;
    Ok(s.counters.map_or(0, |c| c.observations))
}
