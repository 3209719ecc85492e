//! Stock sources: where the watcher learns whether a product is in stock.
//!
//! - [`target`]: Target's RedSky JSON API (three endpoint families, and
//!   `pdp_client_v1` for the price); the store simulator serves the same
//!   formats.
//! - [`shopify`]: a Shopify storefront's public product list, one shop per
//!   source; [`shopify_format`] reads its recorded answers.
//! - [`cookies`]: the Netscape cookie file of `--target-cookie-file`.
//! - [`budget`]: the request budget per retailer host (`--target-max-rps`).
//!
//! A source answers about each product with a [`Sighting`] or a
//! [`SourceError`]: one product per request, or several in one request
//! (Target's batch summaries; see [`StockSource::check_many`]). An error never means "out of stock": the poller keeps the
//! last known state. Every answer that is not stock is classified
//! ([`RefusalKind`]), and the kind decides what the poller does
//! ([`Reaction`]): a block pauses the whole retailer for `--block-cooldown`,
//! a throttle backs off, an unknown product is polled rarely, a retired
//! endpoint stops polling (see [`crate::poller`]).

pub mod budget;
pub mod cookies;
pub mod shopify;
pub mod shopify_format;
pub mod target;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use restock_domain::{Price, ProductSpec};

/// What the source says about one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub in_stock: bool,
    /// The price, when the source gives one (or a cached one young enough).
    pub price: Option<Price>,
    /// The Shopify variant seen (for a product named by handle: the one
    /// available, which the checkout buys); `None` for Target.
    pub variant: Option<u64>,
}

/// What kind of answer, that is not stock, the source gave. The names are
/// the words the logs, the status call and the metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// 403 with Target's captcha JSON (`captchaRelativeURL`, ...).
    Captcha,
    /// PerimeterX: 403/435 with `appId`/`blockScript`, or its HTML
    /// challenge (`_pxAppId`, "Press & Hold") whatever the status.
    PerimeterX,
    /// 403 or 435 with a body that names neither: a block of unknown kind.
    Forbidden,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// 400 (and any other 4xx not named here).
    BadRequest,
    /// 404, or an answer saying "No product found with tcin ...".
    UnknownProduct,
    /// 410 Gone: the endpoint was retired.
    EndpointGone,
    /// A success status whose body is not JSON (and not a known challenge).
    NotJson,
    /// A bot wall's challenge page in front of a shop (Cloudflare's
    /// `cf-mitigated: challenge` or its "Just a moment..." page), whatever
    /// the status.
    BotWall,
    /// A Shopify shop closed behind its password page (a redirect to
    /// `/password`, or the page itself where JSON was asked).
    PasswordPage,
    /// Shopify's HTTP 430, "security rejection".
    SecurityRejection,
    /// The answer lists the shop's products, but not this one (a variant or
    /// handle not on sale, or not yet): not out of stock, and polled on.
    NotListed,
}

/// What the poller does about a [`RefusalKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    /// Pause the whole retailer for `--block-cooldown`, doubling while the
    /// block lasts; one probe request after each pause.
    Block,
    /// Back off (`--source-backoff-initial`, doubling to `--source-backoff-max`).
    Throttle,
    /// Poll that product only once per `--block-cooldown`.
    RareProduct,
    /// Stop polling that endpoint: only a change of flags helps.
    StopEndpoint,
    /// Nothing: the product keeps its place in every round (it is shown as
    /// refused, keeps its last known stock state, and is never reported in
    /// stock on it).
    Keep,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; 13] = [
        Self::Captcha,
        Self::PerimeterX,
        Self::Forbidden,
        Self::RateLimited,
        Self::ServerError,
        Self::BadRequest,
        Self::UnknownProduct,
        Self::EndpointGone,
        Self::NotJson,
        Self::BotWall,
        Self::PasswordPage,
        Self::SecurityRejection,
        Self::NotListed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captcha => "captcha",
            Self::PerimeterX => "perimeterx",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::BadRequest => "bad_request",
            Self::UnknownProduct => "unknown_product",
            Self::EndpointGone => "endpoint_gone",
            Self::NotJson => "not_json",
            Self::BotWall => "bot_wall",
            Self::PasswordPage => "password_page",
            Self::SecurityRejection => "security_rejection",
            Self::NotListed => "not_listed",
        }
    }

    pub fn reaction(self) -> Reaction {
        match self {
            Self::Captcha
            | Self::PerimeterX
            | Self::Forbidden
            | Self::BotWall
            | Self::PasswordPage
            | Self::SecurityRejection => Reaction::Block,
            Self::RateLimited | Self::ServerError | Self::NotJson => Reaction::Throttle,
            Self::BadRequest | Self::UnknownProduct => Reaction::RareProduct,
            Self::EndpointGone => Reaction::StopEndpoint,
            Self::NotListed => Reaction::Keep,
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An answer that is not stock, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// The HTTP status (200 for a block page or "No product found" served
    /// with 200).
    pub status: u16,
    /// From a `Retry-After` header in seconds, when there is one.
    pub retry_after: Option<Duration>,
    /// With a captcha: the tracking URL Target gave (kept for the user).
    pub tracking_url: Option<String>,
    /// The start of the answer, or the source's own error message.
    pub detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: the source answered HTTP {}", self.kind, self.status)?;
        if let Some(u) = &self.tracking_url {
            write!(f, " (tracking URL {u})")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Why a source could not say whether a product is in stock. Cloneable (the
/// causes are shared) so that tests can script answers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// An answer that is not stock: a block, a throttle, an unknown product.
    #[error("{0}")]
    Refused(Refusal),
    #[error("the request timed out after {0:?}")]
    Timeout(Duration),
    /// The request did not get an answer (refused, reset, a DNS failure);
    /// the reason is usually in the causes, so log it with its chain.
    #[error("the request failed: {0}")]
    Transport(#[source] Arc<reqwest::Error>),
    /// The answer is JSON but not in the expected format (or about another
    /// product than the one asked for).
    #[error("unexpected answer: {0}")]
    Format(String),
}

impl SourceError {
    /// A refusal of `kind` with HTTP `status`, no details (tests).
    #[cfg(test)]
    pub fn refused(kind: RefusalKind, status: u16) -> Self {
        Self::Refused(Refusal {
            kind,
            status,
            retry_after: None,
            tracking_url: None,
            detail: String::new(),
        })
    }

    /// The kind of error, as the status call shows it.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Self::Refused(r) => r.kind.as_str(),
            Self::Timeout(_) => "timeout",
            Self::Transport(_) => "transport",
            Self::Format(_) => "format",
        }
    }

    /// Whether this error pauses the whole source (a block, a throttle, a
    /// retired endpoint), not just one product.
    pub fn pauses_source(&self) -> bool {
        self.refusal().is_some_and(|r| {
            matches!(
                r.kind.reaction(),
                Reaction::Block | Reaction::Throttle | Reaction::StopEndpoint
            )
        })
    }

    /// The refusal, when this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }
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

/// One product's answer.
pub type Answer = Result<Sighting, SourceError>;

/// A stock source, asked about one product at a time ([`StockSource::check`])
/// or, when it can, about several in one request
/// ([`StockSource::check_many`], with [`StockSource::batch_size`] above 1).
pub trait StockSource: Send + Sync + 'static {
    /// For logs and status: what and where the source is.
    fn describe(&self) -> String;

    /// Asks about one product. Implementations apply their own request
    /// time limit. A product with a `max_price` needs a price: the source
    /// finds one (or says none is known: `price: None`).
    fn check(&self, product: &ProductSpec) -> impl Future<Output = Answer> + Send;

    /// Most products one [`StockSource::check_many`] call carries in one
    /// request. 1 (the default): the source asks one product per request,
    /// and the poller gives it one product at a time.
    fn batch_size(&self) -> usize {
        1
    }

    /// Asks about `products` (at most [`StockSource::batch_size`]): `Err`
    /// when the request as a whole failed (a block, a throttle, a time-out:
    /// no product got an answer), else one answer per product, in order (a
    /// product the answer leaves out gets its own error). The default asks
    /// each product with [`StockSource::check`] in turn, and stops at an
    /// error that pauses the whole source (the products not asked get it
    /// too, so nothing more is sent to a source that blocks).
    fn check_many(
        &self,
        products: &[ProductSpec],
    ) -> impl Future<Output = Result<Vec<Answer>, SourceError>> + Send {
        async move {
            let mut answers = Vec::with_capacity(products.len());
            for p in products {
                match self.check(p).await {
                    Err(e) if e.pauses_source() => {
                        if answers.is_empty() {
                            return Err(e);
                        }
                        answers.resize_with(products.len(), || Err(e.clone()));
                        break;
                    }
                    a => answers.push(a),
                }
            }
            Ok(answers)
        }
    }

    /// True when the source bounds each of its requests itself (the HTTP
    /// client's time limit) and may wait between them for a request budget
    /// (`--target-max-rps`): the poller then sets no time limit of its own
    /// on a call, so a wait for the budget is not taken for a slow answer.
    fn times_its_requests(&self) -> bool {
        false
    }

    /// When the source's request budget lets its next request go (`None`:
    /// now, or no budget). The poller starts a planned round at the first
    /// turn of the plan at or after it: a turn the budget cannot serve would
    /// only be delayed to the budget's slot, and a watcher whose interval
    /// equals its budget would then stay on the phase of its first request
    /// for ever, whatever the plan says (three watchers polling together
    /// instead of a third of a period apart; docs/benchmarks.md, "Detection
    /// under a request budget").
    fn next_request_at(&self) -> Option<tokio::time::Instant> {
        None
    }
}

#[cfg(test)]
mod fixtures_table;
