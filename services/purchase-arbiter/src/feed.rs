//! Following the event history: what `WatchEvents` and the status page's
//! `GET /events` share. A follower gets the history it asked for, then the
//! live events as they are published; one that falls behind the live
//! buffer catches up from history, so it sees every event still held, in
//! order, each once.

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use restock_domain::Event;

use crate::{
    limits::EVENT_FOLLOWER_BUFFER,
    task::{ArbiterError, ArbiterHandle},
};

/// Why a feed ended (it also ends, with nothing said, when its receiver is
/// dropped).
#[derive(Debug)]
pub enum FeedEnd {
    /// The arbiter is stopping.
    ShuttingDown,
    /// Catching up from history failed.
    Failed(ArbiterError),
}

/// One item of a feed: an event, or the reason it ended (always last).
pub type FeedItem = Result<Event, FeedEnd>;

/// Events from `from` (see [`ArbiterHandle::events`]), then live ones,
/// until `shutdown` or the receiver is dropped.
pub async fn follow(
    handle: ArbiterHandle,
    from: u64,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<FeedItem>, ArbiterError> {
    let (history, live) = handle.events(from).await?;
    let (tx, rx) = mpsc::channel(EVENT_FOLLOWER_BUFFER);
    tokio::spawn(run(handle, history, live, tx, shutdown));
    Ok(rx)
}

async fn run(
    handle: ArbiterHandle,
    history: Vec<Event>,
    mut live: broadcast::Receiver<Event>,
    tx: mpsc::Sender<FeedItem>,
    shutdown: CancellationToken,
) {
    let mut last = 0u64;
    for e in history {
        last = e.sequence;
        if tx.send(Ok(e)).await.is_err() {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(FeedEnd::ShuttingDown)).await;
                return;
            }
            () = tx.closed() => return,
            n = live.recv() => n,
        };
        match next {
            Ok(e) => {
                if e.sequence <= last {
                    continue;
                }
                last = e.sequence;
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Catch up from history, then follow again.
                match handle.events(last + 1).await {
                    Ok((missed, rx)) => {
                        live = rx;
                        for e in missed {
                            last = e.sequence;
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(FeedEnd::Failed(e))).await;
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = tx.send(Err(FeedEnd::ShuttingDown)).await;
                return;
            }
        }
    }
}
