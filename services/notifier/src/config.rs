//! Command-line flags, each with an environment variable, and their
//! defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use restock_domain::duration::{parse_duration, parse_positive_duration};
use restock_runtime::{
    LogArgs, ReadyFileArgs,
    auth::{ClientTlsArgs, ServerTlsArgs, TokenArgs},
    http::HttpListen,
};

pub const DEFAULT_ARBITER: &str = "http://127.0.0.1:50051";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:50053";
pub const DEFAULT_STATE_FILE: &str = "data/notifier-state.json";
pub const DEFAULT_HOLD_DOWN: &str = "60s";
pub const DEFAULT_STUCK_AFTER: &str = "120s";
pub const DEFAULT_NO_WATCHERS_AFTER: &str = "120s";
pub const DEFAULT_UNREACHABLE_AFTER: &str = "60s";
pub const DEFAULT_RATE_PER_MINUTE: &str = "30";
pub const DEFAULT_RATE_BURST: &str = "5";
pub const DEFAULT_DELIVERY_DEADLINE: &str = "30m";
pub const DEFAULT_RETRY_INITIAL: &str = "1s";
pub const DEFAULT_RETRY_MAX: &str = "60s";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "10s";
pub const DEFAULT_TEST_DEADLINE: &str = "30s";
pub const DEFAULT_RECONNECT_MAX: &str = "10s";
pub const DEFAULT_RPC_TIMEOUT: &str = "5s";

/// The notifier's flags.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "restock-notifier",
    version,
    about = "Follows the purchase arbiter's events and sends one alert per restock, checkout and purchase to webhooks, Discord, Slack, ntfy, Telegram, email or a command"
)]
pub struct NotifierConfig {
    /// The purchase arbiter's gRPC URL, or every replica's, comma-separated
    /// (http://a:50051,http://b:50051). Events are followed at the leader:
    /// a follower names it, and a replica that cannot be reached is skipped
    /// for the next URL; after a failover the stream resumes at the new
    /// leader from the saved position.
    #[arg(long, env = "RESTOCK_ARBITER", default_value = DEFAULT_ARBITER)]
    pub arbiter: String,

    /// A destination URL (repeatable; the variable takes several separated
    /// by white space or commas): json://, jsons://, discord://, slack://,
    /// ntfy://, ntfys://, tgram://, mailto://, mailtos://, exec:///. Add
    /// `?events=in_stock,purchased` to choose what goes there and, for the
    /// hosted services, `?base=http://host:port` for another server. None:
    /// alerts are only logged.
    #[arg(long = "notify", env = "RESTOCK_NOTIFY")]
    pub notify: Vec<String>,

    /// The alert kinds destinations without `?events=` receive (comma
    /// separated, or `all`): in_stock, checkout_started, purchased,
    /// checkout_failed, stuck, no_watchers, arbiter_unreachable,
    /// missed_events, source_blocked, source_unblocked, budget_exhausted,
    /// budget_available.
    #[arg(long, env = "RESTOCK_NOTIFY_EVENTS", default_value = "all")]
    pub events: String,

    /// Address to serve the notifier's gRPC (status, test, health,
    /// reflection) on.
    #[arg(long, env = "RESTOCK_NOTIFIER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Where to serve `GET /metrics` (Prometheus) and `GET /healthz` over
    /// HTTP, or `off`.
    #[arg(long, env = restock_runtime::http::HTTP_LISTEN_ENV, default_value = "off")]
    pub http_listen: HttpListen,

    /// The event position, the outbox of undelivered alerts and the
    /// delivery records. Empty: memory only (a restart forgets them).
    #[arg(long, env = "RESTOCK_NOTIFIER_STATE_FILE", default_value = DEFAULT_STATE_FILE, value_parser = path_or_empty)]
    pub state_file: PathBuf,

    /// A product back in stock is alerted again only after it was out of
    /// stock everywhere for at least this long.
    #[arg(long, env = "RESTOCK_HOLD_DOWN", default_value = DEFAULT_HOLD_DOWN, value_parser = parse_duration)]
    pub hold_down: Duration,

    /// A lease held this long is alerted as stuck.
    #[arg(long, env = "RESTOCK_STUCK_AFTER", default_value = DEFAULT_STUCK_AFTER, value_parser = parse_positive_duration)]
    pub stuck_after: Duration,

    /// No watcher connected to the arbiter for this long is alerted.
    #[arg(long, env = "RESTOCK_NO_WATCHERS_AFTER", default_value = DEFAULT_NO_WATCHERS_AFTER, value_parser = parse_positive_duration)]
    pub no_watchers_after: Duration,

    /// The arbiter unreachable from the notifier for this long is alerted
    /// (once per outage).
    #[arg(long, env = "RESTOCK_UNREACHABLE_AFTER", default_value = DEFAULT_UNREACHABLE_AFTER, value_parser = parse_positive_duration)]
    pub unreachable_after: Duration,

    /// Alerts a minute per destination (a token bucket refilled at this
    /// rate).
    #[arg(long, env = "RESTOCK_NOTIFY_RATE", default_value = DEFAULT_RATE_PER_MINUTE, value_parser = parse_rate)]
    pub rate_per_minute: f64,

    /// Alerts a destination may get at once before the rate applies.
    #[arg(long, env = "RESTOCK_NOTIFY_BURST", default_value = DEFAULT_RATE_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: u32,

    /// How long an alert is retried (from when it was queued) before it is
    /// recorded as failed.
    #[arg(long, env = "RESTOCK_DELIVERY_DEADLINE", default_value = DEFAULT_DELIVERY_DEADLINE, value_parser = parse_positive_duration)]
    pub delivery_deadline: Duration,

    /// First wait before retrying a failed delivery (doubles, with jitter).
    #[arg(long, env = "RESTOCK_RETRY_INITIAL", default_value = DEFAULT_RETRY_INITIAL, value_parser = parse_positive_duration)]
    pub retry_initial: Duration,

    /// Longest wait between retries.
    #[arg(long, env = "RESTOCK_RETRY_MAX", default_value = DEFAULT_RETRY_MAX, value_parser = parse_positive_duration)]
    pub retry_max: Duration,

    /// Time limit of one request to a destination (HTTP, SMTP, a command).
    #[arg(long, env = "RESTOCK_NOTIFY_TIMEOUT", default_value = DEFAULT_REQUEST_TIMEOUT, value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// How long a test alert (SendTest, `restockctl notify test`) may take,
    /// retries included.
    #[arg(long, env = "RESTOCK_TEST_DEADLINE", default_value = DEFAULT_TEST_DEADLINE, value_parser = parse_positive_duration)]
    pub test_deadline: Duration,

    /// Longest wait between attempts to reach the arbiter.
    #[arg(long, env = "RESTOCK_RECONNECT_MAX", default_value = DEFAULT_RECONNECT_MAX, value_parser = parse_positive_duration)]
    pub reconnect_max: Duration,

    /// Time limit of a call to the arbiter (GetStatus, opening the stream).
    #[arg(long, env = "RESTOCK_RPC_TIMEOUT", default_value = DEFAULT_RPC_TIMEOUT, value_parser = parse_positive_duration)]
    pub rpc_timeout: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    #[command(flatten)]
    pub ready: ReadyFileArgs,

    /// TLS of the notifier's own gRPC server.
    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// TLS towards the arbiter.
    #[command(flatten)]
    pub arbiter_tls: ClientTlsArgs,

    /// The shared token: sent to the arbiter, and required by the
    /// notifier's own service (health and reflection stay open).
    #[command(flatten)]
    pub token: TokenArgs,
}

impl NotifierConfig {
    /// The state file, or `None` for memory only.
    pub fn state_path(&self) -> Option<PathBuf> {
        (!self.state_file.as_os_str().is_empty()).then(|| self.state_file.clone())
    }
}

/// A path, where empty is allowed (it means "none").
fn path_or_empty(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate above 0 (alerts a minute)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        NotifierConfig::command().debug_assert();
    }

    #[test]
    fn notify_repeats() {
        let c = NotifierConfig::try_parse_from([
            "restock-notifier",
            "--notify",
            "json://a/b",
            "--notify",
            "exec:///bin/true",
        ])
        .unwrap();
        assert_eq!(c.notify.len(), 2);
        assert!(parse_rate("0").is_err());
    }
}
