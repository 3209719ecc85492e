//! `restockctl events`: the arbiter's event stream, one line per event.
//! Without `--follow` it prints the history the arbiter still holds (up to
//! the newest event at the moment it asked) and exits; with `--follow` it
//! keeps going and resumes after a disconnect.

use std::{io::Write, time::Instant};

use restock_proto::v1::{self as pb, purchase_arbiter_client::PurchaseArbiterClient};
use tokio::sync::mpsc;

use crate::{
    cli::EventsArgs,
    client::Target,
    error::CtlError,
    feed::{self, AbortOnDrop, FeedItem},
    format::{EventJson, duration, event_line},
};

/// Prints events as asked by `args`.
pub async fn run(
    target: &Target,
    args: &EventsArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut client = PurchaseArbiterClient::new(target.connect().await?);
    let (from, until) = if args.follow {
        let from = match args.from {
            Some(n) => n,
            // Start after the newest event rather than with "only new
            // events" (0), so that a resume after a disconnect knows where
            // it is even if nothing happened before the disconnect.
            None => last_sequence(target, &mut client).await? + 1,
        };
        (from, None)
    } else {
        let last = last_sequence(target, &mut client).await?;
        let from = args.from.unwrap_or(1);
        if from > last || last == 0 {
            return Ok(());
        }
        (from, Some(last))
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let _feed = AbortOnDrop(feed::spawn(client, from, tx));
    // Without --follow a broken stream is retried for --timeout at most.
    let mut lost_since: Option<Instant> = None;
    while let Some(item) = rx.recv().await {
        match item {
            FeedItem::Event(e) => {
                lost_since = None;
                if json {
                    serde_json::to_writer(&mut *out, &EventJson::from(&e))
                        .map_err(std::io::Error::from)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", event_line(&e))?;
                }
                out.flush()?;
                if until.is_some_and(|u| e.sequence >= u) {
                    return Ok(());
                }
            }
            FeedItem::Lost {
                error,
                retry_in,
                next,
            } => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if !args.follow && since.elapsed() >= target.timeout {
                    return Err(CtlError::Unreachable {
                        role: target.role,
                        url: target.url.clone(),
                        reason: format!("WatchEvents: {error}"),
                    });
                }
                eprintln!(
                    "restockctl: event stream from {} lost ({error}); resuming from #{next} in {}",
                    target.url,
                    duration(retry_in)
                );
            }
            FeedItem::Resumed { from } => {
                eprintln!("restockctl: event stream resumed from #{from}");
            }
            FeedItem::Missed { from, to } => {
                eprintln!(
                    "restockctl: events #{from}..#{to} are no longer held by the arbiter and were missed"
                );
            }
        }
    }
    Ok(())
}

async fn last_sequence(
    target: &Target,
    client: &mut PurchaseArbiterClient<crate::client::Channel>,
) -> Result<u64, CtlError> {
    Ok(target
        .call("GetStatus", client.get_status(pb::GetStatusRequest {}))
        .await?
        .last_event_sequence)
}
