//! A Shopify storefront as a stock source: one shop per source (the
//! watcher runs one poller per shop, so one shop's block pauses only it).
//!
//! Each round is one request per page of the shop's public product list —
//! `/products.json?limit=250&page=N`, or `/collections/<handle>/products.json`
//! with `--shopify-collection` — which covers every watched product of the
//! shop at once: a shop of up to 250 products is one request per round. A
//! watched variant is in stock when the answer says `"available": true`; its
//! price comes from the same answer (a string of dollars), so a `max_price`
//! always has a price to check. A product named by handle is in stock when
//! any of its variants is, at the lowest price among those available, and
//! the checkout gets that variant. A watched product the answer does not
//! list is `not_listed`: not out of stock, polled on every round (a drop
//! often appears in the list only when it goes on sale).
//!
//! Answers that are not a product list are classified by
//! [`shopify_format::classify`] (recorded formats in `tests/data/shopify`):
//! 429 `rate_limited` (honouring `Retry-After`), 430 `security_rejection`,
//! a challenge page `bot_wall`, the shop's password page `password_page`, 404
//! `unknown_product` (the list's URL is unknown: a wrong shop or
//! collection), 5xx `server_error`, other HTML `not_json`. Nothing is done to
//! get around a wall: the shop is paused for `--block-cooldown` and shown as
//! blocked; the user may configure what their own browser sends
//! (`--user-agent`).
//!
//! Every request to the shop waits for the shop's request budget
//! (`--shopify-max-rps`, one request per second by default), and one shop's
//! requests go one at a time.

use std::{collections::HashMap, sync::Arc, time::Duration};

use reqwest::{
    Url,
    header::{CONTENT_TYPE, LOCATION, RETRY_AFTER},
};
use tokio::time::Instant;

use restock_domain::{Price, ProductSpec, Retailer, ShopifyItem};

use super::{
    Answer, Refusal, RefusalKind, Sighting, SourceError, StockSource,
    budget::HostBudget,
    read_capped,
    shopify_format::{self, ShopProduct, ShopRefusal},
};
use crate::{metrics::SourceCode, metrics::WatcherMetrics, source::target::WATCHER_HEADER};

/// Most bytes of one page read: 250 products with their descriptions run to
/// a few MiB in the recorded answers' shape.
pub const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Most pages read in one round (250 products each). Shopify stops paging
/// at 25,000 objects; a shop larger than that is better watched through a
/// collection (`--shopify-collection`).
pub const MAX_PAGES: u32 = 100;

/// Default request budget per shop (`--shopify-max-rps`): shops answer 429
/// to clients that poll their storefront much faster.
pub const DEFAULT_SHOPIFY_RPS: f64 = 1.0;

/// Where each shop is asked, and what of it (`--shopify-url`,
/// `--shopify-collection`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShopDirectory {
    /// Base URL by shop host (default `https://<shop>`).
    pub urls: HashMap<String, Url>,
    /// `*=URL`: the base URL of every shop not named in `urls`, with
    /// `{shop}` replaced by the shop's host name (the simulator plays
    /// every shop at `http://<sim>/shops/{shop}`).
    pub every: Option<String>,
    /// Collection handle by shop host (default: the whole product list).
    pub collections: HashMap<String, String>,
}

impl ShopDirectory {
    /// The shop's base URL, with no trailing `/`.
    pub fn base_url(&self, shop: &str) -> String {
        match (self.urls.get(shop), &self.every) {
            (Some(u), _) => u.as_str().trim_end_matches('/').to_owned(),
            (None, Some(every)) => every
                .replace("{shop}", shop)
                .trim_end_matches('/')
                .to_owned(),
            (None, None) => format!("https://{shop}"),
        }
    }

    /// The path of the product list of `shop`, from its base URL.
    pub fn list_path(&self, shop: &str) -> String {
        match self.collections.get(shop) {
            Some(c) => format!("/collections/{c}/products.json"),
            None => "/products.json".into(),
        }
    }
}

/// Settings of one [`ShopifySource`].
#[derive(Debug, Clone)]
pub struct ShopifySettings {
    /// The shop's host name (as the product ids write it).
    pub shop: String,
    pub directory: ShopDirectory,
    pub user_agent: String,
    pub request_timeout: Duration,
    /// Requests per second to this shop (`None`: no limit).
    pub max_rps: Option<f64>,
    /// `--source-is-simulator`: name the watcher in a header.
    pub simulator: bool,
    pub watcher_id: String,
}

/// Asks one Shopify shop (or the simulator playing it).
#[derive(Debug)]
pub struct ShopifySource {
    settings: ShopifySettings,
    /// `<base>/products.json` or the collection's, without the query.
    list_url: String,
    client: reqwest::Client,
    metrics: Option<WatcherMetrics>,
    budget: HostBudget,
}

impl ShopifySource {
    pub fn new(settings: ShopifySettings) -> Result<Self, reqwest::Error> {
        let list_url = format!(
            "{}{}",
            settings.directory.base_url(&settings.shop),
            settings.directory.list_path(&settings.shop)
        );
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(settings.user_agent.clone())
            .build()?;
        Ok(Self {
            budget: HostBudget::per_second(settings.max_rps),
            settings,
            list_url,
            client,
            metrics: None,
        })
    }

    /// Counts every answer (by HTTP status) and failed request in `metrics`.
    pub fn counting(mut self, metrics: WatcherMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, code: SourceCode) {
        if let Some(m) = &self.metrics {
            m.source_answer(Retailer::Shopify, code);
        }
    }

    /// The URL of page `page` (from 1) of the product list.
    pub fn page_url(&self, page: u32) -> String {
        format!(
            "{}?limit={}&page={page}",
            self.list_url,
            shopify_format::MAX_PAGE
        )
    }

    /// Every product of the list, page by page (one request each, in the
    /// shop's budget), until a page holds fewer than 250.
    async fn products(&self) -> Result<Vec<ShopProduct>, SourceError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let body = self.get(&self.page_url(page)).await?;
            let products = shopify_format::parse_product_list(&body)
                .map_err(|e| SourceError::Format(format!("{}: {e}", self.page_url(page))))?;
            let full = products.len() >= shopify_format::MAX_PAGE;
            all.extend(products);
            if !full {
                break;
            }
        }
        Ok(all)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, SourceError> {
        let timeout = self.settings.request_timeout;
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                SourceError::Timeout(timeout)
            } else {
                SourceError::Transport(Arc::new(e))
            }
        };
        self.budget.acquire().await;
        let started = Instant::now();
        let took = || {
            if let Some(m) = &self.metrics {
                m.source_request_took(started.elapsed().as_secs_f64());
            }
        };
        let mut req = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json");
        if self.settings.simulator {
            req = req.header(WATCHER_HEADER, &self.settings.watcher_id);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                took();
                let e = transport(e);
                self.count(match e {
                    SourceError::Timeout(_) => SourceCode::Timeout,
                    _ => SourceCode::Transport,
                });
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        self.count(SourceCode::Status(status));
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header(RETRY_AFTER).and_then(|v| v.trim().parse::<u64>().ok());
        let content_type = header(CONTENT_TYPE);
        let cf_mitigated = header(reqwest::header::HeaderName::from_static("cf-mitigated"));
        // A redirect to the password page was followed: its URL says so.
        let location = header(LOCATION)
            .or_else(|| Some(resp.url().path().to_owned()).filter(|p| p.ends_with("/password")));
        // reqwest follows redirects: a list answered from the password
        // page's URL is the password page, whatever it says.
        let at_password = resp.url().path().ends_with("/password");
        let read = read_capped(resp, MAX_PAGE_BYTES).await;
        took();
        let (body, cut_off) = read.map_err(transport)?;
        if at_password {
            return Err(SourceError::Refused(refusal(
                ShopRefusal::PasswordPage,
                status,
                &body,
            )));
        }
        if let Some(r) = shopify_format::classify(
            status,
            content_type.as_deref(),
            retry_after,
            cf_mitigated.as_deref(),
            location.as_deref(),
            &body,
        ) {
            return Err(SourceError::Refused(refusal(r, status, &body)));
        }
        if cut_off {
            return Err(SourceError::Format(format!(
                "the answer is larger than {MAX_PAGE_BYTES} bytes; not read further (watch a collection with --shopify-collection)"
            )));
        }
        Ok(body)
    }
}

/// Our refusal for Shopify's answer.
fn refusal(r: ShopRefusal, status: u16, body: &[u8]) -> Refusal {
    let (kind, retry_after, detail) = match r {
        ShopRefusal::RateLimited { retry_after } => (
            RefusalKind::RateLimited,
            retry_after.map(Duration::from_secs),
            "the shop limits our request rate (lower --shopify-max-rps)".to_owned(),
        ),
        ShopRefusal::SecurityRejection => (
            RefusalKind::SecurityRejection,
            None,
            "Shopify's security rejection (430): the shop refuses this client".to_owned(),
        ),
        ShopRefusal::Challenge => (
            RefusalKind::BotWall,
            None,
            "a bot wall's challenge page stands in front of the shop".to_owned(),
        ),
        ShopRefusal::PasswordPage => (
            RefusalKind::PasswordPage,
            None,
            "the shop is closed behind its password page".to_owned(),
        ),
        ShopRefusal::Forbidden => (RefusalKind::Forbidden, None, excerpt(body)),
        ShopRefusal::NotFound => (
            RefusalKind::UnknownProduct,
            None,
            "the shop has no such product list (check the shop and --shopify-collection)"
                .to_owned(),
        ),
        ShopRefusal::ServerError(_) => (RefusalKind::ServerError, None, excerpt(body)),
        ShopRefusal::NotJson => (RefusalKind::NotJson, None, excerpt(body)),
        ShopRefusal::Other(_) => (RefusalKind::BadRequest, None, excerpt(body)),
    };
    Refusal {
        kind,
        status,
        retry_after,
        tracking_url: None,
        detail,
    }
}

/// The start of an answer, for messages.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(160)])
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the product list says of one watched product: see the module
/// documentation.
pub fn sighting_in(products: &[ShopProduct], product: &ProductSpec) -> Answer {
    let Some(id) = product.tcin.shopify() else {
        return Err(SourceError::Format(format!(
            "{} is not a Shopify product",
            product.tcin
        )));
    };
    let not_listed = |what: String| {
        Err(SourceError::Refused(Refusal {
            kind: RefusalKind::NotListed,
            status: 200,
            retry_after: None,
            tracking_url: None,
            detail: format!(
                "{what} is not in the shop's product list ({} products)",
                products.len()
            ),
        }))
    };
    match id.item {
        ShopifyItem::Variant(v) => {
            let Some(variant) = products
                .iter()
                .flat_map(|p| &p.variants)
                .find(|x| x.id == v)
            else {
                return not_listed(format!("variant {v}"));
            };
            let Some(available) = variant.available else {
                return Err(SourceError::Format(format!(
                    "variant {v}: the answer does not say whether it is available"
                )));
            };
            Ok(Sighting {
                in_stock: available,
                price: variant.price,
                variant: Some(v),
            })
        }
        ShopifyItem::Handle(h) => {
            let Some(p) = products.iter().find(|p| p.handle == h) else {
                return not_listed(format!("product {h:?}"));
            };
            let cheapest = |avail: bool| {
                p.variants
                    .iter()
                    .filter(|x| !avail || x.available == Some(true))
                    .min_by_key(|x| x.price.map_or(u64::MAX, Price::cents))
            };
            match cheapest(true) {
                Some(x) => Ok(Sighting {
                    in_stock: true,
                    price: x.price,
                    variant: Some(x.id),
                }),
                None if p.variants.iter().all(|x| x.available.is_some()) => Ok(Sighting {
                    in_stock: false,
                    price: cheapest(false).and_then(|x| x.price),
                    variant: None,
                }),
                None => Err(SourceError::Format(format!(
                    "product {h:?}: the answer does not say whether its variants are available"
                ))),
            }
        }
    }
}

impl StockSource for ShopifySource {
    fn describe(&self) -> String {
        format!("shopify {} ({})", self.settings.shop, self.list_url)
    }

    async fn check(&self, product: &ProductSpec) -> Answer {
        let products = self.products().await?;
        sighting_in(&products, product)
    }

    /// One product list covers every watched product of the shop.
    fn batch_size(&self) -> usize {
        usize::MAX
    }

    async fn check_many(&self, products: &[ProductSpec]) -> Result<Vec<Answer>, SourceError> {
        let list = self.products().await?;
        Ok(products.iter().map(|p| sighting_in(&list, p)).collect())
    }

    fn times_its_requests(&self) -> bool {
        true
    }

    fn next_request_at(&self) -> Option<Instant> {
        self.budget.next_free()
    }
}

#[cfg(test)]
mod tests {
    use restock_domain::ProductId;

    use super::*;
    use crate::source::shopify_format::ShopVariant;

    fn variant(id: u64, available: Option<bool>, cents: u64) -> ShopVariant {
        ShopVariant {
            id,
            title: format!("v{id}"),
            available,
            price: Some(Price::from_cents(cents)),
        }
    }

    fn shop() -> Vec<ShopProduct> {
        vec![
            ShopProduct {
                id: 1,
                handle: "etb".into(),
                title: "Elite Trainer Box".into(),
                variants: vec![variant(11, Some(false), 5_999)],
            },
            ShopProduct {
                id: 2,
                handle: "booster-bundle".into(),
                title: "Booster Bundle".into(),
                variants: vec![
                    variant(21, Some(true), 3_299),
                    variant(22, Some(true), 2_999),
                    variant(23, Some(false), 1_999),
                ],
            },
        ]
    }

    fn spec(id: &str) -> ProductSpec {
        ProductSpec::plain(ProductId::parse(id).unwrap())
    }

    #[test]
    fn a_variant_is_read_with_its_price_from_the_same_answer() {
        let s = sighting_in(&shop(), &spec("shopify:cards.example/11")).unwrap();
        assert_eq!(
            s,
            Sighting {
                in_stock: false,
                price: Some(Price::from_cents(5_999)),
                variant: Some(11),
            }
        );
        let s = sighting_in(&shop(), &spec("shopify:cards.example/21")).unwrap();
        assert!(s.in_stock);
        assert_eq!(s.price, Some(Price::from_cents(3_299)));
    }

    #[test]
    fn a_handle_is_in_stock_at_its_cheapest_available_variant() {
        let s = sighting_in(&shop(), &spec("shopify:cards.example/booster-bundle")).unwrap();
        assert_eq!(
            s,
            Sighting {
                in_stock: true,
                price: Some(Price::from_cents(2_999)),
                variant: Some(22),
            }
        );
        let s = sighting_in(&shop(), &spec("shopify:cards.example/etb")).unwrap();
        assert!(!s.in_stock);
        assert_eq!(s.variant, None);
    }

    #[test]
    fn a_product_missing_from_the_list_is_not_listed_not_out_of_stock() {
        for id in ["shopify:cards.example/99", "shopify:cards.example/gone"] {
            let e = sighting_in(&shop(), &spec(id)).unwrap_err();
            let r = e.refusal().expect("a refusal");
            assert_eq!(r.kind, RefusalKind::NotListed, "{id}");
            assert!(!e.pauses_source());
            assert!(r.detail.contains("2 products"), "{}", r.detail);
        }
        let mut odd = shop();
        odd[0].variants[0].available = None;
        let e = sighting_in(&odd, &spec("shopify:cards.example/11")).unwrap_err();
        assert!(e.to_string().contains("available"), "{e}");
    }

    #[test]
    fn a_recorded_product_list_answers_for_a_watched_variant() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/shopify/collection-legado-coffee-beans.json");
        let body = std::fs::read(&path).unwrap();
        let list = shopify_format::parse_product_list(&body).unwrap();
        let first = &list[0].variants[0];
        let id = format!("shopify:legado.example/{}", first.id);
        let s = sighting_in(&list, &spec(&id)).unwrap();
        assert_eq!(Some(s.in_stock), first.available);
        assert_eq!(s.price, first.price);
        assert!(s.price.is_some());
    }

    #[test]
    fn refusals_carry_their_kind_and_retry_after() {
        let r = refusal(
            ShopRefusal::RateLimited {
                retry_after: Some(7),
            },
            429,
            b"",
        );
        assert_eq!(r.kind, RefusalKind::RateLimited);
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        for (shop_refusal, kind) in [
            (
                ShopRefusal::SecurityRejection,
                RefusalKind::SecurityRejection,
            ),
            (ShopRefusal::Challenge, RefusalKind::BotWall),
            (ShopRefusal::PasswordPage, RefusalKind::PasswordPage),
            (ShopRefusal::NotFound, RefusalKind::UnknownProduct),
            (ShopRefusal::ServerError(503), RefusalKind::ServerError),
            (ShopRefusal::NotJson, RefusalKind::NotJson),
        ] {
            assert_eq!(refusal(shop_refusal, 200, b"<html>").kind, kind);
        }
    }

    #[test]
    fn shops_are_asked_where_the_flags_say() {
        let mut dir = ShopDirectory::default();
        assert_eq!(dir.base_url("kith.com"), "https://kith.com");
        assert_eq!(dir.list_path("kith.com"), "/products.json");
        dir.urls.insert(
            "kith.com".into(),
            Url::parse("http://127.0.0.1:8080/shops/kith.com/").unwrap(),
        );
        dir.collections
            .insert("kith.com".into(), "new-arrivals".into());
        assert_eq!(
            dir.base_url("kith.com"),
            "http://127.0.0.1:8080/shops/kith.com"
        );
        let src = ShopifySource::new(ShopifySettings {
            shop: "kith.com".into(),
            directory: dir,
            user_agent: "ua".into(),
            request_timeout: Duration::from_secs(1),
            max_rps: Some(1.0),
            simulator: false,
            watcher_id: "w".into(),
        })
        .unwrap();
        assert_eq!(
            src.page_url(2),
            "http://127.0.0.1:8080/shops/kith.com/collections/new-arrivals/products.json?limit=250&page=2"
        );
    }
}
