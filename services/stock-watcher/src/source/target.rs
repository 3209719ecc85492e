//! Target's product fulfillment API, as public restock tools use it:
//! `GET {base}/redsky_aggregations/v1/web/product_fulfillment_v1?key=..&tcin=..`
//! answering `{"data": {"product": {"fulfillment": {...}}}}`.
//!
//! A product is in stock when any `availability_status` under
//! `data.product.fulfillment` (shipping, store pickup, in-store, scheduled
//! delivery) is `IN_STOCK`, `LIMITED_STOCK` or `PRE_ORDER_SELLABLE`. The price,
//! when present, is `data.product.price.current_retail` in dollars.

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url, header::RETRY_AFTER};
use serde_json::Value;

use super::{MAX_ANSWER_BYTES, Sighting, SourceError, StockSource, read_capped};
use crate::{
    config::UrlError,
    metrics::{SourceCode, WatcherMetrics},
};
use restock_domain::{Price, Tcin};

/// The endpoint's path under the base URL.
pub const FULFILLMENT_PATH: &str = "redsky_aggregations/v1/web/product_fulfillment_v1";

/// Statuses that mean "purchasable now".
pub const IN_STOCK_STATUSES: [&str; 3] = ["IN_STOCK", "LIMITED_STOCK", "PRE_ORDER_SELLABLE"];

/// Longest piece of an error body kept for logs and status.
const BODY_EXCERPT: usize = 200;

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
    pub api_key: String,
    pub store_id: Option<String>,
    pub zip: Option<String>,
    pub request_timeout: Duration,
    /// Sent as [`WATCHER_HEADER`] on every request.
    pub watcher_id: String,
}

/// Names the watcher on every stock request, so the store simulator's poll
/// log (`GET /admin/polls`) can tell the watchers' polls apart. Harmless for
/// the real retailer: it ignores headers it does not know, and the value is
/// the watcher's own id, nothing secret.
pub const WATCHER_HEADER: &str = "x-restock-watcher";

/// Asks Target's (or the simulator's) fulfillment endpoint.
#[derive(Debug, Clone)]
pub struct TargetSource {
    settings: TargetSettings,
    endpoint: Url,
    client: reqwest::Client,
    /// Where answers are counted by HTTP status (`None` in unit tests).
    metrics: Option<WatcherMetrics>,
}

impl TargetSource {
    pub fn new(settings: TargetSettings) -> Result<Self, SetupError> {
        let base = settings.base_url.as_str().trim_end_matches('/');
        let endpoint = Url::parse(&format!("{base}/{FULFILLMENT_PATH}")).map_err(|source| {
            SetupError::Url {
                url: base.to_owned(),
                source,
            }
        })?;
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("restock-stock-watcher/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::Client)?;
        Ok(Self {
            settings,
            endpoint,
            client,
            metrics: None,
        })
    }

    /// Counts every answer (by HTTP status) and failed request in `metrics`.
    pub fn counting(mut self, metrics: WatcherMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, code: SourceCode) {
        if let Some(m) = &self.metrics {
            m.source_answer(code);
        }
    }

    /// The request URL for one product.
    pub fn url_for(&self, tcin: &Tcin) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("key", &self.settings.api_key)
                .append_pair("tcin", tcin.as_str())
                .append_pair("channel", "WEB")
                .append_pair("page", &format!("/p/A-{tcin}"));
            if let Some(store) = &self.settings.store_id {
                q.append_pair("store_id", store)
                    .append_pair("scheduled_delivery_store_id", store)
                    .append_pair("pricing_store_id", store);
            }
            if let Some(zip) = &self.settings.zip {
                q.append_pair("zip", zip);
            }
        }
        url
    }
}

impl StockSource for TargetSource {
    fn describe(&self) -> String {
        format!("target {}", self.settings.base_url)
    }

    async fn check(&self, tcin: &Tcin) -> Result<Sighting, SourceError> {
        let timeout = self.settings.request_timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                SourceError::Timeout(timeout)
            } else {
                SourceError::Transport(Arc::new(e))
            }
        };
        let resp = match self
            .client
            .get(self.url_for(tcin))
            .header(reqwest::header::ACCEPT, "application/json")
            .header(WATCHER_HEADER, &self.settings.watcher_id)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let e = transport(e);
                self.count(match e {
                    SourceError::Timeout(_) => SourceCode::Timeout,
                    _ => SourceCode::Transport,
                });
                return Err(e);
            }
        };
        let status = resp.status();
        // Counted as soon as the status is known: a body that breaks off
        // later was still this answer.
        self.count(SourceCode::Status(status.as_u16()));
        if is_throttle(status) {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(SourceError::Throttled {
                status: status.as_u16(),
                retry_after,
            });
        }
        let (body, cut_off) = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(transport)?;
        if !status.is_success() {
            return Err(SourceError::Http {
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        if cut_off {
            return Err(SourceError::Format(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes; not read further: {}",
                excerpt(&body)
            )));
        }
        parse_fulfillment(&body)
    }
}

/// 403, 429, 435 and every 5xx mean: slow down.
pub fn is_throttle(status: StatusCode) -> bool {
    matches!(status.as_u16(), 403 | 429 | 435) || status.is_server_error()
}

/// Reads a fulfillment answer.
pub fn parse_fulfillment(body: &[u8]) -> Result<Sighting, SourceError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| SourceError::NotJson {
        source: Arc::new(e),
        excerpt: excerpt(body),
    })?;
    let product = doc.pointer("/data/product").filter(|p| !p.is_null());
    let Some(fulfillment) = product.and_then(|p| p.get("fulfillment")) else {
        let why = doc
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|errs| errs.first())
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map_or_else(
                || "no data.product.fulfillment in the answer".to_owned(),
                |m| format!("the source reports an error: {m}"),
            );
        return Err(SourceError::Format(why));
    };
    let mut statuses = Vec::new();
    collect_statuses(fulfillment, &mut statuses);
    let in_stock = statuses.iter().any(|s| IN_STOCK_STATUSES.contains(s));
    // Not `Price::from_dollars`: its upper bound guards config typos, and a
    // price the store shows is reported whatever it is.
    let price = product
        .and_then(|p| p.pointer("/price/current_retail"))
        .and_then(Value::as_f64)
        .filter(|d| d.is_finite() && *d >= 0.0)
        .map(|dollars| Price::from_cents((dollars * 100.0).round() as u64));
    Ok(Sighting { in_stock, price })
}

/// Every `availability_status` string anywhere under `v`.
fn collect_statuses<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "availability_status" {
                    if let Some(s) = child.as_str() {
                        out.push(s);
                    }
                } else {
                    collect_statuses(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_statuses(i, out)),
        _ => {}
    }
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

    /// An answer in the shape Target's endpoint gives, trimmed of fields the
    /// watcher does not read.
    pub(crate) fn sample(shipping: &str, pickup: &str, in_store: &str, delivery: &str) -> String {
        format!(
            r#"{{
  "data": {{
    "product": {{
      "__typename": "Product",
      "tcin": "87450164",
      "notify_me_enabled": false,
      "fulfillment": {{
        "product_id": "87450164",
        "is_out_of_stock_in_all_store_locations": false,
        "shipping_options": {{
          "availability_status": "{shipping}",
          "loyalty_availability_status": "{shipping}",
          "available_to_promise_quantity": 0.0,
          "reason_code": "INVENTORY_UNAVAILABLE",
          "minimum_order_quantity": 1.0,
          "maximum_order_quantity": 2.0,
          "services": []
        }},
        "store_options": [
          {{
            "location_name": "Minneapolis Nicollet Mall",
            "location_id": "1375",
            "search_response_store_type": "PRIMARY",
            "location_available_to_promise_quantity": 0.0,
            "order_pickup": {{ "availability_status": "{pickup}" }},
            "in_store_only": {{ "availability_status": "{in_store}" }},
            "ship_to_store": {{ "availability_status": "UNAVAILABLE" }},
            "curbside": {{ "availability_status": "UNAVAILABLE" }}
          }}
        ],
        "scheduled_delivery": {{
          "availability_status": "{delivery}",
          "location_available_to_promise_quantity": 0.0
        }}
      }}
    }}
  }}
}}"#
        )
    }

    fn check(body: &str) -> Sighting {
        parse_fulfillment(body.as_bytes()).unwrap()
    }

    #[test]
    fn out_of_stock_everywhere() {
        let s = check(&sample(
            "OUT_OF_STOCK",
            "UNAVAILABLE",
            "NOT_SOLD_IN_STORE",
            "UNAVAILABLE",
        ));
        assert_eq!(
            s,
            Sighting {
                in_stock: false,
                price: None
            }
        );
    }

    #[test]
    fn any_channel_in_stock_counts() {
        let off = "UNAVAILABLE";
        for (shipping, pickup, in_store, delivery) in [
            ("IN_STOCK", off, off, off),
            (off, "LIMITED_STOCK", off, off),
            (off, off, "IN_STOCK", off),
            (off, off, off, "IN_STOCK"),
            ("PRE_ORDER_SELLABLE", off, off, off),
        ] {
            assert!(
                check(&sample(shipping, pickup, in_store, delivery)).in_stock,
                "{shipping} {pickup} {in_store} {delivery}"
            );
        }
        assert!(!check(&sample("PRE_ORDER_UNSELLABLE", off, off, off)).in_stock);
    }

    #[test]
    fn loyalty_status_alone_does_not_count() {
        let body = r#"{"data":{"product":{"fulfillment":{"shipping_options":{
            "availability_status":"OUT_OF_STOCK","loyalty_availability_status":"IN_STOCK"}}}}}"#;
        assert!(!check(body).in_stock);
    }

    #[test]
    fn price_in_cents() {
        let body = r#"{"data":{"product":{
            "price":{"current_retail":49.99,"formatted_current_price":"$49.99"},
            "fulfillment":{"shipping_options":{"availability_status":"IN_STOCK"}}}}}"#;
        assert_eq!(
            check(body),
            Sighting {
                in_stock: true,
                price: Some(Price::from_cents(4_999))
            }
        );
    }

    #[test]
    fn missing_product_is_an_error_not_out_of_stock() {
        let body =
            r#"{"errors":[{"message":"No product found with tcin 123"}],"data":{"product":null}}"#;
        let e = parse_fulfillment(body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("No product found"), "{e}");
        assert!(matches!(
            parse_fulfillment(b"<html>blocked</html>"),
            Err(SourceError::NotJson { .. })
        ));
        assert!(parse_fulfillment(b"{}").is_err());
    }

    #[test]
    fn throttle_statuses() {
        for s in [403, 429, 435, 500, 502, 503] {
            assert!(is_throttle(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 404, 410] {
            assert!(!is_throttle(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    /// Serves one canned answer per product id on the real endpoint path.
    type Canned = (
        &'static str,
        u16,
        Option<(&'static str, &'static str)>,
        String,
    );

    async fn serve(answers: Vec<Canned>) -> Url {
        use std::collections::HashMap;

        use axum::{Router, extract::Query, http::StatusCode, routing::get};
        let app = Router::new().route(
            &format!("/{FULFILLMENT_PATH}"),
            get(move |Query(q): Query<HashMap<String, String>>| {
                let answers = answers.clone();
                async move {
                    let tcin = q.get("tcin").cloned().unwrap_or_default();
                    let (_, status, header, body) = answers
                        .into_iter()
                        .find(|a| a.0 == tcin)
                        .expect("a canned answer");
                    let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    if let Some((k, v)) = header {
                        resp.headers_mut().insert(k, v.parse().unwrap());
                    }
                    resp
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}")).unwrap()
    }

    fn source(base: Url) -> TargetSource {
        TargetSource::new(TargetSettings {
            base_url: base,
            api_key: "k".into(),
            store_id: None,
            zip: None,
            request_timeout: Duration::from_secs(2),
            watcher_id: "w-test".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn over_http() {
        let off = "UNAVAILABLE";
        let base = serve(vec![
            ("1", 200, None, sample("IN_STOCK", off, off, off)),
            ("2", 200, None, sample("OUT_OF_STOCK", off, off, off)),
            ("3", 429, Some(("retry-after", "7")), "slow down".into()),
            (
                "4",
                404,
                None,
                r#"{"errors":[{"message":"not found"}]}"#.into(),
            ),
            ("5", 503, None, String::new()),
            ("6", 200, None, " ".repeat(3 * MAX_ANSWER_BYTES)),
        ])
        .await;
        let src = source(base);
        let check = |t: &str| {
            let t = Tcin::parse(t).unwrap();
            let src = &src;
            async move { src.check(&t).await }
        };
        assert!(check("1").await.unwrap().in_stock);
        assert!(!check("2").await.unwrap().in_stock);
        let e = check("3").await.unwrap_err();
        assert!(
            matches!(
                e,
                SourceError::Throttled {
                    status: 429,
                    retry_after: Some(d)
                } if d == Duration::from_secs(7)
            ),
            "{e:?}"
        );
        assert!(matches!(
            check("4").await.unwrap_err(),
            SourceError::Http { status: 404, .. }
        ));
        assert!(matches!(
            check("5").await.unwrap_err(),
            SourceError::Throttled { status: 503, .. }
        ));
        let e = check("6").await.unwrap_err();
        assert!(
            matches!(&e, SourceError::Format(m) if m.contains("larger than")),
            "an oversize answer is not read whole: {e:?}"
        );
    }

    #[tokio::test]
    async fn every_request_names_the_watcher() {
        use std::sync::{Arc, Mutex};

        use axum::{Router, http::HeaderMap, routing::get};
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let app = Router::new().route(
            &format!("/{FULFILLMENT_PATH}"),
            get({
                let seen = seen.clone();
                move |headers: HeaderMap| async move {
                    let w = headers
                        .get(WATCHER_HEADER)
                        .map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(w);
                    sample("IN_STOCK", "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let src = source(Url::parse(&format!("http://{addr}")).unwrap());
        for t in ["1", "2"] {
            assert!(src.check(&Tcin::parse(t).unwrap()).await.unwrap().in_stock);
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Some("w-test".to_owned()), Some("w-test".to_owned())]
        );
    }

    #[tokio::test]
    async fn connection_refused_is_a_transport_error() {
        let src = source(Url::parse("http://127.0.0.1:9").unwrap());
        let e = src.check(&Tcin::parse("1").unwrap()).await.unwrap_err();
        assert!(matches!(e, SourceError::Transport(_)), "{e:?}");
        // The reason is in the causes, and the chain keeps it.
        let text = restock_runtime::error::chain_text(&e);
        assert!(text.len() > e.to_string().len(), "{text}");
    }

    #[tokio::test]
    async fn answers_are_counted_by_status_and_no_answer_as_transport() {
        let off = "UNAVAILABLE";
        let base = serve(vec![
            ("1", 200, None, sample("IN_STOCK", off, off, off)),
            ("3", 429, None, "slow down".into()),
            ("4", 404, None, "{}".into()),
            ("6", 200, None, "not json".into()),
        ])
        .await;
        let metrics = WatcherMetrics::default();
        let mut registry = restock_runtime::metrics::Registry::default();
        metrics.register(&mut registry);
        let src = source(base).counting(metrics.clone());
        for t in ["1", "3", "3", "4", "6"] {
            let _ = src.check(&Tcin::parse(t).unwrap()).await;
        }
        let closed = source(Url::parse("http://127.0.0.1:9").unwrap()).counting(metrics);
        let _ = closed.check(&Tcin::parse("1").unwrap()).await;
        let text =
            restock_runtime::metrics::render(&registry, restock_runtime::metrics::Format::Text);
        for line in [
            // A 200 whose body is not JSON was still a 200 from the source.
            "restock_source_requests_total{code=\"200\"} 2\n",
            "restock_source_requests_total{code=\"429\"} 2\n",
            "restock_source_requests_total{code=\"404\"} 1\n",
            "restock_source_requests_total{code=\"transport\"} 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn request_url() {
        let src = TargetSource::new(TargetSettings {
            base_url: Url::parse("http://127.0.0.1:9/prefix/").unwrap(),
            api_key: "k".into(),
            store_id: Some("1375".into()),
            zip: Some("55403".into()),
            request_timeout: Duration::from_secs(1),
            watcher_id: "w1".into(),
        })
        .unwrap();
        let url = src.url_for(&Tcin::parse("87450164").unwrap());
        assert_eq!(
            url.path(),
            "/prefix/redsky_aggregations/v1/web/product_fulfillment_v1"
        );
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("key"), Some("k"));
        assert_eq!(get("tcin"), Some("87450164"));
        assert_eq!(get("store_id"), Some("1375"));
        assert_eq!(get("zip"), Some("55403"));
    }
}
