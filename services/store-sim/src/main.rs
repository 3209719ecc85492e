//! `store-sim`: parses flags, sets up logging, loads the product list (and
//! scenario), binds, and serves until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use restock_runtime::{Bound, announce, process, shutdown_signal};
use store_sim::{Simulator, config::SimConfig};

const BINARY: &str = "store-sim";

#[tokio::main]
async fn main() -> ExitCode {
    let config = SimConfig::parse();
    config.log.init("info");
    let sim = match Simulator::from_config(&config) {
        Ok(s) => s,
        Err(e) => return process::fail(BINARY, &e, process::EXIT_START),
    };
    let listener = match announce::bind("http", config.listen).await {
        Ok(l) => l,
        Err(e) => return process::fail(BINARY, &e, process::EXIT_START),
    };
    if let Err(e) = Bound::new().add("http", &listener).announce(&config.ready) {
        return process::fail(BINARY, &e, process::EXIT_START);
    }
    process::finish(
        BINARY,
        store_sim::run(listener, sim, config.shutdown_grace, shutdown_signal()).await,
    )
}
