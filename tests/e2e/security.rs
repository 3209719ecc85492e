//! TLS and the shared bearer token, against the real binaries: certificates
//! come from `scripts/make-certs.sh` (so the script is tested too), and the
//! checks are made with tonic clients, `restockctl`, a real watcher buying
//! from the store simulator, and the real `grpcurl`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use restock_proto::v1::{
    self as pb, purchase_arbiter_client::PurchaseArbiterClient,
    stock_watcher_client::StockWatcherClient,
};
use restock_testkit::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, StoreSimProcess, WatcherProcess, bin,
    products_json, purchased, repo_root, run_grpcurl,
};
use serde_json::{Value, json};
use tonic::{
    Code, Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const LONG: Duration = Duration::from_secs(30);
const STATUS: &str = "/restock.v1.PurchaseArbiter/GetStatus";

/// A folder made by `scripts/make-certs.sh`.
struct Certs(tempfile::TempDir);

impl Certs {
    fn make() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo_root().join("scripts/make-certs.sh"))
            .arg(dir.path())
            .output()
            .expect("run scripts/make-certs.sh");
        assert!(
            out.status.success(),
            "make-certs.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.path("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn pem(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// TLS trusting this CA, optionally with the client certificate.
    fn client_tls(&self, with_client_cert: bool) -> ClientTlsConfig {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pem("ca.pem")));
        if with_client_cert {
            tls.identity(Identity::from_pem(
                self.pem("client.pem"),
                self.pem("client-key.pem"),
            ))
        } else {
            tls
        }
    }

    /// The server flags: certificate, key, and the token file.
    fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("server.pem"),
            "--tls-key".into(),
            self.arg("server-key.pem"),
            "--auth-token-file".into(),
            self.arg("token"),
        ]
    }
}

/// Starts the arbiter with these products, in TEST_MODE with a 5 s lease;
/// its health is checked over TLS when `tls` is given.
async fn start_arbiter(
    list: &Value,
    extra: Vec<String>,
    tls: Option<ClientTlsConfig>,
) -> ArbiterProcess {
    ArbiterProcess::start(ArbiterOptions {
        products_json: Some(list.clone()),
        lease_ttl: "5s".into(),
        test_mode: true,
        extra_args: extra,
        health_tls: tls,
        ..ArbiterOptions::default()
    })
    .await
}

/// [`start_arbiter`] with TLS and the token from `certs`.
async fn tls_arbiter(certs: &Certs, list: &Value) -> ArbiterProcess {
    start_arbiter(list, certs.server_args(), Some(certs.client_tls(false))).await
}

async fn channel(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap(),
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Connects and asks for health: the first failure, as text.
async fn health_check(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let ch = channel(addr, tls).await?;
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

/// `req` with `authorization: Bearer token` when `token` is given.
fn authed<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

fn assert_unauthenticated<T: std::fmt::Debug>(call: &str, r: Result<T, Status>, why: &str) {
    let e = r.expect_err(call);
    assert_eq!(e.code(), Code::Unauthenticated, "{call}: {e:?}");
    assert!(e.message().contains(why), "{call}: {e:?}");
}

/// Every state-changing or streaming call, with `token`, must be refused.
async fn every_guarded_call_is_refused(
    c: &mut PurchaseArbiterClient<Channel>,
    token: Option<&str>,
    why: &str,
) {
    let acquire = pb::AcquirePurchaseRequest {
        tcin: "100".into(),
        watcher_id: "intruder".into(),
        request_id: String::new(),
    };
    assert_unauthenticated(
        "AcquirePurchase",
        c.acquire_purchase(authed(acquire, token)).await,
        why,
    );
    let renew = pb::RenewLeaseRequest {
        lease_id: "x".into(),
        fencing_token: 1,
    };
    assert_unauthenticated("RenewLease", c.renew_lease(authed(renew, token)).await, why);
    let release = pb::ReleasePurchaseRequest {
        lease_id: "x".into(),
        fencing_token: 1,
        outcome: pb::Outcome::Purchased as i32,
        detail: String::new(),
        paid_price_cents: None,
    };
    assert_unauthenticated(
        "ReleasePurchase",
        c.release_purchase(authed(release, token)).await,
        why,
    );
    let reports = tokio_stream::iter(vec![pb::StockReport {
        watcher_id: "intruder".into(),
        ..Default::default()
    }]);
    assert_unauthenticated(
        "StreamStock",
        c.stream_stock(authed(reports, token)).await,
        why,
    );
    let from = pb::WatchEventsRequest { from_sequence: 1 };
    assert_unauthenticated(
        "WatchEvents",
        c.watch_events(authed(from, token)).await,
        why,
    );
    let reset = pb::ResetProductRequest { tcin: "100".into() };
    assert_unauthenticated(
        "ResetProduct",
        c.reset_product(authed(reset, token)).await,
        why,
    );
    let pause = pb::SetPausedRequest { paused: true };
    assert_unauthenticated("SetPaused", c.set_paused(authed(pause, token)).await, why);
    assert_unauthenticated(
        "ReloadConfig",
        c.reload_config(authed(pb::ReloadConfigRequest {}, token))
            .await,
        why,
    );
}

async fn status(
    c: &mut PurchaseArbiterClient<Channel>,
    token: Option<&str>,
) -> pb::GetStatusResponse {
    c.get_status(authed(pb::GetStatusRequest::default(), token))
        .await
        .expect("GetStatus")
        .into_inner()
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_unauthenticated_and_changes_nothing() {
    let certs = Certs::make();
    let token = certs.token();
    let list = products_json(&["100", "200"]);
    let arbiter = start_arbiter(
        &list,
        vec!["--auth-token-file".into(), certs.arg("token")],
        None,
    )
    .await;
    let mut c = PurchaseArbiterClient::new(channel(arbiter.addr(), None).await.unwrap());
    let before = status(&mut c, Some(&token)).await;

    every_guarded_call_is_refused(&mut c, None, "missing").await;
    every_guarded_call_is_refused(&mut c, Some("not-the-token"), "wrong").await;
    every_guarded_call_is_refused(&mut c, Some(&format!("{token}x")), "wrong").await;
    assert_unauthenticated(
        "GetStatus",
        c.get_status(authed(pb::GetStatusRequest::default(), None))
            .await,
        "missing",
    );

    let after = status(&mut c, Some(&token)).await;
    assert!(after.active_lease.is_none(), "no lease: {after:?}");
    assert!(!after.paused);
    assert_eq!(after.next_fencing_token, before.next_fencing_token);
    assert_eq!(after.last_event_sequence, before.last_event_sequence);
    assert!(after.watchers.is_empty(), "{after:?}");

    // The right token works for a state change.
    let r = c
        .set_paused(authed(pb::SetPausedRequest { paused: true }, Some(&token)))
        .await
        .unwrap();
    assert!(r.into_inner().paused);
    assert!(status(&mut c, Some(&token)).await.paused);

    // The token is never written to the log.
    let log = arbiter.process.log_text();
    assert!(!log.contains(&token), "the token leaked into the log");
    assert!(log.contains("auth=true"), "{log}");
}

#[tokio::test]
async fn public_status_opens_get_status_only() {
    let certs = Certs::make();
    let list = products_json(&["100"]);
    let arbiter = start_arbiter(
        &list,
        vec![
            "--auth-token-file".into(),
            certs.arg("token"),
            "--public-status".into(),
        ],
        None,
    )
    .await;
    let mut c = PurchaseArbiterClient::new(channel(arbiter.addr(), None).await.unwrap());
    let s = status(&mut c, None).await;
    assert_eq!(s.products.len(), 1);
    every_guarded_call_is_refused(&mut c, None, "missing").await;
    assert!(!status(&mut c, None).await.paused);

    // restockctl: status is open, pause is not.
    let ctl = |args: &[&str]| {
        Command::new(bin("restockctl"))
            .args(["--arbiter", &arbiter.addr().to_string()])
            .args(args)
            .env_remove("RESTOCK_AUTH_TOKEN")
            .output()
            .unwrap()
    };
    assert!(ctl(&["status"]).status.success());
    let refused = ctl(&["pause"]);
    assert_eq!(refused.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"));
    let with_token = ctl(&["--auth-token-file", &certs.arg("token"), "pause"]);
    assert!(
        with_token.status.success(),
        "{}",
        String::from_utf8_lossy(&with_token.stderr)
    );
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails() {
    let certs = Certs::make();
    let stranger = Certs::make();
    let arbiter = tls_arbiter(&certs, &products_json(&["100"])).await;
    let e = channel(arbiter.addr(), Some(stranger.client_tls(false)))
        .await
        .expect_err("a CA that did not sign the server's certificate");
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("InvalidCertificate"),
        "{e}"
    );
    // Plaintext against a TLS server gets nowhere either.
    let plain = health_check(arbiter.addr(), None).await;
    assert!(plain.is_err());

    // restockctl: the wrong CA is a connection failure (exit 3), the right
    // one works, and https:// is implied by --tls-ca.
    let ctl = |ca: &Certs| {
        Command::new(bin("restockctl"))
            .args(["--arbiter", &arbiter.addr().to_string()])
            .args(["--tls-ca", &ca.arg("ca.pem")])
            .args(["--auth-token-file", &certs.arg("token"), "status"])
            .output()
            .unwrap()
    };
    let bad = ctl(&stranger);
    assert_eq!(bad.status.code(), Some(3), "{bad:?}");
    let good = ctl(&certs);
    assert!(good.status.success(), "{good:?}");
}

#[tokio::test]
async fn a_bad_certificate_or_key_file_stops_start_up_naming_it() {
    let certs = Certs::make();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let config = dir.path().join("product_config.json");
    std::fs::write(
        &config,
        json!({ "products": products_json(&["100"]) }).to_string(),
    )
    .unwrap();
    let start = |cert: &Path, key: &Path| {
        Command::new(bin("purchase-arbiter"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
            .args(["--config", &config.display().to_string()])
            .args([
                "--state-file",
                &dir.path().join("state.json").display().to_string(),
            ])
            .args(["--tls-cert", &cert.display().to_string()])
            .args(["--tls-key", &key.display().to_string()])
            .output()
            .unwrap()
    };
    let out = start(&junk, &certs.path("server-key.pem"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("junk.pem"),
        "{err}"
    );
    let out = start(
        &certs.path("server.pem"),
        &dir.path().join("absent-key.pem"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent-key.pem"), "{err}");
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let certs = Certs::make();
    let mut args = certs.server_args();
    args.extend(["--tls-client-ca".into(), certs.arg("ca.pem")]);
    let arbiter = start_arbiter(&products_json(&["100"]), args, Some(certs.client_tls(true))).await;

    // TLS 1.3 reports the missing certificate after the handshake, on the
    // first request: a health check is that request.
    let without = health_check(arbiter.addr(), Some(certs.client_tls(false))).await;
    assert!(without.is_err(), "a client without a certificate got in");

    let ctl = Command::new(bin("restockctl"))
        .args(["--arbiter", &arbiter.addr().to_string(), "health"])
        .env("RESTOCK_TLS_CA", certs.path("ca.pem"))
        .env("RESTOCK_TLS_CLIENT_CERT", certs.path("client.pem"))
        .env("RESTOCK_TLS_CLIENT_KEY", certs.path("client-key.pem"))
        .output()
        .unwrap();
    assert!(ctl.status.success(), "{ctl:?}");
}

#[tokio::test]
async fn tls_and_token_end_to_end_with_a_real_watcher() {
    let certs = Certs::make();
    let token = certs.token();
    let list = products_json(&["100"]);
    let arbiter = tls_arbiter(&certs, &list).await;
    let store = StoreSimProcess::start(list, &["--checkout-delay", "100ms"]).await;
    // `arbiter.url()` is http://; --tls-ca makes the watcher use https://.
    let watcher = WatcherProcess::start(
        &arbiter,
        &store,
        "w-tls",
        &[
            "--tls-ca",
            &certs.arg("ca.pem"),
            "--auth-token-file",
            &certs.arg("token"),
        ],
    )
    .await;
    store.set_stock("100", true).await;
    let start = std::time::Instant::now();
    loop {
        let orders = store.orders().await;
        if purchased(&orders).len() >= 2 {
            assert_eq!(orders["violations"], 0, "{orders:#}");
            break;
        }
        assert!(start.elapsed() < LONG, "no purchases over TLS: {orders:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The watcher's own status service takes the same token.
    let mut w = StockWatcherClient::new(channel(watcher.addr(), None).await.unwrap());
    let r = w
        .get_watcher_status(authed(pb::GetWatcherStatusRequest::default(), None))
        .await;
    assert_unauthenticated("GetWatcherStatus", r, "missing");
    let s = w
        .get_watcher_status(authed(pb::GetWatcherStatusRequest::default(), Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert!(s.arbiter_connected, "{s:?}");
    assert!(!watcher.process.log_text().contains(&token));
}

#[tokio::test]
async fn grpcurl_with_the_ca_and_the_token_header_works() {
    let Some(grpcurl) = restock_testkit::grpcurl() else {
        return;
    };
    let certs = Certs::make();
    let arbiter = tls_arbiter(&certs, &products_json(&["100"])).await;
    let addr = arbiter.addr().to_string();
    let addr = addr.as_str();
    let header = format!("authorization: Bearer {}", certs.token());
    let ca = certs.arg("ca.pem");
    let method = &STATUS[1..];
    let (ok, out, err) = run_grpcurl(&grpcurl, &["-cacert", &ca, "-H", &header, addr, method]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"products\""), "{out}");
    // By name (a SAN of the certificate), as a user would.
    let port = arbiter.addr().port();
    let (ok, out, err) = run_grpcurl(
        &grpcurl,
        &[
            "-cacert",
            &ca,
            "-H",
            &header,
            &format!("localhost:{port}"),
            method,
        ],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_grpcurl(&grpcurl, &["-cacert", &ca, addr, method]);
    assert!(
        !ok && format!("{out}{err}").contains("Unauthenticated"),
        "{out}{err}"
    );
    // Reflection is open: listing needs no token.
    let (ok, out, err) = run_grpcurl(&grpcurl, &["-cacert", &ca, addr, "list"]);
    assert!(
        ok && out.contains("restock.v1.PurchaseArbiter"),
        "{out}{err}"
    );
}
