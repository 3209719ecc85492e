//! Integration tests: the real `stock-watcher` and `purchase-arbiter`
//! binaries as processes, with an in-test HTTP stub playing the store (the
//! Target fulfillment format and a recording checkout endpoint).
//!
//! Build the binaries first: `cargo build --workspace --bins`. Set
//! `TEST_LOG=1` to see every process's log.

mod backoff;
mod fake_arbiter;
mod helpers;
mod lease_loss;
mod purchase;
mod scripted;
mod stub;
