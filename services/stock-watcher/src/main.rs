//! `stock-watcher`: parses flags, sets up logging, binds, and runs the
//! watcher until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use restock_runtime::{announce, process, shutdown_signal};
use stock_watcher::config::WatcherConfig;

const BINARY: &str = "stock-watcher";

#[tokio::main]
async fn main() -> ExitCode {
    let config = WatcherConfig::parse();
    config.log.init("info");
    let listener = match announce::bind("grpc", config.listen).await {
        Ok(l) => l,
        Err(e) => return process::fail(BINARY, &e, process::EXIT_START),
    };
    process::finish(
        BINARY,
        stock_watcher::run(listener, config, shutdown_signal()).await,
    )
}
