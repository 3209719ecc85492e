//! Unary calls to the arbiter: renewing and releasing a lease. They go over
//! their own lazily connected channel, independent of the stock stream, so a
//! checkout keeps renewing while the stream reconnects. They take and give
//! domain values (lease ids, fencing tokens, outcomes); the requests and
//! answers are built and read here only.

use std::{fmt, time::Duration};

use restock_proto::{
    ConvertError,
    v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient},
};
use restock_runtime::{
    auth::SendToken,
    error::{Chain, status_text},
};
use tokio::time::Instant;
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tracing::{info, warn};

use restock_domain::{FencingToken, Lease, LeaseId, Outcome};

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
    client: Client,
    rpc_timeout: Duration,
}

impl ArbiterCalls {
    pub fn new(endpoint: &Endpoint, token: SendToken, rpc_timeout: Duration) -> Self {
        Self {
            client: PurchaseArbiterClient::with_interceptor(endpoint.connect_lazy(), token),
            rpc_timeout,
        }
    }

    /// Releases `lease` with `outcome`, retrying transient failures with a
    /// growing pause until `retry_until` (at least `min_attempts` tries).
    pub async fn release(
        &self,
        lease: &HeldLease,
        outcome: Outcome,
        detail: &str,
        retry_until: Instant,
        min_attempts: u32,
    ) -> ReleaseAnswer {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = tonic::Request::new(pb::ReleasePurchaseRequest {
                lease_id: lease.lease_id.to_string(),
                fencing_token: lease.token.get(),
                outcome: pb::Outcome::from(outcome) as i32,
                detail: detail.to_owned(),
            });
            req.set_timeout(self.rpc_timeout);
            let status = match self.client.clone().release_purchase(req).await {
                Ok(resp) => {
                    let r = resp.into_inner();
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
        let mut req = tonic::Request::new(pb::RenewLeaseRequest {
            lease_id: lease_id.to_string(),
            fencing_token: token.get(),
        });
        req.set_timeout(self.rpc_timeout);
        match self.client.clone().renew_lease(req).await {
            Ok(resp) => match resp.into_inner().lease.map(Lease::try_from) {
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
