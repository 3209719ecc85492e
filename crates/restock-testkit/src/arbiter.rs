//! The real purchase arbiter in a test: as a process ([`ArbiterProcess`],
//! for tests that kill, freeze, signal or restart it, or read its log), or
//! in this process ([`spawn_arbiter`], for tests that only talk to it).
//! Both are set up from one [`ArbiterOptions`], so a test can move from one
//! to the other without its flags changing.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use purchase_arbiter::config::ArbiterConfig;
use restock_proto::v1::{
    self as pb, GetStatusRequest, SetPausedRequest, WatchEventsRequest,
    purchase_arbiter_client::PurchaseArbiterClient,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::{
    Announce, Process, bin, init_test_logs, wait::wait_serving, write_product_config,
    write_products,
};

/// How long a fresh or restarted arbiter may take to report SERVING.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// What a test needs of any arbiter (the binary, the in-process one, the
/// scripted one): where it is, a client, and what it says.
pub trait ArbiterEndpoint {
    /// The address it serves gRPC on.
    fn addr(&self) -> SocketAddr;

    /// `http://` and the address.
    fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A fresh client (plaintext, no token).
    fn client(&self) -> impl Future<Output = PurchaseArbiterClient<Channel>> + Send {
        let url = self.url();
        async move {
            PurchaseArbiterClient::connect(url)
                .await
                .expect("connect to the arbiter")
        }
    }

    /// `GetStatus`; panics on an error.
    fn status(&self) -> impl Future<Output = pb::GetStatusResponse> + Send {
        let client = self.client();
        async move {
            client
                .await
                .get_status(GetStatusRequest {})
                .await
                .expect("GetStatus")
                .into_inner()
        }
    }

    /// `SetPaused`; panics on an error.
    fn set_paused(&self, paused: bool) -> impl Future<Output = ()> + Send {
        let client = self.client();
        async move {
            client
                .await
                .set_paused(SetPausedRequest { paused })
                .await
                .expect("SetPaused");
        }
    }

    /// Every event the arbiter still has in its history, up to the newest
    /// one `GetStatus` names.
    fn events(&self) -> impl Future<Output = Vec<pb::Event>> + Send {
        let status = self.status();
        let client = self.client();
        async move {
            let last = status.await.last_event_sequence;
            let mut stream = client
                .await
                .watch_events(WatchEventsRequest { from_sequence: 1 })
                .await
                .expect("WatchEvents")
                .into_inner();
            let mut out = Vec::new();
            while let Ok(Ok(Some(e))) =
                tokio::time::timeout(Duration::from_secs(2), stream.message()).await
            {
                let seq = e.sequence;
                out.push(e);
                if seq >= last {
                    break;
                }
            }
            out
        }
    }
}

/// A product's line in a status answer; panics if it is not there.
pub fn product<'a>(s: &'a pb::GetStatusResponse, tcin: &str) -> &'a pb::ProductStatus {
    s.products
        .iter()
        .find(|p| p.tcin == tcin)
        .unwrap_or_else(|| panic!("product {tcin} not in the arbiter's status"))
}

/// An event's kind (`Unspecified` for a number this build does not know).
pub fn event_kind(e: &pb::Event) -> pb::event::Kind {
    pb::event::Kind::try_from(e.kind).unwrap_or(pb::event::Kind::Unspecified)
}

/// How to set up an arbiter. The defaults are the binary's, except a state
/// file in the arbiter's own temporary folder and products 100, 200, 300.
#[derive(Debug, Clone)]
pub struct ArbiterOptions {
    pub products: Vec<String>,
    /// Full product entries (arbiter config format); overrides `products`.
    pub products_json: Option<serde_json::Value>,
    pub lease_ttl: String,
    pub stock_ttl: String,
    pub failure_cooldown: String,
    pub test_mode: bool,
    /// `--http-listen`: `127.0.0.1:0` by default, so tests running in
    /// parallel never meet on the binary's default port 8081; `off` for a
    /// test that needs no `/metrics`.
    pub http_listen: String,
    pub extra_args: Vec<String>,
    /// With `--tls-cert`: how the health check reaches the server (the
    /// test's CA); plaintext otherwise.
    pub health_tls: Option<ClientTlsConfig>,
    /// `--store etcd` (a replica): where etcd is and how the replicas
    /// elect their leader. `None`: the state file in the arbiter's folder.
    pub etcd: Option<EtcdStore>,
    /// The product config's `"budget"` object (with `products_json`).
    pub budget: Option<serde_json::Value>,
}

/// A replica's `--store etcd` flags (see [`ArbiterProcess::start_replica`]).
#[derive(Debug, Clone)]
pub struct EtcdStore {
    /// `--etcd-endpoints`: comma-separated client URLs.
    pub endpoints: String,
    /// `--etcd-prefix`: shared by the replicas of one arbiter.
    pub prefix: String,
    /// `--election-ttl`, e.g. `2s`.
    pub election_ttl: String,
}

impl Default for ArbiterOptions {
    fn default() -> Self {
        Self {
            products: ["100", "200", "300"].map(String::from).to_vec(),
            products_json: None,
            lease_ttl: "30s".into(),
            stock_ttl: "10s".into(),
            failure_cooldown: "15s".into(),
            test_mode: false,
            http_listen: "127.0.0.1:0".into(),
            extra_args: Vec::new(),
            health_tls: None,
            etcd: None,
            budget: None,
        }
    }
}

impl ArbiterOptions {
    /// The defaults with these products, in this priority order.
    pub fn products(tcins: &[&str]) -> Self {
        Self {
            products: tcins.iter().map(|s| s.to_string()).collect(),
            ..Self::default()
        }
    }

    /// The defaults with these product entries (the config's format, as
    /// [`crate::products_json`] makes them), in this priority order.
    pub fn listing(products: &serde_json::Value) -> Self {
        Self {
            products_json: Some(products.clone()),
            ..Self::default()
        }
    }

    /// Writes the product config into `dir` and returns every flag but
    /// `--listen` (the caller says where).
    fn flags(&self, dir: &std::path::Path) -> Vec<String> {
        let config = match (&self.products_json, &self.budget) {
            (Some(json), Some(budget)) => {
                let path = write_products(dir, json);
                let text = serde_json::json!({ "products": json, "budget": budget });
                std::fs::write(&path, serde_json::to_vec_pretty(&text).expect("JSON"))
                    .expect("write config");
                path
            }
            (Some(json), None) => write_products(dir, json),
            (None, _) => {
                let products: Vec<&str> = self.products.iter().map(String::as_str).collect();
                write_product_config(dir, &products)
            }
        };
        let mut args = vec!["--config".into(), config.display().to_string()];
        match &self.etcd {
            // The state is etcd's: no state file.
            Some(etcd) => args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoints.clone(),
                "--etcd-prefix".into(),
                etcd.prefix.clone(),
                "--election-ttl".into(),
                etcd.election_ttl.clone(),
                // Each test's prefix is its own and new.
                "--fresh-state".into(),
            ]),
            None => args.extend([
                "--state-file".into(),
                dir.join("state.json").display().to_string(),
            ]),
        }
        args.extend([
            "--lease-ttl".into(),
            self.lease_ttl.clone(),
            "--stock-ttl".into(),
            self.stock_ttl.clone(),
            "--failure-cooldown".into(),
            self.failure_cooldown.clone(),
            format!("--test-mode={}", self.test_mode),
            "--http-listen".into(),
            self.http_listen.clone(),
        ]);
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running `purchase-arbiter` binary with its own folder for config,
/// state and log.
#[derive(Debug)]
pub struct ArbiterProcess {
    // Dropped before `dir`, so its log can still be printed.
    pub process: Process,
    pub dir: tempfile::TempDir,
    health_tls: Option<ClientTlsConfig>,
    /// A replica (`--store etcd`): up means answering `GetStatus`, as a
    /// leader or a follower, rather than the health service's SERVING.
    replica: bool,
}

impl ArbiterProcess {
    /// Starts the arbiter on `127.0.0.1:0`, learns the port it bound, and
    /// waits for it to be healthy.
    pub async fn start(opts: ArbiterOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut process = Process::start_server(
            "purchase-arbiter",
            bin("purchase-arbiter"),
            opts.flags(dir.path()),
            dir.path().join("arbiter.log"),
            Announce::grpc(),
        )
        .await;
        // A restart brings the HTTP listener back on its address too, as
        // the gRPC one: a browser showing the page, or a scraper, points at
        // it.
        if let Some(http) = process.announced("http") {
            process.set_arg("--http-listen", &http.to_string());
        }
        let a = Self {
            process,
            dir,
            health_tls: opts.health_tls,
            replica: false,
        };
        a.wait_healthy().await;
        a
    }

    /// Starts one replica of an arbiter kept in etcd (`opts.etcd` must be
    /// set) on `listen`, a port the test holds ([`crate::ReservedPort`])
    /// because the replica advertises its own URL (`--advertise-url`)
    /// before it binds; `name` tells its log from the others'. Waits until
    /// it answers `GetStatus`, as leader or follower.
    pub async fn start_replica(opts: ArbiterOptions, name: &str, listen: SocketAddr) -> Self {
        assert!(opts.etcd.is_some(), "a replica needs ArbiterOptions::etcd");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = opts.flags(dir.path());
        args.extend(["--advertise-url".into(), format!("http://{listen}")]);
        let mut process = Process::start_server(
            name,
            bin("purchase-arbiter"),
            args,
            dir.path().join(format!("{name}.log")),
            Announce::grpc().at(listen),
        )
        .await;
        if let Some(http) = process.announced("http") {
            process.set_arg("--http-listen", &http.to_string());
        }
        let a = Self {
            process,
            dir,
            health_tls: None,
            replica: true,
        };
        a.wait_healthy().await;
        a
    }

    async fn wait_healthy(&self) {
        if !self.replica {
            wait_serving(self.addr(), self.health_tls.as_ref(), HEALTHY_LIMIT).await;
            return;
        }
        let url = self.url();
        crate::eventually(
            &format!("{} to answer GetStatus", self.process.name()),
            HEALTHY_LIMIT,
            || {
                let url = url.clone();
                async move {
                    let mut c = PurchaseArbiterClient::connect(url).await.ok()?;
                    c.get_status(GetStatusRequest {}).await.ok().map(|_| ())
                }
            },
        )
        .await;
    }

    /// Waits, after `process.restart()`, until it is up, starting it again
    /// (as a supervisor such as Compose's `restart: unless-stopped` would)
    /// whenever it exits before announcing its address, at most `tries`
    /// times in all. Returns what each start that exited said last (empty
    /// when the first start came up); panics when none did.
    pub async fn wait_restarted_supervised(&mut self, tries: usize) -> Vec<String> {
        let mut exits = Vec::new();
        for _ in 0..tries {
            match self.process.wait_ready_or_exit().await {
                Ok(_) => {
                    self.wait_healthy().await;
                    return exits;
                }
                Err(status) => {
                    exits.push(format!("{status}: {}", self.process.last_log_line()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.process.restart();
                }
            }
        }
        panic!(
            "{} exited at every one of {tries} starts: {exits:#?}",
            self.process.name()
        );
    }

    /// Waits, after `process.restart()`, until it has announced its
    /// address and is up (healthy, or for a replica answering
    /// `GetStatus`): for restarting several at once, then waiting.
    pub async fn wait_restarted(&mut self) {
        self.process.wait_ready().await;
        self.wait_healthy().await;
    }

    /// What a replica says it is (`leader`, `follower`, `standalone`) and
    /// the leader's URL it knows, or `None` when it does not answer within
    /// `limit` (down, or stopped).
    pub async fn role(&self, limit: Duration) -> Option<(String, String)> {
        let url = self.url();
        tokio::time::timeout(limit, async move {
            let mut c = PurchaseArbiterClient::connect(url).await.ok()?;
            let s = c.get_status(GetStatusRequest {}).await.ok()?.into_inner();
            Some((s.role, s.leader_url))
        })
        .await
        .ok()
        .flatten()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("product_config.json")
    }

    /// `http://ADDR` of the HTTP listener it announced (the status page,
    /// `/api/status`, `/events`, `/metrics`); panics if it serves no HTTP
    /// (`http_listen: "off"`).
    pub fn http_url(&self) -> String {
        let addr = self.process.announced("http").unwrap_or_else(|| {
            panic!("the arbiter announced no HTTP listener; start it with http_listen 127.0.0.1:0")
        });
        format!("http://{addr}")
    }

    /// `http://ADDR/metrics` of the HTTP listener it announced.
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.http_url())
    }

    /// `kill -9` (if it still runs), start again with the same flags, state
    /// and addresses (gRPC and HTTP), and wait for health.
    pub async fn kill9_and_restart(&mut self) {
        self.process.restart();
        self.process.wait_ready().await;
        self.wait_healthy().await;
    }
}

impl ArbiterEndpoint for ArbiterProcess {
    fn addr(&self) -> SocketAddr {
        self.process.addr()
    }
}

/// The real arbiter (`purchase_arbiter::run`) served from this test
/// process on a `127.0.0.1:0` listener; shut down when dropped. Its log
/// shows with `TEST_LOG`.
#[derive(Debug)]
pub struct InProcessArbiter {
    addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), purchase_arbiter::StartError>>>,
}

/// [`spawn_arbiter_with`] the default options.
pub async fn spawn_arbiter() -> InProcessArbiter {
    spawn_arbiter_with(ArbiterOptions::default()).await
}

/// Runs the arbiter in this process, as the binary would with these
/// options, and waits until it is healthy.
pub async fn spawn_arbiter_with(opts: ArbiterOptions) -> InProcessArbiter {
    init_test_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let args = std::iter::once("purchase-arbiter".to_owned()).chain(opts.flags(dir.path()));
    let config = ArbiterConfig::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    let mut task = tokio::spawn(purchase_arbiter::run(listener, config, async move {
        let _ = stopped.await;
    }));
    // Health, unless `run` gives up first: then its error is the message.
    tokio::select! {
        () = wait_serving(addr, opts.health_tls.as_ref(), HEALTHY_LIMIT) => {}
        ended = &mut task => match ended {
            Ok(Ok(())) => panic!("the in-process arbiter stopped at start-up"),
            Ok(Err(e)) => panic!("the in-process arbiter did not start: {e}"),
            Err(e) => panic!("the in-process arbiter panicked: {e}"),
        }
    }
    InProcessArbiter {
        addr,
        dir,
        stop: Some(stop),
        task: Some(task),
    }
}

impl InProcessArbiter {
    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("product_config.json")
    }

    /// Shuts the arbiter down and waits until `run` has returned cleanly
    /// (streams ended, state written).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the arbiter stops within 10 s")
                .expect("the arbiter task did not panic")
                .unwrap_or_else(|e| panic!("the arbiter stopped with an error: {e}"));
        }
    }
}

impl Drop for InProcessArbiter {
    fn drop(&mut self) {
        // The server winds down on the test's runtime; nothing waits here,
        // as a drop cannot await.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl ArbiterEndpoint for InProcessArbiter {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_arbiter_comes_back_on_the_address_it_announced() {
        let mut a = ArbiterProcess::start(ArbiterOptions::default()).await;
        let first = a.addr();
        let http = a.http_url();
        assert_ne!(first.port(), 0);
        a.kill9_and_restart().await;
        assert_eq!(a.addr(), first);
        assert_eq!(a.http_url(), http, "the HTTP listener moved");
        assert_eq!(a.status().await.products.len(), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "exited")]
    async fn a_binary_that_fails_at_start_up_is_reported_at_once() {
        ArbiterProcess::start(ArbiterOptions {
            lease_ttl: "30 parsecs".into(),
            ..ArbiterOptions::default()
        })
        .await;
    }

    #[tokio::test]
    async fn the_in_process_arbiter_serves_until_stopped() {
        let a = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
        assert_eq!(a.status().await.products.len(), 1);
        let addr = a.addr();
        a.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
