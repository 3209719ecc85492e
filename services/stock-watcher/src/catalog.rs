//! The watch list: which of the arbiter's products this watcher polls. The
//! catalog itself is `restock_domain::Catalog` (converted from the protocol
//! in [`crate::session`]); this adds what only a watcher decides: the enabled
//! products, in priority order, limited by `--products`.

use restock_domain::{Catalog, ProductId, ProductSpec};

/// The products to poll, in priority order: enabled ones, limited to `only`
/// when it is not empty. Also returns the ids of `only` that the catalog
/// does not list (they are not polled).
pub fn watch_list(catalog: &Catalog, only: &[ProductId]) -> (Vec<ProductSpec>, Vec<ProductId>) {
    let list = catalog
        .products
        .products()
        .iter()
        .filter(|p| p.enabled && (only.is_empty() || only.contains(&p.tcin)))
        .cloned()
        .collect();
    let unknown = only
        .iter()
        .filter(|t| catalog.products.get(t).is_none())
        .cloned()
        .collect();
    (list, unknown)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use restock_domain::{Price, PriceCheck, PriorityList};

    use super::*;

    /// A catalog of these products (in this priority order), each with its
    /// max price in cents (0: no limit).
    pub fn catalog(products: &[(&str, u64)], stock_ttl_ms: u64) -> Catalog {
        Catalog {
            products: PriorityList::new(
                products
                    .iter()
                    .map(|(t, max)| ProductSpec {
                        tcin: ProductId::parse(t).unwrap(),
                        name: format!("Product {t}"),
                        max_price: (*max > 0).then(|| Price::from_cents(*max)),
                        quantity: 1,
                        enabled: true,
                    })
                    .collect(),
            ),
            lease_ttl: Duration::from_secs(30),
            stock_ttl: Duration::from_millis(stock_ttl_ms),
            test_mode: true,
        }
    }

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    #[test]
    fn enabled_products_in_priority_order_limited_by_products() {
        let mut c = catalog(&[("100", 0), ("200", 2_000), ("300", 0)], 10_000);
        let mut products = c.products.products().to_vec();
        products[1].enabled = false; // "200"
        c.products = PriorityList::new(products);

        let (all, unknown) = watch_list(&c, &[]);
        let ids: Vec<&str> = all.iter().map(|p| p.tcin.as_str()).collect();
        assert_eq!(ids, ["100", "300"], "disabled products are not polled");
        assert!(unknown.is_empty());

        let (some, unknown) = watch_list(&c, &[t("300"), t("999")]);
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].tcin.as_str(), "300");
        assert_eq!(unknown, vec![t("999")]);

        let (none, unknown) = watch_list(&c, &[t("200")]);
        assert!(none.is_empty(), "--products does not enable a product");
        assert!(unknown.is_empty(), "a disabled product is still listed");
    }

    #[test]
    fn max_price() {
        let c = catalog(&[("100", 1_000), ("200", 0)], 10_000);
        let p = c.products.get(&t("100")).unwrap();
        let cents = |c| Some(Price::from_cents(c));
        assert_eq!(p.price_check(cents(1_001)), PriceCheck::Above);
        assert!(p.may_buy_at(cents(1_000)));
        assert_eq!(
            p.price_check(None),
            PriceCheck::Unknown,
            "an unknown price may not be bought: fail closed"
        );
        assert!(!p.may_buy_at(None));
        let unlimited = c.products.get(&t("200")).unwrap();
        assert!(unlimited.may_buy_at(cents(u64::MAX)));
        assert!(unlimited.may_buy_at(None), "no limit, no price needed");
    }
}
