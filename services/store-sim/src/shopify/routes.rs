//! The storefront routes and their admin routes (merged into
//! [`crate::http::router`]; the route table is there).
//!
//! A request names its shop by path prefix (`/shops/<shop>/products.json`)
//! or, on the unprefixed paths (`/products.json`), by its `Host` header
//! (`cards.example` or `cards.example:8080`, any case), the way a real
//! storefront is told apart. A shop the product config does not name is a
//! 404 HTML page.
//!
//! Every request for a served shop that covers products is logged in the
//! poll log, one poll per product the answer covers (or would have: blocks
//! and faults included), under the product's config id
//! (`shopify:<shop>/<variant or handle>`) and the endpoint name
//! (`shopify_products`, `shopify_collection_products`,
//! `shopify_product_json`, `shopify_product_js`). A page past the end and an
//! unknown handle cover nothing.

use std::collections::HashMap;

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{
        HeaderMap, HeaderName, HeaderValue, StatusCode, Uri,
        header::{CONTENT_TYPE, HOST, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, info};

use super::{
    block::{self as sblock, ShopifyBlockAnswer},
    json::{self as sjson, ShopProductNow},
    store::{Shop, ShopProduct},
};
use crate::{
    http::{ApiError, JsonBody, cut},
    polls::WATCHER_HEADER,
    sim::{FaultView, ShopifyGate, Simulator},
};

/// Products per page when the request does not say (Shopify's default).
pub const DEFAULT_LIMIT: usize = 30;
/// Most products per page (Shopify's maximum; more is read as this).
pub const MAX_LIMIT: usize = 250;

/// A storefront endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShopifyEndpoint {
    /// `products.json`
    Products,
    /// `collections/<handle>/products.json`
    CollectionProducts,
    /// `products/<handle>.json`
    ProductJson,
    /// `products/<handle>.js`
    ProductJs,
}

impl ShopifyEndpoint {
    pub const ALL: [ShopifyEndpoint; 4] = [
        ShopifyEndpoint::Products,
        ShopifyEndpoint::CollectionProducts,
        ShopifyEndpoint::ProductJson,
        ShopifyEndpoint::ProductJs,
    ];

    /// The `endpoint` of polls and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Products => "shopify_products",
            Self::CollectionProducts => "shopify_collection_products",
            Self::ProductJson => "shopify_product_json",
            Self::ProductJs => "shopify_product_js",
        }
    }
}

/// The storefront routes and `/admin/shopify/*`.
pub fn routes() -> Router<Simulator> {
    Router::new()
        .route("/shops/{shop}/products.json", get(prefixed_products))
        .route(
            "/shops/{shop}/collections/{collection}/products.json",
            get(prefixed_collection),
        )
        .route("/shops/{shop}/products/{file}", get(prefixed_product))
        .route("/shops/{shop}/password", get(prefixed_password))
        .route("/products.json", get(host_products))
        .route(
            "/collections/{collection}/products.json",
            get(host_collection),
        )
        .route("/products/{file}", get(host_product))
        .route("/password", get(host_password))
        .route(
            "/admin/shopify/block",
            get(get_blocks).put(set_block).delete(clear_blocks),
        )
        .route("/admin/shopify/shops", get(list_shops))
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Which shop a request names, and how.
struct Asked {
    /// As named (path segment, or `Host` without its port); `None`: the
    /// request named none.
    shop: Option<String>,
    /// Named by the `/shops/<shop>` prefix (else by `Host`).
    prefixed: bool,
}

impl Asked {
    fn prefixed(shop: String) -> Self {
        Self {
            shop: Some(shop),
            prefixed: true,
        }
    }

    fn by_host(headers: &HeaderMap, uri: &Uri) -> Self {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.host().map(str::to_owned));
        Self {
            shop: host.as_deref().and_then(host_name).map(str::to_owned),
            prefixed: false,
        }
    }

    /// Where the password page of `shop` (served, so a plain host name) is
    /// on the same kind of path.
    fn password_path(&self, shop: &Shop) -> String {
        if self.prefixed {
            format!("/shops/{}/password", shop.shop)
        } else {
            "/password".to_owned()
        }
    }
}

/// The host name of a `Host` header: its port dropped; `None` for an IPv6
/// literal or an empty one.
pub fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    (!name.is_empty()).then_some(name)
}

/// What the request asks for.
enum Ask {
    Page { limit: usize, page: usize },
    Product { handle: String },
}

/// `limit` and `page` as Shopify reads them: `limit` 1 to 250 (more is
/// 250; absent, empty, 0 or not a number: 30), `page` from 1 (absent, 0 or
/// not a number: 1). Other parameters are ignored.
pub fn paging(params: &HashMap<String, String>) -> (usize, usize) {
    let num = |k: &str| {
        params
            .get(k)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    let limit = num("limit").map_or(DEFAULT_LIMIT, |n| n.min(MAX_LIMIT as u64) as usize);
    let page = num("page").map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX));
    (limit, page)
}

fn page_ask(params: Params) -> Ask {
    let params = params.map(|Query(q)| q).unwrap_or_default();
    let (limit, page) = paging(&params);
    Ask::Page { limit, page }
}

/// `<handle>.json` or `<handle>.js`.
fn product_ask(file: &str) -> Option<(ShopifyEndpoint, Ask)> {
    let (endpoint, handle) = if let Some(h) = file.strip_suffix(".json") {
        (ShopifyEndpoint::ProductJson, h)
    } else if let Some(h) = file.strip_suffix(".js") {
        (ShopifyEndpoint::ProductJs, h)
    } else {
        return None;
    };
    Some((
        endpoint,
        Ask::Product {
            handle: handle.to_ascii_lowercase(),
        },
    ))
}

async fn prefixed_products(
    State(sim): State<Simulator>,
    Path(shop): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    let ask = page_ask(params);
    storefront(
        &sim,
        ShopifyEndpoint::Products,
        Asked::prefixed(shop),
        &headers,
        ask,
    )
}

async fn host_products(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    uri: Uri,
    params: Params,
) -> Response {
    let ask = page_ask(params);
    let asked = Asked::by_host(&headers, &uri);
    storefront(&sim, ShopifyEndpoint::Products, asked, &headers, ask)
}

async fn prefixed_collection(
    State(sim): State<Simulator>,
    Path((shop, _collection)): Path<(String, String)>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    let ask = page_ask(params);
    storefront(
        &sim,
        ShopifyEndpoint::CollectionProducts,
        Asked::prefixed(shop),
        &headers,
        ask,
    )
}

async fn host_collection(
    State(sim): State<Simulator>,
    Path(_collection): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    params: Params,
) -> Response {
    let ask = page_ask(params);
    let asked = Asked::by_host(&headers, &uri);
    storefront(
        &sim,
        ShopifyEndpoint::CollectionProducts,
        asked,
        &headers,
        ask,
    )
}

async fn prefixed_product(
    State(sim): State<Simulator>,
    Path((shop, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    match product_ask(&file) {
        Some((endpoint, ask)) => storefront(&sim, endpoint, Asked::prefixed(shop), &headers, ask),
        None => not_found(&format!("no page /products/{file}")),
    }
}

async fn host_product(
    State(sim): State<Simulator>,
    Path(file): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    match product_ask(&file) {
        Some((endpoint, ask)) => storefront(
            &sim,
            endpoint,
            Asked::by_host(&headers, &uri),
            &headers,
            ask,
        ),
        None => not_found(&format!("no page /products/{file}")),
    }
}

async fn prefixed_password(State(sim): State<Simulator>, Path(shop): Path<String>) -> Response {
    password(&sim, Asked::prefixed(shop))
}

async fn host_password(State(sim): State<Simulator>, headers: HeaderMap, uri: Uri) -> Response {
    password(&sim, Asked::by_host(&headers, &uri))
}

/// The password page a `password` block redirects to; served whether or
/// not a block is in force, and never blocked itself.
fn password(sim: &Simulator, asked: Asked) -> Response {
    let Some(shop) = served(sim, &asked) else {
        return unknown_shop(&asked);
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        sblock::password_page(&shop.shop, &asked.password_path(shop)),
    )
        .into_response()
}

fn served<'a>(sim: &'a Simulator, asked: &Asked) -> Option<&'a Shop> {
    asked
        .shop
        .as_deref()
        .and_then(|s| sim.storefronts().shop(s))
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        sblock::not_found_page(what),
    )
        .into_response()
}

fn unknown_shop(asked: &Asked) -> Response {
    match &asked.shop {
        Some(s) => not_found(&format!("no shop {s} here")),
        None => not_found("the request names no shop (no Host header)"),
    }
}

/// Logs the polls, answers, and counts the answer.
fn storefront(
    sim: &Simulator,
    endpoint: ShopifyEndpoint,
    asked: Asked,
    headers: &HeaderMap,
    ask: Ask,
) -> Response {
    let resp = storefront_answer(sim, endpoint, &asked, headers, ask);
    sim.metrics()
        .shopify_answered(endpoint, resp.status().as_u16());
    resp
}

fn storefront_answer(
    sim: &Simulator,
    endpoint: ShopifyEndpoint,
    asked: &Asked,
    headers: &HeaderMap,
    ask: Ask,
) -> Response {
    let Some(shop) = served(sim, asked) else {
        return unknown_shop(asked);
    };
    let covered: Vec<&ShopProduct> = match &ask {
        Ask::Page { limit, page } => shop
            .products
            .iter()
            .skip((page - 1).saturating_mul(*limit))
            .take(*limit)
            .collect(),
        Ask::Product { handle } => shop.by_handle(handle).into_iter().collect(),
    };
    // Polls first, whatever the answer, so their time is the arrival.
    let watcher = headers
        .get(WATCHER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let watcher = cut(watcher);
    for p in &covered {
        sim.record_poll(endpoint.name(), p.entry.as_str(), &watcher);
    }
    match sim.shopify_gate(&shop.shop) {
        ShopifyGate::Open => {}
        ShopifyGate::Blocked(b) => {
            sim.metrics().shopify_blocked(b.kind, endpoint);
            debug!(
                endpoint = endpoint.name(),
                shop = %shop.shop,
                kind = b.kind.as_str(),
                status = b.status,
                "storefront answering with a block"
            );
            return block_response(sblock::answer(&b, &shop.shop, &asked.password_path(shop)));
        }
        ShopifyGate::Fault(f) => return fault_response(&f),
    }
    if let Ask::Product { handle } = &ask
        && covered.is_empty()
    {
        return not_found(&format!("no product {handle} in {}", shop.shop));
    }
    let ids: Vec<_> = covered.iter().map(|p| &p.entry).collect();
    let created = sim.clock().to_unix_ms(0);
    let now: Vec<ShopProductNow<'_>> = covered
        .iter()
        .zip(sim.stock_of(&ids))
        .filter_map(|(p, e)| {
            let e = e?;
            Some(ShopProductNow {
                product: p,
                in_stock: e.in_stock,
                price: e.price,
                created_unix_ms: created,
                changed_unix_ms: e.changed_at_ms,
            })
        })
        .collect();
    debug!(
        endpoint = endpoint.name(),
        shop = %shop.shop,
        products = now.len(),
        "storefront answer"
    );
    let body = match (endpoint, now.first()) {
        (ShopifyEndpoint::Products | ShopifyEndpoint::CollectionProducts, _) => {
            sjson::products_json(&now)
        }
        (ShopifyEndpoint::ProductJson, Some(p)) => sjson::product_json(p),
        (ShopifyEndpoint::ProductJs, Some(p)) => sjson::product_js(p),
        // Every configured entry has a stock state; never reached.
        (_, None) => return not_found("no such product"),
    };
    Json(body).into_response()
}

fn block_response(a: ShopifyBlockAnswer) -> Response {
    let code = StatusCode::from_u16(a.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = (code, a.body).into_response();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    for (name, value) in a.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    resp
}

/// An injected fault, in JSON: the simulator's `error` and Shopify's
/// `errors`.
fn fault_response(f: &FaultView) -> Response {
    let code = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let message = format!("simulated fault: HTTP {}", f.status);
    let mut resp = (code, Json(json!({ "error": message, "errors": message }))).into_response();
    if let Some(s) = f.retry_after_s {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

// ---- admin ----

async fn get_blocks(State(sim): State<Simulator>) -> Response {
    Json(json!({ "blocks": sim.shopify_blocks() })).into_response()
}

async fn set_block(
    State(sim): State<Simulator>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let spec = sblock::parse_request(&body).map_err(ApiError::BadRequest)?;
    if let Some(shop) = &spec.shop
        && sim.storefronts().shop(shop).is_none()
    {
        return Err(ApiError::BadRequest(format!(
            "shop: {shop:?} is not a shop of the product config; shops: {}",
            shop_list(&sim)
        )));
    }
    let (kind, shop) = (spec.kind, spec.shop.clone());
    let view = sim.set_shopify_block(spec);
    info!(
        kind = kind.as_str(),
        shop = shop.as_deref().unwrap_or("*"),
        status = view.status,
        remaining_ms = view.remaining_ms,
        "storefront blocked"
    );
    Ok(Json(json!({ "block": view })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    shop: Option<String>,
}

async fn clear_blocks(
    State(sim): State<Simulator>,
    query: Result<Query<ClearQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::BadRequest(format!("bad query string (shop=<host>): {}", e.body_text()))
    })?;
    let shop = q
        .shop
        .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    let cleared = sim.clear_shopify_blocks(shop.as_deref());
    info!(
        shop = shop.as_deref().unwrap_or("*"),
        cleared = cleared.len(),
        "storefront blocks cleared"
    );
    Ok(Json(json!({ "blocks": sim.shopify_blocks(), "cleared": cleared })).into_response())
}

fn shop_list(sim: &Simulator) -> String {
    let shops: Vec<&str> = sim.storefronts().shops().map(|s| s.shop.as_str()).collect();
    if shops.is_empty() {
        "none".to_owned()
    } else {
        shops.join(", ")
    }
}

async fn list_shops(State(sim): State<Simulator>) -> Response {
    let shops: Vec<&Shop> = sim.storefronts().shops().collect();
    Json(json!({ "shops": shops })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_name("cards.example:8080"), Some("cards.example"));
        assert_eq!(host_name("Cards.Example"), Some("Cards.Example"));
        assert_eq!(host_name("[::1]:8080"), None);
        assert_eq!(host_name(""), None);
        assert_eq!(host_name("127.0.0.1:80"), Some("127.0.0.1"));
    }

    #[test]
    fn paging_follows_shopifys_rules() {
        let q = |pairs: &[(&str, &str)]| {
            paging(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        assert_eq!(q(&[]), (30, 1));
        assert_eq!(q(&[("limit", "250"), ("page", "3")]), (250, 3));
        assert_eq!(q(&[("limit", "1000")]), (250, 1));
        assert_eq!(q(&[("limit", "0"), ("page", "0")]), (30, 1));
        assert_eq!(q(&[("limit", "x"), ("page", "-2")]), (30, 1));
        assert_eq!(q(&[("limit", " 7 ")]), (7, 1));
    }

    #[test]
    fn only_json_and_js_are_product_files() {
        assert!(matches!(
            product_ask("ETB.json"),
            Some((ShopifyEndpoint::ProductJson, Ask::Product { handle })) if handle == "etb"
        ));
        assert!(matches!(
            product_ask("etb.js"),
            Some((ShopifyEndpoint::ProductJs, _))
        ));
        assert!(product_ask("etb").is_none());
        assert!(product_ask("etb.oembed").is_none());
    }
}
