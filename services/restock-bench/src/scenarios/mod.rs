//! The scenarios of issue 7. Each starts the processes it needs (a fresh
//! arbiter per measurement, so one scenario's state does not slow the
//! next), measures, and returns its result rows.

pub mod contention;
pub mod end_to_end;
pub mod failover;
pub mod grant;
pub mod handoff;
pub mod ingest;
pub mod memory;

use tracing::info;

use crate::{
    config::{ETCD_STORE_ELECTION_TTL, Plan},
    procs,
    restock::{Env, EtcdReplica, fresh_etcd_prefix},
    stats::Row,
};

/// What every scenario gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub env: Env,
    pub plan: Plan,
    pub waiters: usize,
    pub redis_url: Option<String>,
    pub etcd_url: Option<String>,
    pub etcd_fsync: bool,
    pub e2e_watchers: Vec<usize>,
    pub e2e_poll_intervals: Vec<std::time::Duration>,
    pub e2e_planning: Vec<bool>,
    pub e2e_products: usize,
    pub e2e_trace_dir: Option<std::path::PathBuf>,
    /// Whether the end-to-end scenario runs the matrix of issue 14 and the
    /// budgeted rows of issue 20.
    pub e2e_matrix: bool,
    pub e2e_budget: bool,
    pub e2e_budget_watchers: Vec<usize>,
    pub e2e_budget_rps: f64,
    pub e2e_budget_batch_interval: Option<std::time::Duration>,
    pub failover_election_ttl: std::time::Duration,
}

/// A lone `--store etcd` arbiter on etcd at `url`, under a fresh prefix.
pub fn etcd_replica(url: &str, what: &str) -> anyhow::Result<EtcdReplica> {
    Ok(EtcdReplica {
        endpoint: url.to_owned(),
        prefix: fresh_etcd_prefix(what),
        election_ttl: ETCD_STORE_ELECTION_TTL,
        port: procs::reserve_port()?,
    })
}

/// The fsync settings measured, fastest first.
pub const FSYNC_SETTINGS: [bool; 2] = [false, true];

/// Logs a finished row as progress.
pub fn progress(row: &Row) {
    info!(
        scenario = row.scenario,
        system = row.system.as_str(),
        variant = row.variant.as_deref().unwrap_or(""),
        fsync = ?row.fsync,
        p50_us = ?row.p50_us,
        p99_us = ?row.p99_us,
        per_second = ?row.per_second,
        rss_mb = ?row.rss_mb,
        samples = ?row.samples,
        "measured"
    );
}

/// Runs one scenario by name.
pub async fn run(name: &str, ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    match name {
        "handoff" => handoff::run(ctx).await,
        "grant" => grant::run_grant(ctx).await,
        "cycle" => grant::run_cycle(ctx).await,
        "contention" => contention::run(ctx).await,
        "ingest" => ingest::run(ctx).await,
        "memory" => memory::run(ctx).await,
        "end_to_end" => end_to_end::run(ctx).await,
        "failover" => failover::run(ctx).await,
        other => anyhow::bail!("no scenario named {other:?}"),
    }
}
