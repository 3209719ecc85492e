//! Target's RedSky API, read the way Target's own pages answer today (learnt
//! from recorded real answers, see `tests/data/target/SOURCES.md`).
//!
//! # Endpoints (`--target-endpoint`)
//!
//! - `hierarchy` (default): `web/product_fulfillment_and_variation_hierarchy_v1?tcin=..`,
//!   what target.com's product pages called in June 2026;
//!   `{"data": {"product": {"tcin", "fulfillment": {...}}}}`, no price.
//! - `fulfillment`: the legacy `web/product_fulfillment_v1?tcin=..`, same
//!   `data.product.fulfillment` shape; called deprecated.
//! - `summary`: `web/product_summary_with_fulfillment_v1?tcins=..`,
//!   `{"data": {"product_summaries": [{"tcin", "fulfillment", "price"?}]}}`,
//!   matched by `tcin`; a product it does not list is an error of that
//!   product alone ("No product found with tcin ..." is `unknown_product`).
//!   One request carries up to [`SUMMARY_BATCH`] products
//!   ([`StockSource::check_many`]): a poll round is one request.
//!
//! # The host's budget
//!
//! Every request (stock and price) first waits for its turn in the host's
//! [`HostBudget`] (`--target-max-rps`); its time limit starts when it is
//! sent.
//!
//! The price is `price.current_retail` (dollars) of the answer when it
//! carries one (the summaries do unless `skip_price_promo=true`), else of
//! `web/pdp_client_v1?tcin=..`, asked only for products with a `max_price`,
//! at most every half `--price-max-age` per product (every 10 s while the
//! product is in stock without a price), and cached; a price older than
//! `--price-max-age` is unknown, and a product with a `max_price` and no
//! known price is never reported in stock (fail closed). A product that
//! comes into stock gets a fresh price at once: a price learnt while it was
//! out of stock is not used (a drop often changes it).
//!
//! # In stock
//!
//! An online order can be placed now through at least one of these channels
//! (status `IN_STOCK`, `LIMITED_STOCK` or `PRE_ORDER_SELLABLE`):
//!
//! - shipping: `fulfillment.shipping_options.availability_status`;
//! - order pickup (or drive-up, `curbside`) at the configured store: the
//!   `store_options[]` entry whose `location_id` is `--store-id`; without
//!   `--store-id`, the entry Target chose (`search_response_store_type`
//!   `PRIMARY`, else the first);
//! - scheduled delivery: `fulfillment.scheduled_delivery.availability_status`.
//!
//! Not counted: `in_store_only` (walk-in shelf stock, not an online order),
//! `ship_to_store`, and the `loyalty_availability_status` fields. With
//! `fulfillment.sold_out: true` the product is out of stock whatever the
//! channels say. An answer about another `tcin` than the one asked for is
//! an error, never a sighting.
//!
//! # Answers that are not stock
//!
//! Classified into a [`RefusalKind`] by [`classify`]; see there.
//!
//! # What is sent
//!
//! `key`, `tcin`/`tcins`, `is_bot=false`, `visitor_id`, `channel=WEB`,
//! `page=/p/A-{tcin}`, and when configured `store_id` (with
//! `pricing_store_id`, `scheduled_delivery_store_id` and, for `hierarchy`,
//! `required_store_id`), `zip`, `state`, `latitude`, `longitude`; then every
//! `--target-param` (replacing a default of the same name). Headers:
//! `user-agent` (`--user-agent`), `accept`, every `--target-header`, and the
//! matching cookies of `--target-cookie-file`. [`WATCHER_HEADER`] only with
//! `--source-is-simulator`. Nothing is done to get around bot protection.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use clap::ValueEnum;
use reqwest::{
    Url,
    header::{HeaderName, HeaderValue, RETRY_AFTER},
};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{error, warn};

use super::{
    Answer, MAX_ANSWER_BYTES, Refusal, RefusalKind, Sighting, SourceError, StockSource,
    budget::HostBudget, read_capped,
};
use crate::{
    config::UrlError,
    metrics::{SourceCode, WatcherMetrics},
};
use restock_domain::{Price, ProductId, ProductSpec, Retailer};

/// The legacy endpoint's path under the base URL.
pub const FULFILLMENT_PATH: &str = "redsky_aggregations/v1/web/product_fulfillment_v1";
/// The endpoint target.com's product pages use (June 2026).
pub const HIERARCHY_PATH: &str =
    "redsky_aggregations/v1/web/product_fulfillment_and_variation_hierarchy_v1";
/// The batch endpoint (`tcins=a,b,…`).
pub const SUMMARY_PATH: &str = "redsky_aggregations/v1/web/product_summary_with_fulfillment_v1";
/// Most products one summary request carries (as target.com's own pages
/// ask them).
pub const SUMMARY_BATCH: usize = 24;
/// The product page's details, with the price.
pub const PDP_CLIENT_PATH: &str = "redsky_aggregations/v1/web/pdp_client_v1";

/// Statuses that mean "purchasable now".
pub const IN_STOCK_STATUSES: [&str; 3] = ["IN_STOCK", "LIMITED_STOCK", "PRE_ORDER_SELLABLE"];

/// A current desktop browser's user agent (Chrome on Windows), the default
/// of `--user-agent`.
pub const DEFAULT_USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36";

/// How often a product in stock without a usable price asks for it again.
pub const PRICE_RETRY: Duration = Duration::from_secs(10);

/// Longest piece of an error body kept for logs and status.
const BODY_EXCERPT: usize = 200;

/// Which stock endpoint is polled (`--target-endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `product_fulfillment_v1` (legacy, called deprecated).
    Fulfillment,
    /// `product_fulfillment_and_variation_hierarchy_v1` (target.com's pages).
    Hierarchy,
    /// `product_summary_with_fulfillment_v1` (batch, with the price).
    Summary,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Fulfillment => FULFILLMENT_PATH,
            Self::Hierarchy => HIERARCHY_PATH,
            Self::Summary => SUMMARY_PATH,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fulfillment => "fulfillment",
            Self::Hierarchy => "hierarchy",
            Self::Summary => "summary",
        }
    }
}

/// Why a [`TargetSource`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("source URL {url}: {source}")]
    Url { url: String, source: UrlError },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Settings of a [`TargetSource`].
#[derive(Debug, Clone)]
pub struct TargetSettings {
    pub base_url: Url,
    pub endpoint: Endpoint,
    pub api_key: String,
    pub store_id: Option<String>,
    pub zip: Option<String>,
    pub state: Option<String>,
    pub latitude: Option<String>,
    pub longitude: Option<String>,
    pub visitor_id: String,
    pub user_agent: String,
    /// `--target-param`, in order; replaces a default of the same name.
    pub params: Vec<(String, String)>,
    /// `--target-header`, checked.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The `Cookie` header from `--target-cookie-file` for the source's host.
    pub cookie: Option<HeaderValue>,
    pub request_timeout: Duration,
    pub price_max_age: Duration,
    /// `--source-is-simulator`: send [`WATCHER_HEADER`].
    pub simulator: bool,
    /// Sent as [`WATCHER_HEADER`] to the simulator.
    pub watcher_id: String,
    /// `--target-max-rps`, resolved: the most requests per second to the
    /// source's host, stock and price requests together (`None`: no limit).
    pub max_rps: Option<f64>,
}

impl TargetSettings {
    /// Settings for `base_url` with every optional value unset (tests).
    pub fn plain(base_url: Url, endpoint: Endpoint) -> Self {
        Self {
            base_url,
            endpoint,
            api_key: "k".into(),
            store_id: None,
            zip: None,
            state: None,
            latitude: None,
            longitude: None,
            visitor_id: "0".repeat(32),
            user_agent: DEFAULT_USER_AGENT.into(),
            params: Vec::new(),
            headers: Vec::new(),
            cookie: None,
            request_timeout: Duration::from_secs(2),
            price_max_age: Duration::from_secs(300),
            simulator: false,
            watcher_id: "w-test".into(),
            max_rps: None,
        }
    }
}

/// Names the watcher on every request to the store simulator, so its poll
/// log (`GET /admin/polls`) can tell the watchers' polls apart. Sent only
/// with `--source-is-simulator`: nothing that names us goes to a retailer.
pub const WATCHER_HEADER: &str = "x-restock-watcher";

/// The cached price of one product.
#[derive(Debug, Clone, Copy)]
struct PriceEntry {
    known: Option<(Price, Instant)>,
    tried: Option<Instant>,
    /// What the last stock answer said: a product that comes into stock
    /// gets a fresh price (a drop often changes it).
    in_stock: bool,
}

/// Asks Target's (or the simulator's) RedSky endpoints.
#[derive(Debug)]
pub struct TargetSource {
    settings: TargetSettings,
    stock_url: Url,
    price_url: Url,
    client: reqwest::Client,
    /// Where answers are counted by HTTP status (`None` in unit tests).
    metrics: Option<WatcherMetrics>,
    prices: Mutex<HashMap<ProductId, PriceEntry>>,
    /// `pdp_client_v1` answered 410: not asked again.
    price_gone: AtomicBool,
    /// Every request to the host takes its turn here.
    budget: HostBudget,
}

impl TargetSource {
    pub fn new(settings: TargetSettings) -> Result<Self, SetupError> {
        let base = settings.base_url.as_str().trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}/{path}")).map_err(|source| SetupError::Url {
                url: base.to_owned(),
                source,
            })
        };
        let stock_url = url(settings.endpoint.path())?;
        let price_url = url(PDP_CLIENT_PATH)?;
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(settings.user_agent.clone())
            .build()
            .map_err(SetupError::Client)?;
        Ok(Self {
            budget: HostBudget::per_second(settings.max_rps),
            settings,
            stock_url,
            price_url,
            client,
            metrics: None,
            prices: Mutex::default(),
            price_gone: AtomicBool::new(false),
        })
    }

    /// Counts every answer (by HTTP status) and failed request in `metrics`.
    pub fn counting(mut self, metrics: WatcherMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, code: SourceCode) {
        if let Some(m) = &self.metrics {
            m.source_answer(Retailer::Target, code);
        }
    }

    /// The stock request URL for one product.
    pub fn url_for(&self, tcin: &ProductId) -> Url {
        self.url_for_many(std::slice::from_ref(tcin))
    }

    /// The stock request URL for `tcins` (several only with `summary`:
    /// `tcins=a,b,…`; `page` names the first).
    pub fn url_for_many(&self, tcins: &[ProductId]) -> Url {
        let s = &self.settings;
        let mut q: Vec<(String, String)> = vec![("key".into(), s.api_key.clone())];
        let joined = tcins
            .iter()
            .map(ProductId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        match s.endpoint {
            Endpoint::Summary => q.push(("tcins".into(), joined)),
            _ => q.push(("tcin".into(), joined)),
        }
        q.push(("is_bot".into(), "false".into()));
        if let Some(store) = &s.store_id {
            q.push(("store_id".into(), store.clone()));
            q.push(("pricing_store_id".into(), store.clone()));
            q.push(("scheduled_delivery_store_id".into(), store.clone()));
            if s.endpoint == Endpoint::Hierarchy {
                q.push(("required_store_id".into(), store.clone()));
            }
        }
        if let Some(first) = tcins.first() {
            self.location_and_tail(&mut q, first);
        }
        with_query(&self.stock_url, q)
    }

    /// The `pdp_client_v1` URL for one product's price.
    pub fn price_url_for(&self, tcin: &ProductId) -> Url {
        let s = &self.settings;
        let mut q: Vec<(String, String)> = vec![
            ("key".into(), s.api_key.clone()),
            ("tcin".into(), tcin.to_string()),
            ("is_bot".into(), "false".into()),
        ];
        if let Some(store) = &s.store_id {
            q.push(("store_id".into(), store.clone()));
            q.push(("pricing_store_id".into(), store.clone()));
            q.push(("has_pricing_store_id".into(), "true".into()));
        }
        q.push(("skip_personalized".into(), "true".into()));
        q.push(("skip_variation_hierarchy".into(), "true".into()));
        self.location_and_tail(&mut q, tcin);
        with_query(&self.price_url, q)
    }

    fn location_and_tail(&self, q: &mut Vec<(String, String)>, tcin: &ProductId) {
        let s = &self.settings;
        for (k, v) in [
            ("zip", &s.zip),
            ("state", &s.state),
            ("latitude", &s.latitude),
            ("longitude", &s.longitude),
        ] {
            if let Some(v) = v {
                q.push((k.into(), v.clone()));
            }
        }
        q.push(("visitor_id".into(), s.visitor_id.clone()));
        q.push(("channel".into(), "WEB".into()));
        q.push(("page".into(), format!("/p/A-{tcin}")));
        for (k, v) in &s.params {
            match q.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v.clone(),
                None => q.push((k.clone(), v.clone())),
            }
        }
    }

    /// One GET: the status, the `Retry-After` and the (capped) body, or the
    /// error when no usable answer came. Classifies what is not stock.
    async fn get(&self, url: Url) -> Result<Vec<u8>, SourceError> {
        let timeout = self.settings.request_timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                SourceError::Timeout(timeout)
            } else {
                SourceError::Transport(Arc::new(e))
            }
        };
        // The host's budget first: the request's own time limit (the
        // client's) starts when it is sent.
        self.budget.acquire().await;
        let started = Instant::now();
        let took = || {
            if let Some(m) = &self.metrics {
                m.source_request_took(started.elapsed().as_secs_f64());
            }
        };
        let mut req = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        for (k, v) in &self.settings.headers {
            req = req.header(k, v);
        }
        if let Some(c) = &self.settings.cookie {
            req = req.header(reqwest::header::COOKIE, c);
        }
        if self.settings.simulator {
            req = req.header(WATCHER_HEADER, &self.settings.watcher_id);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                took();
                let e = transport(e);
                self.count(match e {
                    SourceError::Timeout(_) => SourceCode::Timeout,
                    _ => SourceCode::Transport,
                });
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        // Counted as soon as the status is known: a body that breaks off
        // later was still this answer.
        self.count(SourceCode::Status(status));
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let read = read_capped(resp, MAX_ANSWER_BYTES).await;
        took();
        let (body, cut_off) = read.map_err(transport)?;
        // A success cut off at the cap is an answer too large to read, not
        // a body that is not JSON (its cut end never parses).
        if cut_off && (200..300).contains(&status) {
            return Err(SourceError::Format(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes; not read further: {}",
                excerpt(&body)
            )));
        }
        if let Some(mut r) = classify(status, &body) {
            r.retry_after = retry_after;
            return Err(SourceError::Refused(r));
        }
        if cut_off {
            return Err(SourceError::Format(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes; not read further: {}",
                excerpt(&body)
            )));
        }
        Ok(body)
    }

    /// The price of `tcin` for a product with a `max_price` whose stock
    /// answer carried none: the cached one, or `pdp_client_v1`'s. `None` when
    /// no price younger than `--price-max-age` is known. Blocks and
    /// throttles of the price request are the source's errors (they pause
    /// polling); other failures leave the price unknown.
    async fn price_of(
        &self,
        tcin: &ProductId,
        in_stock: bool,
    ) -> Result<Option<Price>, SourceError> {
        let max_age = self.settings.price_max_age;
        let refresh = max_age / 2;
        let now = Instant::now();
        let entry = self
            .prices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tcin)
            .copied()
            .unwrap_or(PriceEntry {
                known: None,
                tried: None,
                in_stock: false,
            });
        // Out of stock before, in stock now: only a price asked now counts.
        let arrived = in_stock && !entry.in_stock;
        let young = |e: &PriceEntry, limit: Duration| {
            e.known
                .filter(|(_, at)| now.saturating_duration_since(*at) <= limit)
                .map(|(p, _)| p)
        };
        let retry_after = if in_stock && young(&entry, max_age).is_none() {
            PRICE_RETRY.min(refresh)
        } else {
            refresh
        };
        let due = arrived
            || entry
                .tried
                .is_none_or(|t| now.saturating_duration_since(t) >= retry_after);
        if !due || self.price_gone.load(Ordering::Relaxed) {
            self.note_stock(tcin, in_stock);
            return Ok(if arrived {
                None
            } else {
                young(&entry, max_age)
            });
        }
        let fetched = match self.get(self.price_url_for(tcin)).await {
            Ok(body) => parse_price(&body, tcin),
            Err(e) => Err(e),
        };
        let mut prices = self.prices.lock().unwrap_or_else(|p| p.into_inner());
        let slot = prices.entry(tcin.clone()).or_insert(entry);
        slot.tried = Some(now);
        slot.in_stock = in_stock;
        if arrived {
            // A price from before the product came into stock is not used.
            slot.known = None;
        }
        match fetched {
            Ok(Some(p)) => {
                slot.known = Some((p, now));
                Ok(Some(p))
            }
            Ok(None) => {
                warn!(tcin = %tcin, "pdp_client_v1 answered without a price: price unknown");
                Ok(young(slot, max_age))
            }
            Err(SourceError::Refused(r)) if r.kind == RefusalKind::EndpointGone => {
                self.price_gone.store(true, Ordering::Relaxed);
                error!(
                    "pdp_client_v1 answered 410 Gone (endpoint_gone): prices are unknown from now on, so products with a max_price are never reported in stock; use --target-endpoint summary (its answers carry the price)"
                );
                Ok(young(slot, max_age))
            }
            Err(SourceError::Refused(r))
                if matches!(
                    r.kind.reaction(),
                    super::Reaction::Block | super::Reaction::Throttle
                ) =>
            {
                Err(SourceError::Refused(r))
            }
            Err(e) => {
                warn!(tcin = %tcin, error = %e, "the price request failed: price unknown");
                Ok(young(slot, max_age))
            }
        }
    }

    fn note_stock(&self, tcin: &ProductId, in_stock: bool) {
        if let Some(e) = self
            .prices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(tcin)
        {
            e.in_stock = in_stock;
        }
    }

    fn remember_price(&self, tcin: &ProductId, price: Price, in_stock: bool) {
        let now = Instant::now();
        self.prices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                tcin.clone(),
                PriceEntry {
                    known: Some((price, now)),
                    tried: Some(now),
                    in_stock,
                },
            );
    }
}

fn with_query(base: &Url, q: Vec<(String, String)>) -> Url {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(q);
    url
}

impl StockSource for TargetSource {
    fn describe(&self) -> String {
        format!(
            "target {} ({})",
            self.settings.base_url,
            self.settings.endpoint.as_str()
        )
    }

    async fn check(&self, product: &ProductSpec) -> Answer {
        if self.settings.endpoint == Endpoint::Summary {
            let mut answers = self.check_summaries(std::slice::from_ref(product)).await?;
            return answers
                .pop()
                .unwrap_or_else(|| Err(SourceError::Format("no answer for the product".into())));
        }
        self.check_one(product).await
    }

    fn batch_size(&self) -> usize {
        match self.settings.endpoint {
            Endpoint::Summary => SUMMARY_BATCH,
            Endpoint::Fulfillment | Endpoint::Hierarchy => 1,
        }
    }

    /// With `summary`: one request for all `products` (at most
    /// [`SUMMARY_BATCH`]), each matched by its `tcin`; a product the answer
    /// leaves out gets its own error. A block or throttle of the request is
    /// the error of the whole call. Otherwise, one request per product.
    async fn check_many(&self, products: &[ProductSpec]) -> Result<Vec<Answer>, SourceError> {
        if self.settings.endpoint == Endpoint::Summary {
            return self.check_summaries(products).await;
        }
        let mut answers = Vec::with_capacity(products.len());
        for p in products {
            match self.check_one(p).await {
                Err(e) if e.pauses_source() => return Err(e),
                a => answers.push(a),
            }
        }
        Ok(answers)
    }

    fn times_its_requests(&self) -> bool {
        true
    }

    fn next_request_at(&self) -> Option<Instant> {
        self.budget.next_free()
    }
}

impl TargetSource {
    /// One product from a single-product endpoint.
    async fn check_one(&self, product: &ProductSpec) -> Answer {
        let tcin = &product.tcin;
        let body = self.get(self.url_for(tcin)).await?;
        let store = self.settings.store_id.as_deref();
        let sighting = parse_product(&body, tcin, store)?;
        self.with_price(product, sighting).await
    }

    /// Several products in one summary request (see `check_many`).
    async fn check_summaries(&self, products: &[ProductSpec]) -> Result<Vec<Answer>, SourceError> {
        let tcins: Vec<ProductId> = products.iter().map(|p| p.tcin.clone()).collect();
        let body = self.get(self.url_for_many(&tcins)).await?;
        let store = self.settings.store_id.as_deref();
        let parsed = parse_summaries(&body, &tcins, store)?;
        let mut answers = Vec::with_capacity(products.len());
        // A block of a price request stops the price requests of the rest:
        // the products that need one get that error too.
        let mut price_blocked: Option<SourceError> = None;
        for (product, (_, result)) in products.iter().zip(parsed) {
            let answer = match (result, &price_blocked) {
                (Ok(s), Some(e)) if product.max_price.is_some() && s.price.is_none() => {
                    Err(e.clone())
                }
                (Ok(s), _) => self.with_price(product, s).await,
                (Err(e), _) => Err(e),
            };
            if let Err(e) = &answer
                && e.pauses_source()
            {
                price_blocked = Some(e.clone());
            }
            answers.push(answer);
        }
        Ok(answers)
    }

    /// Completes a sighting of a product with a `max_price` with its price
    /// (from the answer, remembered, else from `pdp_client_v1`).
    async fn with_price(&self, product: &ProductSpec, mut sighting: Sighting) -> Answer {
        if product.max_price.is_some() {
            match sighting.price {
                Some(p) => self.remember_price(&product.tcin, p, sighting.in_stock),
                None => {
                    sighting.price = self.price_of(&product.tcin, sighting.in_stock).await?;
                }
            }
        }
        Ok(sighting)
    }
}

/// Classifies an answer that is not stock; `None` for a stock answer to
/// read (a success status with a JSON body that is not a block).
///
/// - a PerimeterX HTML challenge (`_pxAppId` or "Press & Hold" in the body),
///   whatever the status, 200 included → `perimeterx`;
/// - 403/435 with `captchaRelativeURL`/`captchaAbsoluteURL` → `captcha`
///   (the absolute URL, else the relative one, is kept as the tracking
///   URL); with `appId`/`blockScript` → `perimeterx`; otherwise
///   `forbidden`;
/// - 429 → `rate_limited`; 5xx → `server_error`; 404 → `unknown_product`;
///   410 → `endpoint_gone`; 400 and any other non-success →
///   `bad_request`;
/// - a success whose body is not JSON → `not_json`.
pub fn classify(status: u16, body: &[u8]) -> Option<Refusal> {
    let refusal = |kind, detail: String| Refusal {
        kind,
        status,
        retry_after: None,
        tracking_url: None,
        detail,
    };
    let text = String::from_utf8_lossy(body);
    if text.contains("_pxAppId") || text.contains("Press & Hold") {
        return Some(refusal(
            RefusalKind::PerimeterX,
            "PerimeterX \"Press & Hold\" challenge page".into(),
        ));
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        return match json {
            Some(_) => None,
            None => Some(refusal(RefusalKind::NotJson, excerpt(body))),
        };
    }
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let kind = match status {
        403 | 435 => {
            if let Some(url) = field("captchaAbsoluteURL").or_else(|| field("captchaRelativeURL")) {
                let mut r = refusal(RefusalKind::Captcha, String::new());
                r.tracking_url = Some(url);
                return Some(r);
            }
            if json
                .as_ref()
                .is_some_and(|j| j.get("appId").is_some() || j.get("blockScript").is_some())
            {
                let app = field("appId").unwrap_or_default();
                return Some(refusal(
                    RefusalKind::PerimeterX,
                    format!("PerimeterX block (appId {app})"),
                ));
            }
            RefusalKind::Forbidden
        }
        429 => RefusalKind::RateLimited,
        404 => RefusalKind::UnknownProduct,
        410 => RefusalKind::EndpointGone,
        500..=599 => RefusalKind::ServerError,
        _ => RefusalKind::BadRequest,
    };
    let detail = json
        .as_ref()
        .and_then(first_error_message)
        .unwrap_or_else(|| excerpt(body));
    Some(refusal(kind, detail))
}

/// `errors[0].message`, when the answer has one.
fn first_error_message(doc: &Value) -> Option<String> {
    doc.get("errors")
        .and_then(Value::as_array)
        .and_then(|errs| errs.first())
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn parse_json(body: &[u8]) -> Result<Value, SourceError> {
    serde_json::from_slice(body).map_err(|_| {
        SourceError::Refused(Refusal {
            kind: RefusalKind::NotJson,
            status: 200,
            retry_after: None,
            tracking_url: None,
            detail: excerpt(body),
        })
    })
}

fn unknown_product(message: String) -> SourceError {
    SourceError::Refused(Refusal {
        kind: RefusalKind::UnknownProduct,
        status: 200,
        retry_after: None,
        tracking_url: None,
        detail: message,
    })
}

/// Reads a `fulfillment` or `hierarchy` answer about `tcin`; the pickup
/// store is `store` (see the module documentation).
pub fn parse_product(
    body: &[u8],
    tcin: &ProductId,
    store: Option<&str>,
) -> Result<Sighting, SourceError> {
    let doc = parse_json(body)?;
    let product = doc.pointer("/data/product").filter(|p| p.is_object());
    let Some(product) = product else {
        return Err(match first_error_message(&doc) {
            Some(m) if m.contains("No product found") => unknown_product(m),
            Some(m) => SourceError::Format(format!("the source reports an error: {m}")),
            None => SourceError::Format("no data.product in the answer".into()),
        });
    };
    read_product(product, tcin, store)
}

/// One product object (`data.product` or a summary): checks its `tcin`,
/// reads its stock and price.
fn read_product(
    product: &Value,
    tcin: &ProductId,
    store: Option<&str>,
) -> Result<Sighting, SourceError> {
    if let Some(got) = product.get("tcin").and_then(Value::as_str)
        && got != tcin.as_str()
    {
        return Err(SourceError::Format(format!(
            "the answer is about tcin {got}, not {tcin}"
        )));
    }
    let Some(fulfillment) = product.get("fulfillment").filter(|f| f.is_object()) else {
        return Err(SourceError::Format("no fulfillment in the answer".into()));
    };
    Ok(Sighting {
        in_stock: Channels::read(fulfillment, store).any(),
        price: current_price(product),
        variant: None,
    })
}

/// The channels through which an online order can be placed now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Channels {
    pub shipping: bool,
    pub pickup: bool,
    pub delivery: bool,
    pub sold_out: bool,
}

impl Channels {
    /// Reads a `fulfillment` object; `store` is the configured pickup store.
    pub fn read(f: &Value, store: Option<&str>) -> Self {
        let ok = |v: Option<&Value>| {
            v.and_then(|s| s.get("availability_status"))
                .and_then(Value::as_str)
                .is_some_and(|s| IN_STOCK_STATUSES.contains(&s))
        };
        let stores = f
            .get("store_options")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let id = |s: &Value| match s.get("location_id") {
            Some(Value::String(v)) => v.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let chosen = match store {
            Some(want) => stores.iter().find(|s| id(s) == want),
            None => stores
                .iter()
                .find(|s| {
                    s.get("search_response_store_type").and_then(Value::as_str) == Some("PRIMARY")
                })
                .or_else(|| stores.first()),
        };
        Self {
            shipping: ok(f.get("shipping_options")),
            pickup: chosen.is_some_and(|s| ok(s.get("order_pickup")) || ok(s.get("curbside"))),
            delivery: ok(f.get("scheduled_delivery")),
            sold_out: f.get("sold_out").and_then(Value::as_bool) == Some(true),
        }
    }

    pub fn any(self) -> bool {
        !self.sold_out && (self.shipping || self.pickup || self.delivery)
    }
}

/// `price.current_retail` in cents, when present. Not `Price::from_dollars`:
/// its upper bound guards config typos, and a price the store shows is
/// reported whatever it is.
fn current_price(product: &Value) -> Option<Price> {
    product
        .pointer("/price/current_retail")
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite() && *d >= 0.0)
        .map(|dollars| Price::from_cents((dollars * 100.0).round() as u64))
}

/// Reads a summaries answer: one result per asked product, in the order
/// asked, matched by `tcin`. A product the answer does not list is an error
/// of that product alone (`unknown_product` when the answer says "No
/// product found with tcin ..." about it).
#[allow(clippy::type_complexity)]
pub fn parse_summaries(
    body: &[u8],
    tcins: &[ProductId],
    store: Option<&str>,
) -> Result<Vec<(ProductId, Result<Sighting, SourceError>)>, SourceError> {
    let doc = parse_json(body)?;
    let summaries = doc
        .pointer("/data/product_summaries")
        .and_then(Value::as_array);
    let errors: Vec<String> = doc
        .get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .filter_map(|e| e.get("message").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if summaries.is_none() && errors.is_empty() {
        return Err(SourceError::Format(
            "no data.product_summaries in the answer".into(),
        ));
    }
    let summaries = summaries.map(Vec::as_slice).unwrap_or_default();
    Ok(tcins
        .iter()
        .map(|t| {
            let found = summaries
                .iter()
                .find(|s| s.get("tcin").and_then(Value::as_str) == Some(t.as_str()));
            let result = match found {
                Some(s) => read_product(s, t, store),
                None => match errors.iter().find(|m| m.contains(t.as_str())) {
                    Some(m) if m.contains("No product found") => Err(unknown_product(m.clone())),
                    Some(m) => Err(SourceError::Format(format!(
                        "the source reports an error: {m}"
                    ))),
                    None => Err(SourceError::Format(format!(
                        "tcin {t} is not in the answer's product_summaries"
                    ))),
                },
            };
            (t.clone(), result)
        })
        .collect())
}

/// Reads a `pdp_client_v1` answer's price (`None`: the answer has none).
pub fn parse_price(body: &[u8], tcin: &ProductId) -> Result<Option<Price>, SourceError> {
    let doc = parse_json(body)?;
    let Some(product) = doc.pointer("/data/product").filter(|p| p.is_object()) else {
        return Err(match first_error_message(&doc) {
            Some(m) if m.contains("No product found") => unknown_product(m),
            _ => SourceError::Format("no data.product in the price answer".into()),
        });
    };
    if let Some(got) = product.get("tcin").and_then(Value::as_str)
        && got != tcin.as_str()
    {
        return Err(SourceError::Format(format!(
            "the price answer is about tcin {got}, not {tcin}"
        )));
    }
    Ok(current_price(product))
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real recorded answers (see `tests/data/target/SOURCES.md`).
    const HIERARCHY_IN: &str =
        include_str!("../../../../tests/data/target/hierarchy_v1-instock-13356914.json");
    const HIERARCHY_OOS: &str =
        include_str!("../../../../tests/data/target/hierarchy_v1-oos-1011209279.json");
    const PDP_CLIENT: &str =
        include_str!("../../../../tests/data/target/pdp_client_v1-1011209279.json");
    const SUMMARY_29: &str =
        include_str!("../../../../tests/data/target/summary_v1-threshr-29.json");
    const CAPTCHA: &str = include_str!("../../../../tests/data/target/block-captcha-403.json");

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    #[test]
    fn recorded_hierarchy_answers_read_as_a_person_reads_them() {
        let s = parse_product(HIERARCHY_IN.as_bytes(), &t("13356914"), Some("2272")).unwrap();
        assert_eq!(
            s,
            Sighting {
                in_stock: true,
                price: None,
                variant: None,
            },
            "in stock, no price"
        );
        let s = parse_product(HIERARCHY_OOS.as_bytes(), &t("1011209279"), Some("2272")).unwrap();
        assert_eq!(
            s,
            Sighting {
                in_stock: false,
                price: None,
                variant: None,
            },
            "out of stock everywhere"
        );
        // The same shape is what the legacy endpoint answers.
        let s = parse_product(HIERARCHY_IN.as_bytes(), &t("13356914"), None).unwrap();
        assert!(s.in_stock);
    }

    #[test]
    fn an_answer_about_another_product_is_an_error() {
        let e = parse_product(HIERARCHY_IN.as_bytes(), &t("1011209279"), None).unwrap_err();
        assert!(
            matches!(&e, SourceError::Format(m) if m.contains("13356914")),
            "{e}"
        );
        let e = parse_price(PDP_CLIENT.as_bytes(), &t("13356914")).unwrap_err();
        assert!(matches!(e, SourceError::Format(_)));
    }

    #[test]
    fn recorded_pdp_client_gives_the_price() {
        assert_eq!(
            parse_price(PDP_CLIENT.as_bytes(), &t("1011209279")).unwrap(),
            Some(Price::from_cents(1_799))
        );
    }

    #[test]
    fn recorded_summaries_read_per_product_and_per_channel() {
        let doc: Value = serde_json::from_str(SUMMARY_29).unwrap();
        let all: Vec<ProductId> = doc["data"]["product_summaries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| t(p["tcin"].as_str().unwrap()))
            .collect();
        assert_eq!(all.len(), 29);
        let mut asked = all.clone();
        asked.push(t("99999999"));
        let got = parse_summaries(SUMMARY_29.as_bytes(), &asked, Some("1750")).unwrap();
        let stock = |id: &str| {
            got.iter()
                .find(|(x, _)| x.as_str() == id)
                .unwrap()
                .1
                .as_ref()
                .map(|s| s.in_stock)
                .unwrap()
        };
        // Everywhere; shipping only; store only (pickup and delivery).
        assert!(stock("76382974"));
        assert!(stock("14886100"));
        assert!(stock("54564296"));
        // Out everywhere, with OUT_OF_STOCK and with UNAVAILABLE.
        assert!(!stock("86065484"));
        assert!(!stock("88541940"));
        // No price in this recording (skip_price_promo=true).
        assert!(
            got.iter()
                .take(29)
                .all(|(_, r)| r.as_ref().unwrap().price.is_none())
        );
        // A product the answer does not list is an error of that product.
        assert!(matches!(got[29].1, Err(SourceError::Format(_))));
        let with_error = r#"{"data":{"product_summaries":[]},"errors":[{"message":"No product found with tcin 123"}]}"#;
        let got = parse_summaries(with_error.as_bytes(), &[t("123"), t("5")], None).unwrap();
        assert!(
            matches!(&got[0].1, Err(SourceError::Refused(r)) if r.kind == RefusalKind::UnknownProduct)
        );
        assert!(matches!(&got[1].1, Err(SourceError::Format(_))));
    }

    #[test]
    fn channels_pickup_at_the_configured_store_walk_in_and_sold_out() {
        let f = |pickup: &str, in_store: &str, sold_out: bool| {
            serde_json::json!({
                "sold_out": sold_out,
                "shipping_options": {"availability_status": "OUT_OF_STOCK", "loyalty_availability_status": "IN_STOCK"},
                "store_options": [
                    {"location_id": "1", "search_response_store_type": "PRIMARY",
                     "order_pickup": {"availability_status": pickup},
                     "in_store_only": {"availability_status": in_store}},
                    {"location_id": "2", "order_pickup": {"availability_status": "OUT_OF_STOCK"}}
                ],
                "scheduled_delivery": {"availability_status": "UNAVAILABLE"}
            })
        };
        let read = |v: &Value, store| Channels::read(v, store).any();
        assert!(read(&f("IN_STOCK", "OUT_OF_STOCK", false), Some("1")));
        assert!(
            read(&f("LIMITED_STOCK", "OUT_OF_STOCK", false), None),
            "PRIMARY store"
        );
        assert!(
            !read(&f("IN_STOCK", "OUT_OF_STOCK", false), Some("2")),
            "another store"
        );
        assert!(
            !read(&f("UNAVAILABLE", "IN_STOCK", false), Some("1")),
            "walk-in only"
        );
        assert!(
            !read(&f("IN_STOCK", "IN_STOCK", true), Some("1")),
            "sold out"
        );
        // Loyalty status alone never counts.
        assert!(!read(&f("UNAVAILABLE", "UNAVAILABLE", false), None));
        let pre =
            serde_json::json!({"shipping_options": {"availability_status": "PRE_ORDER_SELLABLE"}});
        assert!(read(&pre, None));
        let pre = serde_json::json!({"shipping_options": {"availability_status": "PRE_ORDER_UNSELLABLE"}});
        assert!(!read(&pre, None));
    }

    #[test]
    fn every_answer_that_is_not_stock_is_named() {
        let kind = |status, body: &str| classify(status, body.as_bytes()).map(|r| r.kind);
        let r = classify(403, CAPTCHA.as_bytes()).unwrap();
        assert_eq!(r.kind, RefusalKind::Captcha);
        assert_eq!(
            r.tracking_url.as_deref(),
            Some(
                "https://redsky.target.com/captcha?trackingId=1770e73d-7427-4bf5-8d98-85faa8913619"
            )
        );
        // PerimeterX as described in issue 20 (no recording with a source).
        let px = r#"{"appId":"PXGWPp4wUS","blockScript":"/PXGWPp4wUS/captcha/captcha.js?a=c","jsClientSrc":"/PXGWPp4wUS/init.js"}"#;
        assert_eq!(kind(435, px), Some(RefusalKind::PerimeterX));
        assert_eq!(kind(403, px), Some(RefusalKind::PerimeterX));
        let page = "<html><head><script>window._pxAppId = 'PXGWPp4wUS';</script></head><body><p>Press &amp; Hold</p></body></html>";
        assert_eq!(
            kind(200, page),
            Some(RefusalKind::PerimeterX),
            "even with 200"
        );
        assert_eq!(
            kind(403, "<p>Press & Hold to confirm you are a human</p>"),
            Some(RefusalKind::PerimeterX)
        );
        assert_eq!(kind(403, ""), Some(RefusalKind::Forbidden));
        assert_eq!(kind(429, ""), Some(RefusalKind::RateLimited));
        assert_eq!(
            kind(503, "<html>down</html>"),
            Some(RefusalKind::ServerError)
        );
        assert_eq!(
            kind(400, r#"{"errors":[{"message":"bad key"}]}"#),
            Some(RefusalKind::BadRequest)
        );
        assert_eq!(kind(404, ""), Some(RefusalKind::UnknownProduct));
        assert_eq!(kind(410, ""), Some(RefusalKind::EndpointGone));
        assert_eq!(kind(200, "<html>hello</html>"), Some(RefusalKind::NotJson));
        assert_eq!(kind(200, HIERARCHY_IN), None);
        let r = classify(400, br#"{"errors":[{"message":"bad key"}]}"#).unwrap();
        assert!(
            r.to_string().contains("bad_request") && r.to_string().contains("bad key"),
            "{r}"
        );
        // "No product found" with 200 on a single-product endpoint.
        let body =
            r#"{"errors":[{"message":"No product found with tcin 123"}],"data":{"product":null}}"#;
        let e = parse_product(body.as_bytes(), &t("123"), None).unwrap_err();
        assert!(
            matches!(&e, SourceError::Refused(r) if r.kind == RefusalKind::UnknownProduct),
            "{e}"
        );
        assert!(parse_product(b"{}", &t("123"), None).is_err());
    }

    #[test]
    fn request_urls_carry_the_configured_parameters_and_nothing_more() {
        let mut s = TargetSettings::plain(
            Url::parse("http://127.0.0.1:9/prefix/").unwrap(),
            Endpoint::Hierarchy,
        );
        s.store_id = Some("2272".into());
        s.zip = Some("20147".into());
        s.state = Some("VA".into());
        s.latitude = Some("39.030".into());
        s.longitude = Some("-77.490".into());
        s.visitor_id = "019F10125B580200B6A99C7E39A2FA39".into();
        s.params = vec![
            ("channel".into(), "APP".into()),
            ("paid_membership".into(), "false".into()),
        ];
        let src = TargetSource::new(s).unwrap();
        let url = src.url_for(&t("13356914"));
        assert_eq!(url.path(), format!("/prefix/{HIERARCHY_PATH}"));
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (k, v) in [
            ("key", "k"),
            ("tcin", "13356914"),
            ("is_bot", "false"),
            ("store_id", "2272"),
            ("required_store_id", "2272"),
            ("scheduled_delivery_store_id", "2272"),
            ("zip", "20147"),
            ("state", "VA"),
            ("latitude", "39.030"),
            ("longitude", "-77.490"),
            ("visitor_id", "019F10125B580200B6A99C7E39A2FA39"),
            ("page", "/p/A-13356914"),
            ("channel", "APP"),
            ("paid_membership", "false"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        assert_eq!(q.iter().filter(|(n, _)| n == "channel").count(), 1);
        let p = src.price_url_for(&t("1"));
        assert_eq!(p.path(), format!("/prefix/{PDP_CLIENT_PATH}"));
        let s = TargetSettings::plain(Url::parse("http://h/").unwrap(), Endpoint::Summary);
        let url = TargetSource::new(s).unwrap().url_for(&t("5"));
        assert!(url.path().ends_with(SUMMARY_PATH));
        assert!(url.query_pairs().any(|(k, v)| k == "tcins" && v == "5"));
    }

    type PathAndTcin = (String, String);

    /// Serves canned answers by path and tcin; records request headers.
    #[derive(Clone, Default)]
    struct Canned {
        answers: Arc<Mutex<HashMap<PathAndTcin, (u16, String)>>>,
        seen: Arc<Mutex<Vec<(String, reqwest::header::HeaderMap)>>>,
        /// When each request arrived (tokio's clock).
        at: Arc<Mutex<Vec<Instant>>>,
    }

    impl Canned {
        fn set(&self, path: &str, tcin: &str, status: u16, body: &str) {
            self.answers
                .lock()
                .unwrap()
                .insert((format!("/{path}"), tcin.into()), (status, body.into()));
        }
        fn count(&self, path: &str) -> usize {
            let p = format!("/{path}");
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(x, _)| *x == p)
                .count()
        }
    }

    async fn serve(c: Canned) -> Url {
        use axum::{
            Router,
            extract::{Query, Request},
        };
        let app = Router::new().fallback(
            move |Query(q): Query<HashMap<String, String>>, req: Request| {
                let c = c.clone();
                async move {
                    let path = req.uri().path().to_owned();
                    c.at.lock().unwrap().push(Instant::now());
                    c.seen
                        .lock()
                        .unwrap()
                        .push((path.clone(), req.headers().clone()));
                    let tcin = q
                        .get("tcin")
                        .or_else(|| q.get("tcins"))
                        .cloned()
                        .unwrap_or_default();
                    let (status, body) = c
                        .answers
                        .lock()
                        .unwrap()
                        .get(&(path, tcin))
                        .cloned()
                        .unwrap_or((404, String::new()));
                    let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                    *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                    resp.headers_mut()
                        .insert("retry-after", "7".parse().unwrap());
                    resp
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}")).unwrap()
    }

    fn spec(tcin: &str, max_cents: Option<u64>) -> ProductSpec {
        let mut p = ProductSpec::plain(t(tcin));
        p.max_price = max_cents.map(Price::from_cents);
        p
    }

    #[tokio::test]
    async fn over_http_with_the_price_from_pdp_client_cached() {
        let c = Canned::default();
        c.set(
            HIERARCHY_PATH,
            "1011209279",
            200,
            &HIERARCHY_IN.replace("13356914", "1011209279"),
        );
        c.set(PDP_CLIENT_PATH, "1011209279", 200, PDP_CLIENT);
        c.set(HIERARCHY_PATH, "2", 403, CAPTCHA);
        c.set(HIERARCHY_PATH, "3", 429, "");
        let base = serve(c.clone()).await;
        let mut s = TargetSettings::plain(base, Endpoint::Hierarchy);
        s.headers = vec![(
            HeaderName::from_static("origin"),
            HeaderValue::from_static("https://www.target.com"),
        )];
        s.cookie = Some(HeaderValue::from_static("visitorId=X"));
        let src = TargetSource::new(s).unwrap();
        // No max_price: no price request.
        let got = src.check(&spec("1011209279", None)).await.unwrap();
        assert_eq!(
            got,
            Sighting {
                in_stock: true,
                price: None,
                variant: None,
            }
        );
        assert_eq!(c.count(PDP_CLIENT_PATH), 0);
        // With one: the price, then from the cache.
        for _ in 0..3 {
            let got = src.check(&spec("1011209279", Some(2_000))).await.unwrap();
            assert_eq!(got.price, Some(Price::from_cents(1_799)));
        }
        assert_eq!(c.count(PDP_CLIENT_PATH), 1, "cached");
        let e = src.check(&spec("2", None)).await.unwrap_err();
        let r = e.refusal().unwrap();
        assert_eq!(r.kind, RefusalKind::Captcha);
        assert!(r.tracking_url.is_some());
        let e = src.check(&spec("3", None)).await.unwrap_err();
        assert_eq!(
            e.refusal().unwrap().retry_after,
            Some(Duration::from_secs(7))
        );
        let e = src.check(&spec("4", None)).await.unwrap_err();
        assert_eq!(e.refusal().unwrap().kind, RefusalKind::UnknownProduct);
        // What was sent: a browser's user agent, the configured headers and
        // cookies, never the watcher header (this is not the simulator).
        let seen = c.seen.lock().unwrap();
        let h = &seen[0].1;
        assert_eq!(h["user-agent"], DEFAULT_USER_AGENT);
        assert_eq!(h["origin"], "https://www.target.com");
        assert_eq!(h["cookie"], "visitorId=X");
        assert!(seen.iter().all(|(_, h)| h.get(WATCHER_HEADER).is_none()));
    }

    #[tokio::test]
    async fn the_simulator_alone_gets_the_watcher_header() {
        let c = Canned::default();
        c.set(
            FULFILLMENT_PATH,
            "1",
            200,
            &HIERARCHY_OOS.replace("1011209279", "1"),
        );
        let base = serve(c.clone()).await;
        let mut s = TargetSettings::plain(base, Endpoint::Fulfillment);
        s.simulator = true;
        let src = TargetSource::new(s).unwrap();
        assert!(!src.check(&spec("1", None)).await.unwrap().in_stock);
        assert_eq!(c.seen.lock().unwrap()[0].1[WATCHER_HEADER], "w-test");
    }

    #[tokio::test(start_paused = true)]
    async fn a_price_older_than_max_age_is_unknown() {
        let c = Canned::default();
        c.set(SUMMARY_PATH, "1011209279", 200, &format!(
            r#"{{"data":{{"product_summaries":[{}]}}}}"#,
            serde_json::json!({"tcin": "1011209279", "fulfillment": {"shipping_options": {"availability_status": "IN_STOCK"}}})
        ));
        c.set(PDP_CLIENT_PATH, "1011209279", 200, PDP_CLIENT);
        let base = serve(c.clone()).await;
        let mut s = TargetSettings::plain(base, Endpoint::Summary);
        s.price_max_age = Duration::from_secs(60);
        let src = TargetSource::new(s).unwrap();
        let p = spec("1011209279", Some(5_000));
        assert_eq!(
            src.check(&p).await.unwrap().price,
            Some(Price::from_cents(1_799))
        );
        // The price endpoint breaks: the cached price serves until max age.
        c.set(PDP_CLIENT_PATH, "1011209279", 404, "");
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(
            src.check(&p).await.unwrap().price,
            Some(Price::from_cents(1_799))
        );
        assert_eq!(c.count(PDP_CLIENT_PATH), 2, "asked again after max_age / 2");
        tokio::time::advance(Duration::from_secs(25)).await;
        let s = src.check(&p).await.unwrap();
        assert!(s.in_stock);
        assert_eq!(s.price, None, "too old: unknown, never bought");
    }

    #[tokio::test]
    async fn a_product_coming_into_stock_gets_a_fresh_price() {
        let c = Canned::default();
        let oos = HIERARCHY_OOS.to_owned();
        let ins = HIERARCHY_IN.replace("13356914", "1011209279");
        c.set(HIERARCHY_PATH, "1011209279", 200, &oos);
        c.set(PDP_CLIENT_PATH, "1011209279", 200, PDP_CLIENT);
        let base = serve(c.clone()).await;
        let src = TargetSource::new(TargetSettings::plain(base, Endpoint::Hierarchy)).unwrap();
        let p = spec("1011209279", Some(2_000));
        let s = src.check(&p).await.unwrap();
        assert_eq!(
            (s.in_stock, s.price),
            (false, Some(Price::from_cents(1_799)))
        );
        // The drop: in stock, and dearer.
        c.set(HIERARCHY_PATH, "1011209279", 200, &ins);
        c.set(
            PDP_CLIENT_PATH,
            "1011209279",
            200,
            &PDP_CLIENT.replace("17.99", "24.99"),
        );
        let s = src.check(&p).await.unwrap();
        assert_eq!(
            (s.in_stock, s.price),
            (true, Some(Price::from_cents(2_499)))
        );
        // The price endpoint fails at the next drop: unknown, not the old one.
        c.set(HIERARCHY_PATH, "1011209279", 200, &oos);
        src.check(&p).await.unwrap();
        c.set(HIERARCHY_PATH, "1011209279", 200, &ins);
        c.set(PDP_CLIENT_PATH, "1011209279", 500, "");
        let e = src.check(&p).await.unwrap_err();
        assert_eq!(e.refusal().unwrap().kind, RefusalKind::ServerError);
        c.set(PDP_CLIENT_PATH, "1011209279", 404, "");
        let s = src.check(&p).await.unwrap();
        assert_eq!((s.in_stock, s.price), (true, None));
    }

    fn summaries(items: &[(&str, &str, Option<f64>)], errors: &[&str]) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(tcin, status, price)| {
                let mut v = serde_json::json!({
                    "tcin": tcin,
                    "fulfillment": {"shipping_options": {"availability_status": status}}
                });
                if let Some(p) = price {
                    v["price"] = serde_json::json!({"current_retail": p});
                }
                v
            })
            .collect();
        let errors: Vec<Value> = errors
            .iter()
            .map(|m| serde_json::json!({"message": m}))
            .collect();
        serde_json::json!({"data": {"product_summaries": items}, "errors": errors}).to_string()
    }

    #[tokio::test]
    async fn summary_asks_every_product_in_one_request_and_answers_each() {
        let c = Canned::default();
        c.set(
            SUMMARY_PATH,
            "1,2,3",
            200,
            &summaries(
                &[
                    ("3", "OUT_OF_STOCK", Some(5.0)),
                    ("1", "IN_STOCK", Some(4.29)),
                ],
                &["No product found with tcin 2"],
            ),
        );
        c.set(SUMMARY_PATH, "4,5", 403, CAPTCHA);
        let base = serve(c.clone()).await;
        let src = TargetSource::new(TargetSettings::plain(base, Endpoint::Summary)).unwrap();
        assert_eq!(src.batch_size(), SUMMARY_BATCH);
        let products = [spec("1", Some(1_000)), spec("2", None), spec("3", None)];
        let answers = src.check_many(&products).await.unwrap();
        assert_eq!(c.count(SUMMARY_PATH), 1, "one request");
        assert_eq!(c.count(PDP_CLIENT_PATH), 0, "the price came with it");
        assert_eq!(
            answers[0].as_ref().unwrap(),
            &Sighting {
                in_stock: true,
                price: Some(Price::from_cents(429)),
                variant: None,
            },
            "matched by tcin, not by place"
        );
        assert_eq!(
            answers[1].as_ref().unwrap_err().kind_str(),
            "unknown_product",
            "that product's error alone"
        );
        assert!(!answers[2].as_ref().unwrap().in_stock);
        // A block of the request is the whole call's error.
        let e = src
            .check_many(&[spec("4", None), spec("5", None)])
            .await
            .unwrap_err();
        assert_eq!(e.refusal().unwrap().kind, RefusalKind::Captcha);
        // The request names every product.
        let url = src.url_for_many(&[t("1"), t("2")]);
        assert!(url.query_pairs().any(|(k, v)| k == "tcins" && v == "1,2"));
    }

    #[tokio::test(start_paused = true)]
    async fn stock_and_price_requests_share_the_host_budget() {
        let c = Canned::default();
        for tcin in ["1011209279", "2"] {
            c.set(
                HIERARCHY_PATH,
                tcin,
                200,
                &HIERARCHY_IN.replace("13356914", tcin),
            );
            c.set(PDP_CLIENT_PATH, tcin, 200, PDP_CLIENT);
        }
        let base = serve(c.clone()).await;
        let mut s = TargetSettings::plain(base, Endpoint::Hierarchy);
        s.max_rps = Some(0.5);
        let src = TargetSource::new(s).unwrap();
        // Each product needs its stock and its price: four requests.
        let a = src.check(&spec("1011209279", Some(2_000))).await.unwrap();
        assert_eq!(a.price, Some(Price::from_cents(1_799)));
        // (The recorded price is about another tcin: unknown, still asked.)
        src.check(&spec("2", Some(2_000))).await.unwrap();
        let at = c.at.lock().unwrap().clone();
        assert_eq!(at.len(), 4);
        for w in at.windows(2) {
            assert!(
                w[1].duration_since(w[0]) >= Duration::from_secs(2),
                "one request every 2 s: {at:?}"
            );
        }
        // Unlimited (any host but Target's by default): no wait at all.
        let c = Canned::default();
        c.set(HIERARCHY_PATH, "1011209279", 200, HIERARCHY_OOS);
        let base = serve(c.clone()).await;
        let src = TargetSource::new(TargetSettings::plain(base, Endpoint::Hierarchy)).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            src.check(&spec("1011209279", None)).await.unwrap();
        }
        assert!(Instant::now().duration_since(t0) < Duration::from_secs(1));
    }
}
