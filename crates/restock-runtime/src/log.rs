//! Logging set-up, the same in every binary: `RUST_LOG` sets the filter,
//! `--log-format` (`RESTOCK_LOG_FORMAT`) picks text or JSON lines, and
//! colours appear only on a terminal (docker logs and files get plain text).

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `--log-format`, flattened into every service's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log line format (RUST_LOG sets the filter).
    #[arg(long, env = "RESTOCK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber for a service: lines on stdout,
    /// `default_filter` when `RUST_LOG` is unset. A second call (tests that
    /// run a service in-process twice) is ignored.
    pub fn init(&self, default_filter: &str) {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter(default_filter))
            .with_ansi(std::io::stdout().is_terminal());
        let _ = match self.log_format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
    }
}

/// Installs the global subscriber for a command-line tool: lines on stderr
/// (stdout is the command's output), `default_filter` when `RUST_LOG` is
/// unset.
pub fn init_stderr(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn filter(default_filter: &str) -> EnvFilter {
    EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter))
}
