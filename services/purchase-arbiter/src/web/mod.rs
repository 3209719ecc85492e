//! The arbiter's HTTP listener: the live status page and what it reads.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the status page (HTML; its script and style are in the binary) |
//! | `GET /assets/app.js`, `/assets/style.css` | the page's script and style |
//! | `GET /api/status` | `GetStatus` as JSON, in the proto3 JSON mapping (what grpcurl prints) |
//! | `GET /events` | server-sent events following the event history; resumes after `Last-Event-ID` |
//! | `GET /metrics` | Prometheus |
//! | `GET /login`, `POST /login`, `POST /logout` | a browser's way to present the token |
//! | `GET /healthz` | liveness, always open |
//!
//! Everything here only reads: the page changes nothing, so a phone left on
//! it cannot buy, pause or reset anything. With a token configured every
//! route but `/healthz` and the login form needs it (Bearer header or the
//! login cookie), unless `--public-status` opens the page, `/api/status`,
//! `/events` and `/metrics`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{StreamExt, future, stream};
use restock_proto::v1 as pb;
use restock_runtime::{
    auth::AuthPolicy,
    http::{LIVENESS_PATH, LOGIN_PATH, login_routes, metrics_router},
    metrics::Registry,
};
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::{feed, replica::Replica, task::ArbiterError};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

pub const PAGE_PATH: &str = "/";
pub const STATUS_PATH: &str = "/api/status";
pub const EVENTS_PATH: &str = "/events";

/// How many past events a page gets when it first connects (no
/// `Last-Event-ID`, no `?from=`): enough to fill its table of last cycles.
pub const EVENTS_ON_CONNECT: u64 = 200;

/// How long a browser waits before it reconnects to `/events`.
const SSE_RETRY: Duration = Duration::from_secs(2);

/// A comment line on an idle `/events` stream this often, so proxies and
/// the browser see the connection alive.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Only this origin's own script, style and connections: nothing from
/// elsewhere is loaded, nothing may frame the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// What the routes share.
#[derive(Debug)]
pub struct Web {
    /// Which arbiter task answers (a follower serves only who leads).
    pub replica: Replica,
    pub auth: AuthPolicy,
    /// Shown as `config_path` in `/api/status`, as in `GetStatus`.
    pub config_path: String,
    /// When the page raises its "purchase stuck" alarm.
    pub stuck_after: Duration,
}

struct Shared {
    web: Web,
    page: String,
}

/// Every route of the arbiter's HTTP listener.
pub fn routes(web: Web, registry: Arc<Registry>) -> Router {
    let page = PAGE.replace(
        "{{STUCK_AFTER_MS}}",
        &web.stuck_after.as_millis().to_string(),
    );
    let auth = web.auth.clone();
    let shared = Arc::new(Shared { web, page });
    Router::new()
        .route(PAGE_PATH, get(page_route))
        .route("/assets/app.js", get(script))
        .route("/assets/style.css", get(style))
        .route(STATUS_PATH, get(api_status))
        .route(EVENTS_PATH, get(events))
        .with_state(shared)
        .merge(metrics_router(registry, auth.clone()))
        .merge(login_routes(auth))
        .route(LIVENESS_PATH, get(|| async { "ok\n" }))
}

/// The answer to a caller without the token, or `None` to let it in: a
/// browser asking for a page goes to the login form, anything else gets
/// 401.
fn refusal(shared: &Shared, path: &str, headers: &HeaderMap, page: bool) -> Option<Response> {
    match shared.web.auth.check_http(path, headers) {
        Ok(()) => None,
        Err(_) if page => Some(Redirect::to(&format!("{LOGIN_PATH}?next={path}")).into_response()),
        Err(refused) => Some(unauthorized(refused.message())),
    }
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

fn unavailable(e: &ArbiterError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": restock_runtime::error::chain_text(e) })),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn page_route(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&shared, PAGE_PATH, &headers, true) {
        return r;
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        shared.page.clone(),
    )
        .into_response()
}

// The page's own files follow the page: a browser that may see the page
// may load them (the page path decides, so `--public-status` opens them).
async fn script(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    refusal(&shared, PAGE_PATH, &headers, false)
        .unwrap_or_else(|| asset("text/javascript; charset=utf-8", SCRIPT))
}

async fn style(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    refusal(&shared, PAGE_PATH, &headers, false)
        .unwrap_or_else(|| asset("text/css; charset=utf-8", STYLE))
}

async fn api_status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&shared, STATUS_PATH, &headers, false) {
        return r;
    }
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    let replica = &shared.web.replica;
    let Ok(term) = replica.current() else {
        return (no_store, axum::Json(replica.follower_status())).into_response();
    };
    match term.handle.status().await {
        Ok(mut status) => {
            status.config_path.clone_from(&shared.web.config_path);
            let mut answer = pb::GetStatusResponse::from(&status);
            replica.annotate(&mut answer);
            (no_store, axum::Json(answer)).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct EventsQuery {
    /// The first sequence to send (`Last-Event-ID` wins over it).
    from: Option<u64>,
}

/// Where a feed starts: after `Last-Event-ID` (a reconnecting browser),
/// else at `?from=`, else the last [`EVENTS_ON_CONNECT`] events.
fn start_of_feed(headers: &HeaderMap, query: &EventsQuery) -> Result<Option<u64>, String> {
    if let Some(v) = headers.get("last-event-id") {
        let text = v.to_str().unwrap_or("");
        return text
            .trim()
            .parse::<u64>()
            .map(|last| Some(last.saturating_add(1)))
            .map_err(|_| format!("Last-Event-ID {text:?} is not an event sequence number"));
    }
    Ok(query.from)
}

async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(r) = refusal(&shared, EVENTS_PATH, &headers, false) {
        return r;
    }
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("?from= must be an event sequence number: {e}\n"),
            )
                .into_response();
        }
    };
    let term = match shared.web.replica.current() {
        Ok(term) => term,
        Err(not_leader) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", not_leader.message()),
            )
                .into_response();
        }
    };
    let from = match start_of_feed(&headers, &query) {
        Ok(Some(from)) => from.max(1),
        Ok(None) => match term.handle.status().await {
            Ok(s) => s
                .last_event_sequence
                .saturating_sub(EVENTS_ON_CONNECT - 1)
                .max(1),
            Err(e) => return unavailable(&e),
        },
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    // The term's stop is a child of the arbiter's: either ends the feed.
    let feed = match feed::follow(term.handle, from, term.stop).await {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    debug!(from, "status page following events");
    // The first event says whether anything asked for is gone from history
    // (a page away for long): the page then knows its table has a hole.
    let mut expected = Some(from);
    let sse = ReceiverStream::new(feed)
        // The stream ends at the feed's end (the arbiter stopping); the
        // browser reconnects with Last-Event-ID, to this arbiter restarted,
        // and a gap event tells it what is gone.
        .scan((), |(), item: feed::FeedItem| future::ready(item.ok()))
        .flat_map(move |e| {
            let mut out = Vec::with_capacity(2);
            if let Some(want) = expected.take()
                && e.sequence > want
            {
                out.push(
                    SseEvent::default()
                        .event("gap")
                        .data(format!(r#"{{"from":{want},"resumed_at":{}}}"#, e.sequence)),
                );
            }
            out.push(sse_event(&e));
            stream::iter(out.into_iter().map(Ok::<_, Infallible>))
        });
    let retry = stream::once(async { Ok(SseEvent::default().retry(SSE_RETRY)) });
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Sse::new(retry.chain(sse)).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE)),
    )
        .into_response()
}

/// One event as a server-sent event: its sequence as the id (what the
/// browser sends back as `Last-Event-ID`), the event in the proto3 JSON
/// mapping as the data.
fn sse_event(e: &restock_domain::Event) -> SseEvent {
    let data = serde_json::to_string(&pb::Event::from(e)).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default().id(e.sequence.to_string()).data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_resumes_after_last_event_id_else_from_the_query() {
        let mut h = HeaderMap::new();
        let q = |from| EventsQuery { from };
        assert_eq!(start_of_feed(&h, &q(None)), Ok(None));
        assert_eq!(start_of_feed(&h, &q(Some(7))), Ok(Some(7)));
        h.insert("last-event-id", HeaderValue::from_static("41"));
        assert_eq!(start_of_feed(&h, &q(Some(7))), Ok(Some(42)));
        h.insert("last-event-id", HeaderValue::from_static("x1"));
        let e = start_of_feed(&h, &q(None)).unwrap_err();
        assert!(e.contains("Last-Event-ID") && e.contains("x1"), "{e}");
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        for asset in ["/assets/app.js", "/assets/style.css"] {
            assert!(PAGE.contains(asset), "{asset}");
        }
        for outside in ["http://", "https://", "//cdn", "<script>", "style="] {
            assert!(!PAGE.contains(outside), "the page refers to {outside}");
        }
        assert!(PAGE.contains("{{STUCK_AFTER_MS}}"));
        // No eval and no inline handlers: the content security policy
        // forbids them.
        assert!(!SCRIPT.contains("eval(") && !PAGE.contains("onclick"));
    }
}
