//! Checkouts: what the watcher does with a granted lease.
//!
//! - [`http`]: POST the product and the fencing token to a checkout URL.
//! - [`command`]: run the user's own program (a browser-automation script)
//!   with the product and the token in its environment.
//!
//! A checkout runs until it ends by itself, its time limit passes, or its
//! cancellation token fires (the lease was lost or the watcher is stopping);
//! a cancelled checkout stops at once and ends [`CheckoutOutcome::Aborted`].

pub mod command;
pub mod http;

use tokio_util::sync::CancellationToken;

use restock_domain::{FencingToken, LeaseId, Outcome, Price, ProductId, WatcherId};

pub use command::CommandCheckout;
pub use http::HttpCheckout;

/// Most bytes of detail kept for the release (the arbiter keeps 4096).
pub const MAX_DETAIL: usize = 1_000;

/// What a checkout is asked to buy, and under which lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutJob {
    pub tcin: ProductId,
    pub lease_id: LeaseId,
    pub fencing_token: FencingToken,
    pub watcher_id: WatcherId,
    /// The simulator voids the order (the cart is emptied) so the cycle can
    /// repeat forever.
    pub test_mode: bool,
    /// For a Shopify product: the shop and the variant to buy.
    pub shop: Option<ShopCheckout>,
}

/// What a checkout needs to buy from a Shopify shop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopCheckout {
    /// The shop's host name.
    pub shop: String,
    /// Where the watcher asks it (`--shopify-url`, else `https://<shop>`).
    pub shop_url: String,
    /// The variant: the id's own, or for a product named by handle the one
    /// last seen available (`None` when none was seen).
    pub variant: Option<u64>,
}

impl ShopCheckout {
    /// The shop's cart permalink for one unit of the variant.
    pub fn cart_url(&self) -> Option<String> {
        self.variant
            .map(|v| format!("{}/cart/{v}:1", self.shop_url))
    }
}

/// How a checkout ended: the holder's share of the domain's [`Outcome`]
/// (a checkout never ends `Expired`, which only the arbiter decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutOutcome {
    Purchased,
    OutOfStock,
    Failed,
    /// Stopped by us: the lease was lost or the watcher is stopping.
    Aborted,
}

impl CheckoutOutcome {
    pub fn as_str(self) -> &'static str {
        Outcome::from(self).as_str()
    }
}

impl From<CheckoutOutcome> for Outcome {
    fn from(o: CheckoutOutcome) -> Self {
        match o {
            CheckoutOutcome::Purchased => Self::Purchased,
            CheckoutOutcome::OutOfStock => Self::OutOfStock,
            CheckoutOutcome::Failed => Self::Failed,
            CheckoutOutcome::Aborted => Self::Aborted,
        }
    }
}

/// The outcome and a line for the event history (order number, error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutResult {
    pub outcome: CheckoutOutcome,
    pub detail: String,
    /// What a purchase paid for the unit, when the checkout said: the
    /// arbiter counts it against the budget instead of the price it
    /// reserved.
    pub paid: Option<Price>,
}

impl CheckoutResult {
    pub fn new(outcome: CheckoutOutcome, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: truncate(detail.into(), MAX_DETAIL),
            paid: None,
        }
    }

    /// The same result, saying what the purchase paid.
    pub fn paid(mut self, price: Option<Price>) -> Self {
        self.paid = price;
        self
    }
}

/// The configured checkout.
#[derive(Debug, Clone)]
pub enum Checkout {
    Http(HttpCheckout),
    Command(CommandCheckout),
}

impl Checkout {
    /// Runs one checkout to its end. See the module documentation.
    pub async fn run(&self, job: &CheckoutJob, cancel: &CancellationToken) -> CheckoutResult {
        match self {
            Self::Http(h) => h.run(job, cancel).await,
            Self::Command(c) => c.run(job, cancel).await,
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}
