//! Settlements the request path could not finish (docs/DESIGN.md §Settled prices): the
//! ledger did not answer when a settled call ended. What the settlement takes or gives back
//! depends on the balance at that moment, so the call's usage event waits with it: the
//! worker retries the same settlement by charge id (applied once, however many tries land)
//! and records the event with what the ledger says it took. Each is journaled ([`WorkLog`])
//! until done, so a restart finishes it; one not answered a margin before the charge's
//! record expires is given up, logged at the reserve (what the ledger holds unless a lost
//! try landed) and reported by reconciliation as unresolved.

use crate::ledger::retry::{deadline, stopping, until_answered, Answer};
use crate::ledger::worklog::{OpenWork, Unresolved};
use crate::ledger::{Ledger, Settle, SettleOutcome, WorkLog};
use crate::usage::UsageSink;
use crate::vocab::UsageEvent;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The journal kind of a settlement owed.
const KIND: &str = "settle";

/// Settlements held in memory; past it they wait in the journal for the next start.
pub const SETTLE_QUEUE_CAPACITY: usize = 50_000;

/// A settled call's end, owed to the ledger.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PendingSettle {
    pub reserved: i64,
    /// What the call cost under its overage policy.
    pub cost: i64,
    pub threshold: i64,
    /// The API key budget counter the reserve counted against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Unix ms of the first try, which may have landed: the record it wrote lives
    /// `ledger.charge_ttl_secs` from then.
    pub since_ms: i64,
    /// The call's usage event, completed with what the ledger took.
    pub event: UsageEvent,
}

impl PendingSettle {
    pub fn as_settle(&self) -> Settle<'_> {
        Settle {
            tenant_id: &self.event.tenant_id,
            charge_id: &self.event.request_id,
            reserved: self.reserved,
            cost: self.cost,
            threshold: self.threshold,
            budget: self.budget.as_deref(),
        }
    }

    /// The event as the ledger's answer makes it, and the credits it moves from the
    /// reserve (to count as pending or no longer).
    pub fn completed(mut self, outcome: SettleOutcome) -> (UsageEvent, i64) {
        let charged = match outcome {
            SettleOutcome::Settled {
                charged, balance, ..
            } => {
                self.event.balance_after = balance;
                charged
            }
            // Voided meanwhile (never by this gateway's refund, which settles nothing): the
            // call is logged refunded, and its reserve is no longer pending.
            SettleOutcome::Void => {
                self.event.refunded = true;
                self.event.reserved = Some(self.reserved);
                self.event.credits_used = self.reserved;
                return (self.event, -self.reserved);
            }
            // Nothing moved: the store, which hydrates the balance again, takes the call at
            // what it cost within its reserve.
            SettleOutcome::NoBalance => self.cost.min(self.reserved),
        };
        self.event.reserved = Some(self.reserved);
        self.event.credits_used = charged;
        self.event.shortfall = (self.cost - charged).max(0);
        (self.event, charged - self.reserved)
    }
}

/// The request path's handle: never blocks (a journal line, then a channel send).
#[derive(Clone)]
pub struct SettleQueue {
    tx: mpsc::Sender<PendingSettle>,
    worklog: Arc<WorkLog>,
}

impl SettleQueue {
    /// Journals a settled call's reserve as it is charged (the settlement at the reserve,
    /// `event` as far as it is known): a gateway killed before the call ends settles it so
    /// at its next start, as a stream cut anywhere else settles.
    pub fn open(&self, settle: &PendingSettle) {
        self.worklog.put(KIND, &settle.event.request_id, settle);
    }

    /// The call was settled (or refunded): nothing is owed.
    pub fn close(&self, request_id: &str) {
        self.worklog.done(KIND, request_id);
    }

    /// The ledger did not answer the settlement: it is retried in the background, and
    /// journaled as it now stands.
    pub fn push(&self, settle: PendingSettle) {
        self.worklog.put(KIND, &settle.event.request_id, &settle);
        if let Err(e) = self.tx.try_send(settle) {
            let settle = match e {
                mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
            };
            tracing::error!(request_id = %settle.event.request_id, "settle queue full or closed: this settlement waits in the journal for the next start");
        }
    }
}

/// The background side: retries each settlement until the ledger answers.
pub struct SettleWorker {
    ledger: Arc<dyn Ledger>,
    usage: Arc<dyn UsageSink>,
    rx: tokio::sync::Mutex<mpsc::Receiver<PendingSettle>>,
    worklog: Arc<WorkLog>,
    record_life: Duration,
}

impl SettleWorker {
    /// `restored`: the settlements a previous run left open (queued first).
    pub fn new(
        ledger: Arc<dyn Ledger>,
        usage: Arc<dyn UsageSink>,
        worklog: Arc<WorkLog>,
        record_life: Duration,
        restored: Vec<PendingSettle>,
    ) -> (SettleQueue, SettleWorker) {
        let (tx, rx) = mpsc::channel(SETTLE_QUEUE_CAPACITY);
        for settle in restored {
            // The restarted process counts nothing pending for it: the event carries the
            // reserve until the ledger says otherwise.
            usage.charged(&settle.event.tenant_id, settle.reserved);
            if tx.try_send(settle).is_err() {
                break; // the rest stay journaled, for the start after
            }
        }
        let worker = SettleWorker {
            ledger,
            usage,
            rx: tokio::sync::Mutex::new(rx),
            worklog: Arc::clone(&worklog),
            record_life,
        };
        (SettleQueue { tx, worklog }, worker)
    }

    /// The settlements journaled as open.
    pub fn restore(open: &mut OpenWork) -> Vec<PendingSettle> {
        open.remove(KIND)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, item)| match serde_json::from_value(item) {
                Ok(settle) => Some(settle),
                Err(e) => {
                    tracing::error!(charge_id = %id, error = %e, "unreadable journaled settlement");
                    None
                }
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl BackgroundService for SettleWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut unsettled = 0usize;
        loop {
            let next = if stopping(&shutdown) {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    next = rx.recv() => next,
                    _ = shutdown.changed() => continue,
                }
            };
            let Some(settle) = next else { break };
            let stop = (unsettled == 0).then_some(&mut shutdown);
            let until = deadline(settle.since_ms, self.record_life);
            let request = settle.as_settle();
            let answer = until_answered(stop, until, || self.ledger.settle(&request)).await;
            let id = settle.event.request_id.clone();
            let tenant = settle.event.tenant_id.clone();
            match answer {
                Answer::Answered(outcome) => {
                    let (event, moved) = settle.completed(outcome);
                    self.usage.charged(&tenant, moved);
                    self.usage.record(event);
                    self.worklog.done(KIND, &id);
                }
                Answer::Stopped => unsettled += 1,
                Answer::Expired => {
                    let unresolved = Unresolved {
                        at_ms: crate::ledger::unix_ms(),
                        kind: KIND.into(),
                        tenant_id: tenant,
                        charge_id: id.clone(),
                        credits: (settle.cost - settle.reserved).abs(),
                    };
                    let mut event = settle.event;
                    event.reserved = Some(settle.reserved);
                    event.credits_used = settle.reserved;
                    self.usage.record(event);
                    self.worklog.give_up(KIND, &id, &unresolved);
                }
            }
        }
        if unsettled > 0 {
            tracing::warn!(unsettled, "shut down with settlements the ledger could not take: journaled, finished at the next start");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::flaky::Flaky;
    use crate::ledger::{Charge, ChargeOutcome};

    fn event(id: &str) -> UsageEvent {
        UsageEvent {
            id: format!("log-{id}"),
            tenant_id: "acme".into(),
            user_id: "u".into(),
            key_id: None,
            service: "llm".into(),
            endpoint: "/v1/chat".into(),
            method: "POST".into(),
            credits_used: 50,
            plan_id: None,
            reserved: Some(50),
            shortfall: 0,
            shadow_credits: None,
            balance_after: 0,
            status: 200,
            latency_ms: 1.0,
            request_id: id.into(),
            idempotency_key: None,
            refunded: false,
            timestamp_ms: 0,
        }
    }

    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<UsageEvent>>);
    impl UsageSink for Recorded {
        fn record(&self, event: UsageEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    /// The ledger is down when the call ends: the settlement waits for it, applies once
    /// even though a try is repeated, and its event says what the ledger took.
    #[tokio::test(start_paused = true)]
    async fn a_settlement_waits_for_the_ledger_and_applies_once() {
        let ledger = Arc::new(Flaky::new(0));
        ledger.seed("acme", 100).await.unwrap();
        let charge = Charge {
            tenant_id: "acme",
            cost: 50,
            charge_id: "c1",
            idempotency: None,
            threshold: 0,
            fresh: true,
            budget: None,
            limits: &[],
        };
        assert!(matches!(
            ledger.charge(&charge).await.unwrap(),
            ChargeOutcome::Charged { balance: 50, .. }
        ));
        ledger.fail_next(3);
        let recorded = Arc::new(Recorded::default());
        let life = Duration::from_secs(3600);
        let (queue, worker) = SettleWorker::new(
            ledger.clone(),
            recorded.clone(),
            Arc::new(WorkLog::disabled()),
            life,
            Vec::new(),
        );
        let pending = PendingSettle {
            reserved: 50,
            cost: 12,
            threshold: 0,
            budget: None,
            since_ms: crate::ledger::unix_ms(),
            event: event("c1"),
        };
        queue.push(pending.clone());
        queue.push(pending);
        let (tx, stop) = tokio::sync::watch::channel(false);
        let driver = async {
            while recorded.0.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        tokio::join!(worker.start(stop), driver);
        assert_eq!(ledger.balance("acme").await.unwrap(), Some(88));
        let events = recorded.0.lock().unwrap();
        for e in events.iter() {
            assert_eq!(
                (e.credits_used, e.reserved, e.balance_after),
                (12, Some(50), 88)
            );
        }
    }
}
