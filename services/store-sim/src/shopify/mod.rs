//! Shopify storefronts beside Target: the public JSON a storefront serves
//! (`products.json`, a collection's `products.json`, a product's `.json`
//! and `.js`), for every shop the product config names, on the
//! simulator's one port, with stock and prices from the same stock model
//! as Target products, and walls and throttles on demand.
//!
//! - [`store`]: which shops, products, handles and variant ids the product
//!   config makes.
//! - [`json`]: the answers, in the shapes of the recordings in
//!   `tests/data/shopify/`.
//! - [`block`]: the answers of `PUT /admin/shopify/block` (429, 430,
//!   Cloudflare's challenge, the password page).
//! - [`routes`]: the routes, how a request names its shop (path prefix or
//!   `Host`), paging, and the poll log.
//!
//! Checkouts of Shopify products go through the one `POST /checkout` and
//! its one fencing ledger, like Target's.

pub mod block;
pub mod json;
pub mod routes;
pub mod store;
