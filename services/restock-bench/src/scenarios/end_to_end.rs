//! End to end: the store simulator flips a product in stock; timed until
//! the checkout request reaches the simulator. Real processes throughout:
//! `store-sim`, `purchase-arbiter` (fsync on) and `stock-watcher`s polling
//! the simulator. One row per configuration: N watchers (`--e2e-watchers`)
//! polling every T (`--e2e-poll-intervals`), with the arbiter planning their
//! polls (its default: watcher k of N polls at k·T/N in each period) or not
//! (`--poll-planning false`: each watcher every T jittered down by up to
//! 10%), side by side in one run (`--e2e-planning`).
//!
//! The flip time is the simulator's `changed_at_ms` from the `PUT` that
//! flipped it; the arrival is `started_at_ms` of the first checkout that
//! started after it (`GET /admin/orders`). Both come from the simulator's
//! clock, in whole milliseconds.
//!
//! Each flip starts from a free slot: every product is out of stock at the
//! simulator and at the arbiter, the product to flip at every watcher,
//! nothing holds the slot and no checkout runs; so the figure is detection
//! to checkout, never time spent waiting for a previous checkout (a flip
//! during which another product's checkout ran anyway is left out and
//! counted). Then it waits a random part of one poll interval (so flips
//! land anywhere in the poll cycle: uniform over a whole period is uniform
//! over every phase of a plan), flips, waits for the checkout, and flips the
//! product back out at once. The products (`--e2e-products`) take turns, so
//! a flip does not wait for the watchers to see the previous one gone.
//!
//! The poll-gap figures come from the simulator's poll log (`GET
//! /admin/polls`): for each product, the gaps between consecutive polls by
//! any watcher during the measurement; their median, p99 and p99/median.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::Rng;
use restock_proto::v1::{
    self as pb, GetWatcherStatusRequest, WatchEventsRequest,
    stock_watcher_client::StockWatcherClient,
};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tracing::{info, warn};

use super::{Ctx, progress};
use crate::{
    procs::{self, ChildProcess},
    restock::{self, ArbiterProcess, ArbiterSpec, Env, write_product_config},
    stats::{GapSummary, Latencies, Row, System},
};

const SCENARIO: &str = "end_to_end";
const WAIT: Duration = Duration::from_secs(15);
/// A flip slower than the longest wait for a poll plus this is slow (and
/// traced).
const SLOW_MARGIN: Duration = Duration::from_millis(10);

/// One configuration of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub watchers: usize,
    pub poll: Duration,
    pub planned: bool,
}

impl Variant {
    /// The row's variant name: N, T and the planning setting.
    pub fn name(&self) -> String {
        let plural = if self.watchers == 1 { "" } else { "s" };
        format!(
            "{} watcher{plural} every {} ms, {}",
            self.watchers,
            self.poll.as_millis(),
            if self.planned { "planned" } else { "unplanned" }
        )
    }

    /// The slowest a flip should take: the longest wait for a poll (T/N
    /// planned, T unplanned) plus [`SLOW_MARGIN`].
    pub fn slow_after(&self) -> Duration {
        let wait = if self.planned {
            self.poll / self.watchers.max(1) as u32
        } else {
            self.poll
        };
        wait + SLOW_MARGIN
    }

    /// For file names.
    fn slug(&self) -> String {
        format!(
            "n{}-t{}ms-{}",
            self.watchers,
            self.poll.as_millis(),
            if self.planned { "planned" } else { "unplanned" }
        )
    }
}

/// The configurations in the order they run: by interval, then watcher
/// count, planned and unplanned next to each other.
pub fn matrix(watchers: &[usize], polls: &[Duration], planning: &[bool]) -> Vec<Variant> {
    let mut out = Vec::new();
    for &poll in polls {
        for &n in watchers {
            for &planned in planning {
                out.push(Variant {
                    watchers: n.max(1),
                    poll,
                    planned,
                });
            }
        }
    }
    out
}

/// Whether this arbiter binary has `--poll-planning` (issue 14).
fn arbiter_plans(env: &Env) -> anyhow::Result<bool> {
    let bin = env.bin("purchase-arbiter")?;
    let out = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--poll-planning"))
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let plans = arbiter_plans(&ctx.env)?;
    if !plans && ctx.e2e_planning.contains(&true) {
        warn!(
            scenario = SCENARIO,
            "this purchase-arbiter has no --poll-planning flag: it cannot plan polls, so only the unplanned rows are measured"
        );
    }
    let mut rows = Vec::new();
    for v in matrix(
        &ctx.e2e_watchers,
        &ctx.e2e_poll_intervals,
        &ctx.e2e_planning,
    ) {
        if v.planned && !plans {
            continue;
        }
        info!(
            scenario = SCENARIO,
            variant = %v.name(),
            samples = ctx.plan.e2e_samples,
            products = ctx.e2e_products,
            "restock: store flip → checkout request"
        );
        let t0 = Instant::now();
        let m = measure(ctx, v, plans).await?;
        let row = Row::new(SCENARIO, System::Restock)
            .variant(v.name())
            .fsync(true)
            .latencies(&m.lat)
            .poll_interval(v.poll)
            .watchers(v.watchers)
            .planned(v.planned)
            .poll_gaps(&m.gaps);
        info!(
            scenario = SCENARIO,
            variant = %v.name(),
            took_s = t0.elapsed().as_secs(),
            gap_p50_ms = m.gaps.p50_ms,
            gap_p99_ms = m.gaps.p99_ms,
            gap_max_ms = m.gaps.max_ms,
            slow = m.slow,
            extra_checkouts = m.extra_checkouts,
            busy_slot_flips = m.busy_flips,
            "configuration done"
        );
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
    async fn start(env: &Env, dir: &Path, config: &Path, log: &str) -> anyhow::Result<Self> {
        let ready = dir.join("store-sim.ready.json");
        let mut args = procs::listen_anywhere(&ready);
        args.extend([
            "--config".into(),
            config.display().to_string(),
            "--checkout-delay".into(),
            "5ms".into(),
        ]);
        let env_vars = HashMap::from([("RUST_LOG".to_owned(), log.to_owned())]);
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
    async fn set_stock(&self, tcin: &str, in_stock: bool) -> anyhow::Result<u64> {
        let r = self
            .http
            .put(format!("{}/admin/stock/{tcin}", self.url))
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

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .with_context(|| format!("GET {path} on store-sim"))?
            .error_for_status()
            .with_context(|| format!("GET {path} on store-sim"))?
            .json()
            .await
            .with_context(|| format!("store-sim's answer to GET {path}"))
    }

    async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .with_context(|| format!("DELETE {path} on store-sim"))?
            .error_for_status()
            .with_context(|| format!("DELETE {path} on store-sim"))?;
        Ok(())
    }

    async fn orders(&self) -> anyhow::Result<Value> {
        self.get("/admin/orders").await
    }

    /// Every recorded poll, oldest first.
    async fn polls(&self) -> anyhow::Result<Value> {
        self.get("/admin/polls").await
    }
}

/// The earliest start (ms) of a checkout of `tcin` at or after `since`.
fn first_checkout_since(orders: &Value, tcin: &str, since: u64) -> Option<u64> {
    ["orders", "in_flight"]
        .iter()
        .filter_map(|k| orders[*k].as_array())
        .flatten()
        .filter(|o| o["tcin"] == tcin)
        .filter_map(|o| o["started_at_ms"].as_u64())
        .filter(|t| *t >= since)
        .min()
}

/// Whether an order book (cleared before the flip of `tcin`) has a
/// checkout of any other product.
fn other_checkouts(orders: &Value, tcin: &str) -> bool {
    ["orders", "in_flight"]
        .iter()
        .filter_map(|k| orders[*k].as_array())
        .flatten()
        .any(|o| o["tcin"] != tcin)
}

/// The gaps (ms) between consecutive polls of each product, pooled.
pub fn poll_gaps(polls: &Value) -> Vec<f64> {
    let mut by_product: HashMap<&str, Vec<f64>> = HashMap::new();
    for p in polls["polls"].as_array().into_iter().flatten() {
        if let (Some(t), Some(at)) = (p["tcin"].as_str(), p["at_ms"].as_f64()) {
            by_product.entry(t).or_default().push(at);
        }
    }
    let mut gaps = Vec::new();
    for times in by_product.values_mut() {
        times.sort_by(f64::total_cmp);
        gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    }
    gaps
}

struct Measured {
    lat: Latencies,
    gaps: GapSummary,
    /// Flips slower than [`Variant::slow_after`].
    slow: usize,
    /// Checkouts beyond the one each flip asks for (a re-grant of a product
    /// still reported in stock, refused or not).
    extra_checkouts: usize,
    /// Flips during which another product's checkout ran (left out).
    busy_flips: usize,
}

/// Follows the arbiter's events into memory (for traces).
fn follow_events(
    mut client: restock::Client,
) -> (Arc<Mutex<Vec<pb::Event>>>, tokio::task::JoinHandle<()>) {
    let events: Arc<Mutex<Vec<pb::Event>>> = Arc::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        let Ok(resp) = client
            .watch_events(WatchEventsRequest { from_sequence: 1 })
            .await
        else {
            return;
        };
        let mut stream = resp.into_inner();
        while let Ok(Some(e)) = stream.message().await {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e);
        }
    });
    (events, task)
}

async fn measure(ctx: &Ctx, v: Variant, arbiter_plans: bool) -> anyhow::Result<Measured> {
    let samples = ctx.plan.e2e_samples;
    // Tracing also reads the machine's stall counters and the arbiter's
    // fsync histogram around every flip.
    let tracing = ctx.e2e_trace_dir.is_some();
    let log = if tracing { "info" } else { "warn" };
    let dir = ctx.env.temp_dir("restock-bench-e2e-")?;
    let products = restock::product_ids(ctx.e2e_products.max(1));
    let config = dir.path().join("product_config.json");
    write_product_config(&config, &products)?;
    let sim = StoreSim::start(&ctx.env, dir.path(), &config, log).await?;
    let mut spec = ArbiterSpec::cycling(products.clone(), true);
    // Traces read the arbiter's fsync histogram around each flip.
    spec.http = tracing;
    if arbiter_plans {
        spec.extra_args.extend([
            "--poll-planning".to_owned(),
            if v.planned { "true" } else { "false" }.to_owned(),
        ]);
    }
    let mut arbiter = ArbiterProcess::start(&ctx.env, &spec).await?;
    let watcher_bin = ctx.env.bin("stock-watcher")?;
    let mut procs_ = Vec::with_capacity(v.watchers);
    let mut watcher_clients = Vec::with_capacity(v.watchers);
    for i in 0..v.watchers {
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
            // The simulator: its poll log tells the watchers apart by the
            // header this turns on.
            "--source-is-simulator".into(),
            "--checkout".into(),
            "http".into(),
            "--checkout-url".into(),
            format!("{}/checkout", sim.url),
            "--poll-interval".into(),
            humantime::format_duration(v.poll).to_string(),
            "--reconnect-max".into(),
            "500ms".into(),
        ]);
        let env_vars = HashMap::from([("RUST_LOG".to_owned(), log.to_owned())]);
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
    restock::wait_connected(&control, v.watchers, WAIT).await?;
    let (events, follower) = follow_events(arbiter.client().await?);
    // Let every watcher settle into its schedule (or the plan) first.
    tokio::time::sleep(v.poll * 3 + Duration::from_millis(300)).await;
    sim.delete("/admin/polls").await?;

    let mut lat = Latencies::with_capacity(samples);
    let mut all = Vec::with_capacity(samples);
    let mut traces = Vec::new();
    let mut violations = 0u64;
    let mut extra_checkouts = 0usize;
    let mut busy_flips = 0usize;
    for k in 0..samples {
        let tcin = &products[k % products.len()];
        wait_idle(&sim, &control, &watcher_clients, &products, tcin).await?;
        let before = sim.orders().await?;
        violations += before["violations"].as_u64().unwrap_or(0);
        let n = before["orders"].as_array().map_or(0, Vec::len);
        if k > 0 {
            extra_checkouts += n.saturating_sub(1);
        }
        sim.delete("/admin/orders").await?;
        let pressure_before = tracing.then(pressure_totals);
        let fsyncs_before = match &arbiter.http_url {
            Some(u) => Some(fsync_buckets(&sim.http, u).await?),
            None => None,
        };
        let phase = rand::rng().random_range(0..v.poll.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(phase)).await;
        let flipped = sim.set_stock(tcin, true).await?;
        let (arrived, at_arrival) = procs::eventually(
            &format!("sample {k}: a checkout of {tcin} after the flip"),
            WAIT,
            || async {
                let o = sim.orders().await?;
                Ok(first_checkout_since(&o, tcin, flipped).map(|t| (t, o)))
            },
        )
        .await?;
        sim.set_stock(tcin, false).await?;
        let fsyncs = match (&arbiter.http_url, fsyncs_before) {
            (Some(u), Some(before)) => {
                Some(slow_fsyncs(&before, &fsync_buckets(&sim.http, u).await?))
            }
            _ => None,
        };
        let stalls = pressure_before.map(|b| stalled_ms(&b, &pressure_totals()));
        let took = Duration::from_millis(arrived - flipped);
        // The slot was free at the flip; a checkout of another product
        // since (a late sighting of the previous one, granted again) would
        // have held it: such a flip is not the free-slot figure.
        let busy = other_checkouts(&at_arrival, tcin);
        if busy {
            busy_flips += 1;
            warn!(
                scenario = SCENARIO,
                variant = %v.name(),
                sample = k,
                latency_ms = arrived - flipped,
                "another product's checkout ran during this flip: left out of the free-slot figures"
            );
        } else {
            lat.record(took);
        }
        all.push(json!({
            "sample": k,
            "tcin": tcin,
            "flipped_unix_ms": flipped,
            "latency_ms": arrived - flipped,
            "slot_busy": busy,
            "arbiter_fsyncs": fsyncs,
            "stalled_ms": stalls,
        }));
        if took > v.slow_after() {
            warn!(
                scenario = SCENARIO,
                variant = %v.name(),
                sample = k,
                tcin = %tcin,
                latency_ms = arrived - flipped,
                "slow flip"
            );
            if tracing {
                traces.push(
                    trace(
                        &sim, &events, v, k, tcin, flipped, arrived, before, at_arrival,
                    )
                    .await?,
                );
            }
        }
        if (k + 1).is_multiple_of(50) {
            info!(scenario = SCENARIO, variant = %v.name(), done = k + 1, of = samples, "samples");
        }
    }
    for t in &products {
        wait_idle(&sim, &control, &watcher_clients, &products, t).await?;
    }
    let last = sim.orders().await?;
    violations += last["violations"].as_u64().unwrap_or(0);
    extra_checkouts += last["orders"]
        .as_array()
        .map_or(0, Vec::len)
        .saturating_sub(1);
    let polls = sim.polls().await?;
    if polls["dropped"].as_u64().unwrap_or(0) > 0 {
        warn!(
            scenario = SCENARIO,
            variant = %v.name(),
            dropped = polls["dropped"].as_u64(),
            "the simulator's poll log overflowed: the gap figures miss the oldest polls"
        );
    }
    let gaps = GapSummary::of(&poll_gaps(&polls));
    follower.abort();
    if let Some(out) = &ctx.e2e_trace_dir {
        write_traces(
            out,
            dir.path(),
            &arbiter.log_path(),
            v,
            &all,
            &traces,
            &polls,
        )?;
    }
    if violations > 0 {
        bail!("store-sim saw {violations} overlapping checkouts during the end-to-end run");
    }
    arbiter.check_running()?;
    for p in &mut procs_ {
        p.check_running()?;
    }
    Ok(Measured {
        slow: all
            .iter()
            .filter(|s| s["latency_ms"].as_u64().unwrap_or(0) > v.slow_after().as_millis() as u64)
            .count(),
        lat,
        gaps,
        extra_checkouts,
        busy_flips,
    })
}

/// What happened around one slow flip: the simulator's polls of the
/// product, its orders (the previous flip's, and this one's at arrival),
/// and the arbiter's events.
#[allow(clippy::too_many_arguments)]
async fn trace(
    sim: &StoreSim,
    events: &Mutex<Vec<pb::Event>>,
    v: Variant,
    k: usize,
    tcin: &str,
    flipped: u64,
    arrived: u64,
    before: Value,
    at_arrival: Value,
) -> anyhow::Result<Value> {
    let from = flipped.saturating_sub(2 * v.poll.as_millis() as u64 + 200);
    let to = arrived + 20;
    let polls: Vec<Value> = sim.polls().await?["polls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["tcin"] == tcin)
        .filter(|p| {
            p["unix_ms"]
                .as_u64()
                .is_some_and(|t| (from..=to).contains(&t))
        })
        .cloned()
        .collect();
    let events: Vec<Value> = events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|e| (from..=to).contains(&e.unix_ms))
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect();
    Ok(json!({
        "sample": k,
        "tcin": tcin,
        "flipped_unix_ms": flipped,
        "arrived_unix_ms": arrived,
        "latency_ms": arrived - flipped,
        "polls": polls,
        "arbiter_events": events,
        "orders_of_the_previous_flip": before["orders"],
        "orders_at_arrival": at_arrival["orders"],
        "in_flight_at_arrival": at_arrival["in_flight"],
    }))
}

/// The kernel's pressure-stall totals (µs during which some task waited
/// for a CPU, for I/O): `/proc/pressure/{cpu,io}`, `some total=`; zeros
/// where the kernel has none.
fn pressure_totals() -> [u64; 2] {
    ["cpu", "io"].map(|r| {
        std::fs::read_to_string(format!("/proc/pressure/{r}"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("some"))?
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("total="))?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    })
}

/// Milliseconds of CPU and I/O stall between two [`pressure_totals`]: time
/// in which some task on the machine was runnable but had no CPU, or waited
/// for the disk.
fn stalled_ms(before: &[u64; 2], after: &[u64; 2]) -> Value {
    let ms = |i: usize| after[i].saturating_sub(before[i]) as f64 / 1_000.0;
    json!({ "cpu": ms(0), "io": ms(1) })
}

/// `restock_journal_fsync_seconds_bucket` of the arbiter's `/metrics`:
/// (upper bound in seconds, cumulative count), `+Inf` as infinity.
async fn fsync_buckets(http: &reqwest::Client, url: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .context("GET /metrics on the arbiter")?
        .error_for_status()
        .context("GET /metrics on the arbiter")?
        .text()
        .await?;
    Ok(parse_fsync_buckets(&text))
}

fn parse_fsync_buckets(text: &str) -> Vec<(f64, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("restock_journal_fsync_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.trim().parse::<f64>().ok()? as u64;
            Some((le, count))
        })
        .collect()
}

/// How many fdatasyncs between two scrapes took longer than 10, 25, 50,
/// 100 and 250 ms (bucket bounds), and how many there were.
fn slow_fsyncs(before: &[(f64, u64)], after: &[(f64, u64)]) -> Value {
    let at = |b: &[(f64, u64)], le: f64| {
        b.iter()
            .find(|(l, _)| (*l - le).abs() < 1e-12 || (l.is_infinite() && le.is_infinite()))
            .map_or(0, |(_, c)| *c)
    };
    let delta = |le: f64| at(after, le).saturating_sub(at(before, le));
    let total = delta(f64::INFINITY);
    let over = |le: f64| total.saturating_sub(delta(le));
    json!({
        "count": total,
        "over_10ms": over(0.01),
        "over_25ms": over(0.025),
        "over_50ms": over(0.05),
        "over_100ms": over(0.1),
        "over_250ms": over(0.25),
    })
}

/// `<dir>/<variant>.json`: every sample and each slow flip's trace; with a
/// slow flip, the processes' logs too.
fn write_traces(
    out: &Path,
    work: &Path,
    arbiter_log: &Path,
    v: Variant,
    samples: &[Value],
    traces: &[Value],
    polls: &Value,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let doc = json!({
        "variant": v.name(),
        "samples": samples,
        "slow": traces,
        "poll_count": polls["polls"].as_array().map_or(0, Vec::len),
    });
    let file = out.join(format!("{}.json", v.slug()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", file.display()))?;
    if !traces.is_empty() {
        let logs = out.join(v.slug());
        std::fs::create_dir_all(&logs)?;
        for entry in std::fs::read_dir(work)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "log") {
                std::fs::copy(&p, logs.join(p.file_name().unwrap_or_default()))?;
            }
        }
        std::fs::copy(arbiter_log, logs.join("arbiter.log"))?;
    }
    info!(file = %file.display(), slow = traces.len(), "end-to-end trace written");
    Ok(())
}

/// Ready to flip `next`: the arbiter sees no product in stock (no sighting
/// left that it could grant) and nothing holds the slot, no checkout runs,
/// and every watcher's own last poll saw `next` out of stock (a watcher
/// reports changes only, so one that still believed it in stock would not
/// report the flip). A watcher may still believe the previous product in
/// stock until its next poll: harmless, it reports only a change, and its
/// sighting at the arbiter is gone. The products take turns, so `next` is
/// usually long idle.
async fn wait_idle(
    sim: &StoreSim,
    control: &restock::Client,
    watchers: &[StockWatcherClient<Channel>],
    products: &[String],
    next: &str,
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
                let sees_it = s.products.iter().any(|p| p.tcin == next && p.in_stock);
                if sees_it || s.checkout.is_some() {
                    return Ok(None);
                }
            }
            let s = restock::status(&mut c).await?;
            let all_idle = products.iter().all(|t| {
                s.products.iter().any(|p| {
                    &p.tcin == t
                        && p.state == pb::ProductState::Ready as i32
                        && p.in_stock_at.is_empty()
                })
            });
            if s.active_lease.is_some() || !all_idle {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_say_n_t_and_planning_side_by_side() {
        let m = matrix(
            &[1, 3],
            &[Duration::from_millis(300), Duration::from_millis(100)],
            &[true, false],
        );
        let names: Vec<String> = m.iter().map(Variant::name).collect();
        assert_eq!(
            names,
            vec![
                "1 watcher every 300 ms, planned",
                "1 watcher every 300 ms, unplanned",
                "3 watchers every 300 ms, planned",
                "3 watchers every 300 ms, unplanned",
                "1 watcher every 100 ms, planned",
                "1 watcher every 100 ms, unplanned",
                "3 watchers every 100 ms, planned",
                "3 watchers every 100 ms, unplanned",
            ]
        );
    }

    #[test]
    fn slow_fsyncs_come_from_the_histograms_difference() {
        let page = |n: [u64; 4]| {
            format!(
                "# TYPE restock_journal_fsync_seconds histogram\n\
                 restock_journal_fsync_seconds_bucket{{le=\"0.01\"}} {}\n\
                 restock_journal_fsync_seconds_bucket{{le=\"0.05\"}} {}\n\
                 restock_journal_fsync_seconds_bucket{{le=\"0.25\"}} {}\n\
                 restock_journal_fsync_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 restock_journal_fsync_seconds_count {}\n",
                n[0], n[1], n[2], n[3], n[3]
            )
        };
        let before = parse_fsync_buckets(&page([10, 11, 11, 11]));
        assert_eq!(before.len(), 4);
        // Three more: one fast, one of 50-250 ms, one over 250 ms.
        let after = parse_fsync_buckets(&page([11, 12, 13, 14]));
        let d = slow_fsyncs(&before, &after);
        assert_eq!(d["count"], 3);
        assert_eq!(d["over_10ms"], 2);
        assert_eq!(d["over_50ms"], 2);
        assert_eq!(d["over_250ms"], 1);
    }

    #[test]
    fn gaps_are_taken_per_product() {
        let polls = json!({"polls": [
            {"tcin": "1", "watcher": "a", "at_ms": 0.0},
            {"tcin": "2", "watcher": "a", "at_ms": 1.0},
            {"tcin": "1", "watcher": "b", "at_ms": 100.5},
            {"tcin": "2", "watcher": "b", "at_ms": 101.0},
            {"tcin": "1", "watcher": "a", "at_ms": 200.0},
        ]});
        let mut g = poll_gaps(&polls);
        g.sort_by(f64::total_cmp);
        assert_eq!(g, vec![99.5, 100.0, 100.5]);
    }
}
