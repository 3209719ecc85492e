//! Target's `fulfillment` object: a product's availability on each channel
//! (shipping, order pickup at a store, in store, ship to store, scheduled
//! delivery), as RedSky answers carry it under `data.product.fulfillment` and
//! `data.product_summaries[].fulfillment`.
//!
//! The shapes follow the recorded answers in `tests/data/target/` (see
//! `SOURCES.md` there), not a format of our own:
//!
//! - [`Flavor::Product`]: `hierarchy_v1-instock-13356914.json` (in stock) and
//!   `hierarchy_v1-oos-1011209279.json` (out of stock), the 2026 answers of
//!   `product_fulfillment_and_variation_hierarchy_v1`;
//! - [`Flavor::Summary`]: `summary_v1-threshr-29.json`, products #0 (in
//!   stock) and #13 (out of stock) of `product_summary_with_fulfillment_v1`.
//!
//! The simulator has one store and one in-stock flag per product, so every
//! channel moves together. Out of stock is written the way both recordings
//! write it: shipping `OUT_OF_STOCK` with no services, order pickup,
//! ship-to-store and scheduled delivery `UNAVAILABLE`, in store
//! `OUT_OF_STOCK`, quantities `0.0`. `sold_out` stays `false` (it is `false`
//! in every recording, out-of-stock ones included). Values (dates, store
//! name, quantities) are the simulator's; keys, nesting and JSON types are
//! Target's.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use restock_domain::ProductId;

/// The store id used when the request names none.
pub const DEFAULT_LOCATION_ID: &str = "1375";
/// The simulated store's name (`store_options[].store.location_name`).
pub const STORE_NAME: &str = "Store Simulator";
/// Quantity shown when in stock (Target shows a capped number too).
pub const IN_STOCK_QUANTITY: f64 = 10.0;
/// The store's time zone (`order_pickup.location_locale`).
pub const STORE_LOCALE: &str = "America/Chicago";
/// Minutes until an order is ready for pickup (`order_pickup.guest_pick_sla`).
pub const PICK_SLA_MINUTES: u64 = 120;
/// Days from now to the shipping delivery date.
const DELIVERY_DAYS: u64 = 2;

/// Which recorded answer's fulfillment object to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `product_fulfillment_and_variation_hierarchy_v1` (and the legacy
    /// `product_fulfillment_v1`): store address, quantities everywhere,
    /// `reason_code` when shipping is out.
    Product,
    /// `product_summary_with_fulfillment_v1`: the leaner object of a batch
    /// answer (no shipping quantity, store name only).
    Summary,
}

/// Where and when the answer is for: the store the request named and the
/// simulator's "now", from which pickup and delivery dates are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// `store_id` of the request, or [`DEFAULT_LOCATION_ID`].
    pub location_id: String,
    /// Now, in unix milliseconds.
    pub now_unix_ms: u64,
}

impl Context {
    /// The context for a request naming `store_id` (empty or absent: the
    /// default store) at `now_unix_ms`.
    pub fn new(store_id: Option<&str>, now_unix_ms: u64) -> Self {
        Self {
            location_id: store_id
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .unwrap_or(DEFAULT_LOCATION_ID)
                .to_owned(),
            now_unix_ms,
        }
    }

    /// `YYYY-MM-DD` of now plus `days` (UTC).
    pub fn date(&self, days: u64) -> String {
        let mut s = self.timestamp(days);
        s.truncate(10);
        s
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` of now plus `days`.
    pub fn timestamp(&self, days: u64) -> String {
        let t = UNIX_EPOCH
            + Duration::from_millis(self.now_unix_ms)
            + Duration::from_secs(days * 86_400);
        humantime::format_rfc3339_seconds(t).to_string()
    }
}

/// The `fulfillment` object of `tcin`.
pub fn fulfillment(tcin: &ProductId, in_stock: bool, ctx: &Context, flavor: Flavor) -> Value {
    let qty = if in_stock { IN_STOCK_QUANTITY } else { 0.0 };
    let status = |s: &str| json!({ "availability_status": s });

    let mut shipping = json!({
        "availability_status": if in_stock { "IN_STOCK" } else { "OUT_OF_STOCK" },
        "loyalty_availability_status": if in_stock { "IN_STOCK" } else { "OUT_OF_STOCK" },
    });
    let delivery = ctx.date(DELIVERY_DAYS);
    let services = match (in_stock, flavor) {
        (false, _) => json!([]),
        (true, Flavor::Product) => json!([{
            "is_two_day_shipping": true,
            "is_base_shipping_method": true,
            "shipping_method_id": "STANDARD",
            "cutoff": ctx.timestamp(1),
            "max_delivery_date": delivery,
            "min_delivery_date": delivery,
            "shipping_method_short_description": "Standard",
            "service_level_description": "2-day shipping",
        }]),
        (true, Flavor::Summary) => json!([{
            "shipping_method_id": "STANDARD",
            "min_delivery_date": delivery,
            "max_delivery_date": delivery,
            "is_two_day_shipping": true,
            "is_base_shipping_method": true,
        }]),
    };
    shipping["services"] = services;
    if flavor == Flavor::Product {
        shipping["available_to_promise_quantity"] = json!(qty);
        if !in_stock {
            shipping["reason_code"] = json!("INVENTORY_UNAVAILABLE");
        }
    }

    // In stock, pickup carries its date and time to prepare; out, only a
    // status. Ship-to-store appears only when the store is out (both
    // recordings leave it out of in-stock answers).
    let order_pickup = if in_stock {
        json!({
            "pickup_date": ctx.date(0),
            "guest_pick_sla": PICK_SLA_MINUTES,
            "availability_status": "IN_STOCK",
            "location_locale": STORE_LOCALE,
        })
    } else {
        status("UNAVAILABLE")
    };
    let mut store = json!({
        "location_id": ctx.location_id,
        "search_response_store_type": "PRIMARY",
        "location_available_to_promise_quantity": qty,
        "order_pickup": order_pickup,
        "in_store_only": status(if in_stock { "IN_STOCK" } else { "OUT_OF_STOCK" }),
    });
    match flavor {
        Flavor::Product => {
            store["store"] = json!({
                "location_name": STORE_NAME,
                "mailing_address": {
                    "address_line1": "1 Simulator Way",
                    "city": "Minneapolis",
                    "state": "Minnesota",
                    "postal_code": "55401-0000",
                },
            });
            store["pre_order_location_available_to_promise_quantity"] = json!(0.0);
        }
        Flavor::Summary => store["store"] = json!({ "location_name": STORE_NAME }),
    }
    if !in_stock {
        store["ship_to_store"] = status("UNAVAILABLE");
    }

    let mut scheduled = json!({
        "availability_status": if in_stock { "IN_STOCK" } else { "UNAVAILABLE" },
        "location_available_to_promise_quantity": qty,
    });
    if flavor == Flavor::Product {
        scheduled["location_id"] = json!(ctx.location_id);
    }

    json!({
        "product_id": tcin,
        "is_out_of_stock_in_all_store_locations": !in_stock,
        "sold_out": false,
        "shipping_options": shipping,
        "store_options": [store],
        "scheduled_delivery": scheduled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        // 2026-06-28T21:11:29Z, the capture time of the 2026 recordings.
        Context::new(Some("2272"), 1_782_681_089_000)
    }

    #[test]
    fn dates_are_utc_days_from_now() {
        let c = ctx();
        assert_eq!(c.date(0), "2026-06-28");
        assert_eq!(c.date(2), "2026-06-30");
        assert_eq!(c.timestamp(1), "2026-06-29T21:11:29Z");
        assert_eq!(Context::new(Some(" "), 0).location_id, DEFAULT_LOCATION_ID);
        assert_eq!(Context::new(None, 0).location_id, DEFAULT_LOCATION_ID);
    }

    #[test]
    fn every_channel_says_in_stock_or_out_as_recorded() {
        let t = ProductId::parse("123").unwrap();
        let f = fulfillment(&t, true, &ctx(), Flavor::Product);
        assert_eq!(f["product_id"], "123");
        assert_eq!(f["shipping_options"]["availability_status"], "IN_STOCK");
        assert_eq!(
            f["store_options"][0]["order_pickup"]["availability_status"],
            "IN_STOCK"
        );
        assert_eq!(f["store_options"][0]["location_id"], "2272");
        assert!(f["store_options"][0].get("ship_to_store").is_none());
        assert_eq!(f["scheduled_delivery"]["location_id"], "2272");
        assert_eq!(f["sold_out"], false);

        let f = fulfillment(&t, false, &ctx(), Flavor::Product);
        let store = &f["store_options"][0];
        assert_eq!(f["shipping_options"]["availability_status"], "OUT_OF_STOCK");
        assert_eq!(
            f["shipping_options"]["reason_code"],
            "INVENTORY_UNAVAILABLE"
        );
        assert_eq!(f["shipping_options"]["services"], json!([]));
        assert_eq!(store["order_pickup"]["availability_status"], "UNAVAILABLE");
        assert_eq!(
            store["in_store_only"]["availability_status"],
            "OUT_OF_STOCK"
        );
        assert_eq!(store["ship_to_store"]["availability_status"], "UNAVAILABLE");
        assert_eq!(
            f["scheduled_delivery"]["availability_status"],
            "UNAVAILABLE"
        );
        assert_eq!(f["is_out_of_stock_in_all_store_locations"], true);
        assert_eq!(f["sold_out"], false, "out of stock is not sold out");

        let s = fulfillment(&t, false, &ctx(), Flavor::Summary);
        assert!(s["shipping_options"].get("reason_code").is_none());
        assert!(s["scheduled_delivery"].get("location_id").is_none());
        assert_eq!(
            s["store_options"][0]["store"],
            json!({"location_name": STORE_NAME})
        );
    }
}
