//! The watcher's link to the arbiter replicas, and its unary calls: renewing
//! and releasing a lease.
//!
//! [`ArbiterLink`] knows the `--arbiter` URLs and which one to try now (an
//! [`ArbiterTracker`] shared by the stream and the unary calls, so what one
//! learns about the leader the other uses at once), and makes each URL's
//! endpoint with its own TLS set-up (the server name comes from its host).
//!
//! The unary calls go over their own lazily connected channels, independent
//! of the stock stream, so a checkout keeps renewing while the stream
//! reconnects. A call answered `UNAVAILABLE` with the leader's URL is sent
//! again to that leader at once. They take and give domain values (lease
//! ids, fencing tokens, outcomes); the requests and answers are built and
//! read here only.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use restock_proto::{
    ConvertError,
    v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient},
};
use restock_runtime::{
    arbiters::{ArbiterTracker, ArbiterUrls, Move},
    auth::{AuthError, ClientTlsArgs, SendToken},
    error::{Chain, status_text},
    leader::leader_hint,
};
use tokio::time::Instant;
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tracing::{info, warn};

use restock_domain::{FencingToken, Lease, LeaseId, Outcome, Price};

use crate::lease::{self, HeldLease, RenewError, Renewer};

/// A client of the arbiter that sends the shared token on every call.
pub type Client = PurchaseArbiterClient<InterceptedService<Channel, SendToken>>;

/// The connection settings shared by the stream and the unary calls; `tls`
/// (with an `https://` URL) encrypts them.
pub fn endpoint(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A dead or frozen arbiter is noticed on an idle stream too.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// One arbiter URL could not be made into an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TLS files (read again for a URL first met as a leader hint).
    #[error("TLS towards {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: AuthError,
    },
    #[error("arbiter URL {url}: {source}")]
    Url {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// See the module documentation. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ArbiterLink(Arc<LinkInner>);

#[derive(Debug)]
struct LinkInner {
    tls: ClientTlsArgs,
    token: SendToken,
    // A std mutex: nothing awaits while either is held.
    tracker: Mutex<ArbiterTracker>,
    /// Lazily connected unary clients, by URL as given.
    clients: Mutex<HashMap<String, Client>>,
}

impl ArbiterLink {
    /// Checks every URL's endpoint and TLS set-up now, so a bad one stops
    /// start-up with a message naming it.
    pub fn new(urls: ArbiterUrls, tls: ClientTlsArgs, token: SendToken) -> Result<Self, LinkError> {
        let link = Self(Arc::new(LinkInner {
            tls,
            token,
            tracker: Mutex::new(ArbiterTracker::new(urls.clone())),
            clients: Mutex::new(HashMap::new()),
        }));
        for url in urls.urls() {
            link.endpoint(url)?;
        }
        Ok(link)
    }

    fn tracker(&self) -> MutexGuard<'_, ArbiterTracker> {
        self.0.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URL to try now.
    pub fn current(&self) -> String {
        self.tracker().current().to_owned()
    }

    /// How many URLs (arbiter replicas) were given.
    pub fn replicas(&self) -> usize {
        self.tracker().urls().len()
    }

    /// The URLs given, comma-separated.
    pub fn describe(&self) -> String {
        self.tracker().urls().to_string()
    }

    /// Does any URL use TLS?
    pub fn any_tls(&self) -> Result<bool, LinkError> {
        let urls = self.tracker().urls().clone();
        for url in urls.urls() {
            if self.load_tls(url)?.1.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn load_tls(&self, url: &str) -> Result<(String, Option<ClientTlsConfig>), LinkError> {
        self.0.tls.load(url).map_err(|source| LinkError::Tls {
            url: url.to_owned(),
            source,
        })
    }

    /// `url`'s endpoint: TLS per URL (with any TLS flag an `http://` URL is
    /// dialled as `https://`), the server name from its own host. Answers
    /// the URL dialled too.
    pub fn endpoint(&self, url: &str) -> Result<(String, Endpoint), LinkError> {
        let (dial, tls) = self.load_tls(url)?;
        let endpoint = endpoint(&dial, tls).map_err(|source| LinkError::Url {
            url: url.to_owned(),
            source,
        })?;
        Ok((dial, endpoint))
    }

    /// The token sent on every call.
    pub fn token(&self) -> SendToken {
        self.0.token.clone()
    }

    /// `url` worked: it leads (or is the only arbiter).
    pub fn on_success(&self, url: &str) {
        self.tracker().on_success(url);
    }

    /// `url` answered `status` (or could not be reached): follow the leader
    /// it names, or move on to the next URL when it was not reached or
    /// knows no leader. Other answers change nothing.
    pub fn on_error(&self, url: &str, status: &Status) -> Move {
        if let Some(leader) = leader_hint(status) {
            return self.tracker().on_hint(&leader);
        }
        if moves_on(status.code()) {
            return self.tracker().on_failure(url);
        }
        Move::Stay
    }

    /// `url` could not be used at all (no connection, no catalog, the
    /// stream ended): move on to the next URL.
    pub fn on_failure(&self, url: &str) -> Move {
        self.tracker().on_failure(url)
    }

    /// See [`ArbiterTracker::should_back_off`].
    pub fn should_back_off(&self) -> bool {
        self.tracker().should_back_off()
    }

    fn client(&self, url: &str) -> Result<Client, LinkError> {
        let mut clients = self.0.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let (_, endpoint) = self.endpoint(url)?;
        let client =
            PurchaseArbiterClient::with_interceptor(endpoint.connect_lazy(), self.0.token.clone());
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// One unary call to the current URL. Answered `UNAVAILABLE` with the
    /// leader's URL, it is made once more at that leader at once; any
    /// failure moves the tracker on as [`Self::on_error`] says.
    pub async fn unary<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let url = self.current();
        let first = self.call_at(&url, &call).await;
        let Err(status) = first else {
            return first;
        };
        match self.on_error(&url, &status) {
            Move::ToLeader { to, .. } => self.call_at(&to, &call).await.inspect_err(|s| {
                self.on_error(&to, s);
            }),
            _ => Err(status),
        }
    }

    async fn call_at<T, F, Fut>(&self, url: &str, call: &F) -> Result<T, Status>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = self.client(url).map_err(|e| {
            Status::unavailable(format!("cannot use the arbiter at {url}: {}", Chain(&e)))
        })?;
        let answer = call(client).await?;
        self.on_success(url);
        Ok(answer.into_inner())
    }
}

/// Does a status say the URL cannot serve us now (not reached, no leader
/// known, no answer in time), so the next one is worth a try?
fn moves_on(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Is this status worth retrying (the arbiter was not reached, or is busy)?
pub fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Internal
    )
}

/// A call to the arbiter that failed: its answer, or the transport's when
/// the arbiter was not reached. Shown as `Code: message`; its cause is the
/// status's own (tonic puts "transport error" in the message and the reason,
/// "connection refused" say, in the source), so a [`Chain`] shows both.
#[derive(Debug, Clone)]
pub struct CallError(Status);

impl CallError {
    pub fn code(&self) -> Code {
        self.0.code()
    }

    /// The answer itself (for the leader's URL it may name).
    pub fn status(&self) -> &Status {
        &self.0
    }

    /// Is it worth retrying (the arbiter was not reached, or is busy)?
    pub fn is_transient(&self) -> bool {
        is_transient(self.code())
    }
}

impl From<Status> for CallError {
    fn from(s: Status) -> Self {
        Self(s)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.0.code(), self.0.message())
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// A renewal answer the watcher cannot use.
#[derive(Debug, thiserror::Error)]
enum BadRenewal {
    #[error("the arbiter's renewal answer holds no lease")]
    NoLease,
    #[error("the arbiter's renewal answer cannot be used: {0}")]
    Lease(#[source] ConvertError),
}

/// How a release ended.
#[derive(Debug, Clone)]
pub enum ReleaseAnswer {
    /// Accepted (`released` is false for a harmless repeat).
    Accepted { released: bool },
    /// The arbiter already moved on (the lease ended or is unknown).
    Refused(CallError),
    /// The arbiter could not be reached in time.
    GaveUp(CallError),
}

impl fmt::Display for ReleaseAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted { released } => write!(f, "accepted (released: {released})"),
            Self::Refused(e) => write!(f, "refused: {}", Chain(e)),
            Self::GaveUp(e) => write!(f, "gave up: {}", Chain(e)),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ArbiterCalls {
    link: ArbiterLink,
    rpc_timeout: Duration,
    /// How long an election among replicas may take, on top of a lease's
    /// TTL, for a release to still be worth retrying
    /// (`--failover-allowance`).
    failover_allowance: Duration,
}

impl ArbiterCalls {
    pub fn new(link: ArbiterLink, rpc_timeout: Duration, failover_allowance: Duration) -> Self {
        Self {
            link,
            rpc_timeout,
            failover_allowance,
        }
    }

    /// Until when a release of `lease` starting now is worth retrying, given
    /// `until` from the lease's own clock. With several replicas the leader
    /// may be changing, and a replica that takes over gives every lease its
    /// whole TTL from the take-over: the release is tried until a leader
    /// answers (accepted, or refused once the lease ended there), for up to
    /// one TTL plus `--failover-allowance` from now, instead of giving up
    /// after a few tries at the dead leader while the next one is elected
    /// (which leaves the slot held until the lease expires at the new one,
    /// and the purchase unrecorded). Nothing waits on it: the watcher takes
    /// new grants meanwhile.
    pub fn release_deadline(&self, lease: &HeldLease, until: Instant) -> Instant {
        if self.link.replicas() > 1 {
            until.max(Instant::now() + lease.ttl + self.failover_allowance)
        } else {
            until
        }
    }

    /// Releases `lease` with `outcome`, retrying transient failures with a
    /// growing pause until `retry_until` (at least `min_attempts` tries).
    pub async fn release(
        &self,
        lease: &HeldLease,
        outcome: Outcome,
        detail: &str,
        paid: Option<Price>,
        retry_until: Instant,
        min_attempts: u32,
    ) -> ReleaseAnswer {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let answer = self
                .link
                .unary(|mut client| {
                    let mut req = tonic::Request::new(pb::ReleasePurchaseRequest {
                        lease_id: lease.lease_id.to_string(),
                        fencing_token: lease.token.get(),
                        outcome: pb::Outcome::from(outcome) as i32,
                        detail: detail.to_owned(),
                        paid_price_cents: paid.map(Price::cents),
                    });
                    req.set_timeout(self.rpc_timeout);
                    async move { client.release_purchase(req).await }
                })
                .await;
            let status = match answer {
                Ok(r) => {
                    info!(
                        lease_id = %lease.lease_id,
                        tcin = %lease.tcin,
                        fencing_token = lease.token.get(),
                        outcome = outcome.as_str(),
                        released = r.released,
                        attempt,
                        "lease released"
                    );
                    return ReleaseAnswer::Accepted {
                        released: r.released,
                    };
                }
                Err(s) => CallError::from(s),
            };
            if !status.is_transient() {
                warn!(
                    lease_id = %lease.lease_id,
                    tcin = %lease.tcin,
                    fencing_token = lease.token.get(),
                    outcome = outcome.as_str(),
                    code = ?status.code(),
                    error = %status_text(&status.0),
                    "the arbiter refused the release: it has already moved on"
                );
                return ReleaseAnswer::Refused(status);
            }
            if Instant::now() >= retry_until && attempt >= min_attempts {
                warn!(
                    lease_id = %lease.lease_id,
                    tcin = %lease.tcin,
                    outcome = outcome.as_str(),
                    attempts = attempt,
                    error = %Chain(&status),
                    "giving up releasing the lease: the arbiter cannot be reached (it expires the lease by itself)"
                );
                return ReleaseAnswer::GaveUp(status);
            }
            warn!(
                lease_id = %lease.lease_id,
                attempt,
                error = %Chain(&status),
                "releasing the lease failed; retrying"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

impl Renewer for ArbiterCalls {
    /// A renewal answer that does not convert to a domain [`Lease`] extends
    /// nothing: it counts as a failed renewal (retried; the checkout stops
    /// when the lease can no longer be trusted).
    async fn renew(&self, lease_id: &LeaseId, token: FencingToken) -> Result<Duration, RenewError> {
        let answer = self
            .link
            .unary(|mut client| {
                let mut req = tonic::Request::new(pb::RenewLeaseRequest {
                    lease_id: lease_id.to_string(),
                    fencing_token: token.get(),
                });
                req.set_timeout(self.rpc_timeout);
                async move { client.renew_lease(req).await }
            })
            .await;
        match answer {
            Ok(r) => match r.lease.map(Lease::try_from) {
                Some(Ok(renewed)) => Ok(lease::time_left(&renewed)),
                Some(Err(e)) => Err(RenewError::Unreachable(Box::new(BadRenewal::Lease(e)))),
                None => Err(RenewError::Unreachable(Box::new(BadRenewal::NoLease))),
            },
            Err(s) => {
                let e = CallError::from(s);
                if e.is_transient() {
                    Err(RenewError::Unreachable(Box::new(e)))
                } else {
                    Err(RenewError::Refused(Box::new(e)))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use restock_domain::ProductId;

    use super::*;

    const ALLOWANCE: Duration = Duration::from_secs(20);

    fn calls(urls: &str) -> ArbiterCalls {
        let link = ArbiterLink::new(
            ArbiterUrls::parse(urls).unwrap(),
            ClientTlsArgs::default(),
            SendToken::new(None),
        )
        .unwrap();
        ArbiterCalls::new(link, Duration::from_secs(1), ALLOWANCE)
    }

    fn held(ttl: Duration) -> HeldLease {
        HeldLease {
            lease_id: LeaseId::parse("lease-1").unwrap(),
            tcin: ProductId::parse("100").unwrap(),
            token: FencingToken(1),
            ttl,
            remaining: ttl,
            received_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_release_outlasts_an_election_only_with_several_replicas() {
        let ttl = Duration::from_secs(2);
        let soon = Instant::now() + Duration::from_millis(300);
        let one = calls("http://127.0.0.1:1");
        assert_eq!(one.release_deadline(&held(ttl), soon), soon);

        let three = calls("http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3");
        let before = Instant::now();
        let until = three.release_deadline(&held(ttl), soon);
        assert!(until >= before + ttl + ALLOWANCE, "{:?}", until - before);
        // A lease clock that already runs later is kept.
        let late = Instant::now() + Duration::from_secs(600);
        assert_eq!(three.release_deadline(&held(ttl), late), late);
    }
}
