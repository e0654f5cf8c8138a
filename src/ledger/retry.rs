//! Asking a ledger that may be down, from a background worker: retry with backoff until it
//! answers; at shutdown make one last try rather than hold the process; and stop before the
//! ledger's exactly-once record of the work expires (past it, a retry could no longer tell
//! whether an earlier try landed). Shared by the void worker and the deferred charges.

use super::LedgerError;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Retry delays while the ledger is down: start fast (a blip), cap low (recover quickly).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether the server is shutting down (a dropped sender, the server gone, counts too).
/// Reads the state, not the change: another waiter may have seen the change first.
pub fn stopping(stop: &ShutdownWatch) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// How asking ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<T> {
    Answered(T),
    /// Shutting down: the work is still owed (and journaled: the next start finishes it).
    Stopped,
    /// The deadline passed: the work can no longer be done exactly; give it up.
    Expired,
}

/// The last moment to act on work whose exactly-once record in the ledger was written at
/// `since_ms` (unix ms) and lives `life`: a margin before it expires, so a try in flight
/// (bounded by the ledger timeout) still finds it. Now, if that moment has passed.
pub fn deadline(since_ms: i64, life: Duration) -> Instant {
    let margin = (life / 10).max(Duration::from_secs(1)).min(life / 2);
    let end_ms = since_ms.saturating_add((life - margin).as_millis() as i64);
    let left = end_ms.saturating_sub(super::unix_ms());
    Instant::now() + Duration::from_millis(left.max(0) as u64)
}

/// Calls `op` until it succeeds, backing off, until `deadline` passes, or until `stop` turns
/// true: then one last try (each try is bounded by the ledger's own timeout). With no
/// `stop` to watch: no try at all (shutting down with the ledger known dead).
pub async fn until_answered<T, F, Fut>(
    stop: Option<&mut ShutdownWatch>,
    deadline: Instant,
    mut op: F,
) -> Answer<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let Some(stop) = stop else {
        return Answer::Stopped;
    };
    let mut delay = RETRY_MIN;
    loop {
        if Instant::now() >= deadline {
            return Answer::Expired;
        }
        let last_try = stopping(stop);
        match op().await {
            Ok(value) => return Answer::Answered(value),
            Err(_) if last_try => return Answer::Stopped,
            Err(e) => {
                tracing::debug!(error = %e, "ledger still unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
