//! The durable store of docs/DESIGN.md §Data model: tenants with their durable balance, the usage logs, and
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

use crate::vocab::{TenantStatus, UsageEvent};
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
    /// Rate and concurrency limits of its own, over its plan's (docs/DESIGN.md §Limits).
    pub limits: crate::vocab::Limits,
}

/// A tenant to create if absent (from the config file, or the admin API).
#[derive(Debug, Clone)]
pub struct NewTenant<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub status: TenantStatus,
    pub initial_credits: i64,
    /// Who creates it, for the `initial` credit transaction: `config`, `signup`, a user id.
    pub actor: &'a str,
}

/// A change to a tenant's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub status: Option<TenantStatus>,
    pub low_credit_threshold: Option<i64>,
    /// `Some(None)` removes the plan.
    pub plan_id: Option<Option<String>>,
    /// The tenant's own limits, replaced whole.
    pub limits: Option<crate::vocab::Limits>,
}

/// The control plane's collections of JSON documents (docs/DESIGN.md §Data model), each keyed by its `id`
/// (`_id` in MongoDB). Their shapes belong to the admin API and the scheduler; the store
/// only keeps them, enforces the unique keys of docs/DESIGN.md §Data model and finds them by a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Users,
    Plans,
    Subscriptions,
    Services,
    Notifications,
    UsageSummaries,
    ScheduledSummaries,
    Invoices,
    /// Operators' credit changes, recorded before they touch the ledger (an outbox): see
    /// the admin crate's `billing` module.
    CreditIntents,
    /// API keys, by hash (docs/DESIGN.md §API keys).
    ApiKeys,
}

impl Kind {
    /// The MongoDB collection (and the SQLite `collection` column).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Plans => "plans",
            Kind::Subscriptions => "subscriptions",
            Kind::Services => "services",
            Kind::Notifications => "notifications",
            Kind::UsageSummaries => "usage_summary",
            Kind::ScheduledSummaries => "scheduled_summary",
            Kind::Invoices => "invoices",
            Kind::CreditIntents => "credit_intents",
            Kind::ApiKeys => "api_keys",
        }
    }
}

/// Documents are JSON objects with a string `id`.
pub type Doc = serde_json::Map<String, serde_json::Value>;

/// The most documents one listing returns.
pub const MAX_LIST: usize = 1000;

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

/// A credit transaction to record.
#[derive(Debug, Clone, Copy)]
pub struct NewTransaction<'a> {
    /// With an id the transaction is recorded once, however often it is retried: a row
    /// with this id already there is returned and the balance does not move again.
    pub id: Option<&'a str>,
    pub tenant_id: &'a str,
    /// Signed.
    pub amount: i64,
    pub reason: &'a str,
    pub actor: &'a str,
    /// The live (ledger) balance the change left, recorded as `balance_after`; without it,
    /// the durable balance after the change is recorded (it lags by the usage not yet
    /// written).
    pub live_balance: Option<i64>,
}

/// Which usage logs to list: newest filters first, in (timestamp, id) order.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub tenant_id: Option<String>,
    pub service: Option<String>,
    /// Calls made with this API key only.
    pub key_id: Option<String>,
    /// Inclusive lower bound, unix ms.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, unix ms.
    pub to_ms: Option<i64>,
    /// Resume after this (timestamp_ms, id): cursor pagination stable under inserts.
    /// Newest first ([`UsageQuery::descending`]): resume before it.
    pub after: Option<(i64, String)>,
    pub limit: usize,
    /// Newest first (the console's recent calls), else oldest first.
    pub descending: bool,
}

/// One tenant's calls to one endpoint within one time bucket ([`Store::usage_series`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePoint {
    /// The bucket's start, unix ms, a multiple of the bucket's length (UTC-aligned).
    pub start_ms: i64,
    pub service: String,
    pub endpoint: String,
    pub calls: u64,
    pub credits: i64,
}

/// One tenant's calls to a service that had a shadow price (docs/DESIGN.md §Pricing), over
/// a period: what they were charged and what the shadow price would have charged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShadowTotals {
    pub tenant_id: String,
    pub calls: u64,
    /// Credits charged (refunded calls: none).
    pub charged: i64,
    /// Credits the shadow price would have charged (refunded calls: none).
    pub shadow: i64,
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
    /// Totals of `lines`, sorted by service, endpoint and plan price.
    pub fn from_lines(mut lines: Vec<UsageLine>) -> UsageTotals {
        lines.sort_by(|a, b| {
            (&a.service, &a.endpoint, &a.plan_id).cmp(&(&b.service, &b.endpoint, &b.plan_id))
        });
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
    /// The plan whose price these calls paid; `None`: the service's own price.
    pub plan_id: Option<String>,
    pub calls: u64,
    pub credits: i64,
}

/// One key's calls over a period ([`Store::usage_by_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// `None`: calls made with a JWT.
    pub key_id: Option<String>,
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
        transaction: &NewTransaction<'_>,
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

    /// One tenant's calls over `[from_ms, to_ms)` per API key (refunded calls excluded), in
    /// key order; calls made with a JWT under `key_id: None`, first.
    async fn usage_by_key(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<KeyUsage>, StoreError>;

    /// One tenant's calls over `[from_ms, to_ms)` per bucket of `bucket_ms` (aligned to
    /// the epoch, so to UTC hours and days) and endpoint, refunded calls excluded, in
    /// (start, service, endpoint) order: the console's usage chart.
    async fn usage_series(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<UsagePoint>, StoreError>;

    /// Each tenant's latest call (unix ms), for tenants with any, in id order.
    async fn last_calls(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Per tenant, in id order: `service`'s calls over `[from_ms, to_ms)` whose log carries
    /// a shadow price, charged and shadow credits summed.
    async fn shadow_totals(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ShadowTotals>, StoreError>;

    /// The store's own account of a tenant, for reconciliation.
    async fn audit(&self, tenant_id: &str) -> Result<Audit, StoreError>;

    /// Changes a tenant's settings; `None` when there is no such tenant.
    async fn update_tenant(
        &self,
        id: &str,
        patch: &TenantPatch,
    ) -> Result<Option<TenantRecord>, StoreError>;

    /// Tenants with at least one usage log in `[from_ms, to_ms)`, in id order.
    async fn tenants_with_usage(&self, from_ms: i64, to_ms: i64)
        -> Result<Vec<String>, StoreError>;
}

/// The control plane's documents ([`Kind`]): plans, users, services and the rest, kept as
/// JSON whose shape belongs to their owner (the admin crate, the catalog). A trait apart
/// from [`Store`], which keeps tenants, balances and usage, so that each caller takes only
/// what it needs (docs/DESIGN.md §Layering); both backends implement both.
#[async_trait]
pub trait Documents: Send + Sync + 'static {
    /// Inserts `doc` (its `id` field is the key); false when the id or a unique field
    /// (a user's email, a service's name) is taken.
    async fn insert_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError>;

    /// Replaces the document with `doc`'s id; false when there is none.
    async fn replace_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError>;

    /// Sets the top-level `fields` of document `id`, leaving its other fields as they are
    /// (so two writers of different fields never undo each other); false when there is
    /// none. `fields` must not hold `id`, nor nulls (the embedded store merges by RFC 7396,
    /// where a null removes the field).
    async fn update_doc(&self, kind: Kind, id: &str, fields: &Doc) -> Result<bool, StoreError>;

    async fn doc(&self, kind: Kind, id: &str) -> Result<Option<Doc>, StoreError>;

    /// The first document whose string `field` equals `value` (a user by email).
    async fn find_doc(
        &self,
        kind: Kind,
        field: &str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError>;

    /// Documents in id order, those whose string `field` equals the filter's value when one
    /// is given, at most [`MAX_LIST`].
    async fn docs(&self, kind: Kind, filter: Option<(&str, &str)>) -> Result<Vec<Doc>, StoreError>;

    /// Documents whose id sorts after `after` (from the first when `None`), in id order, at
    /// most [`MAX_LIST`]: a page of a collection read whole (the API keys the catalog loads).
    async fn docs_after(&self, kind: Kind, after: Option<&str>) -> Result<Vec<Doc>, StoreError>;

    /// The ids of the documents whose integer `field` is at least `min`, with its value (the
    /// users whose tokens from before a change are void: `tokens_valid_after_ms`).
    async fn docs_at_least(
        &self,
        kind: Kind,
        field: &str,
        min: i64,
    ) -> Result<Vec<(String, i64)>, StoreError>;

    /// Deletes a document; false when there was none.
    async fn delete_doc(&self, kind: Kind, id: &str) -> Result<bool, StoreError>;

    /// The document with the highest id (ids that sort by time: the latest).
    async fn latest_doc(&self, kind: Kind) -> Result<Option<Doc>, StoreError>;
}

/// Every document of `kind`, read a page at a time.
pub async fn all_docs(store: &dyn Documents, kind: Kind) -> Result<Vec<Doc>, StoreError> {
    let mut all = Vec::new();
    loop {
        let after = match all.last() {
            Some(last) => Some(doc_id(last)?.to_owned()),
            None => None,
        };
        let page = store.docs_after(kind, after.as_deref()).await?;
        let full = page.len() >= MAX_LIST;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// Writes `doc` whether or not its id exists (replace, else insert).
pub async fn upsert_doc(store: &dyn Documents, kind: Kind, doc: &Doc) -> Result<(), StoreError> {
    if !store.replace_doc(kind, doc).await? && !store.insert_doc(kind, doc).await? {
        // Inserted by someone else between the two calls: theirs is as new as ours.
        store.replace_doc(kind, doc).await?;
    }
    Ok(())
}

/// A document's `id`, which every stored document has.
pub fn doc_id(doc: &Doc) -> Result<&str, StoreError> {
    doc.get("id")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| StoreError::Data("a document without a string `id`".into()))
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

impl From<StoreError> for crate::problem::Problem {
    /// `503`: the store did not answer (or holds what it cannot read); nothing changed.
    fn from(e: StoreError) -> Self {
        crate::problem::Problem::unavailable("store", e)
    }
}
