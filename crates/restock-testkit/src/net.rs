//! Ports held for a test: [`ClosedPort`], an address where nobody listens,
//! for "cannot reach" tests, and [`ReservedPort`], a port kept for a server
//! that must be told its address before it starts (etcd's peer URLs, an
//! arbiter replica's `--advertise-url`).
//!
//! Binding port 0 and closing the socket again leaves a port that anything
//! may take a moment later. [`ClosedPort`] keeps its socket bound but never
//! listens on it: the port stays this test's for as long as the value
//! lives, and a connection to it is refused at once.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpSocket;

/// See the module documentation.
#[derive(Debug)]
pub struct ClosedPort {
    addr: SocketAddr,
    _socket: TcpSocket,
}

impl ClosedPort {
    /// Reserves a port on 127.0.0.1.
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("bound address");
        Self {
            addr,
            _socket: socket,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A port bound (with `SO_REUSEADDR`) but not listening, held for as long
/// as the value lives, so that a server told to listen there can, and
/// nothing else takes it meanwhile.
///
/// Linux lets a second socket bind an address another socket holds when
/// both set `SO_REUSEADDR` and neither listens yet; tokio and Go (etcd)
/// set it on every listener. The kernel hands out neither a bound port for
/// `bind(0)` nor for an outgoing connection, so the port is the test's
/// until it is dropped, and a server restarted on it (same data, same
/// address) finds it free again. Not a guess: no bind-release-rebind race.
#[derive(Debug)]
pub struct ReservedPort {
    addr: SocketAddr,
    _socket: TcpSocket,
}

impl ReservedPort {
    /// Reserves a port on `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let socket = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let addr = socket.local_addr().expect("bound address");
        Self {
            addr,
            _socket: socket,
        }
    }

    /// Reserves a port on 127.0.0.1.
    pub fn localhost() -> Self {
        Self::new(IpAddr::from([127, 0, 0, 1]))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://` and the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reserved_port_can_be_listened_on_and_again_after_a_restart() {
        let port = ReservedPort::localhost();
        for _ in 0..2 {
            let l = tokio::net::TcpListener::bind(port.addr())
                .await
                .expect("a server binds the reserved port");
            let (c, a) = tokio::join!(tokio::net::TcpStream::connect(port.addr()), l.accept());
            c.expect("connect");
            a.expect("accept");
        }
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert_ne!(other.local_addr().unwrap(), port.addr());
    }

    #[tokio::test]
    async fn a_connection_is_refused() {
        let port = ClosedPort::new();
        let e = tokio::net::TcpStream::connect(port.addr())
            .await
            .expect_err("nobody listens");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
}
