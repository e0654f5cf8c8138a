//! Tenants: create, list, read, change (name, status, threshold, plan). Status changes
//! reach every gateway replica through the catalog version.

use crate::auth::check_name;
use crate::extract::{Admin, Body};
use crate::limits::RateLimitBody;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::ledger::MAX_BALANCE;
use tollgate::store::{Kind, NewTenant, TenantPatch, TenantRecord};
use tollgate::vocab::TenantStatus;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/tenants` and `/admin/tenants/{id}`.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
}

impl From<&TenantStatus> for Status {
    fn from(s: &TenantStatus) -> Self {
        match s {
            TenantStatus::Active => Status::Active,
            TenantStatus::Suspended => Status::Suspended,
        }
    }
}

impl From<Status> for TenantStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Active => TenantStatus::Active,
            Status::Suspended => TenantStatus::Suspended,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    id: String,
    name: String,
    status: Status,
    /// Live, from the ledger.
    balance: i64,
    low_credit_threshold: i64,
    plan_id: Option<String>,
    /// The tenant's own rate limit, over its plan's (docs/DESIGN.md §Limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimitBody>,
    /// The tenant's own most calls in flight, over its plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent: Option<u32>,
}

pub(crate) async fn view(state: &AdminState, t: TenantRecord) -> ApiResult<TenantView> {
    let balance = state.hydrator.balance(&t.id).await?;
    Ok(TenantView {
        status: Status::from(&t.status),
        id: t.id,
        name: t.name,
        balance,
        low_credit_threshold: t.low_credit_threshold,
        plan_id: t.plan_id,
        rate_limit: t.limits.rate_limit.map(RateLimitBody::from),
        max_concurrent: t.limits.max_concurrent,
    })
}

pub async fn existing(state: &AdminState, id: &str) -> ApiResult<TenantRecord> {
    state
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| Problem::not_found("tenant"))
}

fn check_threshold(threshold: i64) -> ApiResult<()> {
    if !(0..=MAX_BALANCE).contains(&threshold) {
        return Err(Problem::invalid(
            "low_credit_threshold",
            format!("0 to {MAX_BALANCE}"),
        ));
    }
    Ok(())
}

async fn check_plan(state: &AdminState, plan_id: &str) -> ApiResult<()> {
    if state.docs.doc(Kind::Plans, plan_id).await?.is_none() {
        return Err(Problem::invalid("plan_id", "no such plan"));
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenantBody {
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`; generated when absent.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    id: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// Starting balance (an `initial` credit transaction), default 0.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    credits: Option<i64>,
    /// Default 100.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    low_credit_threshold: Option<i64>,
    plan_id: Option<String>,
}

#[utoipa::path(post, path = "/admin/tenants", tag = "tenants", request_body = NewTenantBody,
    security(("bearer" = [])),
    responses((status = 201, body = TenantView), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn create(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Body(body): Body<NewTenantBody>,
) -> ApiResult<(StatusCode, Json<TenantView>)> {
    let id = match body.id {
        Some(id) if tollgate::vocab::is_valid_tenant_id(&id) => id,
        Some(_) => {
            return Err(Problem::invalid(
                "id",
                "1 to 64 characters of A-Z a-z 0-9 _ . -",
            ))
        }
        None => format!("t_{}", uuid::Uuid::now_v7().simple()),
    };
    check_name("name", &body.name)?;
    let credits = body.credits.unwrap_or(0);
    if !(0..=MAX_BALANCE).contains(&credits) {
        return Err(Problem::invalid("credits", format!("0 to {MAX_BALANCE}")));
    }
    if let Some(threshold) = body.low_credit_threshold {
        check_threshold(threshold)?;
    }
    if let Some(plan) = &body.plan_id {
        check_plan(&state, plan).await?;
    }
    let tenant = NewTenant {
        id: &id,
        name: body.name.trim(),
        status: TenantStatus::Active,
        initial_credits: credits,
        actor: &admin.sub,
    };
    if !state.store.ensure_tenant(&tenant).await? {
        return Err(Problem::conflict("id", "a tenant with this id exists"));
    }
    let patch = TenantPatch {
        low_credit_threshold: body.low_credit_threshold,
        plan_id: body.plan_id.map(Some),
        ..TenantPatch::default()
    };
    let record = state
        .store
        .update_tenant(&id, &patch)
        .await?
        .ok_or_else(|| Problem::not_found("tenant"))?;
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, Json(view(&state, record).await?)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    items: Vec<TenantView>,
}

#[utoipa::path(get, path = "/admin/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = TenantList)))]
pub async fn list(State(state): State<AdminState>, _admin: Admin) -> ApiResult<Json<TenantList>> {
    let mut items = Vec::new();
    for tenant in state.store.tenants().await? {
        items.push(view(&state, tenant).await?);
    }
    Ok(Json(TenantList { items }))
}

#[utoipa::path(get, path = "/admin/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")), security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemSchema)))]
pub async fn get(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<TenantView>> {
    let tenant = existing(&state, &id).await?;
    Ok(Json(view(&state, tenant).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatchBody {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    /// `suspended`: the gateway answers 403 to the tenant's calls (within 2 s).
    status: Option<Status>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    low_credit_threshold: Option<i64>,
    /// `null` removes the plan.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>)]
    plan_id: Option<Option<String>>,
    /// The tenant's own rate limit, over its plan's; `null` removes it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(nullable)]
    rate_limit: Option<Option<RateLimitBody>>,
    /// The tenant's own most calls in flight, over its plan's; `null` removes it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable)]
    max_concurrent: Option<Option<u32>>,
}

#[utoipa::path(patch, path = "/admin/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "tenant id")), request_body = TenantPatchBody,
    security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
    Body(body): Body<TenantPatchBody>,
) -> ApiResult<Json<TenantView>> {
    let held = existing(&state, &id).await?;
    if let Some(name) = &body.name {
        check_name("name", name)?;
    }
    let limits = match (body.rate_limit, body.max_concurrent) {
        (None, None) => None,
        (rate, most) => Some(crate::limits::patched(held.limits, rate, most)?),
    };
    if let Some(threshold) = body.low_credit_threshold {
        check_threshold(threshold)?;
    }
    if let Some(Some(plan)) = &body.plan_id {
        check_plan(&state, plan).await?;
    }
    let patch = TenantPatch {
        name: body.name.map(|n| n.trim().to_owned()),
        status: body.status.map(TenantStatus::from),
        low_credit_threshold: body.low_credit_threshold,
        plan_id: body.plan_id,
        limits,
    };
    let record = state
        .store
        .update_tenant(&id, &patch)
        .await?
        .ok_or_else(|| Problem::not_found("tenant"))?;
    state.catalog_changed().await;
    Ok(Json(view(&state, record).await?))
}
