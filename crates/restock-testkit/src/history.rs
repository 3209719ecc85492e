//! Builders for what an arbiter says, for scripting [`crate::ScriptedArbiter`]
//! and for checkers' tests: event histories ([`History`]), status answers
//! ([`StatusSnapshot`]) and leases ([`lease`]), each with the defaults a
//! scripted run needs so a test writes only what it is about.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use restock_proto::v1::{self as pb, ProductState as St, event::Kind};

/// Wall-clock unix milliseconds, the unit of every time in a history.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A lease for product `tcin` held by `watcher`, with all of `ttl` left.
pub fn lease(id: &str, tcin: &str, watcher: &str, token: u64, ttl: Duration) -> pb::Lease {
    pb::Lease {
        lease_id: id.into(),
        tcin: tcin.into(),
        watcher_id: watcher.into(),
        fencing_token: token,
        ttl_ms: ttl.as_millis() as u64,
        remaining_ms: ttl.as_millis() as u64,
        ..Default::default()
    }
}

/// An event history in order: each event added gets the next sequence
/// number and a time [`History::STEP_MS`] after the one before, and names
/// the watcher set with [`History::by`] (`w1` at first).
///
/// ```
/// # use restock_testkit::History;
/// let events = History::starting(2, 1_000)
///     .granted("100", "lease-1", 1)
///     .released("100", "lease-1", 1)
///     .into_events();
/// assert_eq!((events[1].sequence, events[1].unix_ms), (3, 1_010));
/// ```
#[derive(Debug, Clone)]
pub struct History {
    next_sequence: u64,
    next_ms: u64,
    watcher: String,
    events: Vec<pb::Event>,
}

impl History {
    /// How far apart the events are.
    pub const STEP_MS: u64 = 10;

    /// The first event gets sequence `first` and time `at_ms`.
    pub fn starting(first: u64, at_ms: u64) -> Self {
        Self {
            next_sequence: first,
            next_ms: at_ms,
            watcher: "w1".into(),
            events: Vec::new(),
        }
    }

    /// The events that follow name `watcher`.
    pub fn by(mut self, watcher: &str) -> Self {
        self.watcher = watcher.to_owned();
        self
    }

    /// Adds `e` with the next sequence number and time (whatever `e` had).
    pub fn event(mut self, e: pb::Event) -> Self {
        self.events.push(pb::Event {
            sequence: self.next_sequence,
            unix_ms: self.next_ms,
            ..e
        });
        self.next_sequence += 1;
        self.next_ms += Self::STEP_MS;
        self
    }

    fn transition(self, kind: Kind, tcin: &str, from: St, to: St, rest: pb::Event) -> Self {
        let e = pb::Event {
            kind: kind as i32,
            tcin: tcin.into(),
            from_state: from as i32,
            to_state: to as i32,
            ..rest
        };
        self.event(e)
    }

    fn leased(&self, lease: &str, token: u64) -> pb::Event {
        pb::Event {
            watcher_id: self.watcher.clone(),
            lease_id: lease.into(),
            fencing_token: token,
            ..Default::default()
        }
    }

    /// `tcin` reported in stock: READY -> QUEUED.
    pub fn queued(self, tcin: &str) -> Self {
        self.transition(
            Kind::Queued,
            tcin,
            St::Ready,
            St::Queued,
            pb::Event::default(),
        )
    }

    /// A grant of `tcin`: READY -> ATTEMPTING.
    pub fn granted(self, tcin: &str, lease: &str, token: u64) -> Self {
        let rest = pb::Event {
            detail: "scripted".into(),
            ..self.leased(lease, token)
        };
        self.transition(Kind::Granted, tcin, St::Ready, St::Attempting, rest)
    }

    /// A purchased release in TEST_MODE: ATTEMPTING -> READY.
    pub fn released(self, tcin: &str, lease: &str, token: u64) -> Self {
        self.released_as(tcin, lease, token, pb::Outcome::Purchased, St::Ready)
    }

    /// A release with `outcome`, leaving the product in state `to`.
    pub fn released_as(
        self,
        tcin: &str,
        lease: &str,
        token: u64,
        outcome: pb::Outcome,
        to: St,
    ) -> Self {
        let rest = pb::Event {
            outcome: outcome as i32,
            ..self.leased(lease, token)
        };
        self.transition(Kind::Released, tcin, St::Attempting, to, rest)
    }

    /// The holder stopped renewing: ATTEMPTING -> FAILED, outcome EXPIRED.
    pub fn expired(self, tcin: &str, lease: &str, token: u64) -> Self {
        let rest = pb::Event {
            outcome: pb::Outcome::Expired as i32,
            ..self.leased(lease, token)
        };
        self.transition(Kind::Expired, tcin, St::Attempting, St::Failed, rest)
    }

    /// The sequence number of the last event added (one before the first
    /// when there is none).
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    pub fn events(&self) -> &[pb::Event] {
        &self.events
    }

    pub fn into_events(self) -> Vec<pb::Event> {
        self.events
    }
}

/// A `GetStatus` answer for products in priority order (top first), all
/// READY in TEST_MODE with the slot free unless told otherwise.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    products: Vec<(String, St)>,
    lease: Option<pb::Lease>,
    last_event_sequence: u64,
    test_mode: bool,
}

impl StatusSnapshot {
    pub fn new(tcins: &[&str]) -> Self {
        Self {
            products: tcins.iter().map(|t| ((*t).to_owned(), St::Ready)).collect(),
            lease: None,
            last_event_sequence: 1,
            test_mode: true,
        }
    }

    /// The products 100, 200 and 300.
    pub fn three() -> Self {
        Self::new(&["100", "200", "300"])
    }

    /// The newest event's sequence number, as `GetStatus` reports it.
    pub fn sequence(mut self, last: u64) -> Self {
        self.last_event_sequence = last;
        self
    }

    /// Puts `tcin` in `state`.
    pub fn state(mut self, tcin: &str, state: St) -> Self {
        let p = self
            .products
            .iter_mut()
            .find(|(t, _)| t == tcin)
            .unwrap_or_else(|| panic!("product {tcin} is not in this snapshot"));
        p.1 = state;
        self
    }

    /// The slot is held by `lease`.
    pub fn lease(mut self, lease: pb::Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn test_mode(mut self, on: bool) -> Self {
        self.test_mode = on;
        self
    }

    pub fn build(&self) -> pb::GetStatusResponse {
        pb::GetStatusResponse {
            products: self
                .products
                .iter()
                .enumerate()
                .map(|(i, (tcin, state))| pb::ProductStatus {
                    tcin: tcin.clone(),
                    name: format!("Product {tcin}"),
                    priority: i as u32 + 1,
                    state: *state as i32,
                    quantity: 1,
                    configured: true,
                    ..Default::default()
                })
                .collect(),
            active_lease: self.lease.clone(),
            test_mode: self.test_mode,
            last_event_sequence: self.last_event_sequence,
            next_fencing_token: 1,
            lease_ttl_ms: 30_000,
            ..Default::default()
        }
    }
}

impl From<StatusSnapshot> for pb::GetStatusResponse {
    fn from(s: StatusSnapshot) -> Self {
        s.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_numbers_and_times_its_events_in_order() {
        let h = History::starting(2, 1_000)
            .queued("100")
            .by("w2")
            .granted("200", "lease-1", 1)
            .expired("200", "lease-1", 1);
        assert_eq!(h.last_sequence(), 4);
        let e = h.into_events();
        assert_eq!(
            e.iter()
                .map(|e| (e.sequence, e.unix_ms))
                .collect::<Vec<_>>(),
            [(2, 1_000), (3, 1_010), (4, 1_020)]
        );
        assert_eq!(e[0].watcher_id, "", "a queued event names no watcher");
        assert_eq!(e[1].watcher_id, "w2");
        assert_eq!(e[1].kind, Kind::Granted as i32);
        assert_eq!(e[2].outcome, pb::Outcome::Expired as i32);
        assert_eq!(e[2].to_state, St::Failed as i32);
    }

    #[test]
    fn a_snapshot_lists_products_in_priority_order() {
        let s = StatusSnapshot::three()
            .state("200", St::Attempting)
            .sequence(7)
            .build();
        let got: Vec<(&str, u32, i32)> = s
            .products
            .iter()
            .map(|p| (p.tcin.as_str(), p.priority, p.state))
            .collect();
        assert_eq!(
            got,
            [
                ("100", 1, St::Ready as i32),
                ("200", 2, St::Attempting as i32),
                ("300", 3, St::Ready as i32)
            ]
        );
        assert_eq!(s.last_event_sequence, 7);
    }
}
