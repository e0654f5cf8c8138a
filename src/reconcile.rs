//! Reconciliation: proves nothing leaked. Per tenant it compares three accounts that must
//! agree once the usage queues have drained:
//!
//! - the live ledger balance, with the slices replicas lease of it, against the durable
//!   balance minus what is still pending on its way to the store (`ledger_difference`);
//!   credits kept from expired leases (`forfeited`) explain a ledger short by up to them
//!   (docs/DESIGN.md §Leased credits);
//! - the durable balance, against the store's own records: Σ credit transactions −
//!   Σ credits of non-refunded usage logs (`store_difference`).
//!
//! The gateway runs it every `reconcile_interval_secs`; `tollgate reconcile` runs it once.

use crate::ledger::Ledger;
use crate::metrics::RECONCILE_MISMATCHED;
use crate::store::{Store, StoreError};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct TenantReport {
    pub tenant_id: String,
    /// `None` when the ledger holds no balance (it hydrates on the next call).
    pub ledger: Option<i64>,
    pub durable: i64,
    pub pending: i64,
    /// Credits in slices replicas hold, not yet reported spent.
    pub leased: i64,
    /// Credits kept from leases that expired: their holders may have spent them unreported.
    pub forfeited: i64,
    /// ledger + leased − (durable − pending); 0 when consistent.
    pub ledger_difference: i64,
    /// durable − (Σ transactions − Σ usage); 0 when consistent.
    pub store_difference: i64,
}

impl TenantReport {
    /// No difference, or a ledger short by no more than the forfeited credits.
    pub fn is_consistent(&self) -> bool {
        self.store_difference == 0 && (-self.forfeited..=0).contains(&self.ledger_difference)
    }
}

/// Checks every tenant of the store.
pub async fn reconcile(
    store: &dyn Store,
    ledger: &dyn Ledger,
    pending: &(dyn Fn(&str) -> i64 + Sync),
) -> Result<Vec<TenantReport>, StoreError> {
    let mut reports = Vec::new();
    for tenant in store.tenants().await? {
        let audit = store.audit(&tenant.id).await?;
        let live = ledger
            .balance(&tenant.id)
            .await
            .map_err(|e| StoreError::Task(format!("ledger: {e}")))?;
        let leases = ledger
            .leases(&tenant.id)
            .await
            .map_err(|e| StoreError::Task(format!("ledger: {e}")))?;
        let pending = pending(&tenant.id);
        reports.push(TenantReport {
            ledger_difference: live.map_or(0, |l| l + leases.held - (tenant.balance - pending)),
            leased: leases.held,
            forfeited: leases.forfeited,
            store_difference: tenant.balance - audit.expected_balance(),
            tenant_id: tenant.id,
            ledger: live,
            durable: tenant.balance,
            pending,
        });
    }
    Ok(reports)
}

/// The periodic check inside the gateway. Under traffic the accounts are read a moment
/// apart (a charge in flight is in the ledger but not yet pending), so a difference is only
/// reported when it is the same at two checks in a row: a leak, not a request in flight.
pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub ledger: Arc<dyn Ledger>,
    pub usage: Arc<dyn crate::usage::UsageSink>,
    pub interval: Duration,
    pub last: std::sync::Mutex<std::collections::HashMap<String, (i64, i64)>>,
}

#[async_trait::async_trait]
impl BackgroundService for Reconciler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let pending = |tenant: &str| self.usage.pending_credits(tenant);
            match reconcile(&*self.store, &*self.ledger, &pending).await {
                Ok(reports) => {
                    let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                    let mut bad = Vec::new();
                    for r in reports.iter().filter(|r| !r.is_consistent()) {
                        let now = (r.ledger_difference, r.store_difference);
                        if last.get(&r.tenant_id) == Some(&now) {
                            bad.push(r);
                        }
                    }
                    *last = reports
                        .iter()
                        .map(|r| {
                            (
                                r.tenant_id.clone(),
                                (r.ledger_difference, r.store_difference),
                            )
                        })
                        .collect();
                    RECONCILE_MISMATCHED.set(bad.len() as i64);
                    for r in bad {
                        tracing::warn!(tenant_id = %r.tenant_id, ledger = ?r.ledger, durable = r.durable, pending = r.pending,
                            ledger_difference = r.ledger_difference, store_difference = r.store_difference,
                            "reconciliation: balances disagree");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciliation could not run"),
            }
        }
    }
}
