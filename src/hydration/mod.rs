//! Filling a ledger that holds no balance for a tenant (Redis restarted empty, a new
//! replica, a tenant never charged before) from the durable store. Shared by the gateway's
//! charge step and the admin API's credit operations, so both seed the same number.
//!
//! The balance to seed is the durable balance minus every process's usage charged but not
//! yet in the store. This process's own is read with the durable balance as a consistent
//! pair under the usage flusher's settle lock, after the charges in flight when hydration
//! began have come back (see [`inflight`]). Other replicas publish theirs through a shared
//! ledger ([`publish`]); since nobody can charge a tenant the ledger has no balance for,
//! theirs only drains, so hydration waits until every live replica has published, after
//! it began, that it holds nothing for the tenant (a store outage makes that a `503` until
//! the store is back), and subtracts what replicas that stopped publishing last held.
//! Seeding is set-if-absent, so racing replicas agree. See docs/DESIGN.md §Hydration.

mod inflight;
mod publish;

pub use inflight::{InFlight, Ticket};
pub use publish::{PendingPublisher, PUBLISH_TICK};

use crate::ledger::{Charge, ChargeOutcome, Ledger, LedgerError};
use crate::metrics::LEDGER_DURATION;
use crate::store::Store;
use crate::usage::UsageSink;
use std::sync::Arc;
use std::time::Duration;

/// Longest hydration waits for the usage flusher to finish the batch it is writing (one
/// batch write; longer means the store is struggling, and the caller gets a 503), and for
/// the other replicas' publishes beyond the ledger timeout they must postdate.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

pub struct Hydrator {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn Store>,
    usage: Arc<dyn UsageSink>,
    inflight: InFlight,
    /// Longest a hydration waits for charges in flight (the ledger timeout).
    ledger_timeout: Duration,
}

impl Hydrator {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        store: Arc<dyn Store>,
        usage: Arc<dyn UsageSink>,
        ledger_timeout: Duration,
    ) -> Hydrator {
        Hydrator {
            ledger,
            store,
            usage,
            inflight: InFlight::default(),
            ledger_timeout,
        }
    }

    /// Counts a charge in flight until the ticket drops (after its credits are counted as
    /// pending in the usage sink).
    pub fn enter(&self) -> Ticket<'_> {
        self.inflight.enter()
    }

    /// Charges once, hydrating first when the ledger holds no balance for the tenant, and
    /// counts what was taken as pending in the usage sink. The charge step of the request
    /// path and of deferred charges.
    pub async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        // Counted in flight until its credits are counted as pending (see `inflight`).
        let ticket = self.enter();
        let timer = LEDGER_DURATION.start_timer();
        let result = self.ledger.charge(charge).await;
        timer.observe_duration();
        let outcome = match result? {
            ChargeOutcome::NoBalance => {
                drop(ticket);
                self.hydrate(charge.tenant_id).await?;
                let _ticket = self.enter();
                let outcome = self.ledger.charge(charge).await?;
                self.count_pending(charge, outcome);
                return Ok(outcome);
            }
            outcome => outcome,
        };
        self.count_pending(charge, outcome);
        Ok(outcome)
    }

    fn count_pending(&self, charge: &Charge<'_>, outcome: ChargeOutcome) {
        if let ChargeOutcome::Charged { .. } | ChargeOutcome::AlreadyCharged { .. } = outcome {
            self.usage.charged(charge.tenant_id, charge.cost);
        }
    }

    /// Seeds the tenant's ledger balance if the ledger has none.
    pub async fn hydrate(&self, tenant_id: &str) -> Result<(), LedgerError> {
        if !self.inflight.quiesce(self.ledger_timeout).await {
            tracing::warn!(%tenant_id, "hydrating while charges are still in flight: reconciliation may report them");
        }
        // Requests that found no balance together hydrate one after another: after the
        // first, there is nothing left to do.
        if self.ledger.balance(tenant_id).await?.is_some() {
            return Ok(());
        }
        let others = self.others_pending(tenant_id).await?;
        let lock = self.usage.settle_lock();
        let _settled = match &lock {
            Some(lock) => Some(
                tokio::time::timeout(SETTLE_WAIT, lock.lock())
                    .await
                    .map_err(|_| {
                        LedgerError::Hydration("the usage pipeline is busy writing".into())
                    })?,
            ),
            None => None,
        };
        let pending = self.usage.pending_credits(tenant_id);
        let durable = match self.store.tenant(tenant_id).await {
            Ok(Some(record)) => record.balance,
            Ok(None) => 0,
            Err(e) => return Err(LedgerError::Hydration(e.to_string())),
        };
        tracing::info!(%tenant_id, durable, pending, others, "hydrating the ledger");
        self.ledger
            .seed(tenant_id, (durable - pending - others).max(0))
            .await
    }

    /// Waits until no live replica holds usage for the tenant that the store lacks, and
    /// returns what dead ones last held (0 when the ledger serves this process alone).
    async fn others_pending(&self, tenant_id: &str) -> Result<i64, LedgerError> {
        let own = self.usage.pipeline_id();
        // Publishes must postdate any charge in flight when this began (a reply counts it
        // as pending), so they must be this much younger than the first look: the wait
        // lasts at least the ledger timeout, and gets SETTLE_WAIT beyond it.
        let fresh_after = self.ledger_timeout.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + self.ledger_timeout + SETTLE_WAIT;
        let mut started = None;
        loop {
            let Some(view) = self.ledger.pending_elsewhere(tenant_id, own).await? else {
                return Ok(0);
            };
            let t0 = *started.get_or_insert(view.now_ms);
            // Every live replica publishes each tick: a registry two ticks old (or none
            // after two ticks: no replica at all) names them all.
            let ticks = 2 * PUBLISH_TICK.as_millis() as u64;
            let complete = view.registry_since_ms.unwrap_or(t0) + ticks <= view.now_ms;
            let drained = view
                .live
                .iter()
                .all(|(_, credits, published)| *credits == 0 && *published >= t0 + fresh_after);
            if complete && drained {
                return Ok(view.dead_credits);
            }
            if tokio::time::Instant::now() >= deadline {
                let holding: i64 = view.live.iter().map(|(_, c, _)| c).sum();
                return Err(LedgerError::Hydration(format!(
                    "other gateways still hold {holding} credits of usage for this tenant that the store lacks"
                )));
            }
            tokio::time::sleep(PUBLISH_TICK / 2).await;
        }
    }

    /// The live balance, hydrating first when the ledger has none.
    pub async fn balance(&self, tenant_id: &str) -> Result<i64, LedgerError> {
        if let Some(balance) = self.ledger.balance(tenant_id).await? {
            return Ok(balance);
        }
        self.hydrate(tenant_id).await?;
        Ok(self.ledger.balance(tenant_id).await?.unwrap_or(0))
    }
}
