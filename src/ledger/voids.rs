//! Voids that could not be done on the request path: a charge that timed out (it may still
//! land when a stalled Redis resumes) or a refund the ledger could not take at that moment.
//! A background worker retries each until the ledger answers, so a 503 or a failed upstream
//! never costs the tenant credits. Each is journaled ([`WorkLog`]) until done, so a restart
//! finishes it; one that cannot be done before its exactly-once record expires is given up
//! and reported (docs/DESIGN.md §Unfinished ledger work).

use super::retry::{deadline, stopping, until_answered, Answer};
use super::worklog::{Unresolved, WorkLog};
use super::{Ledger, Void, VoidOutcome};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Pending voids held in memory. At 1 KB each this bounds the queue to ~100 MB during a long
/// ledger outage; past it a void waits in the journal for the next start.
pub const VOID_QUEUE_CAPACITY: usize = 100_000;

/// The journal kind of a pending void.
const KIND: &str = "void";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingVoid {
    pub tenant_id: String,
    pub charge_id: String,
    pub idempotency_key: Option<String>,
    /// Known when the charge was seen applied (a refund); `None` after a timeout.
    pub applied_cost: Option<i64>,
    /// What the call was to cost: the most the ledger may be off by if this is given up.
    pub cost: i64,
    /// Unix ms of the first ledger try that may have landed (the charge, or the first
    /// refund): the records this void relies on live `ledger.charge_ttl_secs` from then.
    pub since_ms: i64,
    /// The API key budget counter the charge counted against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// The scopes whose concurrency limits the charge may have taken a place under
    /// (docs/DESIGN.md §Limits): given back once the void is done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_flight: Vec<String>,
}

impl PendingVoid {
    fn as_void(&self) -> Void<'_> {
        Void {
            tenant_id: &self.tenant_id,
            charge_id: &self.charge_id,
            idempotency_key: self.idempotency_key.as_deref(),
            applied_cost: self.applied_cost,
            budget: self.budget.as_deref(),
        }
    }
}

/// The request path's handle: never blocks (one journal line, then a channel send).
#[derive(Clone)]
pub struct VoidQueue {
    tx: mpsc::Sender<PendingVoid>,
    worklog: Arc<WorkLog>,
}

impl VoidQueue {
    pub fn push(&self, void: PendingVoid) {
        self.worklog.put(KIND, &void.charge_id, &void);
        if let Err(e) = self.tx.try_send(void) {
            let void = match e {
                mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v,
            };
            tracing::error!(
                tenant_id = %void.tenant_id,
                charge_id = %void.charge_id,
                "void queue full or closed: this void waits in the journal for the next start"
            );
        }
    }
}

/// The background side: applies queued voids in order, retrying with backoff.
pub struct VoidWorker {
    ledger: Arc<dyn Ledger>,
    rx: tokio::sync::Mutex<mpsc::Receiver<PendingVoid>>,
    worklog: Arc<WorkLog>,
    /// How long the ledger keeps the records a void relies on (`ledger.charge_ttl_secs`).
    record_life: Duration,
}

impl VoidWorker {
    /// `restored`: the voids a previous run left open (queued first).
    pub fn new(
        ledger: Arc<dyn Ledger>,
        worklog: Arc<WorkLog>,
        record_life: Duration,
        restored: Vec<PendingVoid>,
    ) -> (VoidQueue, VoidWorker) {
        let (tx, rx) = mpsc::channel(VOID_QUEUE_CAPACITY);
        if !restored.is_empty() {
            tracing::info!(
                voids = restored.len(),
                "resuming voids left open by the last run"
            );
        }
        for void in restored {
            if tx.try_send(void).is_err() {
                break; // the rest stay journaled, for the start after
            }
        }
        let worker = VoidWorker {
            ledger,
            rx: tokio::sync::Mutex::new(rx),
            worklog: Arc::clone(&worklog),
            record_life,
        };
        (VoidQueue { tx, worklog }, worker)
    }

    /// Restores the voids journaled as open (see [`WorkLog::open`]).
    pub fn restore(open: &mut super::worklog::OpenWork) -> Vec<PendingVoid> {
        open.remove(KIND)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, item)| match serde_json::from_value(item) {
                Ok(void) => Some(void),
                Err(e) => {
                    tracing::error!(charge_id = %id, error = %e, "unreadable journaled void");
                    None
                }
            })
            .collect()
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
            // wait in the journal for the next start.
            let stop = (unvoided == 0).then_some(&mut shutdown);
            let request = void.as_void();
            let until = deadline(void.since_ms, self.record_life);
            match until_answered(stop, until, || self.ledger.void(&request)).await {
                Answer::Answered(outcome) => {
                    if let VoidOutcome::Refunded { balance } = outcome {
                        tracing::info!(tenant_id = %void.tenant_id, charge_id = %void.charge_id, balance, "voided a charge the client was not served for");
                    }
                    if !void.in_flight.is_empty() {
                        let scopes: Vec<&str> = void.in_flight.iter().map(String::as_str).collect();
                        let release = super::Release {
                            tenant_id: &void.tenant_id,
                            charge_id: &void.charge_id,
                            scopes: &scopes,
                        };
                        // Not given back: the places lapse on their own.
                        let _ = self.ledger.release(&release).await;
                    }
                    self.worklog.done(KIND, &void.charge_id);
                }
                Answer::Stopped => unvoided += 1,
                Answer::Expired => {
                    let unresolved = Unresolved {
                        at_ms: super::unix_ms(),
                        kind: if void.applied_cost.is_some() {
                            "refund"
                        } else {
                            "void"
                        }
                        .into(),
                        tenant_id: void.tenant_id.clone(),
                        charge_id: void.charge_id.clone(),
                        credits: void.cost,
                    };
                    self.worklog.give_up(KIND, &void.charge_id, &unresolved);
                }
            }
        }
        if unvoided > 0 {
            tracing::warn!(unvoided, "shut down with voids the ledger could not take: journaled, finished at the next start");
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
            cost: 5,
            since_ms: crate::ledger::unix_ms(),
            budget: None,
            in_flight: Vec::new(),
        }
    }

    fn worker(ledger: Arc<Flaky>) -> (VoidQueue, VoidWorker) {
        let life = Duration::from_secs(3600);
        VoidWorker::new(ledger, Arc::new(WorkLog::disabled()), life, Vec::new())
    }

    /// A void waits for the ledger; a second waits behind it; once the ledger answers both
    /// give the credits back.
    #[tokio::test(start_paused = true)]
    async fn voids_wait_for_the_ledger() {
        let ledger = Arc::new(Flaky::new(4));
        ledger.seed("acme", 90).await.unwrap();
        let (queue, worker) = worker(ledger.clone());
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
        let (queue, worker) = worker(ledger.clone());
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

    /// The ledger stays down past the life of the records a void relies on: the void is
    /// given up before they expire (a later try could refund twice, or not at all), recorded
    /// for reconciliation, and the worker goes on. Before, it retried forever.
    #[tokio::test(start_paused = true)]
    async fn a_void_is_given_up_before_its_records_expire() {
        let dir = std::env::temp_dir().join(format!("tg-voids-{}", uuid::Uuid::now_v7()));
        let (worklog, _) = WorkLog::open(&dir).unwrap();
        let ledger = Arc::new(Flaky::new(u32::MAX));
        let life = Duration::from_secs(20);
        let (queue, worker) = VoidWorker::new(ledger.clone(), Arc::new(worklog), life, Vec::new());
        queue.push(void("a"));
        let (tx, stop) = tokio::sync::watch::channel(false);
        let started = tokio::time::Instant::now();
        let driver = async {
            while crate::ledger::worklog::unresolved(&dir).unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tx.send(true).unwrap();
        };
        tokio::join!(worker.start(stop), driver);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(17) && waited < Duration::from_secs(20),
            "given up a margin before the records expire: {waited:?}"
        );
        let given_up = crate::ledger::worklog::unresolved(&dir).unwrap();
        assert_eq!(given_up[0].kind, "refund");
        assert_eq!(given_up[0].credits, 5);
        let (_, open) = WorkLog::open(&dir).unwrap();
        assert!(open.is_empty(), "given up, so no longer owed: {open:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A void still owed at shutdown stays journaled and is finished by the next start.
    #[tokio::test(start_paused = true)]
    async fn an_open_void_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("tg-voids-{}", uuid::Uuid::now_v7()));
        let life = Duration::from_secs(3600);
        {
            let (worklog, _) = WorkLog::open(&dir).unwrap();
            let down = Arc::new(Flaky::new(u32::MAX));
            let (queue, _worker) = VoidWorker::new(down, Arc::new(worklog), life, Vec::new());
            queue.push(void("a"));
        }
        let (worklog, mut open) = WorkLog::open(&dir).unwrap();
        let restored = VoidWorker::restore(&mut open);
        assert_eq!(restored.len(), 1);
        let ledger = Arc::new(Flaky::new(0));
        ledger.seed("acme", 95).await.unwrap();
        let (_queue, worker) = VoidWorker::new(ledger.clone(), Arc::new(worklog), life, restored);
        let (tx, stop) = tokio::sync::watch::channel(false);
        let driver = async {
            while ledger.balance("acme").await.unwrap() != Some(100) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        tokio::join!(worker.start(stop), driver);
        let (_, open) = WorkLog::open(&dir).unwrap();
        assert!(open.is_empty(), "done, so no longer journaled");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
