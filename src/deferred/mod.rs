//! Deferred charges (docs/DESIGN.md §Request path, `on_ledger_error: allow`): a call to such a service that
//! finds the ledger unavailable is forwarded anyway, and its charge is applied here, in the
//! background, as soon as the ledger answers again.
//!
//! Each such call takes two places in a bounded queue before it is forwarded (none left:
//! the call fails closed, `503`, as under `deny`). The first carries its charge at once, so
//! the worker takes it the moment the ledger is back, whatever the upstream is doing: a
//! charge that timed out may have landed after all (a stalled Redis resuming), and only
//! while its record lives (`ledger.charge_ttl_secs`) does a retry by the same charge id find
//! it instead of taking the cost twice. The second place is kept for the call's end: its
//! usage event, recorded with what the ledger really took, so the books (docs/DESIGN.md §Usage pipeline and journal: logs =
//! ledger) stay exact. A call the upstream failed owes nothing: what was taken is given back.
//! A tenant without enough credits by then was served for free: logged at 0 credits and
//! counted as `uncollected`.
//!
//! Each call is journaled ([`WorkLog`]) from the moment it is deferred until its books are
//! closed, with its usage event once it ends: a gateway killed or stopped during an outage
//! finishes them at its next start (a call cut off by the crash, with no event, owes
//! nothing and gets back what was taken). The worker stops asking the ledger a margin before
//! the charge's record expires (past it, a retry could take the cost twice): such a call is
//! given up, logged at 0 (`lost`) and reported by reconciliation as unresolved.

use crate::alerts::{self, AlertSink, CreditSuccess};
use crate::hydration::Hydrator;
use crate::ledger::retry::{deadline, stopping, until_answered, Answer};
use crate::ledger::worklog::{OpenWork, Unresolved};
use crate::ledger::{Charge, ChargeOutcome, Ledger, Void, VoidOutcome, WorkLog};
use crate::metrics::{ServiceMetrics, DEFERRED_CHARGES, DEFERRED_PENDING};
use crate::usage::UsageSink;
use crate::vocab::{Settled, UsageEvent};
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The journal kind of a deferred call.
const KIND: &str = "deferred";

/// The journal kind that says a deferred call's charge was taken (and the balance after):
/// a restart then gives back rather than charges again. Apart from [`KIND`], so the
/// worker's note and the request's end never overwrite each other.
const TAKEN: &str = "deferred-taken";

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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeferredCharge {
    /// The service's name (its credits counter).
    pub service: String,
    pub tenant_id: String,
    pub cost: i64,
    /// The request id: the charge's id in the ledger.
    pub charge_id: String,
    /// The tenant's low-credit threshold when the call was made.
    pub threshold: i64,
    /// Unix ms of the request path's try, which may have landed: the charge's record lives
    /// `ledger.charge_ttl_secs` from then.
    pub charged_at_ms: i64,
    /// Unix ms of the first try to give back what a failed call was charged (its tombstone
    /// lives `ledger.charge_ttl_secs` from then); set by the worker.
    #[serde(default)]
    pub refund_since_ms: Option<i64>,
    /// The balance after the charge, once the ledger took it (restored from the journal).
    #[serde(default)]
    pub taken_balance: Option<i64>,
}

/// What the journal keeps of a deferred call until its books are closed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Journaled {
    charge: DeferredCharge,
    /// The call's usage event, once it ended.
    event: Option<UsageEvent>,
}

/// What the worker is handed: a call's charge when it is forwarded, and the call's end.
pub enum Job {
    Charge(DeferredCharge),
    /// The call ended; `None`: without a usage event (its context was dropped).
    Done {
        charge_id: String,
        /// Boxed: an event is larger than a charge, and most jobs are charges.
        event: Option<Box<UsageEvent>>,
    },
}

/// A deferred call's place for its end, held by the request until `logging`.
pub struct Reservation {
    place: Option<mpsc::OwnedPermit<Job>>,
    charge_id: String,
    /// To journal the call's end: the charge and the journal.
    charge: Option<(DeferredCharge, Arc<WorkLog>)>,
}

impl Reservation {
    /// Hands over the call's usage event (`credits_used` the cost, `refunded` whether the
    /// upstream failed it); the worker records it once it knows what was taken.
    pub fn finish(mut self, event: UsageEvent) {
        if let Some((charge, worklog)) = self.charge.take() {
            let journaled = Journaled {
                charge,
                event: Some(event.clone()),
            };
            worklog.put(KIND, &self.charge_id, &journaled);
        }
        if let Some(place) = self.place.take() {
            place.send(Job::Done {
                charge_id: std::mem::take(&mut self.charge_id),
                event: Some(Box::new(event)),
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

/// The request path's handle: never blocks (a journal line, then a channel send).
#[derive(Clone)]
pub struct DeferredQueue {
    tx: mpsc::Sender<Job>,
    worklog: Arc<WorkLog>,
}

impl DeferredQueue {
    /// Queues `charge` and keeps a place for its call's end; `None` when the queue is full
    /// (or the gateway is shutting down): then the call must fail closed.
    pub fn defer(&self, charge: DeferredCharge) -> Option<Reservation> {
        let charge_place = self.tx.clone().try_reserve_owned().ok()?;
        let end_place = self.tx.clone().try_reserve_owned().ok()?;
        let charge_id = charge.charge_id.clone();
        let journaled = Journaled {
            charge: charge.clone(),
            event: None,
        };
        self.worklog.put(KIND, &charge_id, &journaled);
        DEFERRED_PENDING.inc();
        charge_place.send(Job::Charge(charge.clone()));
        Some(Reservation {
            place: Some(end_place),
            charge_id,
            charge: Some((charge, Arc::clone(&self.worklog))),
        })
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
    /// Shutting down before the ledger answered: finished at the next start.
    Unknown,
    /// Not answered before the charge's record expires: given up, reported.
    Expired,
}

impl Taken {
    fn balance(self) -> Option<i64> {
        match self {
            Taken::Charged { balance } => Some(balance),
            Taken::Refused { balance } => balance,
            Taken::Unknown | Taken::Expired => None,
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
    worklog: Arc<WorkLog>,
    /// How long the ledger keeps a charge's record (`ledger.charge_ttl_secs`).
    record_life: Duration,
}

/// A deferred call a previous run left open, to finish first.
pub struct Restored {
    charge: DeferredCharge,
    event: Option<UsageEvent>,
}

/// What the worker is built with.
pub struct WorkerParts {
    pub ledger: Arc<dyn Ledger>,
    pub hydrator: Arc<Hydrator>,
    pub usage: Arc<dyn UsageSink>,
    pub alerts: Arc<dyn AlertSink>,
    pub worklog: Arc<WorkLog>,
    pub record_life: Duration,
}

impl DeferredWorker {
    /// `restored`: calls a previous run left open (queued first).
    pub fn new(parts: WorkerParts, restored: Vec<Restored>) -> (DeferredQueue, DeferredWorker) {
        let (tx, rx) = mpsc::channel(2 * DEFERRED_CAPACITY);
        if !restored.is_empty() {
            tracing::info!(
                calls = restored.len(),
                "resuming deferred charges left open by the last run"
            );
        }
        for Restored { charge, event } in restored {
            let charge_id = charge.charge_id.clone();
            let (Ok(first), Ok(second)) = (
                tx.clone().try_reserve_owned(),
                tx.clone().try_reserve_owned(),
            ) else {
                break; // the rest stay journaled, for the start after
            };
            DEFERRED_PENDING.inc();
            first.send(Job::Charge(charge));
            second.send(Job::Done {
                charge_id,
                event: event.map(Box::new),
            });
        }
        let worker = DeferredWorker {
            ledger: parts.ledger,
            hydrator: parts.hydrator,
            usage: parts.usage,
            alerts: parts.alerts,
            rx: tokio::sync::Mutex::new(rx),
            worklog: Arc::clone(&parts.worklog),
            record_life: parts.record_life,
        };
        (
            DeferredQueue {
                tx,
                worklog: parts.worklog,
            },
            worker,
        )
    }

    /// The deferred calls journaled as open (see [`WorkLog::open`]).
    pub fn restore(open: &mut OpenWork) -> Vec<Restored> {
        let taken: HashMap<String, i64> = open
            .remove(TAKEN)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(id, balance)| Some((id, balance.as_i64()?)))
            .collect();
        open.remove(KIND)
            .unwrap_or_default()
            .into_iter()
            .filter_map(
                |(id, item)| match serde_json::from_value::<Journaled>(item) {
                    Ok(mut j) => {
                        j.charge.taken_balance = j.charge.taken_balance.or(taken.get(&id).copied());
                        Some(Restored {
                            charge: j.charge,
                            event: j.event,
                        })
                    }
                    Err(e) => {
                        tracing::error!(charge_id = %id, error = %e, "unreadable journaled deferred charge");
                        None
                    }
                },
            )
            .collect()
    }

    /// Takes the charge, asking the ledger until it answers (or, once `stop` turns true,
    /// once more; with no `stop`, not at all).
    async fn charge(
        &self,
        charge: DeferredCharge,
        mut stop: Option<ShutdownWatch>,
    ) -> (DeferredCharge, Taken) {
        if let Some(balance) = charge.taken_balance {
            return (charge, Taken::Charged { balance });
        }
        let attempt = Charge {
            tenant_id: &charge.tenant_id,
            cost: charge.cost,
            charge_id: &charge.charge_id,
            // A call with an Idempotency-Key is never served on credit (see
            // `Gateway::serve_on_credit`): the key's state lives in the ledger.
            idempotency: None,
            threshold: charge.threshold,
            // A retry by id: never from a slice (an earlier try may have landed).
            fresh: false,
            // A call on a budgeted API key is never served on credit either.
            budget: None,
            limits: &[],
        };
        let until = deadline(charge.charged_at_ms, self.record_life);
        let outcome =
            match until_answered(stop.as_mut(), until, || self.hydrator.charge(&attempt)).await {
                Answer::Answered(outcome) => Some(outcome),
                Answer::Stopped => None,
                Answer::Expired => return (charge, Taken::Expired),
            };
        let announce = |warnings, balance| {
            let (tenant, threshold) = (&charge.tenant_id, charge.threshold);
            alerts::announce(&*self.alerts, tenant, warnings, balance, threshold);
        };
        let taken = match outcome {
            Some(ChargeOutcome::Charged {
                balance, warnings, ..
            }) => {
                announce(warnings, balance);
                self.worklog.put(TAKEN, &charge.charge_id, &balance);
                Taken::Charged { balance }
            }
            Some(ChargeOutcome::AlreadyCharged { balance }) => {
                self.worklog.put(TAKEN, &charge.charge_id, &balance);
                Taken::Charged { balance }
            }
            Some(ChargeOutcome::Insufficient { balance, warnings }) => {
                announce(warnings, balance);
                Taken::Refused {
                    balance: Some(balance),
                }
            }
            // A deferred charge names no key nor budget: these cannot come back.
            Some(
                ChargeOutcome::NoBalance
                | ChargeOutcome::Void
                | ChargeOutcome::KeyTaken { .. }
                | ChargeOutcome::OverBudget { .. }
                | ChargeOutcome::Limited { .. },
            ) => Taken::Refused { balance: None },
            None => Taken::Unknown,
        };
        (charge, taken)
    }

    /// Gives back a charge taken for a call that owes nothing: the balance after (when the
    /// refund moved it), or why not.
    async fn give_back(
        &self,
        charge: &mut DeferredCharge,
        event: &Option<UsageEvent>,
        stop: Option<&mut ShutdownWatch>,
    ) -> Answer<Option<i64>> {
        if charge.refund_since_ms.is_none() {
            charge.refund_since_ms = Some(crate::store::now_ms());
            let journaled = Journaled {
                charge: charge.clone(),
                event: event.clone(),
            };
            self.worklog.put(KIND, &charge.charge_id, &journaled);
        }
        let void = Void {
            tenant_id: &charge.tenant_id,
            charge_id: &charge.charge_id,
            idempotency_key: None,
            applied_cost: Some(charge.cost),
            budget: None,
        };
        let since = charge.refund_since_ms.unwrap_or(charge.charged_at_ms);
        let until = deadline(since, self.record_life);
        let outcome = match until_answered(stop, until, || self.ledger.void(&void)).await {
            Answer::Answered(outcome) => outcome,
            Answer::Stopped => return Answer::Stopped,
            Answer::Expired => return Answer::Expired,
        };
        self.usage.refunded(&charge.tenant_id, charge.cost);
        Answer::Answered(match outcome {
            VoidOutcome::Refunded { balance } => Some(balance),
            VoidOutcome::NotApplied | VoidOutcome::AlreadyVoided | VoidOutcome::NoBalance => None,
        })
    }

    /// Records work given up for good (see [`WorkLog::give_up`]).
    fn unresolved(&self, charge: &DeferredCharge, kind: &str) {
        let unresolved = Unresolved {
            at_ms: crate::store::now_ms(),
            kind: kind.to_owned(),
            tenant_id: charge.tenant_id.clone(),
            charge_id: charge.charge_id.clone(),
            credits: charge.cost,
        };
        self.worklog.give_up(KIND, &charge.charge_id, &unresolved);
        self.worklog.done(TAKEN, &charge.charge_id);
    }

    /// Closes the books on a call that ended: gives back what a failed call was charged,
    /// then records its usage event with what the ledger kept.
    async fn done(
        &self,
        mut charge: DeferredCharge,
        taken: Taken,
        event: Option<UsageEvent>,
        mut stop: Option<ShutdownWatch>,
    ) -> Option<Settled> {
        let owes_nothing = event.as_ref().is_none_or(|e| e.refunded);
        let mut balance = taken.balance();
        let mut kept = matches!(taken, Taken::Charged { .. });
        let settled = match (owes_nothing, taken) {
            // Shutting down before the ledger answered: the call stays journaled, with its
            // event, and is finished at the next start.
            (_, Taken::Unknown) => return None,
            (true, Taken::Charged { .. }) => {
                match self.give_back(&mut charge, &event, stop.as_mut()).await {
                    Answer::Answered(after) => {
                        kept = false;
                        balance = after.or(balance);
                        Settled::Voided
                    }
                    Answer::Stopped => return None,
                    Answer::Expired => {
                        self.unresolved(&charge, "refund");
                        Settled::Lost
                    }
                }
            }
            (_, Taken::Expired) => {
                // The first try may have landed: logged at 0, reported as unresolved.
                self.unresolved(&charge, KIND);
                kept = false;
                Settled::Lost
            }
            (true, _) => Settled::Voided,
            (false, Taken::Charged { .. }) => Settled::Charged,
            (false, Taken::Refused { .. }) => Settled::Uncollected,
        };
        let (charge_id, cost) = (&charge.charge_id, charge.cost);
        if settled != Settled::Lost {
            self.worklog.done(KIND, charge_id);
            self.worklog.done(TAKEN, charge_id);
        }
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
            return Some(settled);
        };
        event.balance_after = balance.unwrap_or(0);
        if kept {
            // The log says what the ledger kept, even for a failed call whose refund the
            // ledger never took (the client was told 0; the books must not lie).
            event.refunded = false;
            event.credits_used = cost;
            ServiceMetrics::new(&charge.service).charged(cost);
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
        Some(settled)
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
            // are left to the next start at once rather than each waiting out the timeout.
            let stop = (!given_up || !closing).then(|| shutdown.clone());
            let room = asking.len() + closing_books.len() < CONCURRENT_CHARGES;
            tokio::select! {
                job = rx.recv(), if !drained && room => match job {
                    None => drained = true,
                    Some(Job::Charge(charge)) => asking.push(self.charge(charge, stop)),
                    Some(Job::Done { charge_id, event }) => {
                        let event = event.map(|e| *e);
                        match open.remove(&charge_id) {
                            Some((charge, taken)) => {
                                closing_books.push(self.done(charge, taken, event, stop));
                            }
                            None => {
                                ended.insert(charge_id, event);
                            }
                        }
                    }
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
                    given_up |= settled.is_none();
                }
                _ = shutdown.changed(), if !closing => {}
            }
        }
        if given_up {
            tracing::warn!("shut down with deferred charges the ledger could not take: journaled, finished at the next start");
        }
        if !ended.is_empty() {
            // Cannot happen (a call's charge is queued before its end): say so if it does.
            tracing::error!(calls = ended.len(), "deferred calls ended without a charge");
        }
    }
}

pub mod settles;
#[cfg(test)]
mod tests;
