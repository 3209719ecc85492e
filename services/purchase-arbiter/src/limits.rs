//! Every bound and tuning figure of the arbiter in one place, each with the
//! reason for its value. A bound keeps memory, disk and work per request
//! finite whatever a client sends; a tuning figure trades latency against
//! throughput. Flags with defaults live in `config`; these are not flags
//! because no deployment has needed to change them.

use std::time::Duration;

// ----- what the slot keeps in memory -----

/// Most products the arbiter tracks (configured plus reported). A watch
/// list is a few dozen products; the bound stops a watcher (or a bug) that
/// reports endless new ids from growing the table, the status and the state
/// file without limit. Reports of more new products are refused.
pub const MAX_PRODUCTS: usize = 10_000;

/// Most watchers remembered, connected or not; the longest-disconnected are
/// forgotten first. Four times the 1,000 streams the benchmark holds, so a
/// connected watcher is never forgotten, while watchers that come and go
/// under fresh ids cannot grow the table without limit.
pub const MAX_WATCHERS: usize = 4_096;

/// Events kept in memory for `WatchEvents` followers to resume from. A
/// follower that was away for a restart or a network blip resumes from its
/// last sequence number; ten thousand events is over twenty minutes of the
/// fault suite's non-stop TEST_MODE cycling (3,749 events in ten minutes),
/// far longer for a real system, and a few MB.
pub const EVENT_HISTORY: usize = 10_000;

/// `AcquirePurchase` answers remembered per (watcher, request id). A client
/// retries within seconds; four thousand answers outlast any retry by far
/// while keeping the table (and its copy in the state file) small.
pub const IDEMPOTENCY_ENTRIES: usize = 4_096;

/// Ended leases remembered, so a late renew or release gets "already ended:
/// purchased" instead of "unknown lease", and a repeated release is
/// recognised as harmless. A holder is late by seconds, a few leases at most.
pub const ENDED_LEASES: usize = 1_024;

/// Purchases the spending limit's record keeps one by one. It is saved
/// whole with every write that changes it (each grant and release), so it
/// must stay small: 128 entries are a few KB of JSON. Beyond it the oldest
/// two are merged into one at the later time, which can only make spend
/// count longer, never shorter; spend older than the window is dropped
/// first, so merging happens only with more than 128 purchases inside one
/// window (or with no window, where only the sums matter).
pub const BUDGET_SPENDS: usize = 128;

/// Event sequence numbers are reserved on disk in blocks of this size: one
/// extra write per thousand events instead of one per event, and a restart
/// continues after the block, so a number shown before a crash is never
/// shown again for another event.
pub const SEQUENCE_BLOCK: u64 = 1_000;

// ----- the state file -----

/// Events kept in the state file (and in etcd), for followers resuming
/// across a restart: the newest that fit in [`SAVED_EVENT_BYTES`], never
/// more than memory holds. Bounded in bytes, not in events, because what
/// it must not outgrow is a size: every whole snapshot writes them all, and
/// with `--store etcd` the whole state is one etcd value, which etcd caps
/// at 1.5 MiB by default (`--max-request-bytes`); the products, leases and
/// answers need the rest. 500 events (the old count) was about two minutes
/// of the fault suite's non-stop cycling: a notifier away across a restart
/// for longer lost `purchased` alerts. 512 KiB is about 2,000 ordinary
/// events (about 250 bytes each), over five minutes of that cycling and
/// hours of a real system's; a gap beyond it is alerted by the notifier
/// (`missed_events`).
pub const SAVED_EVENT_BYTES: usize = 512 * 1024;

/// The count bound beside [`SAVED_EVENT_BYTES`]: what memory holds.
pub const SAVED_EVENTS: usize = EVENT_HISTORY;

/// The journal grows to at least this many bytes before a full snapshot
/// replaces it (and to [`JOURNAL_SNAPSHOT_RATIO`] times the snapshot's size
/// if that is more), so full writes stay rare (one per few thousand grants)
/// and replay at start-up stays short.
pub const JOURNAL_MIN_COMPACT: u64 = 4 * 1024 * 1024;

/// See [`JOURNAL_MIN_COMPACT`]: with a large state (many products), a
/// journal a few times the snapshot's size is still cheap to replay, and
/// compacting sooner would make most writes full ones.
pub const JOURNAL_SNAPSHOT_RATIO: u64 = 4;

/// With `--store etcd`, journal records that make the next write a whole
/// state (which replaces them): what a newly elected leader reads back
/// before it can grant, so kept well below the file store's
/// [`JOURNAL_MIN_COMPACT`].
pub const ETCD_JOURNAL_COMPACT: u64 = 512 * 1024;

/// How often a leader (and a follower, for who leads) asks etcd, as a
/// fraction of `--election-ttl`: a leader checks its leadership key and
/// keeps its etcd lease alive three times per TTL.
pub const ETCD_CHECKS_PER_TTL: u32 = 3;

/// Revisions of etcd's history a leader keeps when it compacts: a replica
/// waiting in its campaign watches the key ahead of it from the revision
/// it last read, and compacting past that revision would end its campaign
/// with an error (it would campaign again, at the back of the queue).
pub const ETCD_KEEP_REVISIONS: i64 = 10_000;

// ----- the owning task -----

/// Commands queued for the arbiter task. When it is full, callers wait for
/// room: that is what slows a stream that reports faster than the arbiter
/// absorbs, instead of growing memory.
pub const COMMAND_QUEUE: usize = 1_024;

/// Most answers that wait on one write. Group commit shares one fdatasync
/// among everything that arrived meanwhile; past a few hundred answers the
/// saving per answer is negligible, and a bound keeps the first caller of a
/// batch from waiting behind an unbounded tail. Stock reports wait for no
/// answer and do not count.
pub const MAX_BATCH: usize = 512;

/// Changes no answer waits for (stock reports, joins) reach disk this soon.
/// None of them is a promise (sightings are not even saved), so they ride
/// along with the next write an answer needs, or this timer, whichever
/// comes first; a second keeps reports from costing a write each.
pub const LAZY_FLUSH: Duration = Duration::from_secs(1);

/// After a write failed, how long before it is tried again. Until then the
/// task takes no new commands (callers wait in the queue) rather than trying
/// a failing disk once per command: a dead disk costs a few writes a second,
/// not a busy loop, and one that comes back costs callers a fraction of a
/// second.
pub const WRITE_RETRY: Duration = Duration::from_millis(250);

/// Events buffered for `WatchEvents` followers before a slow one must catch
/// up from history: a burst of a few thousand transitions (a restock storm)
/// reaches every follower live.
pub const EVENT_BUFFER: usize = 4_096;

/// Messages buffered per watcher stream before it counts as not reading. A
/// stream carries a catalog, grants and revocations: a handful a minute; a
/// stream that leaves 64 unread is stuck, and a grant put on it would sit
/// there while its lease ran out.
pub const STREAM_BUFFER: usize = 64;

// ----- gRPC requests -----

/// How long a new `StreamStock` stream may take to name its watcher (its
/// first report). A watcher sends it at once; the bound stops a connection
/// that opens streams and says nothing from holding them forever.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Most observations in one report message: one per product, so the same
/// bound as [`MAX_PRODUCTS`]; more in one message can only be an error.
pub const MAX_OBSERVATIONS_PER_REPORT: usize = MAX_PRODUCTS;

/// Longest `request_id` (idempotency key) accepted, in bytes. A UUID is 36;
/// the bound keeps the remembered answers (memory and state file) small.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Longest release `detail` kept, in bytes. It is shown in events, the
/// status and the state file; a checkout's error message fits, a page of
/// HTML does not need to.
pub const MAX_DETAIL_BYTES: usize = 4_096;

/// Events buffered per `WatchEvents` stream between the follower task and
/// the network: enough to send history in batches without a wake-up per
/// event, small enough that a thousand followers stay cheap.
pub const EVENT_FOLLOWER_BUFFER: usize = 256;

/// Largest message the arbiter sends. Its answers are bounded by the limits
/// above (a `GetStatus` with [`MAX_PRODUCTS`] products is a few MiB); this
/// only keeps tonic's 4 MiB default from refusing such a status.
pub const MAX_ENCODING_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// HTTP/2 keep-alive ping interval and timeout. A watcher's stream is idle
/// between reports; pings find a peer that vanished (a cut cable sends no
/// FIN) within 40 s and keep NAT and proxy mappings open.
pub const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);

// ----- flags -----

/// Shortest lease and stock TTL accepted: below this, a lease would expire
/// before a renewal could cross the network and back.
pub const MIN_TTL: Duration = Duration::from_millis(100);

/// Smallest `--max-message-bytes` accepted: a report or request carrying a
/// few ids must fit.
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// The poll plan is made again at most this often after the watchers or
/// the product list change: a burst of watchers connecting together gets a
/// few plans, not one each, and every plan goes to every planned watcher.
pub const REPLAN_MIN_GAP: Duration = Duration::from_millis(200);

/// The plan is re-sent this often when nothing changed, from the arbiter's
/// clock: a watcher's clock running 50 ppm fast drifts 1.5 ms in this time,
/// so turns stay even for as long as the watchers run.
pub const PLAN_RESEND: Duration = Duration::from_secs(30);
