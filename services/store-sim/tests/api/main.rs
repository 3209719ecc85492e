//! HTTP tests: each starts the simulator in-process on `127.0.0.1:0` and
//! talks to it with a real HTTP client over a real socket. Set `TEST_LOG=1`
//! to see the server's logs.

mod bad_input;
mod blocks;
mod checkout;
mod endpoints;
mod faults;
mod fulfillment;
mod helpers;
mod metrics;
mod polls;
mod recorded;
mod shopify;
mod shopify_blocks;
