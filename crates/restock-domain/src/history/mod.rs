//! The one checker of the arbiter's promises, over its history: the events
//! it emits (`WatchEvents`) and, when there are any, its status snapshots
//! (`GetStatus`). `restockctl monitor` feeds it a live system; the fault
//! suite feeds it the whole history of a run after the fact. No I/O and no
//! clock of its own: every observation carries its time, so the tests feed
//! it made-up histories ([`build`] makes them).
//!
//! # What it tracks
//!
//! Product states and the held lease(s) follow the events, which carry every
//! state change in order. A snapshot is taken as truth only at the point of
//! the event stream it describes (its `last_event_sequence`): one that is
//! ahead of the events waits until they catch up; one that is behind is used
//! only for what cannot have changed since (priorities, the fencing-token
//! floor). After missed events (a sequence gap; a restart's jump, which
//! starts with ARBITER_STARTED, is not one) the state-based checks pause
//! until a snapshot at the right point resynchronises the tracking, so the
//! checker never reports a problem it only imagined.
//!
//! Time is the arbiter's: events carry its clock, and a snapshot's time is
//! its arrival time corrected by the smallest observed (arrival - event
//! time) offset. "Now" for the stuck check is the newest moment the checker
//! has knowledge of (the last event, or a snapshot at the current point of
//! the stream), so a burst of old events replayed after a reconnect never
//! looks stuck.
//!
//! # The problems
//!
//! - **Product switch mid-cycle** ([`ProblemKind::ProductSwitch`]): a GRANTED
//!   for product X while a product Y of higher priority was QUEUED (in stock
//!   and eligible; the arbiter only queues eligible products; known once a
//!   snapshot has told the priorities), or an event of the held lease
//!   (GRANTED/RENEWED/RELEASED/EXPIRED) naming a different product than the
//!   lease was granted for, or a snapshot whose lease is for X while Y is
//!   ATTEMPTING.
//! - **Concurrent purchase attempt** ([`ProblemKind::ConcurrentAttempt`]): a
//!   GRANTED while another lease is still held (no RELEASED/EXPIRED seen for
//!   it) or another product is ATTEMPTING; an event of a lease other than
//!   the held one (two leases alive); or a snapshot with two or more
//!   products ATTEMPTING.
//! - **Stuck purchase** ([`ProblemKind::StuckPurchase`]): a product
//!   ATTEMPTING for longer than the limit (a lease renewed forever counts),
//!   or QUEUED for longer than the limit while the slot was free and the
//!   arbiter not paused. A product waiting behind other purchases, or behind
//!   a pause, is waiting by design and not stuck.
//! - **Fencing token reused** ([`ProblemKind::FencingTokenReused`]): a grant
//!   whose token is not above every token seen before (tokens must strictly
//!   increase, across restarts too).
//! - **Stale lease accepted** ([`ProblemKind::StaleLeaseAccepted`]): a
//!   RENEWED, RELEASED or EXPIRED of a lease after its end was seen, or one
//!   carrying another token than the lease was granted with: the arbiter
//!   must refuse a stale lease or token and change nothing.
//! - **Lease never granted** ([`ProblemKind::LeaseNeverGranted`]): an event
//!   of a lease that was never granted, in a history seen from the arbiter's
//!   first event (sequence 1), so the grant cannot have been missed. Without
//!   the whole history this is only a warning.
//!
//! An event of a lease that lacks its lease id, product, watcher or token
//! is a warning and is not checked. A cycle is one lease: GRANTED ..
//! RELEASED/EXPIRED; each problem is reported once.

pub mod build;
mod checker;
mod records;

pub use checker::{Checker, MAX_KEPT_TRANSITIONS};
pub use records::{Cycle, CycleEnd, Notice, Problem, ProblemKind, Warning};

#[cfg(test)]
mod tests;
