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
//!
//! # Under a request budget (issue 20)
//!
//! Against a retailer that blocks, requests are what a user has to spend.
//! The budgeted rows watch [`BUDGET_PRODUCTS`] products with each watcher
//! held to R requests per second (`--target-max-rps`, one request at a
//! time), poll planning on, N = 1 and 3 watchers (`--e2e-budget-watchers`),
//! in two ways side by side: `summary` (Target's batch endpoint: one
//! request per round carries all 24 products; poll interval 1/R) and
//! `hierarchy` (one request per product; the budget spaces the 24
//! requests, so a round, and the poll interval told to the arbiter, is
//! 24/R). Each row also counts the requests the simulator answered during
//! the measurement (`store_sim_redsky_requests_total`), per detection and
//! per watcher per second, and the shortest gap between two requests of one
//! watcher (the poll log), which shows the budget held.
//!
//! Flips of the budgeted rows wait a random part of one poll interval (the
//! batch rows) or of T/N (the per-product rows: with the plan, the polls of
//! a product repeat every T/N, so that is uniform over their phases too,
//! and keeps a flip at 24 s rounds to half a minute).

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
    stats::{BudgetFigures, GapSummary, Latencies, Row, System},
};

const SCENARIO: &str = "end_to_end";
const WAIT: Duration = Duration::from_secs(15);
/// A flip slower than the longest wait for a poll plus this is slow (and
/// traced).
const SLOW_MARGIN: Duration = Duration::from_millis(10);

/// Products the budgeted rows watch: one batch summary request's worth.
pub const BUDGET_PRODUCTS: usize = 24;
/// Products one `product_summary_with_fulfillment_v1` request carries.
pub const SUMMARY_BATCH: usize = 24;
/// The shop the Shopify rows watch (played by the simulator).
pub const BENCH_SHOP: &str = "bench.example";
/// Variants one Shopify `products.json` page carries (250 products, each
/// with its variants: the 24 watched fit in one).
pub const SHOPIFY_PAGE: usize = 250;

/// How the watchers of a budgeted row ask Target's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `product_fulfillment_and_variation_hierarchy_v1`: one request per
    /// product (the watcher's default endpoint).
    Hierarchy,
    /// `product_summary_with_fulfillment_v1`: one request for up to 24.
    Summary,
    /// Issue 23: a Shopify shop's `products.json`, one request per round
    /// for every watched variant of the shop.
    Shopify,
}

impl Endpoint {
    /// The watcher's `--target-endpoint` value.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Hierarchy => "hierarchy",
            Self::Summary => "summary",
            Self::Shopify => "shopify",
        }
    }

    /// Products one request carries.
    pub fn batch(self) -> usize {
        match self {
            Self::Hierarchy => 1,
            Self::Summary => SUMMARY_BATCH,
            Self::Shopify => SHOPIFY_PAGE,
        }
    }
}

/// A budgeted row: the endpoint, each watcher's budget, the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub endpoint: Endpoint,
    /// 1/R: the least time between two requests of one watcher.
    pub spacing: Duration,
    pub products: usize,
}

impl Budget {
    pub fn rps(&self) -> f64 {
        1.0 / self.spacing.as_secs_f64()
    }

    /// Requests one round of every product takes.
    pub fn requests_per_round(&self) -> usize {
        self.products.div_ceil(self.endpoint.batch()).max(1)
    }

    /// The shortest round the budget allows: the poll interval.
    pub fn round(&self) -> Duration {
        self.spacing * self.requests_per_round() as u32
    }
}

/// One configuration of the matrix, or a budgeted row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub watchers: usize,
    pub poll: Duration,
    pub planned: bool,
    /// Issue 20: a request budget and endpoint (`None`: the issue-14
    /// matrix, every watcher unlimited on the legacy default endpoint).
    pub budget: Option<Budget>,
}

impl Variant {
    /// The row's variant name: N, T and the planning setting; for a
    /// budgeted row, N, the products, R and the endpoint.
    pub fn name(&self) -> String {
        let plural = if self.watchers == 1 { "" } else { "s" };
        if let Some(b) = self.budget {
            let how = match b.endpoint {
                Endpoint::Summary => "summary, 1 request per round",
                Endpoint::Hierarchy => "hierarchy, 1 request per product",
                Endpoint::Shopify => "Shopify products.json, 1 request per round",
            };
            let every = if self.poll == b.round() {
                String::new()
            } else {
                format!(", every {} ms", self.poll.as_millis())
            };
            return format!(
                "{} watcher{plural}, {} products, {} req/s each, {how}{every}, {}",
                self.watchers,
                b.products,
                b.rps(),
                if self.planned { "planned" } else { "unplanned" }
            );
        }
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
            "n{}-t{}ms-{}{}",
            self.watchers,
            self.poll.as_millis(),
            if self.planned { "planned" } else { "unplanned" },
            self.budget
                .map_or_else(String::new, |b| format!("-{}", b.endpoint.flag()))
        )
    }

    /// The part of a period a flip waits at random before it flips: a
    /// whole poll interval, or T/N for a budgeted per-product row (see the
    /// module's documentation).
    fn phase_period(&self) -> Duration {
        match self.budget {
            Some(b) if self.planned && b.requests_per_round() > 1 => {
                self.poll / self.watchers.max(1) as u32
            }
            _ => self.poll,
        }
    }

    /// The longest wait for a flip's checkout or for the system to be
    /// idle.
    fn wait(&self) -> Duration {
        WAIT.max(self.poll + Duration::from_secs(10))
    }

    /// How long the watchers get to settle into the plan before measuring:
    /// three periods, or for a round longer than a second (per-product
    /// under a budget) one round and 3 s, which ends every first round
    /// (started before the plan arrived).
    ///
    /// A batch row polling slower than its budget needs (`T` above 1/R)
    /// gets the rounds it takes its budget to let go of the phase of its
    /// first request: each round's request waits for the budget's next
    /// turn (1/R after the last request), so a watcher's lag behind its
    /// planned turn shrinks by only `T − 1/R` a round (at `T = 1/R` it
    /// never does; see docs/benchmarks.md, issue 20).
    fn settle(&self) -> Duration {
        match self.budget {
            Some(b) if b.round() > Duration::from_secs(1) => b.round() + Duration::from_secs(3),
            Some(b) if self.poll > b.spacing => {
                let slack = (self.poll - b.spacing).as_secs_f64();
                let rounds = (b.spacing.as_secs_f64() / slack).ceil().min(60.0) as u32;
                self.poll * (rounds + 3) + Duration::from_secs(1)
            }
            Some(b) => b.round() * 3 + Duration::from_secs(1),
            None => self.poll * 3 + Duration::from_millis(300),
        }
    }
}

/// The budgeted rows: for each watcher count, the batch endpoint then one
/// request per product, planned; `per_product: false` leaves the latter
/// out. The batch rows poll every `batch_interval` when it is longer than
/// the budget's 1/R.
pub fn budget_matrix(
    watchers: &[usize],
    rps: f64,
    per_product: bool,
    batch_interval: Option<Duration>,
) -> Vec<Variant> {
    let spacing = Duration::from_secs_f64(1.0 / rps);
    let mut out = Vec::new();
    for &n in watchers {
        for endpoint in [Endpoint::Summary, Endpoint::Shopify, Endpoint::Hierarchy] {
            if endpoint == Endpoint::Hierarchy && !per_product {
                continue;
            }
            let budget = Budget {
                endpoint,
                spacing,
                products: BUDGET_PRODUCTS,
            };
            let poll = match (endpoint, batch_interval) {
                (Endpoint::Summary | Endpoint::Shopify, Some(t)) => t.max(budget.round()),
                _ => budget.round(),
            };
            out.push(Variant {
                watchers: n.max(1),
                poll,
                planned: true,
                budget: Some(budget),
            });
        }
    }
    out
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
                    budget: None,
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
    let mut variants = Vec::new();
    if ctx.e2e_matrix {
        variants = matrix(
            &ctx.e2e_watchers,
            &ctx.e2e_poll_intervals,
            &ctx.e2e_planning,
        );
    }
    if ctx.e2e_budget {
        if !plans {
            warn!(
                scenario = SCENARIO,
                "this purchase-arbiter cannot plan polls: the budgeted rows (planned) are skipped"
            );
        } else {
            let per_product = ctx.plan.budget_per_product_samples > 0;
            if !per_product {
                info!(
                    scenario = SCENARIO,
                    "budgeted rows: one request per product is skipped (0 flips, as with --quick: a round is 24 s)"
                );
            }
            variants.extend(budget_matrix(
                &ctx.e2e_budget_watchers,
                ctx.e2e_budget_rps,
                per_product,
                ctx.e2e_budget_batch_interval,
            ));
        }
    }
    for v in variants {
        if v.planned && !plans {
            continue;
        }
        let samples = samples_of(ctx, &v);
        info!(
            scenario = SCENARIO,
            variant = %v.name(),
            samples,
            products = v.budget.map_or(ctx.e2e_products, |b| b.products),
            poll_ms = v.poll.as_millis() as u64,
            "restock: store flip → checkout request"
        );
        let t0 = Instant::now();
        let m = measure(ctx, v, plans).await?;
        let mut row = Row::new(SCENARIO, System::Restock)
            .variant(v.name())
            .fsync(true)
            .latencies(&m.lat)
            .poll_interval(v.poll)
            .watchers(v.watchers)
            .planned(v.planned)
            .poll_gaps(&m.gaps);
        if let Some(b) = &m.budget {
            row = row.budget(b);
            info!(
                scenario = SCENARIO,
                variant = %v.name(),
                requests = b.requests,
                detections = b.detections,
                seconds = b.seconds,
                min_request_gap_ms = ?b.min_request_gap_ms,
                "requests during the measurement"
            );
        }
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

/// Flips of a row.
fn samples_of(ctx: &Ctx, v: &Variant) -> usize {
    match v.budget {
        None => ctx.plan.e2e_samples,
        Some(b) if b.endpoint != Endpoint::Hierarchy => ctx.plan.budget_batch_samples,
        Some(_) => ctx.plan.budget_per_product_samples,
    }
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

    /// Stock requests answered so far by every RedSky endpoint and every
    /// Shopify storefront endpoint, whatever the answer
    /// (`store_sim_redsky_requests_total` and
    /// `store_sim_shopify_requests_total`, summed over codes).
    async fn redsky_requests(&self) -> anyhow::Result<HashMap<String, u64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .context("GET /metrics on store-sim")?
            .error_for_status()
            .context("GET /metrics on store-sim")?
            .text()
            .await
            .context("store-sim's metrics")?;
        Ok(parse_redsky_requests(&text))
    }
}

/// `store_sim_redsky_requests_total{endpoint, code}` and
/// `store_sim_shopify_requests_total{endpoint, code}` by endpoint.
fn parse_redsky_requests(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line
            .strip_prefix("store_sim_redsky_requests_total{")
            .or_else(|| line.strip_prefix("store_sim_shopify_requests_total{"))
        else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(endpoint) = labels
            .split("endpoint=\"")
            .nth(1)
            .and_then(|e| e.split('"').next())
        else {
            continue;
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        *out.entry(endpoint.to_owned()).or_insert(0) += n as u64;
    }
    out
}

/// The shortest gap (ms) between two requests of one watcher in a poll
/// log: a watcher's polls less than 50 ms apart are one request (a batch
/// summary logs one poll per product it names).
pub fn min_request_gap(polls: &Value) -> Option<f64> {
    const SAME_REQUEST_MS: f64 = 50.0;
    let mut by_watcher: HashMap<&str, Vec<f64>> = HashMap::new();
    for p in polls["polls"].as_array().into_iter().flatten() {
        if let (Some(w), Some(at)) = (p["watcher"].as_str(), p["at_ms"].as_f64()) {
            by_watcher.entry(w).or_default().push(at);
        }
    }
    let mut min: Option<f64> = None;
    for times in by_watcher.values_mut() {
        times.sort_by(f64::total_cmp);
        let mut starts: Vec<f64> = Vec::new();
        let mut last = f64::NEG_INFINITY;
        for &t in times.iter() {
            if t - last >= SAME_REQUEST_MS {
                starts.push(t);
            }
            last = t;
        }
        for w in starts.windows(2) {
            let gap = w[1] - w[0];
            min = Some(min.map_or(gap, |m: f64| m.min(gap)));
        }
    }
    min
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
    /// Budgeted rows: the requests counted.
    budget: Option<BudgetFigures>,
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
    let samples = samples_of(ctx, &v);
    let wait = v.wait();
    // Tracing also reads the machine's stall counters and the arbiter's
    // fsync histogram around every flip.
    let tracing = ctx.e2e_trace_dir.is_some();
    let log = if tracing { "info" } else { "warn" };
    let dir = ctx.env.temp_dir("restock-bench-e2e-")?;
    let mut products =
        restock::product_ids(v.budget.map_or(ctx.e2e_products, |b| b.products).max(1));
    if v.budget.is_some_and(|b| b.endpoint == Endpoint::Shopify) {
        // The same numbers, as variants of one shop.
        for p in &mut products {
            *p = format!("shopify:{BENCH_SHOP}/{p}");
        }
    }
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
        if let Some(b) = v.budget.filter(|b| b.endpoint == Endpoint::Shopify) {
            // Issue 23: the shop, played by the simulator, and its budget
            // stated explicitly (unlimited with --source-is-simulator).
            args.extend([
                "--shopify-url".to_owned(),
                format!("{BENCH_SHOP}={}/shops/{BENCH_SHOP}", sim.url),
                "--shopify-max-rps".into(),
                b.rps().to_string(),
            ]);
        } else if let Some(b) = v.budget {
            // Issue 20: the endpoint, and a budget stated explicitly (its
            // default is unlimited for any host but Target's).
            args.extend([
                "--target-endpoint".to_owned(),
                b.endpoint.flag().to_owned(),
                "--target-max-rps".into(),
                b.rps().to_string(),
                "--max-in-flight".into(),
                "1".into(),
            ]);
        }
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
    tokio::time::sleep(v.settle()).await;
    sim.delete("/admin/polls").await?;
    let requests_before = match v.budget {
        Some(_) => Some(sim.redsky_requests().await?),
        None => None,
    };
    let measuring = Instant::now();

    let mut lat = Latencies::with_capacity(samples);
    let mut all = Vec::with_capacity(samples);
    let mut traces = Vec::new();
    let mut violations = 0u64;
    let mut extra_checkouts = 0usize;
    let mut busy_flips = 0usize;
    for k in 0..samples {
        let tcin = &products[k % products.len()];
        wait_idle(&sim, &control, &watcher_clients, &products, tcin, wait).await?;
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
        let phase = rand::rng().random_range(0..v.phase_period().as_micros().max(1) as u64);
        tokio::time::sleep(Duration::from_micros(phase)).await;
        let flipped = sim.set_stock(tcin, true).await?;
        let (arrived, at_arrival) = procs::eventually(
            &format!("sample {k}: a checkout of {tcin} after the flip"),
            wait,
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
        wait_idle(&sim, &control, &watcher_clients, &products, t, wait).await?;
    }
    let seconds = measuring.elapsed().as_secs_f64();
    let requests = match requests_before {
        Some(before) => {
            let after = sim.redsky_requests().await?;
            let by_endpoint: Vec<(String, u64)> = after
                .iter()
                .map(|(e, n)| (e.clone(), n.saturating_sub(*before.get(e).unwrap_or(&0))))
                .filter(|(_, n)| *n > 0)
                .collect();
            info!(scenario = SCENARIO, variant = %v.name(), ?by_endpoint, "requests by endpoint");
            Some(by_endpoint.iter().map(|(_, n)| n).sum::<u64>())
        }
        None => None,
    };
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
    let budget = match (v.budget, requests) {
        (Some(b), Some(requests)) => Some(BudgetFigures {
            endpoint: b.endpoint.flag(),
            max_rps: b.rps(),
            products: b.products,
            watchers: v.watchers,
            requests,
            detections: samples,
            seconds,
            min_request_gap_ms: min_request_gap(&polls),
        }),
        _ => None,
    };
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
        budget,
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
    limit: Duration,
) -> anyhow::Result<()> {
    procs::eventually("the end-to-end system to be idle", limit, || {
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
    fn budgeted_rows_pace_polls_by_the_budget() {
        let rows = budget_matrix(&[1, 3], 1.0, true, None);
        let names: Vec<String> = rows.iter().map(Variant::name).collect();
        assert_eq!(
            names,
            vec![
                "1 watcher, 24 products, 1 req/s each, summary, 1 request per round, planned",
                "1 watcher, 24 products, 1 req/s each, Shopify products.json, 1 request per round, planned",
                "1 watcher, 24 products, 1 req/s each, hierarchy, 1 request per product, planned",
                "3 watchers, 24 products, 1 req/s each, summary, 1 request per round, planned",
                "3 watchers, 24 products, 1 req/s each, Shopify products.json, 1 request per round, planned",
                "3 watchers, 24 products, 1 req/s each, hierarchy, 1 request per product, planned",
            ]
        );
        // Batch (Target's summary, a shop's products.json): one request a
        // round, every second; per product: 24 s.
        assert_eq!(rows[0].poll, Duration::from_secs(1));
        assert_eq!(rows[1].poll, Duration::from_secs(1));
        assert_eq!(rows[2].poll, Duration::from_secs(24));
        assert_eq!(rows[0].phase_period(), Duration::from_secs(1));
        assert_eq!(rows[4].phase_period(), Duration::from_secs(1));
        assert_eq!(rows[5].phase_period(), Duration::from_secs(8));
        assert_eq!(rows[5].settle(), Duration::from_secs(27));
        assert!(rows[2].wait() >= Duration::from_secs(34));
        assert_eq!(rows[0].settle(), Duration::from_secs(4));
        assert_eq!(rows[1].settle(), Duration::from_secs(4));
        assert_eq!(budget_matrix(&[3], 1.0, false, None).len(), 2);
        assert_eq!(
            budget_matrix(&[1], 0.5, true, None)[2].poll,
            Duration::from_secs(48)
        );
        // A batch interval above 1/R: said in the name; settling takes the
        // rounds the lag needs to shrink (1 s / 0.1 s = 10, and 3 more).
        let slack = budget_matrix(&[3], 1.0, true, Some(Duration::from_millis(1_100)));
        assert_eq!(slack[0].poll, Duration::from_millis(1_100));
        assert_eq!(slack[1].poll, Duration::from_millis(1_100));
        assert_eq!(slack[2].poll, Duration::from_secs(24));
        assert!(slack[0].name().contains("round, every 1100 ms, planned"));
        assert_eq!(slack[0].settle(), Duration::from_millis(1_100 * 13 + 1_000));
    }

    #[test]
    fn requests_come_from_the_metrics_and_their_gaps_from_the_poll_log() {
        let text = "# TYPE store_sim_redsky_requests_total counter\n\
             store_sim_redsky_requests_total{endpoint=\"product_summary_with_fulfillment_v1\",code=\"200\"} 7\n\
             store_sim_redsky_requests_total{code=\"403\",endpoint=\"product_summary_with_fulfillment_v1\"} 2\n\
             store_sim_redsky_requests_total{endpoint=\"pdp_client_v1\",code=\"200\"} 1\n\
             store_sim_fulfillment_requests_total{code=\"200\"} 5\n\
             store_sim_shopify_requests_total{endpoint=\"shopify_products\",code=\"200\"} 4\n\
             store_sim_shopify_requests_total{endpoint=\"shopify_products\",code=\"429\"} 1\n";
        let r = parse_redsky_requests(text);
        assert_eq!(r.get("shopify_products"), Some(&5));
        assert_eq!(r["product_summary_with_fulfillment_v1"], 9);
        assert_eq!(r["pdp_client_v1"], 1);
        assert_eq!(r.len(), 3);
        // Watcher a: a batch at 0 (three products logged within 1 ms), the
        // next at 1,000.5; watcher b: one product at 10 and at 1,400.
        let polls = json!({"polls": [
            {"tcin": "1", "watcher": "a", "at_ms": 0.0},
            {"tcin": "2", "watcher": "a", "at_ms": 0.4},
            {"tcin": "3", "watcher": "a", "at_ms": 0.9},
            {"tcin": "1", "watcher": "b", "at_ms": 10.0},
            {"tcin": "1", "watcher": "a", "at_ms": 1_000.5},
            {"tcin": "2", "watcher": "a", "at_ms": 1_000.7},
            {"tcin": "1", "watcher": "b", "at_ms": 1_400.0},
        ]});
        assert_eq!(min_request_gap(&polls), Some(1_000.5));
        assert_eq!(min_request_gap(&json!({"polls": []})), None);
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
