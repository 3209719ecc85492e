//! Command-line flags, each with an environment variable, their defaults, and
//! the checks that turn them into settings the watcher can trust.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use std::path::{Path, PathBuf};

use clap::{Parser, ValueEnum};
use reqwest::header::{HeaderName, HeaderValue};
use tracing::{info, warn};

use crate::source::{
    budget::{SAFE_TARGET_RPS, is_target_host},
    cookies::{self, CookieFileError},
    shopify::{DEFAULT_SHOPIFY_RPS, ShopDirectory},
    target::{DEFAULT_USER_AGENT, Endpoint, TargetSettings},
};
use restock_domain::{IdError, ProductId, WatcherId, duration::parse_duration};
use restock_runtime::{
    LogArgs, ReadyFileArgs,
    arbiters::{ArbiterListError, ArbiterUrls},
    auth::{ClientTlsArgs, ServerTlsArgs, TokenArgs},
    http::HttpListen,
};

pub const DEFAULT_ARBITER: &str = "http://127.0.0.1:50051";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50052";
pub const DEFAULT_POLL_INTERVAL: &str = "1s";
/// Requests one after the other: what public tools report surviving on
/// Target's host (see the README, "Against the real Target").
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
pub const DEFAULT_REQUEST_TIMEOUT: &str = "5s";
pub const DEFAULT_SOURCE_URL: &str = "https://redsky.target.com";
/// The key Target's own product pages send with every fulfillment request;
/// it is public and it rotates, hence the flag.
pub const DEFAULT_TARGET_API_KEY: &str = "9f36aeafbe60771e321a7cc95a78140772ab3e96";
pub const DEFAULT_SOURCE_BACKOFF_INITIAL: &str = "2s";
pub const DEFAULT_PRICE_MAX_AGE: &str = "5m";
pub const DEFAULT_BLOCK_COOLDOWN: &str = "10m";
pub const DEFAULT_SOURCE_BACKOFF_MAX: &str = "60s";
pub const DEFAULT_CHECKOUT_TIMEOUT: &str = "120s";
pub const DEFAULT_RPC_TIMEOUT: &str = "5s";
/// Four times the arbiter's default `--election-ttl` (5 s).
pub const DEFAULT_FAILOVER_ALLOWANCE: &str = "20s";
pub const DEFAULT_RECONNECT_INITIAL: &str = "250ms";
pub const DEFAULT_RECONNECT_MAX: &str = "10s";
/// The watcher id when neither the flag nor a host name gives one.
pub const FALLBACK_WATCHER_ID: &str = "stock-watcher";

/// Where stock information comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Target's product fulfillment JSON API (or anything serving its format,
    /// such as the store simulator).
    Target,
}

/// `--target-max-rps`: the request budget of the source's host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxRps {
    /// 0.5 requests per second (`SAFE_TARGET_RPS`) on Target's own host,
    /// unlimited elsewhere.
    Auto,
    Unlimited,
    /// At most this many requests per second (positive).
    PerSecond(f64),
}

impl FromStr for MaxRps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "unlimited" => Ok(Self::Unlimited),
            n => match n.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Ok(Self::PerSecond(r)),
                _ => Err(format!(
                    "{n:?}: give requests per second above 0 (e.g. 0.5), `auto` or `unlimited`"
                )),
            },
        }
    }
}

impl MaxRps {
    /// The rate for a source at `url` (`None`: unlimited).
    pub fn resolve(self, url: &reqwest::Url) -> Option<f64> {
        match self {
            Self::Auto => url
                .host_str()
                .is_some_and(is_target_host)
                .then_some(SAFE_TARGET_RPS),
            Self::Unlimited => None,
            Self::PerSecond(r) => Some(r),
        }
    }
}

/// How a granted purchase is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckoutKind {
    /// POST the product and fencing token as JSON to `--checkout-url`.
    Http,
    /// Run `--checkout-command` with `sh -c`; exit 0 means purchased.
    Command,
}

impl CheckoutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Command => "command",
        }
    }
}

/// The stock watcher's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "stock-watcher",
    version,
    about = "Polls a stock source, reports in-stock products to the purchase arbiter, and runs a checkout only when the arbiter grants one"
)]
pub struct WatcherConfig {
    /// The purchase arbiter's gRPC URL, or every replica's, comma-separated
    /// (http://a:50051,http://b:50051,http://c:50051). The watcher streams
    /// to the leader: it starts with the first URL, goes straight to the
    /// leader a replica names, and tries the next URL when one cannot be
    /// reached; it backs off only once every URL failed in a row.
    #[arg(long, env = "RESTOCK_ARBITER", default_value = DEFAULT_ARBITER)]
    pub arbiter: String,

    /// This watcher's name at the arbiter (letters, digits, '-', '_', '.').
    /// Default: the host name.
    #[arg(long, env = "RESTOCK_WATCHER_ID")]
    pub watcher_id: Option<String>,

    /// Poll only these products (comma-separated ids) of the arbiter's
    /// catalog. Default: every enabled product of the catalog.
    #[arg(long, env = "RESTOCK_PRODUCTS", value_delimiter = ',')]
    pub products: Vec<String>,

    /// Address to serve this watcher's own gRPC (status, health, reflection) on.
    #[arg(long, env = "RESTOCK_WATCHER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Where to serve `GET /metrics` (Prometheus) and `GET /healthz` over
    /// HTTP, or `off`. Off by default, so several watchers start on one
    /// machine without a port clash.
    #[arg(long, env = restock_runtime::http::HTTP_LISTEN_ENV, default_value = "off")]
    pub http_listen: HttpListen,

    /// How often every product is polled: the longest gap between two rounds
    /// (each is jittered down by up to 10%).
    #[arg(long, env = "RESTOCK_POLL_INTERVAL", default_value = DEFAULT_POLL_INTERVAL, value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Most source requests in flight at once. Default 1: one after the
    /// other, as public tools report surviving on Target's host.
    #[arg(long, env = "RESTOCK_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// The request budget of the source's host, shared by every request
    /// this watcher sends there (stock polls and pdp_client_v1 price
    /// fetches), spaced evenly: requests per second (e.g. 0.5 = one every
    /// 2 s), `unlimited`, or `auto` (the default): 0.5 when the source URL's
    /// host is Target's own (redsky.target.com, what public tools report
    /// surviving), unlimited for any other URL (the store simulator).
    #[arg(long, env = "RESTOCK_TARGET_MAX_RPS", default_value = "auto", value_parser = MaxRps::from_str)]
    pub target_max_rps: MaxRps,

    /// Time limit of one source request.
    #[arg(long, env = "RESTOCK_REQUEST_TIMEOUT", default_value = DEFAULT_REQUEST_TIMEOUT, value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The stock source.
    #[arg(long, env = "RESTOCK_SOURCE", value_enum, default_value = "target")]
    pub source: SourceKind,

    /// Base URL of the source (the store simulator's URL for demos and tests).
    #[arg(long, env = "RESTOCK_SOURCE_URL", default_value = DEFAULT_SOURCE_URL)]
    pub source_url: String,

    /// Which Target stock endpoint is polled: `hierarchy`
    /// (product_fulfillment_and_variation_hierarchy_v1, what target.com's
    /// product pages use), `fulfillment` (the legacy product_fulfillment_v1)
    /// or `summary` (product_summary_with_fulfillment_v1, with the price).
    #[arg(
        long,
        env = "RESTOCK_TARGET_ENDPOINT",
        value_enum,
        default_value = "hierarchy"
    )]
    pub target_endpoint: Endpoint,

    /// A price older than this counts as unknown (a product with a
    /// max_price is then never reported in stock). Prices come from the
    /// answer when it has one, else from pdp_client_v1, asked every half of
    /// this per product.
    #[arg(long, env = "RESTOCK_PRICE_MAX_AGE", default_value = DEFAULT_PRICE_MAX_AGE, value_parser = parse_duration)]
    pub price_max_age: Duration,

    /// After a captcha or PerimeterX block: how long polling of the retailer
    /// pauses before one probe (doubling while the block lasts). Also how
    /// often a product the source does not know (404) is asked again.
    #[arg(long, env = "RESTOCK_BLOCK_COOLDOWN", default_value = DEFAULT_BLOCK_COOLDOWN, value_parser = parse_duration)]
    pub block_cooldown: Duration,

    /// An extra query parameter `name=value` for every Target request
    /// (repeatable; replaces a default parameter of the same name). The
    /// environment variable takes several, separated by `&`.
    #[arg(
        long = "target-param",
        env = "RESTOCK_TARGET_PARAMS",
        value_delimiter = '&'
    )]
    pub target_params: Vec<String>,

    /// An extra header `Name: value` for every Target request (repeatable).
    /// The environment variable takes several, one per line.
    #[arg(
        long = "target-header",
        env = "RESTOCK_TARGET_HEADERS",
        value_delimiter = '\n'
    )]
    pub target_headers: Vec<String>,

    /// A Netscape cookie file (cookies.txt, as browser exporters write it):
    /// the cookies matching the source's host are sent with every request.
    #[arg(long, env = "RESTOCK_TARGET_COOKIE_FILE")]
    pub target_cookie_file: Option<PathBuf>,

    /// The `visitor_id` parameter. Default: a random 32-hex id kept in
    /// --visitor-id-file, so it stays the same across restarts.
    #[arg(long, env = "RESTOCK_VISITOR_ID")]
    pub visitor_id: Option<String>,

    /// Where the default visitor id is kept. Default:
    /// $XDG_STATE_HOME/restock/visitor-id-<watcher-id> (or
    /// ~/.local/state/restock/...); with --source-is-simulator, not kept.
    #[arg(long, env = "RESTOCK_VISITOR_ID_FILE")]
    pub visitor_id_file: Option<PathBuf>,

    /// The `state` parameter (two letters, e.g. VA); omitted when unset.
    #[arg(long, env = "RESTOCK_LOCATION_STATE")]
    pub state: Option<String>,

    /// The `latitude` parameter; omitted when unset.
    #[arg(long, env = "RESTOCK_LATITUDE", allow_hyphen_values = true)]
    pub latitude: Option<String>,

    /// The `longitude` parameter; omitted when unset.
    #[arg(long, env = "RESTOCK_LONGITUDE", allow_hyphen_values = true)]
    pub longitude: Option<String>,

    /// Where a Shopify shop is asked, as `shop=URL` (repeat the flag, or
    /// separate with commas): the shop's products are read from
    /// `URL/products.json`. A shop not named here is asked at
    /// `https://<shop>` (the host name its product ids carry). The store
    /// simulator plays shops at `http://<sim>/shops/<shop>`; `*=URL`
    /// applies to every shop not named, with `{shop}` in the URL replaced by
    /// the shop's host name (`*=http://store-sim:8080/shops/{shop}`).
    #[arg(
        long = "shopify-url",
        env = "RESTOCK_SHOPIFY_URLS",
        value_delimiter = ','
    )]
    pub shopify_urls: Vec<String>,

    /// Watch a collection of a shop instead of its whole product list, as
    /// `shop=collection-handle` (repeat, or separate with commas): one
    /// request then reads `/collections/<handle>/products.json`, which
    /// suits a shop of more than 250 products.
    #[arg(
        long = "shopify-collection",
        env = "RESTOCK_SHOPIFY_COLLECTIONS",
        value_delimiter = ','
    )]
    pub shopify_collections: Vec<String>,

    /// The request budget of each Shopify shop (each shop has its own, and
    /// its requests go one at a time): requests per second, `unlimited`, or
    /// `auto` (the default): 1 per second, unlimited with
    /// `--source-is-simulator`. Shops answer 429 to faster clients.
    #[arg(long, env = "RESTOCK_SHOPIFY_MAX_RPS", default_value = "auto", value_parser = MaxRps::from_str)]
    pub shopify_max_rps: MaxRps,

    /// The User-Agent of source requests. Default: a current desktop
    /// browser's.
    #[arg(long, env = "RESTOCK_USER_AGENT", default_value = DEFAULT_USER_AGENT)]
    pub user_agent: String,

    /// The source is the store simulator: send the `x-restock-watcher`
    /// header (its poll log tells the watchers apart by it). Never set it
    /// for a real retailer.
    #[arg(
        long,
        env = "RESTOCK_SOURCE_IS_SIMULATOR",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub source_is_simulator: bool,

    /// The `key` query parameter of the fulfillment API.
    #[arg(long, env = "RESTOCK_TARGET_API_KEY", default_value = DEFAULT_TARGET_API_KEY)]
    pub api_key: String,

    /// The store whose pickup stock is asked for (`store_id`); omitted when unset.
    #[arg(long, env = "RESTOCK_STORE_ID")]
    pub store_id: Option<String>,

    /// The ZIP code for shipping and delivery stock (`zip`); omitted when unset.
    #[arg(long, env = "RESTOCK_ZIP")]
    pub zip: Option<String>,

    /// First pause after the source answers 403, 429, 435 or 5xx; it doubles
    /// while the source keeps refusing.
    #[arg(long, env = "RESTOCK_SOURCE_BACKOFF_INITIAL", default_value = DEFAULT_SOURCE_BACKOFF_INITIAL, value_parser = parse_duration)]
    pub source_backoff_initial: Duration,

    /// Longest pause after source refusals.
    #[arg(long, env = "RESTOCK_SOURCE_BACKOFF_MAX", default_value = DEFAULT_SOURCE_BACKOFF_MAX, value_parser = parse_duration)]
    pub source_backoff_max: Duration,

    /// How a granted purchase is carried out.
    #[arg(long, env = "RESTOCK_CHECKOUT", value_enum, default_value = "http")]
    pub checkout: CheckoutKind,

    /// With `--checkout http`: the URL the checkout is POSTed to.
    #[arg(long, env = "RESTOCK_CHECKOUT_URL")]
    pub checkout_url: Option<String>,

    /// With `--checkout command`: the command, run with `sh -c`.
    #[arg(long, env = "RESTOCK_CHECKOUT_COMMAND")]
    pub checkout_command: Option<String>,

    /// Time limit of one checkout (it is also stopped when the lease is lost).
    #[arg(long, env = "RESTOCK_CHECKOUT_TIMEOUT", default_value = DEFAULT_CHECKOUT_TIMEOUT, value_parser = parse_duration)]
    pub checkout_timeout: Duration,

    /// Time limit of one unary call to the arbiter (renewals use at most a
    /// third of the lease TTL).
    #[arg(long, env = "RESTOCK_RPC_TIMEOUT", default_value = DEFAULT_RPC_TIMEOUT, value_parser = parse_duration)]
    pub rpc_timeout: Duration,

    /// With several --arbiter URLs (replicas): how long beyond the lease's
    /// TTL a release is retried while the replicas elect a new leader.
    /// Keep it above the arbiters' --election-ttl (a few times it).
    #[arg(long, env = "RESTOCK_FAILOVER_ALLOWANCE", default_value = DEFAULT_FAILOVER_ALLOWANCE, value_parser = parse_duration)]
    pub failover_allowance: Duration,

    /// First pause before reconnecting to the arbiter; it doubles (with
    /// jitter) while reconnecting fails.
    #[arg(long, env = "RESTOCK_RECONNECT_INITIAL", default_value = DEFAULT_RECONNECT_INITIAL, value_parser = parse_duration)]
    pub reconnect_initial: Duration,

    /// Longest pause between reconnect attempts.
    #[arg(long, env = "RESTOCK_RECONNECT_MAX", default_value = DEFAULT_RECONNECT_MAX, value_parser = parse_duration)]
    pub reconnect_max: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub ready: ReadyFileArgs,

    /// TLS of this watcher's own gRPC server (status, health).
    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// TLS towards the arbiter.
    #[command(flatten)]
    pub arbiter_tls: ClientTlsArgs,

    /// The shared token: sent to the arbiter on every call, and required by
    /// this watcher's status service.
    #[command(flatten)]
    pub token: TokenArgs,

    /// With a token: GetWatcherStatus and `GET /metrics` stay open to
    /// callers without it (they only read). Health, reflection and
    /// `/healthz` are always open.
    #[arg(
        long,
        env = "RESTOCK_PUBLIC_STATUS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub public_status: bool,
}

/// How the checkout is done, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutSettings {
    Http { url: reqwest::Url },
    Command { command: String },
}

/// The flags, checked and resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One URL, or every replica's.
    pub arbiter: ArbiterUrls,
    pub watcher_id: WatcherId,
    /// Empty means every product of the catalog.
    pub products: Vec<ProductId>,
    pub poll_interval: Duration,
    pub max_in_flight: usize,
    /// `--target-max-rps`, resolved for the source URL (`None`: unlimited).
    pub target_max_rps: Option<f64>,
    pub request_timeout: Duration,
    pub source: SourceKind,
    pub source_url: reqwest::Url,
    pub api_key: String,
    pub store_id: Option<String>,
    pub zip: Option<String>,
    pub source_backoff_initial: Duration,
    pub source_backoff_max: Duration,
    pub target_endpoint: Endpoint,
    pub price_max_age: Duration,
    pub block_cooldown: Duration,
    pub target_params: Vec<(String, String)>,
    pub target_headers: Vec<(HeaderName, HeaderValue)>,
    pub state: Option<String>,
    pub latitude: Option<String>,
    pub longitude: Option<String>,
    pub user_agent: String,
    pub source_is_simulator: bool,
    /// `--shopify-url` and `--shopify-collection`.
    pub shops: ShopDirectory,
    /// `--shopify-max-rps`, resolved (`None`: unlimited).
    pub shopify_max_rps: Option<f64>,
    pub checkout: CheckoutSettings,
    pub checkout_timeout: Duration,
    pub rpc_timeout: Duration,
    pub failover_allowance: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

/// Why a URL did not parse (the `url` crate's error, named through reqwest,
/// which re-exports `Url` but not its error type).
pub type UrlError = <reqwest::Url as FromStr>::Err;

/// Shortest accepted duration of the flags [`ConfigError::TooShort`] checks.
const MIN_DURATION: Duration = Duration::from_millis(10);

/// A flag's value the watcher cannot use. Every message names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--watcher-id: {0}")]
    WatcherId(#[source] IdError),
    #[error("--arbiter {value:?} is not a URL: {source}")]
    ArbiterUrl { value: String, source: UrlError },
    #[error("--arbiter {0:?} must start with http:// or https://")]
    ArbiterScheme(String),
    #[error("--arbiter: {0}")]
    ArbiterList(#[source] ArbiterListError),
    #[error("--products: {0}")]
    Products(#[source] IdError),
    #[error("{flag} {value:?} is too short; at least 10ms")]
    TooShort { flag: &'static str, value: Duration },
    #[error("{max_flag} {max:?} is below {initial_flag} {initial:?}")]
    MaxBelowInitial {
        max_flag: &'static str,
        max: Duration,
        initial_flag: &'static str,
        initial: Duration,
    },
    #[error("--max-in-flight must be at least 1")]
    NoneInFlight,
    #[error("--source-url {value:?} is not a URL: {source}")]
    SourceUrl { value: String, source: UrlError },
    #[error("--api-key is empty")]
    EmptyApiKey,
    #[error("--checkout http needs --checkout-url (RESTOCK_CHECKOUT_URL)")]
    NoCheckoutUrl,
    #[error("--checkout-url {value:?} is not a URL: {source}")]
    CheckoutUrl { value: String, source: UrlError },
    #[error("--checkout command needs --checkout-command (RESTOCK_CHECKOUT_COMMAND)")]
    NoCheckoutCommand,
    #[error("--target-param {0:?} is not name=value")]
    TargetParam(String),
    #[error("--target-header {value:?} is not \"Name: value\": {why}")]
    TargetHeader { value: String, why: String },
    #[error("--user-agent is empty or not a valid header value")]
    UserAgent,
    #[error(transparent)]
    CookieFile(#[from] CookieFileError),
    #[error("--target-cookie-file {path}: a cookie value cannot be sent in a header")]
    CookieValue { path: String },
    #[error("--visitor-id {0:?}: use letters and digits only (Target's are 32 hex digits)")]
    VisitorId(String),
    #[error("--visitor-id-file {path}: {why}")]
    VisitorIdFile { path: String, why: String },
    #[error("{flag} {value:?}: {why}")]
    Shopify {
        flag: &'static str,
        value: String,
        why: String,
    },
}

impl WatcherConfig {
    /// Checks every value and resolves defaults (the host name). The error
    /// names the flag.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let watcher_id = match &self.watcher_id {
            Some(id) => WatcherId::parse(id.trim()).map_err(ConfigError::WatcherId)?,
            None => default_watcher_id(),
        };
        // Each entry as one URL was checked before replicas existed (same
        // errors), then the list as a whole (empty entries, duplicates).
        for entry in self
            .arbiter
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let parsed = reqwest::Url::parse(entry).map_err(|source| ConfigError::ArbiterUrl {
                value: entry.to_owned(),
                source,
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::ArbiterScheme(entry.to_owned()));
            }
        }
        let arbiter = ArbiterUrls::parse(&self.arbiter).map_err(ConfigError::ArbiterList)?;
        let mut products = Vec::new();
        for p in self
            .products
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            let t = ProductId::parse(p).map_err(ConfigError::Products)?;
            if !products.contains(&t) {
                products.push(t);
            }
        }
        for (flag, value) in [
            ("--poll-interval", self.poll_interval),
            ("--request-timeout", self.request_timeout),
            ("--source-backoff-initial", self.source_backoff_initial),
            ("--checkout-timeout", self.checkout_timeout),
            ("--rpc-timeout", self.rpc_timeout),
            ("--reconnect-initial", self.reconnect_initial),
            ("--price-max-age", self.price_max_age),
            ("--block-cooldown", self.block_cooldown),
        ] {
            if value < MIN_DURATION {
                return Err(ConfigError::TooShort { flag, value });
            }
        }
        if self.source_backoff_max < self.source_backoff_initial {
            return Err(ConfigError::MaxBelowInitial {
                max_flag: "--source-backoff-max",
                max: self.source_backoff_max,
                initial_flag: "--source-backoff-initial",
                initial: self.source_backoff_initial,
            });
        }
        if self.reconnect_max < self.reconnect_initial {
            return Err(ConfigError::MaxBelowInitial {
                max_flag: "--reconnect-max",
                max: self.reconnect_max,
                initial_flag: "--reconnect-initial",
                initial: self.reconnect_initial,
            });
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::NoneInFlight);
        }
        let source_url = reqwest::Url::parse(self.source_url.trim()).map_err(|source| {
            ConfigError::SourceUrl {
                value: self.source_url.clone(),
                source,
            }
        })?;
        if self.api_key.trim().is_empty() {
            return Err(ConfigError::EmptyApiKey);
        }
        let checkout = match self.checkout {
            CheckoutKind::Http => {
                let url = self
                    .checkout_url
                    .as_deref()
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .ok_or(ConfigError::NoCheckoutUrl)?;
                let url = reqwest::Url::parse(url).map_err(|source| ConfigError::CheckoutUrl {
                    value: url.to_owned(),
                    source,
                })?;
                CheckoutSettings::Http { url }
            }
            CheckoutKind::Command => {
                let command = self
                    .checkout_command
                    .as_deref()
                    .filter(|c| !c.trim().is_empty())
                    .ok_or(ConfigError::NoCheckoutCommand)?;
                CheckoutSettings::Command {
                    command: command.to_owned(),
                }
            }
        };
        let non_empty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let mut target_params = Vec::new();
        for p in self.target_params.iter().filter(|p| !p.trim().is_empty()) {
            match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    target_params.push((k.trim().to_owned(), v.to_owned()))
                }
                _ => return Err(ConfigError::TargetParam(p.clone())),
            }
        }
        let mut target_headers = Vec::new();
        for h in self.target_headers.iter().filter(|h| !h.trim().is_empty()) {
            let bad = |why: String| ConfigError::TargetHeader {
                value: h.clone(),
                why,
            };
            let (k, v) = h.split_once(':').ok_or_else(|| bad("no ':'".into()))?;
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|e| bad(format!("the name: {e}")))?;
            let value =
                HeaderValue::from_str(v.trim()).map_err(|e| bad(format!("the value: {e}")))?;
            target_headers.push((name, value));
        }
        let user_agent = self.user_agent.trim().to_owned();
        if user_agent.is_empty() || HeaderValue::from_str(&user_agent).is_err() {
            return Err(ConfigError::UserAgent);
        }
        let shops = self.shop_directory()?;
        let shopify_max_rps = match self.shopify_max_rps {
            MaxRps::Auto if self.source_is_simulator => None,
            MaxRps::Auto => Some(DEFAULT_SHOPIFY_RPS),
            MaxRps::Unlimited => None,
            MaxRps::PerSecond(r) => Some(r),
        };
        Ok(Settings {
            shops,
            shopify_max_rps,
            target_endpoint: self.target_endpoint,
            price_max_age: self.price_max_age,
            block_cooldown: self.block_cooldown,
            target_params,
            target_headers,
            state: non_empty(&self.state),
            latitude: non_empty(&self.latitude),
            longitude: non_empty(&self.longitude),
            user_agent,
            source_is_simulator: self.source_is_simulator,
            arbiter,
            watcher_id,
            products,
            poll_interval: self.poll_interval,
            max_in_flight: self.max_in_flight,
            target_max_rps: self.target_max_rps.resolve(&source_url),
            request_timeout: self.request_timeout,
            source: self.source,
            source_url,
            api_key: self.api_key.trim().to_owned(),
            store_id: non_empty(&self.store_id),
            zip: non_empty(&self.zip),
            source_backoff_initial: self.source_backoff_initial,
            source_backoff_max: self.source_backoff_max,
            checkout,
            checkout_timeout: self.checkout_timeout,
            rpc_timeout: self.rpc_timeout,
            failover_allowance: self.failover_allowance,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
        })
    }
}

impl WatcherConfig {
    /// `--shopify-url` and `--shopify-collection`, checked: each names a
    /// shop by its host name (as product ids write it).
    fn shop_directory(&self) -> Result<ShopDirectory, ConfigError> {
        let mut dir = ShopDirectory::default();
        let split = |flag: &'static str, v: &str| -> Result<(String, String), ConfigError> {
            let bad = |why: String| ConfigError::Shopify {
                flag,
                value: v.to_owned(),
                why,
            };
            let (shop, rest) = v.split_once('=').ok_or_else(|| {
                bad(
                    "not shop=value (e.g. cards.example=http://127.0.0.1:8080/shops/cards.example)"
                        .into(),
                )
            })?;
            // The shop must be one a product id can name.
            let id = ProductId::parse(&format!("shopify:{}/1", shop.trim()))
                .map_err(|e| bad(format!("the shop: {e}")))?;
            let shop = id.shopify().map(|s| s.shop.to_owned()).unwrap_or_default();
            Ok((shop, rest.trim().to_owned()))
        };
        for v in self.shopify_urls.iter().filter(|v| !v.trim().is_empty()) {
            let bad = |why: String| ConfigError::Shopify {
                flag: "--shopify-url",
                value: v.clone(),
                why,
            };
            let check = |url: &str| -> Result<reqwest::Url, ConfigError> {
                let parsed =
                    reqwest::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
                    return Err(bad(
                        "the URL must be http:// or https:// with no query".into()
                    ));
                }
                Ok(parsed)
            };
            if let Some(template) = v.trim().strip_prefix("*=") {
                // Checked with a shop put in.
                check(&template.replace("{shop}", "shop.example"))?;
                dir.every = Some(template.trim().to_owned());
                continue;
            }
            let (shop, url) = split("--shopify-url", v)?;
            let parsed = check(&url)?;
            dir.urls.insert(shop, parsed);
        }
        for v in self
            .shopify_collections
            .iter()
            .filter(|v| !v.trim().is_empty())
        {
            let (shop, handle) = split("--shopify-collection", v)?;
            if handle.is_empty()
                || !handle
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            {
                return Err(ConfigError::Shopify {
                    flag: "--shopify-collection",
                    value: v.clone(),
                    why: "a collection handle is lower-case letters, digits, '-' and '_'".into(),
                });
            }
            dir.collections.insert(shop, handle);
        }
        Ok(dir)
    }

    /// The Target source's settings: reads the cookie file and the visitor
    /// id (creating it on first start). Errors name the flag and the file.
    pub fn target_settings(&self, s: &Settings) -> Result<TargetSettings, ConfigError> {
        let cookie = match &self.target_cookie_file {
            None => None,
            Some(path) => {
                let all = cookies::load(path)?;
                let host = s.source_url.host_str().unwrap_or_default();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let header = cookies::header_for(&all, host, now);
                info!(
                    file = %path.display(),
                    cookies = all.len(),
                    sent = header.as_ref().map_or(0, |h| h.split("; ").count()),
                    "cookie file read"
                );
                match header {
                    Some(h) => {
                        Some(
                            HeaderValue::from_str(&h).map_err(|_| ConfigError::CookieValue {
                                path: path.display().to_string(),
                            })?,
                        )
                    }
                    None => {
                        warn!(file = %path.display(), host, "no cookie of the file matches the source's host (or all expired)");
                        None
                    }
                }
            }
        };
        Ok(TargetSettings {
            base_url: s.source_url.clone(),
            endpoint: s.target_endpoint,
            api_key: s.api_key.clone(),
            store_id: s.store_id.clone(),
            zip: s.zip.clone(),
            state: s.state.clone(),
            latitude: s.latitude.clone(),
            longitude: s.longitude.clone(),
            visitor_id: self.resolve_visitor_id(s)?,
            user_agent: s.user_agent.clone(),
            params: s.target_params.clone(),
            headers: s.target_headers.clone(),
            cookie,
            request_timeout: s.request_timeout,
            price_max_age: s.price_max_age,
            simulator: s.source_is_simulator,
            watcher_id: s.watcher_id.to_string(),
            max_rps: s.target_max_rps,
        })
    }

    fn resolve_visitor_id(&self, s: &Settings) -> Result<String, ConfigError> {
        let valid = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric());
        if let Some(v) = self.visitor_id.as_deref().map(str::trim) {
            return if valid(v) {
                Ok(v.to_owned())
            } else {
                Err(ConfigError::VisitorId(v.to_owned()))
            };
        }
        let path = match &self.visitor_id_file {
            Some(p) => Some(p.clone()),
            None if s.source_is_simulator => None,
            None => default_visitor_id_file(s.watcher_id.as_str()),
        };
        let Some(path) = path else {
            return Ok(random_visitor_id());
        };
        let file_err = |why: String| ConfigError::VisitorIdFile {
            path: path.display().to_string(),
            why,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let v = text.trim();
                if valid(v) {
                    Ok(v.to_owned())
                } else {
                    Err(file_err(format!(
                        "holds {v:?}, not a visitor id (letters and digits)"
                    )))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = random_visitor_id();
                write_visitor_id(&path, &id)
                    .map_err(|e| file_err(format!("cannot write it: {e}")))?;
                info!(file = %path.display(), "a new visitor id was made and kept");
                Ok(id)
            }
            Err(e) => Err(file_err(format!("cannot read it: {e}"))),
        }
    }
}

/// `$XDG_STATE_HOME/restock/visitor-id-<id>`, else under `~/.local/state`.
fn default_visitor_id_file(watcher_id: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(
        base.join("restock")
            .join(format!("visitor-id-{watcher_id}")),
    )
}

fn write_visitor_id(path: &Path, id: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{id}\n"))
}

/// 32 upper-case hex digits, like the ids target.com gives its visitors.
pub fn random_visitor_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect::<String>()
        .to_ascii_uppercase()
}

impl Settings {
    /// What in these settings goes beyond what the README calls safe on
    /// Target's own host (at most `SAFE_TARGET_RPS` requests per second,
    /// one at a time); nothing for any other source.
    pub fn impolite_settings(&self) -> Vec<String> {
        if !self.source_url.host_str().is_some_and(is_target_host) {
            return Vec::new();
        }
        let mut why = Vec::new();
        match self.target_max_rps {
            None => why.push(format!(
                "--target-max-rps unlimited: no request budget (safe: at most {SAFE_TARGET_RPS} requests/s)"
            )),
            Some(r) if r > SAFE_TARGET_RPS => why.push(format!(
                "--target-max-rps {r} requests/s is above the safe {SAFE_TARGET_RPS} (one request every {}s)",
                1.0 / SAFE_TARGET_RPS
            )),
            Some(_) => {}
        }
        if self.max_in_flight > 1 {
            why.push(format!(
                "--max-in-flight {} sends requests in parallel (safe: 1, one after the other)",
                self.max_in_flight
            ));
        }
        why
    }

    /// Logs [`Settings::impolite_settings`] as warnings, with the numbers.
    pub fn warn_if_impolite(&self) {
        for why in self.impolite_settings() {
            warn!(
                source_url = %self.source_url,
                target_max_rps = self.target_max_rps.unwrap_or(f64::INFINITY),
                max_in_flight = self.max_in_flight,
                safe_rps = SAFE_TARGET_RPS,
                "settings for Target's host beyond what the README calls safe (\"Against the real Target\"): {why}; expect captcha and PerimeterX blocks"
            );
        }
    }

    pub fn checkout_kind(&self) -> CheckoutKind {
        match self.checkout {
            CheckoutSettings::Http { .. } => CheckoutKind::Http,
            CheckoutSettings::Command { .. } => CheckoutKind::Command,
        }
    }
}

/// The host name as a watcher id: from the kernel, else `/etc/hostname`,
/// else [`FALLBACK_WATCHER_ID`].
pub fn default_watcher_id() -> WatcherId {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|h| WatcherId::from_host_name(&h))
        .unwrap_or_else(|| WatcherId::parse(FALLBACK_WATCHER_ID).expect("valid id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec!["stock-watcher"];
        all.extend_from_slice(args);
        WatcherConfig::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .settings()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_command_line_parses() {
        let s = parse(&[
            "--arbiter",
            "http://127.0.0.1:50051",
            "--watcher-id",
            "w1",
            "--source",
            "target",
            "--source-url",
            "http://127.0.0.1:8080",
            "--checkout",
            "http",
            "--checkout-url",
            "http://127.0.0.1:8080/checkout",
            "--poll-interval",
            "200ms",
            "--products",
            "100,200, 100",
        ])
        .unwrap();
        assert_eq!(s.watcher_id.as_str(), "w1");
        assert_eq!(s.poll_interval, Duration::from_millis(200));
        assert_eq!(
            s.products,
            vec![
                ProductId::parse("100").unwrap(),
                ProductId::parse("200").unwrap()
            ]
        );
        assert_eq!(s.checkout_kind(), CheckoutKind::Http);
        assert_eq!(s.failover_allowance, Duration::from_secs(20));
        let s = parse(&[
            "--checkout-url",
            "http://x/checkout",
            "--failover-allowance",
            "45s",
        ])
        .unwrap();
        assert_eq!(s.failover_allowance, Duration::from_secs(45));
    }

    #[test]
    fn checkout_needs_its_target() {
        let e = parse(&["--checkout", "http"]).unwrap_err();
        assert!(e.contains("--checkout-url"), "{e}");
        let e = parse(&["--checkout", "command"]).unwrap_err();
        assert!(e.contains("--checkout-command"), "{e}");
        let s = parse(&["--checkout", "command", "--checkout-command", "exit 0"]).unwrap();
        assert_eq!(s.checkout_kind(), CheckoutKind::Command);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let url = ["--checkout-url", "http://x/checkout"];
        let with = |more: &[&'static str]| {
            let mut v: Vec<&str> = url.to_vec();
            v.extend_from_slice(more);
            parse(&v).unwrap_err()
        };
        assert!(with(&["--watcher-id", "a b"]).contains("--watcher-id"));
        assert!(with(&["--products", "1 2"]).contains("--products"));
        assert!(with(&["--max-in-flight", "0"]).contains("--max-in-flight"));
        assert!(with(&["--arbiter", "127.0.0.1:1"]).contains("--arbiter"));
        assert!(with(&["--poll-interval", "1ms"]).contains("--poll-interval"));
        // One grammar for every duration flag: a bare number is seconds.
        let s = parse(&[
            "--checkout-url",
            "http://x/checkout",
            "--poll-interval",
            "5",
        ])
        .unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(5));
        assert!(with(&["--poll-interval", "soon"]).contains("--poll-interval"));
    }

    #[test]
    fn arbiter_takes_a_list_of_replicas() {
        let url = ["--checkout-url", "http://x/checkout"];
        let with = |arbiter: &'static str| {
            let mut v: Vec<&str> = url.to_vec();
            v.extend_from_slice(&["--arbiter", arbiter]);
            parse(&v)
        };
        let s = with(" http://a:1, https://b:2 ,http://c:3").unwrap();
        assert_eq!(
            s.arbiter.urls(),
            ["http://a:1", "https://b:2", "http://c:3"]
        );
        let e = with("http://a:1,http://a:1/").unwrap_err();
        assert!(e.starts_with("--arbiter") && e.contains("twice"), "{e}");
        let e = with("http://a:1,b:2").unwrap_err();
        assert!(e.contains("--arbiter") && e.contains("\"b:2\""), "{e}");
        let e = with("http://a:1,,http://c:3").unwrap_err();
        assert!(e.contains("--arbiter") && e.contains("entry 2"), "{e}");
    }

    #[test]
    fn a_refused_value_keeps_its_cause() {
        let e = WatcherConfig::try_parse_from(["stock-watcher", "--arbiter", "http://[::1"])
            .unwrap()
            .settings()
            .unwrap_err();
        assert!(matches!(e, ConfigError::ArbiterUrl { .. }), "{e:?}");
        let cause = std::error::Error::source(&e).expect("the URL error");
        assert!(e.to_string().ends_with(&cause.to_string()), "{e}");
    }

    #[test]
    fn the_request_budget_is_conservative_on_target_and_unlimited_elsewhere() {
        let sim = ["--checkout-url", "http://x/checkout"];
        let with = |more: &[&'static str]| {
            let mut v: Vec<&str> = sim.to_vec();
            v.extend_from_slice(more);
            parse(&v)
        };
        // Target's host (the default URL): 0.5/s, one at a time, no warning.
        let s = with(&[]).unwrap();
        assert_eq!(s.target_max_rps, Some(SAFE_TARGET_RPS));
        assert_eq!(s.max_in_flight, 1);
        assert!(s.impolite_settings().is_empty());
        // Any other URL: unlimited, and no warning whatever the settings.
        let s = with(&[
            "--source-url",
            "http://127.0.0.1:8080",
            "--max-in-flight",
            "8",
        ])
        .unwrap();
        assert_eq!(s.target_max_rps, None);
        assert!(s.impolite_settings().is_empty());
        let s = with(&[
            "--source-url",
            "http://127.0.0.1:8080",
            "--target-max-rps",
            "3",
        ])
        .unwrap();
        assert_eq!(s.target_max_rps, Some(3.0));
        // Beyond what is safe on Target's host: one warning each, with the numbers.
        let s = with(&["--target-max-rps", "2", "--max-in-flight", "4"]).unwrap();
        let why = s.impolite_settings();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why[0].contains("2 requests/s") && why[0].contains("0.5"),
            "{why:?}"
        );
        assert!(why[1].contains("--max-in-flight 4"), "{why:?}");
        let s = with(&["--target-max-rps", "unlimited"]).unwrap();
        assert_eq!(s.target_max_rps, None);
        assert_eq!(s.impolite_settings().len(), 1);
        let s = with(&["--target-max-rps", "0.2"]).unwrap();
        assert!(s.impolite_settings().is_empty());
        for bad in ["0", "fast", "NaN", "inf"] {
            let e = with(&["--target-max-rps", bad]).unwrap_err();
            assert!(e.contains("--target-max-rps"), "{e}");
        }
        let e = with(&["--target-max-rps=-1"]).unwrap_err();
        assert!(e.contains("--target-max-rps"), "{e}");
    }

    #[test]
    fn the_help_states_the_budget_defaults() {
        use clap::CommandFactory;
        let help = WatcherConfig::command().render_long_help().to_string();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains("--target-max-rps"), "{help}");
        assert!(flat.contains("RESTOCK_TARGET_MAX_RPS"), "{help}");
        assert!(
            flat.contains("0.5 when the source URL's host is Target's own")
                && flat.contains("unlimited for any other URL"),
            "{help}"
        );
    }

    #[test]
    fn shopify_flags_name_shops_and_a_bad_one_names_the_flag() {
        let parse = |args: &[&str]| {
            let mut all = vec!["--checkout-url", "http://127.0.0.1:9/checkout"];
            all.extend_from_slice(args);
            parse(&all)
        };
        let s = parse(&[
            "--shopify-url",
            "Cards.Example=http://127.0.0.1:8080/shops/cards.example,*=http://sim:8080/shops/{shop}",
            "--shopify-collection",
            "cards.example=pokemon",
            "--products",
            "94300069,shopify:cards.example/4001",
        ])
        .unwrap();
        assert_eq!(
            s.shops.base_url("cards.example"),
            "http://127.0.0.1:8080/shops/cards.example"
        );
        assert_eq!(
            s.shops.base_url("b.example"),
            "http://sim:8080/shops/b.example"
        );
        assert_eq!(
            s.shops.list_path("cards.example"),
            "/collections/pokemon/products.json"
        );
        assert_eq!(s.products[1].as_str(), "shopify:cards.example/4001");
        // One request a second per shop by default; none with the simulator.
        assert_eq!(s.shopify_max_rps, Some(1.0));
        let sim = parse(&["--source-is-simulator"]).unwrap();
        assert_eq!(sim.shopify_max_rps, None);
        let set = parse(&["--shopify-max-rps", "0.25"]).unwrap();
        assert_eq!(set.shopify_max_rps, Some(0.25));
        for (args, want) in [
            (["--shopify-url", "cards.example"], "not shop=value"),
            (
                ["--shopify-url", "https://cards.example=http://x"],
                "the shop",
            ),
            (
                ["--shopify-url", "a.example=ftp://x"],
                "http:// or https://",
            ),
            (["--shopify-url", "*=not a url"], "not a URL"),
            (
                ["--shopify-collection", "a.example=Big Sale"],
                "collection handle",
            ),
        ] {
            let e = parse(&args).unwrap_err();
            assert!(e.contains(args[0]) && e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn default_watcher_id_is_valid() {
        let id = default_watcher_id();
        assert!(WatcherId::parse(id.as_str()).is_ok());
    }
}
