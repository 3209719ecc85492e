//! `restock-bench`: parses flags, sets up logging, runs the benchmark until it
//! ends or Ctrl-C / SIGTERM stops it (every process it started is killed then).

use clap::Parser;
use restock_bench::config::BenchConfig;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = BenchConfig::parse();
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Progress goes to stderr; stdout carries only the results table.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::select! {
        result = restock_bench::run(config) => match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "benchmark failed");
                eprintln!("restock-bench: {e:#}");
                std::process::ExitCode::from(1)
            }
        },
        () = stop_signal() => {
            // Dropping the run future kills every child process it owns.
            eprintln!("restock-bench: stopped by a signal; child processes killed");
            std::process::ExitCode::from(130)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
