//! Deferred charges (SPEC §2, `on_ledger_error: allow`): a call to such a service that
//! finds the ledger unavailable is forwarded anyway, and its charge is applied here, in the
//! background, once the ledger answers again.
//!
//! The gateway reserves a place in a bounded queue before it forwards (no place: the call
//! fails closed, `503`, as under `deny`), and hands the call's usage event over at the end
//! of the request. The worker then charges with the request's own charge id, retrying until
//! the ledger answers. A charge that timed out may have landed after all (a stalled Redis
//! resuming): the retry finds its record and takes nothing twice. A call the upstream failed
//! owes nothing; its charge id is voided instead, giving back a charge that landed late.
//! Only then is the usage event recorded, carrying what the ledger really took, so the books
//! (SPEC §4: logs = ledger) stay exact. A tenant without enough credits by then was served
//! for free: the event records 0 credits, and the call is counted as `uncollected`.
//!
//! The queue lives in memory: a gateway killed during an outage forgets its deferred
//! charges (the tenant is not charged for them; reconciliation sees no difference, as
//! nothing was taken or logged). A clean shutdown gives the ledger a short chance first.

use crate::alerts::{self, AlertSink, CreditSuccess};
use crate::hydration::Hydrator;
use crate::ledger::{Charge, ChargeOutcome, Ledger, LedgerError, Void, Warnings};
use crate::metrics::{DEFERRED_CHARGES, DEFERRED_PENDING};
use crate::routing::Service;
use crate::usage::{UsageEvent, UsageSink};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Calls served on credit at once, per gateway. At ~1 KB each (the usage event) this bounds
/// the queue to ~50 MB; at 5,000 deferred calls/s it covers ten seconds of a full outage,
/// after which calls fail closed rather than pile up unpaid.
pub const DEFERRED_CAPACITY: usize = 50_000;

/// Retry delays while the ledger is down: start fast (a blip), cap low (recover quickly).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// One call served while the ledger was unavailable.
pub struct DeferredCharge {
    pub service: Arc<Service>,
    /// The tenant's low-credit threshold when the call was made.
    pub threshold: i64,
    /// The call's usage event: `credits_used` is the endpoint's cost, `request_id` the
    /// charge id, `refunded` whether the upstream failed it. Recorded once settled.
    pub event: UsageEvent,
}

/// A place in the queue, reserved before the call is forwarded.
pub struct Reservation(mpsc::OwnedPermit<DeferredCharge>);

impl Reservation {
    pub fn send(self, charge: DeferredCharge) {
        DEFERRED_PENDING.inc();
        self.0.send(charge);
    }
}

/// The request path's handle: never blocks.
#[derive(Clone)]
pub struct DeferredQueue {
    tx: mpsc::Sender<DeferredCharge>,
}

impl DeferredQueue {
    /// A place for one more deferred charge, or `None` when the queue is full (or the
    /// gateway is shutting down): then the call must fail closed.
    pub fn reserve(&self) -> Option<Reservation> {
        self.tx.clone().try_reserve_owned().ok().map(Reservation)
    }
}

/// How a deferred charge ended (the `outcome` label of `tollgate_deferred_charges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The cost was taken (now, or by the first try whose answer was lost).
    Charged,
    /// Its idempotency key had been paid for by another call.
    Replayed,
    /// The tenant no longer had the credits: served for free.
    Uncollected,
    /// The upstream failed the call: nothing owed, the charge id voided.
    Voided,
    /// Shutdown came before the ledger did.
    Lost,
}

impl Settled {
    pub const ALL: [Settled; 5] = [
        Settled::Charged,
        Settled::Replayed,
        Settled::Uncollected,
        Settled::Voided,
        Settled::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Charged => "charged",
            Settled::Replayed => "replayed",
            Settled::Uncollected => "uncollected",
            Settled::Voided => "voided",
            Settled::Lost => "lost",
        }
    }
}

/// The background side: settles deferred charges in order.
pub struct DeferredWorker {
    ledger: Arc<dyn Ledger>,
    hydrator: Arc<Hydrator>,
    usage: Arc<dyn UsageSink>,
    alerts: Arc<dyn AlertSink>,
    rx: tokio::sync::Mutex<mpsc::Receiver<DeferredCharge>>,
}

impl DeferredWorker {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        hydrator: Arc<Hydrator>,
        usage: Arc<dyn UsageSink>,
        alerts: Arc<dyn AlertSink>,
    ) -> (DeferredQueue, DeferredWorker) {
        let (tx, rx) = mpsc::channel(DEFERRED_CAPACITY);
        let worker = DeferredWorker {
            ledger,
            hydrator,
            usage,
            alerts,
            rx: tokio::sync::Mutex::new(rx),
        };
        (DeferredQueue { tx }, worker)
    }

    /// Settles one deferred charge: asks the ledger until it answers (or, once `stop`
    /// turns true, once more; `None`: not at all), then records the usage event with what
    /// was taken.
    async fn settle(
        &self,
        mut deferred: DeferredCharge,
        stop: Option<&mut ShutdownWatch>,
    ) -> Settled {
        let event = &mut deferred.event;
        let cost = event.credits_used;
        let settled = if event.refunded {
            let void = Void {
                tenant_id: &event.tenant_id,
                charge_id: &event.request_id,
                idempotency_key: event.idempotency_key.as_deref(),
                applied_cost: None,
            };
            match retry(stop, || self.ledger.void(&void)).await {
                Some(_) => Settled::Voided,
                None => Settled::Lost,
            }
        } else {
            let charge = Charge {
                tenant_id: &event.tenant_id,
                cost,
                charge_id: &event.request_id,
                idempotency_key: event.idempotency_key.as_deref(),
                threshold: deferred.threshold,
            };
            let (settled, balance, warnings) =
                match retry(stop, || self.hydrator.charge(&charge)).await {
                    Some(ChargeOutcome::Charged { balance, warnings }) => {
                        (Settled::Charged, Some(balance), warnings)
                    }
                    Some(ChargeOutcome::AlreadyCharged { balance }) => {
                        (Settled::Charged, Some(balance), Warnings::NONE)
                    }
                    Some(ChargeOutcome::Replayed { balance }) => {
                        (Settled::Replayed, Some(balance), Warnings::NONE)
                    }
                    Some(ChargeOutcome::Insufficient { balance, warnings }) => {
                        (Settled::Uncollected, Some(balance), warnings)
                    }
                    Some(ChargeOutcome::NoBalance | ChargeOutcome::Void) => {
                        (Settled::Uncollected, None, Warnings::NONE)
                    }
                    None => (Settled::Lost, None, Warnings::NONE),
                };
            if let Some(balance) = balance {
                event.balance_after = balance;
                let tenant_id = &event.tenant_id;
                alerts::announce(
                    &*self.alerts,
                    tenant_id,
                    warnings,
                    balance,
                    deferred.threshold,
                );
            }
            settled
        };
        if settled == Settled::Charged {
            deferred.service.metrics.charged(cost);
            if self.alerts.wants_credit_success() {
                self.alerts.credit_success(CreditSuccess {
                    tenant_id: event.tenant_id.clone(),
                    service: event.service.clone(),
                    endpoint: event.endpoint.clone(),
                    credits_used: cost,
                    balance: event.balance_after,
                    timestamp: alerts::rfc3339_now(),
                });
            }
        } else if !event.refunded {
            // The log must say what the ledger took: nothing. (A failed call's log keeps
            // its cost beside `refunded`, as every refunded log does.)
            event.credits_used = 0;
        }
        if matches!(settled, Settled::Uncollected | Settled::Lost) {
            tracing::warn!(
                tenant_id = %event.tenant_id,
                request_id = %event.request_id,
                cost,
                outcome = settled.as_str(),
                "a call served while the ledger was unavailable was not paid for"
            );
        }
        DEFERRED_PENDING.dec();
        DEFERRED_CHARGES[settled as usize].inc();
        self.usage.record(deferred.event);
        settled
    }
}

/// Calls `op` until it succeeds, backing off, or until `stop` turns true: then one last
/// try (each try is bounded by the ledger's own timeout). `None` when it gave up, or when
/// there is no `stop` to watch: no try at all.
async fn retry<T, F, Fut>(stop: Option<&mut ShutdownWatch>, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LedgerError>>,
{
    let stop = stop?;
    let mut delay = RETRY_MIN;
    loop {
        // A dropped sender (the server gone) counts as stop too.
        let stopping = *stop.borrow() || stop.has_changed().is_err();
        match op().await {
            Ok(value) => return Some(value),
            Err(_) if stopping => return None,
            Err(e) => {
                tracing::debug!(error = %e, "deferred charge: ledger still unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for DeferredWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        let mut lost = 0usize;
        let mut closing = false;
        loop {
            // Read the state, not the change: `settle` may have seen the change first.
            if !closing && (*shutdown.borrow() || shutdown.has_changed().is_err()) {
                // Requests still finishing hold reservations: take what they send (one
                // last try each) until the last reservation is gone.
                closing = true;
                rx.close();
            }
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = shutdown.changed(), if !closing => continue,
            };
            let Some(deferred) = next else { break };
            // Shutting down with the ledger down: one failed last try says enough; the rest
            // are given up at once rather than each waiting out the ledger timeout.
            let stop = (lost == 0 || !closing).then_some(&mut shutdown);
            if self.settle(deferred, stop).await == Settled::Lost {
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::error!(
                lost,
                "shut down with deferred charges the ledger could not take"
            );
        }
    }
}

#[cfg(test)]
mod tests;
