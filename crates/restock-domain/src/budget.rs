//! The fleet's spending limit: what the product config's `"budget"` says
//! ([`BudgetLimits`]), and what the arbiter shows of it ([`BudgetStatus`]).
//! The arbiter keeps the record of spend and the reservation of the lease
//! in flight; these types are only the limits and the view.

use std::time::Duration;

use serde::Deserialize;

use crate::{duration::parse_positive_duration, product::Price};

/// The limits in force. Any of the three may be absent; a budget with
/// neither limit is refused when read (a window alone bounds nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// Spent plus reserved never goes past this.
    pub max_spend: Option<Price>,
    /// Purchases plus the one in flight never go past this.
    pub max_purchases: Option<u32>,
    /// Spend older than this no longer counts; `None`: it counts for ever.
    pub window: Option<Duration>,
}

impl BudgetLimits {
    /// Does it limit anything?
    pub fn limits_anything(&self) -> bool {
        self.max_spend.is_some() || self.max_purchases.is_some()
    }

    /// `$250.00, 4 purchases per 24h`, for logs and event details.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.max_spend {
            parts.push(m.formatted());
        }
        if let Some(n) = self.max_purchases {
            parts.push(format!("{n} purchase{}", if n == 1 { "" } else { "s" }));
        }
        if parts.is_empty() {
            parts.push("no limit".to_owned());
        }
        let mut s = parts.join(", ");
        match self.window {
            Some(w) => s.push_str(&format!(" per {}", window_text(w))),
            None => s.push_str(" in all"),
        }
        s
    }
}

/// A window as people write it in the config: `24h`, `90m`, `30s`,
/// `500ms` (the largest whole unit).
pub fn window_text(w: Duration) -> String {
    let ms = crate::duration::millis(w);
    match ms {
        m if m >= 3_600_000 && m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m >= 60_000 && m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m >= 1_000 && m % 1_000 == 0 => format!("{}s", m / 1_000),
        m => format!("{m}ms"),
    }
}

/// The `"budget"` object of the product config, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileBudget {
    #[serde(default)]
    max_spend: Option<f64>,
    #[serde(default)]
    max_purchases: Option<u32>,
    #[serde(default)]
    window: Option<String>,
}

impl FileBudget {
    /// Checks the budget; an error names the field.
    pub(crate) fn limits(self) -> Result<BudgetLimits, (&'static str, String)> {
        let max_spend = match self.max_spend {
            None => None,
            Some(d) => Some(Price::from_dollars(d).map_err(|e| ("max_spend", e))?),
        };
        let window = match self.window {
            None => None,
            Some(w) => Some(parse_positive_duration(&w).map_err(|e| ("window", e))?),
        };
        let limits = BudgetLimits {
            max_spend,
            max_purchases: self.max_purchases,
            window,
        };
        if !limits.limits_anything() {
            return Err((
                "budget",
                "names neither max_spend nor max_purchases, so it limits nothing; remove it or set one".into(),
            ));
        }
        Ok(limits)
    }
}

/// Where the limits in force come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetSource {
    /// The product config's `"budget"`.
    Config,
    /// An operator's `SetBudget`, with its reason; it holds until the
    /// product config's budget changes or the operator goes back to it.
    Operator { reason: String, at_unix_ms: u64 },
}

/// What `GetStatus` shows of the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    /// `None`: no limit is in force (spend is still recorded).
    pub limits: Option<BudgetLimits>,
    pub source: BudgetSource,
    /// Spend inside the window (or all recorded, with no window).
    pub spent: Price,
    pub purchases: u32,
    /// What the lease in flight holds back; `None` when no lease holds a
    /// reservation.
    pub reserved: Option<Price>,
    /// The product whose lease holds the reservation.
    pub reserved_for: Option<crate::ProductId>,
    /// `max_spend` less spent and reserved; `None` without a `max_spend`.
    pub left: Option<Price>,
    /// `max_purchases` less purchases and the one in flight.
    pub purchases_left: Option<u32>,
    /// When the oldest spend in the window rolls off (unix ms).
    pub next_roll_off_unix_ms: Option<u64>,
    /// Products held back by it now.
    pub held_back: u32,
}

impl BudgetStatus {
    /// No limit and nothing spent.
    pub fn none() -> Self {
        Self {
            limits: None,
            source: BudgetSource::Config,
            spent: Price::from_cents(0),
            purchases: 0,
            reserved: None,
            reserved_for: None,
            left: None,
            purchases_left: None,
            next_roll_off_unix_ms: None,
            held_back: 0,
        }
    }
}
