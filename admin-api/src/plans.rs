//! Plans: a monthly credit allotment, a refill day, optional price overrides
//! (`/admin/plans`). Tenants subscribe to them through [`crate::subscriptions`].

use crate::extract::{Admin, Body};
use crate::limits::RateLimitBody;
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::records::{from_doc, to_doc, Plan, PriceOverride};
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::ledger::MAX_BALANCE;
use tollgate::store::Kind;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/plans` and `/admin/plans/{id}`.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}

/// A plan's values, each refused with its field.
fn check(plan: &Plan) -> ApiResult<()> {
    crate::auth::check_name("name", &plan.name)?;
    if !(0..=MAX_BALANCE).contains(&plan.monthly_credits) {
        return Err(Problem::invalid(
            "monthly_credits",
            format!("0 to {MAX_BALANCE}"),
        ));
    }
    if !(1..=28).contains(&plan.refill_day) {
        return Err(Problem::invalid(
            "refill_day",
            "1 to 28 (a day every month has)",
        ));
    }
    for (i, o) in plan.price_overrides.iter().enumerate() {
        if o.credits > tollgate::vocab::MAX_ENDPOINT_CREDITS {
            return Err(Problem::invalid(
                format!("price_overrides[{i}].credits"),
                "at most 1000000",
            ));
        }
    }
    Ok(())
}

/// Every override names an endpoint a stored service declares (method and declared path,
/// as the service lists them): a price for nothing is a typo, refused with its field. A
/// service changed later may leave an override pointing nowhere; it then prices nothing.
async fn check_endpoints(state: &AdminState, plan: &Plan) -> ApiResult<()> {
    if plan.price_overrides.is_empty() {
        return Ok(());
    }
    let mut services = std::collections::HashMap::new();
    for doc in state.docs.docs(Kind::Services, None).await? {
        if let Ok(service) = tollgate::catalog::service_from_doc(doc) {
            services.insert(service.name.clone(), service);
        }
    }
    for (i, o) in plan.price_overrides.iter().enumerate() {
        let Some(service) = services.get(&o.service) else {
            return Err(Problem::invalid(
                format!("price_overrides[{i}].service"),
                "no such service",
            ));
        };
        if !service
            .endpoints
            .iter()
            .any(|e| e.method.eq_ignore_ascii_case(&o.method) && e.path == o.path)
        {
            return Err(Problem::invalid(
                format!("price_overrides[{i}]"),
                format!(
                    "service `{}` declares no endpoint {} {}",
                    o.service, o.method, o.path
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`.
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    id: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    monthly_credits: i64,
    /// Day of the month (1–28) the scheduler refills on; default 1.
    #[schema(minimum = 1, maximum = 28)]
    refill_day: Option<u32>,
    #[serde(default)]
    price_overrides: Vec<PriceOverride>,
    /// The plan's tenants' rate limit (docs/DESIGN.md §Limits).
    rate_limit: Option<RateLimitBody>,
    /// The plan's tenants' most calls in flight.
    #[schema(minimum = 1, maximum = 1_000_000)]
    max_concurrent: Option<u32>,
}

#[utoipa::path(post, path = "/admin/plans", tag = "plans", request_body = NewPlan,
    security(("bearer" = [])),
    responses((status = 201, body = Plan), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn create(
    State(state): State<AdminState>,
    _admin: Admin,
    Body(body): Body<NewPlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    if !tollgate::vocab::is_valid_tenant_id(&body.id) {
        return Err(Problem::invalid(
            "id",
            "1 to 64 characters of A-Z a-z 0-9 _ . -",
        ));
    }
    crate::limits::limits(body.rate_limit, body.max_concurrent)?;
    let plan = Plan {
        id: body.id,
        name: body.name,
        monthly_credits: body.monthly_credits,
        refill_day: body.refill_day.unwrap_or(1),
        price_overrides: body.price_overrides,
        rate_limit: body.rate_limit,
        max_concurrent: body.max_concurrent,
    };
    check(&plan)?;
    check_endpoints(&state, &plan).await?;
    if !state.docs.insert_doc(Kind::Plans, &to_doc(&plan)).await? {
        return Err(Problem::conflict("id", "a plan with this id exists"));
    }
    // Its prices reach every gateway within the catalog's reload bound.
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, Json(plan)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    items: Vec<Plan>,
}

#[utoipa::path(get, path = "/admin/plans", tag = "plans", security(("bearer" = [])),
    responses((status = 200, body = PlanList)))]
pub async fn list(State(state): State<AdminState>, _admin: Admin) -> ApiResult<Json<PlanList>> {
    let docs = state.docs.docs(Kind::Plans, None).await?;
    let items = docs.into_iter().map(from_doc).collect::<Result<_, _>>()?;
    Ok(Json(PlanList { items }))
}

async fn plan(state: &AdminState, id: &str) -> ApiResult<Plan> {
    let doc = state.docs.doc(Kind::Plans, id).await?;
    Ok(from_doc(doc.ok_or_else(|| Problem::not_found("plan"))?)?)
}

#[utoipa::path(get, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), security(("bearer" = [])),
    responses((status = 200, body = Plan), (status = 404, body = ProblemSchema)))]
pub async fn get(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Plan>> {
    Ok(Json(plan(&state, &id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    monthly_credits: Option<i64>,
    #[schema(minimum = 1, maximum = 28)]
    refill_day: Option<u32>,
    price_overrides: Option<Vec<PriceOverride>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(nullable)]
    rate_limit: Option<Option<RateLimitBody>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(minimum = 1, maximum = 1_000_000, nullable)]
    max_concurrent: Option<Option<u32>>,
}

#[utoipa::path(patch, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), request_body = PlanPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Plan), (status = 404, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
    Body(patch): Body<PlanPatch>,
) -> ApiResult<Json<Plan>> {
    let mut plan = plan(&state, &id).await?;
    if let Some(name) = patch.name {
        plan.name = name;
    }
    if let Some(credits) = patch.monthly_credits {
        plan.monthly_credits = credits;
    }
    if let Some(day) = patch.refill_day {
        plan.refill_day = day;
    }
    if let Some(overrides) = patch.price_overrides {
        plan.price_overrides = overrides;
    }
    if let Some(rate) = patch.rate_limit {
        plan.rate_limit = rate;
    }
    if let Some(most) = patch.max_concurrent {
        plan.max_concurrent = most;
    }
    crate::limits::limits(plan.rate_limit, plan.max_concurrent)?;
    check(&plan)?;
    check_endpoints(&state, &plan).await?;
    if !state.docs.replace_doc(Kind::Plans, &to_doc(&plan)).await? {
        return Err(Problem::not_found("plan"));
    }
    state.catalog_changed().await;
    Ok(Json(plan))
}

#[utoipa::path(delete, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ProblemSchema), (status = 409, body = ProblemSchema)))]
pub async fn delete(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let subscribed = state
        .docs
        .find_doc(Kind::Subscriptions, "plan_id", &id)
        .await?;
    if subscribed.is_some() {
        return Err(Problem::conflict(
            "id",
            "tenants subscribe to this plan; delete their subscriptions first",
        ));
    }
    if !state.docs.delete_doc(Kind::Plans, &id).await? {
        return Err(Problem::not_found("plan"));
    }
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}
