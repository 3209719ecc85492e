//! What a watcher saw when it polled a product.

use crate::{product::Price, product_id::ProductId};

/// One poll result of one product, as a watcher reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub tcin: ProductId,
    pub in_stock: bool,
    /// The price the source showed, when it showed one.
    pub price: Option<Price>,
    /// When the watcher polled it (its wall clock; 0 when unknown).
    pub observed_at_unix_ms: u64,
}
