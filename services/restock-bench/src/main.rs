//! `restock-bench`: parses flags, sets up logging, runs the benchmark until it
//! ends or Ctrl-C / SIGTERM stops it (every process it started is killed then).

use std::process::ExitCode;

use clap::Parser;
use restock_bench::config::BenchConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = BenchConfig::parse();
    // Progress goes to stderr; stdout carries only the results table.
    restock_runtime::log::init_stderr("info");
    tokio::select! {
        result = restock_bench::run(config) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "benchmark failed");
                eprintln!("restock-bench: {e:#}");
                ExitCode::from(1)
            }
        },
        () = restock_runtime::shutdown_signal() => {
            // Dropping the run future kills every child process it owns.
            eprintln!("restock-bench: stopped by a signal; child processes killed");
            ExitCode::from(130)
        }
    }
}
