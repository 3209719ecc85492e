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
    let (history, live, published) = handle.events_with_position(from).await?;
    // Where the follower stands before its first event: just before what it
    // asked for, or, asking for what is not published yet (`from` past the
    // newest, as "from now on" is), at the newest published. Starting at 0
    // made a follower that lagged before its first event catch up from the
    // very first event of the history.
    let start = from.saturating_sub(1).min(published);
    let (tx, rx) = mpsc::channel(EVENT_FOLLOWER_BUFFER);
    tokio::spawn(run(handle, start, history, live, tx, shutdown));
    Ok(rx)
}

async fn run(
    handle: ArbiterHandle,
    start: u64,
    history: Vec<Event>,
    mut live: broadcast::Receiver<Event>,
    tx: mpsc::Sender<FeedItem>,
    shutdown: CancellationToken,
) {
    let mut last = start;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use restock_domain::PriorityList;

    use super::*;
    use crate::{
        metrics::ArbiterMetrics,
        slot::{Arbiter, Clock, Timing},
        store::StateFile,
        task,
    };

    /// A follower that asked to start at `from` and whose live receiver has
    /// lagged before it delivered a single event catches up from `from`,
    /// not from the first event in the history.
    #[tokio::test]
    async fn a_follower_that_lags_at_once_catches_up_from_where_it_asked() {
        let catalog = PriorityList::parse(r#"{"products":[{"tcin":"A"}]}"#, "t.json").unwrap();
        let timing = Timing {
            lease_ttl: Duration::from_secs(30),
            stock_ttl: Duration::from_secs(30),
            failure_cooldown: Duration::from_secs(30),
            test_mode: false,
        };
        let clock = Clock::new();
        let stop = CancellationToken::new();
        let (handle, _task) = task::spawn(
            Arbiter::new(catalog, timing, clock.now()),
            clock,
            StateFile::new(None, false),
            stop.clone(),
            ArbiterMetrics::default(),
            false,
        );
        for i in 0..10 {
            handle.set_paused(i % 2 == 0).await.unwrap();
        }
        let (history, _) = handle.events(1).await.unwrap();
        let newest = history.last().unwrap().sequence;
        let from = newest - 2;
        // A live receiver that has already lagged.
        let (sender, lagged) = broadcast::channel(1);
        for e in history.iter().take(3) {
            let _ = sender.send(e.clone());
        }
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(run(
            handle.clone(),
            from - 1,
            Vec::new(),
            lagged,
            tx,
            stop.clone(),
        ));
        let mut got = Vec::new();
        while got.len() < 3 {
            let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("the catch-up")
                .expect("the feed runs");
            got.push(item.unwrap().sequence);
        }
        assert_eq!(got, [from, from + 1, from + 2], "caught up from {from}");

        // "From now on" (WatchEvents' 0, passed here as u64::MAX) still gets
        // the next event published.
        let mut now_on = follow(handle.clone(), u64::MAX, stop.clone())
            .await
            .unwrap();
        handle.set_paused(true).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), now_on.recv())
            .await
            .expect("the next event")
            .expect("the feed runs")
            .unwrap();
        assert_eq!(next.sequence, newest + 1);
        stop.cancel();
    }
}
