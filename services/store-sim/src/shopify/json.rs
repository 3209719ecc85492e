//! The bodies of the storefront's JSON answers, each with the keys, nesting
//! and JSON types of a recorded answer in `tests/data/shopify/`:
//!
//! | Answer | Recording it follows | Price | Stock |
//! |---|---|---|---|
//! | `products.json`, `collections/<c>/products.json` | `products-bluetokai.json`, `collection-legado-coffee-beans.json` | `variants[].price`: a **string** of dollars, `"59.99"` | `variants[].available` |
//! | `products/<handle>.js` | `product_js-ratio-eight.json` | integer **cents**: `price`, `price_min`, `price_max`, `variants[].price` | `available`, `variants[].available`, `variants[].inventory_quantity` |
//! | `products/<handle>.json` | `product_json-minimalist-niacinamide.json` | `variants[].price`, a string of dollars | **none** (as recorded: no `available`) |
//!
//! Values are the simulator's: its stock and prices, `"vendor": "Store
//! Simulator"`, no images, no tags, no description, `"currency": "USD"`,
//! and every date the simulator's start, except `updated_at`, which is the
//! last stock change of the product (when later).

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::store::{ShopProduct, ShopVariant};
use restock_domain::Price;

/// `vendor` of every product.
pub const VENDOR: &str = "Store Simulator";
/// `inventory_quantity` of an available variant in `.js` answers.
pub const IN_STOCK_QUANTITY: i64 = 10;

/// A product with its entry's stock and price now.
#[derive(Debug, Clone, Copy)]
pub struct ShopProductNow<'a> {
    pub product: &'a ShopProduct,
    pub in_stock: bool,
    pub price: Price,
    /// When the simulator started (unix ms): `created_at`, `published_at`.
    pub created_unix_ms: u64,
    /// The entry's last stock change (unix ms), if any.
    pub changed_unix_ms: Option<u64>,
}

/// A time as Shopify writes it: `2025-06-16T12:08:29+00:00` (the shop's
/// offset; the simulator's shops are on UTC).
pub fn timestamp(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    match s.strip_suffix('Z') {
        Some(base) => format!("{base}+00:00"),
        None => s,
    }
}

/// Dollars as Shopify's JSON writes them: `"59.99"`.
pub fn dollars(p: Price) -> String {
    format!("{}.{:02}", p.cents() / 100, p.cents() % 100)
}

impl ShopProductNow<'_> {
    fn created(&self) -> String {
        timestamp(self.created_unix_ms)
    }

    fn updated(&self) -> String {
        timestamp(
            self.changed_unix_ms
                .map_or(self.created_unix_ms, |c| c.max(self.created_unix_ms)),
        )
    }

    /// A variant's availability and price now.
    fn variant(&self, v: &ShopVariant) -> (bool, Price) {
        v.stock.now(self.in_stock, self.price)
    }

    fn option_values(&self) -> Vec<&str> {
        self.product
            .variants
            .iter()
            .map(|v| v.title.as_str())
            .collect()
    }
}

/// One product of a `products.json` answer.
pub fn products_json_product(p: &ShopProductNow<'_>) -> Value {
    let (created, updated) = (p.created(), p.updated());
    let variants: Vec<Value> = p
        .product
        .variants
        .iter()
        .map(|v| {
            let (available, price) = p.variant(v);
            json!({
                "id": v.id,
                "title": v.title,
                "option1": v.title,
                "option2": null,
                "option3": null,
                "sku": v.sku,
                "requires_shipping": true,
                "taxable": true,
                "featured_image": null,
                "available": available,
                "price": dollars(price),
                "grams": 0,
                "compare_at_price": null,
                "position": v.position,
                "product_id": p.product.id,
                "created_at": created,
                "updated_at": updated,
            })
        })
        .collect();
    json!({
        "id": p.product.id,
        "title": p.product.title,
        "handle": p.product.handle,
        "body_html": "",
        "published_at": created,
        "created_at": created,
        "updated_at": updated,
        "vendor": VENDOR,
        "product_type": "",
        "tags": [],
        "variants": variants,
        "images": [],
        "options": [{
            "name": p.product.option_name,
            "position": 1,
            "values": p.option_values(),
        }],
    })
}

/// `products.json` (and a collection's): `{"products": [...]}`.
pub fn products_json(products: &[ShopProductNow<'_>]) -> Value {
    json!({ "products": products.iter().map(products_json_product).collect::<Vec<_>>() })
}

/// `products/<handle>.js`: prices in cents, availability per variant and
/// for the product (any variant).
pub fn product_js(p: &ShopProductNow<'_>) -> Value {
    let now: Vec<(bool, Price)> = p.product.variants.iter().map(|v| p.variant(v)).collect();
    let cents = |pr: Price| pr.cents();
    let min = now.iter().map(|(_, pr)| cents(*pr)).min().unwrap_or(0);
    let max = now.iter().map(|(_, pr)| cents(*pr)).max().unwrap_or(0);
    let single = p.product.variants.len() == 1;
    let variants: Vec<Value> = p
        .product
        .variants
        .iter()
        .zip(&now)
        .map(|(v, (available, price))| {
            json!({
                "id": v.id,
                "title": v.title,
                "option1": v.title,
                "option2": null,
                "option3": null,
                "sku": v.sku,
                "requires_shipping": true,
                "taxable": true,
                "featured_image": null,
                "available": available,
                "name": if single {
                    p.product.title.clone()
                } else {
                    format!("{} - {}", p.product.title, v.title)
                },
                "public_title": if single { Value::Null } else { json!(v.title) },
                "options": [v.title],
                "price": price.cents(),
                "weight": 0,
                "compare_at_price": null,
                "inventory_quantity": if *available { IN_STOCK_QUANTITY } else { 0 },
                "inventory_management": "shopify",
                "inventory_policy": "deny",
                "barcode": "",
            })
        })
        .collect();
    json!({
        "id": p.product.id,
        "title": p.product.title,
        "handle": p.product.handle,
        "description": "",
        "published_at": p.created(),
        "created_at": p.created(),
        "vendor": VENDOR,
        "type": "",
        "tags": [],
        "price": min,
        "price_min": min,
        "price_max": max,
        "available": now.iter().any(|(a, _)| *a),
        "price_varies": min != max,
        "compare_at_price": null,
        "compare_at_price_min": 0,
        "compare_at_price_max": 0,
        "compare_at_price_varies": false,
        "variants": variants,
        "images": [],
        "featured_image": null,
        "options": [{
            "name": p.product.option_name,
            "position": 1,
            "values": p.option_values(),
        }],
        "url": format!("/products/{}", p.product.handle),
    })
}

/// `products/<handle>.json`: `{"product": {...}}`, with prices as strings
/// and no availability, as recorded.
pub fn product_json(p: &ShopProductNow<'_>) -> Value {
    let (created, updated) = (p.created(), p.updated());
    let variants: Vec<Value> = p
        .product
        .variants
        .iter()
        .map(|v| {
            let (_, price) = p.variant(v);
            json!({
                "id": v.id,
                "product_id": p.product.id,
                "title": v.title,
                "price": dollars(price),
                "sku": v.sku,
                "position": v.position,
                "compare_at_price": null,
                "fulfillment_service": "manual",
                "inventory_management": "shopify",
                "option1": v.title,
                "option2": null,
                "option3": null,
                "created_at": created,
                "updated_at": updated,
                "taxable": true,
                "barcode": null,
                "grams": 0,
                "image_id": null,
                "weight": 0.0,
                "weight_unit": "lb",
                "requires_shipping": true,
                "quantity_rule": { "min": 1, "max": null, "increment": 1 },
                "price_currency": "USD",
                "compare_at_price_currency": "USD",
                "quantity_price_breaks": [],
            })
        })
        .collect();
    json!({ "product": {
        "id": p.product.id,
        "title": p.product.title,
        "body_html": "",
        "vendor": VENDOR,
        "product_type": "",
        "created_at": created,
        "handle": p.product.handle,
        "updated_at": updated,
        "published_at": created,
        "template_suffix": null,
        "published_scope": "global",
        "tags": "",
        "variants": variants,
        "options": [{
            "id": p.product.option_id,
            "product_id": p.product.id,
            "name": p.product.option_name,
            "position": 1,
            "values": p.option_values(),
        }],
        "images": [],
        "image": null,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{catalog::Catalog, shopify::store::Storefronts};

    fn fronts() -> Storefronts {
        let c = Catalog::parse(
            r#"{"products":[
                {"retailer":"shopify","shop":"a.example","variant":5,"name":"ETB","max_price":59.99},
                {"retailer":"shopify","shop":"a.example","handle":"bundle","name":"Bundle"}
            ]}"#,
            "p",
            Price::from_cents(1000),
        )
        .unwrap();
        Storefronts::from_catalog(&c)
    }

    #[test]
    fn times_and_prices_are_written_as_shopify_does() {
        assert_eq!(timestamp(1_750_000_000_000), "2025-06-15T15:06:40+00:00");
        assert_eq!(dollars(Price::from_cents(5999)), "59.99");
        assert_eq!(dollars(Price::from_cents(5)), "0.05");
        assert_eq!(dollars(Price::from_cents(500000)), "5000.00");
    }

    #[test]
    fn a_price_is_a_string_in_products_json_and_cents_in_js() {
        let f = fronts();
        let shop = f.shop("a.example").unwrap();
        let now = ShopProductNow {
            product: shop.by_handle("etb").unwrap(),
            in_stock: true,
            price: Price::from_cents(5999),
            created_unix_ms: 1_750_000_000_000,
            changed_unix_ms: Some(1_750_000_060_000),
        };
        let v = products_json(&[now]);
        let variant = &v["products"][0]["variants"][0];
        assert_eq!(variant["price"], "59.99");
        assert_eq!(variant["available"], true);
        assert_eq!(variant["id"], 5);
        assert_eq!(v["products"][0]["updated_at"], "2025-06-15T15:07:40+00:00");
        let js = product_js(&now);
        assert_eq!(js["price"], 5999);
        assert_eq!(js["variants"][0]["price"], 5999);
        assert_eq!(js["variants"][0]["name"], "ETB");
        assert_eq!(js["available"], true);
        let pj = product_json(&now);
        assert_eq!(pj["product"]["variants"][0]["price"], "59.99");
        assert!(pj["product"]["variants"][0].get("available").is_none());
    }

    #[test]
    fn a_handle_product_is_available_through_its_second_variant() {
        let f = fronts();
        let shop = f.shop("a.example").unwrap();
        let mut now = ShopProductNow {
            product: shop.by_handle("bundle").unwrap(),
            in_stock: true,
            price: Price::from_cents(1000),
            created_unix_ms: 0,
            changed_unix_ms: None,
        };
        let js = product_js(&now);
        assert_eq!(js["available"], true);
        assert_eq!(js["variants"][0]["available"], false);
        assert_eq!(js["variants"][0]["price"], 6000);
        assert_eq!(js["variants"][1]["available"], true);
        assert_eq!(
            (js["price_min"].clone(), js["price_max"].clone()),
            (json!(1000), json!(6000))
        );
        assert_eq!(js["price_varies"], true);
        assert_eq!(js["variants"][1]["name"], "Bundle - Single");
        now.in_stock = false;
        assert_eq!(product_js(&now)["available"], false);
    }
}
