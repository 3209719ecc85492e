//! The body of Target's product fulfillment answer
//! (`/redsky_aggregations/v1/web/product_fulfillment_v1`), reduced to the
//! fields restock tools read:
//!
//! ```json
//! {"data": {"product": {
//!   "__typename": "Product",
//!   "tcin": "94300069",
//!   "fulfillment": {
//!     "product_id": "94300069",
//!     "is_out_of_stock_in_all_store_locations": false,
//!     "sold_out": false,
//!     "shipping_options": {"availability_status": "IN_STOCK",
//!                          "loyalty_availability_status": "IN_STOCK",
//!                          "available_to_promise_quantity": 10.0},
//!     "store_options": [{"location_id": "1375", "location_name": "Store Simulator",
//!                        "location_available_to_promise_quantity": 10.0,
//!                        "order_pickup": {"availability_status": "IN_STOCK"},
//!                        "in_store_only": {"availability_status": "IN_STOCK"},
//!                        "ship_to_store": {"availability_status": "IN_STOCK"}}],
//!     "scheduled_delivery": {"availability_status": "IN_STOCK",
//!                            "location_available_to_promise_quantity": 10.0}
//!   },
//!   "price": {"current_retail": 59.99, "formatted_current_price": "$59.99",
//!             "formatted_current_price_type": "reg"}
//! }}}
//! ```
//!
//! Out of stock, the statuses are the ones the retailer uses for each
//! option: `OUT_OF_STOCK` for shipping and in-store, `UNAVAILABLE` for
//! pickup, ship-to-store and scheduled delivery; quantities are `0.0`. The
//! real API serves the price from a different endpoint; the simulator adds
//! it here under `price` so one request gives stock and price.

use serde::Serialize;

use restock_domain::{Price, Tcin};

/// The store id used in `store_options` when the request names none.
pub const DEFAULT_LOCATION_ID: &str = "1375";
/// Quantity shown when in stock (the retailer caps what it shows, too).
pub const IN_STOCK_QUANTITY: f64 = 10.0;

#[derive(Debug, Serialize)]
pub struct Answer {
    pub data: Data,
}

#[derive(Debug, Serialize)]
pub struct Data {
    pub product: ProductInfo,
}

#[derive(Debug, Serialize)]
pub struct ProductInfo {
    #[serde(rename = "__typename")]
    pub typename: &'static str,
    pub tcin: Tcin,
    pub fulfillment: Fulfillment,
    pub price: PriceInfo,
}

#[derive(Debug, Serialize)]
pub struct Fulfillment {
    pub product_id: Tcin,
    pub is_out_of_stock_in_all_store_locations: bool,
    pub sold_out: bool,
    pub shipping_options: ShippingOptions,
    pub store_options: Vec<StoreOption>,
    pub scheduled_delivery: ScheduledDelivery,
}

#[derive(Debug, Serialize)]
pub struct ShippingOptions {
    pub availability_status: &'static str,
    pub loyalty_availability_status: &'static str,
    pub available_to_promise_quantity: f64,
}

#[derive(Debug, Serialize)]
pub struct StoreOption {
    pub location_id: String,
    pub location_name: &'static str,
    pub location_available_to_promise_quantity: f64,
    pub order_pickup: Status,
    pub in_store_only: Status,
    pub ship_to_store: Status,
}

#[derive(Debug, Serialize)]
pub struct ScheduledDelivery {
    pub availability_status: &'static str,
    pub location_available_to_promise_quantity: f64,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub availability_status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PriceInfo {
    /// Dollars.
    pub current_retail: Price,
    pub formatted_current_price: String,
    pub formatted_current_price_type: &'static str,
}

/// The answer for one product.
pub fn answer(tcin: &Tcin, in_stock: bool, price: Price, store_id: Option<&str>) -> Answer {
    let (stock, pickup, qty) = if in_stock {
        ("IN_STOCK", "IN_STOCK", IN_STOCK_QUANTITY)
    } else {
        ("OUT_OF_STOCK", "UNAVAILABLE", 0.0)
    };
    let status = |s| Status {
        availability_status: s,
    };
    Answer {
        data: Data {
            product: ProductInfo {
                typename: "Product",
                tcin: tcin.clone(),
                fulfillment: Fulfillment {
                    product_id: tcin.clone(),
                    is_out_of_stock_in_all_store_locations: !in_stock,
                    sold_out: !in_stock,
                    shipping_options: ShippingOptions {
                        availability_status: stock,
                        loyalty_availability_status: stock,
                        available_to_promise_quantity: qty,
                    },
                    store_options: vec![StoreOption {
                        location_id: store_id
                            .filter(|s| !s.is_empty())
                            .unwrap_or(DEFAULT_LOCATION_ID)
                            .to_owned(),
                        location_name: "Store Simulator",
                        location_available_to_promise_quantity: qty,
                        order_pickup: status(pickup),
                        in_store_only: status(stock),
                        ship_to_store: status(pickup),
                    }],
                    scheduled_delivery: ScheduledDelivery {
                        availability_status: pickup,
                        location_available_to_promise_quantity: qty,
                    },
                },
                price: PriceInfo {
                    current_retail: price,
                    formatted_current_price: price.formatted(),
                    formatted_current_price_type: "reg",
                },
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_shape_matches_what_restock_tools_read() {
        let t = Tcin::parse("123").unwrap();
        let v =
            serde_json::to_value(answer(&t, true, Price::from_cents(1999), Some("42"))).unwrap();
        let f = &v["data"]["product"]["fulfillment"];
        assert_eq!(v["data"]["product"]["tcin"], "123");
        assert_eq!(f["shipping_options"]["availability_status"], "IN_STOCK");
        assert_eq!(
            f["shipping_options"]["available_to_promise_quantity"],
            json!(10.0)
        );
        assert_eq!(f["store_options"][0]["location_id"], "42");
        assert_eq!(
            f["store_options"][0]["order_pickup"]["availability_status"],
            "IN_STOCK"
        );
        assert_eq!(f["scheduled_delivery"]["availability_status"], "IN_STOCK");
        assert_eq!(
            v["data"]["product"]["price"]["current_retail"],
            json!(19.99)
        );
        assert_eq!(
            v["data"]["product"]["price"]["formatted_current_price"],
            "$19.99"
        );

        let v = serde_json::to_value(answer(&t, false, Price::from_cents(500), None)).unwrap();
        let f = &v["data"]["product"]["fulfillment"];
        assert_eq!(f["shipping_options"]["availability_status"], "OUT_OF_STOCK");
        assert_eq!(f["store_options"][0]["location_id"], DEFAULT_LOCATION_ID);
        assert_eq!(
            f["store_options"][0]["order_pickup"]["availability_status"],
            "UNAVAILABLE"
        );
        assert_eq!(
            f["store_options"][0]["in_store_only"]["availability_status"],
            "OUT_OF_STOCK"
        );
        assert_eq!(f["sold_out"], true);
    }
}
