//! `restockctl`: parses the command line, sets up logging (stderr, `RUST_LOG`,
//! warnings only by default) and runs the command.

use std::process::ExitCode;

use clap::Parser;
use restockctl::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread is plenty for a command-line client.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("restockctl: cannot start the async runtime: {e}");
            return ExitCode::from(restockctl::error::EXIT_NEGATIVE);
        }
    };
    ExitCode::from(runtime.block_on(restockctl::run(cli)))
}
