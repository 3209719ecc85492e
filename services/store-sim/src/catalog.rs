//! The products the simulator sells, read from the arbiter's product config
//! (`{"products": [{"tcin", "name", "max_price", "quantity"}, ...]}`), so one
//! file drives both services. Unknown fields (`enabled`, ...) are ignored.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use crate::types::{Price, Tcin};

/// One product the simulator knows.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    pub tcin: Tcin,
    pub name: String,
    /// The user's price limit from the config, shown in `GET /admin/stock`.
    pub max_price: Option<Price>,
    /// How many the user wants, from the config (informational here).
    pub quantity: u32,
    /// The price the store starts with: `max_price` when the config has one,
    /// otherwise the default price.
    pub initial_price: Price,
}

/// Why the product config could not be used. Every variant names the file.
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
    #[error("product config {path}: product #{index} ({tcin:?}): {message}")]
    Product {
        path: String,
        index: usize,
        tcin: String,
        message: String,
    },
}

#[derive(Deserialize)]
struct FileFormat {
    products: Vec<FileProduct>,
}

#[derive(Deserialize)]
struct FileProduct {
    tcin: String,
    #[serde(default)]
    name: String,
    /// Dollars.
    #[serde(default)]
    max_price: Option<f64>,
    #[serde(default)]
    quantity: Option<u32>,
}

/// The products in config order, with a lookup by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    products: Vec<Product>,
    index: HashMap<Tcin, usize>,
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
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), default_price)
    }

    /// Parses the JSON text of a product config; `path` is only used in errors.
    pub fn parse(text: &str, path: &str, default_price: Price) -> Result<Self, CatalogError> {
        let file: FileFormat = serde_json::from_str(text).map_err(|e| CatalogError::Syntax {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            message: crate::types::json_error_message(&e),
        })?;
        let mut products = Vec::with_capacity(file.products.len());
        let mut seen = HashMap::new();
        for (i, p) in file.products.into_iter().enumerate() {
            let index = i + 1;
            let bad = |message: String| CatalogError::Product {
                path: path.to_owned(),
                index,
                tcin: p.tcin.clone(),
                message,
            };
            let tcin = Tcin::parse(&p.tcin).map_err(|e| bad(e.to_string()))?;
            if let Some(first) = seen.insert(tcin.clone(), index) {
                return Err(bad(format!("listed twice (first as product #{first})")));
            }
            let max_price = p
                .max_price
                .map(Price::from_dollars)
                .transpose()
                .map_err(|e| bad(format!("max_price: {e}")))?;
            let quantity = match p.quantity {
                None => 1,
                Some(0) => return Err(bad("quantity must be at least 1".into())),
                Some(q) => q,
            };
            products.push(Product {
                name: if p.name.is_empty() {
                    tcin.to_string()
                } else {
                    p.name
                },
                tcin,
                max_price,
                quantity,
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
    pub fn position(&self, tcin: &Tcin) -> Option<usize> {
        self.index.get(tcin).copied()
    }

    /// Looks a product up by id.
    pub fn get(&self, tcin: &Tcin) -> Option<&Product> {
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
        assert_eq!(c.position(&Tcin::parse("1").unwrap()), Some(1));
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
