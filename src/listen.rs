//! Side listeners (the admin API, metrics, the demo upstream) are bound before anything is
//! served: a port that cannot be had stops start-up, naming the address, instead of leaving
//! a gateway that runs without it. In a graceful upgrade the process being replaced still
//! holds them until it exits, so there they are bound when free (as the embedded MQTT
//! broker's port is).
//!
//! The shutdown signals are caught from before the first listener too ([`EarlySignals`]).

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;

/// How often a port still held by the process being replaced is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// A side port: listening from now on (so no other socket can take it; connections wait in
/// the backlog until it is served), handed to the runtime that serves it, which Pingora
/// starts later; or, in a graceful upgrade, to be bound once the old process lets it go.
pub struct Reserved {
    pub addr: SocketAddr,
    socket: Mutex<Option<std::net::TcpListener>>,
}

/// Binds and listens on `addr` now.
pub fn reserve(addr: SocketAddr) -> std::io::Result<Reserved> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(Reserved {
        addr,
        socket: Mutex::new(Some(socket)),
    })
}

/// `addr`, to be bound when the process being replaced (a graceful upgrade) releases it.
pub fn when_free(addr: SocketAddr) -> Reserved {
    Reserved {
        addr,
        socket: Mutex::new(None),
    }
}

impl Reserved {
    /// Starts listening, inside the runtime that serves it.
    pub async fn listen(&self) -> std::io::Result<TcpListener> {
        let bound = self.socket.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(socket) = bound {
            return TcpListener::from_std(socket);
        }
        let mut warned = false;
        loop {
            match TcpListener::bind(self.addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if !warned {
                        tracing::warn!(listen = %self.addr, "waiting for the replaced process to release its port");
                        warned = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
                bound => return bound,
            }
        }
    }
}

/// SIGQUIT (graceful upgrade), SIGTERM (graceful stop) and SIGINT (fast stop), caught from
/// before anything listens. Pingora registers its own handlers only once its services run,
/// after their listeners are up: a SIGTERM in between (an orchestrator stopping a replica
/// the moment its port answers) killed the process without its shutdown, the usage drain
/// and the ledger's last writes. Handed to Pingora in place of its own watcher.
pub struct EarlySignals {
    quit: tokio::sync::Mutex<tokio::signal::unix::Signal>,
    term: tokio::sync::Mutex<tokio::signal::unix::Signal>,
    int: tokio::sync::Mutex<tokio::signal::unix::Signal>,
}

impl EarlySignals {
    /// Registers the handlers on `runtime`, which must outlive the server (its driver
    /// delivers them): a signal from now on is kept until Pingora asks.
    pub fn register(runtime: &tokio::runtime::Runtime) -> std::io::Result<EarlySignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = runtime.enter();
        Ok(EarlySignals {
            quit: tokio::sync::Mutex::new(signal(SignalKind::quit())?),
            term: tokio::sync::Mutex::new(signal(SignalKind::terminate())?),
            int: tokio::sync::Mutex::new(signal(SignalKind::interrupt())?),
        })
    }
}

#[async_trait]
impl ShutdownSignalWatch for EarlySignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = self.quit.lock().await;
        let mut term = self.term.lock().await;
        let mut int = self.int.lock().await;
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_refused_and_a_reserved_one_listens() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(reserve(addr).is_err());
        let reserved = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = reserved.listen().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
        // In an upgrade: bound once the old holder lets go.
        let later = when_free(taken.local_addr().unwrap());
        let (listened, ()) = tokio::join!(later.listen(), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(taken);
        });
        assert!(listened.is_ok());
    }
}
