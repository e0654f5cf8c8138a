//! Deferred charges (SPEC §2, `on_ledger_error: allow`): a call to such a service that
//! finds the ledger unavailable is forwarded anyway, and its charge is applied here, in the
//! background, as soon as the ledger answers again.
//!
//! Each such call takes two places in a bounded queue before it is forwarded (none left:
//! the call fails closed, `503`, as under `deny`). The first carries its charge at once, so
//! the worker takes it the moment the ledger is back, whatever the upstream is doing: a
//! charge that timed out may have landed after all (a stalled Redis resuming), and only
//! while its record lives (`ledger.charge_ttl_secs`) does a retry by the same charge id find
//! it instead of taking the cost twice. The second place is kept for the call's end: its
//! usage event, recorded with what the ledger really took, so the books (SPEC §4: logs =
//! ledger) stay exact. A call the upstream failed owes nothing: what was taken is given back.
//! A tenant without enough credits by then was served for free: logged at 0 credits and
//! counted as `uncollected`.
//!
//! The queue lives in memory. A gateway killed during an outage forgets its deferred
//! charges; a clean shutdown gives the ledger one last try and logs the rest at 0 (`lost`).
//! Either way a first try that landed unseen is the one loss reconciliation will report.

use crate::alerts::{self, AlertSink, CreditSuccess};
use crate::hydration::Hydrator;
use crate::ledger::retry::{stopping, until_answered};
use crate::ledger::{Charge, ChargeOutcome, Ledger, Void, VoidOutcome};
use crate::metrics::{DEFERRED_CHARGES, DEFERRED_PENDING};
use crate::routing::Service;
use crate::usage::{UsageEvent, UsageSink};
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Calls served on credit at once, per gateway (each holds two places in the queue). At
/// ~1 KB each (the usage event) this bounds the queue to ~50 MB, and its charges drain in
/// about a second once the ledger answers ([`CONCURRENT_CHARGES`] round trips at a time),
/// far inside the charge records' 60 s default life; past it calls fail closed rather than
/// pile up unpaid.
pub const DEFERRED_CAPACITY: usize = 50_000;

/// Deferred charges asked of the ledger at once: a full queue drains in about a second
/// even over a 1 ms LAN round trip (50,000 × 1 ms / 64), far inside the charge records'
/// life, and a ledger that is down sees at most this many retries at a time.
const CONCURRENT_CHARGES: usize = 64;

/// The charge of one call served while the ledger was unavailable.
#[derive(Debug, Clone)]
pub struct DeferredCharge {
    pub service: Arc<Service>,
    pub tenant_id: String,
    pub cost: i64,
    /// The request id: the charge's id in the ledger.
    pub charge_id: String,
    /// The tenant's low-credit threshold when the call was made.
    pub threshold: i64,
}

/// What the worker is handed: a call's charge when it is forwarded, and the call's end.
pub enum Job {
    Charge(DeferredCharge),
    /// The call ended; `None`: without a usage event (its context was dropped).
    Done {
        charge_id: String,
        event: Option<UsageEvent>,
    },
}

/// A deferred call's place for its end, held by the request until `logging`.
pub struct Reservation {
    place: Option<mpsc::OwnedPermit<Job>>,
    charge_id: String,
}

impl Reservation {
    /// Hands over the call's usage event (`credits_used` the cost, `refunded` whether the
    /// upstream failed it); the worker records it once it knows what was taken.
    pub fn finish(mut self, event: UsageEvent) {
        if let Some(place) = self.place.take() {
            place.send(Job::Done {
                charge_id: std::mem::take(&mut self.charge_id),
                event: Some(event),
            });
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Never finished: the worker must still close the books on the charge.
        if let Some(place) = self.place.take() {
            place.send(Job::Done {
                charge_id: std::mem::take(&mut self.charge_id),
                event: None,
            });
        }
    }
}

/// The request path's handle: never blocks.
#[derive(Clone)]
pub struct DeferredQueue {
    tx: mpsc::Sender<Job>,
}

impl DeferredQueue {
    /// Queues `charge` and keeps a place for its call's end; `None` when the queue is full
    /// (or the gateway is shutting down): then the call must fail closed.
    pub fn defer(&self, charge: DeferredCharge) -> Option<Reservation> {
        let charge_place = self.tx.clone().try_reserve_owned().ok()?;
        let end_place = self.tx.clone().try_reserve_owned().ok()?;
        let charge_id = charge.charge_id.clone();
        DEFERRED_PENDING.inc();
        charge_place.send(Job::Charge(charge));
        Some(Reservation {
            place: Some(end_place),
            charge_id,
        })
    }
}

/// How a deferred call's charge ended (the `outcome` label of
/// `tollgate_deferred_charges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The cost was taken (by the worker, or by the first try whose answer was lost).
    Charged,
    /// The tenant no longer had the credits: served for free.
    Uncollected,
    /// The upstream failed the call: nothing owed, anything taken given back.
    Voided,
    /// Shutdown came before the ledger did.
    Lost,
}

impl Settled {
    pub const ALL: [Settled; 4] = [
        Settled::Charged,
        Settled::Uncollected,
        Settled::Voided,
        Settled::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Charged => "charged",
            Settled::Uncollected => "uncollected",
            Settled::Voided => "voided",
            Settled::Lost => "lost",
        }
    }
}

/// What the ledger did with a deferred charge, kept until its call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Charged {
        balance: i64,
    },
    Refused {
        balance: Option<i64>,
    },
    /// Given up at shutdown: the ledger never answered.
    Unknown,
}

impl Taken {
    fn balance(self) -> Option<i64> {
        match self {
            Taken::Charged { balance } => Some(balance),
            Taken::Refused { balance } => balance,
            Taken::Unknown => None,
        }
    }
}

/// Charges taken (or tried) whose calls have not ended yet, by charge id.
type Open = HashMap<String, (DeferredCharge, Taken)>;

/// The background side: takes deferred charges, [`CONCURRENT_CHARGES`] at a time, and
/// closes each call's books when it ends.
pub struct DeferredWorker {
    ledger: Arc<dyn Ledger>,
    hydrator: Arc<Hydrator>,
    usage: Arc<dyn UsageSink>,
    alerts: Arc<dyn AlertSink>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
}

impl DeferredWorker {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        hydrator: Arc<Hydrator>,
        usage: Arc<dyn UsageSink>,
        alerts: Arc<dyn AlertSink>,
    ) -> (DeferredQueue, DeferredWorker) {
        let (tx, rx) = mpsc::channel(2 * DEFERRED_CAPACITY);
        let worker = DeferredWorker {
            ledger,
            hydrator,
            usage,
            alerts,
            rx: tokio::sync::Mutex::new(rx),
        };
        (DeferredQueue { tx }, worker)
    }

    /// Takes the charge, asking the ledger until it answers (or, once `stop` turns true,
    /// once more; with no `stop`, not at all).
    async fn charge(
        &self,
        charge: DeferredCharge,
        mut stop: Option<ShutdownWatch>,
    ) -> (DeferredCharge, Taken) {
        let attempt = Charge {
            tenant_id: &charge.tenant_id,
            cost: charge.cost,
            charge_id: &charge.charge_id,
            // A call with an Idempotency-Key is never served on credit (see
            // `Gateway::serve_on_credit`): the key's state lives in the ledger.
            idempotency: None,
            threshold: charge.threshold,
        };
        let outcome = until_answered(stop.as_mut(), || self.hydrator.charge(&attempt)).await;
        let announce = |warnings, balance| {
            let (tenant, threshold) = (&charge.tenant_id, charge.threshold);
            alerts::announce(&*self.alerts, tenant, warnings, balance, threshold);
        };
        let taken = match outcome {
            Some(ChargeOutcome::Charged { balance, warnings }) => {
                announce(warnings, balance);
                Taken::Charged { balance }
            }
            Some(ChargeOutcome::AlreadyCharged { balance }) => Taken::Charged { balance },
            Some(ChargeOutcome::Insufficient { balance, warnings }) => {
                announce(warnings, balance);
                Taken::Refused {
                    balance: Some(balance),
                }
            }
            Some(
                ChargeOutcome::NoBalance | ChargeOutcome::Void | ChargeOutcome::KeyTaken { .. },
            ) => Taken::Refused { balance: None },
            None => Taken::Unknown,
        };
        (charge, taken)
    }

    /// Gives back a charge taken for a call that owes nothing; `None` if the ledger never
    /// answered, else the balance after (when the refund moved it).
    async fn give_back(
        &self,
        charge: &DeferredCharge,
        stop: Option<&mut ShutdownWatch>,
    ) -> Option<Option<i64>> {
        let void = Void {
            tenant_id: &charge.tenant_id,
            charge_id: &charge.charge_id,
            idempotency_key: None,
            applied_cost: Some(charge.cost),
        };
        let outcome = until_answered(stop, || self.ledger.void(&void)).await?;
        self.usage.refunded(&charge.tenant_id, charge.cost);
        Some(match outcome {
            VoidOutcome::Refunded { balance } => Some(balance),
            VoidOutcome::NotApplied | VoidOutcome::AlreadyVoided | VoidOutcome::NoBalance => None,
        })
    }

    /// Closes the books on a call that ended: gives back what a failed call was charged,
    /// then records its usage event with what the ledger kept.
    async fn done(
        &self,
        charge: DeferredCharge,
        taken: Taken,
        event: Option<UsageEvent>,
        mut stop: Option<ShutdownWatch>,
    ) -> Settled {
        let (charge_id, cost) = (&charge.charge_id, charge.cost);
        let owes_nothing = event.as_ref().is_none_or(|e| e.refunded);
        let mut balance = taken.balance();
        let mut kept = matches!(taken, Taken::Charged { .. });
        let settled = match (owes_nothing, taken) {
            (true, Taken::Charged { .. }) => match self.give_back(&charge, stop.as_mut()).await {
                Some(after) => {
                    kept = false;
                    balance = after.or(balance);
                    Settled::Voided
                }
                None => Settled::Lost,
            },
            (true, _) => Settled::Voided,
            (false, Taken::Charged { .. }) => Settled::Charged,
            (false, Taken::Refused { .. }) => Settled::Uncollected,
            (false, Taken::Unknown) => Settled::Lost,
        };
        DEFERRED_PENDING.dec();
        DEFERRED_CHARGES[settled as usize].inc();
        if matches!(settled, Settled::Uncollected | Settled::Lost) {
            tracing::warn!(
                tenant_id = %charge.tenant_id,
                %charge_id,
                cost,
                outcome = settled.as_str(),
                "a call served while the ledger was unavailable was not paid for as it should be"
            );
        }
        let Some(mut event) = event else {
            tracing::error!(%charge_id, kept, "a deferred call ended without a usage event");
            return settled;
        };
        event.balance_after = balance.unwrap_or(0);
        if kept {
            // The log says what the ledger kept, even for a failed call whose refund the
            // ledger never took (the client was told 0; the books must not lie).
            event.refunded = false;
            event.credits_used = cost;
            charge.service.metrics.charged(cost);
            if settled == Settled::Charged && self.alerts.wants_credit_success() {
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
            // Nothing was taken; a failed call's log keeps its cost beside `refunded`, as
            // every refunded log does.
            event.credits_used = 0;
        }
        self.usage.record(event);
        settled
    }
}

#[async_trait::async_trait]
impl BackgroundService for DeferredWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut rx = self.rx.lock().await;
        // Charges being asked of the ledger, and ended calls whose books are being closed
        // (a failed call's refund asks the ledger too): both polled side by side, so a
        // slow refund never holds the charges up.
        let mut asking = FuturesUnordered::new();
        let mut closing_books = FuturesUnordered::new();
        let mut open = Open::new();
        // Calls that ended while their charge was still being asked for.
        let mut ended: HashMap<String, Option<UsageEvent>> = HashMap::new();
        let (mut given_up, mut closing, mut drained) = (false, false, false);
        loop {
            if !closing && stopping(&shutdown) {
                // Requests still finishing hold reservations: take what they send (one
                // last try each) until the last reservation is gone.
                closing = true;
                rx.close();
            }
            if drained && asking.is_empty() && closing_books.is_empty() {
                break;
            }
            // Shutting down with the ledger down: one failed last try says enough; the rest
            // are given up at once rather than each waiting out the ledger timeout.
            let stop = (!given_up || !closing).then(|| shutdown.clone());
            let room = asking.len() + closing_books.len() < CONCURRENT_CHARGES;
            tokio::select! {
                job = rx.recv(), if !drained && room => match job {
                    None => drained = true,
                    Some(Job::Charge(charge)) => asking.push(self.charge(charge, stop)),
                    Some(Job::Done { charge_id, event }) => match open.remove(&charge_id) {
                        Some((charge, taken)) => {
                            closing_books.push(self.done(charge, taken, event, stop));
                        }
                        None => {
                            ended.insert(charge_id, event);
                        }
                    },
                },
                Some((charge, taken)) = asking.next(), if !asking.is_empty() => {
                    given_up |= taken == Taken::Unknown;
                    match ended.remove(&charge.charge_id) {
                        Some(event) => closing_books.push(self.done(charge, taken, event, stop)),
                        None => {
                            open.insert(charge.charge_id.clone(), (charge, taken));
                        }
                    }
                }
                Some(settled) = closing_books.next(), if !closing_books.is_empty() => {
                    given_up |= settled == Settled::Lost;
                }
                _ = shutdown.changed(), if !closing => {}
            }
        }
        if given_up {
            tracing::error!("shut down with deferred charges the ledger could not take");
        }
        if !ended.is_empty() {
            // Cannot happen (a call's charge is queued before its end): say so if it does.
            tracing::error!(calls = ended.len(), "deferred calls ended without a charge");
        }
    }
}

#[cfg(test)]
mod tests;
