//! Subscriptions: a tenant on a plan. Subscribing grants the plan's monthly credits at once
//! (a `refill` transaction, made by [`crate::billing::subscribe`]); the scheduler refills on
//! the plan's day after that.

use crate::billing;
use crate::extract::Query;
use crate::extract::{Admin, Body};
use crate::problem::{ApiResult, Problem, ProblemSchema};
use crate::records::{from_doc, to_doc, Subscription, SubscriptionStatus};
use crate::tenants::existing;
use crate::AdminState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tollgate::store::{Kind, TenantPatch};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// `/admin/subscriptions` and `/admin/subscriptions/{id}`.
pub fn router() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(subscribe, list))
        .routes(routes!(get, update, delete))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    tenant_id: String,
    plan_id: String,
}

/// Subscribes a tenant to a plan: grants the plan's monthly credits now and sets the
/// tenant's plan. One active subscription per tenant.
#[utoipa::path(post, path = "/admin/subscriptions", tag = "subscriptions", request_body = NewSubscription,
    security(("bearer" = [])),
    responses((status = 201, body = Subscription), (status = 409, body = ProblemSchema), (status = 422, body = ProblemSchema)))]
pub async fn subscribe(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Body(body): Body<NewSubscription>,
) -> ApiResult<(StatusCode, Json<Subscription>)> {
    let subscription =
        billing::subscribe(&state, &body.tenant_id, &body.plan_id, &admin.sub).await?;
    // The tenant's plan prices its calls from now on, at every gateway within the
    // catalog's reload bound.
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, Json(subscription)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubscriptionFilter {
    tenant_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    items: Vec<Subscription>,
}

#[utoipa::path(get, path = "/admin/subscriptions", tag = "subscriptions", params(SubscriptionFilter),
    security(("bearer" = [])), responses((status = 200, body = SubscriptionList)))]
pub async fn list(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<SubscriptionFilter>,
) -> ApiResult<Json<SubscriptionList>> {
    let filter = filter.tenant_id.as_deref().map(|t| ("tenant_id", t));
    let docs = state.docs.docs(Kind::Subscriptions, filter).await?;
    let items = docs.into_iter().map(from_doc).collect::<Result<_, _>>()?;
    Ok(Json(SubscriptionList { items }))
}

async fn stored_subscription(state: &AdminState, id: &str) -> ApiResult<Subscription> {
    let doc = state.docs.doc(Kind::Subscriptions, id).await?;
    Ok(from_doc(
        doc.ok_or_else(|| Problem::not_found("subscription"))?,
    )?)
}

#[utoipa::path(get, path = "/admin/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "subscription id")), security(("bearer" = [])),
    responses((status = 200, body = Subscription), (status = 404, body = ProblemSchema)))]
pub async fn get(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<Subscription>> {
    Ok(Json(stored_subscription(&state, &id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    status: SubscriptionStatus,
}

/// Cancels (or re-activates) a subscription; cancelled ones are not refilled.
#[utoipa::path(patch, path = "/admin/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "subscription id")), request_body = SubscriptionPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Subscription), (status = 404, body = ProblemSchema)))]
pub async fn update(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
    Body(patch): Body<SubscriptionPatch>,
) -> ApiResult<Json<Subscription>> {
    let mut subscription = stored_subscription(&state, &id).await?;
    subscription.status = patch.status;
    if !state
        .docs
        .replace_doc(Kind::Subscriptions, &to_doc(&subscription))
        .await?
    {
        return Err(Problem::not_found("subscription"));
    }
    // Only an active subscription's plan prices the tenant's calls.
    let plan =
        (subscription.status == SubscriptionStatus::Active).then(|| subscription.plan_id.clone());
    set_plan(&state, &subscription.tenant_id, plan).await?;
    Ok(Json(subscription))
}

#[utoipa::path(delete, path = "/admin/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "subscription id")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ProblemSchema)))]
pub async fn delete(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let subscription = stored_subscription(&state, &id).await?;
    existing(&state, &subscription.tenant_id).await?;
    if !state.docs.delete_doc(Kind::Subscriptions, &id).await? {
        return Err(Problem::not_found("subscription"));
    }
    set_plan(&state, &subscription.tenant_id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the plan whose prices the tenant pays, at every gateway within the catalog's
/// reload bound (docs/DESIGN.md §Pricing).
async fn set_plan(state: &AdminState, tenant_id: &str, plan: Option<String>) -> ApiResult<()> {
    let patch = TenantPatch {
        plan_id: Some(plan),
        ..TenantPatch::default()
    };
    state.store.update_tenant(tenant_id, &patch).await?;
    state.catalog_changed().await;
    Ok(())
}
