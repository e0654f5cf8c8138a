//! The control plane's periodic work (docs/DESIGN.md §Scheduler): usage summaries per window, invoices per
//! billing period, and monthly refills from subscriptions.
//!
//! Windows are contiguous across runs and restarts: each starts where the last stored
//! `scheduled_summary` ended, and a run catches up on every whole window that has closed.
//! A window closes [`SETTLE`] after its end, so the usage pipelines have flushed its logs.
//! With several control planes, a leader lock in Redis (taken and renewed each tick,
//! expiring when its holder dies) makes one of them run; documents are keyed by tenant and
//! window or period, so even two runs of one window write it once.

use crate::billing::BillingError;
use crate::records::UserDoc;
use crate::time::{month_of, period_of, rfc3339};
use crate::AdminState;
use serde::Serialize;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tollgate::store::{upsert_doc, Doc, Kind, StoreError, UsageLine};

/// How long after a window's end its logs are taken as complete.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The most windows one run catches up on (a day of 5-minute windows).
const MAX_WINDOWS_PER_RUN: usize = 288;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("billing: {0}")]
    Billing(#[from] BillingError),
    #[error("{0}")]
    Data(String),
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub windows: usize,
    pub summaries: usize,
    pub invoices: usize,
    pub refills: usize,
}

pub struct Scheduler {
    pub state: AdminState,
    pub interval: Duration,
    /// This control plane's id for the leader lock.
    pub owner: String,
}

#[derive(Serialize)]
struct Line {
    service: String,
    endpoint: String,
    /// The plan whose price these calls paid; absent: the service's own price.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_id: Option<String>,
    calls: u64,
    credits: i64,
}

fn lines(lines: Vec<UsageLine>) -> Vec<Line> {
    lines
        .into_iter()
        .map(|l| Line {
            service: l.service,
            endpoint: l.endpoint,
            plan_id: l.plan_id,
            calls: l.calls,
            credits: l.credits,
        })
        .collect()
}

/// Ids that sort by time.
fn window_id(start_ms: i64) -> String {
    format!("{start_ms:013}")
}

fn int(doc: &Doc, key: &str) -> Option<i64> {
    doc.get(key).and_then(serde_json::Value::as_i64)
}

impl Scheduler {
    pub fn new(state: AdminState, interval: Duration) -> Scheduler {
        Scheduler {
            state,
            interval,
            owner: format!("scheduler-{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// Runs every `interval` until `shutdown` turns true, when this process leads.
    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let lease = (self.interval * 3).max(Duration::from_secs(3));
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticks.tick() => {}
            }
            match self.state.coordination.lead(&self.owner, lease).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler lock unavailable; skipping this tick");
                    continue;
                }
            }
            let now = tollgate::store::now_ms();
            match self.run_once(now).await {
                Ok(report) => tracing::debug!(?report, "scheduler run"),
                Err(e) => tracing::warn!(error = %e, "scheduler run failed; the next one resumes"),
            }
        }
    }

    /// One run as of `now_ms`: the windows that closed, this period's invoices (and the
    /// last period's, final), the refills due.
    pub async fn run_once(&self, now_ms: i64) -> Result<Report, ScheduleError> {
        let mut report = Report::default();
        self.summaries(now_ms, &mut report).await?;
        self.invoices(now_ms, &mut report).await?;
        report.refills = crate::billing::refill_due(&self.state, now_ms).await?;
        Ok(report)
    }

    async fn summaries(&self, now_ms: i64, report: &mut Report) -> Result<(), ScheduleError> {
        let (store, docs) = (&self.state.store, &self.state.docs);
        let step = self.interval.as_millis() as i64;
        let closed = now_ms - SETTLE.as_millis() as i64;
        let mut start = match docs.latest_doc(Kind::ScheduledSummaries).await? {
            Some(last) => int(&last, "window_end_ms").ok_or_else(|| {
                ScheduleError::Data("a scheduled_summary without window_end_ms".into())
            })?,
            // The first run ever: the last whole window, aligned to the interval.
            None => closed.div_euclid(step) * step - step,
        };
        while start + step <= closed && report.windows < MAX_WINDOWS_PER_RUN {
            let end = start + step;
            let started = Instant::now();
            let tenants = self.active_tenants(start, end).await?;
            for tenant in &tenants {
                let totals = store.usage_totals(tenant, start, end).await?;
                let summary = serde_json::json!({
                    "id": format!("{tenant}:{}", window_id(start)),
                    "tenant_id": tenant,
                    "window_start": rfc3339(start), "window_end": rfc3339(end),
                    "window_start_ms": start, "window_end_ms": end,
                    "calls": totals.calls, "credits": totals.credits,
                    "lines": lines(totals.lines),
                });
                if let serde_json::Value::Object(doc) = summary {
                    if docs.insert_doc(Kind::UsageSummaries, &doc).await? {
                        report.summaries += 1;
                    }
                }
            }
            let run = serde_json::json!({
                "id": window_id(start),
                "window_start": rfc3339(start), "window_end": rfc3339(end),
                "window_start_ms": start, "window_end_ms": end,
                "tenants_processed": tenants.len(),
                "duration_ms": started.elapsed().as_millis() as u64,
                "runner": self.owner,
                "finished_at": rfc3339(tollgate::store::now_ms()),
            });
            if let serde_json::Value::Object(doc) = run {
                docs.insert_doc(Kind::ScheduledSummaries, &doc).await?;
            }
            report.windows += 1;
            start = end;
        }
        Ok(())
    }

    /// Tenants with usage or a login in `[from, to)`.
    async fn active_tenants(&self, from: i64, to: i64) -> Result<Vec<String>, ScheduleError> {
        let (store, docs) = (&self.state.store, &self.state.docs);
        let mut tenants: BTreeSet<String> = store
            .tenants_with_usage(from, to)
            .await?
            .into_iter()
            .collect();
        for doc in docs.docs(Kind::Users, None).await? {
            let Ok(user) = UserDoc::from_doc(doc) else {
                continue;
            };
            if user
                .last_login_at_ms
                .is_some_and(|t| (from..to).contains(&t))
            {
                tenants.insert(user.tenant_id);
            }
        }
        Ok(tenants.into_iter().collect())
    }

    /// This period's invoice as `draft`; the last period's as `final` once it has closed.
    async fn invoices(&self, now_ms: i64, report: &mut Report) -> Result<(), ScheduleError> {
        let (start, end) = month_of(now_ms);
        let (last_start, last_end) = month_of(start - 1);
        let last_closed = now_ms - SETTLE.as_millis() as i64 >= last_end;
        for tenant in self.state.store.tenants().await? {
            if self
                .invoice(&tenant.id, start, end, "draft", now_ms)
                .await?
            {
                report.invoices += 1;
            }
            if last_closed
                && self
                    .invoice(&tenant.id, last_start, last_end, "final", now_ms)
                    .await?
            {
                report.invoices += 1;
            }
        }
        Ok(())
    }

    /// Writes one invoice unless there is nothing to bill or it is final already.
    async fn invoice(
        &self,
        tenant_id: &str,
        start: i64,
        end: i64,
        status: &str,
        now_ms: i64,
    ) -> Result<bool, ScheduleError> {
        let (store, docs) = (&self.state.store, &self.state.docs);
        let period = period_of(start);
        let id = format!("{tenant_id}:{period}");
        let existing = docs.doc(Kind::Invoices, &id).await?;
        if existing
            .as_ref()
            .is_some_and(|d| d.get("status").and_then(|s| s.as_str()) == Some("final"))
        {
            return Ok(false);
        }
        let totals = store.usage_totals(tenant_id, start, end).await?;
        if totals.calls == 0 && existing.is_none() {
            return Ok(false);
        }
        let invoice = serde_json::json!({
            "id": id, "tenant_id": tenant_id, "period": period, "status": status,
            "period_start": rfc3339(start), "period_end": rfc3339(end),
            "total_credits_used": totals.credits, "log_count": totals.calls,
            "logs": lines(totals.lines),
            "generated_at": rfc3339(now_ms),
        });
        if let serde_json::Value::Object(doc) = invoice {
            upsert_doc(&**docs, Kind::Invoices, &doc).await?;
        }
        Ok(true)
    }
}

/// The scheduler as a Pingora background service of `tollgate run`.
pub struct SchedulerService(pub Scheduler);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SchedulerService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}
