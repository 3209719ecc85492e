//! Stock sources: where the watcher learns whether a product is in stock.
//!
//! - [`target`]: Target's product fulfillment JSON API (the store simulator
//!   serves the same format).
//!
//! A source answers one product at a time with a [`Sighting`] or a
//! [`SourceError`]. An error never means "out of stock": the poller keeps the
//! last known state, and a [`SourceError::Throttled`] answer pauses the whole
//! source (see [`crate::poller`]).

pub mod target;

use std::{future::Future, time::Duration};

use crate::types::Tcin;

/// What the source says about one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub in_stock: bool,
    /// Price in cents, when the source gives one.
    pub price_cents: Option<u64>,
}

/// Why a source could not say whether a product is in stock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// 403, 429, 435 or 5xx: the source wants us to slow down (or is down).
    #[error("the source answered HTTP {status}: backing off")]
    Throttled {
        status: u16,
        /// From a `Retry-After` header in seconds, when there is one.
        retry_after: Option<Duration>,
    },
    /// Any other non-success answer (404 for an unknown product, say).
    #[error("the source answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("the request timed out after {0:?}")]
    Timeout(Duration),
    #[error("the request failed: {0}")]
    Transport(String),
    /// The answer is not in the expected format.
    #[error("unexpected answer: {0}")]
    Format(String),
}

/// A stock source, asked about one product at a time.
pub trait StockSource: Send + Sync + 'static {
    /// For logs and status: what and where the source is.
    fn describe(&self) -> String;

    /// Asks about one product. Implementations apply their own request
    /// time limit.
    fn check(&self, tcin: &Tcin) -> impl Future<Output = Result<Sighting, SourceError>> + Send;
}
