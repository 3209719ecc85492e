//! `stock-watcher`: parses flags, sets up logging, binds, and runs the
//! watcher until SIGTERM or SIGINT.

use clap::Parser;
use stock_watcher::config::{LogFormat, WatcherConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = WatcherConfig::parse();
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: docker logs and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "cannot listen");
            eprintln!("stock-watcher: cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::from(2);
        }
    };
    match stock_watcher::run(
        listener,
        config,
        purchase_arbiter::signals::shutdown_signal(),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stock watcher stopped");
            eprintln!("stock-watcher: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
