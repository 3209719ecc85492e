//! The etcd baseline: etcd's own lock service (`v3lockpb.Lock`, what
//! `etcdctl lock` waits in), over etcd's native gRPC.
//!
//! The few messages needed are declared here with `prost` derives instead
//! of generated from etcd's `.proto` files: the `etcd-client` crate compiles
//! those at build time and needs `protoc` on the PATH, which a plain
//! `cargo clippy --workspace` on a fresh machine does not have (the
//! workspace vendors protoc only inside `restock-proto`'s build script).
//! Field numbers are etcd's (`rpc.proto`, `v3lock.proto`); fields the
//! benchmark does not read (response headers) are skipped by prost.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rand::Rng;
use tokio::task::JoinSet;
use tonic::{
    client::Grpc,
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};

use crate::{procs, stats::Latencies};

/// etcd's messages, by field number.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantRequest {
        #[prost(int64, tag = "1")]
        pub ttl: i64,
        #[prost(int64, tag = "2")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantResponse {
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(string, tag = "4")]
        pub error: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LockRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub name: Vec<u8>,
        #[prost(int64, tag = "2")]
        pub lease: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LockResponse {
        #[prost(bytes = "vec", tag = "2")]
        pub key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UnlockRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UnlockResponse {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(string, tag = "2")]
        pub version: String,
    }
}

const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const LOCK: &str = "/v3lockpb.Lock/Lock";
const UNLOCK: &str = "/v3lockpb.Lock/Unlock";
const STATUS: &str = "/etcdserverpb.Maintenance/Status";
/// Session lease TTL: longer than any scenario, so no keep-alive is needed.
const LEASE_TTL_S: i64 = 600;

async fn unary<Req, Resp>(
    grpc: &mut Grpc<Channel>,
    path: &'static str,
    req: Req,
) -> anyhow::Result<Resp>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready()
        .await
        .with_context(|| format!("etcd connection not ready for {path}"))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let r = grpc
        .unary(
            tonic::Request::new(req),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .with_context(|| format!("etcd {path}"))?;
    Ok(r.into_inner())
}

async fn connect(url: &str) -> anyhow::Result<Grpc<Channel>> {
    let channel = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("bad etcd URL {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to etcd at {url}"))?;
    Ok(Grpc::new(channel))
}

/// One etcd session (its own connection and lease) using one lock name.
#[derive(Debug)]
pub struct EtcdLock {
    grpc: Grpc<Channel>,
    lease: i64,
    name: Vec<u8>,
}

impl EtcdLock {
    pub async fn connect(url: &str, name: &str) -> anyhow::Result<Self> {
        let mut grpc = connect(url).await?;
        let lease: wire::LeaseGrantResponse = unary(
            &mut grpc,
            LEASE_GRANT,
            wire::LeaseGrantRequest {
                ttl: LEASE_TTL_S,
                id: 0,
            },
        )
        .await?;
        if !lease.error.is_empty() || lease.id == 0 {
            bail!("etcd refused a lease: {:?}", lease.error);
        }
        Ok(Self {
            grpc,
            lease: lease.id,
            name: name.as_bytes().to_vec(),
        })
    }

    /// Blocks until the lock is ours; returns the key that holds it.
    pub async fn lock(&mut self) -> anyhow::Result<Vec<u8>> {
        let r: wire::LockResponse = unary(
            &mut self.grpc,
            LOCK,
            wire::LockRequest {
                name: self.name.clone(),
                lease: self.lease,
            },
        )
        .await?;
        if r.key.is_empty() {
            bail!("etcd Lock answered without a key");
        }
        Ok(r.key)
    }

    pub async fn unlock(&mut self, key: Vec<u8>) -> anyhow::Result<()> {
        let _: wire::UnlockResponse =
            unary(&mut self.grpc, UNLOCK, wire::UnlockRequest { key }).await?;
        Ok(())
    }
}

/// Waits until etcd at `url` answers a status request; returns its version.
pub async fn wait_ready(url: &str, limit: Duration) -> anyhow::Result<String> {
    procs::eventually(&format!("etcd at {url} to answer"), limit, || async {
        let mut grpc = connect(url).await?;
        let s: wire::StatusResponse = unary(&mut grpc, STATUS, wire::StatusRequest {}).await?;
        Ok(Some(s.version))
    })
    .await
}

fn unique_name(what: &str) -> String {
    format!("restock-bench/{what}/{:016x}", rand::rng().random::<u64>())
}

struct HandoffState {
    released_at: Mutex<Option<Instant>>,
    samples: Mutex<Latencies>,
    done: AtomicBool,
}

/// `waiters + 1` sessions queue in etcd's Lock call; the holder keeps the
/// lock 0–2 ms, unlocks, and queues again. Measures unlock → the next
/// session's Lock call returning, `count` times.
pub async fn handoff(url: &str, waiters: usize, count: usize) -> anyhow::Result<Latencies> {
    let name = unique_name("handoff");
    let state = Arc::new(HandoffState {
        released_at: Mutex::new(None),
        samples: Mutex::new(Latencies::with_capacity(count)),
        done: AtomicBool::new(false),
    });
    let (finished_tx, mut finished_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1);
    let mut tasks = JoinSet::new();
    for _ in 0..=waiters {
        let mut lock = EtcdLock::connect(url, &name).await?;
        let state = state.clone();
        let finished = finished_tx.clone();
        tasks.spawn(async move {
            let run = async {
                loop {
                    let key = lock.lock().await?;
                    let at = Instant::now();
                    let released = state.released_at.lock().expect("not poisoned").take();
                    if let Some(t0) = released {
                        let mut s = state.samples.lock().expect("not poisoned");
                        s.record(at - t0);
                        if s.len() >= count && !state.done.swap(true, Ordering::Relaxed) {
                            return anyhow::Ok(());
                        }
                    }
                    let hold = rand::rng().random_range(0..2_000u64);
                    tokio::time::sleep(Duration::from_micros(hold)).await;
                    *state.released_at.lock().expect("not poisoned") = Some(Instant::now());
                    lock.unlock(key).await?;
                }
            };
            let r = run.await;
            let _ = finished.send(r).await;
        });
    }
    drop(finished_tx);
    // The first session to finish (or fail) ends the run; the others are
    // still blocked in Lock and are cancelled.
    let outcome = finished_rx
        .recv()
        .await
        .context("every etcd session ended without a result")?;
    tasks.abort_all();
    outcome?;
    let samples = std::mem::take(&mut *state.samples.lock().expect("not poisoned"));
    Ok(samples)
}

/// The lock is free: how long one Lock call takes (the unlock after it is
/// not timed).
pub async fn grant(url: &str, count: usize) -> anyhow::Result<Latencies> {
    let mut lock = EtcdLock::connect(url, &unique_name("grant")).await?;
    let mut lat = Latencies::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let key = lock.lock().await?;
        lat.record(t0.elapsed());
        lock.unlock(key).await?;
    }
    Ok(lat)
}

/// Lock + unlock, timed together.
pub async fn cycle(url: &str, count: usize) -> anyhow::Result<Latencies> {
    let mut lock = EtcdLock::connect(url, &unique_name("cycle")).await?;
    let mut lat = Latencies::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        let key = lock.lock().await?;
        lock.unlock(key).await?;
        lat.record(t0.elapsed());
    }
    Ok(lat)
}
