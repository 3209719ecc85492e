//! `restockctl`: watch and steer a restock purchase arbiter from a terminal.
//!
//! # Layout
//!
//! - [`cli`]: flags, subcommands and their defaults; the exit codes.
//! - [`client`]: the server URL (or the arbiter replicas' URLs, and finding
//!   the leader among them), connecting, and one call with a time limit.
//! - [`error`]: what can fail, its message, and its exit code.
//! - [`format`]: times, durations, enum names, event lines, JSON shapes.
//! - [`status`]: `status` as tables or JSON.
//! - [`feed`]: a `WatchEvents` stream that resumes after disconnects (at
//!   the new leader after a failover).
//! - [`events`]: `events [--follow] [--from N]`.
//! - [`monitor`]: `monitor`: follows events and status snapshots, converts
//!   them to domain types and feeds them to the domain's history checker
//!   ([`restock_domain::history`], pure and unit-tested on made-up
//!   histories there); [`monitor::report`] renders the cycle history and
//!   summary.
//! - [`operator`]: `reset`, `pause`, `resume`, `reload`, `acquire`, `renew`,
//!   `release`.
//! - [`health`]: `health`, against any gRPC server with the standard health
//!   service.
//! - [`notify`]: `notify test` and `notify status`, against the notifier.
//!
//! [`run`] executes a parsed command line and returns the exit code; the
//! binary only parses, sets up logging and calls it.

pub mod cli;
pub mod client;
pub mod error;
pub mod events;
pub mod feed;
pub mod format;
pub mod health;
pub mod monitor;
pub mod notify;
pub mod operator;
pub mod status;

use cli::{Cli, Command, NotifyCommand};
use client::Target;
use error::{CtlError, EXIT_NEGATIVE, EXIT_OK};

/// Runs one command; returns the process exit code. Errors are printed to
/// stderr as `restockctl: <what failed>`.
pub async fn run(cli: Cli) -> u8 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match execute(cli, &mut out).await {
        Ok(code) => code,
        // `restockctl events | head`: the reader is gone, nothing to say.
        Err(e) if e.is_broken_pipe() => EXIT_OK,
        Err(e) => {
            eprintln!("restockctl: {e}");
            e.exit_code()
        }
    }
}

async fn execute(cli: Cli, out: &mut dyn std::io::Write) -> Result<u8, CtlError> {
    let target = match cli.command {
        // Any one gRPC server: the first --arbiter URL.
        Command::Health { .. } => {
            Target::arbiters(&cli.arbiter, cli.timeout, &cli.tls(), &cli.token())?
                .with_role("server")
        }
        Command::Notify(_) => Target::new(&cli.notifier, cli.timeout, "notifier")?
            .secured(&cli.tls(), &cli.token())?,
        _ => Target::arbiters(&cli.arbiter, cli.timeout, &cli.tls(), &cli.token())?,
    };
    let json = cli.json;
    match cli.command {
        Command::Status => status::run(&target, json, out).await.map(|()| EXIT_OK),
        Command::Events(args) => events::run(&target, &args, json, out)
            .await
            .map(|()| EXIT_OK),
        Command::Monitor(args) => monitor::run(&target, &args, json, out)
            .await
            .map(|clean| if clean { EXIT_OK } else { EXIT_NEGATIVE }),
        Command::Reset { tcin } => operator::reset(&target, &tcin, json, out).await,
        Command::Pause => operator::set_paused(&target, true, json, out).await,
        Command::Resume => operator::set_paused(&target, false, json, out).await,
        Command::Reload => operator::reload(&target, json, out).await,
        Command::Acquire {
            tcin,
            watcher_id,
            request_id,
        } => {
            operator::acquire(
                &target,
                &tcin,
                &watcher_id,
                request_id.as_deref(),
                json,
                out,
            )
            .await
        }
        Command::Renew { lease_id, token } => {
            operator::renew(&target, &lease_id, token, json, out).await
        }
        Command::Release {
            lease_id,
            token,
            outcome,
            detail,
            paid,
        } => {
            operator::release(
                &target,
                &lease_id,
                token,
                (outcome, paid),
                detail.as_deref(),
                json,
                out,
            )
            .await
        }
        Command::Budget(cmd) => operator::budget(&target, cmd, json, out).await,
        Command::Health { service } => health::run(&target, &service, json, out).await,
        Command::Notify(NotifyCommand::Test { notify }) => {
            notify::test(&target, notify.as_deref(), json, out).await
        }
        Command::Notify(NotifyCommand::Status) => notify::status(&target, json, out).await,
    }
}
