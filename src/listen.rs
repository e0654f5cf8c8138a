//! Side listeners (the admin API, metrics, the demo upstream) are bound before anything is
//! served: a port that cannot be had stops start-up, naming the address, instead of leaving
//! a gateway that runs without it. Bound with `SO_REUSEPORT`, so the process that replaces
//! this one in a graceful upgrade binds the same ports while this one still serves them.

use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::net::{TcpListener, TcpSocket};

/// Connections waiting to be accepted, per listener.
const BACKLOG: u32 = 1024;

/// A port bound (held against other processes) but not yet listening: listening needs the
/// runtime that will serve it, which Pingora starts later.
pub struct Reserved {
    pub addr: SocketAddr,
    socket: Mutex<Option<TcpSocket>>,
}

/// Binds `addr` now.
pub fn reserve(addr: SocketAddr) -> std::io::Result<Reserved> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(Reserved {
        addr,
        socket: Mutex::new(Some(socket)),
    })
}

impl Reserved {
    /// Starts listening, inside the runtime that serves it; once only.
    pub fn listen(&self) -> std::io::Result<TcpListener> {
        let socket = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| std::io::Error::other("listener already taken"))?;
        socket.listen(BACKLOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_refused_and_a_reserved_one_listens() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(
            reserve(addr).is_err(),
            "held by a socket without SO_REUSEPORT"
        );
        let reserved = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = reserved.listen().unwrap();
        assert!(reserved.listen().is_err(), "once only");
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
    }
}
