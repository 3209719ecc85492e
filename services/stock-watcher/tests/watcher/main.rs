//! Integration tests: the real `stock-watcher` binary as a process (or its
//! library in-process), with an in-test HTTP stub playing the store (the
//! Target fulfillment format and a recording checkout endpoint) and an
//! arbiter from `restock-testkit`: the real one in this process where the
//! test only talks to it, the real binary where the test kills, freezes or
//! restarts it, and the scripted one for what a correct arbiter never does.
//! The metrics tests use the store simulator binary instead of the stub.
//!
//! Build the binaries first: `cargo build --workspace --bins`. Set
//! `TEST_LOG=1` to see every process's log.

mod backoff;
mod blocks;
mod helpers;
mod lease_loss;
mod metrics;
mod polls;
mod purchase;
mod scripted;
mod stub;
