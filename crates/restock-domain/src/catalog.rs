//! The product list and its priority order, read from
//! `config/product_config.json` (top-down: the first product is the most
//! wanted; one list across retailers). Products that are not in the file rank after every listed one,
//! ordered by product id so the order is stable across restarts.
//!
//! The arbiter, the store simulator and the watcher (through the
//! [`Catalog`] the arbiter sends it) all read the list the same way.

use std::{collections::HashMap, path::Path, time::Duration};

use serde::Deserialize;

use crate::{
    budget::{BudgetLimits, FileBudget},
    product::Price,
    product_id::{ProductId, Retailer},
};

/// One configured product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSpec {
    pub tcin: ProductId,
    pub name: String,
    /// Highest price the user pays; `None` means no limit.
    pub max_price: Option<Price>,
    /// How many to buy (normal mode) before the product is final.
    pub quantity: u32,
    /// A disabled product is listed (and keeps its place) but never granted.
    pub enabled: bool,
}

impl ProductSpec {
    /// A product known only by its id: no price limit, one to buy, enabled.
    pub fn plain(tcin: ProductId) -> Self {
        Self {
            name: tcin.to_string(),
            tcin,
            max_price: None,
            quantity: 1,
            enabled: true,
        }
    }

    /// What the product's price limit says of `price` (`None`: the source
    /// gave no price). Fails closed: a product with a limit and no known
    /// price may not be bought, since a buying bot that cannot see the
    /// price cannot keep to the limit (Target's stock answers carry none).
    pub fn price_check(&self, price: Option<Price>) -> PriceCheck {
        match (self.max_price, price) {
            (None, _) => PriceCheck::Allowed,
            (Some(_), None) => PriceCheck::Unknown,
            (Some(max), Some(p)) if p > max => PriceCheck::Above,
            (Some(_), Some(_)) => PriceCheck::Allowed,
        }
    }

    /// May it be bought at `price`? Only [`PriceCheck::Allowed`].
    pub fn may_buy_at(&self, price: Option<Price>) -> bool {
        self.price_check(price) == PriceCheck::Allowed
    }
}

/// See [`ProductSpec::price_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceCheck {
    /// No limit, or a known price within it.
    Allowed,
    /// A known price above `max_price`.
    Above,
    /// The product has a `max_price` and no price is known.
    Unknown,
}

impl PriceCheck {
    /// Why a product in stock does not count, in a log line or an event.
    pub fn why_not(self) -> Option<&'static str> {
        match self {
            Self::Allowed => None,
            Self::Above => Some("the price is above max_price"),
            Self::Unknown => Some("no price known and the product has a max_price"),
        }
    }
}

/// Why the product configuration could not be used. Every variant names the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read product config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("product config {path} is not valid: line {line}, column {column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("product config {path}: product #{index} ({product:?}): {message}")]
    Product {
        path: String,
        index: usize,
        /// What the entry names (its id as written, or its shop and item).
        product: String,
        message: String,
    },
    #[error("product config {path}: {field}: {message}")]
    Budget {
        path: String,
        /// `budget.max_spend`, `budget.window`, ... or `budget` itself.
        field: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct FileFormat {
    products: Vec<FileProduct>,
    /// The fleet's spending limit; absent: none.
    #[serde(default)]
    budget: Option<serde_json::Value>,
}

/// One entry of `"products"`. A product is named by its retailer's own
/// fields (`"tcin"` for Target; `"shop"` and `"variant"` or `"handle"` for
/// Shopify), or by `"id"` in the product id's written form.
#[derive(Deserialize)]
struct FileProduct {
    /// `"target"` (the default) or `"shopify"`.
    #[serde(default)]
    retailer: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tcin: Option<String>,
    #[serde(default)]
    shop: Option<String>,
    /// A Shopify variant id: a number, or a string of digits.
    #[serde(default)]
    variant: Option<serde_json::Value>,
    #[serde(default)]
    handle: Option<String>,
    #[serde(default)]
    name: String,
    /// Dollars, as the original bot's config had it.
    #[serde(default)]
    max_price: Option<f64>,
    #[serde(default)]
    quantity: Option<u32>,
    #[serde(default)]
    enabled: Option<bool>,
}

impl FileProduct {
    /// What the entry names, for error messages.
    fn named(&self) -> String {
        if let Some(id) = self.id.as_ref().or(self.tcin.as_ref()) {
            return id.clone();
        }
        let item = match (&self.variant, &self.handle) {
            (Some(v), _) => v.to_string().trim_matches('"').to_owned(),
            (None, Some(h)) => h.clone(),
            (None, None) => String::new(),
        };
        match &self.shop {
            Some(shop) => format!("{shop}/{item}"),
            None => item,
        }
    }

    /// The product id the entry names, checked against its retailer's rule.
    fn product_id(&self) -> Result<ProductId, String> {
        let retailer = match &self.retailer {
            None => None,
            Some(r) => Some(Retailer::parse(r).map_err(|e| e.to_string())?),
        };
        if let Some(id) = &self.id {
            if self.tcin.is_some()
                || self.shop.is_some()
                || self.variant.is_some()
                || self.handle.is_some()
            {
                return Err("\"id\" names the product alone: drop \"tcin\", \"shop\", \"variant\" and \"handle\"".into());
            }
            let id = ProductId::parse(id).map_err(|e| e.to_string())?;
            if let Some(r) = retailer
                && r != id.retailer()
            {
                return Err(format!(
                    "\"retailer\" is {r:?} but the id names a {} product",
                    id.retailer()
                ));
            }
            return Ok(id);
        }
        match retailer.unwrap_or(Retailer::Target) {
            Retailer::Target => {
                if self.shop.is_some() || self.variant.is_some() || self.handle.is_some() {
                    return Err("a Target product has a \"tcin\", not \"shop\", \"variant\" or \"handle\" (set \"retailer\": \"shopify\" for a Shopify one)".into());
                }
                let tcin = self
                    .tcin
                    .as_deref()
                    .ok_or("no \"tcin\" (a Target product needs one; or give \"id\")")?;
                ProductId::target(tcin).map_err(|e| e.to_string())
            }
            Retailer::Shopify => {
                if self.tcin.is_some() {
                    return Err("a Shopify product has \"shop\" and \"variant\" (or \"handle\"), not \"tcin\"".into());
                }
                let shop = self.shop.as_deref().ok_or(
                    "no \"shop\" (a Shopify product needs the shop's host name, e.g. \"kith.com\")",
                )?;
                let item = match (&self.variant, &self.handle) {
                    (Some(_), Some(_)) => {
                        return Err("give \"variant\" or \"handle\", not both".into());
                    }
                    (Some(serde_json::Value::Number(n)), None) if n.as_u64().is_some() => {
                        n.to_string()
                    }
                    (Some(serde_json::Value::String(s)), None)
                        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        s.clone()
                    }
                    (Some(other), None) => {
                        return Err(format!(
                            "\"variant\" must be a Shopify variant id (a number), not {other}"
                        ));
                    }
                    (None, Some(h)) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()) => {
                        return Err(format!(
                            "\"handle\" {h:?} is a number: a variant id goes in \"variant\""
                        ));
                    }
                    (None, Some(h)) => h.clone(),
                    (None, None) => {
                        return Err("no \"variant\" or \"handle\" (a variant is what gets bought; a handle means any variant)".into());
                    }
                };
                ProductId::parse(&format!("shopify:{shop}/{item}")).map_err(|e| e.to_string())
            }
        }
    }
}

/// The configured products in priority order, with a lookup by id.
#[derive(Debug, Clone, Default)]
pub struct PriorityList {
    products: Vec<ProductSpec>,
    rank: HashMap<ProductId, usize>,
    /// The `"budget"` of the file, when it has one.
    budget: Option<BudgetLimits>,
}

impl PriorityList {
    /// Builds a list from products already in priority order.
    ///
    /// # Panics
    /// Never for distinct ids; duplicate ids keep the first place.
    pub fn new(products: Vec<ProductSpec>) -> Self {
        let mut rank = HashMap::with_capacity(products.len());
        for (i, p) in products.iter().enumerate() {
            rank.entry(p.tcin.clone()).or_insert(i);
        }
        Self {
            products,
            rank,
            budget: None,
        }
    }

    /// The same list with a spending limit.
    pub fn with_budget(mut self, budget: Option<BudgetLimits>) -> Self {
        self.budget = budget;
        self
    }

    /// The product config's spending limit, if it sets one.
    pub fn budget(&self) -> Option<&BudgetLimits> {
        self.budget.as_ref()
    }

    /// Reads and validates a product config file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the JSON text of a product config; `path` is only used in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, CatalogError> {
        let file: FileFormat = serde_json::from_str(text).map_err(|e| CatalogError::Syntax {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: json_error_message(&e),
        })?;
        let budget = match file.budget {
            None => None,
            Some(value) => Some(parse_budget(value, path)?),
        };
        let mut products = Vec::with_capacity(file.products.len());
        let mut seen = HashMap::new();
        for (i, p) in file.products.into_iter().enumerate() {
            let index = i + 1;
            let named = p.named();
            let bad = |message: String| CatalogError::Product {
                path: path.to_owned(),
                index,
                product: named.clone(),
                message,
            };
            let tcin = p.product_id().map_err(bad)?;
            if let Some(first) = seen.insert(tcin.clone(), index) {
                return Err(bad(format!("listed twice (first as product #{first})")));
            }
            let max_price = match p.max_price {
                None => None,
                Some(d) => Some(Price::from_dollars(d).map_err(|e| bad(format!("max_price {e}")))?),
            };
            let quantity = match p.quantity {
                None => 1,
                Some(0) => return Err(bad("quantity must be at least 1".into())),
                Some(q) => q,
            };
            products.push(ProductSpec {
                name: if p.name.is_empty() {
                    tcin.to_string()
                } else {
                    p.name
                },
                tcin,
                max_price,
                quantity,
                enabled: p.enabled.unwrap_or(true),
            });
        }
        Ok(Self::new(products).with_budget(budget))
    }

    /// The configured products, top priority first.
    pub fn products(&self) -> &[ProductSpec] {
        &self.products
    }

    pub fn get(&self, tcin: &ProductId) -> Option<&ProductSpec> {
        self.rank.get(tcin).map(|&i| &self.products[i])
    }

    /// Sort key: configured products by their place, then every other
    /// product after them by id.
    pub fn rank_key<'a>(&self, tcin: &'a ProductId) -> (usize, &'a str) {
        match self.rank.get(tcin) {
            Some(&i) => (i, ""),
            None => (usize::MAX, tcin.as_str()),
        }
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// A configured product's place, 1 = top priority.
    pub fn priority(&self, tcin: &ProductId) -> Option<u32> {
        self.rank.get(tcin).map(|&i| (i + 1) as u32)
    }
}

/// Reads the `"budget"` object; an error names the field that is wrong.
fn parse_budget(value: serde_json::Value, path: &str) -> Result<BudgetLimits, CatalogError> {
    let bad = |field: &str, message: String| CatalogError::Budget {
        path: path.to_owned(),
        field: field.to_owned(),
        message,
    };
    if !value.is_object() {
        return Err(bad(
            "budget",
            format!(
                "must be an object like {{\"max_spend\": 250.00, \"max_purchases\": 4, \"window\": \"24h\"}}, not {value}"
            ),
        ));
    }
    let file: FileBudget = serde_json::from_value(value).map_err(|e| {
        // serde names an unknown or mistyped field in its message.
        bad("budget", json_error_message(&e))
    })?;
    file.limits().map_err(|(field, message)| {
        let field = if field == "budget" {
            "budget".to_owned()
        } else {
            format!("budget.{field}")
        };
        bad(&field, message)
    })
}

/// A JSON parse error's message without serde's trailing "at line L column
/// C" (the callers report line and column themselves).
pub fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// What the arbiter tells every watcher when its stream opens (and again
/// after a reload): the product list in priority order and the timings.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub products: PriorityList,
    pub lease_ttl: Duration,
    pub stock_ttl: Duration,
    pub test_mode: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_products_in_order_with_defaults() {
        let list = PriorityList::parse(
            r#"{"products":[{"tcin":"2","name":"Two","max_price":19.99,"quantity":3},{"tcin":"1","extra":"ignored"}]}"#,
            "p.json",
        )
        .unwrap();
        let p = list.products();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].tcin.as_str(), "2");
        assert_eq!(p[0].max_price, Some(Price::from_cents(1999)));
        assert_eq!(p[0].quantity, 3);
        assert_eq!(p[1].name, "1");
        assert_eq!(p[1].quantity, 1);
        assert!(p[1].enabled);
    }

    #[test]
    fn unlisted_products_rank_after_listed_ones_in_a_stable_order() {
        let list = PriorityList::parse(r#"{"products":[{"tcin":"z"},{"tcin":"a"}]}"#, "p").unwrap();
        let ids = ["b", "a", "c", "z"].map(|s| ProductId::parse(s).unwrap());
        let mut sorted: Vec<&ProductId> = ids.iter().collect();
        sorted.sort_by_key(|t| list.rank_key(t));
        let names: Vec<&str> = sorted.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["z", "a", "b", "c"]);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let err = PriorityList::parse(
            "{\n  \"products\": [\n    {\"tcin\": }\n  ]\n}",
            "conf/p.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("conf/p.json"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_products_are_refused_with_their_place() {
        let cases = [
            (r#"{"products":[{"tcin":"1"},{"tcin":"bad id"}]}"#, "#2"),
            (
                r#"{"products":[{"tcin":"1"},{"tcin":"1"}]}"#,
                "listed twice",
            ),
            (r#"{"products":[{"tcin":"1","quantity":0}]}"#, "quantity"),
            (r#"{"products":[{"tcin":"1","max_price":-1}]}"#, "max_price"),
            (r#"{"items":[]}"#, "products"),
        ];
        for (text, want) in cases {
            let err = PriorityList::parse(text, "p.json").unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("p.json"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn one_priority_list_holds_products_of_several_retailers() {
        let list = PriorityList::parse(
            r#"{"products":[
                {"retailer":"shopify","shop":"Shop.Example.com","variant":39493483,"name":"ETB at the shop"},
                {"tcin":"94300069","name":"ETB at Target"},
                {"retailer":"target","tcin":"94336414"},
                {"retailer":"shopify","shop":"shop.example.com","handle":"booster-bundle"},
                {"retailer":"shopify","shop":"shop.example.com","variant":"77"},
                {"id":"shopify:other.example/5"},
                {"id":"target:93954446"}
            ]}"#,
            "p.json",
        )
        .unwrap();
        let ids: Vec<&str> = list.products().iter().map(|p| p.tcin.as_str()).collect();
        assert_eq!(
            ids,
            [
                "shopify:shop.example.com/39493483",
                "94300069",
                "94336414",
                "shopify:shop.example.com/booster-bundle",
                "shopify:shop.example.com/77",
                "shopify:other.example/5",
                "93954446",
            ]
        );
        let retailers: Vec<Retailer> = list.products().iter().map(|p| p.tcin.retailer()).collect();
        assert_eq!(retailers[..2], [Retailer::Shopify, Retailer::Target]);
        assert_eq!(
            list.priority(&ProductId::parse("94300069").unwrap()),
            Some(2)
        );
    }

    #[test]
    fn a_bad_retailer_entry_says_what_is_missing_or_mixed() {
        let cases = [
            (r#"{"retailer":"bestbuy","tcin":"1"}"#, "known retailers"),
            (r#"{"retailer":"shopify","tcin":"1"}"#, "not \"tcin\""),
            (r#"{"retailer":"shopify","variant":1}"#, "no \"shop\""),
            (
                r#"{"retailer":"shopify","shop":"a.com"}"#,
                "no \"variant\" or \"handle\"",
            ),
            (
                r#"{"retailer":"shopify","shop":"a.com","variant":1,"handle":"x"}"#,
                "not both",
            ),
            (
                r#"{"retailer":"shopify","shop":"a.com","variant":"x1"}"#,
                "\"variant\" must be",
            ),
            (
                r#"{"retailer":"shopify","shop":"https://a.com","variant":1}"#,
                "host name",
            ),
            (r#"{"shop":"a.com","variant":1}"#, "retailer\": \"shopify"),
            (r#"{"name":"nothing"}"#, "no \"tcin\""),
            (
                r#"{"id":"shopify:a.com/1","retailer":"target"}"#,
                "names a shopify product",
            ),
            (r#"{"id":"1","tcin":"1"}"#, "names the product alone"),
        ];
        for (entry, want) in cases {
            let text = format!(r#"{{"products":[{{"tcin":"9"}},{entry}]}}"#);
            let err = match PriorityList::parse(&text, "conf/p.json") {
                Ok(list) => panic!("{entry} was taken: {:?}", list.products()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("conf/p.json") && err.contains(want),
                "{entry}: {err}"
            );
        }
        // The same variant written two ways is one product, listed twice.
        let err = PriorityList::parse(
            r#"{"products":[{"id":"shopify:a.com/1"},{"retailer":"shopify","shop":"A.com","variant":"01"}]}"#,
            "p.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn a_budget_is_read_with_any_of_its_three_fields() {
        let list = PriorityList::parse(
            r#"{"products":[{"tcin":"1"}],"budget":{"max_spend":250.00,"max_purchases":4,"window":"24h"}}"#,
            "p.json",
        )
        .unwrap();
        let b = list.budget().copied().unwrap();
        assert_eq!(b.max_spend, Some(Price::from_cents(25_000)));
        assert_eq!(b.max_purchases, Some(4));
        assert_eq!(b.window, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(b.describe(), "$250.00, 4 purchases per 24h");
        let only = PriorityList::parse(r#"{"products":[],"budget":{"max_purchases":2}}"#, "p.json")
            .unwrap();
        assert_eq!(only.budget().unwrap().window, None);
        assert_eq!(only.budget().unwrap().describe(), "2 purchases in all");
        let none = PriorityList::parse(r#"{"products":[]}"#, "p.json").unwrap();
        assert!(none.budget().is_none());
    }

    #[test]
    fn a_bad_budget_names_the_file_and_the_field() {
        let cases = [
            (r#"{"max_spend":-5}"#, "budget.max_spend"),
            (r#"{"max_spend":"lots"}"#, "budget:"),
            (r#"{"max_spend":50,"window":"soon"}"#, "budget.window"),
            (r#"{"max_spend":50,"window":"0s"}"#, "budget.window"),
            (r#"{"max_purchases":-1}"#, "budget:"),
            (r#"{"window":"24h"}"#, "limits nothing"),
            (r#"{}"#, "limits nothing"),
            // A typo must not leave the card without its limit.
            (r#"{"max_spent":50}"#, "max_spent"),
            (r#"[50]"#, "budget:"),
        ];
        for (budget, want) in cases {
            let text = format!(r#"{{"products":[{{"tcin":"1"}}],"budget":{budget}}}"#);
            let err = match PriorityList::parse(&text, "conf/p.json") {
                Ok(list) => panic!("{budget} was taken: {:?}", list.budget()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("conf/p.json") && err.contains(want),
                "{budget}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = PriorityList::load(Path::new("/nonexistent/p.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/p.json"), "{err}");
    }
}
