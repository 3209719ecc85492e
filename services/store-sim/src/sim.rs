//! The simulator's state behind one cloneable handle: stock, injected
//! faults and blocks, checkout settings and the checkout ledger.
//!
//! Everything sits under one `std::sync::Mutex`, not a tokio one: nothing
//! awaits while it is held (a checkout's delay is slept *outside* the lock,
//! between [`Simulator::begin_checkout`] and [`Simulator::finish_checkout`]),
//! and one lock makes "is it in stock, is the token fresh, what else is in
//! flight" a single atomic decision.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

use crate::{
    block::{BlockKind, BlockSpec},
    catalog::{Catalog, CatalogError},
    config::{MAX_CHECKOUT_DELAY, SimConfig},
    ledger::{Attempt, Begin, CheckoutResult, Ledger, Order, Snapshot, StockCheck},
    metrics::SimMetrics,
    polls::{Poll, PollFilter, PollLog, PollsView},
    random::RandomRestocks,
    scenario::{Scenario, ScenarioError},
    shopify::{
        block::{ShopifyBlockSpec, ShopifyBlockView},
        store::{Placement, Storefronts},
    },
    stock::{Driver, StockBook, StockError, StockSource, StockState},
};
use restock_domain::{Price, ProductId, Retailer};

/// Why the simulator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// Unix milliseconds that never go backwards: taken from the wall clock once
/// at start, then advanced by a monotonic clock (tokio's, so tests can pause
/// it). Checkout intervals are compared with these.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            start: Instant::now(),
            start_unix_ms,
        }
    }

    /// Milliseconds since the simulator started (the scenario's time axis).
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Milliseconds since the simulator started, with sub-millisecond
    /// precision (the poll log's time axis).
    pub fn elapsed_ms_f64(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1_000.0
    }

    /// Now, in unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        self.start_unix_ms + self.elapsed_ms()
    }

    /// A time on the scenario's axis, in unix milliseconds.
    pub fn to_unix_ms(&self, elapsed_ms: u64) -> u64 {
        self.start_unix_ms + elapsed_ms
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// How checkouts behave; changeable at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckoutSettings {
    /// How long an accepted checkout takes.
    #[serde(rename = "delay_ms", serialize_with = "ser_ms")]
    pub delay: Duration,
    /// Accepted checkouts end `failed` instead of `purchased`.
    pub fail: bool,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// One product as `GET /admin/stock` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StockEntry {
    pub tcin: ProductId,
    pub name: String,
    pub in_stock: bool,
    /// Dollars.
    pub price: Price,
    pub formatted_price: String,
    /// Who decided the current state: `default`, `scenario`, `random` or
    /// `manual`.
    pub source: StockSource,
    /// When that source last changed it (unix ms); `null` if never.
    pub changed_at_ms: Option<u64>,
    /// From the product config (dollars), `null` if none.
    pub max_price: Option<Price>,
    pub quantity: u32,
    /// Shopify products only: where the storefront serves it (its shop,
    /// handle, product id and variant ids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shopify: Option<Placement>,
}

/// An injected fault on the retailers' endpoints.
#[derive(Debug, Clone, Copy)]
struct Fault {
    status: u16,
    until: Option<Instant>,
    retry_after_s: Option<u64>,
    /// Only this retailer's endpoints; `None`: every retailer's.
    retailer: Option<Retailer>,
}

/// The fault in force, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultView {
    pub status: u16,
    /// When it ends (unix ms); `null` means until cleared.
    pub until_ms: Option<u64>,
    pub remaining_ms: Option<u64>,
    /// Sent as a `Retry-After` header (seconds) when set.
    pub retry_after_s: Option<u64>,
    /// `"target"` or `"shopify"`: only that retailer's endpoints; `null`:
    /// every retailer's.
    pub retailer: Option<&'static str>,
}

impl FaultView {
    /// Whether it stands in front of `retailer`'s endpoints.
    pub fn applies_to(&self, retailer: Retailer) -> bool {
        self.retailer.is_none_or(|r| r == retailer.as_str())
    }
}

/// A block of the RedSky endpoints (`PUT /admin/block`).
#[derive(Debug, Clone, Copy)]
struct Block {
    spec: BlockSpec,
    until: Option<Instant>,
}

/// The block in force, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BlockView {
    pub kind: BlockKind,
    /// The status blocked requests get.
    pub status: u16,
    /// When it ends (unix ms); `null` means until cleared.
    pub until_ms: Option<u64>,
    pub remaining_ms: Option<u64>,
    /// `rate_limited` only: the `Retry-After` given in the request; `null`
    /// means the time left (or 60 s when the block has no end).
    pub retry_after_s: Option<u64>,
}

impl BlockView {
    /// The `Retry-After` seconds a rate-limited answer sends now.
    pub fn retry_after_now(&self) -> u64 {
        self.retry_after_s.unwrap_or_else(|| {
            self.remaining_ms
                .map_or(crate::block::DEFAULT_RETRY_AFTER_S, |ms| {
                    ms.div_ceil(1_000).max(1)
                })
        })
    }
}

/// What stands in front of the RedSky endpoints right now: a block first
/// (the bot wall sits at the edge), then an injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    Blocked(BlockView),
    Fault(FaultView),
}

/// What stands in front of a shop's storefront right now: its own block,
/// else an all-shops block, else an injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShopifyGate {
    Open,
    Blocked(ShopifyBlockView),
    Fault(FaultView),
}

/// A storefront block (`PUT /admin/shopify/block`).
#[derive(Debug, Clone)]
struct ShopifyBlock {
    spec: ShopifyBlockSpec,
    until: Option<Instant>,
}

/// The storefront blocks in force: for every shop, and per shop.
#[derive(Debug, Default)]
struct ShopifyBlocks {
    all: Option<ShopifyBlock>,
    shops: BTreeMap<String, ShopifyBlock>,
}

/// One product as the RedSky endpoints show it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductNow {
    pub tcin: ProductId,
    pub name: String,
    pub in_stock: bool,
    pub price: Price,
}

#[derive(Debug)]
struct State {
    stock: StockBook,
    fault: Option<Fault>,
    block: Option<Block>,
    shopify_blocks: ShopifyBlocks,
    checkout: CheckoutSettings,
    ledger: Ledger,
}

#[derive(Debug)]
struct Inner {
    clock: Clock,
    /// The shops and their products (fixed at start).
    storefronts: Storefronts,
    state: Mutex<State>,
    /// Its own lock: recording a poll never waits for the stock state's.
    polls: PollLog,
    metrics: SimMetrics,
}

/// The simulator; clones share one state.
#[derive(Debug, Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl Simulator {
    /// A simulator for these products, moved by `driver`.
    pub fn new(catalog: Catalog, driver: Driver, checkout: CheckoutSettings) -> Self {
        let storefronts = Storefronts::from_catalog(&catalog);
        Self {
            inner: Arc::new(Inner {
                clock: Clock::new(),
                storefronts,
                state: Mutex::new(State {
                    stock: StockBook::new(catalog, driver),
                    fault: None,
                    block: None,
                    shopify_blocks: ShopifyBlocks::default(),
                    checkout,
                    ledger: Ledger::new(),
                }),
                polls: PollLog::default(),
                metrics: SimMetrics::default(),
            }),
        }
    }

    /// Loads the product config and the scenario (if any) named by `config`.
    pub fn from_config(config: &SimConfig) -> Result<Self, SetupError> {
        config.validate().map_err(SetupError::Config)?;
        let default_price =
            Price::from_dollars(config.default_price).map_err(SetupError::Config)?;
        let catalog = Catalog::load(&config.config, default_price)?;
        let driver = if let Some(path) = config.scenario_path() {
            let scenario = Scenario::load(path)?;
            let mut unknown: Vec<&str> = scenario
                .products()
                .filter(|t| catalog.get(t).is_none())
                .map(ProductId::as_str)
                .collect();
            if !unknown.is_empty() {
                unknown.sort_unstable();
                return Err(ScenarioError::Invalid {
                    path: path.display().to_string(),
                    message: format!(
                        "product(s) {} are not in the product config {}",
                        unknown.join(", "),
                        config.config.display()
                    ),
                }
                .into());
            }
            Driver::Scenario(scenario)
        } else if config.random {
            let seed = config.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            let ids: Vec<ProductId> = catalog.products().iter().map(|p| p.tcin.clone()).collect();
            Driver::Random(RandomRestocks::new(
                seed,
                config.restock_every,
                config.in_stock_for,
                &ids,
            ))
        } else {
            Driver::Manual
        };
        Ok(Self::new(
            catalog,
            driver,
            CheckoutSettings {
                delay: config.checkout_delay,
                fail: false,
            },
        ))
    }

    // A panic while the lock is held (there is no code path that should)
    // must not take every later request down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The shops served and their products.
    pub fn storefronts(&self) -> &Storefronts {
        &self.inner.storefronts
    }

    /// The stock driver, for logs.
    pub fn describe(&self) -> String {
        let s = self.lock();
        let shops = self.inner.storefronts.shops().count();
        format!(
            "{} products ({shops} Shopify shops), stock: {}",
            s.stock.catalog().len(),
            s.stock.driver().describe()
        )
    }

    /// What stands in front of the RedSky endpoints now (an expired block
    /// or fault is dropped).
    pub fn gate(&self) -> Gate {
        let clock = self.inner.clock;
        let mut s = self.lock();
        if let Some(b) = active_block(&mut s.block, &clock) {
            return Gate::Blocked(b);
        }
        match active_fault(&mut s.fault, &clock) {
            Some(f) if f.applies_to(Retailer::Target) => Gate::Fault(f),
            _ => Gate::Open,
        }
    }

    /// What stands in front of `shop`'s storefront now (expired blocks and
    /// faults are dropped).
    pub fn shopify_gate(&self, shop: &str) -> ShopifyGate {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let blocks = &mut s.shopify_blocks;
        let own = match blocks.shops.get_mut(shop) {
            Some(b) => {
                let v = shopify_view(b, &clock);
                if v.is_none() {
                    blocks.shops.remove(shop);
                }
                v
            }
            None => None,
        };
        if let Some(v) = own.or_else(|| active_shopify_all(&mut blocks.all, &clock)) {
            return ShopifyGate::Blocked(v);
        }
        match active_fault(&mut s.fault, &clock) {
            Some(f) if f.applies_to(Retailer::Shopify) => ShopifyGate::Fault(f),
            _ => ShopifyGate::Open,
        }
    }

    /// Blocks one shop's storefront (or every shop's) as `spec` says,
    /// replacing the block in force for the same shop (or for all shops).
    pub fn set_shopify_block(&self, spec: ShopifyBlockSpec) -> ShopifyBlockView {
        let clock = self.inner.clock;
        let until = spec.duration.and_then(|d| Instant::now().checked_add(d));
        let block = ShopifyBlock { spec, until };
        let view = shopify_view(&block, &clock).unwrap_or_else(|| ShopifyBlockView {
            shop: block.spec.shop.clone(),
            kind: block.spec.kind,
            status: block.spec.status,
            until_ms: Some(clock.unix_ms()),
            remaining_ms: Some(0),
            retry_after_s: block.spec.retry_after_s,
        });
        let mut s = self.lock();
        match block.spec.shop.clone() {
            Some(shop) => {
                s.shopify_blocks.shops.insert(shop, block);
            }
            None => s.shopify_blocks.all = Some(block),
        }
        view
    }

    /// The storefront blocks in force: the all-shops one first, then by
    /// shop.
    pub fn shopify_blocks(&self) -> Vec<ShopifyBlockView> {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let blocks = &mut s.shopify_blocks;
        let mut out: Vec<ShopifyBlockView> = active_shopify_all(&mut blocks.all, &clock)
            .into_iter()
            .collect();
        blocks.shops.retain(|_, b| match shopify_view(b, &clock) {
            Some(v) => {
                out.push(v);
                true
            }
            None => false,
        });
        out
    }

    /// Ends the storefront blocks of `shop` (`Some`), or every storefront
    /// block (`None`); returns the ones that were in force.
    pub fn clear_shopify_blocks(&self, shop: Option<&str>) -> Vec<ShopifyBlockView> {
        let was = self.shopify_blocks();
        let mut s = self.lock();
        match shop {
            Some(shop) => {
                s.shopify_blocks.shops.remove(shop);
                was.into_iter()
                    .filter(|b| b.shop.as_deref() == Some(shop))
                    .collect()
            }
            None => {
                s.shopify_blocks = ShopifyBlocks::default();
                was
            }
        }
    }

    /// Each of `tcins` now, `None` for unknown ones; one lock, so a batch
    /// answer is one consistent moment.
    pub fn products_now(&self, tcins: &[ProductId]) -> Vec<Option<ProductNow>> {
        let now = self.inner.clock.elapsed_ms();
        let mut s = self.lock();
        tcins
            .iter()
            .map(|t| {
                s.stock.state(t, now).map(|(p, st)| ProductNow {
                    tcin: p.tcin.clone(),
                    name: p.name.clone(),
                    in_stock: st.in_stock,
                    price: st.price,
                })
            })
            .collect()
    }

    /// One product now, `None` when unknown.
    pub fn product_now(&self, tcin: &ProductId) -> Option<ProductNow> {
        self.products_now(std::slice::from_ref(tcin))
            .pop()
            .flatten()
    }

    /// Records a request to `endpoint` for `tcin`'s stock or price from
    /// `watcher` (`""` when the request did not say), now.
    pub fn record_poll(&self, endpoint: &'static str, tcin: &str, watcher: &str) {
        let clock = self.inner.clock;
        let at = clock.start.elapsed();
        self.inner.polls.record(Poll {
            endpoint,
            tcin: tcin.to_owned(),
            watcher: watcher.to_owned(),
            at_ms: at.as_secs_f64() * 1_000.0,
            unix_ms: clock.start_unix_ms + at.as_millis() as u64,
        });
    }

    /// The recorded polls that match `filter`, oldest first.
    pub fn polls(&self, filter: &PollFilter) -> PollsView {
        self.inner.polls.view(filter)
    }

    /// Forgets every recorded poll; returns how many there were.
    pub fn clear_polls(&self) -> usize {
        self.inner.polls.clear()
    }

    /// Every product, in config order.
    pub fn stock(&self) -> Vec<StockEntry> {
        let clock = self.inner.clock;
        let now = clock.elapsed_ms();
        let fronts = &self.inner.storefronts;
        let mut s = self.lock();
        s.stock
            .states(now)
            .iter()
            .map(|(p, st)| entry(&clock, fronts, p, st))
            .collect()
    }

    /// Each of `ids` now as `GET /admin/stock` shows it, `None` for
    /// unknown ones; one lock, so an answer about many is one moment.
    pub fn stock_of(&self, ids: &[&ProductId]) -> Vec<Option<StockEntry>> {
        let clock = self.inner.clock;
        let now = clock.elapsed_ms();
        let fronts = &self.inner.storefronts;
        let mut s = self.lock();
        ids.iter()
            .map(|id| {
                s.stock
                    .state(id, now)
                    .map(|(p, st)| entry(&clock, fronts, p, &st))
            })
            .collect()
    }

    /// Sets a product's stock and/or price by hand.
    pub fn set_stock(
        &self,
        tcin: &ProductId,
        in_stock: Option<bool>,
        price: Option<Price>,
    ) -> Result<StockEntry, StockError> {
        let clock = self.inner.clock;
        let now = clock.elapsed_ms();
        let mut s = self.lock();
        let (p, st) = s.stock.set(tcin, in_stock, price, now)?;
        Ok(entry(&clock, &self.inner.storefronts, p, &st))
    }

    /// Makes every retailer's endpoints answer `status` for `duration`
    /// (until cleared when `None`).
    pub fn set_fault(
        &self,
        status: u16,
        duration: Option<Duration>,
        retry_after_s: Option<u64>,
    ) -> FaultView {
        self.set_fault_for(status, duration, retry_after_s, None)
    }

    /// Makes `retailer`'s endpoints (every retailer's when `None`) answer
    /// `status` for `duration` (until cleared when `None`).
    pub fn set_fault_for(
        &self,
        status: u16,
        duration: Option<Duration>,
        retry_after_s: Option<u64>,
        retailer: Option<Retailer>,
    ) -> FaultView {
        let clock = self.inner.clock;
        // A duration too long to add to now is as good as none.
        let until = duration.and_then(|d| Instant::now().checked_add(d));
        let mut s = self.lock();
        s.fault = Some(Fault {
            status,
            until,
            retry_after_s,
            retailer,
        });
        active_fault(&mut s.fault, &clock).unwrap_or(FaultView {
            status,
            until_ms: Some(clock.unix_ms()),
            remaining_ms: Some(0),
            retry_after_s,
            retailer: retailer.map(Retailer::as_str),
        })
    }

    /// Ends any injected fault; returns the one that was in force.
    pub fn clear_fault(&self) -> Option<FaultView> {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let was = active_fault(&mut s.fault, &clock);
        s.fault = None;
        was
    }

    /// The fault in force, if any.
    pub fn fault(&self) -> Option<FaultView> {
        let clock = self.inner.clock;
        active_fault(&mut self.lock().fault, &clock)
    }

    /// Blocks the RedSky endpoints as `spec` says, replacing any block in
    /// force.
    pub fn set_block(&self, spec: BlockSpec) -> BlockView {
        let clock = self.inner.clock;
        let until = spec.duration.and_then(|d| Instant::now().checked_add(d));
        let mut s = self.lock();
        s.block = Some(Block { spec, until });
        active_block(&mut s.block, &clock).unwrap_or(BlockView {
            kind: spec.kind,
            status: spec.status,
            until_ms: Some(clock.unix_ms()),
            remaining_ms: Some(0),
            retry_after_s: spec.retry_after_s,
        })
    }

    /// Ends any block; returns the one that was in force.
    pub fn clear_block(&self) -> Option<BlockView> {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let was = active_block(&mut s.block, &clock);
        s.block = None;
        was
    }

    /// The block in force, if any.
    pub fn block(&self) -> Option<BlockView> {
        let clock = self.inner.clock;
        active_block(&mut self.lock().block, &clock)
    }

    pub fn checkout_settings(&self) -> CheckoutSettings {
        self.lock().checkout
    }

    /// Changes how later checkouts behave (running ones keep theirs).
    pub fn update_checkout(&self, delay: Option<Duration>, fail: Option<bool>) -> CheckoutSettings {
        let mut s = self.lock();
        if let Some(d) = delay {
            s.checkout.delay = d.min(MAX_CHECKOUT_DELAY);
        }
        if let Some(f) = fail {
            s.checkout.fail = f;
        }
        s.checkout
    }

    /// The simulator's metrics (registered for `/metrics` by `run`).
    pub fn metrics(&self) -> &SimMetrics {
        &self.inner.metrics
    }

    /// Checks and records the start of a checkout; an accepted one comes
    /// with the settings it must run with.
    pub fn begin_checkout(&self, attempt: Attempt, tcin: &ProductId) -> (Begin, CheckoutSettings) {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let stock = match s.stock.state(tcin, clock.elapsed_ms()) {
            None => StockCheck::UnknownProduct,
            Some((_, st)) if st.in_stock => StockCheck::InStock(st.price),
            Some((_, st)) => StockCheck::OutOfStock(st.price),
        };
        // Read the time under the lock, so the ledger's order is time order.
        let violations = s.ledger.violations();
        let begin = s.ledger.begin(attempt, stock, clock.unix_ms());
        let metrics = &self.inner.metrics;
        metrics.violations_found(s.ledger.violations().saturating_sub(violations));
        if let Begin::Refused(order) = &begin {
            metrics.checkout_ended(order.result);
        }
        (begin, s.checkout)
    }

    /// Records the end of an accepted checkout; `None` if it was not in
    /// flight.
    pub fn finish_checkout(
        &self,
        id: u64,
        result: CheckoutResult,
        message: String,
    ) -> Option<Order> {
        let clock = self.inner.clock;
        let mut s = self.lock();
        let violations = s.ledger.violations();
        let order = s.ledger.finish(id, result, message, clock.unix_ms());
        let metrics = &self.inner.metrics;
        metrics.violations_found(s.ledger.violations().saturating_sub(violations));
        if let Some(o) = &order {
            metrics.checkout_ended(o.result);
            info!(
                order_id = o.id,
                tcin = %o.tcin,
                fencing_token = o.fencing_token,
                watcher_id = %o.watcher_id,
                lease_id = %o.lease_id,
                result = o.result.as_str(),
                voided = o.voided,
                took_ms = o.finished_at_ms - o.started_at_ms,
                violations = s.ledger.violations(),
                "checkout finished"
            );
        }
        order
    }

    /// Every recorded attempt, the checkouts in flight and the violations.
    pub fn orders(&self) -> Snapshot {
        self.lock().ledger.snapshot()
    }

    /// Forgets recorded orders and violations (see [`Ledger::clear`]).
    pub fn clear_orders(&self) {
        self.lock().ledger.clear();
    }
}

fn entry(
    clock: &Clock,
    fronts: &Storefronts,
    p: &crate::catalog::Product,
    st: &StockState,
) -> StockEntry {
    StockEntry {
        tcin: p.tcin.clone(),
        name: p.name.clone(),
        in_stock: st.in_stock,
        price: st.price,
        formatted_price: st.price.formatted(),
        source: st.source,
        changed_at_ms: st.changed_at_ms.map(|ms| clock.to_unix_ms(ms)),
        max_price: p.max_price,
        quantity: p.quantity,
        shopify: fronts.placement(&p.tcin),
    }
}

/// The fault in force now; an expired one is dropped.
fn active_fault(fault: &mut Option<Fault>, clock: &Clock) -> Option<FaultView> {
    let f = (*fault)?;
    let now = Instant::now();
    let remaining = match f.until {
        Some(until) if until <= now => {
            info!(status = f.status, "injected fault ended");
            *fault = None;
            return None;
        }
        Some(until) => Some(until.duration_since(now)),
        None => None,
    };
    Some(FaultView {
        status: f.status,
        until_ms: remaining.map(|r| clock.unix_ms() + r.as_millis() as u64),
        remaining_ms: remaining.map(|r| r.as_millis() as u64),
        retry_after_s: f.retry_after_s,
        retailer: f.retailer.map(Retailer::as_str),
    })
}

/// A storefront block as the admin API shows it now; `None` once it has
/// ended.
fn shopify_view(b: &ShopifyBlock, clock: &Clock) -> Option<ShopifyBlockView> {
    let now = Instant::now();
    let remaining = match b.until {
        Some(until) if until <= now => {
            info!(
                kind = b.spec.kind.as_str(),
                shop = b.spec.shop.as_deref().unwrap_or("*"),
                "storefront block ended"
            );
            return None;
        }
        Some(until) => Some(until.duration_since(now)),
        None => None,
    };
    Some(ShopifyBlockView {
        shop: b.spec.shop.clone(),
        kind: b.spec.kind,
        status: b.spec.status,
        until_ms: remaining.map(|r| clock.unix_ms() + r.as_millis() as u64),
        remaining_ms: remaining.map(|r| r.as_millis() as u64),
        retry_after_s: b.spec.retry_after_s,
    })
}

/// The all-shops storefront block in force now; an expired one is dropped.
fn active_shopify_all(block: &mut Option<ShopifyBlock>, clock: &Clock) -> Option<ShopifyBlockView> {
    let v = shopify_view(block.as_ref()?, clock);
    if v.is_none() {
        *block = None;
    }
    v
}

/// The block in force now; an expired one is dropped.
fn active_block(block: &mut Option<Block>, clock: &Clock) -> Option<BlockView> {
    let b = (*block)?;
    let now = Instant::now();
    let remaining = match b.until {
        Some(until) if until <= now => {
            info!(kind = b.spec.kind.as_str(), "block ended");
            *block = None;
            return None;
        }
        Some(until) => Some(until.duration_since(now)),
        None => None,
    };
    Some(BlockView {
        kind: b.spec.kind,
        status: b.spec.status,
        until_ms: remaining.map(|r| clock.unix_ms() + r.as_millis() as u64),
        remaining_ms: remaining.map(|r| r.as_millis() as u64),
        retry_after_s: b.spec.retry_after_s,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::Parser;

    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn config(args: &[&str]) -> SimConfig {
        SimConfig::try_parse_from(std::iter::once("store-sim").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn a_bad_product_config_names_the_file_and_the_place() {
        let products = file("{\"products\": [\n  {\"tcin\": 1}\n]}");
        let path = products.path().to_str().unwrap();
        let err = Simulator::from_config(&config(&["--config", path]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(path) && err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_scenario_may_only_name_configured_products() {
        let products = file(r#"{"products":[{"tcin":"1"}]}"#);
        let scenario = file(r#"{"products":{"1":[],"77":[{"from_ms":0,"to_ms":5}]}}"#);
        let (p, s) = (
            products.path().to_str().unwrap(),
            scenario.path().to_str().unwrap(),
        );
        let err = Simulator::from_config(&config(&["--config", p, "--scenario", s]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(s) && err.contains("77"), "{err}");

        let good = file(r#"{"products":{"1":[{"from_ms":0,"to_ms":60000,"price":3}]}}"#);
        let g = good.path().to_str().unwrap();
        let sim = Simulator::from_config(&config(&["--config", p, "--scenario", g])).unwrap();
        let stock = sim.stock();
        assert!(stock[0].in_stock);
        assert_eq!(stock[0].price, Price::from_cents(300));
        assert_eq!(stock[0].source, StockSource::Scenario);
    }

    #[test]
    fn random_mode_starts_everything_out_of_stock() {
        let products = file(r#"{"products":[{"tcin":"1"},{"tcin":"2"}]}"#);
        let p = products.path().to_str().unwrap();
        let sim =
            Simulator::from_config(&config(&["--config", p, "--random", "--seed", "4"])).unwrap();
        assert!(sim.describe().contains("seed 4"));
        assert!(
            sim.stock()
                .iter()
                .all(|e| !e.in_stock || e.source == StockSource::Random)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_comes_before_a_fault_and_both_expire_on_time() {
        let catalog =
            Catalog::parse(r#"{"products":[{"tcin":"1"}]}"#, "p", Price::from_cents(1)).unwrap();
        let sim = Simulator::new(
            catalog,
            Driver::Manual,
            CheckoutSettings {
                delay: Duration::ZERO,
                fail: false,
            },
        );
        sim.set_fault(503, Some(Duration::from_secs(10)), None);
        let spec = BlockSpec {
            kind: BlockKind::RateLimited,
            duration: Some(Duration::from_millis(2_500)),
            status: 429,
            retry_after_s: None,
        };
        let view = sim.set_block(spec);
        assert_eq!(view.retry_after_now(), 3, "the time left, rounded up");
        assert!(matches!(sim.gate(), Gate::Blocked(b) if b.kind == BlockKind::RateLimited));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert!(matches!(sim.gate(), Gate::Fault(f) if f.status == 503));
        assert_eq!(sim.block(), None);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(sim.gate(), Gate::Open);

        let forever = sim.set_block(BlockSpec {
            duration: None,
            ..spec
        });
        assert_eq!(
            forever.retry_after_now(),
            crate::block::DEFAULT_RETRY_AFTER_S
        );
        assert_eq!(
            sim.clear_block().map(|b| b.kind),
            Some(BlockKind::RateLimited)
        );
        assert_eq!(sim.gate(), Gate::Open);
        // A duration too long for the clock means "no end", not a panic.
        sim.set_fault(500, Some(Duration::MAX), None);
        assert_eq!(sim.fault().and_then(|f| f.until_ms), None);
        let known = sim.products_now(&[
            ProductId::parse("1").unwrap(),
            ProductId::parse("2").unwrap(),
        ]);
        assert!(known[0].as_ref().is_some_and(|p| !p.in_stock));
        assert!(known[1].is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_shops_own_block_wins_then_all_shops_then_a_fault_for_its_retailer() {
        use crate::shopify::block::{ShopifyBlockKind, ShopifyBlockSpec};
        let catalog = Catalog::parse(
            r#"{"products":[{"tcin":"1"},
                {"retailer":"shopify","shop":"a.example","variant":5},
                {"retailer":"shopify","shop":"b.example","variant":6}]}"#,
            "p",
            Price::from_cents(1),
        )
        .unwrap();
        let sim = Simulator::new(
            catalog,
            Driver::Manual,
            CheckoutSettings {
                delay: Duration::ZERO,
                fail: false,
            },
        );
        let spec = |kind, shop: Option<&str>, secs| ShopifyBlockSpec {
            kind,
            shop: shop.map(str::to_owned),
            duration: Some(Duration::from_secs(secs)),
            status: kind.statuses()[0],
            retry_after_s: None,
        };
        sim.set_fault_for(503, None, None, Some(Retailer::Shopify));
        assert_eq!(sim.gate(), Gate::Open, "a Shopify fault spares RedSky");
        sim.set_shopify_block(spec(ShopifyBlockKind::Throttled, None, 10));
        let view = sim.set_shopify_block(spec(ShopifyBlockKind::Cloudflare, Some("a.example"), 2));
        assert_eq!(view.remaining_ms, Some(2_000));
        let kind = |shop| match sim.shopify_gate(shop) {
            ShopifyGate::Blocked(b) => Some(b.kind.as_str()),
            ShopifyGate::Fault(f) => Some(if f.status == 503 { "fault" } else { "?" }),
            ShopifyGate::Open => None,
        };
        assert_eq!(kind("a.example"), Some("cloudflare"));
        assert_eq!(kind("b.example"), Some("throttled"));
        assert_eq!(sim.shopify_blocks().len(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(kind("a.example"), Some("throttled"), "its own block ended");
        assert_eq!(sim.shopify_blocks().len(), 1);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(kind("a.example"), Some("fault"));
        assert!(sim.shopify_blocks().is_empty());
        sim.set_fault_for(500, None, None, Some(Retailer::Target));
        assert_eq!(kind("a.example"), None, "a Target fault spares the shops");
        assert!(matches!(sim.gate(), Gate::Fault(f) if f.status == 500));

        sim.set_shopify_block(spec(ShopifyBlockKind::Password, Some("a.example"), 60));
        sim.set_shopify_block(spec(ShopifyBlockKind::Throttled, None, 60));
        let cleared = sim.clear_shopify_blocks(Some("a.example"));
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].kind, ShopifyBlockKind::Password);
        assert_eq!(kind("a.example"), Some("throttled"));
        assert_eq!(sim.clear_shopify_blocks(None).len(), 1);
        assert_eq!(kind("a.example"), None);

        let stock = sim.stock();
        assert_eq!(stock[0].shopify, None);
        assert_eq!(
            stock[1].shopify.as_ref().map(|p| p.variant_ids.clone()),
            Some(vec![5])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn faults_expire_on_time() {
        let catalog =
            Catalog::parse(r#"{"products":[{"tcin":"1"}]}"#, "p", Price::from_cents(1)).unwrap();
        let sim = Simulator::new(
            catalog,
            Driver::Manual,
            CheckoutSettings {
                delay: Duration::ZERO,
                fail: false,
            },
        );
        sim.set_fault(429, Some(Duration::from_secs(3)), None);
        assert!(matches!(
            sim.gate(),
            Gate::Fault(FaultView { status: 429, .. })
        ));
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(matches!(sim.gate(), Gate::Fault(_)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(sim.gate(), Gate::Open);
        assert_eq!(sim.fault(), None);
    }
}
