//! Failover (issue 13): three arbiter replicas on etcd (`--store etcd`,
//! each on its own port, `--election-ttl` from `--failover-election-ttl`,
//! 2 s by default); a client that knows all three URLs acquires and
//! releases the slot in a loop; the benchmark stops the leader, times from
//! the signal to the next grant by another replica, and restarts the
//! stopped one (it comes back as a follower).
//!
//! - **kill -9**: the dead leader's etcd lease has to expire (up to the
//!   election TTL after its last keep-alive) before another replica is
//!   elected; that one then reads the state and makes its first guarded
//!   write before it answers.
//! - **SIGTERM**: the leader makes its last write and resigns; the next
//!   replica is elected at once.
//!
//! The client follows the `restock-leader` trailer of a follower's
//! `UNAVAILABLE`, and tries the next URL when a replica does not answer (or
//! names a leader that just did not answer). A grant counts for a stop only
//! if the arbiter made it after the signal (its `granted_at_unix_ms`: a
//! retried acquire may replay a grant the old leader made before) and at
//! another replica. Fencing tokens must rise across every grant the client
//! sees; one that does not (what a grant by a deposed leader would look
//! like) is logged as an error and named in the row.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use restock_proto::v1::{
    self as pb, AcquirePurchaseRequest, GetStatusRequest, ReleasePurchaseRequest,
};
use restock_runtime::leader::{is_not_leader, leader_hint};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::{Code, Status, transport::Endpoint};
use tracing::{debug, error, info, warn};

use super::{Ctx, progress};
use crate::{
    etcd_txn, procs,
    restock::{
        self, ArbiterProcess, ArbiterSpec, Client, EtcdReplica, fresh_etcd_prefix, product_ids,
    },
    stats::{Latencies, Row, Store, System},
};

const SCENARIO: &str = "failover";
const REPLICAS: usize = 3;
const WATCHER: &str = "bench-failover";
/// Between the loop's acquire + release cycles: keeps the etcd writes (two
/// per cycle) from taking the machine's two cores, at a resolution far
/// below the gaps measured.
const PAUSE: Duration = Duration::from_millis(2);
/// Between tries when no replica granted.
const RETRY: Duration = Duration::from_millis(5);
/// A replica that did not answer within this is tried no more for now.
const CALL_LIMIT: Duration = Duration::from_secs(2);
/// How long a replica that did not answer is not taken for the leader on
/// another's word (a follower names a dead leader until etcd elects anew).
const UNREACHABLE_FOR: Duration = Duration::from_millis(200);

/// How the leader is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

/// A grant the client got.
#[derive(Debug, Clone)]
struct Grant {
    at: Instant,
    replica: usize,
    token: u64,
    granted_at_unix_ms: u64,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let Some(url) = &ctx.etcd_url else {
        warn!(
            scenario = SCENARIO,
            "no --etcd-url: no replicas to fail over; skipped"
        );
        return Ok(Vec::new());
    };
    let ttl = ctx.failover_election_ttl;
    let prefix = fresh_etcd_prefix(SCENARIO);
    let result = measure(ctx, url, &prefix, ttl).await;
    if let Err(e) = etcd_txn::delete_prefix(url, &prefix).await {
        warn!(error = format!("{e:#}"), etcd_prefix = %prefix, "could not remove the replicas' keys");
    }
    let (kills, terms, regressions) = result?;
    let mut rows = Vec::new();
    for (lat, how) in [
        (kills, "kill -9 of the leader"),
        (terms, "SIGTERM of the leader (it resigns)"),
    ] {
        let mut variant = format!(
            "{how} → next grant, {REPLICAS} replicas, election TTL {} s",
            ttl.as_secs()
        );
        if regressions > 0 {
            variant.push_str(&format!(
                "; {regressions} grant(s) with a fencing token not above the last one's"
            ));
        }
        let row = Row::new(SCENARIO, System::Restock)
            .variant(variant)
            .fsync(ctx.etcd_fsync)
            .store(Store::Etcd)
            .election_ttl(ttl)
            .latencies(&lat);
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Kill and SIGTERM gaps, and how many grants broke the token order.
async fn measure(
    ctx: &Ctx,
    url: &str,
    prefix: &str,
    ttl: Duration,
) -> anyhow::Result<(Latencies, Latencies, u64)> {
    let products = product_ids(1);
    let mut specs = Vec::with_capacity(REPLICAS);
    let mut urls = Vec::with_capacity(REPLICAS);
    for _ in 0..REPLICAS {
        let replica = EtcdReplica {
            endpoint: url.to_owned(),
            prefix: prefix.to_owned(),
            election_ttl: ttl,
            port: procs::reserve_port()?,
        };
        urls.push(replica.url());
        specs.push(ArbiterSpec::cycling(products.clone(), true).on_etcd(replica));
    }
    info!(
        scenario = SCENARIO,
        replicas = %urls.join(","),
        election_ttl_s = ttl.as_secs(),
        etcd_prefix = %prefix,
        kills = ctx.plan.failover_kills,
        sigterms = ctx.plan.failover_terms,
        "starting arbiter replicas on etcd"
    );
    let mut replicas = Vec::with_capacity(REPLICAS);
    for spec in &specs {
        replicas.push(ArbiterProcess::start(&ctx.env, spec).await?);
    }
    let statuses = Statuses::new(&urls)?;
    let first = procs::eventually("a replica to lead", ttl * 3, || {
        let statuses = statuses.clone();
        async move { statuses.leader().await }
    })
    .await?;
    info!(scenario = SCENARIO, leader = %urls[first], "a replica leads");

    let (tx, mut grants) = mpsc::unbounded_channel();
    let regressions = Arc::new(AtomicU64::new(0));
    // Dropping the set (at the end, or when the scenario fails or times
    // out) aborts the client loop.
    let mut client_loop = JoinSet::new();
    client_loop.spawn(holder_loop(
        LeaderClient::new(&urls)?,
        products[0].clone(),
        tx,
        regressions.clone(),
    ));

    let stops: Vec<Stop> = std::iter::repeat_n(Stop::Kill, ctx.plan.failover_kills)
        .chain(std::iter::repeat_n(Stop::Term, ctx.plan.failover_terms))
        .collect();
    let mut kills = Latencies::with_capacity(ctx.plan.failover_kills);
    let mut terms = Latencies::with_capacity(ctx.plan.failover_terms);
    let wait_limit = ttl * 3 + Duration::from_secs(5);
    for (i, stop) in stops.iter().enumerate() {
        // The loop grants (again, after the last restart) before each stop.
        let settle = Instant::now();
        next_grant(&mut grants, wait_limit, |g| g.at > settle)
            .await
            .context("the client got no grant before stopping the leader")?;
        let leader = statuses
            .leader()
            .await?
            .context("no replica says it leads although the client was just granted")?;
        let signalled_unix_ms = unix_ms();
        let t0 = Instant::now();
        match stop {
            Stop::Kill => replicas[leader].kill9(),
            Stop::Term => replicas[leader].terminate()?,
        }
        let g = next_grant(&mut grants, wait_limit, |g| {
            g.replica != leader && g.granted_at_unix_ms > signalled_unix_ms
        })
        .await
        .with_context(|| {
            format!(
                "stop {} ({stop:?} of {}): no grant by another replica",
                i + 1,
                urls[leader]
            )
        })?;
        let gap = g.at.saturating_duration_since(t0);
        match stop {
            Stop::Kill => kills.record(gap),
            Stop::Term => terms.record(gap),
        }
        info!(
            scenario = SCENARIO,
            stop = ?stop,
            done = i + 1,
            of = stops.len(),
            gap_ms = gap.as_millis() as u64,
            stopped = %urls[leader],
            new_leader = %urls[g.replica],
            fencing_token = g.token,
            "leader stopped; granted again"
        );
        if *stop == Stop::Term && !replicas[leader].wait_exit(Duration::from_secs(10)).await {
            warn!(replica = %urls[leader], "did not exit within 10 s of SIGTERM; killed");
        }
        // Back as a follower, on the same port, where the client knows it.
        replicas[leader] = ArbiterProcess::start(&ctx.env, &specs[leader]).await?;
        let c = replicas[leader].client().await?;
        restock::wait_role(&c, "follower", wait_limit)
            .await
            .with_context(|| format!("the restarted replica {}", urls[leader]))?;
    }
    for r in &mut replicas {
        r.check_running()?;
    }
    let regressions = regressions.load(Ordering::Relaxed);
    Ok((kills, terms, regressions))
}

/// The next grant the client got that `accept`s, within `limit`.
async fn next_grant(
    grants: &mut mpsc::UnboundedReceiver<Grant>,
    limit: Duration,
    accept: impl Fn(&Grant) -> bool,
) -> anyhow::Result<Grant> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, grants.recv()).await {
            Err(_) => bail!("none within {limit:?}"),
            Ok(None) => bail!("the client loop stopped (its error is logged)"),
            Ok(Some(g)) if accept(&g) => return Ok(g),
            Ok(Some(_)) => {}
        }
    }
}

/// GetStatus of every replica, to find the leader.
#[derive(Debug, Clone)]
struct Statuses {
    clients: Vec<Client>,
}

impl Statuses {
    fn new(urls: &[String]) -> anyhow::Result<Self> {
        Ok(Self {
            clients: lazy_clients(urls)?,
        })
    }

    /// The replica that says it leads. Two saying so at once is logged as
    /// an error (the first is taken).
    async fn leader(&self) -> anyhow::Result<Option<usize>> {
        let mut leaders = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let mut c = c.clone();
            if let Ok(Ok(s)) =
                tokio::time::timeout(CALL_LIMIT, c.get_status(GetStatusRequest {})).await
                && s.get_ref().role == "leader"
            {
                leaders.push(i);
            }
        }
        if leaders.len() > 1 {
            error!(
                scenario = SCENARIO,
                replicas = ?leaders,
                "more than one replica says it leads"
            );
        }
        Ok(leaders.first().copied())
    }
}

/// One client per URL, each connecting when first used and again after
/// its replica restarts.
fn lazy_clients(urls: &[String]) -> anyhow::Result<Vec<Client>> {
    urls.iter()
        .map(|u| {
            let channel = Endpoint::from_shared(u.clone())
                .with_context(|| format!("bad URL {u}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            Ok(Client::new(channel))
        })
        .collect()
}

/// A client given every replica's URL: it calls the one it believes leads,
/// follows a follower's hint, and moves on from one that does not answer.
#[derive(Debug)]
struct LeaderClient {
    urls: Vec<String>,
    clients: Vec<Client>,
    current: usize,
    unreachable_since: Vec<Option<Instant>>,
}

/// Answers that mean "try another replica": a follower's `UNAVAILABLE`, a
/// refused or reset connection (tonic reports those as `UNAVAILABLE`,
/// `UNKNOWN`, `CANCELLED` or `INTERNAL`).
fn try_elsewhere(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
            | Code::DeadlineExceeded
    )
}

impl LeaderClient {
    fn new(urls: &[String]) -> anyhow::Result<Self> {
        Ok(Self {
            urls: urls.to_vec(),
            clients: lazy_clients(urls)?,
            current: 0,
            unreachable_since: vec![None; urls.len()],
        })
    }

    fn reachable(&self, i: usize) -> bool {
        self.unreachable_since[i].is_none_or(|t| t.elapsed() > UNREACHABLE_FOR)
    }

    /// Calls `f` at the leader until a replica answers it; returns the
    /// answer (or the error that is not about who leads) and who answered.
    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<(T, usize), Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.urls.len();
        loop {
            let i = self.current;
            let next = (i + 1) % n;
            match tokio::time::timeout(CALL_LIMIT, f(self.clients[i].clone())).await {
                Ok(Ok(r)) => {
                    self.unreachable_since[i] = None;
                    return Ok((r.into_inner(), i));
                }
                Ok(Err(s)) if try_elsewhere(&s) => {
                    let hint = leader_hint(&s);
                    let follower = is_not_leader(&s);
                    if !follower {
                        self.unreachable_since[i] = Some(Instant::now());
                    }
                    self.current = hint
                        .and_then(|u| self.urls.iter().position(|x| *x == u))
                        .filter(|&j| j != i && self.reachable(j))
                        .unwrap_or(next);
                    debug!(replica = %self.urls[i], code = ?s.code(), message = %s.message(), "not granted here; next try");
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    self.unreachable_since[i] = Some(Instant::now());
                    self.current = next;
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Releases `lease` (retried at whichever replica leads); a stale lease
    /// (already released or replaced) is not an error here.
    async fn release(&mut self, lease: &pb::Lease) {
        let req = ReleasePurchaseRequest {
            lease_id: lease.lease_id.clone(),
            fencing_token: lease.fencing_token,
            outcome: pb::Outcome::Purchased as i32,
            detail: "restock-bench failover".into(),
            paid_price_cents: None,
        };
        if let Err(s) = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_purchase(req).await }
            })
            .await
        {
            debug!(code = ?s.code(), message = %s.message(), lease_id = %lease.lease_id, "release refused");
        }
    }
}

/// Acquires and releases the slot for one product, for ever; sends every
/// grant to `grants` (ends when nobody listens).
async fn holder_loop(
    mut leader: LeaderClient,
    tcin: String,
    grants: mpsc::UnboundedSender<Grant>,
    regressions: Arc<AtomicU64>,
) {
    let mut last_token = 0;
    for k in 0u64.. {
        // A retry (at another replica) keeps the request id, so a grant
        // whose answer was lost with its leader is replayed, not doubled.
        let req = AcquirePurchaseRequest {
            tcin: tcin.clone(),
            watcher_id: WATCHER.into(),
            request_id: format!("failover-{k}"),
        };
        let answer = leader
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_purchase(req).await }
            })
            .await;
        let at = Instant::now();
        match answer {
            Ok((a, replica)) if a.granted => {
                let Some(lease) = a.lease else {
                    warn!("AcquirePurchase granted without a lease");
                    continue;
                };
                if lease.fencing_token <= last_token {
                    regressions.fetch_add(1, Ordering::Relaxed);
                    error!(
                        scenario = SCENARIO,
                        fencing_token = lease.fencing_token,
                        last_token,
                        replica = %leader.urls[replica],
                        lease_id = %lease.lease_id,
                        "a grant whose fencing token is not above the last one the client saw"
                    );
                }
                last_token = last_token.max(lease.fencing_token);
                let seen = Grant {
                    at,
                    replica,
                    token: lease.fencing_token,
                    granted_at_unix_ms: lease.granted_at_unix_ms,
                };
                if grants.send(seen).is_err() {
                    return;
                }
                leader.release(&lease).await;
            }
            Ok((a, _))
                if a.reason == "another_purchase_active" && a.holder_watcher_id == WATCHER =>
            {
                // A lease of this client whose grant it never heard of (its
                // answer lost with a leader): find it and give it back.
                if let Ok((s, _)) = leader
                    .call(|mut c| async move { c.get_status(GetStatusRequest {}).await })
                    .await
                    && let Some(lease) = s.active_lease.filter(|l| l.watcher_id == WATCHER)
                {
                    debug!(lease_id = %lease.lease_id, "releasing a lease whose grant was not heard");
                    leader.release(&lease).await;
                }
            }
            Ok((a, _)) => debug!(reason = %a.reason, detail = %a.detail, "not granted"),
            Err(s) => {
                warn!(code = ?s.code(), message = %s.message(), "AcquirePurchase failed");
                tokio::time::sleep(RETRY).await;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}
