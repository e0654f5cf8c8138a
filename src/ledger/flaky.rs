//! A test ledger: the embedded one, failing its first charges and voids (a Redis that is
//! down, then back). For the background workers' tests, in paused time.

use super::{
    AdjustOutcome, Adjustment, Charge, ChargeOutcome, Coordination, EmbeddedLedger, Ledger,
    LedgerError, Settle, SettleOutcome, Void, VoidOutcome,
};
use crate::config::LedgerConfig;
use crate::idempotency::KeyRecord;
use std::sync::atomic::{AtomicU32, Ordering};

/// The embedded ledger, but `charge` and `void` time out while `failures` lasts.
pub struct Flaky {
    inner: EmbeddedLedger,
    failures: AtomicU32,
    /// Calls of `charge` and `void`, failed or not.
    pub calls: AtomicU32,
}

impl Flaky {
    /// A ledger whose first `failures` charges and voids time out.
    pub fn new(failures: u32) -> Flaky {
        Flaky {
            inner: EmbeddedLedger::in_memory(&LedgerConfig::default()),
            failures: AtomicU32::new(failures),
            calls: AtomicU32::new(0),
        }
    }

    /// The next `n` charges and voids time out (the ledger goes down now).
    pub fn fail_next(&self, n: u32) {
        self.failures.store(n, Ordering::SeqCst);
    }

    fn fail(&self) -> Result<(), LedgerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(LedgerError::Timeout);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Ledger for Flaky {
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        self.fail()?;
        self.inner.charge(charge).await
    }
    async fn void(&self, void: &Void<'_>) -> Result<VoidOutcome, LedgerError> {
        self.fail()?;
        self.inner.void(void).await
    }
    async fn settle(&self, settle: &Settle<'_>) -> Result<SettleOutcome, LedgerError> {
        self.fail()?;
        self.inner.settle(settle).await
    }
    async fn key_record(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, LedgerError> {
        self.inner.key_record(tenant_id, key).await
    }
    async fn keep_response(
        &self,
        tenant_id: &str,
        key: &str,
        charge_id: &str,
        response: &[u8],
    ) -> Result<bool, LedgerError> {
        self.inner
            .keep_response(tenant_id, key, charge_id, response)
            .await
    }
    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError> {
        self.inner.seed(tenant_id, balance).await
    }
    async fn balance(&self, tenant_id: &str) -> Result<Option<i64>, LedgerError> {
        self.inner.balance(tenant_id).await
    }
    async fn adjust(&self, adjustment: &Adjustment<'_>) -> Result<AdjustOutcome, LedgerError> {
        self.inner.adjust(adjustment).await
    }
}

#[async_trait::async_trait]
impl Coordination for Flaky {
    async fn catalog_version(&self) -> Result<u64, LedgerError> {
        self.inner.catalog_version().await
    }

    async fn bump_catalog_version(&self) -> Result<u64, LedgerError> {
        self.inner.bump_catalog_version().await
    }
}
