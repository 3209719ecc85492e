//! The system under test: one arbiter, the store simulator as the
//! fencing-aware checkout, and six stock watchers on two "hosts".
//!
//! A host is a loopback address of its own (127.0.0.2 and 127.0.0.3): its
//! watchers serve their status there and reach the arbiter through their
//! own [`LinkProxy`] listening there, which dials the arbiter from that
//! address. Network namespaces would need root and cleanup after a panic;
//! distinct loopback addresses plus a proxy per link give the same
//! partitions deterministically, and nothing outlives the test process.
//!
//! The store's stock is driven by the suite ([`StockDriver`]) through
//! `PUT /admin/stock`, from the seed, so a run's restocks replay with it.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherOptions,
    WatcherProcess, products_json,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::{
    proxy::{LinkProxy, LinkState},
    rng::Rng,
};

/// Short, so that faults land mid-checkout and expiries come quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// The product config's budget: at most this many purchases in any
/// [`BUDGET_WINDOW`]. Purchases in TEST_MODE come 0.3 to 1.4 s apart, so
/// it binds now and then (a product waits OVER_BUDGET for the oldest to
/// roll off, under a second), and the checker holds the store's order book
/// to it.
pub const BUDGET_MAX_PURCHASES: usize = 2;
pub const BUDGET_WINDOW: Duration = Duration::from_secs(1);

/// The `"budget"` object of the product config.
pub fn budget_json() -> serde_json::Value {
    serde_json::json!({
        "max_purchases": BUDGET_MAX_PURCHASES,
        "window": format!("{}ms", BUDGET_WINDOW.as_millis()),
    })
}

/// The budget as the checker reads it.
pub fn budget_setting() -> crate::checker::BudgetSetting {
    crate::checker::BudgetSetting {
        max_purchases: BUDGET_MAX_PURCHASES,
        window_ms: BUDGET_WINDOW.as_millis() as u64,
    }
}
pub const STOCK_TTL: Duration = Duration::from_secs(3);
pub const FAILURE_COOLDOWN: Duration = Duration::from_secs(1);
/// Store checkout times are drawn from this range (ms): below the TTL, and
/// sometimes above the watcher's unrenewed trust (TTL - 500 ms), so that
/// renewals matter.
pub const CHECKOUT_DELAY_MS: (u64, u64) = (300, 1_400);
/// Products, top priority first.
pub const PRODUCTS: [&str; 8] = [
    "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008",
];
/// The stock driver keeps this many products in stock at least, so that a
/// grant is always due once a fault heals, and at most this many.
pub const MIN_IN_STOCK: usize = 2;
pub const MAX_IN_STOCK: usize = 5;

/// Wall-clock unix ms, the unit of every time in the history.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One machine of the setup.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: &'static str,
    pub ip: IpAddr,
}

/// A stock watcher, its host and its link to the arbiter.
#[derive(Debug)]
pub struct Watcher {
    pub id: String,
    pub host: usize,
    pub link: LinkProxy,
    pub watcher: WatcherProcess,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    pub arbiter: ArbiterProcess,
    pub store: StoreSimProcess,
    pub hosts: Vec<Host>,
    pub watchers: Vec<Watcher>,
}

impl Cluster {
    /// Starts everything and waits until every watcher is connected.
    pub async fn start(watchers_per_host: usize) -> Self {
        let arbiter = ArbiterProcess::start(ArbiterOptions {
            products_json: Some(products_json(&PRODUCTS)),
            budget: Some(budget_json()),
            lease_ttl: format!("{}ms", LEASE_TTL.as_millis()),
            stock_ttl: format!("{}ms", STOCK_TTL.as_millis()),
            failure_cooldown: format!("{}ms", FAILURE_COOLDOWN.as_millis()),
            test_mode: true,
            ..ArbiterOptions::default()
        })
        .await;
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
        // A restarted arbiter comes back on this address (the testkit
        // restarts a server where it first bound), so the links stay valid.
        let upstream = arbiter.addr();
        let mut watchers = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for i in 1..=watchers_per_host {
                let id = format!("{}-w{i}", host.name);
                let link = LinkProxy::start(host.ip, upstream)
                    .await
                    .unwrap_or_else(|e| panic!("link proxy on {}: {e}", host.ip));
                let watcher = WatcherProcess::start_with(
                    WatcherOptions::new(&id, format!("http://{}", link.addr()))
                        .store(&store)
                        .poll_interval("150ms")
                        .listen_on(host.ip),
                )
                .await;
                watchers.push(Watcher {
                    id,
                    host: h,
                    link,
                    watcher,
                });
            }
        }
        let c = Self {
            arbiter,
            store,
            hosts,
            watchers,
        };
        c.wait_all_connected(Duration::from_secs(20)).await;
        c
    }

    /// Waits until the arbiter lists every watcher as connected.
    pub async fn wait_all_connected(&self, limit: Duration) {
        let want = self.watchers.len();
        restock_testkit::eventually("every watcher connected", limit, || async {
            let mut c = self.arbiter.client().await;
            let s = c
                .get_status(restock_proto::v1::GetStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (s.watchers.iter().filter(|w| w.connected).count() == want).then_some(())
        })
        .await;
    }

    pub fn watcher(&self, id: &str) -> Option<usize> {
        self.watchers.iter().position(|w| w.id == id)
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

    /// Heals every link (a fault that panicked midway must not leave one
    /// cut for the final checks).
    pub fn heal_all_links(&self) {
        for w in &self.watchers {
            if w.link.state() != LinkState::Open {
                w.link.set(LinkState::Open);
            }
        }
    }
}

/// Restocks and sell-outs, at random from its own generator: a product
/// flips every 0.3–1.2 s, or every 20–60 ms during a storm, keeping
/// between [`MIN_IN_STOCK`] and [`MAX_IN_STOCK`] products in stock.
#[derive(Debug)]
pub struct StockDriver {
    store_url: String,
    http: reqwest::Client,
    in_stock: Mutex<BTreeSet<&'static str>>,
    storm_until: Mutex<Option<Instant>>,
    stopped: AtomicBool,
    flips: Mutex<u64>,
}

impl StockDriver {
    /// Puts the first [`MIN_IN_STOCK`] + 1 products in stock, then flips at
    /// random until [`StockDriver::stop`].
    pub async fn start(store_url: String, mut rng: Rng) -> (Arc<Self>, JoinHandle<()>) {
        let d = Arc::new(Self {
            store_url,
            http: reqwest::Client::new(),
            in_stock: Mutex::new(BTreeSet::new()),
            storm_until: Mutex::new(None),
            stopped: AtomicBool::new(false),
            flips: Mutex::new(0),
        });
        for t in PRODUCTS.iter().take(MIN_IN_STOCK + 1) {
            d.put(t, true).await;
        }
        let me = d.clone();
        let task = tokio::spawn(async move {
            while !me.stopped.load(Ordering::SeqCst) {
                let pause = if me.storming() {
                    rng.range(20, 60)
                } else {
                    rng.range(300, 1_200)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                if me.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let t = *rng.pick(&PRODUCTS);
                let (is_in, n) = {
                    let s = me.lock_stock();
                    (s.contains(t), s.len())
                };
                let to = if is_in {
                    if n <= MIN_IN_STOCK {
                        continue;
                    }
                    false
                } else {
                    if n >= MAX_IN_STOCK {
                        continue;
                    }
                    true
                };
                me.put(t, to).await;
            }
        });
        (d, task)
    }

    fn lock_stock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.in_stock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn storming(&self) -> bool {
        self.storm_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Flips products quickly until `until`.
    pub fn storm(&self, until: Instant) {
        *self.storm_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    pub fn flips(&self) -> u64 {
        *self.flips.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn put(&self, tcin: &'static str, in_stock: bool) {
        let r = self
            .http
            .put(format!("{}/admin/stock/{tcin}", self.store_url))
            .json(&json!({ "in_stock": in_stock }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT /admin/stock/{tcin}: {e}"));
        assert!(
            r.status().is_success(),
            "PUT /admin/stock/{tcin}: {}",
            r.status()
        );
        let mut s = self.lock_stock();
        if in_stock {
            s.insert(tcin);
        } else {
            s.remove(tcin);
        }
        *self.flips.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// Stops flipping (waiting for `task`, so no late restock lands after
    /// this) and takes everything out of stock, so the run can wind down to
    /// a quiet slot.
    pub async fn stop(&self, task: JoinHandle<()>) {
        self.stopped.store(true, Ordering::SeqCst);
        task.await.expect("the stock driver ended cleanly");
        for t in PRODUCTS {
            self.put(t, false).await;
        }
    }
}
