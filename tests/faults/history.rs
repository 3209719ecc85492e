//! Follows the arbiter's event history for the whole run: `WatchEvents`
//! from sequence 1, reconnecting after every arbiter restart and resuming
//! after the last sequence seen, so every durable event is read exactly
//! once. Also reads the store's order book. The events become domain
//! [`Event`]s here, at the edge (the checker reads no protocol types); the
//! orders the checker's ledger.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use restock_domain::Event;
use restock_proto::v1::{
    self as pb, WatchEventsRequest, event::Kind, purchase_arbiter_client::PurchaseArbiterClient,
};
use serde_json::Value;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::checker::{StoreLedger, StoreOrder};

/// Every event seen so far, and a feed of new grants.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<Vec<pb::Event>>,
    grants: broadcast::Sender<pb::Event>,
}

/// The lease the history says is live now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveLease {
    pub token: u64,
    pub watcher_id: String,
    pub tcin: String,
}

impl EventLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            grants: broadcast::channel(256).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<pb::Event>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants as they are seen.
    pub fn subscribe_grants(&self) -> broadcast::Receiver<pb::Event> {
        self.grants.subscribe()
    }

    pub fn last_sequence(&self) -> u64 {
        self.lock().last().map_or(0, |e| e.sequence)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// The last grant not yet followed by its release or expiry.
    pub fn live_lease(&self) -> Option<LiveLease> {
        let events = self.lock();
        for e in events.iter().rev() {
            match e.kind() {
                Kind::Released | Kind::Expired => return None,
                Kind::Granted => {
                    return Some(LiveLease {
                        token: e.fencing_token,
                        watcher_id: e.watcher_id.clone(),
                        tcin: e.tcin.clone(),
                    });
                }
                _ => {}
            }
        }
        None
    }

    /// Has the lease with `token` ended?
    pub fn ended(&self, token: u64) -> bool {
        self.lock()
            .iter()
            .rev()
            .any(|e| matches!(e.kind(), Kind::Released | Kind::Expired) && e.fencing_token == token)
    }

    /// The first grant at or after `unix_ms`, if seen.
    pub fn first_grant_since(&self, unix_ms: u64) -> Option<u64> {
        self.lock()
            .iter()
            .filter(|e| e.kind() == Kind::Granted && e.unix_ms >= unix_ms)
            .map(|e| e.unix_ms)
            .next()
    }

    fn push(&self, e: pb::Event) -> bool {
        let mut events = self.lock();
        if events.last().is_some_and(|l| l.sequence >= e.sequence) {
            return false; // already seen (a resumed stream repeats nothing, but be sure)
        }
        if e.kind() == Kind::Granted {
            // No subscriber is fine.
            let _ = self.grants.send(e.clone());
        }
        events.push(e);
        true
    }

    /// Everything seen, as domain events for the checker, and the events
    /// that do not make one (each as `sequence: why`).
    pub fn to_checker(&self) -> (Vec<Event>, Vec<String>) {
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        for e in self.lock().iter() {
            let sequence = e.sequence;
            match Event::try_from(e.clone()) {
                Ok(e) => events.push(e),
                Err(why) => unreadable.push(format!("{sequence}: {why}")),
            }
        }
        (events, unreadable)
    }
}

/// Follows `WatchEvents` at `url` into `log` until aborted.
pub fn follow(url: String, log: Arc<EventLog>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let from = log.last_sequence() + 1;
            let stream = async {
                let mut c = PurchaseArbiterClient::connect(url.clone()).await.ok()?;
                let s = c
                    .watch_events(WatchEventsRequest {
                        from_sequence: from,
                    })
                    .await
                    .ok()?;
                Some(s.into_inner())
            }
            .await;
            if let Some(mut s) = stream {
                while let Ok(Some(e)) = s.message().await {
                    log.push(e);
                }
            }
            // The arbiter is down or restarting: try again soon.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// `GET /admin/orders` as the checker's ledger. Panics with the body if it
/// is not the documented shape.
pub fn ledger_from_json(v: &Value) -> StoreLedger {
    let s = |o: &Value, k: &str| o[k].as_str().unwrap_or_default().to_owned();
    let n = |o: &Value, k: &str| {
        o[k].as_u64()
            .unwrap_or_else(|| panic!("order field {k} is not a number: {o}"))
    };
    let mut orders: Vec<StoreOrder> = v["orders"]
        .as_array()
        .unwrap_or_else(|| panic!("no orders array: {v}"))
        .iter()
        .map(|o| StoreOrder {
            id: n(o, "id"),
            tcin: s(o, "tcin"),
            token: n(o, "fencing_token"),
            lease_id: s(o, "lease_id"),
            watcher_id: s(o, "watcher_id"),
            started_at_ms: n(o, "started_at_ms"),
            finished_at_ms: Some(n(o, "finished_at_ms")),
            result: s(o, "result"),
            accepted: o["accepted"].as_bool().unwrap_or(false),
        })
        .collect();
    for o in v["in_flight"].as_array().into_iter().flatten() {
        orders.push(StoreOrder {
            id: n(o, "id"),
            tcin: s(o, "tcin"),
            token: n(o, "fencing_token"),
            lease_id: s(o, "lease_id"),
            watcher_id: s(o, "watcher_id"),
            started_at_ms: n(o, "started_at_ms"),
            finished_at_ms: None,
            result: "in_flight".into(),
            accepted: true,
        });
    }
    orders.sort_by_key(|o| o.id);
    StoreLedger {
        orders,
        violations: v["violations"].as_u64().unwrap_or(u64::MAX),
    }
}
