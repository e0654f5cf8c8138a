//! Voids that could not be done on the request path: a charge that timed out (it may still
//! land when a stalled Redis resumes) or a refund the ledger could not take at that moment.
//! A background worker retries each until the ledger answers (or, at shutdown, once more),
//! so a 503 or a failed upstream never costs the tenant credits.

use super::retry::{stopping, until_answered};
use super::{Ledger, Void, VoidOutcome};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Pending voids held in memory. At 1 KB each this bounds the queue to ~100 MB during a long
/// ledger outage; past it a void is dropped with an error log (the tenant would pay for one
/// failed call), which beats unbounded memory.
pub const VOID_QUEUE_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct PendingVoid {
    pub tenant_id: String,
    pub charge_id: String,
    pub idempotency_key: Option<String>,
    /// Known when the charge was seen applied (a deferred refund); `None` after a timeout.
    pub applied_cost: Option<i64>,
}

impl PendingVoid {
    fn as_void(&self) -> Void<'_> {
        Void {
            tenant_id: &self.tenant_id,
            charge_id: &self.charge_id,
            idempotency_key: self.idempotency_key.as_deref(),
            applied_cost: self.applied_cost,
        }
    }
}

/// The request path's handle: never blocks.
#[derive(Clone)]
pub struct VoidQueue {
    tx: mpsc::Sender<PendingVoid>,
}

impl VoidQueue {
    pub fn push(&self, void: PendingVoid) {
        if let Err(e) = self.tx.try_send(void) {
            let void = match e {
                mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v,
            };
            tracing::error!(
                tenant_id = %void.tenant_id,
                charge_id = %void.charge_id,
                "void queue full or closed: this charge will not be voided automatically"
            );
        }
    }
}

/// The background side: applies queued voids in order, retrying with backoff.
pub struct VoidWorker {
    ledger: Arc<dyn Ledger>,
    rx: tokio::sync::Mutex<mpsc::Receiver<PendingVoid>>,
}

impl VoidWorker {
    pub fn new(ledger: Arc<dyn Ledger>) -> (VoidQueue, VoidWorker) {
        let (tx, rx) = mpsc::channel(VOID_QUEUE_CAPACITY);
        let worker = VoidWorker {
            ledger,
            rx: tokio::sync::Mutex::new(rx),
        };
        (VoidQueue { tx }, worker)
    }
}

#[async_trait::async_trait]
impl BackgroundService for VoidWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut unvoided = 0usize;
        loop {
            // Shutting down: drain what is queued, without waiting for more.
            let next = if stopping(&shutdown) {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.changed() => continue,
                }
            };
            let Some(void) = next else { break };
            // Never hold shutdown for a dead ledger: after one failed last try, the rest
            // are reported, not each tried.
            let stop = (unvoided == 0).then_some(&mut shutdown);
            let request = void.as_void();
            match until_answered(stop, || self.ledger.void(&request)).await {
                Some(VoidOutcome::Refunded { balance }) => {
                    tracing::info!(tenant_id = %void.tenant_id, charge_id = %void.charge_id, balance, "voided a charge the client was not served for");
                }
                Some(_) => {}
                None => {
                    unvoided += 1;
                    tracing::error!(tenant_id = %void.tenant_id, charge_id = %void.charge_id, "shutting down with a charge not voided");
                }
            }
        }
        if unvoided > 0 {
            tracing::error!(unvoided, "shut down with charges the ledger could not void");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::flaky::Flaky;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn void(id: &str) -> PendingVoid {
        PendingVoid {
            tenant_id: "acme".into(),
            charge_id: id.into(),
            idempotency_key: None,
            applied_cost: Some(5),
        }
    }

    /// A void waits for the ledger; a second waits behind it; once the ledger answers both
    /// give the credits back.
    #[tokio::test(start_paused = true)]
    async fn voids_wait_for_the_ledger() {
        let ledger = Arc::new(Flaky::new(4));
        ledger.seed("acme", 90).await.unwrap();
        let (queue, worker) = VoidWorker::new(ledger.clone());
        queue.push(void("a"));
        queue.push(void("b"));
        let (tx, stop) = tokio::sync::watch::channel(false);
        let driver = async {
            while ledger.balance("acme").await.unwrap() != Some(100) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        tokio::join!(worker.start(stop), driver);
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 4 + 2);
    }

    /// Shutdown while the ledger is down: the void being retried gets one last try, those
    /// queued behind it none, and the worker returns instead of holding the process.
    #[tokio::test(start_paused = true)]
    async fn shutdown_with_the_ledger_down_does_not_hang() {
        let ledger = Arc::new(Flaky::new(u32::MAX));
        let (queue, worker) = VoidWorker::new(ledger.clone());
        for id in ["a", "b", "c"] {
            queue.push(void(id));
        }
        let (tx, stop) = tokio::sync::watch::channel(false);
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let before = ledger.calls.load(Ordering::SeqCst);
            tx.send(true).unwrap();
            before
        };
        let ((), before) = tokio::join!(worker.start(stop), stopper);
        assert_eq!(ledger.calls.load(Ordering::SeqCst), before + 1);
    }
}
