//! The product list and timings the arbiter sends first on every stream, and
//! the watch list derived from it: the enabled products this watcher polls,
//! in priority order, limited by `--products`.

use std::{collections::HashMap, time::Duration};

use restock_proto::v1 as pb;
use tracing::warn;

use restock_domain::Tcin;

/// One product of the arbiter's priority list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub tcin: Tcin,
    pub name: String,
    /// 1 = top priority.
    pub priority: u32,
    /// Highest price the user pays, in cents; `None` means no limit.
    pub max_price_cents: Option<u64>,
    /// How many the arbiter buys before the product is final (the arbiter
    /// counts; shown in logs only).
    pub quantity: u32,
    pub enabled: bool,
}

impl Product {
    /// Is `price` (when known) above the product's limit?
    pub fn too_expensive(&self, price_cents: Option<u64>) -> bool {
        matches!((price_cents, self.max_price_cents), (Some(p), Some(max)) if p > max)
    }
}

/// The arbiter's catalog message, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// In priority order (top first).
    products: Vec<Product>,
    index: HashMap<Tcin, usize>,
    pub lease_ttl: Duration,
    pub stock_ttl: Duration,
    pub test_mode: bool,
}

impl Catalog {
    /// Takes the protocol message apart. Products with an invalid id are
    /// skipped with a warning (the arbiter validates its config, so this is
    /// defence only).
    pub fn from_pb(c: pb::Catalog) -> Self {
        let mut products: Vec<Product> = c
            .products
            .into_iter()
            .filter_map(|p| match Tcin::parse(&p.tcin) {
                Ok(tcin) => Some(Product {
                    tcin,
                    name: p.name,
                    priority: if p.priority == 0 {
                        u32::MAX
                    } else {
                        p.priority
                    },
                    max_price_cents: (p.max_price_cents > 0).then_some(p.max_price_cents),
                    quantity: p.quantity,
                    enabled: p.enabled,
                }),
                Err(e) => {
                    warn!(error = %e, "the arbiter's catalog lists an invalid product id; skipped");
                    None
                }
            })
            .collect();
        // Stable: equal priorities keep the arbiter's order.
        products.sort_by_key(|p| p.priority);
        let index = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.tcin.clone(), i))
            .collect();
        Self {
            products,
            index,
            lease_ttl: Duration::from_millis(c.lease_ttl_ms),
            stock_ttl: Duration::from_millis(c.stock_ttl_ms),
            test_mode: c.test_mode,
        }
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    pub fn get(&self, tcin: &Tcin) -> Option<&Product> {
        self.index.get(tcin).map(|&i| &self.products[i])
    }

    /// The products to poll, in priority order: enabled ones, limited to
    /// `only` when it is not empty. Also returns the ids of `only` that the
    /// catalog does not list (they are not polled).
    pub fn watch_list(&self, only: &[Tcin]) -> (Vec<Product>, Vec<Tcin>) {
        let list = self
            .products
            .iter()
            .filter(|p| p.enabled && (only.is_empty() || only.contains(&p.tcin)))
            .cloned()
            .collect();
        let unknown = only
            .iter()
            .filter(|t| !self.index.contains_key(*t))
            .cloned()
            .collect();
        (list, unknown)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A catalog message with these products (priority = position).
    pub fn catalog_pb(products: &[(&str, u64)], stock_ttl_ms: u64) -> pb::Catalog {
        pb::Catalog {
            products: products
                .iter()
                .enumerate()
                .map(|(i, (t, max))| pb::CatalogProduct {
                    tcin: (*t).into(),
                    name: format!("Product {t}"),
                    priority: i as u32 + 1,
                    max_price_cents: *max,
                    quantity: 1,
                    enabled: true,
                })
                .collect(),
            lease_ttl_ms: 30_000,
            stock_ttl_ms,
            test_mode: true,
        }
    }

    fn t(s: &str) -> Tcin {
        Tcin::parse(s).unwrap()
    }

    #[test]
    fn sorted_by_priority_and_filtered() {
        let mut c = catalog_pb(&[("100", 0), ("200", 2_000), ("300", 0)], 10_000);
        c.products.reverse(); // arbiter order does not matter, priority does
        c.products[1].enabled = false; // "200"
        let c = Catalog::from_pb(c);
        let ids: Vec<&str> = c.products().iter().map(|p| p.tcin.as_str()).collect();
        assert_eq!(ids, ["100", "200", "300"]);
        assert_eq!(c.get(&t("200")).unwrap().max_price_cents, Some(2_000));
        assert_eq!(c.get(&t("100")).unwrap().max_price_cents, None);
        assert_eq!(c.stock_ttl, Duration::from_secs(10));

        let (all, unknown) = c.watch_list(&[]);
        let ids: Vec<&str> = all.iter().map(|p| p.tcin.as_str()).collect();
        assert_eq!(ids, ["100", "300"], "disabled products are not polled");
        assert!(unknown.is_empty());

        let (some, unknown) = c.watch_list(&[t("300"), t("999")]);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].tcin.as_str(), "300");
        assert_eq!(unknown, vec![t("999")]);
    }

    #[test]
    fn max_price() {
        let c = Catalog::from_pb(catalog_pb(&[("100", 1_000), ("200", 0)], 10_000));
        let p = c.get(&t("100")).unwrap();
        assert!(p.too_expensive(Some(1_001)));
        assert!(!p.too_expensive(Some(1_000)));
        assert!(
            !p.too_expensive(None),
            "unknown price is not over the limit"
        );
        assert!(!c.get(&t("200")).unwrap().too_expensive(Some(u64::MAX)));
    }
}
