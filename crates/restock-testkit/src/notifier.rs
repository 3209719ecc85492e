//! The real `restock-notifier` binary in a test: following an arbiter, with
//! its state file in its own folder, killed (and restartable) at will.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use restock_proto::v1::{
    self as pb, GetNotifierStatusRequest, SendTestRequest, notifier_client::NotifierClient,
};
use tonic::transport::Channel;

use crate::{Announce, Process, bin, wait_healthy};

/// How long a notifier may take to report SERVING.
const HEALTHY_LIMIT: Duration = Duration::from_secs(30);

/// A running `restock-notifier`, killed when dropped.
#[derive(Debug)]
pub struct NotifierProcess {
    // Dropped before `dir`, so its log can still be printed.
    pub process: Process,
    pub dir: tempfile::TempDir,
}

impl NotifierProcess {
    /// Starts the notifier following `arbiter_url` with `args` (the
    /// destinations, time limits), its state file in its own folder, and
    /// waits for health.
    pub async fn start(arbiter_url: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut all = vec![
            "--arbiter".to_owned(),
            arbiter_url.to_owned(),
            "--state-file".to_owned(),
            dir.path().join("notifier-state.json").display().to_string(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let process = Process::start_server(
            "restock-notifier",
            bin("restock-notifier"),
            all,
            dir.path().join("notifier.log"),
            Announce::grpc(),
        )
        .await;
        let n = Self { process, dir };
        wait_healthy(n.addr(), HEALTHY_LIMIT).await;
        n
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://ADDR/metrics` of a notifier started with
    /// `--http-listen 127.0.0.1:0` (panics if it serves no HTTP).
    pub fn metrics_url(&self) -> String {
        let addr = self.process.announced("http").unwrap_or_else(|| {
            panic!(
                "the notifier announced no HTTP listener; start it with --http-listen 127.0.0.1:0"
            )
        });
        format!("http://{addr}/metrics")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("notifier-state.json")
    }

    /// The state file as JSON (`null` before the first write).
    pub fn state(&self) -> serde_json::Value {
        std::fs::read(self.state_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub async fn client(&self) -> NotifierClient<Channel> {
        NotifierClient::connect(self.url())
            .await
            .expect("connect to the notifier")
    }

    /// `GetNotifierStatus`; panics on an error.
    pub async fn status(&self) -> pb::GetNotifierStatusResponse {
        self.client()
            .await
            .get_notifier_status(GetNotifierStatusRequest {})
            .await
            .expect("GetNotifierStatus")
            .into_inner()
    }

    /// `SendTest` to `destination` (empty: all); panics on an error status.
    pub async fn send_test(&self, destination: &str) -> pb::SendTestResponse {
        self.client()
            .await
            .send_test(SendTestRequest {
                destination: destination.to_owned(),
            })
            .await
            .expect("SendTest")
            .into_inner()
    }

    /// `kill -9`, start again with the same flags and state, wait for
    /// health.
    pub async fn kill9_and_restart(&mut self) {
        self.process.restart();
        self.process.wait_ready().await;
        wait_healthy(self.addr(), HEALTHY_LIMIT).await;
    }
}
