//! Starting a simulator for one test, and small request helpers.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Once, time::Duration};

use reqwest::{Response, StatusCode};
use restock_domain::Price;
use serde_json::{Value, json};
use store_sim::{Simulator, catalog::Catalog, sim::CheckoutSettings, stock::Driver};
use tokio::{sync::oneshot, task::JoinHandle};

/// The products every test store sells, top first.
pub const PRODUCTS: &str = r#"{"products":[
    {"tcin":"111","name":"Elite Trainer Box","max_price":59.99,"quantity":2},
    {"tcin":"222","name":"Booster Bundle"}
]}"#;

/// Target and Shopify products side by side: two shops, one of them with
/// two variant entries and a handle entry.
pub const SHOPIFY_PRODUCTS: &str = r#"{"products":[
    {"tcin":"111","name":"Elite Trainer Box","max_price":59.99,"quantity":2},
    {"retailer":"shopify","shop":"cards.example","variant":40000000001,"name":"Prismatic Evolutions Elite Trainer Box","max_price":59.99},
    {"retailer":"shopify","shop":"cards.example","variant":40000000002,"name":"Surging Sparks Booster Bundle","max_price":32.99},
    {"retailer":"shopify","shop":"cards.example","handle":"journey-together-bundle","name":"Journey Together Booster Bundle","max_price":29.99},
    {"retailer":"shopify","shop":"other.example","variant":50000000001,"name":"Switch 2"}
]}"#;

/// A running simulator; stops when dropped.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// Starts a store with [`PRODUCTS`], no stock driver, and this checkout
/// delay.
pub async fn spawn_app(checkout_delay: Duration) -> TestApp {
    spawn_app_with(Driver::Manual, checkout_delay).await
}

/// Starts a store with [`PRODUCTS`] moved by `driver`.
pub async fn spawn_app_with(driver: Driver, checkout_delay: Duration) -> TestApp {
    spawn_store(PRODUCTS, driver, checkout_delay).await
}

/// Starts a store with [`SHOPIFY_PRODUCTS`], no stock driver.
pub async fn spawn_shopify_app(checkout_delay: Duration) -> TestApp {
    spawn_store(SHOPIFY_PRODUCTS, Driver::Manual, checkout_delay).await
}

/// Starts a store selling `products` (a product config's JSON).
pub async fn spawn_store(products: &str, driver: Driver, checkout_delay: Duration) -> TestApp {
    init_logs();
    let catalog = Catalog::parse(products, "test products", Price::from_cents(999)).unwrap();
    let sim = Simulator::new(
        catalog,
        driver,
        CheckoutSettings {
            delay: checkout_delay,
            fail: false,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(store_sim::run(
        listener,
        sim,
        Duration::from_secs(2),
        async move {
            let _ = stopped.await;
        },
    ));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The fulfillment endpoint for `tcin`, as a restock tool calls it.
    pub async fn fulfillment(&self, tcin: &str) -> Response {
        self.client
            .get(self.url(store_sim::http::FULFILLMENT_PATH))
            .query(&[
                ("key", "testkey"),
                ("tcin", tcin),
                ("store_id", "1234"),
                ("zip", "55401"),
            ])
            .send()
            .await
            .unwrap()
    }

    /// A RedSky endpoint (`store_sim::http::*_PATH`) with these query
    /// parameters, plus `key`, as a restock tool calls it.
    pub async fn redsky(&self, path: &str, query: &[(&str, &str)]) -> Response {
        self.client
            .get(self.url(path))
            .query(&[("key", "testkey")])
            .query(query)
            .send()
            .await
            .unwrap()
    }

    /// A RedSky endpoint's 200 JSON answer.
    pub async fn redsky_json(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = self.redsky(path, query).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path} {query:?}");
        resp.json().await.unwrap()
    }

    /// `data.product.fulfillment.shipping_options.availability_status`.
    pub async fn shipping_status(&self, tcin: &str) -> String {
        let resp = self.fulfillment(tcin).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v: Value = resp.json().await.unwrap();
        v["data"]["product"]["fulfillment"]["shipping_options"]["availability_status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn put_json(&self, path: &str, body: Value) -> Response {
        self.client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    pub async fn set_stock(&self, tcin: &str, in_stock: bool) {
        let resp = self
            .put_json(
                &format!("/admin/stock/{tcin}"),
                json!({ "in_stock": in_stock }),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().await.unwrap()
        );
    }

    /// `POST /checkout`; returns the status and the JSON answer.
    pub async fn checkout(&self, tcin: &str, token: u64, watcher: &str) -> (StatusCode, Value) {
        checkout_with(&self.client, self.addr, tcin, token, watcher, false).await
    }

    pub async fn orders(&self) -> Value {
        let (status, v) = self.get_json("/admin/orders").await;
        assert_eq!(status, StatusCode::OK);
        v
    }

    /// Stops the server and waits until `run` returns.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("run returns after shutdown")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn checkout_with(
    client: &reqwest::Client,
    addr: SocketAddr,
    tcin: &str,
    token: u64,
    watcher: &str,
    test_mode: bool,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!("http://{addr}/checkout"))
        .json(&json!({
            "tcin": tcin,
            "fencing_token": token,
            "lease_id": format!("lease-{token}"),
            "watcher_id": watcher,
            "test_mode": test_mode,
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Two checkouts of `tcin` that overlap: `watchers[0]` with `token`, and,
/// once that one is in flight, `watchers[1]` with `token + 1` (each token
/// is accepted once, so a pair must rise). Returns both answers.
pub async fn overlapping_pair(
    client: &reqwest::Client,
    addr: SocketAddr,
    tcin: &str,
    token: u64,
    watchers: [&str; 2],
) -> [(StatusCode, Value); 2] {
    let (c, t, w) = (client.clone(), tcin.to_owned(), watchers[0].to_owned());
    let first = tokio::spawn(async move { checkout_with(&c, addr, &t, token, &w, false).await });
    let in_flight = eventually(Duration::from_secs(5), || async {
        let v: Value = client
            .get(format!("http://{addr}/admin/orders"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["in_flight"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(in_flight, "the first checkout never got in flight");
    let second = checkout_with(client, addr, tcin, token + 1, watchers[1], false).await;
    [first.await.unwrap(), second]
}

/// A recorded answer of Target's API from `tests/data/target/` (see
/// `SOURCES.md` there).
pub fn fixture(name: &str) -> Value {
    recording("target", name)
}

/// A recorded answer of a Shopify storefront from `tests/data/shopify/`.
pub fn shopify_fixture(name: &str) -> Value {
    recording("shopify", name)
}

fn recording(retailer: &str, name: &str) -> Value {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "..",
        "tests",
        "data",
        retailer,
        name,
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The structure of `v`: every key path with its JSON type, like
/// `data.product.tcin: string`; array elements are `[]`, and the paths of
/// all elements are merged. Values do not matter, only keys and types.
pub fn shape(v: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, path: &str, out: &mut BTreeSet<String>) {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(items) => {
                for item in items {
                    walk(item, &format!("{path}[]"), out);
                }
                "array"
            }
            Value::Object(map) => {
                for (k, child) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, &p, out);
                }
                "object"
            }
        };
        out.insert(format!("{path}: {kind}"));
    }
    let mut out = BTreeSet::new();
    walk(v, "", &mut out);
    out
}

/// Asserts that two answers have the same structure, showing the paths
/// only one of them has.
pub fn assert_same_shape(ours: &Value, recorded: &Value, what: &str) {
    let (a, b) = (shape(ours), shape(recorded));
    let only_ours: Vec<_> = a.difference(&b).collect();
    let only_recorded: Vec<_> = b.difference(&a).collect();
    assert!(
        only_ours.is_empty() && only_recorded.is_empty(),
        "{what}: the structure differs from the recording\n only ours: {only_ours:#?}\n only recorded: {only_recorded:#?}"
    );
}

/// Asserts that every path of `ours` is in `recorded` (ours is a part of
/// the recorded structure, with the same types).
pub fn assert_shape_within(ours: &Value, recorded: &Value, what: &str) {
    let (a, b) = (shape(ours), shape(recorded));
    let extra: Vec<_> = a.difference(&b).collect();
    assert!(
        extra.is_empty(),
        "{what}: paths the recording does not have: {extra:#?}"
    );
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
