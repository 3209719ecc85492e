//! The lease keeper: runs a checkout under a lease, renews the lease about
//! every third of its TTL, and stops the checkout the moment the lease can no
//! longer be trusted.
//!
//! The lease is timed with this watcher's own monotonic clock: from when the
//! grant was *received*, and after each successful renewal from when that
//! renewal was *sent* (the arbiter extended it later than that, so this errs
//! on the safe side). The checkout is stopped at `deadline - margin`, with
//! `margin = max(ttl/5, 500ms)` (at most half the TTL), so it has ended before
//! the arbiter can expire the lease and grant the slot to someone else, even
//! when the arbiter is unreachable or frozen. It is also stopped at once when
//! the arbiter revokes the lease or refuses a renewal, or when the watcher
//! shuts down. A lease given up is never renewed again.

use std::{future::Future, pin::pin, time::Duration};

use futures::future::BoxFuture;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use restock_domain::{FencingToken, Lease, LeaseId, ProductId};
use restock_runtime::error::{Chain, chain_text};

use crate::checkout::{CheckoutOutcome, CheckoutResult};

/// Smallest time limit of one renewal call.
const MIN_CALL_LIMIT: Duration = Duration::from_millis(50);

/// A lease as this watcher holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub token: FencingToken,
    pub ttl: Duration,
    /// What the arbiter said was left when it made the message.
    pub remaining: Duration,
    /// When the grant arrived, by the local monotonic clock.
    pub received_at: Instant,
}

impl HeldLease {
    /// A granted lease, received at `received_at`. The conversion from the
    /// protocol already refused a grant without a lease id, a token or a
    /// TTL, or with an invalid product id.
    pub fn new(lease: &Lease, received_at: Instant) -> Self {
        Self {
            lease_id: lease.lease_id.clone(),
            tcin: lease.tcin.clone(),
            token: lease.token,
            ttl: lease.ttl,
            remaining: time_left(lease),
            received_at,
        }
    }
}

/// What is left of `lease` by the arbiter's message, at most its TTL. Zero
/// is what the arbiter writes for a lease that has ended (a grant whose
/// write outlasted it, or a renewal answered too late): nothing left.
pub fn time_left(lease: &Lease) -> Duration {
    lease.remaining.min(lease.ttl)
}

/// How much before the lease's deadline (by our clock) the checkout stops
/// (the arbiter's rule too: [`restock_domain::lease::holder_margin`]).
pub fn safety_margin(ttl: Duration) -> Duration {
    restock_domain::lease::holder_margin(ttl)
}

/// Whether a grant leaves enough time to start a checkout: more than the
/// safety margin.
pub fn has_time_left(lease: &HeldLease) -> bool {
    lease.remaining > safety_margin(lease.ttl)
}

/// How often a running checkout renews its lease.
pub fn renew_every(ttl: Duration) -> Duration {
    ttl / 3
}

/// How soon a failed renewal is tried again.
pub fn renew_retry(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// What a [`RenewError`] holds: the [`Renewer`]'s own error, kept whole (the
/// keeper needs no more than its text, and stays free of transport types).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a renewal did not extend the lease. Shown as its cause alone: the
/// keeper's log lines and release details say it was a renewal.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The arbiter says this lease is not (or no longer) the current one.
    #[error("{0}")]
    Refused(#[source] Cause),
    /// No usable answer (arbiter down, frozen or unreachable): try again.
    #[error("{0}")]
    Unreachable(#[source] Cause),
    /// The call took longer than its time limit: the same as unreachable.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// Renews leases at the arbiter.
pub trait Renewer: Send + Sync {
    /// Extends the lease; answers how long it now has left.
    fn renew(
        &self,
        lease_id: &LeaseId,
        token: FencingToken,
    ) -> impl Future<Output = Result<Duration, RenewError>> + Send;
}

/// Why the checkout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedBy {
    /// It ended by itself.
    Finished,
    /// The arbiter revoked the lease (the reason it gave).
    Revoked(String),
    /// The arbiter refused a renewal: the lease is gone.
    RenewRefused(String),
    /// Renewals failed until the lease could no longer be trusted.
    TrustLost,
    /// The watcher is stopping.
    Shutdown,
}

impl EndedBy {
    /// Does the arbiter still (maybe) hold this lease for us, so a release
    /// makes sense? Not after it revoked the lease or refused a renewal.
    pub fn may_release(&self) -> bool {
        matches!(self, Self::Finished | Self::TrustLost | Self::Shutdown)
    }
}

/// What [`keep`] returns.
#[derive(Debug, Clone)]
pub struct Kept {
    pub result: CheckoutResult,
    pub ended_by: EndedBy,
    pub renewals: u64,
    /// Until when the lease was trusted (local clock): releases are worth
    /// retrying until about then.
    pub trusted_until: Instant,
}

/// Runs `checkout` under `lease`. See the module documentation.
///
/// `cancel` must be the token `checkout` watches: it is cancelled when the
/// lease is lost, and the checkout is then awaited (it stops at once).
/// `revoked` completes with a reason when the arbiter revokes the lease.
/// `on_renewed` is told the number of successful renewals so far.
#[allow(clippy::too_many_arguments)]
pub async fn keep<R, F, V>(
    lease: &HeldLease,
    renewer: &R,
    rpc_timeout: Duration,
    checkout: F,
    cancel: &CancellationToken,
    revoked: V,
    shutdown: &CancellationToken,
    mut on_renewed: impl FnMut(u64),
) -> Kept
where
    R: Renewer,
    F: Future<Output = CheckoutResult>,
    V: Future<Output = String>,
{
    let ttl = lease.ttl;
    let margin = safety_margin(ttl);
    let call_limit = rpc_timeout.min(renew_every(ttl)).max(MIN_CALL_LIMIT);
    let mut trusted_until = lease.received_at + lease.remaining.saturating_sub(margin);
    let mut next_renew = lease.received_at + renew_every(ttl);
    let mut renewal: Option<BoxFuture<'_, (Instant, Result<Duration, RenewError>)>> = None;
    let mut renewals = 0u64;
    if Instant::now() >= trusted_until {
        // No trusted time at all: the checkout is never polled, so not even
        // its first request is handed to a connection.
        cancel.cancel();
        warn!(
            lease_id = %lease.lease_id,
            tcin = %lease.tcin,
            remaining_ms = lease.remaining.as_millis() as u64,
            margin_ms = margin.as_millis() as u64,
            "the lease has no time left to trust: the checkout does not start"
        );
        return Kept {
            result: CheckoutResult::new(
                CheckoutOutcome::Aborted,
                "not started: no time left on the lease",
            ),
            ended_by: EndedBy::TrustLost,
            renewals,
            trusted_until,
        };
    }
    let mut checkout = pin!(checkout);
    let mut revoked = pin!(revoked);
    let ended_by = loop {
        // The reasons to stop are polled before the checkout, so a
        // checkout is never driven (a request never written) once the lease
        // is lost, revoked or the watcher stops.
        tokio::select! {
            biased;
            reason = &mut revoked => break EndedBy::Revoked(reason),
            () = shutdown.cancelled() => break EndedBy::Shutdown,
            () = sleep_until(trusted_until) => break EndedBy::TrustLost,
            result = &mut checkout => {
                return Kept { result, ended_by: EndedBy::Finished, renewals, trusted_until };
            }
            (sent_at, answer) = async { renewal.as_mut().expect("guarded by is_some").await }, if renewal.is_some() => {
                renewal = None;
                match answer {
                    Ok(left) => {
                        renewals += 1;
                        on_renewed(renewals);
                        let until = sent_at + left.min(ttl).saturating_sub(margin);
                        trusted_until = trusted_until.max(until);
                        next_renew = sent_at + renew_every(ttl);
                        debug!(lease_id = %lease.lease_id, renewals, "lease renewed");
                    }
                    Err(e @ RenewError::Refused(_)) => break EndedBy::RenewRefused(chain_text(&e)),
                    Err(e @ (RenewError::Unreachable(_) | RenewError::NoAnswer(_))) => {
                        let now = Instant::now();
                        next_renew = now + renew_retry(ttl);
                        warn!(
                            lease_id = %lease.lease_id,
                            tcin = %lease.tcin,
                            error = %Chain(&e),
                            trusted_ms_left = trusted_until.saturating_duration_since(now).as_millis() as u64,
                            "renewing the lease failed; retrying, and the checkout stops if the lease cannot be trusted any longer"
                        );
                    }
                }
            }
            () = sleep_until(next_renew), if renewal.is_none() => {
                let sent_at = Instant::now();
                renewal = Some(Box::pin(async move {
                    let answer = match tokio::time::timeout(
                        call_limit,
                        renewer.renew(&lease.lease_id, lease.token),
                    )
                    .await
                    {
                        Ok(a) => a,
                        Err(_) => Err(RenewError::NoAnswer(call_limit)),
                    };
                    (sent_at, answer)
                }));
            }
        }
    };
    // Given up: a renewal in flight is dropped and none is sent again.
    drop(renewal);
    cancel.cancel();
    let result = checkout.await;
    Kept {
        result,
        ended_by,
        renewals,
        trusted_until,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// What a fake renewal does.
    #[derive(Debug, Clone)]
    enum Answer {
        Ok,
        Refused,
        Down,
        Hang,
    }

    /// A renewer that follows a script (the last answer repeats) and records
    /// when it was called.
    #[derive(Clone)]
    struct FakeRenewer {
        script: Arc<Mutex<VecDeque<Answer>>>,
        last: Arc<Mutex<Answer>>,
        calls: Arc<Mutex<Vec<Instant>>>,
        ttl: Duration,
    }

    impl FakeRenewer {
        fn new(script: Vec<Answer>, ttl: Duration) -> Self {
            Self {
                last: Arc::new(Mutex::new(script.last().cloned().unwrap())),
                script: Arc::new(Mutex::new(script.into())),
                calls: Arc::default(),
                ttl,
            }
        }
        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Renewer for FakeRenewer {
        async fn renew(
            &self,
            _lease_id: &LeaseId,
            _token: FencingToken,
        ) -> Result<Duration, RenewError> {
            self.calls.lock().unwrap().push(Instant::now());
            let next = self.script.lock().unwrap().pop_front();
            let a = next.unwrap_or_else(|| self.last.lock().unwrap().clone());
            *self.last.lock().unwrap() = a.clone();
            // A little network time.
            tokio::time::sleep(Duration::from_millis(5)).await;
            match a {
                Answer::Ok => Ok(self.ttl),
                Answer::Refused => Err(RenewError::Refused("lease already ended: expired".into())),
                Answer::Down => Err(RenewError::Unreachable("connection refused".into())),
                Answer::Hang => std::future::pending().await,
            }
        }
    }

    const TTL: Duration = Duration::from_secs(3);

    fn lease() -> HeldLease {
        HeldLease {
            lease_id: LeaseId::parse("lease-1").unwrap(),
            tcin: ProductId::parse("100").unwrap(),
            token: FencingToken(1),
            ttl: TTL,
            remaining: TTL,
            received_at: Instant::now(),
        }
    }

    /// A checkout that takes `takes` unless cancelled; records when it
    /// noticed the cancellation.
    async fn checkout(
        takes: Duration,
        cancel: CancellationToken,
        stopped_at: Arc<Mutex<Option<Instant>>>,
    ) -> CheckoutResult {
        tokio::select! {
            () = tokio::time::sleep(takes) => CheckoutResult::new(CheckoutOutcome::Purchased, "done"),
            () = cancel.cancelled() => {
                *stopped_at.lock().unwrap() = Some(Instant::now());
                CheckoutResult::new(CheckoutOutcome::Aborted, "cancelled")
            }
        }
    }

    struct Run {
        kept: Kept,
        start: Instant,
        stopped_at: Option<Instant>,
        renew_calls: Vec<Instant>,
    }

    async fn run_with(
        script: Vec<Answer>,
        takes: Duration,
        revoke_after: Option<Duration>,
        shutdown_after: Option<Duration>,
    ) -> Run {
        let l = lease();
        let start = l.received_at;
        let renewer = FakeRenewer::new(script, TTL);
        let cancel = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let stopped_at = Arc::new(Mutex::new(None));
        let revoked = async move {
            match revoke_after {
                Some(d) => {
                    tokio::time::sleep(d).await;
                    "expired".to_owned()
                }
                None => std::future::pending().await,
            }
        };
        if let Some(d) = shutdown_after {
            let s = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                s.cancel();
            });
        }
        let kept = keep(
            &l,
            &renewer,
            Duration::from_secs(5),
            checkout(takes, cancel.clone(), stopped_at.clone()),
            &cancel,
            revoked,
            &shutdown,
            |_| {},
        )
        .await;
        // Let anything that would still run (it must not) show itself.
        tokio::time::sleep(TTL * 3).await;
        let stopped_at = *stopped_at.lock().unwrap();
        Run {
            kept,
            start,
            stopped_at,
            renew_calls: renewer.calls(),
        }
    }

    fn secs(start: Instant, at: Instant) -> f64 {
        at.duration_since(start).as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl_until_the_checkout_ends() {
        let r = run_with(vec![Answer::Ok], Duration::from_secs(10), None, None).await;
        assert_eq!(r.kept.ended_by, EndedBy::Finished);
        assert_eq!(r.kept.result.outcome, CheckoutOutcome::Purchased);
        let times: Vec<f64> = r.renew_calls.iter().map(|t| secs(r.start, *t)).collect();
        assert_eq!(times.len(), 9, "{times:?}"); // at 1s, 2s, ..., 9s
        for (i, t) in times.iter().enumerate() {
            assert!((t - (i as f64 + 1.0)).abs() < 0.1, "{times:?}");
        }
        assert_eq!(r.kept.renewals, 9);
        assert!(r.stopped_at.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_arbiter_stops_the_checkout_before_the_ttl() {
        let r = run_with(vec![Answer::Down], Duration::from_secs(60), None, None).await;
        assert_eq!(r.kept.ended_by, EndedBy::TrustLost);
        assert_eq!(r.kept.result.outcome, CheckoutOutcome::Aborted);
        let stopped = secs(r.start, r.stopped_at.unwrap());
        // TTL 3s, margin max(600ms, 500ms) = 600ms: stops at 2.4s.
        assert!((stopped - 2.4).abs() < 0.01, "stopped at {stopped}");
        // It retried meanwhile, and never after giving up.
        assert!(r.renew_calls.len() >= 5, "{}", r.renew_calls.len());
        assert!(r.renew_calls.iter().all(|c| *c <= r.stopped_at.unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_arbiter_is_the_same_as_a_down_one() {
        let r = run_with(vec![Answer::Hang], Duration::from_secs(60), None, None).await;
        assert_eq!(r.kept.ended_by, EndedBy::TrustLost);
        let stopped = secs(r.start, r.stopped_at.unwrap());
        assert!(stopped < TTL.as_secs_f64() - 0.5, "stopped at {stopped}");
        assert!(r.renew_calls.iter().all(|c| *c <= r.stopped_at.unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn trust_runs_from_the_last_renewal_sent() {
        // Renewals at 1s and 2s succeed, then the arbiter goes away: the lease
        // is trusted until 2s + 3s - 0.6s = 4.4s.
        let r = run_with(
            vec![Answer::Ok, Answer::Ok, Answer::Down],
            Duration::from_secs(60),
            None,
            None,
        )
        .await;
        assert_eq!(r.kept.ended_by, EndedBy::TrustLost);
        let stopped = secs(r.start, r.stopped_at.unwrap());
        assert!((stopped - 4.4).abs() < 0.01, "stopped at {stopped}");
        assert_eq!(r.kept.renewals, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_renewal_stops_at_once() {
        let r = run_with(
            vec![Answer::Ok, Answer::Refused],
            Duration::from_secs(60),
            None,
            None,
        )
        .await;
        assert_eq!(
            r.kept.ended_by,
            EndedBy::RenewRefused("lease already ended: expired".into()),
            "the arbiter's reason, as it gave it"
        );
        assert!(!r.kept.ended_by.may_release());
        let stopped = secs(r.start, r.stopped_at.unwrap());
        assert!((stopped - 2.005).abs() < 0.01, "stopped at {stopped}");
        assert_eq!(r.renew_calls.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revocation_stops_at_once() {
        let r = run_with(
            vec![Answer::Ok],
            Duration::from_secs(60),
            Some(Duration::from_millis(1_500)),
            None,
        )
        .await;
        assert_eq!(r.kept.ended_by, EndedBy::Revoked("expired".into()));
        let stopped = secs(r.start, r.stopped_at.unwrap());
        assert!((stopped - 1.5).abs() < 0.01, "stopped at {stopped}");
        assert_eq!(r.renew_calls.len(), 1, "no renewal after the revocation");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_aborts_and_may_release() {
        let r = run_with(
            vec![Answer::Ok],
            Duration::from_secs(60),
            None,
            Some(Duration::from_millis(700)),
        )
        .await;
        assert_eq!(r.kept.ended_by, EndedBy::Shutdown);
        assert!(r.kept.ended_by.may_release());
        assert_eq!(r.kept.result.outcome, CheckoutOutcome::Aborted);
    }

    #[test]
    fn margins() {
        assert_eq!(
            safety_margin(Duration::from_secs(30)),
            Duration::from_secs(6)
        );
        assert_eq!(
            safety_margin(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            safety_margin(Duration::from_millis(600)),
            Duration::from_millis(300)
        );
        assert_eq!(
            renew_every(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn a_held_lease_counts_what_the_grant_says_is_left() {
        let now = Instant::now();
        let mut grant = Lease {
            lease_id: LeaseId::parse("lease-1").unwrap(),
            tcin: ProductId::parse("100").unwrap(),
            watcher_id: restock_domain::WatcherId::parse("w").unwrap(),
            token: FencingToken(4),
            ttl: Duration::from_secs(30),
            granted_at_unix_ms: 0,
            expires_at_unix_ms: 0,
            remaining: Duration::from_millis(29_990),
        };
        let l = HeldLease::new(&grant, now);
        assert_eq!(l.remaining, Duration::from_millis(29_990));
        assert_eq!((l.token, l.received_at), (FencingToken(4), now));
        grant.remaining = Duration::ZERO;
        assert_eq!(
            time_left(&grant),
            Duration::ZERO,
            "zero is what the arbiter writes for a lease that has ended"
        );
        assert_eq!(HeldLease::new(&grant, now).remaining, Duration::ZERO);
        grant.remaining = Duration::from_secs(99);
        assert_eq!(time_left(&grant), grant.ttl, "never more than the TTL");
    }

    /// A lease with no trusted time left (a grant that arrived after, or
    /// just before, its deadline) never lets the checkout start: the POST
    /// must not even be handed to the connection.
    #[tokio::test(start_paused = true)]
    async fn no_trusted_time_left_never_polls_the_checkout() {
        for left in [Duration::ZERO, Duration::from_millis(1), safety_margin(TTL)] {
            let mut l = lease();
            l.remaining = left;
            let renewer = FakeRenewer::new(vec![Answer::Ok], TTL);
            let cancel = CancellationToken::new();
            let shutdown = CancellationToken::new();
            let polled = Arc::new(Mutex::new(false));
            let checkout = {
                let polled = polled.clone();
                async move {
                    *polled.lock().unwrap() = true;
                    CheckoutResult::new(CheckoutOutcome::Purchased, "bought")
                }
            };
            let kept = keep(
                &l,
                &renewer,
                Duration::from_secs(5),
                checkout,
                &cancel,
                std::future::pending(),
                &shutdown,
                |_| {},
            )
            .await;
            assert!(
                !*polled.lock().unwrap(),
                "the checkout ran with {left:?} left"
            );
            assert_eq!(kept.ended_by, EndedBy::TrustLost, "{left:?} left");
            assert_eq!(kept.result.outcome, CheckoutOutcome::Aborted);
            assert!(kept.ended_by.may_release());
            assert!(renewer.calls().is_empty(), "nothing to renew");
        }
    }
}
