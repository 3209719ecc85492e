//! The state file: the arbiter's durable state as JSON, written atomically
//! (temporary file, fsync, rename, fsync of the folder) so that a crash at any
//! moment leaves either the old or the new state, never a torn one.
//!
//! A state file that exists but cannot be read or parsed stops start-up with
//! an error that names it: silently starting empty would forget the lease and
//! let a second checkout start while the first still runs.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::slot::{SNAPSHOT_VERSION, Snapshot};

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
        "state file {path} has format version {found}; this arbiter reads version {SNAPSHOT_VERSION}"
    )]
    Version { path: String, found: u32 },
    #[error("cannot write state file {path}: {step}: {source}")]
    Write {
        path: String,
        step: &'static str,
        source: io::Error,
    },
}

/// Where the state lives, or nowhere (`--state-file ''`: memory only).
#[derive(Debug, Clone)]
pub struct StateFile {
    path: Option<PathBuf>,
    /// fsync the file and folder (off only for benchmarks and tests).
    fsync: bool,
}

impl StateFile {
    pub fn new(path: Option<PathBuf>, fsync: bool) -> Self {
        Self { path, fsync }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "(memory only)".into(), |p| p.display().to_string())
    }

    /// Reads the saved state; `Ok(None)` when there is no file yet.
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
        if header.version != SNAPSHOT_VERSION {
            return Err(StoreError::Version {
                path: name,
                found: header.version,
            });
        }
        serde_json::from_slice(&bytes).map(Some).map_err(corrupt)
    }

    /// Writes the state atomically and durably. Blocking: call it from a
    /// blocking thread.
    pub fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(snapshot).expect("a snapshot always serializes");
        self.save_bytes(path, &bytes)
    }

    fn save_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let name = path.display().to_string();
        let fail = |step: &'static str| {
            let name = name.clone();
            move |source| StoreError::Write {
                path: name,
                step,
                source,
            }
        };
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
                .map_err(fail("create temporary file"))?;
            f.write_all(bytes).map_err(fail("write temporary file"))?;
            if self.fsync {
                f.sync_all().map_err(fail("fsync temporary file"))?;
            }
        }
        fs::rename(&tmp, path).map_err(fail("rename temporary file over it"))?;
        if self.fsync {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(fail("fsync folder"))?;
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
    use crate::{
        catalog::PriorityList,
        slot::{Arbiter, Clock, Timing},
    };
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
        let snap = Arbiter::new(list, timing(), now).snapshot(now);
        store.save(&snap).unwrap();
        assert_eq!(store.load().unwrap(), Some(snap));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
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
