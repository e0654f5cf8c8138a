//! The MongoDB store (official `mongodb` driver, 3.x) for distributed mode. Collections and
//! indexes follow docs/DESIGN.md §Data model; indexes are created at every start (idempotent).
//!
//! Without multi-document transactions (they need a replica set), each write is made
//! retry-safe on its own: usage logs carry their `_id` from the gateway (a duplicate on retry
//! is success), a batch moves a tenant's balance under a per-pipeline sequence guard in the
//! same single-document update, and the initial-credits transaction has a fixed id. A crash
//! between a balance change and its audit row is what reconciliation reports.

use super::{
    credits_by_tenant, doc_id, now_ms, Audit, CreditTransaction, Doc, Documents, KeyUsage, Kind,
    NewTenant, NewTransaction, ShadowTotals, Store, StoreError, TenantPatch, TenantRecord,
    UsageBatch, UsageLine, UsagePoint, UsageQuery, UsageTotals, MAX_LIST,
};
use crate::vocab::{TenantStatus, UsageEvent, DEFAULT_LOW_CREDIT_THRESHOLD};
use async_trait::async_trait;
use bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use std::time::Duration;

/// How long an operation waits for a reachable server before failing: short, so a store
/// outage sends usage batches to the journal quickly instead of stalling the pipeline.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Credit transaction ids a tenant document remembers as applied: a retried transaction
/// whose earlier try moved the balance is recognised while fewer than this many others
/// were applied to the tenant since (credit changes are operator actions: a handful a
/// day, so a retry within minutes is always in the window).
const APPLIED_TX_KEPT: i32 = 100;

pub struct MongoStore {
    db: Database,
}

impl MongoStore {
    /// The first [`MAX_LIST`] documents of `kind` matching `query`, in id order.
    async fn first_docs(&self, kind: Kind, query: Document) -> Result<Vec<Doc>, StoreError> {
        let cursor = self
            .coll(kind.collection())
            .find(query)
            .sort(doc! { "_id": 1 })
            .limit(MAX_LIST as i64)
            .await?;
        Ok(self
            .collect(cursor)
            .await?
            .into_iter()
            .map(from_bson)
            .collect())
    }
    /// Connects lazily (the driver connects on first use) to `uri`, database `db_name`.
    pub async fn connect(uri: &str, db_name: &str) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "tollgate".into());
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        let client = Client::with_options(options)?;
        Ok(MongoStore {
            db: client.database(db_name),
        })
    }

    fn coll(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// Reads an integer field whatever numeric type the server stored it as.
fn int(doc: &Document, key: &str) -> Result<i64, StoreError> {
    match doc.get(key) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        Some(Bson::Double(v)) => Ok(*v as i64),
        other => Err(StoreError::Data(format!(
            "`{key}` is {other:?}, not an integer"
        ))),
    }
}

fn string(doc: &Document, key: &str) -> Result<String, StoreError> {
    doc.get_str(key)
        .map(str::to_owned)
        .map_err(|e| StoreError::Data(format!("`{key}`: {e}")))
}

fn millis(doc: &Document, key: &str) -> Result<i64, StoreError> {
    match doc.get(key) {
        Some(Bson::DateTime(t)) => Ok(t.timestamp_millis()),
        other => {
            int(doc, key).map_err(|_| StoreError::Data(format!("`{key}` is {other:?}, not a date")))
        }
    }
}

fn tenant_from(doc: &Document) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: string(doc, "_id")?,
        name: string(doc, "name")?,
        status: if doc.get_str("status") == Ok("suspended") {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        },
        balance: int(doc, "balance")?,
        low_credit_threshold: int(doc, "low_credit_threshold")
            .unwrap_or(DEFAULT_LOW_CREDIT_THRESHOLD),
        plan_id: doc.get_str("plan_id").ok().map(str::to_owned),
        limits: doc
            .get_document("limits")
            .ok()
            .and_then(|limits| bson::from_document(limits.clone()).ok())
            .unwrap_or_default(),
    })
}

fn event_doc(e: &UsageEvent) -> Document {
    let mut doc = doc! {
        "_id": &e.id, "tenant_id": &e.tenant_id, "user_id": &e.user_id,
        "service": &e.service, "endpoint": &e.endpoint, "method": &e.method,
        "credits_used": e.credits_used, "balance_after": e.balance_after,
        "status": i32::from(e.status), "latency_ms": e.latency_ms,
        "request_id": &e.request_id,
        "idempotency_key": e.idempotency_key.as_deref().map_or(Bson::Null, |k| Bson::String(k.to_owned())),
        "refunded": e.refunded,
        "timestamp": bson::DateTime::from_millis(e.timestamp_ms),
    };
    if let Some(plan) = &e.plan_id {
        doc.insert("plan_id", plan.as_str());
    }
    if let Some(reserved) = e.reserved {
        doc.insert("reserved", reserved);
    }
    if e.shortfall != 0 {
        doc.insert("shortfall", e.shortfall);
    }
    if let Some(shadow) = e.shadow_credits {
        doc.insert("shadow_credits", shadow);
    }
    if let Some(key) = &e.key_id {
        doc.insert("key_id", key.as_str());
    }
    doc
}

fn event_from(doc: &Document) -> Result<UsageEvent, StoreError> {
    Ok(UsageEvent {
        id: string(doc, "_id")?,
        tenant_id: string(doc, "tenant_id")?,
        user_id: string(doc, "user_id")?,
        service: string(doc, "service")?,
        endpoint: string(doc, "endpoint")?,
        method: string(doc, "method")?,
        credits_used: int(doc, "credits_used")?,
        balance_after: int(doc, "balance_after")?,
        status: u16::try_from(int(doc, "status")?).unwrap_or(0),
        latency_ms: doc.get_f64("latency_ms").unwrap_or_default(),
        request_id: string(doc, "request_id")?,
        idempotency_key: doc.get_str("idempotency_key").ok().map(str::to_owned),
        refunded: doc.get_bool("refunded").unwrap_or(false),
        timestamp_ms: millis(doc, "timestamp")?,
        plan_id: doc.get_str("plan_id").ok().map(str::to_owned),
        reserved: int(doc, "reserved").ok(),
        shortfall: int(doc, "shortfall").unwrap_or(0),
        shadow_credits: int(doc, "shadow_credits").ok(),
        key_id: doc.get_str("key_id").ok().map(str::to_owned),
    })
}

fn transaction_from(doc: &Document) -> Result<CreditTransaction, StoreError> {
    Ok(CreditTransaction {
        id: string(doc, "_id")?,
        tenant_id: string(doc, "tenant_id")?,
        amount: int(doc, "amount")?,
        reason: string(doc, "reason")?,
        actor: string(doc, "actor")?,
        balance_after: int(doc, "balance_after")?,
        at_ms: millis(doc, "at")?,
    })
}

/// A JSON document as MongoDB keeps it: `id` becomes `_id`.
fn to_bson(doc: &Doc) -> Result<Document, StoreError> {
    let id = doc_id(doc)?.to_owned();
    let mut stored = bson::to_document(doc).map_err(|e| StoreError::Data(e.to_string()))?;
    stored.remove("id");
    let mut out = doc! { "_id": id };
    out.extend(stored);
    Ok(out)
}

fn from_bson(mut stored: Document) -> Doc {
    let id = stored.remove("_id");
    let mut doc = Doc::new();
    if let Some(id) = id {
        doc.insert("id".into(), id.into_relaxed_extjson());
    }
    for (key, value) in stored {
        doc.insert(key, value.into_relaxed_extjson());
    }
    doc
}

fn status_str(status: &TenantStatus) -> &'static str {
    match status {
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
    }
}

fn index(keys: Document, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(unique).build())
        .build()
}

impl MongoStore {
    async fn collect(
        &self,
        mut cursor: mongodb::Cursor<Document>,
    ) -> Result<Vec<Document>, StoreError> {
        let mut docs = Vec::new();
        while cursor.advance().await? {
            docs.push(cursor.deserialize_current()?);
        }
        Ok(docs)
    }

    async fn sum(
        &self,
        collection: &str,
        filter: Document,
        field: &str,
    ) -> Result<i64, StoreError> {
        let pipeline = vec![
            doc! { "$match": filter },
            doc! { "$group": { "_id": Bson::Null, "total": { "$sum": format!("${field}") } } },
        ];
        let docs = self
            .collect(self.coll(collection).aggregate(pipeline).await?)
            .await?;
        docs.first().map_or(Ok(0), |d| int(d, "total"))
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let usage = self.coll("usage_logs");
        usage
            .create_index(index(doc! { "tenant_id": 1, "timestamp": 1 }, false))
            .await?;
        usage
            .create_index(index(doc! { "timestamp": 1 }, false))
            .await?;
        let transactions = self.coll("credit_transactions");
        transactions
            .create_index(index(doc! { "tenant_id": 1, "at": 1 }, false))
            .await?;
        self.coll("invoices")
            .create_index(index(doc! { "tenant_id": 1, "period": 1 }, true))
            .await?;
        self.coll("users")
            .create_index(index(doc! { "email": 1 }, true))
            .await?;
        self.coll("users")
            .create_index(index(doc! { "tokens_valid_after_ms": 1 }, false))
            .await?;
        self.coll("services")
            .create_index(index(doc! { "name": 1 }, true))
            .await?;
        self.coll("api_keys")
            .create_index(index(doc! { "hash": 1 }, true))
            .await?;
        for collection in [
            "notifications",
            "subscriptions",
            "usage_summary",
            "api_keys",
        ] {
            self.coll(collection)
                .create_index(index(doc! { "tenant_id": 1 }, false))
                .await?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    async fn ensure_tenant(&self, tenant: &NewTenant<'_>) -> Result<bool, StoreError> {
        let tenants = self.coll("tenants");
        if tenants.find_one(doc! { "_id": tenant.id }).await?.is_some() {
            return Ok(false);
        }
        // The initial credits' audit row first, under a fixed id, so racing replicas and a
        // retry after a crash write it once.
        let initial = doc! {
            "_id": format!("initial:{}", tenant.id), "tenant_id": tenant.id,
            "amount": tenant.initial_credits, "reason": "initial", "actor": tenant.actor,
            "balance_after": tenant.initial_credits, "at": bson::DateTime::from_millis(now_ms()),
        };
        if let Err(e) = self.coll("credit_transactions").insert_one(initial).await {
            if !is_duplicate(&e) {
                return Err(e.into());
            }
        }
        let status = match tenant.status {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        };
        let record = doc! {
            "_id": tenant.id, "name": tenant.name, "status": status,
            "balance": tenant.initial_credits,
            "low_credit_threshold": DEFAULT_LOW_CREDIT_THRESHOLD,
            "plan_id": Bson::Null,
            "created_at": bson::DateTime::from_millis(now_ms()),
            "usage_applied": {},
        };
        match tenants.insert_one(record).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        self.coll("tenants")
            .find_one(doc! { "_id": id })
            .await?
            .as_ref()
            .map(tenant_from)
            .transpose()
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let cursor = self
            .coll("tenants")
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?;
        self.collect(cursor)
            .await?
            .iter()
            .map(tenant_from)
            .collect()
    }

    async fn insert_usage(&self, batch: &UsageBatch<'_>) -> Result<(), StoreError> {
        let docs: Vec<Document> = batch.events.iter().map(event_doc).collect();
        if !docs.is_empty() {
            if let Err(e) = self
                .coll("usage_logs")
                .insert_many(docs)
                .ordered(false)
                .await
            {
                if !is_duplicate(&e) {
                    return Err(e.into());
                }
            }
        }
        let applied = format!("usage_applied.{}", batch.pipeline_id);
        let seq = batch.seq as i64;
        for (tenant, credits) in credits_by_tenant(batch.events) {
            // Matches only while this pipeline's last applied seq is below this batch's.
            let filter = doc! {
                "_id": tenant,
                "$or": [ { &applied: { "$exists": false } }, { &applied: { "$lt": seq } } ],
            };
            let update = doc! { "$inc": { "balance": -credits }, "$set": { &applied: seq } };
            self.coll("tenants").update_one(filter, update).await?;
        }
        Ok(())
    }

    /// Exactly once without a multi-document transaction: the audit row goes first, marked
    /// `applying`; the tenant's balance moves only while the row's id is not among its last
    /// [`APPLIED_TX_KEPT`] applied ids (moved and remembered in one update); then the mark
    /// is cleared. A retry after a failure at any step finishes the same row and never
    /// moves the balance twice.
    async fn apply_transaction(
        &self,
        t: &NewTransaction<'_>,
    ) -> Result<CreditTransaction, StoreError> {
        let (tenant_id, amount, reason, actor) = (t.tenant_id, t.amount, t.reason, t.actor);
        let rows = self.coll("credit_transactions");
        let id =
            t.id.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
        if let Some(row) = rows.find_one(doc! { "_id": &id }).await? {
            if !row.get_bool("applying").unwrap_or(false) {
                return transaction_from(&row);
            }
        } else {
            let row = doc! {
                "_id": &id, "tenant_id": tenant_id, "amount": amount,
                "reason": reason, "actor": actor,
                "balance_after": t.live_balance.unwrap_or_default(),
                "at": bson::DateTime::from_millis(now_ms()), "applying": true,
            };
            if let Err(e) = rows.insert_one(row).await {
                if !is_duplicate(&e) {
                    return Err(e.into());
                }
            }
        }
        let moved = self
            .coll("tenants")
            .find_one_and_update(
                doc! { "_id": tenant_id, "applied_tx": { "$ne": &id } },
                doc! {
                    "$inc": { "balance": amount },
                    "$push": { "applied_tx": { "$each": [&id], "$slice": -APPLIED_TX_KEPT } },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        let mut set = doc! {};
        if let (Some(tenant), None) = (&moved, t.live_balance) {
            set.insert("balance_after", int(tenant, "balance")?);
        }
        if moved.is_none() && self.tenant(tenant_id).await?.is_none() {
            return Err(StoreError::Data(format!("no tenant `{tenant_id}`")));
        }
        let update = if set.is_empty() {
            doc! { "$unset": { "applying": "" } }
        } else {
            doc! { "$unset": { "applying": "" }, "$set": set }
        };
        rows.update_one(doc! { "_id": &id }, update).await?;
        let row = rows
            .find_one(doc! { "_id": &id })
            .await?
            .ok_or_else(|| StoreError::Data(format!("transaction `{id}` vanished")))?;
        transaction_from(&row)
    }

    async fn transactions(&self, tenant_id: &str) -> Result<Vec<CreditTransaction>, StoreError> {
        let cursor = self
            .coll("credit_transactions")
            .find(doc! { "tenant_id": tenant_id })
            .sort(doc! { "at": 1, "_id": 1 })
            .await?;
        self.collect(cursor)
            .await?
            .iter()
            .map(transaction_from)
            .collect()
    }

    async fn usage_logs(&self, query: &UsageQuery) -> Result<Vec<UsageEvent>, StoreError> {
        let mut filter = Document::new();
        if let Some(t) = &query.tenant_id {
            filter.insert("tenant_id", t);
        }
        if let Some(s) = &query.service {
            filter.insert("service", s);
        }
        if let Some(k) = &query.key_id {
            filter.insert("key_id", k);
        }
        let mut range = Document::new();
        if let Some(from) = query.from_ms {
            range.insert("$gte", bson::DateTime::from_millis(from));
        }
        if let Some(to) = query.to_ms {
            range.insert("$lt", bson::DateTime::from_millis(to));
        }
        if !range.is_empty() {
            filter.insert("timestamp", range);
        }
        let (past, order) = if query.descending {
            ("$lt", -1)
        } else {
            ("$gt", 1)
        };
        if let Some((ts, id)) = &query.after {
            let ts = bson::DateTime::from_millis(*ts);
            filter.insert(
                "$or",
                vec![
                    Bson::Document(doc! { "timestamp": { past: ts } }),
                    Bson::Document(doc! { "timestamp": ts, "_id": { past: id } }),
                ],
            );
        }
        let cursor = self
            .coll("usage_logs")
            .find(filter)
            .sort(doc! { "timestamp": order, "_id": order })
            .limit(query.limit as i64)
            .await?;
        self.collect(cursor).await?.iter().map(event_from).collect()
    }

    async fn usage_totals(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<UsageTotals, StoreError> {
        let pipeline = vec![
            doc! { "$match": {
                "tenant_id": tenant_id, "refunded": false,
                "timestamp": { "$gte": bson::DateTime::from_millis(from_ms), "$lt": bson::DateTime::from_millis(to_ms) },
            } },
            doc! { "$group": {
                "_id": { "service": "$service", "endpoint": "$endpoint", "plan_id": "$plan_id" },
                "calls": { "$sum": 1 }, "credits": { "$sum": "$credits_used" },
            } },
        ];
        let docs = self
            .collect(self.coll("usage_logs").aggregate(pipeline).await?)
            .await?;
        let mut lines = Vec::with_capacity(docs.len());
        for d in &docs {
            let key = d
                .get_document("_id")
                .map_err(|e| StoreError::Data(e.to_string()))?;
            lines.push(UsageLine {
                service: string(key, "service")?,
                endpoint: string(key, "endpoint")?,
                plan_id: key.get_str("plan_id").ok().map(str::to_owned),
                calls: int(d, "calls")? as u64,
                credits: int(d, "credits")?,
            });
        }
        Ok(UsageTotals::from_lines(lines))
    }

    async fn usage_series(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<UsagePoint>, StoreError> {
        let bucket = bucket_ms.max(1);
        let ms = doc! { "$toLong": "$timestamp" };
        let pipeline = vec![
            doc! { "$match": {
                "tenant_id": tenant_id, "refunded": false,
                "timestamp": { "$gte": bson::DateTime::from_millis(from_ms), "$lt": bson::DateTime::from_millis(to_ms) },
            } },
            doc! { "$group": {
                "_id": {
                    "start": { "$subtract": [ms.clone(), { "$mod": [
                        { "$add": [{ "$mod": [ms, bucket] }, bucket] }, bucket,
                    ] }] },
                    "service": "$service", "endpoint": "$endpoint",
                },
                "calls": { "$sum": 1 }, "credits": { "$sum": "$credits_used" },
            } },
        ];
        let docs = self
            .collect(self.coll("usage_logs").aggregate(pipeline).await?)
            .await?;
        let mut points = Vec::with_capacity(docs.len());
        for d in &docs {
            let key = d
                .get_document("_id")
                .map_err(|e| StoreError::Data(e.to_string()))?;
            points.push(UsagePoint {
                start_ms: int(key, "start")?,
                service: string(key, "service")?,
                endpoint: string(key, "endpoint")?,
                calls: int(d, "calls")? as u64,
                credits: int(d, "credits")?,
            });
        }
        points.sort_by(|a, b| {
            (a.start_ms, &a.service, &a.endpoint).cmp(&(b.start_ms, &b.service, &b.endpoint))
        });
        Ok(points)
    }

    async fn last_calls(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let pipeline = vec![doc! { "$group": {
            "_id": "$tenant_id", "last": { "$max": "$timestamp" },
        } }];
        let docs = self
            .collect(self.coll("usage_logs").aggregate(pipeline).await?)
            .await?;
        let mut last = Vec::with_capacity(docs.len());
        for d in &docs {
            let tenant = d
                .get_str("_id")
                .map_err(|e| StoreError::Data(e.to_string()))?;
            let at = d
                .get_datetime("last")
                .map_err(|e| StoreError::Data(e.to_string()))?;
            last.push((tenant.to_owned(), at.timestamp_millis()));
        }
        last.sort();
        Ok(last)
    }

    async fn usage_by_key(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let pipeline = vec![
            doc! { "$match": {
                "tenant_id": tenant_id, "refunded": false,
                "timestamp": { "$gte": bson::DateTime::from_millis(from_ms), "$lt": bson::DateTime::from_millis(to_ms) },
            } },
            doc! { "$group": {
                "_id": "$key_id", "calls": { "$sum": 1 }, "credits": { "$sum": "$credits_used" },
            } },
        ];
        let docs = self
            .collect(self.coll("usage_logs").aggregate(pipeline).await?)
            .await?;
        let mut keys = Vec::with_capacity(docs.len());
        for d in &docs {
            keys.push(KeyUsage {
                key_id: d.get_str("_id").ok().map(str::to_owned),
                calls: int(d, "calls")? as u64,
                credits: int(d, "credits")?,
            });
        }
        // Grouped documents come in no order: JWT calls (no key) first, then by key.
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(keys)
    }

    async fn shadow_totals(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ShadowTotals>, StoreError> {
        let counted = |field: &str| {
            doc! { "$sum": { "$cond": [ "$refunded", 0, format!("${field}") ] } }
        };
        let pipeline = vec![
            doc! { "$match": {
                "service": service, "shadow_credits": { "$exists": true },
                "timestamp": { "$gte": bson::DateTime::from_millis(from_ms), "$lt": bson::DateTime::from_millis(to_ms) },
            } },
            doc! { "$group": {
                "_id": "$tenant_id", "calls": { "$sum": 1 },
                "charged": counted("credits_used"), "shadow": counted("shadow_credits"),
            } },
            doc! { "$sort": { "_id": 1 } },
        ];
        let docs = self
            .collect(self.coll("usage_logs").aggregate(pipeline).await?)
            .await?;
        docs.iter()
            .map(|d| {
                Ok(ShadowTotals {
                    tenant_id: string(d, "_id")?,
                    calls: int(d, "calls")? as u64,
                    charged: int(d, "charged")?,
                    shadow: int(d, "shadow")?,
                })
            })
            .collect()
    }

    async fn audit(&self, tenant_id: &str) -> Result<Audit, StoreError> {
        Ok(Audit {
            transactions: self
                .sum(
                    "credit_transactions",
                    doc! { "tenant_id": tenant_id },
                    "amount",
                )
                .await?,
            usage: self
                .sum(
                    "usage_logs",
                    doc! { "tenant_id": tenant_id, "refunded": false },
                    "credits_used",
                )
                .await?,
        })
    }

    async fn update_tenant(
        &self,
        id: &str,
        patch: &TenantPatch,
    ) -> Result<Option<TenantRecord>, StoreError> {
        let mut set = Document::new();
        if let Some(name) = &patch.name {
            set.insert("name", name);
        }
        if let Some(status) = &patch.status {
            set.insert("status", status_str(status));
        }
        if let Some(threshold) = patch.low_credit_threshold {
            set.insert("low_credit_threshold", threshold);
        }
        if let Some(plan) = &patch.plan_id {
            set.insert("plan_id", plan.as_deref().map_or(Bson::Null, |p| p.into()));
        }
        if let Some(limits) = &patch.limits {
            let limits = bson::to_document(limits).map_err(|e| StoreError::Data(e.to_string()))?;
            set.insert("limits", limits);
        }
        let tenants = self.coll("tenants");
        let updated = if set.is_empty() {
            tenants.find_one(doc! { "_id": id }).await?
        } else {
            tenants
                .find_one_and_update(doc! { "_id": id }, doc! { "$set": set })
                .return_document(ReturnDocument::After)
                .await?
        };
        updated.as_ref().map(tenant_from).transpose()
    }

    async fn tenants_with_usage(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let filter = doc! { "timestamp": {
            "$gte": bson::DateTime::from_millis(from_ms), "$lt": bson::DateTime::from_millis(to_ms),
        } };
        let values = self
            .coll("usage_logs")
            .distinct("tenant_id", filter)
            .await?;
        let mut tenants: Vec<String> = values
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        tenants.sort();
        Ok(tenants)
    }
}

#[async_trait]
impl Documents for MongoStore {
    async fn insert_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError> {
        match self.coll(kind.collection()).insert_one(to_bson(doc)?).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn replace_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError> {
        let stored = to_bson(doc)?;
        let result = self
            .coll(kind.collection())
            .replace_one(doc! { "_id": doc_id(doc)? }, stored)
            .await?;
        Ok(result.matched_count == 1)
    }

    async fn update_doc(&self, kind: Kind, id: &str, fields: &Doc) -> Result<bool, StoreError> {
        if fields.contains_key("id") {
            return Err(StoreError::Data("a document's `id` cannot change".into()));
        }
        let set = bson::to_document(fields).map_err(|e| StoreError::Data(e.to_string()))?;
        let result = self
            .coll(kind.collection())
            .update_one(doc! { "_id": id }, doc! { "$set": set })
            .await?;
        Ok(result.matched_count == 1)
    }

    async fn doc(&self, kind: Kind, id: &str) -> Result<Option<Doc>, StoreError> {
        let found = self
            .coll(kind.collection())
            .find_one(doc! { "_id": id })
            .await?;
        Ok(found.map(from_bson))
    }

    async fn find_doc(
        &self,
        kind: Kind,
        field: &str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError> {
        // `value` is always a BSON string here, never a query operator.
        let found = self
            .coll(kind.collection())
            .find_one(doc! { field: value })
            .await?;
        Ok(found.map(from_bson))
    }

    async fn docs(&self, kind: Kind, filter: Option<(&str, &str)>) -> Result<Vec<Doc>, StoreError> {
        let query = match filter {
            Some((field, value)) => doc! { field: value },
            None => Document::new(),
        };
        self.first_docs(kind, query).await
    }

    async fn docs_after(&self, kind: Kind, after: Option<&str>) -> Result<Vec<Doc>, StoreError> {
        let query = match after {
            Some(after) => doc! { "_id": { "$gt": after } },
            None => Document::new(),
        };
        self.first_docs(kind, query).await
    }

    async fn docs_at_least(
        &self,
        kind: Kind,
        field: &str,
        min: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let cursor = self
            .coll(kind.collection())
            .find(doc! { field: { "$gte": min } })
            .projection(doc! { "_id": 1, field: 1 })
            .await?;
        let mut found = Vec::new();
        for document in self.collect(cursor).await? {
            let value = match document.get(field) {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => i64::from(*n),
                Some(Bson::Double(n)) => *n as i64,
                _ => continue,
            };
            if let Ok(id) = document.get_str("_id") {
                found.push((id.to_owned(), value));
            }
        }
        Ok(found)
    }

    async fn delete_doc(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let result = self
            .coll(kind.collection())
            .delete_one(doc! { "_id": id })
            .await?;
        Ok(result.deleted_count == 1)
    }

    async fn latest_doc(&self, kind: Kind) -> Result<Option<Doc>, StoreError> {
        let found = self
            .coll(kind.collection())
            .find_one(Document::new())
            .sort(doc! { "_id": -1 })
            .await?;
        Ok(found.map(from_bson))
    }
}
