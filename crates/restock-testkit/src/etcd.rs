//! A real etcd cluster on loopback, from Debian's `etcd` binary
//! (`etcd-server`, 3.4.x), for the arbiter replicas that keep their state
//! and elect their leader in etcd.
//!
//! [`EtcdCluster::start`] starts N members, each with its own data folder
//! and log in one temporary folder, on ports the test holds
//! ([`ReservedPort`]: peer URLs must be known to every member before any
//! starts, so the ports cannot be announced afterwards), under a cluster
//! token of its own, and waits until every member reports healthy. A test
//! can then kill a member (`kill -9`), start it again on the same data and
//! ports (it rejoins: `--initial-cluster-state existing`), or freeze and
//! thaw it. Everything is killed when the cluster is dropped; when a test
//! fails (or with `TEST_LOG`) the members' last log lines are printed.
//!
//! Without the binary, [`EtcdCluster::start`] returns `None` after a
//! `SKIPPED:` note; with `RESTOCK_REQUIRE_ETCD=1` (CI) it fails instead
//! (`apt-get install etcd-server`).
//!
//! [`EtcdCluster::put`] and [`EtcdCluster::get`] speak etcd's JSON gateway
//! (`/v3/kv/...`, keys and values in base64), enough to show the cluster
//! works without an etcd client in the test kit.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::net::ReservedPort;

/// How long a fresh or restarted member may take to report healthy (long:
/// the machine may be busy building, and etcd fsyncs).
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// How many last log lines of each member are shown when a start fails or
/// a test panics.
const LOG_TAIL: usize = 25;

/// The `etcd` binary (on `PATH`, or Debian's `/usr/bin/etcd`), or `None`
/// (with a note) when it is not installed. With `RESTOCK_REQUIRE_ETCD=1`
/// (CI) a missing etcd fails.
pub fn etcd_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()));
    if found.is_none() {
        assert!(
            !etcd_required(),
            "etcd is required (RESTOCK_REQUIRE_ETCD=1) but not on PATH nor /usr/bin/etcd; apt-get install etcd-server"
        );
        eprintln!(
            "SKIPPED: etcd is not on PATH nor /usr/bin/etcd, so the tests that need it did not run (apt-get install etcd-server)"
        );
    }
    found
}

/// `RESTOCK_REQUIRE_ETCD=1`: a missing etcd is an error, not a skip.
pub fn etcd_required() -> bool {
    std::env::var("RESTOCK_REQUIRE_ETCD").is_ok_and(|v| v == "1")
}

/// One member: its ports (held for the cluster's life, so a restart finds
/// them free), its data folder and log, and its process while it runs.
#[derive(Debug)]
struct Member {
    name: String,
    client: ReservedPort,
    peer: ReservedPort,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Started once already: a restart rejoins (`existing`).
    started: bool,
    /// With [`EtcdCluster::start_tls`]: a second client port, https with
    /// client certificates (the http one stays for the harness itself).
    tls_client: Option<ReservedPort>,
}

impl Member {
    fn client_url(&self) -> String {
        self.client.url()
    }

    fn tls_client_url(&self) -> Option<String> {
        self.tls_client
            .as_ref()
            .map(|p| format!("https://{}", p.addr()))
    }

    fn peer_url(&self) -> String {
        self.peer.url()
    }

    fn log_tail(&self, lines: usize) -> String {
        // Lossy: etcd's warnings quote requests, whose values may be bytes
        // that are not UTF-8.
        let bytes = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        let mut out = format!("----- last log lines of etcd member {} -----", self.name);
        for l in tail.into_iter().rev() {
            out.push('\n');
            out.push_str(l);
        }
        out
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("etcd member {} is not running", self.name));
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill {sig} etcd member {} failed",
            self.name
        );
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    token: String,
    members: Vec<Member>,
    tls: Option<EtcdTls>,
    http: reqwest::Client,
    // Dropped last: the members' data and logs.
    dir: tempfile::TempDir,
}

/// The files of a member's https client port: its certificate and key, and
/// the CA a client's certificate must chain to (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members on 127.0.0.1 and waits until each reports
    /// healthy; `None` when etcd is not installed (see [`etcd_binary`]).
    /// Panics, with every member's last log lines, if the cluster does not
    /// form.
    pub async fn start(n: usize) -> Option<Self> {
        Self::start_with(n, None).await
    }

    /// [`Self::start`], each member also serving clients over https that
    /// must show a certificate of `tls.ca` ([`Self::tls_endpoints`]).
    pub async fn start_tls(n: usize, tls: EtcdTls) -> Option<Self> {
        Self::start_with(n, Some(tls)).await
    }

    async fn start_with(n: usize, tls: Option<EtcdTls>) -> Option<Self> {
        assert!(n >= 1, "an etcd cluster has at least one member");
        let binary = etcd_binary()?;
        // A name of the test kit's own: an `rm -rf /tmp/restock-etcd*` or a
        // `pkill -f` by hand elsewhere on the machine must not reach it.
        let dir = tempfile::Builder::new()
            .prefix("restock-testkit-cluster-")
            .tempdir()
            .expect("temp dir");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ReservedPort::new(ip),
                peer: ReservedPort::new(ip),
                data_dir: dir.path().join(format!("m{i}.data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
                started: false,
                tls_client: tls.as_ref().map(|_| ReservedPort::new(ip)),
            })
            .collect();
        // Unique per cluster, so members of two clusters (two tests at
        // once, or a leftover) never take each other's messages.
        let token = format!(
            "restock-test-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let mut c = Self {
            binary,
            token,
            members,
            tls,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            dir,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i).await;
        }
        Some(c)
    }

    /// The https client URLs, comma-separated (with [`Self::start_tls`]).
    pub fn tls_endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.tls_client_url().expect("started with start_tls"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many members it was started with.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, comma-separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.client_urls().join(",")
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client address (for a proxy in front of it).
    pub fn client_addr(&self, i: usize) -> std::net::SocketAddr {
        self.members[i].client.addr()
    }

    /// The folder holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster();
        let m = &mut self.members[i];
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open etcd log file");
        let err = out.try_clone().expect("clone log file");
        let state = if m.started { "existing" } else { "new" };
        let mut command = Command::new(&self.binary);
        let clients = match (&self.tls, m.tls_client_url()) {
            (Some(tls), Some(https)) => {
                command
                    .arg("--cert-file")
                    .arg(&tls.cert)
                    .arg("--key-file")
                    .arg(&tls.key)
                    .arg("--trusted-ca-file")
                    .arg(&tls.ca)
                    .arg("--client-cert-auth");
                format!("{},{https}", m.client_url())
            }
            _ => m.client_url(),
        };
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &clients])
            .args(["--advertise-client-urls", &clients])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            // zap, to stderr: 3.4's default logger is deprecated and warns.
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        m.child = Some(child);
        m.started = true;
    }

    /// Waits until member `i` answers `GET /health` with `"health":"true"`
    /// (it has a leader and serves reads); panics with every member's last
    /// log lines if it exits or takes longer than [`HEALTHY_LIMIT`].
    async fn wait_healthy(&mut self, i: usize) {
        let start = Instant::now();
        let url = format!("{}/health", self.members[i].client_url());
        loop {
            let healthy = async {
                let r = self.http.get(&url).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                Some(v["health"] == "true")
            }
            .await
            .unwrap_or(false);
            if healthy {
                return;
            }
            let exited = self.members[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.members[i].child = None;
                panic!(
                    "etcd member {} exited ({status}) before it was healthy\n{}",
                    self.members[i].name,
                    self.all_log_tails()
                );
            }
            assert!(
                start.elapsed() < HEALTHY_LIMIT,
                "etcd member {} was not healthy within {HEALTHY_LIMIT:?}\n{}",
                self.members[i].name,
                self.all_log_tails()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn all_log_tails(&self) -> String {
        self.members
            .iter()
            .map(|m| m.log_tail(LOG_TAIL))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `kill -9` member `i` (if it runs).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again (killing it first if it still runs) on its
    /// data and ports, rejoining the cluster, and waits until it is
    /// healthy.
    pub async fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// SIGSTOP member `i`: it holds its connections and answers nothing.
    pub fn stop(&self, i: usize) {
        self.members[i].signal("-STOP");
    }

    /// SIGCONT member `i`.
    pub fn cont(&self, i: usize) {
        self.members[i].signal("-CONT");
    }

    /// Is member `i`'s process running (not killed, not exited)?
    pub fn running(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `PUT key = value` through member `i` (etcd's JSON gateway).
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<(), String> {
        let body = json!({ "key": base64::encode(key.as_bytes()), "value": base64::encode(value.as_bytes()) });
        self.call(i, "/v3/kv/put", body).await.map(|_| ())
    }

    /// A linearizable `GET key` through member `i`: `None` when the key is
    /// not there.
    pub async fn get(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        let body = json!({ "key": base64::encode(key.as_bytes()) });
        let v = self.call(i, "/v3/kv/range", body).await?;
        let Some(kv) = v["kvs"].as_array().and_then(|kvs| kvs.first()) else {
            return Ok(None);
        };
        let raw = kv["value"].as_str().unwrap_or_default();
        let bytes = base64::decode(raw).ok_or_else(|| format!("value {raw:?} is not base64"))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| format!("value is not UTF-8: {e}"))
    }

    /// How many members the cluster lists, asked through member `i`.
    pub async fn member_count(&self, i: usize) -> Result<usize, String> {
        let v = self.call(i, "/v3/cluster/member/list", json!({})).await?;
        Ok(v["members"].as_array().map_or(0, Vec::len))
    }

    async fn call(&self, i: usize, path: &str, body: Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.members[i].client_url());
        let r = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", restock_runtime::error::chain_text(&e)))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("POST {url}: {status}, not JSON: {e}"))?;
        if !status.is_success() || v.get("error").is_some() {
            return Err(format!("POST {url}: {status}: {v}"));
        }
        Ok(v)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            // A stopped process takes SIGKILL too.
            m.kill();
        }
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("{}", self.all_log_tails());
        }
    }
}

/// Standard base64 with padding, for the gateway's keys and values (a few
/// lines rather than a dependency for test support).
mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
                if k <= chunk.len() {
                    out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let text = text.trim_end_matches('=');
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let mut acc = 0u32;
        let mut bits = 0u32;
        for c in text.bytes() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips_and_matches_the_rfc_examples() {
            for (plain, coded) in [
                ("", ""),
                ("f", "Zg=="),
                ("fo", "Zm8="),
                ("foo", "Zm9v"),
                ("foob", "Zm9vYg=="),
                ("fooba", "Zm9vYmE="),
                ("foobar", "Zm9vYmFy"),
            ] {
                assert_eq!(super::encode(plain.as_bytes()), coded);
                assert_eq!(super::decode(coded).unwrap(), plain.as_bytes());
            }
            assert!(super::decode("not base64!").is_none());
        }
    }
}
