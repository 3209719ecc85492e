//! One reading of the clocks ([`Now`]) and the [`Clock`] that makes it:
//! monotonic time for every deadline, wall-clock time for display and for
//! the state file.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// One reading of the clocks: monotonic for deadlines, wall-clock for display
/// and persistence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

/// Reads both clocks consistently: wall time is derived from the monotonic
/// clock and one wall reading at start, so paused time in tests moves both,
/// and a wall-clock jump never shortens or extends a lease.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_mono: Instant,
    base_unix_ms: u64,
}

impl Clock {
    /// A clock whose wall time starts at the system's time now.
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::starting_at(unix)
    }

    /// A clock whose wall time starts at `unix_ms` now.
    pub fn starting_at(unix_ms: u64) -> Self {
        Self {
            base_mono: Instant::now(),
            base_unix_ms: unix_ms,
        }
    }

    pub fn now(&self) -> Now {
        let mono = Instant::now();
        let since = mono.saturating_duration_since(self.base_mono).as_millis() as u64;
        Now {
            mono,
            unix_ms: self.base_unix_ms + since,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
