//! The real `stock-watcher` binary in a test, set up by [`WatcherOptions`]:
//! which arbiter, which stock source and checkout, how fast it polls, and
//! on which local address it serves its own status.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use restock_proto::v1::{
    self as pb, GetWatcherStatusRequest, stock_watcher_client::StockWatcherClient,
};
use tonic::transport::Channel;

use crate::{Announce, ArbiterEndpoint, Process, StoreSimProcess, bin, eventually, wait_healthy};

/// How long a watcher may take to report SERVING, and to connect.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// How to start a watcher. Quick by default (polls every 100 ms, reconnects
/// within 500 ms) so tests do not wait on it.
#[derive(Debug, Clone)]
pub struct WatcherOptions {
    pub id: String,
    /// `--arbiter`: the arbiter's URL (or a proxy in front of it).
    pub arbiter_url: String,
    /// `--source-url`; required, so no test polls the real retailer.
    pub source_url: Option<String>,
    /// `--checkout http --checkout-url`; the binary's default otherwise.
    pub checkout_url: Option<String>,
    pub poll_interval: String,
    pub reconnect_max: String,
    /// `--target-endpoint`: the watcher's default (`hierarchy`) unless set.
    pub target_endpoint: String,
    /// The local address its own gRPC listens on (port 0).
    pub ip: IpAddr,
    /// Flags after the ones above.
    pub extra_args: Vec<String>,
}

impl WatcherOptions {
    /// A watcher named `id` reporting to the arbiter at `arbiter_url`.
    pub fn new(id: &str, arbiter_url: impl Into<String>) -> Self {
        Self {
            id: id.to_owned(),
            arbiter_url: arbiter_url.into(),
            source_url: None,
            checkout_url: None,
            poll_interval: "100ms".into(),
            reconnect_max: "500ms".into(),
            target_endpoint: "hierarchy".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            extra_args: Vec::new(),
        }
    }

    /// Polls the store simulator and checks out against it.
    pub fn store(self, store: &StoreSimProcess) -> Self {
        self.source(store.url())
            .checkout_http(format!("{}/checkout", store.url()))
    }

    /// Polls the Target-format source at `url`.
    pub fn source(mut self, url: impl Into<String>) -> Self {
        self.source_url = Some(url.into());
        self
    }

    /// Checks out with an HTTP POST to `url`.
    pub fn checkout_http(mut self, url: impl Into<String>) -> Self {
        self.checkout_url = Some(url.into());
        self
    }

    /// Polls this Target endpoint (`fulfillment`, `hierarchy`, `summary`).
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.target_endpoint = endpoint.to_owned();
        self
    }

    pub fn poll_interval(mut self, every: &str) -> Self {
        self.poll_interval = every.to_owned();
        self
    }

    /// Serves its status on `ip` instead of 127.0.0.1.
    pub fn listen_on(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// More flags (appended: a later flag does not override an earlier one,
    /// so do not repeat one set above).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    fn flags(&self) -> Vec<String> {
        let source = self.source_url.clone().unwrap_or_else(|| {
            panic!(
                "watcher {}: no source URL; a test watcher polls a local source",
                self.id
            )
        });
        let mut args: Vec<String> = vec![
            "--arbiter".into(),
            self.arbiter_url.clone(),
            "--watcher-id".into(),
            self.id.clone(),
            "--source".into(),
            "target".into(),
            "--source-url".into(),
            source.clone(),
            // Every test source is the simulator (or a stub standing in for
            // it): its poll log tells the watchers apart by the header this
            // flag turns on.
            "--source-is-simulator".into(),
            "--target-endpoint".into(),
            self.target_endpoint.clone(),
        ];
        // Every Shopify shop of a test is played by the same simulator.
        args.extend(["--shopify-url".into(), format!("*={source}/shops/{{shop}}")]);
        if let Some(url) = &self.checkout_url {
            args.extend(["--checkout".into(), "http".into(), "--checkout-url".into()]);
            args.push(url.clone());
        }
        args.extend([
            "--poll-interval".into(),
            self.poll_interval.clone(),
            "--reconnect-max".into(),
            self.reconnect_max.clone(),
        ]);
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running `stock-watcher` binary, killed when dropped.
#[derive(Debug)]
pub struct WatcherProcess {
    pub id: String,
    // Dropped before `dir`, so its log can still be printed.
    pub process: Process,
    pub dir: tempfile::TempDir,
}

impl WatcherProcess {
    /// Starts a watcher named `id` reporting to `arbiter`, polling `store`
    /// and checking out against it, with `extra_args`; see
    /// [`WatcherProcess::start_with`].
    pub async fn start(
        arbiter: &impl ArbiterEndpoint,
        store: &StoreSimProcess,
        id: &str,
        extra_args: &[&str],
    ) -> Self {
        Self::start_with(
            WatcherOptions::new(id, arbiter.url())
                .store(store)
                .args(extra_args),
        )
        .await
    }

    /// Starts the watcher, learns the address its own gRPC bound, and waits
    /// until that answers SERVING (not until it has reached the arbiter:
    /// see [`WatcherProcess::wait_connected`]).
    pub async fn start_with(opts: WatcherOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let process = Process::start_server(
            &format!("stock-watcher {}", opts.id),
            bin("stock-watcher"),
            opts.flags(),
            dir.path().join("watcher.log"),
            Announce::grpc().on(opts.ip),
        )
        .await;
        let w = Self {
            id: opts.id,
            process,
            dir,
        };
        wait_healthy(w.addr(), HEALTHY_LIMIT).await;
        w
    }

    /// Where its own gRPC (status, health) listens.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://ADDR/metrics` of a watcher started with
    /// `--http-listen 127.0.0.1:0` (panics if it serves no HTTP).
    pub fn metrics_url(&self) -> String {
        let addr = self.process.announced("http").unwrap_or_else(|| {
            panic!(
                "watcher {} announced no HTTP listener; start it with --http-listen 127.0.0.1:0",
                self.id
            )
        });
        format!("http://{addr}/metrics")
    }

    pub async fn client(&self) -> StockWatcherClient<Channel> {
        StockWatcherClient::connect(self.url())
            .await
            .expect("connect to the watcher")
    }

    /// `GetWatcherStatus` (without a token).
    pub async fn status(&self) -> pb::GetWatcherStatusResponse {
        self.client()
            .await
            .get_watcher_status(GetWatcherStatusRequest {})
            .await
            .expect("GetWatcherStatus")
            .into_inner()
    }

    /// Waits until the watcher holds a stream to the arbiter and has polled.
    pub async fn wait_connected(&self) {
        eventually("the watcher to connect and poll", HEALTHY_LIMIT, || async {
            let s = self.status().await;
            (s.arbiter_connected && s.products.iter().any(|p| p.polls > 0)).then_some(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn_arbiter;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_connects_and_a_restart_keeps_its_address() {
        let arbiter = spawn_arbiter().await;
        let store = StoreSimProcess::start(crate::products_json(&["100"]), &[]).await;
        let mut w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
        w.wait_connected().await;
        let first = w.addr();
        w.process.restart();
        assert_eq!(w.process.wait_ready().await, first);
        w.wait_connected().await;
        assert_eq!(w.status().await.watcher_id, "w1");
    }
}
