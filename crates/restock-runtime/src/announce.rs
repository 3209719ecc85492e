//! Binding listeners and saying where they are. A server given port 0 gets
//! a free port from the kernel; it logs the address it bound and, with
//! `--ready-file PATH`, writes it to a file, so tests and scripts never
//! guess a free port (bind, release, hope is a race).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::net::TcpListener;
use tracing::info;

/// `--ready-file`, flattened into every server's flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReadyFileArgs {
    /// Once listening, write the bound addresses to this file as JSON
    /// (`{"grpc": "127.0.0.1:43127"}`), whole or not at all: with
    /// `--listen 127.0.0.1:0` this is how a script learns the port.
    #[arg(long, env = "RESTOCK_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

/// Why a listener could not be bound or announced. Each names the address
/// or the file.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the ready file {}: {source}", path.display())]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds `addr` for `what` (`"grpc"`, `"http"`).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind { what, addr, source })
}

/// The bound addresses of a server, by name; logged and written to the
/// ready file by [`Bound::announce`].
#[derive(Debug, Default, Clone)]
pub struct Bound(BTreeMap<&'static str, SocketAddr>);

impl Bound {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listener's address under `what`.
    pub fn add(mut self, what: &'static str, listener: &TcpListener) -> Self {
        if let Ok(addr) = listener.local_addr() {
            self.0.insert(what, addr);
        }
        self
    }

    pub fn get(&self, what: &str) -> Option<SocketAddr> {
        self.0.get(what).copied()
    }

    /// Logs every address and writes the ready file, if one was asked for.
    pub fn announce(&self, ready: &ReadyFileArgs) -> Result<(), ListenError> {
        for (what, addr) in &self.0 {
            info!(listener = *what, addr = %addr, "listening");
        }
        match &ready.ready_file {
            Some(path) if !path.as_os_str().is_empty() => self.write(path),
            _ => Ok(()),
        }
    }

    fn write(&self, path: &Path) -> Result<(), ListenError> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_string().into()))
            .collect();
        let text = serde_json::Value::Object(map).to_string();
        // Written beside the target and renamed over it, so a reader never
        // sees half a file.
        let tmp = path.with_extension("tmp");
        let err = |source| ListenError::ReadyFile {
            path: path.to_owned(),
            source,
        };
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// Reads a ready file: the addresses by name. For tests and scripts.
pub fn read_ready_file(path: &Path) -> Option<BTreeMap<String, SocketAddr>> {
    let text = std::fs::read_to_string(path).ok()?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text).ok()?;
    map.into_iter()
        .map(|(k, v)| v.parse().ok().map(|a| (k, a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_is_announced_in_the_ready_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let l = bind("grpc", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, 0);
        Bound::new()
            .add("grpc", &l)
            .announce(&ReadyFileArgs {
                ready_file: Some(path.clone()),
            })
            .unwrap();
        let read = read_ready_file(&path).unwrap();
        assert_eq!(read["grpc"].port(), port);
    }

    #[tokio::test]
    async fn a_taken_address_is_named() {
        let l = bind("grpc", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let e = bind("http", addr).await.unwrap_err().to_string();
        assert!(e.contains(&addr.to_string()) && e.contains("http"), "{e}");
    }
}
