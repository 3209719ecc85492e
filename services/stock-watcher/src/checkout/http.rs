//! The HTTP checkout: `POST {url}` with
//! `{"tcin", "fencing_token", "lease_id", "watcher_id", "test_mode",
//! "retailer"}` (`tcin` carries the product id of any retailer), and for a
//! Shopify product `"shop"`, `"shop_url"` and `"variant"` (when known).
//! A 2xx answer with `"result": "purchased"` is a purchase; `"out_of_stock"`
//! (with any status) is out of stock; everything else (a `stale_token`
//! refusal, a 5xx, a transport error, the time limit) is a failure whose
//! detail says what came back. Cancelling drops the request, which closes
//! the connection.

use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use restock_domain::Price;

use super::{CheckoutJob, CheckoutOutcome, CheckoutResult};
use crate::source::{MAX_ANSWER_BYTES, read_capped};

#[derive(Debug, Serialize)]
struct CheckoutRequest<'a> {
    tcin: &'a str,
    fencing_token: u64,
    lease_id: &'a str,
    watcher_id: &'a str,
    test_mode: bool,
    retailer: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    shop: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shop_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<u64>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct HttpCheckout {
    url: Url,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpCheckout {
    pub fn new(url: Url, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("restock-stock-watcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            url,
            timeout,
            client,
        })
    }

    pub async fn run(&self, job: &CheckoutJob, cancel: &CancellationToken) -> CheckoutResult {
        let body = CheckoutRequest {
            tcin: job.tcin.as_str(),
            fencing_token: job.fencing_token.get(),
            lease_id: job.lease_id.as_str(),
            watcher_id: job.watcher_id.as_str(),
            test_mode: job.test_mode,
            retailer: job.tcin.retailer().as_str(),
            shop: job.shop.as_ref().map(|s| s.shop.as_str()),
            shop_url: job.shop.as_ref().map(|s| s.shop_url.as_str()),
            variant: job.shop.as_ref().and_then(|s| s.variant),
        };
        let call = async {
            let resp = self
                .client
                .post(self.url.clone())
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            let (body, cut_off) = read_capped(resp, MAX_ANSWER_BYTES).await?;
            Ok::<_, reqwest::Error>((status, body, cut_off))
        };
        let answer = tokio::select! {
            biased;
            a = call => a,
            () = cancel.cancelled() => {
                return CheckoutResult::new(CheckoutOutcome::Aborted, "checkout cancelled: the HTTP request was dropped");
            }
        };
        match answer {
            Ok((status, body, true)) => CheckoutResult::new(
                CheckoutOutcome::Failed,
                format!(
                    "checkout {} answered HTTP {status} with more than {MAX_ANSWER_BYTES} bytes; not read further: {}",
                    self.url,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
            ),
            Ok((status, body, false)) => judge(status.as_u16(), &String::from_utf8_lossy(&body)),
            Err(e) if e.is_timeout() => CheckoutResult::new(
                CheckoutOutcome::Failed,
                format!("checkout {} timed out after {:?}", self.url, self.timeout),
            ),
            Err(e) => CheckoutResult::new(
                CheckoutOutcome::Failed,
                format!(
                    "checkout {} failed: {}",
                    self.url,
                    restock_runtime::error::chain_text(&e)
                ),
            ),
        }
    }
}

/// Maps the checkout's answer to an outcome.
pub fn judge(status: u16, body: &str) -> CheckoutResult {
    let doc: Option<Value> = serde_json::from_str(body).ok();
    let result = doc
        .as_ref()
        .and_then(|d| d.get("result"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let summary = format!("HTTP {status}: {}", body.trim());
    match result {
        "purchased" if (200..300).contains(&status) => {
            // The price it was bought at, in dollars, when the answer says
            // (the simulator's order carries it): what the budget counts.
            let paid = doc
                .as_ref()
                .and_then(|d| d.get("price"))
                .and_then(Value::as_f64)
                .and_then(|d| Price::from_dollars(d).ok());
            CheckoutResult::new(CheckoutOutcome::Purchased, summary).paid(paid)
        }
        "out_of_stock" => CheckoutResult::new(CheckoutOutcome::OutOfStock, summary),
        _ => CheckoutResult::new(
            CheckoutOutcome::Failed,
            format!("checkout answered {summary}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};

    use super::*;
    use restock_domain::{FencingToken, LeaseId, ProductId, WatcherId};

    #[test]
    fn a_purchase_says_what_it_paid_when_the_answer_has_a_price() {
        let r = judge(
            200,
            r#"{"result":"purchased","order_id":"o-1","price":29.99}"#,
        );
        assert_eq!(r.outcome, CheckoutOutcome::Purchased);
        assert_eq!(r.paid, Some(Price::from_cents(2999)));
        assert_eq!(judge(200, r#"{"result":"purchased"}"#).paid, None);
        assert_eq!(
            judge(200, r#"{"result":"purchased","price":-3}"#).paid,
            None
        );
        assert_eq!(
            judge(409, r#"{"result":"out_of_stock","price":5}"#).paid,
            None
        );
    }

    #[test]
    fn answers_map_to_outcomes() {
        let o = |s, b| judge(s, b).outcome;
        assert_eq!(
            o(200, r#"{"result":"purchased","order_id":"o-1"}"#),
            CheckoutOutcome::Purchased
        );
        assert_eq!(
            o(409, r#"{"result":"out_of_stock"}"#),
            CheckoutOutcome::OutOfStock
        );
        assert_eq!(
            o(409, r#"{"result":"stale_token"}"#),
            CheckoutOutcome::Failed
        );
        assert_eq!(o(500, "oops"), CheckoutOutcome::Failed);
        assert_eq!(o(500, r#"{"result":"purchased"}"#), CheckoutOutcome::Failed);
        assert_eq!(o(200, "not json"), CheckoutOutcome::Failed);
        let d = judge(409, r#"{"result":"stale_token","highest":9}"#).detail;
        assert!(d.contains("409") && d.contains("stale_token"), "{d}");
    }

    fn job(test_mode: bool) -> CheckoutJob {
        CheckoutJob {
            tcin: ProductId::parse("100").unwrap(),
            lease_id: LeaseId::parse("lease-7-x").unwrap(),
            fencing_token: FencingToken(7),
            watcher_id: WatcherId::parse("w1").unwrap(),
            test_mode,
            shop: None,
        }
    }

    type Seen = Arc<Mutex<Vec<Value>>>;

    async fn stub(hang: bool) -> (Url, Seen) {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route(
                "/checkout",
                post(
                    |State((seen, hang)): State<(Seen, bool)>, Json(body): Json<Value>| async move {
                        seen.lock().unwrap().push(body);
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        (
                            StatusCode::OK,
                            Json(serde_json::json!({"result": "purchased", "order_id": "o-1"})),
                        )
                    },
                ),
            )
            .with_state((seen.clone(), hang));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (
            Url::parse(&format!("http://{addr}/checkout")).unwrap(),
            seen,
        )
    }

    #[tokio::test]
    async fn posts_the_lease_and_reads_the_answer() {
        let (url, seen) = stub(false).await;
        let c = HttpCheckout::new(url, Duration::from_secs(5)).unwrap();
        let r = c.run(&job(true), &CancellationToken::new()).await;
        assert_eq!(r.outcome, CheckoutOutcome::Purchased, "{r:?}");
        let body = seen.lock().unwrap()[0].clone();
        assert_eq!(
            body,
            serde_json::json!({"tcin": "100", "fencing_token": 7, "lease_id": "lease-7-x", "watcher_id": "w1", "test_mode": true, "retailer": "target"})
        );
    }

    #[tokio::test]
    async fn an_oversize_answer_is_not_read_whole() {
        let app = Router::new().route(
            "/checkout",
            post(|| async { " ".repeat(3 * MAX_ANSWER_BYTES) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!("http://{addr}/checkout")).unwrap();
        let c = HttpCheckout::new(url, Duration::from_secs(5)).unwrap();
        let r = c.run(&job(false), &CancellationToken::new()).await;
        assert_eq!(r.outcome, CheckoutOutcome::Failed);
        assert!(r.detail.contains("not read further"), "{r:?}");
    }

    #[tokio::test]
    async fn cancel_and_timeout() {
        let (url, _) = stub(true).await;
        let c = HttpCheckout::new(url.clone(), Duration::from_secs(30)).unwrap();
        let cancel = CancellationToken::new();
        let started = std::time::Instant::now();
        let j = job(false);
        let run = c.run(&j, &cancel);
        let canceller = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        };
        let (r, ()) = tokio::join!(run, canceller);
        assert_eq!(r.outcome, CheckoutOutcome::Aborted);
        assert!(started.elapsed() < Duration::from_secs(2));

        let c = HttpCheckout::new(url, Duration::from_millis(300)).unwrap();
        let r = c.run(&job(false), &CancellationToken::new()).await;
        assert_eq!(r.outcome, CheckoutOutcome::Failed);
        assert!(r.detail.contains("timed out"), "{r:?}");

        let c = HttpCheckout::new(
            Url::parse("http://127.0.0.1:9/checkout").unwrap(),
            Duration::from_secs(2),
        )
        .unwrap();
        let r = c.run(&job(false), &CancellationToken::new()).await;
        assert_eq!(r.outcome, CheckoutOutcome::Failed);
    }
}
