//! What the notifier sends: the [`Alert`], its [`AlertKind`], and the one
//! JSON shape every destination is given (a webhook gets it as it is; the
//! chat services get its title and message in their own format).

use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A product became available after being out of stock everywhere for
    /// at least the hold-down.
    InStock,
    /// The arbiter granted the slot: a checkout is running.
    CheckoutStarted,
    /// A checkout bought the product.
    Purchased,
    /// A checkout ended without a purchase, or its lease expired.
    CheckoutFailed,
    /// A lease has been held longer than `--stuck-after`.
    Stuck,
    /// No watcher has been connected to the arbiter for a while.
    NoWatchers,
    /// The notifier has not reached the arbiter for a while.
    ArbiterUnreachable,
    /// Events the notifier never received: on resuming, the arbiter's
    /// history no longer held the ones after its saved position, so any
    /// alert they would have made is lost.
    MissedEvents,
    /// Sent on demand (`restockctl notify test`), to every destination
    /// whatever its filter.
    Test,
    /// A watcher's stock source blocks it (captcha, PerimeterX, another
    /// 403/435, a retired endpoint): once per block episode per watcher.
    SourceBlocked,
    /// That block ended. A kind of its own, not a flag on `source_blocked`:
    /// a destination can take the block and not the all-clear (`--events`),
    /// and every destination keeps the one JSON shape it has.
    SourceUnblocked,
    /// The fleet-wide spending limit began holding products in stock back
    /// (`BUDGET_EXHAUSTED`): once per episode.
    BudgetExhausted,
    /// That episode ended: room came back (`BUDGET_AVAILABLE`). A kind of
    /// its own for the same reason as `source_unblocked`.
    BudgetAvailable,
}

impl AlertKind {
    pub const ALL: [Self; 13] = [
        Self::InStock,
        Self::CheckoutStarted,
        Self::Purchased,
        Self::CheckoutFailed,
        Self::Stuck,
        Self::NoWatchers,
        Self::ArbiterUnreachable,
        Self::MissedEvents,
        Self::Test,
        Self::SourceBlocked,
        Self::SourceUnblocked,
        Self::BudgetExhausted,
        Self::BudgetAvailable,
    ];

    /// The name in JSON, in `--events` and in `?events=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InStock => "in_stock",
            Self::CheckoutStarted => "checkout_started",
            Self::Purchased => "purchased",
            Self::CheckoutFailed => "checkout_failed",
            Self::Stuck => "stuck",
            Self::NoWatchers => "no_watchers",
            Self::ArbiterUnreachable => "arbiter_unreachable",
            Self::MissedEvents => "missed_events",
            Self::Test => "test",
            Self::SourceBlocked => "source_blocked",
            Self::SourceUnblocked => "source_unblocked",
            Self::BudgetExhausted => "budget_exhausted",
            Self::BudgetAvailable => "budget_available",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An alert kind that does not exist, as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown alert kind {0:?} (known: in_stock, checkout_started, purchased, checkout_failed, stuck, no_watchers, arbiter_unreachable, missed_events, source_blocked, source_unblocked, budget_exhausted, budget_available, test, or all)"
)]
pub struct UnknownKind(pub String);

impl FromStr for AlertKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        let wanted = s.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// Parses a list of kinds (`in_stock,purchased`, or `all`), separated by
/// commas or white space. Empty means all.
pub fn parse_kinds(text: &str) -> Result<BTreeSet<AlertKind>, UnknownKind> {
    let mut out = BTreeSet::new();
    for word in text.split([',', ' ', '\t', '\n']).filter(|w| !w.is_empty()) {
        if word == "all" {
            out.extend(AlertKind::ALL);
        } else {
            out.insert(word.parse()?);
        }
    }
    if out.is_empty() {
        out.extend(AlertKind::ALL);
    }
    Ok(out)
}

/// One alert, as every destination receives it. `id` is stable for one
/// alert to one destination: the same on every retry and after a restart,
/// and sent as the `Idempotency-Key` header, so a receiver can drop a
/// duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub kind: AlertKind,
    pub title: String,
    pub message: String,
    /// The product id (a bare TCIN for Target).
    pub tcin: Option<String>,
    /// `target` or `shopify`, with a product (`null` in alerts saved
    /// before retailers).
    #[serde(default)]
    pub retailer: Option<String>,
    pub name: Option<String>,
    pub price_cents: Option<u64>,
    pub fencing_token: Option<u64>,
    pub watcher_id: Option<String>,
    pub unix_ms: u64,
    pub test_mode: bool,
}

/// What TEST_MODE puts in front of every title.
pub const TEST_MODE_PREFIX: &str = "[TEST MODE] ";

impl Alert {
    /// Sets the product the alert is about, and its retailer.
    pub fn about_product(&mut self, id: &str) {
        self.retailer = restock_domain::ProductId::parse(id)
            .ok()
            .map(|p| p.retailer().as_str().to_owned());
        self.tcin = Some(id.to_owned());
    }

    /// An alert with `key` as its id (the destination's part is added when
    /// it is queued), `title` prefixed in TEST_MODE.
    pub fn new(key: String, kind: AlertKind, title: String, message: String, unix_ms: u64) -> Self {
        Self {
            id: key,
            kind,
            title,
            message,
            tcin: None,
            retailer: None,
            name: None,
            price_cents: None,
            fencing_token: None,
            watcher_id: None,
            unix_ms,
            test_mode: false,
        }
    }

    /// Marks the alert as one from a TEST_MODE arbiter: the title says so.
    pub fn in_test_mode(mut self, test_mode: bool) -> Self {
        self.test_mode = test_mode;
        if test_mode && !self.title.starts_with(TEST_MODE_PREFIX) {
            self.title = format!("{TEST_MODE_PREFIX}{}", self.title);
        }
        self
    }

    /// The copy of this alert for one destination: its id gets the
    /// destination's tag.
    pub fn for_destination(&self, tag: &str) -> Self {
        Self {
            id: format!("{}-{tag}", self.id),
            ..self.clone()
        }
    }

    /// The alert as JSON (the body of a `json://` POST, an `exec://`
    /// command's stdin).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// A price as people read it (`$19.99`).
    pub fn price_text(&self) -> Option<String> {
        self.price_cents
            .map(|c| restock_domain::Price::from_cents(c).formatted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_lists_and_all() {
        let k = parse_kinds("in_stock, purchased").unwrap();
        assert_eq!(
            k.into_iter().collect::<Vec<_>>(),
            [AlertKind::InStock, AlertKind::Purchased]
        );
        assert_eq!(parse_kinds("all").unwrap().len(), AlertKind::ALL.len());
        assert_eq!(parse_kinds("").unwrap().len(), AlertKind::ALL.len());
        // Every kind's name parses back to it, the newest included.
        for k in AlertKind::ALL {
            assert_eq!(k.as_str().parse::<AlertKind>(), Ok(k));
            assert!(UnknownKind(String::new()).to_string().contains(k.as_str()));
        }
        assert_eq!(
            serde_json::to_value(AlertKind::MissedEvents).unwrap(),
            "missed_events"
        );
        assert_eq!(
            serde_json::to_value(AlertKind::BudgetExhausted).unwrap(),
            "budget_exhausted"
        );
        assert_eq!(
            parse_kinds("budget_exhausted budget_available")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [AlertKind::BudgetExhausted, AlertKind::BudgetAvailable]
        );
        let e = parse_kinds("in_stock,restock").unwrap_err().to_string();
        assert!(e.contains("\"restock\""), "{e}");
    }

    #[test]
    fn the_json_shape_has_every_field_even_when_empty() {
        let a = Alert::new("k".into(), AlertKind::Test, "T".into(), "M".into(), 5)
            .in_test_mode(true)
            .for_destination("abcd");
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "fencing_token",
                "id",
                "kind",
                "message",
                "name",
                "price_cents",
                "retailer",
                "tcin",
                "test_mode",
                "title",
                "unix_ms",
                "watcher_id"
            ]
        );
        assert_eq!(v["id"], "k-abcd");
        assert_eq!(v["kind"], "test");
        assert_eq!(v["title"], "[TEST MODE] T");
        assert!(v["tcin"].is_null());
        // An alert saved before retailers still reads.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("retailer");
        let back: Alert = serde_json::from_value(old).unwrap();
        assert_eq!(back.retailer, None);
        let mut b = back;
        b.about_product("shopify:cards.example/4001");
        assert_eq!(b.retailer.as_deref(), Some("shopify"));
    }
}
