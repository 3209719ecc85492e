//! Small domain types: product ids and prices.

use std::fmt;

use serde::{Serialize, Serializer};

/// Longest product id accepted.
pub const MAX_TCIN_LEN: usize = 64;

/// Why a product id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcinError {
    #[error("product id (tcin) is empty")]
    Empty,
    #[error("product id (tcin) is {0} characters long; at most {MAX_TCIN_LEN}")]
    TooLong(usize),
    #[error("product id (tcin) {value:?} contains {bad:?}; use letters, digits, '-' or '_'")]
    BadChar { value: String, bad: char },
}

/// A retailer's product id (Target calls it a TCIN): 1–64 letters, digits,
/// `-` or `_`, the same rule the arbiter applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tcin(String);

impl Tcin {
    /// Validates a product id.
    pub fn parse(value: &str) -> Result<Self, TcinError> {
        if value.is_empty() {
            return Err(TcinError::Empty);
        }
        let len = value.chars().count();
        if len > MAX_TCIN_LEN {
            return Err(TcinError::TooLong(len));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(TcinError::BadChar {
                value: value.to_owned(),
                bad,
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tcin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Tcin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A price in whole cents. Dollars (as `f64`) only appear at the edges: the
/// config file, request bodies and JSON answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(u64);

/// Highest price accepted, in dollars (a typo guard, not a business rule).
pub const MAX_PRICE_DOLLARS: f64 = 1_000_000.0;

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

/// A JSON parse error's message without serde's trailing "at line L column
/// C" (the callers report line and column themselves).
pub fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcins_follow_the_arbiters_rule() {
        assert!(Tcin::parse("94300069").is_ok());
        assert!(Tcin::parse("sku-1_a").is_ok());
        assert_eq!(Tcin::parse(""), Err(TcinError::Empty));
        assert!(matches!(
            Tcin::parse("12 34"),
            Err(TcinError::BadChar { bad: ' ', .. })
        ));
        assert!(matches!(
            Tcin::parse(&"1".repeat(65)),
            Err(TcinError::TooLong(65))
        ));
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
