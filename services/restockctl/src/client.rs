//! Connecting to a server and making one call: the URL, the connect and call
//! time limits, and the mapping of failures to [`CtlError`]s that say what
//! failed.
//!
//! An arbiter target may list several replicas (`--arbiter A,B,C`): then
//! [`Target::find_leader`] asks `GetStatus` until it reaches the leader (a
//! follower names it), and [`Target::leader_call`] makes a call at the
//! replica tried now, again at once at the leader an `UNAVAILABLE` answer
//! names, or at the next URL when one cannot be reached. With one URL each
//! makes exactly one attempt, with the same errors as before replicas.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use restock_proto::{
    ROLE_FOLLOWER,
    v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient},
};
use restock_runtime::{
    arbiters::{ArbiterTracker, ArbiterUrls, Move, same_url},
    auth::{ClientTlsArgs, SendToken, TokenArgs},
    leader::leader_hint,
};
use tonic::{
    Code,
    service::interceptor::InterceptedService,
    transport::{ClientTlsConfig, Endpoint},
};

use crate::error::{CtlError, error_chain};

/// A client of the arbiter over a [`Channel`].
pub type ArbiterClient = PurchaseArbiterClient<Channel>;

/// A connection that sends the shared token (if any) on every call.
pub type Channel = InterceptedService<tonic::transport::Channel, SendToken>;

/// HTTP/2 pings keep long streams honest: a silently dropped link is noticed
/// within about this long instead of never.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// A server to talk to, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The normalised URL (`http://host:port`).
    pub url: String,
    /// For connecting, and for each unary call.
    pub timeout: Duration,
    /// What the server is, for messages ("arbiter", "server").
    pub role: &'static str,
    /// `None`: plaintext.
    pub tls: Option<ClientTlsConfig>,
    pub token: SendToken,
    /// Every arbiter replica given, and which one to try now (shared by
    /// the clones of this target). `None` for any other server.
    replicas: Option<Arc<Replicas>>,
    /// The URL as given (before TLS made `http://` into `https://`): the
    /// replica's name in the tracker.
    given: String,
}

#[derive(Debug)]
struct Replicas {
    tls: ClientTlsArgs,
    // A std mutex: nothing awaits while it is held.
    tracker: Mutex<ArbiterTracker>,
}

/// A bare `host:port` means `http://host:port`.
fn with_scheme(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

impl Target {
    /// Checks and normalises `url`; a bare `host:port` means `http://host:port`.
    pub fn new(url: &str, timeout: Duration, role: &'static str) -> Result<Self, CtlError> {
        let url = with_scheme(url);
        Endpoint::from_shared(url.clone()).map_err(|e| CtlError::BadUrl {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Self {
            url: url.clone(),
            timeout,
            role,
            tls: None,
            token: SendToken::default(),
            replicas: None,
            given: url,
        })
    }

    /// The arbiter, as `--arbiter` gives it: one URL or every replica's,
    /// comma-separated (each a URL or a bare `host:port`). The target's
    /// `url` is the first; TLS and the token apply to each.
    pub fn arbiters(
        list: &str,
        timeout: Duration,
        tls: &ClientTlsArgs,
        token: &TokenArgs,
    ) -> Result<Self, CtlError> {
        // An empty entry stays empty, for the list's own error.
        let entries: Vec<String> = list
            .split(',')
            .map(|e| {
                if e.trim().is_empty() {
                    String::new()
                } else {
                    with_scheme(e)
                }
            })
            .collect();
        for entry in entries.iter().filter(|e| !e.is_empty()) {
            Self::new(entry, timeout, "arbiter")?;
        }
        let urls = ArbiterUrls::parse(&entries.join(",")).map_err(|e| CtlError::BadUrl {
            url: list.trim().to_owned(),
            reason: e.to_string(),
        })?;
        let first = Self::new(urls.first(), timeout, "arbiter")?.secured(tls, token)?;
        // Every URL's TLS set-up is checked now, so a bad one is a usage
        // error before anything is called.
        for url in urls.urls() {
            tls.load(url).map_err(|e| CtlError::Setup(e.to_string()))?;
        }
        Ok(Self {
            replicas: Some(Arc::new(Replicas {
                tls: tls.clone(),
                tracker: Mutex::new(ArbiterTracker::new(urls)),
            })),
            ..first
        })
    }

    /// The same target with another time limit.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The same target, named `role` in messages.
    pub fn with_role(&self, role: &'static str) -> Self {
        Self {
            role,
            ..self.clone()
        }
    }

    /// Adds TLS (an `http://` URL becomes `https://`) and the token.
    pub fn secured(self, tls: &ClientTlsArgs, token: &TokenArgs) -> Result<Self, CtlError> {
        let (url, tls) = tls
            .load(&self.url)
            .map_err(|e| CtlError::Setup(e.to_string()))?;
        let token = token.load().map_err(|e| CtlError::Setup(e.to_string()))?;
        Ok(Self {
            url,
            tls,
            token: SendToken::new(token.as_ref()),
            ..self
        })
    }

    /// Opens a connection now, so that an unreachable server is reported as
    /// such before anything else happens. The channel reconnects by itself
    /// later if the link drops.
    pub async fn connect(&self) -> Result<Channel, CtlError> {
        let bad_url = |e: tonic::transport::Error| CtlError::BadUrl {
            url: self.url.clone(),
            reason: error_chain(&e),
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone()).map_err(bad_url)?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(bad_url)?;
        }
        let endpoint = endpoint
            .connect_timeout(self.timeout)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        match tokio::time::timeout(self.timeout, endpoint.connect()).await {
            Err(_) => Err(self.unreachable(format!(
                "no connection within {}",
                humantime::format_duration(self.timeout)
            ))),
            Ok(Err(e)) => Err(self.unreachable(error_chain(&e))),
            Ok(Ok(channel)) => Ok(InterceptedService::new(channel, self.token.clone())),
        }
    }

    fn tracker(&self) -> Option<MutexGuard<'_, ArbiterTracker>> {
        self.replicas
            .as_ref()
            .map(|r| r.tracker.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// At most how many attempts finding the leader may take: each URL
    /// once, and a hint or two on top. Attempts stop sooner when nothing
    /// moves (one URL that failed) or every URL failed in a row.
    fn attempts(&self) -> usize {
        self.tracker().map_or(1, |t| t.urls().len() + 2)
    }

    /// After `at` failed with `status` (`None`: no connection): moves on,
    /// and says whether to stop trying (nowhere else to go, or every URL
    /// failed in a row).
    fn give_up(&self, at: &Self, status: Option<&tonic::Status>) -> bool {
        !self.moved_on(at, status) || self.should_back_off()
    }

    /// This target at the replica to try now (itself for a lone server).
    pub fn current(&self) -> Result<Self, CtlError> {
        let Some(replicas) = &self.replicas else {
            return Ok(self.clone());
        };
        let url = self.tracker().map(|t| t.current().to_owned());
        match url {
            Some(url) if url != self.given => self.at(&url, &replicas.tls),
            _ => Ok(self.clone()),
        }
    }

    fn at(&self, url: &str, tls: &ClientTlsArgs) -> Result<Self, CtlError> {
        let given = with_scheme(url);
        let (url, tls) = tls
            .load(&given)
            .map_err(|e| CtlError::Setup(e.to_string()))?;
        Endpoint::from_shared(url.clone()).map_err(|e| CtlError::BadUrl {
            url: url.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Self {
            url,
            tls,
            given,
            ..self.clone()
        })
    }

    /// Records that `at` (a target from [`Self::current`]) answered as the
    /// leader.
    pub fn worked(&self, at: &Self) {
        if let Some(mut t) = self.tracker() {
            let url = t.current().to_owned();
            if same_url(&url, &at.given) {
                t.on_success(&url);
            }
        }
    }

    /// Moves on from `at` after `status` (or after no connection, `None`):
    /// to the leader it names, else to the next URL when it could not be
    /// reached or knows no leader. Answers whether anything moved.
    pub fn moved_on(&self, at: &Self, status: Option<&tonic::Status>) -> bool {
        let Some(mut t) = self.tracker() else {
            return false;
        };
        let current = t.current().to_owned();
        if !same_url(&current, &at.given) {
            // Someone else moved on already.
            return true;
        }
        let step = match status.map(|s| (leader_hint(s), s.code())) {
            Some((Some(leader), _)) => t.on_hint(&leader),
            None | Some((None, Code::Unavailable | Code::DeadlineExceeded)) => {
                t.on_failure(&current)
            }
            Some((None, _)) => Move::Stay,
        };
        step != Move::Stay
    }

    /// Were several arbiter replicas given?
    pub fn has_replicas(&self) -> bool {
        self.tracker().is_some_and(|t| t.urls().len() > 1)
    }

    /// Whether a stream that failed should wait before trying again: not
    /// while moving between replicas, until each failed in a row.
    pub fn should_back_off(&self) -> bool {
        self.tracker().is_none_or(|t| t.should_back_off())
    }

    /// Finds the replica that leads and answers its status: asks
    /// `GetStatus` at the replica tried now; a follower that names the
    /// leader sends us there, one that knows no leader or a replica that
    /// cannot be reached sends us to the next URL. When no replica leads,
    /// the last follower's answer is returned (its `role` says so).
    pub async fn find_leader(
        &self,
    ) -> Result<(Self, ArbiterClient, pb::GetStatusResponse), CtlError> {
        let mut follower = None;
        let mut last_error = None;
        for _ in 0..self.attempts() {
            let at = self.current()?;
            let channel = match at.connect().await {
                Ok(c) => c,
                Err(e) => {
                    let stop = self.give_up(&at, None);
                    last_error = Some(e);
                    if stop {
                        break;
                    }
                    continue;
                }
            };
            let mut client = PurchaseArbiterClient::new(channel);
            let answer =
                tokio::time::timeout(at.timeout, client.get_status(pb::GetStatusRequest {})).await;
            let status = match answer {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    let stop = self.give_up(&at, Some(&s));
                    last_error = Some(CtlError::from_status("GetStatus", at.role, &at.url, &s));
                    if stop {
                        break;
                    }
                    continue;
                }
                Err(_) => {
                    let stop = self.give_up(&at, None);
                    last_error = Some(at.timed_out("GetStatus"));
                    if stop {
                        break;
                    }
                    continue;
                }
            };
            if status.role != ROLE_FOLLOWER {
                self.worked(&at);
                return Ok((at, client, status));
            }
            let moved = match self.tracker() {
                Some(mut t) if !status.leader_url.is_empty() => {
                    t.on_hint(&status.leader_url) != Move::Stay
                }
                Some(mut t) => t.on_failure(&at.given) != Move::Stay,
                None => false,
            };
            follower = Some((at, client, status));
            if !moved || self.should_back_off() {
                break;
            }
        }
        // No replica that leads answered: a follower's answer says so (its
        // role), else the last failure.
        match (follower, last_error) {
            (Some(f), _) => Ok(f),
            (None, Some(e)) => Err(e),
            (None, None) => Err(self.unreachable("no attempt was made".to_owned())),
        }
    }

    /// Connects to the replica tried now, or with several replicas to the
    /// leader (found as [`Self::find_leader`] does).
    pub async fn connect_leader(&self) -> Result<(Self, ArbiterClient), CtlError> {
        if !self.has_replicas() {
            let at = self.current()?;
            let client = PurchaseArbiterClient::new(at.connect().await?);
            return Ok((at, client));
        }
        let (at, client, _) = self.find_leader().await?;
        Ok((at, client))
    }

    /// Makes one unary call named `call` at the leader: at the replica
    /// tried now; answered `UNAVAILABLE` with the leader's URL, at that
    /// leader at once; not reached, at the next URL. `make` builds the call
    /// for a client (once per attempt).
    pub async fn leader_call<T, F, Fut>(
        &self,
        call: &'static str,
        mut make: F,
    ) -> Result<T, CtlError>
    where
        F: FnMut(ArbiterClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last_error = None;
        for _ in 0..self.attempts() {
            let at = self.current()?;
            let (stop, error) = match at.connect().await {
                Err(e) => (self.give_up(&at, None), e),
                Ok(channel) => {
                    let answer =
                        tokio::time::timeout(at.timeout, make(PurchaseArbiterClient::new(channel)))
                            .await;
                    match answer {
                        Ok(Ok(r)) => {
                            self.worked(&at);
                            return Ok(r.into_inner());
                        }
                        Ok(Err(s)) => (
                            self.give_up(&at, Some(&s)),
                            CtlError::from_status(call, at.role, &at.url, &s),
                        ),
                        Err(_) => (self.give_up(&at, None), at.timed_out(call)),
                    }
                }
            };
            last_error = Some(error);
            if stop {
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| self.unreachable("no attempt was made".to_owned())))
    }

    fn timed_out(&self, call: &'static str) -> CtlError {
        CtlError::TimedOut {
            call,
            role: self.role,
            url: self.url.clone(),
            after: self.timeout,
        }
    }

    fn unreachable(&self, reason: String) -> CtlError {
        CtlError::Unreachable {
            role: self.role,
            url: self.url.clone(),
            reason,
        }
    }

    /// Runs one unary call named `call` with the time limit.
    pub async fn call<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CtlError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(self.timed_out(call)),
            Ok(Err(status)) => Err(CtlError::from_status(call, self.role, &self.url, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_means_http() {
        let t = Target::new("127.0.0.1:50051", Duration::from_secs(1), "arbiter").unwrap();
        assert_eq!(t.url, "http://127.0.0.1:50051");
        let t = Target::new("http://arbiter:50051", Duration::from_secs(1), "arbiter").unwrap();
        assert_eq!(t.url, "http://arbiter:50051");
    }

    #[test]
    fn an_arbiter_list_is_checked_entry_by_entry() {
        let none = || (ClientTlsArgs::default(), TokenArgs::default());
        let (tls, token) = none();
        let t =
            Target::arbiters(" a:1, http://b:2 ", Duration::from_secs(1), &tls, &token).unwrap();
        assert_eq!(t.url, "http://a:1");
        assert!(t.has_replicas());
        let one = Target::arbiters("a:1", Duration::from_secs(1), &tls, &token).unwrap();
        assert!(!one.has_replicas());
        for (list, named) in [
            ("a:1,,b:2", "entry 2"),
            ("a:1,a:1", "twice"),
            ("a:1,http://bad host:1", "bad host"),
        ] {
            let e = Target::arbiters(list, Duration::from_secs(1), &tls, &token).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{e}");
            assert!(e.to_string().contains(named), "{list}: {e}");
        }
    }

    #[test]
    fn a_bad_url_is_a_usage_error() {
        let e = Target::new("http://bad host:1", Duration::from_secs(1), "arbiter").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::EXIT_USAGE, "{e}");
    }

    #[tokio::test]
    async fn a_closed_port_is_reported_as_unreachable() {
        // Bind and drop: the port is (very likely) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Target::new(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(5),
            "arbiter",
        )
        .unwrap();
        let e = t.connect().await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach arbiter at http://127.0.0.1:{port}: "
            )),
            "{text}"
        );
        assert_eq!(e.exit_code(), crate::error::EXIT_UNREACHABLE);
    }
}
