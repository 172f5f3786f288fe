//! Listening sockets for the processes' gRPC, Flight and HTTP ports.
//!
//! Ballista's scheduler serves through `axum::serve`, which leaves Nagle's algorithm on for
//! the connections it accepts. A job's status then reached its client only after the
//! client's delayed ACK of the previous small frame: 5-17 ms (median 10) between the
//! scheduler's "job finished" and the client hearing of it, on each of a logistic
//! regression's loss jobs. Linux copies `TCP_NODELAY` from a listening socket to the
//! connections it accepts, so every listener of the project is made here, with it set.

use std::net::SocketAddr;

/// A listener on `addr` (with `SO_REUSEADDR`, as `tokio::net::TcpListener::bind` sets)
/// whose accepted connections have `TCP_NODELAY` set. Must be called inside a tokio runtime.
pub fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_do_not_wait_for_acks() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY on the accepted connection"
        );
        drop(client);
    }
}
