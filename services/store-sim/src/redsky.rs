//! The RedSky endpoints the simulator serves and the bodies of their
//! answers, each in the shape of a recorded answer of Target's API
//! (`tests/data/target/`, see `SOURCES.md` there):
//!
//! | Endpoint | Answer | Recording it follows |
//! |---|---|---|
//! | `product_fulfillment_v1?key&tcin` | `data.product.{__typename, tcin, fulfillment}` | no legacy answer was found: the `fulfillment` object of the hierarchy recordings |
//! | `product_fulfillment_and_variation_hierarchy_v1?key&tcin` | `data.product.{…, fulfillment}` | `hierarchy_v1-instock-13356914.json`, `hierarchy_v1-oos-1011209279.json` |
//! | `product_summary_with_fulfillment_v1?key&tcins=a,b` | `data.product_summaries[]` | `summary_v1-threshr-29.json`; the price object from `recommendations_v1-productsummary-price-1011209279.json` |
//! | `pdp_client_v1?key&tcin` | `data.product.{…, price}` | `pdp_client_v1-1011209279.json` |
//!
//! Only `pdp_client_v1` and the summary (unless `skip_price_promo=true`)
//! carry a price: no recorded fulfillment answer has one. Values are the
//! simulator's (its stock, price, store and clock); keys, nesting and JSON
//! types are Target's. Fields no client of ours reads (ratings, financing,
//! images, …) are left out.

use serde_json::{Value, json};

use crate::{
    fulfillment::{Context, Flavor, fulfillment},
    sim::ProductNow,
};
use restock_domain::{Price, ProductId};

/// Target's delivery fees as the hierarchy answers carry them
/// (`pay_per_order_charges`); the simulator charges nothing.
const ONE_DAY_CHARGE: f64 = 7.99;
const SCHEDULED_DELIVERY_CHARGE: f64 = 9.99;

/// A RedSky endpoint of the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The legacy single-product fulfillment aggregation.
    Fulfillment,
    /// Fulfillment and variation hierarchy of one product (what product pages
    /// load today).
    Hierarchy,
    /// Fulfillment (and price) of many products in one request.
    Summary,
    /// Product details of one product, with its price.
    PdpClient,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Fulfillment,
        Endpoint::Hierarchy,
        Endpoint::Summary,
        Endpoint::PdpClient,
    ];

    /// The aggregation's name: the last segment of its path, and the
    /// `endpoint` of polls and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Endpoint::Fulfillment => "product_fulfillment_v1",
            Endpoint::Hierarchy => "product_fulfillment_and_variation_hierarchy_v1",
            Endpoint::Summary => "product_summary_with_fulfillment_v1",
            Endpoint::PdpClient => "pdp_client_v1",
        }
    }

    /// The path it is served at.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Fulfillment => "/redsky_aggregations/v1/web/product_fulfillment_v1",
            Endpoint::Hierarchy => {
                "/redsky_aggregations/v1/web/product_fulfillment_and_variation_hierarchy_v1"
            }
            Endpoint::Summary => "/redsky_aggregations/v1/web/product_summary_with_fulfillment_v1",
            Endpoint::PdpClient => "/redsky_aggregations/v1/web/pdp_client_v1",
        }
    }

    /// Whether it answers many products (`tcins=a,b,…`) rather than one
    /// (`tcin=`).
    pub const fn is_batch(self) -> bool {
        matches!(self, Endpoint::Summary)
    }
}

/// The product page URL Target gives in `item.enrichment.buy_url` (the
/// short form, which target.com redirects to the one with the slug).
pub fn buy_url(tcin: &ProductId) -> String {
    format!("https://www.target.com/p/-/A-{tcin}")
}

/// The `item` of a product, reduced to what clients read: its title and
/// page.
fn item(p: &ProductNow) -> Value {
    json!({
        "relationship_type_code": "SA",
        "product_description": { "title": p.name },
        "enrichment": { "buy_url": buy_url(&p.tcin) },
    })
}

/// `product_fulfillment_v1`: `{"data": {"product": {"__typename", "tcin",
/// "fulfillment"}}}`, without a price.
pub fn product_fulfillment_v1(p: &ProductNow, ctx: &Context) -> Value {
    json!({ "data": { "product": {
        "__typename": "Product",
        "tcin": p.tcin,
        "fulfillment": fulfillment(&p.tcin, p.in_stock, ctx, Flavor::Product),
    }}})
}

/// `product_fulfillment_and_variation_hierarchy_v1`, as recorded:
/// `store_positions` (the aisle) only while the store has the product,
/// delivery fees, the fulfillment object; no price.
pub fn hierarchy_v1(p: &ProductNow, ctx: &Context) -> Value {
    let mut product = json!({
        "__typename": "Product",
        "tcin": p.tcin,
        "pay_per_order_charges": {
            "one_day": ONE_DAY_CHARGE,
            "scheduled_delivery": SCHEDULED_DELIVERY_CHARGE,
        },
        "fulfillment": fulfillment(&p.tcin, p.in_stock, ctx, Flavor::Product),
    });
    if p.in_stock {
        product["store_positions"] = json!([{ "aisle": 1, "block": "A" }]);
    }
    json!({ "data": { "product": product } })
}

/// `product_summary_with_fulfillment_v1`: one `ProductSummary` per known
/// product, in the order asked. No recording shows how Target answers an
/// unknown TCIN in a batch, so unknown ones are simply not in the list.
/// The price is left out when the request said `skip_price_promo=true`
/// (the recorded answer was asked that way and has none).
pub fn summary_v1(products: &[ProductNow], ctx: &Context, with_price: bool) -> Value {
    let summaries: Vec<Value> = products
        .iter()
        .map(|p| {
            let mut s = json!({
                "__typename": "ProductSummary",
                "tcin": p.tcin,
                "item": item(p),
                "fulfillment": fulfillment(&p.tcin, p.in_stock, ctx, Flavor::Summary),
            });
            if with_price {
                s["price"] = summary_price(p.price);
            }
            s
        })
        .collect();
    json!({ "data": { "product_summaries": summaries } })
}

/// A `ProductSummary`'s price, as the recorded recommendations answer has
/// it.
pub fn summary_price(price: Price) -> Value {
    json!({
        "current_retail": price.dollars(),
        "display_was_now": false,
        "formatted_current_price": price.formatted(),
        "formatted_current_price_type": "reg",
        "reg_retail": price.dollars(),
    })
}

/// `pdp_client_v1`: the product's title and page, and its price at
/// `data.product.price`. No stock (the recorded answer has none).
/// `pricing_store` is the request's `pricing_store_id` (else its store);
/// Target writes it as a number in `price.location_id`.
pub fn pdp_client_v1(p: &ProductNow, ctx: &Context, pricing_store: Option<&str>) -> Value {
    let location_id: u64 = pricing_store
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| ctx.location_id.parse().ok())
        .unwrap_or(0);
    // Target's id of the price record: tcin, store, price and the hour it
    // was set, as in "1011209279-3991-17.99-2026062610".
    let hour: String = ctx
        .timestamp(0)
        .chars()
        .filter(char::is_ascii_digit)
        .take(10)
        .collect();
    let dollars = p.price.formatted();
    json!({ "data": { "product": {
        "__typename": "Product",
        "tcin": p.tcin,
        "item": item(p),
        "price": {
            "current_retail": p.price.dollars(),
            "display_was_now": false,
            "formatted_current_price": dollars,
            "formatted_current_price_type": "reg",
            "reg_retail": p.price.dollars(),
            "location_id": location_id,
            "external_system_id": format!("{}-{location_id}-{}-{hour}", p.tcin, &dollars[1..]),
        },
    }}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(tcin: &str, in_stock: bool, cents: u64) -> ProductNow {
        ProductNow {
            tcin: ProductId::parse(tcin).unwrap(),
            name: format!("Product {tcin}"),
            in_stock,
            price: Price::from_cents(cents),
        }
    }

    fn ctx() -> Context {
        Context::new(Some("2272"), 1_782_681_089_000)
    }

    #[test]
    fn paths_end_in_the_aggregation_name() {
        for e in Endpoint::ALL {
            assert!(e.path().ends_with(&format!("/{}", e.name())), "{e:?}");
        }
    }

    #[test]
    fn only_the_price_endpoints_carry_a_price() {
        let p = product("11", true, 1799);
        let legacy = product_fulfillment_v1(&p, &ctx());
        assert!(legacy["data"]["product"].get("price").is_none());
        assert!(
            hierarchy_v1(&p, &ctx())["data"]["product"]
                .get("price")
                .is_none()
        );

        let pdp = pdp_client_v1(&p, &ctx(), Some("3991"));
        let price = &pdp["data"]["product"]["price"];
        assert_eq!(price["current_retail"], json!(17.99));
        assert_eq!(price["formatted_current_price"], "$17.99");
        assert_eq!(price["location_id"], json!(3991));
        assert_eq!(price["external_system_id"], "11-3991-17.99-2026062821");
        assert!(pdp["data"]["product"].get("fulfillment").is_none());

        let both = [p, product("22", false, 500)];
        let s = summary_v1(&both, &ctx(), true);
        assert_eq!(
            s["data"]["product_summaries"][1]["price"]["reg_retail"],
            json!(5.0)
        );
        let s = summary_v1(&both, &ctx(), false);
        assert!(s["data"]["product_summaries"][0].get("price").is_none());
        assert_eq!(s["data"]["product_summaries"][1]["tcin"], "22");
    }

    #[test]
    fn the_aisle_shows_only_while_the_store_has_it() {
        let v = hierarchy_v1(&product("1", true, 1), &ctx());
        assert!(v["data"]["product"]["store_positions"].is_array());
        let v = hierarchy_v1(&product("1", false, 1), &ctx());
        assert!(v["data"]["product"].get("store_positions").is_none());
    }
}
