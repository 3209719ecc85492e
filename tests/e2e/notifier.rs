//! The notifier with real processes: the arbiter, the store simulator, the
//! watchers and `restock-notifier`, and a webhook receiver written here (an
//! axum server on 127.0.0.1:0) that records every request and can answer
//! `429 Retry-After` or `503` on demand.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use restock_proto::v1::{ProductState, event::Kind};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, ClosedPort, EtcdCluster, History,
    NotifierProcess, Process, Script, ScriptedArbiter, StatusSnapshot, StoreSimProcess,
    WatcherOptions, WatcherProcess, bin, event_kind, eventually,
    history::now_ms,
    metrics::{check_metrics, metric, scrape},
    product, products_json, spawn_arbiter_with,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// One request the receiver accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub idempotency_key: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct ReceiverState {
    accepted: Vec<Received>,
    /// Every request, accepted or not: (path, at).
    attempts: Vec<(String, Instant)>,
    /// Per path: answers to give before accepting (`429` with this many
    /// seconds of `Retry-After`).
    too_many: HashMap<String, VecDeque<u64>>,
    /// Paths answering `503`.
    down: HashSet<String>,
}

/// A webhook receiver standing in for the services.
#[derive(Debug, Clone)]
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// `json://` URL of `path` on this receiver.
    pub fn json_url(&self, path: &str) -> String {
        format!("json://{}{path}", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next `n` requests to `path` with `429 Retry-After: secs`.
    pub fn too_many(&self, path: &str, n: usize, secs: u64) {
        let mut s = self.state.lock().unwrap();
        s.too_many
            .entry(path.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(secs, n));
    }

    pub fn set_down(&self, path: &str, down: bool) {
        let mut s = self.state.lock().unwrap();
        if down {
            s.down.insert(path.to_owned());
        } else {
            s.down.remove(path);
        }
    }

    pub fn accepted(&self, path: &str) -> Vec<Received> {
        let s = self.state.lock().unwrap();
        s.accepted
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn attempts(&self, path: &str) -> Vec<Instant> {
        let s = self.state.lock().unwrap();
        s.attempts
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect()
    }

    /// The accepted alerts of `kind` at `path`.
    pub fn alerts(&self, path: &str, kind: &str) -> Vec<Value> {
        self.accepted(path)
            .into_iter()
            .map(|r| r.body)
            .filter(|b| b["kind"] == kind)
            .collect()
    }

    /// Waits until `path` has accepted an alert of `kind`; returns it.
    pub async fn wait_for(&self, path: &str, kind: &str) -> Value {
        eventually(&format!("a {kind} alert at {path}"), LONG, || async {
            self.alerts(path, kind).into_iter().next()
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let now = Instant::now();
    let mut s = state.lock().unwrap();
    s.attempts.push((path.clone(), now));
    if s.down.contains(&path) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for the test").into_response();
    }
    if let Some(secs) = s.too_many.get_mut(&path).and_then(VecDeque::pop_front) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response();
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.accepted.push(Received {
        path,
        idempotency_key: key,
        body,
        at: now,
    });
    (StatusCode::OK, "ok").into_response()
}

/// Waits until the notifier follows the arbiter's events.
async fn wait_following(n: &NotifierProcess) {
    eventually("the notifier to follow the arbiter", LONG, || async {
        n.status().await.arbiter_connected.then_some(())
    })
    .await;
}

async fn wait_state(a: &impl ArbiterEndpoint, tcin: &str, state: ProductState) {
    eventually(&format!("{tcin} {state:?}"), LONG, || async {
        (product(&a.status().await, tcin).state == state as i32).then_some(())
    })
    .await;
}

/// Every accepted alert id at `path`, checking that none came twice.
fn ids_once(r: &Receiver, path: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for got in r.accepted(path) {
        let id = got.body["id"].as_str().expect("an id").to_owned();
        assert_eq!(got.idempotency_key, id, "Idempotency-Key is the id");
        assert!(
            seen.insert(id.clone()),
            "{id} arrived twice: {:#?}",
            r.accepted(path)
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_watchers_one_restock_one_in_stock_alert_and_one_purchase_alert() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let store =
        StoreSimProcess::start(products_json(&["100"]), &["--checkout-delay", "50ms"]).await;
    let rx = Receiver::start().await;
    let only_purchases = format!("{}?events=purchased", rx.json_url("/purchases"));
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/hook"),
            "--notify",
            &only_purchases,
        ],
    )
    .await;
    wait_following(&notifier).await;
    let mut watchers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        watchers.push(WatcherProcess::start(&arbiter, &store, id, &[]).await);
    }
    for w in &watchers {
        w.wait_connected().await;
    }
    store.set_stock("100", true).await;
    let bought = rx.wait_for("/hook", "purchased").await;
    wait_state(&arbiter, "100", ProductState::Purchased).await;
    // Anything late would have arrived by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_stock = rx.alerts("/hook", "in_stock");
    assert_eq!(in_stock.len(), 1, "{in_stock:#?}");
    assert_eq!(in_stock[0]["tcin"], "100");
    assert_eq!(in_stock[0]["retailer"], "target");
    assert_eq!(in_stock[0]["name"], "Product 100");
    assert_eq!(rx.alerts("/hook", "checkout_started").len(), 1);
    assert_eq!(rx.alerts("/hook", "purchased").len(), 1);
    let order = restock_testkit::purchased(&store.orders().await)[0].clone();
    assert_eq!(bought["fencing_token"], order["fencing_token"]);
    assert_eq!(bought["watcher_id"], order["watcher_id"]);
    assert!(bought["price_cents"].as_u64().is_some(), "{bought:#}");
    assert_eq!(bought["test_mode"], false);
    ids_once(&rx, "/hook");
    // The destination with ?events=purchased got that alert and nothing else,
    // under an id of its own.
    let mine = rx.accepted("/purchases");
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0].body["kind"], "purchased");
    assert_ne!(mine[0].body["id"], bought["id"]);
    // Shown with --nocapture: the README's example.
    eprintln!(
        "a purchased alert as it arrives:\n{}",
        serde_json::to_string_pretty(&bought).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_flapping_inside_the_hold_down_alerts_once() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    // Paused: nothing is granted, so the product only flaps between ready
    // and queued.
    arbiter.set_paused(true).await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let rx = Receiver::start().await;
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &["--notify", &rx.json_url("/flap"), "--hold-down", "60s"],
    )
    .await;
    wait_following(&notifier).await;
    let w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
    w.wait_connected().await;
    for _ in 0..10 {
        store.set_stock("100", true).await;
        wait_state(&arbiter, "100", ProductState::Queued).await;
        store.set_stock("100", false).await;
        wait_state(&arbiter, "100", ProductState::Ready).await;
    }
    rx.wait_for("/flap", "in_stock").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queued = arbiter
        .events()
        .await
        .iter()
        .filter(|e| restock_testkit::event_kind(e) == restock_proto::v1::event::Kind::Queued)
        .count();
    assert!(queued >= 10, "the product flapped {queued} times");
    assert_eq!(rx.alerts("/flap", "in_stock").len(), 1);
}

/// The `in_stock` alerts for `tcin` accepted at `path`.
fn in_stock_of(r: &Receiver, path: &str, tcin: &str) -> Vec<Value> {
    r.alerts(path, "in_stock")
        .into_iter()
        .filter(|a| a["tcin"] == tcin)
        .collect()
}

/// Issue 19: a restarted arbiter puts its queued products back to ready
/// with no event but ARBITER_STARTED. A product that sold out while it was
/// down must alert again when it comes back after the hold-down; one still
/// in stock, reported again at once, is the same restock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_arbiter_restart_stock_back_after_the_hold_down_alerts_again() {
    const HOLD_DOWN_MS: u64 = 4_000;
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100", "200"])).await;
    // Paused (which the state file keeps): nothing is granted, so the
    // products only move between ready and queued.
    arbiter.set_paused(true).await;
    let store = StoreSimProcess::start(products_json(&["100", "200"]), &[]).await;
    let rx = Receiver::start().await;
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/r"),
            "--hold-down",
            &format!("{HOLD_DOWN_MS}ms"),
            "--reconnect-max",
            "300ms",
        ],
    )
    .await;
    wait_following(&notifier).await;
    let w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
    w.wait_connected().await;
    store.set_stock("100", true).await;
    store.set_stock("200", true).await;
    eventually("an in_stock alert for each product", LONG, || async {
        (rx.alerts("/r", "in_stock").len() == 2).then_some(())
    })
    .await;

    arbiter.process.kill9();
    // 100 sells out while the arbiter is down; 200 stays in stock.
    store.set_stock("100", false).await;
    arbiter.kill9_and_restart().await;
    let events = arbiter.events().await;
    let started_ms = events
        .iter()
        .rev()
        .find(|e| event_kind(e) == Kind::ArbiterStarted)
        .expect("the restarted arbiter's ARBITER_STARTED")
        .unix_ms;
    // The watcher reports 200 again as soon as it is back: inside the
    // hold-down after the restart.
    wait_state(&arbiter, "200", ProductState::Queued).await;
    let requeued_ms = arbiter
        .events()
        .await
        .iter()
        .rev()
        .find(|e| event_kind(e) == Kind::Queued && e.tcin == "200")
        .expect("200 queued again")
        .unix_ms;
    assert!(
        requeued_ms > started_ms && requeued_ms - started_ms < HOLD_DOWN_MS,
        "200 requeued {} ms after the restart; the test needs it inside the hold-down",
        requeued_ms.saturating_sub(started_ms)
    );
    // 100 comes back once the hold-down has passed since the restart.
    let back_at = started_ms + HOLD_DOWN_MS + 200;
    tokio::time::sleep(Duration::from_millis(back_at.saturating_sub(now_ms()))).await;
    store.set_stock("100", true).await;
    eventually("a second in_stock alert for 100", LONG, || async {
        (in_stock_of(&rx, "/r", "100").len() == 2).then_some(())
    })
    .await;
    // Anything late would have arrived by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hundred = in_stock_of(&rx, "/r", "100");
    assert_eq!(hundred.len(), 2, "{hundred:#?}");
    assert!(
        hundred[1]["unix_ms"].as_u64().unwrap() >= started_ms + HOLD_DOWN_MS,
        "{hundred:#?}"
    );
    let two_hundred = in_stock_of(&rx, "/r", "200");
    assert_eq!(two_hundred.len(), 1, "{two_hundred:#?}");
    assert_eq!(rx.accepted("/r").len(), 3, "{:#?}", rx.accepted("/r"));
    ids_once(&rx, "/r");
}

/// The one replica among `candidates` that leads, once every one of them
/// names it.
async fn leader_among(all: &[ArbiterProcess], candidates: &[usize]) -> usize {
    eventually("one leader named by every replica", LONG, || async {
        let mut roles = Vec::new();
        for &i in candidates {
            roles.push((i, all[i].role(Duration::from_secs(1)).await?));
        }
        let leaders: Vec<usize> = roles
            .iter()
            .filter(|(_, (role, _))| role == "leader")
            .map(|(i, _)| *i)
            .collect();
        let [leader] = leaders[..] else { return None };
        let url = all[leader].url();
        roles
            .iter()
            .all(|(_, (_, named))| *named == url)
            .then_some(leader)
    })
    .await
}

/// Issue 19 with replicas: a take-over is a restart as far as the notifier
/// can tell (the new leader emits ARBITER_STARTED and its queued products
/// are ready again), so a product that sold out across the leader's death
/// alerts again when it comes back after the hold-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_take_over_stock_back_after_the_hold_down_alerts_again() {
    const HOLD_DOWN_MS: u64 = 4_000;
    let Some(etcd) = EtcdCluster::start(3).await else {
        return; // EtcdCluster::start said why it was skipped
    };
    let opts = ArbiterOptions {
        extra_args: [
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoints(),
            "--etcd-prefix",
            "/notifier-take-over/",
            "--election-ttl",
            "2s",
            // A new deployment: no token was ever handed out.
            "--fresh-state",
        ]
        .map(String::from)
        .to_vec(),
        ..ArbiterOptions::products(&["100"])
    };
    let mut all = Vec::new();
    for _ in 0..3 {
        all.push(ArbiterProcess::start(opts.clone()).await);
    }
    let first = leader_among(&all, &[0, 1, 2]).await;
    all[first].set_paused(true).await;
    let urls = all.iter().map(|a| a.url()).collect::<Vec<_>>().join(",");
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let rx = Receiver::start().await;
    let notifier = NotifierProcess::start(
        &urls,
        &[
            "--notify",
            &rx.json_url("/ha"),
            "--hold-down",
            &format!("{HOLD_DOWN_MS}ms"),
            "--reconnect-max",
            "300ms",
        ],
    )
    .await;
    wait_following(&notifier).await;
    let w = WatcherProcess::start_with(WatcherOptions::new("w1", urls.clone()).store(&store)).await;
    w.wait_connected().await;
    store.set_stock("100", true).await;
    rx.wait_for("/ha", "in_stock").await;

    all[first].process.kill9();
    // 100 sells out across the take-over.
    store.set_stock("100", false).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    let second = leader_among(&all, &rest).await;
    let started_ms = all[second]
        .events()
        .await
        .iter()
        .rev()
        .find(|e| event_kind(e) == Kind::ArbiterStarted)
        .expect("the new leader's ARBITER_STARTED")
        .unix_ms;
    assert_eq!(
        product(&all[second].status().await, "100").state,
        ProductState::Ready as i32
    );
    let back_at = started_ms + HOLD_DOWN_MS + 200;
    tokio::time::sleep(Duration::from_millis(back_at.saturating_sub(now_ms()))).await;
    store.set_stock("100", true).await;
    eventually("a second in_stock alert for 100", LONG, || async {
        (in_stock_of(&rx, "/ha", "100").len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(in_stock_of(&rx, "/ha", "100").len(), 2);
    ids_once(&rx, "/ha");
}

/// Issue 19: the notifier resumes from its saved position and the
/// arbiter's history no longer holds the events right after it (it was
/// away while more happened than the arbiter keeps). The gap is alerted,
/// once, naming the range, and a restart of the notifier does not repeat
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_event_feed_is_alerted_once_with_its_range() {
    let rx = Receiver::start().await;
    // First the notifier follows an arbiter whose newest event is 40.
    let before = ScriptedArbiter::start(
        Script::new().statuses([StatusSnapshot::new(&["100"])
            .sequence(40)
            .test_mode(false)
            .build()]),
    )
    .await;
    let mut notifier = NotifierProcess::start(
        &before.url(),
        &["--notify", &rx.json_url("/gap"), "--reconnect-max", "300ms"],
    )
    .await;
    wait_following(&notifier).await;
    eventually("position 41 saved", LONG, || async {
        (notifier.state()["next_sequence"] == 41).then_some(())
    })
    .await;
    notifier.process.kill9();
    // While it is down, the arbiter moves on and its history now starts at
    // 98: 41 to 97 are gone. Event 98 is a restock.
    let history = History::starting(98, now_ms()).queued("100");
    let after = ScriptedArbiter::start(
        Script::new()
            .statuses([StatusSnapshot::new(&["100"])
                .state("100", ProductState::Queued)
                .sequence(history.last_sequence())
                .test_mode(false)
                .build()])
            .events(history.into_events()),
    )
    .await;
    notifier.process.set_arg("--arbiter", &after.url());
    notifier.kill9_and_restart().await;
    let gap = rx.wait_for("/gap", "missed_events").await;
    let id = gap["id"].as_str().unwrap();
    assert!(id.starts_with("missed_events-41-97-"), "{gap:#}");
    let message = gap["message"].as_str().unwrap();
    assert!(
        message.starts_with("Events 41 to 97 (57 events) were not received"),
        "{message}"
    );
    assert!(message.contains("may be lost"), "{message}");
    assert!(gap["tcin"].is_null(), "{gap:#}");
    // The event after the gap still makes its alert.
    let in_stock = rx.wait_for("/gap", "in_stock").await;
    assert_eq!(in_stock["tcin"], "100");
    assert_eq!(notifier.status().await.next_event_sequence, 99);

    // Restarted, it resumes after the gap: nothing is sent again.
    eventually("an empty outbox", LONG, || async {
        (notifier.state()["outbox"]
            .as_array()
            .is_some_and(Vec::is_empty))
        .then_some(())
    })
    .await;
    notifier.kill9_and_restart().await;
    wait_following(&notifier).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.alerts("/gap", "missed_events").len(), 1);
    assert_eq!(rx.accepted("/gap").len(), 2, "{:#?}", rx.accepted("/gap"));
    ids_once(&rx, "/gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_destination_waits_and_the_other_is_not_delayed() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let rx = Receiver::start().await;
    rx.too_many("/slow", 3, 2);
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/slow"),
            "--notify",
            &rx.json_url("/fast"),
            "--http-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let start = Instant::now();
    let answer = notifier.send_test("").await;
    assert!(answer.delivered, "{answer:?}");
    let slow = rx.accepted("/slow");
    let fast = rx.accepted("/fast");
    assert_eq!(slow.len(), 1, "delivered once");
    assert_eq!(fast.len(), 1);
    assert_eq!(
        rx.attempts("/slow").len(),
        4,
        "three 429s, then the delivery"
    );
    let waited = slow[0].at - start;
    assert!(
        waited >= Duration::from_millis(5_900),
        "Retry-After honoured: {waited:?}"
    );
    let fast_after = fast[0].at - start;
    assert!(
        fast_after < Duration::from_secs(2),
        "the other destination waited {fast_after:?}"
    );
    assert_eq!(slow[0].body["kind"], "test");
    assert_eq!(slow[0].idempotency_key, slow[0].body["id"]);
    let status = notifier.status().await;
    assert_eq!(status.destinations.len(), 2);
    assert!(
        status.destinations[0].last_error.contains("429"),
        "{status:?}"
    );
    // The same story on /metrics (checked by promtool when installed).
    let (page, _) = scrape(&notifier.metrics_url()).await;
    check_metrics("restock-notifier", &page);
    let series = |path: &str, result: &str| {
        format!(
            "restock_notifier_deliveries_total{{destination=\"{}\",result=\"{result}\"}}",
            rx.json_url(path)
        )
    };
    assert_eq!(
        metric(&page, &series("/slow", "rate_limited")),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, &series("/slow", "delivered")),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, &series("/fast", "delivered")),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        metric(&page, "restock_notifier_alerts_total{kind=\"test\"}"),
        Some(0.0),
        "test alerts are not made from events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_alert_arrives_once() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100", "200"])).await;
    let store = StoreSimProcess::start(
        products_json(&["100", "200"]),
        &["--checkout-delay", "50ms"],
    )
    .await;
    let rx = Receiver::start().await;
    rx.set_down("/k", true);
    let mut notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/k"),
            "--retry-initial",
            "100ms",
            "--retry-max",
            "300ms",
        ],
    )
    .await;
    wait_following(&notifier).await;
    let w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
    w.wait_connected().await;
    store.set_stock("100", true).await;
    wait_state(&arbiter, "100", ProductState::Purchased).await;
    // in_stock, checkout_started, purchased: saved, not delivered.
    eventually("three pending alerts in the state file", LONG, || async {
        let s = notifier.state();
        (s["outbox"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;
    notifier.process.kill9();
    // Events while it is down.
    store.set_stock("200", true).await;
    wait_state(&arbiter, "200", ProductState::Purchased).await;
    rx.set_down("/k", false);
    notifier.kill9_and_restart().await;
    eventually("six alerts delivered", LONG, || async {
        (rx.accepted("/k").len() >= 6).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = ids_once(&rx, "/k");
    assert_eq!(ids.len(), 6, "{ids:?}");
    for tcin in ["100", "200"] {
        for kind in ["in_stock", "checkout_started", "purchased"] {
            let n = rx
                .alerts("/k", kind)
                .iter()
                .filter(|a| a["tcin"] == tcin)
                .count();
            assert_eq!(n, 1, "{kind} for {tcin}");
        }
    }
    // Once delivered, a restart sends nothing again.
    eventually("an empty outbox", LONG, || async {
        (notifier.state()["outbox"]
            .as_array()
            .is_some_and(Vec::is_empty))
        .then_some(())
    })
    .await;
    notifier.kill9_and_restart().await;
    wait_following(&notifier).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.accepted("/k").len(), 6);
}

#[tokio::test]
async fn a_bad_url_stops_it_at_start_up_naming_the_url_without_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::start(
        "restock-notifier",
        bin("restock-notifier"),
        [
            "--listen",
            "127.0.0.1:0",
            "--state-file",
            "",
            "--notify",
            "discord://1234/s3cret-token?events=restock",
        ]
        .map(String::from)
        .to_vec(),
        dir.path().join("notifier.log"),
    );
    assert_eq!(p.wait_exit(LONG), Some(2), "the start-up exit code");
    let log = p.log_text();
    assert!(log.contains("discord://1234/***?events=restock"), "{log}");
    assert!(log.contains("unknown alert kind"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_arbiter_is_alerted_once_after_the_grace_period() {
    let nobody = ClosedPort::new();
    let rx = Receiver::start().await;
    let start = Instant::now();
    let _notifier = NotifierProcess::start(
        &nobody.url(),
        &[
            "--notify",
            &rx.json_url("/down"),
            "--unreachable-after",
            "1s",
            "--reconnect-max",
            "300ms",
        ],
    )
    .await;
    let alert = rx.wait_for("/down", "arbiter_unreachable").await;
    let at = rx.accepted("/down")[0].at - start;
    assert!(at >= Duration::from_secs(1), "alerted after {at:?}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains(&nobody.addr().to_string()),
        "{alert:#}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.accepted("/down").len(), 1, "alerted once per outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restockctl_notify_test_says_whether_the_alert_arrived() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let rx = Receiver::start().await;
    rx.set_down("/dead", true);
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/ok"),
            "--notify",
            &format!("discord://1/s3cret?base={}", rx.base()),
            "--notify",
            &rx.json_url("/dead"),
            "--test-deadline",
            "1s",
            "--retry-initial",
            "200ms",
        ],
    )
    .await;
    let ctl = |args: &[&str]| {
        let mut all = vec!["--notifier".to_owned(), notifier.url()];
        all.extend(args.iter().map(|s| s.to_string()));
        std::process::Command::new(bin("restockctl"))
            .args(all)
            .output()
            .expect("run restockctl")
    };
    let ok = ctl(&["notify", "test", "--notify", &rx.json_url("/ok")]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(rx.alerts("/ok", "test").len(), 1);
    // Discord's format, at Discord's path.
    let ok = ctl(&["notify", "test", "--notify", "2"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let discord = rx.accepted("/api/webhooks/1/s3cret");
    assert_eq!(discord.len(), 1);
    assert_eq!(discord[0].body["embeds"][0]["title"], "Test alert");
    let dead = ctl(&["notify", "test", "--notify", &rx.json_url("/dead")]);
    assert_eq!(dead.status.code(), Some(1), "{dead:?}");
    let text = String::from_utf8_lossy(&dead.stdout);
    assert!(text.contains("503"), "{text}");
    let status = ctl(&["notify", "status"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("discord://1/***") && !text.contains("s3cret"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_gets_its_own_request_format() {
    // TEST_MODE: every title says so.
    let arbiter = spawn_arbiter_with(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::products(&["100"])
    })
    .await;
    let rx = Receiver::start().await;
    let base = rx.base();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exec.out");
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {0}.tmp\nprintf '\\n%s\\n' \"$RESTOCK_ALERT_KIND\" >> {0}.tmp\nmv {0}.tmp {0}\n",
            out.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &format!("discord://42/disc-secret?base={base}"),
            "--notify",
            &format!("slack://T01/B02/slack-secret?base={base}"),
            "--notify",
            &format!("ntfy://me:ntfy-secret@ignored/restock?base={base}&priority=high"),
            "--notify",
            &format!("tgram://123:tg-secret/-1001?base={base}"),
            "--notify",
            &format!("exec://{}", script.display()),
        ],
    )
    .await;
    wait_following(&notifier).await;
    let answer = notifier.send_test("").await;
    assert!(answer.delivered, "{answer:?}");
    assert_eq!(answer.deliveries.len(), 5);

    let discord = rx.accepted("/api/webhooks/42/disc-secret");
    assert_eq!(discord.len(), 1);
    let embed = &discord[0].body["embeds"][0];
    assert_eq!(embed["title"], "[TEST MODE] Test alert");
    assert!(
        embed["description"]
            .as_str()
            .unwrap()
            .contains("discord://42/***")
    );
    assert_eq!(discord[0].body["content"], "[TEST MODE] Test alert");

    let slack = rx.accepted("/services/T01/B02/slack-secret");
    assert_eq!(slack.len(), 1);
    assert!(
        slack[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("[TEST MODE] Test alert")
    );
    assert_eq!(slack[0].body["blocks"][0]["type"], "header");

    let ntfy = rx.accepted("/");
    assert_eq!(ntfy.len(), 1);
    assert_eq!(ntfy[0].body["topic"], "restock");
    assert_eq!(ntfy[0].body["title"], "[TEST MODE] Test alert");
    assert_eq!(ntfy[0].body["priority"], 4);

    let tgram = rx.accepted("/bot123:tg-secret/sendMessage");
    assert_eq!(tgram.len(), 1);
    assert_eq!(tgram[0].body["chat_id"], "-1001");
    assert!(
        tgram[0].body["text"]
            .as_str()
            .unwrap()
            .starts_with("[TEST MODE] Test alert")
    );

    let text = std::fs::read_to_string(&out).expect("the command ran");
    assert!(text.trim_end().ends_with("test"), "{text}");
    let json: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(json["kind"], "test");
    assert_eq!(json["test_mode"], true);

    // Not one secret in the log or the status.
    let status = format!("{:?}", notifier.status().await);
    let log = notifier.process.log_text();
    for secret in ["disc-secret", "slack-secret", "ntfy-secret", "tg-secret"] {
        assert!(!status.contains(secret), "{secret} in {status}");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// A real SMTP server: Python's aiosmtpd, on a port the kernel picks,
/// printing `PORT n` and then one JSON line per mail.
const SMTP_SERVER: &str = r#"
import asyncio, json
from aiosmtpd.smtp import SMTP, AuthResult

class Handler:
    async def handle_DATA(self, server, session, envelope):
        login = getattr(session.auth_data, "login", None)
        print(json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "login": login.decode() if login else None,
            "data": envelope.content.decode("utf8", "replace"),
        }), flush=True)
        return "250 OK"

def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True, auth_data=auth_data)

async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: SMTP(Handler(), auth_require_tls=False, authenticator=authenticator),
        "127.0.0.1", 0)
    print("PORT", srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("RESTOCK_REQUIRE_SMTP").as_deref() != Ok("1"),
            "RESTOCK_REQUIRE_SMTP=1 but python3 -m aiosmtpd is not installed (pip install aiosmtpd)"
        );
        eprintln!("skipped: python3 with aiosmtpd is not installed (pip install aiosmtpd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("smtp.py");
    std::fs::write(&script, SMTP_SERVER).unwrap();
    let smtp = Process::start(
        "aiosmtpd",
        "python3".into(),
        vec![script.display().to_string()],
        dir.path().join("smtp.log"),
    );
    let port: u16 = eventually("the SMTP server's port", LONG, || async {
        smtp.log_text()
            .lines()
            .find_map(|l| l.strip_prefix("PORT "))
            .and_then(|p| p.trim().parse().ok())
    })
    .await;
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &format!(
                "mailto://alice:mail-secret@127.0.0.1:{port}?to=alerts@example.com&from=restock@example.com"
            ),
        ],
    )
    .await;
    let answer = notifier.send_test("").await;
    assert!(answer.delivered, "{answer:?}");
    let mail: Value = eventually("the mail at the SMTP server", LONG, || async {
        smtp.log_text()
            .lines()
            .find(|l| l.starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok())
    })
    .await;
    assert_eq!(mail["to"][0], "alerts@example.com");
    assert_eq!(mail["from"], "restock@example.com");
    assert_eq!(mail["login"], "alice");
    let data = mail["data"].as_str().unwrap();
    assert!(data.contains("Subject: Test alert"), "{data}");
    assert!(
        data.contains(&format!(
            "<{}@restock-notifier>",
            answer.deliveries[0].alert_id
        )),
        "{data}"
    );
    let status = format!("{:?}", notifier.status().await);
    assert!(status.contains("mailto://alice:***@127.0.0.1"), "{status}");
    assert!(
        !status.contains("mail-secret") && !notifier.process.log_text().contains("mail-secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_purchase_and_a_system_without_watchers_are_alerted_once() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    // A checkout that takes 20 s holds the lease well past --stuck-after.
    let store = StoreSimProcess::start(products_json(&["100"]), &["--checkout-delay", "20s"]).await;
    let rx = Receiver::start().await;
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            &rx.json_url("/ops"),
            "--stuck-after",
            "1s",
            "--no-watchers-after",
            "1s",
        ],
    )
    .await;
    wait_following(&notifier).await;
    // Nobody is watching yet.
    let lonely = rx.wait_for("/ops", "no_watchers").await;
    assert_eq!(lonely["title"], "No watcher connected");
    let w = WatcherProcess::start(&arbiter, &store, "w1", &[]).await;
    w.wait_connected().await;
    store.set_stock("100", true).await;
    let started = rx.wait_for("/ops", "checkout_started").await;
    let stuck = rx.wait_for("/ops", "stuck").await;
    assert_eq!(stuck["fencing_token"], started["fencing_token"]);
    assert_eq!(stuck["watcher_id"], "w1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.alerts("/ops", "stuck").len(), 1);
    assert_eq!(rx.alerts("/ops", "no_watchers").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_it_cleanly_with_its_state_written() {
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let rx = Receiver::start().await;
    let mut notifier =
        NotifierProcess::start(&arbiter.url(), &["--notify", &rx.json_url("/t")]).await;
    wait_following(&notifier).await;
    let next = notifier.status().await.next_event_sequence;
    assert_eq!(notifier.process.terminate(LONG), Some(0));
    let saved = notifier.state();
    assert_eq!(saved["next_sequence"], next, "{saved:#}");
    assert!(notifier.process.log_text().contains("notifier stopping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_calls_the_notifier_without_proto_files() {
    let Some(grpcurl) = restock_testkit::grpcurl() else {
        return; // grpcurl() said why it was skipped
    };
    let arbiter = spawn_arbiter_with(ArbiterOptions::products(&["100"])).await;
    let notifier = NotifierProcess::start(
        &arbiter.url(),
        &[
            "--notify",
            "discord://1/grpcurl-secret?base=http://127.0.0.1:9",
        ],
    )
    .await;
    let addr = notifier.addr().to_string();
    let (ok, out, err) = restock_testkit::run_grpcurl(&grpcurl, &["-plaintext", &addr, "list"]);
    assert!(ok, "{err}");
    let services: Vec<&str> = out.lines().collect();
    assert!(services.contains(&"restock.v1.Notifier"), "{out}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{out}");
    assert!(!services.contains(&"restock.v1.PurchaseArbiter"), "{out}");
    let (ok, out, err) = restock_testkit::run_grpcurl(
        &grpcurl,
        &["-plaintext", &addr, "restock.v1.Notifier/GetNotifierStatus"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("discord://1/***"), "{out}");
    assert!(!out.contains("grpcurl-secret"), "{out}");
}

#[tokio::test]
async fn a_corrupt_state_file_stops_it_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("notifier-state.json");
    std::fs::write(&state, "{ half a file").unwrap();
    let mut p = Process::start(
        "restock-notifier",
        bin("restock-notifier"),
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-file".into(),
            state.display().to_string(),
        ],
        dir.path().join("notifier.log"),
    );
    assert_ne!(p.wait_exit(LONG), Some(0));
    let log = p.log_text();
    assert!(log.contains(&state.display().to_string()), "{log}");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "{ half a file",
        "never replaced by an empty state"
    );
}

/// The watcher `id` in the arbiter's status.
fn watcher_of<'a>(
    s: &'a restock_proto::v1::GetStatusResponse,
    id: &str,
) -> &'a restock_proto::v1::WatcherStatus {
    s.watchers
        .iter()
        .find(|w| w.watcher_id == id)
        .unwrap_or_else(|| panic!("watcher {id} in the status: {s:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_block_is_shown_and_alerted_once_and_its_end_once() {
    // A real arbiter process: the status page's `/api/status` is checked too.
    let arbiter = ArbiterProcess::start(ArbiterOptions::products(&["100"])).await;
    let store = StoreSimProcess::start(products_json(&["100"]), &[]).await;
    let rx = Receiver::start().await;
    let notifier =
        NotifierProcess::start(&arbiter.url(), &["--notify", &rx.json_url("/hook")]).await;
    wait_following(&notifier).await;
    // A short cool-down, so the probes after the block come soon.
    let w = WatcherProcess::start(&arbiter, &store, "w1", &["--block-cooldown", "500ms"]).await;
    w.wait_connected().await;
    eventually("w1 reporting", LONG, || async {
        let s = arbiter.status().await;
        let me = watcher_of(&s, "w1");
        (me.reports > 0 && me.source_block.is_none() && !me.source_blocked).then_some(())
    })
    .await;

    // Target's captcha wall, mid-run, until it is lifted.
    store
        .put("/admin/block", serde_json::json!({"kind": "captcha"}))
        .await;
    let block = eventually("the arbiter to show w1 blocked", LONG, || async {
        let s = arbiter.status().await;
        let me = watcher_of(&s, "w1");
        me.source_blocked.then(|| me.source_block.clone()).flatten()
    })
    .await;
    assert_eq!(block.kind, "captcha");
    assert!(
        block.tracking_url.contains("/captcha?trackingId="),
        "{block:?}"
    );
    assert!(block.since_unix_ms > 0, "{block:?}");
    // `/api/status` says the same (the page reads it).
    let api: Value = reqwest::get(format!("{}/api/status", arbiter.http_url()))
        .await
        .expect("GET /api/status")
        .json()
        .await
        .expect("JSON");
    let me = api["watchers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["watcherId"] == "w1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["sourceBlocked"], true, "{api:#}");
    assert_eq!(me["sourceBlock"]["kind"], "captcha", "{api:#}");
    let alert = rx.wait_for("/hook", "source_blocked").await;
    assert_eq!(alert["watcher_id"], "w1");
    assert!(
        alert["title"]
            .as_str()
            .unwrap_or_default()
            .contains("captcha"),
        "{alert:#}"
    );
    // The probes after each cool-down meet the block again: the same
    // episode, no new alert.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.alerts("/hook", "source_blocked").len(), 1);
    assert!(rx.alerts("/hook", "source_unblocked").is_empty());
    assert!(watcher_of(&arbiter.status().await, "w1").source_blocked);

    // Lifted: the next probe answers, the status clears, one alert says so.
    let r = reqwest::Client::new()
        .delete(format!("{}/admin/block", store.url()))
        .send()
        .await
        .expect("DELETE /admin/block");
    assert!(r.status().is_success(), "{}", r.status());
    let over = rx.wait_for("/hook", "source_unblocked").await;
    assert_eq!(over["watcher_id"], "w1");
    eventually("the arbiter to show w1 clear", LONG, || async {
        let s = arbiter.status().await;
        let me = watcher_of(&s, "w1");
        (!me.source_blocked && me.source_block.is_none()).then_some(())
    })
    .await;
    // One event when the block started, one when it ended.
    let events = arbiter.events().await;
    let episode: Vec<_> = events
        .iter()
        .filter(|e| matches!(event_kind(e), Kind::SourceBlocked | Kind::SourceUnblocked))
        .map(|e| (event_kind(e), e.watcher_id.as_str()))
        .collect();
    assert_eq!(
        episode,
        [(Kind::SourceBlocked, "w1"), (Kind::SourceUnblocked, "w1")],
        "{events:#?}"
    );
    // Anything late would have arrived by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.alerts("/hook", "source_blocked").len(), 1);
    assert_eq!(rx.alerts("/hook", "source_unblocked").len(), 1);
    ids_once(&rx, "/hook");
}
