//! The embedded store: one SQLite file (`store.sqlite3` under the data dir), through
//! `rusqlite` with SQLite bundled, so a fresh machine needs no library or server. SQLite
//! was chosen over a key-value store (redb, sled) because the store must answer range and
//! aggregate queries (usage by tenant and time, totals per service and endpoint) from
//! indexes without loading logs into memory, and because a batch and its balance changes
//! commit in one real transaction. WAL mode lets readers run beside the single writer.

use super::{
    credits_by_tenant, doc_id, now_ms, Audit, CreditTransaction, Doc, Documents, KeyUsage, Kind,
    NewTenant, NewTransaction, ShadowTotals, Store, StoreError, TenantPatch, TenantRecord,
    UsageBatch, UsageLine, UsagePoint, UsageQuery, UsageTotals, MAX_LIST,
};
use crate::vocab::{TenantStatus, UsageEvent, DEFAULT_LOW_CREDIT_THRESHOLD};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    balance INTEGER NOT NULL,
    low_credit_threshold INTEGER NOT NULL,
    plan_id TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_applied (
    tenant_id TEXT NOT NULL,
    pipeline_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, pipeline_id)
);
CREATE TABLE IF NOT EXISTS usage_logs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    service TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    method TEXT NOT NULL,
    credits_used INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    request_id TEXT NOT NULL,
    idempotency_key TEXT,
    refunded INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    plan_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_logs_tenant_time ON usage_logs (tenant_id, timestamp_ms, id);
CREATE INDEX IF NOT EXISTS usage_logs_time ON usage_logs (timestamp_ms, id);
CREATE TABLE IF NOT EXISTS credit_transactions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    balance_after INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_transactions_tenant ON credit_transactions (tenant_id, at_ms);
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email
    ON documents (json_extract(body, '$.email')) WHERE collection = 'users';
CREATE UNIQUE INDEX IF NOT EXISTS invoices_tenant_period
    ON documents (json_extract(body, '$.tenant_id'), json_extract(body, '$.period'))
    WHERE collection = 'invoices';
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_hash
    ON documents (json_extract(body, '$.hash')) WHERE collection = 'api_keys';
CREATE INDEX IF NOT EXISTS documents_tenant
    ON documents (collection, json_extract(body, '$.tenant_id'));
"#;

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (or creates) `store.sqlite3` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Task(format!("{}: {e}", data_dir.display())))?;
        let conn = Connection::open(data_dir.join("store.sqlite3"))?;
        // WAL + NORMAL: a commit survives a process crash; a power loss may lose the last
        // commits, which the usage journal and reconciliation cover.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn status_str(status: &TenantStatus) -> &'static str {
    match status {
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn parse_doc(body: String) -> Result<Doc, StoreError> {
    serde_json::from_str(&body).map_err(|e| StoreError::Data(format!("stored document: {e}")))
}

/// Field names come from code, never from a request; still, keep them to a plain alphabet
/// before they become part of a JSON path.
fn json_path(field: &str) -> Result<String, StoreError> {
    if field.is_empty()
        || !field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::Data(format!("bad field name `{field}`")));
    }
    Ok(format!("$.{field}"))
}

fn tenant_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TenantRecord> {
    let status: String = row.get(2)?;
    Ok(TenantRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        status: if status == "suspended" {
            TenantStatus::Suspended
        } else {
            TenantStatus::Active
        },
        balance: row.get(3)?,
        low_credit_threshold: row.get(4)?,
        plan_id: row.get(5)?,
        // JSON; a value that does not parse (written by hand) is no limit.
        limits: row
            .get::<_, Option<String>>(6)?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

/// (table, column, definition) added after the table's first release, in order.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("usage_logs", "plan_id", "TEXT"),
    ("usage_logs", "reserved", "INTEGER"),
    ("usage_logs", "shortfall", "INTEGER NOT NULL DEFAULT 0"),
    ("usage_logs", "shadow_credits", "INTEGER"),
    ("usage_logs", "key_id", "TEXT"),
    ("tenants", "limits", "TEXT"),
];

const TENANT_COLUMNS: &str = "id, name, status, balance, low_credit_threshold, plan_id, limits";

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UsageEvent> {
    Ok(UsageEvent {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        user_id: row.get(2)?,
        service: row.get(3)?,
        endpoint: row.get(4)?,
        method: row.get(5)?,
        credits_used: row.get(6)?,
        balance_after: row.get(7)?,
        status: row.get(8)?,
        latency_ms: row.get(9)?,
        request_id: row.get(10)?,
        idempotency_key: row.get(11)?,
        refunded: row.get(12)?,
        timestamp_ms: row.get(13)?,
        plan_id: row.get(14)?,
        reserved: row.get(15)?,
        shortfall: row.get(16)?,
        shadow_credits: row.get(17)?,
        key_id: row.get(18)?,
    })
}

/// A `credit_transactions` row selected as (id, tenant_id, amount, reason, actor,
/// balance_after, at_ms).
fn transaction_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CreditTransaction> {
    Ok(CreditTransaction {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        amount: row.get(2)?,
        reason: row.get(3)?,
        actor: row.get(4)?,
        balance_after: row.get(5)?,
        at_ms: row.get(6)?,
    })
}

fn insert_transaction(
    tx: &rusqlite::Transaction<'_>,
    id: Option<&str>,
    tenant_id: &str,
    amount: i64,
    reason: &str,
    actor: &str,
    live_balance: Option<i64>,
) -> Result<CreditTransaction, StoreError> {
    if let Some(id) = id {
        let existing = tx
            .query_row(
                "SELECT id, tenant_id, amount, reason, actor, balance_after, at_ms
                 FROM credit_transactions WHERE id = ?1",
                [id],
                transaction_row,
            )
            .optional()?;
        if let Some(row) = existing {
            return Ok(row);
        }
    }
    let durable_after: i64 = tx.query_row(
        "UPDATE tenants SET balance = balance + ?2 WHERE id = ?1 RETURNING balance",
        params![tenant_id, amount],
        |row| row.get(0),
    )?;
    let balance_after = live_balance.unwrap_or(durable_after);
    let row = CreditTransaction {
        id: id.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned),
        tenant_id: tenant_id.to_owned(),
        amount,
        reason: reason.to_owned(),
        actor: actor.to_owned(),
        balance_after,
        at_ms: now_ms(),
    };
    tx.execute(
        "INSERT INTO credit_transactions (id, tenant_id, amount, reason, actor, balance_after, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![row.id, row.tenant_id, row.amount, row.reason, row.actor, row.balance_after, row.at_ms],
    )?;
    Ok(row)
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.execute_batch(SCHEMA)?;
            // Columns added since a table was first created (CREATE TABLE IF NOT EXISTS
            // leaves an existing table as it was).
            for (table, column, definition) in ADDED_COLUMNS {
                let exists: bool = conn.query_row(
                    &format!(
                        "SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"
                    ),
                    [column],
                    |row| row.get(0),
                )?;
                if !exists {
                    conn.execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                    ))?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn ensure_tenant(&self, tenant: &NewTenant<'_>) -> Result<bool, StoreError> {
        let (id, name, status, credits, actor) = (
            tenant.id.to_owned(),
            tenant.name.to_owned(),
            status_str(&tenant.status),
            tenant.initial_credits,
            tenant.actor.to_owned(),
        );
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let created = tx.execute(
                "INSERT OR IGNORE INTO tenants (id, name, status, balance, low_credit_threshold, created_at_ms)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                params![id, name, status, DEFAULT_LOW_CREDIT_THRESHOLD, now_ms()],
            )? == 1;
            if created {
                insert_transaction(&tx, None, &id, credits, "initial", &actor, Some(credits))?;
            }
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    async fn tenant(&self, id: &str) -> Result<Option<TenantRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1");
            Ok(conn.query_row(&sql, [id], tenant_from_row).optional()?)
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        self.run(|conn| {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map([], tenant_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn insert_usage(&self, batch: &UsageBatch<'_>) -> Result<(), StoreError> {
        let events = batch.events.to_vec();
        let (pipeline, seq) = (batch.pipeline_id.to_owned(), batch.seq as i64);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO usage_logs (id, tenant_id, user_id, service, endpoint, method,
                       credits_used, balance_after, status, latency_ms, request_id, idempotency_key,
                       refunded, timestamp_ms, plan_id, reserved, shortfall, shadow_credits, key_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                       ?16, ?17, ?18, ?19)",
                )?;
                for e in &events {
                    insert.execute(params![
                        e.id, e.tenant_id, e.user_id, e.service, e.endpoint, e.method,
                        e.credits_used, e.balance_after, e.status, e.latency_ms, e.request_id,
                        e.idempotency_key, e.refunded, e.timestamp_ms, e.plan_id, e.reserved,
                        e.shortfall, e.shadow_credits, e.key_id
                    ])?;
                }
                for (tenant, credits) in credits_by_tenant(&events) {
                    let applied: Option<i64> = tx
                        .query_row(
                            "SELECT seq FROM usage_applied WHERE tenant_id = ?1 AND pipeline_id = ?2",
                            params![tenant, pipeline],
                            |row| row.get(0),
                        )
                        .optional()?;
                    if applied.is_some_and(|applied| applied >= seq) {
                        continue;
                    }
                    tx.execute(
                        "UPDATE tenants SET balance = balance - ?2 WHERE id = ?1",
                        params![tenant, credits],
                    )?;
                    tx.execute(
                        "INSERT INTO usage_applied (tenant_id, pipeline_id, seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT (tenant_id, pipeline_id) DO UPDATE SET seq = excluded.seq",
                        params![tenant, pipeline, seq],
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn apply_transaction(
        &self,
        t: &NewTransaction<'_>,
    ) -> Result<CreditTransaction, StoreError> {
        let (tenant, reason, actor) = (
            t.tenant_id.to_owned(),
            t.reason.to_owned(),
            t.actor.to_owned(),
        );
        let (id, amount, live) = (t.id.map(str::to_owned), t.amount, t.live_balance);
        self.run(move |conn| {
            let tx = conn.transaction()?;
            let row =
                insert_transaction(&tx, id.as_deref(), &tenant, amount, &reason, &actor, live)?;
            tx.commit()?;
            Ok(row)
        })
        .await
    }

    async fn transactions(&self, tenant_id: &str) -> Result<Vec<CreditTransaction>, StoreError> {
        let tenant = tenant_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, tenant_id, amount, reason, actor, balance_after, at_ms
                 FROM credit_transactions WHERE tenant_id = ?1 ORDER BY at_ms, id",
            )?;
            let rows = stmt.query_map([tenant], transaction_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn usage_logs(&self, query: &UsageQuery) -> Result<Vec<UsageEvent>, StoreError> {
        let q = query.clone();
        self.run(move |conn| {
            let mut sql = String::from(
                "SELECT id, tenant_id, user_id, service, endpoint, method, credits_used, balance_after,
                   status, latency_ms, request_id, idempotency_key, refunded, timestamp_ms, plan_id,
                   reserved, shortfall, shadow_credits, key_id
                 FROM usage_logs WHERE 1 = 1",
            );
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut bind = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
            };
            if let Some(t) = &q.tenant_id {
                bind(&mut sql, " AND tenant_id = ?", t.clone().into());
            }
            if let Some(s) = &q.service {
                bind(&mut sql, " AND service = ?", s.clone().into());
            }
            if let Some(k) = &q.key_id {
                bind(&mut sql, " AND key_id = ?", k.clone().into());
            }
            if let Some(from) = q.from_ms {
                bind(&mut sql, " AND timestamp_ms >= ?", from.into());
            }
            if let Some(to) = q.to_ms {
                bind(&mut sql, " AND timestamp_ms < ?", to.into());
            }
            let (past, order) = if q.descending {
                ("<", " ORDER BY timestamp_ms DESC, id DESC LIMIT ?")
            } else {
                (">", " ORDER BY timestamp_ms, id LIMIT ?")
            };
            if let Some((ts, id)) = &q.after {
                bind(&mut sql, &format!(" AND (timestamp_ms {past} ?"), (*ts).into());
                bind(&mut sql, " OR (timestamp_ms = ?", (*ts).into());
                bind(&mut sql, &format!(" AND id {past} ?))"), id.clone().into());
            }
            bind(&mut sql, order, (q.limit as i64).into());
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), event_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn usage_totals(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<UsageTotals, StoreError> {
        let tenant = tenant_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT service, endpoint, COUNT(*), SUM(credits_used), plan_id FROM usage_logs
                 WHERE tenant_id = ?1 AND timestamp_ms >= ?2 AND timestamp_ms < ?3 AND refunded = 0
                 GROUP BY service, endpoint, plan_id ORDER BY service, endpoint, plan_id",
            )?;
            let lines = stmt
                .query_map(params![tenant, from_ms, to_ms], |row| {
                    Ok(UsageLine {
                        service: row.get(0)?,
                        endpoint: row.get(1)?,
                        calls: row.get::<_, i64>(2)? as u64,
                        credits: row.get(3)?,
                        plan_id: row.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(UsageTotals::from_lines(lines))
        })
        .await
    }

    async fn usage_series(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<UsagePoint>, StoreError> {
        let tenant = tenant_id.to_owned();
        let bucket = bucket_ms.max(1);
        self.run(move |conn| {
            // Integer division rounds towards zero: shift negative times down a bucket.
            let mut stmt = conn.prepare(
                "SELECT (timestamp_ms - ((timestamp_ms % ?4) + ?4) % ?4) AS start,
                        service, endpoint, COUNT(*), SUM(credits_used) FROM usage_logs
                 WHERE tenant_id = ?1 AND timestamp_ms >= ?2 AND timestamp_ms < ?3 AND refunded = 0
                 GROUP BY start, service, endpoint ORDER BY start, service, endpoint",
            )?;
            let rows = stmt.query_map(params![tenant, from_ms, to_ms, bucket], |row| {
                Ok(UsagePoint {
                    start_ms: row.get(0)?,
                    service: row.get(1)?,
                    endpoint: row.get(2)?,
                    calls: row.get::<_, i64>(3)? as u64,
                    credits: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn last_calls(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(move |conn| {
            // One index probe per tenant (usage_logs_tenant_time), not a scan of the logs.
            let mut stmt = conn.prepare(
                "SELECT id, (SELECT MAX(timestamp_ms) FROM usage_logs u WHERE u.tenant_id = t.id)
                 FROM tenants t ORDER BY id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<i64>>(1)?))
            })?;
            let mut last = Vec::new();
            for row in rows {
                if let (id, Some(at)) = row? {
                    last.push((id, at));
                }
            }
            Ok(last)
        })
        .await
    }

    async fn usage_by_key(
        &self,
        tenant_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<KeyUsage>, StoreError> {
        let tenant = tenant_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT key_id, COUNT(*), SUM(credits_used) FROM usage_logs
                 WHERE tenant_id = ?1 AND timestamp_ms >= ?2 AND timestamp_ms < ?3 AND refunded = 0
                 GROUP BY key_id ORDER BY key_id",
            )?;
            let rows = stmt.query_map(params![tenant, from_ms, to_ms], |row| {
                Ok(KeyUsage {
                    key_id: row.get(0)?,
                    calls: row.get::<_, i64>(1)? as u64,
                    credits: row.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn shadow_totals(
        &self,
        service: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<ShadowTotals>, StoreError> {
        let service = service.to_owned();
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant_id, COUNT(*),
                   SUM(CASE WHEN refunded = 0 THEN credits_used ELSE 0 END),
                   SUM(CASE WHEN refunded = 0 THEN shadow_credits ELSE 0 END)
                 FROM usage_logs
                 WHERE service = ?1 AND timestamp_ms >= ?2 AND timestamp_ms < ?3
                   AND shadow_credits IS NOT NULL
                 GROUP BY tenant_id ORDER BY tenant_id",
            )?;
            let rows = stmt
                .query_map(params![service, from_ms, to_ms], |row| {
                    Ok(ShadowTotals {
                        tenant_id: row.get(0)?,
                        calls: row.get::<_, i64>(1)? as u64,
                        charged: row.get(2)?,
                        shadow: row.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit(&self, tenant_id: &str) -> Result<Audit, StoreError> {
        let tenant = tenant_id.to_owned();
        self.run(move |conn| {
            let transactions: i64 = conn.query_row(
                "SELECT COALESCE(SUM(amount), 0) FROM credit_transactions WHERE tenant_id = ?1",
                [&tenant],
                |row| row.get(0),
            )?;
            let usage: i64 = conn.query_row(
                "SELECT COALESCE(SUM(credits_used), 0) FROM usage_logs WHERE tenant_id = ?1 AND refunded = 0",
                [&tenant],
                |row| row.get(0),
            )?;
            Ok(Audit { transactions, usage })
        })
        .await
    }

    async fn update_tenant(
        &self,
        id: &str,
        patch: &TenantPatch,
    ) -> Result<Option<TenantRecord>, StoreError> {
        let (id, patch) = (id.to_owned(), patch.clone());
        self.run(move |conn| {
            let tx = conn.transaction()?;
            if let Some(name) = &patch.name {
                tx.execute(
                    "UPDATE tenants SET name = ?2 WHERE id = ?1",
                    params![id, name],
                )?;
            }
            if let Some(status) = &patch.status {
                tx.execute(
                    "UPDATE tenants SET status = ?2 WHERE id = ?1",
                    params![id, status_str(status)],
                )?;
            }
            if let Some(threshold) = patch.low_credit_threshold {
                tx.execute(
                    "UPDATE tenants SET low_credit_threshold = ?2 WHERE id = ?1",
                    params![id, threshold],
                )?;
            }
            if let Some(limits) = &patch.limits {
                let json =
                    (!limits.is_empty()).then(|| serde_json::to_string(limits).unwrap_or_default());
                tx.execute(
                    "UPDATE tenants SET limits = ?2 WHERE id = ?1",
                    params![id, json],
                )?;
            }
            if let Some(plan) = &patch.plan_id {
                tx.execute(
                    "UPDATE tenants SET plan_id = ?2 WHERE id = ?1",
                    params![id, plan],
                )?;
            }
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1");
            let record = tx.query_row(&sql, [&id], tenant_from_row).optional()?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    async fn tenants_with_usage(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT DISTINCT tenant_id FROM usage_logs
                 WHERE timestamp_ms >= ?1 AND timestamp_ms < ?2 ORDER BY tenant_id",
            )?;
            let rows = stmt.query_map(params![from_ms, to_ms], |row| row.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }
}

#[async_trait]
impl Documents for SqliteStore {
    async fn insert_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError> {
        let id = doc_id(doc)?.to_owned();
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Data(e.to_string()))?;
        self.run(move |conn| {
            match conn.execute(
                "INSERT INTO documents (collection, id, body) VALUES (?1, ?2, ?3)",
                params![kind.collection(), id, body],
            ) {
                Ok(_) => Ok(true),
                Err(e) if is_constraint(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn replace_doc(&self, kind: Kind, doc: &Doc) -> Result<bool, StoreError> {
        let id = doc_id(doc)?.to_owned();
        let body = serde_json::to_string(doc).map_err(|e| StoreError::Data(e.to_string()))?;
        self.run(move |conn| {
            Ok(conn.execute(
                "UPDATE documents SET body = ?3 WHERE collection = ?1 AND id = ?2",
                params![kind.collection(), id, body],
            )? == 1)
        })
        .await
    }

    async fn update_doc(&self, kind: Kind, id: &str, fields: &Doc) -> Result<bool, StoreError> {
        if fields.contains_key("id") {
            return Err(StoreError::Data("a document's `id` cannot change".into()));
        }
        let id = id.to_owned();
        let patch = serde_json::to_string(fields).map_err(|e| StoreError::Data(e.to_string()))?;
        self.run(move |conn| {
            // json_patch (RFC 7396) merges the top-level fields in one statement.
            Ok(conn.execute(
                "UPDATE documents SET body = json_patch(body, ?3) WHERE collection = ?1 AND id = ?2",
                params![kind.collection(), id, patch],
            )? == 1)
        })
        .await
    }

    async fn doc(&self, kind: Kind, id: &str) -> Result<Option<Doc>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            conn.query_row(
                "SELECT body FROM documents WHERE collection = ?1 AND id = ?2",
                params![kind.collection(), id],
                |row| row.get(0),
            )
            .optional()?
            .map(parse_doc)
            .transpose()
        })
        .await
    }

    async fn find_doc(
        &self,
        kind: Kind,
        field: &str,
        value: &str,
    ) -> Result<Option<Doc>, StoreError> {
        let (path, value) = (json_path(field)?, value.to_owned());
        self.run(move |conn| {
            conn.query_row(
                "SELECT body FROM documents WHERE collection = ?1 AND json_extract(body, ?2) = ?3
                 ORDER BY id LIMIT 1",
                params![kind.collection(), path, value],
                |row| row.get(0),
            )
            .optional()?
            .map(parse_doc)
            .transpose()
        })
        .await
    }

    async fn docs(&self, kind: Kind, filter: Option<(&str, &str)>) -> Result<Vec<Doc>, StoreError> {
        let filter = match filter {
            Some((field, value)) => Some((json_path(field)?, value.to_owned())),
            None => None,
        };
        self.run(move |conn| {
            let limit = MAX_LIST as i64;
            let bodies: Vec<String> = match &filter {
                Some((path, value)) => {
                    let mut stmt = conn.prepare(
                        "SELECT body FROM documents WHERE collection = ?1 AND json_extract(body, ?2) = ?3
                         ORDER BY id LIMIT ?4",
                    )?;
                    let rows = stmt.query_map(params![kind.collection(), path, value, limit], |row| row.get(0))?;
                    rows.collect::<Result<_, _>>()?
                }
                None => {
                    let mut stmt = conn.prepare(
                        "SELECT body FROM documents WHERE collection = ?1 ORDER BY id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![kind.collection(), limit], |row| row.get(0))?;
                    rows.collect::<Result<_, _>>()?
                }
            };
            bodies.into_iter().map(parse_doc).collect()
        })
        .await
    }

    async fn docs_after(&self, kind: Kind, after: Option<&str>) -> Result<Vec<Doc>, StoreError> {
        let after = after.map(str::to_owned);
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT body FROM documents WHERE collection = ?1 AND (?2 IS NULL OR id > ?2)
                 ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![kind.collection(), after, MAX_LIST as i64], |row| {
                    row.get(0)
                })?;
            let bodies: Vec<String> = rows.collect::<Result<_, _>>()?;
            bodies.into_iter().map(parse_doc).collect()
        })
        .await
    }

    async fn docs_at_least(
        &self,
        kind: Kind,
        field: &str,
        min: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let path = json_path(field)?;
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT id, CAST(json_extract(body, ?3) AS INTEGER)
                 FROM documents
                 WHERE collection = ?1 AND json_extract(body, ?3) >= ?2",
            )?;
            let rows = stmt.query_map(params![kind.collection(), min, path], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_doc(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            Ok(conn.execute(
                "DELETE FROM documents WHERE collection = ?1 AND id = ?2",
                params![kind.collection(), id],
            )? == 1)
        })
        .await
    }

    async fn latest_doc(&self, kind: Kind) -> Result<Option<Doc>, StoreError> {
        self.run(move |conn| {
            conn.query_row(
                "SELECT body FROM documents WHERE collection = ?1 ORDER BY id DESC LIMIT 1",
                [kind.collection()],
                |row| row.get(0),
            )
            .optional()?
            .map(parse_doc)
            .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir from before `usage_logs.plan_id`: opened by this build, its rows stay and
    /// new rows carry the column.
    #[tokio::test]
    async fn an_older_usage_table_gains_the_new_columns() {
        let dir = std::env::temp_dir().join(format!("tollgate-migrate-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let conn = Connection::open(dir.join("store.sqlite3")).unwrap();
            conn.execute_batch(&SCHEMA.replace(",\n    plan_id TEXT\n);", "\n);"))
                .unwrap();
            let columns: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM pragma_table_info('usage_logs') WHERE name = 'plan_id'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(columns, 0, "the old table has no plan_id");
            conn.execute(
                "INSERT INTO usage_logs VALUES ('old', 't', 'u', 's', '/e', 'GET', 1, 9, 200, 1.0, 'r', NULL, 0, 5)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let logs = store
            .usage_logs(&UsageQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            (logs[0].id.as_str(), logs[0].plan_id.as_deref()),
            ("old", None)
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
