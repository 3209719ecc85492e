//! Following the arbiter: `GetStatus` for the present (names, mode,
//! watchers, the lease), then `WatchEvents` from the saved position; each
//! event through the rules, its alerts into the outbox (saved with the new
//! position before anything is sent), then to the workers. When the stream
//! breaks it reconnects with back-off, and after `--unreachable-after` the
//! outage itself is an alert. A timer drives the alerts that come from time
//! passing (stuck, no watchers, unreachable).
//!
//! Given several arbiter replicas ([`Arbiters`]) it follows the leader: a
//! follower's status (or an `UNAVAILABLE` answer) names it and the next
//! session goes there at once; a replica that cannot be reached, knows no
//! leader, or ends the stream (a leader stepping down does) makes it try
//! the next URL at once. The back-off applies once every URL failed in a
//! row (with one URL: after every failure, as before).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use restock_domain::Event;
use restock_proto::{
    ROLE_FOLLOWER,
    v1::{
        self as pb, GetStatusRequest, WatchEventsRequest,
        purchase_arbiter_client::PurchaseArbiterClient,
    },
};
use restock_runtime::{
    Backoff,
    arbiters::{ArbiterTracker, ArbiterUrls},
    auth::{ClientTlsArgs, SendToken},
    error::status_text,
    leader::leader_hint,
};
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tracing::{info, warn};

use crate::{
    alert::Alert,
    delivery::{Dispatcher, Job, Store, now_ms},
    destination::Destination,
    rules::{ArbiterView, Rules},
};

/// A client of the arbiter that sends the shared token on every call.
pub type Client = PurchaseArbiterClient<InterceptedService<Channel, SendToken>>;

/// How often time-based rules are checked.
pub const TICK: Duration = Duration::from_millis(250);
/// First wait before reconnecting.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(250);

/// The arbiter URLs, which one to try now, and a lazily connected client
/// per URL (each with its own TLS set-up: the server name comes from its
/// host).
#[derive(Debug)]
pub struct Arbiters {
    tracker: ArbiterTracker,
    tls: ClientTlsArgs,
    token: SendToken,
    connect_timeout: Duration,
    clients: HashMap<String, Client>,
}

impl Arbiters {
    /// Makes every URL's client now, so a bad URL or TLS file stops
    /// start-up with a message naming it.
    pub fn new(
        urls: ArbiterUrls,
        tls: ClientTlsArgs,
        token: SendToken,
        connect_timeout: Duration,
    ) -> Result<Self, crate::StartError> {
        let mut arbiters = Self {
            tracker: ArbiterTracker::new(urls.clone()),
            tls,
            token,
            connect_timeout,
            clients: HashMap::new(),
        };
        for url in urls.urls() {
            arbiters.client(url)?;
        }
        Ok(arbiters)
    }

    /// The URLs given, comma-separated.
    pub fn describe(&self) -> String {
        self.tracker.urls().to_string()
    }

    fn client(&mut self, url: &str) -> Result<Client, crate::StartError> {
        if let Some(c) = self.clients.get(url) {
            return Ok(c.clone());
        }
        let (dial, tls) = self.tls.load(url)?;
        let url_error = |source| crate::StartError::ArbiterUrl {
            url: dial.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(dial.clone()).map_err(url_error)?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(url_error)?;
        }
        let endpoint = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client =
            PurchaseArbiterClient::with_interceptor(endpoint.connect_lazy(), self.token.clone());
        self.clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }

    /// `url` answered `status`: follow the leader it names, or move on when
    /// it was not reached or knows no leader.
    fn on_error(&mut self, url: &str, status: &Status) {
        if let Some(leader) = leader_hint(status) {
            self.tracker.on_hint(&leader);
        } else if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
            self.tracker.on_failure(url);
        }
    }
}

/// What the status call reads of the follower.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub connected: Arc<AtomicBool>,
    pub test_mode: Arc<AtomicBool>,
}

/// The event follower; see the module documentation.
#[derive(Debug)]
pub struct Follower {
    /// The replica followed now (or last tried), for logs and the alert.
    pub arbiter_url: String,
    pub arbiters: Arbiters,
    pub rules: Rules,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub destinations: Arc<[Arc<Destination>]>,
    pub live: Live,
    pub rpc_timeout: Duration,
    pub reconnect_max: Duration,
    /// Why the arbiter is unreachable, for the alert.
    down_reason: String,
}

enum Ended {
    Stopped,
    Lost(String),
}

impl Follower {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arbiters: Arbiters,
        rules: Rules,
        store: Store,
        dispatcher: Dispatcher,
        destinations: Arc<[Arc<Destination>]>,
        live: Live,
        rpc_timeout: Duration,
        reconnect_max: Duration,
    ) -> Self {
        Self {
            arbiter_url: arbiters.tracker.current().to_owned(),
            arbiters,
            rules,
            store,
            dispatcher,
            destinations,
            live,
            rpc_timeout,
            reconnect_max,
            down_reason: String::new(),
        }
    }

    /// Follows until `stop` is cancelled.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(RECONNECT_INITIAL, self.reconnect_max);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = match self.session(&mut ticker, &stop, &mut backoff).await {
                Ended::Stopped => return,
                Ended::Lost(reason) => reason,
            };
            self.live.connected.store(false, Ordering::Relaxed);
            self.store.metrics().set_connected(false);
            let now = now_ms();
            self.store
                .with(|s| self.rules.arbiter_down(&mut s.rules, now));
            // Moving to another replica is immediate, until every one
            // failed in a row.
            let next_url = self.arbiters.tracker.current().to_owned();
            let wait = if next_url != self.arbiter_url && !self.arbiters.tracker.should_back_off() {
                Duration::ZERO
            } else {
                backoff.next_delay()
            };
            warn!(arbiter = %self.arbiter_url, next_arbiter = %next_url, error = %reason, retry_in_ms = wait.as_millis() as u64, "cannot follow the arbiter's events; retrying");
            self.down_reason = reason;
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(until) => break,
                    _ = ticker.tick() => self.tick(false, &stop).await,
                }
            }
        }
    }

    async fn session(
        &mut self,
        ticker: &mut Interval,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Ended {
        let url = self.arbiters.tracker.current().to_owned();
        self.arbiter_url = url.clone();
        let mut client = match self.arbiters.client(&url) {
            Ok(c) => c,
            Err(e) => {
                // Only a leader's URL met for the first time can get here
                // (its TLS set-up was not checked at start-up).
                self.arbiters.tracker.on_failure(&url);
                return Ended::Lost(e.to_string());
            }
        };
        let status =
            match tokio::time::timeout(self.rpc_timeout, client.get_status(GetStatusRequest {}))
                .await
            {
                Err(_) => {
                    self.arbiters.tracker.on_failure(&url);
                    return Ended::Lost(format!(
                        "GetStatus: no answer within {:?}",
                        self.rpc_timeout
                    ));
                }
                Ok(Err(s)) => {
                    self.arbiters.on_error(&url, &s);
                    return Ended::Lost(format!("GetStatus: {}", status_text(&s)));
                }
                Ok(Ok(r)) => r.into_inner(),
            };
        if status.role == ROLE_FOLLOWER {
            // A follower's answer holds no state; the leader's does.
            return Ended::Lost(if status.leader_url.is_empty() {
                self.arbiters.tracker.on_failure(&url);
                "this replica does not lead and knows no leader yet".to_owned()
            } else {
                self.arbiters.tracker.on_hint(&status.leader_url);
                format!(
                    "this replica does not lead; the leader is {}",
                    status.leader_url
                )
            });
        }
        let view = view_of(&status);
        self.live.test_mode.store(view.test_mode, Ordering::Relaxed);
        let now = now_ms();
        let from = self.store.with(|s| {
            let fresh = s.next_sequence == 0;
            self.rules.on_status(&mut s.rules, view, now, fresh);
            if fresh {
                // A fresh start: from the arbiter's newest event on (the
                // past is not news).
                s.next_sequence = status.last_event_sequence + 1;
            }
            s.next_sequence
        });
        let stream = match tokio::time::timeout(
            self.rpc_timeout,
            client.watch_events(WatchEventsRequest {
                from_sequence: from,
            }),
        )
        .await
        {
            Err(_) => {
                self.arbiters.tracker.on_failure(&url);
                return Ended::Lost(format!(
                    "WatchEvents: no answer within {:?}",
                    self.rpc_timeout
                ));
            }
            Ok(Err(s)) => {
                self.arbiters.on_error(&url, &s);
                return Ended::Lost(format!("WatchEvents: {}", status_text(&s)));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        self.arbiters.tracker.on_success(&url);
        let mut stream = stream;
        self.store.with(|s| self.rules.arbiter_up(&mut s.rules));
        self.store.persist_until_ok(stop).await;
        self.live.connected.store(true, Ordering::Relaxed);
        self.store.metrics().set_connected(true);
        backoff.reset();
        info!(arbiter = %self.arbiter_url, from_sequence = from, test_mode = self.rules.test_mode(), "following the arbiter's events");
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ended::Stopped,
                _ = ticker.tick() => self.tick(true, stop).await,
                m = stream.message() => match m {
                    Ok(Some(e)) => self.on_event(e, stop).await,
                    Ok(None) => {
                        // A leader that steps down ends its streams.
                        self.arbiters.tracker.on_failure(&url);
                        return Ended::Lost("the arbiter ended the event stream".to_owned());
                    }
                    Err(s) => {
                        self.arbiters.on_error(&url, &s);
                        return Ended::Lost(format!("WatchEvents: {}", status_text(&s)));
                    }
                },
            }
        }
    }

    async fn on_event(&mut self, e: pb::Event, stop: &CancellationToken) {
        let seq = e.sequence;
        let next = self.store.with(|s| s.next_sequence);
        if seq < next {
            return; // already handled before a reconnect
        }
        let missed = missed_range(next, &e);
        if let Some((from, to)) = missed {
            // The arbiter no longer holds them (the notifier was away longer
            // than its history reaches): their alerts cannot be made, so the
            // gap itself is alerted.
            warn!(
                from,
                to, "events missed: no longer in the arbiter's history; alerted"
            );
        }
        let event = match Event::try_from(e) {
            Ok(ev) => Some(ev),
            Err(err) => {
                warn!(sequence = seq, error = %err, "skipping an event this build cannot read");
                None
            }
        };
        let now = now_ms();
        let dispatch = self.store.with(|s| {
            // The gap's alert enters the outbox in the same write that moves
            // the position past it: alerted once, even across a restart.
            let mut alerts: Vec<Alert> = missed
                .map(|(from, to)| self.rules.missed_events(from, to, now))
                .into_iter()
                .collect();
            if let Some(ev) = &event {
                alerts.extend(self.rules.on_event(&mut s.rules, ev));
            }
            s.next_sequence = seq + 1;
            Store::enqueue(s, &alerts, &self.destinations, now, self.store.metrics())
        });
        // The position and the rules' memory are saved with the next
        // write; an event that made alerts is saved now, before they go.
        if !dispatch.is_empty() || event.as_ref().is_some_and(|e| e.kind.ends_lease()) {
            self.store.persist_until_ok(stop).await;
        }
        self.dispatch(dispatch);
    }

    async fn tick(&mut self, connected: bool, stop: &CancellationToken) {
        let now = now_ms();
        let (alerts, dispatch) = self.store.with(|s| {
            let alerts: Vec<Alert> = self.rules.on_tick(
                &mut s.rules,
                now,
                connected,
                &self.arbiter_url,
                &self.down_reason,
            );
            let d = Store::enqueue(s, &alerts, &self.destinations, now, self.store.metrics());
            (alerts, d)
        });
        if !alerts.is_empty() {
            self.store.persist_until_ok(stop).await;
            self.dispatch(dispatch);
        }
    }

    fn dispatch(&self, jobs: Vec<(usize, String)>) {
        self.store.count_pending(&self.destinations);
        for (i, id) in jobs {
            self.dispatcher.send(i, Job::Pending(id));
        }
    }
}

/// The sequence numbers skipped before `e` when `next` was expected, if
/// that is a loss. A jump to an `ARBITER_STARTED` event is not: a restarted
/// arbiter (or a new leader) continues after the block of numbers it had
/// reserved, and the rest of that block was never used.
pub fn missed_range(next: u64, e: &pb::Event) -> Option<(u64, u64)> {
    (e.sequence > next && e.kind != pb::event::Kind::ArbiterStarted as i32)
        .then(|| (next, e.sequence - 1))
}

/// What the rules take from a status answer.
pub fn view_of(s: &pb::GetStatusResponse) -> ArbiterView {
    let queued = pb::ProductState::Queued as i32;
    let attempting = pb::ProductState::Attempting as i32;
    ArbiterView {
        names: s
            .products
            .iter()
            .map(|p| (p.tcin.clone(), p.name.clone()))
            .collect(),
        test_mode: s.test_mode,
        connected_watchers: s
            .watchers
            .iter()
            .filter(|w| w.connected)
            .map(|w| w.watcher_id.clone())
            .collect::<BTreeSet<_>>(),
        blocked_watchers: s
            .watchers
            .iter()
            .filter(|w| w.source_blocked)
            .map(|w| w.watcher_id.clone())
            .collect(),
        budget_exhausted: s.budget.as_ref().is_some_and(|b| b.held_back > 0),
        available: s
            .products
            .iter()
            .filter(|p| p.state == queued || p.state == attempting)
            .map(|p| p.tcin.clone())
            .collect(),
        lease: s.active_lease.as_ref().map(|l| {
            (
                l.tcin.clone(),
                l.watcher_id.clone(),
                l.fencing_token,
                l.granted_at_unix_ms,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u64, kind: pb::event::Kind) -> pb::Event {
        pb::Event {
            sequence,
            kind: kind as i32,
            ..pb::Event::default()
        }
    }

    #[test]
    fn a_jump_is_a_gap_unless_a_restarted_arbiter_made_it() {
        let queued = pb::event::Kind::Queued;
        assert_eq!(missed_range(41, &event(98, queued)), Some((41, 97)));
        assert_eq!(missed_range(41, &event(42, queued)), Some((41, 41)));
        assert_eq!(missed_range(41, &event(41, queued)), None);
        assert_eq!(
            missed_range(41, &event(1_001, pb::event::Kind::ArbiterStarted)),
            None
        );
    }
}
