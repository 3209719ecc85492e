//! End to end: the store simulator flips a product in stock; timed until
//! the checkout request reaches the simulator. Real processes throughout:
//! `store-sim`, `purchase-arbiter` (fsync on) and `stock-watcher`s polling
//! the simulator every `--e2e-poll-interval` (the watcher jitters each gap down by up to 10%).
//!
//! The flip time is the simulator's `changed_at_ms` from the `PUT` that
//! flipped it; the arrival is `started_at_ms` of the first checkout that
//! started after it (`GET /admin/orders`). Both come from the simulator's
//! clock, in whole milliseconds. Each sample waits a random part of a poll
//! interval first, so flips land anywhere in the poll cycle, and ends with
//! the product out of stock and everything idle again.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::Rng;
use restock_proto::v1::{
    self as pb, GetWatcherStatusRequest, stock_watcher_client::StockWatcherClient,
};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tracing::info;

use super::{Ctx, progress};
use crate::{
    procs::{self, ChildProcess},
    restock::{self, ArbiterProcess, ArbiterSpec, Env, write_product_config},
    stats::{Latencies, Row, System},
};

const SCENARIO: &str = "end_to_end";
const TCIN: &str = "8000001";
const WAIT: Duration = Duration::from_secs(15);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &watchers in &ctx.e2e_watchers {
        info!(
            scenario = SCENARIO,
            watchers,
            poll_ms = ctx.e2e_poll_interval.as_millis() as u64,
            samples = ctx.plan.e2e_samples,
            "restock: store flip → checkout request"
        );
        let lat = measure(ctx, watchers, ctx.e2e_poll_interval, ctx.plan.e2e_samples).await?;
        let plural = if watchers == 1 { "" } else { "s" };
        let row = Row::new(SCENARIO, System::Restock)
            .variant(format!("{watchers} watcher{plural} polling"))
            .fsync(true)
            .latencies(&lat)
            .poll_interval(ctx.e2e_poll_interval);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// A running `store-sim`.
struct StoreSim {
    url: String,
    http: reqwest::Client,
    _process: ChildProcess,
}

impl StoreSim {
    async fn start(
        env: &Env,
        dir: &std::path::Path,
        config: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let ready = dir.join("store-sim.ready.json");
        let mut args = procs::listen_anywhere(&ready);
        args.extend([
            "--config".into(),
            config.display().to_string(),
            "--checkout-delay".into(),
            "5ms".into(),
        ]);
        let env_vars = HashMap::from([("RUST_LOG".to_owned(), "warn".to_owned())]);
        let mut process = ChildProcess::start(
            "store-sim",
            &env.bin("store-sim")?,
            &args,
            &env_vars,
            dir.join("store-sim.log"),
        )?;
        let url = format!(
            "http://{}",
            procs::announced(&mut process, &ready, "http", WAIT).await?
        );
        let http = reqwest::Client::new();
        let health = format!("{url}/healthz");
        let start = Instant::now();
        loop {
            process.check_running()?;
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if start.elapsed() > WAIT {
                bail!(
                    "store-sim at {url} was not healthy within {WAIT:?}; last log lines:\n{}",
                    process.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            url,
            http,
            _process: process,
        })
    }

    /// Flips the product; returns the simulator's `changed_at_ms`.
    async fn set_stock(&self, in_stock: bool) -> anyhow::Result<u64> {
        let r = self
            .http
            .put(format!("{}/admin/stock/{TCIN}", self.url))
            .json(&json!({ "in_stock": in_stock }))
            .send()
            .await
            .context("PUT /admin/stock on store-sim")?
            .error_for_status()
            .context("PUT /admin/stock on store-sim")?;
        let v: Value = r.json().await.context("store-sim's stock answer")?;
        v["changed_at_ms"]
            .as_u64()
            .with_context(|| format!("no changed_at_ms in store-sim's answer {v}"))
    }

    async fn orders(&self) -> anyhow::Result<Value> {
        self.http
            .get(format!("{}/admin/orders", self.url))
            .send()
            .await
            .context("GET /admin/orders on store-sim")?
            .json()
            .await
            .context("store-sim's orders answer")
    }

    async fn clear_orders(&self) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/admin/orders", self.url))
            .send()
            .await
            .context("DELETE /admin/orders on store-sim")?
            .error_for_status()
            .context("DELETE /admin/orders on store-sim")?;
        Ok(())
    }
}

/// The earliest start (ms) of a checkout of the product at or after `since`.
fn first_checkout_since(orders: &Value, since: u64) -> Option<u64> {
    ["orders", "in_flight"]
        .iter()
        .filter_map(|k| orders[*k].as_array())
        .flatten()
        .filter(|o| o["tcin"] == TCIN)
        .filter_map(|o| o["started_at_ms"].as_u64())
        .filter(|t| *t >= since)
        .min()
}

async fn measure(
    ctx: &Ctx,
    watchers: usize,
    poll: Duration,
    samples: usize,
) -> anyhow::Result<Latencies> {
    let dir = ctx.env.temp_dir("restock-bench-e2e-")?;
    let config = dir.path().join("product_config.json");
    write_product_config(&config, &[TCIN.to_owned()])?;
    let sim = StoreSim::start(&ctx.env, dir.path(), &config).await?;
    let mut arbiter =
        ArbiterProcess::start(&ctx.env, &ArbiterSpec::cycling(vec![TCIN.to_owned()], true)).await?;
    let watcher_bin = ctx.env.bin("stock-watcher")?;
    let mut procs_ = Vec::with_capacity(watchers);
    let mut watcher_clients = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let ready = dir.path().join(format!("watcher-{i}.ready.json"));
        let mut args = procs::listen_anywhere(&ready);
        args.extend([
            "--arbiter".to_owned(),
            arbiter.url.clone(),
            "--watcher-id".into(),
            format!("e2e-w{i}"),
            "--source".into(),
            "target".into(),
            "--source-url".into(),
            sim.url.clone(),
            "--checkout".into(),
            "http".into(),
            "--checkout-url".into(),
            format!("{}/checkout", sim.url),
            "--poll-interval".into(),
            humantime::format_duration(poll).to_string(),
            "--reconnect-max".into(),
            "500ms".into(),
        ]);
        let env_vars = HashMap::from([("RUST_LOG".to_owned(), "warn".to_owned())]);
        let mut p = ChildProcess::start(
            &format!("stock-watcher e2e-w{i}"),
            &watcher_bin,
            &args,
            &env_vars,
            dir.path().join(format!("watcher-{i}.log")),
        )?;
        let url = format!(
            "http://{}",
            procs::announced(&mut p, &ready, "grpc", WAIT).await?
        );
        procs::wait_grpc_healthy(&url, WAIT, &mut p).await?;
        procs_.push(p);
        watcher_clients.push(StockWatcherClient::new(restock::connect(&url).await?));
    }
    let control = arbiter.client().await?;
    restock::wait_connected(&control, watchers, WAIT).await?;
    let mut lat = Latencies::with_capacity(samples);
    let mut violations = 0u64;
    for k in 0..samples {
        wait_idle(&sim, &control, &watcher_clients).await?;
        let orders = sim.orders().await?;
        violations += orders["violations"].as_u64().unwrap_or(0);
        sim.clear_orders().await?;
        let phase = rand::rng().random_range(0..poll.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(phase)).await;
        let flipped = sim.set_stock(true).await?;
        let arrived = procs::eventually(
            &format!("sample {k}: a checkout of {TCIN} after the flip"),
            WAIT,
            || async { Ok(first_checkout_since(&sim.orders().await?, flipped)) },
        )
        .await?;
        sim.set_stock(false).await?;
        lat.record(Duration::from_millis(arrived - flipped));
        if (k + 1).is_multiple_of(25) {
            info!(
                scenario = SCENARIO,
                watchers,
                done = k + 1,
                of = samples,
                "samples"
            );
        }
    }
    wait_idle(&sim, &control, &watcher_clients).await?;
    violations += sim.orders().await?["violations"].as_u64().unwrap_or(0);
    if violations > 0 {
        bail!("store-sim saw {violations} overlapping checkouts during the end-to-end run");
    }
    arbiter.check_running()?;
    for p in &mut procs_ {
        p.check_running()?;
    }
    Ok(lat)
}

/// The product is out of stock everywhere, nothing holds the slot, and no
/// checkout is running. Each watcher's own last poll must have seen it out
/// of stock too: a watcher reports changes only, so one that still believes
/// it in stock would not report the next flip.
async fn wait_idle(
    sim: &StoreSim,
    control: &restock::Client,
    watchers: &[StockWatcherClient<Channel>],
) -> anyhow::Result<()> {
    procs::eventually("the end-to-end system to be idle", WAIT, || {
        let mut c = control.clone();
        let watchers = watchers.to_vec();
        async move {
            for mut w in watchers {
                let s = w
                    .get_watcher_status(GetWatcherStatusRequest {})
                    .await
                    .context("GetWatcherStatus")?
                    .into_inner();
                let sees_it = s.products.iter().any(|p| p.tcin == TCIN && p.in_stock);
                if sees_it || s.checkout.is_some() {
                    return Ok(None);
                }
            }
            let s = restock::status(&mut c).await?;
            let product_idle = s.products.iter().any(|p| {
                p.tcin == TCIN
                    && p.state == pb::ProductState::Ready as i32
                    && p.in_stock_at.is_empty()
            });
            if s.active_lease.is_some() || !product_idle {
                return Ok(None);
            }
            let orders = sim.orders().await?;
            let running = orders["in_flight"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            Ok((!running).then_some(()))
        }
    })
    .await
}
