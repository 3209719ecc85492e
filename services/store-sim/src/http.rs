//! The HTTP API (axum). Handlers take the request apart, validate it, call
//! the [`Simulator`], and map refusals to status codes in one place
//! ([`ApiError`]). Every error answer is JSON: `{"error": "..."}`.
//!
//! | Route | Does |
//! |---|---|
//! | `GET /redsky_aggregations/v1/web/product_fulfillment_v1?key=&tcin=[&store_id=]` | a product's fulfillment, no price (see [`crate::redsky`]) |
//! | `GET /redsky_aggregations/v1/web/product_fulfillment_and_variation_hierarchy_v1?key=&tcin=[&store_id=]` | the same, as product pages load it |
//! | `GET /redsky_aggregations/v1/web/product_summary_with_fulfillment_v1?key=&tcins=a,b[&skip_price_promo=true]` | many products' fulfillment and prices |
//! | `GET /redsky_aggregations/v1/web/pdp_client_v1?key=&tcin=[&pricing_store_id=]` | a product's details and price |
//! | `GET /shops/{shop}/products.json?limit=&page=` | a Shopify shop's products, a page at a time (see [`crate::shopify`]) |
//! | `GET /shops/{shop}/collections/{collection}/products.json?limit=&page=` | the same: every collection holds every product of the shop |
//! | `GET /shops/{shop}/products/{handle}.json`, `….js` | one product: prices as strings (`.json`) or cents with availability (`.js`) |
//! | `GET /shops/{shop}/password` | the shop's password page (where a `password` block redirects) |
//! | `GET /products.json`, `/collections/{collection}/products.json`, `/products/{handle}.json`, `.js`, `/password` | the same, for the shop named by the `Host` header (`cards.example[:port]`) |
//! | `POST /checkout` | a checkout, fenced and recorded (Target and Shopify products, one ledger) |
//! | `GET /admin/stock[?id=]` | every product's stock and price, or one |
//! | `GET`, `PUT /admin/stock/{id}`, `PUT /admin/stock?id={id}` | one product's stock and price; a Shopify id's `/` percent-encoded (`shopify:cards.example%2F40000000001`) or not |
//! | `GET`, `PUT`, `DELETE /admin/faults` | inject a status on the retailers' endpoints (all, or `"retailer"`'s) |
//! | `GET`, `PUT`, `DELETE /admin/block` | make the RedSky endpoints answer like Target's bot wall (see [`crate::block`]) |
//! | `GET`, `PUT`, `DELETE[?shop=] /admin/shopify/block` | make one shop's storefront (or every shop's) answer 429, 430, a Cloudflare challenge or the password page (see [`crate::shopify::block`]) |
//! | `GET /admin/shopify/shops` | the shops served, their products, handles and variant ids |
//! | `GET`, `PUT /admin/checkout` | checkout delay and failure |
//! | `GET`, `DELETE /admin/orders` | every attempt and the violations |
//! | `GET /admin/polls[?tcin=&endpoint=&since_ms=]`, `DELETE /admin/polls` | every stock request: endpoint, product, watcher, time (see [`crate::polls`]; Shopify requests too) |
//! | `GET /healthz` | 200 when serving |
//! | `GET /metrics` | Prometheus metrics (see [`crate::metrics`]) |

use std::{collections::HashSet, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, Path, Query, Request, State, rejection::QueryRejection},
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CONTENT_TYPE, HOST, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{
    block,
    fulfillment::Context,
    ledger::{Attempt, Begin, CheckoutResult, Order},
    polls::{PollFilter, WATCHER_HEADER},
    redsky::{self, Endpoint},
    shopify,
    sim::{Gate, ProductNow, Simulator},
    stock::StockError,
};
use restock_domain::{Price, ProductId, Retailer};
use restock_runtime::{auth::AuthPolicy, http::metrics_router, metrics::Registry};

/// The legacy fulfillment endpoint's path.
pub const FULFILLMENT_PATH: &str = Endpoint::Fulfillment.path();
/// The fulfillment and variation hierarchy endpoint's path.
pub const HIERARCHY_PATH: &str = Endpoint::Hierarchy.path();
/// The batch summary endpoint's path.
pub const SUMMARY_PATH: &str = Endpoint::Summary.path();
/// The product details (price) endpoint's path.
pub const PDP_CLIENT_PATH: &str = Endpoint::PdpClient.path();
/// Longest `lease_id` / `watcher_id` accepted in a checkout.
pub const MAX_ID_LEN: usize = 256;

/// Every route, over one simulator, and `GET /metrics` from its metrics.
pub fn router(sim: Simulator) -> Router {
    // One registry per simulator, so in-process tests see their own.
    let mut registry = Registry::default();
    sim.metrics().register(&mut registry);
    Router::new()
        .route(FULFILLMENT_PATH, get(fulfillment_handler))
        .route(HIERARCHY_PATH, get(hierarchy_handler))
        .route(SUMMARY_PATH, get(summary_handler))
        .route(PDP_CLIENT_PATH, get(pdp_client_handler))
        .route("/checkout", post(checkout))
        .route("/admin/stock", get(list_stock).put(set_stock_by_query))
        // A catch-all, so a Shopify id's `/` may be sent as is or as %2F.
        .route("/admin/stock/{*id}", put(set_stock).get(get_stock))
        .route(
            "/admin/faults",
            get(get_fault).put(set_fault).delete(clear_fault),
        )
        .route(
            "/admin/block",
            get(get_block).put(set_block).delete(clear_block),
        )
        .route("/admin/checkout", get(get_checkout).put(set_checkout))
        .route("/admin/orders", get(list_orders).delete(clear_orders))
        .route("/admin/polls", get(list_polls).delete(clear_polls))
        .route("/healthz", get(healthz))
        .merge(shopify::routes::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(sim)
        // The simulator has no token: its admin routes are open too.
        .merge(metrics_router(
            Arc::new(registry),
            AuthPolicy::new(None, Vec::new()),
        ))
}

/// A refusal, as a status and a JSON `{"error": ...}` body.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path".to_owned(),
            ),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// A JSON request body. Unlike axum's `Json` it does not insist on a
/// `Content-Type` header (curl users forget it), and every failure is a 400
/// with the parser's message (with line and column).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "the request body is empty; send a JSON object".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

fn parse_tcin(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn parse_price(dollars: Option<f64>) -> Result<Option<Price>, ApiError> {
    dollars
        .map(Price::from_dollars)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("price: {e}")))
}

// ---- the retailer's endpoints ----

/// The query parameters the RedSky endpoints read; Target's many others
/// (`channel`, `page`, `visitor_id`, `zip`, …) are accepted and ignored.
#[derive(Debug, Deserialize)]
struct RedskyQuery {
    key: Option<String>,
    /// Single-product endpoints.
    tcin: Option<String>,
    /// The summary: comma-separated.
    tcins: Option<String>,
    store_id: Option<String>,
    pricing_store_id: Option<String>,
    /// The summary: `true` leaves prices out.
    skip_price_promo: Option<String>,
}

type RedskyRequest = Result<Query<RedskyQuery>, QueryRejection>;

/// An error the way the retailer words them: `errors[].message`, plus the
/// `error` field every answer of this simulator has.
fn retailer_error(status: StatusCode, message: String) -> Response {
    let body = json!({
        "error": message,
        "errors": [{ "message": message }],
        "data": { "product": null },
    });
    (status, Json(body)).into_response()
}

async fn fulfillment_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    query: RedskyRequest,
) -> Response {
    redsky(&sim, Endpoint::Fulfillment, &headers, query)
}

async fn hierarchy_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    query: RedskyRequest,
) -> Response {
    redsky(&sim, Endpoint::Hierarchy, &headers, query)
}

async fn summary_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    query: RedskyRequest,
) -> Response {
    redsky(&sim, Endpoint::Summary, &headers, query)
}

async fn pdp_client_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    query: RedskyRequest,
) -> Response {
    redsky(&sim, Endpoint::PdpClient, &headers, query)
}

/// The first `MAX_ID_LEN` characters of `s`.
pub(crate) fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_ID_LEN) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// The products a request names, as it spells them, each once: its `tcin`,
/// or each piece of the summary's `tcins`.
fn named_tcins(endpoint: Endpoint, q: &RedskyQuery) -> Vec<&str> {
    let mut named: Vec<&str> = Vec::new();
    if endpoint.is_batch() {
        let mut seen = HashSet::new();
        for t in q.tcins.as_deref().unwrap_or("").split(',').map(str::trim) {
            if !t.is_empty() && seen.insert(t) {
                named.push(t);
            }
        }
    } else if let Some(t) = q.tcin.as_deref().filter(|t| !t.trim().is_empty()) {
        named.push(t);
    }
    named
}

/// Records the polls, answers, and counts the answer by endpoint and
/// status.
fn redsky(
    sim: &Simulator,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: RedskyRequest,
) -> Response {
    // Every product a request names is polled, whatever the answer (a block
    // or an injected fault included): first, so its time is the request's
    // arrival.
    if let Ok(Query(q)) = &query {
        let watcher = headers
            .get(WATCHER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let watcher = cut(watcher);
        for tcin in named_tcins(endpoint, q) {
            sim.record_poll(endpoint.name(), &cut(tcin), &watcher);
        }
    }
    let resp = redsky_answer(sim, endpoint, headers, query);
    let code = resp.status().as_u16();
    sim.metrics().redsky_answered(endpoint, code);
    if endpoint == Endpoint::Fulfillment {
        sim.metrics().fulfillment_answered(code);
    }
    resp
}

fn redsky_answer(
    sim: &Simulator,
    endpoint: Endpoint,
    headers: &HeaderMap,
    query: RedskyRequest,
) -> Response {
    // A block or an injected fault answers before anything is looked at,
    // the way a bot wall or rate limiter in front of the real API does.
    match sim.gate() {
        Gate::Open => {}
        Gate::Blocked(b) => {
            sim.metrics().blocked(b.kind, endpoint);
            let host = block::safe_host(headers.get(HOST).and_then(|h| h.to_str().ok()));
            debug!(
                endpoint = endpoint.name(),
                kind = b.kind.as_str(),
                status = b.status,
                "answering with a block"
            );
            return block_response(block::answer(b.kind, b.status, host, b.retry_after_now()));
        }
        Gate::Fault(f) => return fault_response(f.status, f.retry_after_s),
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return retailer_error(
                StatusCode::BAD_REQUEST,
                format!("bad query string: {}", e.body_text()),
            );
        }
    };
    if q.key.as_deref().unwrap_or("").trim().is_empty() {
        return retailer_error(
            StatusCode::BAD_REQUEST,
            "missing required query parameter: key".into(),
        );
    }
    let ctx = Context::new(q.store_id.as_deref(), sim.clock().unix_ms());
    match endpoint {
        Endpoint::Summary => summary_answer(sim, &q, &ctx),
        Endpoint::Fulfillment => single_answer(sim, endpoint, &q, |p| {
            redsky::product_fulfillment_v1(p, &ctx)
        }),
        Endpoint::Hierarchy => single_answer(sim, endpoint, &q, |p| redsky::hierarchy_v1(p, &ctx)),
        Endpoint::PdpClient => single_answer(sim, endpoint, &q, |p| {
            redsky::pdp_client_v1(p, &ctx, q.pricing_store_id.as_deref())
        }),
    }
}

/// A single-product endpoint (`tcin=`): `body` of the product, or the
/// refusal.
fn single_answer(
    sim: &Simulator,
    endpoint: Endpoint,
    q: &RedskyQuery,
    body: impl FnOnce(&ProductNow) -> Value,
) -> Response {
    let raw = q.tcin.as_deref().unwrap_or("");
    if raw.trim().is_empty() {
        return retailer_error(
            StatusCode::BAD_REQUEST,
            "missing required query parameter: tcin".into(),
        );
    }
    let tcin = match target_id(raw) {
        Ok(t) => t,
        Err(e) => return retailer_error(StatusCode::BAD_REQUEST, e),
    };
    let Some(p) = sim.product_now(&tcin) else {
        return retailer_error(
            StatusCode::NOT_FOUND,
            format!("No product found with tcin {tcin}"),
        );
    };
    debug!(
        endpoint = endpoint.name(),
        tcin = %tcin,
        in_stock = p.in_stock,
        price = %p.price,
        "redsky answer"
    );
    Json(body(&p)).into_response()
}

/// A TCIN as RedSky takes it: bare, as Target writes it (another
/// retailer's id, or `target:` before it, is not one).
fn target_id(raw: &str) -> Result<ProductId, String> {
    let id = ProductId::parse(raw).map_err(|e| e.to_string())?;
    if id.tcin() != Some(raw) {
        return Err(format!("{raw:?} is not a TCIN"));
    }
    Ok(id)
}

/// `product_summary_with_fulfillment_v1?tcins=a,b,…`: every known product
/// named, in the order named, each once.
fn summary_answer(sim: &Simulator, q: &RedskyQuery, ctx: &Context) -> Response {
    let named = named_tcins(Endpoint::Summary, q);
    if named.is_empty() {
        return retailer_error(
            StatusCode::BAD_REQUEST,
            "missing required query parameter: tcins".into(),
        );
    }
    // `named` has each spelling once, and a tcin has one spelling.
    let mut tcins: Vec<ProductId> = Vec::with_capacity(named.len());
    for raw in named {
        match target_id(raw) {
            Ok(t) => tcins.push(t),
            Err(e) => return retailer_error(StatusCode::BAD_REQUEST, format!("tcins: {e}")),
        }
    }
    let products: Vec<ProductNow> = sim.products_now(&tcins).into_iter().flatten().collect();
    let with_price = !q
        .skip_price_promo
        .as_deref()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("true"));
    debug!(
        asked = tcins.len(),
        known = products.len(),
        with_price,
        "summary answer"
    );
    Json(redsky::summary_v1(&products, ctx, with_price)).into_response()
}

fn block_response(a: block::BlockAnswer) -> Response {
    let code = StatusCode::from_u16(a.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = (code, a.body).into_response();
    let h = resp.headers_mut();
    match a.content_type {
        Some(ct) => {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        None => {
            h.remove(CONTENT_TYPE);
        }
    }
    if let Some(s) = a.retry_after_s {
        h.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

fn fault_response(status: u16, retry_after_s: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    debug!(status, "answering with an injected fault");
    let mut resp = retailer_error(code, format!("simulated fault: HTTP {status}"));
    if let Some(s) = retry_after_s {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

// ---- checkout ----

/// Other fields (the watcher sends `retailer`, and `shop`, `shop_url` and
/// `variant` for Shopify products) are accepted and ignored: `tcin`, a product id of any
/// retailer, says what is bought.
#[derive(Debug, Deserialize)]
struct CheckoutRequest {
    tcin: String,
    fencing_token: u64,
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    watcher_id: String,
    #[serde(default)]
    test_mode: bool,
}

/// Finishes the checkout as `aborted` if the handler is dropped before it
/// finishes (the client closed the connection): the checkout stops there,
/// and its interval is still part of the record.
struct InFlightGuard {
    sim: Simulator,
    id: u64,
    finished: bool,
}

impl InFlightGuard {
    fn finish(mut self, result: CheckoutResult, message: String) -> Option<Order> {
        self.finished = true;
        self.sim.finish_checkout(self.id, result, message)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            warn!(
                order_id = self.id,
                "client went away before the checkout finished; recording it as aborted"
            );
            self.sim.finish_checkout(
                self.id,
                CheckoutResult::Aborted,
                "the client closed the connection before the checkout finished".into(),
            );
        }
    }
}

fn order_response(order: &Order) -> Response {
    let status = match order.result {
        CheckoutResult::Purchased => StatusCode::OK,
        CheckoutResult::StaleToken | CheckoutResult::OutOfStock => StatusCode::CONFLICT,
        CheckoutResult::UnknownProduct => StatusCode::NOT_FOUND,
        CheckoutResult::Failed | CheckoutResult::Aborted => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(order)).into_response()
}

async fn checkout(
    State(sim): State<Simulator>,
    JsonBody(req): JsonBody<CheckoutRequest>,
) -> Result<Response, ApiError> {
    let tcin = parse_tcin(&req.tcin)?;
    for (name, v) in [("lease_id", &req.lease_id), ("watcher_id", &req.watcher_id)] {
        if v.len() > MAX_ID_LEN {
            return Err(ApiError::BadRequest(format!(
                "{name} is {} bytes long; at most {MAX_ID_LEN}",
                v.len()
            )));
        }
    }
    let attempt = Attempt {
        tcin: req.tcin,
        fencing_token: req.fencing_token,
        lease_id: req.lease_id,
        watcher_id: req.watcher_id,
        test_mode: req.test_mode,
    };
    let (begin, settings) = sim.begin_checkout(attempt, &tcin);
    let started = match begin {
        Begin::Refused(order) => {
            info!(
                order_id = order.id,
                tcin = %order.tcin,
                fencing_token = order.fencing_token,
                watcher_id = %order.watcher_id,
                lease_id = %order.lease_id,
                result = order.result.as_str(),
                reason = %order.message,
                "checkout refused"
            );
            return Ok(order_response(&order));
        }
        Begin::Accepted(f) => f,
    };
    info!(
        order_id = started.id,
        tcin = %started.tcin,
        fencing_token = started.fencing_token,
        watcher_id = %started.watcher_id,
        lease_id = %started.lease_id,
        test_mode = started.test_mode,
        delay_ms = settings.delay.as_millis() as u64,
        "checkout started"
    );
    let guard = InFlightGuard {
        sim: sim.clone(),
        id: started.id,
        finished: false,
    };
    tokio::time::sleep(settings.delay).await;
    let (result, message) = if settings.fail {
        (
            CheckoutResult::Failed,
            "checkout failed (failure injected with PUT /admin/checkout)".to_owned(),
        )
    } else if started.test_mode {
        (
            CheckoutResult::Purchased,
            "purchased, then voided (test mode)".to_owned(),
        )
    } else {
        (CheckoutResult::Purchased, "purchased".to_owned())
    };
    match guard.finish(result, message) {
        Some(order) => Ok(order_response(&order)),
        // Only possible if someone else finished it, which nothing does.
        None => Err(ApiError::NotFound(format!(
            "checkout #{} is no longer in flight",
            started.id
        ))),
    }
}

// ---- admin: stock ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStockRequest {
    #[serde(default)]
    in_stock: Option<bool>,
    /// Dollars.
    #[serde(default)]
    price: Option<f64>,
}

/// `?id=` of `/admin/stock` (`?tcin=` works too).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StockQuery {
    #[serde(alias = "tcin")]
    id: Option<String>,
}

fn stock_query(
    query: Result<Query<StockQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "bad query string (id=<product id>): {}",
            e.body_text()
        ))
    })?;
    Ok(q.id.filter(|i| !i.trim().is_empty()))
}

async fn list_stock(
    State(sim): State<Simulator>,
    query: Result<Query<StockQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    match stock_query(query)? {
        Some(id) => one_stock(&sim, &id),
        None => Ok(Json(json!({ "products": sim.stock() })).into_response()),
    }
}

fn one_stock(sim: &Simulator, raw: &str) -> Result<Response, ApiError> {
    let tcin = parse_tcin(raw)?;
    sim.stock()
        .into_iter()
        .find(|e| e.tcin == tcin)
        .map(|e| Json(e).into_response())
        .ok_or_else(|| ApiError::NotFound(format!("no product with tcin {tcin}")))
}

async fn get_stock(
    State(sim): State<Simulator>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    one_stock(&sim, &raw)
}

async fn set_stock_by_query(
    State(sim): State<Simulator>,
    query: Result<Query<StockQuery>, QueryRejection>,
    JsonBody(req): JsonBody<SetStockRequest>,
) -> Result<Response, ApiError> {
    let Some(id) = stock_query(query)? else {
        return Err(ApiError::BadRequest(
            "name the product: PUT /admin/stock/{id} or PUT /admin/stock?id={id}".into(),
        ));
    };
    change_stock(&sim, &id, req)
}

async fn set_stock(
    State(sim): State<Simulator>,
    Path(raw): Path<String>,
    JsonBody(req): JsonBody<SetStockRequest>,
) -> Result<Response, ApiError> {
    change_stock(&sim, &raw, req)
}

fn change_stock(sim: &Simulator, raw: &str, req: SetStockRequest) -> Result<Response, ApiError> {
    let tcin = parse_tcin(raw)?;
    if req.in_stock.is_none() && req.price.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: send {\"in_stock\": true|false} and/or {\"price\": dollars}".into(),
        ));
    }
    let price = parse_price(req.price)?;
    match sim.set_stock(&tcin, req.in_stock, price) {
        Ok(e) => {
            info!(tcin = %tcin, in_stock = e.in_stock, price = %e.price, "stock set by hand");
            Ok(Json(e).into_response())
        }
        Err(StockError::UnknownProduct(t)) => {
            Err(ApiError::NotFound(format!("no product with tcin {t}")))
        }
    }
}

// ---- admin: faults ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFaultRequest {
    status: u16,
    /// How long; absent means until `DELETE /admin/faults`.
    #[serde(default)]
    for_ms: Option<u64>,
    #[serde(default)]
    retry_after_s: Option<u64>,
    /// `"target"` or `"shopify"`: only that retailer's endpoints; absent:
    /// every retailer's.
    #[serde(default)]
    retailer: Option<String>,
}

async fn get_fault(State(sim): State<Simulator>) -> Response {
    Json(json!({ "fault": sim.fault() })).into_response()
}

async fn set_fault(
    State(sim): State<Simulator>,
    JsonBody(req): JsonBody<SetFaultRequest>,
) -> Result<Response, ApiError> {
    if !(400..=599).contains(&req.status) {
        return Err(ApiError::BadRequest(format!(
            "status {} is not an error status (400 to 599; e.g. 403, 429, 435, 500, 503)",
            req.status
        )));
    }
    let retailer = req
        .retailer
        .as_deref()
        .map(Retailer::parse)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("retailer: {e}")))?;
    let view = sim.set_fault_for(
        req.status,
        req.for_ms.map(Duration::from_millis),
        req.retry_after_s,
        retailer,
    );
    info!(
        status = req.status,
        for_ms = req.for_ms,
        retailer = view.retailer.unwrap_or("all"),
        "fault injected"
    );
    Ok(Json(json!({ "fault": view })).into_response())
}

async fn clear_fault(State(sim): State<Simulator>) -> Response {
    let was = sim.clear_fault();
    info!(cleared = was.is_some(), "faults cleared");
    Json(json!({ "fault": null, "cleared": was })).into_response()
}

// ---- admin: blocks ----

async fn get_block(State(sim): State<Simulator>) -> Response {
    Json(json!({ "block": sim.block() })).into_response()
}

async fn set_block(
    State(sim): State<Simulator>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let spec = block::parse_request(&body).map_err(ApiError::BadRequest)?;
    let view = sim.set_block(spec);
    info!(
        kind = spec.kind.as_str(),
        status = spec.status,
        for_ms = spec.duration.map(|d| d.as_millis() as u64),
        retry_after_s = spec.retry_after_s,
        "RedSky endpoints blocked"
    );
    Ok(Json(json!({ "block": view })).into_response())
}

async fn clear_block(State(sim): State<Simulator>) -> Response {
    let was = sim.clear_block();
    info!(cleared = was.map(|b| b.kind.as_str()), "block cleared");
    Json(json!({ "block": null, "cleared": was })).into_response()
}

// ---- admin: checkout settings ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetCheckoutRequest {
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    fail: Option<bool>,
}

async fn get_checkout(State(sim): State<Simulator>) -> Response {
    Json(sim.checkout_settings()).into_response()
}

async fn set_checkout(
    State(sim): State<Simulator>,
    JsonBody(req): JsonBody<SetCheckoutRequest>,
) -> Response {
    let s = sim.update_checkout(req.delay_ms.map(Duration::from_millis), req.fail);
    info!(
        delay_ms = s.delay.as_millis() as u64,
        fail = s.fail,
        "checkout settings changed"
    );
    Json(s).into_response()
}

// ---- admin: orders ----

async fn list_orders(State(sim): State<Simulator>) -> Response {
    Json(sim.orders()).into_response()
}

async fn clear_orders(State(sim): State<Simulator>) -> Response {
    sim.clear_orders();
    info!("orders cleared");
    Json(json!({ "cleared": true })).into_response()
}

// ---- admin: polls ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollsQuery {
    tcin: Option<String>,
    endpoint: Option<String>,
    since_ms: Option<f64>,
}

async fn list_polls(
    State(sim): State<Simulator>,
    query: Result<Query<PollsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::BadRequest(format!(
            "bad query string (tcin=T, endpoint=E, since_ms=milliseconds): {}",
            e.body_text()
        ))
    })?;
    if let Some(s) = q.since_ms
        && !s.is_finite()
    {
        return Err(ApiError::BadRequest(format!(
            "since_ms must be a number of milliseconds, not {s}"
        )));
    }
    let filter = PollFilter {
        tcin: q.tcin.filter(|t| !t.is_empty()),
        endpoint: q.endpoint.filter(|e| !e.is_empty()),
        since_ms: q.since_ms,
    };
    Ok(Json(sim.polls(&filter)).into_response())
}

async fn clear_polls(State(sim): State<Simulator>) -> Response {
    let n = sim.clear_polls();
    info!(cleared = n, "polls cleared");
    Json(json!({ "cleared": n })).into_response()
}

// ---- misc ----

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn no_route(req: Request) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
