//! Command-line flags and subcommands, each global flag with an environment
//! variable, and the `DEFAULT_*` values they fall back to.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use restock_domain::duration::{parse_duration, parse_positive_duration};
use restock_proto::v1 as pb;
use restock_runtime::auth::{ClientTlsArgs, TokenArgs};

/// Where the arbiter listens unless `--arbiter` or `RESTOCK_ARBITER` says.
pub const DEFAULT_ARBITER: &str = "http://127.0.0.1:50051";
/// Where the notifier listens unless `--notifier` or `RESTOCK_NOTIFIER` says.
pub const DEFAULT_NOTIFIER: &str = "http://127.0.0.1:50053";
/// Time limit for connecting and for each unary call.
pub const DEFAULT_TIMEOUT: &str = "10s";
/// How long `monitor` watches.
pub const DEFAULT_MONITOR_DURATION: &str = "300s";
/// How often `monitor` takes a status snapshot.
pub const DEFAULT_MONITOR_INTERVAL: &str = "2s";
/// How long a purchase may sit in ATTEMPTING (or QUEUED with the slot free)
/// before `monitor` calls it stuck.
pub const DEFAULT_STUCK_AFTER: &str = "120s";

const EXIT_CODES: &str = "\
Exit codes:
  0  success (monitor: no problem found; health: SERVING; acquire: granted;
     notify test: every destination took the test alert)
  1  a negative answer: monitor found a problem, health is not SERVING,
     acquire was refused, a test alert was not delivered
  2  bad command line
  3  cannot reach the server: connection refused, timed out, or UNAVAILABLE
  4  the server answered with an error status (e.g. FAILED_PRECONDITION for a
     stale lease, NOT_FOUND for an unknown product)

Durations take a unit (500ms, 2s, 5m) or are seconds (300).";

/// Watch and steer a restock purchase arbiter from the command line.
#[derive(Debug, Parser)]
#[command(name = "restockctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The arbiter's gRPC URL, or every replica's, comma-separated
    /// (http://a:50051,http://b:50051); a bare host:port means
    /// http://host:port. Every command goes to the leader: a follower's
    /// status names it, an UNAVAILABLE answer's restock-leader trailer
    /// too, and a replica that cannot be reached is skipped for the next;
    /// `events` and `monitor` follow a new leader. For `health`: any gRPC
    /// server (the first URL).
    #[arg(long, global = true, env = "RESTOCK_ARBITER", default_value = DEFAULT_ARBITER)]
    pub arbiter: String,

    /// The notifier's gRPC URL (for `notify`).
    #[arg(long, global = true, env = "RESTOCK_NOTIFIER", default_value = DEFAULT_NOTIFIER)]
    pub notifier: String,

    /// Time limit for connecting and for each unary call.
    #[arg(long, global = true, env = "RESTOCK_TIMEOUT", default_value = DEFAULT_TIMEOUT, value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print JSON for scripts instead of text (`events`: one object per line;
    /// `monitor`: the final report on stdout, live lines on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// PEM CA certificate(s) to trust for the server; turns TLS on (an
    /// http:// URL is then used as https://). An https:// URL without it
    /// trusts the usual public CAs.
    #[arg(long, global = true, env = "RESTOCK_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that require one (mutual TLS);
    /// needs --tls-client-key.
    #[arg(long, global = true, env = "RESTOCK_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(long, global = true, env = "RESTOCK_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,

    /// File holding the shared bearer token, sent on every call.
    /// RESTOCK_AUTH_TOKEN holds the token itself instead.
    #[arg(long, global = true, env = "RESTOCK_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The TLS flags, in the form every binary shares.
    pub fn tls(&self) -> ClientTlsArgs {
        ClientTlsArgs {
            tls_ca: self.tls_ca.clone(),
            tls_client_cert: self.tls_client_cert.clone(),
            tls_client_key: self.tls_client_key.clone(),
        }
    }

    /// The token flag, in the form every binary shares.
    pub fn token(&self) -> TokenArgs {
        TokenArgs {
            auth_token_file: self.auth_token_file.clone(),
        }
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The slot (holder, product, token, time left), every product with its
    /// priority, state and purchases, every watcher, the counters.
    Status,
    /// The arbiter's event stream, one line per event. Without --follow,
    /// prints the history still held by the arbiter and exits.
    Events(EventsArgs),
    /// Watches the running system for a while and reports transitions,
    /// product switches mid-cycle, concurrent purchase attempts and stuck
    /// purchases, then a cycle history and a summary. Exits 1 when it found
    /// a problem.
    Monitor(MonitorArgs),
    /// Puts a product back to READY (clears purchased/failed and its count).
    Reset {
        /// The product id.
        tcin: String,
    },
    /// Kill switch: the arbiter grants nothing until `resume`; the current
    /// lease runs to its end.
    Pause,
    /// Lets the arbiter grant again after `pause`.
    Resume,
    /// Makes the arbiter re-read its product configuration file.
    Reload,
    /// Asks for the purchase slot for a product (for manual testing).
    Acquire {
        /// The product id.
        tcin: String,
        /// The watcher the lease is for.
        #[arg(long)]
        watcher_id: String,
        /// Idempotency key: the same (watcher id, request id) gets the same
        /// answer and never a second lease.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Extends a lease by its TTL.
    Renew {
        lease_id: String,
        /// The lease's fencing token.
        token: u64,
    },
    /// Gives the slot back with the checkout's outcome.
    Release {
        lease_id: String,
        /// The lease's fencing token.
        token: u64,
        #[arg(long, value_enum)]
        outcome: OutcomeArg,
        /// Free text kept in the event history (order number, error).
        #[arg(long)]
        detail: Option<String>,
        /// With --outcome purchased: what the checkout paid, in dollars
        /// (counted against the budget instead of the reserved price).
        #[arg(long, value_parser = parse_dollars)]
        paid: Option<u64>,
    },
    /// The fleet's spending limit: shows it, or (with the token) replaces
    /// it, goes back to the product config's, or resets the spend record.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Asks the server's grpc.health.v1 service; exits 0 only when it says
    /// SERVING. Works against any gRPC server with the standard health
    /// service (the arbiter, a watcher), e.g. as a container health check.
    Health {
        /// The service to ask about; empty means the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// The notifier (`--notifier`): send a test alert, or show each
    /// destination's delivery record.
    #[command(subcommand)]
    Notify(NotifyCommand),
}

/// `budget` subcommands. Every change needs --reason: it goes into the
/// event history (BUDGET_CHANGED).
#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// The limits in force, spent, reserved and left.
    Show,
    /// Replaces the limits (until the product config's budget changes).
    Set {
        /// Most spend (dollars) in the window, counting the checkout in
        /// flight.
        #[arg(long, value_parser = parse_dollars, required_unless_present_any = ["max_purchases", "none"])]
        max_spend: Option<u64>,
        /// Most purchases in the window, counting the one in flight.
        #[arg(long)]
        max_purchases: Option<u32>,
        /// Spend older than this rolls off (24h, 7d); without it spend
        /// counts for ever.
        #[arg(long, value_parser = parse_positive_duration)]
        window: Option<Duration>,
        /// Lift every limit instead.
        #[arg(long, conflicts_with_all = ["max_spend", "max_purchases", "window"])]
        none: bool,
        /// Why (kept in the event history).
        #[arg(long)]
        reason: String,
    },
    /// Goes back to the product config's budget, dropping limits set here.
    UseConfig {
        #[arg(long)]
        reason: String,
    },
    /// Forgets the spend recorded so far (the checkout in flight, if any,
    /// keeps its reservation).
    Reset {
        #[arg(long)]
        reason: String,
    },
}

/// Dollars as typed (`49.99`) to cents.
fn parse_dollars(s: &str) -> Result<u64, String> {
    let d: f64 = s
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|e| format!("{s:?} is not an amount in dollars: {e}"))?;
    restock_domain::Price::from_dollars(d).map(restock_domain::Price::cents)
}

/// `notify` subcommands.
#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Sends a test alert and waits for the answer: exits 0 only when it
    /// was delivered (to every destination, or to the one named).
    Test {
        /// One destination: its URL as configured, as `notify status` shows
        /// it (redacted), or its position (1 = the first --notify).
        #[arg(long)]
        notify: Option<String>,
    },
    /// Every destination: sent, failed, pending, the last error.
    Status,
}

/// Flags of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep following new events; after a disconnect, resume where it left
    /// off, retrying with backoff.
    #[arg(long, short)]
    pub follow: bool,
    /// Start at this sequence number (default: the oldest event still held;
    /// with --follow, only new events).
    #[arg(long)]
    pub from: Option<u64>,
}

/// Flags of `monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// How long to watch.
    #[arg(long, default_value = DEFAULT_MONITOR_DURATION, value_parser = parse_duration)]
    pub duration: Duration,
    /// How often to take a status snapshot.
    #[arg(long, default_value = DEFAULT_MONITOR_INTERVAL, value_parser = parse_positive_duration)]
    pub interval: Duration,
    /// A purchase in ATTEMPTING this long, or QUEUED this long while the slot
    /// is free and the arbiter not paused, is stuck.
    #[arg(long, default_value = DEFAULT_STUCK_AFTER, value_parser = parse_duration)]
    pub stuck_after: Duration,
}

/// `--outcome` of `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    Purchased,
    Failed,
    OutOfStock,
    Aborted,
}

impl From<OutcomeArg> for pb::Outcome {
    fn from(o: OutcomeArg) -> Self {
        match o {
            OutcomeArg::Purchased => pb::Outcome::Purchased,
            OutcomeArg::Failed => pb::Outcome::Failed,
            OutcomeArg::OutOfStock => pb::Outcome::OutOfStock,
            OutcomeArg::Aborted => pb::Outcome::Aborted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn release_outcomes_are_spelled_with_dashes() {
        let cli = Cli::try_parse_from([
            "restockctl",
            "release",
            "lease-1",
            "1",
            "--outcome",
            "out-of-stock",
        ])
        .unwrap();
        match cli.command {
            Command::Release { outcome, .. } => assert_eq!(outcome, OutcomeArg::OutOfStock),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli =
            Cli::try_parse_from(["restockctl", "status", "--json", "--arbiter", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.arbiter, "h:1");
    }
}
