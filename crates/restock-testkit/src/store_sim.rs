//! The real `store-sim` binary in a test: the retailer's stock API and a
//! fenced checkout whose order book is the ground truth of what was bought.

use std::{net::SocketAddr, time::Duration};

use crate::{Announce, Process, bin, eventually, write_products};

/// The orders of an order book (`GET /admin/orders`) that bought
/// something, in the order they started.
pub fn purchased(orders: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut v: Vec<&serde_json::Value> = orders["orders"]
        .as_array()
        .expect("an order book")
        .iter()
        .filter(|o| o["result"] == "purchased")
        .collect();
    v.sort_by_key(|o| o["started_at_ms"].as_u64());
    v
}

/// One stock request the simulator saw (`GET /admin/polls`).
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    pub tcin: String,
    /// The watcher that sent it (its `X-Restock-Watcher` header), `""` if
    /// none said.
    pub watcher: String,
    /// Milliseconds since the simulator started (monotonic, sub-ms).
    pub at_ms: f64,
    pub unix_ms: u64,
}

impl Poll {
    fn from_json(v: &serde_json::Value) -> Self {
        let text = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("poll without {k}: {v}"))
                .to_owned()
        };
        Self {
            tcin: text("tcin"),
            watcher: text("watcher"),
            at_ms: v["at_ms"]
                .as_f64()
                .unwrap_or_else(|| panic!("poll without at_ms: {v}")),
            unix_ms: v["unix_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("poll without unix_ms: {v}")),
        }
    }
}

/// The gaps (ms) between consecutive polls, in order.
pub fn poll_gaps(polls: &[Poll]) -> Vec<f64> {
    polls.windows(2).map(|w| w[1].at_ms - w[0].at_ms).collect()
}

/// A running `store-sim` with its own product config, killed when dropped.
#[derive(Debug)]
pub struct StoreSimProcess {
    // Dropped before `dir`, so its log can still be printed.
    pub process: Process,
    pub dir: tempfile::TempDir,
}

impl StoreSimProcess {
    /// Starts the simulator for a config written with `products` (JSON
    /// objects in the arbiter's format), learns its port, and waits for
    /// `/healthz`.
    pub async fn start(products: serde_json::Value, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_products(dir.path(), &products);
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let process = Process::start_server(
            "store-sim",
            bin("store-sim"),
            args,
            dir.path().join("store-sim.log"),
            Announce::http(),
        )
        .await;
        let sim = Self { process, dir };
        let url = format!("{}/healthz", sim.url());
        eventually("store-sim /healthz", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        sim
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Puts a product in or out of stock by hand.
    pub async fn set_stock(&self, tcin: &str, in_stock: bool) {
        self.put(
            &format!("/admin/stock/{tcin}"),
            serde_json::json!({ "in_stock": in_stock }),
        )
        .await;
    }

    /// `PUT` a JSON body to an admin path; panics unless it succeeds.
    pub async fn put(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = reqwest::Client::new()
            .put(format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert!(r.status().is_success(), "PUT {path}: {}", r.status());
        r.json().await.expect("JSON answer")
    }

    /// `GET /admin/orders`: every checkout attempt and the violation count.
    pub async fn orders(&self) -> serde_json::Value {
        reqwest::get(format!("{}/admin/orders", self.url()))
            .await
            .expect("GET /admin/orders")
            .json()
            .await
            .expect("orders JSON")
    }

    /// `GET /admin/polls?tcin=`: every recorded poll of the product, oldest
    /// first.
    pub async fn polls(&self, tcin: &str) -> Vec<Poll> {
        let v: serde_json::Value = reqwest::get(format!("{}/admin/polls?tcin={tcin}", self.url()))
            .await
            .expect("GET /admin/polls")
            .json()
            .await
            .expect("polls JSON");
        v["polls"]
            .as_array()
            .unwrap_or_else(|| panic!("no polls list in {v}"))
            .iter()
            .map(Poll::from_json)
            .collect()
    }

    /// `DELETE /admin/polls`.
    pub async fn clear_polls(&self) {
        let r = reqwest::Client::new()
            .delete(format!("{}/admin/polls", self.url()))
            .send()
            .await
            .expect("DELETE /admin/polls");
        assert!(
            r.status().is_success(),
            "DELETE /admin/polls: {}",
            r.status()
        );
    }
}
