//! `restock-notifier`: parses flags, sets up logging, binds, and runs the
//! notifier until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use restock_notifier::config::NotifierConfig;
use restock_runtime::{process, shutdown_signal};

const BINARY: &str = "restock-notifier";

#[tokio::main]
async fn main() -> ExitCode {
    let config = NotifierConfig::parse();
    config.log.init("info");
    if let Err(e) = restock_notifier::check(&config) {
        return process::fail(BINARY, &e, process::EXIT_START);
    }
    process::serve(BINARY, "grpc", config.listen, |listener| {
        restock_notifier::run(listener, config, shutdown_signal())
    })
    .await
}
