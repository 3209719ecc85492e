//! Domain newtypes that cannot hold an invalid value: product ids, watcher
//! ids, fencing tokens, outcomes and product states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest product id or watcher id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong { what: &'static str, len: usize },
    #[error("{what} {value:?} contains {bad:?}; only letters, digits, '-' and '_' are allowed")]
    BadChar {
        what: &'static str,
        value: String,
        bad: char,
    },
}

fn check_id(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong { what, len });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar {
            what,
            value: value.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// A retailer's product id (Target calls it a TCIN): 1–64 letters, digits,
/// `-` or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tcin(String);

impl Tcin {
    /// Validates a product id.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_id("product id (tcin)", value)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tcin {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<Tcin> for String {
    fn from(t: Tcin) -> String {
        t.0
    }
}

impl fmt::Display for Tcin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name a watcher goes by: 1–64 letters, digits, `-`, `_` or `.` (host
/// names are the default, so dots are allowed here).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WatcherId(String);

impl WatcherId {
    /// Validates a watcher id.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let what = "watcher id";
        // Dots are fine in a watcher id (host names); check the rest with
        // dots mapped to an allowed character.
        check_id(what, &value.replace('.', "-")).map_err(|e| match e {
            IdError::BadChar { what, bad, .. } => IdError::BadChar {
                what,
                value: value.to_owned(),
                bad,
            },
            other => other,
        })?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WatcherId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        Self::parse(&value)
    }
}

impl From<WatcherId> for String {
    fn from(w: WatcherId) -> String {
        w.0
    }
}

impl fmt::Display for WatcherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A number that strictly increases with every grant and never repeats, even
/// across restarts: downstream systems refuse a holder whose token is older
/// than one they have already seen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a product is in its purchase cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl ProductState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Queued => "queued",
            Self::Attempting => "attempting",
            Self::Purchased => "purchased",
            Self::Failed => "failed",
        }
    }
}

/// How a purchase attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Purchased => "purchased",
            Self::Failed => "failed",
            Self::OutOfStock => "out_of_stock",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcin_accepts_digits_letters_dash_underscore() {
        for ok in ["94300069", "A-b_9", &"x".repeat(MAX_ID_LEN)] {
            assert_eq!(Tcin::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn tcin_refuses_bad_values_with_a_reason() {
        assert_eq!(
            Tcin::parse(""),
            Err(IdError::Empty {
                what: "product id (tcin)"
            })
        );
        let long = "1".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            Tcin::parse(&long),
            Err(IdError::TooLong { len: 65, .. })
        ));
        let err = Tcin::parse("12 34").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        assert!(Tcin::parse("a/b").is_err());
        assert!(Tcin::parse("tcin.1").is_err());
    }

    #[test]
    fn watcher_ids_may_be_host_names() {
        assert!(WatcherId::parse("box-1.example.lan").is_ok());
        assert!(WatcherId::parse("").is_err());
        let err = WatcherId::parse("a b").unwrap_err();
        assert!(err.to_string().contains("\"a b\""), "{err}");
    }

    #[test]
    fn ids_round_trip_through_json_and_refuse_invalid_json() {
        let t: Tcin = serde_json::from_str("\"123\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"123\"");
        assert!(serde_json::from_str::<Tcin>("\"1 2\"").is_err());
    }
}
