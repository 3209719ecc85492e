//! The stock book: what the source last said about every polled product, and
//! what the arbiter has been told on the current stream. It decides what goes
//! into the next `StockReport`: products whose reportable state changed, plus
//! (on a refresh) every product still in stock, so the arbiter's in-stock
//! sightings never go stale while the product stays in stock.
//!
//! Source errors never change a product's state: a product is reported out of
//! stock only when the source said so. While the source is failing, refreshes
//! stop once the last good answer is older than the freshness window, so the
//! arbiter lets the sighting go stale by itself.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;
use tracing::{info, warn};

use restock_domain::{Catalog, Observation, Price, ProductId, ProductSpec};
use restock_runtime::error::chain_text;

use crate::{
    catalog::watch_list,
    source::{Sighting, SourceError},
};

/// One polled product.
#[derive(Debug, Clone)]
struct Entry {
    product: ProductSpec,
    /// The source's last successful answer, stamped with when it was polled.
    seen: Option<Observation>,
    /// The Shopify variant that answer saw (the one to buy, for a product
    /// named by handle).
    variant: Option<u64>,
    last_success: Option<Instant>,
    last_poll_unix_ms: u64,
    last_error: String,
    /// The kind of the last error (`captcha`, `timeout`, ...); empty after
    /// a good answer.
    last_error_kind: &'static str,
    polls: u64,
    errors: u64,
    /// What the arbiter was last told on this stream (`None`: nothing, which
    /// it takes as "not in stock").
    reported: Option<bool>,
}

impl Entry {
    fn new(product: ProductSpec) -> Self {
        Self {
            product,
            seen: None,
            variant: None,
            last_success: None,
            last_poll_unix_ms: 0,
            last_error: String::new(),
            last_error_kind: "",
            polls: 0,
            errors: 0,
            reported: None,
        }
    }

    /// Should the arbiter believe this product is in stock? In stock at the
    /// source and not above its price limit.
    fn reportable(&self) -> bool {
        self.seen
            .as_ref()
            .is_some_and(|o| o.in_stock && self.product.may_buy_at(o.price))
    }

    /// What the arbiter is told: the last answer, with `in_stock` saying
    /// whether it counts (a product above its price limit does not).
    fn observation(&self, in_stock: bool) -> Observation {
        let seen = self.seen.clone().unwrap_or_else(|| Observation {
            tcin: self.product.tcin.clone(),
            in_stock: false,
            price: None,
            observed_at_unix_ms: 0,
        });
        Observation { in_stock, ..seen }
    }
}

/// What recording a poll found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The product's reportable state now differs from what the arbiter was
    /// told: a report is due.
    pub report_due: bool,
    /// This poll failed after a success (worth a warning; repeats are not).
    pub first_error: bool,
}

/// One `StockReport`'s content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportContent {
    /// In stock first, each group in priority order.
    pub observations: Vec<Observation>,
    /// The products polled, when that list must be (re)sent.
    pub polling: Option<Vec<ProductId>>,
}

impl ReportContent {
    pub fn is_empty(&self) -> bool {
        self.observations.is_empty() && self.polling.is_none()
    }
}

/// The last poll of one product, as the status call shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPoll {
    pub tcin: ProductId,
    pub in_stock: bool,
    pub price: Option<Price>,
    pub last_poll_unix_ms: u64,
    /// Empty after a good answer.
    pub last_error: String,
    /// The kind of the last error; empty after a good answer.
    pub error_kind: &'static str,
    /// In stock at the source, but the product has a `max_price` and no
    /// price is known: shown, never reported in stock.
    pub price_unknown: bool,
    pub polls: u64,
    pub errors: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct StockBook {
    /// Polled products in priority order.
    order: Vec<ProductId>,
    entries: HashMap<ProductId, Entry>,
    /// Products no longer polled that the arbiter still believes in stock.
    retract: Vec<Entry>,
    polling_changed: bool,
    /// `--products` naming products the catalog lacks was logged (again
    /// when the watch list changes).
    unknown_told: bool,
    /// How old the last good answer may be for a product to be refreshed.
    freshness: Duration,
}

impl StockBook {
    /// Takes a new catalog and returns the products to poll, in priority
    /// order. Products still polled keep what is known about them.
    /// `min_freshness` is the longest gap between two good answers in normal
    /// operation (two poll rounds and a request time limit).
    pub fn set_catalog(
        &mut self,
        catalog: &Catalog,
        only: &[ProductId],
        min_freshness: Duration,
    ) -> Vec<ProductSpec> {
        let (list, unknown) = watch_list(catalog, only);
        let new_order: Vec<ProductId> = list.iter().map(|p| p.tcin.clone()).collect();
        // Every source's poller sets the same catalog: said once.
        if new_order != self.order || !self.unknown_told {
            for t in &unknown {
                warn!(tcin = %t, "--products names a product the arbiter's catalog does not list; it is not polled");
            }
            self.unknown_told = true;
        }
        let mut old = std::mem::take(&mut self.entries);
        for p in &list {
            let mut e = old.remove(&p.tcin).unwrap_or_else(|| Entry::new(p.clone()));
            e.product = p.clone();
            self.entries.insert(p.tcin.clone(), e);
        }
        // Dropped products the arbiter believes in stock get an explicit
        // "not in stock" so they stop counting at once.
        self.retract
            .extend(old.into_values().filter(|e| e.reported == Some(true)));
        if new_order != self.order {
            self.polling_changed = true;
            info!(
                products = new_order.len(),
                "watch list set from the arbiter's catalog"
            );
        }
        // Every source's poller sets the same catalog: the slowest
        // source's rounds decide how long a sighting stays fresh.
        let keep = if new_order != self.order {
            Duration::ZERO
        } else {
            self.freshness
        };
        self.order = new_order;
        self.freshness = catalog.stock_ttl.max(min_freshness).max(keep);
        list
    }

    /// The Shopify variant the last good answer about `id` saw (`None`
    /// for Target, or when none was seen).
    pub fn variant(&self, id: &ProductId) -> Option<u64> {
        self.entries.get(id).and_then(|e| e.variant)
    }

    /// Records one poll. See [`Recorded`].
    pub fn record(
        &mut self,
        tcin: &ProductId,
        result: Result<Sighting, &SourceError>,
        now: Instant,
        unix_ms: u64,
    ) -> Recorded {
        let Some(e) = self.entries.get_mut(tcin) else {
            // Dropped from the watch list meanwhile.
            return Recorded::default();
        };
        let first_error = result.is_err() && e.last_error.is_empty();
        e.polls += 1;
        e.last_poll_unix_ms = unix_ms;
        match result {
            Ok(s) => {
                let was = e.seen.as_ref().map(|w| (w.in_stock, w.price));
                if s.in_stock
                    && let Some(why) = e.product.price_check(s.price).why_not()
                    && was.is_none_or(|(in_stock, price)| !in_stock || price != s.price)
                {
                    let what = if s.price.is_none() {
                        "in stock, price unknown: not reported as in stock"
                    } else {
                        "in stock above max_price: not reported as in stock"
                    };
                    warn!(
                        tcin = %tcin,
                        price_cents = s.price.map(Price::cents),
                        max_price_cents = e.product.max_price.map(Price::cents),
                        why,
                        "{what}"
                    );
                }
                if was.map(|(in_stock, _)| in_stock) != Some(s.in_stock) {
                    info!(tcin = %tcin, in_stock = s.in_stock, price_cents = s.price.map(Price::cents), "stock changed at the source");
                }
                e.seen = Some(Observation {
                    tcin: tcin.clone(),
                    in_stock: s.in_stock,
                    price: s.price,
                    observed_at_unix_ms: unix_ms,
                });
                // The variant last seen available stays the one to buy.
                if s.variant.is_some() {
                    e.variant = s.variant;
                }
                e.last_success = Some(now);
                e.last_error.clear();
                e.last_error_kind = "";
            }
            Err(err) => {
                e.errors += 1;
                e.last_error = chain_text(err);
                e.last_error_kind = err.kind_str();
            }
        }
        Recorded {
            report_due: e.reportable() != e.reported.unwrap_or(false),
            first_error,
        }
    }

    /// A new stream: the arbiter knows nothing of this watcher's sightings.
    pub fn new_stream(&mut self) {
        for e in self.entries.values_mut() {
            e.reported = None;
        }
        self.retract.clear();
        self.polling_changed = true;
    }

    /// What the next report carries: every change since the last report and,
    /// with `refresh`, every in-stock product whose last good answer is
    /// fresh. Marks it all as told.
    pub fn take_report(&mut self, now: Instant, refresh: bool) -> ReportContent {
        let mut in_stock = Vec::new();
        let mut out = Vec::new();
        for e in std::mem::take(&mut self.retract) {
            out.push(e.observation(false));
        }
        for t in &self.order {
            let e = self.entries.get_mut(t).expect("order and entries agree");
            let want = e.reportable();
            let changed = want != e.reported.unwrap_or(false);
            let fresh = e
                .last_success
                .is_some_and(|at| now.saturating_duration_since(at) <= self.freshness);
            if changed || (refresh && want && fresh) {
                if want {
                    in_stock.push(e.observation(true));
                } else {
                    out.push(e.observation(false));
                }
                e.reported = Some(want);
            }
        }
        in_stock.extend(out);
        let polling = std::mem::take(&mut self.polling_changed).then(|| self.order.clone());
        ReportContent {
            observations: in_stock,
            polling,
        }
    }

    /// The last poll of every product, in priority order.
    pub fn poll_statuses(&self) -> Vec<ProductPoll> {
        self.order
            .iter()
            .map(|t| {
                let e = &self.entries[t];
                ProductPoll {
                    tcin: t.clone(),
                    in_stock: e.seen.as_ref().is_some_and(|o| o.in_stock),
                    price: e.seen.as_ref().and_then(|o| o.price),
                    last_poll_unix_ms: e.last_poll_unix_ms,
                    last_error: e.last_error.clone(),
                    error_kind: e.last_error_kind,
                    price_unknown: e.seen.as_ref().is_some_and(|o| {
                        o.in_stock && o.price.is_none() && e.product.max_price.is_some()
                    }),
                    polls: e.polls,
                    errors: e.errors,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::catalog;

    fn t(s: &str) -> ProductId {
        ProductId::parse(s).unwrap()
    }

    fn book(products: &[(&str, u64)]) -> StockBook {
        let mut b = StockBook::default();
        b.set_catalog(&catalog(products, 9_000), &[], Duration::ZERO);
        b
    }

    fn seen(in_stock: bool) -> Result<Sighting, &'static SourceError> {
        Ok(Sighting {
            in_stock,
            price: None,
            variant: None,
        })
    }

    fn ids(r: &ReportContent) -> Vec<(String, bool)> {
        r.observations
            .iter()
            .map(|o| (o.tcin.to_string(), o.in_stock))
            .collect()
    }

    #[test]
    fn reports_changes_in_priority_order_then_nothing() {
        let mut b = book(&[("100", 0), ("200", 0), ("300", 0)]);
        let now = Instant::now();
        let first = b.take_report(now, false);
        assert_eq!(first.polling.unwrap(), [t("100"), t("200"), t("300")]);
        assert!(first.observations.is_empty());

        assert!(b.record(&t("300"), seen(true), now, 1).report_due);
        assert!(
            !b.record(&t("200"), seen(false), now, 1).report_due,
            "out of stock is what the arbiter assumes"
        );
        assert!(b.record(&t("100"), seen(true), now, 1).report_due);
        let r = b.take_report(now, false);
        assert_eq!(ids(&r), [("100".into(), true), ("300".into(), true)]);
        assert!(r.polling.is_none());
        assert!(b.take_report(now, false).is_empty(), "nothing changed");

        assert!(b.record(&t("100"), seen(false), now, 2).report_due);
        assert_eq!(ids(&b.take_report(now, false)), [("100".into(), false)]);
    }

    #[test]
    fn refresh_repeats_fresh_in_stock_products_only() {
        let mut b = book(&[("100", 0), ("200", 0)]);
        let now = Instant::now();
        b.record(&t("100"), seen(true), now, 1);
        b.record(&t("200"), seen(false), now, 1);
        b.take_report(now, false);
        let later = now + Duration::from_secs(3);
        assert_eq!(ids(&b.take_report(later, true)), [("100".into(), true)]);
        // The source keeps failing: no out-of-stock report, and once the last
        // good answer is older than the stock TTL, no refresh either.
        let throttled = SourceError::refused(crate::source::RefusalKind::RateLimited, 429);
        let r = b.record(&t("100"), Err(&throttled), later, 2);
        assert!(!r.report_due && r.first_error);
        assert!(!b.record(&t("100"), Err(&throttled), later, 2).first_error);
        assert!(b.take_report(later, false).is_empty());
        let stale = now + Duration::from_secs(10);
        assert!(b.take_report(stale, true).is_empty());
        // A good answer again: refreshed again.
        b.record(&t("100"), seen(true), stale, 3);
        assert_eq!(ids(&b.take_report(stale, true)), [("100".into(), true)]);
    }

    #[test]
    fn over_price_is_not_in_stock() {
        let mut b = book(&[("100", 1_000)]);
        let now = Instant::now();
        b.take_report(now, false);
        let expensive = Ok(Sighting {
            in_stock: true,
            price: Some(Price::from_cents(1_500)),
            variant: None,
        });
        assert!(!b.record(&t("100"), expensive, now, 1).report_due);
        assert!(b.take_report(now, true).is_empty());
        let cheap = Ok(Sighting {
            in_stock: true,
            price: Some(Price::from_cents(900)),
            variant: None,
        });
        assert!(b.record(&t("100"), cheap, now, 2).report_due);
        let r = b.take_report(now, false);
        assert_eq!(r.observations[0].price, Some(Price::from_cents(900)));
        assert_eq!(r.observations[0].observed_at_unix_ms, 2);
        assert!(r.observations[0].in_stock);
        // The price goes up: reported out of stock, with the price.
        assert!(b.record(&t("100"), expensive, now, 3).report_due);
        let r = b.take_report(now, false);
        assert!(!r.observations[0].in_stock);
        assert_eq!(r.observations[0].price, Some(Price::from_cents(1_500)));
    }

    #[test]
    fn a_new_stream_resends_what_is_in_stock() {
        let mut b = book(&[("100", 0), ("200", 0)]);
        let now = Instant::now();
        b.record(&t("200"), seen(true), now, 1);
        b.take_report(now, false);
        b.new_stream();
        let r = b.take_report(now, false);
        assert_eq!(ids(&r), [("200".into(), true)]);
        assert!(r.polling.is_some());
    }

    #[test]
    fn a_dropped_product_is_retracted() {
        let mut b = book(&[("100", 0), ("200", 0)]);
        let now = Instant::now();
        b.record(&t("100"), seen(true), now, 1);
        b.record(&t("200"), seen(true), now, 1);
        b.take_report(now, false);
        let list = b.set_catalog(&catalog(&[("200", 0)], 9_000), &[], Duration::ZERO);
        assert_eq!(list.len(), 1);
        let r = b.take_report(now, false);
        assert_eq!(ids(&r), [("100".into(), false)]);
        assert_eq!(r.polling.unwrap(), [t("200")]);
        let st = b.poll_statuses();
        assert_eq!(st.len(), 1);
        assert!(st[0].in_stock, "what is known about kept products stays");
    }
}
