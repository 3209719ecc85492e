//! The checkout runner: turns a grant pushed by the arbiter into one checkout
//! under the lease keeper, then releases the lease with the real outcome.
//!
//! One checkout at a time: a second grant while one runs is a protocol
//! violation (the arbiter holds one slot), so it is released ABORTED at once
//! and logged as an error. A repeated grant for the running lease is ignored.
//! A grant is the only thing that starts a checkout.
//!
//! On shutdown the checkout is stopped at once, but its ABORTED release waits
//! until the stock stream is closed (see [`CheckoutRunner::stream_closed`]):
//! the arbiter then no longer counts this watcher's sightings, so it does not
//! hand the freed slot straight back to a watcher that is leaving.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::oneshot, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use restock_domain::{FencingToken, Lease, LeaseId, Outcome, ShopifyItem, WatcherId};

use crate::{
    arbiter::{ArbiterCalls, ReleaseAnswer},
    checkout::{Checkout, CheckoutJob, CheckoutOutcome, ShopCheckout},
    lease::{self, EndedBy, HeldLease},
    poller::CatalogWatch,
    source::shopify::ShopDirectory,
    state::{CheckoutRecord, SharedState, unix_ms},
};

/// Longest time spent releasing after a shutdown signal.
const SHUTDOWN_RELEASE_LIMIT: Duration = Duration::from_secs(3);
/// Tries of a release, however short the lease.
const MIN_RELEASE_ATTEMPTS: u32 = 3;

/// The arbiter took a lease back (it expired, or an operator ended it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub lease_id: LeaseId,
    /// As the arbiter sent it (0 when it did not say); for logs only.
    pub token: FencingToken,
    pub reason: String,
}

struct Active {
    lease_id: LeaseId,
    token: FencingToken,
    revoke: Option<oneshot::Sender<String>>,
}

struct Inner {
    checkout: Checkout,
    calls: ArbiterCalls,
    state: SharedState,
    watcher_id: WatcherId,
    rpc_timeout: Duration,
    catalogs: CatalogWatch,
    /// Where each Shopify shop is (for the checkout's shop URL).
    shops: ShopDirectory,
    /// The running checkout. A std mutex: held for a field swap only.
    active: Mutex<Option<Active>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled once the stream is closed during shutdown.
    stream_closed: CancellationToken,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct CheckoutRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CheckoutRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutRunner")
            .field("watcher_id", &self.inner.watcher_id)
            .finish_non_exhaustive()
    }
}

impl CheckoutRunner {
    pub fn new(
        checkout: Checkout,
        calls: ArbiterCalls,
        state: SharedState,
        watcher_id: WatcherId,
        rpc_timeout: Duration,
        catalogs: CatalogWatch,
        shops: ShopDirectory,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shops,
                checkout,
                calls,
                state,
                watcher_id,
                rpc_timeout,
                catalogs,
                active: Mutex::new(None),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                stream_closed: CancellationToken::new(),
            }),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, Option<Active>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A grant arrived on the stream (at `received_at`, local clock).
    pub fn on_grant(&self, grant: Lease, received_at: Instant) {
        if grant.watcher_id != self.inner.watcher_id {
            error!(
                lease_id = %grant.lease_id,
                grant_watcher_id = %grant.watcher_id,
                "the arbiter pushed a grant for another watcher; ignored"
            );
            return;
        }
        let held = HeldLease::new(&grant, received_at);
        let mut active = self.active();
        if let Some(running) = active.as_ref()
            && running.lease_id == held.lease_id
        {
            warn!(lease_id = %held.lease_id, "the same grant arrived again; the checkout already runs");
            return;
        }
        if !lease::has_time_left(&held) {
            // A grant that outlived its lease on the way (the arbiter's write
            // or the network was slow): starting now could overlap the next
            // holder. The arbiter has ended it or is about to.
            warn!(
                lease_id = %held.lease_id,
                tcin = %held.tcin,
                fencing_token = held.token.get(),
                remaining_ms = held.remaining.as_millis() as u64,
                margin_ms = lease::safety_margin(held.ttl).as_millis() as u64,
                "a grant arrived with no time left on its lease: no checkout; releasing it ABORTED"
            );
            let detail = format!(
                "grant arrived with no time left ({} ms, less than the {} ms safety margin): no checkout started",
                held.remaining.as_millis(),
                lease::safety_margin(held.ttl).as_millis()
            );
            drop(active);
            self.release_unused(held, detail);
            return;
        }
        if let Some(running) = active.as_ref() {
            error!(
                running_lease_id = %running.lease_id,
                running_fencing_token = running.token.get(),
                lease_id = %held.lease_id,
                tcin = %held.tcin,
                fencing_token = held.token.get(),
                "protocol violation: a grant arrived while a checkout runs; releasing the new lease ABORTED"
            );
            let detail = format!(
                "watcher {} already runs a checkout under lease {}: one checkout at a time",
                self.inner.watcher_id, running.lease_id
            );
            self.release_unused(held, detail);
            return;
        }
        if self.inner.shutdown.is_cancelled() {
            warn!(lease_id = %held.lease_id, "a grant arrived while shutting down; releasing it ABORTED");
            self.release_unused(held, "the watcher is shutting down".into());
            return;
        }
        let (revoke_tx, revoke_rx) = oneshot::channel();
        *active = Some(Active {
            lease_id: held.lease_id.clone(),
            token: held.token,
            revoke: Some(revoke_tx),
        });
        drop(active);
        self.inner.state.lock().checkout = Some(CheckoutRecord {
            tcin: held.tcin.clone(),
            lease_id: held.lease_id.clone(),
            token: held.token,
            started_at_unix_ms: unix_ms(),
            renewals: 0,
        });
        let me = self.clone();
        self.inner
            .tasks
            .spawn(async move { me.run_checkout(held, revoke_rx).await });
    }

    /// The arbiter revoked a lease this watcher held: stop its checkout now.
    pub fn on_revoked(&self, revoked: Revocation) {
        let mut active = self.active();
        match active.as_mut() {
            Some(a) if a.lease_id == revoked.lease_id => {
                warn!(
                    lease_id = %revoked.lease_id,
                    fencing_token = revoked.token.get(),
                    reason = %revoked.reason,
                    "the arbiter revoked the lease: stopping the checkout"
                );
                if let Some(tx) = a.revoke.take() {
                    let _ = tx.send(revoked.reason);
                }
            }
            _ => info!(
                lease_id = %revoked.lease_id,
                reason = %revoked.reason,
                "the arbiter revoked a lease that has no running checkout here"
            ),
        }
    }

    /// Starts shutting down: a running checkout stops at once, and new
    /// grants are released ABORTED. Releases wait for [`Self::stream_closed`].
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The stream is closed: releases held back by the shutdown may go.
    pub fn stream_closed(&self) {
        self.inner.stream_closed.cancel();
    }

    /// Waits for every checkout and release to end.
    pub async fn wait_idle(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// While shutting down, waits (a bounded time) for the stream to close.
    async fn hold_release_while_stream_open(inner: &Inner) {
        if inner.shutdown.is_cancelled() {
            let _ =
                tokio::time::timeout(SHUTDOWN_RELEASE_LIMIT, inner.stream_closed.cancelled()).await;
        }
    }

    fn release_unused(&self, held: HeldLease, detail: String) {
        let inner = self.inner.clone();
        let mut until = held.received_at + held.remaining;
        if !self.inner.shutdown.is_cancelled() {
            until = self.inner.calls.release_deadline(&held, until);
        }
        self.inner.tasks.spawn(async move {
            Self::hold_release_while_stream_open(&inner).await;
            inner
                .calls
                .release(
                    &held,
                    Outcome::Aborted,
                    &detail,
                    None,
                    until,
                    MIN_RELEASE_ATTEMPTS,
                )
                .await;
        });
    }

    async fn run_checkout(self, held: HeldLease, revoke_rx: oneshot::Receiver<String>) {
        let inner = &self.inner;
        let test_mode = inner
            .catalogs
            .borrow()
            .as_ref()
            .is_some_and(|c| c.test_mode);
        let shop = held.tcin.shopify().map(|s| ShopCheckout {
            shop: s.shop.to_owned(),
            shop_url: inner.shops.base_url(s.shop),
            variant: match s.item {
                ShopifyItem::Variant(v) => Some(v),
                ShopifyItem::Handle(_) => inner.state.lock().book.variant(&held.tcin),
            },
        });
        let job = CheckoutJob {
            tcin: held.tcin.clone(),
            lease_id: held.lease_id.clone(),
            fencing_token: held.token,
            watcher_id: inner.watcher_id.clone(),
            test_mode,
            shop,
        };
        info!(
            tcin = %held.tcin,
            lease_id = %held.lease_id,
            fencing_token = held.token.get(),
            ttl_ms = held.ttl.as_millis() as u64,
            test_mode,
            "grant received: starting the checkout"
        );
        let cancel = CancellationToken::new();
        let revoked = async move {
            match revoke_rx.await {
                Ok(reason) => reason,
                // The runner is gone; only the other ways out remain.
                Err(_) => std::future::pending().await,
            }
        };
        let state = inner.state.clone();
        let started = Instant::now();
        let kept = lease::keep(
            &held,
            &inner.calls,
            inner.rpc_timeout,
            inner.checkout.run(&job, &cancel),
            &cancel,
            revoked,
            &inner.shutdown,
            |n| {
                if let Some(c) = state.lock().checkout.as_mut() {
                    c.renewals = n;
                }
            },
        )
        .await;
        // The checkout is over: the next grant may start another one.
        {
            let mut active = self.active();
            if active.as_ref().is_some_and(|a| a.lease_id == held.lease_id) {
                *active = None;
            }
        }
        {
            let mut st = inner.state.lock();
            st.checkout = None;
            if kept.result.outcome == CheckoutOutcome::Purchased {
                st.checkouts_purchased += 1;
            } else {
                st.checkouts_failed += 1;
            }
        }
        inner
            .state
            .metrics()
            .checkout_finished(kept.result.outcome, started.elapsed().as_secs_f64());
        let outcome = kept.result.outcome;
        let detail = match &kept.ended_by {
            EndedBy::Finished => kept.result.detail.clone(),
            EndedBy::TrustLost => format!(
                "stopped by the watcher: the lease could not be renewed in time ({})",
                kept.result.detail
            ),
            EndedBy::Shutdown => format!("the watcher is shutting down ({})", kept.result.detail),
            EndedBy::Revoked(r) => format!("lease revoked by the arbiter: {r}"),
            EndedBy::RenewRefused(r) => format!("renewal refused: {r}"),
        };
        info!(
            tcin = %held.tcin,
            lease_id = %held.lease_id,
            fencing_token = held.token.get(),
            outcome = outcome.as_str(),
            ended_by = ?kept.ended_by,
            renewals = kept.renewals,
            detail = %detail,
            "checkout ended"
        );
        if !kept.ended_by.may_release() {
            if outcome == CheckoutOutcome::Purchased {
                error!(
                    tcin = %held.tcin,
                    lease_id = %held.lease_id,
                    "the checkout purchased, but the arbiter had already ended the lease; not released"
                );
            } else {
                info!(lease_id = %held.lease_id, "not releasing: the arbiter already ended the lease");
            }
            return;
        }
        Self::hold_release_while_stream_open(inner).await;
        // Worth retrying while the arbiter may still hold the lease for us.
        let mut until = inner
            .calls
            .release_deadline(&held, kept.trusted_until + lease::safety_margin(held.ttl));
        if kept.ended_by == EndedBy::Shutdown {
            until = until.min(Instant::now() + SHUTDOWN_RELEASE_LIMIT);
        }
        let answer = inner
            .calls
            .release(
                &held,
                outcome.into(),
                &detail,
                kept.result.paid,
                until,
                MIN_RELEASE_ATTEMPTS,
            )
            .await;
        if outcome == CheckoutOutcome::Purchased
            && !matches!(answer, ReleaseAnswer::Accepted { .. })
        {
            error!(
                tcin = %held.tcin,
                lease_id = %held.lease_id,
                answer = %answer,
                "the checkout purchased, but its release was not accepted"
            );
        }
    }
}
