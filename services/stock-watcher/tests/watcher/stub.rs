//! A tiny store for the tests: serves Target's fulfillment format (at the
//! legacy and the hierarchy endpoint, in the shape of the recorded answers
//! in `tests/data/target/`) for the products it is told about, can answer a
//! fault (a status and a body, such as the recorded captcha 403) for a
//! while, and records every checkout POST (including when the watcher
//! dropped one).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use restock_testkit::eventually;
use serde_json::{Value, json};

/// What `POST /checkout` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutMode {
    /// Answers 200 purchased after this long.
    Purchase(Duration),
    /// Never answers.
    Hang,
}

/// One checkout request as the stub saw it.
#[derive(Debug, Clone)]
pub struct CheckoutRecord {
    pub body: Value,
    pub received_at: Instant,
    /// When the request ended: answered, or dropped by the watcher.
    pub ended_at: Option<Instant>,
    pub dropped: bool,
}

impl CheckoutRecord {
    pub fn tcin(&self) -> &str {
        self.body["tcin"].as_str().unwrap_or("")
    }
    pub fn token(&self) -> u64 {
        self.body["fencing_token"].as_u64().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Inner {
    stock: HashMap<String, bool>,
    prices: HashMap<String, f64>,
    fault: Option<(u16, String, Instant)>,
    mode: CheckoutMode,
    checkouts: Vec<CheckoutRecord>,
    /// Fulfillment requests: (when, answered status).
    polls: Vec<(Instant, u16)>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StoreStub {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl StoreStub {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            stock: HashMap::new(),
            prices: HashMap::new(),
            fault: None,
            mode: CheckoutMode::Purchase(Duration::from_millis(50)),
            checkouts: Vec::new(),
            polls: Vec::new(),
        }));
        let app = Router::new()
            .route(
                "/redsky_aggregations/v1/web/product_fulfillment_v1",
                get(fulfillment),
            )
            .route(
                "/redsky_aggregations/v1/web/product_fulfillment_and_variation_hierarchy_v1",
                get(fulfillment),
            )
            .route("/checkout", post(checkout))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn checkout_url(&self) -> String {
        format!("http://{}/checkout", self.addr)
    }

    pub fn set_stock(&self, tcin: &str, in_stock: bool) {
        self.inner
            .lock()
            .unwrap()
            .stock
            .insert(tcin.into(), in_stock);
    }

    pub fn set_price(&self, tcin: &str, dollars: f64) {
        self.inner
            .lock()
            .unwrap()
            .prices
            .insert(tcin.into(), dollars);
    }

    /// Answers `status` to every fulfillment request for `how_long`.
    pub fn set_fault(&self, status: u16, how_long: Duration) {
        self.set_fault_body(status, "slow down", how_long);
    }

    /// Answers `status` with `body` to every fulfillment request for
    /// `how_long`.
    pub fn set_fault_body(&self, status: u16, body: &str, how_long: Duration) {
        self.inner.lock().unwrap().fault =
            Some((status, body.to_owned(), Instant::now() + how_long));
    }

    pub fn set_checkout_mode(&self, mode: CheckoutMode) {
        self.inner.lock().unwrap().mode = mode;
    }

    pub fn checkouts(&self) -> Vec<CheckoutRecord> {
        self.inner.lock().unwrap().checkouts.clone()
    }

    pub fn polls(&self) -> Vec<(Instant, u16)> {
        self.inner.lock().unwrap().polls.clone()
    }

    /// Waits (at most 10 s) for the first checkout POST and returns it.
    pub async fn first_checkout(&self) -> CheckoutRecord {
        eventually("a checkout POST", Duration::from_secs(10), || async {
            self.checkouts().into_iter().next()
        })
        .await
    }

    /// Waits (at most `limit`) until a checkout of `tcin` has been POSTed.
    pub async fn wait_checkout_of(&self, tcin: &str, what: &str, limit: Duration) {
        eventually(what, limit, || async {
            self.checkouts()
                .iter()
                .any(|c| c.tcin() == tcin)
                .then_some(())
        })
        .await
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn fulfillment(
    State(inner): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut st = inner.lock().unwrap();
    let now = Instant::now();
    if let Some((status, body, until)) = st.fault.clone()
        && now < until
    {
        st.polls.push((now, status));
        return (StatusCode::from_u16(status).unwrap(), body).into_response();
    }
    st.polls.push((now, 200));
    let tcin = q.get("tcin").cloned().unwrap_or_default();
    let in_stock = st.stock.get(&tcin).copied().unwrap_or(false);
    let status = if in_stock { "IN_STOCK" } else { "OUT_OF_STOCK" };
    let mut product = json!({
        "__typename": "Product",
        "tcin": tcin,
        "fulfillment": {
            "product_id": tcin,
            "is_out_of_stock_in_all_store_locations": !in_stock,
            "shipping_options": {
                "availability_status": status,
                "loyalty_availability_status": status,
                "available_to_promise_quantity": if in_stock { 5.0 } else { 0.0 },
                "services": []
            },
            "store_options": [{
                "location_id": "1375",
                "order_pickup": { "availability_status": "UNAVAILABLE" },
                "in_store_only": { "availability_status": "NOT_SOLD_IN_STORE" }
            }],
            "scheduled_delivery": { "availability_status": "UNAVAILABLE" }
        }
    });
    if let Some(p) = st.prices.get(&tcin) {
        product["price"] = json!({ "current_retail": p });
    }
    Json(json!({ "data": { "product": product } })).into_response()
}

/// Marks the record ended (dropped unless answered) when the handler ends.
struct EndGuard {
    inner: Shared,
    index: usize,
    answered: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut st.checkouts[self.index];
        r.ended_at = Some(Instant::now());
        r.dropped = !self.answered;
    }
}

async fn checkout(State(inner): State<Shared>, Json(body): Json<Value>) -> Response {
    let (index, mode) = {
        let mut st = inner.lock().unwrap();
        st.checkouts.push(CheckoutRecord {
            body,
            received_at: Instant::now(),
            ended_at: None,
            dropped: false,
        });
        (st.checkouts.len() - 1, st.mode)
    };
    let mut guard = EndGuard {
        inner: inner.clone(),
        index,
        answered: false,
    };
    match mode {
        CheckoutMode::Hang => std::future::pending::<()>().await,
        CheckoutMode::Purchase(d) => tokio::time::sleep(d).await,
    }
    guard.answered = true;
    Json(json!({ "result": "purchased", "order_id": format!("order-{index}") })).into_response()
}
