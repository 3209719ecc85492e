//! The state file: the arbiter's durable state as JSON, in two parts.
//!
//! - The **snapshot** (`--state-file`), written atomically (temporary file,
//!   fsync, rename, fsync of the folder), so a crash at any moment leaves
//!   either the old or the new one, never a torn one.
//! - Its **journal** (`<state-file>.journal-<N>`, N named in the snapshot):
//!   one JSON line per later write, carrying only what changed
//!   ([`Delta`]), appended and fdatasync'ed before any answer that depends
//!   on it goes out. Writing a few hundred bytes instead of the whole state
//!   keeps a grant's write short however much history the state holds. When
//!   the journal has grown past `JOURNAL_MIN_COMPACT` (or a few times the
//!   snapshot), the next write is a full snapshot naming a new, empty
//!   journal, and the old journal is deleted.
//!
//! Reading applies the journal's records to the snapshot in order. A last
//! line that is incomplete or unreadable is a write that a crash cut short:
//! it was never confirmed (its fdatasync had not returned), so it is left
//! out. Any other unreadable line, or a journal the snapshot names but that
//! is missing, stops start-up with an error that names the file: silently
//! starting empty or from an older state would forget the lease or reuse a
//! fencing token and let a second checkout start while the first still runs.
//! After start-up the first write is always a full snapshot with a new
//! journal, so nothing is ever appended after a torn line.
//!
//! Beside the file itself: [`format`], what the snapshot and a journal
//! record hold; [`saved`], how they are made from the slot and the slot from
//! them.

pub mod etcd;
pub mod format;
pub mod saved;

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tracing::warn;

use crate::limits::{JOURNAL_MIN_COMPACT, JOURNAL_SNAPSHOT_RATIO};
use format::{Delta, SNAPSHOT_VERSION, Snapshot};

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "state file {path} is corrupt (line {line}, column {column}: {message}); \
         refusing to start with an empty state. Move it aside only if no purchase can be running"
    )]
    Corrupt {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "state file {path} has format version {found}; this arbiter reads versions 1 to {SNAPSHOT_VERSION}"
    )]
    Version { path: String, found: u32 },
    #[error(
        "state file {path} continues in journal {journal}, which is missing; \
         refusing to start from an older state. Restore the journal next to the state file"
    )]
    MissingJournal { path: String, journal: String },
    #[error("cannot write state file {path}: {step}: {source}")]
    Write {
        path: String,
        step: &'static str,
        source: io::Error,
    },
    /// An etcd request failed or timed out (`--store etcd`).
    #[error("etcd ({endpoints}): {step}: {message}")]
    Etcd {
        endpoints: String,
        step: &'static str,
        message: String,
    },
    /// The state in etcd cannot be read back.
    #[error(
        "the state in etcd under {key} is unreadable ({message}); refusing to lead with an empty state"
    )]
    EtcdCorrupt { key: String, message: String },
    /// A guarded write found the leadership key gone or changed: another
    /// replica leads (or will). Nothing of the write happened.
    #[error(
        "this replica no longer leads: its leadership key {key} (created at revision {revision}) is gone or replaced in etcd, so the write was refused"
    )]
    Deposed { key: String, revision: i64 },
    /// etcd holds no state under this key and starting a new one could
    /// hand out fencing tokens again (`--store etcd`; the message says what
    /// to give).
    #[error("etcd state {key}: {message}")]
    Refused { key: String, message: String },
}

/// What the arbiter task needs of the place its state goes. [`StateFile`]
/// in the service; the task's tests wrap one to make writes fail or wait, as
/// a full, broken or slow disk would, which no real folder does on demand
/// (tests run as root, so permissions stop nothing).
pub trait StateStore: Clone + Send + Sync + 'static {
    /// The store's name in logs and errors.
    fn describe(&self) -> String;
    /// Whether a write waits for the disk (the task then writes on a
    /// blocking thread).
    fn fsyncs(&self) -> bool;
    /// Whether the next write must be a whole [`Snapshot`].
    fn needs_full(&self) -> bool;
    /// Writes the whole state. Blocking.
    fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
    /// Writes what changed since the last write. Blocking.
    fn append(&self, delta: Delta) -> Result<(), StoreError>;
}

impl StateStore for StateFile {
    fn describe(&self) -> String {
        StateFile::describe(self)
    }

    fn fsyncs(&self) -> bool {
        StateFile::fsyncs(self)
    }

    fn needs_full(&self) -> bool {
        StateFile::needs_full(self)
    }

    fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        StateFile::save(self, snapshot)
    }

    fn append(&self, delta: Delta) -> Result<(), StoreError> {
        StateFile::append(self, delta)
    }
}

/// Where the state lives, or nowhere (`--state-file ''`: memory only).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    /// fsync the files and folder (off only for benchmarks and tests).
    fsync: bool,
    /// The journal being appended to. Only the arbiter task writes, one
    /// write at a time; the lock is never held across an await.
    journal: Arc<Mutex<Journal>>,
    /// Journal size that triggers a full write (see [`JOURNAL_MIN_COMPACT`]).
    compact_at: u64,
}

#[derive(Debug, Default)]
struct Journal {
    /// The newest journal number used or read (0: none yet).
    number: u64,
    /// Open for appending once this process wrote a full snapshot; `None`
    /// makes the next write a full one (at start, and after a failed write).
    file: Option<File>,
    bytes: u64,
    snapshot_bytes: u64,
}

fn io_fail(path: &Path, step: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.display().to_string();
    move |source| StoreError::Write { path, step, source }
}

impl StateFile {
    pub fn new(path: Option<PathBuf>, fsync: bool) -> Self {
        Self {
            path,
            fsync,
            journal: Arc::default(),
            compact_at: JOURNAL_MIN_COMPACT,
        }
    }

    /// Compacts once the journal reaches `bytes` (tests use a small value).
    #[cfg(test)]
    pub fn with_compact_at(mut self, bytes: u64) -> Self {
        self.compact_at = bytes;
        self
    }

    /// Whether writes are fsync'ed (off only with `--no-fsync`).
    pub fn fsyncs(&self) -> bool {
        self.fsync
    }

    pub fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "(memory only)".into(), |p| p.display().to_string())
    }

    /// The journal file numbered `number` next to `path`.
    pub fn journal_path(path: &Path, number: u64) -> PathBuf {
        let name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        path.with_file_name(format!("{name}.journal-{number}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while writing leaves nothing half-updated that matters:
        // the next write is a full one either way.
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the saved state (snapshot plus journal); `Ok(None)` when there
    /// is no file yet.
    pub fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let name = path.display().to_string();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path: name, source }),
        };
        // Check the version first so a newer format gets a clear message.
        #[derive(serde::Deserialize)]
        struct Header {
            version: u32,
        }
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            path: name.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let header: Header = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if header.version == 0 || header.version > SNAPSHOT_VERSION {
            return Err(StoreError::Version {
                path: name,
                found: header.version,
            });
        }
        let mut snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if snapshot.journal != 0 {
            self.replay(path, &mut snapshot)?;
        }
        let mut j = self.lock();
        j.number = j.number.max(snapshot.journal);
        j.file = None;
        Ok(Some(snapshot))
    }

    fn replay(&self, path: &Path, snapshot: &mut Snapshot) -> Result<(), StoreError> {
        let journal = Self::journal_path(path, snapshot.journal);
        let jname = journal.display().to_string();
        let bytes = match fs::read(&journal) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingJournal {
                    path: path.display().to_string(),
                    journal: jname,
                });
            }
            Err(source) => {
                return Err(StoreError::Read {
                    path: jname,
                    source,
                });
            }
        };
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        // The part after the last newline is empty unless a crash cut the
        // last write short.
        let (complete, tail) = lines.split_at(lines.len() - 1);
        if !tail[0].is_empty() {
            warn!(journal = %jname, bytes = tail[0].len(), "journal ends in an incomplete record (a write cut short by a crash, never confirmed); leaving it out");
        }
        for (i, line) in complete.iter().enumerate() {
            let last = i + 1 == complete.len() && tail[0].is_empty();
            let parsed = serde_json::from_slice::<Delta>(line);
            let delta = match parsed {
                Ok(d) if d.journal == snapshot.journal => d,
                Ok(d) => {
                    return Err(StoreError::Corrupt {
                        path: jname,
                        line: i + 1,
                        column: 1,
                        message: format!(
                            "the record belongs to journal {}, not {}",
                            d.journal, snapshot.journal
                        ),
                    });
                }
                // A last record that does not parse was cut short too
                // (its blocks reached the disk out of order): confirmed
                // records were fdatasync'ed whole.
                Err(e) if last => {
                    warn!(journal = %jname, line = i + 1, error = %e, "journal's last record is unreadable (a write cut short by a crash, never confirmed); leaving it out");
                    break;
                }
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: jname,
                        line: i + 1,
                        column: e.column(),
                        message: e.to_string(),
                    });
                }
            };
            snapshot.apply(delta);
        }
        Ok(())
    }

    /// Whether the next write must be a full snapshot: nothing written yet
    /// by this process, the last write failed, or the journal is long.
    pub fn needs_full(&self) -> bool {
        if self.path.is_none() {
            return false;
        }
        let j = self.lock();
        j.file.is_none()
            || j.bytes
                >= self
                    .compact_at
                    .max(JOURNAL_SNAPSHOT_RATIO * j.snapshot_bytes)
    }

    /// Writes a full snapshot atomically and durably, naming a new empty
    /// journal; the old journal is deleted. Blocking: call it from a
    /// blocking thread.
    pub fn save(&self, mut snapshot: Snapshot) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut j = self.lock();
        // Until this write succeeds, nothing may be appended.
        j.file = None;
        let old = j.number;
        let number = old + 1;
        j.number = number;
        let journal_path = Self::journal_path(path, number);
        // Created before the snapshot's rename, so the folder's fsync below
        // makes both durable together.
        // Records are written one after another through this one handle,
        // so each lands at the end.
        let journal = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&journal_path)
            .map_err(io_fail(&journal_path, "create journal"))?;
        snapshot.version = SNAPSHOT_VERSION;
        snapshot.journal = number;
        let bytes = serde_json::to_vec(&snapshot).expect("a snapshot always serializes");
        self.save_bytes(path, &bytes)?;
        if old != 0 {
            let _ = fs::remove_file(Self::journal_path(path, old));
        }
        j.file = Some(journal);
        j.bytes = 0;
        j.snapshot_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Appends one record to the journal and, with fsync on, fdatasyncs it.
    /// Blocking: call it from a blocking thread. A failure makes the next
    /// write a full snapshot (nothing is appended after a failed record).
    pub fn append(&self, mut delta: Delta) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut j = self.lock();
        let number = j.number;
        let journal_path = Self::journal_path(path, number);
        let Some(file) = j.file.as_mut() else {
            return Err(StoreError::Write {
                path: journal_path.display().to_string(),
                step: "append to journal",
                source: io::Error::other("no journal is open; a full write comes first"),
            });
        };
        delta.journal = number;
        let mut line = serde_json::to_vec(&delta).expect("a delta always serializes");
        line.push(b'\n');
        let written = file
            .write_all(&line)
            .map_err(io_fail(&journal_path, "append to journal"))
            .and_then(|()| {
                if self.fsync {
                    file.sync_data()
                        .map_err(io_fail(&journal_path, "fdatasync journal"))
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) => {
                j.bytes += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                j.file = None;
                Err(e)
            }
        }
    }

    fn save_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{file_name}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_fail(path, "create temporary file"))?;
            f.write_all(bytes)
                .map_err(io_fail(path, "write temporary file"))?;
            if self.fsync {
                f.sync_all()
                    .map_err(io_fail(path, "fsync temporary file"))?;
            }
        }
        fs::rename(&tmp, path).map_err(io_fail(path, "rename temporary file over it"))?;
        if self.fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io_fail(path, "fsync folder"))?;
        }
        Ok(())
    }

    /// Fails early (at start-up) when the folder cannot be written.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            fs::create_dir_all(dir).map_err(|source| StoreError::Write {
                path: path.display().to_string(),
                step: "create folder",
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{Arbiter, Clock, Now, Timing};
    use restock_domain::{PriorityList, ProductId, WatcherId};
    use saved::{SaveMarks, snapshot};
    use std::time::Duration;

    fn timing() -> Timing {
        Timing {
            lease_ttl: Duration::from_secs(30),
            stock_ttl: Duration::from_secs(10),
            failure_cooldown: Duration::from_secs(5),
            test_mode: false,
        }
    }

    #[tokio::test]
    async fn saves_and_loads_the_same_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateFile::new(Some(dir.path().join("s.json")), true);
        assert!(store.load().unwrap().is_none());
        let now = Clock::new().now();
        let list = PriorityList::parse(r#"{"products":[{"tcin":"1"}]}"#, "p").unwrap();
        let snap = snapshot(&Arbiter::new(list, timing(), now), now);
        store.save(snap.clone()).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.journal, 1);
        assert_eq!(loaded, Snapshot { journal: 1, ..snap });
        // No temporary file is left behind: the snapshot and its journal.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["s.json", "s.json.journal-1"]);
    }

    fn catalog() -> PriorityList {
        PriorityList::parse(
            r#"{"products":[{"tcin":"1"},{"tcin":"2","quantity":2},{"tcin":"3"},{"tcin":"4"}]}"#,
            "p",
        )
        .unwrap()
    }

    /// Writes what the arbiter task would: a full snapshot when the store
    /// asks for one, else a journal record.
    fn persist(store: &StateFile, a: &Arbiter, marks: &mut SaveMarks, now: Now) {
        if store.needs_full() {
            let mark = SaveMarks::full(a);
            store.save(snapshot(a, now)).unwrap();
            marks.persisted(mark);
        } else {
            let (delta, mark) = marks.delta(a, now);
            store.append(delta).unwrap();
            marks.persisted(mark);
        }
    }

    /// A tiny deterministic generator, so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn the_journal_replays_to_exactly_the_full_snapshot() {
        use restock_domain::{FencingToken, Observation, Outcome, ProductId, WatcherId};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // A small journal limit, so the run crosses several full writes.
        let store = StateFile::new(Some(path.clone()), false).with_compact_at(8 * 1024);
        let clock = Clock::new();
        // With a budget that binds and rolls off, so the spending limit's
        // record (saved only when it changed) is exercised too.
        let budget = restock_domain::BudgetLimits {
            max_spend: Some(restock_domain::Price::from_cents(5_000)),
            max_purchases: Some(3),
            window: Some(std::time::Duration::from_millis(20)),
        };
        let mut a = Arbiter::new(catalog().with_budget(Some(budget)), timing(), clock.now());
        let mut marks = SaveMarks::default();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let tcins: Vec<ProductId> = ["1", "2", "3", "4", "5"]
            .iter()
            .map(|t| ProductId::parse(t).unwrap())
            .collect();
        let watchers: Vec<WatcherId> = ["a", "b", "c"]
            .iter()
            .map(|w| WatcherId::parse(w).unwrap())
            .collect();
        for (i, w) in watchers.iter().enumerate() {
            a.connect(clock.now(), w, i as u64 + 1);
        }
        let mut full_writes = 0;
        for step in 0..3_000u64 {
            let now = clock.now();
            let t = &tcins[rng.next(5) as usize];
            let w = &watchers[rng.next(3) as usize];
            let conn = watchers.iter().position(|x| x == w).unwrap() as u64 + 1;
            match rng.next(8) {
                0 | 1 => {
                    let obs = [Observation {
                        tcin: t.clone(),
                        in_stock: rng.next(2) == 0,
                        price: Some(restock_domain::Price::from_cents(500 + 500 * rng.next(4))),
                        observed_at_unix_ms: 0,
                    }];
                    a.report(now, w, conn, None, &obs).unwrap();
                }
                2 => {
                    let _ = a.acquire(now, t, w, &format!("r{}", rng.next(400)));
                }
                3 | 4 => {
                    if let Some(l) = a.lease().cloned() {
                        let outcome = [
                            Outcome::Purchased,
                            Outcome::Failed,
                            Outcome::OutOfStock,
                            Outcome::Aborted,
                        ][rng.next(4) as usize];
                        a.release(now, &l.lease_id, l.token, outcome, &format!("step {step}"))
                            .unwrap();
                    }
                }
                5 => {
                    if let Some(l) = a.lease().cloned() {
                        a.renew(now, &l.lease_id, l.token).unwrap();
                    } else {
                        let _ = a.renew(
                            now,
                            &restock_domain::LeaseId::parse("lease-0-x").unwrap(),
                            FencingToken(1),
                        );
                    }
                }
                6 => {
                    let _ = a.reset(now, t);
                }
                _ if rng.next(20) == 0 => {
                    a.set_budget(now, None, false, true, "start over").unwrap();
                }
                _ => a.set_paused(now, rng.next(4) == 0),
            }
            let effects = a.take_effects();
            if effects.must_persist || (effects.dirty && rng.next(3) == 0) {
                if store.needs_full() {
                    full_writes += 1;
                }
                persist(&store, &a, &mut marks, now);
                if step % 7 == 0 {
                    let loaded = StateFile::new(Some(path.clone()), false)
                        .load()
                        .unwrap()
                        .unwrap();
                    let expected = Snapshot {
                        journal: loaded.journal,
                        ..snapshot(&a, now)
                    };
                    assert_eq!(loaded, expected, "after step {step}");
                }
            }
        }
        assert!(
            full_writes >= 3,
            "only {full_writes} full writes: the journal never compacted"
        );
        // Old journals are deleted once a newer snapshot is on disk.
        let journals = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".journal-")
            })
            .count();
        assert_eq!(journals, 1);
    }

    /// A snapshot and two journal records on disk; returns the path and the
    /// state after the first and after the second record.
    fn two_records(dir: &Path) -> (PathBuf, Snapshot, Snapshot) {
        let path = dir.join("state.json");
        let store = StateFile::new(Some(path.clone()), true);
        let clock = Clock::new();
        let mut a = Arbiter::new(catalog(), timing(), clock.now());
        let mut marks = SaveMarks::default();
        persist(&store, &a, &mut marks, clock.now());
        a.acquire(
            clock.now(),
            &restock_domain::ProductId::parse("1").unwrap(),
            &restock_domain::WatcherId::parse("w").unwrap(),
            "r1",
        )
        .unwrap();
        let now = clock.now();
        persist(&store, &a, &mut marks, now);
        let first = snapshot(&a, now);
        a.set_paused(now, true);
        persist(&store, &a, &mut marks, now);
        let second = snapshot(&a, now);
        (path, first, second)
    }

    fn journal_of(path: &Path) -> PathBuf {
        StateFile::journal_path(path, 1)
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, first, second) = two_records(dir.path());
        let load = || {
            StateFile::new(Some(path.clone()), true)
                .load()
                .unwrap()
                .unwrap()
        };
        assert_eq!(
            load(),
            Snapshot {
                journal: 1,
                ..second
            }
        );
        let journal = journal_of(&path);
        let text = fs::read(&journal).unwrap();
        let first_end = text.iter().position(|b| *b == b'\n').unwrap() + 1;
        // The second record without its newline, or half of it.
        for cut in [text.len() - 1, first_end + (text.len() - first_end) / 2] {
            fs::write(&journal, &text[..cut]).unwrap();
            assert_eq!(
                load(),
                Snapshot {
                    journal: 1,
                    ..first.clone()
                },
                "cut at {cut}"
            );
        }
        // Its blocks reached the disk out of order: zeros, then its end.
        let mut zeroed = text.clone();
        zeroed[first_end..first_end + 20].fill(0);
        fs::write(&journal, &zeroed).unwrap();
        assert_eq!(
            load(),
            Snapshot {
                journal: 1,
                ..first
            }
        );
    }

    #[test]
    fn a_corrupt_record_before_the_last_is_an_error_naming_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = two_records(dir.path());
        let journal = journal_of(&path);
        let mut text = fs::read(&journal).unwrap();
        text[3] = b'#';
        fs::write(&journal, &text).unwrap();
        let err = StateFile::new(Some(path), true)
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&journal.display().to_string()), "{err}");
        assert!(err.contains("corrupt") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn a_missing_journal_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _) = two_records(dir.path());
        let journal = journal_of(&path);
        fs::remove_file(&journal).unwrap();
        let err = StateFile::new(Some(path), true).load().unwrap_err();
        assert!(matches!(err, StoreError::MissingJournal { .. }), "{err}");
        assert!(
            err.to_string().contains(&journal.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_version_1_file_without_journal_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = Clock::new().now();
        let mut snap = snapshot(&Arbiter::new(catalog(), timing(), now), now);
        snap.version = 1;
        let mut json = serde_json::to_value(&snap).unwrap();
        json.as_object_mut().unwrap().remove("journal");
        fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let store = StateFile::new(Some(path.clone()), true);
        assert_eq!(store.load().unwrap(), Some(snap.clone()));
        // The first write after loading is a full one, in the new format.
        assert!(store.needs_full());
        store.save(snap).unwrap();
        assert_eq!(
            StateFile::new(Some(path), true)
                .load()
                .unwrap()
                .unwrap()
                .version,
            SNAPSHOT_VERSION
        );
    }

    #[test]
    fn after_loading_the_next_write_is_full_and_starts_a_new_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, second) = two_records(dir.path());
        let store = StateFile::new(Some(path.clone()), true);
        let loaded = store.load().unwrap().unwrap();
        assert!(store.needs_full());
        store.save(loaded).unwrap();
        assert!(!StateFile::journal_path(&path, 1).exists());
        let again = StateFile::new(Some(path.clone()), true)
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(
            again,
            Snapshot {
                journal: 2,
                ..second
            }
        );
    }

    /// A snapshot and journal written by the arbiter before its saved format
    /// moved out of the slot's module (a grant, a refusal, a failed release
    /// with its cool-down, a pause, a renewal): they still load, and what
    /// they hold is written back exactly as that arbiter wrote it.
    /// The saved history is bounded in bytes (etcd holds the whole state
    /// in one value), and holds far more than the old 500 events; a journal
    /// replayed keeps the same events as the whole state written at once.
    #[test]
    fn the_saved_history_is_bounded_in_bytes_and_the_journal_keeps_the_same() {
        use crate::limits::{SAVED_EVENT_BYTES, SAVED_EVENTS};
        use format::saved_event_bytes;
        let list = PriorityList::parse(r#"{"products":[{"tcin":"111"}]}"#, "p").unwrap();
        let clock = Clock::starting_at(1_700_000_000_000);
        let mut a = Arbiter::new(list, timing(), clock.now());
        let mut marks = SaveMarks::default();
        let mut on_disk = snapshot(&a, clock.now());
        marks.persisted(SaveMarks::full(&a));
        for i in 0..4_000 {
            a.set_paused(clock.now(), i % 2 == 0);
            if i % 1_000 == 999 {
                let (delta, mark) = marks.delta(&a, clock.now());
                on_disk.apply(delta);
                marks.persisted(mark);
            }
        }
        let whole = snapshot(&a, clock.now());
        let bytes: usize = whole.events.iter().map(saved_event_bytes).sum();
        assert!(bytes <= SAVED_EVENT_BYTES, "{bytes} bytes saved");
        assert!(
            whole.events.len() > 1_500 && whole.events.len() < SAVED_EVENTS,
            "{} events saved",
            whole.events.len()
        );
        assert_eq!(
            whole.events.last().map(|e| e.sequence),
            Some(a.last_sequence())
        );
        assert_eq!(
            on_disk.events, whole.events,
            "journal and whole state agree"
        );
    }

    /// A lease carried over a restart never ends before its deadline as
    /// written (whole milliseconds, cut down on both sides, so the real
    /// time left can be up to 1 ms more than the difference): rounded up.
    #[test]
    fn a_carried_lease_keeps_at_least_its_time_left_at_the_millisecond_boundary() {
        let list = PriorityList::parse(r#"{"products":[{"tcin":"111"}]}"#, "p").unwrap();
        let granted = Clock::starting_at(1_700_000_000_000).now();
        let mut a = Arbiter::new(list.clone(), timing(), granted);
        let w = WatcherId::parse("w1").unwrap();
        let answer = a
            .acquire(granted, &ProductId::parse("111").unwrap(), &w, "r1")
            .unwrap();
        assert!(matches!(answer, crate::slot::AcquireAnswer::Granted(_)));
        let ttl_ms = timing().lease_ttl.as_millis() as u64;
        for (left_ms, want_ms) in [
            (500, Some(501)),
            (1, Some(2)),
            (0, Some(1)),
            (ttl_ms, Some(ttl_ms)),
        ] {
            let written = saved::snapshot(&a, granted);
            let restart =
                Clock::starting_at(written.lease.as_ref().unwrap().expires_at_unix_ms - left_ms)
                    .now();
            let b = saved::restore(written, list.clone(), timing(), restart).unwrap();
            let carried = b.lease().map(|l| l.remaining(restart).as_millis() as u64);
            assert_eq!(carried, want_ms, "{left_ms} ms left as written");
        }
        // Past the written deadline: ended for sure.
        let written = saved::snapshot(&a, granted);
        let late = Clock::starting_at(written.lease.as_ref().unwrap().expires_at_unix_ms + 1).now();
        let b = saved::restore(written, list, timing(), late).unwrap();
        assert!(b.lease().is_none(), "expired while the arbiter was down");
    }

    #[test]
    fn a_state_file_written_before_still_loads_and_saves_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, include_str!("testdata/state-v2.json")).unwrap();
        fs::write(
            StateFile::journal_path(&path, 1),
            include_str!("testdata/state-v2.json.journal-1"),
        )
        .unwrap();
        let loaded = StateFile::new(Some(path), true).load().unwrap().unwrap();
        let mut expected: serde_json::Value =
            serde_json::from_str(include_str!("testdata/state-v2-replayed.json")).unwrap();
        expected["journal"] = 1.into();
        assert_eq!(serde_json::to_value(&loaded).unwrap(), expected);
        // And the slot takes it back: the lease, the cool-down, the answers.
        let now = Clock::starting_at(1_700_000_005_000).now();
        let list = PriorityList::parse(
            r#"{"products":[{"tcin":"111"},{"tcin":"222"},{"tcin":"333"}]}"#,
            "p",
        )
        .unwrap();
        let a = saved::restore(loaded, list, timing(), now).unwrap();
        let lease = a.lease().unwrap();
        assert_eq!((lease.tcin.as_str(), lease.token.0), ("222", 2));
        // Written as ending at ..._034_000 (whole ms, cut down): carried
        // with the time left rounded up.
        assert_eq!(lease.expires_at_unix_ms, 1_700_000_034_001);
        assert_eq!(a.answers().iter().count(), 4);
        assert_eq!(a.ended().len(), 1);
        let status = a.status(now);
        assert!(status.paused);
        let p111 = status
            .products
            .iter()
            .find(|p| p.tcin.as_str() == "111")
            .unwrap();
        assert_eq!(p111.state, restock_domain::ProductState::Failed);
        assert_eq!(p111.cooldown_remaining, Duration::from_secs(5));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{\"version\": 1, \"next_fencing").unwrap();
        let err = StateFile::new(Some(path.clone()), true)
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("corrupt"), "{err}");
        // The file is left as it was.
        assert_eq!(fs::read(&path).unwrap(), b"{\"version\": 1, \"next_fencing");
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{\"version\": 99}").unwrap();
        let err = StateFile::new(Some(path), true).load().unwrap_err();
        assert!(
            matches!(err, StoreError::Version { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_a_folder_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = StateFile::new(Some(dir.path().to_path_buf()), true)
            .load()
            .unwrap_err();
        assert!(matches!(err, StoreError::Read { .. }), "{err}");
    }
}
