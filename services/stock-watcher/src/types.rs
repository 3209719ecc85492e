//! Domain newtypes that cannot hold an invalid value: product ids and watcher
//! ids, checked by the same rules the arbiter applies, so a bad id is refused
//! at startup instead of by the arbiter later.

use std::fmt;

/// Longest product id or watcher id the arbiter accepts.
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

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn check_id(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong { what, len });
    }
    if let Some(bad) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(IdError::BadChar {
            what,
            value: value.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// A retailer's product id (Target calls it a TCIN).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tcin(String);

impl Tcin {
    /// Validates a product id: 1–64 letters, digits, `-` or `_`.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_id("product id (tcin)", value)?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tcin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name a watcher gives itself on its stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatcherId(String);

impl WatcherId {
    /// Validates a watcher id: 1–64 letters, digits, `-` or `_`.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        check_id("watcher id", value)?;
        Ok(Self(value.to_owned()))
    }

    /// Makes a valid watcher id out of a host name: characters the arbiter
    /// refuses (such as the dots of a fully qualified name) become `-`, and
    /// the result is cut to 64 characters. `None` when nothing is left.
    pub fn from_host_name(host: &str) -> Option<Self> {
        let cleaned: String = host
            .trim()
            .chars()
            .map(|c| if is_id_char(c) { c } else { '-' })
            .take(MAX_ID_LEN)
            .collect();
        let cleaned = cleaned.trim_matches('-');
        Self::parse(cleaned).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WatcherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcin_rules() {
        assert!(Tcin::parse("81114477").is_ok());
        assert!(Tcin::parse("a-b_c").is_ok());
        assert!(matches!(Tcin::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            Tcin::parse("1 2"),
            Err(IdError::BadChar { bad: ' ', .. })
        ));
        assert!(matches!(
            Tcin::parse(&"1".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn watcher_id_from_host_name() {
        assert_eq!(
            WatcherId::from_host_name("box-1.example.com\n")
                .unwrap()
                .as_str(),
            "box-1-example-com"
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
}
