//! The durable store of SPEC §3: tenants with their durable balance, the usage logs, and
//! the credit transactions that audit every change of balance. Two backends answer the
//! same [`Store`] trait: MongoDB (distributed mode) and an embedded SQLite file under the
//! data dir (the default). One behavioural suite (`tests/store.rs`) runs against both.
//!
//! Durable balances move in two ways only: a credit transaction (top-up, adjustment,
//! refill, the tenant's initial credits) or a flushed usage batch. A batch is applied to
//! each tenant's balance exactly once, however often it is retried: every batch carries
//! its pipeline's id and a sequence number, and a tenant's balance only moves for a
//! sequence number above the last one it applied from that pipeline (the pipeline sends
//! its batches strictly in order).

mod mongo;
mod sqlite;

pub use mongo::MongoStore;
pub use sqlite::SqliteStore;

use crate::config::TenantStatus;
use crate::usage::UsageEvent;
use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("bad stored data: {0}")]
    Data(String),
}

/// A tenant as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub status: TenantStatus,
    /// The durable balance: initial credits + transactions − applied usage.
    pub balance: i64,
    pub low_credit_threshold: i64,
    pub plan_id: Option<String>,
}

/// A tenant to create if absent (from the config file, or the admin API).
#[derive(Debug, Clone)]
pub struct NewTenant<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub status: TenantStatus,
    pub initial_credits: i64,
}

/// Default `low_credit_threshold` of a new tenant (SPEC §3).
pub const DEFAULT_LOW_CREDIT_THRESHOLD: i64 = 100;

/// A batch of usage events from one pipeline, numbered in the order it sends them.
#[derive(Debug, Clone, Copy)]
pub struct UsageBatch<'a> {
    pub pipeline_id: &'a str,
    pub seq: u64,
    pub events: &'a [UsageEvent],
}

/// A row of the `credit_transactions` audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditTransaction {
    pub id: String,
    pub tenant_id: String,
    /// Signed: a top-up is positive, a correction may be negative.
    pub amount: i64,
    /// `initial`, `top-up`, `adjustment`, `refill`, `refund`, ...
    pub reason: String,
    /// Who did it: a user id, `config`, `scheduler`.
    pub actor: String,
    pub balance_after: i64,
    pub at_ms: i64,
}

/// Which usage logs to list: newest filters first, in (timestamp, id) order.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub tenant_id: Option<String>,
    pub service: Option<String>,
    /// Inclusive lower bound, unix ms.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, unix ms.
    pub to_ms: Option<i64>,
    /// Resume after this (timestamp_ms, id): cursor pagination stable under inserts.
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

/// Usage aggregated over non-refunded logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    pub calls: u64,
    pub credits: i64,
    /// Per (service, endpoint), sorted by service then endpoint.
    pub lines: Vec<UsageLine>,
}

impl UsageTotals {
    /// Totals of `lines`, sorted by service then endpoint.
    pub fn from_lines(mut lines: Vec<UsageLine>) -> UsageTotals {
        lines.sort_by(|a, b| (&a.service, &a.endpoint).cmp(&(&b.service, &b.endpoint)));
        UsageTotals {
            calls: lines.iter().map(|l| l.calls).sum(),
            credits: lines.iter().map(|l| l.credits).sum(),
            lines,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsageLine {
    pub service: String,
    pub endpoint: String,
    pub calls: u64,
    pub credits: i64,
}

/// What the store's own records say a tenant's balance must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// Σ amount of credit transactions (including the initial credits).
    pub transactions: i64,
    /// Σ credits_used of non-refunded usage logs.
    pub usage: i64,
}

impl Audit {
    pub fn expected_balance(&self) -> i64 {
        self.transactions - self.usage
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates collections/tables and indexes; safe to run at every start.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates the tenant with its initial credits (and an `initial` transaction) unless it
    /// exists; an existing tenant is left as it is. Returns whether it was created.
    async fn ensure_tenant(&self, tenant: &NewTenant<'_>) -> Result<bool, StoreError>;

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError>;

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError>;

    /// Inserts the batch's logs (an id already stored counts as success) and applies its
    /// non-refunded credits to each tenant's durable balance, once per (pipeline, seq).
    async fn insert_usage(&self, batch: &UsageBatch<'_>) -> Result<(), StoreError>;

    /// Records a credit transaction and moves the durable balance by its amount; returns
    /// the row as written (with `balance_after`).
    async fn apply_transaction(
        &self,
        tenant_id: &str,
        amount: i64,
        reason: &str,
        actor: &str,
    ) -> Result<CreditTransaction, StoreError>;

    async fn transactions(&self, tenant_id: &str) -> Result<Vec<CreditTransaction>, StoreError>;

    async fn usage_logs(&self, query: &UsageQuery) -> Result<Vec<UsageEvent>, StoreError>;

    /// Totals over `[from_ms, to_ms)` for one tenant.
    async fn usage_totals(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<UsageTotals, StoreError>;

    /// The store's own account of a tenant, for reconciliation.
    async fn audit(&self, tenant_id: &str) -> Result<Audit, StoreError>;
}

/// Sums a batch's non-refunded credits per tenant, in tenant order.
pub(crate) fn credits_by_tenant(events: &[UsageEvent]) -> Vec<(&str, i64)> {
    let mut sums = std::collections::BTreeMap::<&str, i64>::new();
    for event in events {
        let used = if event.refunded {
            0
        } else {
            event.credits_used
        };
        *sums.entry(event.tenant_id.as_str()).or_default() += used;
    }
    sums.into_iter().collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
