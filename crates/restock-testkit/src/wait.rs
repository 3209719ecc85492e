//! Waiting for something to become true, bounded, by polling: never a fixed
//! sleep that is too short on a busy machine and too long on an idle one.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Polls `check` every 25 ms until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the gRPC health service at `addr` (plaintext) says the
/// server as a whole is SERVING.
pub async fn wait_healthy(addr: SocketAddr, limit: Duration) {
    wait_serving(addr, None, limit).await
}

/// [`wait_healthy`], over TLS trusting `tls` when given (`https://`).
pub async fn wait_serving(addr: SocketAddr, tls: Option<&ClientTlsConfig>, limit: Duration) {
    eventually(&format!("{addr} to report SERVING"), limit, || async move {
        let endpoint = match tls {
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .ok()?
                .tls_config(tls.clone())
                .ok()?,
            None => Endpoint::from_shared(format!("http://{addr}")).ok()?,
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .ok()?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        (resp.into_inner().status == 1).then_some(())
    })
    .await
}
