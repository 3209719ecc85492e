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

use std::{future::Future, sync::Arc, time::Duration};

use restock_domain::{Price, Tcin};

/// What the source says about one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub in_stock: bool,
    /// The price, when the source gives one.
    pub price: Option<Price>,
}

/// Why a source could not say whether a product is in stock. Cloneable (the
/// causes are shared) so that tests can script answers.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The request did not get an answer (refused, reset, a DNS failure);
    /// the reason is usually in the causes, so log it with its chain.
    #[error("the request failed: {0}")]
    Transport(#[source] Arc<reqwest::Error>),
    /// The answer is not JSON at all (a block page, say).
    #[error("unexpected answer: not JSON ({source}): {excerpt}")]
    NotJson {
        source: Arc<serde_json::Error>,
        /// The start of the answer.
        excerpt: String,
    },
    /// The answer is not in the expected format.
    #[error("unexpected answer: {0}")]
    Format(String),
}

/// Most bytes of an HTTP answer read from a stock source or a checkout.
/// Target's fulfillment answer is a few KiB; anything near this is not an
/// answer to read whole.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Reads an HTTP answer's body, at most `max` bytes, and says whether it
/// was cut off. A server that never stops sending (or sends gigabytes)
/// would otherwise fill the watcher's memory until the request's time limit.
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            // Dropping the response closes the connection: nothing more is read.
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// A stock source, asked about one product at a time.
pub trait StockSource: Send + Sync + 'static {
    /// For logs and status: what and where the source is.
    fn describe(&self) -> String;

    /// Asks about one product. Implementations apply their own request
    /// time limit.
    fn check(&self, tcin: &Tcin) -> impl Future<Output = Result<Sighting, SourceError>> + Send;
}
