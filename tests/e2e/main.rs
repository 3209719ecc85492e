//! End-to-end tests: the real binaries, started as processes on ports they
//! choose and announce (`--listen 127.0.0.1:0 --ready-file`), spoken to over
//! real gRPC (and, where installed, the real `grpcurl`, and the status page
//! in headless Chromium), and a real etcd cluster where Debian's `etcd` is
//! installed (`RESTOCK_REQUIRE_ETCD=1` makes a missing one an error).
//!
//! Build the binaries first: `cargo build --workspace --bins` (the README's
//! test command does). Set `TEST_LOG=1` to see every service's log.

mod arbiter;
mod arbiter_faults;
mod arbiter_grpcurl;
mod budget;
mod cycle;
mod etcd;
mod ha;
mod helpers;
mod hostile;
mod http_api;
mod metrics;
mod notifier;
mod poll_plan;
mod raw_h2;
mod retailers;
mod security;
mod status_page;
