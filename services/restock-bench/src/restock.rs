//! The system under test: a real `purchase-arbiter` process on a free
//! loopback port with its own product list and state file, and in-process
//! stand-ins for watchers (one `StreamStock` stream each, on its own
//! connection, as watchers on different machines would have).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use restock_proto::v1::{
    self as pb, AcquirePurchaseRequest, GetStatusRequest, ReleasePurchaseRequest, SetPausedRequest,
    StockObservation, StockReport, arbiter_message::Kind,
    purchase_arbiter_client::PurchaseArbiterClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::procs::{self, ChildProcess};

pub type Client = PurchaseArbiterClient<Channel>;

/// Where the service binaries are and where temporary folders go.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin_dir: PathBuf,
    pub work_dir: PathBuf,
    pub arbiter_log: String,
}

impl Env {
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.bin_dir.join(name);
        if !p.is_file() {
            bail!(
                "{} does not exist: build it first (cargo build --release -p purchase-arbiter -p store-sim -p stock-watcher), or pass --bin-dir",
                p.display()
            );
        }
        Ok(p)
    }

    pub fn temp_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        std::fs::create_dir_all(&self.work_dir)
            .with_context(|| format!("creating work folder {}", self.work_dir.display()))?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.work_dir)
            .with_context(|| format!("creating a temporary folder in {}", self.work_dir.display()))
    }
}

/// Product ids `9000000..`, one per index, in priority order.
pub fn product_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{}", 9_000_000 + i)).collect()
}

/// Writes a product config listing `tcins` top priority first.
pub fn write_product_config(path: &Path, tcins: &[String]) -> anyhow::Result<()> {
    let products: Vec<serde_json::Value> = tcins
        .iter()
        .map(|t| {
            // A Shopify variant is named by its id; a Target product by TCIN.
            let key = if t.contains(':') { "id" } else { "tcin" };
            serde_json::json!({key: t, "name": format!("Bench product {t}")})
        })
        .collect();
    let text = serde_json::to_vec(&serde_json::json!({ "products": products }))?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// How to start the arbiter.
#[derive(Debug, Clone)]
pub struct ArbiterSpec {
    pub products: Vec<String>,
    pub fsync: bool,
    pub test_mode: bool,
    /// More flags for the arbiter.
    pub extra_args: Vec<String>,
    /// Serve the HTTP listener (`/metrics`) on a free port instead of none.
    pub http: bool,
    /// Where the arbiter keeps its state.
    pub store: StoreSpec,
}

/// Where an arbiter keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The state file and its journal, in the arbiter's temporary folder.
    File,
    /// `--store etcd`: one replica of a deployment under `prefix`.
    Etcd(EtcdReplica),
}

/// The flags of one `--store etcd` replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdReplica {
    /// etcd's client URL.
    pub endpoint: String,
    /// The deployment's keys (fresh per measurement: [`fresh_etcd_prefix`]).
    pub prefix: String,
    pub election_ttl: Duration,
    /// The port it listens on. A replica names itself to the others by
    /// `--advertise-url`, which must hold the real port, so it cannot pick
    /// its own (port 0) as a lone arbiter does; a restarted replica comes
    /// back on the same port, where the benchmark's client knows it.
    pub port: u16,
}

impl EtcdReplica {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A new `--etcd-prefix` of its own, so no measurement reads another's
/// state or election.
pub fn fresh_etcd_prefix(what: &str) -> String {
    use rand::Rng;
    format!("/restock-bench/{what}-{:08x}/", rand::rng().random::<u32>())
}

impl ArbiterSpec {
    /// TEST_MODE on, so purchases cycle for as long as the scenario runs.
    pub fn cycling(products: Vec<String>, fsync: bool) -> Self {
        Self {
            products,
            fsync,
            test_mode: true,
            extra_args: Vec::new(),
            http: false,
            store: StoreSpec::File,
        }
    }

    /// The same arbiter as a `--store etcd` replica.
    pub fn on_etcd(mut self, replica: EtcdReplica) -> Self {
        self.store = StoreSpec::Etcd(replica);
        self
    }

    /// Lifts the per-stream report limit (a guard against one flooding
    /// watcher), which would cut streams reporting as fast as they can.
    pub fn without_report_limit(mut self) -> Self {
        self.extra_args
            .extend(["--max-reports-per-second".to_owned(), "0".to_owned()]);
        self
    }
}

/// A running `purchase-arbiter`.
#[derive(Debug)]
pub struct ArbiterProcess {
    pub url: String,
    /// The HTTP listener (`/metrics`), when the spec asked for one.
    pub http_url: Option<String>,
    // Dropped (killed) before the folder it writes to.
    process: ChildProcess,
    pub dir: tempfile::TempDir,
}

impl ArbiterProcess {
    /// Starts the arbiter on a free port with a fresh state file in a
    /// temporary folder, and waits until it is healthy. Leases last 10
    /// minutes and stock reports an hour, so nothing expires mid-scenario.
    ///
    /// A `--store etcd` replica is healthy (overall) as soon as it serves,
    /// leader or not: [`wait_role`] waits for it to lead.
    pub async fn start(env: &Env, spec: &ArbiterSpec) -> anyhow::Result<Self> {
        let dir = env.temp_dir("restock-bench-arbiter-")?;
        let config = dir.path().join("product_config.json");
        write_product_config(&config, &spec.products)?;
        let ready = dir.path().join("arbiter.ready.json");
        let mut args = match &spec.store {
            StoreSpec::File => {
                let mut a = procs::listen_anywhere(&ready);
                a.extend([
                    "--state-file".into(),
                    dir.path().join("state.json").display().to_string(),
                ]);
                a
            }
            StoreSpec::Etcd(r) => vec![
                "--listen".into(),
                format!("127.0.0.1:{}", r.port),
                "--ready-file".into(),
                ready.display().to_string(),
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                r.endpoint.clone(),
                "--etcd-prefix".into(),
                r.prefix.clone(),
                "--election-ttl".into(),
                format!("{}s", r.election_ttl.as_secs()),
                "--advertise-url".into(),
                r.url(),
                // Every measurement's prefix is new.
                "--fresh-state".into(),
            ],
        };
        args.extend([
            "--config".into(),
            config.display().to_string(),
            "--lease-ttl".into(),
            "10m".into(),
            "--stock-ttl".into(),
            "1h".into(),
            "--failure-cooldown".into(),
            "1s".into(),
            format!("--test-mode={}", spec.test_mode),
            // Off unless asked for: the default port (8081) would clash
            // with an arbiter already running on this machine.
            "--http-listen".into(),
            if spec.http { "127.0.0.1:0" } else { "off" }.into(),
        ]);
        if !spec.fsync {
            args.push("--no-fsync".into());
        }
        args.extend(spec.extra_args.iter().cloned());
        let env_vars = HashMap::from([("RUST_LOG".to_owned(), env.arbiter_log.clone())]);
        let mut process = ChildProcess::start(
            "purchase-arbiter",
            &env.bin("purchase-arbiter")?,
            &args,
            &env_vars,
            dir.path().join("arbiter.log"),
        )?;
        let addr = procs::announced(&mut process, &ready, "grpc", Duration::from_secs(20)).await?;
        let url = format!("http://{addr}");
        let http_url = if spec.http {
            let a = procs::announced(&mut process, &ready, "http", Duration::from_secs(20)).await?;
            Some(format!("http://{a}"))
        } else {
            None
        };
        procs::wait_grpc_healthy(&url, Duration::from_secs(20), &mut process).await?;
        debug!(url = %url, pid = process.pid(), fsync = spec.fsync, "arbiter started");
        Ok(Self {
            url,
            http_url,
            process,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `kill -9` (and reaped).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM: a clean shutdown (a leader resigns).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.process.terminate()
    }

    /// Waits up to `limit` for the process to exit; kills it after that.
    /// True when it exited by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        self.process.wait_exit(limit).await
    }

    /// Starts a lone arbiter and, for a `--store etcd` one, waits until it
    /// leads (it answers nothing that changes state before).
    pub async fn start_leading(env: &Env, spec: &ArbiterSpec) -> anyhow::Result<Self> {
        let mut arbiter = Self::start(env, spec).await?;
        if let StoreSpec::Etcd(r) = &spec.store {
            let c = arbiter.client().await?;
            if let Err(e) = wait_role(&c, "leader", r.election_ttl * 3).await {
                arbiter.check_running()?;
                return Err(e.context(format!(
                    "the arbiter on etcd did not lead; last log lines:\n{}",
                    arbiter.process.log_tail(20)
                )));
            }
        }
        Ok(arbiter)
    }

    /// A client on a connection of its own.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(PurchaseArbiterClient::new(connect(&self.url).await?))
    }

    /// Fails if the arbiter died, with its last log lines.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    pub fn rss_mb(&self) -> anyhow::Result<f64> {
        procs::rss_mb(self.pid())
    }

    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        procs::cpu_ticks(self.pid())
    }

    /// The arbiter's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("arbiter.log")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }
}

/// A new HTTP/2 connection to `url` (no pooling between callers).
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad URL {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// A grant that reached one of the stand-in watchers.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The index of the watcher it reached.
    pub watcher: usize,
    pub lease: pb::Lease,
    /// When the stream delivered it to the benchmark.
    pub at: Instant,
}

/// One stand-in watcher: its stream's sending side. Grants arrive on the
/// channel passed to [`WatcherStream::open`]; a task reads the stream and
/// stamps each grant the moment it arrives.
#[derive(Debug)]
pub struct WatcherStream {
    pub index: usize,
    pub id: String,
    tx: mpsc::Sender<StockReport>,
}

/// An observation of `tcin`.
pub fn observation(tcin: &str, in_stock: bool) -> StockObservation {
    StockObservation {
        tcin: tcin.to_owned(),
        in_stock,
        price_cents: None,
        observed_at_unix_ms: 0,
    }
}

impl WatcherStream {
    /// Opens a stream on `channel` as watcher `id`, sends `first` (its
    /// observations) as the naming report, and waits for the catalog, which
    /// says the arbiter registered the stream.
    pub async fn open(
        channel: Channel,
        index: usize,
        id: String,
        first: Vec<StockObservation>,
        grants: mpsc::UnboundedSender<Granted>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(StockReport {
            watcher_id: id.clone(),
            observations: first,
            polling: Vec::new(),
            poll_interval_ms: 0,
            source_block: None,
        })
        .await
        .map_err(|_| anyhow!("stream of {id} closed before its first report"))?;
        let mut client = PurchaseArbiterClient::new(channel);
        let mut inbound = client
            .stream_stock(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening StreamStock for {id}"))?
            .into_inner();
        let catalog = tokio::time::timeout(Duration::from_secs(20), inbound.message())
            .await
            .with_context(|| format!("no catalog on the stream of {id} within 20 s"))?
            .with_context(|| format!("stream of {id} failed before its catalog"))?;
        match catalog.and_then(|m| m.kind) {
            Some(Kind::Catalog(_)) => {}
            other => bail!("expected a catalog first on the stream of {id}, got {other:?}"),
        }
        let reader_id = id.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::ArbiterMessage {
                        kind: Some(Kind::Grant(lease)),
                    })) => {
                        let at = Instant::now();
                        if grants
                            .send(Granted {
                                watcher: index,
                                lease,
                                at,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Some(pb::ArbiterMessage {
                        kind: Some(Kind::Revoked(r)),
                    })) => {
                        warn!(watcher_id = %reader_id, lease_id = %r.lease_id, reason = %r.reason, "lease revoked");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(status) => {
                        debug!(watcher_id = %reader_id, error = %status, "stream ended");
                        return;
                    }
                }
            }
        });
        Ok(Self { index, id, tx })
    }

    /// Sends one report on the stream; waits while the stream is full.
    pub async fn report(&self, observations: Vec<StockObservation>) -> anyhow::Result<()> {
        self.tx
            .send(StockReport {
                watcher_id: String::new(),
                observations,
                polling: Vec::new(),
                poll_interval_ms: 0,
                source_block: None,
            })
            .await
            .map_err(|_| anyhow!("the stream of watcher {} is closed", self.id))
    }
}

/// `AcquirePurchase`; transport errors are errors, refusals are answers.
pub async fn acquire(
    c: &mut Client,
    tcin: &str,
    watcher: &str,
    request_id: &str,
) -> anyhow::Result<pb::AcquirePurchaseResponse> {
    Ok(c.acquire_purchase(AcquirePurchaseRequest {
        tcin: tcin.to_owned(),
        watcher_id: watcher.to_owned(),
        request_id: request_id.to_owned(),
    })
    .await
    .with_context(|| format!("AcquirePurchase({tcin}) for {watcher}"))?
    .into_inner())
}

/// `ReleasePurchase` of `lease` with `outcome`.
pub async fn release(
    c: &mut Client,
    lease: &pb::Lease,
    outcome: pb::Outcome,
) -> anyhow::Result<()> {
    c.release_purchase(ReleasePurchaseRequest {
        lease_id: lease.lease_id.clone(),
        fencing_token: lease.fencing_token,
        outcome: outcome as i32,
        detail: "restock-bench".into(),
        paid_price_cents: None,
    })
    .await
    .with_context(|| {
        format!(
            "ReleasePurchase of lease {} (product {}, token {})",
            lease.lease_id, lease.tcin, lease.fencing_token
        )
    })?;
    Ok(())
}

pub async fn status(c: &mut Client) -> anyhow::Result<pb::GetStatusResponse> {
    Ok(c.get_status(GetStatusRequest {})
        .await
        .context("GetStatus")?
        .into_inner())
}

pub async fn set_paused(c: &mut Client, paused: bool) -> anyhow::Result<()> {
    c.set_paused(SetPausedRequest { paused })
        .await
        .with_context(|| format!("SetPaused({paused})"))?;
    Ok(())
}

/// Waits until the arbiter at `c` says it plays `role` (`"leader"`,
/// `"follower"`; GetStatus answers on every replica).
pub async fn wait_role(c: &Client, role: &str, limit: Duration) -> anyhow::Result<()> {
    procs::eventually(&format!("the arbiter to be {role}"), limit, || {
        let mut c = c.clone();
        async move { Ok((status(&mut c).await?.role == role).then_some(())) }
    })
    .await
}

/// Waits until every product in `tcins` is QUEUED.
pub async fn wait_queued(c: &Client, tcins: &[String], limit: Duration) -> anyhow::Result<()> {
    procs::eventually(
        &format!("{} products to be queued", tcins.len()),
        limit,
        || {
            let mut c = c.clone();
            async move {
                let s = status(&mut c).await?;
                let queued: std::collections::HashSet<&str> = s
                    .products
                    .iter()
                    .filter(|p| p.state == pb::ProductState::Queued as i32)
                    .map(|p| p.tcin.as_str())
                    .collect();
                Ok(tcins
                    .iter()
                    .all(|t| queued.contains(t.as_str()))
                    .then_some(()))
            }
        },
    )
    .await
}

/// Waits until `n` watchers are connected.
pub async fn wait_connected(c: &Client, n: usize, limit: Duration) -> anyhow::Result<()> {
    procs::eventually(&format!("{n} watchers to be connected"), limit, || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await?;
            let connected = s.watchers.iter().filter(|w| w.connected).count();
            Ok((connected >= n).then_some(()))
        }
    })
    .await
}
