//! `restockctl monitor`: the gRPC plumbing around the domain's history
//! checker ([`restock_domain::history::Checker`], which the fault suite
//! uses too). It takes a first status snapshot, follows `WatchEvents` from
//! the point that snapshot describes (resuming after disconnects), polls
//! `GetStatus` every `--interval`, converts each message to domain types at
//! this edge (one that does not convert is a warning, not checked), feeds
//! it to the checker with its arrival time, prints what it reports as it
//! happens, and at the end (or on Ctrl-C) prints the cycle history and the
//! summary.

pub mod report;

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use restock_domain::{
    Event, Status,
    history::{Checker, Notice},
};
use restock_proto::{ROLE_FOLLOWER, v1 as pb};
use tokio::{sync::mpsc, task::JoinHandle, time::MissedTickBehavior};

pub use report::{Report, Window};

use crate::{
    cli::MonitorArgs,
    client::{ArbiterClient, Target},
    error::CtlError,
    feed::{self, AbortOnDrop, FeedItem},
    format::{duration, now_unix_ms},
};

/// How often the progress line is redrawn on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Watches for `args.duration`, prints live lines and the report; returns
/// whether the run was clean (no problem found).
pub async fn run(
    target: &Target,
    args: &MonitorArgs,
    json: bool,
    out: &mut dyn Write,
) -> Result<bool, CtlError> {
    let started = now_unix_ms();
    let (at, client, first) = target.find_leader().await?;
    let mut monitor = Checker::new(args.stuck_after);
    // Progress goes to stderr, and only to a terminal: never into a log or a
    // pipe.
    let mut live = Live {
        out,
        json,
        progress: std::io::stderr().is_terminal(),
        progress_shown: false,
    };
    let first_sequence = first.last_event_sequence;
    live.notices(observe_status(&mut monitor, first, now_unix_ms()))?;

    let (event_tx, mut events) = mpsc::channel(1024);
    let _feed = AbortOnDrop(feed::spawn(
        target.clone(),
        at.clone(),
        client.clone(),
        first_sequence + 1,
        event_tx,
    ));
    let (status_tx, mut statuses) = mpsc::channel(4);
    let _poller = AbortOnDrop(spawn_poller(
        target.clone(),
        at.clone(),
        client,
        args.interval,
        status_tx,
    ));
    live.line(&format!(
        "monitoring {} for {}: status every {}, stuck after {}; from event #{}",
        at.url,
        duration(args.duration),
        duration(args.interval),
        duration(args.stuck_after),
        first_sequence + 1
    ))?;

    let deadline = tokio::time::Instant::now() + args.duration;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut stream_lost_at: Option<u64> = None;
    let mut status_failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = &mut ctrl_c => {
                interrupted = true;
                break;
            }
            Some(item) = events.recv() => match item {
                FeedItem::Event(e) => live.notices(observe_event(&mut monitor, e, now_unix_ms()))?,
                FeedItem::Lost { error, retry_in, next, .. } => {
                    if stream_lost_at.is_none() {
                        stream_lost_at = Some(now_unix_ms());
                        let message = format!(
                            "event stream lost ({error}); resuming from #{next}, first retry in {}",
                            duration(retry_in)
                        );
                        live.notices(monitor.warn(message, now_unix_ms()))?;
                    }
                }
                FeedItem::Resumed { from, .. } => {
                    let lost_for = stream_lost_at
                        .take()
                        .map_or(0, |at| now_unix_ms().saturating_sub(at));
                    live.line(&format!(
                        "event stream resumed from #{from} after {}",
                        crate::format::duration_ms(lost_for)
                    ))?;
                }
                // The checker sees the sequence gap itself.
                FeedItem::Missed { .. } => {}
            },
            Some(polled) = statuses.recv() => match polled {
                Ok((status, received)) => {
                    if status_failing {
                        status_failing = false;
                        live.line("GetStatus answers again")?;
                    }
                    live.notices(observe_status(&mut monitor, status, received))?;
                }
                Err(e) => {
                    if !status_failing {
                        status_failing = true;
                        live.notices(monitor.warn(format!("status snapshot failed: {e}"), now_unix_ms()))?;
                    }
                }
            },
            _ = progress.tick(), if live.progress => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                live.show_progress(&format!(
                    "monitor: {} left, {} cycles, {} problems, event #{}",
                    duration(left),
                    monitor.completed_cycles(),
                    monitor.problems().len(),
                    monitor.last_sequence()
                ));
            }
        }
    }
    // Events already received happened inside the window.
    while let Ok(item) = events.try_recv() {
        if let FeedItem::Event(e) = item {
            live.notices(observe_event(&mut monitor, e, now_unix_ms()))?;
        }
    }
    live.clear_progress();

    let report = Report::new(
        &monitor,
        Window {
            arbiter: at.url.clone(),
            started_unix_ms: started,
            ended_unix_ms: now_unix_ms(),
            interrupted,
            stuck_after_ms: args.stuck_after.as_millis() as u64,
        },
    );
    if json {
        serde_json::to_writer_pretty(&mut *live.out, &report).map_err(std::io::Error::from)?;
        writeln!(live.out)?;
    } else {
        live.out.write_all(report.render().as_bytes())?;
    }
    live.out.flush()?;
    Ok(report.clean)
}

/// Feeds one event to the checker; one that is not a valid domain event
/// (an id out of its rules, a kind this build does not know) becomes a
/// warning, and the checker then sees its sequence number as missed.
fn observe_event(monitor: &mut Checker, e: pb::Event, received_unix_ms: u64) -> Vec<Notice> {
    let sequence = e.sequence;
    match Event::try_from(e) {
        Ok(e) => monitor.observe_event(&e, received_unix_ms),
        Err(error) => monitor.warn(
            format!("event #{sequence} could not be read ({error}); it is not checked"),
            received_unix_ms,
        ),
    }
}

/// Feeds one status snapshot to the checker; one that does not convert
/// becomes a warning.
fn observe_status(
    monitor: &mut Checker,
    s: pb::GetStatusResponse,
    received_unix_ms: u64,
) -> Vec<Notice> {
    let sequence = s.last_event_sequence;
    match Status::try_from(s) {
        Ok(s) => monitor.observe_status(&s, received_unix_ms),
        Err(error) => monitor.warn(
            format!(
                "a status snapshot (at event #{sequence}) could not be read ({error}); it is not used"
            ),
            received_unix_ms,
        ),
    }
}

/// Takes a status snapshot every `interval` and sends it with its arrival
/// time. A slow answer delays the next one rather than piling calls up.
/// After a failed one, or a snapshot from a replica that no longer leads,
/// the next is taken from the leader found anew (with several replicas).
fn spawn_poller(
    target: Target,
    at: Target,
    client: ArbiterClient,
    interval: Duration,
    tx: mpsc::Sender<Result<(pb::GetStatusResponse, u64), CtlError>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut link = Some((at, client));
        loop {
            ticker.tick().await;
            let polled = match link.take() {
                Some((at, mut client)) => {
                    let answer = at
                        .call("GetStatus", client.get_status(pb::GetStatusRequest {}))
                        .await;
                    let leads = answer.as_ref().is_ok_and(|s| s.role != ROLE_FOLLOWER);
                    if leads || !target.has_replicas() {
                        link = Some((at, client));
                    }
                    answer
                }
                None => target.find_leader().await.map(|(at, client, s)| {
                    link = Some((at, client));
                    s
                }),
            }
            .and_then(|s| {
                // A follower's answer holds no state: not a snapshot.
                if s.role == ROLE_FOLLOWER {
                    Err(CtlError::Unreachable {
                        role: target.role,
                        url: target.url.clone(),
                        reason: format!(
                            "GetStatus: no replica that leads answered (a follower names the leader as {:?})",
                            s.leader_url
                        ),
                    })
                } else {
                    Ok(s)
                }
            })
            .map(|s| (s, now_unix_ms()));
            if tx.send(polled).await.is_err() {
                return;
            }
        }
    })
}

/// Where live lines go: stdout, or stderr when stdout carries the JSON
/// report; and the progress line on a terminal, cleared before each line.
struct Live<'a> {
    out: &'a mut dyn Write,
    json: bool,
    progress: bool,
    progress_shown: bool,
}

impl Live<'_> {
    fn line(&mut self, text: &str) -> std::io::Result<()> {
        self.clear_progress();
        if self.json {
            eprintln!("{text}");
        } else {
            writeln!(self.out, "{text}")?;
            self.out.flush()?;
        }
        Ok(())
    }

    fn notices(&mut self, notices: Vec<Notice>) -> std::io::Result<()> {
        for n in &notices {
            self.line(&report::notice_line(n))?;
        }
        Ok(())
    }

    fn show_progress(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.progress_shown = true;
    }

    fn clear_progress(&mut self) {
        if self.progress_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.progress_shown = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_that_do_not_convert_are_warnings_not_checked() {
        let mut m = Checker::new(Duration::from_secs(120));
        let bad_event = pb::Event {
            sequence: 2,
            unix_ms: 1_000,
            kind: 99,
            ..Default::default()
        };
        let notices = observe_event(&mut m, bad_event, 1_000);
        assert!(
            matches!(notices.as_slice(), [Notice::Warning(w)]
                if w.message.starts_with("event #2 could not be read (kind: 99 is not a known event kind)")),
            "{notices:#?}"
        );
        let bad_status = pb::GetStatusResponse {
            products: vec![pb::ProductStatus {
                tcin: "a b".into(),
                state: pb::ProductState::Ready as i32,
                ..Default::default()
            }],
            last_event_sequence: 3,
            ..Default::default()
        };
        let notices = observe_status(&mut m, bad_status, 2_000);
        assert!(
            matches!(notices.as_slice(), [Notice::Warning(w)]
                if w.message.starts_with("a status snapshot (at event #3) could not be read (products[0].tcin:")),
            "{notices:#?}"
        );
        assert!(m.problems().is_empty());
        assert_eq!((m.events_seen(), m.snapshots_seen()), (0, 0));
    }
}
