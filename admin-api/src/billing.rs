//! Billing, without HTTP: credit changes exactly once, subscriptions and their refills. The
//! credits and subscriptions handlers and the scheduler call it alike.
//!
//! Operators' top-ups, corrections and new balances, plan refills ([`refill_due`]) and a
//! subscription's first grant ([`subscribe`]) all go through [`change_credits`].
//!
//! A change is an intent (an outbox, docs/DESIGN.md §Credit changes) written to the store
//! before anything moves, then applied to the ledger by its id (the ledger keeps each
//! operation id for [`ADJUSTMENT_RECORD_LIFE`]: a retry applies nothing twice), then
//! recorded as the `credit_transactions` row with the same id (the store applies a row id
//! once), then marked done with its result. A crash, a timeout or a client gone between any
//! two steps leaves the intent open; [`recover`] finishes it, at start and every
//! [`RECOVERY_INTERVAL`], and a retry with the same key finishes it too. Nothing is undone:
//! there is no "undo" that a ledger could refuse.
//!
//! ```text
//!   open ──ledger applied──► (transaction row) ──► done {amount, balance, transaction_id}
//!     │ └─ledger refused (range)────────────────────► refused {balance}
//!     └──older than the ledger's record of it─────────► abandoned (logged; reconcile tells)
//! ```

use crate::records::{from_doc, to_doc, Plan, Subscription, SubscriptionStatus};
use crate::time::{day_of, month_of, period_of, rfc3339};
use crate::AdminState;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tollgate::ledger::{AdjustOutcome, Adjustment, Change, LedgerError, ADJUSTMENT_RECORD_LIFE};
use tollgate::store::{Doc, Kind, NewTransaction, TenantPatch, TenantRecord};

/// Tries of one ledger operation after timeouts (same op id: applied at most once).
const LEDGER_TRIES: usize = 3;

/// How often open intents are looked for (also once at start).
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// An intent younger than this may still be finishing in the request that made it: the
/// periodic pass leaves it alone (finishing it twice would be harmless, only wasted). The
/// pass at start takes every open intent.
const RECOVERY_MIN_AGE: Duration = Duration::from_secs(10);

/// One credit change to make.
#[derive(Debug, Clone, Copy)]
pub struct CreditRequest<'a> {
    pub tenant: &'a TenantRecord,
    pub change: Change,
    pub reason: &'a str,
    pub actor: &'a str,
    /// Makes the change happen once per key and tenant (`Idempotency-Key`, a refill's
    /// period): a retry gets the first one's result.
    pub key: Option<&'a str>,
}

/// The key of a subscription's grant for a period (`YYYY-MM`): one grant per period,
/// whoever makes it (the subscription's creation, any control plane's scheduler).
pub fn refill_key(subscription_id: &str, period: &str) -> String {
    format!("refill:{subscription_id}:{period}")
}

/// What a change came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub tenant_id: String,
    /// The signed change applied.
    pub amount: i64,
    /// The live balance after it.
    pub balance: i64,
    pub transaction_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The balance would leave `0..=MAX_BALANCE`; nothing changed.
    #[error("the balance ({balance}) must stay within 0 to {max}")]
    OutOfRange {
        field: &'static str,
        balance: i64,
        max: i64,
    },
    /// The key was used for another change.
    #[error("this Idempotency-Key was used for a different credit change")]
    KeyReused,
    /// The request names something that does not exist (a tenant, a plan).
    #[error("{detail}")]
    Invalid { field: &'static str, detail: String },
    /// The request conflicts with what is stored (a tenant already subscribed).
    #[error("{detail}")]
    Conflict { field: &'static str, detail: String },
    /// A backend did not answer: the change is recorded and will be finished (by a retry
    /// with the same key, or by the recovery pass).
    #[error("{0}")]
    Pending(String),
    #[error("{0}")]
    Store(#[from] tollgate::store::StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum IntentState {
    Open,
    Done,
    Refused,
    Abandoned,
}

/// A credit change as the store keeps it (`credit_intents`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    /// Also the ledger's operation id and the transaction row's id.
    id: String,
    tenant_id: String,
    /// `add` or `set`.
    mode: String,
    value: i64,
    reason: String,
    actor: String,
    threshold: i64,
    state: IntentState,
    created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<Applied>,
    /// The balance a refused change would have left its range from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused_balance: Option<i64>,
}

impl Intent {
    fn new(request: &CreditRequest<'_>) -> Intent {
        let tenant_id = request.tenant.id.as_str();
        let id = match request.key {
            // Deterministic: a second try with the key finds the first.
            Some(key) => {
                let digest = Sha256::digest(format!("{tenant_id}\0{key}").as_bytes());
                format!("key-{}", tollgate::idempotency::hex(&digest))
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let (mode, value) = match request.change {
            Change::Add(amount) => ("add", amount),
            Change::Set(balance) => ("set", balance),
        };
        Intent {
            id,
            tenant_id: tenant_id.to_owned(),
            mode: mode.to_owned(),
            value,
            reason: request.reason.to_owned(),
            actor: request.actor.to_owned(),
            threshold: request.tenant.low_credit_threshold,
            state: IntentState::Open,
            created_at_ms: tollgate::store::now_ms(),
            applied: None,
            refused_balance: None,
        }
    }

    fn same_request(&self, other: &Intent) -> bool {
        (&self.tenant_id, &self.mode, self.value, &self.reason)
            == (&other.tenant_id, &other.mode, other.value, &other.reason)
    }

    fn change(&self) -> Change {
        match self.mode.as_str() {
            "set" => Change::Set(self.value),
            _ => Change::Add(self.value),
        }
    }

    /// The result of a finished intent.
    fn outcome(&self) -> Result<Applied, BillingError> {
        match (self.state, &self.applied) {
            (IntentState::Done, Some(applied)) => Ok(applied.clone()),
            (IntentState::Refused, _) => Err(BillingError::OutOfRange {
                field: if self.mode == "set" {
                    "balance"
                } else {
                    "amount"
                },
                balance: self.refused_balance.unwrap_or_default(),
                max: tollgate::ledger::MAX_BALANCE,
            }),
            _ => Err(BillingError::Pending(format!(
                "credit change {} is {:?}",
                self.id, self.state
            ))),
        }
    }
}

/// Makes one credit change exactly once (see the module's note). Runs to its end in a task
/// of its own, so a client that goes away cannot cut it between two steps.
pub async fn change_credits(
    state: &AdminState,
    request: CreditRequest<'_>,
) -> Result<Applied, BillingError> {
    let intent = Intent::new(&request);
    let state = state.clone();
    tokio::spawn(async move { record_and_finish(&state, intent).await })
        .await
        .map_err(|e| BillingError::Pending(format!("credit change task: {e}")))?
}

async fn record_and_finish(state: &AdminState, intent: Intent) -> Result<Applied, BillingError> {
    let intent = if state
        .docs
        .insert_doc(Kind::CreditIntents, &to_doc(&intent))
        .await?
    {
        intent
    } else {
        let existing = state
            .docs
            .doc(Kind::CreditIntents, &intent.id)
            .await?
            .ok_or_else(|| BillingError::Pending(format!("intent {} id taken", intent.id)))?;
        let existing: Intent =
            from_doc(existing).map_err(|e| BillingError::Pending(e.to_string()))?;
        if !existing.same_request(&intent) {
            return Err(BillingError::KeyReused);
        }
        existing
    };
    tollgate::failpoint::crash("credits.after_intent");
    tollgate::failpoint::delay("credits.slow", Duration::from_secs(1)).await;
    match intent.state {
        IntentState::Open => finish(state, intent).await,
        _ => intent.outcome(),
    }
}

/// Applies an open intent to the ledger and the store, then marks it finished.
async fn finish(state: &AdminState, mut intent: Intent) -> Result<Applied, BillingError> {
    let adjustment = Adjustment {
        tenant_id: &intent.tenant_id,
        op_id: &intent.id,
        change: intent.change(),
        threshold: intent.threshold,
    };
    let outcome = adjust(state, &adjustment).await?;
    tollgate::failpoint::crash("credits.after_ledger");
    match outcome {
        AdjustOutcome::Applied { amount, balance } => {
            let row = state
                .store
                .apply_transaction(&NewTransaction {
                    id: Some(&intent.id),
                    tenant_id: &intent.tenant_id,
                    amount,
                    reason: &intent.reason,
                    actor: &intent.actor,
                    live_balance: Some(balance),
                })
                .await
                .map_err(pending)?;
            tollgate::failpoint::crash("credits.after_transaction");
            intent.state = IntentState::Done;
            intent.applied = Some(Applied {
                tenant_id: intent.tenant_id.clone(),
                amount,
                balance,
                transaction_id: row.id,
            });
            tracing::info!(tenant_id = %intent.tenant_id, amount, balance, reason = %intent.reason, actor = %intent.actor, "credits changed");
        }
        AdjustOutcome::OutOfRange { balance, .. } => {
            intent.state = IntentState::Refused;
            intent.refused_balance = Some(balance);
        }
        AdjustOutcome::NoBalance => {
            return Err(BillingError::Pending("no balance after hydration".into()))
        }
    }
    mark(state, &intent).await?;
    intent.outcome()
}

async fn mark(state: &AdminState, intent: &Intent) -> Result<(), BillingError> {
    let mut fields = to_doc(intent);
    fields.remove("id");
    state
        .docs
        .update_doc(Kind::CreditIntents, &intent.id, &fields)
        .await
        .map_err(pending)?;
    Ok(())
}

/// A store error once the intent is recorded: the change is not lost, only unfinished.
fn pending(e: tollgate::store::StoreError) -> BillingError {
    BillingError::Pending(e.to_string())
}

async fn adjust(
    state: &AdminState,
    adjustment: &Adjustment<'_>,
) -> Result<AdjustOutcome, BillingError> {
    let mut last = None;
    for _ in 0..LEDGER_TRIES {
        match state.ledger.adjust(adjustment).await {
            Ok(AdjustOutcome::NoBalance) => {
                if let Err(e) = state.hydrator.hydrate(adjustment.tenant_id).await {
                    last = Some(e);
                }
            }
            Ok(outcome) => return Ok(outcome),
            Err(e @ LedgerError::Timeout) => last = Some(e),
            Err(e) => return Err(BillingError::Pending(e.to_string())),
        }
    }
    Err(BillingError::Pending(last.map_or_else(
        || "no balance after hydration".to_owned(),
        |e| e.to_string(),
    )))
}

/// Subscribes tenant `tenant_id` to plan `plan_id`: grants the plan's monthly credits now
/// (keyed as the scheduler's refills are, so this grant and a refill of the same period are
/// one change) and sets the tenant's plan. One active subscription per tenant.
pub async fn subscribe(
    state: &AdminState,
    tenant_id: &str,
    plan_id: &str,
    actor: &str,
) -> Result<Subscription, BillingError> {
    let Some(tenant) = state.store.tenant(tenant_id).await? else {
        return Err(BillingError::Invalid {
            field: "tenant_id",
            detail: "no such tenant".into(),
        });
    };
    let Some(plan_doc) = state.docs.doc(Kind::Plans, plan_id).await? else {
        return Err(BillingError::Invalid {
            field: "plan_id",
            detail: "no such plan".into(),
        });
    };
    let plan: Plan = from_doc(plan_doc)?;
    let current = state
        .docs
        .docs(Kind::Subscriptions, Some(("tenant_id", tenant_id)))
        .await?
        .into_iter()
        .map(from_doc::<Subscription>)
        .collect::<Result<Vec<_>, _>>()?;
    if current
        .iter()
        .any(|s| s.status == SubscriptionStatus::Active)
    {
        return Err(BillingError::Conflict {
            field: "tenant_id",
            detail: "this tenant has an active subscription; cancel it first".into(),
        });
    }
    let now = crate::time::now_ms();
    let (start, end) = month_of(now);
    // The period is marked granted only once the grant is made (below): a grant that
    // fails is then made by the scheduler, under the same key, never twice.
    let mut subscription = Subscription {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: tenant_id.to_owned(),
        plan_id: plan.id.clone(),
        status: SubscriptionStatus::Active,
        current_period_start: rfc3339(start),
        current_period_end: rfc3339(end),
        created_at: rfc3339(now),
        last_refill_period: None,
    };
    if !state
        .docs
        .insert_doc(Kind::Subscriptions, &to_doc(&subscription))
        .await?
    {
        return Err(BillingError::Conflict {
            field: "id",
            detail: "subscription id taken; retry".into(),
        });
    }
    let patch = TenantPatch {
        plan_id: Some(Some(plan.id.clone())),
        ..TenantPatch::default()
    };
    state.store.update_tenant(tenant_id, &patch).await?;
    let period = period_of(now);
    if plan.monthly_credits > 0 {
        grant_refill(state, &tenant, &plan, &subscription.id, &period, actor).await?;
    }
    let mut fields = Doc::new();
    fields.insert("last_refill_period".into(), period.clone().into());
    state
        .docs
        .update_doc(Kind::Subscriptions, &subscription.id, &fields)
        .await?;
    subscription.last_refill_period = Some(period);
    Ok(subscription)
}

/// Grants each active subscription its plan's credits once per period, on or after the
/// plan's refill day; returns how many were granted. The grant is keyed by subscription and
/// period, so two control planes whose leader leases overlapped, or a crash before the
/// period is marked, still grant it once; the period is marked after.
pub async fn refill_due(state: &AdminState, now_ms: i64) -> Result<usize, BillingError> {
    let (store, docs) = (&state.store, &state.docs);
    let period = period_of(now_ms);
    let (start, end) = month_of(now_ms);
    let mut granted = 0;
    for doc in docs.docs(Kind::Subscriptions, None).await? {
        let subscription: Subscription = from_doc(doc)?;
        if subscription.status != SubscriptionStatus::Active
            || subscription.last_refill_period.as_deref() == Some(period.as_str())
        {
            continue;
        }
        let Some(plan_doc) = docs.doc(Kind::Plans, &subscription.plan_id).await? else {
            continue;
        };
        let plan: Plan = from_doc(plan_doc)?;
        if day_of(now_ms) < plan.refill_day {
            continue;
        }
        let Some(tenant) = store.tenant(&subscription.tenant_id).await? else {
            continue;
        };
        let grant = grant_refill(
            state,
            &tenant,
            &plan,
            &subscription.id,
            &period,
            "scheduler",
        );
        if let Err(e) = grant.await {
            // Recorded: the recovery pass or the next tick finishes it, once.
            tracing::warn!(subscription = %subscription.id, %period, error = %e, "refill not applied yet");
            continue;
        }
        // Only the period's fields: a cancellation made meanwhile stands.
        let mut fields = Doc::new();
        fields.insert("last_refill_period".into(), period.clone().into());
        fields.insert("current_period_start".into(), rfc3339(start).into());
        fields.insert("current_period_end".into(), rfc3339(end).into());
        docs.update_doc(Kind::Subscriptions, &subscription.id, &fields)
            .await?;
        granted += 1;
    }
    Ok(granted)
}

/// Grants a plan's monthly credits for one period, keyed by subscription and period so it
/// happens once however often it is asked.
async fn grant_refill(
    state: &AdminState,
    tenant: &TenantRecord,
    plan: &Plan,
    subscription_id: &str,
    period: &str,
    actor: &str,
) -> Result<Applied, BillingError> {
    let reason = format!("refill: plan {} ({period})", plan.id);
    let key = refill_key(subscription_id, period);
    let request = CreditRequest {
        tenant,
        change: Change::Add(plan.monthly_credits),
        reason: &reason,
        actor,
        key: Some(&key),
    };
    change_credits(state, request).await
}

/// What a recovery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub finished: usize,
    pub abandoned: usize,
    pub failed: usize,
}

/// Finishes every open intent old enough not to be in a request's hands, and abandons (with
/// an error log) any older than the ledger's record of its operation, which could no longer
/// tell whether it was applied.
pub async fn recover(state: &AdminState, min_age: Duration) -> Result<Recovered, BillingError> {
    let mut done = Recovered::default();
    let now = tollgate::store::now_ms();
    let open = state
        .docs
        .docs(Kind::CreditIntents, Some(("state", "open")))
        .await?;
    for doc in open {
        let Ok(mut intent) = from_doc::<Intent>(doc) else {
            done.failed += 1;
            continue;
        };
        let age = Duration::from_millis((now - intent.created_at_ms).max(0) as u64);
        if age < min_age {
            continue;
        }
        if age + Duration::from_secs(3600) > ADJUSTMENT_RECORD_LIFE {
            intent.state = IntentState::Abandoned;
            tracing::error!(intent = %intent.id, tenant_id = %intent.tenant_id, value = intent.value, mode = %intent.mode,
                "credit change abandoned: open longer than the ledger remembers its operation; reconciliation tells whether it was applied");
            mark(state, &intent).await?;
            done.abandoned += 1;
            continue;
        }
        match finish(state, intent).await {
            Ok(_) | Err(BillingError::OutOfRange { .. }) => done.finished += 1,
            Err(e) => {
                tracing::warn!(error = %e, "credit change still cannot be finished");
                done.failed += 1;
            }
        }
    }
    Ok(done)
}

/// The recovery pass as a background service of the control plane.
pub struct Recovery(pub AdminState);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Recovery {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut min_age = Duration::ZERO;
        loop {
            match recover(&self.0, min_age).await {
                Ok(r) if r != Recovered::default() => {
                    tracing::info!(
                        finished = r.finished,
                        abandoned = r.abandoned,
                        failed = r.failed,
                        "credit changes recovered"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "credit recovery could not run"),
            }
            min_age = RECOVERY_MIN_AGE;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(RECOVERY_INTERVAL) => {}
            }
        }
    }
}
