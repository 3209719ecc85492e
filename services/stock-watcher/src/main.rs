//! `stock-watcher`: parses flags, sets up logging, binds, and runs the
//! watcher until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use restock_runtime::{process, shutdown_signal};
use stock_watcher::config::WatcherConfig;

const BINARY: &str = "stock-watcher";

#[tokio::main]
async fn main() -> ExitCode {
    let config = WatcherConfig::parse();
    config.log.init("info");
    process::serve(BINARY, "grpc", config.listen, |listener| {
        stock_watcher::run(listener, config, shutdown_signal())
    })
    .await
}
