//! Who may call, and over what: the shared bearer token and TLS, for both
//! servers (the arbiter, a watcher's status service) and for their clients
//! (the watcher, `restockctl`), so every binary reads the same flags the
//! same way.
//!
//! - [`TokenArgs`] and [`AuthToken`]: `--auth-token-file` or
//!   `RESTOCK_AUTH_TOKEN`. The token is never logged (its `Debug` is
//!   redacted).
//! - [`AuthPolicy`] and [`RequireToken`]: wraps one gRPC service; every
//!   method needs `authorization: Bearer TOKEN` except the ones opened
//!   explicitly (`--public-status`). It wraps the service, not the whole
//!   server, so health and reflection stay open.
//! - [`ServerTlsArgs`]: `--tls-cert`, `--tls-key`, `--tls-client-ca`.
//! - [`ClientTlsArgs`] and [`SendToken`]: `--tls-ca`, `--tls-client-cert`,
//!   `--tls-client-key`, and the interceptor that adds the token to every
//!   call.

use std::{
    convert::Infallible,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::{Either, Ready, ready};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    metadata::{AsciiMetadataValue, MetadataValue},
    server::NamedService,
    service::Interceptor,
    transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig},
};

/// Why the token or TLS set-up could not be used. Every variant names the
/// flag (or variable) and the file, and keeps the I/O error it came from.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: not a PEM file with a {label} block", path.display())]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        label: &'static str,
    },
    /// Flags that only work together, given alone.
    #[error("{0}")]
    Flags(&'static str),
    #[error("{origin}: {problem}")]
    BadToken {
        /// `--auth-token-file PATH` or the variable's name.
        origin: String,
        problem: TokenProblem,
    },
    /// The TLS files were read, but the server cannot be set up with them.
    #[error("TLS {describe} cannot be used: {source}")]
    TlsUnusable {
        describe: String,
        source: tonic::transport::Error,
    },
}

/// What is wrong with a token's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("the token is empty")]
    Empty,
    #[error("the token must be printable ASCII without spaces")]
    NotPrintable,
}

/// The environment variable that holds the token itself (the flag takes a
/// file, so the token never shows in `ps`).
pub const TOKEN_ENV: &str = "RESTOCK_AUTH_TOKEN";

/// The shared secret every client presents as `authorization: Bearer TOKEN`.
#[derive(Clone)]
pub struct AuthToken(Arc<str>);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// Checks a token: surrounding white space is dropped (a file's final
    /// newline); what is left must be non-empty printable ASCII without
    /// spaces, so it fits in a header as it is.
    pub fn parse(text: &str) -> Result<Self, TokenProblem> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenProblem::Empty);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenProblem::NotPrintable);
        }
        Ok(Self(t.into()))
    }

    /// Does `presented` equal the token? Takes the same time wherever the
    /// first difference is, so the token cannot be guessed byte by byte.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut diff = u8::from(expected.len() != presented.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }

    fn header(&self) -> AsciiMetadataValue {
        let mut v = MetadataValue::try_from(format!("Bearer {}", self.0))
            .expect("checked in parse: printable ASCII");
        // Kept out of HPACK's dynamic table.
        v.set_sensitive(true);
        v
    }
}

/// `--auth-token-file`, shared by every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArgs {
    /// File holding the shared bearer token (servers require it, clients
    /// send it). RESTOCK_AUTH_TOKEN holds the token itself instead.
    #[arg(long, env = "RESTOCK_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token from the file, else from `RESTOCK_AUTH_TOKEN`; `None` when
    /// neither is set (an empty value counts as unset). Errors name the file.
    pub fn load(&self) -> Result<Option<AuthToken>, AuthError> {
        if let Some(path) = non_empty(&self.auth_token_file) {
            let flag = "--auth-token-file";
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                flag,
                path: path.to_owned(),
                source,
            })?;
            return AuthToken::parse(&text)
                .map(Some)
                .map_err(|problem| AuthError::BadToken {
                    origin: format!("{flag} {}", path.display()),
                    problem,
                });
        }
        match std::env::var(TOKEN_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                AuthToken::parse(&v)
                    .map(Some)
                    .map_err(|problem| AuthError::BadToken {
                        origin: TOKEN_ENV.to_owned(),
                        problem,
                    })
            }
            _ => Ok(None),
        }
    }
}

/// Which calls of one service need the token.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    token: Option<AuthToken>,
    /// Full method paths (`/pkg.Service/Method`) open without a token.
    open: Arc<[String]>,
    refusals: Arc<RefusalLog>,
}

/// At most one warning about refused calls per this long.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// Rate-limits the warning about refused calls, counting the ones it leaves
/// out, so a client with a wrong token that retries in a loop cannot flood
/// the log.
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    /// `Some(n)` when this refusal is to be logged, `n` being how many
    /// refusals since the last logged one were not.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, left_out) = &mut *s;
        match last {
            Some(t) if now.saturating_duration_since(*t) < REFUSAL_LOG_EVERY => {
                *left_out += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(left_out))
            }
        }
    }
}

impl AuthPolicy {
    /// Every method needs `token` (nothing does when it is `None`) except
    /// the `open` method paths.
    pub fn new(token: Option<AuthToken>, open: Vec<String>) -> Self {
        Self {
            token,
            open: open.into(),
            refusals: Arc::default(),
        }
    }

    /// Is a token required at all?
    pub fn is_on(&self) -> bool {
        self.token.is_some()
    }

    /// Lets a call to `path` with these headers through, or says why not.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if self.open.iter().any(|p| p == path) {
            return Ok(());
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "missing bearer token: send metadata `authorization: Bearer TOKEN`",
            ));
        };
        let presented = value.as_bytes();
        let presented = presented
            .strip_prefix(b"Bearer ")
            .or_else(|| presented.strip_prefix(b"bearer "))
            .unwrap_or(b"");
        if token.matches(presented) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong bearer token"))
        }
    }

    /// Like [`Self::check`], for an HTTP route a browser may call: the
    /// token is accepted from `Authorization: Bearer TOKEN` (scrapers,
    /// curl) or from the HttpOnly [`SESSION_COOKIE`] that the login form
    /// sets. A header, when present, decides alone.
    pub fn check_http(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        if self.token.is_none()
            || self.open.iter().any(|p| p == path)
            || headers.contains_key(http::header::AUTHORIZATION)
        {
            return self.check(path, headers);
        }
        match session_cookie(headers) {
            Some(presented) if self.token.as_ref().is_some_and(|t| t.matches(&presented)) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "the session cookie holds a wrong token: log in again at /login",
            )),
            None => Err(Status::unauthenticated(
                "missing bearer token: send `Authorization: Bearer TOKEN`, or log in at /login",
            )),
        }
    }

    /// Does `presented` equal the token? False when there is none.
    pub fn accepts(&self, presented: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| t.matches(presented.trim().as_bytes()))
    }

    /// Wraps a generated gRPC server so that [`Self::check`] runs first.
    pub fn guard<S>(&self, inner: S) -> RequireToken<S> {
        RequireToken {
            inner,
            policy: self.clone(),
        }
    }
}

/// The cookie the HTTP login form sets: the token, hex-encoded (a cookie
/// value may not hold every character a token may), `HttpOnly` so no
/// script on the page can read it.
pub const SESSION_COOKIE: &str = "restock_token";

/// The `Set-Cookie` value that logs a browser in with `token` for 30 days.
pub fn session_cookie_value(token: &str) -> String {
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{SESSION_COOKIE}={hex}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000")
}

/// The `Set-Cookie` value that logs a browser out.
pub fn session_cookie_cleared() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The token in the request's [`SESSION_COOKIE`], decoded; `None` when
/// there is no such cookie or it is not hex.
fn session_cookie(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    let value = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })?;
    if value.len() % 2 != 0 {
        return None;
    }
    (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A gRPC service behind an [`AuthPolicy`]: a refused call is answered
/// `UNAUTHENTICATED` before the service sees it, so nothing changes.
#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    policy: AuthPolicy,
}

impl<S: NamedService> NamedService for RequireToken<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for RequireToken<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Self::Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.policy.check(req.uri().path(), req.headers()) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(status) => {
                if let Some(not_logged) = self.policy.refusals.admit(Instant::now()) {
                    tracing::warn!(
                        method = req.uri().path(),
                        reason = status.message(),
                        refusals_not_logged = not_logged,
                        "call refused: not authenticated (at most one such line a second)"
                    );
                }
                Either::Right(ready(Ok(status.into_http())))
            }
        }
    }
}

/// A server's TLS flags. Without `--tls-cert` and `--tls-key` it serves
/// plaintext.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate (chain) to serve TLS with; needs --tls-key.
    #[arg(long, env = "RESTOCK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "RESTOCK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate signed by
    /// one of them (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "RESTOCK_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// A server's TLS set-up, read and checked.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: ServerTlsConfig,
    pub mutual: bool,
    /// The files, for messages.
    pub describe: String,
}

impl ServerTls {
    /// A gRPC server builder that serves TLS with this set-up; with `None`
    /// (no `--tls-cert`), a plaintext one. Every service starts its server
    /// here, so TLS is set up (and refused) the same way everywhere.
    pub fn server_builder(tls: Option<&Self>) -> Result<tonic::transport::Server, AuthError> {
        let server = tonic::transport::Server::builder();
        match tls {
            None => Ok(server),
            Some(tls) => {
                server
                    .tls_config(tls.config.clone())
                    .map_err(|source| AuthError::TlsUnusable {
                        describe: tls.describe.clone(),
                        source,
                    })
            }
        }
    }
}

impl ServerTlsArgs {
    /// Reads the files; `None` means plaintext. Errors name the file.
    pub fn load(&self) -> Result<Option<ServerTls>, AuthError> {
        let cert = non_empty(&self.tls_cert);
        let key = non_empty(&self.tls_key);
        let client_ca = non_empty(&self.tls_client_ca);
        let (cert, key) = match (cert, key) {
            (None, None) if client_ca.is_some() => {
                return Err(AuthError::Flags(
                    "--tls-client-ca needs --tls-cert and --tls-key",
                ));
            }
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(AuthError::Flags("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(AuthError::Flags("--tls-key needs --tls-cert")),
            (Some(c), Some(k)) => (c, k),
        };
        let cert_pem = read_pem("--tls-cert", cert, "CERTIFICATE")?;
        let key_pem = read_pem("--tls-key", key, "PRIVATE KEY")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca {
            let ca_pem = read_pem("--tls-client-ca", ca, "CERTIFICATE")?;
            config = config.client_ca_root(Certificate::from_pem(ca_pem));
        }
        Ok(Some(ServerTls {
            config,
            mutual: client_ca.is_some(),
            describe: format!(
                "--tls-cert {} / --tls-key {}{}",
                cert.display(),
                key.display(),
                client_ca
                    .map(|c| format!(" / --tls-client-ca {}", c.display()))
                    .unwrap_or_default()
            ),
        }))
    }
}

/// A client's TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate(s) to trust for the server; turns TLS on (an
    /// http:// URL is then used as https://). An https:// URL without it
    /// trusts the usual public CAs.
    #[arg(long, env = "RESTOCK_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that require one (mutual TLS);
    /// needs --tls-client-key.
    #[arg(long, env = "RESTOCK_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "RESTOCK_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The URL to dial and its TLS set-up (`None`: plaintext). With any TLS
    /// flag an `http://` URL becomes `https://`. Errors name the file.
    pub fn load(&self, url: &str) -> Result<(String, Option<ClientTlsConfig>), AuthError> {
        let ca = non_empty(&self.tls_ca);
        let cert = non_empty(&self.tls_client_cert);
        let key = non_empty(&self.tls_client_key);
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(AuthError::Flags("--tls-client-cert needs --tls-client-key"));
            }
            (None, Some(_)) => {
                return Err(AuthError::Flags("--tls-client-key needs --tls-client-cert"));
            }
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read_pem("--tls-client-cert", c, "CERTIFICATE")?,
                read_pem("--tls-client-key", k, "PRIVATE KEY")?,
            )),
        };
        let https = url.starts_with("https://");
        if !https && ca.is_none() && identity.is_none() {
            return Ok((url.to_owned(), None));
        }
        let url = match url.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_owned(),
        };
        let mut config = ClientTlsConfig::new();
        config = match ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read_pem(
                "--tls-ca",
                ca,
                "CERTIFICATE",
            )?)),
            None => config.with_webpki_roots(),
        };
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        Ok((url, Some(config)))
    }
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing without a
/// token).
#[derive(Clone, Default)]
pub struct SendToken(Option<AsciiMetadataValue>);

impl fmt::Debug for SendToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "SendToken(<redacted>)"
        } else {
            "SendToken(none)"
        })
    }
}

impl SendToken {
    pub fn new(token: Option<&AuthToken>) -> Self {
        Self(token.map(AuthToken::header))
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// An unset or empty path is no path (compose passes empty variables).
fn non_empty(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// Reads a PEM file and checks it holds a `label` block, so a wrong or
/// broken file is reported by name at start-up, not as a handshake failure.
fn read_pem(flag: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, AuthError> {
    let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !has_block {
        return Err(AuthError::NotPem {
            flag,
            path: path.to_owned(),
            label,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    fn policy(public: &[&str]) -> AuthPolicy {
        AuthPolicy::new(
            Some(AuthToken::parse("s3cret\n").unwrap()),
            public.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn the_right_token_passes_and_others_are_told_why_not() {
        let p = policy(&[]);
        let m = "/restock.v1.PurchaseArbiter/AcquirePurchase";
        p.check(m, &headers(Some("Bearer s3cret"))).unwrap();
        let missing = p.check(m, &headers(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("missing"), "{missing:?}");
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cretx",
            "s3cret",
            "Basic s3cret",
            "Bearer ",
        ] {
            let e = p.check(m, &headers(Some(wrong))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains("wrong"), "{wrong}: {e:?}");
        }
    }

    #[test]
    fn a_browser_passes_with_the_login_cookie_and_a_header_decides_alone() {
        let p = policy(&["/open"]);
        let cookie = |value: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::COOKIE, value.parse().unwrap());
            h
        };
        let set = session_cookie_value("s3cret");
        let pair = set.split(';').next().unwrap();
        assert_eq!(pair, "restock_token=733363726574");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        p.check_http("/", &cookie(pair)).unwrap();
        p.check_http("/", &cookie(&format!("theme=dark; {pair}; x=1")))
            .unwrap();
        // The cookie means nothing to gRPC calls.
        assert!(p.check("/", &cookie(pair)).is_err());
        let wrong = p
            .check_http("/", &cookie("restock_token=733363726575"))
            .unwrap_err();
        assert!(wrong.message().contains("/login"), "{wrong:?}");
        for bad in [
            "restock_token=zz",
            "restock_token=733",
            "other=733363726574",
        ] {
            assert!(p.check_http("/", &cookie(bad)).is_err(), "{bad}");
        }
        let none = p.check_http("/", &http::HeaderMap::new()).unwrap_err();
        assert!(none.message().contains("missing"), "{none:?}");
        // A wrong header is refused even with a good cookie.
        let mut both = cookie(pair);
        both.insert(http::header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(p.check_http("/", &both).is_err());
        p.check_http("/open", &http::HeaderMap::new()).unwrap();
        assert!(p.accepts("s3cret") && !p.accepts("s3cre"));
        assert!(!AuthPolicy::new(None, Vec::new()).accepts("s3cret"));
    }

    #[test]
    fn refusal_warnings_are_rate_limited_and_counted() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(log.admit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.admit(t0 + Duration::from_millis(1_000)), Some(3));
        assert_eq!(log.admit(t0 + Duration::from_millis(1_500)), None);
        assert_eq!(log.admit(t0 + Duration::from_millis(5_000)), Some(1));
    }

    #[test]
    fn open_methods_and_no_token_need_nothing() {
        let p = policy(&["/restock.v1.PurchaseArbiter/GetStatus"]);
        p.check("/restock.v1.PurchaseArbiter/GetStatus", &headers(None))
            .unwrap();
        assert!(
            p.check("/restock.v1.PurchaseArbiter/SetPaused", &headers(None))
                .is_err()
        );
        AuthPolicy::new(None, vec![])
            .check("/restock.v1.PurchaseArbiter/SetPaused", &headers(None))
            .unwrap();
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(AuthToken::parse("  \n").is_err());
        assert!(AuthToken::parse("two words").is_err());
        let t = AuthToken::parse("s3cret").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!format!("{:?}", SendToken::new(Some(&t))).contains("s3cret"));
        assert!(!format!("{:?}", TokenArgs::default()).contains("s3cret"));
    }

    #[test]
    fn a_missing_or_wrong_pem_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        let args = ServerTlsArgs {
            tls_cert: Some(junk.clone()),
            tls_key: Some(dir.path().join("absent.pem")),
            tls_client_ca: None,
        };
        let e = args.load().unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("junk.pem"), "{e}");
        let half = ServerTlsArgs {
            tls_cert: Some(junk),
            ..Default::default()
        };
        assert!(half.load().unwrap_err().to_string().contains("--tls-key"));
        assert!(ServerTlsArgs::default().load().unwrap().is_none());
    }

    #[test]
    fn clients_upgrade_http_only_with_tls_flags() {
        let none = ClientTlsArgs::default();
        let (url, tls) = none.load("http://a:1").unwrap();
        assert_eq!(url, "http://a:1");
        assert!(tls.is_none());
        let (url, tls) = none.load("https://a:1").unwrap();
        assert_eq!(url, "https://a:1");
        assert!(tls.is_some());
    }
}
