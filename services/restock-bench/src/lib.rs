//! `restock-bench`: measures the purchase arbiter against the locks people
//! use instead (a Redis `SET NX PX` lock, etcd's lock service), in the same
//! run, on the same machine, all traffic on 127.0.0.1 (issue 7).
//!
//! # Layout
//!
//! - [`config`]: flags, and the [`config::Plan`] of sample counts (full or
//!   `--quick`).
//! - [`procs`]: child processes killed on drop, free ports, readiness
//!   waits, memory and CPU from `/proc`.
//! - [`restock`]: the real `purchase-arbiter` process and in-process
//!   stand-in watchers (one `StreamStock` stream each).
//! - [`redis_lock`], [`etcd_lock`]: the baselines.
//! - [`etcd_txn`]: one guarded etcd transaction, what the arbiter's etcd
//!   store writes per change, timed by itself.
//! - [`scenarios`]: hand-off, grant, cycle, contention, ingest, memory, end
//!   to end, failover (replicas on etcd); each returns result rows.
//! - [`stats`]: latency percentiles and the result row.
//! - [`report`]: the table, the targets checked, the JSON file.
//!
//! The benchmark starts the arbiter, the store simulator and the watchers
//! itself (fresh state per measurement); Redis and etcd are given by URL
//! (`scripts/bench.sh` starts them). Every scenario has a hard time limit.

pub mod config;
pub mod etcd_lock;
pub mod etcd_txn;
pub mod procs;
pub mod redis_lock;
pub mod report;
pub mod restock;
pub mod scenarios;
pub mod stats;

use std::time::{Duration, Instant};

use anyhow::bail;
use tracing::{error, info, warn};

use crate::{config::BenchConfig, restock::Env, scenarios::Ctx, stats::Row};

/// Runs the selected scenarios, writes the JSON, prints the table and the
/// targets. Fails (after writing what was measured) if any scenario failed.
pub async fn run(config: BenchConfig) -> anyhow::Result<()> {
    let mut selected = config.selected()?;
    if !(config.e2e_budget_rps.is_finite() && config.e2e_budget_rps > 0.0) {
        bail!(
            "--e2e-budget-rps must be a number of requests per second above 0, not {}",
            config.e2e_budget_rps
        );
    }
    let env = Env {
        bin_dir: config.bin_dir()?,
        work_dir: config.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        arbiter_log: config.arbiter_log.clone(),
    };
    for name in ["purchase-arbiter", "store-sim", "stock-watcher"] {
        env.bin(name)?;
    }
    if selected.contains(&"memory")
        && let Some(limit) = procs::open_files_limit()
        && limit < scenarios::memory::FILES_NEEDED
    {
        bail!(
            "the memory scenario opens {} connections and needs {} open files, but the limit is {limit}: raise it (ulimit -n 8192) or skip it with --scenarios",
            scenarios::memory::STREAMS,
            scenarios::memory::FILES_NEEDED
        );
    }
    let ready = Duration::from_secs(20);
    let redis_url = match &config.redis_url {
        Some(url) => {
            redis_lock::wait_ready(url, ready).await?;
            info!(redis = %url, "Redis baseline ready");
            Some(url.clone())
        }
        None if config.require_baselines => {
            bail!("--require-baselines: no Redis given (--redis-url or RESTOCK_BENCH_REDIS_URL)")
        }
        None => {
            warn!("no --redis-url: the Redis baseline rows are skipped");
            None
        }
    };
    let etcd_url = match &config.etcd_url {
        Some(url) => {
            let version = etcd_lock::wait_ready(url, ready).await?;
            info!(etcd = %url, version = %version, "etcd baseline ready");
            Some(url.clone())
        }
        None if config.require_baselines => {
            bail!("--require-baselines: no etcd given (--etcd-url or RESTOCK_BENCH_ETCD_URL)")
        }
        None => {
            warn!("no --etcd-url: the etcd baseline rows are skipped");
            None
        }
    };
    if etcd_url.is_none() && selected.contains(&"failover") {
        if config.scenarios.is_empty() {
            warn!("no --etcd-url: the failover scenario (arbiter replicas on etcd) is skipped");
            selected.retain(|s| *s != "failover");
        } else {
            bail!("the failover scenario needs etcd: --etcd-url or RESTOCK_BENCH_ETCD_URL");
        }
    }
    let ctx = Ctx {
        env,
        plan: config.plan(),
        waiters: config.waiters.max(1),
        redis_url,
        etcd_url,
        etcd_fsync: config.etcd_fsync,
        e2e_watchers: config.e2e_watchers(),
        e2e_poll_intervals: config.e2e_poll_intervals(),
        e2e_planning: config.e2e_planning.clone(),
        e2e_products: config.e2e_products.max(1),
        e2e_trace_dir: config.e2e_trace_dir.clone(),
        e2e_matrix: config.e2e_part("matrix"),
        e2e_budget: config.e2e_part("budget"),
        e2e_budget_watchers: config.e2e_budget_watchers.clone(),
        e2e_budget_rps: config.e2e_budget_rps,
        e2e_budget_batch_interval: config.e2e_budget_batch_interval,
        failover_election_ttl: config.failover_election_ttl,
    };
    let limit = config.timeout();
    info!(
        quick = config.quick,
        scenarios = %selected.join(","),
        timeout_s = limit.as_secs(),
        bin_dir = %ctx.env.bin_dir.display(),
        "benchmark starting"
    );
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut failures = Vec::new();
    for name in &selected {
        let t0 = Instant::now();
        info!(scenario = name, "scenario starting");
        let limit = match *name {
            "end_to_end" => config.e2e_timeout(),
            "failover" => config.failover_timeout(),
            _ => limit,
        };
        match tokio::time::timeout(limit, scenarios::run(name, &ctx)).await {
            Ok(Ok(r)) => {
                info!(
                    scenario = name,
                    rows = r.len(),
                    took_ms = t0.elapsed().as_millis() as u64,
                    "scenario done"
                );
                rows.extend(r);
            }
            Ok(Err(e)) => {
                error!(scenario = name, error = format!("{e:#}"), "scenario failed");
                failures.push(format!("{name}: {e:#}"));
            }
            Err(_) => {
                error!(
                    scenario = name,
                    limit_s = limit.as_secs(),
                    "scenario timed out"
                );
                failures.push(format!("{name}: did not finish within {limit:?}"));
            }
        }
    }
    report::write_json(&config.out, &rows)?;
    print_results(&rows);
    info!(
        out = %config.out.display(),
        rows = rows.len(),
        took_s = started.elapsed().as_secs(),
        "results written"
    );
    if !failures.is_empty() {
        bail!(
            "{} scenario(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    let baselines = ctx.redis_url.is_some() && ctx.etcd_url.is_some();
    report::check_complete(&selected, &rows, baselines)?;
    Ok(())
}

/// The table and the targets on stdout: they are the program's output, not
/// log lines.
#[allow(clippy::print_stdout)]
fn print_results(rows: &[Row]) {
    println!("\n{}\n", report::table(rows));
    if let Some(e2e) = report::e2e_table(rows) {
        println!("End to end (issue 14):\n\n{e2e}\n");
    }
    if let Some(budget) = report::budget_table(rows) {
        println!("End to end under a request budget (issue 20):\n\n{budget}\n");
    }
    if let Some(replicas) = report::replicas_table(rows) {
        println!("Arbiter replicas on etcd (issue 13):\n\n{replicas}\n");
    }
    println!(
        "Targets (issues 7, 14 and 20):\n\n{}\n",
        report::targets_table(&report::targets(rows))
    );
}
