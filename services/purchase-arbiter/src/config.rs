//! Command-line flags, each with an environment variable, and their defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, builder::BoolishValueParser};
use restock_domain::duration::parse_duration;
use restock_runtime::{
    LogArgs, ReadyFileArgs,
    auth::{ServerTlsArgs, TokenArgs},
    http::{HTTP_LISTEN_ENV, HttpListen},
};

use crate::limits::{MIN_MESSAGE_BYTES, MIN_TTL};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
/// On by default, unlike a watcher's: there is one arbiter, and it is what
/// an operator scrapes and alerts on first.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8081";
pub const DEFAULT_CONFIG: &str = "config/product_config.json";
pub const DEFAULT_STATE_FILE: &str = "data/arbiter-state.json";
pub const DEFAULT_LEASE_TTL: &str = "30s";
pub const DEFAULT_STOCK_TTL: &str = "10s";
pub const DEFAULT_FAILURE_COOLDOWN: &str = "15s";
pub const DEFAULT_SHUTDOWN_GRACE: &str = "3s";
pub const DEFAULT_STUCK_AFTER: &str = "2m";
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_REPORTS_PER_SECOND: u32 = 200;
/// One runtime thread: see `--worker-threads`.
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// The purchase arbiter's settings.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "purchase-arbiter",
    version,
    about = "Holds the one global purchase slot and grants it, as a lease with a fencing token, in priority order"
)]
pub struct ArbiterConfig {
    /// Address to serve gRPC on.
    #[arg(long, env = "RESTOCK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Where to serve the status page (`GET /`, `/api/status`, `/events`),
    /// `GET /metrics` (Prometheus) and `GET /healthz` over HTTP ("off":
    /// nowhere).
    #[arg(long, env = HTTP_LISTEN_ENV, default_value = DEFAULT_HTTP_LISTEN)]
    pub http_listen: HttpListen,

    /// Product list in priority order (top first).
    #[arg(long, env = "RESTOCK_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Where the durable state lives. An empty value keeps state in memory
    /// only (nothing survives a restart).
    #[arg(long, env = "RESTOCK_STATE_FILE", default_value = DEFAULT_STATE_FILE, value_parser = parse_path_or_empty)]
    pub state_file: PathBuf,

    /// How long a lease lasts unless renewed. With --store etcd, one etcd
    /// write is bounded by half of it (or --election-ttl, if smaller).
    #[arg(long, env = "RESTOCK_LEASE_TTL", default_value = DEFAULT_LEASE_TTL, value_parser = parse_duration)]
    pub lease_ttl: Duration,

    /// How long an in-stock report counts unless a watcher repeats it.
    #[arg(long, env = "RESTOCK_STOCK_TTL", default_value = DEFAULT_STOCK_TTL, value_parser = parse_duration)]
    pub stock_ttl: Duration,

    /// How long a failed (or expired) product waits before it is eligible again.
    #[arg(long, env = "RESTOCK_FAILURE_COOLDOWN", default_value = DEFAULT_FAILURE_COOLDOWN, value_parser = parse_duration)]
    pub failure_cooldown: Duration,

    /// A completed purchase puts the product straight back to ready, so the
    /// cycle repeats forever (for testing).
    #[arg(
        long,
        env = "TEST_MODE",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub test_mode: bool,

    /// Skip fsync when writing state (faster, NOT crash-safe; benchmarks only).
    #[arg(
        long,
        env = "RESTOCK_NO_FSYNC",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub no_fsync: bool,

    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "RESTOCK_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Most stock reports one watcher stream may send per second (bursts of
    /// as many). A stream kept above it is slowed, then closed with
    /// RESOURCE_EXHAUSTED; other streams are unaffected. 0: no limit.
    #[arg(long, env = "RESTOCK_MAX_REPORTS_PER_SECOND", default_value_t = DEFAULT_MAX_REPORTS_PER_SECOND)]
    pub max_reports_per_second: u32,

    /// Threads serving gRPC and running the slot. 1 (the default) keeps a
    /// hand-off on one thread, with no wake-ups across cores: the lowest
    /// latency, and over a million observations per second still. More
    /// spread the decoding of many streams over cores; 0: one per core.
    /// fsync always runs on a thread of its own.
    #[arg(long, env = "RESTOCK_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,

    /// On SIGTERM/SIGINT, how long to wait for clients to close their
    /// connections after every stream has ended.
    #[arg(long, env = "RESTOCK_SHUTDOWN_GRACE", default_value = DEFAULT_SHUTDOWN_GRACE, value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub ready: ReadyFileArgs,

    #[command(flatten)]
    pub tls: ServerTlsArgs,

    #[command(flatten)]
    pub token: TokenArgs,

    /// Plan the watchers' polling: the watchers polling a product take
    /// turns (watcher k of N at k/N of the period) instead of polling at
    /// random moments relative to each other. `false`: each polls on its
    /// own schedule.
    #[arg(
        long,
        env = "RESTOCK_POLL_PLANNING",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "true",
        default_missing_value = "true"
    )]
    pub poll_planning: bool,

    /// The status page shows a "purchase stuck" alarm when one lease has
    /// been held this long (renewals included).
    #[arg(long, env = "RESTOCK_STUCK_AFTER", default_value = DEFAULT_STUCK_AFTER, value_parser = parse_duration)]
    pub stuck_after: Duration,

    /// With a token: GetStatus, the status page (`/`, `/api/status`,
    /// `/events`) and `/metrics` stay open to callers without it (they
    /// only read). Health, reflection and `/healthz` are always open.
    #[arg(
        long,
        env = "RESTOCK_PUBLIC_STATUS",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub public_status: bool,

    /// Where the durable state lives: `file` (the state file and its
    /// journal, one arbiter) or `etcd` (any number of replicas sharing the
    /// state in etcd; one, elected through etcd, grants).
    #[arg(long, env = "RESTOCK_STORE", value_enum, default_value_t = StoreKind::File)]
    pub store: StoreKind,

    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    File,
    Etcd,
}

pub const DEFAULT_ETCD_PREFIX: &str = "/restock/";
pub const DEFAULT_ELECTION_TTL: &str = "5s";

/// The flags of `--store etcd`.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, comma-separated (every member, so losing one
    /// loses nothing).
    #[arg(long, env = "RESTOCK_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// Where in etcd this deployment's keys live (its election, state and
    /// journal). Deployments sharing an etcd use different prefixes.
    #[arg(long, env = "RESTOCK_ETCD_PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,

    /// How long a leader that stopped answering etcd keeps the leadership:
    /// its etcd lease's TTL, the bound on how long a failover waits for a
    /// dead leader. Whole seconds, at least 2s. One etcd write is bounded
    /// by the smaller of this and half of --lease-ttl.
    #[arg(long, env = "RESTOCK_ELECTION_TTL", default_value = DEFAULT_ELECTION_TTL, value_parser = parse_duration)]
    pub election_ttl: Duration,

    /// The URL other machines reach this replica's gRPC at (what followers
    /// name as the leader). Default: http://<host name>:<--listen port>.
    #[arg(long, env = "RESTOCK_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// PEM CA certificate(s) to trust for etcd's server certificates; turns
    /// TLS towards etcd on (https:// endpoints without it trust the public
    /// CAs).
    #[arg(long, env = "RESTOCK_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate for etcd (mutual TLS); needs --etcd-key.
    #[arg(long, env = "RESTOCK_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of --etcd-cert.
    #[arg(long, env = "RESTOCK_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,

    /// etcd user (etcd's own authentication); needs --etcd-password.
    #[arg(long, env = "RESTOCK_ETCD_USER")]
    pub etcd_user: Option<String>,

    /// Password of --etcd-user (prefer the environment variable).
    #[arg(long, env = "RESTOCK_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// When etcd holds no state yet: start from this state file (a
    /// deployment moving from `--store file`), so fencing tokens keep
    /// rising and the lease, counts and history carry over. Stop the
    /// file-store arbiter first, and give the flag to every replica (any
    /// of them may win the first election). A missing file stops start-up.
    #[arg(long, env = "RESTOCK_IMPORT_STATE_FILE")]
    pub import_state_file: Option<PathBuf>,

    /// The lowest fencing token the next grant may carry (a floor for a
    /// deployment whose store saw tokens from elsewhere). Tokens only ever
    /// rise: a floor below the next token changes nothing. Also what lets a
    /// replica start a new state where etcd says one was written and is
    /// gone.
    #[arg(long, env = "RESTOCK_TOKEN_FLOOR", default_value_t = 0)]
    pub token_floor: u64,

    /// Where etcd holds no state and never did, start a new one (fencing
    /// tokens from 1). Without it (or --import-state-file, or
    /// --token-floor) a replica refuses to lead an empty prefix, so one
    /// started without the import flag cannot start tokens from 1 while
    /// another replica's host has the state file. Never enough where etcd's
    /// marker says a state was written and is gone: that needs
    /// --token-floor.
    #[arg(
        long,
        env = "RESTOCK_FRESH_STATE",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub fresh_state: bool,

    /// Compact etcd's history of this deployment's writes after each full
    /// state write (etcd keeps every old version until compacted, and a
    /// full etcd stops taking writes). Turn off only when etcd compacts
    /// itself (--auto-compaction-retention).
    #[arg(
        long,
        env = "RESTOCK_ETCD_COMPACT",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "true",
        default_missing_value = "true"
    )]
    pub etcd_compact: bool,
}

impl EtcdArgs {
    fn validate(&self) -> Result<(), ConfigError> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Err(ConfigError::NoEtcdEndpoints);
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(ConfigError::EtcdEndpoint(bad.clone()));
        }
        let ttl = self.election_ttl;
        if ttl < Duration::from_secs(2) || ttl.subsec_nanos() != 0 {
            return Err(ConfigError::ElectionTtl(ttl));
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::AdvertiseUrl(url.clone()));
        }
        let p = &self.etcd_prefix;
        if !p.starts_with('/') || !p.ends_with('/') {
            return Err(ConfigError::EtcdPrefix(p.clone()));
        }
        match (&self.etcd_cert, &self.etcd_key) {
            (Some(_), None) => return Err(ConfigError::EtcdFlags("--etcd-cert needs --etcd-key")),
            (None, Some(_)) => return Err(ConfigError::EtcdFlags("--etcd-key needs --etcd-cert")),
            _ => {}
        }
        if self.etcd_user.is_some() != self.etcd_password.is_some() {
            return Err(ConfigError::EtcdFlags(
                "--etcd-user and --etcd-password go together",
            ));
        }
        Ok(())
    }

    /// The bound of one etcd write: the election TTL, and at most half the
    /// lease TTL, so a write that hangs fails (and its grant is never
    /// answered) well before a lease it would grant could run out. (A
    /// grant whose write still took most of its lease is not pushed at
    /// all: see `task`.)
    pub fn write_limit(&self, lease_ttl: Duration) -> Duration {
        self.election_ttl.min(lease_ttl / 2)
    }

    /// The endpoints, trimmed, without empty entries.
    pub fn endpoints(&self) -> Vec<String> {
        self.etcd_endpoints
            .iter()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// A path that may be empty: clap's own path parser refuses an empty
/// value, but `--state-file ""` (and `RESTOCK_STATE_FILE=`) means "memory
/// only".
fn parse_path_or_empty(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// A flag value that parses but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag} {value:?} is too short; at least {MIN_TTL:?}")]
    TooShort { flag: &'static str, value: Duration },
    #[error("--max-message-bytes {0} is too small; at least {MIN_MESSAGE_BYTES}")]
    MessageTooSmall(usize),
    #[error("--store etcd needs --etcd-endpoints (etcd's client URLs, comma-separated)")]
    NoEtcdEndpoints,
    #[error("--etcd-endpoints {0:?} must start with http:// or https://")]
    EtcdEndpoint(String),
    #[error(
        "--election-ttl {0:?} must be whole seconds, at least 2s (etcd leases count in seconds)"
    )]
    ElectionTtl(Duration),
    #[error("--advertise-url {0:?} must start with http:// or https://")]
    AdvertiseUrl(String),
    #[error("--etcd-prefix {0:?} must start with '/' and end with '/'")]
    EtcdPrefix(String),
    #[error("{0}")]
    EtcdFlags(&'static str),
    #[error(
        "--import-state-file {0}: no such file (stop the file-store arbiter and name its --state-file)"
    )]
    ImportMissing(String),
}

impl ArbiterConfig {
    /// Checks values that parse but make no sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (flag, value) in [("lease-ttl", self.lease_ttl), ("stock-ttl", self.stock_ttl)] {
            if value < MIN_TTL {
                return Err(ConfigError::TooShort { flag, value });
            }
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return Err(ConfigError::MessageTooSmall(self.max_message_bytes));
        }
        if self.store == StoreKind::Etcd {
            self.etcd.validate()?;
        }
        Ok(())
    }

    /// The state file, or `None` for memory only.
    pub fn state_path(&self) -> Option<PathBuf> {
        (!self.state_file.as_os_str().is_empty()).then(|| self.state_file.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_bare_seconds() {
        let c =
            ArbiterConfig::try_parse_from(["a", "--lease-ttl", "45", "--stock-ttl", "2m"]).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(45));
        assert_eq!(c.stock_ttl, Duration::from_secs(120));
        assert!(ArbiterConfig::try_parse_from(["a", "--lease-ttl", "soon"]).is_err());
    }

    #[test]
    fn an_empty_state_file_means_memory_only() {
        let c = ArbiterConfig::try_parse_from(["a", "--state-file", ""]).unwrap();
        assert_eq!(c.state_path(), None);
        let c = ArbiterConfig::try_parse_from(["a"]).unwrap();
        assert_eq!(c.state_path(), Some(PathBuf::from(DEFAULT_STATE_FILE)));
    }

    #[test]
    fn defaults_work_out_of_the_box() {
        let c = ArbiterConfig::try_parse_from(["purchase-arbiter"]).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
        assert_eq!(c.lease_ttl, Duration::from_secs(30));
        assert!(!c.test_mode);
        assert_eq!(c.max_reports_per_second, DEFAULT_MAX_REPORTS_PER_SECOND);
        assert_eq!(c.worker_threads, 1);
        c.validate().unwrap();
    }

    #[test]
    fn the_http_listener_can_be_turned_off() {
        let c = ArbiterConfig::try_parse_from(["a", "--http-listen", "off"]).unwrap();
        assert_eq!(c.http_listen, HttpListen::Off);
        assert!(ArbiterConfig::try_parse_from(["a", "--http-listen", "localhost"]).is_err());
    }

    #[test]
    fn test_mode_takes_a_bare_flag_or_a_value() {
        let on = ArbiterConfig::try_parse_from(["a", "--test-mode"]).unwrap();
        assert!(on.test_mode);
        let off = ArbiterConfig::try_parse_from(["a", "--test-mode=false"]).unwrap();
        assert!(!off.test_mode);
        let yes = ArbiterConfig::try_parse_from(["a", "--test-mode", "yes"]).unwrap();
        assert!(yes.test_mode);
    }

    #[test]
    fn the_etcd_store_checks_its_flags() {
        let err = |args: &[&str]| {
            let mut all = vec!["a", "--store", "etcd"];
            all.extend_from_slice(args);
            ArbiterConfig::try_parse_from(all)
                .unwrap()
                .validate()
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&[]).unwrap().contains("--etcd-endpoints"));
        assert!(
            err(&["--etcd-endpoints", "e1:2379"])
                .unwrap()
                .contains("e1:2379")
        );
        assert!(
            err(&[
                "--etcd-endpoints",
                "http://e1:2379",
                "--election-ttl",
                "1500ms"
            ])
            .unwrap()
            .contains("--election-ttl")
        );
        assert!(
            err(&[
                "--etcd-endpoints",
                "http://e1:2379",
                "--etcd-prefix",
                "restock"
            ])
            .unwrap()
            .contains("--etcd-prefix")
        );
        assert_eq!(
            err(&["--etcd-endpoints", "http://e1:2379, http://e2:2379"]),
            None
        );
        let c = ArbiterConfig::try_parse_from([
            "a",
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://e1:2379,http://e2:2379",
        ])
        .unwrap();
        assert_eq!(c.etcd.endpoints(), ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(c.etcd.election_ttl, Duration::from_secs(5));
        assert_eq!(c.etcd.etcd_prefix, DEFAULT_ETCD_PREFIX);
        // The file store needs none of it.
        ArbiterConfig::try_parse_from(["a"])
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn too_short_ttls_are_refused() {
        let c = ArbiterConfig::try_parse_from(["a", "--lease-ttl", "10ms"]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--lease-ttl")
        );
    }
}
