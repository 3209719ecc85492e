//! The system under test in HA mode: three etcd members, three arbiter
//! replicas kept in them (`--store etcd`), the store simulator and six
//! watchers on the two hosts of [`crate::cluster`], given every replica.
//!
//! Each replica reaches each etcd member through a [`LinkProxy`] of its
//! own, listening on the replica's own loopback address (127.0.1.1 for
//! replica 0, ...), so the suite can cut one replica from etcd while the
//! watchers still reach it. Each watcher reaches each replica through a
//! proxy too (its "network" to that replica), listing the three in
//! `--arbiter`. A replica listens on a port the suite holds
//! ([`ReservedPort`]), because it advertises its own URL (`--advertise-url`)
//! before it binds, and comes back on it after a restart.
//!
//! Which replica leads is asked of the replicas themselves (`GetStatus`'s
//! `role`): the suite never assumes it.
//!
//! `RESTOCK_HA_WATCHER_LINKS=follow-leader` gives each watcher one link
//! instead, which the suite points at whichever replica leads (closing its
//! connections when the lead moves): for a watcher that takes one
//! `--arbiter` URL only, so that the replicas can be tested without the
//! watchers' own leader-following.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use restock_proto::v1::{GetStatusRequest, GetStatusResponse};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, EtcdCluster, EtcdStore, ReservedPort,
    StoreSimProcess, WatcherOptions, WatcherProcess, products_json,
};
use serde_json::{Value, json};

use crate::{
    cluster::{CHECKOUT_DELAY_MS, FAILURE_COOLDOWN, Host, LEASE_TTL, PRODUCTS, STOCK_TTL},
    proxy::{LinkProxy, LinkState},
};

/// The replicas' `--election-ttl`: short, so that a 60–90 s run sees
/// several failovers (the binary's default is 5 s).
pub const ELECTION_TTL: Duration = Duration::from_secs(2);
/// The replicas' `--election-ttl` in the HA suite's etcd-member-pause
/// phase (the binary's default), above the lease TTL: see `ha`.
pub const PAUSE_PHASE_ELECTION_TTL: Duration = Duration::from_secs(5);
pub const REPLICAS: usize = 3;
pub const ETCD_MEMBERS: usize = 3;
/// How long one replica may take to answer `GetStatus` before it counts
/// as not answering (stopped, down, or busy past use).
const ASK_LIMIT: Duration = Duration::from_millis(700);

/// One arbiter replica and its links to the etcd members.
#[derive(Debug)]
pub struct Replica {
    pub name: String,
    /// Its own loopback address: its etcd links listen and dial there.
    pub ip: IpAddr,
    /// One per etcd member, in member order.
    pub etcd_links: Vec<LinkProxy>,
    pub arbiter: ArbiterProcess,
    /// Held for the run: the replica listens here after every restart.
    pub port: ReservedPort,
}

/// How the watchers reach the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherLinks {
    /// One link per replica, all three in `--arbiter`: the watcher finds
    /// the leader itself.
    EveryReplica,
    /// One link, pointed by the suite at the leader.
    FollowLeader,
}

impl WatcherLinks {
    /// `RESTOCK_HA_WATCHER_LINKS`: `every-replica` (the default) or
    /// `follow-leader`.
    pub fn from_env() -> Self {
        match std::env::var("RESTOCK_HA_WATCHER_LINKS")
            .as_deref()
            .map(str::trim)
        {
            Err(_) | Ok("" | "every-replica") => Self::EveryReplica,
            Ok("follow-leader") => Self::FollowLeader,
            Ok(other) => {
                panic!("RESTOCK_HA_WATCHER_LINKS={other:?}: known: every-replica, follow-leader")
            }
        }
    }
}

/// A stock watcher, its host and its links to the replicas.
#[derive(Debug)]
pub struct ReplicaWatcher {
    pub id: String,
    pub host: usize,
    /// One per replica, in replica order.
    pub links: Vec<LinkProxy>,
    pub watcher: WatcherProcess,
}

/// See the module documentation. Dropped in field order: the watchers,
/// the replicas, the store, then etcd.
#[derive(Debug)]
pub struct ReplicaCluster {
    /// With [`WatcherLinks::FollowLeader`]: the task pointing the links at
    /// the leader (aborted on drop).
    pub link_steering: Option<tokio::task::JoinHandle<()>>,
    pub watchers: Vec<ReplicaWatcher>,
    pub replicas: Vec<Replica>,
    pub store: StoreSimProcess,
    pub hosts: Vec<Host>,
    pub etcd: EtcdCluster,
}

impl ReplicaCluster {
    /// Starts everything, waits for one leader and every watcher connected
    /// to it. `None` when etcd is not installed (and not required): the
    /// caller skips.
    pub async fn start(
        watchers_per_host: usize,
        prefix: &str,
        links: WatcherLinks,
    ) -> Option<Self> {
        let etcd = EtcdCluster::start(ETCD_MEMBERS).await?;
        let mut replicas = Vec::new();
        for r in 0..REPLICAS {
            let ip: IpAddr = format!("127.0.1.{}", r + 1).parse().expect("an address");
            let mut etcd_links = Vec::new();
            for m in 0..etcd.len() {
                etcd_links.push(
                    LinkProxy::start(ip, etcd.client_addr(m))
                        .await
                        .unwrap_or_else(|e| panic!("etcd link proxy on {ip}: {e}")),
                );
            }
            let endpoints = etcd_links
                .iter()
                .map(|l| format!("http://{}", l.addr()))
                .collect::<Vec<_>>()
                .join(",");
            let port = ReservedPort::localhost();
            let name = format!("arbiter-{r}");
            let arbiter = ArbiterProcess::start_replica(
                ArbiterOptions {
                    products_json: Some(products_json(&PRODUCTS)),
                    budget: Some(crate::cluster::budget_json()),
                    lease_ttl: format!("{}ms", LEASE_TTL.as_millis()),
                    stock_ttl: format!("{}ms", STOCK_TTL.as_millis()),
                    failure_cooldown: format!("{}ms", FAILURE_COOLDOWN.as_millis()),
                    test_mode: true,
                    etcd: Some(EtcdStore {
                        endpoints,
                        prefix: prefix.to_owned(),
                        election_ttl: format!("{}ms", ELECTION_TTL.as_millis()),
                    }),
                    ..ArbiterOptions::default()
                },
                &name,
                port.addr(),
            )
            .await;
            replicas.push(Replica {
                name,
                ip,
                etcd_links,
                arbiter,
                port,
            });
        }
        let store = StoreSimProcess::start(
            products_json(&PRODUCTS),
            &["--checkout-delay", &format!("{}ms", CHECKOUT_DELAY_MS.0)],
        )
        .await;
        let hosts = vec![
            Host {
                name: "host-a",
                ip: "127.0.0.2".parse().expect("an address"),
            },
            Host {
                name: "host-b",
                ip: "127.0.0.3".parse().expect("an address"),
            },
        ];
        let mut c = Self {
            link_steering: None,
            watchers: Vec::new(),
            replicas,
            store,
            hosts,
            etcd,
        };
        let first = c
            .wait_leader(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no replica leads 30 s after all three started ({}); their logs follow",
                    c.replica_names().join(", ")
                )
            });
        for h in 0..c.hosts.len() {
            let host = c.hosts[h].clone();
            for i in 1..=watchers_per_host {
                let id = format!("{}-w{i}", host.name);
                let mut proxies = Vec::new();
                let upstreams: Vec<_> = match links {
                    WatcherLinks::EveryReplica => c.replicas.iter().collect(),
                    WatcherLinks::FollowLeader => vec![&c.replicas[first]],
                };
                for r in upstreams {
                    proxies.push(
                        LinkProxy::start(host.ip, r.port.addr())
                            .await
                            .unwrap_or_else(|e| panic!("link proxy on {}: {e}", host.ip)),
                    );
                }
                let links = proxies;
                let arbiters = links
                    .iter()
                    .map(|l| format!("http://{}", l.addr()))
                    .collect::<Vec<_>>()
                    .join(",");
                let watcher = WatcherProcess::start_with(
                    WatcherOptions::new(&id, arbiters)
                        .store(&c.store)
                        .poll_interval("150ms")
                        .listen_on(host.ip),
                )
                .await;
                c.watchers.push(ReplicaWatcher {
                    id,
                    host: h,
                    links,
                    watcher,
                });
            }
        }
        if links == WatcherLinks::FollowLeader {
            c.link_steering = Some(c.steer_links_to_the_leader());
        }
        c.wait_all_connected(Duration::from_secs(30)).await;
        Some(c)
    }

    /// Points every watcher's link at the replica that says it leads,
    /// asked every 100 ms, until aborted.
    fn steer_links_to_the_leader(&self) -> tokio::task::JoinHandle<()> {
        let handles: Vec<_> = self
            .watchers
            .iter()
            .flat_map(|w| &w.links)
            .map(LinkProxy::upstream_handle)
            .collect();
        let replicas: Vec<(String, std::net::SocketAddr)> = self
            .replicas
            .iter()
            .map(|r| (r.port.url(), r.port.addr()))
            .collect();
        tokio::spawn(async move {
            loop {
                let roles = futures::future::join_all(replicas.iter().map(|(url, _)| async move {
                    let url = url.clone();
                    tokio::time::timeout(ASK_LIMIT, async move {
                        let mut c = restock_proto::v1::purchase_arbiter_client::PurchaseArbiterClient::connect(url).await.ok()?;
                        Some(c.get_status(GetStatusRequest {}).await.ok()?.into_inner().role)
                    })
                    .await
                    .ok()
                    .flatten()
                }))
                .await;
                let leaders: Vec<usize> = (0..roles.len())
                    .filter(|&i| roles[i].as_deref() == Some("leader"))
                    .collect();
                if let [l] = leaders[..] {
                    for h in &handles {
                        h.send_if_modified(|u| {
                            let changed = *u != replicas[l].1;
                            *u = replicas[l].1;
                            changed
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// Ends the link steering with the cluster.
impl Drop for ReplicaCluster {
    fn drop(&mut self) {
        if let Some(t) = self.link_steering.take() {
            t.abort();
        }
    }
}

impl ReplicaCluster {
    /// Each replica's name and URL, for a panic message.
    fn replica_names(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("{} at {}", r.name, r.arbiter.url()))
            .collect()
    }

    /// What each replica says it is (`leader`, `follower`), `None` for one
    /// that does not answer within [`ASK_LIMIT`]. Asked all at once.
    pub async fn roles(&self) -> Vec<Option<String>> {
        futures::future::join_all(
            self.replicas
                .iter()
                .map(|r| async move { r.arbiter.role(ASK_LIMIT).await.map(|(role, _)| role) }),
        )
        .await
    }

    /// The one replica that says it leads, if exactly one does.
    pub async fn leader(&self) -> Option<usize> {
        let roles = self.roles().await;
        let leaders: Vec<usize> = roles
            .iter()
            .enumerate()
            .filter(|(_, r)| r.as_deref() == Some("leader"))
            .map(|(i, _)| i)
            .collect();
        match leaders[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Waits (bounded) until exactly one replica says it leads.
    pub async fn wait_leader(&self, limit: Duration) -> Option<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader's full `GetStatus`, if one leads and answers.
    pub async fn leader_status(&self, limit: Duration) -> Option<(usize, GetStatusResponse)> {
        let l = self.wait_leader(limit).await?;
        let url = self.replicas[l].arbiter.url();
        let s = tokio::time::timeout(ASK_LIMIT, async move {
            let mut c =
                restock_proto::v1::purchase_arbiter_client::PurchaseArbiterClient::connect(url)
                    .await
                    .ok()?;
            c.get_status(GetStatusRequest {}).await.ok()
        })
        .await
        .ok()
        .flatten()?
        .into_inner();
        (s.role == "leader").then_some((l, s))
    }

    /// Waits until the leader lists every watcher as connected.
    pub async fn wait_all_connected(&self, limit: Duration) {
        let want = self.watchers.len();
        restock_testkit::eventually("one leader with every watcher connected", limit, || async {
            let (_, s) = self.leader_status(Duration::from_millis(500)).await?;
            (s.watchers.iter().filter(|w| w.connected).count() == want).then_some(())
        })
        .await;
    }

    /// Sets every replica's `--election-ttl` for its next start (replicas
    /// of one prefix share their timings: restart them all after this).
    pub fn set_election_ttl(&mut self, ttl: Duration) {
        for r in &mut self.replicas {
            r.arbiter
                .process
                .set_arg("--election-ttl", &format!("{}ms", ttl.as_millis()));
        }
    }

    /// The etcd member that is raft leader, as the members themselves say
    /// (`/v3/maintenance/status`: the member whose id is the leader it
    /// names); `None` when none answers so within [`ASK_LIMIT`].
    pub async fn etcd_raft_leader(&self) -> Option<usize> {
        let http = reqwest::Client::builder()
            .timeout(ASK_LIMIT)
            .build()
            .expect("an HTTP client");
        let asks = self.etcd.client_urls().into_iter().map(|url| {
            let http = http.clone();
            async move {
                let v: Value = http
                    .post(format!("{url}/v3/maintenance/status"))
                    .json(&json!({}))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let me = v["header"]["member_id"].as_str()?.to_owned();
                Some(v["leader"].as_str() == Some(me.as_str()))
            }
        });
        futures::future::join_all(asks)
            .await
            .iter()
            .position(|is| *is == Some(true))
    }

    /// How many lines of the replicas' logs (all three, every start so far)
    /// contain each of `needles`.
    pub fn log_counts(&self, needles: &[&str]) -> Vec<usize> {
        let logs: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.arbiter.process.log_text())
            .collect();
        needles
            .iter()
            .map(|n| {
                logs.iter()
                    .flat_map(|l| l.lines())
                    .filter(|l| l.contains(n))
                    .count()
            })
            .collect()
    }

    /// Cuts (or heals) replica `r` from every etcd member.
    pub fn set_etcd_links(&self, r: usize, state: LinkState) {
        for l in &self.replicas[r].etcd_links {
            l.set(state);
        }
    }

    /// Heals every link (a fault that panicked midway must not leave one
    /// cut for the final checks).
    pub fn heal_all_links(&self) {
        let replicas = self.replicas.iter().flat_map(|r| &r.etcd_links);
        let watchers = self.watchers.iter().flat_map(|w| &w.links);
        for l in replicas.chain(watchers) {
            if l.state() != LinkState::Open {
                l.set(LinkState::Open);
            }
        }
    }

    /// Changes how long the store's next checkouts take.
    pub async fn set_checkout_delay(&self, ms: u64) {
        self.store
            .put("/admin/checkout", json!({ "delay_ms": ms }))
            .await;
    }

    /// `GET /admin/orders`.
    pub async fn orders(&self) -> Value {
        self.store.orders().await
    }

    /// The replicas' gRPC URLs, in replica order (the event follower reads
    /// them directly, not through a watcher's link).
    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.port.url()).collect()
    }

    /// Who is where, for the run's first lines.
    pub fn describe(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{} {} (to etcd from {})", r.name, r.port.url(), r.ip))
            .collect();
        let watchers: Vec<String> = self
            .watchers
            .iter()
            .map(|w| {
                format!(
                    "{} on {} (pid {})",
                    w.id,
                    self.hosts[w.host].name,
                    w.watcher.process.pid()
                )
            })
            .collect();
        format!(
            "replicas: {}\nwatchers: {}",
            replicas.join(", "),
            watchers.join(", ")
        )
    }
}
