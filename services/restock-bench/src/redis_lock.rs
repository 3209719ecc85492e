//! The Redis baseline: the lock people build instead of an arbiter.
//! `SET key token NX PX ttl` takes it; a Lua compare-and-delete gives it back
//! only if the token is still ours; waiters retry on a fixed interval, since
//! Redis has no way to tell them the lock is free.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow};
use rand::Rng;
use redis::{Script, aio::MultiplexedConnection};
use tokio::task::JoinSet;
use tracing::debug;

use crate::{procs, stats::Latencies};

/// Gives the lock back only if `ARGV[1]` still holds it.
const COMPARE_AND_DELETE: &str = r#"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
else
  return 0
end"#;

/// Lock TTL: far longer than any hold in the benchmark.
const TTL_MS: u64 = 30_000;

/// One client of one lock key, on its own connection.
pub struct RedisLock {
    con: MultiplexedConnection,
    key: String,
    release: Script,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock").field("key", &self.key).finish()
    }
}

impl RedisLock {
    pub async fn connect(url: &str, key: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
        let con = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        Ok(Self {
            con,
            key: key.to_owned(),
            release: Script::new(COMPARE_AND_DELETE),
        })
    }

    /// `SET key token NX PX ttl`: true when the lock is now ours.
    pub async fn try_acquire(&mut self, token: &str) -> anyhow::Result<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(TTL_MS)
            .query_async(&mut self.con)
            .await
            .with_context(|| format!("Redis SET {} NX PX", self.key))?;
        Ok(r.is_some())
    }

    /// `EXISTS key`: what a waiter that is not next in line checks.
    pub async fn is_held(&mut self) -> anyhow::Result<bool> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&self.key)
            .query_async(&mut self.con)
            .await
            .with_context(|| format!("Redis EXISTS {}", self.key))?;
        Ok(n == 1)
    }

    /// Compare-and-delete: true when our token held the lock.
    pub async fn release(&mut self, token: &str) -> anyhow::Result<bool> {
        let deleted: i64 = self
            .release
            .key(&self.key)
            .arg(token)
            .invoke_async(&mut self.con)
            .await
            .with_context(|| format!("Redis compare-and-delete of {}", self.key))?;
        Ok(deleted == 1)
    }
}

/// Waits until Redis at `url` answers PING.
pub async fn wait_ready(url: &str, limit: Duration) -> anyhow::Result<()> {
    procs::eventually(&format!("Redis at {url} to answer PING"), limit, || async {
        let client = redis::Client::open(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut con).await?;
        Ok((pong == "PONG").then_some(()))
    })
    .await
}

fn unique_key(what: &str) -> String {
    format!("restock-bench:{what}:{:016x}", rand::rng().random::<u64>())
}

struct HandoffState {
    released_at: Mutex<Option<Instant>>,
    samples: Mutex<Latencies>,
    done: AtomicBool,
    /// With [`Order::Priority`]: the client whose turn is next.
    turn: AtomicUsize,
}

/// Who may take the lock when it frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Every waiter tries `SET NX` on each retry; whoever polls first wins
    /// (Redis knows no priority). With many waiters someone polls soon
    /// after every release, at the cost of `waiters / retry` requests per
    /// second.
    AnyWaiter,
    /// The waiters take turns in a fixed order, as products in priority
    /// order would: the others still poll (a `GET`) but step aside, so the
    /// lock goes to the next in line at its next retry.
    Priority,
}

/// `waiters + 1` clients contend for one lock, each retrying every `retry`;
/// the holder keeps it 0–2 ms, releases it, and waits `retry` before trying
/// again. Measures release → the next client's successful `SET`, `count`
/// times.
pub async fn handoff(
    url: &str,
    waiters: usize,
    retry: Duration,
    count: usize,
    order: Order,
) -> anyhow::Result<Latencies> {
    let key = unique_key("handoff");
    let clients = waiters + 1;
    let state = Arc::new(HandoffState {
        released_at: Mutex::new(None),
        samples: Mutex::new(Latencies::with_capacity(count)),
        done: AtomicBool::new(false),
        turn: AtomicUsize::new(0),
    });
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let mut lock = RedisLock::connect(url, &key).await?;
        let state = state.clone();
        tasks.spawn(async move {
            let token = format!("waiter-{i}");
            // Spread the clients' retry phases.
            let phase = rand::rng().random_range(0..retry.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(phase)).await;
            while !state.done.load(Ordering::Relaxed) {
                if order == Order::Priority && state.turn.load(Ordering::Relaxed) != i {
                    // Not our turn: look, and leave it to the one in line.
                    lock.is_held().await?;
                    tokio::time::sleep(retry).await;
                    continue;
                }
                if lock.try_acquire(&token).await? {
                    let at = Instant::now();
                    state.turn.store((i + 1) % clients, Ordering::Relaxed);
                    let released = state.released_at.lock().expect("not poisoned").take();
                    if let Some(t0) = released {
                        let mut s = state.samples.lock().expect("not poisoned");
                        s.record(at - t0);
                        if s.len() >= count {
                            state.done.store(true, Ordering::Relaxed);
                        }
                    }
                    let hold = rand::rng().random_range(0..2_000u64);
                    tokio::time::sleep(Duration::from_micros(hold)).await;
                    *state.released_at.lock().expect("not poisoned") = Some(Instant::now());
                    if !lock.release(&token).await? {
                        return Err(anyhow!(
                            "Redis lock {} was lost by its holder {token} (TTL too short?)",
                            lock.key
                        ));
                    }
                }
                tokio::time::sleep(retry).await;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a Redis waiter task panicked")??;
    }
    let samples = std::mem::take(&mut *state.samples.lock().expect("not poisoned"));
    debug!(
        samples = samples.len(),
        retry_ms = retry.as_millis() as u64,
        ?order,
        "Redis hand-off done"
    );
    Ok(samples)
}

/// The lock is free: how long one `SET NX PX` takes (the release after it
/// is not timed). Returns the acquire latencies.
pub async fn grant(url: &str, count: usize) -> anyhow::Result<Latencies> {
    let mut lock = RedisLock::connect(url, &unique_key("grant")).await?;
    let mut lat = Latencies::with_capacity(count);
    for i in 0..count {
        let token = format!("t{i}");
        let t0 = Instant::now();
        let ok = lock.try_acquire(&token).await?;
        lat.record(t0.elapsed());
        anyhow::ensure!(ok, "the free Redis lock was refused");
        lock.release(&token).await?;
    }
    Ok(lat)
}

/// `SET NX PX` + compare-and-delete, timed together.
pub async fn cycle(url: &str, count: usize) -> anyhow::Result<Latencies> {
    let mut lock = RedisLock::connect(url, &unique_key("cycle")).await?;
    let mut lat = Latencies::with_capacity(count);
    for i in 0..count {
        let token = format!("t{i}");
        let t0 = Instant::now();
        let ok = lock.try_acquire(&token).await?;
        let released = lock.release(&token).await?;
        lat.record(t0.elapsed());
        anyhow::ensure!(
            ok && released,
            "a Redis lock cycle failed (acquired {ok}, released {released})"
        );
    }
    Ok(lat)
}
