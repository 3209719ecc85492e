//! A product is a retailer plus that retailer's own id: [`ProductId`], one
//! type with one rule per [`Retailer`], checked once where a value enters.
//!
//! | retailer | written | canonical form | what it names |
//! | --- | --- | --- | --- |
//! | Target | `94300069` or `target:94300069` | `94300069` | a TCIN: 1–64 letters, digits, `-`, `_` |
//! | Shopify | `shopify:<shop>/<variant>` | the same, shop in lower case | one variant of a shop (what gets bought) |
//! | Shopify | `shopify:<shop>/<handle>` | the same | a product by its handle: any of its variants |
//!
//! A Target product keeps its bare TCIN as its canonical form, so every
//! saved state, config file, flag and protocol message written before
//! retailers existed reads the same (and a client that knows only TCINs
//! keeps working against Target products). `<shop>` is the shop's host name
//! (`kith.com`, `shop.example.co.uk`); the watcher asks `https://<shop>`
//! unless told another base URL for it (`--shopify-url`). A `<variant>` is
//! all digits (Shopify's variant id, the `?variant=` of a product page); a
//! `<handle>` is the product's URL name (`/products/<handle>`): lower-case
//! letters, digits, `-` and `_`, with at least one letter.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::IdError;

/// Longest product id accepted, in characters: `shopify:`, a shop's host
/// name (at most 253) and a handle (at most 255).
pub const MAX_PRODUCT_ID_LEN: usize = 520;
/// Longest TCIN accepted.
pub const MAX_TCIN_LEN: usize = 64;
/// Longest Shopify product handle accepted.
pub const MAX_HANDLE_LEN: usize = 255;
/// Longest shop host name accepted (DNS's limit).
pub const MAX_SHOP_LEN: usize = 253;

const WHAT: &str = "product id";

/// Who sells a product: the retailer decides how its id reads and which
/// source the watcher polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Retailer {
    /// target.com, polled through its RedSky JSON API; ids are TCINs.
    Target,
    /// A Shopify storefront, polled through its public `products.json`.
    Shopify,
}

impl Retailer {
    pub const ALL: [Retailer; 2] = [Retailer::Target, Retailer::Shopify];

    /// The name used in config files, ids, flags, logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::Shopify => "shopify",
        }
    }

    /// Reads a retailer's name as config files write it.
    pub fn parse(name: &str) -> Result<Self, IdError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| IdError::Malformed {
                what: "retailer",
                value: name.to_owned(),
                why: "known retailers are \"target\" and \"shopify\"".into(),
            })
    }
}

impl fmt::Display for Retailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a Shopify product id names in its shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShopifyItem<'a> {
    /// One variant, by Shopify's variant id.
    Variant(u64),
    /// A product by handle: any of its variants will do.
    Handle(&'a str),
}

/// A Shopify product id taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopifyRef<'a> {
    /// The shop's host name, lower case.
    pub shop: &'a str,
    pub item: ShopifyItem<'a>,
}

/// See the module documentation. Ordered and hashed by its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProductId(String);

fn tcin_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The common case, a valid bare TCIN, in one pass over its bytes (every
/// stock report carries product ids: the arbiter checks them all).
fn is_plain_tcin(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TCIN_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn bad_char(value: &str, bad: char, allowed: &'static str) -> IdError {
    IdError::BadChar {
        what: WHAT,
        value: value.to_owned(),
        bad,
        allowed,
    }
}

fn malformed(value: &str, why: impl Into<String>) -> IdError {
    IdError::Malformed {
        what: WHAT,
        value: value.to_owned(),
        why: why.into(),
    }
}

fn check_tcin(value: &str, tcin: &str) -> Result<(), IdError> {
    if tcin.is_empty() {
        return Err(IdError::Empty { what: WHAT });
    }
    let len = tcin.chars().count();
    if len > MAX_TCIN_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            len,
            max: MAX_TCIN_LEN,
        });
    }
    if let Some(bad) = tcin.chars().find(|c| !tcin_char(*c)) {
        let allowed = if value.contains(':') {
            "letters, digits, '-' and '_' in a TCIN"
        } else {
            "letters, digits, '-' and '_' in a TCIN (other retailers: \"shopify:<shop>/<variant>\")"
        };
        return Err(bad_char(value, bad, allowed));
    }
    Ok(())
}

/// Checks `<shop>/<item>` and returns it in canonical form (shop lower case).
fn check_shopify(value: &str, rest: &str) -> Result<String, IdError> {
    let Some((shop, item)) = rest.split_once('/') else {
        return Err(malformed(
            value,
            "a Shopify product is \"shopify:<shop host>/<variant id or handle>\"",
        ));
    };
    let shop = shop.to_ascii_lowercase();
    if shop.is_empty() || shop.len() > MAX_SHOP_LEN {
        return Err(malformed(
            value,
            format!("the shop must be a host name of 1 to {MAX_SHOP_LEN} characters"),
        ));
    }
    if let Some(bad) = shop
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(bad_char(
            value,
            bad,
            "letters, digits, '-' and '.' in a shop's host name (no scheme, port or path)",
        ));
    }
    if shop.starts_with(['.', '-']) || shop.ends_with(['.', '-']) || shop.contains("..") {
        return Err(malformed(value, "the shop is not a host name"));
    }
    if item.is_empty() {
        return Err(malformed(
            value,
            "a variant id or product handle must follow the shop",
        ));
    }
    if item.bytes().all(|b| b.is_ascii_digit()) {
        // One spelling per variant: `007` is variant 7.
        return match item.parse::<u64>() {
            Ok(v) if v > 0 => Ok(format!("shopify:{shop}/{v}")),
            _ => Err(malformed(value, "the variant id is not a number above 0")),
        };
    } else {
        if item.len() > MAX_HANDLE_LEN {
            return Err(malformed(
                value,
                format!("the product handle is longer than {MAX_HANDLE_LEN} characters"),
            ));
        }
        if let Some(bad) = item
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(bad_char(
                value,
                bad,
                "lower-case letters, digits, '-' and '_' in a product handle (a variant id is all digits)",
            ));
        }
        if !item.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(malformed(
                value,
                "a product handle has at least one letter (a variant id is all digits)",
            ));
        }
    }
    Ok(format!("shopify:{shop}/{item}"))
}

impl ProductId {
    /// Checks `value` against its retailer's rule (see the module
    /// documentation) and keeps its canonical form.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if is_plain_tcin(value) {
            return Ok(Self(value.to_owned()));
        }
        let len = value.chars().count();
        if len > MAX_PRODUCT_ID_LEN {
            return Err(IdError::TooLong {
                what: WHAT,
                len,
                max: MAX_PRODUCT_ID_LEN,
            });
        }
        if let Some(tcin) = value.strip_prefix("target:") {
            check_tcin(value, tcin)?;
            return Ok(Self(tcin.to_owned()));
        }
        if let Some(rest) = value.strip_prefix("shopify:") {
            return check_shopify(value, rest).map(Self);
        }
        if let Some((retailer, _)) = value.split_once(':')
            && !retailer.is_empty()
            && retailer.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(malformed(
                value,
                format!(
                    "unknown retailer {retailer:?}: ids are a TCIN, \"target:<tcin>\" or \"shopify:<shop>/<variant>\""
                ),
            ));
        }
        check_tcin(value, value)?;
        Ok(Self(value.to_owned()))
    }

    /// A Target product by TCIN.
    pub fn target(tcin: &str) -> Result<Self, IdError> {
        check_tcin(tcin, tcin)?;
        Ok(Self(tcin.to_owned()))
    }

    /// A Shopify variant of `shop` (a host name).
    pub fn shopify_variant(shop: &str, variant: u64) -> Result<Self, IdError> {
        Self::parse(&format!("shopify:{shop}/{variant}"))
    }

    /// The id in its canonical form (a bare TCIN for Target).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn retailer(&self) -> Retailer {
        if self.0.starts_with("shopify:") {
            Retailer::Shopify
        } else {
            Retailer::Target
        }
    }

    /// The TCIN, for a Target product.
    pub fn tcin(&self) -> Option<&str> {
        (self.retailer() == Retailer::Target).then_some(self.0.as_str())
    }

    /// The shop and item, for a Shopify product.
    pub fn shopify(&self) -> Option<ShopifyRef<'_>> {
        let rest = self.0.strip_prefix("shopify:")?;
        let (shop, item) = rest.split_once('/')?;
        let item = match item.parse::<u64>() {
            Ok(v) if item.bytes().all(|b| b.is_ascii_digit()) => ShopifyItem::Variant(v),
            _ => ShopifyItem::Handle(item),
        };
        Some(ShopifyRef { shop, item })
    }

    /// The id as people read it: `TCIN 94300069`, `Shopify cards.example
    /// variant 4001`, `Shopify cards.example product etb`.
    pub fn describe(&self) -> String {
        match self.shopify() {
            None => format!("TCIN {}", self.0),
            Some(ShopifyRef {
                shop,
                item: ShopifyItem::Variant(v),
            }) => format!("Shopify {shop} variant {v}"),
            Some(ShopifyRef {
                shop,
                item: ShopifyItem::Handle(h),
            }) => format!("Shopify {shop} product {h}"),
        }
    }

    /// The retailer's own id (the TCIN, or `<shop>/<variant>`): what a
    /// person reads beside the retailer's name.
    pub fn local(&self) -> &str {
        self.0.strip_prefix("shopify:").unwrap_or(&self.0)
    }
}

impl TryFrom<String> for ProductId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, IdError> {
        // A bare TCIN is kept as it came (no copy).
        if is_plain_tcin(&value) {
            return Ok(Self(value));
        }
        Self::parse(&value)
    }
}

impl std::str::FromStr for ProductId {
    type Err = IdError;
    fn from_str(value: &str) -> Result<Self, IdError> {
        Self::parse(value)
    }
}

impl From<ProductId> for String {
    fn from(id: ProductId) -> String {
        id.0
    }
}

impl AsRef<str> for ProductId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_tcin_is_a_target_product_and_stays_bare() {
        for ok in ["94300069", "A-b_9", &"x".repeat(MAX_TCIN_LEN)] {
            let id = ProductId::parse(ok).unwrap();
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.retailer(), Retailer::Target);
            assert_eq!(id.tcin(), Some(ok));
            assert_eq!(id.shopify(), None);
        }
        let prefixed = ProductId::parse("target:94300069").unwrap();
        assert_eq!(prefixed.as_str(), "94300069");
        assert_eq!(prefixed, ProductId::parse("94300069").unwrap());
    }

    #[test]
    fn a_bad_tcin_is_refused_with_a_reason() {
        assert_eq!(
            ProductId::parse(""),
            Err(IdError::Empty { what: "product id" })
        );
        assert!(matches!(
            ProductId::parse(&"1".repeat(MAX_TCIN_LEN + 1)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        let err = ProductId::parse("12 34").unwrap_err().to_string();
        assert!(err.contains("' '") && err.contains("shopify:"), "{err}");
        assert!(ProductId::parse("a/b").is_err());
        assert!(ProductId::parse("tcin.1").is_err());
        assert!(ProductId::parse("target:").is_err());
    }

    #[test]
    fn shopify_ids_name_a_shop_and_a_variant_or_handle() {
        let v = ProductId::parse("shopify:Kith.com/39493483").unwrap();
        assert_eq!(v.as_str(), "shopify:kith.com/39493483");
        assert_eq!(v.retailer(), Retailer::Shopify);
        assert_eq!(v.tcin(), None);
        assert_eq!(v.local(), "kith.com/39493483");
        assert_eq!(v.describe(), "Shopify kith.com variant 39493483");
        assert_eq!(
            ProductId::parse("94300069").unwrap().describe(),
            "TCIN 94300069"
        );
        assert_eq!(
            v.shopify(),
            Some(ShopifyRef {
                shop: "kith.com",
                item: ShopifyItem::Variant(39493483)
            })
        );
        let h = ProductId::parse("shopify:shop.example.co.uk/pokemon-etb_2").unwrap();
        assert_eq!(
            h.shopify().unwrap().item,
            ShopifyItem::Handle("pokemon-etb_2")
        );
        assert_eq!(
            ProductId::shopify_variant("kith.com", 5).unwrap().as_str(),
            "shopify:kith.com/5"
        );
        // One spelling per variant.
        assert_eq!(
            ProductId::parse("shopify:kith.com/007").unwrap(),
            ProductId::shopify_variant("kith.com", 7).unwrap()
        );
    }

    #[test]
    fn bad_shopify_ids_and_unknown_retailers_say_what_is_wrong() {
        let cases = [
            (
                "shopify:kith.com",
                "\"shopify:<shop host>/<variant id or handle>\"",
            ),
            ("shopify:/123", "host name"),
            ("shopify:kith.com/", "must follow the shop"),
            ("shopify:kith.com/0", "above 0"),
            ("shopify:kith.com/99999999999999999999999", "above 0"),
            ("shopify:https://kith.com/1", "':'"),
            ("shopify:kith.com:8080/1", "':'"),
            ("shopify:.kith.com/1", "not a host name"),
            ("shopify:kith.com/Big-Handle", "'B'"),
            ("shopify:kith.com/a/b", "'/'"),
            ("shopify:kith.com/-_-", "at least one letter"),
            ("bestbuy:6614313", "unknown retailer \"bestbuy\""),
        ];
        for (value, says) in cases {
            let e = ProductId::parse(value).unwrap_err().to_string();
            assert!(e.contains(says), "{value}: {e}");
            assert!(
                e.contains(value) || e.contains("product id"),
                "{value}: {e}"
            );
        }
        let long = format!("shopify:{}.com/1", "a".repeat(MAX_PRODUCT_ID_LEN));
        assert!(matches!(
            ProductId::parse(&long),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn product_ids_round_trip_through_json_and_refuse_invalid_json() {
        let t: ProductId = serde_json::from_str("\"123\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"123\"");
        let s: ProductId = serde_json::from_str("\"shopify:KITH.com/7\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"shopify:kith.com/7\"");
        assert!(serde_json::from_str::<ProductId>("\"1 2\"").is_err());
    }

    #[test]
    fn retailers_read_by_name() {
        assert_eq!(Retailer::parse("shopify"), Ok(Retailer::Shopify));
        assert_eq!(Retailer::parse("target"), Ok(Retailer::Target));
        let e = Retailer::parse("Target").unwrap_err().to_string();
        assert!(e.contains("\"Target\"") && e.contains("\"shopify\""), "{e}");
    }
}
