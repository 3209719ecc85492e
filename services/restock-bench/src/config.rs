//! Flags, and the [`Plan`]: how many samples each scenario takes in a full
//! run and in a `--quick` one (CI: seconds, not minutes).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};

/// Default output file, relative to where the benchmark runs (the repo root
/// when started by `scripts/bench.sh`).
pub const DEFAULT_OUT: &str = "target/bench/results.json";
/// Waiters (besides the holder) in the hand-off scenario.
pub const DEFAULT_WAITERS: usize = 32;

/// The replicas' `--election-ttl` in the failover scenario: the shortest
/// the arbiter takes, so a kill -9 costs the least time.
pub const DEFAULT_FAILOVER_ELECTION_TTL: &str = "2s";
/// The `--election-ttl` of a lone `--store etcd` arbiter in the hand-off
/// and grant scenarios (the arbiter's default; nothing fails over there).
pub const ETCD_STORE_ELECTION_TTL: Duration = Duration::from_secs(5);

/// Every scenario, in the order they run. Failover first: it needs etcd's
/// election to wake a waiting candidate, and etcd 3.4.23 (Debian 12's, what
/// `scripts/bench.sh` installs) stops waking any waiting Lock or Campaign
/// call once the etcd lock baseline has cancelled its 32 blocked Lock calls
/// at the end of the hand-off (seen 2026-12-01; see docs/benchmarks.md).
pub const SCENARIOS: [&str; 8] = [
    "failover",
    "handoff",
    "grant",
    "cycle",
    "contention",
    "ingest",
    "memory",
    "end_to_end",
];

/// `restock-bench` flags. See `docs/benchmarks.md`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "restock-bench", version, about)]
pub struct BenchConfig {
    /// A short run for CI: a few hundred samples per scenario, seconds each.
    #[arg(long, env = "RESTOCK_BENCH_QUICK")]
    pub quick: bool,

    /// Where the JSON results go (a list of rows).
    #[arg(long, env = "RESTOCK_BENCH_OUT", default_value = DEFAULT_OUT)]
    pub out: PathBuf,

    /// Folder holding purchase-arbiter, store-sim and stock-watcher; default:
    /// the folder of this executable (target/release when built together).
    #[arg(long, env = "RESTOCK_BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Redis for the lock baseline (`redis://127.0.0.1:PORT`); without it
    /// the Redis rows are skipped.
    #[arg(long, env = "RESTOCK_BENCH_REDIS_URL")]
    pub redis_url: Option<String>,

    /// etcd's client URL for the lock baseline (`http://127.0.0.1:PORT`);
    /// without it the etcd rows are skipped.
    #[arg(long, env = "RESTOCK_BENCH_ETCD_URL")]
    pub etcd_url: Option<String>,

    /// Whether the etcd server fsyncs its log (it does by default); only
    /// labels the etcd rows.
    #[arg(long, env = "RESTOCK_BENCH_ETCD_FSYNC", default_value_t = true, action = clap::ArgAction::Set)]
    pub etcd_fsync: bool,

    /// Fail instead of skipping when Redis or etcd is not given.
    #[arg(long, env = "RESTOCK_BENCH_REQUIRE_BASELINES")]
    pub require_baselines: bool,

    /// Comma-separated scenarios to run (default: all):
    /// failover,handoff,grant,cycle,contention,ingest,memory,end_to_end.
    #[arg(long, env = "RESTOCK_BENCH_SCENARIOS", value_delimiter = ',')]
    pub scenarios: Vec<String>,

    /// Waiters besides the holder in the hand-off scenario.
    #[arg(long, env = "RESTOCK_BENCH_WAITERS", default_value_t = DEFAULT_WAITERS)]
    pub waiters: usize,

    /// Watcher processes in the end-to-end scenario; one row per value and
    /// poll interval and planning setting (default 1,3,5; 3 with --quick).
    #[arg(long, env = "RESTOCK_BENCH_E2E_WATCHERS", value_delimiter = ',')]
    pub e2e_watchers: Option<Vec<usize>>,

    /// The watchers' poll intervals in the end-to-end scenario (default
    /// 300ms,100ms; 100ms with --quick).
    #[arg(long, alias = "e2e-poll-interval", env = "RESTOCK_BENCH_E2E_POLL_INTERVALS", value_delimiter = ',', value_parser = restock_domain::duration::parse_duration)]
    pub e2e_poll_intervals: Option<Vec<Duration>>,

    /// End-to-end poll planning settings to measure side by side: `true`
    /// is the arbiter's default (watchers take turns), `false` passes
    /// `--poll-planning false` (each watcher on its own schedule). An
    /// arbiter without the flag is measured unplanned only.
    #[arg(long, env = "RESTOCK_BENCH_E2E_PLANNING", value_delimiter = ',', default_value = "true,false", action = clap::ArgAction::Set)]
    pub e2e_planning: Vec<bool>,

    /// Flips per end-to-end configuration (default 200; 5 with --quick).
    #[arg(long, env = "RESTOCK_BENCH_E2E_SAMPLES")]
    pub e2e_samples: Option<usize>,

    /// Products the end-to-end scenario flips in turn, so a flip need not
    /// wait for every watcher to see the previous one gone (each flip still
    /// starts with the slot free and no product in stock at the arbiter).
    #[arg(long, env = "RESTOCK_BENCH_E2E_PRODUCTS", default_value_t = 3)]
    pub e2e_products: usize,

    /// Which parts of the end-to-end scenario run: `matrix` (issue 14: N
    /// watchers polling every T, planned and unplanned) and `budget`
    /// (issue 20: 24 products, each watcher held to a request budget,
    /// per-product requests against batch summaries).
    #[arg(long, env = "RESTOCK_BENCH_E2E_PARTS", value_delimiter = ',', default_value = "matrix,budget", value_parser = ["matrix", "budget"])]
    pub e2e_parts: Vec<String>,

    /// Watcher counts of the budgeted end-to-end rows.
    #[arg(
        long,
        env = "RESTOCK_BENCH_E2E_BUDGET_WATCHERS",
        value_delimiter = ',',
        default_value = "1,3"
    )]
    pub e2e_budget_watchers: Vec<usize>,

    /// Each watcher's request budget in the budgeted rows (its
    /// `--target-max-rps`, requests per second).
    #[arg(long, env = "RESTOCK_BENCH_E2E_BUDGET_RPS", default_value_t = 1.0)]
    pub e2e_budget_rps: f64,

    /// The poll interval of the budgeted batch rows (default: 1/R, all the
    /// budget allows); a longer one leaves the budget slack, which lets the
    /// poll plan move a watcher's requests to its turn.
    #[arg(long, env = "RESTOCK_BENCH_E2E_BUDGET_BATCH_INTERVAL", value_parser = restock_domain::duration::parse_duration)]
    pub e2e_budget_batch_interval: Option<Duration>,

    /// Flips per budgeted row polling the batch summaries (default 60; 5
    /// with --quick).
    #[arg(long, env = "RESTOCK_BENCH_E2E_BUDGET_SAMPLES")]
    pub e2e_budget_samples: Option<usize>,

    /// Flips per budgeted row polling one product per request (default 4:
    /// each takes a round of 24 s / N on average; 0 with --quick, which
    /// skips those rows).
    #[arg(long, env = "RESTOCK_BENCH_E2E_BUDGET_PER_PRODUCT_SAMPLES")]
    pub e2e_budget_per_product_samples: Option<usize>,

    /// Where the end-to-end scenario writes traces: every flip with the
    /// machine's CPU and I/O stall time (/proc/pressure) and the arbiter's
    /// slow fdatasyncs (its /metrics) around it, and for each slow flip
    /// (above T/N + 10 ms planned, T + 10 ms unplanned) the simulator's
    /// polls and orders and the arbiter's events, plus the processes' logs
    /// (at `info`).
    /// Default: no traces, logs at `warn`.
    #[arg(long, env = "RESTOCK_BENCH_E2E_TRACE_DIR")]
    pub e2e_trace_dir: Option<PathBuf>,

    /// The arbiter replicas' `--election-ttl` in the failover scenario
    /// (whole seconds, at least 2s): how long a kill -9'd leader keeps the
    /// leadership.
    #[arg(long, env = "RESTOCK_BENCH_FAILOVER_ELECTION_TTL", default_value = DEFAULT_FAILOVER_ELECTION_TTL, value_parser = restock_domain::duration::parse_duration)]
    pub failover_election_ttl: Duration,

    /// Leaders killed (kill -9) in the failover scenario (default 20; 5 with
    /// --quick). A few more are stopped with SIGTERM (5; 2 with --quick).
    #[arg(long, env = "RESTOCK_BENCH_FAILOVER_KILLS")]
    pub failover_kills: Option<usize>,

    /// Hard limit of each scenario (default 120 s, 45 s with --quick).
    #[arg(long, env = "RESTOCK_BENCH_SCENARIO_TIMEOUT", value_parser = restock_domain::duration::parse_duration)]
    pub scenario_timeout: Option<Duration>,

    /// Folder for temporary state files and data (must be a real disk for
    /// fsync to mean anything; default: the system's temporary folder).
    #[arg(long, env = "RESTOCK_BENCH_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// The arbiter's log filter (`RUST_LOG`) during the benchmark; `info`
    /// logs every grant, which costs a write per grant.
    #[arg(long, env = "RESTOCK_BENCH_ARBITER_LOG", default_value = "warn")]
    pub arbiter_log: String,
}

impl BenchConfig {
    /// The scenarios to run, checked against the known names.
    pub fn selected(&self) -> anyhow::Result<Vec<&'static str>> {
        if self.scenarios.is_empty() {
            return Ok(SCENARIOS.to_vec());
        }
        let mut out = Vec::new();
        for s in &self.scenarios {
            let s = s.trim();
            match SCENARIOS.iter().find(|k| **k == s) {
                Some(k) => out.push(*k),
                None => bail!(
                    "unknown scenario {s:?} in --scenarios; known: {}",
                    SCENARIOS.join(", ")
                ),
            }
        }
        Ok(out)
    }

    /// Where the service binaries are.
    pub fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.bin_dir {
            return Ok(d.clone());
        }
        let exe = std::env::current_exe().context("finding this executable's path")?;
        exe.parent()
            .map(PathBuf::from)
            .context("this executable has no parent folder")
    }

    pub fn timeout(&self) -> Duration {
        self.scenario_timeout.unwrap_or(if self.quick {
            Duration::from_secs(45)
        } else {
            Duration::from_secs(120)
        })
    }

    pub fn plan(&self) -> Plan {
        let mut plan = if self.quick { Plan::QUICK } else { Plan::FULL };
        if let Some(n) = self.e2e_samples {
            plan.e2e_samples = n;
        }
        if let Some(n) = self.e2e_budget_samples {
            plan.budget_batch_samples = n;
        }
        if let Some(n) = self.e2e_budget_per_product_samples {
            plan.budget_per_product_samples = n;
        }
        if let Some(n) = self.failover_kills {
            plan.failover_kills = n;
        }
        plan
    }

    /// End-to-end watcher counts.
    pub fn e2e_watchers(&self) -> Vec<usize> {
        self.e2e_watchers.clone().unwrap_or_else(
            || {
                if self.quick { vec![3] } else { vec![1, 3, 5] }
            },
        )
    }

    /// End-to-end poll intervals.
    pub fn e2e_poll_intervals(&self) -> Vec<Duration> {
        self.e2e_poll_intervals.clone().unwrap_or_else(|| {
            if self.quick {
                vec![Duration::from_millis(100)]
            } else {
                vec![Duration::from_millis(300), Duration::from_millis(100)]
            }
        })
    }

    /// Whether the end-to-end scenario runs that part (`matrix`,
    /// `budget`).
    pub fn e2e_part(&self, part: &str) -> bool {
        self.e2e_parts.iter().any(|p| p == part)
    }

    /// The end-to-end scenario's time limit unless one is given: its
    /// configurations × flips × (two poll intervals + half a second), plus
    /// 30 s per configuration to start and settle; the budgeted rows, each
    /// flips × (two rounds / N + 5 s), plus a round and a minute.
    pub fn e2e_timeout(&self) -> Duration {
        if let Some(t) = self.scenario_timeout {
            return t;
        }
        let plan = self.plan();
        let samples = plan.e2e_samples as u32;
        let mut total = Duration::ZERO;
        if self.e2e_part("budget") {
            let spacing = Duration::from_secs_f64(1.0 / self.e2e_budget_rps.max(0.01));
            for &n in &self.e2e_budget_watchers {
                let n = n.max(1) as u32;
                // Target's summary and a Shopify shop: one request a round;
                // Target's hierarchy: one per product.
                for (requests, flips) in [
                    (1, plan.budget_batch_samples),
                    (1, plan.budget_batch_samples),
                    (24, plan.budget_per_product_samples),
                ] {
                    if flips == 0 {
                        continue;
                    }
                    let round = spacing * requests;
                    total += (round * 2 / n + Duration::from_secs(5)) * flips as u32
                        + round
                        + Duration::from_secs(60);
                }
            }
        }
        let polls = if self.e2e_part("matrix") {
            self.e2e_poll_intervals()
        } else {
            Vec::new()
        };
        for poll in polls {
            let configs = (self.e2e_watchers().len() * self.e2e_planning.len()) as u32;
            total += (poll * 2 + Duration::from_millis(500)) * samples * configs
                + Duration::from_secs(30) * configs;
        }
        total.max(self.timeout())
    }

    /// The failover scenario's time limit unless one is given: per leader
    /// stopped, three election TTLs and 5 s to restart it and see grants
    /// again, plus 30 s to start.
    pub fn failover_timeout(&self) -> Duration {
        if let Some(t) = self.scenario_timeout {
            return t;
        }
        let plan = self.plan();
        let stops = (plan.failover_kills + plan.failover_terms) as u32;
        ((self.failover_election_ttl * 3 + Duration::from_secs(5)) * stops
            + Duration::from_secs(30))
        .max(self.timeout())
    }
}

/// Sample counts and durations of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Hand-offs measured on the arbiter (each fsync setting) and on etcd.
    pub handoffs: usize,
    /// Hand-offs measured on the Redis lock polling every 10 ms / 50 ms.
    pub redis_handoffs_10ms: usize,
    pub redis_handoffs_50ms: usize,
    /// Grants (report → grant) and uncontended lock acquisitions.
    pub grants: usize,
    /// Acquire + release cycles.
    pub cycles: usize,
    /// How long 64 clients race in the contention scenario.
    pub contention_for: Duration,
    /// How long the ingest scenario measures (after a warm-up).
    pub ingest_for: Duration,
    /// How long 1,000 streams report in the memory scenario.
    pub memory_reporting_for: Duration,
    /// Samples per end-to-end configuration.
    pub e2e_samples: usize,
    /// Flips per budgeted end-to-end row (issue 20): polling the batch
    /// summaries, and one product per request (0: those rows are skipped).
    pub budget_batch_samples: usize,
    pub budget_per_product_samples: usize,
    /// Leaders stopped with kill -9 and with SIGTERM in the failover
    /// scenario.
    pub failover_kills: usize,
    pub failover_terms: usize,
}

impl Plan {
    pub const FULL: Plan = Plan {
        handoffs: 5_000,
        redis_handoffs_10ms: 1_000,
        redis_handoffs_50ms: 400,
        grants: 3_000,
        cycles: 5_000,
        contention_for: Duration::from_secs(5),
        ingest_for: Duration::from_secs(10),
        memory_reporting_for: Duration::from_secs(5),
        e2e_samples: 200,
        budget_batch_samples: 60,
        budget_per_product_samples: 4,
        failover_kills: 20,
        failover_terms: 5,
    };
    pub const QUICK: Plan = Plan {
        handoffs: 300,
        redis_handoffs_10ms: 100,
        redis_handoffs_50ms: 40,
        grants: 200,
        cycles: 300,
        contention_for: Duration::from_secs(1),
        ingest_for: Duration::from_secs(2),
        memory_reporting_for: Duration::from_secs(1),
        e2e_samples: 5,
        budget_batch_samples: 5,
        budget_per_product_samples: 0,
        failover_kills: 5,
        failover_terms: 2,
    };
}
