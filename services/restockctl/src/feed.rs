//! A `WatchEvents` stream that survives disconnects: when the stream breaks it
//! reconnects with backoff and asks for the events after the last one it
//! passed on, so nothing is shown twice and a gap (events the arbiter no
//! longer holds) is announced rather than hidden.

use std::time::Duration;

use crate::client::Channel;
use restock_proto::v1::{self as pb, event::Kind, purchase_arbiter_client::PurchaseArbiterClient};
use restock_runtime::Backoff;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::error::{code_name, describe_status};

/// First wait after a broken stream.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the feed passes on.
#[derive(Debug, Clone)]
pub enum FeedItem {
    Event(pb::Event),
    /// The stream broke; the feed tries again after `retry_in`, from `next`.
    Lost {
        error: String,
        retry_in: Duration,
        next: u64,
    },
    /// The stream is open again after a loss.
    Resumed {
        from: u64,
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
/// sends them to `tx`. The task ends when `tx`'s receiver is dropped.
pub fn spawn(
    client: PurchaseArbiterClient<Channel>,
    from: u64,
    tx: mpsc::Sender<FeedItem>,
) -> JoinHandle<()> {
    tokio::spawn(follow(client, from, tx))
}

async fn follow(mut client: PurchaseArbiterClient<Channel>, from: u64, tx: mpsc::Sender<FeedItem>) {
    let mut next = from;
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
    let mut lost = false;
    loop {
        let opened = client
            .watch_events(pb::WatchEventsRequest {
                from_sequence: next,
            })
            .await;
        let error = match opened {
            Err(status) => format!("{}: {}", code_name(status.code()), describe_status(&status)),
            Ok(response) => {
                if lost && tx.send(FeedItem::Resumed { from: next }).await.is_err() {
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
                        Ok(None) => break "the arbiter ended the stream".to_owned(),
                        Err(status) => {
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
        let retry_in = backoff.next_delay();
        let item = FeedItem::Lost {
            error,
            retry_in,
            next,
        };
        if tx.send(item).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = tx.closed() => return,
        }
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
