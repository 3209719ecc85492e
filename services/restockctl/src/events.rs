//! `restockctl events`: the arbiter's event stream, one line per event.
//! Without `--follow` it prints the history the arbiter still holds (up to
//! the newest event at the moment it asked) and exits; with `--follow` it
//! keeps going and resumes after a disconnect.

use std::{io::Write, time::Instant};

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
    let (at, client, from, until) = if args.follow {
        match args.from {
            Some(n) => {
                let (at, client) = target.connect_leader().await?;
                (at, client, n, None)
            }
            // Start after the newest event rather than with "only new
            // events" (0), so that a resume after a disconnect knows where
            // it is even if nothing happened before the disconnect.
            None => {
                let (at, client, status) = target.find_leader().await?;
                (at, client, status.last_event_sequence + 1, None)
            }
        }
    } else {
        let (at, client, status) = target.find_leader().await?;
        let last = status.last_event_sequence;
        let from = args.from.unwrap_or(1);
        if from > last || last == 0 {
            return Ok(());
        }
        (at, client, from, Some(last))
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let _feed = AbortOnDrop(feed::spawn(target.clone(), at.clone(), client, from, tx));
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
                url,
                error,
                retry_in,
                next,
                next_url,
            } => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if !args.follow && since.elapsed() >= target.timeout {
                    return Err(CtlError::Unreachable {
                        role: target.role,
                        url,
                        reason: format!("WatchEvents: {error}"),
                    });
                }
                let at = if next_url == url {
                    String::new()
                } else {
                    format!(" at {next_url}")
                };
                eprintln!(
                    "restockctl: event stream from {url} lost ({error}); resuming from #{next}{at} in {}",
                    duration(retry_in)
                );
            }
            FeedItem::Resumed { from, url } => {
                if url == at.url {
                    eprintln!("restockctl: event stream resumed from #{from}");
                } else {
                    eprintln!("restockctl: event stream resumed from #{from} at {url}");
                }
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
