//! Where a product is in its purchase cycle, how an attempt ended, and
//! prices in whole cents.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize, Serializer};

/// Where a product is in its purchase cycle:
/// `Ready` → `Queued` → `Attempting` → `Purchased` | `Failed`, and
/// `Queued` ⇄ `OverBudget` while the spending limit holds it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductState {
    /// Eligible, not known to be in stock.
    Ready,
    /// Reported in stock by a connected watcher, waiting for the slot.
    Queued,
    /// Holds the lease.
    Attempting,
    /// Bought; final until reset (or until the configured quantity is bought).
    Purchased,
    /// The last attempt failed; eligible again after the cool-down.
    Failed,
    /// In stock, but granting it would go past the spending limit (or its
    /// price is unknown and the limit has a `max_spend`): held back until
    /// the budget has room for it.
    OverBudget,
}

impl ProductState {
    pub const ALL: [Self; 6] = [
        Self::Ready,
        Self::Queued,
        Self::Attempting,
        Self::Purchased,
        Self::Failed,
        Self::OverBudget,
    ];

    /// The lower-case name used in JSON, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Queued => "queued",
            Self::Attempting => "attempting",
            Self::Purchased => "purchased",
            Self::Failed => "failed",
            Self::OverBudget => "over_budget",
        }
    }
}

impl fmt::Display for ProductState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a purchase attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The checkout bought the product.
    Purchased,
    /// The checkout failed: the product cools down before it is tried again.
    Failed,
    /// The store had no stock at checkout: the product waits for a fresh report.
    OutOfStock,
    /// The holder gave up without trying (shutting down, say).
    Aborted,
    /// The holder stopped renewing; set by the arbiter only.
    Expired,
}

impl Outcome {
    pub const ALL: [Self; 5] = [
        Self::Purchased,
        Self::Failed,
        Self::OutOfStock,
        Self::Aborted,
        Self::Expired,
    ];

    /// The lower-case name used in JSON, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchased => "purchased",
            Self::Failed => "failed",
            Self::OutOfStock => "out_of_stock",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
        }
    }

    /// Can a lease holder release with this outcome? (`Expired` is the
    /// arbiter's alone.)
    pub fn is_holders(self) -> bool {
        self != Self::Expired
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Outcome::from_str` did not know the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an outcome; say purchased, failed, out_of_stock, aborted or expired")]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, UnknownOutcome> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == wanted)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

/// Highest price accepted, in dollars (a typo guard, not a business rule).
pub const MAX_PRICE_DOLLARS: f64 = 1_000_000.0;

/// A price in whole cents. Dollars (as `f64`) only appear at the edges: the
/// config file, request bodies and JSON answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(u64);

impl Price {
    /// A price of `cents` cents.
    pub const fn from_cents(cents: u64) -> Self {
        Self(cents)
    }

    /// Converts dollars (as written in JSON) to a price, rounding to the
    /// nearest cent. Refuses negative, non-finite and absurdly large values.
    pub fn from_dollars(dollars: f64) -> Result<Self, String> {
        if dollars.is_finite() && (0.0..=MAX_PRICE_DOLLARS).contains(&dollars) {
            Ok(Self((dollars * 100.0).round() as u64))
        } else {
            Err(format!(
                "{dollars} is not a price in dollars (0 to {MAX_PRICE_DOLLARS})"
            ))
        }
    }

    pub const fn cents(self) -> u64 {
        self.0
    }

    /// The price in dollars, as JSON answers carry it (`19.99`).
    pub fn dollars(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// The price as the retailer formats it: `$19.99`.
    pub fn formatted(self) -> String {
        format!("${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.formatted())
    }
}

impl Serialize for Price {
    /// Serialized as dollars, the unit every JSON body here uses.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.dollars())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_parse_back() {
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        }
        assert_eq!("OUT-OF-STOCK".parse::<Outcome>(), Ok(Outcome::OutOfStock));
        assert!("bought".parse::<Outcome>().is_err());
        assert!(!Outcome::Expired.is_holders());
        assert_eq!(ProductState::Attempting.to_string(), "attempting");
        assert_eq!(
            serde_json::to_string(&Outcome::OutOfStock).unwrap(),
            "\"out_of_stock\""
        );
    }

    #[test]
    fn prices_round_to_cents_and_format_like_the_retailer() {
        let p = Price::from_dollars(19.99).unwrap();
        assert_eq!(p.cents(), 1999);
        assert_eq!(p.formatted(), "$19.99");
        assert_eq!(Price::from_cents(500).formatted(), "$5.00");
        assert_eq!(Price::from_dollars(0.1 + 0.2).unwrap().cents(), 30);
        assert!(Price::from_dollars(-1.0).is_err());
        assert!(Price::from_dollars(f64::NAN).is_err());
        assert_eq!(serde_json::to_string(&p).unwrap(), "19.99");
    }
}
