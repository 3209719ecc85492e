//! Test support for every restock test suite: one way to start each real
//! binary, the real arbiter in-process, one scripted arbiter, and builders
//! for event histories.
//!
//! Nothing here guesses a free port. Servers are started with
//! `--listen 127.0.0.1:0 --ready-file PATH` and the test reads the address
//! the server bound from that file (bind, release and hope is a race that
//! loses on a busy machine). In-process servers bind `127.0.0.1:0`
//! themselves and hand the listener over.
//!
//! # Layout
//!
//! - [`process`]: [`Process`], one running binary: started with its output
//!   in a log file, asked for the address it announced, signalled, killed
//!   and restarted on the same address, its log printed when a test fails
//!   (or always, with `TEST_LOG`).
//! - [`arbiter`]: [`ArbiterProcess`] (the binary), [`spawn_arbiter`] (the
//!   same server in this process), both set up by [`ArbiterOptions`], and
//!   [`ArbiterEndpoint`], what a test needs of any arbiter: its address, a
//!   client, its status and its events.
//! - [`watcher`]: [`WatcherProcess`], set up by [`WatcherOptions`].
//! - [`store_sim`]: [`StoreSimProcess`], the store simulator binary.
//! - [`notifier`]: [`NotifierProcess`], the notifier binary.
//! - [`scripted`]: [`ScriptedArbiter`], for what a correct arbiter never
//!   does on demand: grants and revocations pushed down a watcher's stream,
//!   failed releases, scripted statuses and event histories. It records
//!   every call made to it.
//! - [`history`]: builders for `pb::Event` histories and status snapshots.
//! - [`stream`]: [`WatcherStream`], a watcher's stream played by the test.
//! - [`wait`]: [`eventually`] and the health checks; never a fixed sleep.
//! - [`net`]: [`ClosedPort`], an address where nobody listens, and
//!   [`ReservedPort`], a port held for a server that must be told its
//!   address before it starts.
//! - [`etcd`]: [`EtcdCluster`], a real etcd cluster of N members on
//!   loopback (Debian's `etcd`, when installed), for the arbiter replicas
//!   ([`ArbiterProcess::start_replica`]).
//! - [`grpcurl`]: the real `grpcurl`, when installed.
//! - [`metrics`]: scraping `/metrics`, reading a series, and the real
//!   `promtool check metrics`, when installed.
//! - [`browser`]: [`Browser`], a headless Chromium driven through
//!   Debian's `chromedriver`, when installed: open a page, wait for it,
//!   read it, its console log, and a screenshot.
//!
//! The binaries are looked up in the test executable's profile folder
//! (`target/debug/`), so run `cargo build --workspace --bins` before
//! `cargo test` (the README's test command does both).

pub mod arbiter;
pub mod browser;
pub mod etcd;
pub mod grpcurl;
pub mod history;
pub mod metrics;
pub mod net;
pub mod notifier;
pub mod process;
pub mod scripted;
pub mod store_sim;
pub mod stream;
pub mod wait;
pub mod watcher;

use std::{
    fs,
    path::{Path, PathBuf},
};

pub use arbiter::{
    ArbiterEndpoint, ArbiterOptions, ArbiterProcess, EtcdStore, InProcessArbiter, event_kind,
    product, spawn_arbiter, spawn_arbiter_with,
};
pub use browser::{Browser, LogEntry, Viewport};
pub use etcd::{EtcdCluster, etcd_binary, etcd_required};
pub use grpcurl::{grpcurl, run_grpcurl};
pub use history::{History, StatusSnapshot};
pub use metrics::{check_metrics, metric, promtool, scrape};
pub use net::{ClosedPort, ReservedPort};
pub use notifier::NotifierProcess;
pub use process::{Announce, Process};
pub use scripted::{Call, Release, Script, ScriptedArbiter};
pub use store_sim::{Poll, StoreSimProcess, poll_gaps, purchased};
pub use stream::WatcherStream;
pub use wait::{eventually, wait_healthy, wait_serving};
pub use watcher::{WatcherOptions, WatcherProcess};

/// The folder holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary, or a panic that says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/restock-testkit is two folders below the top")
        .to_path_buf()
}

/// Products in the arbiter's config format, named `Product <id>`, in this
/// priority order.
pub fn products_json(tcins: &[&str]) -> serde_json::Value {
    tcins
        .iter()
        .map(|t| serde_json::json!({"tcin": t, "name": format!("Product {t}")}))
        .collect()
}

/// Writes `dir/product_config.json` holding these product entries (the
/// arbiter's format; the store simulator reads the same file).
pub fn write_products(dir: &Path, products: &serde_json::Value) -> PathBuf {
    let path = dir.join("product_config.json");
    let text = serde_json::json!({ "products": products });
    fs::write(&path, serde_json::to_vec_pretty(&text).expect("JSON")).expect("write config");
    path
}

/// Writes a product config with these ids, in this priority order.
pub fn write_product_config(dir: &Path, tcins: &[&str]) -> PathBuf {
    write_products(dir, &products_json(tcins))
}

/// Shows the logs of servers run inside the test process when `TEST_LOG`
/// is set, as the processes' logs are (zero2prod's rule: quiet unless
/// asked). Idempotent.
pub fn init_test_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}
