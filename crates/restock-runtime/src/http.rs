//! The HTTP listener every service may open beside its gRPC one:
//! `GET /metrics` (Prometheus) and `GET /healthz` (a plain liveness answer),
//! with `--http-listen` deciding where, or whether. With the shared token
//! configured, `/metrics` needs it as the gRPC services do (the same
//! [`AuthPolicy`]), unless the service opens it; `/healthz` never does.
//!
//! Each service declares its own `--http-listen` field of type
//! [`HttpListen`], because the default differs: the arbiter listens on
//! `0.0.0.0:8081` unless told otherwise, while watchers (several may run on
//! one machine) and the store simulator (which serves `/metrics` on its own
//! port) stay off unless it is set. Written as
//!
//! ```ignore
//! /// Where to serve /metrics and /healthz over HTTP ("off": nowhere).
//! #[arg(long, env = restock_runtime::http::HTTP_LISTEN_ENV, default_value = "off")]
//! pub http_listen: HttpListen,
//! ```

use std::{fmt, future::Future, net::SocketAddr, str::FromStr, sync::Arc};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{
    announce::{ListenError, bind},
    auth::AuthPolicy,
    metrics::{Format, Registry, render},
};

/// The environment variable of every service's `--http-listen`.
pub const HTTP_LISTEN_ENV: &str = "RESTOCK_HTTP_LISTEN";

/// The path of the Prometheus scrape.
pub const METRICS_PATH: &str = "/metrics";

/// The path of the liveness answer: `200 ok` while the process serves HTTP.
/// It says nothing about readiness (gRPC health does that).
pub const LIVENESS_PATH: &str = "/healthz";

/// `--http-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    Off,
    On(SocketAddr),
}

impl HttpListen {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(a) => Some(a),
        }
    }
}

/// Why an `--http-listen` value was refused; names the value.
#[derive(Debug, thiserror::Error)]
#[error("--http-listen {value:?} is neither an address (0.0.0.0:8081) nor \"off\": {source}")]
pub struct HttpListenError {
    value: String,
    source: std::net::AddrParseError,
}

impl FromStr for HttpListen {
    type Err = HttpListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        // An empty value counts as off, so `RESTOCK_HTTP_LISTEN=` in a
        // compose file turns it off rather than failing start-up.
        if t.is_empty() || t.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        t.parse().map(Self::On).map_err(|source| HttpListenError {
            value: s.to_owned(),
            source,
        })
    }
}

impl fmt::Display for HttpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::On(a) => a.fmt(f),
        }
    }
}

/// Binds the HTTP listener, or nothing when it is off. Add the listener to
/// [`crate::Bound`] as `"http"` so the ready file names it.
pub async fn bind_http(listen: HttpListen) -> Result<Option<TcpListener>, ListenError> {
    match listen {
        HttpListen::Off => Ok(None),
        HttpListen::On(addr) => bind("http", addr).await.map(Some),
    }
}

/// `GET /metrics` from `registry` and `GET /healthz`: the whole HTTP
/// listener of a service that serves nothing else over HTTP. With a token
/// in `auth`, `/metrics` needs `Authorization: Bearer TOKEN` (Prometheus
/// sends it with `authorization` in its scrape config) unless `auth` opens
/// [`METRICS_PATH`]; `/healthz` never needs it.
pub fn metrics_routes(registry: Arc<Registry>, auth: AuthPolicy) -> Router {
    metrics_router(registry, auth).route(LIVENESS_PATH, get(|| async { "ok\n" }))
}

/// `GET /metrics` alone, for a service with HTTP routes (and a liveness
/// route) of its own to merge into its router.
pub fn metrics_router(registry: Arc<Registry>, auth: AuthPolicy) -> Router {
    Router::new()
        .route(METRICS_PATH, get(scrape))
        .with_state(Arc::new((registry, auth)))
}

async fn scrape(
    State(state): State<Arc<(Arc<Registry>, AuthPolicy)>>,
    headers: HeaderMap,
) -> Response {
    let (registry, auth) = &*state;
    if let Err(refused) = auth.check_http(METRICS_PATH, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            format!("{}\n", refused.message()),
        )
            .into_response();
    }
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = render(registry, format);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        body,
    )
        .into_response()
}

/// The path of the login form (a browser's way to present the token).
pub const LOGIN_PATH: &str = "/login";

/// `GET /login`, a form asking for the token, and `POST /login`, which
/// checks it and sets the HttpOnly session cookie
/// ([`crate::auth::SESSION_COOKIE`]) before sending the browser back to
/// `next` (a path on this server). `POST /logout` clears it. Without a
/// token configured the form says there is nothing to log in to.
pub fn login_routes(auth: AuthPolicy) -> Router {
    Router::new()
        .route(LOGIN_PATH, get(login_form).post(log_in))
        .route("/logout", axum::routing::post(log_out))
        .with_state(auth)
}

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Only a path on this server: `/x`, never `//host/x` or `https://…`.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_page(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{}</p>", escape_html(p)))
        .unwrap_or_default();
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>restock: log in</title><link rel=\"icon\" href=\"data:,\"><style>body{{font:16px system-ui,sans-serif;max-width:24rem;\
         margin:4rem auto;padding:0 1rem}}input,button{{font:inherit;padding:.5rem;width:100%;\
         box-sizing:border-box;margin:.25rem 0}}.problem{{color:#b00020}}</style></head><body>\
         <h1>restock</h1><p>This page needs the arbiter's token (its <code>--auth-token-file</code>).</p>\
         {problem}<form method=\"post\" action=\"{LOGIN_PATH}\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label>\
         <button type=\"submit\">Log in</button></form></body></html>",
        next = escape_html(local_path(next)),
    );
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

async fn login_form(
    State(auth): State<AuthPolicy>,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Response {
    if !auth.is_on() {
        return axum::response::Redirect::to(local_path(&q.next)).into_response();
    }
    login_page(StatusCode::OK, &q.next, None)
}

async fn log_in(
    State(auth): State<AuthPolicy>,
    axum::extract::Form(form): axum::extract::Form<LoginForm>,
) -> Response {
    if !auth.is_on() {
        return axum::response::Redirect::to(local_path(&form.next)).into_response();
    }
    if !auth.accepts(&form.token) {
        tracing::warn!(route = LOGIN_PATH, "login refused: wrong token");
        return login_page(StatusCode::UNAUTHORIZED, &form.next, Some("Wrong token."));
    }
    let cookie = crate::auth::session_cookie_value(form.token.trim());
    let mut response = axum::response::Redirect::to(local_path(&form.next)).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn log_out() -> Response {
    let mut response = axum::response::Redirect::to(LOGIN_PATH).into_response();
    if let Ok(v) = HeaderValue::from_str(&crate::auth::session_cookie_cleared()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Serves `router` on `listener` until `shutdown` completes; then it stops
/// accepting and waits for the requests in progress. A route that answers
/// with a never-ending body (server-sent events) must end it on the same
/// signal, or this waits for it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!("off".parse::<HttpListen>().unwrap(), HttpListen::Off);
        assert_eq!("".parse::<HttpListen>().unwrap(), HttpListen::Off);
        assert_eq!(
            "127.0.0.1:0".parse::<HttpListen>().unwrap(),
            HttpListen::On("127.0.0.1:0".parse().unwrap())
        );
        let e = "localhost".parse::<HttpListen>().unwrap_err().to_string();
        assert!(
            e.contains("--http-listen") && e.contains("localhost"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn with_a_token_metrics_needs_it_and_liveness_does_not() {
        let token = crate::auth::AuthToken::parse("s3cret").unwrap();
        let routes = |open: Vec<String>| {
            metrics_routes(
                Arc::new(Registry::default()),
                AuthPolicy::new(Some(token.clone()), open),
            )
        };
        let client = reqwest::Client::new();
        for (open, without, wrong, right) in [
            (Vec::new(), 401, 401, 200),
            (vec![METRICS_PATH.to_owned()], 200, 200, 200),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, routes(open), std::future::pending()));
            let get = |auth: Option<&'static str>| {
                let mut r = client.get(format!("http://{addr}/metrics"));
                if let Some(a) = auth {
                    r = r.header("authorization", a);
                }
                async move { r.send().await.unwrap().status().as_u16() }
            };
            assert_eq!(get(None).await, without);
            assert_eq!(get(Some("Bearer nope")).await, wrong);
            assert_eq!(get(Some("Bearer s3cret")).await, right);
            let live = client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .unwrap();
            assert_eq!(live.status(), 200);
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_liveness_until_shutdown() {
        let mut registry = Registry::default();
        let c = Counter::<u64>::default();
        c.inc();
        registry.register("restock_test_things", "Things", c);
        let listener = bind_http(HttpListen::On("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            metrics_routes(Arc::new(registry), AuthPolicy::new(None, Vec::new())),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE.as_str()],
            crate::metrics::TEXT_CONTENT_TYPE
        );
        let text = r.text().await.unwrap();
        assert!(text.contains("restock_test_things_total 1\n"), "{text}");
        let r = client
            .get(format!("http://{addr}/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()[header::CONTENT_TYPE.as_str()],
            crate::metrics::OPENMETRICS_CONTENT_TYPE
        );
        assert!(r.text().await.unwrap().ends_with("# EOF\n"));
        let r = client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(
            client
                .get(format!("http://{addr}/healthz"))
                .send()
                .await
                .is_err()
        );
    }
}
