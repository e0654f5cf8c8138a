//! Asking a ledger that may be down, from a background worker: retry with backoff until it
//! answers, and at shutdown make one last try rather than hold the process. Shared by the
//! void worker and the deferred charges.

use super::LedgerError;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::time::Duration;

/// Retry delays while the ledger is down: start fast (a blip), cap low (recover quickly).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether the server is shutting down (a dropped sender, the server gone, counts too).
/// Reads the state, not the change: another waiter may have seen the change first.
pub fn stopping(stop: &ShutdownWatch) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Calls `op` until it succeeds, backing off, or until `stop` turns true: then one last
/// try (each try is bounded by the ledger's own timeout). `None` when it gave up, or when
/// there is no `stop` to watch: no try at all (shutting down with the ledger known dead).
pub async fn until_answered<T, F, Fut>(stop: Option<&mut ShutdownWatch>, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let stop = stop?;
    let mut delay = RETRY_MIN;
    loop {
        let last_try = stopping(stop);
        match op().await {
            Ok(value) => return Some(value),
            Err(_) if last_try => return None,
            Err(e) => {
                tracing::debug!(error = %e, "ledger still unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
