//! Small gRPC helpers shared by the end-to-end tests.

use restock_proto::v1::{
    self as pb, AcquirePurchaseRequest, GetStatusRequest, ReleasePurchaseRequest,
    RenewLeaseRequest, purchase_arbiter_client::PurchaseArbiterClient,
};
pub use restock_testkit::{WatcherStream, product};
use tonic::transport::Channel;

pub type Client = PurchaseArbiterClient<Channel>;

/// Asks for the slot; panics on a transport error.
pub async fn acquire(
    c: &mut Client,
    tcin: &str,
    watcher: &str,
    request_id: &str,
) -> pb::AcquirePurchaseResponse {
    c.acquire_purchase(AcquirePurchaseRequest {
        tcin: tcin.into(),
        watcher_id: watcher.into(),
        request_id: request_id.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("AcquirePurchase({tcin}) failed: {s}"))
    .into_inner()
}

/// Acquires and expects a grant.
pub async fn must_acquire(c: &mut Client, tcin: &str, watcher: &str) -> pb::Lease {
    let r = acquire(c, tcin, watcher, "").await;
    assert!(r.granted, "expected a grant for {tcin}, got {r:?}");
    r.lease.expect("granted with a lease")
}

pub async fn release(
    c: &mut Client,
    lease: &pb::Lease,
    outcome: pb::Outcome,
) -> Result<pb::ReleasePurchaseResponse, tonic::Status> {
    c.release_purchase(ReleasePurchaseRequest {
        lease_id: lease.lease_id.clone(),
        fencing_token: lease.fencing_token,
        outcome: outcome as i32,
        detail: "e2e".into(),
        paid_price_cents: None,
    })
    .await
    .map(|r| r.into_inner())
}

/// Renews `lease`; returns the renewed lease.
pub async fn renew(c: &mut Client, lease: &pb::Lease) -> Result<pb::Lease, tonic::Status> {
    c.renew_lease(RenewLeaseRequest {
        lease_id: lease.lease_id.clone(),
        fencing_token: lease.fencing_token,
    })
    .await
    .map(|r| r.into_inner().lease.expect("a renewed lease"))
}

pub async fn status(c: &mut Client) -> pb::GetStatusResponse {
    c.get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}
