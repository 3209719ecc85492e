//! Follows the arbiter's event history for the whole run: `WatchEvents`
//! from sequence 1, reconnecting after every arbiter restart and resuming
//! after the last sequence seen, so every durable event is read exactly
//! once. Also reads the store's order book. The events become domain
//! [`Event`]s here, at the edge (the checker reads no protocol types); the
//! orders the checker's ledger.
//!
//! In HA mode ([`follow_replicas`]) the follower reads every replica at
//! once, since which one leads changes under the faults: each replica's
//! stream goes into one log ordered by sequence, an event streamed by
//! several replicas is kept once (with who streamed it), and two replicas
//! streaming different events under one sequence is recorded as a conflict.
//! A new leader numbers on from what etcd holds; the deposed leader's last
//! events, if they never reached etcd, are only in what it streamed, so a
//! gap in the sequence is expected across a failover and the checker
//! accepts it only there (see `failover_between` in the checker).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use restock_domain::Event;
use restock_proto::v1::{
    self as pb, GetStatusRequest, WatchEventsRequest, event::Kind,
    purchase_arbiter_client::PurchaseArbiterClient,
};
use serde_json::Value;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::checker::{StoreLedger, StoreOrder};

/// Every event seen so far, and a feed of new grants.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<Vec<pb::Event>>,
    grants: broadcast::Sender<pb::Event>,
    /// HA mode: who streamed what, and conflicting numbers.
    replicas: Mutex<ReplicaSources>,
}

/// HA mode: which replicas streamed each event (bit `i`: replica `i`), and
/// the sequences two replicas streamed with different events.
#[derive(Debug, Default)]
struct ReplicaSources {
    served_by: BTreeMap<u64, u8>,
    conflicts: Vec<String>,
}

/// Is `b` the event `a` is (what identifies an event, beyond its number)?
fn same_event(a: &pb::Event, b: &pb::Event) -> bool {
    a.kind == b.kind
        && a.unix_ms == b.unix_ms
        && a.lease_id == b.lease_id
        && a.fencing_token == b.fencing_token
        && a.tcin == b.tcin
        && a.watcher_id == b.watcher_id
}

/// See [`EventLog::lease_activity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseActivity {
    pub grants: usize,
    pub ends: usize,
    pub unpushed: usize,
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
            replicas: Mutex::new(ReplicaSources::default()),
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

    /// What the events in `[from_ms, to_ms]` show the leader doing: grants
    /// and ends of leases (releases and expiries), and how many of those
    /// expiries were of grants never pushed (their write left less than
    /// the holder's margin).
    pub fn lease_activity(&self, from_ms: u64, to_ms: u64) -> LeaseActivity {
        let mut a = LeaseActivity::default();
        for e in self
            .lock()
            .iter()
            .filter(|e| e.unix_ms >= from_ms && e.unix_ms <= to_ms)
        {
            match e.kind() {
                Kind::Granted => a.grants += 1,
                Kind::Released => a.ends += 1,
                Kind::Expired => {
                    a.ends += 1;
                    if e.detail.contains("before it could be pushed") {
                        a.unpushed += 1;
                    }
                }
                _ => {}
            }
        }
        a
    }

    /// How the lease with `token` ended, if it has: its RELEASED or
    /// EXPIRED, and the replicas that streamed it (HA mode; 0 otherwise).
    pub fn end_of(&self, token: u64) -> Option<(pb::Event, u8)> {
        let end = self
            .lock()
            .iter()
            .find(|e| {
                matches!(e.kind(), Kind::Released | Kind::Expired) && e.fencing_token == token
            })
            .cloned()?;
        let by = self
            .replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .served_by
            .get(&end.sequence)
            .copied()
            .unwrap_or(0);
        Some((end, by))
    }

    /// HA mode: which replicas have streamed event `sequence` so far.
    pub fn served_by(&self, sequence: u64) -> u8 {
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .served_by
            .get(&sequence)
            .copied()
            .unwrap_or(0)
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

    /// HA mode: `e` as streamed by replica `replica`. Kept in sequence
    /// order; an event already seen only gains a source; another event
    /// under a number already taken is a conflict (the first one stays).
    /// Returns whether it was new.
    pub fn push_from(&self, replica: usize, e: pb::Event) -> bool {
        let mut events = self.lock();
        let mut sources = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        let at = events.partition_point(|x| x.sequence < e.sequence);
        if let Some(have) = events.get(at).filter(|x| x.sequence == e.sequence) {
            if same_event(have, &e) {
                *sources.served_by.entry(e.sequence).or_default() |= 1 << replica;
            } else {
                let kept_by = sources.served_by.get(&e.sequence).copied().unwrap_or(0);
                sources.conflicts.push(format!(
                    "event {}: kept {:?} (token {}, at {}, replicas {:#05b}), replica {replica} streamed {:?} (token {}, at {})",
                    e.sequence,
                    have.kind(),
                    have.fencing_token,
                    have.unix_ms,
                    kept_by,
                    e.kind(),
                    e.fencing_token,
                    e.unix_ms
                ));
            }
            return false;
        }
        sources.served_by.insert(e.sequence, 1 << replica);
        if e.kind() == Kind::Granted {
            let _ = self.grants.send(e.clone());
        }
        events.insert(at, e);
        true
    }

    /// HA mode: who streamed each event, and the conflicts.
    pub fn sources(&self) -> (BTreeMap<u64, u8>, Vec<String>) {
        let s = self.replicas.lock().unwrap_or_else(|p| p.into_inner());
        (s.served_by.clone(), s.conflicts.clone())
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

/// HA mode: follows `WatchEvents` at every replica in `urls` (replica `i`
/// at `urls[i]`) into `log` until aborted.
///
/// Each replica is followed on its own, from the sequence after the last
/// one it streamed, and its stream is opened again whenever its role
/// changes (a follower that becomes leader, a leader that steps down), or
/// it fails. A replica that answers with a lower last sequence than it
/// streamed before (its numbering went back) is read from 1 again; the log
/// drops what it already has.
pub fn follow_replicas(urls: Vec<String>, log: Arc<EventLog>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tasks: Vec<JoinHandle<()>> = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| tokio::spawn(follow_one_replica(i, url, log.clone())))
            .collect();
        // Aborting this task drops the handles, which does not stop them.
        let _guard = AbortOnDrop(tasks);
        std::future::pending::<()>().await;
    })
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn follow_one_replica(replica: usize, url: String, log: Arc<EventLog>) {
    let mut last = 0u64;
    loop {
        // Bounded: a stopped replica accepts the connection and answers
        // nothing.
        let opened = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = PurchaseArbiterClient::connect(url.clone()).await.ok()?;
            let status = c.get_status(GetStatusRequest {}).await.ok()?.into_inner();
            if status.last_event_sequence < last {
                last = 0;
            }
            let s = c
                .watch_events(WatchEventsRequest {
                    from_sequence: last + 1,
                })
                .await
                .ok()?;
            Some((c, status.role, s.into_inner()))
        })
        .await
        .ok()
        .flatten();
        if let Some((mut c, role, mut stream)) = opened {
            let mut check = tokio::time::interval(Duration::from_millis(250));
            check.tick().await;
            loop {
                tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(e)) => {
                            last = last.max(e.sequence);
                            log.push_from(replica, e);
                        }
                        _ => break,
                    },
                    _ = check.tick() => {
                        let now = tokio::time::timeout(
                            Duration::from_millis(500),
                            c.get_status(GetStatusRequest {}),
                        )
                        .await;
                        match now {
                            Ok(Ok(s)) if s.get_ref().role == role => {}
                            // A new role, or no answer (stopped, cut off):
                            // open again, so a stream that went quiet at a
                            // follower is replaced by a live one.
                            _ => break,
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, kind: Kind, token: u64, unix_ms: u64) -> pb::Event {
        pb::Event {
            sequence,
            unix_ms,
            kind: kind as i32,
            fencing_token: token,
            ..pb::Event::default()
        }
    }

    #[test]
    fn replicas_streams_merge_in_order_once_each_and_conflicts_are_kept_aside() {
        let log = EventLog::new();
        let mut grants = log.subscribe_grants();
        assert!(log.push_from(0, event(1, Kind::Granted, 1, 100)));
        assert!(log.push_from(0, event(3, Kind::Released, 1, 300)));
        // Replica 1, now leading, streams event 1 again and one replica 0
        // never did: kept once, in order, with both sources.
        assert!(!log.push_from(1, event(1, Kind::Granted, 1, 100)));
        assert!(log.push_from(1, event(2, Kind::Renewed, 1, 200)));
        // Another event under a number already taken.
        assert!(!log.push_from(2, event(3, Kind::Granted, 2, 350)));
        let seqs: Vec<u64> = log.lock().iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let (served, conflicts) = log.sources();
        assert_eq!(served[&1], 0b011);
        assert_eq!(served[&2], 0b010);
        assert_eq!(served[&3], 0b001);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(
            conflicts[0].starts_with("event 3: kept Released"),
            "{conflicts:?}"
        );
        // One grant announced, once.
        assert_eq!(grants.try_recv().unwrap().sequence, 1);
        assert!(grants.try_recv().is_err());
        assert_eq!(log.last_sequence(), 3);
    }
}
