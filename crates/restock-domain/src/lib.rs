//! The vocabulary every restock binary shares. Plain data and rules: no
//! I/O beyond reading the product config, no gRPC, no async. Protocol
//! messages convert to and from these types in `restock-proto`, at each
//! service's edge, so the core of every service speaks only these.
//!
//! # Layout
//!
//! - [`product_id`]: [`ProductId`], a [`Retailer`] plus that retailer's id
//!   (a TCIN, or a Shopify shop and variant), one rule per retailer.
//! - [`ids`]: [`WatcherId`], [`LeaseId`], [`FencingToken`]: one type per id,
//!   one rule each.
//! - [`product`]: [`ProductState`], [`Outcome`], [`Price`].
//! - [`catalog`]: the product list in priority order ([`PriorityList`]) and
//!   its config file parser; the [`Catalog`] a watcher is sent.
//! - [`budget`]: the fleet's spending limit ([`BudgetLimits`]) and what
//!   the arbiter shows of it ([`BudgetStatus`]).
//! - [`stock`]: an [`Observation`] of one product by a watcher.
//! - [`lease`]: a [`Lease`] as a holder or onlooker sees it.
//! - [`event`]: the arbiter's numbered transitions ([`Event`], [`EventKind`]).
//! - [`status`]: everything `GetStatus` shows ([`Status`]).
//! - [`duration`]: durations as written in flags (`500ms`, `2m`, or seconds),
//!   and as the tools print them.
//! - [`timestamp`]: wall-clock times as the tools print them.
//! - [`history`]: the one checker of the arbiter's promises over its events
//!   and status snapshots ([`history::Checker`]), used by `restockctl
//!   monitor` and the fault suite, and [`history::build`] for made-up
//!   histories.

pub mod budget;
pub mod catalog;
pub mod duration;
pub mod event;
pub mod history;
pub mod ids;
pub mod lease;
pub mod product;
pub mod product_id;
pub mod status;
pub mod stock;
pub mod timestamp;

pub use budget::{BudgetLimits, BudgetSource, BudgetStatus};
pub use catalog::{Catalog, CatalogError, PriceCheck, PriorityList, ProductSpec};
pub use event::{Event, EventKind};
pub use ids::{FencingToken, IdError, LeaseId, WatcherId};
pub use lease::Lease;
pub use product::{Outcome, Price, ProductState};
pub use product_id::{ProductId, Retailer, ShopifyItem, ShopifyRef};
pub use status::{Counters, ProductStatus, SourceBlock, SourceBlockKind, Status, WatcherStatus};
pub use stock::Observation;
