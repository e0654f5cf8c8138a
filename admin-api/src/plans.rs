//! Plans (a monthly credit allotment, a refill day, optional price overrides) and
//! subscriptions (a tenant on a plan). Subscribing grants the plan's monthly credits at once
//! (a `refill` transaction); the scheduler refills on the plan's day after that.

use crate::billing::{change_credits, refill_key, CreditRequest};
use crate::extract::{Admin, Body};
use crate::problem::{ApiError, ApiResult};
use crate::tenants::existing;
use crate::time::rfc3339;
use crate::AdminState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use tollgate::ledger::{Change, MAX_BALANCE};
use tollgate::store::{Doc, Kind, TenantPatch};
use utoipa::{IntoParams, ToSchema};

/// Tells "absent" (`None`) from "null" (`Some(None)`) in a PATCH body.
pub fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

pub fn to_doc<T: Serialize>(value: &T) -> Doc {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(doc)) => doc,
        _ => Doc::new(),
    }
}

pub fn from_doc<T: for<'de> Deserialize<'de>>(doc: Doc) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| {
        ApiError::unavailable("store", format!("a stored document does not parse: {e}"))
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    service: String,
    method: String,
    path: String,
    credits: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    pub(crate) id: String,
    name: String,
    /// Credits granted each period.
    pub(crate) monthly_credits: i64,
    /// Day of the month (1–28) the scheduler refills on.
    pub(crate) refill_day: u32,
    /// Per-endpoint prices for this plan's tenants (stored; the gateway charges the
    /// service's prices in this build).
    price_overrides: Vec<PriceOverride>,
}

impl Plan {
    fn check(&self) -> ApiResult<()> {
        crate::auth::check_name("name", &self.name)?;
        if !(0..=MAX_BALANCE).contains(&self.monthly_credits) {
            return Err(ApiError::invalid(
                "monthly_credits",
                format!("0 to {MAX_BALANCE}"),
            ));
        }
        if !(1..=28).contains(&self.refill_day) {
            return Err(ApiError::invalid(
                "refill_day",
                "1 to 28 (a day every month has)",
            ));
        }
        for (i, o) in self.price_overrides.iter().enumerate() {
            if o.credits > tollgate::vocab::MAX_ENDPOINT_CREDITS {
                return Err(ApiError::invalid(
                    format!("price_overrides[{i}].credits"),
                    "at most 1000000",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`.
    id: String,
    name: String,
    monthly_credits: i64,
    refill_day: Option<u32>,
    #[serde(default)]
    price_overrides: Vec<PriceOverride>,
}

#[utoipa::path(post, path = "/admin/plans", tag = "plans", request_body = NewPlan,
    security(("bearer" = [])),
    responses((status = 201, body = Plan), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub async fn create(
    State(state): State<AdminState>,
    _admin: Admin,
    Body(body): Body<NewPlan>,
) -> ApiResult<(StatusCode, Json<Plan>)> {
    if !tollgate::vocab::is_valid_tenant_id(&body.id) {
        return Err(ApiError::invalid(
            "id",
            "1 to 64 characters of A-Z a-z 0-9 _ . -",
        ));
    }
    let plan = Plan {
        id: body.id,
        name: body.name,
        monthly_credits: body.monthly_credits,
        refill_day: body.refill_day.unwrap_or(1),
        price_overrides: body.price_overrides,
    };
    plan.check()?;
    if !state.docs.insert_doc(Kind::Plans, &to_doc(&plan)).await? {
        return Err(ApiError::conflict("id", "a plan with this id exists"));
    }
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
    let items = docs.into_iter().map(from_doc).collect::<ApiResult<_>>()?;
    Ok(Json(PlanList { items }))
}

async fn plan(state: &AdminState, id: &str) -> ApiResult<Plan> {
    let doc = state.docs.doc(Kind::Plans, id).await?;
    from_doc(doc.ok_or_else(|| ApiError::not_found("plan"))?)
}

#[utoipa::path(get, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), security(("bearer" = [])),
    responses((status = 200, body = Plan), (status = 404, body = ApiError)))]
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
    name: Option<String>,
    monthly_credits: Option<i64>,
    refill_day: Option<u32>,
    price_overrides: Option<Vec<PriceOverride>>,
}

#[utoipa::path(patch, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), request_body = PlanPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Plan), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
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
    plan.check()?;
    if !state.docs.replace_doc(Kind::Plans, &to_doc(&plan)).await? {
        return Err(ApiError::not_found("plan"));
    }
    Ok(Json(plan))
}

#[utoipa::path(delete, path = "/admin/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "plan id")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
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
        return Err(ApiError::conflict(
            "id",
            "tenants subscribe to this plan; delete their subscriptions first",
        ));
    }
    if !state.docs.delete_doc(Kind::Plans, &id).await? {
        return Err(ApiError::not_found("plan"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    Active,
    Cancelled,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub(crate) id: String,
    pub(crate) tenant_id: String,
    pub(crate) plan_id: String,
    pub(crate) status: SubscriptionStatus,
    pub(crate) current_period_start: String,
    pub(crate) current_period_end: String,
    created_at: String,
    /// The last period (`YYYY-MM`) whose credits were granted: refills happen once each.
    #[serde(default)]
    pub(crate) last_refill_period: Option<String>,
}

/// The billing period (`YYYY-MM`, UTC) of `ms`.
pub fn period_of(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    format!("{:04}-{:02}", t.year(), t.month())
}

/// The day of the month (UTC) of `ms`.
pub fn day_of(ms: i64) -> u32 {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .day()
}

/// The calendar month (UTC) around `now_ms`: `[start, end)`.
pub fn month_of(now_ms: i64) -> (i64, i64) {
    let now = Utc
        .timestamp_millis_opt(now_ms)
        .single()
        .unwrap_or_default();
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    (start.timestamp_millis(), end.timestamp_millis())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    tenant_id: String,
    plan_id: String,
}

/// Subscribes a tenant to a plan: grants the plan's monthly credits now and sets the
/// tenant's plan. One active subscription per tenant.
#[utoipa::path(post, path = "/admin/subscriptions", tag = "plans", request_body = NewSubscription,
    security(("bearer" = [])),
    responses((status = 201, body = Subscription), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub async fn subscribe(
    State(state): State<AdminState>,
    Admin(admin): Admin,
    Body(body): Body<NewSubscription>,
) -> ApiResult<(StatusCode, Json<Subscription>)> {
    let Some(tenant) = state.store.tenant(&body.tenant_id).await? else {
        return Err(ApiError::invalid("tenant_id", "no such tenant"));
    };
    let Some(plan_doc) = state.docs.doc(Kind::Plans, &body.plan_id).await? else {
        return Err(ApiError::invalid("plan_id", "no such plan"));
    };
    let plan: Plan = from_doc(plan_doc)?;
    let current = state
        .docs
        .docs(Kind::Subscriptions, Some(("tenant_id", &body.tenant_id)))
        .await?
        .into_iter()
        .map(from_doc::<Subscription>)
        .collect::<ApiResult<Vec<_>>>()?;
    if current
        .iter()
        .any(|s| s.status == SubscriptionStatus::Active)
    {
        return Err(ApiError::conflict(
            "tenant_id",
            "this tenant has an active subscription; cancel it first",
        ));
    }
    let now = crate::time::now_ms();
    let (start, end) = month_of(now);
    // The period is marked granted only once the grant is made (below): a grant that
    // fails is then made by the scheduler, under the same key, never twice.
    let mut subscription = Subscription {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: body.tenant_id.clone(),
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
        return Err(ApiError::conflict("id", "subscription id taken; retry"));
    }
    let patch = TenantPatch {
        plan_id: Some(Some(plan.id.clone())),
        ..TenantPatch::default()
    };
    state.store.update_tenant(&body.tenant_id, &patch).await?;
    if plan.monthly_credits > 0 {
        let reason = format!(
            "refill: plan {} ({})",
            plan.id,
            &subscription.current_period_start[..7]
        );
        // Keyed by the subscription's period, as the scheduler's refills are: this grant
        // and a refill of the same period are one change.
        let key = refill_key(&subscription.id, &subscription.current_period_start[..7]);
        let request = CreditRequest {
            tenant: &tenant,
            change: Change::Add(plan.monthly_credits),
            reason: &reason,
            actor: &admin.sub,
            key: Some(&key),
        };
        change_credits(&state, request).await?;
    }
    let period = period_of(now);
    let mut fields = Doc::new();
    fields.insert("last_refill_period".into(), period.clone().into());
    state
        .docs
        .update_doc(Kind::Subscriptions, &subscription.id, &fields)
        .await?;
    subscription.last_refill_period = Some(period);
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

#[utoipa::path(get, path = "/admin/subscriptions", tag = "plans", params(SubscriptionFilter),
    security(("bearer" = [])), responses((status = 200, body = SubscriptionList)))]
pub async fn subscriptions(
    State(state): State<AdminState>,
    _admin: Admin,
    Query(filter): Query<SubscriptionFilter>,
) -> ApiResult<Json<SubscriptionList>> {
    let filter = filter.tenant_id.as_deref().map(|t| ("tenant_id", t));
    let docs = state.docs.docs(Kind::Subscriptions, filter).await?;
    let items = docs.into_iter().map(from_doc).collect::<ApiResult<_>>()?;
    Ok(Json(SubscriptionList { items }))
}

async fn stored_subscription(state: &AdminState, id: &str) -> ApiResult<Subscription> {
    let doc = state.docs.doc(Kind::Subscriptions, id).await?;
    from_doc(doc.ok_or_else(|| ApiError::not_found("subscription"))?)
}

#[utoipa::path(get, path = "/admin/subscriptions/{id}", tag = "plans",
    params(("id" = String, Path, description = "subscription id")), security(("bearer" = [])),
    responses((status = 200, body = Subscription), (status = 404, body = ApiError)))]
pub async fn subscription(
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
#[utoipa::path(patch, path = "/admin/subscriptions/{id}", tag = "plans",
    params(("id" = String, Path, description = "subscription id")), request_body = SubscriptionPatch,
    security(("bearer" = [])),
    responses((status = 200, body = Subscription), (status = 404, body = ApiError)))]
pub async fn update_subscription(
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
        return Err(ApiError::not_found("subscription"));
    }
    Ok(Json(subscription))
}

#[utoipa::path(delete, path = "/admin/subscriptions/{id}", tag = "plans",
    params(("id" = String, Path, description = "subscription id")), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_subscription(
    State(state): State<AdminState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let subscription = stored_subscription(&state, &id).await?;
    existing(&state, &subscription.tenant_id).await?;
    if !state.docs.delete_doc(Kind::Subscriptions, &id).await? {
        return Err(ApiError::not_found("subscription"));
    }
    let patch = TenantPatch {
        plan_id: Some(None),
        ..TenantPatch::default()
    };
    state
        .store
        .update_tenant(&subscription.tenant_id, &patch)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
