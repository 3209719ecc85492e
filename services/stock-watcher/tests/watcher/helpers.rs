//! Starting the real `stock-watcher` binary next to the real arbiter, and
//! small gRPC helpers.

use std::{collections::HashMap, time::Duration};

use restock_proto::v1::{
    self as pb, GetStatusRequest, GetWatcherStatusRequest, WatchEventsRequest,
    stock_watcher_client::StockWatcherClient,
};
use restock_testkit::{ArbiterProcess, Process, eventually, free_port, wait_healthy};
use tonic::transport::Channel;

/// A running `stock-watcher`, killed when dropped.
#[derive(Debug)]
pub struct WatcherProcess {
    pub addr: String,
    pub process: Process,
    /// Holds the log file until the watcher is gone.
    _dir: tempfile::TempDir,
}

impl WatcherProcess {
    /// Starts the watcher against `arbiter` and the stub's URL with extra
    /// flags, and waits until it is healthy and connected.
    pub async fn start(
        arbiter: &ArbiterProcess,
        source_url: &str,
        id: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = [
            "--arbiter",
            &arbiter.url(),
            "--watcher-id",
            id,
            "--listen",
            &addr,
            "--source",
            "target",
            "--source-url",
            source_url,
            "--poll-interval",
            "100ms",
            "--reconnect-max",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Process::start(
            &format!("stock-watcher {id}"),
            env!("CARGO_BIN_EXE_stock-watcher").into(),
            args,
            HashMap::new(),
            dir.path().join("watcher.log"),
        );
        let w = Self {
            addr,
            process,
            _dir: dir,
        };
        wait_healthy(&w.addr, Duration::from_secs(20)).await;
        w.wait_connected().await;
        w
    }

    pub async fn client(&self) -> StockWatcherClient<Channel> {
        StockWatcherClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to the watcher")
    }

    pub async fn status(&self) -> pb::GetWatcherStatusResponse {
        self.client()
            .await
            .get_watcher_status(GetWatcherStatusRequest {})
            .await
            .expect("GetWatcherStatus")
            .into_inner()
    }

    /// Waits until the watcher holds a stream to the arbiter and polls.
    pub async fn wait_connected(&self) {
        eventually(
            "the watcher to connect and poll",
            Duration::from_secs(20),
            || async {
                let s = self.status().await;
                (s.arbiter_connected && s.products.iter().any(|p| p.polls > 0)).then_some(())
            },
        )
        .await;
    }
}

pub async fn arbiter_status(a: &ArbiterProcess) -> pb::GetStatusResponse {
    a.client()
        .await
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

pub fn product<'a>(s: &'a pb::GetStatusResponse, tcin: &str) -> &'a pb::ProductStatus {
    s.products
        .iter()
        .find(|p| p.tcin == tcin)
        .unwrap_or_else(|| panic!("product {tcin} not in the arbiter's status"))
}

/// Every event the arbiter still has in its history.
pub async fn events(a: &ArbiterProcess) -> Vec<pb::Event> {
    let last = arbiter_status(a).await.last_event_sequence;
    let mut stream = a
        .client()
        .await
        .watch_events(WatchEventsRequest { from_sequence: 1 })
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await
    {
        let seq = e.sequence;
        out.push(e);
        if seq >= last {
            break;
        }
    }
    out
}

pub fn kind(e: &pb::Event) -> pb::event::Kind {
    pb::event::Kind::try_from(e.kind).unwrap_or(pb::event::Kind::Unspecified)
}
