//! An address where nobody listens, for "cannot reach" tests.
//!
//! Binding port 0 and closing the socket again leaves a port that anything
//! may take a moment later. [`ClosedPort`] keeps its socket bound but never
//! listens on it: the port stays this test's for as long as the value
//! lives, and a connection to it is refused at once.

use std::net::SocketAddr;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_refused() {
        let port = ClosedPort::new();
        let e = tokio::net::TcpStream::connect(port.addr())
            .await
            .expect_err("nobody listens");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
}
