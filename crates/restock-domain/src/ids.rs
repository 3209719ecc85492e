//! The ids every part of restock passes around, each with one rule, checked
//! once where a value enters (a flag, a config file, a protocol message), so
//! that code past the edge never holds an invalid id.
//!
//! | type | rule |
//! | --- | --- |
//! | [`ProductId`](crate::ProductId) | a retailer's product: a bare TCIN, or `shopify:<shop>/<variant>` (see [`crate::product_id`]) |
//! | [`WatcherId`] | 1–64 letters, digits, `-`, `_`, `.` (host names are the default) |
//! | [`LeaseId`] | 1–128 printable ASCII characters, no spaces |
//! | [`FencingToken`] | a number above 0 |

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest watcher id accepted.
pub const MAX_ID_LEN: usize = 64;
/// Longest lease id accepted.
pub const MAX_LEASE_ID_LEN: usize = 128;

/// Why an id was refused. The message names the kind of id and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; at most {max} are allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} {value:?} contains {bad:?}; only {allowed} are allowed")]
    BadChar {
        what: &'static str,
        value: String,
        bad: char,
        allowed: &'static str,
    },
    #[error("{what} is 0; pass the token that came with the lease")]
    Zero { what: &'static str },
    #[error("{what} {value:?} is not valid: {why}")]
    Malformed {
        what: &'static str,
        value: String,
        why: String,
    },
}

/// One id rule: what the id is called in messages, its longest length, and
/// which characters it may hold.
struct Rule {
    what: &'static str,
    max: usize,
    allowed: &'static str,
    ok: fn(char) -> bool,
}

impl Rule {
    fn check(&self, value: &str) -> Result<(), IdError> {
        let what = self.what;
        if value.is_empty() {
            return Err(IdError::Empty { what });
        }
        let len = value.chars().count();
        if len > self.max {
            return Err(IdError::TooLong {
                what,
                len,
                max: self.max,
            });
        }
        if let Some(bad) = value.chars().find(|c| !(self.ok)(*c)) {
            return Err(IdError::BadChar {
                what,
                value: value.to_owned(),
                bad,
                allowed: self.allowed,
            });
        }
        Ok(())
    }
}

fn watcher_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

const WATCHER: Rule = Rule {
    what: "watcher id",
    max: MAX_ID_LEN,
    allowed: "letters, digits, '-', '_' and '.'",
    ok: watcher_char,
};

const LEASE: Rule = Rule {
    what: "lease id",
    max: MAX_LEASE_ID_LEN,
    allowed: "printable ASCII characters without spaces",
    ok: |c| c.is_ascii_graphic(),
};

/// Defines a validated string id: `parse`, `as_str`, `Display`, and serde
/// through `String` (so a saved or received value is checked too).
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` against this id's rule.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                $rule.check(value)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $rule.check(&value)?;
                Ok(Self(value))
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// The name a watcher goes by: 1–64 letters, digits, `-`, `_` or `.`
    /// (its host name by default, so dots are allowed).
    WatcherId,
    WATCHER
);

string_id!(
    /// The arbiter's name for one grant of the slot: 1–128 printable ASCII
    /// characters without spaces (the arbiter makes `lease-<token>-<uuid>`).
    LeaseId,
    LEASE
);

impl WatcherId {
    /// Makes a valid watcher id out of a host name: characters a watcher id
    /// cannot hold become `-`, and the result is cut to 64 characters.
    /// `None` when nothing is left.
    pub fn from_host_name(host: &str) -> Option<Self> {
        let cleaned: String = host
            .trim()
            .chars()
            .map(|c| if watcher_char(c) { c } else { '-' })
            .take(MAX_ID_LEN)
            .collect();
        let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
        Self::parse(cleaned).ok()
    }
}

/// A number that strictly increases with every grant and never repeats,
/// even across restarts: anything downstream that sees tokens refuses a
/// holder whose token is older than one it has already seen. The arbiter
/// hands out 1, 2, 3, ...; 0 means "none" on the wire and is never a token.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// A token as a caller presents it: 0 is refused.
    pub fn presented(value: u64) -> Result<Self, IdError> {
        if value == 0 {
            return Err(IdError::Zero {
                what: "fencing_token",
            });
        }
        Ok(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The token after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_ids_may_be_host_names() {
        assert!(WatcherId::parse("box-1.example.lan").is_ok());
        assert!(WatcherId::parse("").is_err());
        let err = WatcherId::parse("a b").unwrap_err();
        assert!(err.to_string().contains("\"a b\""), "{err}");
        assert!(err.to_string().contains("'.'"), "{err}");
    }

    #[test]
    fn watcher_id_from_host_name_keeps_dots_and_cleans_the_rest() {
        assert_eq!(
            WatcherId::from_host_name("box-1.example.com\n")
                .unwrap()
                .as_str(),
            "box-1.example.com"
        );
        assert_eq!(
            WatcherId::from_host_name("my box (2)").unwrap().as_str(),
            "my-box--2"
        );
        assert_eq!(
            WatcherId::from_host_name(&"h".repeat(100))
                .unwrap()
                .as_str()
                .len(),
            64
        );
        assert!(WatcherId::from_host_name("...").is_none());
        assert!(WatcherId::from_host_name("").is_none());
    }

    #[test]
    fn lease_ids_are_printable_and_bounded() {
        assert!(LeaseId::parse("lease-1-8d30cbaf76454ea8af4a3335c4e950e7").is_ok());
        assert!(LeaseId::parse("").is_err());
        assert!(LeaseId::parse("a b").is_err());
        let e = LeaseId::parse(&"x".repeat(129)).unwrap_err();
        assert!(e.to_string().contains("at most 128"), "{e}");
    }

    #[test]
    fn fencing_tokens_presented_by_callers_are_above_zero() {
        assert_eq!(FencingToken::presented(7), Ok(FencingToken(7)));
        let e = FencingToken::presented(0).unwrap_err();
        assert!(e.to_string().contains("fencing_token is 0"), "{e}");
        assert_eq!(FencingToken(1).next(), FencingToken(2));
    }

    #[test]
    fn ids_round_trip_through_json_and_refuse_invalid_json() {
        assert!(serde_json::from_str::<WatcherId>("\"w.1\"").is_ok());
        assert_eq!(serde_json::to_string(&FencingToken(5)).unwrap(), "5");
    }
}
