//! A lease as its holder and onlookers see it: what the arbiter puts in a
//! grant, a renewal, or its status. (The arbiter itself also keeps the
//! monotonic deadline; that never leaves it.)

use std::time::Duration;

use crate::ids::{FencingToken, LeaseId, WatcherId};
use crate::product_id::ProductId;

/// One grant of the purchase slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: LeaseId,
    pub tcin: ProductId,
    pub watcher_id: WatcherId,
    pub token: FencingToken,
    /// How long the lease lasts from a grant or renewal.
    pub ttl: Duration,
    pub granted_at_unix_ms: u64,
    /// The arbiter's wall-clock deadline (for display; holders count
    /// `remaining` on their own monotonic clock).
    pub expires_at_unix_ms: u64,
    /// Time left when the arbiter made this message; zero for a lease that
    /// has ended.
    pub remaining: Duration,
}

/// How much before a lease's deadline its holder stops trusting it:
/// `max(ttl/5, 500 ms)`, at most half the TTL. The holder stops its
/// checkout that long before the deadline it counts on its own clock, and
/// the arbiter never pushes a grant with less than that left (the holder
/// could not use it).
pub fn holder_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(500)).min(ttl / 2)
}
