//! `purchase-arbiter`: parses flags, sets up logging, binds, and runs the
//! server until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use purchase_arbiter::config::ArbiterConfig;
use restock_runtime::{process, shutdown_signal};

const BINARY: &str = "purchase-arbiter";

fn main() -> ExitCode {
    let config = ArbiterConfig::parse();
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(serve(config)),
        Err(e) => process::fail(BINARY, &e, process::EXIT_FAILED),
    }
}

async fn serve(config: ArbiterConfig) -> ExitCode {
    config.log.init("info");
    process::serve(BINARY, "grpc", config.listen, |listener| {
        purchase_arbiter::run(listener, config, shutdown_signal())
    })
    .await
}
