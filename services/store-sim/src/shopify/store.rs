//! Which shops the simulator serves and what each one sells, derived once
//! from the product config's Shopify entries (the layout never changes
//! while the simulator runs; stock and prices do, in [`crate::stock`]).
//!
//! - **Shops**: every shop host named by a Shopify entry, in lower case.
//! - **One product per entry**, in config order. Its stock and price are
//!   the entry's (the same stock model as Target products).
//! - `shopify:<shop>/<variant>` becomes a product with **one variant whose
//!   id is the configured one** (`"title": "Default Title"`, as Shopify
//!   writes a product without options). Its handle is the entry's name
//!   slugified (`"Pokémon ETB: 151!"` → `pok-mon-etb-151`); an entry
//!   without a name (or whose name has no letter or digit) gets
//!   `product-<variant>`, and a handle already taken in that shop gets
//!   `-<variant>` appended.
//! - `shopify:<shop>/<handle>` becomes a product with that handle and **two
//!   variants**, option `Pack`: position 1 `Case of 6` (six times the
//!   price) is **never available**, position 2 `Single` follows the entry's
//!   stock. So "any variant available" is the entry's stock, and a client
//!   that only looks at the first variant sees it sold out. Handles of
//!   handle entries are taken before any derived one.
//! - Ids are made up but stable (the same config gives the same ids on
//!   every run): product ids are 13 digits starting with 7, made-up variant
//!   ids 14 digits starting with 47, both from a hash of the shop and
//!   handle, moved on by one if taken in that shop (a configured variant id
//!   is never reused).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::catalog::Catalog;
use restock_domain::{Price, ProductId, ShopifyItem};

/// How many of the single item a handle product's first variant holds
/// (its price is this many times the entry's price).
pub const CASE_SIZE: u64 = 6;
/// Longest handle derived from a name.
const MAX_DERIVED_HANDLE: usize = 200;
const PRODUCT_ID_BASE: u64 = 7_000_000_000_000;
const VARIANT_ID_BASE: u64 = 47_000_000_000_000;
const OPTION_ID_BASE: u64 = 10_000_000_000_000;
const ID_SPAN: u64 = 1_000_000_000_000;

/// What decides whether a variant is available, and its price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantStock {
    /// The entry's stock and price.
    Entry,
    /// Never available; [`CASE_SIZE`] times the entry's price.
    SoldOutCase,
}

impl VariantStock {
    /// Available and price, given the entry's.
    pub fn now(self, in_stock: bool, price: Price) -> (bool, Price) {
        match self {
            VariantStock::Entry => (in_stock, price),
            VariantStock::SoldOutCase => (false, Price::from_cents(price.cents() * CASE_SIZE)),
        }
    }
}

/// One variant of a served product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShopVariant {
    pub id: u64,
    /// Its title, which is also its `option1` value.
    pub title: String,
    /// From 1.
    pub position: u32,
    pub sku: String,
    pub stock: VariantStock,
}

/// One served product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShopProduct {
    pub id: u64,
    pub handle: String,
    pub title: String,
    /// The product config entry behind it: its stock, price, polls and
    /// checkouts.
    pub entry: ProductId,
    /// `Title` for a product without options, else `Pack`.
    pub option_name: &'static str,
    /// The option's id (only the product's `.json` shows it).
    pub option_id: u64,
    pub variants: Vec<ShopVariant>,
}

/// One shop and its products, in config order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shop {
    pub shop: String,
    pub products: Vec<ShopProduct>,
    #[serde(skip)]
    by_handle: HashMap<String, usize>,
}

impl Shop {
    /// A product by handle (lower case).
    pub fn by_handle(&self, handle: &str) -> Option<&ShopProduct> {
        self.by_handle.get(handle).map(|&i| &self.products[i])
    }
}

/// Where a configured Shopify product is served (`GET /admin/stock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub shop: String,
    pub handle: String,
    pub product_id: u64,
    pub variant_ids: Vec<u64>,
}

/// Every served shop; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Storefronts {
    shops: BTreeMap<String, Shop>,
    /// Entry id → (shop, index of its product).
    by_entry: HashMap<ProductId, (String, usize)>,
}

/// 64-bit FNV-1a: stable across runs and Rust versions (unlike the
/// standard library's hasher).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A stable id in `[base, base + ID_SPAN)` from `key`, moved on until it
/// is not in `taken`; then taken.
fn pick_id(key: &str, base: u64, taken: &mut HashSet<u64>) -> u64 {
    let mut id = base + fnv1a(key) % ID_SPAN;
    while !taken.insert(id) {
        id = base + (id - base + 1) % ID_SPAN;
    }
    id
}

/// A handle from a product name: lower-case ASCII letters and digits, every
/// other run of characters one `-`, none at either end; `None` when no
/// letter or digit is left.
pub fn slugify(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut dash = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
            if out.len() >= MAX_DERIVED_HANDLE {
                break;
            }
        } else {
            dash = true;
        }
    }
    // A handle that is all digits would read as a variant id.
    if out.bytes().all(|b| b.is_ascii_digit()) {
        if out.is_empty() {
            return None;
        }
        out.insert_str(0, "product-");
    }
    Some(out)
}

impl Storefronts {
    /// The shops of `catalog`'s Shopify entries.
    pub fn from_catalog(catalog: &Catalog) -> Self {
        // (entry id, name, item) per shop, shops in order of first mention.
        let mut entries: BTreeMap<String, Vec<(&ProductId, &str)>> = BTreeMap::new();
        for p in catalog.products() {
            if let Some(r) = p.tcin.shopify() {
                entries
                    .entry(r.shop.to_owned())
                    .or_default()
                    .push((&p.tcin, &p.name));
            }
        }
        let mut shops = BTreeMap::new();
        let mut by_entry = HashMap::new();
        for (host, list) in entries {
            let shop = build_shop(&host, &list);
            for (i, p) in shop.products.iter().enumerate() {
                by_entry.insert(p.entry.clone(), (host.clone(), i));
            }
            shops.insert(host, shop);
        }
        Self { shops, by_entry }
    }

    /// A shop by host name (any case, an optional trailing dot).
    pub fn shop(&self, host: &str) -> Option<&Shop> {
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.shops.get(&host.to_ascii_lowercase())
        } else {
            self.shops.get(host)
        }
    }

    /// Every shop, by host name.
    pub fn shops(&self) -> impl Iterator<Item = &Shop> {
        self.shops.values()
    }

    pub fn is_empty(&self) -> bool {
        self.shops.is_empty()
    }

    /// The shop and product serving a configured entry.
    pub fn product_of(&self, entry: &ProductId) -> Option<(&Shop, &ShopProduct)> {
        let (host, i) = self.by_entry.get(entry)?;
        let shop = &self.shops[host];
        Some((shop, &shop.products[*i]))
    }

    /// Where a configured entry is served, for `GET /admin/stock`.
    pub fn placement(&self, entry: &ProductId) -> Option<Placement> {
        self.product_of(entry).map(|(shop, p)| Placement {
            shop: shop.shop.clone(),
            handle: p.handle.clone(),
            product_id: p.id,
            variant_ids: p.variants.iter().map(|v| v.id).collect(),
        })
    }
}

fn build_shop(host: &str, list: &[(&ProductId, &str)]) -> Shop {
    // Configured variant ids first: made-up ones never take them.
    let mut variant_ids: HashSet<u64> = list
        .iter()
        .filter_map(|(id, _)| match id.shopify()?.item {
            ShopifyItem::Variant(v) => Some(v),
            ShopifyItem::Handle(_) => None,
        })
        .collect();
    // Handles: configured ones first, then derived ones in config order.
    let mut taken: HashSet<String> = list
        .iter()
        .filter_map(|(id, _)| match id.shopify()?.item {
            ShopifyItem::Handle(h) => Some(h.to_owned()),
            ShopifyItem::Variant(_) => None,
        })
        .collect();
    let mut product_ids = HashSet::new();
    let mut option_ids = HashSet::new();
    let mut products = Vec::with_capacity(list.len());
    for (entry, name) in list {
        let Some(r) = entry.shopify() else { continue };
        let product = match r.item {
            ShopifyItem::Variant(v) => {
                let base = if *name == entry.as_str() {
                    None
                } else {
                    slugify(name)
                }
                .unwrap_or_else(|| format!("product-{v}"));
                let mut handle = base.clone();
                let mut n = 1u32;
                while taken.contains(&handle) {
                    handle = if n == 1 {
                        format!("{base}-{v}")
                    } else {
                        format!("{base}-{v}-{n}")
                    };
                    n += 1;
                }
                taken.insert(handle.clone());
                let key = format!("{host}/{handle}");
                ShopProduct {
                    id: pick_id(&key, PRODUCT_ID_BASE, &mut product_ids),
                    option_id: pick_id(&key, OPTION_ID_BASE, &mut option_ids),
                    handle,
                    title: (*name).to_owned(),
                    entry: (*entry).clone(),
                    option_name: "Title",
                    variants: vec![ShopVariant {
                        id: v,
                        title: "Default Title".to_owned(),
                        position: 1,
                        sku: format!("SIM-{v}"),
                        stock: VariantStock::Entry,
                    }],
                }
            }
            ShopifyItem::Handle(h) => {
                let key = format!("{host}/{h}");
                let variants = [
                    ("Case of 6", VariantStock::SoldOutCase),
                    ("Single", VariantStock::Entry),
                ]
                .into_iter()
                .zip(1u32..)
                .map(|((title, stock), position)| {
                    let id = pick_id(
                        &format!("{key}#{position}"),
                        VARIANT_ID_BASE,
                        &mut variant_ids,
                    );
                    ShopVariant {
                        id,
                        title: title.to_owned(),
                        position,
                        sku: format!("SIM-{id}"),
                        stock,
                    }
                })
                .collect();
                ShopProduct {
                    id: pick_id(&key, PRODUCT_ID_BASE, &mut product_ids),
                    option_id: pick_id(&key, OPTION_ID_BASE, &mut option_ids),
                    handle: h.to_owned(),
                    title: (*name).to_owned(),
                    entry: (*entry).clone(),
                    option_name: "Pack",
                    variants,
                }
            }
        };
        products.push(product);
    }
    let by_handle = products
        .iter()
        .enumerate()
        .map(|(i, p)| (p.handle.clone(), i))
        .collect();
    Shop {
        shop: host.to_owned(),
        products,
        by_handle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(json: &str) -> Catalog {
        Catalog::parse(json, "p.json", Price::from_cents(999)).unwrap()
    }

    #[test]
    fn names_become_handles() {
        assert_eq!(
            slugify("Pokémon ETB: 151!").as_deref(),
            Some("pok-mon-etb-151")
        );
        assert_eq!(
            slugify("  Booster--Bundle  ").as_deref(),
            Some("booster-bundle")
        );
        assert_eq!(slugify("151").as_deref(), Some("product-151"));
        assert_eq!(slugify("!!! ---"), None);
        assert_eq!(slugify(&"a".repeat(300)).unwrap().len(), MAX_DERIVED_HANDLE);
    }

    #[test]
    fn every_entry_is_a_product_of_its_shop_with_stable_ids() {
        let text = r#"{"products":[
            {"tcin":"1"},
            {"retailer":"shopify","shop":"Cards.Example","variant":40000000001,"name":"Elite Trainer Box"},
            {"retailer":"shopify","shop":"cards.example","variant":40000000002,"name":"Elite Trainer Box"},
            {"retailer":"shopify","shop":"cards.example","handle":"elite-trainer-box-40000000002","name":"Taken"},
            {"retailer":"shopify","shop":"cards.example","variant":40000000003},
            {"retailer":"shopify","shop":"other.example","handle":"booster-bundle","name":"Booster Bundle"}
        ]}"#;
        let s = Storefronts::from_catalog(&catalog(text));
        let hosts: Vec<&str> = s.shops().map(|s| s.shop.as_str()).collect();
        assert_eq!(hosts, ["cards.example", "other.example"]);
        let cards = s.shop("CARDS.example.").unwrap();
        let handles: Vec<&str> = cards.products.iter().map(|p| p.handle.as_str()).collect();
        assert_eq!(
            handles,
            [
                "elite-trainer-box",
                // Its own -<variant> form was taken by a handle entry.
                "elite-trainer-box-40000000002-2",
                "elite-trainer-box-40000000002",
                "product-40000000003",
            ]
        );
        let etb = cards.by_handle("elite-trainer-box").unwrap();
        assert_eq!(etb.variants.len(), 1);
        assert_eq!(etb.variants[0].id, 40_000_000_001);
        assert_eq!(etb.variants[0].title, "Default Title");
        assert_eq!(
            etb.entry,
            ProductId::parse("shopify:cards.example/40000000001").unwrap()
        );
        assert!((7_000_000_000_000..8_000_000_000_000).contains(&etb.id));

        let bundle = s
            .shop("other.example")
            .unwrap()
            .by_handle("booster-bundle")
            .unwrap();
        let v: Vec<(u32, VariantStock)> = bundle
            .variants
            .iter()
            .map(|v| (v.position, v.stock))
            .collect();
        assert_eq!(
            v,
            [(1, VariantStock::SoldOutCase), (2, VariantStock::Entry)]
        );
        assert!(
            bundle
                .variants
                .iter()
                .all(|v| (47_000_000_000_000..48_000_000_000_000).contains(&v.id))
        );
        assert_ne!(bundle.variants[0].id, bundle.variants[1].id);

        // The same config, the same ids.
        let again = Storefronts::from_catalog(&catalog(text));
        assert_eq!(again.shop("cards.example"), s.shop("cards.example"));
        let place = s
            .placement(&ProductId::parse("shopify:other.example/booster-bundle").unwrap())
            .unwrap();
        assert_eq!(place.product_id, bundle.id);
        assert_eq!(place.variant_ids.len(), 2);
        assert!(s.placement(&ProductId::parse("1").unwrap()).is_none());
        assert!(s.shop("unknown.example").is_none());
    }

    #[test]
    fn made_up_ids_never_take_a_configured_one() {
        let mut taken = HashSet::from([PRODUCT_ID_BASE + fnv1a("k") % ID_SPAN]);
        let id = pick_id("k", PRODUCT_ID_BASE, &mut taken);
        assert_eq!(id, PRODUCT_ID_BASE + (fnv1a("k") % ID_SPAN + 1) % ID_SPAN);
        assert!(taken.contains(&id));
    }

    #[test]
    fn a_sold_out_case_is_never_available() {
        let p = Price::from_cents(1000);
        assert_eq!(VariantStock::Entry.now(true, p), (true, p));
        assert_eq!(
            VariantStock::SoldOutCase.now(true, p),
            (false, Price::from_cents(6000))
        );
    }
}
