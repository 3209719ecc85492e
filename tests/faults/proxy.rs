//! A watcher's network link to the arbiter, as a TCP proxy inside the test
//! process that the suite can cut and heal.
//!
//! Each watcher dials the arbiter through its own proxy, which listens on
//! its host's loopback address (127.0.0.2 for one host, 127.0.0.3 for the
//! other) and dials the arbiter from that address. Cutting the proxy is a
//! real partition of that watcher's link, with no root privileges and no
//! firewall rules to clean up, and it is exact: the suite knows to the
//! millisecond when the link was cut and healed.
//!
//! Two ways to cut:
//! - [`LinkState::BlackHole`]: nothing passes in either direction, but
//!   connections stay open and nothing is refused, like packets lost in a
//!   partition. What was sent meanwhile is held and delivered when the link
//!   heals (TCP retransmission after a partition), so stale messages arrive
//!   late, the hard case for a lease protocol.
//! - [`LinkState::Down`]: every connection through the link is closed at
//!   once and new ones are closed on arrival, like a host whose network
//!   went away.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpSocket, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the link lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Open,
    BlackHole,
    Down,
}

/// See the module documentation. The proxy stops when dropped.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    state: watch::Sender<LinkState>,
    upstream: watch::Sender<SocketAddr>,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on `ip` (a free port) and forwards to `upstream`, dialing
    /// from `ip` so the arbiter sees the connection come from that host.
    pub async fn start(ip: IpAddr, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(LinkState::Open);
        let (upstream, _) = watch::channel(upstream);
        let states = state.clone();
        let upstreams = upstream.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rx = states.subscribe();
                tokio::spawn(connection(client, ip, upstreams.subscribe(), rx));
            }
        });
        Ok(Self {
            addr,
            state,
            upstream,
            accept,
        })
    }

    /// Points the link at another server: new connections go there, and
    /// the ones open now are closed (their client dials again, reaching
    /// the new one). HA mode uses it for a link that follows the leader.
    pub fn retarget(&self, upstream: SocketAddr) {
        self.upstream.send_if_modified(|u| {
            let changed = *u != upstream;
            *u = upstream;
            changed
        });
    }

    /// A handle that retargets the link (as [`LinkProxy::retarget`]) from
    /// another task.
    pub fn upstream_handle(&self) -> watch::Sender<SocketAddr> {
        self.upstream.clone()
    }

    /// Where the watcher dials.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, s: LinkState) {
        self.state.send_replace(s);
    }

    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closes every connection too: their tasks see the sender go.
        self.state.send_replace(LinkState::Down);
    }
}

/// Waits until the link is open (`true`) or down (`false`).
async fn gate(rx: &mut watch::Receiver<LinkState>) -> bool {
    loop {
        match *rx.borrow_and_update() {
            LinkState::Open => return true,
            LinkState::Down => return false,
            LinkState::BlackHole => {}
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// Completes when the link goes down (or the proxy is dropped).
async fn down(mut rx: watch::Receiver<LinkState>) {
    loop {
        if *rx.borrow_and_update() == LinkState::Down {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Completes when the link is pointed elsewhere (or the proxy is dropped).
async fn retargeted(mut upstream: watch::Receiver<SocketAddr>) {
    let _ = upstream.changed().await;
}

async fn connection(
    client: TcpStream,
    ip: IpAddr,
    mut upstream: watch::Receiver<SocketAddr>,
    mut rx: watch::Receiver<LinkState>,
) {
    // A connection that arrives during a black hole waits, unanswered,
    // like a SYN lost in a partition.
    if !gate(&mut rx).await {
        return;
    }
    let to = *upstream.borrow_and_update();
    let Ok(server) = dial(ip, to).await else {
        // The arbiter is down: the client sees its connection close.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending (or the link going down) ends both: gRPC
    // never half-closes a connection.
    tokio::select! {
        () = pump(cr, sw, rx.clone()) => {}
        () = pump(sr, cw, rx.clone()) => {}
        () = down(rx) => {}
        () = retargeted(upstream) => {}
    }
}

async fn dial(ip: IpAddr, upstream: SocketAddr) -> io::Result<TcpStream> {
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(upstream).await
}

/// Copies one direction. Bytes read during a black hole (and an end of
/// stream) are held until the link opens again.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut rx: watch::Receiver<LinkState>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if !gate(&mut rx).await {
            return;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server; returns its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8], limit: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(limit, s.read_exact(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(got)
    }

    #[tokio::test]
    async fn a_black_hole_holds_bytes_until_it_heals_and_down_closes() {
        let proxy = LinkProxy::start("127.0.0.2".parse().unwrap(), echo().await)
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let short = Duration::from_millis(300);
        assert_eq!(round_trip(&mut s, b"ping", short).await.unwrap(), b"ping");

        proxy.set(LinkState::BlackHole);
        assert!(round_trip(&mut s, b"lost", short).await.is_none());
        proxy.set(LinkState::Open);
        // What was sent into the black hole arrives after it heals.
        let mut late = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut late))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&late, b"lost");

        proxy.set(LinkState::Down);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a link that goes down closes its connections");
    }

    #[tokio::test]
    async fn a_retargeted_link_closes_its_connections_and_dials_the_new_server() {
        let (a, b) = (echo().await, echo().await);
        let proxy = LinkProxy::start("127.0.0.2".parse().unwrap(), a)
            .await
            .unwrap();
        let short = Duration::from_millis(500);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"a", short).await.unwrap(), b"a");
        proxy.retarget(b);
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a retargeted link closes what it carried");
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"b", short).await.unwrap(), b"b");
    }
}
