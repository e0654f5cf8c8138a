//! Credits: top-ups and corrections (a signed amount), or a new balance. Each moves the
//! live ledger in one atomic step — concurrent charges are never lost — and writes one
//! `credit_transactions` row that moves the durable balance by the same amount.
//!
//! Order: ledger first (it decides whether the change fits the balance's range, and the
//! exact amount a `set` means at that instant), then the store. A store that fails after
//! the ledger moved gets the ledger change undone, so the two never disagree by an
//! operator's action; a ledger that times out is asked again with the same operation id,
//! which applies at most once.

use crate::extract::{Admin, Body};
use crate::problem::{ApiError, ApiResult};
use crate::tenants::existing;
use crate::time::rfc3339;
use crate::AdminState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::ledger::{AdjustOutcome, Adjustment, Change, LedgerError, MAX_BALANCE};
use tollgate::store::{NewTransaction, TenantRecord};
use utoipa::ToSchema;

/// Tries of one ledger operation after timeouts (same op id: applied at most once).
const LEDGER_TRIES: usize = 3;

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    tenant_id: String,
    /// The signed change applied.
    amount: i64,
    /// The live balance after it.
    balance: i64,
    transaction_id: String,
}

async fn adjust_once(state: &AdminState, adjustment: &Adjustment<'_>) -> ApiResult<AdjustOutcome> {
    let mut last = None;
    for _ in 0..LEDGER_TRIES {
        match state.ledger.adjust(adjustment).await {
            Ok(AdjustOutcome::NoBalance) => {
                state.hydrator.hydrate(adjustment.tenant_id).await?;
            }
            Ok(outcome) => return Ok(outcome),
            Err(e @ LedgerError::Timeout) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(
        || ApiError::unavailable("ledger", "no balance after hydration"),
        ApiError::from,
    ))
}

/// Applies `change` to the live ledger and records it; also used by subscriptions.
pub async fn apply(
    state: &AdminState,
    tenant: &TenantRecord,
    change: Change,
    reason: &str,
    actor: &str,
) -> ApiResult<CreditsView> {
    let tenant_id = tenant.id.as_str();
    let op_id = uuid::Uuid::now_v7().to_string();
    let adjustment = Adjustment {
        tenant_id,
        op_id: &op_id,
        change,
        threshold: tenant.low_credit_threshold,
    };
    let (amount, balance) = match adjust_once(state, &adjustment).await? {
        AdjustOutcome::Applied { amount, balance } => (amount, balance),
        AdjustOutcome::OutOfRange { balance, .. } => {
            let field = match change {
                Change::Add(_) => "amount",
                Change::Set(_) => "balance",
            };
            return Err(ApiError::invalid(
                field,
                format!("the balance ({balance}) must stay within 0 to {MAX_BALANCE}"),
            ));
        }
        AdjustOutcome::NoBalance => {
            return Err(ApiError::unavailable(
                "ledger",
                "no balance after hydration",
            ))
        }
    };
    match state
        .store
        .apply_transaction(&NewTransaction {
            tenant_id,
            amount,
            reason,
            actor,
            live_balance: Some(balance),
        })
        .await
    {
        Ok(row) => {
            tracing::info!(%tenant_id, amount, balance, %reason, %actor, "credits changed");
            Ok(CreditsView {
                tenant_id: tenant_id.to_owned(),
                amount,
                balance,
                transaction_id: row.id,
            })
        }
        Err(e) => {
            let undo_id = format!("{op_id}:undo");
            let undo = Adjustment {
                tenant_id,
                op_id: &undo_id,
                change: Change::Add(-amount),
                threshold: tenant.low_credit_threshold,
            };
            if let Err(undo_error) = adjust_once(state, &undo).await {
                tracing::error!(%tenant_id, amount, error = %undo_error.detail, "credit change could not be undone after the store failed: reconciliation will report it");
            }
            Err(e.into())
        }
    }
}

fn check_reason(reason: &str) -> ApiResult<()> {
    crate::auth::check_name("reason", reason)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    /// Signed, non-zero: a top-up (> 0) or a correction (< 0).
    amount: i64,
    reason: String,
}

/// Tops up or corrects a balance.
#[utoipa::path(post, path = "/admin/tenants/{id}/credits", tag = "credits",
    params(("id" = String, Path, description = "tenant id")), request_body = AddCredits,
    security(("bearer" = [])),
    responses((status = 200, body = CreditsView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub async fn add(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    Body(body): Body<AddCredits>,
) -> ApiResult<Json<CreditsView>> {
    if body.amount == 0 || body.amount.unsigned_abs() > MAX_BALANCE as u64 {
        return Err(ApiError::invalid(
            "amount",
            format!("non-zero, at most {MAX_BALANCE} either way"),
        ));
    }
    check_reason(&body.reason)?;
    let tenant = existing(&state, &id).await?;
    let reason = body.reason.trim();
    Ok(Json(
        apply(
            &state,
            &tenant,
            Change::Add(body.amount),
            reason,
            &admin.sub,
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCredits {
    /// The new balance.
    balance: i64,
    reason: String,
}

/// Sets a balance; the difference is recorded as an adjustment.
#[utoipa::path(put, path = "/admin/tenants/{id}/credits", tag = "credits",
    params(("id" = String, Path, description = "tenant id")), request_body = SetCredits,
    security(("bearer" = [])),
    responses((status = 200, body = CreditsView), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub async fn set(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    Body(body): Body<SetCredits>,
) -> ApiResult<Json<CreditsView>> {
    if !(0..=MAX_BALANCE).contains(&body.balance) {
        return Err(ApiError::invalid("balance", format!("0 to {MAX_BALANCE}")));
    }
    check_reason(&body.reason)?;
    let tenant = existing(&state, &id).await?;
    let reason = body.reason.trim();
    Ok(Json(
        apply(
            &state,
            &tenant,
            Change::Set(body.balance),
            reason,
            &admin.sub,
        )
        .await?,
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionView {
    id: String,
    tenant_id: String,
    amount: i64,
    reason: String,
    actor: String,
    /// The durable balance after it.
    balance_after: i64,
    at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionList {
    items: Vec<TransactionView>,
}

#[utoipa::path(get, path = "/admin/tenants/{id}/credits/transactions", tag = "credits",
    params(("id" = String, Path, description = "tenant id")), security(("bearer" = [])),
    responses((status = 200, body = TransactionList), (status = 404, body = ApiError)))]
pub async fn transactions(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TransactionList>> {
    existing(&state, &id).await?;
    let rows = state.store.transactions(&id).await?;
    Ok(Json(TransactionList {
        items: rows
            .into_iter()
            .map(|t| TransactionView {
                at: rfc3339(t.at_ms),
                id: t.id,
                tenant_id: t.tenant_id,
                amount: t.amount,
                reason: t.reason,
                actor: t.actor,
                balance_after: t.balance_after,
            })
            .collect(),
    }))
}
