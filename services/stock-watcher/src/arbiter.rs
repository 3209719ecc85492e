//! Unary calls to the arbiter: renewing and releasing a lease. They go over
//! their own lazily connected channel, independent of the stock stream, so a
//! checkout keeps renewing while the stream reconnects. They take and give
//! domain values (lease ids, fencing tokens, outcomes); the requests and
//! answers are built and read here only.

use std::time::Duration;

use restock_proto::v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient};
use restock_runtime::auth::SendToken;
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

/// How a release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseAnswer {
    /// Accepted (`released` is false for a harmless repeat).
    Accepted { released: bool },
    /// The arbiter already moved on (the lease ended or is unknown).
    Refused(String),
    /// The arbiter could not be reached in time.
    GaveUp(String),
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
                Err(s) => s,
            };
            if !is_transient(status.code()) {
                warn!(
                    lease_id = %lease.lease_id,
                    tcin = %lease.tcin,
                    fencing_token = lease.token.get(),
                    outcome = outcome.as_str(),
                    code = ?status.code(),
                    error = %status.message(),
                    "the arbiter refused the release: it has already moved on"
                );
                return ReleaseAnswer::Refused(describe(&status));
            }
            if Instant::now() >= retry_until && attempt >= min_attempts {
                warn!(
                    lease_id = %lease.lease_id,
                    tcin = %lease.tcin,
                    outcome = outcome.as_str(),
                    attempts = attempt,
                    error = %describe(&status),
                    "giving up releasing the lease: the arbiter cannot be reached (it expires the lease by itself)"
                );
                return ReleaseAnswer::GaveUp(describe(&status));
            }
            warn!(
                lease_id = %lease.lease_id,
                attempt,
                error = %describe(&status),
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
                Some(Err(e)) => Err(RenewError::Unreachable(format!(
                    "the arbiter's renewal answer cannot be used: {e}"
                ))),
                None => Err(RenewError::Unreachable(
                    "the arbiter's renewal answer holds no lease".into(),
                )),
            },
            Err(s) if is_transient(s.code()) => Err(RenewError::Unreachable(describe(&s))),
            Err(s) => Err(RenewError::Refused(describe(&s))),
        }
    }
}

fn describe(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
