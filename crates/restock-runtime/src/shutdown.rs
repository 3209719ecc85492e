//! The shutdown signal every service waits for.

/// Completes on SIGTERM (`docker stop`) or SIGINT (Ctrl-C). Where SIGTERM
/// cannot be watched it says so and waits for SIGINT alone.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT (Ctrl-C)");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
