//! The products the simulator sells, read from the arbiter's product config
//! (`{"products": [{"tcin", "name", "max_price", "quantity"}, ...]}`, and
//! Shopify entries `{"retailer": "shopify", "shop", "variant" or "handle",
//! ...}`) with the arbiter's own parser, so one file drives both services
//! and both accept and refuse the same files. `enabled` is the arbiter's
//! business: the store sells disabled products too. Which shops and
//! storefront products the Shopify entries make is
//! [`crate::shopify::store`]'s business.

use std::{collections::HashMap, path::Path};

pub use restock_domain::CatalogError;
use restock_domain::PriorityList;

use restock_domain::{Price, ProductId};

/// One product the simulator knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub tcin: ProductId,
    pub name: String,
    /// The user's price limit from the config, shown in `GET /admin/stock`.
    pub max_price: Option<Price>,
    /// How many the user wants, from the config (informational here).
    pub quantity: u32,
    /// The price the store starts with: `max_price` when the config has one,
    /// otherwise the default price.
    pub initial_price: Price,
}

/// The products in config order, with a lookup by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    products: Vec<Product>,
    index: HashMap<ProductId, usize>,
}

impl Catalog {
    /// Builds a catalog from products; a repeated id keeps its first entry.
    pub fn new(products: Vec<Product>) -> Self {
        let mut index = HashMap::with_capacity(products.len());
        let mut kept = Vec::with_capacity(products.len());
        for p in products {
            if !index.contains_key(&p.tcin) {
                index.insert(p.tcin.clone(), kept.len());
                kept.push(p);
            }
        }
        Self {
            products: kept,
            index,
        }
    }

    /// Reads and validates a product config file.
    pub fn load(path: &Path, default_price: Price) -> Result<Self, CatalogError> {
        let list = PriorityList::load(path)?;
        Self::from_list(&list, &path.display().to_string(), default_price)
    }

    /// Parses the JSON text of a product config; `path` is only used in errors.
    pub fn parse(text: &str, path: &str, default_price: Price) -> Result<Self, CatalogError> {
        let list = PriorityList::parse(text, path)?;
        Self::from_list(&list, path, default_price)
    }

    fn from_list(
        list: &PriorityList,
        path: &str,
        default_price: Price,
    ) -> Result<Self, CatalogError> {
        let mut products = Vec::with_capacity(list.len());
        for (i, spec) in list.products().iter().enumerate() {
            // The arbiter has checked the id by the same rules; this only
            // moves it into the simulator's type.
            let tcin = ProductId::parse(spec.tcin.as_str()).map_err(|e| CatalogError::Product {
                path: path.to_owned(),
                index: i + 1,
                product: spec.tcin.to_string(),
                message: e.to_string(),
            })?;
            let max_price = spec.max_price;
            products.push(Product {
                tcin,
                name: spec.name.clone(),
                max_price,
                quantity: spec.quantity,
                initial_price: max_price.unwrap_or(default_price),
            });
        }
        Ok(Self::new(products))
    }

    /// The products, in config order.
    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// The place of a product in [`Self::products`].
    pub fn position(&self, tcin: &ProductId) -> Option<usize> {
        self.index.get(tcin).copied()
    }

    /// Looks a product up by id.
    pub fn get(&self, tcin: &ProductId) -> Option<&Product> {
        self.position(tcin).map(|i| &self.products[i])
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Price = Price::from_cents(999);

    #[test]
    fn reads_the_arbiters_format_with_defaults() {
        let c = Catalog::parse(
            r#"{"products":[{"tcin":"2","name":"Two","max_price":19.99,"quantity":3,"enabled":false},{"tcin":"1"}]}"#,
            "p.json",
            DEFAULT,
        )
        .unwrap();
        let p = c.products();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].initial_price, Price::from_cents(1999));
        assert_eq!(p[0].quantity, 3);
        assert_eq!(p[1].name, "1");
        assert_eq!(p[1].initial_price, DEFAULT);
        assert_eq!(p[1].max_price, None);
        assert_eq!(c.position(&ProductId::parse("1").unwrap()), Some(1));
    }

    #[test]
    fn errors_name_the_file_and_the_place() {
        let err = Catalog::parse(
            "{\n \"products\": [\n  {\"tcin\": }\n ]\n}",
            "c/p.json",
            DEFAULT,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("c/p.json") && err.contains("line 3"), "{err}");
        let cases = [
            (r#"{"products":[{"tcin":"1"},{"tcin":"a b"}]}"#, "#2"),
            (
                r#"{"products":[{"tcin":"1"},{"tcin":"1"}]}"#,
                "listed twice",
            ),
            (r#"{"products":[{"tcin":"1","quantity":0}]}"#, "quantity"),
            (r#"{"products":[{"tcin":"1","max_price":-1}]}"#, "max_price"),
            (r#"{"items":[]}"#, "products"),
        ];
        for (text, want) in cases {
            let err = Catalog::parse(text, "p.json", DEFAULT)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want) && err.contains("p.json"),
                "{text}: {err}"
            );
        }
        let err = Catalog::load(Path::new("/nonexistent/p.json"), DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/p.json"), "{err}");
    }
}
