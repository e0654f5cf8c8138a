//! Credits over HTTP: top-ups and corrections (a signed amount), or a new balance, each
//! made exactly once by [`crate::billing`] (recorded as an intent, applied to the ledger
//! by its id, recorded as one `credit_transactions` row). An `Idempotency-Key` makes a
//! retried request apply once and answer the first one's result.

use crate::billing::{change_credits, Applied, CreditRequest};
use crate::extract::{Admin, Body};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::tenants::existing;
use crate::time::rfc3339;
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::ledger::{Change, MAX_BALANCE};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/tenants/{id}/credits` and its transactions.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(add, set))
        .routes(routes!(transactions))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    tenant_id: String,
    /// The signed change applied.
    amount: i64,
    /// The live balance after it.
    balance: i64,
    transaction_id: String,
}

impl From<Applied> for CreditsView {
    fn from(a: Applied) -> CreditsView {
        CreditsView {
            tenant_id: a.tenant_id,
            amount: a.amount,
            balance: a.balance,
            transaction_id: a.transaction_id,
        }
    }
}

/// The request's `Idempotency-Key`, if any: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    tollgate::idempotency::parse_key(value.as_bytes())
        .map(Some)
        .map_err(|why| Problem::invalid("Idempotency-Key", why))
}

fn check_reason(reason: &str) -> ApiResult<()> {
    crate::auth::check_name("reason", reason)
}

async fn change(
    state: &AdminState,
    id: &str,
    change: Change,
    reason: &str,
    (actor, key): (&str, Option<&str>),
) -> ApiResult<Json<CreditsView>> {
    check_reason(reason)?;
    let tenant = existing(state, id).await?;
    let request = CreditRequest {
        tenant: &tenant,
        change,
        reason: reason.trim(),
        actor,
        key,
    };
    Ok(Json(change_credits(state, request).await?.into()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    /// Signed, non-zero: a top-up (> 0) or a correction (< 0).
    #[schema(minimum = -1_000_000_000_000_000_i64, maximum = 1_000_000_000_000_000_i64)]
    amount: i64,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    reason: String,
}

/// Tops up or corrects a balance.
#[utoipa::path(post, path = "/admin/tenants/{id}/credits", tag = "credits",
    params(("id" = String, Path, description = "tenant id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]+$",
            description = "applies the change once per key and tenant; a retry answers the first result")),
    request_body = AddCredits,
    security(("bearer" = [])),
    responses((status = 200, body = CreditsView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn add(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<AddCredits>,
) -> ApiResult<Json<CreditsView>> {
    if body.amount == 0 || body.amount.unsigned_abs() > MAX_BALANCE as u64 {
        return Err(Problem::invalid(
            "amount",
            format!("non-zero, at most {MAX_BALANCE} either way"),
        ));
    }
    let key = idempotency_key(&headers)?;
    let by = (admin.sub.as_str(), key);
    change(&state, &id, Change::Add(body.amount), &body.reason, by).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCredits {
    /// The new balance.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    balance: i64,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    reason: String,
}

/// Sets a balance; the difference is recorded as an adjustment.
#[utoipa::path(put, path = "/admin/tenants/{id}/credits", tag = "credits",
    params(("id" = String, Path, description = "tenant id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]+$",
            description = "applies the change once per key and tenant; a retry answers the first result")),
    request_body = SetCredits,
    security(("bearer" = [])),
    responses((status = 200, body = CreditsView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn set(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<SetCredits>,
) -> ApiResult<Json<CreditsView>> {
    if !(0..=MAX_BALANCE).contains(&body.balance) {
        return Err(Problem::invalid("balance", format!("0 to {MAX_BALANCE}")));
    }
    let key = idempotency_key(&headers)?;
    let by = (admin.sub.as_str(), key);
    change(&state, &id, Change::Set(body.balance), &body.reason, by).await
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
    responses((status = 200, body = TransactionList), (status = 404, body = ProblemSchema)))]
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
