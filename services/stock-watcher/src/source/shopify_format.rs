//! The formats of a Shopify storefront's public product endpoints, and the
//! answers that are not products (throttles, bot walls, password pages).
//!
//! Pure functions: bytes and header values in, products or a refusal out.
//! No I/O, no HTTP client; the source that polls a shop calls these. Every
//! function here takes any bytes without panicking: a malformed answer is an
//! `Err` naming what was missing, never a crash.
//!
//! Four endpoints, all recorded in `tests/data/shopify/` (see
//! `tests/data/shopify/SOURCES.md` and `docs/shopify-fixtures.md`):
//!
//! - `/products.json` and `/collections/<handle>/products.json`: a page of
//!   `{"products": [...]}` ([`parse_product_list`]); prices are strings of
//!   the shop's currency (`"165.00"`), each variant has `available`.
//! - `/products/<handle>.json`: `{"product": {...}}` ([`parse_one_product`]);
//!   prices as strings again, and usually **no** `available` at all.
//! - `/products/<handle>.js`: the product object itself, prices in integer
//!   cents (`52000` is 520.00), `available` on every variant
//!   ([`parse_one_product`] tells the two apart by the `"product"` wrapper).
//!
//! A price here is an amount in the shop's own currency (rupees, rand,
//! dollars): none of these answers says which, except the `.json` product's
//! `price_currency`, which is not read. [`Price`] holds the amount in
//! hundredths.

use serde_json::{Map, Value};

use restock_domain::Price;

/// Most products Shopify serves in one page of `/products.json` (with
/// `?limit=250`; without `limit` a page holds 30). A full page means there
/// may be another (`&page=2`).
pub const MAX_PAGE: usize = 250;

/// A product as the storefront describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopProduct {
    pub id: u64,
    /// The URL name: `/products/<handle>`. Empty when the answer has none.
    pub handle: String,
    /// Empty when the answer has none.
    pub title: String,
    pub variants: Vec<ShopVariant>,
}

/// One variant (size, colour, ...) of a product: what is bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopVariant {
    pub id: u64,
    /// `"Default Title"` for a product without options. Empty when missing.
    pub title: String,
    /// `None` when the answer does not say (`/products/<handle>.json` has no
    /// `available`): unknown, which is not "sold out".
    pub available: Option<bool>,
    /// `None` when missing or not a price (negative, empty, absurd).
    pub price: Option<Price>,
}

/// An answer that is not a product list, as [`classify`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShopRefusal {
    /// 429 that is not a bot wall, including Shopify's plain-text
    /// `local_rate_limited`. `retry_after` is the `Retry-After` seconds when
    /// the answer had one.
    RateLimited { retry_after: Option<u64> },
    /// 430: Shopify's "security rejection" of the client.
    SecurityRejection,
    /// A bot wall, whatever the status: `cf-mitigated: challenge`, or a
    /// Cloudflare challenge page ("Just a moment...", `challenge-platform`).
    Challenge,
    /// The shop is closed behind its password page: a redirect to
    /// `/password`, or the page itself (its `login_form` posting to
    /// `/password`).
    PasswordPage,
    /// 403 that is not a challenge.
    Forbidden,
    /// 404: no such product, collection or shop.
    NotFound,
    /// 5xx.
    ServerError(u16),
    /// A success whose body is HTML or not JSON, and none of the above.
    NotJson,
    /// Any other status (a redirect elsewhere, 400, 401, 410, ...).
    Other(u16),
}

/// Reads a page of `/products.json` or `/collections/<handle>/products.json`:
/// `{"products": [...]}`, prices as strings (or numbers) of the shop's
/// currency.
pub fn parse_product_list(body: &[u8]) -> Result<Vec<ShopProduct>, String> {
    let doc = parse_json(body)?;
    let products = doc
        .get("products")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            if doc.get("product").is_some() {
                "no \"products\" array (this is one product, {\"product\": ...})".to_owned()
            } else {
                "no \"products\" array".to_owned()
            }
        })?;
    products
        .iter()
        .enumerate()
        .map(|(i, p)| read_product(p, Unit::Amount, &format!("products[{i}]")))
        .collect()
}

/// Reads one product: `/products/<handle>.json` (`{"product": {...}}`,
/// prices as strings of the shop's currency, usually no `available`) or
/// `/products/<handle>.js` (the product object at the top, prices in
/// integer cents, `available` on every variant).
#[allow(
    dead_code,
    reason = "the source polls the list endpoints; this reads the one-product ones, tested on their recordings"
)]
pub fn parse_one_product(body: &[u8]) -> Result<ShopProduct, String> {
    let doc = parse_json(body)?;
    let obj = doc
        .as_object()
        .ok_or("not a JSON object (neither {\"product\": ...} nor a product)")?;
    if let Some(product) = obj.get("product") {
        return read_product(product, Unit::Amount, "product");
    }
    if obj.contains_key("variants") {
        return read_product(&doc, Unit::Cents, "the product");
    }
    if obj.contains_key("products") {
        return Err("a \"products\" list, not one product".into());
    }
    Err("neither a \"product\" object nor a product with \"variants\"".into())
}

/// Classifies an answer that is not a product list; `None` for one to read
/// with [`parse_product_list`] or [`parse_one_product`] (a success with a
/// JSON body).
///
/// `content_type` is the `Content-Type` header if any, `retry_after` the
/// parsed `Retry-After` seconds if any, `cf_mitigated` the `cf-mitigated`
/// header if any, `location` the `Location` header if any. In order:
///
/// 1. `cf-mitigated: challenge`, or an HTML body with Cloudflare's challenge
///    markers, whatever the status → [`ShopRefusal::Challenge`];
/// 2. 430 → [`ShopRefusal::SecurityRejection`]; 429 →
///    [`ShopRefusal::RateLimited`];
/// 3. a redirect to `/password`, or an HTML password page whatever the
///    status → [`ShopRefusal::PasswordPage`];
/// 4. 403, 404, 5xx; any other non-success → [`ShopRefusal::Other`];
/// 5. a success with an HTML or non-JSON body → [`ShopRefusal::NotJson`].
pub fn classify(
    status: u16,
    content_type: Option<&str>,
    retry_after: Option<u64>,
    cf_mitigated: Option<&str>,
    location: Option<&str>,
    body: &[u8],
) -> Option<ShopRefusal> {
    if cf_mitigated.is_some_and(|v| v.trim().eq_ignore_ascii_case("challenge")) {
        return Some(ShopRefusal::Challenge);
    }
    let html = looks_like_html(content_type, body);
    // Only an HTML body is searched for page markers: a product's JSON may
    // say anything in its description.
    let text = if html {
        Some(String::from_utf8_lossy(body))
    } else {
        None
    };
    if text
        .as_deref()
        .is_some_and(|t| t.contains("challenge-platform") || t.contains("Just a moment..."))
    {
        return Some(ShopRefusal::Challenge);
    }
    match status {
        430 => return Some(ShopRefusal::SecurityRejection),
        429 => return Some(ShopRefusal::RateLimited { retry_after }),
        _ => {}
    }
    if (300..400).contains(&status) && location.is_some_and(is_password_path) {
        return Some(ShopRefusal::PasswordPage);
    }
    if text.as_deref().is_some_and(|t| {
        (t.contains("login_form") || t.contains("storefront_password")) && t.contains("/password")
    }) {
        return Some(ShopRefusal::PasswordPage);
    }
    match status {
        403 => Some(ShopRefusal::Forbidden),
        404 => Some(ShopRefusal::NotFound),
        500..=599 => Some(ShopRefusal::ServerError(status)),
        200..=299 => {
            if html || serde_json::from_slice::<Value>(body).is_err() {
                Some(ShopRefusal::NotJson)
            } else {
                None
            }
        }
        _ => Some(ShopRefusal::Other(status)),
    }
}

/// How an answer writes its prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// `.json`: the amount, `"165.00"` (a number is read the same way).
    Amount,
    /// `.js`: hundredths, `16500`.
    Cents,
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| {
        if looks_like_html(None, body) {
            "not JSON: an HTML page".to_owned()
        } else {
            format!("not JSON: {e}")
        }
    })
}

fn read_product(value: &Value, unit: Unit, path: &str) -> Result<ShopProduct, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{path} is not an object"))?;
    let id = read_id(obj).ok_or_else(|| format!("{path} has no numeric \"id\""))?;
    let variants = obj
        .get("variants")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{path} has no \"variants\" array"))?
        .iter()
        .enumerate()
        .map(|(i, v)| read_variant(v, unit, &format!("{path}.variants[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ShopProduct {
        id,
        handle: text_field(obj, "handle"),
        title: text_field(obj, "title"),
        variants,
    })
}

fn read_variant(value: &Value, unit: Unit, path: &str) -> Result<ShopVariant, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{path} is not an object"))?;
    let id = read_id(obj).ok_or_else(|| format!("{path} has no numeric \"id\""))?;
    let price = obj.get("price").and_then(|p| match unit {
        Unit::Amount => amount_price(p),
        Unit::Cents => cents_price(p),
    });
    Ok(ShopVariant {
        id,
        title: text_field(obj, "title"),
        available: obj.get("available").and_then(Value::as_bool),
        price,
    })
}

/// `"id"` as a number, or a string of digits.
fn read_id(obj: &Map<String, Value>) -> Option<u64> {
    match obj.get("id")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text_field(obj: &Map<String, Value>, key: &str) -> String {
    obj.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A price written as an amount: `"165.00"` (exactly, no floating point),
/// or a number `165.0`.
fn amount_price(value: &Value) -> Option<Price> {
    match value {
        Value::String(s) => amount_text(s),
        Value::Number(n) => n.as_f64().and_then(|d| Price::from_dollars(d).ok()),
        _ => None,
    }
}

fn amount_text(s: &str) -> Option<Price> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        // Not plain decimal ("1e3", "+5", "", "12,50"): whatever f64 makes
        // of it, within the range `Price` accepts.
        return s
            .parse::<f64>()
            .ok()
            .and_then(|d| Price::from_dollars(d).ok());
    }
    let mut cents: u64 = 0;
    for b in whole.bytes() {
        cents = cents.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    let f = frac.as_bytes();
    let digit = |i: usize| f.get(i).map_or(0, |b| u64::from(b - b'0'));
    cents = cents
        .checked_mul(100)?
        .checked_add(digit(0) * 10 + digit(1))?;
    if digit(2) >= 5 {
        cents = cents.checked_add(1)?;
    }
    checked_cents(cents)
}

/// A price written in hundredths (`.js`): `52000`, or a string of digits.
fn cents_price(value: &Value) -> Option<Price> {
    let cents = match value {
        Value::Number(n) => match n.as_u64() {
            Some(c) => c,
            None => {
                let f = n.as_f64()?;
                if !(0.0..=u64::MAX as f64).contains(&f) {
                    return None;
                }
                f.round() as u64
            }
        },
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    checked_cents(cents)
}

/// `cents` as a [`Price`], within the range [`Price::from_dollars`] accepts
/// (the division and its rounding give back `cents` exactly in that range).
fn checked_cents(cents: u64) -> Option<Price> {
    Price::from_dollars(cents as f64 / 100.0)
        .ok()
        .filter(|p| p.cents() == cents)
}

/// `Content-Type` says HTML, or the body starts with `<`.
fn looks_like_html(content_type: Option<&str>, body: &[u8]) -> bool {
    content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("html"))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

/// A `Location` whose path is `/password` (absolute or relative, any query):
/// where a closed shop sends every page.
fn is_password_path(location: &str) -> bool {
    let rest = match location.split_once("://") {
        Some((_, after_scheme)) => after_scheme.find('/').map_or("", |i| &after_scheme[i..]),
        None => location,
    };
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    path.trim_end_matches('/').ends_with("/password") || path == "password"
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn recording(file: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/shopify")
            .join(file);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn variant(products: &[ShopProduct], id: u64) -> &ShopVariant {
        products
            .iter()
            .flat_map(|p| &p.variants)
            .find(|v| v.id == id)
            .unwrap_or_else(|| panic!("variant {id} is in the answer"))
    }

    fn cents(c: u64) -> Option<Price> {
        Some(Price::from_cents(c))
    }

    /// (available, sold out, unknown) over every variant.
    fn tally(products: &[ShopProduct]) -> (usize, usize, usize) {
        let all: Vec<_> = products.iter().flat_map(|p| &p.variants).collect();
        let n = |a: Option<bool>| all.iter().filter(|v| v.available == a).count();
        (n(Some(true)), n(Some(false)), n(None))
    }

    #[test]
    fn products_json_of_blue_tokai_is_a_page_of_30_with_sold_out_variants() {
        let products = parse_product_list(&recording("products-bluetokai.json")).unwrap();
        assert_eq!(products.len(), 30, "Shopify's page size without `limit`");
        assert!(products.len() <= MAX_PAGE);
        assert_eq!(tally(&products), (249, 84, 0));

        let hamper = &products[0];
        assert_eq!(hamper.id, 7291034370103);
        assert_eq!(hamper.handle, "meghmalhar-gift-hamper");
        assert_eq!(hamper.title, "Meghmalhar Gift Hamper");
        assert_eq!(
            hamper.variants,
            [ShopVariant {
                id: 41710635548727,
                title: "Default Title".into(),
                available: Some(false),
                price: cents(579900),
            }]
        );

        // One product, three variants: one city's workshop still open.
        let workshop = products
            .iter()
            .find(|p| p.handle == "matcha-brewing-workshop-3")
            .unwrap();
        let open: Vec<(u64, Option<bool>)> = workshop
            .variants
            .iter()
            .map(|v| (v.id, v.available))
            .collect();
        assert_eq!(
            open,
            [
                (41804230787127, Some(false)),
                (41817474039863, Some(true)),
                (41860270850103, Some(false)),
            ]
        );
        assert_eq!(variant(&products, 41817474039863).price, cents(100000));

        let n72 = variant(&products, 39505447092279);
        assert_eq!(n72.title, "250g / Whole Bean");
        assert_eq!((n72.available, n72.price), (Some(true), cents(80000)));

        assert!(
            products
                .iter()
                .flat_map(|p| &p.variants)
                .all(|v| v.price.is_some()),
            "every variant has a price"
        );
    }

    #[test]
    fn collection_of_legado_has_7_products_and_one_sold_out() {
        let products =
            parse_product_list(&recording("collection-legado-coffee-beans.json")).unwrap();
        assert_eq!(products.len(), 7);
        assert_eq!(tally(&products), (63, 5, 0));

        let brazil = variant(&products, 44926543855769);
        assert_eq!(brazil.title, "250g / Beans");
        assert_eq!((brazil.available, brazil.price), (Some(true), cents(16500)));
        assert_eq!(variant(&products, 44926559453337).price, cents(49500));

        let ethiopia = products.iter().find(|p| p.id == 8351688491161).unwrap();
        assert_eq!(ethiopia.handle, "ethiopia-yirgacheffe-natural");
        assert_eq!(ethiopia.variants.len(), 5);
        assert!(
            ethiopia
                .variants
                .iter()
                .all(|v| v.available == Some(false) && v.price == cents(21000)),
            "the whole product is sold out, at 210.00"
        );
        // `compare_at_price` ("0.00" here, null elsewhere) is not the price.
        assert_eq!(variant(&products, 46829381451929).price, cents(24000));
    }

    #[test]
    fn product_json_has_prices_but_says_nothing_about_availability() {
        let p = parse_one_product(&recording("product_json-minimalist-niacinamide.json")).unwrap();
        assert_eq!(p.id, 7572035502241);
        assert_eq!(p.handle, "niacinamide-10-with-matmarine");
        assert_eq!(p.title, "Niacinamide 10% Face Serum");
        let got: Vec<(u64, &str, Option<bool>, Option<Price>)> = p
            .variants
            .iter()
            .map(|v| (v.id, v.title.as_str(), v.available, v.price))
            .collect();
        assert_eq!(
            got,
            [
                (44802331148449, "30ml", None, cents(56900)),
                (44802331181217, "60ml", None, cents(94900)),
                (45154956705953, "10ml", None, cents(23700)),
                (46819999776929, "20ml", None, cents(47400)),
            ],
            "prices, not the compare_at_price (599.00, ...); availability unknown"
        );
    }

    #[test]
    fn product_js_has_prices_in_cents_and_availability() {
        let p = parse_one_product(&recording("product_js-ratio-eight.json")).unwrap();
        assert_eq!((p.id, p.handle.as_str()), (6438462785, "ratio-eight"));
        assert_eq!(p.title, "Ratio Eight");
        assert_eq!(p.variants.len(), 8);
        assert!(p.variants.iter().all(|v| v.available == Some(true)));
        let first = &p.variants[0];
        assert_eq!(first.id, 20230103745);
        assert_eq!(first.title, "Silver / 220 Volts / Small");
        assert_eq!(first.price, cents(52000), "52000 cents is 520.00");
        assert_eq!(first.price.unwrap().formatted(), "$520.00");
        let nickel = &p.variants[1];
        assert_eq!((nickel.id, nickel.price), (20230103873, cents(60000)));
        assert_eq!(p.variants[7].price, cents(53000));
    }

    #[test]
    fn each_parser_refuses_the_other_shape() {
        let list = recording("collection-legado-coffee-beans.json");
        let one = recording("product_json-minimalist-niacinamide.json");
        let err = parse_one_product(&list).unwrap_err();
        assert!(err.contains("\"products\""), "{err}");
        let err = parse_product_list(&one).unwrap_err();
        assert!(err.contains("no \"products\" array"), "{err}");
        let err = parse_product_list(&recording("product_js-ratio-eight.json")).unwrap_err();
        assert!(err.contains("no \"products\" array"), "{err}");
    }

    #[test]
    fn malformed_answers_are_errors_that_say_what_is_wrong() {
        let e = |body: &str| parse_product_list(body.as_bytes()).unwrap_err();
        assert!(e("").starts_with("not JSON"), "{}", e(""));
        assert_eq!(e("<!DOCTYPE html><html>"), "not JSON: an HTML page");
        assert_eq!(e("local_rate_limited").split(':').next(), Some("not JSON"));
        assert_eq!(e("[]"), "no \"products\" array");
        assert_eq!(e(r#"{"products": {}}"#), "no \"products\" array");
        assert_eq!(e(r#"{"products": [7]}"#), "products[0] is not an object");
        assert_eq!(
            e(r#"{"products": [{"title": "x", "variants": []}]}"#),
            "products[0] has no numeric \"id\""
        );
        assert_eq!(
            e(r#"{"products": [{"id": 1}]}"#),
            "products[0] has no \"variants\" array"
        );
        assert_eq!(
            e(r#"{"products": [{"id": 1, "variants": [{"id": -2}]}]}"#),
            "products[0].variants[0] has no numeric \"id\""
        );
        let one = |body: &str| parse_one_product(body.as_bytes()).unwrap_err();
        assert_eq!(one(r#"{"product": 3}"#), "product is not an object");
        assert_eq!(
            one(r#"{"errors": "Not Found"}"#),
            "neither a \"product\" object nor a product with \"variants\""
        );
        assert!(one("\"x\"").starts_with("not a JSON object"));
    }

    #[test]
    fn prices_and_availability_are_read_robustly() {
        let list = |variants: &str| {
            let body = format!(r#"{{"products": [{{"id": 1, "variants": [{variants}]}}]}}"#);
            parse_product_list(body.as_bytes())
                .unwrap()
                .remove(0)
                .variants
        };
        let v = list(
            r#"{"id": 1, "price": "19.99", "available": true},
               {"id": "2", "price": 19.99},
               {"id": 3, "price": "7"},
               {"id": 4, "price": ".5", "available": null},
               {"id": 5, "price": "", "available": "yes"},
               {"id": 6, "price": "-1.00"},
               {"id": 7, "price": "abc"},
               {"id": 8, "price": "99999999999999999999999.00"},
               {"id": 9, "price": "0.005"},
               {"id": 10, "price": "2000000.00"},
               {"id": 11, "price": null},
               {"id": 12}"#,
        );
        let got: Vec<(u64, Option<bool>, Option<u64>)> = v
            .iter()
            .map(|v| (v.id, v.available, v.price.map(Price::cents)))
            .collect();
        assert_eq!(
            got,
            [
                (1, Some(true), Some(1999)),
                (2, None, Some(1999)),
                (3, None, Some(700)),
                (4, None, Some(50)),
                (5, None, None),
                (6, None, None),
                (7, None, None),
                (8, None, None),
                (9, None, Some(1)),
                (10, None, None),
                (11, None, None),
                (12, None, None),
            ]
        );
        // `.js`: hundredths, as a number or a string of digits.
        let js = parse_one_product(
            br#"{"id": 1, "variants": [{"id": 1, "price": 1999}, {"id": 2, "price": "250"},
                {"id": 3, "price": 12.6}, {"id": 4, "price": -5}, {"id": 5, "price": "2.50"}]}"#,
        )
        .unwrap();
        let got: Vec<Option<u64>> = js
            .variants
            .iter()
            .map(|v| v.price.map(Price::cents))
            .collect();
        assert_eq!(got, [Some(1999), Some(250), Some(13), None, None]);
    }

    #[test]
    fn no_input_makes_it_panic() {
        let mut bodies: Vec<Vec<u8>> = [
            "products-bluetokai.json",
            "collection-legado-coffee-beans.json",
            "product_json-minimalist-niacinamide.json",
            "product_js-ratio-eight.json",
        ]
        .into_iter()
        .map(recording)
        .collect();
        bodies.push(vec![0xff, 0xfe, b'{', 0x80]);
        bodies.push(b"[".repeat(100_000));
        bodies.push(
            r#"{"products":[{"id":1e400,"variants":[{"id":1,"price":1e400}]}]}"#
                .as_bytes()
                .to_vec(),
        );
        for body in &bodies {
            let step = (body.len() / 97).max(1);
            for cut in (0..body.len()).step_by(step).chain([body.len()]) {
                let part = &body[..cut];
                let _ = parse_product_list(part);
                let _ = parse_one_product(part);
                for status in [200, 302, 403, 429, 430, 503] {
                    let _ = classify(status, None, None, None, Some("/password"), part);
                }
            }
        }
    }

    const CHALLENGE_HTML: &str = "<!DOCTYPE html><html lang=\"en-US\"><head>\
        <title>Just a moment...</title></head><body>\
        <script src=\"/cdn-cgi/challenge-platform/h/g/orchestrate/chl_page/v1\"></script>\
        </body></html>";
    const PASSWORD_HTML: &str = "<!doctype html><html><head><title>Opening soon</title></head>\
        <body><form method=\"post\" action=\"/password\" id=\"login_form\" accept-charset=\"UTF-8\" \
        class=\"storefront-password-form\"><input type=\"hidden\" name=\"form_type\" \
        value=\"storefront_password\" /><input type=\"password\" name=\"password\"></form>\
        </body></html>";

    #[test]
    fn classify_rate_limits_and_security_rejections() {
        let c = |status, retry_after, body: &str| {
            classify(
                status,
                Some("text/plain"),
                retry_after,
                None,
                None,
                body.as_bytes(),
            )
        };
        assert_eq!(
            c(429, None, "local_rate_limited"),
            Some(ShopRefusal::RateLimited { retry_after: None })
        );
        assert_eq!(
            c(429, Some(30), ""),
            Some(ShopRefusal::RateLimited {
                retry_after: Some(30)
            })
        );
        assert_eq!(c(430, None, ""), Some(ShopRefusal::SecurityRejection));
        assert_eq!(
            classify(
                430,
                Some("text/html"),
                Some(5),
                None,
                None,
                b"<html>blocked</html>"
            ),
            Some(ShopRefusal::SecurityRejection)
        );
    }

    #[test]
    fn classify_bot_walls_whatever_the_status() {
        for status in [403, 429, 503, 200] {
            assert_eq!(
                classify(
                    status,
                    Some("text/html"),
                    None,
                    Some("challenge"),
                    None,
                    b""
                ),
                Some(ShopRefusal::Challenge),
                "cf-mitigated with {status}"
            );
            assert_eq!(
                classify(
                    status,
                    Some("text/html; charset=UTF-8"),
                    Some(10),
                    None,
                    None,
                    CHALLENGE_HTML.as_bytes()
                ),
                Some(ShopRefusal::Challenge),
                "challenge page with {status}"
            );
        }
        assert_eq!(
            classify(403, None, None, Some(" Challenge "), None, b"{}"),
            Some(ShopRefusal::Challenge)
        );
        // A product whose description says "Just a moment..." is a product.
        let json = br#"{"products": [{"id": 1, "body_html": "Just a moment... challenge-platform", "variants": []}]}"#;
        assert_eq!(
            classify(200, Some("application/json"), None, None, None, json),
            None
        );
    }

    #[test]
    fn classify_password_pages() {
        for location in [
            "https://shop.example/password",
            "/password",
            "https://shop.example/password?redirect=%2Fproducts.json",
            "/en-ca/password/",
        ] {
            assert_eq!(
                classify(302, Some("text/html"), None, None, Some(location), b""),
                Some(ShopRefusal::PasswordPage),
                "{location}"
            );
        }
        assert_eq!(
            classify(302, None, None, None, Some("/products/x.json"), b""),
            Some(ShopRefusal::Other(302))
        );
        assert_eq!(
            classify(302, None, None, None, Some("/passwords"), b""),
            Some(ShopRefusal::Other(302))
        );
        for status in [200, 401] {
            assert_eq!(
                classify(
                    status,
                    Some("text/html; charset=utf-8"),
                    None,
                    None,
                    None,
                    PASSWORD_HTML.as_bytes()
                ),
                Some(ShopRefusal::PasswordPage),
                "{status}"
            );
        }
    }

    #[test]
    fn classify_statuses_and_successes() {
        let c = |status, ct, body: &[u8]| classify(status, ct, None, None, None, body);
        assert_eq!(
            c(404, Some("text/html"), b"<html>Page not found</html>"),
            Some(ShopRefusal::NotFound)
        );
        assert_eq!(
            c(404, Some("application/json"), br#"{"errors":"Not Found"}"#),
            Some(ShopRefusal::NotFound)
        );
        assert_eq!(c(403, None, b""), Some(ShopRefusal::Forbidden));
        assert_eq!(
            c(503, Some("text/html"), b"<html>down</html>"),
            Some(ShopRefusal::ServerError(503))
        );
        assert_eq!(c(500, None, b""), Some(ShopRefusal::ServerError(500)));
        assert_eq!(c(410, None, b""), Some(ShopRefusal::Other(410)));
        assert_eq!(
            c(
                200,
                Some("text/html"),
                b"<!doctype html><html>shop front</html>"
            ),
            Some(ShopRefusal::NotJson)
        );
        assert_eq!(c(200, None, b"  <html>"), Some(ShopRefusal::NotJson));
        assert_eq!(
            c(200, None, b"local_rate_limited"),
            Some(ShopRefusal::NotJson)
        );
        assert_eq!(
            c(200, Some("application/json"), b""),
            Some(ShopRefusal::NotJson)
        );
        for file in [
            "products-bluetokai.json",
            "collection-legado-coffee-beans.json",
            "product_json-minimalist-niacinamide.json",
            "product_js-ratio-eight.json",
        ] {
            assert_eq!(
                c(
                    200,
                    Some("application/json; charset=utf-8"),
                    &recording(file)
                ),
                None,
                "{file} is to be read"
            );
        }
    }

    #[test]
    fn max_page_is_shopifys_limit() {
        assert_eq!(MAX_PAGE, 250);
    }

    /// `docs/shopify-fixtures.md`: every row names a recording and what the
    /// watcher reads in it; this checks each row against the parser, so the
    /// document cannot drift from the code.
    #[test]
    fn every_row_of_the_fixtures_table_in_docs_matches_the_parser() {
        const TABLE: &str = include_str!("../../../../docs/shopify-fixtures.md");
        let rows: Vec<Vec<&str>> = TABLE
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(str::trim)
                    .collect()
            })
            .collect();
        assert!(rows.len() >= 4, "the table has {} rows", rows.len());
        for row in rows {
            let [file, endpoint, reads] = row[..] else {
                panic!("a row of three cells: {row:?}");
            };
            let file = file.trim_matches('`');
            let endpoint = endpoint.trim_matches('`');
            let body = recording(file);
            assert_eq!(
                classify(200, Some("application/json"), None, None, None, &body),
                None,
                "{file}: a product answer"
            );
            let products = if endpoint.ends_with("/products.json") {
                parse_product_list(&body).unwrap()
            } else {
                vec![parse_one_product(&body).unwrap()]
            };
            check_row(file, &products, reads);
        }
    }

    /// Checks the `;`-separated statements of a row: `N products`,
    /// `M variants: A available, S sold out, U unknown`, and
    /// `variant ID <available|sold out|availability unknown> at 165.00 ...`
    /// (the amount in the shop's currency; words after it are comment).
    /// Other statements are comment.
    fn check_row(file: &str, products: &[ShopProduct], reads: &str) {
        let all: Vec<&ShopVariant> = products.iter().flat_map(|p| &p.variants).collect();
        let mut seen = (false, false, false);
        for part in reads.split(';').map(str::trim) {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words[..] {
                [n, "product" | "products"] => {
                    assert_eq!(
                        n.parse::<usize>().ok(),
                        Some(products.len()),
                        "{file}: {part}"
                    );
                    seen.0 = true;
                }
                [
                    m,
                    "variants:",
                    a,
                    "available,",
                    s,
                    "sold",
                    "out,",
                    u,
                    "unknown",
                ] => {
                    let (ta, ts, tu) = tally(products);
                    let want = format!(
                        "{} variants: {ta} available, {ts} sold out, {tu} unknown",
                        all.len()
                    );
                    assert_eq!(
                        format!("{m} variants: {a} available, {s} sold out, {u} unknown"),
                        want,
                        "{file}"
                    );
                    seen.1 = true;
                }
                ["variant", id, ..] => {
                    let id: u64 = id.parse().unwrap_or_else(|_| panic!("{file}: {part}"));
                    let v = all
                        .iter()
                        .find(|v| v.id == id)
                        .unwrap_or_else(|| panic!("{file}: variant {id} is not in the answer"));
                    let at = words
                        .iter()
                        .position(|w| *w == "at")
                        .unwrap_or_else(|| panic!("{file}: no \"at <price>\" in {part:?}"));
                    let state = match v.available {
                        Some(true) => "available",
                        Some(false) => "sold out",
                        None => "availability unknown",
                    };
                    assert_eq!(words[2..at].join(" "), state, "{file}: {part}");
                    let amount = v
                        .price
                        .map(|p| format!("{}.{:02}", p.cents() / 100, p.cents() % 100));
                    assert_eq!(
                        words.get(at + 1).copied(),
                        amount.as_deref(),
                        "{file}: {part}"
                    );
                    seen.2 = true;
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            (true, true, true),
            "{file}: the row states the product count, the variant tally and a variant"
        );
    }
}
