//! The fault-injection suite: the real binaries under `kill -9`, SIGSTOP,
//! cut links and restock storms, and a checker over what the store and the
//! arbiter recorded.
//!
//! One arbiter, the store simulator (the fencing-aware checkout) and six
//! watchers on two "hosts" (see [`cluster`]) run in TEST_MODE, so purchases
//! cycle for the whole run. The [`inject`] module hits them with one fault
//! at a time; [`history`] follows the arbiter's events from sequence 1
//! across every restart; at the end [`checker`] decides, and the report
//! names every check, the counts and the seed.
//!
//! ```sh
//! cargo build -p purchase-arbiter -p stock-watcher -p store-sim --bins
//! RESTOCK_FAULT_SECONDS=90 cargo test -p restock-e2e --test faults -- --nocapture
//! RESTOCK_FAULT_SEED=1234 RESTOCK_FAULT_SECONDS=600 cargo test -p restock-e2e --test faults -- --nocapture
//! ```
//!
//! `RESTOCK_FAULT_SECONDS` (default 90) bounds the time faults are
//! injected; winding down and checking add about 15 s. `RESTOCK_FAULT_SEED`
//! replays a run's choices (which faults, when, on whom, for how long, and
//! every restock); without it a seed is picked and printed. Process timing
//! is not replayed, so a seed reproduces the schedule, not every
//! interleaving. `RESTOCK_FAULT_ONLY=holder-pause,watcher-cut` limits the
//! faults to the kinds named (see `FaultKind::slug`).
//!
//! `RESTOCK_FAULT_MODE=ha` runs the HA mode instead ([`ha`]): three etcd
//! members (Debian's `etcd`; skipped without it unless
//! `RESTOCK_REQUIRE_ETCD=1`), three arbiter replicas kept in them, the
//! store and the six watchers given every replica, under the replicas'
//! faults (`leader-kill`, `leader-pause`, `leader-pause-at-grant`,
//! `leader-etcd-cut`, `etcd-member-kill`, `replicas-restart`, and
//! `etcd-member-pause` in a last phase at election TTL 5 s;
//! `RESTOCK_FAULT_ONLY` picks among these there). Each watcher is given
//! every replica (`--arbiter URL1,URL2,URL3`, each through a link of its
//! own);
//! `RESTOCK_HA_WATCHER_LINKS=follow-leader` gives it one link that the
//! suite points at the leader instead (see [`replicas`]). The same seed
//! and time variables apply:
//!
//! ```sh
//! RESTOCK_FAULT_MODE=ha RESTOCK_FAULT_SECONDS=60 cargo test -p restock-e2e --test faults -- --nocapture
//! ```
//!
//! The target has `test = false`, so `cargo test --workspace` stays quick;
//! `scripts/test.sh` (the README's test command, run by CI) runs it by name
//! with `--test faults`, which also runs the checker's unit tests.

mod checker;
mod cluster;
mod ha;
mod history;
mod inject;
mod proxy;
mod replicas;
mod rng;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use restock_proto::v1::GetStatusRequest;
use restock_testkit::ArbiterEndpoint;

use crate::{
    checker::{ArbiterCounters, FaultKind, History, Settings},
    cluster::{Cluster, LEASE_TTL, StockDriver, now_ms},
    history::{EventLog, ledger_from_json},
    inject::Injector,
    rng::Rng,
};

/// After a fault heals, the next grant comes within the TTL plus this.
/// What it covers: the arbiter's start-up after a restart, the watchers'
/// reconnect back-off (at most 500 ms here), one poll round and report, and
/// a checkout already running on a healthy watcher (up to 1.4 s) finishing
/// before the slot frees.
const LIVENESS_MARGIN: Duration = Duration::from_secs(3);
/// How far the store's and the arbiter's clocks may disagree (both read
/// the same machine's clock, each through its own monotonic base).
const CLOCK_TOLERANCE_MS: u64 = 100;
/// A product ATTEMPTING, or QUEUED with the slot free, longer than this is
/// stuck. Far above anything a fault here can cause (a lease lasts the TTL
/// past its holder's last renewal, an arbiter is down for seconds), so only
/// a real stuck slot crosses it.
const STUCK_AFTER: Duration = Duration::from_secs(30);
/// Watchers on each of the two hosts.
const WATCHERS_PER_HOST: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={raw:?} is not a number: {e}")))
}

/// `RESTOCK_FAULT_MODE=ha`: the replicas' suite instead of the default.
fn ha_mode() -> bool {
    match std::env::var("RESTOCK_FAULT_MODE")
        .as_deref()
        .map(str::trim)
    {
        Err(_) | Ok("" | "default") => false,
        Ok("ha") => true,
        Ok(other) => panic!("RESTOCK_FAULT_MODE={other:?}: unknown mode; known: default, ha"),
    }
}

/// The seed: `RESTOCK_FAULT_SEED`, or one picked from the clock.
fn seed() -> u64 {
    env_u64("RESTOCK_FAULT_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// Every fault kind of the mode (`all`), or the ones named in
/// `RESTOCK_FAULT_ONLY` (comma-separated slugs such as
/// `holder-pause,watcher-cut`), to dwell on one kind of failure.
fn fault_kinds(all: &[FaultKind]) -> Vec<FaultKind> {
    let Ok(only) = std::env::var("RESTOCK_FAULT_ONLY") else {
        return all.to_vec();
    };
    only.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            all.iter()
                .copied()
                .find(|k| k.slug() == s)
                .unwrap_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|k| k.slug()).collect();
                    panic!(
                        "RESTOCK_FAULT_ONLY: unknown fault {s:?}; known: {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// Prints how to replay the run if the test fails anywhere, including in
/// a helper's own assertion.
struct ReplayHint {
    seed: u64,
    seconds: u64,
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fault suite FAILED with seed {0}; replay with RESTOCK_FAULT_SEED={0} RESTOCK_FAULT_SECONDS={1}",
                self.seed, self.seconds
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_checkouts_at_once_whatever_fails() {
    if ha_mode() {
        eprintln!("RESTOCK_FAULT_MODE=ha: the replicas' suite runs instead of this one");
        return;
    }
    let seconds = env_u64("RESTOCK_FAULT_SECONDS").unwrap_or(90);
    let seed = seed();
    let _hint = ReplayHint { seed, seconds };
    eprintln!(
        "fault suite: seed {seed}, {seconds} s of faults (replay: RESTOCK_FAULT_SEED={seed} RESTOCK_FAULT_SECONDS={seconds})"
    );
    let kinds = fault_kinds(&FaultKind::ALL);
    if kinds.len() < FaultKind::ALL.len() {
        eprintln!(
            "only these faults (RESTOCK_FAULT_ONLY): {}",
            kinds.iter().map(|k| k.slug()).collect::<Vec<_>>().join(",")
        );
    }
    let mut root = Rng::new(seed);
    let fault_rng = root.fork(1);
    let stock_rng = root.fork(2);

    let mut cluster = Cluster::start(WATCHERS_PER_HOST).await;
    eprintln!(
        "started: arbiter {}, store {}, {} watchers on {}",
        cluster.arbiter.addr(),
        cluster.store.addr(),
        cluster.watchers.len(),
        cluster
            .hosts
            .iter()
            .map(|h| format!("{} ({})", h.name, h.ip))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let log = EventLog::new();
    let follower = history::follow(cluster.arbiter.url(), log.clone());
    let (stock, stock_task) = StockDriver::start(cluster.store.url(), stock_rng).await;

    let started = Instant::now();
    let mut injector = Injector {
        cluster: &mut cluster,
        log: log.clone(),
        stock: stock.clone(),
        rng: fault_rng,
        seed,
        started,
        recovery_bound: LEASE_TTL + LIVENESS_MARGIN,
        records: Vec::new(),
        checkout_delay_ms: cluster::CHECKOUT_DELAY_MS.0,
        kinds,
    };
    injector.run(started + Duration::from_secs(seconds)).await;
    let faults = std::mem::take(&mut injector.records);
    drop(injector);

    // Wind down: nothing in stock, so the last lease ends and no checkout
    // is left running when the books are read.
    cluster.heal_all_links();
    stock.stop(stock_task).await;
    let quiet = wind_down(&cluster, seed).await;
    eprintln!("wound down in {:.1}s", quiet.as_secs_f64());

    let mut c = cluster.arbiter.client().await;
    let status = c
        .get_status(GetStatusRequest {})
        .await
        .unwrap_or_else(|e| panic!("GetStatus at the end (seed {seed}): {e}"))
        .into_inner();
    restock_testkit::eventually(
        &format!(
            "the event follower to reach sequence {} (seed {seed})",
            status.last_event_sequence
        ),
        Duration::from_secs(10),
        || {
            let log = log.clone();
            let want = status.last_event_sequence;
            async move { (log.last_sequence() >= want).then_some(()) }
        },
    )
    .await;
    follower.abort();
    let counters = status.counters.unwrap_or_default();
    let orders = cluster.orders().await;
    let (events, unreadable_events) = log.to_checker();
    let history = History {
        events,
        unreadable_events,
        store: ledger_from_json(&orders),
        faults,
        counters: Some(ArbiterCounters {
            grants: counters.grants,
            purchases: counters.purchases,
            expirations: counters.expirations,
        }),
        settings: Settings {
            lease_ttl_ms: LEASE_TTL.as_millis() as u64,
            stuck_after_ms: STUCK_AFTER.as_millis() as u64,
            liveness_margin_ms: LIVENESS_MARGIN.as_millis() as u64,
            clock_tolerance_ms: CLOCK_TOLERANCE_MS,
            budget: Some(cluster::budget_setting()),
        },
        ha: None,
    };
    let report = checker::check(&history);
    eprintln!("{}", report.render(seed));
    eprintln!(
        "run: {seconds} s of faults, {} stock changes, {} events followed",
        stock.flips(),
        log.len()
    );
    assert!(
        report.counts.grants > 0 && report.counts.store_purchases > 0,
        "nothing was bought: the run proves nothing (seed {seed})"
    );
    assert!(
        report.passed(),
        "the history check failed (seed {seed}; replay with RESTOCK_FAULT_SEED={seed} RESTOCK_FAULT_SECONDS={seconds}):\n{}",
        report.failures().join("\n")
    );
}

/// HA mode (`RESTOCK_FAULT_MODE=ha`, see [`ha`]): the same promises over
/// three arbiter replicas kept in etcd, under the replicas' faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_never_two_checkouts_at_once_whatever_fails() {
    if !ha_mode() {
        return; // the default mode runs the test above
    }
    let seconds = env_u64("RESTOCK_FAULT_SECONDS").unwrap_or(60);
    let seed = seed();
    let _hint = HaReplayHint { seed, seconds };
    eprintln!(
        "HA fault suite: seed {seed}, {seconds} s of faults (replay: RESTOCK_FAULT_MODE=ha RESTOCK_FAULT_SEED={seed} RESTOCK_FAULT_SECONDS={seconds})"
    );
    let kinds = fault_kinds(&FaultKind::HA);
    if kinds.len() < FaultKind::HA.len() {
        eprintln!(
            "only these faults (RESTOCK_FAULT_ONLY): {}",
            kinds.iter().map(|k| k.slug()).collect::<Vec<_>>().join(",")
        );
    }
    ha::run(seconds, seed, kinds).await;
}

/// [`ReplayHint`] for the HA mode.
struct HaReplayHint {
    seed: u64,
    seconds: u64,
}

impl Drop for HaReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "HA fault suite FAILED with seed {0}; replay with RESTOCK_FAULT_MODE=ha RESTOCK_FAULT_SEED={0} RESTOCK_FAULT_SECONDS={1}",
                self.seed, self.seconds
            );
        }
    }
}

/// Waits until no lease is held and no checkout runs, for a whole stock
/// TTL in a row (a last report may still queue a product until then).
async fn wind_down(cluster: &Cluster, seed: u64) -> Duration {
    let start = Instant::now();
    let limit = Duration::from_secs(30);
    let mut quiet_since: Option<Instant> = None;
    loop {
        let idle = async {
            let mut c = cluster.arbiter.client().await;
            let s = c.get_status(GetStatusRequest {}).await.ok()?.into_inner();
            let orders = cluster.orders().await;
            let running = orders["in_flight"].as_array().map_or(0, Vec::len);
            Some(s.active_lease.is_none() && running == 0)
        }
        .await
        .unwrap_or(false);
        match (idle, quiet_since) {
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= cluster::STOCK_TTL => return start.elapsed(),
            (false, _) => quiet_since = None,
            _ => {}
        }
        assert!(
            start.elapsed() < limit,
            "the slot did not go quiet within {limit:?} of taking everything out of stock (seed {seed}); at {}",
            now_ms()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
