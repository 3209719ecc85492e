//! Each product's stock and price, from three sources:
//!
//! - the automatic driver: a [`Scenario`], [`RandomRestocks`], or nothing
//!   (every product stays out of stock);
//! - a manual setting (`PUT /admin/stock/{tcin}`), which wins over the
//!   driver **until the driver's next transition** (a scenario window
//!   opening or closing, a random restock or sell-out) after the moment it
//!   was set; from then on the driver decides again. Without a driver a
//!   manual setting lasts until the next one.
//! - the price: the product's own price (from `max_price` in the config, or
//!   the default price; a manual `price` replaces it for good), except while
//!   a scenario window that carries its own price is open and no manual
//!   setting is in force.
//!
//! Times are ms since the simulator started; the HTTP layer turns them into
//! unix time.

use serde::Serialize;
use tracing::info;

use crate::{
    catalog::{Catalog, Product},
    random::RandomRestocks,
    scenario::Scenario,
};
use restock_domain::{Price, ProductId};

/// What moves stock without an operator.
#[derive(Debug)]
pub enum Driver {
    /// Nothing: products stay out of stock unless set by hand.
    Manual,
    /// In-stock windows from a scenario file.
    Scenario(Scenario),
    /// Seeded random restocks and sell-outs.
    Random(RandomRestocks),
}

impl Driver {
    /// A short name for logs.
    pub fn describe(&self) -> String {
        match self {
            Driver::Manual => "manual (everything out of stock until set)".to_owned(),
            Driver::Scenario(s) => match s.period_ms() {
                Some(p) => format!("scenario repeating every {p} ms"),
                None => "scenario".to_owned(),
            },
            Driver::Random(r) => format!("random (seed {})", r.seed()),
        }
    }
}

/// Who decided a product's current stock state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StockSource {
    /// Nobody yet: out of stock, the starting state.
    Default,
    Scenario,
    Random,
    Manual,
}

/// One product's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct StockState {
    pub in_stock: bool,
    pub price: Price,
    pub source: StockSource,
    /// When the deciding source last changed (ms since start); `None` when
    /// nothing has happened to the product yet.
    pub changed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct ManualSetting {
    in_stock: bool,
    set_at_ms: u64,
}

#[derive(Debug, Clone)]
struct ProductStock {
    price: Price,
    manual: Option<ManualSetting>,
}

/// Stock and prices of every known product.
#[derive(Debug)]
pub struct StockBook {
    catalog: Catalog,
    driver: Driver,
    products: Vec<ProductStock>,
}

/// Why a stock change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    #[error("no product with tcin {0}")]
    UnknownProduct(ProductId),
}

impl StockBook {
    pub fn new(catalog: Catalog, driver: Driver) -> Self {
        let products = catalog
            .products()
            .iter()
            .map(|p| ProductStock {
                price: p.initial_price,
                manual: None,
            })
            .collect();
        Self {
            catalog,
            driver,
            products,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn driver(&self) -> &Driver {
        &self.driver
    }

    /// A product's state `now_ms` after start; `None` for unknown products.
    pub fn state(&mut self, tcin: &ProductId, now_ms: u64) -> Option<(&Product, StockState)> {
        let i = self.catalog.position(tcin)?;
        let state = self.state_of(i, now_ms);
        Some((&self.catalog.products()[i], state))
    }

    /// Every product's state, in config order.
    pub fn states(&mut self, now_ms: u64) -> Vec<(Product, StockState)> {
        (0..self.products.len())
            .map(|i| {
                let state = self.state_of(i, now_ms);
                (self.catalog.products()[i].clone(), state)
            })
            .collect()
    }

    /// Sets a product's stock and/or price by hand (see the module
    /// documentation for how long that lasts) and returns its new state.
    pub fn set(
        &mut self,
        tcin: &ProductId,
        in_stock: Option<bool>,
        price: Option<Price>,
        now_ms: u64,
    ) -> Result<(&Product, StockState), StockError> {
        let i = self
            .catalog
            .position(tcin)
            .ok_or_else(|| StockError::UnknownProduct(tcin.clone()))?;
        let p = &mut self.products[i];
        if let Some(price) = price {
            p.price = price;
        }
        if let Some(in_stock) = in_stock {
            p.manual = Some(ManualSetting {
                in_stock,
                set_at_ms: now_ms,
            });
        }
        let state = self.state_of(i, now_ms);
        Ok((&self.catalog.products()[i], state))
    }

    fn state_of(&mut self, i: usize, now_ms: u64) -> StockState {
        let tcin = &self.catalog.products()[i].tcin;
        // (in stock, window price, last transition, source)
        let (in_stock, window_price, last_transition, source) = match &mut self.driver {
            Driver::Manual => (false, None, None, StockSource::Default),
            Driver::Scenario(s) => {
                let st = s.state_at(tcin, now_ms);
                (
                    st.in_stock,
                    st.price,
                    st.last_boundary_ms,
                    StockSource::Scenario,
                )
            }
            Driver::Random(r) => {
                let st = r.state_at(tcin, now_ms);
                (st.in_stock, None, st.last_change_ms, StockSource::Random)
            }
        };
        let p = &mut self.products[i];
        if let Some(m) = p.manual {
            if last_transition.is_none_or(|t| t <= m.set_at_ms) {
                return StockState {
                    in_stock: m.in_stock,
                    price: p.price,
                    source: StockSource::Manual,
                    changed_at_ms: Some(m.set_at_ms),
                };
            }
            info!(
                tcin = %tcin,
                set_at_ms = m.set_at_ms,
                transition_ms = last_transition,
                in_stock,
                "manual stock setting ended by the next automatic transition"
            );
            p.manual = None;
        }
        StockState {
            in_stock,
            price: window_price.unwrap_or(p.price),
            source: if last_transition.is_some() {
                source
            } else {
                StockSource::Default
            },
            changed_at_ms: last_transition,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, time::Duration};

    use super::*;
    use crate::scenario::Window;

    fn tcin(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::parse(
            r#"{"products":[{"tcin":"1","max_price":20},{"tcin":"2"}]}"#,
            "p",
            Price::from_cents(999),
        )
        .unwrap()
    }

    #[test]
    fn without_a_driver_products_stay_out_of_stock_until_set() {
        let mut book = StockBook::new(catalog(), Driver::Manual);
        let (_, s) = book.state(&tcin("1"), 0).unwrap();
        assert!(!s.in_stock);
        assert_eq!(s.source, StockSource::Default);
        assert_eq!(s.price, Price::from_cents(2000));
        let (_, s) = book.set(&tcin("2"), Some(true), None, 10).unwrap();
        assert!(s.in_stock);
        assert_eq!(s.price, Price::from_cents(999));
        let (_, s) = book.state(&tcin("2"), 1_000_000).unwrap();
        assert!(s.in_stock);
        assert_eq!(s.source, StockSource::Manual);
        assert_eq!(s.changed_at_ms, Some(10));
        let (_, s) = book
            .set(&tcin("2"), None, Some(Price::from_cents(5)), 20)
            .unwrap();
        assert!(s.in_stock, "a price-only change keeps the stock state");
        assert_eq!(s.price, Price::from_cents(5));
        assert_eq!(
            book.set(&tcin("3"), Some(true), None, 0).unwrap_err(),
            StockError::UnknownProduct(tcin("3"))
        );
    }

    #[test]
    fn a_manual_setting_wins_until_the_next_scenario_boundary() {
        let windows = HashMap::from([(
            tcin("1"),
            vec![Window {
                from_ms: 1000,
                to_ms: 2000,
                price: Some(Price::from_cents(1500)),
            }],
        )]);
        let mut book = StockBook::new(catalog(), Driver::Scenario(Scenario::new(None, windows)));
        let one = tcin("1");
        book.set(&one, Some(true), None, 500).unwrap();
        assert_eq!(book.state(&one, 900).unwrap().1.source, StockSource::Manual);
        // The window opens at 1000: the scenario decides again, with its price.
        let (_, s) = book.state(&one, 1200).unwrap();
        assert_eq!((s.in_stock, s.source), (true, StockSource::Scenario));
        assert_eq!(s.price, Price::from_cents(1500));
        // Set out of stock inside the window: holds until the window closes.
        book.set(&one, Some(false), None, 1300).unwrap();
        let (_, s) = book.state(&one, 1999).unwrap();
        assert_eq!((s.in_stock, s.source), (false, StockSource::Manual));
        assert_eq!(
            s.price,
            Price::from_cents(2000),
            "manual uses the product's price"
        );
        let (_, s) = book.state(&one, 2500).unwrap();
        assert_eq!((s.in_stock, s.source), (false, StockSource::Scenario));
        assert_eq!(s.changed_at_ms, Some(2000));
        // After the last boundary a manual setting lasts.
        book.set(&one, Some(true), None, 3000).unwrap();
        assert!(book.state(&one, 900_000).unwrap().1.in_stock);
    }

    #[test]
    fn a_manual_setting_wins_until_the_next_random_transition() {
        let cat = catalog();
        let ids: Vec<ProductId> = cat.products().iter().map(|p| p.tcin.clone()).collect();
        let random = RandomRestocks::new(9, Duration::from_secs(1), Duration::from_secs(1), &ids);
        let mut book = StockBook::new(cat, Driver::Random(random));
        let one = tcin("1");
        let first = (0..100_000)
            .find(|&ms| book.state(&one, ms).unwrap().1.in_stock)
            .expect("a restock within 100 s");
        book.set(&one, Some(false), None, first).unwrap();
        let (_, s) = book.state(&one, first).unwrap();
        assert_eq!((s.in_stock, s.source), (false, StockSource::Manual));
        // It stays manual until the random sell-out, then random rules.
        let mut ms = first;
        loop {
            ms += 1;
            let (_, s) = book.state(&one, ms).unwrap();
            if s.source == StockSource::Random {
                assert!(!s.in_stock, "the next random transition is a sell-out");
                assert_eq!(s.changed_at_ms, Some(ms));
                break;
            }
            assert!(!s.in_stock);
        }
    }
}
