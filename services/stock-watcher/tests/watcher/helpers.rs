//! Starting the real `stock-watcher` binary against an arbiter and the
//! store stub.

use restock_testkit::{ArbiterEndpoint, WatcherOptions, WatcherProcess};

use crate::stub::StoreStub;

/// Watcher `w1` polling `store`, with `extra` flags: started, healthy, and
/// connected to `arbiter` with a first poll done.
pub async fn start_watcher(
    arbiter: &impl ArbiterEndpoint,
    store: &StoreStub,
    extra: &[&str],
) -> WatcherProcess {
    start(options(arbiter, store).args(extra)).await
}

/// [`start_watcher`], buying through the stub's checkout endpoint.
pub async fn start_buying_watcher(
    arbiter: &impl ArbiterEndpoint,
    store: &StoreStub,
    extra: &[&str],
) -> WatcherProcess {
    start(
        options(arbiter, store)
            .checkout_http(store.checkout_url())
            .args(extra),
    )
    .await
}

fn options(arbiter: &impl ArbiterEndpoint, store: &StoreStub) -> WatcherOptions {
    WatcherOptions::new("w1", arbiter.url()).source(store.url())
}

async fn start(opts: WatcherOptions) -> WatcherProcess {
    let w = WatcherProcess::start_with(opts).await;
    w.wait_connected().await;
    w
}
