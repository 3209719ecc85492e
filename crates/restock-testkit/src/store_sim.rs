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
}
