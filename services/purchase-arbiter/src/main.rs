//! `purchase-arbiter`: parses flags, sets up logging, binds, and runs the
//! server until SIGTERM or SIGINT.

use clap::Parser;
use purchase_arbiter::config::{ArbiterConfig, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
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
        Err(e) => {
            eprintln!("purchase-arbiter: cannot start the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(config: ArbiterConfig) -> std::process::ExitCode {
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
            eprintln!("purchase-arbiter: cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::from(2);
        }
    };
    match purchase_arbiter::run(
        listener,
        config,
        purchase_arbiter::signals::shutdown_signal(),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "purchase arbiter stopped");
            eprintln!("purchase-arbiter: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
