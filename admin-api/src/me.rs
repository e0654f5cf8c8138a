//! Self-service: any authenticated user, about their own tenant only, never charged. No
//! route here takes a tenant id: the tenant is the token's, so another's cannot be named.

use crate::extract::Caller;
use crate::extract::Query;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::reports::{docs_of, DocList};
use crate::time::{self, rfc3339};
use crate::AdminState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::store::Kind;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/me` and what a caller sees of their own tenant.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(balance))
        .routes(routes!(usage))
        .routes(routes!(invoices))
        .routes(routes!(notifications))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    user_id: String,
    /// `null` for a token minted outside the user directory (`tollgate token`).
    email: Option<String>,
    tenant_id: String,
    role: String,
}

#[utoipa::path(get, path = "/me", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, body = ProblemSchema)))]
pub async fn me(Caller(claims, user): Caller) -> ApiResult<Json<MeView>> {
    let role = match claims.role {
        tollgate::auth::Role::Admin => "admin",
        tollgate::auth::Role::User => "user",
    };
    Ok(Json(MeView {
        user_id: claims.sub,
        email: user.map(|u| u.email),
        tenant_id: claims.tenant_id,
        role: role.into(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceView {
    tenant_id: String,
    /// Live, from the ledger.
    balance: i64,
}

#[utoipa::path(get, path = "/me/balance", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = BalanceView), (status = 401, body = ProblemSchema)))]
pub async fn balance(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
) -> ApiResult<Json<BalanceView>> {
    let balance = state.hydrator.balance(&claims.tenant_id).await?;
    Ok(Json(BalanceView {
        tenant_id: claims.tenant_id,
        balance,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Window {
    /// Start (inclusive): unix ms or RFC 3339 (the pattern shows days 1 to 28; every real
    /// date is taken); default 30 days before `to`. Not after `to`.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// End (exclusive): unix ms or RFC 3339; default now.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
}

impl Window {
    pub fn resolve(&self) -> ApiResult<(i64, i64)> {
        let to = match &self.to {
            Some(t) => crate::extract::time_param("to", t)?,
            None => time::now_ms() + 1,
        };
        let from = match &self.from {
            Some(f) => crate::extract::time_param("from", f)?,
            None => to - 30 * 24 * 3600 * 1000,
        };
        if from > to {
            return Err(Problem::invalid("from", "must not be after `to`"));
        }
        Ok((from, to))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLineView {
    service: String,
    endpoint: String,
    /// The plan whose price these calls paid; absent: the service's own price.
    #[serde(skip_serializing_if = "Option::is_none")]
    plan_id: Option<String>,
    calls: u64,
    credits: i64,
}

/// One API key's calls in the window (`key_id` absent: calls made with a JWT).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyUsageView {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    calls: u64,
    credits: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    tenant_id: String,
    from: String,
    to: String,
    calls: u64,
    credits: i64,
    lines: Vec<UsageLineView>,
    /// The same calls per API key.
    keys: Vec<KeyUsageView>,
}

/// Usage of the caller's tenant per service and endpoint (refunded calls excluded), from
/// the durable logs (a few hundred ms behind the ledger).
#[utoipa::path(get, path = "/me/usage", tag = "self-service", params(Window),
    security(("bearer" = [])), responses((status = 200, body = UsageView), (status = 422, body = ProblemSchema)))]
pub async fn usage(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
    Query(window): Query<Window>,
) -> ApiResult<Json<UsageView>> {
    let (from, to) = window.resolve()?;
    let totals = state
        .store
        .usage_totals(&claims.tenant_id, from, to)
        .await?;
    let keys = state
        .store
        .usage_by_key(&claims.tenant_id, from, to)
        .await?
        .into_iter()
        .map(|k| KeyUsageView {
            key_id: k.key_id,
            calls: k.calls,
            credits: k.credits,
        })
        .collect();
    Ok(Json(UsageView {
        tenant_id: claims.tenant_id,
        from: rfc3339(from),
        to: rfc3339(to),
        calls: totals.calls,
        credits: totals.credits,
        lines: totals
            .lines
            .into_iter()
            .map(|l| UsageLineView {
                service: l.service,
                endpoint: l.endpoint,
                plan_id: l.plan_id,
                calls: l.calls,
                credits: l.credits,
            })
            .collect(),
        keys,
    }))
}

#[utoipa::path(get, path = "/me/invoices", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = DocList)))]
pub async fn invoices(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
) -> ApiResult<Json<DocList>> {
    docs_of(&state, Kind::Invoices, Some(&claims.tenant_id)).await
}

#[utoipa::path(get, path = "/me/notifications", tag = "self-service", security(("bearer" = [])),
    responses((status = 200, body = DocList)))]
pub async fn notifications(
    State(state): State<AdminState>,
    Caller(claims, _): Caller,
) -> ApiResult<Json<DocList>> {
    docs_of(&state, Kind::Notifications, Some(&claims.tenant_id)).await
}
