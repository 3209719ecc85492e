//! `restockctl`: parses the command line, sets up logging (stderr, `RUST_LOG`,
//! warnings only by default) and runs the command.

use std::process::ExitCode;

use clap::Parser;
use restockctl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    restock_runtime::log::init_stderr("warn");
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
