//! The arbiter's HTTP side, over real HTTP to the real binary: `/api/status`
//! says what `GetStatus` says (in the JSON grpcurl prints), `/events` follows
//! the history as server-sent events and resumes after `Last-Event-ID`, the
//! token guards every route but `/healthz` (Bearer header or the login
//! cookie), `--public-status` opens the read-only ones, and an open
//! `/events` does not hold the arbiter up when it stops. The page itself is
//! tested in a real browser (`status_page`).

use std::time::Duration;

use restock_proto::v1 as pb;
use restock_testkit::{ArbiterEndpoint, ArbiterOptions, ArbiterProcess, grpcurl, run_grpcurl};
use serde_json::Value;

use crate::helpers::{must_acquire, release};

const LONG: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(LONG)
        .build()
        .unwrap()
}

/// One server-sent event as it came: its id and data (comments, `retry:`
/// and blank lines are dropped); `event` is set for named events.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// Reads an open `/events` response until `want` events came (or `LONG`).
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{response:?}"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut e = Sse {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        e.id = Some(v.trim().parse().expect("a numeric id"));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        e.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data.push_str(v.trim_start());
                    }
                }
                if e.id.is_some() || e.event.is_some() {
                    return Some(e);
                }
                continue;
            }
            let chunk = tokio::time::timeout(LONG, self.response.chunk())
                .await
                .expect("an event within the time limit")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.next().await.expect("the stream to go on"));
        }
        out
    }
}

fn kind(e: &Sse) -> String {
    let v: Value = serde_json::from_str(&e.data).expect("event data is JSON");
    v["kind"].as_str().unwrap_or_default().to_owned()
}

/// Three grants and releases: events 2.. after ARBITER_STARTED (1).
async fn three_cycles(arbiter: &ArbiterProcess) -> u64 {
    let mut c = arbiter.client().await;
    for tcin in ["100", "200", "300"] {
        let lease = must_acquire(&mut c, tcin, "w1").await;
        release(&mut c, &lease, pb::Outcome::Purchased)
            .await
            .expect("release");
    }
    arbiter.status().await.last_event_sequence
}

#[tokio::test]
async fn api_status_says_what_get_status_says_in_the_json_grpcurl_prints() {
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        test_mode: true,
        ..ArbiterOptions::default()
    })
    .await;
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "200", "w1").await;

    let r = http()
        .get(format!("{}/api/status", arbiter.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let text = r.text().await.unwrap();
    let mut from_http: pb::GetStatusResponse = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not a GetStatusResponse: {e}: {text}"));
    let mut from_grpc = arbiter.status().await;
    // The two answers were made at different moments.
    assert!(from_http.unix_ms > 0 && from_grpc.unix_ms >= from_http.unix_ms);
    for s in [&mut from_http, &mut from_grpc] {
        s.unix_ms = 0;
        s.active_lease.as_mut().expect("the lease").remaining_ms = 0;
    }
    assert_eq!(from_http, from_grpc);
    assert_eq!(
        from_http.active_lease.unwrap().fencing_token,
        lease.fencing_token
    );

    // The same names and value forms as grpcurl's output.
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["activeLease"]["tcin"], "200");
    assert_eq!(
        json["activeLease"]["fencingToken"],
        lease.fencing_token.to_string()
    );
    assert_eq!(json["products"][1]["state"], "ATTEMPTING");
    assert_eq!(json["testMode"], true);
    if let Some(grpcurl) = grpcurl() {
        let addr = arbiter.addr().to_string();
        let (ok, out, err) = run_grpcurl(
            &grpcurl,
            &["-plaintext", &addr, "restock.v1.PurchaseArbiter/GetStatus"],
        );
        assert!(ok, "grpcurl: {err}");
        let by_grpcurl: Value = serde_json::from_str(&out).unwrap();
        for (a, b) in [
            (
                &by_grpcurl["activeLease"]["leaseId"],
                &json["activeLease"]["leaseId"],
            ),
            (
                &by_grpcurl["activeLease"]["fencingToken"],
                &json["activeLease"]["fencingToken"],
            ),
            (&by_grpcurl["products"], &json["products"]),
            (&by_grpcurl["nextFencingToken"], &json["nextFencingToken"]),
        ] {
            assert_eq!(a, b, "grpcurl: {out}\n/api/status: {text}");
        }
    }
}

#[tokio::test]
async fn events_follow_the_history_live_and_resume_after_last_event_id() {
    let arbiter =
        ArbiterProcess::start(ArbiterOptions::products(&["100", "200", "300", "400"])).await;
    let last = three_cycles(&arbiter).await;
    assert!(last >= 7, "expected 7 events or more, got {last}");
    let url = format!("{}/events", arbiter.http_url());

    // A first connection gets the recent history, in order, then live.
    let mut feed = SseReader::new(http().get(&url).send().await.unwrap());
    let history = feed.take(last as usize).await;
    let ids: Vec<u64> = history.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=last).collect::<Vec<_>>());
    assert_eq!(kind(&history[0]), "ARBITER_STARTED");
    assert_eq!(kind(&history[1]), "GRANTED");
    let data: Value = serde_json::from_str(&history[1].data).unwrap();
    assert_eq!(data["tcin"], "100");
    assert_eq!(data["sequence"], "2");
    let mut c = arbiter.client().await;
    let lease = must_acquire(&mut c, "400", "w2").await;
    let live = feed.next().await.unwrap();
    assert_eq!(live.id, Some(last + 1));
    assert_eq!(kind(&live), "GRANTED");
    let data: Value = serde_json::from_str(&live.data).unwrap();
    assert_eq!(data["fencingToken"], lease.fencing_token.to_string());
    assert_eq!(data["watcherId"], "w2");

    // A browser reconnecting sends the last id it saw.
    let resumed = http()
        .get(&url)
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap();
    let mut resumed = SseReader::new(resumed);
    let next = resumed.take(2).await;
    assert_eq!(next[0].id, Some(4));
    assert_eq!(next[1].id, Some(5));
    assert!(next.iter().all(|e| e.event.is_none()), "{next:?}");
    // ?from= starts anywhere in the history.
    let mut from = SseReader::new(
        http()
            .get(format!("{url}?from={last}"))
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(from.next().await.unwrap().id, Some(last));

    // Bad positions are refused with what was wrong.
    for (header, query, says) in [
        (Some("seven"), "", "Last-Event-ID"),
        (None, "?from=-1", "?from="),
    ] {
        let mut r = http().get(format!("{url}{query}"));
        if let Some(h) = header {
            r = r.header("last-event-id", h);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 400);
        let text = r.text().await.unwrap();
        assert!(text.contains(says), "{text}");
    }
}

#[tokio::test]
async fn an_open_event_stream_ends_when_the_arbiter_stops_and_does_not_hold_it() {
    let mut arbiter = ArbiterProcess::start(ArbiterOptions::default()).await;
    let mut feed = SseReader::new(
        http()
            .get(format!("{}/events", arbiter.http_url()))
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(feed.next().await.unwrap().id, Some(1));
    let code = arbiter.process.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "the arbiter must stop cleanly, and in time");
    let rest = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the stream ends when the arbiter stops");
    assert!(rest.is_none(), "{rest:?}");
}

fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("token");
    std::fs::write(&path, "page-s3cret\n").unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn with_a_token_every_route_but_liveness_needs_it_from_a_header_or_the_login_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec!["--auth-token-file".into(), token_file(&dir)],
        ..ArbiterOptions::default()
    })
    .await;
    let base = arbiter.http_url();
    let client = http();
    let get = |path: &str, auth: Option<String>, cookie: Option<String>| {
        let mut r = client.get(format!("{base}{path}"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };

    // Without the token: the page sends a browser to the form, the rest
    // answer 401 saying what is missing.
    let page = get("/", None, None).await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login?next=/");
    for path in ["/api/status", "/events", "/metrics", "/assets/app.js"] {
        let r = get(path, None, None).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains("missing"), "{path}: {text}");
        let wrong = get(path, Some("Bearer nope".into()), None).await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
    assert_eq!(get("/healthz", None, None).await.unwrap().status(), 200);
    let form = get("/login?next=/", None, None).await.unwrap();
    assert_eq!(form.status(), 200);
    let form = form.text().await.unwrap();
    assert!(
        form.contains("name=\"token\"") && form.contains("type=\"password\""),
        "{form}"
    );

    // A wrong token at the form: told so, no cookie.
    let refused = client
        .post(format!("{base}/login"))
        .form(&[("token", "nope"), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    assert!(refused.text().await.unwrap().contains("Wrong token"));

    // The right one: an HttpOnly cookie and back to the page; the cookie
    // opens every route. A `next` elsewhere is not followed.
    let admitted = client
        .post(format!("{base}/login"))
        .form(&[("token", "page-s3cret"), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 303);
    assert_eq!(admitted.headers()["location"], "/");
    let set = admitted.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    for path in [
        "/",
        "/api/status",
        "/events",
        "/metrics",
        "/assets/app.js",
        "/assets/style.css",
    ] {
        let r = get(path, None, Some(cookie.clone())).await.unwrap();
        assert_eq!(r.status(), 200, "{path} with the login cookie");
        let r = get(path, Some("Bearer page-s3cret".into()), None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the bearer header");
    }
    let page = get("/", None, Some(cookie)).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("id=\"slot\""));

    // Logging out clears the cookie.
    let out = client.post(format!("{base}/logout")).send().await.unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn public_status_opens_the_page_its_json_events_and_metrics_but_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let arbiter = ArbiterProcess::start(ArbiterOptions {
        extra_args: vec![
            "--auth-token-file".into(),
            token_file(&dir),
            "--public-status".into(),
        ],
        ..ArbiterOptions::default()
    })
    .await;
    let base = arbiter.http_url();
    let client = http();
    for path in ["/", "/api/status", "/events", "/metrics"] {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} with --public-status");
    }
    // Changing anything still needs the token.
    let mut c = arbiter.client().await;
    let refused = c
        .set_paused(pb::SetPausedRequest { paused: true })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}
