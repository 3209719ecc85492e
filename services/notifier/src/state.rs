//! The state file (`--state-file`): the position in the arbiter's event
//! history, what the rules remember, the outbox of undelivered alerts, and
//! each destination's delivery record.
//!
//! It is written whole and atomically (a temporary file beside it, fsync,
//! rename over it, fsync of the folder), so a `kill -9` at any moment
//! leaves either the old state or the new one. The order of things:
//!
//! - an event's alerts enter the outbox and the position moves past the
//!   event in one write, before any of them is sent: a crash re-reads the
//!   event or finds its alerts pending, never loses them;
//! - a delivered alert leaves the outbox in a write made right after the
//!   destination accepted it. A crash between the two is the one moment a
//!   duplicate is possible; the alert's id (and `Idempotency-Key`) is the
//!   same on the resend, so a receiver can drop it.
//!
//! A state file that cannot be read or parsed stops the notifier with an
//! error naming it; it is never silently replaced by an empty one.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{alert::Alert, rules::RulesState};

/// The format's version, written in every file.
pub const VERSION: u32 = 1;

/// How many given-up alerts are kept for the status call.
pub const FAILED_KEPT: usize = 100;

/// One alert waiting for one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The destination's tag.
    pub dest: String,
    /// The alert, its id already the destination's.
    pub alert: Alert,
    /// When it entered the outbox (the notifier's clock, unix ms): the
    /// retry deadline counts from here.
    pub queued_unix_ms: u64,
    #[serde(default)]
    pub attempts: u32,
}

/// An alert given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub dest: String,
    pub id: String,
    pub reason: String,
    pub unix_ms: u64,
}

/// One destination's delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub sent: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub last_error_unix_ms: u64,
    #[serde(default)]
    pub last_sent_unix_ms: u64,
}

/// Everything the state file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default)]
    pub version: u32,
    /// The next event sequence to ask for; 0 before the first connection
    /// (then the notifier starts at the arbiter's newest event).
    #[serde(default)]
    pub next_sequence: u64,
    #[serde(default)]
    pub rules: RulesState,
    /// Undelivered alerts, oldest first.
    #[serde(default)]
    pub outbox: Vec<Pending>,
    /// Delivery records by destination tag.
    #[serde(default)]
    pub records: BTreeMap<String, Record>,
    /// The latest alerts given up on, newest last.
    #[serde(default)]
    pub failed: Vec<Failed>,
}

/// Why the state file could not be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {} is not a notifier state file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the state file {} has format version {found}; this build reads up to {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write the state file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the state file; a missing one is a fresh start.
pub fn load(path: &Path) -> Result<Saved, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Saved {
                version: VERSION,
                ..Saved::default()
            });
        }
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if saved.version > VERSION {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: saved.version,
        });
    }
    Ok(saved)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename over it, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(err)?;
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    // The rename itself is durable once the folder is synced.
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertKind;

    #[test]
    fn saved_state_round_trips_and_a_missing_file_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(load(&path).unwrap().next_sequence, 0);
        let mut s = Saved {
            version: VERSION,
            next_sequence: 42,
            ..Saved::default()
        };
        s.outbox.push(Pending {
            dest: "abcd".into(),
            alert: Alert::new(
                "e1-in_stock-abcd".into(),
                AlertKind::InStock,
                "t".into(),
                "m".into(),
                1,
            ),
            queued_unix_ms: 5,
            attempts: 0,
        });
        write_atomic(&path, &serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), s);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
