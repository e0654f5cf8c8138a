//! Voids that could not be done on the request path: a charge that timed out (it may still
//! land when a stalled Redis resumes) or a refund the ledger could not take at that moment.
//! A background worker retries each until the ledger answers, so a 503 or a failed upstream
//! never costs the tenant credits.

use super::{Ledger, Void, VoidOutcome};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pending voids held in memory. At 1 KB each this bounds the queue to ~100 MB during a long
/// ledger outage; past it a void is dropped with an error log (the tenant would pay for one
/// failed call), which beats unbounded memory.
pub const VOID_QUEUE_CAPACITY: usize = 100_000;

/// Retry delays while the ledger is down: start fast (a blip), cap low (recover quickly).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

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

    async fn apply(&self, void: &PendingVoid) {
        let mut delay = RETRY_MIN;
        loop {
            match self.ledger.void(&void.as_void()).await {
                Ok(outcome) => {
                    if let VoidOutcome::Refunded { balance } = outcome {
                        tracing::info!(tenant_id = %void.tenant_id, charge_id = %void.charge_id, balance, "voided a charge the client was not served for");
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(charge_id = %void.charge_id, error = %e, "void failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for VoidWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(void) => self.apply(&void).await,
                    None => break,
                },
                _ = shutdown.changed() => break,
            }
        }
        // Flush what the ledger can still take; never hold shutdown for a dead ledger: after
        // one failed try, the rest are reported, not each tried for `RETRY_MAX`.
        let mut unvoided = 0usize;
        while let Ok(void) = rx.try_recv() {
            if unvoided == 0 {
                let void_ref = void.as_void();
                let attempt = self.ledger.void(&void_ref);
                if matches!(tokio::time::timeout(RETRY_MAX, attempt).await, Ok(Ok(_))) {
                    continue;
                }
            }
            unvoided += 1;
            tracing::error!(tenant_id = %void.tenant_id, charge_id = %void.charge_id, "shutting down with a charge not voided");
        }
        if unvoided > 0 {
            tracing::error!(unvoided, "shut down with charges the ledger could not void");
        }
    }
}
