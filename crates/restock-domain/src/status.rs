//! Everything the arbiter shows about itself (`GetStatus`, `restockctl
//! status`, the monitor's snapshots): the slot, every product, every
//! watcher, the counters and the mode.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    budget::BudgetStatus,
    ids::{FencingToken, WatcherId},
    lease::Lease,
    product::{Outcome, Price, ProductState},
    product_id::ProductId,
};

/// Running totals since the state was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub grants: u64,
    pub purchases: u64,
    pub failures: u64,
    pub expirations: u64,
    pub refusals: u64,
    pub observations: u64,
}

/// A product's line in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductStatus {
    pub tcin: ProductId,
    pub name: String,
    /// 1 = top priority; products not in the config rank after the listed
    /// ones.
    pub priority: u32,
    pub state: ProductState,
    pub purchases: u32,
    pub quantity: u32,
    /// Listed in the product config (not only reported by a watcher).
    pub configured: bool,
    /// Connected watchers that see it in stock now.
    pub in_stock_at: Vec<WatcherId>,
    pub cooldown_remaining: Duration,
    pub last_outcome: Option<Outcome>,
    pub last_detail: String,
    /// How often some connected watcher polls it, all together; `None`
    /// when none says it does.
    pub effective_poll_interval: Option<Duration>,
    /// The newest price a watcher reported (what a grant reserves).
    pub price: Option<Price>,
    /// Why the spending limit holds it back (state `over_budget`).
    pub held_back: String,
}

/// A watcher's line in the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatcherStatus {
    pub watcher_id: WatcherId,
    pub connected: bool,
    pub last_report_unix_ms: u64,
    pub connected_since_unix_ms: u64,
    pub reports: u64,
    /// The products it says it polls.
    pub polling: Vec<ProductId>,
    /// Its `--poll-interval`, when it said.
    pub poll_interval: Option<Duration>,
    /// Its phase in the arbiter's poll plan, when it has one.
    pub poll_phase: Option<Duration>,
    /// Its stock source refuses it, as it last reported (`None`: the source
    /// answers, or the watcher never says).
    pub source_block: Option<SourceBlock>,
}

/// How a watcher's stock source refuses it as a whole, in the watcher's
/// words (`RefusalKind` in the watcher). Per-product refusals (an unknown
/// product, a bad request) are not source-wide and never reported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceBlockKind {
    Captcha,
    PerimeterX,
    /// 403/435 naming neither a captcha nor PerimeterX.
    Forbidden,
    /// 410 Gone: polling stopped until the watcher's flags change.
    EndpointGone,
    RateLimited,
    ServerError,
    NotJson,
    /// A bot wall's challenge page (Cloudflare's "Just a moment...", or
    /// `cf-mitigated: challenge`) in front of a shop.
    BotWall,
    /// A Shopify shop closed behind its password page.
    PasswordPage,
    /// Shopify's HTTP 430 ("security rejection").
    SecurityRejection,
}

impl SourceBlockKind {
    pub const ALL: [Self; 10] = [
        Self::Captcha,
        Self::PerimeterX,
        Self::Forbidden,
        Self::EndpointGone,
        Self::RateLimited,
        Self::ServerError,
        Self::NotJson,
        Self::BotWall,
        Self::PasswordPage,
        Self::SecurityRejection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Captcha => "captcha",
            Self::PerimeterX => "perimeterx",
            Self::Forbidden => "forbidden",
            Self::EndpointGone => "endpoint_gone",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::NotJson => "not_json",
            Self::BotWall => "bot_wall",
            Self::PasswordPage => "password_page",
            Self::SecurityRejection => "security_rejection",
        }
    }

    /// The kind named `s`, when it is one this build knows.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A block (the status page marks it, the notifier alerts it), rather
    /// than a back-off that ends by itself.
    pub fn is_block(self) -> bool {
        matches!(
            self,
            Self::Captcha
                | Self::PerimeterX
                | Self::Forbidden
                | Self::EndpointGone
                | Self::BotWall
                | Self::PasswordPage
                | Self::SecurityRejection
        )
    }
}

impl std::fmt::Display for SourceBlockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A watcher's stock source refusing it, as the watcher reported. Small on
/// purpose: the arbiter keeps one per watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceBlock {
    pub kind: SourceBlockKind,
    /// When the refusal began (unix ms, the watcher's clock).
    pub since_unix_ms: u64,
    /// Until when the watcher pauses its polling (unix ms, the watcher's
    /// clock); 0 when stopped for good or the probe is due.
    pub paused_until_unix_ms: u64,
    /// With a captcha: the retailer's tracking URL.
    pub tracking_url: Option<Box<str>>,
    /// Which of the watcher's sources: `target` or `shopify:<shop>`; empty
    /// from an older watcher (whose one source is Target).
    pub source: Box<str>,
}

impl SourceBlock {
    /// The source's name for people: `target` when an older watcher left
    /// it out.
    pub fn source_name(&self) -> &str {
        if self.source.is_empty() {
            "target"
        } else {
            &self.source
        }
    }

    pub fn is_block(&self) -> bool {
        self.kind.is_block()
    }
}

/// The whole status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The lease holding the slot, if any.
    pub lease: Option<Lease>,
    /// In priority order.
    pub products: Vec<ProductStatus>,
    pub watchers: Vec<WatcherStatus>,
    pub test_mode: bool,
    pub paused: bool,
    pub counters: Counters,
    /// The token the next grant gets.
    pub next_token: FencingToken,
    /// The newest event this status includes.
    pub last_event_sequence: u64,
    pub lease_ttl: Duration,
    pub stock_ttl: Duration,
    pub failure_cooldown: Duration,
    pub config_path: String,
    /// Whether the arbiter plans the watchers' polling.
    pub poll_planning: bool,
    /// The spending limit and what was spent.
    pub budget: BudgetStatus,
}

impl Status {
    pub fn product(&self, tcin: &ProductId) -> Option<&ProductStatus> {
        self.products.iter().find(|p| &p.tcin == tcin)
    }

    pub fn connected_watchers(&self) -> usize {
        self.watchers.iter().filter(|w| w.connected).count()
    }
}
