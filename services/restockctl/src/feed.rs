//! A `WatchEvents` stream that survives disconnects: when the stream breaks it
//! reconnects with backoff and asks for the events after the last one it
//! passed on, so nothing is shown twice and a gap (events the arbiter no
//! longer holds) is announced rather than hidden.
//!
//! With several arbiter replicas it follows the leader: a stream refused
//! with the leader's URL goes there at once, and one that breaks or cannot
//! be opened moves on to the next URL; the back-off applies once every URL
//! failed in a row.

use std::time::Duration;

use restock_proto::v1::{self as pb, event::Kind, purchase_arbiter_client::PurchaseArbiterClient};
use restock_runtime::Backoff;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    client::{ArbiterClient, Target},
    error::{code_name, describe_status},
};

/// First wait after a broken stream.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the feed passes on.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Event(pb::Event),
    /// The stream from `url` broke; the feed tries again after `retry_in`,
    /// from `next`, at `next_url` (another replica when it moved on).
    Lost {
        url: String,
        error: String,
        retry_in: Duration,
        next: u64,
        next_url: String,
    },
    /// The stream is open again after a loss, at `url`.
    Resumed {
        from: u64,
        url: String,
    },
    /// Events `from..=to` are no longer in the arbiter's history (or were
    /// never numbered: after a restart the numbering jumps, and that jump,
    /// which starts with ARBITER_STARTED, is not reported).
    Missed {
        from: u64,
        to: u64,
    },
}

/// Starts following events from sequence `from` (0: only new events) and
/// sends them to `tx`, first over `client`, connected to `at` (a replica of
/// `target`). The task ends when `tx`'s receiver is dropped.
pub fn spawn(
    target: Target,
    at: Target,
    client: ArbiterClient,
    from: u64,
    tx: mpsc::Sender<FeedItem>,
) -> JoinHandle<()> {
    tokio::spawn(follow(target, at, client, from, tx))
}

async fn follow(
    target: Target,
    at: Target,
    client: ArbiterClient,
    from: u64,
    tx: mpsc::Sender<FeedItem>,
) {
    let mut next = from;
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut lost = false;
    // The replica followed and its client; `None` after it failed, until a
    // connection to the next one is made.
    let mut link = Some((at.clone(), client));
    let mut last_url = at.url;
    loop {
        let (at, mut client) = match link.take() {
            Some(l) => l,
            None => match target.current() {
                Err(e) => {
                    // Only the TLS files read again can fail here.
                    let _ = tx
                        .send(FeedItem::Lost {
                            url: last_url.clone(),
                            error: e.to_string(),
                            retry_in: BACKOFF_MAX,
                            next,
                            next_url: last_url.clone(),
                        })
                        .await;
                    tokio::select! {
                        () = tokio::time::sleep(BACKOFF_MAX) => continue,
                        () = tx.closed() => return,
                    }
                }
                Ok(at) => match at.connect().await {
                    Ok(c) => (at, PurchaseArbiterClient::new(c)),
                    Err(e) => {
                        target.moved_on(&at, None);
                        last_url = at.url.clone();
                        if !lose(&target, &tx, &mut backoff, &at, e.to_string(), next).await {
                            return;
                        }
                        continue;
                    }
                },
            },
        };
        last_url = at.url.clone();
        let opened = client
            .watch_events(pb::WatchEventsRequest {
                from_sequence: next,
            })
            .await;
        let error = match opened {
            Err(status) => {
                target.moved_on(&at, Some(&status));
                format!("{}: {}", code_name(status.code()), describe_status(&status))
            }
            Ok(response) => {
                target.worked(&at);
                if lost
                    && tx
                        .send(FeedItem::Resumed {
                            from: next,
                            url: at.url.clone(),
                        })
                        .await
                        .is_err()
                {
                    return;
                }
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            if next > 0 && e.sequence < next {
                                continue; // already passed on
                            }
                            if next > 0
                                && e.sequence > next
                                && e.kind != Kind::ArbiterStarted as i32
                            {
                                let missed = FeedItem::Missed {
                                    from: next,
                                    to: e.sequence - 1,
                                };
                                if tx.send(missed).await.is_err() {
                                    return;
                                }
                            }
                            next = e.sequence + 1;
                            backoff.reset();
                            if tx.send(FeedItem::Event(e)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            // A leader that steps down ends its streams.
                            target.moved_on(&at, None);
                            break "the arbiter ended the stream".to_owned();
                        }
                        Err(status) => {
                            target.moved_on(&at, Some(&status));
                            break format!(
                                "{}: {}",
                                code_name(status.code()),
                                describe_status(&status)
                            );
                        }
                    }
                }
            }
        };
        lost = true;
        // The same replica again: keep its client (its channel reconnects).
        if target.current().is_ok_and(|now| now.url == at.url) {
            link = Some((at.clone(), client));
        }
        if !lose(&target, &tx, &mut backoff, &at, error, next).await {
            return;
        }
    }
}

/// Tells that the stream from `at` was lost and waits before the next
/// attempt: not at all when moving on to another replica, unless every
/// one failed in a row. `false` when nobody listens any more.
async fn lose(
    target: &Target,
    tx: &mpsc::Sender<FeedItem>,
    backoff: &mut Backoff,
    at: &Target,
    error: String,
    next: u64,
) -> bool {
    let next_url = target.current().map_or_else(|_| at.url.clone(), |t| t.url);
    let retry_in = if next_url != at.url && !target.should_back_off() {
        Duration::ZERO
    } else {
        backoff.next_delay()
    };
    let item = FeedItem::Lost {
        url: at.url.clone(),
        error,
        retry_in,
        next,
        next_url,
    };
    if tx.send(item).await.is_err() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(retry_in) => true,
        () = tx.closed() => false,
    }
}

/// Aborts a task when dropped, so a command that returns early (an error,
/// a closed pipe) does not leave its feed running.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
