//! A TCP forwarder the test can cut: `close()` drops every forwarded connection and refuses
//! new ones (they are accepted and closed at once), `open()` forwards again. Put in front of
//! a real server, it turns "the store is down" into one call, on any server.
//! `lose_replies()` forwards requests but throws the server's replies away: the server acts
//! on every command, and the client never learns.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct TcpGate {
    pub addr: SocketAddr,
    open: Arc<watch::Sender<bool>>,
    /// Milliseconds each client-to-server chunk waits before it is forwarded.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Server-to-client bytes are dropped while set.
    losing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, each chunk held back by the current delay, or dropped while
/// `losing` is set.
async fn forward_slowly(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    losing: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        if losing.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpGate {
    pub async fn start(target: SocketAddr) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(watch::Sender::new(true));
        let state = Arc::clone(&open);
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        let losing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lose = Arc::clone(&losing);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: the client sees the connection close
                }
                let mut closed = state.subscribe();
                let delay = Arc::clone(&delay);
                let lose = Arc::clone(&lose);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = forward_slowly(client_read, server_write, delay, Arc::default());
                    let down = forward_slowly(server_read, client_write, Arc::default(), lose);
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = closed.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        TcpGate {
            addr,
            open,
            delay_ms,
            losing,
            task,
        }
    }

    /// Holds every client-to-server chunk back by `delay` (zero: none): a slow server.
    pub fn slow_down(&self, delay: std::time::Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Requests still reach the server; its replies are thrown away.
    pub fn lose_replies(&self) {
        self.losing.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every connection (a partition); replies flow again once it opens.
    pub fn close(&self) {
        self.open.send_replace(false);
        self.losing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
